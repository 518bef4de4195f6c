//! What a restart costs a node that holds many messages: opening the
//! broker reads every partition's message log whole to rebuild its index
//! (`storage::message_log`), so start-up grows with the messages held.
//!
//! Run: `cargo bench -p imsg-broker --bench recovery`

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use imsg_broker::{Broker, BrokerConfig};
use imsg_proto::internal::v1::{Caller, execute_request::Command, execute_response::Result as Outcome};
use imsg_proto::v1::{
    AcceptConversationRequest, CreateConversationRequest, DirectConversationSpec, SendMessageRequest, TextContent,
    create_conversation_request, send_message_request,
};

fn caller(user: &str) -> Caller {
    Caller { user_id: user.into(), device_id: "d".into(), ..Default::default() }
}

fn config(dir: &std::path::Path) -> BrokerConfig {
    let mut config = BrokerConfig::new(dir);
    config.cache_capacity_bytes = 64 * 1024 * 1024;
    config
}

/// A node holding `messages` 1:1 messages of 200 bytes over 256
/// conversations, written through the commit path and closed cleanly.
async fn fill(dir: &std::path::Path, messages: usize) {
    let broker = Broker::open(config(dir)).await.unwrap();
    let mut conversations = Vec::new();
    for i in 0..256 {
        let spec = DirectConversationSpec { peer_user_id: format!("b{i}") };
        let request = CreateConversationRequest {
            request_id: String::new(),
            kind: Some(create_conversation_request::Kind::Direct(spec)),
        };
        match broker.execute(&caller(&format!("a{i}")), None, Command::CreateConversation(request)).await.unwrap() {
            Outcome::CreateConversation(r) => conversations.push(r.conversation.unwrap().conversation_id),
            _ => unreachable!(),
        }
        // Accepted, as between people who know each other.
        let accept = AcceptConversationRequest { conversation_id: conversations[i].clone() };
        broker.execute(&caller(&format!("b{i}")), None, Command::AcceptConversation(accept)).await.unwrap();
    }
    let mut senders = Vec::new();
    for (i, conversation) in conversations.into_iter().enumerate() {
        let broker = broker.clone();
        senders.push(tokio::spawn(async move {
            for n in 0..messages / 256 {
                let send = SendMessageRequest {
                    conversation_id: conversation.clone(),
                    client_message_id: format!("m{n}"),
                    reply_to_seq: 0,
                    content: Some(send_message_request::Content::Text(TextContent { text: "x".repeat(200) })),
                };
                broker.execute(&caller(&format!("a{i}")), None, Command::SendMessage(send)).await.unwrap();
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    broker.shutdown().await.unwrap();
}

fn open_a_node_holding_messages(c: &mut Criterion) {
    let runtime = imsg_broker::runtime::multi_thread(imsg_broker::runtime::workers_beside_storage()).unwrap();
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    for messages in [100_000usize, 400_000] {
        let dir = tempfile::tempdir().unwrap();
        runtime.block_on(fill(dir.path(), messages));
        // Only the open is timed: a clean shutdown waits for the threads'
        // next wake-up, up to a checkpoint interval.
        group.bench_with_input(BenchmarkId::new("open", messages), &messages, |b, _| {
            b.iter_custom(|iterations| {
                let mut opening = Duration::ZERO;
                for _ in 0..iterations {
                    let started = Instant::now();
                    let broker = runtime.block_on(Broker::open(config(dir.path()))).unwrap();
                    opening += started.elapsed();
                    runtime.block_on(broker.shutdown()).unwrap();
                }
                opening
            })
        });
    }
    group.finish();
}

criterion_group!(benches, open_a_node_holding_messages);
criterion_main!(benches);
