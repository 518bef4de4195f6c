//! Safety and privacy (`core::privacy`): blocking, message requests, who
//! may message whom, declared contacts.

use std::time::{Duration, Instant};

use imsg_proto::v1::{
    AddConversationMembersRequest, BlockUserRequest, Conversation, CreateConversationRequest, DeclareContactsRequest,
    DeclineConversationRequest, DirectConversationSpec, Folder, GetConversationRequest, GetPresenceRequest,
    ListBlockedUsersRequest, ListConversationsRequest, MarkRead, TypingSignal, UnblockUserRequest,
    UpdateSettingsRequest, WhoMayMessage, create_conversation_request, event, open_stream_request::Frame as Up,
    open_stream_response::Frame,
};
use tonic::{Code, Status};

use crate::{
    cluster::{Cluster, user_on},
    harness::{Client, Device, PATIENCE, TestServer},
};

/// A refusal with the refused user's name taken out: what it tells the
/// caller beyond whom they asked about.
fn answer(status: Status, about: &str) -> (Code, String) {
    (status.code(), status.message().replace(about, "<user>"))
}

async fn create_direct(client: &Client, peer: &str) -> Result<String, Status> {
    let request = CreateConversationRequest {
        request_id: String::new(),
        kind: Some(create_conversation_request::Kind::Direct(DirectConversationSpec { peer_user_id: peer.into() })),
    };
    Ok(client.api.clone().create_conversation(request).await?.into_inner().conversation.unwrap().conversation_id)
}

async fn add_member(client: &Client, conversation: &str, user: &str) -> Result<(), Status> {
    let request = AddConversationMembersRequest { conversation_id: conversation.into(), user_ids: vec![user.into()] };
    client.api.clone().add_conversation_members(request).await.map(drop)
}

async fn settings(client: &Client, request: UpdateSettingsRequest) {
    client.api.clone().update_settings(request).await.unwrap();
}

async fn conversation(client: &Client, id: &str) -> Conversation {
    let request = GetConversationRequest { conversation_id: id.into() };
    client.api.clone().get_conversation(request).await.unwrap().into_inner().conversation.unwrap()
}

/// `user`'s (delivered, read) as `client` sees them in `id`, and whether
/// they have not accepted it.
async fn member_as_seen(client: &Client, id: &str, user: &str) -> (u64, u64, bool) {
    let seen = conversation(client, id).await;
    let member = seen.members.iter().find(|m| m.user_id == user).unwrap();
    (member.delivered_seq, member.read_seq, member.request_pending)
}

async fn presence_of(client: &Client, users: &[&str]) -> Vec<String> {
    let request = GetPresenceRequest { user_ids: users.iter().map(|u| u.to_string()).collect() };
    let presences = client.api.clone().get_presence(request).await.unwrap().into_inner().presences;
    presences.into_iter().map(|p| p.user_id).collect()
}

async fn folder(client: &Client, folder: Folder) -> Vec<String> {
    let request = ListConversationsRequest { folder: folder as i32, ..Default::default() };
    let listed = client.api.clone().list_conversations(request).await.unwrap().into_inner();
    listed.conversations.into_iter().map(|s| s.conversation.unwrap().conversation_id).collect()
}

async fn typing(device: &Device, conversation: &str) {
    device.send_frame(Up::Typing(TypingSignal { conversation_id: conversation.into(), active: true })).await;
}

async fn read(device: &Device, conversation: &str, seq: u64) {
    device.send_frame(Up::MarkRead(MarkRead { conversation_id: conversation.into(), seq })).await;
}

fn typing_from(user: &str) -> impl FnMut(&Frame) -> bool + '_ {
    move |frame| matches!(frame, Frame::Event(e) if matches!(&e.kind, Some(event::Kind::Typing(t)) if t.user_id == user))
}

/// Polls `condition` until it holds (the marks travel as stream frames).
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    let deadline = Instant::now() + PATIENCE;
    while !condition().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The "blocked user learns nothing" matrix, on three nodes: the blocked
