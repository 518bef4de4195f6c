//! Rust client SDK for imsg.
//!
//! A [`Client`] holds one device's connection: a typed event stream
//! ([`Client::next_event`]) that survives disconnects, and calls for the
//! rest. Behind the stream a task keeps the device's realtime stream open:
//! when it breaks, it reconnects with jittered exponential backoff and
//! resumes from the last cursor it delivered, so the application sees every
//! logged event once, in order, across reconnects (events are also
//! deduplicated by `(conversation, seq)` in case a replay overlaps what was
//! already seen). Messages are sent on that same stream (no call per
//! message; several may be in flight) and acknowledged on it; a send still
//! waiting when the stream breaks goes again on the next one, and sends
//! are retried with the same client message id until acknowledged, which
//! the server deduplicates. A device does not receive its own new messages
//! back as events: the acknowledgement is its copy.
//!
//! ```no_run
//! # async fn demo() -> Result<(), imsg_client::Error> {
//! use imsg_client::{Client, ClientConfig, Event};
//!
//! let token = std::env::var("IMSG_TOKEN").unwrap(); // e.g. from `imsg-gateway token`
//! let mut client = Client::connect(ClientConfig::new("http://127.0.0.1:7000", token)).await?;
//! let conversation = client.direct_with("bob").await?;
//! client.send_text(&conversation, "hi bob").await?;
//! while let Some(event) = client.next_event().await {
//!     if let Event::Message(message) = event {
//!         println!("{}: {:?}", message.sender_id, message.content);
//!         client.mark_read(&conversation, message.seq).await;
//!     }
//! }
//! # Ok(()) }
//! ```

