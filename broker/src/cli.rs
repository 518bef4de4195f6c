//! Command-line flags of a broker node, shared by `imsg-broker` and by
//! `imsg-gateway --embedded-broker`. Every flag can also be set through an
//! `IMSG_*` environment variable.

use std::{path::PathBuf, time::Duration};

use crate::config::{BrokerConfig, FsyncMode, Limits};

/// Storage, durability and limits of a broker node.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// Directory of the node's sled database (created if missing).
    #[arg(long, env = "IMSG_DATA_DIR", default_value = "./imsg-data")]
    pub data_dir: PathBuf,
    /// Partition count P; fixed when the data directory is created.
    #[arg(long, env = "IMSG_PARTITIONS", default_value_t = 64)]
    pub partitions: u32,
    /// `always`: acknowledge after the write-ahead log is fdatasync'ed (group
    /// commit). `interval:<ms>`: acknowledge once logged, sync every interval
    /// (a power loss may lose up to that much).
    #[arg(long, env = "IMSG_FSYNC", default_value = "always")]
    pub fsync: FsyncMode,
    /// sled page cache, in MiB.
    #[arg(long, env = "IMSG_CACHE_MB", default_value_t = 256)]
    pub cache_mb: u64,
    /// How often sled is checkpointed and the write-ahead log truncated, in ms.
    #[arg(long, env = "IMSG_CHECKPOINT_INTERVAL_MS", default_value_t = 1000)]
    pub checkpoint_interval_ms: u64,
    /// Longest a durability round waits for the update-log entries of a
    /// message already on their way to other partitions of this node, so
    /// the message and its fan-out share one round (one `fdatasync`), in µs.
    #[arg(long, env = "IMSG_FANOUT_LINGER_US", default_value_t = 300)]
    pub fanout_linger_us: u64,
    /// The shortest time between the starts of two durability rounds, in
    /// µs: writes arriving meanwhile share the next round (fewer syncs, up
    /// to this much more latency). 0: a round starts as soon as one is
    /// needed.
    #[arg(long, env = "IMSG_COMMIT_WINDOW_US", default_value_t = 0)]
    pub commit_window_us: u64,
    /// The node stops (exit status 70, health NOT_SERVING first) when
    /// writes wait this long without the storage writer making progress.
    #[arg(long, env = "IMSG_WRITER_STALL_TIMEOUT_MS", default_value_t = 30_000)]
    pub writer_stall_timeout_ms: u64,
    /// Fault injection for fail-stop tests (`writer-panic:<round>`,
    /// `writer-stall:<round>`). Never set it in production.
    #[arg(long, env = "IMSG_INJECT_FAULT", hide = true)]
    pub inject_fault: Option<crate::storage::failstop::InjectedFault>,
    /// Tokio worker threads; 0: one per core but one (left to the storage
    /// writer) in a process that runs a broker, one per core otherwise.
    #[arg(long, env = "IMSG_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
    /// Largest text message, in bytes.
    #[arg(long, env = "IMSG_MAX_TEXT_BYTES", default_value_t = 16 * 1024)]
    pub max_text_bytes: usize,
    /// Largest group, counting every member.
    #[arg(long, env = "IMSG_MAX_GROUP_MEMBERS", default_value_t = 250)]
    pub max_group_members: usize,
    /// Events buffered per device before it is dropped as a slow consumer.
    #[arg(long, env = "IMSG_SESSION_QUEUE", default_value_t = 1024)]
    pub session_queue: usize,
    /// Update-log entries retained per partition; older cursors must resync.
    #[arg(long, env = "IMSG_UPDATE_LOG_RETENTION", default_value_t = 250_000)]
    pub update_log_retention: usize,
    /// Live sessions one user may hold.
    #[arg(long, env = "IMSG_MAX_SESSIONS_PER_USER", default_value_t = 16)]
    pub max_sessions_per_user: usize,
    /// How long a typing signal lasts without renewal, in milliseconds.
    #[arg(long, env = "IMSG_TYPING_TTL_MS", default_value_t = 6000)]
    pub typing_ttl_ms: u64,
    /// How long a gateway's sessions survive without a lease renewal, in ms.
    #[arg(long, env = "IMSG_LEASE_TTL_MS", default_value_t = 10_000)]
    pub lease_ttl_ms: u64,
    /// How long after sending a sender may edit a message, in seconds.
    #[arg(long, env = "IMSG_EDIT_WINDOW_SECS", default_value_t = 15 * 60)]
    pub edit_window_secs: u64,
    /// Messages a sender may send to someone who has not accepted their
    /// message request yet.
    #[arg(long, env = "IMSG_MAX_REQUEST_MESSAGES", default_value_t = 3)]
    pub max_request_messages: u32,
    /// Requests per second per user, however many gateways their devices
    /// use (bursts of twice as many).
    #[arg(long, env = "IMSG_USER_RPS", default_value_t = 1000.0)]
    pub user_rps: f64,
    /// The secret conversation ids are derived with (at least 16 bytes), the
    /// same on every node of a cluster and never changed. Unset on a
    /// standalone node: created in the data directory on first start.
    #[arg(long, env = "IMSG_ID_SECRET", hide_env_values = true)]
    pub id_secret: Option<String>,
    /// A file holding the id secret (for Kubernetes secrets).
    #[arg(long, env = "IMSG_ID_SECRET_FILE", conflicts_with = "id_secret")]
    pub id_secret_file: Option<PathBuf>,
    /// Where push notifications are posted (the operator's push gateway in
    /// front of APNs/FCM). Unset: no push notifications.
    #[arg(long, env = "IMSG_PUSH_WEBHOOK_URL", requires = "push_webhook_secret")]
    pub push_webhook_url: Option<String>,
    /// The key each webhook request is signed with (HMAC-SHA256).
    #[arg(long, env = "IMSG_PUSH_WEBHOOK_SECRET", hide_env_values = true)]
    pub push_webhook_secret: Option<String>,
}

