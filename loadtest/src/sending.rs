//! The send side of a run: what each send is, where its acknowledgement
//! is recorded, and the two ways it travels.
//!
//! By default a message goes on the sending device's own stream (the fast
//! path the SDKs use: no HTTP/2 stream and no token check per message),
//! handed to the device task, which matches each `SendOutcome` to it.
//! Photos, and messages that something is done to once acknowledged
//! (reactions, edits, unsends), go as unary calls from a task of their
//! own, as do all messages with `--unary-sends`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use imsg_common::retry::retry_after;
use imsg_proto::v1::{
    EditMessageRequest, MediaContent, MediaKind, ReactToMessageRequest, SendMessageRequest, SendMessageResponse,
    UnsendMessageRequest, UploadMediaRequest, UploadStart, send_message_request, upload_media_request,
};
use tokio::sync::mpsc;

use crate::{
    checker::Change,
    client::{self, DeviceCommand, User},
    metrics::{Counters, LatencyRecorder},
};

/// One message the generator sends.
pub struct Outgoing {
    /// Its number in the run; its client message id is `m<index>`.
    pub index: u64,
    pub conversation: u32,
    /// The simulated user who sends it.
    pub sender: u32,
    /// When it was due, in microseconds since the run's start.
    pub intended_us: u64,
    pub request: SendMessageRequest,
    /// A member's device told to mark it read once acknowledged.
    pub reader: Option<mpsc::Sender<DeviceCommand>>,
    /// When it was first sent (retries stop [`client::RETRY_FOR`] later).
    pub first_try: Instant,
}

/// Acknowledgements, sharded so senders rarely contend.
pub struct Acks {
    shards: Vec<Mutex<Vec<AckedMessage>>>,
    /// Acknowledged messages per conversation (each is one delivery per
    /// member device but the sender's).
    messages: Vec<AtomicU64>,
    /// Acknowledged changes per conversation (one delivery per member
    /// device).
    changes_per_conversation: Vec<AtomicU64>,
    /// The newest acknowledged seq per conversation (what a reply quotes).
    pub newest: Vec<AtomicU64>,
    pub changes: Mutex<Vec<(u32, Change)>>,
}

/// An acknowledged message, as the checker needs it.
#[derive(Debug, Clone, Copy)]
pub struct AckedMessage {
    pub conversation: u32,
    pub seq: u64,
    pub index: u64,
    pub sender: u32,
}

impl Acks {
    pub fn new(conversations: usize) -> Self {
        let counters = || (0..conversations).map(|_| AtomicU64::new(0)).collect();
        Self {
            shards: (0..16).map(|_| Mutex::new(Vec::new())).collect(),
            messages: counters(),
            changes_per_conversation: counters(),
            newest: counters(),
            changes: Mutex::new(Vec::new()),
        }
    }

    fn record(&self, acked: AckedMessage) {
        self.messages[acked.conversation as usize].fetch_add(1, Ordering::Relaxed);
        self.newest[acked.conversation as usize].fetch_max(acked.seq, Ordering::Relaxed);
        let shard = (acked.index % self.shards.len() as u64) as usize;
        self.shards[shard].lock().unwrap_or_else(|e| e.into_inner()).push(acked);
    }

    pub fn record_change(&self, conversation: u32, change: Change) {
        self.changes_per_conversation[conversation as usize].fetch_add(1, Ordering::Relaxed);
        self.changes.lock().unwrap_or_else(|e| e.into_inner()).push((conversation, change));
    }

    /// Deliveries owed so far, given each conversation's member count.
    pub fn expected_deliveries(&self, members: impl Iterator<Item = usize>) -> u64 {
        let mut owed = 0;
        for ((messages, changes), members) in self.messages.iter().zip(&self.changes_per_conversation).zip(members) {
            let members = members as u64;
            owed += messages.load(Ordering::Relaxed) * members.saturating_sub(1);
            owed += changes.load(Ordering::Relaxed) * members;
        }
        owed
    }

    pub fn drain(&self) -> Vec<AckedMessage> {
        self.shards.iter().flat_map(|s| std::mem::take(&mut *s.lock().unwrap_or_else(|e| e.into_inner()))).collect()
    }
}

/// Where sends report: shared by the send loop and every device.
pub struct SendLedger {
    pub start: Instant,
    /// When the send phase began, in microseconds since `start`.
    pub phase_start_us: AtomicU64,
    pub counters: Arc<Counters>,
    pub ack_latency: Arc<LatencyRecorder>,
    pub acks: Acks,
}

impl SendLedger {
    pub fn new(start: Instant, counters: Arc<Counters>, conversations: usize) -> Self {
        Self {
            start,
            phase_start_us: AtomicU64::new(0),
            counters,
            ack_latency: Arc::new(LatencyRecorder::default()),
            acks: Acks::new(conversations),
        }
    }

    /// The second of the send phase a message sent at `intended_us` (since
    /// `start`) was meant for: acks and deliveries share one timeline.
    pub fn second_of(&self, intended_us: u64) -> usize {
        (intended_us.saturating_sub(self.phase_start_us.load(Ordering::Relaxed)) / 1_000_000) as usize
    }

    /// Records an acknowledgement: its latency from the intended send
    /// time, the seq for the checker, and the read mark it asks for.
    pub fn acknowledged(&self, outgoing: &Outgoing, seq: u64) {
        let now_us = self.start.elapsed().as_micros() as u64;
        self.ack_latency.record(self.second_of(outgoing.intended_us), now_us.saturating_sub(outgoing.intended_us));
        self.acks.record(AckedMessage {
            conversation: outgoing.conversation,
            seq,
            index: outgoing.index,
            sender: outgoing.sender,
        });
        self.counters.acked.fetch_add(1, Ordering::Relaxed);
        if let Some(reader) = &outgoing.reader {
            let _ = reader.try_send(DeviceCommand::MarkRead(outgoing.request.conversation_id.clone(), seq));
        }
    }

