//! Invariant 4: no gap on reconnect.

use std::time::Duration;

use imsg_proto::v1::{event, open_stream_response};

use crate::harness::TestServer;

#[tokio::test]
async fn offline_device_resumes_1000_messages_with_no_gap_and_no_duplicate() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let conversation = alice.direct_with("bob").await;
    alice.send(&conversation, "before").await;
    // Bob's phone is online, receives seq 1, notes its cursor, goes offline.
    let mut phone = bob.open(0).await;
    phone.ready().await;
    let cursor = phone.cursor;
    drop(phone);
    let senders: Vec<_> = (0..4)
        .map(|worker| {
            let alice = alice.clone();
            let conversation = conversation.clone();
            tokio::spawn(async move {
                for n in 0..250 {
                    alice.send(&conversation, &format!("w{worker}-{n}")).await;
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let mut phone = bob.open(cursor).await;
    let replayed = phone.ready().await;
    let seqs: Vec<u64> = replayed
        .iter()
        .filter_map(|k| match k {
            event::Kind::Message(m) => Some(m.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (2..=1001).collect::<Vec<_>>(), "exactly the 1000 missed messages, in order, once each");
    // Then live.
    alice.send(&conversation, "after").await;
    assert_eq!(phone.message().await.seq, 1002);
}

#[tokio::test]
async fn reconnecting_with_the_last_cursor_replays_nothing_twice() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let bob = server.client("bob", "phone").await;
    let mut phone = bob.open(0).await;
    phone.ready().await;
    for _ in 0..3 {
        alice.send(&conversation, "x").await;
        phone.message().await;
    }
    let cursor = phone.cursor;
    drop(phone);
    let mut phone = bob.open(cursor).await;
    assert!(phone.ready().await.is_empty(), "nothing missed, nothing replayed");
}

#[tokio::test]
async fn a_cursor_older_than_retention_gets_resync_required_not_a_silent_gap() {
    let server = TestServer::start_with(|limits| limits.update_log_retention = 20).await;
    let alice = server.client("alice", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let bob = server.client("bob", "phone").await;
    for _ in 0..60 {
        alice.send(&conversation, "x").await;
    }
    // Trimming runs on the partition tick.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut phone = bob.open(1).await;
    match phone.frame().await {
        Some(open_stream_response::Frame::ResyncRequired(resync)) => {
            // Reconnecting with the given cursor works and goes live.
            let mut phone = bob.open(resync.cursor).await;
            phone.ready().await;
            alice.send(&conversation, "after resync").await;
            assert_eq!(phone.message().await.seq, 61);
        }
        other => panic!("expected resync_required, got {other:?}"),
    }
}

/// Each tick a user partition writes its new update-log batches again as
/// one compacted row (`partition::compaction`). A device resuming reads
/// across compacted rows and batches not compacted yet, gets each missed
/// message once and in order, and gets the same after a restart, which
/// reads the log back from what sled and the write-ahead log hold.
#[tokio::test]
async fn resume_reads_the_compacted_update_log_before_and_after_a_restart() {
    let mut server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let bob = server.client("bob", "phone").await;
    let mut phone = bob.open(0).await;
    phone.ready().await;
    alice.send(&conversation, "seen").await;
    assert_eq!(phone.message().await.seq, 1);
    let cursor = phone.cursor;
    drop(phone);
    // Rounds of sends with ticks between them: some batches are compacted,
    // the last ones may not be yet when the device comes back.
    for round in 0..3 {
        for n in 0..100 {
            alice.send(&conversation, &format!("r{round}-{n}")).await;
        }
        if round < 2 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let missed: Vec<u64> = (2..=301).collect();
    let resumed = |server_addr_client: crate::harness::Client| async move {
        let mut phone = server_addr_client.open(cursor).await;
        let seqs: Vec<u64> = phone
            .ready()
            .await
            .iter()
            .filter_map(|k| match k {
                event::Kind::Message(m) => Some(m.seq),
                _ => None,
            })
            .collect();
        seqs
    };
    assert_eq!(resumed(bob.clone()).await, missed, "before the restart");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(resumed(bob.clone()).await, missed, "once everything is compacted");
    server.stop().await;
    let server = TestServer::start_in(server.data_dir).await;
    let bob = server.client("bob", "phone").await;
    assert_eq!(resumed(bob).await, missed, "after a restart");
}
