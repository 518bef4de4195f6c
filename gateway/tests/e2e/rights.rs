//! Privacy rights: exporting one's data, deleting one's account.

use imsg_proto::v1::{
    BlockUserRequest, DeleteAccountRequest, ExportMyDataRequest, GetConversationRequest, PushPlatform,
    RegisterPushTargetRequest, UpdateSettingsRequest, message::Content, open_stream_response::Frame,
};

use crate::harness::{Client, TestServer};

async fn export(client: &Client) -> serde_json::Value {
    let mut stream = client.api.clone().export_my_data(ExportMyDataRequest {}).await.unwrap().into_inner();
    let mut document = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        document.extend_from_slice(&chunk.chunk);
        chunks += 1;
    }
    assert!(chunks > 2, "streamed in pieces, got {chunks}");
    serde_json::from_slice(&document)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&document)))
}

#[tokio::test]
async fn an_export_holds_settings_blocks_conversations_and_only_the_callers_messages() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let dave = server.client("dave", "phone").await;
    let settings = UpdateSettingsRequest { hide_read_receipts: Some(true), ..Default::default() };
    alice.api.clone().update_settings(settings).await.unwrap();
    alice.api.clone().block_user(BlockUserRequest { user_id: "mallory".into() }).await.unwrap();
    let direct = alice.direct_with("bob").await;
    alice.send(&direct, "first from alice").await;
    bob.send(&direct, "bob's own words").await;
    alice.send(&direct, "second from alice").await;
    let request = dave.request_to("alice").await;
    dave.send(&request, "hi alice").await;

    let document = export(&alice).await;
    assert_eq!(document["user_id"], "alice");
    assert_eq!(document["settings"]["hide_read_receipts"], true);
    assert_eq!(document["blocked_user_ids"], serde_json::json!(["mallory"]));
    let conversations = document["conversations"].as_array().unwrap();
    let find = |id: &str| conversations.iter().find(|c| c["conversation"]["conversation_id"] == id).unwrap();
    let texts: Vec<&str> = find(&direct)["messages_sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["first from alice", "second from alice"], "only the caller's messages");
    assert_eq!(find(&request)["folder"], "FOLDER_REQUESTS");
    assert!(find(&request)["messages_sent"].as_array().unwrap().is_empty());
    assert!(!document.to_string().contains("bob's own words"), "nobody else's words");
}

#[tokio::test]
async fn a_deleted_account_leaves_tombstones_no_state_and_no_sessions() {
    let mut server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let direct = alice.direct_with("bob").await;
    let group = alice.group("friends", &["bob", "carol"]).await;
    alice.send(&direct, "hi bob").await;
    let bobs = bob.send(&direct, "my words").await;
    bob.send(&group, "hello group").await;
    bob.api.clone().block_user(BlockUserRequest { user_id: "mallory".into() }).await.unwrap();
    let target = RegisterPushTargetRequest { platform: PushPlatform::Fcm as i32, token: "tok".into() };
    bob.api.clone().register_push_target(target).await.unwrap();
    let mut stream = bob.open(0).await;
    stream.ready().await;

    let deleted = bob.api.clone().delete_account(DeleteAccountRequest {}).await.unwrap().into_inner();
    assert_eq!((deleted.conversations, deleted.messages_erased), (2, 2));
    let goodbye = loop {
        match stream.frame().await {
            Some(Frame::Goodbye(goodbye)) => break goodbye,
            Some(_) => continue,
            None => panic!("no goodbye"),
        }
    };
    assert_eq!(goodbye.reason, "account deleted");

    // Bob's messages are tombstones saying so; everyone else's stay.
    let check = |history: Vec<imsg_proto::v1::Message>| {
        for message in history {
            if message.sender_id == "bob" {
                assert!(message.sender_deleted && message.unsent && message.content.is_none(), "{message:?}");
            } else {
                assert!(matches!(message.content, Some(Content::Text(_))), "{message:?}");
            }
        }
    };
    check(alice.history(&direct).await);
    check(alice.history(&group).await);
    let members = alice
        .api
        .clone()
        .get_conversation(GetConversationRequest { conversation_id: group.clone() })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .members;
    assert!(members.iter().all(|m| m.user_id != "bob"), "bob left the group");
    // No state: an empty inbox, default settings, no blocks.
    assert!(bob.inbox().await.conversations.is_empty());
    let blocked = bob.api.clone().list_blocked_users(imsg_proto::v1::ListBlockedUsersRequest {}).await.unwrap();
    assert!(blocked.into_inner().user_ids.is_empty());
    let mallory = server.client("mallory", "phone").await;
    mallory.request_to("bob").await; // no longer refused by bob's block

    // Still so after a restart.
    server.stop().await;
    let restarted = TestServer::start_in(server.data_dir).await;
    let alice = restarted.client("alice", "phone").await;
    let history = alice.history(&direct).await;
    assert!(history.iter().any(|m| m.seq == bobs && m.sender_deleted && m.content.is_none()));
}
