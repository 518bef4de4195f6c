//! Bad input gets a precise error naming the problem, and changes nothing.
//! Authority comes from the token (invariant 5).

use imsg_proto::v1::{
    CreateConversationRequest, DirectConversationSpec, ListMessagesRequest, SendMessageRequest, TextContent,
    create_conversation_request, open_stream_request::Frame as Up, send_message_request,
};
use tonic::Code;

use crate::harness::{Client, TestServer, tokens};

fn text(conversation: &str, client_id: &str, body: &str) -> SendMessageRequest {
    SendMessageRequest {
        conversation_id: conversation.into(),
        client_message_id: client_id.into(),
        reply_to_seq: 0,
        content: Some(send_message_request::Content::Text(TextContent { text: body.into() })),
    }
}

#[tokio::test]
async fn non_members_get_permission_denied_and_learn_nothing() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let carol = server.client("carol", "phone").await;
    let conversation = alice.direct_with("bob").await;
    alice.send(&conversation, "private").await;
    let send = carol.try_send(&conversation, "c1", "let me in").await.unwrap_err();
    assert_eq!(send.code(), Code::PermissionDenied);
    let read = carol
        .api
        .clone()
        .list_messages(ListMessagesRequest { conversation_id: conversation.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(read.code(), Code::PermissionDenied);
    let mut stream = carol.open(0).await;
    stream.ready().await;
    stream
        .send_frame(Up::Typing(imsg_proto::v1::TypingSignal { conversation_id: conversation.clone(), active: true }))
        .await;
    match stream.frame().await {
        Some(imsg_proto::v1::open_stream_response::Frame::Error(e)) => {
            assert_eq!(e.code, Code::PermissionDenied as i32)
        }
        other => panic!("expected a permission error, got {other:?}"),
    }
    assert_eq!(alice.history(&conversation).await.len(), 1, "nothing was written");
}

#[tokio::test]
async fn bad_input_gets_a_precise_error_naming_the_field_and_changes_nothing() {
    let server = TestServer::start_with(|limits| limits.max_text_bytes = 100).await;
    let alice = server.client("alice", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let mut api = alice.api.clone();
    let cases: Vec<(SendMessageRequest, Code, &str)> = vec![
        (text(&conversation, "a1", ""), Code::InvalidArgument, "content.text"),
        (text(&conversation, "a2", "   "), Code::InvalidArgument, "content.text"),
        (text(&conversation, "a3", &"x".repeat(101)), Code::InvalidArgument, "content.text"),
        (text(&conversation, "", "hi"), Code::InvalidArgument, "client_message_id"),
        (text(&conversation, "bad id!", "hi"), Code::InvalidArgument, "client_message_id"),
        (text("not-a-conversation", "a4", "hi"), Code::InvalidArgument, "conversation_id"),
        (text("dm_00000000000000000000000000000000", "a5", "hi"), Code::NotFound, "not found"),
        (SendMessageRequest { content: None, ..text(&conversation, "a6", "") }, Code::InvalidArgument, "content"),
        (
            SendMessageRequest { reply_to_seq: 99, ..text(&conversation, "a7", "hi") },
            Code::InvalidArgument,
            "reply_to_seq",
        ),
    ];
    for (request, code, mentions) in cases {
        let status = api.send_message(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{request:?} -> {status:?}");
        assert!(status.message().contains(mentions), "{:?} should mention {mentions}", status.message());
    }
    let page = api
        .list_messages(ListMessagesRequest {
            conversation_id: conversation.clone(),
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(page.code(), Code::InvalidArgument);
    assert!(page.message().contains("page_size"));
    let token = api
        .list_messages(ListMessagesRequest {
            conversation_id: conversation.clone(),
            page_token: "zzz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(token.message().contains("page_token"));
    let myself = api
        .create_conversation(CreateConversationRequest {
            request_id: String::new(),
            kind: Some(create_conversation_request::Kind::Direct(DirectConversationSpec {
                peer_user_id: "alice".into(),
            })),
        })
        .await
        .unwrap_err();
    assert_eq!(myself.code(), Code::InvalidArgument);
    assert!(alice.history(&conversation).await.is_empty(), "no refused request wrote anything");
}

#[tokio::test]
async fn requests_without_a_valid_token_are_unauthenticated() {
    let server = TestServer::start().await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
    let mut anonymous = imsg_proto::v1::messaging_service_client::MessagingServiceClient::new(channel.clone());
    let status = anonymous.get_settings(imsg_proto::v1::GetSettingsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let forged =
        imsg_gateway::auth::Authenticator::new("some-other-secret-entirely").unwrap().issue("alice", "x", 60).unwrap();
    let mut request = tonic::Request::new(imsg_proto::v1::GetSettingsRequest {});
    request.metadata_mut().insert("authorization", format!("Bearer {forged}").parse().unwrap());
    assert_eq!(anonymous.get_settings(request).await.unwrap_err().code(), Code::Unauthenticated);
    // A valid token works on the same channel.
    let token = tokens().issue("alice", "x", 60).unwrap();
    let mut request = tonic::Request::new(imsg_proto::v1::GetSettingsRequest {});
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert!(anonymous.get_settings(request).await.is_ok());
}

#[tokio::test]
async fn a_stream_must_start_with_hello() {
    let server = TestServer::start().await;
    let alice: Client = server.client("alice", "phone").await;
    let (up, up_rx) = tokio::sync::mpsc::channel(4);
    up.send(imsg_proto::v1::OpenStreamRequest { frame: Some(Up::Ping(imsg_proto::v1::Ping { nonce: 1 })) })
        .await
        .unwrap();
    let status = alice.api.clone().open_stream(tokio_stream::wrappers::ReceiverStream::new(up_rx)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("hello"));
}
