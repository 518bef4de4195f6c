//! Device streams: one bidirectional `OpenStream` per device.
//!
//! Down: the broker session's frames (replay, `Ready`, live events) and
//! the outcomes of sends made on the stream. Up: messages to send
//! ([`crate::stream_sends`]: charged to the user's request budget), typing,
//! delivery and read marks, pings. Each other upstream frame is
//! rate-limited (frames per stream, typing per user) and run as the token's
//! caller (the backend validates it); a refused frame
//! gets a `StreamError` and the stream stays open. The gateway holds no
//! buffer of its own beyond a small output queue: when the device does not
//! read, the broker's session queue fills and the broker drops the session
//! as a slow consumer (invariant 6).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use imsg_common::{
    retry::{retry_after, transient},
    token::Verified,
};
use imsg_proto::internal::v1::{Caller, execute_request::Command};
use imsg_proto::v1::{
    Goodbye, OpenStreamRequest, OpenStreamResponse, Pong, StreamError, open_stream_request::Frame as Up,
    open_stream_response::Frame as Down,
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, Streaming};

use imsg_broker::metrics::METRICS;

use crate::{
    backend::Frames,
    ratelimit::TokenBucket,
    service::{Gateway, limit},
    stream_sends::StreamSends,
};

/// What a device is told to wait before reconnecting to a gateway that
/// refused its stream (stopping, or full).
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The response stream tonic sends to the device.
pub type DeviceStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<OpenStreamResponse, Status>> + Send>>;

/// What the relay queues toward the device; boxed so an idle stream's
/// queue holds pointers, not 152-byte frames (see `imsg_proto::codec`).
type Outgoing = Box<Result<OpenStreamResponse, Status>>;

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
    /// Frames queued toward the device inside the gateway.
    pub output_queue: usize,
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
            output_queue: 64,
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
    let (out, device) = mpsc::channel(settings.output_queue);
    tokio::spawn(relay(gateway, caller, expires_at, upstream, frames, out, slot));
    Ok(Box::pin(ReceiverStream::new(device).map(|outgoing: Outgoing| *outgoing)))
}

/// When a token that expires at `expires_at` (seconds since the epoch)
/// runs out, on the runtime's clock.
fn deadline(expires_at: u64) -> tokio::time::Instant {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    tokio::time::Instant::now() + Duration::from_secs(expires_at.saturating_sub(now))
}

async fn relay(
    gateway: Arc<Gateway>,
    caller: Caller,
    expires_at: u64,
    mut upstream: Streaming<OpenStreamRequest>,
    mut frames: Frames,
    out: mpsc::Sender<Outgoing>,
    _slot: StreamSlot,
) {
    let settings = gateway.stream_settings.clone();
    let mut frame_budget = TokenBucket::new(settings.frame_burst, settings.frames_per_second);
    let shutdown = gateway.streams.shutdown.clone();
    let mut sends = StreamSends::default();
    // A stream lives no longer than its token, unless refreshed on it.
    let expiry = tokio::time::sleep_until(deadline(expires_at));
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = out.send(Box::new(goodbye("server shutting down; reconnect with your last cursor"))).await;
                return;
            }
            _ = &mut expiry => {
                let _ = out.send(Box::new(goodbye("token expired; reconnect with a fresh token"))).await;
                return;
            }
            down = frames.next() => match down {
                Some(Ok(down)) => {
                    let last = matches!(down.frame, Some(Down::Goodbye(_)));
                    if out.send(Box::new(Ok(down))).await.is_err() || last {
                        return;
                    }
                }
                Some(Err(status)) => {
                    let _ = out.send(Box::new(Err(status))).await;
                    return;
                }
                None => {
                    let _ = out.send(Box::new(goodbye("session ended; reconnect with your last cursor"))).await;
                    return;
                }
            },
            outcome = sends.next_outcome(&gateway, &caller), if !sends.is_empty() => {
                if out.send(Box::new(frame(Down::SendOutcome(outcome)))).await.is_err() {
                    return;
                }
            }
            up = upstream.next(), if !sends.is_full() => match up {
                // Charged to the user's request budget, not the frame budget.
                Some(Ok(OpenStreamRequest { frame: Some(Up::SendMessage(request)) })) => {
                    sends.submit(&gateway, &caller, *request);
                }
                Some(Ok(OpenStreamRequest { frame: Some(Up::RefreshToken(refresh)) })) => {
                    match refreshed(&gateway, &caller, &refresh.token) {
                        Ok(expires_at) => expiry.as_mut().reset(deadline(expires_at)),
                        Err(status) => {
                            if out.send(Box::new(stream_error(status))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Some(Ok(request)) => {
                    let now = Instant::now();
                    let answer = match frame_budget.try_take(now) {
                        Ok(()) => upstream_frame(&gateway, &caller, request).await,
                        Err(wait) => {
                            METRICS.rate_limited.get_or_create(&limit("stream_frames")).inc();
                            Some(stream_error(transient(Code::ResourceExhausted, "too many frames; slow down", wait)))
                        }
                    };
                    if let Some(answer) = answer
                        && out.send(Box::new(answer)).await.is_err()
                    {
                        return;
                    }
                }
                // A frame that does not decode: say so, then end.
                Some(Err(status)) if status.code() == Code::InvalidArgument => {
                    let _ = out.send(Box::new(goodbye(status.message()))).await;
                    return;
                }
                // The device closed its side, or the connection broke.
                Some(Err(_)) | None => return,
            },
            _ = out.closed() => return,
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
    request: OpenStreamRequest,
) -> Option<Result<OpenStreamResponse, Status>> {
    let command = match request.frame {
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
        // Handled by the relay, which owns the stream's expiry and sends.
        Some(Up::RefreshToken(_)) | Some(Up::SendMessage(_)) => return None,
    };
    match gateway.backend.execute(caller.clone(), command).await {
        Ok(_) => None,
        Err(status) => Some(stream_error(status)),
    }
}
