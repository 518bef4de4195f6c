//! Typing: ephemeral, expires on the server, cleared by a message,
//! rate-limited.

use std::time::{Duration, Instant};

use imsg_proto::v1::{TypingSignal, event, open_stream_request::Frame as Up, open_stream_response::Frame as Down};

use crate::harness::{Client, Device, TestServer};

async fn typing_event(device: &mut Device, active: bool) {
    device
        .event_where(
            &format!("typing active={active}"),
            |k| matches!(k, event::Kind::Typing(t) if t.user_id == "alice" && t.active == active),
        )
        .await;
}

/// Alice starts typing to bob, and bob's phone sees it. Returns alice's
/// client, the conversation, and bob's phone (alice's stream stays open).
async fn alice_typing_to_bob(server: &TestServer) -> (Client, String, Device, Device) {
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let mut bob_phone = bob.open(0).await;
    bob_phone.ready().await;
    let alice_phone = alice.open(0).await;
    alice_phone.send_frame(Up::Typing(TypingSignal { conversation_id: conversation.clone(), active: true })).await;
    typing_event(&mut bob_phone, true).await;
    (alice, conversation, bob_phone, alice_phone)
}

#[tokio::test]
async fn typing_expires_on_the_server_after_the_ttl() {
    let server = TestServer::start_with(|limits| limits.typing_ttl = Duration::from_millis(800)).await;
    let (_alice, _conversation, mut bob_phone, _alice_phone) = alice_typing_to_bob(&server).await;
    let started = Instant::now();
    typing_event(&mut bob_phone, false).await;
    let after = started.elapsed();
    assert!(after >= Duration::from_millis(500), "expired too early: {after:?}");
}

#[tokio::test]
async fn typing_is_cleared_when_that_users_message_arrives() {
    let server = TestServer::start().await; // default TTL: 6 s
    let (alice, conversation, mut bob_phone, _alice_phone) = alice_typing_to_bob(&server).await;
    let started = Instant::now();
    alice.send(&conversation, "done typing").await;
    typing_event(&mut bob_phone, false).await;
    assert!(started.elapsed() < Duration::from_secs(3), "cleared by the message, not by the 6 s expiry");
}

#[tokio::test]
async fn typing_signals_are_rate_limited_per_user_across_devices() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let laptop = server.client("alice", "laptop").await.open(0).await;
    let conversation = alice.direct_with("bob").await;
    let mut phone = alice.open(0).await;
    phone.ready().await;
    // The laptop spends alice's whole burst; the phone's next signal is refused.
    for _ in 0..5 {
        laptop.send_frame(Up::Typing(TypingSignal { conversation_id: conversation.clone(), active: true })).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    phone.send_frame(Up::Typing(TypingSignal { conversation_id: conversation.clone(), active: true })).await;
    loop {
        match phone.frame().await {
            Some(Down::Error(error)) => {
                assert_eq!(error.code, tonic::Code::ResourceExhausted as i32);
                break;
            }
            Some(_) => continue,
            None => panic!("typing was not rate limited"),
        }
    }
    // The stream stays usable.
    phone.send_frame(Up::Ping(imsg_proto::v1::Ping { nonce: 7 })).await;
    loop {
        match phone.frame().await {
            Some(Down::Pong(pong)) => {
                assert_eq!(pong.nonce, 7);
                break;
            }
            Some(_) => continue,
            None => panic!("no pong"),
        }
    }
}
