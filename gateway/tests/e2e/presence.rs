//! Presence: online while a session lives, visible only to people who share
//! a conversation, hideable (reciprocally), and never stuck online when a
//! gateway dies without closing its streams.

use std::time::Duration;

use imsg_proto::v1::{GetPresenceRequest, UpdateSettingsRequest, event};

use crate::harness::{Client, Device, Process, TestServer, binary, broker_args, gateway_args};

async fn presence_event(device: &mut Device, user: &str, online: bool) {
    device
        .event_where(&format!("{user} online={online}"), |k| {
            matches!(k, event::Kind::Presence(p) if p.presence.as_ref().is_some_and(|p| p.user_id == user && p.online == online))
        })
        .await;
}

async fn presence_of(client: &Client, users: &[&str]) -> Vec<(String, bool)> {
    let response = client
        .api
        .clone()
        .get_presence(GetPresenceRequest { user_ids: users.iter().map(|u| u.to_string()).collect() })
        .await
        .unwrap()
        .into_inner();
    response.presences.into_iter().map(|p| (p.user_id, p.online)).collect()
}

/// Alice and bob share a conversation and come online (bob first, so his
/// phone sees alice arrive). Returns bob's phone, then alice's.
async fn both_online(alice: &Client, bob: &Client) -> (Device, Device) {
    alice.direct_with("bob").await;
    let mut bob_phone = bob.open(0).await;
    bob_phone.ready().await;
    let mut alice_phone = alice.open(0).await;
    alice_phone.ready().await;
    presence_event(&mut bob_phone, "alice", true).await;
    (bob_phone, alice_phone)
}

#[tokio::test]
async fn presence_is_visible_only_to_people_who_share_a_conversation() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let stranger = server.client("stranger", "phone").await;
    let (mut bob_phone, alice_phone) = both_online(&alice, &bob).await;
    assert_eq!(presence_of(&bob, &["alice"]).await, vec![("alice".to_string(), true)]);
    assert!(presence_of(&stranger, &["alice"]).await.is_empty(), "a stranger learns nothing");
    drop(alice_phone);
    presence_event(&mut bob_phone, "alice", false).await;
    let last_active = bob
        .api
        .clone()
        .get_presence(GetPresenceRequest { user_ids: vec!["alice".into()] })
        .await
        .unwrap()
        .into_inner()
        .presences[0]
        .last_active_ms;
    assert!(last_active > 0, "last-active time is known");
}

#[tokio::test]
async fn hidden_activity_status_is_reciprocal() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    alice.direct_with("bob").await;
    alice
        .api
        .clone()
        .update_settings(UpdateSettingsRequest {
            hide_read_receipts: None,
            hide_activity_status: Some(true),
            who_may_message: None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut alice_phone = alice.open(0).await;
    alice_phone.ready().await;
    let mut bob_phone = bob.open(0).await;
    bob_phone.ready().await;
    assert!(presence_of(&bob, &["alice"]).await.is_empty(), "bob cannot see alice, who hides");
    assert!(presence_of(&alice, &["bob"]).await.is_empty(), "alice, who hides, cannot see bob");
    let quiet = alice_phone
        .quiet_for(Duration::from_millis(300), |f| matches!(f, imsg_proto::v1::open_stream_response::Frame::Event(e) if matches!(e.kind, Some(event::Kind::Presence(_)))))
        .await;
    assert!(quiet, "alice gets no presence events");
}

/// A broker and two gateways as separate processes; alice's gateway dies.
async fn gateway_death_takes_alice_offline(how: i32, lease_ttl_ms: &str) {
    let data = tempfile::tempdir().unwrap();
    let broker = Process::spawn(
        &binary("imsg-broker"),
        &broker_args(data.path(), "127.0.0.1:0", &["--lease-ttl-ms", lease_ttl_ms]),
    )
    .await;
    let gateway_a = Process::spawn(&binary("imsg-gateway"), &gateway_args(broker.addr)).await;
    let gateway_b = Process::spawn(&binary("imsg-gateway"), &gateway_args(broker.addr)).await;
    let alice = Client::connect(gateway_a.addr, "alice", "phone").await;
    let bob = Client::connect(gateway_b.addr, "bob", "phone").await;
    let (mut bob_phone, _alice_phone) = both_online(&alice, &bob).await;
    gateway_a.signal(how);
    presence_event(&mut bob_phone, "alice", false).await;
    assert_eq!(presence_of(&bob, &["alice"]).await, vec![("alice".to_string(), false)]);
    if how == libc::SIGSTOP {
        gateway_a.signal(libc::SIGCONT);
    }
    gateway_a.sigkill().await;
}

#[tokio::test]
async fn presence_goes_offline_when_a_gateway_is_killed() {
    gateway_death_takes_alice_offline(libc::SIGKILL, "10000").await;
}

#[tokio::test]
async fn presence_goes_offline_when_a_frozen_gateway_stops_renewing_its_lease() {
    // SIGSTOP keeps the TCP connections open: only the lease can tell.
    gateway_death_takes_alice_offline(libc::SIGSTOP, "1500").await;
}
