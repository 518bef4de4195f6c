//! Rich messages end to end: reactions, replies, edits, unsend (with its
//! content gone from disk), delete for me, forward, links and shared items.

use std::time::Duration;

use imsg_proto::v1::{
    DeleteMessageForMeRequest, EditMessageRequest, ForwardMessageRequest, LinkContent, Message, ReactToMessageRequest,
    SendMessageRequest, SharedContent, SharedKind, TextContent, UnsendMessageRequest, event, message::Content,
    open_stream_response::Frame, send_message_request,
};
use tonic::{Code, Status};

use crate::harness::{Client, Device, TestServer, files_containing};

async fn react(client: &Client, conversation: &str, seq: u64, emoji: &str) -> Result<(), Status> {
    let request = ReactToMessageRequest { conversation_id: conversation.into(), seq, emoji: emoji.into() };
    client.api.clone().react_to_message(request).await.map(drop)
}

async fn edit(client: &Client, conversation: &str, seq: u64, text: &str) -> Result<i64, Status> {
    let request = EditMessageRequest { conversation_id: conversation.into(), seq, text: text.into() };
    Ok(client.api.clone().edit_message(request).await?.into_inner().edit_time_ms)
}

async fn unsend(client: &Client, conversation: &str, seq: u64) -> Result<(), Status> {
    let request = UnsendMessageRequest { conversation_id: conversation.into(), seq };
    client.api.clone().unsend_message(request).await.map(drop)
}

async fn send_content(
    client: &Client,
    conversation: &str,
    content: send_message_request::Content,
    reply_to_seq: u64,
) -> Result<u64, Status> {
    let request = SendMessageRequest {
        conversation_id: conversation.into(),
        client_message_id: format!("c-{}", rand::random::<u64>()),
        reply_to_seq,
        content: Some(content),
    };
    Ok(client.api.clone().send_message(request).await?.into_inner().seq)
}

fn text(text: &str) -> send_message_request::Content {
    send_message_request::Content::Text(TextContent { text: text.into() })
}

async fn reaction(device: &mut Device) -> imsg_proto::v1::ReactionUpdate {
    match device.event_where("a reaction", |k| matches!(k, event::Kind::Reaction(_))).await {
        event::Kind::Reaction(update) => update,
        _ => unreachable!(),
    }
}

async fn message_update(device: &mut Device) -> Message {
    match device.event_where("a message update", |k| matches!(k, event::Kind::MessageUpdate(_))).await {
        event::Kind::MessageUpdate(update) => update.message.unwrap(),
        _ => unreachable!(),
    }
}

fn text_of(message: &Message) -> Option<&str> {
    match &message.content {
        Some(Content::Text(t)) => Some(&t.text),
        _ => None,
    }
}

#[tokio::test]
async fn a_reaction_is_replaced_and_removed_live_for_every_member_and_after_resume() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let carol = server.client("carol", "phone").await;
    let group = alice.group("lunch", &["bob", "carol"]).await;
    let seq = alice.send(&group, "pizza?").await;
    let mut alice_phone = alice.open(0).await;
    alice_phone.ready().await;
    let mut carol_phone = carol.open(0).await;
    carol_phone.ready().await;
    // Bob's phone saw the message, then went offline.
    let mut bob_phone = bob.open(0).await;
    bob_phone.ready().await;
    let bob_cursor = bob_phone.cursor;
    drop(bob_phone);

    react(&bob, &group, seq, "👍").await.unwrap();
    react(&bob, &group, seq, "😋").await.unwrap();
    react(&carol, &group, seq, "❤️").await.unwrap();
    react(&bob, &group, seq, "").await.unwrap();
    let expected = [("bob", "👍"), ("bob", "😋"), ("carol", "❤️"), ("bob", "")];
    for device in [&mut alice_phone, &mut carol_phone] {
        for (user, emoji) in expected {
            let update = reaction(device).await;
            assert_eq!((update.seq, update.user_id.as_str(), update.emoji.as_str()), (seq, user, emoji));
        }
    }
    // The summary in history: one reaction left, carol's.
    let history = alice.history(&group).await;
    let reactions: Vec<_> = history[0].reactions.iter().map(|r| (r.user_id.as_str(), r.emoji.as_str())).collect();
    assert_eq!(reactions, vec![("carol", "❤️")]);
    // Bob's phone comes back and replays the four changes in order.
    let mut bob_phone = bob.open(bob_cursor).await;
    let replayed: Vec<(String, String)> = bob_phone
        .ready()
        .await
        .into_iter()
        .filter_map(|k| match k {
            event::Kind::Reaction(r) => Some((r.user_id, r.emoji)),
            _ => None,
        })
        .collect();
    let expected: Vec<(String, String)> = expected.iter().map(|(u, e)| (u.to_string(), e.to_string())).collect();
    assert_eq!(replayed, expected);
}

