//! Conversations, messages and delivery to several devices.

use crate::harness::TestServer;

#[tokio::test]
async fn direct_messages_reach_every_device_of_both_users_but_the_sending_one() {
    let server = TestServer::start().await;
    let alice_phone = server.client("alice", "phone").await;
    let alice_laptop = server.client("alice", "laptop").await;
    let bob_phone = server.client("bob", "phone").await;
    let bob_tablet = server.client("bob", "tablet").await;
    let conversation = alice_phone.direct_with("bob").await;
    let mut devices = Vec::new();
    for client in [&alice_phone, &alice_laptop, &bob_phone, &bob_tablet] {
        let mut device = client.open(0).await;
        device.ready().await;
        devices.push(device);
    }
    // Devices: alice's phone (the sender of seq 1), alice's laptop, bob's
    // phone, bob's tablet (the sender of seq 2).
    let seq = alice_phone.send(&conversation, "hi bob").await;
    assert_eq!(seq, 1);
    for device in &mut devices[1..] {
        let message = device.message().await;
        assert_eq!((message.seq, message.sender_id.as_str()), (1, "alice"));
        assert!(matches!(message.content, Some(imsg_proto::v1::message::Content::Text(ref t)) if t.text == "hi bob"));
    }
    let reply = bob_tablet.send(&conversation, "hi alice").await;
    assert_eq!(reply, 2);
    // No echo: the sending device has the ack; its user's other devices
    // get the message. So alice's phone's first message is bob's.
    for (device, expected) in devices.iter_mut().zip([2, 2, 2, 0]) {
        if expected > 0 {
            assert_eq!(device.message().await.seq, expected);
        }
    }
    // And bob's tablet got its own reply back only on replay, as a device
    // that lost its state would need it.
    let mut replaying = bob_tablet.open(0).await;
    let mut replayed = Vec::new();
    while replayed.len() < 2 {
        replayed.push(replaying.message().await.seq);
    }
    assert_eq!(replayed, vec![1, 2]);
}

#[tokio::test]
async fn group_messages_fan_out_to_every_member_device() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let conversation = alice.group("friends", &["bob", "carol", "dave"]).await;
    let mut devices = Vec::new();
    for (user, device) in
        [("alice", "laptop"), ("bob", "phone"), ("carol", "phone"), ("carol", "tablet"), ("dave", "phone")]
    {
        let mut stream = server.client(user, device).await.open(0).await;
        stream.ready().await; // replays the group's creation
        devices.push(stream);
    }
    for n in 1..=5u64 {
        assert_eq!(alice.send(&conversation, &format!("m{n}")).await, n);
    }
    for device in &mut devices {
        for n in 1..=5u64 {
            assert_eq!(device.message().await.seq, n, "every member device sees every message in order");
        }
    }
}

#[tokio::test]
async fn direct_conversation_is_unique_per_pair() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let first = alice.direct_with("bob").await;
    let again = alice.direct_with("bob").await;
    let from_bob = bob.direct_with("alice").await;
    assert_eq!(first, again);
    assert_eq!(first, from_bob);
    assert_ne!(first, alice.direct_with("carol").await);
}

#[tokio::test]
async fn retried_send_with_the_same_client_id_returns_the_original_seq_and_writes_nothing() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let first = alice.try_send(&conversation, "msg-1", "hello").await.unwrap();
    alice.send(&conversation, "in between").await;
    let retry = alice.try_send(&conversation, "msg-1", "hello").await.unwrap();
    assert_eq!((retry.seq, retry.server_time_ms), (first.seq, first.server_time_ms));
    assert!(retry.duplicate && !first.duplicate);
    // The same client id from another user is a different message.
    let bob = server.client("bob", "phone").await;
    assert_eq!(bob.try_send(&conversation, "msg-1", "hello").await.unwrap().seq, 3);
    let history = alice.history(&conversation).await;
    assert_eq!(history.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
}