mod privacy;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use imsg_common::retry::retry_after;
use imsg_proto::v1::{
    ConversationUpdate, CreateConversationRequest, DeleteMessageForMeRequest, DirectConversationSpec,
    DownloadMediaRequest, EditMessageRequest, EditMessageResponse, ForwardMessageRequest, ForwardMessageResponse,
    GetUploadRequest, Hello, LinkContent, ListMessagesRequest, ListMessagesResponse, MarkRead, MediaContent, MediaKind,
    Message, MessageHidden, OpenStreamRequest, Presence, ReactToMessageRequest, ReactionUpdate, ReceiptUpdate,
    RefreshToken, SendMessageRequest, SendMessageResponse, SendOutcome, SharedContent, StreamError, TextContent,
    TypingSignal, TypingUpdate, UnsendMessageRequest, UploadMediaRequest, UploadStart, create_conversation_request,
    event, messaging_service_client::MessagingServiceClient, open_stream_request, open_stream_response::Frame,
    send_message_request, send_outcome, upload_media_request,
};
use tokio::sync::{mpsc, oneshot};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// What the SDK reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Rpc(#[from] Status),
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The gateway, e.g. `http://127.0.0.1:7000`, or `https://...` for
    /// TLS (trusting the system's CAs and [`Self::ca_pem`]).
    pub endpoint: String,
    /// A CA certificate (PEM) to trust for an `https` endpoint besides the
    /// system's: a private CA, or a development one.
    pub ca_pem: Option<Vec<u8>>,
    /// A bearer token (JWT) naming the user and device.
    pub token: String,
    /// The last cursor this device processed (0 for a new device).
    pub cursor: u64,
    /// First and largest wait between reconnect attempts.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl ClientConfig {
    pub fn new(endpoint: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            token: token.into(),
            ca_pem: None,
            cursor: 0,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// One event for the application.
#[derive(Debug, Clone)]
pub enum Event {
    Message(Message),
    /// A member reacted to a message (an empty emoji: removed theirs).
    Reaction(ReactionUpdate),
    /// A message was edited or unsent: its state now (an unsent one has
    /// `unsent` set and no content; remove what was shown).
    MessageUpdated(Message),
    /// This user deleted a message for themselves on another device.
    MessageHidden(MessageHidden),
    Receipt(ReceiptUpdate),
    Typing(TypingUpdate),
    Presence(Presence),
    Conversation(ConversationUpdate),
    /// The stream is (re)connected and caught up; live events follow.
    Connected {
        cursor: u64,
        replayed: u64,
    },
    /// The stream broke; the SDK is reconnecting.
    Disconnected {
        reason: String,
    },
    /// The server no longer has what this device missed: reload state
    /// (inbox, history). The SDK continues from `cursor`.
    ResyncRequired {
        cursor: u64,
    },
}

/// Adds the bearer token to every call; clones share it, so a refreshed
/// token is used by every call and reconnect that follows.
#[derive(Clone)]
pub struct Bearer(Arc<std::sync::RwLock<MetadataValue<Ascii>>>);

impl Bearer {
    pub fn new(token: &str) -> Result<Self, Error> {
        Ok(Self(Arc::new(std::sync::RwLock::new(Self::value(token)?))))
    }

    /// Replaces the token.
    pub fn set(&self, token: &str) -> Result<(), Error> {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Self::value(token)?;
        Ok(())
    }

    fn value(token: &str) -> Result<MetadataValue<Ascii>, Error> {
        format!("Bearer {token}").parse().map_err(|_| Error::Config("token: not ASCII".into()))
    }
}

/// The API over any channel (many users may share one connection).
pub fn api(channel: Channel, token: &str) -> Result<Api, Error> {
    Ok(MessagingServiceClient::with_interceptor(channel, Bearer::new(token)?))
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// The generated gRPC client, authenticated.
pub type Api = MessagingServiceClient<InterceptedService<Channel, Bearer>>;

/// The least time between two typing signals for one conversation.
const TYPING_EVERY: Duration = Duration::from_secs(3);

/// One device's connection to imsg.
pub struct Client {
    api: Api,
    bearer: Bearer,
    events: mpsc::Receiver<Event>,
    upstream: mpsc::UnboundedSender<Upstream>,
    cursor: Arc<AtomicU64>,
    typing_sent: Mutex<HashMap<String, Instant>>,
    config: ClientConfig,
}

impl Client {
    /// Starts the device: the connection is made lazily and kept open.
    pub async fn connect(config: ClientConfig) -> Result<Self, Error> {
        let mut endpoint =
            Channel::from_shared(config.endpoint.clone()).map_err(|e| Error::Config(format!("endpoint: {e}")))?;
        if config.endpoint.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &config.ca_pem {
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| Error::Config(format!("TLS: {e}")))?;
        }
        let channel = endpoint.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true).connect_lazy();
        let bearer = Bearer::new(&config.token)?;
        let api = MessagingServiceClient::with_interceptor(channel, bearer.clone());
        let (events_tx, events) = mpsc::channel(1024);
        let (upstream, upstream_rx) = mpsc::unbounded_channel();
        let cursor = Arc::new(AtomicU64::new(config.cursor));
        tokio::spawn(keep_streaming(api.clone(), config.clone(), cursor.clone(), events_tx, upstream_rx));
        Ok(Self { api, bearer, events, upstream, cursor, typing_sent: Mutex::new(HashMap::new()), config })
    }

    /// Replaces the token before it expires: calls and reconnects use the
    /// new one, and the open stream is told on the stream, so it goes on
    /// past the old token's expiry instead of ending with a goodbye.
    pub fn refresh_token(&self, token: &str) -> Result<(), Error> {
        self.bearer.set(token)?;
        let refresh = open_stream_request::Frame::RefreshToken(RefreshToken { token: token.into() });
        let _ = self.upstream.send(Upstream::Frame(refresh));
        Ok(())
    }

    /// The next event; `None` once the client is dropped.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The cursor of the newest logged event delivered to the application:
    /// persist it to resume after a restart (`ClientConfig::cursor`).
    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::SeqCst)
    }

    /// The raw API, for calls this SDK does not wrap.
    pub fn api(&self) -> Api {
        self.api.clone()
    }

    /// The direct conversation with `peer` (created on first use).
    pub async fn direct_with(&self, peer: &str) -> Result<String, Error> {
        let request = CreateConversationRequest {
            request_id: String::new(),
            kind: Some(create_conversation_request::Kind::Direct(DirectConversationSpec { peer_user_id: peer.into() })),
        };
        let response = self.api.clone().create_conversation(request).await?.into_inner();
        response.conversation.map(|c| c.conversation_id).ok_or_else(|| Status::internal("no conversation").into())
    }

    /// Sends a text; retried with the same client message id, while the
    /// error is retryable, until acknowledged.
    pub async fn send_text(&self, conversation: &str, text: &str) -> Result<SendMessageResponse, Error> {
        self.send(conversation, text_content(text), 0).await
    }

    /// Sends a text replying to message `reply_to_seq` (the recipients see a
    /// preview of it).
    pub async fn reply_text(
        &self,
        conversation: &str,
        reply_to_seq: u64,
        text: &str,
    ) -> Result<SendMessageResponse, Error> {
        self.send(conversation, text_content(text), reply_to_seq).await
    }

    /// Sends a link (http or https) with optional text.
    pub async fn send_link(&self, conversation: &str, url: &str, text: &str) -> Result<SendMessageResponse, Error> {
        let link = LinkContent { url: url.into(), text: text.into(), preview: None };
        self.send(conversation, send_message_request::Content::Link(link), 0).await
    }

    /// Shares a post, reel or profile.
    pub async fn share(&self, conversation: &str, shared: SharedContent) -> Result<SendMessageResponse, Error> {
        self.send(conversation, send_message_request::Content::Shared(shared), 0).await
    }

    /// Sends any content on the device's stream; retried with one client
    /// message id, while the server says a retry may succeed, until
    /// acknowledged.
    pub async fn send(
        &self,
        conversation: &str,
        content: send_message_request::Content,
        reply_to_seq: u64,
    ) -> Result<SendMessageResponse, Error> {
        let request = SendMessageRequest {
            conversation_id: conversation.into(),
            client_message_id: new_client_message_id(),
            reply_to_seq,
            content: Some(content),
        };
        let mut backoff = Backoff::new(&self.config);
        loop {
            let (reply, outcome) = oneshot::channel();
            let stopped = || Error::Rpc(Status::cancelled("the client's stream task stopped"));
            self.upstream.send(Upstream::Send(request.clone(), reply)).map_err(|_| stopped())?;
            match outcome.await.map_err(|_| stopped())? {
                Ok(sent) => return Ok(sent),
                Err(refused) if refused.retry_after_ms > 0 => {
                    backoff.wait_at_least(Duration::from_millis(refused.retry_after_ms)).await;
                }
                Err(refused) => return Err(Status::new(refused.code.into(), refused.message).into()),
            }
        }
    }

    /// Sets this user's reaction to a message (replacing theirs); an empty
    /// `emoji` removes it.
    pub async fn react(&self, conversation: &str, seq: u64, emoji: &str) -> Result<(), Error> {
        let request = ReactToMessageRequest { conversation_id: conversation.into(), seq, emoji: emoji.into() };
        self.retrying(request, |mut api, request| async move { api.react_to_message(request).await }).await?;
        Ok(())
    }

    /// Replaces the text (or caption) of this user's own message, within
    /// the server's edit window.
    pub async fn edit(&self, conversation: &str, seq: u64, text: &str) -> Result<EditMessageResponse, Error> {
        let request = EditMessageRequest { conversation_id: conversation.into(), seq, text: text.into() };
        self.retrying(request, |mut api, request| async move { api.edit_message(request).await }).await
    }

    /// Unsends this user's own message for everyone.
    pub async fn unsend(&self, conversation: &str, seq: u64) -> Result<(), Error> {
        let request = UnsendMessageRequest { conversation_id: conversation.into(), seq };
        self.retrying(request, |mut api, request| async move { api.unsend_message(request).await }).await?;
        Ok(())
    }

    /// Hides a message from this user's history on all their devices.
    pub async fn delete_for_me(&self, conversation: &str, seq: u64) -> Result<(), Error> {
        let request = DeleteMessageForMeRequest { conversation_id: conversation.into(), seq };
        self.retrying(request, |mut api, request| async move { api.delete_message_for_me(request).await }).await?;
        Ok(())
    }

    /// Forwards a message to up to 5 conversations.
    pub async fn forward(
        &self,
        conversation: &str,
        seq: u64,
        to_conversations: &[&str],
    ) -> Result<ForwardMessageResponse, Error> {
        let request = ForwardMessageRequest {
            conversation_id: conversation.into(),
            seq,
            to_conversation_ids: to_conversations.iter().map(|c| c.to_string()).collect(),
            client_message_id: new_client_message_id(),
        };
        self.retrying(request, |mut api, request| async move { api.forward_message(request).await }).await
    }

    /// Uploads a medium, resuming after a cut connection where the server
    /// has it; answers the verified medium to send with [`Self::send_media`].
    pub async fn upload(&self, kind: MediaKind, bytes: &[u8], file_name: &str) -> Result<MediaContent, Error> {
        use sha2::Digest as _;
        let upload_id = format!("up-{:016x}", rand::random::<u64>());
        let sha256 = hex::encode(sha2::Sha256::digest(bytes));
        let mut backoff = Backoff::new(&self.config);
        let mut offset = 0u64;
        loop {
            let start = UploadStart {
                upload_id: upload_id.clone(),
                kind: kind as i32,
                size_bytes: bytes.len() as u64,
                sha256: sha256.clone(),
                offset,
                duration_ms: 0,
                file_name: file_name.into(),
            };
            let mut frames = vec![UploadMediaRequest { frame: Some(upload_media_request::Frame::Start(start)) }];
            frames.extend(
                bytes[offset as usize..].chunks(UPLOAD_CHUNK).map(|chunk| UploadMediaRequest {
                    frame: Some(upload_media_request::Frame::Chunk(chunk.to_vec())),
                }),
            );
            let status = match self.api.clone().upload_media(tokio_stream::iter(frames)).await {
                Ok(response) => {
                    return response.into_inner().media.ok_or_else(|| Status::internal("no medium").into());
                }
                Err(status) => status,
            };
            let Some(delay) = retry_after(&status) else { return Err(status.into()) };
            backoff.wait_at_least(delay).await;
            // Resume where the server is.
            let request = GetUploadRequest { upload_id: upload_id.clone() };
            if let Ok(have) = self.api.clone().get_upload(request).await {
                let have = have.into_inner();
                if let Some(media) = have.media {
                    return Ok(media);
                }
                offset = have.received_bytes.min(bytes.len() as u64);
            }
        }
    }

    /// Sends an uploaded medium with a caption.
    pub async fn send_media(
        &self,
        conversation: &str,
        media: &MediaContent,
        caption: &str,
    ) -> Result<SendMessageResponse, Error> {
        let content = MediaContent { media_id: media.media_id.clone(), caption: caption.into(), ..Default::default() };
        self.send(conversation, send_message_request::Content::Media(content), 0).await
    }

    /// The medium (or its thumbnail) of message `seq`.
    pub async fn download(&self, conversation: &str, seq: u64, thumbnail: bool) -> Result<Vec<u8>, Error> {
        let request =
            DownloadMediaRequest { conversation_id: conversation.into(), seq, thumbnail, offset: 0, length: 0 };
        let mut frames = self.api.clone().download_media(request).await?.into_inner();
        let mut bytes = Vec::new();
        while let Some(frame) = frames.message().await? {
            bytes.extend_from_slice(&frame.chunk);
        }
        Ok(bytes)
    }

    /// Runs an idempotent call, retrying it unchanged while the server says
    /// a retry may succeed (`google.rpc.RetryInfo`), no sooner than it says.
    async fn retrying<Req: Clone, Resp, F, Fut>(&self, request: Req, call: F) -> Result<Resp, Error>
    where
        F: Fn(Api, Req) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let mut backoff = Backoff::new(&self.config);
        loop {
            match call(self.api.clone(), request.clone()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => match retry_after(&status) {
                    Some(delay) => backoff.wait_at_least(delay).await,
                    None => return Err(status.into()),
                },
            }
        }
    }

    /// Tells the other members this user is typing; at most one signal per
    /// conversation every 3 s reaches the server.
    pub async fn typing(&self, conversation: &str) {
        {
            let mut sent = self.typing_sent.lock().unwrap_or_else(|e| e.into_inner());
            if sent.get(conversation).is_some_and(|at| at.elapsed() < TYPING_EVERY) {
                return;
            }
            sent.insert(conversation.to_owned(), Instant::now());
        }
        let frame =
            open_stream_request::Frame::Typing(TypingSignal { conversation_id: conversation.into(), active: true });
        let _ = self.upstream.send(Upstream::Frame(frame));
    }

    /// Marks everything up to `seq` read (sent on the realtime stream; kept
    /// and re-sent after a reconnect).
    pub async fn mark_read(&self, conversation: &str, seq: u64) {
        let mark = open_stream_request::Frame::MarkRead(MarkRead { conversation_id: conversation.into(), seq });
        let _ = self.upstream.send(Upstream::Frame(mark));
    }

    /// A page of history walking backwards: the newest `page_size` messages
    /// (first call, empty token), then older pages with the returned
    /// `next_page_token`. Each page is in ascending seq order.
    pub async fn history(
        &self,
        conversation: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<ListMessagesResponse, Error> {
        let request = ListMessagesRequest {
            conversation_id: conversation.into(),
            page_size,
            page_token: page_token.into(),
            after_seq: None,
        };
        Ok(self.api.clone().list_messages(request).await?.into_inner())
    }
}

