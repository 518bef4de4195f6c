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

/// The existence test: an outsider's every probe of a conversation that
/// exists is answered exactly as the same probe of one that does not (the
/// id named in the message is the caller's own input).
#[tokio::test]
async fn an_outsider_cannot_tell_an_existing_conversation_from_a_missing_one() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let carol = server.client("carol", "phone").await;
    let conversation = alice.direct_with("bob").await;
    alice.send(&conversation, "private").await;
    // Same length and prefix as a real id, never created.
    let missing = format!("dm_{}", "0".repeat(conversation.len() - 3));
    let answers = |id: &str| {
        let (carol, id) = (carol.clone(), id.to_owned());
        async move {
            let send = carol.try_send(&id, "c1", "let me in").await.unwrap_err();
            let read = carol
                .api
                .clone()
                .list_messages(ListMessagesRequest { conversation_id: id.clone(), ..Default::default() })
                .await
                .unwrap_err();
            let get = carol
                .api
                .clone()
                .get_conversation(imsg_proto::v1::GetConversationRequest { conversation_id: id.clone() })
                .await
                .unwrap_err();
            [send, read, get].map(|status| (status.code(), status.message().replace(&id, "<id>")))
        }
    };
    let (existing, absent) = (answers(&conversation).await, answers(&missing).await);
    assert_eq!(existing, absent);
    assert!(existing.iter().all(|(code, _)| *code == Code::NotFound), "{existing:?}");
    let mut stream = carol.open(0).await;
    stream.ready().await;
    stream
        .send_frame(Up::Typing(imsg_proto::v1::TypingSignal { conversation_id: conversation.clone(), active: true }))
        .await;
    match stream.frame().await {
        Some(imsg_proto::v1::open_stream_response::Frame::Error(e)) => {
            assert_eq!(e.code, Code::NotFound as i32)
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
    let channel = crate::harness::channel_to(server.addr).await;
    let mut anonymous = imsg_proto::v1::messaging_service_client::MessagingServiceClient::new(channel.clone());
    let status = anonymous.get_settings(imsg_proto::v1::GetSettingsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let forged =
        imsg_common::token::Authenticator::new("some-other-secret-entirely").unwrap().issue("alice", "x", 60).unwrap();
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

/// Errors say whether to retry (`imsg_common::retry`): a transient refusal
/// (here the per-user rate limit) carries `google.rpc.RetryInfo` with the
/// wait; a permanent one (a full group) never does, whatever its code. The
/// SDK, the load tester and this harness share that one rule: the SDK's
/// sends ride out the rate limit by waiting as told, and give up at once on
/// a permanent refusal.
#[tokio::test]
async fn transient_errors_carry_retry_info_and_clients_retry_only_those() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut broker = imsg_broker::BrokerConfig::new(data_dir.path());
    broker.partitions = 4;
    broker.cache_capacity_bytes = 16 * 1024 * 1024;
    broker.limits.max_group_members = 3;
    broker.limits.user_request_burst = 4;
    broker.limits.user_requests_per_second = 20.0;
    let config = imsg_gateway::GatewayConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        imsg_gateway::BrokerTarget::Embedded(broker),
        crate::harness::SECRET,
    );
    let gateway = imsg_gateway::RunningGateway::start(config).await.unwrap();
    let alice = Client::connect(gateway.addr, "alice", "phone").await;

    // Permanent: a group over its limit. RESOURCE_EXHAUSTED, no RetryInfo.
    let full = alice
        .api
        .clone()
        .create_conversation(CreateConversationRequest {
            request_id: "g1".into(),
            kind: Some(create_conversation_request::Kind::Group(imsg_proto::v1::GroupConversationSpec {
                title: "too big".into(),
                member_ids: vec!["bob".into(), "carol".into(), "dave".into()],
            })),
        })
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert_eq!(imsg_common::retry::retry_after(&full), None, "a full group is permanent: {full:?}");

    // Transient: the rate limit (4 calls of burst; one was spent above).
    let conversation = alice.direct_with("bob").await;
    let mut limited = None;
    for n in 0..10 {
        if let Err(status) = alice.try_send(&conversation, &format!("r{n}"), "hi").await {
            limited = Some(status);
            break;
        }
    }
    let limited = limited.expect("the rate limit never refused");
    assert_eq!(limited.code(), Code::ResourceExhausted);
    let wait = imsg_common::retry::retry_after(&limited).expect("a rate-limit refusal carries RetryInfo");
    assert!(wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_millis(50), "{wait:?}");

    // The SDK retries the transient one as told: every send is acknowledged,
    // at the limit's pace.
    let token = crate::harness::tokens().issue("alice", "sdk", 3600).unwrap();
    let sdk = imsg_client::Client::connect(imsg_client::ClientConfig::new(format!("http://{}", gateway.addr), token))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    for _ in 0..10 {
        sdk.send_text(&conversation, "through the limit").await.unwrap();
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(300),
        "ten sends at 20/s took {:?}",
        started.elapsed()
    );

    // ... and gives up at once on a permanent one (not a member).
    let token = crate::harness::tokens().issue("mallory", "sdk", 3600).unwrap();
    let outsider =
        imsg_client::Client::connect(imsg_client::ClientConfig::new(format!("http://{}", gateway.addr), token))
            .await
            .unwrap();
    let started = std::time::Instant::now();
    let refused = outsider.send_text(&conversation, "let me in").await.unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_millis(500), "retried a permanent refusal");
    assert!(format!("{refused:?}").contains("NotFound"), "{refused:?}");
    gateway.shutdown().await.unwrap();
}

