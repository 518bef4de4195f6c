//! Device streams: one bidirectional `OpenStream` per device.
//!
//! Down: the broker session's frames (replay, `Ready`, live events) and
//! the outcomes of sends made on the stream. Up: messages to send
//! ([`crate::stream_sends`]: charged to the user's request budget), typing,
//! delivery and read marks, pings. Each other upstream frame is
//! rate-limited (frames per stream, typing per user) and run as the token's
//! caller (the backend validates it); a refused frame
//! gets a `StreamError` and the stream stays open.
//!
//! The relay is the response stream itself, polled by the HTTP/2 stream's
//! own task: a broker frame goes from the session queue straight into
//! HTTP/2, with no task or queue of the gateway's in between (each hand-off
//! between tasks is a wake-up, 30-45 µs across vCPUs on a small machine).
//! So the gateway holds no buffer of its own: when the device does not
//! read, HTTP/2 stops polling the relay, the broker's session queue fills
//! and the broker drops the session as a slow consumer (invariant 6); the
//! device's own frames wait in HTTP/2 flow control meanwhile.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::FutureExt;
use imsg_common::{
    retry::{retry_after, transient},
    token::Verified,
};
use imsg_proto::internal::v1::{Caller, execute_request::Command};
use imsg_proto::v1::{
    Goodbye, OpenStreamRequest, OpenStreamResponse, Pong, StreamError, open_stream_request::Frame as Up,
    open_stream_response::Frame as Down,
};
use tokio_stream::StreamExt;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Code, Status, Streaming};

use imsg_broker::metrics::METRICS;

use crate::{
    backend::Frames,
    ratelimit::TokenBucket,
    service::{Gateway, limit},
    stream_sends::StreamSends,
    woken::WokenStream,
};

/// What a device is told to wait before reconnecting to a gateway that
/// refused its stream (stopping, or full).
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The response stream tonic sends to the device.
pub type DeviceStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<OpenStreamResponse, Status>> + Send>>;

/// Limits of device streams.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// How long a new stream may take to send `hello`.
    pub hello_timeout: Duration,
    /// Most concurrent device streams on this gateway.
    pub max_streams: usize,
    /// Upstream frames per second per stream, and the burst allowed.
    pub frames_per_second: f64,
    pub frame_burst: u32,
    /// Typing signals per second per user (all of a user's streams on this
    /// gateway together), and the burst allowed.
    pub typing_per_second: f64,
    pub typing_burst: u32,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            hello_timeout: Duration::from_secs(10),
            max_streams: 100_000,
            frames_per_second: 50.0,
            frame_burst: 100,
            typing_per_second: 1.0,
            typing_burst: 5,
        }
    }
}

/// Gateway-wide stream bookkeeping: the count limit and the shutdown signal.
#[derive(Default)]
pub struct Streams {
    open: Arc<AtomicUsize>,
    pub shutdown: CancellationToken,
}

impl Streams {
    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// Counts a stream until dropped.
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        METRICS.open_streams.dec();
    }
}

fn frame(down: Down) -> Result<OpenStreamResponse, Status> {
    Ok(OpenStreamResponse { frame: Some(down) })
}

fn goodbye(reason: &str) -> Result<OpenStreamResponse, Status> {
    frame(Down::Goodbye(Goodbye { reason: reason.to_owned() }))
}