/// user (mallory), the blocker (bob) and the user whose privacy settings
/// refuse everyone (carol) each have their partition on another node.
/// Every answer mallory gets about bob is the answer she gets about carol.
#[tokio::test]
async fn a_blocked_user_learns_nothing_that_a_privacy_setting_would_not_tell() {
    let cluster = Cluster::start(3, 3, 1).await;
    let (mallory_id, bob_id, carol_id, alice_id) =
        (user_on(0, "mallory"), user_on(1, "bob"), user_on(2, "carol"), user_on(2, "alice"));
    let gateway = cluster.gateway(0);
    let mallory = Client::connect(gateway, &mallory_id, "phone").await;
    let bob = Client::connect(gateway, &bob_id, "phone").await;
    let carol = Client::connect(gateway, &carol_id, "phone").await;
    let alice = Client::connect(gateway, &alice_id, "phone").await;
    let (m, b, c, a) = (mallory_id.as_str(), bob_id.as_str(), carol_id.as_str(), alice_id.as_str());
    let dm = mallory.direct_with(&bob_id).await;
    mallory.send(&dm, "hi bob").await;
    let group = alice.group("friends", &[&mallory_id, &bob_id, &carol_id]).await;
    let own_group = mallory.group("mallory's", &[&alice_id]).await;
    settings(
        &carol,
        UpdateSettingsRequest {
            hide_read_receipts: Some(true),
            hide_activity_status: Some(true),
            who_may_message: Some(WhoMayMessage::NobodyNew as i32),
            ..Default::default()
        },
    )
    .await;
    bob.api.clone().block_user(BlockUserRequest { user_id: mallory_id.clone() }).await.unwrap();
    let blocked = bob.api.clone().list_blocked_users(ListBlockedUsersRequest {}).await.unwrap().into_inner();
    assert_eq!(blocked.user_ids, vec![mallory_id.clone()]);

    // Opening a 1:1, sending into the one they had, adding to a group.
    let by_privacy = answer(create_direct(&mallory, &carol_id).await.unwrap_err(), &carol_id);
    assert_eq!(by_privacy.0, Code::PermissionDenied, "{by_privacy:?}");
    assert_eq!(answer(create_direct(&mallory, &bob_id).await.unwrap_err(), &bob_id), by_privacy);
    assert_eq!(answer(mallory.try_send(&dm, "m2", "hello?").await.unwrap_err(), &bob_id), by_privacy);
    let add_bob = answer(add_member(&mallory, &own_group, &bob_id).await.unwrap_err(), &bob_id);
    let add_carol = answer(add_member(&mallory, &own_group, &carol_id).await.unwrap_err(), &carol_id);
    assert_eq!(add_bob, add_carol);
    assert_eq!(add_bob, by_privacy);

    // Presence and last-active time: everyone online, all sharing a group.
    let mut devices = Vec::new();
    for client in [&mallory, &bob, &carol, &alice] {
        let mut device = client.open(0).await;
        device.ready().await;
        devices.push(device);
    }
    let [mallory_device, bob_device, _carol_device, alice_device] = &mut devices[..] else { unreachable!() };
    eventually("mallory sees alice online", || async {
        presence_of(&mallory, &[a, b, c]).await == vec![alice_id.clone()]
    })
    .await;
    assert!(presence_of(&bob, &[m]).await.is_empty(), "nor does the blocker see the blocked");

    // Typing in the group they share: bob's never reaches mallory.
    typing(bob_device, &group).await;
    typing(alice_device, &group).await;
    let from_alice = mallory_device
        .event_where("alice typing", |kind| match kind {
            event::Kind::Typing(t) => {
                assert_ne!(t.user_id, bob_id, "a blocker's typing reached the blocked user");
                t.user_id == alice_id
            }
            _ => false,
        })
        .await;
    assert!(matches!(from_alice, event::Kind::Typing(_)));
    typing(mallory_device, &group).await;
    assert!(bob_device.quiet_for(Duration::from_millis(800), typing_from(m)).await);

    // Messages still flow in the group, both ways.
    let seq = alice.send(&group, "hello all").await;
    let from_bob = bob.send(&group, "hi").await;
    assert!(mallory.history(&group).await.iter().any(|m| m.seq == from_bob));
    mallory.send(&group, "hi bob").await;

    // Read receipts: bob's read position hides from mallory as carol's does.
    read(bob_device, &group, seq).await;
    read(&devices[2], &group, seq).await;
    read(&devices[3], &group, seq).await;
    eventually("alice's read shown", || async { member_as_seen(&mallory, &group, a).await.1 >= seq }).await;
    assert_eq!(member_as_seen(&mallory, &group, b).await.1, 0, "a blocker's read receipt reached the blocked");
    assert_eq!(member_as_seen(&mallory, &group, c).await.1, 0);
    assert!(member_as_seen(&bob, &group, a).await.1 >= seq, "receipts between others pass");

    // The blocker is told it is their own block; unblocking restores all.
    let own = bob.try_send(&dm, "b1", "hey").await.unwrap_err();
    assert_eq!(own.code(), Code::FailedPrecondition);
    bob.api.clone().unblock_user(UnblockUserRequest { user_id: mallory_id.clone() }).await.unwrap();
    mallory.try_send(&dm, "m3", "friends again?").await.unwrap();
    eventually("presence shown again", || async { presence_of(&mallory, &[b]).await == vec![bob_id.clone()] }).await;
}

