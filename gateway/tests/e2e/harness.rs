//! Shared by every end-to-end test: real servers on 127.0.0.1:0 (in this
//! process, or as child processes of the built binaries), and real gRPC
//! clients that authenticate with tokens like any app would.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use imsg_broker::{BrokerConfig, Limits};
use imsg_common::retry::retry_after;
use imsg_common::token::Authenticator;
use imsg_gateway::{BrokerTarget, GatewayConfig, RunningGateway};
use imsg_proto::v1::{
    AcceptConversationRequest, CreateConversationRequest, DirectConversationSpec, Event, GroupConversationSpec, Hello,
    ListMessagesRequest, Message, OpenStreamRequest, OpenStreamResponse, SendMessageRequest, SendMessageResponse,
    TextContent, create_conversation_request, event, messaging_service_client::MessagingServiceClient,
    moderation_service_client::ModerationServiceClient, open_stream_request, open_stream_response,
    send_message_request,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

pub const SECRET: &str = "test-secret-0123456789abcdef";

/// The id secret of every broker process the tests start (cluster nodes
/// must share one).
pub const ID_SECRET: &str = "test-id-secret-0123456789abcdef";

/// The id of the direct conversation of a pair, as brokers started by the
/// tests derive it.
pub fn direct_conversation_id(a: &str, b: &str) -> String {
    imsg_common::ids::IdKey::new(ID_SECRET.as_bytes()).unwrap().direct_conversation_id(a, b)
}
/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The longest any one call may wait for its answer (a stream: for its
/// headers): a server that stops answering fails the test that waits on
/// it, with `DeadlineExceeded`, instead of hanging it. Far above any call
/// here, on a busy machine.
pub const CALL_LIMIT: Duration = Duration::from_secs(60);

/// A plaintext connection to `addr`, every call limited to [`CALL_LIMIT`].
pub async fn channel_to(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(PATIENCE)
        .timeout(CALL_LIMIT)
        .connect()
        .await
        .unwrap()
}

pub fn tokens() -> Authenticator {
    Authenticator::new(SECRET).unwrap()
}

/// A single-node server (gateway with an embedded broker) in this process.
pub struct TestServer {
    pub gateway: Option<RunningGateway>,
    pub addr: SocketAddr,
    pub data_dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Limits)) -> Self {
        Self::start_configured(tempfile::tempdir().unwrap(), tune).await
    }

    /// A server on an existing data dir (a restart).
    pub async fn start_in(data_dir: tempfile::TempDir) -> Self {
        Self::start_configured(data_dir, |_| {}).await
    }

    async fn start_configured(data_dir: tempfile::TempDir, tune: impl FnOnce(&mut Limits)) -> Self {
        Self::start_gateway(data_dir, |config| {
            if let BrokerTarget::Embedded(broker) = &mut config.broker {
                tune(&mut broker.limits);
            }
        })
        .await
    }

    /// A server whose gateway configuration `tune` adjusts.
    pub async fn start_gateway(data_dir: tempfile::TempDir, tune: impl FnOnce(&mut GatewayConfig)) -> Self {
        let mut broker = BrokerConfig::new(data_dir.path());
        broker.partitions = 8;
        broker.cache_capacity_bytes = 16 * 1024 * 1024;
        let mut config = GatewayConfig::new("127.0.0.1:0".parse().unwrap(), BrokerTarget::Embedded(broker), SECRET);
        tune(&mut config);
        let gateway = RunningGateway::start(config).await.unwrap();
        let addr = gateway.addr;
        Self { gateway: Some(gateway), addr, data_dir }
    }

    pub async fn client(&self, user: &str, device: &str) -> Client {
        Client::connect(self.addr, user, device).await
    }

    pub async fn stop(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await.unwrap();
        }
    }
}

#[derive(Clone)]
pub struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type Api = MessagingServiceClient<InterceptedService<Channel, Bearer>>;

/// One device of one user, talking to a gateway.
#[derive(Clone)]
pub struct Client {
    pub user: String,
    pub device: String,
    pub api: Api,
    channel: Channel,
    bearer: Bearer,
}

impl Client {
    pub async fn connect(addr: SocketAddr, user: &str, device: &str) -> Self {
        Self::on_channel(channel_to(addr).await, user, device, &[])
    }

    /// A client presenting `token` as it is (whoever signed it).
    pub async fn with_token(addr: SocketAddr, user: &str, device: &str, token: &str) -> Self {
        Self::bearing(channel_to(addr).await, user, device, token)
    }

    /// Another client on this client's connection, presenting `token`.
    pub fn sharing_connection(&self, token: &str) -> Self {
        Self::bearing(self.channel.clone(), &self.user, &self.device, token)
    }