#[tokio::test]
async fn history_pages_backwards_from_newest_and_forwards_from_a_seq() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let conversation = alice.direct_with("bob").await;
    for n in 1..=25 {
        alice.send(&conversation, &format!("m{n}")).await;
    }
    let mut api = alice.api.clone();
    let page = |token: &str, after: Option<u64>| imsg_proto::v1::ListMessagesRequest {
        conversation_id: conversation.clone(),
        page_size: 10,
        page_token: token.into(),
        after_seq: after,
    };
    let newest = api.list_messages(page("", None)).await.unwrap().into_inner();
    assert_eq!(newest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), (16..=25).collect::<Vec<_>>());
    let older = api.list_messages(page(&newest.next_page_token, None)).await.unwrap().into_inner();
    assert_eq!(older.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), (6..=15).collect::<Vec<_>>());
    let oldest = api.list_messages(page(&older.next_page_token, None)).await.unwrap().into_inner();
    assert_eq!(oldest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=5).collect::<Vec<_>>());
    assert!(oldest.next_page_token.is_empty());
    let forward = api.list_messages(page("", Some(20))).await.unwrap().into_inner();
    assert_eq!(forward.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), (21..=25).collect::<Vec<_>>());
    assert!(forward.next_page_token.is_empty());
}

#[tokio::test]
async fn inbox_is_ordered_by_last_activity_with_unread_counts() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let carol = server.client("carol", "phone").await;
    let with_bob = bob.direct_with("alice").await;
    let with_carol = carol.direct_with("alice").await;
    bob.send(&with_bob, "1").await;
    bob.send(&with_bob, "2").await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    carol.send(&with_carol, "3").await;
    let inbox = alice.inbox().await;
    let rows: Vec<(String, u64)> = inbox
        .conversations
        .iter()
        .map(|s| (s.conversation.as_ref().unwrap().conversation_id.clone(), s.unread_count))
        .collect();
    assert_eq!(rows, vec![(with_carol.clone(), 1), (with_bob.clone(), 2)]);
    assert_eq!(inbox.conversations[0].last_message.as_ref().unwrap().seq, 1);
    // Sending counts as having read: bob has nothing unread in his own chat.
    assert_eq!(bob.inbox().await.conversations[0].unread_count, 0);
}

#[tokio::test]
async fn group_admins_manage_members_and_removed_members_lose_access() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let conversation = alice.group("team", &["bob"]).await;
    let add = |who: &str| imsg_proto::v1::AddConversationMembersRequest {
        conversation_id: conversation.clone(),
        user_ids: vec![who.into()],
    };
    let denied = bob.api.clone().add_conversation_members(add("mallory")).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let added = alice.api.clone().add_conversation_members(add("carol")).await.unwrap().into_inner();
    assert_eq!(added.conversation.unwrap().members.len(), 3);
    alice.send(&conversation, "hello team").await;
    alice
        .api
        .clone()
        .remove_conversation_member(imsg_proto::v1::RemoveConversationMemberRequest {
            conversation_id: conversation.clone(),
            user_id: "bob".into(),
        })
        .await
        .unwrap();
    let refused = bob.try_send(&conversation, "x1", "still here?").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "a removed member is an outsider");
    // The last admin leaving hands the group to the longest-standing member.
    alice
        .api
        .clone()
        .leave_conversation(imsg_proto::v1::LeaveConversationRequest { conversation_id: conversation.clone() })
        .await
        .unwrap();
    let carol = server.client("carol", "phone").await;
    let view = carol
        .api
        .clone()
        .get_conversation(imsg_proto::v1::GetConversationRequest { conversation_id: conversation.clone() })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(view.members.len(), 1);
    assert_eq!(view.members[0].role, imsg_proto::v1::MemberRole::Admin as i32);
}

#[tokio::test]
async fn group_member_limit_is_enforced_with_resource_exhausted() {
    let server = TestServer::start_with(|limits| limits.max_group_members = 3).await;
    let alice = server.client("alice", "phone").await;
    let request = imsg_proto::v1::CreateConversationRequest {
        request_id: "big".into(),
        kind: Some(imsg_proto::v1::create_conversation_request::Kind::Group(imsg_proto::v1::GroupConversationSpec {
            title: "too big".into(),
            member_ids: vec!["b".into(), "c".into(), "d".into()],
        })),
    };
    let status = alice.api.clone().create_conversation(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let group = alice.group("ok", &["b", "c"]).await;
    let status = alice
        .api
        .clone()
        .add_conversation_members(imsg_proto::v1::AddConversationMembersRequest {
            conversation_id: group,
            user_ids: vec!["d".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
}
