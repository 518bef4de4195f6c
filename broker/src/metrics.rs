//! Metrics (Prometheus text format, `prometheus-client`): one process-wide
//! set, so a gateway with an embedded broker exposes both on one admin
//! port (`--metrics-listen`, `GET /metrics`). Names are `imsg_*`; counters
//! end in `_total`, durations are seconds. No label carries a user or a
//! conversation id (cardinality, and privacy): only methods, codes and
//! partitions.
//!
//! What is measured, and where: messages sent (partition send), events
//! delivered to live sessions and slow consumers dropped (user partition),
//! fan-out lag (outbox batch numbered until every target has it durably),
//! partition queue depth, live sessions, ownership epoch (partition tick),
//! WAL fdatasync latency and group-commit round size (writer), checkpoint
//! duration (checkpointer); the gateway adds RPCs by method and code with
//! latency, open streams and rate-limit refusals (`imsg_gateway`).

use std::sync::{LazyLock, Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Labels of per-partition series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: u32,
}

/// Labels of an RPC's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub code: String,
}

/// Labels of an RPC's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

/// Labels of a refusal by a rate limit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: String,
}

fn seconds() -> Histogram {
    // 50 µs to ~3.3 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

fn sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

/// Every metric of the process.
pub struct Metrics {
    pub messages_sent: Counter,
    pub deliveries: Counter,
    pub slow_consumer_drops: Counter,
    pub fanout_lag_seconds: Histogram,
    pub wal_fsync_seconds: Histogram,
    pub group_commit_batches: Histogram,
    pub checkpoint_seconds: Histogram,
    pub partition_queue_depth: Family<PartitionLabel, Gauge>,
    pub live_sessions: Family<PartitionLabel, Gauge>,
    pub partition_epoch: Family<PartitionLabel, Gauge>,
    pub rpcs: Family<RpcLabels, Counter>,
    pub rpc_seconds: Family<MethodLabel, Histogram, fn() -> Histogram>,
    pub open_streams: Gauge,
    pub rate_limited: Family<LimitLabel, Counter>,
    registry: Mutex<Registry>,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let metrics = Self {
            messages_sent: Counter::default(),
            deliveries: Counter::default(),
            slow_consumer_drops: Counter::default(),
            fanout_lag_seconds: seconds(),
            wal_fsync_seconds: seconds(),
            group_commit_batches: sizes(),
            checkpoint_seconds: seconds(),
            partition_queue_depth: Family::default(),
            live_sessions: Family::default(),
            partition_epoch: Family::default(),
            rpcs: Family::default(),
            rpc_seconds: Family::new_with_constructor(seconds),
            open_streams: Gauge::default(),
            rate_limited: Family::default(),
            registry: Mutex::new(Registry::default()),
        };
        let mut registry = Registry::with_prefix("imsg");
        registry.register("messages_sent", "Messages appended to conversations", metrics.messages_sent.clone());
        registry.register("deliveries", "Events pushed to live device sessions", metrics.deliveries.clone());
        registry.register(
            "slow_consumer_drops",
            "Sessions dropped because the device did not keep up",
            metrics.slow_consumer_drops.clone(),
        );
        registry.register(
            "fanout_lag_seconds",
            "From an outbox batch being numbered until every member partition has it durably",
            metrics.fanout_lag_seconds.clone(),
        );
        registry.register("wal_fsync_seconds", "fdatasync of the write-ahead log", metrics.wal_fsync_seconds.clone());
        registry.register(
            "group_commit_batches",
            "Partition batches made durable by one WAL sync",
            metrics.group_commit_batches.clone(),
        );
        registry.register("checkpoint_seconds", "One checkpoint of sled", metrics.checkpoint_seconds.clone());
        registry.register(
            "partition_queue_depth",
            "Client commands waiting in a partition's queue",
            metrics.partition_queue_depth.clone(),
        );
        registry.register("live_sessions", "Device sessions live on a partition", metrics.live_sessions.clone());
        registry.register(
            "partition_epoch",
            "Ownership epoch of each partition this node serves",
            metrics.partition_epoch.clone(),
        );
        registry.register("rpcs", "Client RPCs by method and status code", metrics.rpcs.clone());
        registry.register("rpc_seconds", "Client RPC latency by method", metrics.rpc_seconds.clone());
        registry.register("open_streams", "Device streams open on this gateway", metrics.open_streams.clone());
        registry.register("rate_limited", "Requests and frames refused by a rate limit", metrics.rate_limited.clone());
        *metrics.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        metrics
    }

    /// The OpenMetrics exposition of everything.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String");
        text
    }

    /// The classic Prometheus text format (0.0.4), which every scraper and
    /// `promtool check metrics` read: OpenMetrics names a counter family
    /// without its `_total` suffix and ends with `# EOF`.
    pub fn encode_prometheus_text(&self) -> String {
        to_prometheus_text(&self.encode())
    }
}

fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        open_metrics.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut text = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

/// Serves `GET /metrics` on `addr` until `stop`; returns the bound address.
pub async fn serve(
    addr: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                METRICS.encode_prometheus_text(),
            )
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family_with_the_prefix() {
        METRICS.messages_sent.inc();
        METRICS.partition_epoch.get_or_create(&PartitionLabel { partition: 3 }).set(2);
        let text = METRICS.encode();
        assert!(text.contains("imsg_messages_sent_total"), "{text}");
        assert!(text.contains("imsg_partition_epoch{partition=\"3\"} 2"), "{text}");
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with EOF");
        let classic = METRICS.encode_prometheus_text();
        assert!(classic.contains("# TYPE imsg_messages_sent_total counter"), "{classic}");
        assert!(classic.contains("# HELP imsg_messages_sent_total "), "{classic}");
        assert!(!classic.contains("# EOF"));
    }
}