/// Bytes per upload frame (the server takes up to 240 KiB).
const UPLOAD_CHUNK: usize = 128 * 1024;

fn text_content(text: &str) -> send_message_request::Content {
    send_message_request::Content::Text(TextContent { text: text.into() })
}

fn new_client_message_id() -> String {
    format!("sdk-{:016x}", rand::random::<u64>())
}

/// Jittered exponential backoff.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(config: &ClientConfig) -> Self {
        Self { next: config.backoff_min, max: config.backoff_max }
    }

    async fn wait(&mut self) {
        self.wait_at_least(Duration::ZERO).await
    }

    /// The next backoff step, or the server's advice if that is longer.
    async fn wait_at_least(&mut self, advised: Duration) {
        let jittered = self.next.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        tokio::time::sleep(jittered.max(advised)).await;
        self.next = (self.next * 2).min(self.max);
    }
}

/// What the application hands the stream task.
enum Upstream {
    Frame(open_stream_request::Frame),
    /// A message to send on the stream, and where its outcome goes.
    Send(SendMessageRequest, oneshot::Sender<Result<SendMessageResponse, StreamError>>),
}

/// What the stream task keeps across reconnects.
#[derive(Default)]
struct StreamState {
    /// Newest message seq seen per conversation: drops overlap on resume.
    newest: HashMap<String, u64>,
    /// Latest read mark per conversation, re-sent after a reconnect.
    read_marks: HashMap<String, u64>,
    /// Sends without an outcome, by client message id, in the order made:
    /// re-sent after a reconnect.
    sending: Vec<(SendMessageRequest, oneshot::Sender<Result<SendMessageResponse, StreamError>>)>,
}