#[tokio::test]
async fn reactions_are_refused_precisely_and_change_nothing() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let mallory = server.client("mallory", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let seq = alice.send(&conversation, "hi").await;
    let invalid = react(&alice, &conversation, seq, "lol").await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert!(invalid.message().contains("emoji"), "{invalid:?}");
    assert_eq!(react(&alice, &conversation, 99, "👍").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(react(&mallory, &conversation, seq, "👍").await.unwrap_err().code(), Code::NotFound);
    assert!(alice.history(&conversation).await[0].reactions.is_empty());
}

#[tokio::test]
async fn a_reply_shows_a_preview_live_and_in_history_until_the_quoted_message_is_unsent() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let quoted = alice.send(&conversation, "dinner at 8?").await;
    let mut alice_phone = alice.open(0).await;
    alice_phone.ready().await;
    let reply = send_content(&bob, &conversation, text("yes!"), quoted).await.unwrap();
    let live = alice_phone.message().await;
    assert_eq!((live.seq, live.reply_to_seq), (reply, quoted));
    let preview = live.reply_preview.unwrap();
    assert_eq!(
        (preview.sender_id.as_str(), preview.snippet.as_str(), preview.unavailable),
        ("alice", "dinner at 8?", false)
    );
    let in_history = alice.history(&conversation).await[1].reply_preview.clone().unwrap();
    assert_eq!(in_history.snippet, "dinner at 8?");

    unsend(&alice, &conversation, quoted).await.unwrap();
    let history = bob.history(&conversation).await;
    let preview = history[1].reply_preview.clone().unwrap();
    assert!(preview.unavailable && preview.snippet.is_empty(), "{preview:?}");
    let error = send_content(&bob, &conversation, text("?"), 5).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "a reply to a message that does not exist");
}

#[tokio::test]
async fn the_sender_edits_inside_the_window_members_see_it_live_and_marked_in_history() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let seq = alice.send(&conversation, "see you at 7").await;
    let mut bob_phone = bob.open(0).await;
    bob_phone.ready().await;
    let edit_time = edit(&alice, &conversation, seq, "see you at 8").await.unwrap();
    let live = message_update(&mut bob_phone).await;
    assert_eq!((text_of(&live), live.edit_time_ms, live.seq), (Some("see you at 8"), edit_time, seq));
    let history = bob.history(&conversation).await;
    assert_eq!((text_of(&history[0]), history[0].edit_time_ms), (Some("see you at 8"), edit_time));
    assert_eq!(edit(&bob, &conversation, seq, "hijack").await.unwrap_err().code(), Code::PermissionDenied);
    // The inbox line shows the edit too.
    let inbox = bob.inbox().await;
    assert_eq!(text_of(inbox.conversations[0].last_message.as_ref().unwrap()), Some("see you at 8"));
}

