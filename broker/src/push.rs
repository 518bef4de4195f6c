//! Push notifications leave the broker through a webhook: the operator's
//! push gateway in front of APNs and FCM (`--push-webhook-url`).
//!
//! A notification is written to its user partition's push outbox (`P`
//! rows) in the same batch as the update-log entry of its message, so it
//! is as durable as the message; only once durable is it handed to the
//! [`Outlet`], and only once the webhook answered 2xx is its row removed
//! (`Command::PushDelivered`). A crash in between sends it again at the
//! next start with the same idempotency key, which is how the receiver
//! drops the repeat. While a device's notifications of one conversation
//! wait (the webhook down or slow), they are collapsed: the newest is sent,
//! saying how many it stands for, and all are removed together.
//!
//! Each request is signed: `X-Imsg-Signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA256 of "<t>.<body>" under the webhook secret>`, so the gateway
//! can refuse forgeries and replays. Failures are retried with exponential
//! backoff (200 ms doubling to 1 minute); a notification older than a day
//! is dropped with a warning (nobody wants it any more).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use crate::config::PushConfig;
use crate::{ids::PartitionId, mailbox::Command, now_ms, router::Router, storage::PushRecord};

/// One notification durable in a partition's push outbox.
#[derive(Debug, Clone)]
pub struct Queued {
    pub partition: PartitionId,
    pub number: u64,
    pub record: PushRecord,
    /// The span of the update that caused it (none after a restart).
    pub span: tracing::Span,
}

/// The node's sender of notifications. Cheap to clone.
#[derive(Clone)]
pub struct Outlet {
    queue: mpsc::UnboundedSender<Queued>,
}

impl Outlet {
    /// Starts the sender; it stops with `stop`.
    pub fn start(config: PushConfig, router: Router, stop: CancellationToken) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(run(config, router, queued, stop));
        Self { queue }
    }

    /// Hands over a notification that is durable.
    pub fn send(&self, queued: Queued) {
        let _ = self.queue.send(queued);
    }
}

/// Notifications of one device and conversation waiting to be sent.
struct Waiting {
    items: Vec<Queued>,
    attempts: u32,
    due: Instant,
}

/// Oldest notification worth sending.
const MAX_AGE_MS: i64 = 24 * 3600 * 1000;

async fn run(config: PushConfig, router: Router, mut queued: mpsc::UnboundedReceiver<Queued>, stop: CancellationToken) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("an HTTP client");
    let mut waiting: HashMap<(String, String, String), Waiting> = HashMap::new();
    loop {
        let next_due = waiting.values().map(|w| w.due).min();
        tokio::select! {
            _ = stop.cancelled() => return,
            item = queued.recv() => match item {
                Some(item) => wait(&mut waiting, item),
                None => return,
            },
            _ = sleep_until(next_due) => {}
        }
        while let Ok(item) = queued.try_recv() {
            wait(&mut waiting, item);
        }
        let now = Instant::now();
        let due: Vec<_> = waiting.iter().filter(|(_, w)| w.due <= now).map(|(key, _)| key.clone()).collect();
        for key in due {
            let Some(entry) = waiting.get_mut(&key) else { continue };
            let newest = entry.items.iter().max_by_key(|q| q.record.seq).expect("a waiting entry holds one");
            let result = if now_ms() - newest.record.created_ms > MAX_AGE_MS {
                tracing::warn!(key = %newest.record.idempotency_key, "push notification too old; dropped");
                Ok(())
            } else {
                let span = tracing::info_span!(parent: &newest.span, "push", collapsed = entry.items.len());
                post(&client, &config, &newest.record, entry.items.len()).instrument(span).await
            };
            match result {
                Ok(()) => {
                    if let Some(done) = waiting.remove(&key) {
                        confirm(&router, done.items);
                    }
                }
                Err(error) => {
                    entry.attempts += 1;
                    let backoff = Duration::from_millis(200 << entry.attempts.min(9)).min(Duration::from_secs(60));
                    entry.due = Instant::now() + backoff;
                    tracing::warn!(%error, attempts = entry.attempts, "push webhook failed; will retry");
                }
            }
        }
    }
}

fn wait(waiting: &mut HashMap<(String, String, String), Waiting>, item: Queued) {
    let record = &item.record;
    let key = (record.user_id.clone(), record.device_id.clone(), record.conversation_id.clone());
    let entry = waiting.entry(key).or_insert_with(|| Waiting { items: Vec::new(), attempts: 0, due: Instant::now() });
    // A re-send after a restart may hand over what is already waiting.
    if !entry.items.iter().any(|q| q.partition == item.partition && q.number == item.number) {
        entry.items.push(item);
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// Tells each partition which of its notifications were taken.
fn confirm(router: &Router, items: Vec<Queued>) {
    let mut by_partition: HashMap<PartitionId, Vec<u64>> = HashMap::new();
    for item in items {
        by_partition.entry(item.partition).or_default().push(item.number);
    }
    for (partition, numbers) in by_partition {
        // Not here any more (moved): the new owner sends them again.
        let _ = router.local(partition, Command::PushDelivered { numbers });
    }
}

/// The JSON body the push gateway receives.
#[derive(serde::Serialize)]
struct Notification<'a> {
    idempotency_key: &'a str,
    user_id: &'a str,
    device_id: &'a str,
    platform: &'a str,
    token: &'a str,
    conversation_id: &'a str,
    /// Collapse notifications of one conversation on the device.
    collapse_key: &'a str,
    seq: u64,
    sender_id: &'a str,
    /// How many messages this notification stands for.
    count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

/// `X-Imsg-Signature` of `body` at unix time `t`.
pub fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={digest}")
}

async fn post(client: &reqwest::Client, config: &PushConfig, record: &PushRecord, count: usize) -> Result<(), String> {
    let platform = imsg_proto::v1::PushPlatform::try_from(record.platform)
        .map(|p| p.as_str_name().trim_start_matches("PUSH_PLATFORM_").to_ascii_lowercase())
        .unwrap_or_default();
    let body = serde_json::to_vec(&Notification {
        idempotency_key: &record.idempotency_key,
        user_id: &record.user_id,
        device_id: &record.device_id,
        platform: &platform,
        token: &record.token,
        conversation_id: &record.conversation_id,
        collapse_key: &record.conversation_id,
        seq: record.seq,
        sender_id: &record.sender_id,
        count,
        text: record.text.as_deref(),
    })
    .map_err(|e| e.to_string())?;
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut request = client
        .post(&config.webhook_url)
        .header("content-type", "application/json")
        .header("idempotency-key", &record.idempotency_key)
        .header("x-imsg-signature", signature(&config.webhook_secret, t, &body))
        .body(body)
        .build()
        .map_err(|e| e.to_string())?;
    crate::telemetry::inject(request.headers_mut());
    let response = client.execute(request).await.map_err(|e| e.to_string())?;
    if response.status().is_success() { Ok(()) } else { Err(format!("webhook answered {}", response.status())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_time_and_the_body() {
        let one = signature("0123456789abcdef", 1_700_000_000, b"{}");
        assert!(one.starts_with("t=1700000000,v1="));
        assert_eq!(one, signature("0123456789abcdef", 1_700_000_000, b"{}"));
        assert_ne!(one, signature("0123456789abcdef", 1_700_000_001, b"{}"));
        assert_ne!(one, signature("0123456789abcdef", 1_700_000_000, b"{ }"));
        assert_ne!(one, signature("another-secret-0", 1_700_000_000, b"{}"));
    }
}
