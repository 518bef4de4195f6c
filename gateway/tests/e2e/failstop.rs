//! Invariant 1, fail-stop: a node whose storage writer panics or stops
//! making progress reports NOT_SERVING and exits non-zero, instead of
//! serving reads forever while never acknowledging a write again; a node
//! that cannot open its data exits with an error naming the file.

use std::{process::Stdio, time::Duration};

use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::harness::{Client, PATIENCE, Process, binary, server_command};

/// Exit status of a node stopped by a storage failure (`EX_SOFTWARE`).
const FAIL_STOP_EXIT: i32 = 70;

/// Flags of a single-node server on `data`, plus `extra`.
fn node_args(data: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--embedded-broker",
        "--data-dir",
        &data.display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--partitions",
        "4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

async fn node_with_fault(data: &std::path::Path, extra: &[&str]) -> Process {
    Process::spawn(&binary("imsg-gateway"), &node_args(data, extra)).await
}

/// Sends until the node stops answering; watches overall health meanwhile.
/// Returns the statuses the health watch saw, in order, and the exit code.
async fn drive_until_the_node_stops(node: Process) -> (Vec<ServingStatus>, Option<i32>) {
    let channel = crate::harness::channel_to(node.addr).await;
    let mut health = HealthClient::new(channel);
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(update)) = watch.message().await {
            seen.push(ServingStatus::try_from(update.status).unwrap());
        }
        seen
    });
    let alice = Client::connect(node.addr, "alice", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let sender = tokio::spawn(async move {
        for n in 0..10_000 {
            let sent = tokio::time::timeout(PATIENCE, alice.try_send(&conversation, &format!("m{n}"), "hello")).await;
            if !matches!(sent, Ok(Ok(_))) {
                return;
            }
        }
    });
    let mut child = node.child;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the node kept running after its storage writer failed")
        .unwrap();
    sender.abort();
    let seen = tokio::time::timeout(PATIENCE, seen).await.expect("health watch never ended").unwrap();
    (seen, status.code())
}

#[tokio::test]
async fn a_panicking_writer_stops_the_node_with_not_serving_first() {
    let data = tempfile::tempdir().unwrap();
    let node = node_with_fault(data.path(), &["--inject-fault", "writer-panic:20"]).await;
    let (seen, code) = drive_until_the_node_stops(node).await;
    assert_eq!(code, Some(FAIL_STOP_EXIT), "exit status");
    assert_eq!(seen.first(), Some(&ServingStatus::Serving), "health before the fault: {seen:?}");
    assert_eq!(seen.last(), Some(&ServingStatus::NotServing), "health before the exit: {seen:?}");
}

#[tokio::test]
async fn a_stalled_writer_is_noticed_by_the_watchdog_and_stops_the_node() {
    let data = tempfile::tempdir().unwrap();
    let node =
        node_with_fault(data.path(), &["--inject-fault", "writer-stall:20", "--writer-stall-timeout-ms", "500"]).await;
    let (seen, code) = drive_until_the_node_stops(node).await;
    assert_eq!(code, Some(FAIL_STOP_EXIT), "exit status");
    assert_eq!(seen.last(), Some(&ServingStatus::NotServing), "health before the exit: {seen:?}");
}

/// After either failure the data is intact: a restart on the same
/// directory serves every message acknowledged before the fault.
#[tokio::test]
async fn a_node_restarted_after_a_writer_panic_has_every_acknowledged_message() {
    let data = tempfile::tempdir().unwrap();
    let node = node_with_fault(data.path(), &["--inject-fault", "writer-panic:30"]).await;
    let alice = Client::connect(node.addr, "alice", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let mut acked = Vec::new();
    for n in 0..10_000 {
        match tokio::time::timeout(PATIENCE, alice.try_send(&conversation, &format!("m{n}"), "hello")).await {
            Ok(Ok(ack)) => acked.push((format!("m{n}"), ack.seq)),
            _ => break,
        }
    }
    let mut child = node.child;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(FAIL_STOP_EXIT));
    assert!(!acked.is_empty(), "some sends were acknowledged before the fault");

    let node = node_with_fault(data.path(), &[]).await;
    let alice = Client::connect(node.addr, "alice", "phone").await;
    let history = alice.history(&conversation).await;
    for (id, seq) in &acked {
        let stored = history.iter().find(|m| m.seq == *seq).unwrap_or_else(|| panic!("acked seq {seq} lost"));
        assert_eq!(&stored.client_message_id, id);
    }
    node.sigkill().await;
}

/// A node that cannot open its data stops at once with an error naming the
/// file and the cause (here a WAL segment damaged before its end, which no
/// crash can produce), instead of serving or spinning.
#[tokio::test]
async fn a_node_whose_log_is_damaged_exits_with_an_error_naming_the_file() {
    let data = tempfile::tempdir().unwrap();
    // Segments are closed only at checkpoints: none in this test.
    let node = node_with_fault(data.path(), &["--checkpoint-interval-ms", "600000"]).await;
    let alice = Client::connect(node.addr, "alice", "phone").await;
    let conversation = alice.direct_with("bob").await;
    for n in 0..20 {
        alice.try_send(&conversation, &format!("m{n}"), "hello").await.unwrap();
    }
    node.sigkill().await;
    let mut segments: Vec<_> = std::fs::read_dir(data.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("wal-"))
        .collect();
    segments.sort();
    let damaged = segments.last().unwrap().clone();
    let mut bytes = std::fs::read(&damaged).unwrap();
    assert!(bytes.len() > 64, "the log holds the sends");
    let middle = bytes.len() / 2;
    bytes[middle..middle + 16].fill(0xee);
    std::fs::write(&damaged, &bytes).unwrap();
    // A newer segment after it: the damage is not a torn tail.
    let name = damaged.file_name().unwrap().to_string_lossy().into_owned();
    let number: u64 = name.trim_start_matches("wal-").trim_end_matches(".log").parse().unwrap();
    std::fs::write(data.path().join(format!("wal-{:012}.log", number + 1)), b"").unwrap();

    let output = tokio::time::timeout(
        Duration::from_secs(30),
        server_command(&binary("imsg-gateway"), &node_args(data.path(), &[])).stderr(Stdio::piped()).output(),
    )
    .await
    .expect("the node neither started nor exited: it spins")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a damaged log must not open");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"), "it must not serve");
    assert!(stderr.contains(&name) && stderr.contains("damaged"), "the error names the file and cause: {stderr}");
}
