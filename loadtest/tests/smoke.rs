//! A short run of the real tool against a deployment it spawns itself: the
//! tool works end to end and the system passes its correctness checks.

use std::process::Command;

fn run(scenario: &str, extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let html = dir.path().join("out.html");
    let output = Command::new(env!("CARGO_BIN_EXE_imsg-loadtest"))
        .args(["--spawn", "--scenario", scenario, "--partitions", "8", "--users", "60", "--connections", "2"])
        .args(["--rate", "150", "--duration", "3s", "--drain", "10s", "--quiet"])
        .args(extra)
        .arg("--json")
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "imsg-loadtest failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("correctness  lost 0  duplicates 0  reordered 0"), "{stdout}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("Latency by percentile"));
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn assert_clean(report: &serde_json::Value) {
    for field in ["lost", "duplicates", "reordered", "send_errors"] {
        assert_eq!(report[field], 0, "{field} in {report}");
    }
    assert_eq!(report["sent"], report["acked"]);
    assert_eq!(report["delivered"], report["expected_deliveries"]);
    assert!(report["acked"].as_u64().unwrap() >= 400, "{report}");
    for field in
        ["offered_rate", "ingest_rate", "delivery_rate", "connections", "server_cpu_s_per_1k", "server_peak_rss_bytes"]
    {
        assert!(report[field].as_f64().is_some_and(|v| v > 0.0), "{field} in {report}");
    }
    assert!(report["server_cpu_us_per_message"].as_f64().is_some_and(|v| v > 0.0), "{report}");
    let generator = &report["generator"];
    for field in ["cpu_us_per_message", "cores_used", "schedule_lag_p99_ms"] {
        assert!(generator[field].as_f64().is_some_and(|v| v > 0.0), "generator.{field} in {report}");
    }
    for field in ["p50", "p90", "p99", "p999", "max"] {
        assert!(report["ack_ms"][field].as_f64().is_some_and(|v| v > 0.0), "ack_ms.{field}");
        assert!(report["deliver_ms"][field].as_f64().is_some_and(|v| v > 0.0), "deliver_ms.{field}");
    }
}

#[test]
fn dm_smoke_run_delivers_everything_exactly_once() {
    assert_clean(&run("dm", &[]));
}

#[test]
fn mixed_traffic_with_photos_replies_reactions_edits_and_unsends_delivers_every_change_once() {
    let report = run("mixed", &[]);
    assert_clean(&report);
    let changes = report["changes"].as_u64().unwrap();
    // 1 in 5 messages gets a reaction, 1 in 20 an edit, 1 in 50 an unsend;
    // 1 in 20 is a photo.
    let acked = report["acked"].as_u64().unwrap();
    assert!(changes * 100 >= acked * 25, "too few changes: {report}");
    assert!(report["photos"].as_u64().unwrap() * 25 >= acked, "too few photos: {report}");
}

#[test]
fn devices_that_drop_and_resume_during_traffic_miss_nothing() {
    let report = run("reconnect", &[]);
    assert_clean(&report);
    assert!(report["reconnects"].as_u64().unwrap() > 0, "no device reconnected: {report}");
}

#[test]
fn two_process_deployment_with_two_gateways_delivers_everything_exactly_once() {
    // Users spread over two gateways in front of one broker process.
    let report = run("dm", &["--brokers", "1", "--gateways", "2"]);
    assert_clean(&report);
}

#[test]
fn a_device_that_was_offline_replays_its_backlog_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let output = Command::new(env!("CARGO_BIN_EXE_imsg-loadtest"))
        .args(["--spawn", "--scenario", "resume", "--partitions", "8", "--resume-backlog", "500", "--quiet"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "imsg-loadtest failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["delivered"], 500, "{report}");
    for field in ["lost", "duplicates", "reordered"] {
        assert_eq!(report[field], 0, "{field} in {report}");
    }
    assert!(report["resume"]["replay_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{report}");
    assert!(stdout.contains("500 missed messages replayed to one device"), "{stdout}");
}