#[tokio::test]
async fn an_edit_after_the_window_is_a_failed_precondition_and_changes_nothing() {
    let server = TestServer::start_with(|limits| limits.edit_window = Duration::from_millis(300)).await;
    let alice = server.client("alice", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let seq = alice.send(&conversation, "typo").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let error = edit(&alice, &conversation, seq, "fixed").await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    let history = alice.history(&conversation).await;
    assert_eq!((text_of(&history[0]), history[0].edit_time_ms), (Some("typo"), 0));
}

#[tokio::test]
async fn unsend_leaves_a_tombstone_everywhere_and_its_text_is_nowhere_on_disk() {
    let mut server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let secret = format!("the-vault-code-is-{}", rand::random::<u64>());
    let before = alice.send(&conversation, "hello").await;
    let seq = alice.send(&conversation, &secret).await;
    let after = alice.send(&conversation, "bye").await;
    react(&bob, &conversation, seq, "😮").await.unwrap();
    let mut bob_phone = bob.open(0).await;
    bob_phone.ready().await;
    // Sealed at rest: the text never reaches the disk in the clear.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(files_containing(server.data_dir.path(), secret.as_bytes()), Vec::<String>::new());

    unsend(&alice, &conversation, seq).await.unwrap();
    let live = message_update(&mut bob_phone).await;
    assert!(live.unsent && live.content.is_none() && live.reactions.is_empty(), "{live:?}");
    unsend(&alice, &conversation, seq).await.unwrap(); // again: nothing changes
    assert_eq!(unsend(&bob, &conversation, before).await.unwrap_err().code(), Code::PermissionDenied);

    // Seqs stay gap-free; the tombstone keeps its place, sender and time.
    let history = bob.history(&conversation).await;
    assert_eq!(history.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![before, seq, after]);
    assert!(history[1].unsent && history[1].content.is_none() && history[1].reactions.is_empty());
    assert_eq!(history[1].sender_id, "alice");
    assert_eq!(react(&bob, &conversation, seq, "👍").await.unwrap_err().code(), Code::FailedPrecondition);

    // A device that replays from the start gets the tombstone, never the text.
    let replayed = bob.open(0).await.ready().await;
    for kind in &replayed {
        if let event::Kind::Message(m) | event::Kind::MessageUpdate(imsg_proto::v1::MessageUpdate { message: Some(m) }) =
            kind
            && m.seq == seq
        {
            assert!(m.unsent && m.content.is_none(), "{m:?}");
        }
    }
    // After a restart from the same data dir (past a checkpoint), still a
    // tombstone, and still no trace of the text in any file.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    server.stop().await;
    assert_eq!(files_containing(server.data_dir.path(), secret.as_bytes()), Vec::<String>::new());
    let restarted = TestServer::start_in(server.data_dir).await;
    let bob = restarted.client("bob", "phone").await;
    let history = bob.history(&conversation).await;
    assert!(history[1].unsent && history[1].content.is_none());
    assert_eq!(text_of(&history[2]), Some("bye"), "other messages still open with their keys");
}

#[tokio::test]
async fn delete_for_me_hides_on_all_my_devices_and_nobody_elses() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let alice_laptop = server.client("alice", "laptop").await;
    let bob = server.client("bob", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let seq = bob.send(&conversation, "embarrassing").await;
    let kept = bob.send(&conversation, "fine").await;
    let mut phone = alice.open(0).await;
    phone.ready().await;
    let mut laptop = alice_laptop.open(0).await;
    laptop.ready().await;
    let mut bob_phone = bob.open(0).await;
    bob_phone.ready().await;

    let request = DeleteMessageForMeRequest { conversation_id: conversation.clone(), seq };
    alice.api.clone().delete_message_for_me(request).await.unwrap();
    for device in [&mut phone, &mut laptop] {
        match device.event_where("message hidden", |k| matches!(k, event::Kind::MessageHidden(_))).await {
            event::Kind::MessageHidden(hidden) => {
                assert_eq!((hidden.conversation_id.as_str(), hidden.seq), (conversation.as_str(), seq))
            }
            _ => unreachable!(),
        }
    }
    assert!(
        bob_phone
            .quiet_for(
                Duration::from_millis(300),
                |f| matches!(f, Frame::Event(e) if matches!(e.kind, Some(event::Kind::MessageHidden(_))))
            )
            .await,
        "bob is not told"
    );
    let mine: Vec<u64> = alice_laptop.history(&conversation).await.iter().map(|m| m.seq).collect();
    assert_eq!(mine, vec![kept]);
    let theirs: Vec<u64> = bob.history(&conversation).await.iter().map(|m| m.seq).collect();
    assert_eq!(theirs, vec![seq, kept]);
}

#[tokio::test]
async fn forward_sends_a_marked_copy_to_each_target_and_refuses_what_the_caller_cannot_see() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let carol = server.client("carol", "phone").await;
    let with_bob = alice.direct_with("bob").await;
    let with_carol = alice.direct_with("carol").await;
    let group = alice.group("team", &["dave"]).await;
    let link = send_message_request::Content::Link(LinkContent {
        url: "https://example.com/cat".into(),
        text: "look".into(),
        preview: None,
    });
    let seq = send_content(&alice, &with_bob, link, 0).await.unwrap();
    let mut carol_phone = carol.open(0).await;
    carol_phone.ready().await;

    let request = ForwardMessageRequest {
        conversation_id: with_bob.clone(),
        seq,
        to_conversation_ids: vec![with_carol.clone(), group.clone()],
        client_message_id: "fwd-1".into(),
    };
    let copies = alice.api.clone().forward_message(request.clone()).await.unwrap().into_inner().messages;
    assert_eq!(
        copies.iter().map(|c| (c.conversation_id.as_str(), c.seq)).collect::<Vec<_>>(),
        vec![(with_carol.as_str(), 1), (group.as_str(), 1)]
    );
    let copy = carol_phone.message().await;
    assert!(copy.forwarded);
    assert!(matches!(&copy.content, Some(Content::Link(l)) if l.url == "https://example.com/cat" && l.text == "look"));
    // A retry lands nowhere twice.
    let again = alice.api.clone().forward_message(request).await.unwrap().into_inner().messages;
    assert!(again.iter().all(|c| c.duplicate && c.seq == 1));

    // Carol cannot forward from a conversation she is not in, nor forward
    // into one she is not in.
    let stranger = ForwardMessageRequest {
        conversation_id: with_bob.clone(),
        seq,
        to_conversation_ids: vec![with_carol.clone()],
        client_message_id: "fwd-2".into(),
    };
    assert_eq!(carol.api.clone().forward_message(stranger).await.unwrap_err().code(), Code::NotFound);
    let into_foreign = ForwardMessageRequest {
        conversation_id: with_carol.clone(),
        seq: 1,
        to_conversation_ids: vec![with_bob.clone()],
        client_message_id: "fwd-3".into(),
    };
    assert_eq!(carol.api.clone().forward_message(into_foreign).await.unwrap_err().code(), Code::NotFound);
    let too_many = ForwardMessageRequest {
        conversation_id: with_bob.clone(),
        seq,
        to_conversation_ids: (0..6).map(|n| format!("g_{n:032x}")).collect(),
        client_message_id: "fwd-4".into(),
    };
    assert_eq!(alice.api.clone().forward_message(too_many).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn links_and_shared_items_are_validated_and_delivered_whole() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let bad_link =
        send_message_request::Content::Link(LinkContent { url: "javascript:alert(1)".into(), ..Default::default() });
    let error = send_content(&alice, &conversation, bad_link, 0).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("content.link.url"), "{error:?}");
    let reel = SharedContent {
        kind: SharedKind::Reel as i32,
        item_id: "C0ffee".into(),
        url: "https://www.instagram.com/reel/C0ffee/".into(),
        author: "natgeo".into(),
        title: "A whale".into(),
        thumbnail_url: "https://cdn.example/whale.jpg".into(),
        caption: "wow".into(),
    };
    let seq =
        send_content(&alice, &conversation, send_message_request::Content::Shared(reel.clone()), 0).await.unwrap();
    let history = alice.history(&conversation).await;
    assert_eq!(history[0].seq, seq);
    assert_eq!(history[0].content, Some(Content::Shared(reel.clone())));
    let unspecified = SharedContent { kind: 0, ..reel };
    let error =
        send_content(&alice, &conversation, send_message_request::Content::Shared(unspecified), 0).await.unwrap_err();
    assert!(error.message().contains("content.shared.kind"), "{error:?}");
}