#[tokio::test]
async fn a_message_request_waits_in_the_requests_folder_until_accepted() {
    let server = TestServer::start_with(|limits| limits.max_request_messages = 3).await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let mut alice_device = alice.open(0).await;
    alice_device.ready().await;
    let mut bob_device = bob.open(0).await;
    bob_device.ready().await;
    let request = alice.request_to("bob").await;
    assert_eq!(folder(&bob, Folder::Requests).await, vec![request.clone()]);
    assert!(folder(&bob, Folder::Inbox).await.is_empty());
    assert_eq!(folder(&alice, Folder::Inbox).await, vec![request.clone()]);

    // A few messages, then nothing until accepted; the recipient reads
    // them, but the sender sees no receipt, typing or presence.
    for n in 1..=3 {
        alice.try_send(&request, &format!("a{n}"), "hello?").await.unwrap();
    }
    let over = alice.try_send(&request, "a4", "please").await.unwrap_err();
    assert_eq!(over.code(), Code::FailedPrecondition);
    assert!(over.message().contains("not accepted"), "{over:?}");
    assert_eq!(bob_device.message().await.conversation_id, request);
    assert_eq!(bob.try_send(&request, "b1", "hi").await.unwrap_err().code(), Code::FailedPrecondition);
    read(&bob_device, &request, 3).await;
    typing(&bob_device, &request).await;
    eventually("bob's mark applied", || async { member_as_seen(&bob, &request, "bob").await.1 == 3 }).await;
    assert_eq!(member_as_seen(&alice, &request, "bob").await, (3, 0, true));
    assert!(presence_of(&alice, &["bob"]).await.is_empty());
    assert!(alice_device.quiet_for(Duration::from_millis(500), typing_from("bob")).await);

    // Accepted: the inbox, receipts, presence, and no limit.
    // The sender accepting changes nothing: the request is bob's.
    let accept = |client: &Client| {
        let request = imsg_proto::v1::AcceptConversationRequest { conversation_id: request.clone() };
        let mut api = client.api.clone();
        async move { api.accept_conversation(request).await.unwrap().into_inner().conversation.unwrap() }
    };
    assert!(accept(&alice).await.members.iter().any(|m| m.user_id == "bob" && m.request_pending));
    assert!(accept(&bob).await.members.iter().all(|m| !m.request_pending));
    // Bob was online all along: accepting announces it to alice's device.
    alice_device
        .event_where("bob online", |kind| {
            matches!(kind, event::Kind::Presence(p) if p.presence.as_ref().is_some_and(|p| p.user_id == "bob" && p.online))
        })
        .await;
    assert_eq!(folder(&bob, Folder::Inbox).await, vec![request.clone()]);
    assert!(folder(&bob, Folder::Requests).await.is_empty());
    alice.try_send(&request, "a4", "thanks").await.unwrap();
    bob.try_send(&request, "b1", "sure").await.unwrap();
    eventually("bob's read shown", || async { member_as_seen(&alice, &request, "bob").await.1 >= 3 }).await;
    eventually("bob's presence shown", || async { presence_of(&alice, &["bob"]).await == vec!["bob".to_string()] })
        .await;
}

