//! Messages sent on the device stream (the SDKs' fast path): pipelined,
//! acknowledged on the stream, in order per conversation, never echoed to
//! the sending device, refused with the same codes as `SendMessage`, and
//! deduplicated by client message id like the unary call.

use std::time::Duration;

use imsg_proto::v1::{
    OpenStreamRequest, SendMessageRequest, SendOutcome, TextContent, open_stream_request, open_stream_response,
    send_message_request, send_outcome,
};

use crate::harness::{Device, TestServer};

fn text(conversation: &str, client_id: &str, body: &str) -> OpenStreamRequest {
    OpenStreamRequest {
        frame: Some(open_stream_request::Frame::SendMessage(Box::new(SendMessageRequest {
            conversation_id: conversation.into(),
            client_message_id: client_id.into(),
            reply_to_seq: 0,
            content: Some(send_message_request::Content::Text(TextContent { text: body.into() })),
        }))),
    }
}

/// The next `count` send outcomes on `device`, skipping other frames.
async fn outcomes(device: &mut Device, count: usize) -> Vec<SendOutcome> {
    let mut outcomes = Vec::new();
    while outcomes.len() < count {
        match device.frame().await {
            Some(open_stream_response::Frame::SendOutcome(outcome)) => outcomes.push(outcome),
            Some(_) => continue,
            None => panic!("the stream ended after {} of {count} outcomes", outcomes.len()),
        }
    }
    outcomes
}

fn seq_of(outcome: &SendOutcome) -> u64 {
    match &outcome.outcome {
        Some(send_outcome::Outcome::Sent(sent)) => sent.seq,
        other => panic!("{} was refused: {other:?}", outcome.client_message_id),
    }
}

#[tokio::test]
async fn pipelined_sends_on_the_stream_are_acknowledged_in_order_and_never_echoed() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let with_bob = alice.direct_with("bob").await;
    let with_carol = alice.direct_with("carol").await;
    let mut alice_phone = alice.open(0).await;
    alice_phone.ready().await;
    let mut bob_phone = bob.open(0).await;
    bob_phone.ready().await;

    // Thirty sends without waiting, interleaved over two conversations.
    for n in 0..30 {
        let conversation = if n % 3 == 2 { &with_carol } else { &with_bob };
        alice_phone.up.send(text(conversation, &format!("s{n}"), &format!("m{n}"))).await.unwrap();
    }
    let answered = outcomes(&mut alice_phone, 30).await;
    let seq_for = |id: String| seq_of(answered.iter().find(|o| o.client_message_id == id).unwrap());
    let to_bob: Vec<u64> = (0..30).filter(|n| n % 3 != 2).map(|n| seq_for(format!("s{n}"))).collect();
    let to_carol: Vec<u64> = (0..30).filter(|n| n % 3 == 2).map(|n| seq_for(format!("s{n}"))).collect();
    assert_eq!(to_bob, (1..=20).collect::<Vec<_>>(), "one device's sends to a conversation keep their order");
    assert_eq!(to_carol, (1..=10).collect::<Vec<_>>());

    for expected in 1..=20 {
        let message = bob_phone.message().await;
        assert_eq!((message.seq, message.sender_device_id.as_str()), (expected, "phone"));
    }
    let echoed = |frame: &open_stream_response::Frame| {
        matches!(
            frame,
            open_stream_response::Frame::Event(imsg_proto::v1::Event {
                kind: Some(imsg_proto::v1::event::Kind::Message(_)),
                ..
            })
        )
    };
    assert!(alice_phone.quiet_for(Duration::from_millis(300), echoed).await, "the sender's device got an echo");

    // A retry with a client id already used: the original seq, nothing new.
    alice_phone.up.send(text(&with_bob, "s0", "again")).await.unwrap();
    let retried = outcomes(&mut alice_phone, 1).await.remove(0);
    match retried.outcome {
        Some(send_outcome::Outcome::Sent(sent)) => assert!(sent.duplicate && sent.seq == 1, "{sent:?}"),
        other => panic!("a retry was refused: {other:?}"),
    }
    assert_eq!(alice.history(&with_bob).await.len(), 20);
}

#[tokio::test]
async fn a_refused_send_on_the_stream_names_the_problem_and_the_stream_goes_on() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let mallory = server.client("mallory", "phone").await;
    let with_bob = alice.direct_with("bob").await;
    let mut mallory_phone = mallory.open(0).await;
    mallory_phone.ready().await;

    // Not a member: refused for good (no retry advice), as the unary call is.
    mallory_phone.up.send(text(&with_bob, "x1", "let me in")).await.unwrap();
    // Bad input: refused naming the field.
    mallory_phone.up.send(text(&with_bob, "bad id!", "hi")).await.unwrap();
    let refusals = outcomes(&mut mallory_phone, 2).await;
    for (outcome, (code, words)) in refusals
        .iter()
        .zip([(tonic::Code::NotFound, "conversation"), (tonic::Code::InvalidArgument, "client_message_id")])
    {
        let Some(send_outcome::Outcome::Error(error)) = &outcome.outcome else { panic!("accepted: {outcome:?}") };
        assert_eq!(error.code, code as i32, "{error:?}");
        assert!(error.message.contains(words), "{error:?}");
        assert_eq!(error.retry_after_ms, 0, "a permanent refusal carries no retry advice");
    }
    assert!(alice.history(&with_bob).await.is_empty(), "a refused send changes nothing");

    // The stream still works: a send to mallory's own conversation.
    let own = mallory.direct_with("alice").await;
    mallory_phone.up.send(text(&own, "x2", "hello")).await.unwrap();
    assert_eq!(seq_of(&outcomes(&mut mallory_phone, 1).await[0]), 1);
}
