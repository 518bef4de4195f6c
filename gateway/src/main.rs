//! `imsg-gateway`: serve the public API, or print a local token.

use std::net::SocketAddr;

/// mimalloc instead of glibc's malloc: the message path allocates and
/// frees small buffers at a high rate on every thread, and sled copies its
/// leaves on each insert; glibc spent that in heap consolidation and in
/// zeroing fresh pages (docs/benchmarks.md, issue 15).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use imsg_broker::cli::{BrokerArgs, InternalTlsArgs, shutdown_signal};
use imsg_common::token::Authenticator;
use imsg_gateway::{BrokerTarget, GatewayConfig, RunningGateway, media::MediaStoreConfig};

/// The imsg gateway: public gRPC API in front of the broker.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Tool>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Tool {
    /// Print a token signed with the configured secret (for local use).
    Token {
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "default")]
        device: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
        #[arg(long, env = "IMSG_JWT_SECRET", hide_env_values = true)]
        jwt_secret: String,
        /// Grant a role (`moderator`, `service`); repeatable.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address of the public API (and health, reflection).
    #[arg(long, env = "IMSG_LISTEN", default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Run a broker inside this process: a complete single-node server.
    #[arg(long, env = "IMSG_EMBEDDED_BROKER", conflicts_with = "broker")]
    embedded_broker: bool,
    /// Broker node URLs (`http://host:port`), comma-separated, in node
    /// index order: one for a single broker node, all of them for a cluster.
    #[arg(long, env = "IMSG_BROKER", value_delimiter = ',')]
    broker: Vec<String>,
    /// A plaintext port serving only gRPC health, for orchestrator probes.
    #[arg(long, env = "IMSG_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    /// Prometheus metrics (`GET /metrics`) of the gateway and an embedded
    /// broker on this address; off if unset.
    #[arg(long, env = "IMSG_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// HS256 secret that verifies client tokens (at least 16 bytes).
    #[arg(long, env = "IMSG_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// A file holding the secret instead (a mounted Kubernetes Secret);
    /// surrounding whitespace is ignored.
    #[arg(long, env = "IMSG_JWT_SECRET_FILE", conflicts_with = "jwt_secret")]
    jwt_secret_file: Option<std::path::PathBuf>,
    /// The host application's token keys (JWKS: RS256, ES256, EdDSA by
    /// `kid`), from a file ...
    #[arg(long, env = "IMSG_JWKS_FILE", conflicts_with = "jwks_url")]
    jwks_file: Option<std::path::PathBuf>,
    /// ... or a URL; re-read every `--jwks-refresh-secs`.
    #[arg(long, env = "IMSG_JWKS_URL")]
    jwks_url: Option<String>,
    #[arg(long, env = "IMSG_JWKS_REFRESH_SECS", default_value_t = 60)]
    jwks_refresh_secs: u64,
    /// Tokens must carry this `iss`.
    #[arg(long, env = "IMSG_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Tokens must carry this `aud`.
    #[arg(long, env = "IMSG_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    #[arg(long, env = "IMSG_JWT_LEEWAY_SECS", default_value_t = 5)]
    jwt_leeway_secs: u64,
    /// Names this gateway's lease on brokers (default: random).
    #[arg(long, env = "IMSG_GATEWAY_ID")]
    gateway_id: Option<String>,
    /// Most concurrent device streams.
    #[arg(long, env = "IMSG_MAX_STREAMS", default_value_t = 100_000)]
    max_streams: usize,
    /// Milliseconds shutdown waits for streams and calls to finish.
    #[arg(long, env = "IMSG_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    shutdown_grace_ms: u64,
    /// Keep media (uploads, photos, videos) in this directory. An embedded
    /// broker defaults to `<data dir>/media`; a gateway in front of
    /// remote brokers needs this or an S3 bucket for media.
    #[arg(long, env = "IMSG_MEDIA_DIR", conflicts_with = "media_s3_bucket")]
    media_dir: Option<std::path::PathBuf>,
    /// Keep media in this S3 bucket (shared by every gateway of a cluster).
    /// Credentials: IMSG_MEDIA_S3_ACCESS_KEY_ID, IMSG_MEDIA_S3_SECRET_ACCESS_KEY.
    #[arg(long, env = "IMSG_MEDIA_S3_BUCKET")]
    media_s3_bucket: Option<String>,
    /// The S3 endpoint (e.g. an S3-compatible server); default: AWS.
    #[arg(long, env = "IMSG_MEDIA_S3_ENDPOINT", requires = "media_s3_bucket")]
    media_s3_endpoint: Option<String>,
    #[arg(long, env = "IMSG_MEDIA_S3_REGION", default_value = "us-east-1")]
    media_s3_region: String,
    #[arg(long, env = "IMSG_MEDIA_S3_ACCESS_KEY_ID", hide_env_values = true, default_value = "")]
    media_s3_access_key_id: String,
    #[arg(long, env = "IMSG_MEDIA_S3_SECRET_ACCESS_KEY", hide_env_values = true, default_value = "")]
    media_s3_secret_access_key: String,
    /// Hours an upload that no message references is kept.
    #[arg(long, env = "IMSG_MEDIA_UNREFERENCED_TTL_HOURS", default_value_t = 24)]
    media_unreferenced_ttl_hours: u64,
    /// Serve the public API over TLS with this certificate chain (PEM);
    /// re-read when the file changes.
    #[arg(long, env = "IMSG_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, env = "IMSG_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Send traces to this OpenTelemetry collector (OTLP/gRPC, e.g.
    /// `http://otel-collector:4317`); off if unset.
    #[arg(long, env = "IMSG_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(flatten)]
    internal_tls: InternalTlsArgs,
    #[command(flatten)]
    broker_args: BrokerArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let workers = cli.serve.broker_args.worker_threads(cli.serve.embedded_broker);
    imsg_broker::runtime::multi_thread(workers)?.block_on(serve(cli))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    if let Some(Tool::Token { user, device, ttl_secs, jwt_secret, roles }) = cli.command {
        let auth = Authenticator::new(&jwt_secret).map_err(anyhow::Error::msg)?;
        let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
        println!("{}", auth.issue_with_roles(&user, &device, ttl_secs, &roles).map_err(anyhow::Error::msg)?);
        return Ok(());
    }
    let args = cli.serve;
    let gateway_id = args.gateway_id.clone().unwrap_or_else(|| format!("gw-{:016x}", rand::random::<u64>()));
    let service = imsg_broker::telemetry::ServiceIdentity { name: "imsg-gateway", instance: gateway_id.clone() };
    let _telemetry = imsg_broker::telemetry::init(service, args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()))?;
    let secret = match (args.jwt_secret, &args.jwt_secret_file) {
        (Some(secret), _) => Some(secret),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the JWT secret from {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let token_keys = match (args.jwks_file, args.jwks_url) {
        (Some(path), _) => Some(imsg_gateway::keys::KeySource::File(path)),
        (None, Some(url)) => Some(imsg_gateway::keys::KeySource::Url(url)),
        (None, None) => None,
    };
    if secret.is_none() && token_keys.is_none() {
        anyhow::bail!("--jwt-secret[-file] (IMSG_JWT_SECRET[_FILE]) or --jwks-file/--jwks-url is required");
    }
    // The broker flags configure an embedded broker; a gateway in front of
    // remote brokers learns the partition count and limits from them.
    let target = match (args.embedded_broker, args.broker.is_empty()) {
        (true, _) => BrokerTarget::Embedded(args.broker_args.config().map_err(anyhow::Error::msg)?),
        (false, false) => BrokerTarget::Remote { urls: args.broker },
        (false, true) => anyhow::bail!("choose --embedded-broker or --broker <url>[,<url>...]"),
    };
    let mut config = GatewayConfig::new(args.listen, target, String::new());
    config.jwt_secret = secret;
    config.token_keys = token_keys;
    config.token_keys_refresh = std::time::Duration::from_secs(args.jwks_refresh_secs.max(1));
    config.token_rules = imsg_common::token::TokenRules {
        issuer: args.jwt_issuer,
        audience: args.jwt_audience,
        leeway_secs: args.jwt_leeway_secs,
    };
    config.tls = args.tls_cert.zip(args.tls_key).map(|(cert, key)| imsg_common::tls::ServerTlsFiles {
        cert,
        key,
        client_ca: None,
    });
    // Calls to brokers present this gateway's internal certificate.
    args.internal_tls.apply().map_err(anyhow::Error::msg).context("invalid internal TLS")?;
    config.health_listen = args.health_listen;
    config.metrics_listen = args.metrics_listen;
    config.gateway_id = gateway_id;
    config.streams.max_streams = args.max_streams;
    config.shutdown_grace = std::time::Duration::from_millis(args.shutdown_grace_ms);
    config.media_store = match (args.media_dir, args.media_s3_bucket) {
        (Some(dir), _) => Some(MediaStoreConfig::Local(dir)),
        (None, Some(bucket)) => Some(MediaStoreConfig::S3 {
            bucket,
            endpoint: args.media_s3_endpoint,
            region: args.media_s3_region,
            access_key_id: args.media_s3_access_key_id,
            secret_access_key: args.media_s3_secret_access_key,
        }),
        (None, None) => None,
    };
    config.media_unreferenced_ttl = std::time::Duration::from_secs(args.media_unreferenced_ttl_hours * 3600);
    let gateway = RunningGateway::start(config).await?;
    // Machine-readable for scripts and tests that start us on port 0.
    println!("imsg-gateway listening on {}", gateway.addr);
    shutdown_signal().await;
    tracing::info!("stopping: draining streams, syncing storage");
    gateway.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}