#[tokio::test]
async fn a_declined_request_is_hidden_and_the_sender_is_not_told() {
    let server = TestServer::start().await;
    let carol = server.client("carol", "phone").await;
    let dave = server.client("dave", "phone").await;
    let mut dave_device = dave.open(0).await;
    dave_device.ready().await;
    let request = carol.request_to("dave").await;
    carol.send(&request, "hi dave").await;
    assert_eq!(dave_device.message().await.conversation_id, request);
    let decline = DeclineConversationRequest { conversation_id: request.clone() };
    dave.api.clone().decline_conversation(decline).await.unwrap();
    assert!(folder(&dave, Folder::Requests).await.is_empty());
    assert!(folder(&dave, Folder::Inbox).await.is_empty());
    // Carol's sends are still acknowledged; dave hears none of them.
    carol.send(&request, "are you there?").await;
    let heard = |frame: &Frame| matches!(frame, Frame::Event(e) if matches!(&e.kind, Some(event::Kind::Message(_))));
    assert!(dave_device.quiet_for(Duration::from_millis(800), heard).await);
    assert!(member_as_seen(&carol, &request, "dave").await.2, "to carol, still a pending request");
    // Writing back to carol later brings the conversation back, accepted.
    assert_eq!(create_direct(&dave, "carol").await.unwrap(), request);
    assert_eq!(folder(&dave, Folder::Inbox).await, vec![request.clone()]);
    carol.send(&request, "welcome back").await;
}

#[tokio::test]
async fn who_may_message_refuses_strangers_and_declared_contacts_skip_the_requests_folder() {
    let server = TestServer::start().await;
    let erin = server.client("erin", "phone").await;
    let frank = server.client("frank", "phone").await;
    let host = erin.as_user("host-app", &[imsg_common::token::ROLE_SERVICE]);
    settings(
        &erin,
        UpdateSettingsRequest { who_may_message: Some(WhoMayMessage::Contacts as i32), ..Default::default() },
    )
    .await;
    assert_eq!(create_direct(&frank, "erin").await.unwrap_err().code(), Code::PermissionDenied);
    let declare = |withdraw: bool| DeclareContactsRequest {
        user_id: "erin".into(),
        contact_user_ids: vec!["frank".into()],
        withdraw,
    };
    // Only the host application declares relationships.
    assert_eq!(frank.api.clone().declare_contacts(declare(false)).await.unwrap_err().code(), Code::PermissionDenied);
    host.api.clone().declare_contacts(declare(false)).await.unwrap();
    let direct = create_direct(&frank, "erin").await.unwrap();
    assert_eq!(folder(&erin, Folder::Inbox).await, vec![direct.clone()]);
    for n in 0..5 {
        frank.try_send(&direct, &format!("f{n}"), "hi").await.unwrap();
    }
    // Nobody new: not even a contact opens a new conversation.
    settings(
        &erin,
        UpdateSettingsRequest { who_may_message: Some(WhoMayMessage::NobodyNew as i32), ..Default::default() },
    )
    .await;
    let gina = server.client("gina", "phone").await;
    assert_eq!(create_direct(&gina, "erin").await.unwrap_err().code(), Code::PermissionDenied);
    frank.try_send(&direct, "f5", "existing conversations go on").await.unwrap();

    // A group invitation from a stranger is a request too.
    let ivan = server.client("ivan", "phone").await;
    let request = CreateConversationRequest {
        request_id: "g1".into(),
        kind: Some(create_conversation_request::Kind::Group(imsg_proto::v1::GroupConversationSpec {
            title: "deals".into(),
            member_ids: vec!["ivan".into()],
        })),
    };
    let group = gina.api.clone().create_conversation(request).await.unwrap().into_inner().conversation.unwrap();
    assert_eq!(folder(&ivan, Folder::Requests).await, vec![group.conversation_id.clone()]);
    assert_eq!(ivan.try_send(&group.conversation_id, "i1", "who?").await.unwrap_err().code(), Code::FailedPrecondition);
}
