//! Delivery and read receipts: monotonic watermarks, shared with members,
//! hidden (reciprocally) by a setting.

use std::time::Duration;

use imsg_proto::v1::{
    GetConversationRequest, MarkDelivered, MarkRead, UpdateSettingsRequest, event, open_stream_request::Frame as Up,
    open_stream_response::Frame as Down,
};

use crate::harness::{Client, TestServer};

async fn member_view(client: &Client, conversation: &str, member: &str) -> (u64, u64) {
    let view = client
        .api
        .clone()
        .get_conversation(GetConversationRequest { conversation_id: conversation.into() })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    let m = view.members.iter().find(|m| m.user_id == member).unwrap();
    (m.delivered_seq, m.read_seq)
}

#[tokio::test]
async fn receipts_only_move_forward_and_reach_the_other_members() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let conversation = alice.direct_with("bob").await;
    for _ in 0..5 {
        alice.send(&conversation, "x").await;
    }
    let mut alice_phone = alice.open(0).await;
    alice_phone.ready().await;
    let bob_phone = bob.open(0).await;
    let mark_read = |seq| Up::MarkRead(MarkRead { conversation_id: conversation.clone(), seq });
    bob_phone.send_frame(Up::MarkDelivered(MarkDelivered { conversation_id: conversation.clone(), seq: 5 })).await;
    bob_phone.send_frame(mark_read(3)).await;
    let receipt = alice_phone
        .event_where(
            "bob's read receipt",
            |k| matches!(k, event::Kind::Receipt(r) if r.user_id == "bob" && r.read_seq == 3),
        )
        .await;
    let event::Kind::Receipt(receipt) = receipt else { unreachable!() };
    assert_eq!(receipt.delivered_seq, 5);
    // Backwards is ignored; the watermark stays.
    bob_phone.send_frame(mark_read(2)).await;
    bob_phone.send_frame(mark_read(4)).await;
    let event::Kind::Receipt(next) = alice_phone
        .event_where("the next receipt", |k| matches!(k, event::Kind::Receipt(r) if r.user_id == "bob"))
        .await
    else {
        unreachable!()
    };
    assert_eq!((next.delivered_seq, next.read_seq), (5, 4), "no receipt for the backwards mark, read <= delivered");
    assert_eq!(member_view(&alice, &conversation, "bob").await, (5, 4));
}

#[tokio::test]
async fn marking_past_the_last_message_is_refused_on_the_stream() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let conversation = alice.direct_with("bob").await;
    alice.send(&conversation, "x").await;
    let mut phone = alice.open(0).await;
    phone.ready().await;
    phone.send_frame(Up::MarkRead(MarkRead { conversation_id: conversation.clone(), seq: 9 })).await;
    loop {
        match phone.frame().await {
            Some(Down::Error(error)) => {
                assert_eq!(error.code, tonic::Code::InvalidArgument as i32);
                assert!(error.message.contains("seq"), "{}", error.message);
                break;
            }
            Some(_) => continue,
            None => panic!("no stream error"),
        }
    }
    assert_eq!(member_view(&alice, &conversation, "alice").await, (1, 1), "unchanged");
}

#[tokio::test]
async fn hidden_read_receipts_are_reciprocal() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let conversation = alice.direct_with("bob").await;
    alice.send(&conversation, "1").await;
    bob.send(&conversation, "2").await;
    alice
        .api
        .clone()
        .update_settings(UpdateSettingsRequest {
            hide_read_receipts: Some(true),
            hide_activity_status: None,
            who_may_message: None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut bob_phone = bob.open(0).await;
    bob_phone.ready().await;
    let alice_phone = alice.open(0).await;
    alice_phone.send_frame(Up::MarkRead(MarkRead { conversation_id: conversation.clone(), seq: 2 })).await;
    let event::Kind::Receipt(seen_by_bob) = bob_phone
        .event_where("alice's receipt", |k| matches!(k, event::Kind::Receipt(r) if r.user_id == "alice"))
        .await
    else {
        unreachable!()
    };
    assert_eq!((seen_by_bob.delivered_seq, seen_by_bob.read_seq), (2, 0), "bob sees delivery, not reading");
    assert_eq!(member_view(&bob, &conversation, "alice").await, (2, 0));
    // And alice, who hides hers, does not see bob's.
    let bob_stream = bob.open(0).await;
    bob_stream.send_frame(Up::MarkRead(MarkRead { conversation_id: conversation.clone(), seq: 2 })).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(member_view(&alice, &conversation, "bob").await.1, 0);
    assert_eq!(member_view(&bob, &conversation, "bob").await.1, 2, "bob sees his own");
}
