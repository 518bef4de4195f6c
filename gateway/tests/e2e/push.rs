//! Push notifications (`core::notify`, `imsg_broker::push`): a real local
//! HTTP server receives the webhook's signed requests.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use imsg_proto::v1::{PushPlatform, RegisterPushTargetRequest, SetConversationNotificationsRequest};
use tokio::sync::mpsc;

use crate::harness::{Client, PATIENCE, Process, binary, broker_args, gateway_args};

const WEBHOOK_SECRET: &str = "webhook-secret-0123456789";

/// How the webhook answers.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Mode {
    Refuse,
    Accept,
    /// Says it has the request, then answers 200 after a while.
    HoldThenAccept,
}

#[derive(Debug, Clone)]
pub(crate) struct Received {
    accepted: bool,
    key: String,
    pub(crate) body: serde_json::Value,
    /// The W3C trace context the request carried, if any.
    pub(crate) traceparent: String,
}

struct WebhookState {
    mode: Mutex<Mode>,
    received: Mutex<Vec<Received>>,
    holding: mpsc::UnboundedSender<String>,
}

/// A push gateway on a loopback port, recording what it is sent.
pub(crate) struct Webhook {
    url: String,
    state: Arc<WebhookState>,
    holding: mpsc::UnboundedReceiver<String>,
    _server: tokio::task::JoinHandle<()>,
}

async fn receive(State(state): State<Arc<WebhookState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    // The signature: t=<unix>,v1=<HMAC of "t.body">; a forgery is refused.
    let signature = header("x-imsg-signature");
    let t: u64 = signature.split(',').next().and_then(|t| t.strip_prefix("t=")).and_then(|t| t.parse().ok()).unwrap();
    if signature != imsg_broker::push::signature(WEBHOOK_SECRET, t, &body) {
        return StatusCode::UNAUTHORIZED;
    }
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let key = header("idempotency-key");
    assert_eq!(body["idempotency_key"], key.as_str());
    let mode = *state.mode.lock().unwrap();
    let traceparent = header("traceparent");
    state.received.lock().unwrap().push(Received {
        accepted: mode != Mode::Refuse,
        key: key.clone(),
        body,
        traceparent,
    });
    match mode {
        Mode::Refuse => StatusCode::SERVICE_UNAVAILABLE,
        Mode::Accept => StatusCode::OK,
        Mode::HoldThenAccept => {
            let _ = state.holding.send(key);
            tokio::time::sleep(Duration::from_secs(2)).await;
            StatusCode::OK
        }
    }
}

impl Webhook {
    pub(crate) async fn start(mode: Mode) -> Self {
        let (holding_tx, holding) = mpsc::unbounded_channel();
        let state = Arc::new(WebhookState { mode: Mutex::new(mode), received: Mutex::default(), holding: holding_tx });
        let app = axum::Router::new().route("/push", post(receive)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/push", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state, holding, _server: server }
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    fn accepted(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.accepted).collect()
    }

    /// Waits until `condition` holds of what was received.
    pub(crate) async fn wait_for(&self, what: &str, condition: impl Fn(&[Received]) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !condition(&self.received()) {
            assert!(tokio::time::Instant::now() < deadline, "webhook never got {what}: {:#?}", self.received());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn broker_flags(&self) -> [String; 4] {
        ["--push-webhook-url".into(), self.url.clone(), "--push-webhook-secret".into(), WEBHOOK_SECRET.into()]
    }
}

pub(crate) async fn register(client: &Client) {
    let request =
        RegisterPushTargetRequest { platform: PushPlatform::Apns as i32, token: format!("tok-{}", client.device) };
    client.api.clone().register_push_target(request).await.unwrap();
}

async fn mute(client: &Client, conversation: &str, until: i64, hide_previews: bool) {
    let request = SetConversationNotificationsRequest {
        conversation_id: conversation.into(),
        muted_until_ms: until,
        hide_previews,
    };
    client.api.clone().set_conversation_notifications(request).await.unwrap();
}

/// A broker posting to `webhook`, over `data`, and a gateway in front.
async fn start_with(webhook: &Webhook, data: &std::path::Path) -> (Process, Process) {
    let broker = start_broker(webhook, data).await;
    let gateway = Process::spawn(&binary("imsg-gateway"), &gateway_args(broker.addr)).await;
    (broker, gateway)
}

async fn start_broker(webhook: &Webhook, data: &std::path::Path) -> Process {
    let flags = webhook.broker_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Process::spawn(&binary("imsg-broker"), &broker_args(data, "127.0.0.1:0", &flags)).await
}

fn for_conversation<'a>(received: &'a [Received], conversation: &str) -> Vec<&'a Received> {
    received.iter().filter(|r| r.body["conversation_id"] == conversation).collect()
}

#[tokio::test]
async fn an_offline_device_is_notified_and_a_muted_online_or_request_conversation_is_not() {
    let webhook = Webhook::start(Mode::Accept).await;
    let data = tempfile::tempdir().unwrap();
    let (_broker, gateway) = start_with(&webhook, data.path()).await;
    let alice = Client::connect(gateway.addr, "alice", "phone").await;
    let bob_phone = Client::connect(gateway.addr, "bob", "phone").await;
    let bob_laptop = Client::connect(gateway.addr, "bob", "laptop").await;
    register(&bob_phone).await;
    register(&bob_laptop).await;
    register(&alice).await;
    let mut laptop = bob_laptop.open(0).await;
    laptop.ready().await;
    let direct = alice.direct_with("bob").await;

    // The phone is offline, the laptop online, alice the sender.
    let seq = alice.send(&direct, "hello bob").await;
    webhook.wait_for("a notification", |r| !for_conversation(r, &direct).is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = webhook.received();
    let got = for_conversation(&got, &direct);
    assert_eq!(got.len(), 1, "{got:#?}");
    let body = &got[0].body;
    assert_eq!((body["user_id"].as_str(), body["device_id"].as_str()), (Some("bob"), Some("phone")));
    assert_eq!((body["seq"].as_u64(), body["text"].as_str()), (Some(seq), Some("hello bob")));
    assert_eq!((body["platform"].as_str(), body["token"].as_str()), (Some("apns"), Some("tok-phone")));
    assert_eq!(body["collapse_key"], direct.as_str());

    // Muted: nothing. Unmuted but with previews hidden: no text.
    mute(&bob_phone, &direct, -1, false).await;
    alice.send(&direct, "you won't hear this").await;
    mute(&bob_phone, &direct, 0, true).await;
    let quiet = alice.send(&direct, "secret").await;
    webhook.wait_for("the unmuted one", |r| for_conversation(r, &direct).iter().any(|n| n.body["seq"] == quiet)).await;
    let got = webhook.received();
    let got = for_conversation(&got, &direct);
    assert_eq!(got.len(), 2, "the muted message pushed nothing: {got:#?}");
    assert!(got[1].body.get("text").is_none(), "previews hidden: {:?}", got[1].body);

    // A message request pushes nothing.
    let dave = Client::connect(gateway.addr, "dave", "phone").await;
    let request = dave.request_to("bob").await;
    dave.send(&request, "hi, stranger here").await;
    let control = alice.send(&direct, "after the request").await;
    webhook.wait_for("the control", |r| for_conversation(r, &direct).iter().any(|n| n.body["seq"] == control)).await;
    assert!(for_conversation(&webhook.received(), &request).is_empty(), "a request pushed");

    // Unregistered: nothing more for that device.
    bob_phone.api.clone().unregister_push_target(imsg_proto::v1::UnregisterPushTargetRequest {}).await.unwrap();
    drop(laptop);
    tokio::time::sleep(Duration::from_millis(800)).await; // the laptop's stream is seen to close
    let last = alice.send(&direct, "to the laptop now").await;
    webhook.wait_for("the laptop's", |r| r.iter().any(|n| n.body["seq"] == last)).await;
    let latest: Vec<_> = webhook.received().into_iter().filter(|n| n.body["seq"] == last).collect();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].body["device_id"], "laptop");
}

