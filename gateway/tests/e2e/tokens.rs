//! Tokens: the host application's published keys (JWKS) rotated by `kid`
//! without a restart, `aud`/`iss`/`nbf` checked, and a stream that ends
//! when its token does unless refreshed on it.

use std::time::Duration;

use imsg_common::token::{
    TokenRules,
    testing::{ed25519, key_set, sign},
};
use imsg_gateway::keys::KeySource;
use imsg_proto::v1::{RefreshToken, open_stream_request::Frame as Up, open_stream_response::Frame};
use tonic::Code;

use crate::harness::{Client, PATIENCE, TestServer, tokens};

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut claims = serde_json::json!({
        "sub": "alice", "device": "phone", "iat": now(), "exp": now() + 600,
        "iss": "https://app.example", "aud": "imsg",
    });
    claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    claims
}

/// Whether a call with `token` gets in; the refusal's message if not.
async fn answer(server: &TestServer, token: &str) -> Result<(), String> {
    let client = Client::with_token(server.addr, "alice", "phone", token).await;
    let request = imsg_proto::v1::GetSettingsRequest {};
    match client.api.clone().get_settings(request).await {
        Ok(_) => Ok(()),
        Err(status) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            Err(status.message().to_owned())
        }
    }
}

#[tokio::test]
async fn published_keys_rotate_by_kid_without_a_restart_and_claims_are_checked() {
    let keys = tempfile::tempdir().unwrap();
    let jwks = keys.path().join("jwks.json");
    let (old, old_jwk) = ed25519(11, "2026-11");
    let (new, new_jwk) = ed25519(12, "2026-12");
    std::fs::write(&jwks, key_set(&[&old_jwk])).unwrap();
    let source = jwks.clone();
    let server = TestServer::start_gateway(tempfile::tempdir().unwrap(), move |config| {
        config.jwt_secret = None;
        config.token_keys = Some(KeySource::File(source));
        config.token_keys_refresh = Duration::from_millis(100);
        config.token_rules =
            TokenRules { issuer: Some("https://app.example".into()), audience: Some("imsg".into()), leeway_secs: 0 };
    })
    .await;
    let by_old = sign(&old, "2026-11", &claims(serde_json::json!({})));
    let by_new = sign(&new, "2026-12", &claims(serde_json::json!({})));
    answer(&server, &by_old).await.unwrap();
    assert_eq!(answer(&server, &by_new).await.unwrap_err(), "token signed by an unknown key");

    // The host adds the new key, then retires the old one: no restart.
    std::fs::write(&jwks, key_set(&[&old_jwk, &new_jwk])).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while answer(&server, &by_new).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the new key was never picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    answer(&server, &by_old).await.unwrap();
    std::fs::write(&jwks, key_set(&[&new_jwk])).unwrap();
    while answer(&server, &by_old).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the old key was never retired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    answer(&server, &by_new).await.unwrap();

    // Claims: audience, issuer, not-before; HS256 is not accepted here.
    let cases = [
        (serde_json::json!({ "aud": "another-service" }), "token audience not accepted"),
        (serde_json::json!({ "iss": "https://evil.example" }), "token issuer not accepted"),
        (serde_json::json!({ "nbf": now() + 3600 }), "token not yet valid"),
        (serde_json::json!({ "exp": now() - 60 }), "token expired"),
    ];
    for (extra, said) in cases {
        assert_eq!(answer(&server, &sign(&new, "2026-12", &claims(extra))).await.unwrap_err(), said);
    }
    let hs256 = tokens().issue("alice", "phone", 60).unwrap();
    assert_eq!(answer(&server, &hs256).await.unwrap_err(), "token algorithm not accepted");
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires_unless_refreshed_on_it() {
    let server = TestServer::start().await;
    // A token good for two more seconds: the stream says goodbye then.
    let short = tokens().issue("alice", "phone", 2).unwrap();
    let alice = Client::with_token(server.addr, "alice", "phone", &short).await;
    let mut stream = alice.open(0).await;
    stream.ready().await;
    let goodbye = loop {
        match stream.frame().await {
            Some(Frame::Goodbye(goodbye)) => break goodbye,
            Some(_) => continue,
            None => panic!("the stream ended without a goodbye"),
        }
    };
    assert_eq!(goodbye.reason, "token expired; reconnect with a fresh token");

    // Refreshed on the stream: it goes on past the first token's expiry.
    let short = tokens().issue("alice", "phone", 2).unwrap();
    let alice = Client::with_token(server.addr, "alice", "phone", &short).await;
    let mut stream = alice.open(0).await;
    stream.ready().await;
    let fresh = tokens().issue("alice", "phone", 600).unwrap();
    stream.send_frame(Up::RefreshToken(RefreshToken { token: fresh })).await;
    let ended = |frame: &Frame| matches!(frame, Frame::Goodbye(_));
    assert!(stream.quiet_for(Duration::from_secs(4), ended).await, "a refreshed stream ended at the old expiry");
    // A token for someone else does not refresh this stream.
    let bob = tokens().issue("bob", "phone", 600).unwrap();
    stream.send_frame(Up::RefreshToken(RefreshToken { token: bob })).await;
    match stream.frame().await {
        Some(Frame::Error(error)) => assert_eq!(error.code, Code::PermissionDenied as i32, "{error:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
