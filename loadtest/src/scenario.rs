//! One measured run: set up users, conversations and devices, offer load
//! open-loop at a fixed rate, drain, read history back, judge.
//!
//! Open loop: send `i` is due at `start + i / rate` whether or not earlier
//! sends were answered, and its latency is measured from that due time. A
//! server that stalls therefore shows the stall in every latency it caused
//! (no coordinated omission).

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context;
use imsg_common::token::Authenticator;
use imsg_proto::v1::{
    AcceptConversationRequest, CreateConversationRequest, DirectConversationSpec, GroupConversationSpec,
    ListMessagesRequest, SendMessageRequest, TextContent, create_conversation_request, send_message_request,
};
use tokio::sync::{Semaphore, watch};

use crate::{
    checker::Checker,
    client::{self, DeviceCommand, DeviceContext, DeviceHandle, User},
    generator,
    metrics::{Counters, LatencyRecorder, Percentiles},
    report::{Report, Second},
    sending::{self, FollowUp, Outgoing, PHOTO, SendLedger},
    spawn::{Deployment, wait_until},
};

/// What traffic to offer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// 1:1 pairs.
    #[default]
    Dm,
    /// Groups of `--group-size`: fan-out.
    Group,
    /// 80% 1:1, 20% small groups, typing, read receipts, presence churn,
    /// and what people do to messages: 1 in 20 is a photo (uploaded, then
    /// sent), 1 in 10 a reply, 1 in 5 gets a reaction, 1 in 20 is edited,
    /// 1 in 50 unsent.
    Mixed,
    /// 1:1 traffic while every device drops and resumes every few seconds.
    Reconnect,
    /// Hold idle streams to measure memory and CPU per connection.
    Idle,
    /// Replay a backlog of `--resume-backlog` messages to one device that
    /// was offline, and time it.
    Resume,
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario: Scenario,
    pub rate: f64,
    pub duration: Duration,
    pub users: usize,
    pub connections: usize,
    pub group_size: usize,
    pub message_bytes: usize,
    pub max_in_flight: u64,
    pub drain: Duration,
    pub idle_streams: usize,
    /// Messages the resume scenario replays.
    pub resume_backlog: usize,
    pub secret: String,
    pub progress: bool,
    /// Every message as a unary call (see [`crate::sending`]).
    pub unary_sends: bool,
    /// Notified when the send phase begins (chaos is timed from there).
    pub sending: Option<Arc<tokio::sync::Notify>>,
}

struct Conversation {
    id: String,
    members: Vec<usize>,
}

