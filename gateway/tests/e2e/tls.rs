//! TLS on the public port (a private CA, a certificate rotated under a
//! running gateway) and mutual TLS on the internal API: nothing without a
//! certificate from the internal CA can call a broker, while gateways and
//! brokers that have one work end to end.

use std::time::{Duration, Instant};

use imsg_proto::internal::v1::{GetClusterStateRequest, broker_service_client::BrokerServiceClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use imsg_common::test_pki::{Issued, Pki};

use crate::{
    harness::{PATIENCE, Process, binary, tokens},
    nodes::{TwoNodes, strings, user_on},
};

/// A gateway with an embedded broker, serving TLS from `served`.
async fn tls_gateway(data: &tempfile::TempDir, served: &Issued) -> Process {
    let mut args = strings(&["--embedded-broker", "--listen", "127.0.0.1:0", "--partitions", "8"]);
    args.extend(strings(&["--data-dir", &data.path().display().to_string()]));
    args.extend(strings(&[
        "--tls-cert",
        &served.cert.display().to_string(),
        "--tls-key",
        &served.key.display().to_string(),
    ]));
    Process::spawn(&binary("imsg-gateway"), &args).await
}

/// A TLS channel to `addr` trusting `ca`, presenting `identity` if any.
async fn tls_channel(addr: std::net::SocketAddr, ca: &Pki, identity: Option<&Issued>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.ca_pem()));
    if let Some(issued) = identity {
        tls = tls.identity(Identity::from_pem(issued.cert_pem(), issued.key_pem()));
    }
    let endpoint = Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap();
    endpoint.connect_timeout(Duration::from_secs(5)).connect().await.map_err(|e| format!("{e:?}"))
}

/// Whether a health check over TLS trusting `ca` succeeds.
async fn health_over_tls(addr: std::net::SocketAddr, ca: &Pki) -> Result<(), String> {
    let channel = tls_channel(addr, ca, None).await?;
    HealthClient::new(channel).check(HealthCheckRequest::default()).await.map(|_| ()).map_err(|s| format!("{s:?}"))
}

#[tokio::test]
async fn the_public_api_serves_tls_that_sdk_clients_trust_through_a_private_ca() {
    let data = tempfile::tempdir().unwrap();
    let public = Pki::new("public");
    let gateway = tls_gateway(&data, &public.issue("gateway")).await;
    let mut config = imsg_client::ClientConfig::new(
        format!("https://{}", gateway.addr),
        tokens().issue("alice", "phone", 3600).unwrap(),
    );
    config.ca_pem = Some(public.ca_pem());
    let alice = imsg_client::Client::connect(config).await.unwrap();
    let conversation = alice.direct_with("bob").await.unwrap();
    assert_eq!(alice.send_text(&conversation, "over TLS").await.unwrap().seq, 1);
    let history = alice.history(&conversation, 10, "").await.unwrap();
    assert_eq!(history.messages.len(), 1);

    // A client that does not trust the private CA, and one that does not
    // speak TLS, get nothing.
    let stranger = Pki::new("stranger");
    let untrusted = health_over_tls(gateway.addr, &stranger).await.unwrap_err();
    assert!(untrusted.contains("Certificate") || untrusted.contains("certificate"), "{untrusted}");
    let plaintext = crate::harness::channel_to(gateway.addr).await;
    let refused = HealthClient::new(plaintext).check(HealthCheckRequest::default()).await.unwrap_err();
    assert_ne!(refused.code(), tonic::Code::Ok);
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let (before, after) = (Pki::new("before"), Pki::new("after"));
    let served = before.issue("gateway");
    let gateway = tls_gateway(&data, &served).await;
    let pid = gateway.pid();
    health_over_tls(gateway.addr, &before).await.unwrap();
    assert!(health_over_tls(gateway.addr, &after).await.is_err(), "trusted a CA that issued nothing yet");
    // A connection made before the rotation keeps working after it.
    let early = HealthClient::new(tls_channel(gateway.addr, &before, None).await.unwrap());

    served.replace_with(&after.issue("gateway-next"));
    let deadline = Instant::now() + PATIENCE;
    while health_over_tls(gateway.addr, &after).await.is_err() {
        assert!(Instant::now() < deadline, "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(health_over_tls(gateway.addr, &before).await.is_err(), "new handshakes still get the old certificate");
    early.clone().check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(gateway.pid(), pid);
    assert!(gateway.child.id().is_some(), "the gateway restarted or exited");
}

/// Flags that give a process its internal certificate.
fn internal_tls_args(internal: &Pki, issued: &Issued) -> Vec<String> {
    strings(&[
        "--internal-tls-cert",
        &issued.cert.display().to_string(),
        "--internal-tls-key",
        &issued.key.display().to_string(),
        "--internal-tls-ca",
        &internal.ca().display().to_string(),
    ])
}

#[tokio::test]
async fn the_internal_api_takes_only_callers_with_a_certificate_from_the_internal_ca() {
    let internal = Pki::new("internal");
    let cluster = TwoNodes::start(
        "https",
        |index| internal_tls_args(&internal, &internal.issue(&format!("broker-{index}"))),
        internal_tls_args(&internal, &internal.issue("gateway")),
    )
    .await;

    // End to end: a group spanning both nodes, through mutual TLS on every
    // hop (gateway to owner, owner to the members' partitions).
    let alice = cluster.client(&user_on(0, "alice"), "phone").await;
    let bob = cluster.client(&user_on(1, "bob"), "phone").await;
    let group = cluster.group(&alice, "tls", &[&bob.user]).await;
    let seq = alice.send(&group, "hello over mTLS").await;
    let mut phone = bob.open(0).await;
    phone.ready().await;
    assert!(bob.history(&group).await.iter().any(|m| m.seq == seq));

    let node = cluster.nodes[0].addr;
    let call = |channel: Channel| async move {
        BrokerServiceClient::new(channel).get_cluster_state(GetClusterStateRequest {}).await.map(|_| ())
    };
    // The positive control: a certificate from the internal CA is served.
    call(tls_channel(node, &internal, Some(&internal.issue("operator"))).await.unwrap()).await.unwrap();
    // No certificate, one from another CA, no TLS at all: refused.
    for identity in [None, Some(Pki::new("stranger").issue("impostor"))] {
        let refused = match tls_channel(node, &internal, identity.as_ref()).await {
            Ok(channel) => call(channel).await.map_err(|status| format!("{status:?}")),
            Err(error) => Err(error),
        };
        assert!(refused.is_err(), "an internal call with {identity:?} was served");
    }
    let plaintext = crate::harness::channel_to(node).await;
    assert!(call(plaintext).await.is_err(), "a plaintext internal call was served");
}
