//! `imsg-broker`: one broker node serving the internal broker API.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use imsg_broker::{
    Broker,
    cli::{BrokerArgs, init_logging, shutdown_signal},
    grpc::BrokerGrpc,
};
use imsg_proto::v1::broker_service_server::BrokerServiceServer;

/// A broker node of imsg: owns partitions, persists conversation logs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address of the internal broker API.
    #[arg(long, env = "IMSG_BROKER_LISTEN", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    #[command(flatten)]
    broker: BrokerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let config = args.broker.config().map_err(anyhow::Error::msg).context("invalid configuration")?;
    let broker = Broker::open(config).await.context("opening the broker")?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr()?;
    // Machine-readable for scripts and tests that start us on port 0.
    println!("imsg-broker listening on {local}");
    tracing::info!(%local, "serving the broker API");
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<BrokerServiceServer<BrokerGrpc>>().await;
    let service = BrokerServiceServer::new(BrokerGrpc::new(broker.clone())).max_decoding_message_size(1024 * 1024);
    let stop = tokio_util::sync::CancellationToken::new();
    let server =
        tonic::transport::Server::builder().add_service(health).add_service(service).serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        );
    let server = tokio::spawn(server);
    shutdown_signal().await;
    tracing::info!("stopping: ending sessions, syncing storage");
    // Ending the partitions first closes every session stream, so the
    // server's graceful shutdown does not wait on them.
    broker.shutdown().await.context("stopping the broker")?;
    stop.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), server).await;
    Ok(())
}