pub(crate) fn tag() -> String {
    format!("lt{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Runs one scenario at one rate against `targets`.
pub async fn run(
    targets: &[SocketAddr],
    options: &RunOptions,
    deployment: Option<&Deployment>,
) -> anyhow::Result<Report> {
    match options.scenario {
        Scenario::Idle => return crate::quiet::run_idle(targets, options, deployment).await,
        Scenario::Resume => return crate::quiet::run_resume(targets, options, deployment).await,
        _ => {}
    }
    let auth = Authenticator::new(&options.secret).map_err(anyhow::Error::msg)?;
    let channels = client::connect(targets, options.connections).await?;
    let tag = tag();
    let users: Vec<User> = (0..options.users)
        .map(|i| User::new(format!("{tag}-u{i}"), &channels, i % channels.len(), &auth))
        .collect::<anyhow::Result<_>>()?;
    let conversations = create_conversations(&users, options).await?;
    let mut checker = Checker::default();
    for conversation in &conversations {
        checker.expect_audience(&conversation.id, conversation.members.iter().map(|m| users[*m].device_id()).collect());
    }

    let start = Instant::now();
    let counters = Arc::new(Counters::default());
    let ledger = Arc::new(SendLedger::new(start, counters.clone(), conversations.len()));
    let deliver_latency = Arc::new(LatencyRecorder::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let context = DeviceContext {
        start,
        counters: counters.clone(),
        deliver_latency: deliver_latency.clone(),
        ledger: ledger.clone(),
        stop: stop_rx,
        reconnect_every: match options.scenario {
            Scenario::Reconnect => Some(Duration::from_secs(4)),
            Scenario::Mixed => Some(Duration::from_secs(60)),
            _ => None,
        },
    };
    let devices = start_devices(&users, &context).await?;
    // Deliveries of the creation events replayed on connect are not load.
    counters.delivered.store(0, Ordering::Relaxed);

    let cpu_before = deployment.map(Deployment::cpu_seconds);
    let generator_cpu_before = generator::cpu_seconds();
    let phase_start_us = start.elapsed().as_micros() as u64;
    ledger.phase_start_us.store(phase_start_us, Ordering::Relaxed);
    let total = (options.rate * options.duration.as_secs_f64()).round() as u64;
    let progress = options.progress.then(|| tokio::spawn(progress_line(counters.clone(), ledger.ack_latency.clone())));
    let issuer = Issuer { users: &users, conversations: &conversations, devices: &devices, options, ledger: &ledger };
    let mut lag = generator::ScheduleLag::default();

    // ---- the open-loop send phase ----
    if let Some(sending) = &options.sending {
        sending.notify_one();
    }
    let interval_us = 1_000_000.0 / options.rate;
    let mut issued = 0u64;
    while issued < total {
        let now_us = start.elapsed().as_micros() as u64 - phase_start_us;
        let due = ((now_us as f64 / interval_us) as u64 + 1).min(total);
        while issued < due {
            let intended_us = phase_start_us + (issued as f64 * interval_us) as u64;
            lag.record(now_us.saturating_sub(intended_us - phase_start_us));
            issuer.issue(issued, intended_us);
            issued += 1;
        }
        let next_us = phase_start_us + (issued as f64 * interval_us) as u64;
        tokio::time::sleep_until(tokio::time::Instant::from_std(start + Duration::from_micros(next_us))).await;
    }
    let send_phase = Duration::from_micros(start.elapsed().as_micros() as u64 - phase_start_us);
    wait_until(Duration::from_secs(30), || Counters::get(&counters.in_flight) == 0).await;
    let members = || conversations.iter().map(|c| c.members.len());
    let drained =
        wait_until(options.drain, || Counters::get(&counters.delivered) >= ledger.acks.expected_deliveries(members()))
            .await;
    let active = Duration::from_micros(start.elapsed().as_micros() as u64 - phase_start_us);
    let cpu_used = match (cpu_before, deployment) {
        (Some(before), Some(d)) => Some(d.cpu_seconds() - before),
        _ => None,
    };
    let generator_cpu = generator::cpu_seconds() - generator_cpu_before;
    let _ = stop_tx.send(true);
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    if !drained {
        eprintln!("warning: not every expected delivery arrived within {:?}", options.drain);
    }

    // ---- judge ----
    let mut device_errors = 0u64;
    for handle in devices {
        match handle.task.await {
            Ok(report) => {
                if let Some(error) = &report.error {
                    eprintln!("device {} failed: {error}", report.device);
                    device_errors += 1;
                }
                for (conversation, log) in report.logs {
                    checker.add_log(&report.device, &conversation, log);
                }
            }
            Err(error) => {
                eprintln!("device task panicked: {error}");
                device_errors += 1;
            }
        }
    }
    for acked in ledger.acks.drain() {
        let conversation = &conversations[acked.conversation as usize].id;
        checker.acked(conversation, acked.seq, &format!("m{}", acked.index), &users[acked.sender as usize].device_id());
    }
    let changes = std::mem::take(&mut *ledger.acks.changes.lock().unwrap_or_else(|e| e.into_inner()));
    let changes_acked = changes.len() as u64;
    for (conversation, change) in changes {
        checker.change_acked(&conversations[conversation as usize].id, change);
    }
    read_history(&users, &conversations, &mut checker).await?;
    let verdict = checker.verdict();
    let (ack_total, ack_seconds) = ledger.ack_latency.merged();
    let (deliver_total, deliver_seconds) = deliver_latency.merged();
    let delivered = Counters::get(&counters.delivered);
    let acked = Counters::get(&counters.acked);
    let timeline = ack_seconds
        .iter()
        .enumerate()
        .map(|(t, ack)| Second {
            t: t as u64,
            ack: Percentiles::of(ack),
            deliver: deliver_seconds.get(t).map(Percentiles::of).unwrap_or_default(),
            acked: ack.len(),
        })
        .collect();
    Ok(Report {
        scenario: options.scenario,
        offered_rate: options.rate,
        duration_s: send_phase.as_secs_f64(),
        ingest_rate: acked as f64 / send_phase.as_secs_f64(),
        delivery_rate: delivered as f64 / active.as_secs_f64(),
        ack_ms: Percentiles::of(&ack_total),
        deliver_ms: Percentiles::of(&deliver_total),
        ack_histogram: crate::report::quantile_curve(&ack_total),
        deliver_histogram: crate::report::quantile_curve(&deliver_total),
        sent: Counters::get(&counters.sent),
        acked,
        changes: changes_acked,
        photos: Counters::get(&counters.photos),
        delivered,
        expected_deliveries: checker.expected_deliveries(),
        lost: verdict.lost,
        duplicates: verdict.duplicates,
        reordered: verdict.reordered,
        send_errors: Counters::get(&counters.send_errors),
        shed: Counters::get(&counters.shed),
        stream_errors: Counters::get(&counters.stream_errors) + device_errors,
        reconnects: Counters::get(&counters.reconnects),
        chaos: None,
        connections: options.connections as u64,
        users: options.users as u64,
        conversations: conversations.len() as u64,
        server_cpu_s_per_1k: cpu_used.map(|cpu| if delivered > 0 { cpu / (delivered as f64 / 1000.0) } else { 0.0 }),
        server_cpu_us_per_message: cpu_used.map(|cpu| generator::per_message_us(cpu, acked)),
        generator: Some(generator::Usage::measured(generator_cpu, acked, active, lag, cpu_used)),
        unary_sends: options.unary_sends,
        server_peak_rss_bytes: deployment.map(Deployment::peak_rss_bytes),
        idle_streams: None,
        server_bytes_per_stream: None,
        server_idle_cores: None,
        resume: None,
        timeline,
    })
}

/// What the send loop needs to issue one message.
struct Issuer<'a> {
    users: &'a [User],
    conversations: &'a [Conversation],
    devices: &'a [DeviceHandle],
    options: &'a RunOptions,
    ledger: &'a Arc<SendLedger>,
}

impl Issuer<'_> {
    /// Issues message `index`, due at `intended_us`: on the sender's
    /// stream, or as a unary call (see [`crate::sending`]).
    fn issue(&self, index: u64, intended_us: u64) {
        let (options, counters) = (self.options, &self.ledger.counters);
        counters.sent.fetch_add(1, Ordering::Relaxed);
        if counters.in_flight.fetch_add(1, Ordering::Relaxed) >= options.max_in_flight {
            counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            counters.shed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let conversations = self.conversations;
        let conversation_index = pick_conversation(index, conversations.len(), options.scenario);
        let conversation = &conversations[conversation_index];
        let sender = conversation.members[(index as usize / conversations.len()) % conversation.members.len()];
        let mixed = options.scenario == Scenario::Mixed;
        if mixed && index.is_multiple_of(10) {
            let _ = self.devices[sender].commands.try_send(DeviceCommand::Typing(conversation.id.clone()));
        }
        let reader = (mixed && index.is_multiple_of(20))
            .then(|| conversation.members.iter().copied().find(|m| *m != sender))
            .flatten()
            .map(|m| self.devices[m].commands.clone());
        let reply_to_seq = match mixed && index % 10 == 3 {
            true => self.ledger.acks.newest[conversation_index].load(Ordering::Relaxed),
            false => 0,
        };
        let payload = client::payload(intended_us, options.message_bytes);
        let photo = (mixed && index % 20 == 11).then(|| PHOTO.clone());
        let request = SendMessageRequest {
            conversation_id: conversation.id.clone(),
            client_message_id: format!("m{index}"),
            reply_to_seq,
            content: Some(send_message_request::Content::Text(TextContent { text: payload })),
        };
        // What is done to this message once acknowledged (disjoint, so each
        // change is one event a checker can name).
        let follow_up = match index {
            _ if !mixed => None,
            i if i % 5 == 0 => {
                conversation.members.iter().find(|m| **m != sender).map(|m| FollowUp::React(self.users[*m].clone()))
            }
            i if i % 20 == 7 => Some(FollowUp::Edit),
            i if i % 50 == 13 => Some(FollowUp::Unsend),
            _ => None,
        };
        let outgoing = Outgoing {
            index,
            conversation: conversation_index as u32,
            sender: sender as u32,
            intended_us,
            request,
            reader,
            first_try: Instant::now(),
        };
        if options.unary_sends || photo.is_some() || follow_up.is_some() {
            sending::send_unary(self.ledger.clone(), self.users[sender].clone(), outgoing, photo, follow_up);
        } else if self.devices[sender].commands.try_send(DeviceCommand::Send(Box::new(outgoing))).is_err() {
            // The device has a full queue of work: shed, like a full window.
            counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            counters.shed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Mixed traffic sends 4 of 5 messages to 1:1 conversations (listed
/// first), 1 of 5 to groups.
fn pick_conversation(index: u64, count: usize, scenario: Scenario) -> usize {
    match scenario {
        Scenario::Mixed => {
            let directs = count * 2 / 3; // see create_conversations
            let groups = count - directs;
            if index % 5 == 4 && groups > 0 {
                directs + (index / 5) as usize % groups
            } else {
                index as usize % directs.max(1)
            }
        }
        _ => index as usize % count,
    }
}

async fn create_conversations(users: &[User], options: &RunOptions) -> anyhow::Result<Vec<Conversation>> {
    let mut plans: Vec<Vec<usize>> = Vec::new();
    let pairs = |plans: &mut Vec<Vec<usize>>| {
        for pair in (0..users.len()).collect::<Vec<_>>().chunks_exact(2) {
            plans.push(pair.to_vec());
        }
    };
    let groups = |plans: &mut Vec<Vec<usize>>, size: usize| {
        for group in (0..users.len()).collect::<Vec<_>>().chunks_exact(size.max(2)) {
            plans.push(group.to_vec());
        }
    };
    match options.scenario {
        Scenario::Dm | Scenario::Reconnect => pairs(&mut plans),
        Scenario::Group => groups(&mut plans, options.group_size),
        Scenario::Mixed => {
            pairs(&mut plans);
            // As many groups as half the pairs, so groups are 1/3 of all.
            let size = (users.len() / (plans.len() / 2).max(1)).clamp(2, options.group_size.min(10));
            let directs = plans.len();
            groups(&mut plans, size);
            plans.truncate(directs + directs / 2);
        }
        Scenario::Idle | Scenario::Resume => {}
    }
    anyhow::ensure!(!plans.is_empty(), "not enough users ({}) for one conversation", users.len());
    let limit = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for (i, members) in plans.into_iter().enumerate() {
        let creator = users[members[0]].clone();
        let others: Vec<String> = members[1..].iter().map(|m| users[*m].id.clone()).collect();
        let invited: Vec<User> = members[1..].iter().map(|m| users[*m].clone()).collect();
        let permit = limit.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let kind = if others.len() == 1 && members.len() == 2 {
                create_conversation_request::Kind::Direct(DirectConversationSpec { peer_user_id: others[0].clone() })
            } else {
                create_conversation_request::Kind::Group(GroupConversationSpec {
                    title: format!("group {i}"),
                    member_ids: others,
                })
            };
            let request = CreateConversationRequest { request_id: format!("create-{i}"), kind: Some(kind) };
            let response = creator.api(0).create_conversation(request).await?.into_inner();
            let id = response.conversation.context("no conversation")?.conversation_id;
            // Strangers' conversations arrive as message requests: the
            // simulated users know each other, so each accepts.
            for user in invited {
                let accept = AcceptConversationRequest { conversation_id: id.clone() };
                user.api(0).accept_conversation(accept).await?;
            }
            Ok::<_, anyhow::Error>(Conversation { id, members })
        }));
    }
    let mut conversations = Vec::new();
    for task in tasks {
        conversations.push(task.await??);
    }
    Ok(conversations)
}

pub(crate) async fn start_devices(users: &[User], context: &DeviceContext) -> anyhow::Result<Vec<DeviceHandle>> {
    let limit = Arc::new(Semaphore::new(128));
    let mut tasks = Vec::with_capacity(users.len());
    for user in users {
        let permit = limit.clone().acquire_owned().await?;
        let (user, context) = (user.clone(), context.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            client::start_device(user, context).await
        }));
    }
    let mut devices = Vec::with_capacity(tasks.len());
    for task in tasks {
        devices.push(task.await??);
    }
    Ok(devices)
}

async fn read_history(users: &[User], conversations: &[Conversation], checker: &mut Checker) -> anyhow::Result<()> {
    let limit = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::new();
    for conversation in conversations {
        let permit = limit.clone().acquire_owned().await?;
        let reader = users[conversation.members[0]].clone();
        let id = conversation.id.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let mut messages = Vec::new();
            let mut unsent = std::collections::HashSet::new();
            let mut page_token = String::new();
            loop {
                let page = reader
                    .api(0)
                    .list_messages(ListMessagesRequest {
                        conversation_id: id.clone(),
                        page_size: 200,
                        page_token: page_token.clone(),
                        after_seq: Some(0),
                    })
                    .await?
                    .into_inner();
                unsent.extend(page.messages.iter().filter(|m| m.unsent).map(|m| m.seq));
                messages.extend(page.messages.into_iter().map(|m| (m.seq, m.client_message_id)));
                if page.next_page_token.is_empty() {
                    return Ok::<_, anyhow::Error>((id, messages, unsent));
                }
                page_token = page.next_page_token;
            }
        }));
    }
    for task in tasks {
        let (id, messages, unsent) = task.await??;
        checker.history(&id, messages);
        checker.unsent_in_history(&id, unsent);
    }
    Ok(())
}

async fn progress_line(counters: Arc<Counters>, ack_latency: Arc<LatencyRecorder>) {
    let started = Instant::now();
    let mut last = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let (acked, delivered) = (Counters::get(&counters.acked), Counters::get(&counters.delivered));
        let seconds = started.elapsed().as_secs();
        // The second just over (merging the whole run every second cost
        // the generator more than its sends).
        let last_second = ack_latency.second(seconds.saturating_sub(1) as usize);
        eprint!(
            "\r{:>4}s  acked {:>8}/s  delivered {:>8}/s  in flight {:>6}  errors {:>5}  ack p99 {:>7.1} ms   ",
            seconds,
            acked - last.0,
            delivered - last.1,
            Counters::get(&counters.in_flight),
            Counters::get(&counters.send_errors) + Counters::get(&counters.shed),
            last_second.p99,
        );
        last = (acked, delivered);
    }
}
