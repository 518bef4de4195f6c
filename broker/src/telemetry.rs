//! Logs and traces. Logs go to stderr (`RUST_LOG`, `IMSG_LOG_FORMAT=json`);
//! with `--otlp-endpoint`, spans also go to an OpenTelemetry collector over
//! OTLP/gRPC.
//!
//! One trace follows a message through the system: every RPC of the
//! gateway and of the broker is a span ([`rpc_span`]), continuing the W3C
//! trace context (`traceparent`) that the caller sent; every internal call
//! carries the context of the span it is made in ([`Propagate`]). Inside a
//! broker the span travels with the work: a command queued to a partition
//! carries its caller's span ([`crate::mailbox::Traced`]), a fan-out batch
//! the span of the command that produced it, a push notification the span
//! of the update that caused it. So a group message shows as gateway →
//! owning node → the members' partitions on other nodes → the pushes.
//!
//! Spans name methods, partitions and counts, never content or user ids.
//! A partition applies commands in batches, and its outbox batches and
//! the fan-out lanes' batches may mix several commands: such a batch
//! belongs to the trace of its first command, and links to the others'
//! spans ([`link`], [`outbox_span`]),
//! so a command whose updates rode in another's batch still leads to the
//! members' nodes and the pushes.
//!
//! Without span export, work handed to another task carries no span
//! ([`carried`]) and fan-out batches get none: on a node's hot path those
//! spans cost about 5% of its CPU (made, cloned, entered and their fields
//! formatted once per command and batch), for log lines that name their
//! partition themselves. The RPC spans stay.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry::{
    KeyValue,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// How long spans wait before they are sent: short, so a trace is
/// complete at the collector soon after the request.
const EXPORT_DELAY: Duration = Duration::from_millis(500);

/// Whether spans are exported ([`init`] with an endpoint).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Who this process is in traces.
#[derive(Debug, Clone)]
pub struct ServiceIdentity {
    /// `service.name`: `imsg-gateway` or `imsg-broker`.
    pub name: &'static str,
    /// `service.instance.id`: which gateway or node.
    pub instance: String,
}

/// Keeps the span exporter running; dropping it sends what is queued.
#[must_use = "spans are only exported while this lives"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("exporting the last spans failed: {error}");
        }
    }
}

/// Installs logging, and span export to `otlp_endpoint` if given. Must run
/// inside the Tokio runtime (the exporter's gRPC client lives there).
pub fn init(service: ServiceIdentity, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("IMSG_LOG_FORMAT").is_ok_and(|f| f == "json");
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json { logs.json().boxed() } else { logs.boxed() }.with_filter(filter);
    let Some(endpoint) = otlp_endpoint else {
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry { provider: None });
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?;
    let batches = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            opentelemetry_sdk::trace::BatchConfigBuilder::default().with_scheduled_delay(EXPORT_DELAY).build(),
        )
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.name)
        .with_attribute(KeyValue::new("service.instance.id", service.instance))
        .build();
    let provider = SdkTracerProvider::builder().with_span_processor(batches).with_resource(resource).build();
    // Only this project's spans, whatever RUST_LOG says about logs.
    let ours = tracing_subscriber::filter::Targets::new()
        .with_target("imsg_broker", tracing::Level::INFO)
        .with_target("imsg_gateway", tracing::Level::INFO);
    let traces = tracing_opentelemetry::layer().with_tracer(provider.tracer(service.name)).with_filter(ours);
    tracing_subscriber::registry().with(logs).with(traces).init();
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Telemetry { provider: Some(provider) })
}

/// The span of one RPC, for tonic's `Server::trace_fn`: named after the
/// method, a child of the caller's span when the request carries one.
pub fn rpc_span<B>(request: &http::Request<B>) -> Span {
    let method = request.uri().path();
    let span = tracing::info_span!("rpc", otel.name = %method.trim_start_matches('/'), otel.kind = "server");
    if !span.is_disabled() {
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(request.headers())));
        let _ = span.set_parent(parent);
    }
    span
}

/// Whether spans are exported: the hot path makes its per-command and
/// per-batch spans only then.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The span to carry with work handed to another task (a command queued
/// to a partition, a fan-out batch, a push): the current one when spans
/// are exported, none otherwise.
pub fn carried() -> Span {
    if exporting() { Span::current() } else { Span::none() }
}

/// Links `span` to `other` when `other` belongs to another trace: `span`
/// does work of `other`'s too (a fan-out batch carrying updates of several
/// commands). Nothing without span export.
pub fn link(span: &Span, other: &Span) {
    if !exporting() || span.is_disabled() || other.is_disabled() {
        return;
    }
    let linked = other.context().span().span_context().clone();
    if linked.is_valid() && linked.trace_id() != span.context().span().span_context().trace_id() {
        span.add_link(linked);
    }
}

/// The span a partition's outbox batch fans out in: the span of the first
/// command that published into it or, when other commands did too, an
/// `outbox` span under it linking to theirs, so each of them leads to its
/// members' partitions.
pub fn outbox_span(partition: u32, first: Option<Span>, others: Vec<Span>) -> Span {
    let first = first.unwrap_or_else(Span::none);
    if others.is_empty() || !exporting() {
        return first;
    }
    let span = tracing::info_span!(parent: &first, "outbox", partition, commands = others.len() + 1);
    for other in &others {
        link(&span, other);
    }
    span
}

/// Adds the current span's trace context to an outgoing HTTP request's
/// headers (push webhooks).
pub fn inject(headers: &mut http::HeaderMap) {
    let context = Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeadersMut(headers)));
}

/// A tonic interceptor that sends the current span's trace context with
/// every internal call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Propagate;

impl tonic::service::Interceptor for Propagate {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let span = Span::current();
        if !span.is_disabled() {
            let context = span.context();
            opentelemetry::global::get_text_map_propagator(|p| {
                p.inject_context(&context, &mut Metadata(request.metadata_mut()))
            });
        }
        Ok(request)
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(key.as_bytes()), value.parse()) {
            self.0.insert(name, value);
        }
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), value.parse()) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceId;
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    use super::*;

    fn trace_of(span: &Span) -> TraceId {
        span.context().span().span_context().trace_id()
    }

    #[test]
    fn an_outbox_batch_of_several_commands_is_in_the_first_ones_trace_and_links_to_the_others() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        // Process-wide; no other test of this binary installs a subscriber
        // that exports, so for them it only means spans are carried.
        EXPORTING.store(true, Ordering::Relaxed);
        let (traces, alone_is_itself) = tracing::subscriber::with_default(subscriber, || {
            let commands: Vec<Span> = (0..3).map(|command| tracing::info_span!("rpc", command)).collect();
            let traces: Vec<TraceId> = commands.iter().map(trace_of).collect();
            drop(outbox_span(7, Some(commands[0].clone()), commands[1..].to_vec()));
            let alone = outbox_span(7, Some(commands[2].clone()), Vec::new());
            (traces, alone == commands[2])
        });
        assert!(alone_is_itself, "a batch of one command fans out in that command's span");
        let spans = exporter.get_finished_spans().unwrap();
        let outbox: Vec<_> = spans.iter().filter(|span| span.name == "outbox").collect();
        assert_eq!(outbox.len(), 1, "one outbox span, for the batch of three commands");
        assert_eq!(outbox[0].span_context.trace_id(), traces[0]);
        let linked: Vec<TraceId> = outbox[0].links.iter().map(|link| link.span_context.trace_id()).collect();
        assert_eq!(linked, traces[1..], "links to the other two commands' traces");
    }
}