/// Keeps the realtime stream open until the client is dropped.
async fn keep_streaming(
    api: Api,
    config: ClientConfig,
    cursor: Arc<AtomicU64>,
    events: mpsc::Sender<Event>,
    mut upstream: mpsc::UnboundedReceiver<Upstream>,
) {
    let mut state = StreamState::default();
    let mut backoff = Backoff::new(&config);
    loop {
        let reason = match stream_once(&api, &cursor, &events, &mut upstream, &mut state, &mut backoff).await {
            Ok(()) => return, // the application dropped the client
            Err(reason) => reason,
        };
        if events.send(Event::Disconnected { reason }).await.is_err() {
            return;
        }
        backoff.wait().await;
    }
}

/// One connection: hello, replay, live, until it ends. `Ok` only when the
/// application is gone.
async fn stream_once(
    api: &Api,
    cursor: &AtomicU64,
    events: &mpsc::Sender<Event>,
    upstream: &mut mpsc::UnboundedReceiver<Upstream>,
    state: &mut StreamState,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let StreamState { newest, read_marks, sending } = state;
    let (up, up_rx) = mpsc::unbounded_channel();
    let hello = open_stream_request::Frame::Hello(Hello { cursor: cursor.load(Ordering::SeqCst) });
    let _ = up.send(OpenStreamRequest { frame: Some(hello) });
    for (conversation_id, seq) in read_marks.iter() {
        let mark = MarkRead { conversation_id: conversation_id.clone(), seq: *seq };
        let _ = up.send(OpenStreamRequest { frame: Some(open_stream_request::Frame::MarkRead(mark)) });
    }
    // Whatever was sent on the last stream without an outcome goes again.
    sending.retain(|(_, reply)| !reply.is_closed());
    for (request, _) in sending.iter() {
        let _ = up.send(OpenStreamRequest {
            frame: Some(open_stream_request::Frame::SendMessage(Box::new(request.clone()))),
        });
    }
    let mut frames = api
        .clone()
        .open_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(up_rx))
        .await
        .map_err(|status| status.to_string())?
        .into_inner();
    loop {
        tokio::select! {
            work = upstream.recv() => {
                let frame = match work {
                    None => return Ok(()),
                    Some(Upstream::Send(request, reply)) => {
                        let frame = open_stream_request::Frame::SendMessage(Box::new(request.clone()));
                        sending.push((request, reply));
                        frame
                    }
                    Some(Upstream::Frame(frame)) => {
                        if let open_stream_request::Frame::MarkRead(read) = &frame {
                            let seq = read_marks.entry(read.conversation_id.clone()).or_default();
                            *seq = (*seq).max(read.seq);
                        }
                        frame
                    }
                };
                let _ = up.send(OpenStreamRequest { frame: Some(frame) });
            }
            frame = frames.message() => {
                let frame = match frame {
                    Ok(Some(frame)) => frame.frame,
                    Ok(None) => return Err("stream ended".into()),
                    Err(status) => return Err(status.to_string()),
                };
                let event = match frame {
                    Some(Frame::Ready(ready)) => {
                        *backoff = Backoff { next: backoff.next.min(Duration::from_millis(100)), max: backoff.max };
                        Event::Connected { cursor: ready.cursor, replayed: ready.replayed }
                    }
                    Some(Frame::ResyncRequired(resync)) => {
                        cursor.store(resync.cursor, Ordering::SeqCst);
                        newest.clear();
                        if events.send(Event::ResyncRequired { cursor: resync.cursor }).await.is_err() {
                            return Ok(());
                        }
                        return Err("resync required".into());
                    }
                    Some(Frame::Goodbye(goodbye)) => return Err(goodbye.reason),
                    Some(Frame::Event(e)) => {
                        let logged = e.cursor;
                        let event = match e.kind {
                            Some(event::Kind::Message(message)) => {
                                let seen = newest.entry(message.conversation_id.clone()).or_default();
                                if message.seq <= *seen {
                                    None // already delivered before a reconnect
                                } else {
                                    *seen = message.seq;
                                    Some(Event::Message(message))
                                }
                            }
                            Some(event::Kind::Reaction(reaction)) => Some(Event::Reaction(reaction)),
                            Some(event::Kind::MessageUpdate(update)) => update.message.map(Event::MessageUpdated),
                            Some(event::Kind::MessageHidden(hidden)) => Some(Event::MessageHidden(hidden)),
                            Some(event::Kind::Receipt(receipt)) => Some(Event::Receipt(receipt)),
                            Some(event::Kind::Typing(typing)) => Some(Event::Typing(typing)),
                            Some(event::Kind::Presence(update)) => update.presence.map(Event::Presence),
                            Some(event::Kind::Conversation(update)) => Some(Event::Conversation(update)),
                            None => None,
                        };
                        if let Some(event) = event && events.send(event).await.is_err() {
                            return Ok(());
                        }
                        // Only once the application has the event does the
                        // cursor move past it.
                        if logged > 0 {
                            cursor.fetch_max(logged, Ordering::SeqCst);
                        }
                        continue;
                    }
                    Some(Frame::SendOutcome(outcome)) => {
                        settle(sending, outcome);
                        continue;
                    }
                    Some(Frame::Pong(_)) | Some(Frame::Error(_)) | None => continue,
                };
                if events.send(event).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Hands a send's outcome to the caller waiting for it.
fn settle(
    sending: &mut Vec<(SendMessageRequest, oneshot::Sender<Result<SendMessageResponse, StreamError>>)>,
    outcome: SendOutcome,
) {
    let Some(at) = sending.iter().position(|(request, _)| request.client_message_id == outcome.client_message_id)
    else {
        return;
    };
    let (_, reply) = sending.remove(at);
    let result = match outcome.outcome {
        Some(send_outcome::Outcome::Sent(sent)) => Ok(sent),
        Some(send_outcome::Outcome::Error(refused)) => Err(refused),
        None => Err(StreamError {
            code: tonic::Code::Internal as i32,
            message: "an empty outcome".into(),
            ..Default::default()
        }),
    };
    let _ = reply.send(result);
}