    fn on_channel(channel: Channel, user: &str, device: &str, roles: &[&str]) -> Self {
        let token = tokens().issue_with_roles(user, device, 3600, roles).unwrap();
        Self::bearing(channel, user, device, &token)
    }

    fn bearing(channel: Channel, user: &str, device: &str, token: &str) -> Self {
        let bearer = Bearer(format!("Bearer {token}").parse().unwrap());
        Self {
            user: user.into(),
            device: device.into(),
            api: MessagingServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            channel,
            bearer,
        }
    }

    /// The moderators' API as this client (the broker checks its roles).
    pub fn moderation(&self) -> ModerationServiceClient<InterceptedService<Channel, Bearer>> {
        ModerationServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    /// Another user (or this one with roles) on the same connection.
    pub fn as_user(&self, user: &str, roles: &[&str]) -> Self {
        Self::on_channel(self.channel.clone(), user, "other", roles)
    }

    /// `user` accepts `conversation` (a message request to them).
    pub async fn accept_as(&self, user: &str, conversation: &str) {
        let request = AcceptConversationRequest { conversation_id: conversation.into() };
        self.as_user(user, &[]).api.accept_conversation(request).await.unwrap();
    }

    /// A direct conversation as a stranger opens it: a message request to
    /// `peer`, not accepted.
    pub async fn request_to(&self, peer: &str) -> String {
        let request = CreateConversationRequest {
            request_id: String::new(),
            kind: Some(create_conversation_request::Kind::Direct(DirectConversationSpec { peer_user_id: peer.into() })),
        };
        let response = self.api.clone().create_conversation(request).await.unwrap().into_inner();
        response.conversation.unwrap().conversation_id
    }

    /// The direct conversation with `peer`, accepted by them (as between
    /// people who know each other).
    pub async fn direct_with(&self, peer: &str) -> String {
        let conversation = self.request_to(peer).await;
        self.accept_as(peer, &conversation).await;
        conversation
    }

    pub async fn group(&self, title: &str, members: &[&str]) -> String {
        self.try_group(title, members).await.unwrap()
    }

    /// [`Self::group`], or the status of the first call refused.
    pub async fn try_group(&self, title: &str, members: &[&str]) -> Result<String, Status> {
        let request = CreateConversationRequest {
            request_id: format!("req-{}", rand::random::<u64>()),
            kind: Some(create_conversation_request::Kind::Group(GroupConversationSpec {
                title: title.into(),
                member_ids: members.iter().map(|m| m.to_string()).collect(),
            })),
        };
        let response = self.api.clone().create_conversation(request).await?.into_inner();
        let conversation = response.conversation.unwrap().conversation_id;
        // The members know the creator: each accepts.
        for member in members {
            if *member != self.user {
                self.accept_as(member, &conversation).await;
            }
        }
        Ok(conversation)
    }

    pub async fn try_send(
        &self,
        conversation: &str,
        client_id: &str,
        text: &str,
    ) -> Result<SendMessageResponse, Status> {
        let request = SendMessageRequest {
            conversation_id: conversation.into(),
            client_message_id: client_id.into(),
            reply_to_seq: 0,
            content: Some(send_message_request::Content::Text(TextContent { text: text.into() })),
        };
        self.api.clone().send_message(request).await.map(|r| r.into_inner())
    }

    /// Sends with client id `id` (the text is the id too), retrying what
    /// the one client rule retries (`imsg_common::retry`: a partition
    /// moving, a node restarting) with the same id for up to PATIENCE.
    pub async fn send_retrying(&self, conversation: &str, id: &str) -> SendMessageResponse {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match self.try_send(conversation, id, id).await {
                Ok(ack) => return ack,
                Err(status) => match retry_after(&status) {
                    Some(advised) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(advised.max(Duration::from_millis(20))).await
                    }
                    _ => panic!("send {id} refused: {status:?}"),
                },
            }
        }
    }

    pub async fn send(&self, conversation: &str, text: &str) -> u64 {
        let id = format!("c-{}", rand::random::<u64>());
        self.try_send(conversation, &id, text).await.unwrap().seq
    }

    /// Every message of a conversation, oldest first, paging forwards.
    pub async fn history(&self, conversation: &str) -> Vec<Message> {
        self.try_history(conversation).await.unwrap()
    }

    /// [`Self::history`], or the refusal.
    pub async fn try_history(&self, conversation: &str) -> Result<Vec<Message>, Status> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .api
                .clone()
                .list_messages(ListMessagesRequest {
                    conversation_id: conversation.into(),
                    page_size: 200,
                    page_token: page_token.clone(),
                    after_seq: Some(0),
                })
                .await?
                .into_inner();
            all.extend(page.messages);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }

    /// The first page of the inbox.
    pub async fn inbox(&self) -> imsg_proto::v1::ListConversationsResponse {
        let request = imsg_proto::v1::ListConversationsRequest::default();
        self.api.clone().list_conversations(request).await.unwrap().into_inner()
    }

    /// Opens the device stream after `cursor`.
    pub async fn open(&self, cursor: u64) -> Device {
        let (up, up_rx) = mpsc::channel(64);
        up.send(OpenStreamRequest { frame: Some(open_stream_request::Frame::Hello(Hello { cursor })) }).await.unwrap();
        let stream = self
            .api
            .clone()
            .open_stream(tokio_stream::wrappers::ReceiverStream::new(up_rx))
            .await
            .unwrap()
            .into_inner();
        let (frames_tx, frames) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut stream = stream;
            loop {
                match stream.message().await {
                    Ok(Some(frame)) => {
                        if frames_tx.send(Ok(frame)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let _ = frames_tx.send(Err(status));
                        return;
                    }
                }
            }
        });
        Device { up, frames, reader, cursor }
    }
}