/// Bytes sent as they are, for requests no generated client would send;
/// answers decoded as `U`.
struct RawCodec<U>(std::marker::PhantomData<U>);

impl<U> RawCodec<U> {
    fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl<U: prost::Message + Default + Send + 'static> tonic::codec::Codec for RawCodec<U> {
    type Encode = Vec<u8>;
    type Decode = U;
    type Encoder = RawEncoder;
    type Decoder = imsg_proto::codec::CompactDecoder<U>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        imsg_proto::codec::CompactCodec::<U, U>::default().decoder()
    }
}

/// A gRPC client that sends raw bytes as `token`'s bearer.
async fn raw_client(server: &TestServer) -> (tonic::client::Grpc<tonic::transport::Channel>, String) {
    let channel = crate::harness::channel_to(server.addr).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    (grpc, crate::harness::tokens().issue("alice", "phone", 60).unwrap())
}

fn bearing<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test]
async fn undecodable_and_non_utf8_requests_get_invalid_argument_naming_the_problem() {
    let server = TestServer::start().await;
    let (grpc, token) = raw_client(&server).await;
    let send_raw = |bytes: Vec<u8>| {
        let (mut grpc, token) = (grpc.clone(), token.clone());
        async move {
            grpc.ready().await.unwrap();
            let path = tonic::codegen::http::uri::PathAndQuery::from_static("/imsg.v1.MessagingService/SendMessage");
            let codec = RawCodec::<imsg_proto::v1::SendMessageResponse>::new();
            grpc.unary(bearing(bytes, &token), path, codec).await.unwrap_err()
        }
    };
    // conversation_id (field 1) whose bytes are not UTF-8.
    let not_utf8 = send_raw(vec![0x0a, 0x02, 0xff, 0xfe]).await;
    assert_eq!(not_utf8.code(), Code::InvalidArgument, "{not_utf8:?}");
    assert!(not_utf8.message().contains("UTF-8") && not_utf8.message().contains("conversation_id"), "{not_utf8:?}");
    // A length running past the end of the message.
    let truncated = send_raw(vec![0x0a, 0x10, b'x']).await;
    assert_eq!(truncated.code(), Code::InvalidArgument, "{truncated:?}");
    assert!(truncated.message().contains("could not be decoded"), "{truncated:?}");
}