impl BrokerArgs {
    /// The runtime's worker threads (`--worker-threads`), for a process
    /// that runs a broker (`runs_broker`) or not.
    pub fn worker_threads(&self, runs_broker: bool) -> usize {
        match (self.worker_threads, runs_broker) {
            (0, true) => crate::runtime::workers_beside_storage(),
            (0, false) => crate::runtime::workers_per_core(),
            (workers, _) => workers,
        }
    }

    /// The validated configuration these flags describe.
    pub fn config(&self) -> Result<BrokerConfig, String> {
        let id_secret = match &self.id_secret_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("reading the id secret {}: {e}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => self.id_secret.clone(),
        };
        let config = BrokerConfig {
            data_dir: self.data_dir.clone(),
            partitions: self.partitions,
            fsync: self.fsync,
            cache_capacity_bytes: self.cache_mb * 1024 * 1024,
            checkpoint_interval: Duration::from_millis(self.checkpoint_interval_ms),
            fanout_linger: Duration::from_micros(self.fanout_linger_us),
            commit_window: Duration::from_micros(self.commit_window_us),
            writer_stall_timeout: Duration::from_millis(self.writer_stall_timeout_ms),
            inject_fault: self.inject_fault,
            limits: Limits {
                max_text_bytes: self.max_text_bytes,
                max_group_members: self.max_group_members,
                session_queue: self.session_queue,
                update_log_retention: self.update_log_retention,
                max_sessions_per_user: self.max_sessions_per_user,
                typing_ttl: Duration::from_millis(self.typing_ttl_ms),
                lease_ttl: Duration::from_millis(self.lease_ttl_ms),
                edit_window: Duration::from_secs(self.edit_window_secs),
                max_request_messages: self.max_request_messages,
                user_requests_per_second: self.user_rps,
                user_request_burst: (self.user_rps * 2.0).max(1.0) as u32,
                ..Limits::default()
            },
            cluster: crate::cluster::ClusterConfig::standalone(),
            id_secret,
            push: self.push_webhook_url.clone().map(|webhook_url| crate::config::PushConfig {
                webhook_url,
                webhook_secret: self.push_webhook_secret.clone().unwrap_or_default(),
            }),
        };
        config.validate()?;
        Ok(config)
    }
}

/// Where a broker node sits in a cluster. Without `--nodes` the node is
/// standalone and owns every partition.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// This node's index into `--nodes`, or `auto`: the ordinal at the end
    /// of the host name (`imsg-broker-2` is node 2, as in a StatefulSet).
    #[arg(long, env = "IMSG_NODE_INDEX", default_value = "0")]
    pub node_index: String,
    /// Broker API URL of every node, in index order, comma-separated
    /// (`http://broker-0:7100,http://broker-1:7100`).
    #[arg(long, env = "IMSG_NODES", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// How many nodes the cluster was created with (default: all of
    /// `--nodes`). They split the partitions at first start; nodes added
    /// later start empty and receive partitions by moves.
    #[arg(long, env = "IMSG_INITIAL_NODES")]
    pub initial_nodes: Option<u32>,
}