/// Admits a device stream: waits for `hello`, opens the broker session and
/// starts relaying.
pub async fn open(
    gateway: Arc<Gateway>,
    verified: Verified,
    mut upstream: Streaming<OpenStreamRequest>,
) -> Result<DeviceStream, Status> {
    let Verified { caller, expires_at } = verified;
    let settings = &gateway.stream_settings;
    if gateway.streams.shutdown.is_cancelled() {
        return Err(transient(Code::Unavailable, "gateway is shutting down; reconnect elsewhere", RECONNECT_AFTER));
    }
    let previous = gateway.streams.open.fetch_add(1, Ordering::SeqCst);
    METRICS.open_streams.inc();
    let slot = StreamSlot(gateway.streams.open.clone());
    if previous >= settings.max_streams {
        return Err(transient(
            Code::ResourceExhausted,
            format!("this gateway holds at most {} streams; reconnect later or elsewhere", settings.max_streams),
            RECONNECT_AFTER,
        ));
    }
    let first = tokio::time::timeout(settings.hello_timeout, upstream.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no hello frame in time"))??;
    let cursor = match first.and_then(|f| f.frame) {
        Some(Up::Hello(hello)) => hello.cursor,
        _ => return Err(Status::invalid_argument("frame: the first frame must be `hello`")),
    };
    let frames = gateway.backend.open_session(caller.clone(), cursor).await?;
    let frame_budget = TokenBucket::new(settings.frame_burst, settings.frames_per_second);
    let relay = Relay {
        frame_budget,
        shutdown: WokenStream::new(futures::stream::once(Box::pin(gateway.streams.shutdown.clone().cancelled_owned()))),
        sends: StreamSends::default(),
        // A stream lives no longer than its token, unless refreshed on it.
        expiry: Box::pin(tokio::time::sleep_until(deadline(expires_at))),
        ended: false,
        queued_in_a_row: 0,
        gateway,
        caller,
        upstream: WokenStream::new(upstream),
        frames,
        _slot: slot,
    };
    Ok(Box::pin(futures::stream::unfold(relay, |mut relay| async move {
        let frame = relay.next_frame().await?;
        Some((frame, relay))
    })))
}

/// Queued broker frames sent in a row before a stream polls its other
/// sources again.
const QUEUED_FRAMES_IN_A_ROW: u8 = 16;

/// When a token that expires at `expires_at` (seconds since the epoch)
/// runs out, on the runtime's clock.
fn deadline(expires_at: u64) -> tokio::time::Instant {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    tokio::time::Instant::now() + Duration::from_secs(expires_at.saturating_sub(now))
}

/// One device stream: what goes down (broker frames, send outcomes,
/// answers to the device's frames) is produced on demand by
/// [`Relay::next_frame`], which also takes the device's frames meanwhile.
struct Relay {
    gateway: Arc<Gateway>,
    caller: Caller,
    /// The device's frames, polled only when some came ([`WokenStream`]).
    upstream: WokenStream<Streaming<OpenStreamRequest>>,
    frames: Frames,
    frame_budget: TokenBucket,
    /// Shutdown, once. Made once and polled only when woken, like the
    /// upstream: a new wait per frame registered with the token (shared by
    /// every stream) and left it again.
    shutdown: WokenStream<futures::stream::Once<std::pin::Pin<Box<WaitForCancellationFutureOwned>>>>,
    sends: StreamSends,
    expiry: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The last frame went down: the stream ends.
    ended: bool,
    /// Broker frames sent by the shortcut of [`Relay::next_frame`] since the
    /// stream last waited for everything.
    queued_in_a_row: u8,
    _slot: StreamSlot,
}

impl Relay {
    /// The next frame for the device, taking the device's frames until
    /// there is one; `None` once the stream is over.
    async fn next_frame(&mut self) -> Option<Result<OpenStreamResponse, Status>> {
        // A frame already queued goes down without polling everything else
        // the stream waits for (the device's side, its sends, the token's
        // expiry, shutdown): on a busy stream that polling cost more than
        // the frame. Every few frames the full wait runs, so the device's
        // frames and the timers are never starved.
        if !self.ended
            && self.queued_in_a_row < QUEUED_FRAMES_IN_A_ROW
            && let Some(down) = self.frames.next().now_or_never()
        {
            self.queued_in_a_row += 1;
            return self.broker_frame(down);
        }
        self.queued_in_a_row = 0;
        while !self.ended {
            tokio::select! {
                _ = self.shutdown.next() => {
                    return self.last(goodbye("server shutting down; reconnect with your last cursor"));
                }
                _ = &mut self.expiry => return self.last(goodbye("token expired; reconnect with a fresh token")),
                down = self.frames.next() => return self.broker_frame(down),
                outcome = self.sends.next_outcome(&self.gateway, &self.caller), if !self.sends.is_empty() => {
                    return Some(frame(Down::SendOutcome(outcome)));
                }
                up = self.upstream.next(), if !self.sends.is_full() => match up {
                    Some(Ok(request)) => {
                        if let Some(answer) = self.take(request).await {
                            return Some(answer);
                        }
                    }
                    // A frame that does not decode: say so, then end.
                    Some(Err(status)) if status.code() == Code::InvalidArgument => {
                        return self.last(goodbye(status.message()));
                    }
                    // The device closed its side, or the connection broke.
                    Some(Err(_)) | None => self.ended = true,
                },
            }
        }
        None
    }

    /// What goes down for the broker's next frame, or for the end of its
    /// session.
    fn broker_frame(
        &mut self,
        down: Option<Result<OpenStreamResponse, Status>>,
    ) -> Option<Result<OpenStreamResponse, Status>> {
        match down {
            Some(Ok(down)) => {
                self.ended = matches!(down.frame, Some(Down::Goodbye(_)));
                Some(Ok(down))
            }
            Some(Err(status)) => self.last(Err(status)),
            None => self.last(goodbye("session ended; reconnect with your last cursor")),
        }
    }

    /// The stream's last frame.
    fn last(&mut self, frame: Result<OpenStreamResponse, Status>) -> Option<Result<OpenStreamResponse, Status>> {
        self.ended = true;
        Some(frame)
    }

    /// Takes one of the device's frames; returns what to tell it, if
    /// anything.
    async fn take(&mut self, request: OpenStreamRequest) -> Option<Result<OpenStreamResponse, Status>> {
        match request.frame {
            // Charged to the user's request budget, not the frame budget.
            Some(Up::SendMessage(request)) => {
                self.sends.submit(&self.gateway, &self.caller, *request);
                None
            }
            Some(Up::RefreshToken(refresh)) => match refreshed(&self.gateway, &self.caller, &refresh.token) {
                Ok(expires_at) => {
                    self.expiry.as_mut().reset(deadline(expires_at));
                    None
                }
                Err(status) => Some(stream_error(status)),
            },
            up => match self.frame_budget.try_take(Instant::now()) {
                // Boxed: the broker call's state is large, and held only
                // while a frame runs, not by every idle stream.
                Ok(()) => Box::pin(upstream_frame(&self.gateway, &self.caller, up)).await,
                Err(wait) => {
                    METRICS.rate_limited.get_or_create(&limit("stream_frames")).inc();
                    Some(stream_error(transient(Code::ResourceExhausted, "too many frames; slow down", wait)))
                }
            },
        }
    }
}

/// The expiry of a fresh token for the stream's own user and device.
fn refreshed(gateway: &Gateway, caller: &Caller, token: &str) -> Result<u64, Status> {
    let verified = gateway.auth.verify(token)?;
    if verified.caller.user_id != caller.user_id || verified.caller.device_id != caller.device_id {
        return Err(Status::permission_denied("refresh_token: the token is for another user or device"));
    }
    Ok(verified.expires_at)
}

fn stream_error(status: Status) -> Result<OpenStreamResponse, Status> {
    frame(Down::Error(error_frame(&status)))
}

/// A refusal as a stream frame: its code, message and retry advice.
pub fn error_frame(status: &Status) -> StreamError {
    StreamError {
        code: status.code() as i32,
        message: status.message().to_owned(),
        retry_after_ms: retry_after(status).map_or(0, |wait| (wait.as_millis() as u64).max(1)),
    }
}

/// Runs one upstream frame; returns what to tell the device, if anything.
async fn upstream_frame(
    gateway: &Gateway,
    caller: &Caller,
    up: Option<Up>,
) -> Option<Result<OpenStreamResponse, Status>> {
    let command = match up {
        Some(Up::Ping(ping)) => return Some(frame(Down::Pong(Pong { nonce: ping.nonce }))),
        Some(Up::Hello(_)) => {
            return Some(stream_error(Status::invalid_argument("hello: already sent on this stream")));
        }
        None => return Some(stream_error(Status::invalid_argument("frame: must be set"))),
        Some(Up::Typing(typing)) => {
            if typing.active && gateway.typing_limiter.try_take(&caller.user_id).is_err() {
                METRICS.rate_limited.get_or_create(&limit("typing")).inc();
                return Some(stream_error(Status::resource_exhausted("typing: rate limit reached")));
            }
            Command::Typing(typing)
        }
        Some(Up::MarkDelivered(mark)) => Command::MarkDelivered(mark),
        Some(Up::MarkRead(mark)) => Command::MarkRead(mark),
        // Taken by the relay, which owns the stream's expiry and sends.
        Some(Up::RefreshToken(_)) | Some(Up::SendMessage(_)) => return None,
    };
    match gateway.backend.execute(caller.clone(), command).await {
        Ok(_) => None,
        Err(status) => Some(stream_error(status)),
    }
}