    /// A send that will not be acknowledged.
    pub fn failed(&self) {
        self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A send is over, acknowledged or not.
    pub fn finished(&self) {
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A change made to a message right after its ack.
pub enum FollowUp {
    /// Another member reacts.
    React(User),
    /// The sender edits it.
    Edit,
    /// The sender unsends it.
    Unsend,
}

impl FollowUp {
    async fn run(self, sender: &User, conversation: &str, seq: u64) -> Result<Change, tonic::Status> {
        let conversation_id = conversation.to_owned();
        match self {
            FollowUp::React(reactor) => {
                let request = ReactToMessageRequest { conversation_id, seq, emoji: "👍".into() };
                retrying(&reactor, request, |mut api, r| async move { api.react_to_message(r).await }).await?;
                Ok(Change::Reaction { seq, user: reactor.id.clone(), emoji: "👍".into() })
            }
            FollowUp::Edit => {
                let request = EditMessageRequest { conversation_id, seq, text: format!("edited {seq}") };
                let edited = retrying(sender, request, |mut api, r| async move { api.edit_message(r).await }).await?;
                Ok(Change::Edit { seq, edit_time_ms: edited.into_inner().edit_time_ms })
            }
            FollowUp::Unsend => {
                let request = UnsendMessageRequest { conversation_id, seq };
                retrying(sender, request, |mut api, r| async move { api.unsend_message(r).await }).await?;
                Ok(Change::Unsend { seq })
            }
        }
    }
}

/// Sends `outgoing` as a unary call from a task of its own (with a photo,
/// and a change to make once acknowledged, when given).
pub fn send_unary(
    ledger: Arc<SendLedger>,
    user: User,
    outgoing: Outgoing,
    photo: Option<Arc<Vec<u8>>>,
    follow_up: Option<FollowUp>,
) {
    tokio::spawn(async move {
        let sent = match photo {
            Some(photo) => {
                let sent = send_photo(&user, outgoing.request.clone(), &photo).await;
                if sent.is_ok() {
                    ledger.counters.photos.fetch_add(1, Ordering::Relaxed);
                }
                sent
            }
            None => send_with_retry(&user, outgoing.request.clone()).await,
        };
        match sent {
            Ok(response) => {
                let seq = response.into_inner().seq;
                ledger.acknowledged(&outgoing, seq);
                if let Some(follow_up) = follow_up {
                    match follow_up.run(&user, &outgoing.request.conversation_id, seq).await {
                        Ok(change) => ledger.acks.record_change(outgoing.conversation, change),
                        Err(_) => ledger.failed(),
                    }
                }
            }
            Err(_) => ledger.failed(),
        }
        ledger.finished();
    });
}

/// Runs an idempotent call like a real client: a failure that says "try
/// again" is retried unchanged, through the next gateway, until
/// [`client::RETRY_FOR`].
pub async fn retrying<Req: Clone, Resp, F, Fut>(
    user: &User,
    request: Req,
    call: F,
) -> Result<tonic::Response<Resp>, tonic::Status>
where
    F: Fn(imsg_client::Api, Req) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        let status = match call(user.api(attempt), request.clone()).await {
            Err(status) if started.elapsed() < client::RETRY_FOR => status,
            other => return other,
        };
        let Some(advised) = retry_after(&status) else { return Err(status) };
        attempt += 1;
        tokio::time::sleep(client::backoff(attempt).max(advised)).await;
    }
}

/// Sends like a real client: a failure that says "try again" (a node
/// down, a partition moving, a gateway gone) is retried with the same
/// client message id, through the next gateway, until [`client::RETRY_FOR`].
/// The dedup window makes the retries safe.
async fn send_with_retry(
    user: &User,
    request: SendMessageRequest,
) -> Result<tonic::Response<SendMessageResponse>, tonic::Status> {
    retrying(user, request, |mut api, request| async move { api.send_message(request).await }).await
}

/// The photo mixed traffic sends: a 256x256 JPEG (about 10 KiB), made
/// once.
pub static PHOTO: std::sync::LazyLock<Arc<Vec<u8>>> = std::sync::LazyLock::new(|| {
    let image = image::RgbImage::from_fn(256, 256, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8]));
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80).encode_image(&image).expect("encoding a JPEG");
    Arc::new(jpeg)
});

/// Uploads `photo` and sends it with the request's text as its caption.
async fn send_photo(
    user: &User,
    mut request: SendMessageRequest,
    photo: &[u8],
) -> Result<tonic::Response<SendMessageResponse>, tonic::Status> {
    use sha2::Digest as _;
    let start = UploadStart {
        upload_id: format!("{}-{}", request.client_message_id, rand::random::<u32>()),
        kind: MediaKind::Photo as i32,
        size_bytes: photo.len() as u64,
        sha256: hex::encode(sha2::Sha256::digest(photo)),
        ..UploadStart::default()
    };
    let frames = vec![
        UploadMediaRequest { frame: Some(upload_media_request::Frame::Start(start)) },
        UploadMediaRequest { frame: Some(upload_media_request::Frame::Chunk(photo.to_vec())) },
    ];
    let media = user.api(0).upload_media(tokio_stream::iter(frames)).await?.into_inner().media.unwrap_or_default();
    let caption = match request.content.take() {
        Some(send_message_request::Content::Text(text)) => text.text,
        _ => String::new(),
    };
    request.content = Some(send_message_request::Content::Media(MediaContent {
        media_id: media.media_id,
        caption,
        ..MediaContent::default()
    }));
    send_with_retry(user, request).await
}