#[tokio::test]
async fn a_stream_sent_an_undecodable_frame_says_goodbye_with_the_reason() {
    use prost::Message as _;
    let server = TestServer::start().await;
    let (mut grpc, token) = raw_client(&server).await;
    let (up, frames) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let hello = imsg_proto::v1::OpenStreamRequest { frame: Some(Up::Hello(imsg_proto::v1::Hello { cursor: 0 })) };
    up.send(hello.encode_to_vec()).await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/imsg.v1.MessagingService/OpenStream");
    let request = bearing(tokio_stream::wrappers::ReceiverStream::new(frames), &token);
    let codec = RawCodec::<imsg_proto::v1::OpenStreamResponse>::new();
    let mut down = grpc.streaming(request, path, codec).await.unwrap().into_inner();
    let mut sent_bad_frame = false;
    let goodbye = loop {
        match down.message().await.unwrap().and_then(|f| f.frame) {
            Some(imsg_proto::v1::open_stream_response::Frame::Ready(_)) => {
                up.send(vec![0x0a, 0x10, b'x']).await.unwrap();
                sent_bad_frame = true;
            }
            Some(imsg_proto::v1::open_stream_response::Frame::Goodbye(goodbye)) => break goodbye,
            Some(_) => continue,
            None => panic!("the stream ended without a goodbye"),
        }
    };
    assert!(sent_bad_frame);
    assert!(goodbye.reason.contains("could not be decoded"), "{goodbye:?}");
}

#[tokio::test]
async fn an_oversize_request_gets_resource_exhausted_naming_the_limit() {
    let server = TestServer::start().await;
    let (mut grpc, token) = raw_client(&server).await;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/imsg.v1.MessagingService/SendMessage");
    let codec = RawCodec::<imsg_proto::v1::SendMessageResponse>::new();
    let oversize = text("c1", "m1", &"x".repeat(300 * 1024));
    let refused = grpc.unary(bearing(prost::Message::encode_to_vec(&oversize), &token), path, codec).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("the limit is 262144"), "{refused:?}");
}

/// A 100 KB token used to exceed h2's header list size and CONTINUATION
/// guard: a GOAWAY that ended the client's other streams. Now only that
/// request fails, and the connection's stream and calls go on.
#[tokio::test]
async fn an_oversized_header_block_fails_only_that_request() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let mut device = alice.open(0).await;
    device.ready().await;
    let huge = alice.sharing_connection(&"x".repeat(100_000));
    let refused =
        huge.api.clone().list_conversations(imsg_proto::v1::ListConversationsRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("request headers are"), "{refused:?}");
    // The open stream on the same connection still delivers, and the
    // connection still carries calls.
    let seq = bob.send(&conversation, "still here").await;
    let delivered = device.message().await;
    assert_eq!((delivered.seq, delivered.sender_id.as_str()), (seq, "bob"));
    assert_eq!(alice.history(&conversation).await.len(), 1);
}

/// Per-user limits are counted at the user's partition: two gateways in
/// front of one broker share alice's budget (a burst of 10, 5 a second)
/// instead of giving her one each.
#[tokio::test]
async fn a_users_request_budget_holds_across_gateways() {
    use crate::harness::{Process, binary, broker_args, gateway_args};
    let data = tempfile::tempdir().unwrap();
    let broker =
        Process::spawn(&binary("imsg-broker"), &broker_args(data.path(), "127.0.0.1:0", &["--user-rps", "5"])).await;
    let first = Process::spawn(&binary("imsg-gateway"), &gateway_args(broker.addr)).await;
    let second = Process::spawn(&binary("imsg-gateway"), &gateway_args(broker.addr)).await;
    let phone = Client::connect(first.addr, "alice", "phone").await;
    let laptop = Client::connect(second.addr, "alice", "laptop").await;
    let started = std::time::Instant::now();
    let mut accepted = 0;
    for i in 0..40 {
        let device = if i % 2 == 0 { &phone } else { &laptop };
        match device.api.clone().get_settings(imsg_proto::v1::GetSettingsRequest {}).await {
            Ok(_) => accepted += 1,
            Err(refused) => {
                assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
                assert!(imsg_common::retry::retry_after(&refused).is_some(), "{refused:?}");
            }
        }
    }
    let allowed = 10.0 + 5.0 * started.elapsed().as_secs_f64();
    assert!(accepted >= 10, "the burst was not honoured: {accepted}");
    assert!(f64::from(accepted) <= allowed.floor() + 1.0, "{accepted} accepted where {allowed:.1} were allowed");
    // Another user's budget is their own.
    let bob = Client::connect(second.addr, "bob", "phone").await;
    bob.api.clone().get_settings(imsg_proto::v1::GetSettingsRequest {}).await.unwrap();
}