/// An open device stream that records what arrives.
pub struct Device {
    pub up: mpsc::Sender<OpenStreamRequest>,
    frames: mpsc::UnboundedReceiver<Result<OpenStreamResponse, Status>>,
    reader: tokio::task::JoinHandle<()>,
    /// Cursor of the newest logged event received.
    pub cursor: u64,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Device {
    /// The next frame, or None when the stream ended or PATIENCE passed.
    pub async fn frame_within(&mut self, wait: Duration) -> Option<Result<open_stream_response::Frame, Status>> {
        match tokio::time::timeout(wait, self.frames.recv()).await {
            Ok(Some(Ok(frame))) => {
                let frame = frame.frame?;
                if let open_stream_response::Frame::Event(Event { cursor, .. }) = &frame
                    && *cursor > 0
                {
                    self.cursor = *cursor;
                }
                Some(Ok(frame))
            }
            Ok(Some(Err(status))) => Some(Err(status)),
            Ok(None) | Err(_) => None,
        }
    }

    pub async fn frame(&mut self) -> Option<open_stream_response::Frame> {
        match self.frame_within(PATIENCE).await {
            Some(Ok(frame)) => Some(frame),
            _ => None,
        }
    }

    /// Waits for `Ready`, returning the events replayed before it.
    pub async fn ready(&mut self) -> Vec<event::Kind> {
        let mut replayed = Vec::new();
        loop {
            match self.frame().await {
                Some(open_stream_response::Frame::Ready(_)) => return replayed,
                Some(open_stream_response::Frame::Event(e)) => replayed.extend(e.kind),
                other => panic!("expected replay then ready, got {other:?}"),
            }
        }
    }

    /// Waits for `Ready`; the seqs of `conversation`'s messages replayed
    /// before it, in the order they came.
    pub async fn replayed_seqs(&mut self, conversation: &str) -> Vec<u64> {
        self.ready()
            .await
            .into_iter()
            .filter_map(|kind| match kind {
                event::Kind::Message(message) if message.conversation_id == conversation => Some(message.seq),
                _ => None,
            })
            .collect()
    }

    /// The next event that matches, skipping others; panics after PATIENCE.
    pub async fn event_where(&mut self, what: &str, mut matches: impl FnMut(&event::Kind) -> bool) -> event::Kind {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.frame_within(left).await {
                Some(Ok(open_stream_response::Frame::Event(Event { kind: Some(kind), .. }))) if matches(&kind) => {
                    return kind;
                }
                Some(Ok(_)) => continue,
                Some(Err(status)) => panic!("stream failed waiting for {what}: {status}"),
                None => panic!("no {what} within {PATIENCE:?}"),
            }
        }
    }

    pub async fn message(&mut self) -> Message {
        match self.event_where("a message", |k| matches!(k, event::Kind::Message(_))).await {
            event::Kind::Message(m) => m,
            _ => unreachable!(),
        }
    }

    /// True if no frame matching arrives within `wait`.
    pub async fn quiet_for(
        &mut self,
        wait: Duration,
        mut matches: impl FnMut(&open_stream_response::Frame) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.frame_within(left).await {
                Some(Ok(frame)) if matches(&frame) => return false,
                Some(Ok(_)) => continue,
                _ => return true,
            }
        }
    }

    pub async fn send_frame(&self, frame: open_stream_request::Frame) {
        self.up.send(OpenStreamRequest { frame: Some(frame) }).await.unwrap();
    }
}

// ---- child processes ----

