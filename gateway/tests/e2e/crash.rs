//! Invariants 1, 2, 3 and 4 under a crash: the broker process is killed with
//! SIGKILL while clients send; after a restart every acknowledged message is
//! in history, in order, exactly once, retries are still deduplicated, and a
//! device resumes with no gap.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use tonic::Code;

use crate::harness::{Client, PATIENCE, Process, binary, broker_args, gateway_args};

#[tokio::test]
async fn acknowledged_messages_survive_a_broker_sigkill_in_order_exactly_once() {
    let data = tempfile::tempdir().unwrap();
    let broker = Process::spawn(&binary("imsg-broker"), &broker_args(data.path(), "127.0.0.1:0", &[])).await;
    let broker_addr = broker.addr;
    let gateway = Process::spawn(&binary("imsg-gateway"), &gateway_args(broker_addr)).await;
    let alice = Client::connect(gateway.addr, "alice", "phone").await;
    let bob = Client::connect(gateway.addr, "bob", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let group = alice.group("crash", &["bob", "carol"]).await;

    // client id -> acknowledged seq, per conversation
    let acked: Arc<Mutex<HashMap<String, BTreeMap<String, u64>>>> = Arc::default();
    let attempted: Arc<Mutex<Vec<(usize, String, String)>>> = Arc::default();
    let mut senders = Vec::new();
    for worker in 0..6 {
        let client = if worker % 2 == 0 { alice.clone() } else { bob.clone() };
        let target = if worker < 3 { conversation.clone() } else { group.clone() };
        let acked = acked.clone();
        let attempted = attempted.clone();
        senders.push(tokio::spawn(async move {
            for n in 0.. {
                let id = format!("w{worker}-{n}");
                attempted.lock().unwrap().push((worker, target.clone(), id.clone()));
                match client.try_send(&target, &id, &format!("message {id}")).await {
                    Ok(ack) => {
                        acked.lock().unwrap().entry(target.clone()).or_default().insert(id, ack.seq);
                    }
                    Err(status) => {
                        assert!(
                            matches!(
                                status.code(),
                                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                            ),
                            "unexpected refusal: {status:?}"
                        );
                        return;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    broker.sigkill().await;
    for sender in senders {
        sender.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.values().map(BTreeMap::len).sum();
    assert!(total > 50, "the test should have acknowledged a fair number of messages, got {total}");

    let _broker =
        Process::spawn(&binary("imsg-broker"), &broker_args(data.path(), &broker_addr.to_string(), &[])).await;
    // History: gap-free 1..=n, every acked message at its acked seq, each client id once.
    for (target, acks) in &acked {
        let history = wait_for_history(&alice, target).await;
        let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=history.len() as u64).collect::<Vec<_>>(), "gap-free order");
        let mut seen = HashMap::new();
        for message in &history {
            assert!(seen.insert(message.client_message_id.clone(), message.seq).is_none(), "client id stored twice");
        }
        for (id, seq) in acks {
            assert_eq!(seen.get(id), Some(seq), "acknowledged {id} must be in history at seq {seq}");
        }
    }
    // Exactly-once across the crash: retrying every attempted send changes nothing
    // for acknowledged ones and stores each unacknowledged one once.
    let attempted = attempted.lock().unwrap().clone();
    for (worker, target, id) in &attempted {
        let sender = if worker % 2 == 0 { &alice } else { &bob };
        let ack = sender.try_send(target, id, "retry").await.unwrap();
        if let Some(seq) = acked.get(target).and_then(|a| a.get(id)) {
            assert_eq!(ack.seq, *seq, "a retry of {id} returns its original seq");
            assert!(ack.duplicate);
        }
    }
    for target in acked.keys() {
        let history = alice.history(target).await;
        let attempts = attempted.iter().filter(|(_, t, _)| t == target).count();
        assert_eq!(history.len(), attempts, "after retries, every attempted send is stored exactly once");
    }
    // Resume: carol, who was never online, replays the whole group log once each.
    let carol = Client::connect(gateway.addr, "carol", "phone").await;
    let mut phone = carol.open(0).await;
    let replayed = phone.replayed_seqs(&group).await;
    let group_len = alice.history(&group).await.len() as u64;
    assert_eq!(replayed, (1..=group_len).collect::<Vec<_>>(), "resume after a crash has no gap and no duplicate");
}

async fn wait_for_history(client: &Client, conversation: &str) -> Vec<imsg_proto::v1::Message> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let attempt = client
            .api
            .clone()
            .list_messages(imsg_proto::v1::ListMessagesRequest {
                conversation_id: conversation.into(),
                page_size: 1,
                ..Default::default()
            })
            .await;
        if attempt.is_ok() {
            return client.history(conversation).await;
        }
        assert!(tokio::time::Instant::now() < deadline, "broker did not come back: {attempt:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
