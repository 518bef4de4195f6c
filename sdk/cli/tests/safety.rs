//! The safety and privacy subcommands of `imsg`, run as a person would
//! against a real server: requests, blocking, mutes, reports, export.

use std::{net::SocketAddr, process::Command};

mod common;

use common::SECRET;

/// `imsg --user <user> <args...>`: its output, or its error.
fn imsg(server: SocketAddr, user: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_imsg"))
        .args(["--server", &format!("http://{server}"), "--user", user])
        .args(args)
        .env("IMSG_JWT_SECRET", SECRET)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    if output.status.success() { Ok(text(&output.stdout)) } else { Err(text(&output.stderr)) }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_blocks_mutes_reports_and_an_export_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let server = common::server(data.path()).await;
    let addr = server.addr;
    let run = move |user: &'static str, args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            imsg(addr, user, &args)
        })
    };
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    run("carol", args(&["send", "@alice", "hi alice, it's carol"])).await.unwrap().unwrap();
    let requests = run("alice", args(&["requests"])).await.unwrap().unwrap();
    assert!(requests.contains("from carol"), "{requests}");
    let conversation = requests.split_whitespace().next().unwrap().to_owned();
    run("alice", args(&["accept", &conversation])).await.unwrap().unwrap();
    assert!(run("alice", args(&["requests"])).await.unwrap().unwrap().trim().is_empty());
    run("alice", args(&["mute", &conversation, "--hours", "8"])).await.unwrap().unwrap();
    let report = run("alice", args(&["report", &conversation, "1", "spam", "--block"])).await.unwrap().unwrap();
    assert!(report.contains("reported as rep_"), "{report}");
    assert_eq!(run("alice", args(&["blocked"])).await.unwrap().unwrap().trim(), "carol");
    let refused = run("carol", args(&["send", &conversation, "hello?"])).await.unwrap().unwrap_err();
    assert!(refused.contains("alice does not accept messages from you"), "{refused}");
    let bad = run("alice", args(&["report", &conversation, "1", "boredom"])).await.unwrap().unwrap_err();
    assert!(bad.contains("reason"), "{bad}");

    let file = data.path().join("export.json");
    run("alice", args(&["export", "-o", file.to_str().unwrap()])).await.unwrap().unwrap();
    let document: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(document["blocked_user_ids"], serde_json::json!(["carol"]));
    let careless = run("alice", args(&["delete-account"])).await.unwrap().unwrap_err();
    assert!(careless.contains("--yes"), "{careless}");
    server.shutdown().await.unwrap();
}

/// `imsg` over TLS: with `--ca-file` naming the server's private CA it
/// works; without, the certificate is refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_connects_over_tls_trusting_a_private_ca() {
    let data = tempfile::tempdir().unwrap();
    let ca = imsg_common::test_pki::Pki::new("cli");
    let served = ca.issue("gateway");
    let server = common::server_with(data.path(), |config| {
        config.tls = Some(imsg_common::tls::ServerTlsFiles {
            cert: served.cert.clone(),
            key: served.key.clone(),
            client_ca: None,
        })
    })
    .await;
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let ca_file = ca.ca().display().to_string();
    let run = |args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let output = Command::new(env!("CARGO_BIN_EXE_imsg"))
                .args(["--server", &url, "--user", "alice"])
                .args(&args)
                .env("IMSG_JWT_SECRET", SECRET)
                .output()
                .unwrap();
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            if output.status.success() { Ok(text(&output.stdout)) } else { Err(text(&output.stderr)) }
        })
    };
    let with_ca = |list: &[&str]| ["--ca-file", &ca_file].iter().chain(list).map(|s| s.to_string()).collect::<Vec<_>>();
    run(with_ca(&["send", "@bob", "over TLS"])).await.unwrap().unwrap();
    let refused = run(vec!["send".into(), "@bob".into(), "no CA".into()]).await.unwrap().unwrap_err();
    assert!(refused.to_lowercase().contains("certificate") || refused.contains("transport"), "{refused}");
}
