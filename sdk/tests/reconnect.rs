//! The SDK's promise: when the server side drops the connection in the
//! middle of a conversation, the client reconnects by itself and resumes
//! from its cursor, and the application sees every message once, in order.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use imsg_broker::BrokerConfig;
use imsg_client::{Client, ClientConfig, Event};
use imsg_common::token::Authenticator;
use imsg_gateway::{BrokerTarget, GatewayConfig, RunningGateway};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

const SECRET: &str = "sdk-test-secret-0123456789";

/// A TCP proxy whose connections the test can cut, as a failing network
/// or a gateway restart would.
struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<u64>,
    /// While true, new connections are closed at once (the server is "down").
    down: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cuts) = watch::channel(0u64);
        let down = Arc::new(AtomicBool::new(false));
        let refusing = down.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if refusing.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is reset
                }
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        // Dropping both sockets resets the connection.
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Self { addr, cut, down }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut_all();
        }
    }

    fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

async fn client(endpoint: SocketAddr, user: &str) -> Client {
    let token = Authenticator::new(SECRET).unwrap().issue(user, "phone", 600).unwrap();
    let mut config = ClientConfig::new(format!("http://{endpoint}"), token);
    config.backoff_min = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    Client::connect(config).await.unwrap()
}

async fn server(data: &std::path::Path) -> RunningGateway {
    let mut broker = BrokerConfig::new(data);
    broker.partitions = 8;
    let config = GatewayConfig::new("127.0.0.1:0".parse().unwrap(), BrokerTarget::Embedded(broker), SECRET);
    RunningGateway::start(config).await.unwrap()
}

#[tokio::test]
async fn a_dropped_connection_is_resumed_with_no_gap_and_no_duplicate() {
    let data = tempfile::tempdir().unwrap();
    let server = server(data.path()).await;
    let proxy = Proxy::start(server.addr).await;
    let alice = client(server.addr, "alice").await;
    let mut bob = client(proxy.addr, "bob").await;
    let conversation = alice.direct_with("bob").await.unwrap();
    bob.accept(&conversation).await.unwrap();

    let total = 200u64;
    let sender = tokio::spawn(async move {
        for n in 1..=total {
            alice.send_text(&conversation, &format!("message {n}")).await.unwrap();
            if n % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
    });

    let mut seqs = Vec::new();
    let mut disconnects = 0;
    let mut cuts = 0;
    while (seqs.len() as u64) < total {
        let event = tokio::time::timeout(Duration::from_secs(15), bob.next_event()).await;
        match event.expect("no event for 15 s").expect("client closed") {
            Event::Message(message) => {
                seqs.push(message.seq);
                // Cut the network twice in the middle of the conversation.
                if (seqs.len() == 50 && cuts == 0) || (seqs.len() == 130 && cuts == 1) {
                    proxy.cut_all();
                    cuts += 1;
                }
            }
            Event::Disconnected { .. } => disconnects += 1,
            _ => {}
        }
    }
    sender.await.unwrap();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "every message once, in order");
    assert!(disconnects >= 2, "the connection was cut twice, seen {disconnects} disconnects");
    assert!(bob.cursor() > 0);
    // Nothing more arrives: no late duplicates after the last message.
    let late = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Some(Event::Message(message)) = bob.next_event().await {
                return message.seq;
            }
        }
    })
    .await;
    assert!(late.is_err(), "a duplicate arrived after the last message: {late:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_send_during_an_outage_is_retried_until_acknowledged_and_stored_once() {
    let data = tempfile::tempdir().unwrap();
    let server = server(data.path()).await;
    let proxy = Proxy::start(server.addr).await;
    let alice = client(proxy.addr, "alice").await;
    let conversation = alice.direct_with("bob").await.unwrap();
    proxy.set_down(true);
    let sending = tokio::spawn(async move {
        let ack = alice.send_text(&conversation, "sent while down").await.unwrap();
        (alice, conversation, ack)
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!sending.is_finished(), "the send cannot succeed while the server is unreachable");
    proxy.set_down(false);
    let (alice, conversation, ack) = tokio::time::timeout(Duration::from_secs(10), sending).await.unwrap().unwrap();
    assert_eq!(ack.seq, 1);
    let history = alice.history(&conversation, 50, "").await.unwrap().messages;
    assert_eq!(history.len(), 1, "stored exactly once");
    server.shutdown().await.unwrap();
}

/// Starts a server on a given address and data dir; in the same process a
/// just-stopped server's sled lock can linger for a moment (a restarted
/// process never meets this), so a busy lock is retried.
async fn server_at(addr: SocketAddr, data: &std::path::Path) -> RunningGateway {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut broker = BrokerConfig::new(data);
        broker.partitions = 8;
        let config = GatewayConfig::new(addr, BrokerTarget::Embedded(broker), SECRET);
        match RunningGateway::start(config).await {
            Ok(server) => return server,
            Err(error) if error.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("server did not start: {error:#}"),
        }
    }
}

