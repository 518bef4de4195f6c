//! Metrics: the admin port of a real server process, scraped after some
//! traffic and checked by Prometheus's own `promtool check metrics`.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::harness::{Client, Process, binary};

/// `promtool` (Debian's `prometheus` package, which `.ci/run` installs).
fn promtool() -> String {
    let path = std::env::var("IMSG_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let found = std::process::Command::new(&path).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "{path} is missing: install Debian's prometheus package (.ci/run does) or set IMSG_PROMTOOL");
    path
}

#[tokio::test]
async fn the_metrics_endpoint_counts_traffic_and_passes_promtool() {
    let promtool = promtool();
    let data = tempfile::tempdir().unwrap();
    let port = crate::harness::reserved_port();
    let metrics = format!("127.0.0.1:{port}");
    let args: Vec<String> = [
        "--embedded-broker",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--partitions",
        "8",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        &metrics,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let server = Process::spawn(&binary("imsg-gateway"), &args).await;
    let alice = Client::connect(server.addr, "alice", "phone").await;
    let bob = Client::connect(server.addr, "bob", "phone").await;
    let mut phone = bob.open(0).await;
    phone.ready().await;
    let conversation = alice.direct_with("bob").await;
    for n in 0..5 {
        alice.send(&conversation, &format!("hello {n}")).await;
    }
    for _ in 0..5 {
        phone.message().await;
    }
    let _ = alice.try_send("dm_00000000000000000000000000000000", "x", "nobody").await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await; // a checkpoint and a tick

    let text = reqwest::get(format!("http://{metrics}/metrics")).await.unwrap().text().await.unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    assert_eq!(value("imsg_messages_sent_total"), 5.0);
    assert!(value("imsg_deliveries_total") >= 5.0);
    assert_eq!(value("imsg_rpcs_total{method=\"SendMessage\",code=\"Ok\"}"), 5.0);
    assert_eq!(value("imsg_rpcs_total{method=\"SendMessage\",code=\"NotFound\"}"), 1.0);
    assert_eq!(value("imsg_open_streams"), 1.0);
    assert!(value("imsg_wal_fsync_seconds_count") >= 5.0);
    assert!(value("imsg_checkpoint_seconds_count") >= 1.0);
    assert!(text.contains("imsg_partition_epoch{partition=\"0\"} 1"), "{text}");
    assert!(!text.contains("alice") && !text.contains(&conversation), "no user or conversation in labels");

    let mut check = tokio::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(text.as_bytes()).await.unwrap();
    let output = check.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
