//! `imsg-broker`: one broker node serving the internal broker API, plus the
//! operator commands that inspect and move partitions.

use std::net::SocketAddr;

/// mimalloc, as in `imsg-gateway` (see there).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use imsg_broker::{
    Broker,
    cli::{BrokerArgs, ClusterArgs, InternalTlsArgs, fail_stop_on_storage_failure, shutdown_signal, spawn_health_port},
    cluster::moves,
    grpc::BrokerGrpc,
};
use imsg_proto::internal::v1::broker_service_server::BrokerServiceServer;

/// A broker node of imsg: owns partitions, persists conversation logs.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    admin: Option<Admin>,
    /// Address of the internal broker API.
    #[arg(long, env = "IMSG_BROKER_LISTEN", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// Plaintext gRPC health service only (for Kubernetes probes); off if unset.
    #[arg(long, env = "IMSG_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    /// Prometheus metrics (`GET /metrics`) on this address; off if unset.
    #[arg(long, env = "IMSG_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    internal_tls: InternalTlsArgs,
    /// Send traces to this OpenTelemetry collector (OTLP/gRPC, e.g.
    /// `http://otel-collector:4317`); off if unset.
    #[arg(long, env = "IMSG_OTLP_ENDPOINT", global = true)]
    otlp_endpoint: Option<String>,
}

/// Operator commands against a running cluster.
#[derive(Subcommand, Debug)]
enum Admin {
    /// Prints which node owns each partition, at which epoch.
    Partitions {
        /// Broker API URL of every node, in index order, comma-separated.
        #[arg(long, env = "IMSG_NODES", value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
    /// Moves one partition to another node (freeze, copy, switch epoch, release).
    MovePartition {
        #[arg(long, env = "IMSG_NODES", value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        #[arg(long)]
        partition: u32,
        /// Index of the node that takes it.
        #[arg(long)]
        to: u32,
    },
    /// Moves partitions one at a time until every node holds P/N of them
    /// (run after adding a node, or before removing one).
    Rebalance {
        #[arg(long, env = "IMSG_NODES", value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Print the plan without moving anything.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workers = args.broker.worker_threads(args.admin.is_none());
    imsg_broker::runtime::multi_thread(workers)?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let service = imsg_broker::telemetry::ServiceIdentity {
        name: "imsg-broker",
        instance: match args.cluster.node_index.as_str() {
            "auto" => std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into()),
            index => format!("node-{index}"),
        },
    };
    let _telemetry = imsg_broker::telemetry::init(service, args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()))?;
    let internal_tls = args.internal_tls.apply().map_err(anyhow::Error::msg).context("invalid internal TLS")?;
    if let Some(admin) = args.admin {
        return run_admin(admin).await;
    }
    let mut config = args.broker.config().map_err(anyhow::Error::msg).context("invalid configuration")?;
    config.cluster = args.cluster.config().map_err(anyhow::Error::msg).context("invalid cluster layout")?;
    let broker = Broker::open(config).await.context("opening the broker")?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr()?;
    // Machine-readable for scripts and tests that start us on port 0.
    println!("imsg-broker listening on {local}");
    tracing::info!(%local, "serving the broker API");
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<BrokerServiceServer<BrokerGrpc>>().await;
    fail_stop_on_storage_failure(
        broker.fail_stop(),
        health_reporter.clone(),
        <BrokerServiceServer<BrokerGrpc> as tonic::server::NamedService>::NAME,
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let health_server = match args.health_listen {
        Some(addr) => Some(spawn_health_port(addr, health.clone(), stop.clone()).await?),
        None => None,
    };
    if let Some(addr) = args.metrics_listen {
        let bound = imsg_broker::metrics::serve(addr, stop.clone()).await?;
        tracing::info!(%bound, "metrics served");
    }
    let service = BrokerServiceServer::new(BrokerGrpc::new(broker.clone()))
        .max_decoding_message_size(16 * 1024 * 1024)
        .max_encoding_message_size(16 * 1024 * 1024);
    let router = tonic::transport::Server::builder()
        .trace_fn(imsg_broker::telemetry::rpc_span)
        .add_service(health)
        .add_service(service);
    let server = match internal_tls {
        Some(files) => {
            let tls = imsg_common::tls::ReloadingTls::load(files).map_err(anyhow::Error::msg)?;
            tracing::info!("internal API requires mutual TLS");
            tokio::spawn(router.serve_with_incoming_shutdown(
                imsg_common::tls::incoming(listener, tls),
                stop.clone().cancelled_owned(),
            ))
        }
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        )),
    };
    shutdown_signal().await;
    tracing::info!("stopping: ending sessions, syncing storage");
    health_reporter.set_not_serving::<BrokerServiceServer<BrokerGrpc>>().await;
    // Ending the partitions first closes every session stream, so the
    // server's graceful shutdown does not wait on them.
    broker.shutdown().await.context("stopping the broker")?;
    stop.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), server).await;
    if let Some(health_server) = health_server {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), health_server).await;
    }
    Ok(())
}

async fn run_admin(admin: Admin) -> anyhow::Result<()> {
    match admin {
        Admin::Partitions { nodes } => {
            let state = moves::cluster_state(&nodes).await?;
            let owners = moves::owners(&state);
            for node in &state {
                match &node.claims {
                    None => println!("node {} {}: unreachable", node.node, node.url),
                    Some(_) => {
                        let owned = owners.values().filter(|(n, _)| *n == node.node).count();
                        println!("node {} {}: {} partitions", node.node, node.url, owned);
                    }
                }
            }
            for (partition, (node, epoch)) in owners {
                println!("partition {partition}: node {node} epoch {epoch}");
            }
        }
        Admin::MovePartition { nodes, partition, to } => {
            let report = moves::move_partition(&nodes, partition, to).await?;
            print_move(&report);
        }
        Admin::Rebalance { nodes, dry_run } => {
            let state = moves::cluster_state(&nodes).await?;
            if let Some(down) = state.iter().find(|n| n.claims.is_none()) {
                anyhow::bail!("node {} ({}) does not answer; rebalance needs every node", down.node, down.url);
            }
            let partitions = moves::owners(&state).len() as u32;
            let plan = moves::plan_rebalance(&state, partitions);
            println!("{} moves planned", plan.len());
            for (partition, to) in plan {
                if dry_run {
                    println!("would move partition {partition} to node {to}");
                } else {
                    print_move(&moves::move_partition(&nodes, partition, to).await?);
                }
            }
        }
    }
    Ok(())
}

fn print_move(report: &moves::MoveReport) {
    println!(
        "moved partition {} from node {} to node {} at epoch {} ({} rows, {} ms)",
        report.partition,
        report.from,
        report.to,
        report.epoch,
        report.rows,
        report.elapsed.as_millis()
    );
}
