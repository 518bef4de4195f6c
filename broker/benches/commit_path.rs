//! The partition commit path, measured: what a durable round costs at
//! several batch sizes, and what one acknowledged send costs end to end
//! inside the broker (no gRPC), alone and with many concurrent senders.
//!
//! Run: `cargo bench -p imsg-broker --bench commit_path`
//!
//! It runs on the servers' runtime and allocator, so what it measures is
//! what a node pays.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use imsg_broker::{Broker, BrokerConfig};
use imsg_proto::internal::v1::{Caller, execute_request::Command, execute_response::Result as Outcome};
use imsg_proto::v1::{
    AcceptConversationRequest, CreateConversationRequest, DirectConversationSpec, SendMessageRequest, TextContent,
    create_conversation_request, send_message_request,
};

fn caller(user: &str) -> Caller {
    Caller { user_id: user.into(), device_id: "d".into(), ..Default::default() }
}

async fn open(dir: &std::path::Path) -> Broker {
    let mut config = BrokerConfig::new(dir);
    config.cache_capacity_bytes = 64 * 1024 * 1024;
    Broker::open(config).await.unwrap()
}

async fn conversations(broker: &Broker, pairs: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(pairs);
    for i in 0..pairs {
        let request = CreateConversationRequest {
            request_id: String::new(),
            kind: Some(create_conversation_request::Kind::Direct(DirectConversationSpec {
                peer_user_id: format!("b{i}"),
            })),
        };
        let id = match broker
            .execute(&caller(&format!("a{i}")), None, Command::CreateConversation(request))
            .await
            .unwrap()
        {
            Outcome::CreateConversation(r) => r.conversation.unwrap().conversation_id,
            _ => unreachable!(),
        };
        // Accepted, as between people who know each other.
        let accept = AcceptConversationRequest { conversation_id: id.clone() };
        broker.execute(&caller(&format!("b{i}")), None, Command::AcceptConversation(accept)).await.unwrap();
        ids.push(id);
    }
    ids
}

/// Client ids must never repeat, or the dedup window answers without writing.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn send(conversation: &str) -> Command {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    Command::SendMessage(SendMessageRequest {
        conversation_id: conversation.into(),
        client_message_id: format!("m{id}"),
        reply_to_seq: 0,
        content: Some(send_message_request::Content::Text(TextContent { text: "x".repeat(64) })),
    })
}

/// Sequential sends: one message per durable round, the latency floor.
fn single_sender(c: &mut Criterion) {
    let runtime = imsg_broker::runtime::multi_thread(imsg_broker::runtime::workers_beside_storage()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broker = runtime.block_on(open(dir.path()));
    let conversation = runtime.block_on(conversations(&broker, 1)).remove(0);
    let mut group = c.benchmark_group("commit_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function("send_one_durable_message", |b| {
        b.iter(|| {
            runtime.block_on(broker.execute(&caller("a0"), None, send(&conversation))).unwrap();
        })
    });
    group.finish();
    runtime.block_on(broker.shutdown()).unwrap();
}

/// Many concurrent senders over many conversations: group commit at work.
fn concurrent_senders(c: &mut Criterion) {
    let runtime = imsg_broker::runtime::multi_thread(imsg_broker::runtime::workers_beside_storage()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broker = runtime.block_on(open(dir.path()));
    let conversations = runtime.block_on(conversations(&broker, 256));
    let mut group = c.benchmark_group("commit_path");
    group.measurement_time(Duration::from_secs(8));
    for concurrency in [16usize, 256] {
        let burst = 4096u64;
        group.throughput(Throughput::Elements(burst));
        group.bench_with_input(BenchmarkId::new("send_burst_4096", concurrency), &concurrency, |b, &concurrency| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let start = Instant::now();
                    runtime.block_on(async {
                        let mut tasks = Vec::new();
                        for worker in 0..concurrency {
                            let (broker, conversations) = (broker.clone(), conversations.clone());
                            tasks.push(tokio::spawn(async move {
                                let mut n = worker as u64;
                                while n < burst {
                                    let conversation = &conversations[n as usize % conversations.len()];
                                    let user = format!("a{}", n as usize % conversations.len());
                                    broker.execute(&caller(&user), None, send(conversation)).await.unwrap();
                                    n += concurrency as u64;
                                }
                            }));
                        }
                        for task in tasks {
                            task.await.unwrap();
                        }
                    });
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();
    runtime.block_on(broker.shutdown()).unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1));
    targets = single_sender, concurrent_senders
}
criterion_main!(benches);