#[tokio::test]
async fn a_broker_sigkill_loses_no_notification_and_a_repeat_has_the_same_key() {
    let mut webhook = Webhook::start(Mode::Refuse).await;
    let data = tempfile::tempdir().unwrap();
    let (broker, gateway) = start_with(&webhook, data.path()).await;
    let alice = Client::connect(gateway.addr, "alice", "phone").await;
    let carol = Client::connect(gateway.addr, "carol", "phone").await;
    let bob = Client::connect(gateway.addr, "bob", "phone").await;
    register(&bob).await;
    let (from_alice, from_carol) = (alice.direct_with("bob").await, carol.direct_with("bob").await);
    let mut newest = Vec::new();
    for (sender, conversation, count) in [(&alice, &from_alice, 3u64), (&carol, &from_carol, 2)] {
        for n in 0..count {
            sender.send(conversation, &format!("message {n}")).await;
        }
        newest.push((conversation.clone(), count));
    }
    // The webhook is down: each conversation was attempted and refused.
    webhook.wait_for("attempts for both", |r| newest.iter().all(|(c, _)| !for_conversation(r, c).is_empty())).await;
    broker.sigkill().await;

    // Restarted, with the webhook up: every conversation's notifications
    // arrive, the newest last, together standing for every message.
    webhook.set_mode(Mode::Accept);
    let broker = start_broker(&webhook, data.path()).await;
    let delivered = |received: &[Received], conversation: &str| -> (u64, u64) {
        let accepted: Vec<_> = received.iter().filter(|r| r.accepted).collect();
        let got = for_conversation_refs(&accepted, conversation);
        let count = got.iter().map(|r| r.body["count"].as_u64().unwrap()).sum();
        let top = got.iter().map(|r| r.body["seq"].as_u64().unwrap()).max().unwrap_or(0);
        (count, top)
    };
    webhook
        .wait_for("every notification", |r| newest.iter().all(|(c, count)| delivered(r, c) == (*count, *count)))
        .await;

    // Killed while the webhook holds a request: it comes again, same key.
    webhook.set_mode(Mode::HoldThenAccept);
    let gateway = Process::spawn(&binary("imsg-gateway"), &gateway_args(broker.addr)).await;
    let alice = Client::connect(gateway.addr, "alice", "phone").await;
    alice.send(&from_alice, "one more").await;
    let held = tokio::time::timeout(PATIENCE, webhook.holding.recv()).await.unwrap().unwrap();
    broker.sigkill().await;
    webhook.set_mode(Mode::Accept);
    let _broker = start_broker(&webhook, data.path()).await;
    webhook.wait_for("the repeat", |r| r.iter().filter(|n| n.key == held && n.accepted).count() >= 2).await;
    let repeats: Vec<_> = webhook.accepted().into_iter().filter(|n| n.key == held).collect();
    assert!(repeats.iter().all(|n| n.body["seq"] == 4), "{repeats:#?}");
}

fn for_conversation_refs<'a>(received: &[&'a Received], conversation: &str) -> Vec<&'a Received> {
    received.iter().copied().filter(|r| r.body["conversation_id"] == conversation).collect()
}
