//! Operations: health and reflection (of the public API only) on the client
//! port, graceful SIGTERM.

use imsg_proto::v1::open_stream_response::Frame as Down;
use tokio_stream::StreamExt;

use crate::harness::{Client, Process, binary};

#[tokio::test]
async fn health_and_reflection_are_served_on_the_client_port() {
    let server = crate::harness::TestServer::start().await;
    let channel = crate::harness::channel_to(server.addr).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "imsg.v1.MessagingService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("no service list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"imsg.v1.MessagingService"), "{names:?}");
    assert!(!names.iter().any(|name| name.contains("BrokerService")), "the internal API is not listed: {names:?}");
}

#[tokio::test]
async fn sigterm_says_goodbye_to_streams_syncs_storage_and_exits_zero() {
    let data = tempfile::tempdir().unwrap();
    let args = |listen: &str| -> Vec<String> {
        ["--embedded-broker", "--data-dir", &data.path().display().to_string(), "--listen", listen, "--partitions", "8"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let mut server = Process::spawn(&binary("imsg-gateway"), &args("127.0.0.1:0")).await;
    let alice = Client::connect(server.addr, "alice", "phone").await;
    let conversation = alice.direct_with("bob").await;
    for n in 0..20 {
        alice.send(&conversation, &format!("m{n}")).await;
    }
    let mut phone = alice.open(0).await;
    phone.ready().await;
    server.signal(libc::SIGTERM);
    loop {
        match phone.frame().await {
            Some(Down::Goodbye(goodbye)) => {
                assert!(goodbye.reason.contains("shutting down"), "{}", goodbye.reason);
                break;
            }
            Some(_) => continue,
            None => panic!("stream ended without a goodbye"),
        }
    }
    let status = tokio::time::timeout(crate::harness::PATIENCE, server.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status:?}");
    let restarted = Process::spawn(&binary("imsg-gateway"), &args("127.0.0.1:0")).await;
    let alice = Client::connect(restarted.addr, "alice", "phone").await;
    assert_eq!(alice.history(&conversation).await.len(), 20);
}
