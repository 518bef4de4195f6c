//! Traces: one group message is one trace, from the gateway's RPC through
//! the owning node and the fan-out to a member's partition on the other
//! node, to the push notification, exported over OTLP to a collector in
//! this process. No message content reaches a span.
//!
//! A fan-out lane sends the updates queued together as one batch, in the
//! trace of the first command, linked to the others (`router::run_lane`).
//! On a busy machine the group's acceptance was still queued when the
//! send's updates came, and they reached the other node in the acceptance's
//! trace: the send's trace then goes on through that link.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value},
};
use prost::Message as _;

use crate::{
    harness::PATIENCE,
    nodes::{TwoNodes, strings, user_on},
    push::{Mode, Webhook, register},
};

/// An OTLP/gRPC trace receiver on a loopback port.
#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.received.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// One received span with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    instance: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    /// The traces of the spans this one links to.
    linked_traces: Vec<Vec<u8>>,
}

impl Collector {
    /// Serves on a loopback port; the endpoint to export to.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        endpoint
    }

    fn spans(&self) -> Vec<Received> {
        let attribute = |attributes: &[KeyValue], key: &str| {
            attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|value| match value {
                    any_value::Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default()
        };
        let mut spans = Vec::new();
        for request in self.received.lock().unwrap().iter() {
            for resource_spans in &request.resource_spans {
                let resource = resource_spans.resource.clone().unwrap_or_default();
                let (service, instance) = (
                    attribute(&resource.attributes, "service.name"),
                    attribute(&resource.attributes, "service.instance.id"),
                );
                for span in resource_spans.scope_spans.iter().flat_map(|scope| &scope.spans) {
                    spans.push(Received {
                        service: service.clone(),
                        instance: instance.clone(),
                        name: span.name.clone(),
                        trace_id: span.trace_id.clone(),
                        span_id: span.span_id.clone(),
                        parent_span_id: span.parent_span_id.clone(),
                        linked_traces: span.links.iter().map(|link| link.trace_id.clone()).collect(),
                    });
                }
            }
        }
        spans
    }

    /// Every export as bytes, to search for what must not be there.
    fn exported_bytes(&self) -> Vec<u8> {
        self.received.lock().unwrap().iter().flat_map(|request| request.encode_to_vec()).collect()
    }
}

/// The spans of `trace`, and every span under an `outbox` or `fanout` span
/// of another trace that links to it (a batch that carried its updates).
fn reached_from(spans: &[Received], trace: &[u8]) -> Vec<Received> {
    let mut reached: Vec<Received> = spans.iter().filter(|s| s.trace_id == trace).cloned().collect();
    let mut below: Vec<&Received> = spans
        .iter()
        .filter(|s| {
            s.trace_id != trace
                && ["outbox", "fanout"].contains(&s.name.as_str())
                && s.linked_traces.iter().any(|t| t == trace)
        })
        .collect();
    while let Some(parent) = below.pop() {
        reached.push(parent.clone());
        below.extend(spans.iter().filter(|s| s.trace_id == parent.trace_id && s.parent_span_id == parent.span_id));
    }
    reached
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn one_group_message_is_one_trace_across_the_gateway_both_nodes_and_the_push() {
    let collector = Collector::default();
    let otlp = strings(&["--otlp-endpoint", &collector.start().await]);
    let webhook = Webhook::start(Mode::Accept).await;
    let cluster =
        TwoNodes::start("http", |_| otlp.iter().cloned().chain(webhook.broker_flags()).collect(), otlp.clone()).await;
    // alice's and bob's partitions are on different nodes, so the fan-out
    // crosses between them; bob's device is offline, so it is pushed to.
    let alice = cluster.client(&user_on(0, "alice"), "phone").await;
    let bob = cluster.client(&user_on(1, "bob"), "phone").await;
    register(&bob).await;
    let group = cluster.group(&alice, "traced", &[&bob.user]).await;
    let content = "words-that-never-reach-a-span";
    alice.send(&group, content).await;
    webhook.wait_for("the push", |r| r.iter().any(|r| r.body["conversation_id"] == group.as_str())).await;

    let deadline = tokio::time::Instant::now() + PATIENCE;
    let spans = loop {
        let spans = collector.spans();
        let send =
            spans.iter().find(|s| s.service == "imsg-gateway" && s.name.ends_with("MessagingService/SendMessage"));
        if let Some(send) = send {
            let trace = reached_from(&spans, &send.trace_id);
            let names: BTreeSet<_> = trace.iter().map(|s| s.name.as_str()).collect();
            let instances: BTreeSet<_> = trace.iter().map(|s| s.instance.as_str()).collect();
            // The owner of the group runs the send and fans out; the
            // other node takes its member's updates; bob's node pushes.
            let complete =
                ["imsg.internal.v1.BrokerService/Execute", "fanout", "push"].iter().all(|name| names.contains(name))
                    && names.contains("imsg.internal.v1.BrokerService/CallPartition")
                    && instances.contains("node-0")
                    && instances.contains("node-1");
            if complete {
                break trace;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no complete trace of the send: {:#?}", collector.spans());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let services: BTreeSet<_> = spans.iter().map(|s| (s.service.as_str(), s.instance.as_str())).collect();
    assert!(
        services.contains(&("imsg-broker", "node-0")) && services.contains(&("imsg-broker", "node-1")),
        "{services:?}"
    );
    // The webhook request carried the push's trace.
    let pushed = webhook.received();
    let push = pushed.iter().find(|r| r.body["conversation_id"] == group.as_str()).unwrap();
    let push_trace = &spans.iter().find(|s| s.name == "push").unwrap().trace_id;
    assert!(push.traceparent.contains(&hex(push_trace)), "{push:?}");
    // Nothing exported holds the message's words.
    let exported = collector.exported_bytes();
    assert!(!exported.windows(content.len()).any(|w| w == content.as_bytes()), "message content in a span");
}
