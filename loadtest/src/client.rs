//! Simulated users and devices: many of them multiplexed over a few gRPC
//! connections, each device with its own stream and its own delivery logs.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context;
use imsg_common::token::Authenticator;
use imsg_proto::v1::{
    Hello, MarkRead, OpenStreamRequest, SendOutcome, TypingSignal, event, open_stream_request,
    open_stream_response::Frame, send_outcome,
};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::{
    checker::{Change, DeliveryLog},
    metrics::{Counters, LatencyRecorder},
    sending::{Outgoing, SendLedger},
};

pub use imsg_client::Api;

/// Opens `count` HTTP/2 connections spread over the gateways.
pub async fn connect(targets: &[SocketAddr], count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for i in 0..count {
        let target = targets[i % targets.len()];
        let channel = Channel::from_shared(format!("http://{target}"))?
            .tcp_nodelay(true)
            .initial_connection_window_size(Some(8 * 1024 * 1024))
            .initial_stream_window_size(Some(1024 * 1024))
            .connect()
            .await
            .with_context(|| format!("connecting to {target}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// A simulated user with one device. It can reach every gateway (a
/// client's DNS name or load balancer would): it uses its home connection
/// and moves to the next one when a call or stream fails.
#[derive(Clone)]
pub struct User {
    pub id: String,
    apis: Arc<[Api]>,
    home: usize,
}

/// How long a device or a send keeps retrying through an outage (a node
/// killed and restarted) before the run counts it as failed.
pub const RETRY_FOR: Duration = Duration::from_secs(60);

impl User {
    pub fn new(id: String, channels: &[Channel], home: usize, auth: &Authenticator) -> anyhow::Result<Self> {
        let token = auth.issue(&id, "d0", 24 * 3600).map_err(anyhow::Error::msg)?;
        let apis = channels.iter().map(|c| imsg_client::api(c.clone(), &token)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { id, apis: apis.into(), home })
    }

    /// The connection for the `attempt`-th try: home first, then the others.
    pub fn api(&self, attempt: usize) -> Api {
        self.apis[(self.home + attempt) % self.apis.len()].clone()
    }

    pub fn device_id(&self) -> String {
        format!("{}/d0", self.id)
    }
}

/// The payload every generated message carries: when it was meant to be
/// sent, in microseconds since the run's start, then padding.
pub fn payload(intended_us: u64, bytes: usize) -> String {
    let mut text = format!("{intended_us};");
    while text.len() < bytes {
        text.push('x');
    }
    text
}

fn intended_us(text: &str) -> Option<u64> {
    text.split(';').next()?.parse().ok()
}

/// What a device task hands back when it stops: its logs always, so a
/// failure is judged on what actually arrived, and the failure if any.
pub struct DeviceReport {
    pub device: String,
    pub logs: HashMap<String, DeliveryLog>,
    pub error: Option<String>,
}

/// Commands to a running device.
pub enum DeviceCommand {
    Typing(String),
    MarkRead(String, u64),
    /// Send a message on the device's stream.
    Send(Box<Outgoing>),
}

/// Work a device queues before it counts as overloaded (sends beyond
/// this are shed by the generator).
const DEVICE_QUEUE: usize = 256;

/// A device's control handles.
pub struct DeviceHandle {
    pub commands: mpsc::Sender<DeviceCommand>,
    pub task: tokio::task::JoinHandle<DeviceReport>,
}

/// What a device task shares with the run.
#[derive(Clone)]
pub struct DeviceContext {
    pub start: Instant,
    pub counters: Arc<Counters>,
    pub deliver_latency: Arc<LatencyRecorder>,
    /// Where the outcomes of sends made on the stream go.
    pub ledger: Arc<SendLedger>,
    pub stop: watch::Receiver<bool>,
    /// Mean seconds between forced reconnects; None: never.
    pub reconnect_every: Option<Duration>,
}

/// Opens the device's stream, waits for `Ready`, and keeps receiving
/// (reconnecting when told to) until `stop`.
pub async fn start_device(user: User, context: DeviceContext) -> anyhow::Result<DeviceHandle> {
    let (commands, mut commands_rx) = mpsc::channel(DEVICE_QUEUE);
    let device = user.device_id();
    let mut session = Session::resume(&user, 0, &context, &mut HashMap::new()).await?;
    let retries = commands.downgrade();
    let task = tokio::spawn(async move {
        let mut logs: HashMap<String, DeliveryLog> = HashMap::new();
        let error = run_device(&user, &context, &mut session, &mut commands_rx, &retries, &mut logs).await.err();
        // Sends that never got an outcome are over.
        for _ in session.pending.drain() {
            context.ledger.failed();
            context.ledger.finished();
        }
        DeviceReport { device, logs, error: error.map(|e| format!("{e:#}")) }
    });
    Ok(DeviceHandle { commands, task })
}

/// Receives until `stop`; drops and resumes the stream when the scenario
/// says so, retrying a failed resume like a real client would.
async fn run_device(
    user: &User,
    context: &DeviceContext,
    session: &mut Session,
    commands: &mut mpsc::Receiver<DeviceCommand>,
    retries: &mpsc::WeakSender<DeviceCommand>,
    logs: &mut HashMap<String, DeliveryLog>,
) -> anyhow::Result<()> {
    let mut stop = context.stop.clone();
    loop {
        let reconnect_at =
            context.reconnect_every.map(|mean| tokio::time::Instant::now() + mean.mul_f64(rand::random::<f64>() * 2.0));
        let reconnect = async {
            match reconnect_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(reconnect);
        loop {
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                _ = &mut reconnect => break,
                command = commands.recv() => if let Some(command) = command {
                    session.command(command).await;
                },
                frame = session.frames.message() => match frame {
                    Ok(Some(imsg_proto::v1::OpenStreamResponse { frame: Some(Frame::SendOutcome(outcome)) })) => {
                        session.outcome(outcome, context, retries);
                    }
                    Ok(Some(frame)) => session.handle(frame.frame, context, logs),
                    // A server went away (or moved the session): resume,
                    // as a real client does.
                    Ok(None) | Err(_) => {
                        context.counters.stream_errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                },
            }
        }
        context.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        let pending = std::mem::take(&mut session.pending);
        *session = Session::resume(user, session.cursor, context, logs).await?;
        // Sends without an outcome go again, in the order first sent (the
        // server deduplicates by client message id).
        let mut pending: Vec<Outgoing> = pending.into_values().collect();
        pending.sort_by_key(|outgoing| outgoing.index);
        for outgoing in pending {
            session.send(outgoing).await;
        }
    }
}

struct Session {
    user_id: String,
    up: mpsc::Sender<OpenStreamRequest>,
    frames: tonic::Streaming<imsg_proto::v1::OpenStreamResponse>,
    cursor: u64,
    /// Sends made on the stream without an outcome yet, by client id.
    pending: HashMap<String, Outgoing>,
    /// Like a real client, a device signals typing at most every 3 s.
    last_typing: Option<Instant>,
}

/// The least time between two typing signals of one device.
const TYPING_EVERY: Duration = Duration::from_secs(3);

impl Session {
    /// Opens a stream after `cursor` and waits for `Ready`, retrying (through
    /// the next gateway each time) for [`RETRY_FOR`], as a real client does.
    async fn resume(
        user: &User,
        cursor: u64,
        context: &DeviceContext,
        logs: &mut HashMap<String, DeliveryLog>,
    ) -> anyhow::Result<Self> {
        let mut attempt = 0;
        let started = Instant::now();
        loop {
            let opened = async {
                let mut session = Session::open(user, cursor, attempt).await?;
                session.until_ready(context, logs).await?;
                Ok::<_, anyhow::Error>(session)
            };
            match opened.await {
                Ok(session) => return Ok(session),
                Err(error) if started.elapsed() < RETRY_FOR => {
                    attempt += 1;
                    if attempt == 20 {
                        eprintln!("{}: still connecting after {attempt} attempts: {error:#}", user.id);
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(error) => return Err(error.context(format!("opening the stream of {}", user.id))),
            }
        }
    }

    async fn open(user: &User, cursor: u64, attempt: usize) -> anyhow::Result<Self> {
        let (up, up_rx) = mpsc::channel(DEVICE_QUEUE);
        up.send(OpenStreamRequest { frame: Some(open_stream_request::Frame::Hello(Hello { cursor })) }).await?;
        let frames = user
            .api(attempt)
            .open_stream(tokio_stream::wrappers::ReceiverStream::new(up_rx))
            .await
            .with_context(|| format!("opening the stream of {}", user.id))?
            .into_inner();
        Ok(Self { user_id: user.id.clone(), up, frames, cursor, pending: HashMap::new(), last_typing: None })
    }

    async fn until_ready(
        &mut self,
        context: &DeviceContext,
        logs: &mut HashMap<String, DeliveryLog>,
    ) -> anyhow::Result<()> {
        loop {
            match self.frames.message().await? {
                Some(frame) => match frame.frame {
                    Some(Frame::Ready(_)) => return Ok(()),
                    Some(Frame::Goodbye(goodbye)) => anyhow::bail!("goodbye before ready: {}", goodbye.reason),
                    Some(Frame::ResyncRequired(_)) => {
                        anyhow::bail!("resync required: retention too small for this run")
                    }
                    other => self.handle(other, context, logs),
                },
                None => anyhow::bail!("stream ended before ready"),
            }
        }
    }

    fn handle(&mut self, frame: Option<Frame>, context: &DeviceContext, logs: &mut HashMap<String, DeliveryLog>) {
        match frame {
            Some(Frame::Event(event)) => {
                if event.cursor > 0 {
                    self.cursor = event.cursor;
                }
                let change = match &event.kind {
                    Some(event::Kind::Reaction(r)) => Some((
                        r.conversation_id.clone(),
                        Change::Reaction { seq: r.seq, user: r.user_id.clone(), emoji: r.emoji.clone() },
                    )),
                    Some(event::Kind::MessageUpdate(update)) => update.message.as_ref().map(|m| {
                        let change = if m.unsent {
                            Change::Unsend { seq: m.seq }
                        } else {
                            Change::Edit { seq: m.seq, edit_time_ms: m.edit_time_ms }
                        };
                        (m.conversation_id.clone(), change)
                    }),
                    _ => None,
                };
                if let Some((conversation, change)) = change {
                    logs.entry(conversation).or_default().record_change(&change);
                    context.counters.delivered.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(event::Kind::Message(message)) = event.kind {
                    if message.sender_id == self.user_id {
                        return; // its own, replayed after a reconnect: not a delivery the run owes
                    }
                    match logs.get_mut(&message.conversation_id) {
                        Some(log) => log.record(message.seq),
                        None => logs.entry(message.conversation_id.clone()).or_default().record(message.seq),
                    }
                    context.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    let text = match &message.content {
                        Some(imsg_proto::v1::message::Content::Text(text)) => Some(text.text.as_str()),
                        Some(imsg_proto::v1::message::Content::Media(media)) => Some(media.caption.as_str()),
                        _ => None,
                    };
                    if let Some(intended) = text.and_then(intended_us) {
                        let now = context.start.elapsed().as_micros() as u64;
                        let second = context.ledger.second_of(intended);
                        context.deliver_latency.record(second, now.saturating_sub(intended));
                    }
                }
            }
            // The first few are shown: an operator needs to know why.
            Some(Frame::Error(error)) if context.counters.stream_errors.fetch_add(1, Ordering::Relaxed) < 3 => {
                eprintln!("stream error (code {}): {}", error.code, error.message);
            }
            _ => {}
        }
    }

    async fn command(&mut self, command: DeviceCommand) {
        let frame = match command {
            DeviceCommand::Typing(conversation_id) => {
                if self.last_typing.is_some_and(|at| at.elapsed() < TYPING_EVERY) {
                    return;
                }
                self.last_typing = Some(Instant::now());
                open_stream_request::Frame::Typing(TypingSignal { conversation_id, active: true })
            }
            DeviceCommand::MarkRead(conversation_id, seq) => {
                open_stream_request::Frame::MarkRead(MarkRead { conversation_id, seq })
            }
            DeviceCommand::Send(outgoing) => return self.send(*outgoing).await,
        };
        let _ = self.up.send(OpenStreamRequest { frame: Some(frame) }).await;
    }

    /// Sends a message on the stream and keeps it until its outcome.
    async fn send(&mut self, outgoing: Outgoing) {
        let frame = open_stream_request::Frame::SendMessage(Box::new(outgoing.request.clone()));
        self.pending.insert(outgoing.request.client_message_id.clone(), outgoing);
        // A closed stream is noticed by the receive side, which resumes
        // and sends what is pending again.
        let _ = self.up.send(OpenStreamRequest { frame: Some(frame) }).await;
    }

    /// Settles a send: acknowledged, retried later (a failure that says
    /// "try again", until [`RETRY_FOR`]), or failed.
    fn outcome(&mut self, outcome: SendOutcome, context: &DeviceContext, retries: &mpsc::WeakSender<DeviceCommand>) {
        let Some(outgoing) = self.pending.remove(&outcome.client_message_id) else { return };
        match outcome.outcome {
            Some(send_outcome::Outcome::Sent(sent)) => context.ledger.acknowledged(&outgoing, sent.seq),
            Some(send_outcome::Outcome::Error(error))
                if error.retry_after_ms > 0 && outgoing.first_try.elapsed() < RETRY_FOR =>
            {
                if let Some(retries) = retries.upgrade() {
                    let advised = Duration::from_millis(error.retry_after_ms);
                    tokio::spawn(async move {
                        tokio::time::sleep(backoff(1).max(advised)).await;
                        let _ = retries.send(DeviceCommand::Send(Box::new(outgoing))).await;
                    });
                    return;
                }
                context.ledger.failed();
            }
            _ => context.ledger.failed(),
        }
        context.ledger.finished();
    }
}

/// Pause before the `attempt`-th retry: 50 ms doubling to 1 s, jittered.
pub fn backoff(attempt: usize) -> Duration {
    let base = Duration::from_millis(50u64 << attempt.min(5)).min(Duration::from_secs(1));
    base.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}