/// Path of a binary built next to this test's `imsg-gateway`.
/// A free loopback port for a server that starts later, from below the
/// kernel's ephemeral range (32768-60999 by default). A port from that
/// range (bind to port 0, then release) can go to another test's outgoing
/// connection before the server binds it: "Address already in use", seen
/// in CI for a cluster node.
pub fn reserved_port() -> u16 {
    loop {
        let port = rand::random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn binary(name: &str) -> PathBuf {
    let gateway = PathBuf::from(env!("CARGO_BIN_EXE_imsg-gateway"));
    let path = gateway.with_file_name(name);
    assert!(path.exists(), "{} is not built; run the workspace tests (cargo test --workspace)", path.display());
    path
}

/// A server process; killed with SIGKILL when dropped.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
}

/// `binary args...` as every test runs a server: the test secret, warnings
/// on stderr, stdout piped (for the "listening on" line), killed on drop.
pub fn server_command(binary: &Path, args: &[String]) -> Command {
    let mut command = Command::new(binary);
    command
        .args(args)
        .env("IMSG_JWT_SECRET", SECRET)
        .env("IMSG_ID_SECRET", ID_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    command
}

impl Process {
    /// Starts `binary args...` and waits for its "listening on ADDR" line.
    pub async fn spawn(binary: &Path, args: &[String]) -> Self {
        let mut child = server_command(binary, args).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    return addr.trim().parse::<SocketAddr>().unwrap();
                }
            }
            panic!("{} exited before listening", binary.display());
        })
        .await
        .expect("server did not start listening in time");
        Self { child, addr }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().unwrap() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY-free: libc::kill with our own child's pid.
        assert_eq!(unsafe_kill(self.pid(), signal), 0, "kill({}, {signal}) failed", self.pid());
    }

    pub async fn sigkill(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait().await;
    }
}

/// kill(2): sends `signal` to `pid`, a process the test started.
#[allow(unsafe_code)]
pub fn unsafe_kill(pid: i32, signal: i32) -> i32 {
    // SAFETY: kill(2) has no memory-safety preconditions; pid is our child.
    unsafe { libc::kill(pid, signal) }
}

/// Partition count of every broker the tests start (small: fast starts).
pub const PARTITIONS: u32 = 8;

/// Flags for a broker process on `listen` with `data_dir`.
pub fn broker_args(data_dir: &Path, listen: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen".into(),
        listen.into(),
        "--partitions".into(),
        PARTITIONS.to_string(),
        "--cache-mb".into(),
        "16".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Flags for a gateway process in front of `broker`.
pub fn gateway_args(broker: SocketAddr) -> Vec<String> {
    gateway_args_for(&format!("http://{broker}"))
}

/// Flags for a gateway process in front of broker nodes (comma-separated
/// URLs); it learns the partition count and limits from them.
pub fn gateway_args_for(broker_urls: &str) -> Vec<String> {
    vec!["--broker".into(), broker_urls.into(), "--listen".into(), "127.0.0.1:0".into()]
}

/// A real S3-compatible server for the tests: moto in server mode (PyPI
/// `moto[server]`, which `.ci/test` installs into `.ci/.tools/venv`), on a
/// loopback port, with one bucket. Stopped when dropped.
pub struct S3Server {
    _process: Child,
    pub endpoint: String,
    pub bucket: String,
}

impl S3Server {
    pub async fn start() -> Self {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
        let binary = std::env::var_os("IMSG_MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join(".ci/.tools/venv/bin/moto_server"));
        assert!(
            binary.exists(),
            "{} is missing: run .ci/test (it installs moto[server]) or set IMSG_MOTO_SERVER",
            binary.display()
        );
        let mut process = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(process.stderr.take().unwrap()).lines();
        let endpoint = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(at) = line.find("http://127.0.0.1:") {
                    return line[at..].trim().to_owned();
                }
            }
            panic!("moto_server exited before listening");
        })
        .await
        .expect("moto_server did not start");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let server = Self { _process: process, endpoint, bucket: "imsg-media".into() };
        let (status, _) = server.http("PUT", &format!("/{}", server.bucket)).await;
        assert!(status.starts_with("HTTP/1.1 200"), "creating the bucket: {status}");
        server
    }

    /// Every key in the bucket.
    pub async fn keys(&self) -> Vec<String> {
        let (_, body) = self.http("GET", &format!("/{}?list-type=2&max-keys=1000", self.bucket)).await;
        body.split("<Key>").skip(1).filter_map(|rest| rest.split("</Key>").next()).map(str::to_owned).collect()
    }

    /// A plain HTTP request (moto accepts unsigned ones); the status line
    /// and the body.
    async fn http(&self, method: &str, path: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let host = self.endpoint.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response.lines().next().unwrap_or_default().to_owned();
        let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
        (status, body)
    }
}

/// Every file under `dir` (recursively; a missing directory has none) whose
/// bytes contain `needle`: what a byte scan for deleted content looks for.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}