impl ClusterArgs {
    pub fn config(&self) -> Result<crate::cluster::ClusterConfig, String> {
        let hostname = std::env::var("HOSTNAME").ok();
        let node_index = crate::cluster::parse_node_index(&self.node_index, hostname.as_deref())?;
        let config = crate::cluster::ClusterConfig {
            node_index,
            nodes: self.nodes.clone(),
            initial_nodes: self.initial_nodes.unwrap_or(self.nodes.len().max(1) as u32),
        };
        config.validate()?;
        Ok(config)
    }
}

/// Mutual TLS on the internal API, the same three flags on brokers and
/// gateways: a node serves with its certificate and requires one issued by
/// the internal CA from every caller; a node calling a broker (`https://`
/// URLs) presents its certificate and trusts only that CA.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InternalTlsArgs {
    /// This process's certificate for the internal API (PEM chain), issued
    /// by the internal CA. Re-read when the file changes.
    #[arg(long, env = "IMSG_INTERNAL_TLS_CERT", global = true)]
    pub internal_tls_cert: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "IMSG_INTERNAL_TLS_KEY", global = true)]
    pub internal_tls_key: Option<std::path::PathBuf>,
    /// The internal CA (PEM): callers and called nodes must have
    /// certificates it issued.
    #[arg(long, env = "IMSG_INTERNAL_TLS_CA", global = true)]
    pub internal_tls_ca: Option<std::path::PathBuf>,
}

impl InternalTlsArgs {
    /// The files, if internal TLS is on; all three flags or none.
    pub fn files(&self) -> Result<Option<imsg_common::tls::ServerTlsFiles>, String> {
        match (&self.internal_tls_cert, &self.internal_tls_key, &self.internal_tls_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(imsg_common::tls::ServerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: Some(ca.clone()),
            })),
            _ => Err("internal TLS needs all of --internal-tls-cert, --internal-tls-key and --internal-tls-ca".into()),
        }
    }

    /// Makes this process present its certificate on every internal call
    /// (see [`crate::cluster::peers::use_internal_tls`]); the files, for a
    /// server that also serves the internal API.
    pub fn apply(&self) -> Result<Option<imsg_common::tls::ServerTlsFiles>, String> {
        let files = self.files()?;
        if let Some(files) = &files {
            let ca = files.client_ca.as_deref().expect("set above");
            let client = imsg_common::tls::ClientTls::from_files(ca, Some((&files.cert, &files.key)))?;
            crate::cluster::peers::use_internal_tls(client);
        }
        Ok(files)
    }
}

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The gRPC health service on a port of its own, in plaintext, for
/// orchestrator probes (Kubernetes `grpc:` probes), separate from the API
/// port so probes never need client credentials. Serves until `stop`.
pub async fn spawn_health_port<H: tonic_health::pb::health_server::Health>(
    addr: std::net::SocketAddr,
    health: tonic_health::pb::health_server::HealthServer<H>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding health port {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving health probes");
    let server = tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), stop.cancelled_owned());
    Ok(tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::warn!(%error, "health port stopped");
        }
    }))
}

/// Fail-stop (`storage::failstop`): once storage fails, reports NOT_SERVING
/// for the whole server and for `service` on `health`, then exits with
/// [`failstop::EXIT_CODE`], so probes and clients see the node go instead
/// of a server that answers reads but never acknowledges a write.
///
/// [`failstop::EXIT_CODE`]: crate::storage::failstop::EXIT_CODE
pub fn fail_stop_on_storage_failure(
    fail_stop: crate::storage::failstop::FailStop,
    health: tonic_health::server::HealthReporter,
    service: &'static str,
) {
    tokio::spawn(async move {
        fail_stop.failed().await;
        for name in ["", service] {
            health.set_service_status(name, tonic_health::ServingStatus::NotServing).await;
        }
        // Give a watching probe a moment to read it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        eprintln!("imsg: stopping, storage failed: {}", fail_stop.reason().unwrap_or_default());
        std::process::exit(crate::storage::failstop::EXIT_CODE);
    });
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::BrokerArgs;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        broker: BrokerArgs,
    }

    fn workers(flags: &[&str], runs_broker: bool) -> usize {
        let args = Flags::try_parse_from(std::iter::once("imsg").chain(flags.iter().copied())).unwrap();
        args.broker.worker_threads(runs_broker)
    }

    #[test]
    fn a_process_with_storage_leaves_the_writer_a_core_unless_told_otherwise() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(workers(&[], true), (cores - 1).max(1), "one per core but one, at least one");
        assert_eq!(workers(&[], false), cores, "a gateway without storage: one per core");
        assert_eq!(workers(&["--worker-threads", "3"], true), 3);
        assert_eq!(workers(&["--worker-threads", "3"], false), 3);
    }
}