#[tokio::test]
async fn a_server_restart_mid_conversation_is_resumed_with_no_gap_and_no_duplicate() {
    let data = tempfile::tempdir().unwrap();
    let first = server(data.path()).await;
    let addr = first.addr;
    let alice = client(addr, "alice").await;
    let mut bob = client(addr, "bob").await;
    let conversation = alice.direct_with("bob").await.unwrap();
    bob.accept(&conversation).await.unwrap();
    for n in 1..=30 {
        alice.send_text(&conversation, &format!("before {n}")).await.unwrap();
    }
    let mut seqs = Vec::new();
    while seqs.len() < 30 {
        if let Event::Message(message) =
            tokio::time::timeout(Duration::from_secs(10), bob.next_event()).await.unwrap().unwrap()
        {
            seqs.push(message.seq);
        }
    }
    // The server goes away (goodbye to every stream), then comes back.
    first.shutdown().await.unwrap();
    let second = server_at(addr, data.path()).await;
    for n in 31..=60 {
        alice.send_text(&conversation, &format!("after {n}")).await.unwrap();
    }
    let mut disconnected = false;
    while seqs.len() < 60 {
        match tokio::time::timeout(Duration::from_secs(15), bob.next_event()).await.unwrap().unwrap() {
            Event::Message(message) => seqs.push(message.seq),
            Event::Disconnected { .. } => disconnected = true,
            _ => {}
        }
    }
    assert!(disconnected, "the restart must have been noticed");
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>(), "every message once, in order, across the restart");
    second.shutdown().await.unwrap();
}

/// A token refreshed through the SDK keeps the stream open past the old
/// token's expiry (the server ends a stream whose token expired unless it
/// is refreshed on it), and later calls carry the new token.
#[tokio::test]
async fn a_refreshed_token_keeps_the_stream_open_past_the_old_expiry() {
    let data = tempfile::tempdir().unwrap();
    let server = server(data.path()).await;
    let auth = Authenticator::new(SECRET).unwrap();
    let mut config = ClientConfig::new(format!("http://{}", server.addr), auth.issue("alice", "phone", 2).unwrap());
    config.backoff_min = Duration::from_millis(20);
    let mut alice = Client::connect(config).await.unwrap();
    let bob = client(server.addr, "bob").await;
    loop {
        if let Some(Event::Connected { .. }) = alice.next_event().await {
            break;
        }
    }
    alice.refresh_token(&auth.issue("alice", "phone", 600).unwrap()).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Unary calls carry the fresh token; the stream is still the first one.
    let conversation = alice.direct_with("bob").await.unwrap();
    bob.accept(&conversation).await.unwrap();
    bob.send_text(&conversation, "still there?").await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), alice.next_event()).await.unwrap().unwrap() {
            Event::Message(message) => {
                assert_eq!(message.sender_id, "bob");
                break;
            }
            Event::Disconnected { reason } => panic!("the stream ended: {reason}"),
            _ => continue,
        }
    }
}
