//! Assembling and running a gateway: the public API, gRPC health and
//! reflection on the client port, graceful shutdown.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use imsg_broker::{Broker, BrokerConfig};
use imsg_common::token::Authenticator;
use imsg_proto::v1::{
    messaging_service_server::MessagingServiceServer, moderation_service_server::ModerationServiceServer,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    backend::{Backend, RemoteBroker},
    media::{Media, MediaLimits, MediaStore, MediaStoreConfig},
    ratelimit::PerUserLimiter,
    service::{Gateway, MessagingApi},
    stream::{StreamSettings, Streams},
};

/// Which broker the gateway uses.
#[derive(Debug, Clone)]
// Built once at start; boxing the config would only burden its callers.
#[allow(clippy::large_enum_variant)]
pub enum BrokerTarget {
    /// A broker inside this process: a complete single-node server.
    Embedded(BrokerConfig),
    /// Broker nodes at these URLs (`http://host:port`); the partition
    /// count and the limits checked before the hop are learned from them.
    Remote { urls: Vec<String> },
}

/// Everything a gateway needs to start.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Serve the public API over TLS from these files (reloaded when they
    /// change); plaintext if unset.
    pub tls: Option<imsg_common::tls::ServerTlsFiles>,
    /// A plaintext port serving only gRPC health, for probes.
    pub health_listen: Option<SocketAddr>,
    /// Prometheus metrics (`GET /metrics`), off if unset.
    pub metrics_listen: Option<SocketAddr>,
    pub broker: BrokerTarget,
    /// Verifies HS256 tokens (local development); `None` with `token_keys`.
    pub jwt_secret: Option<String>,
    /// The host application's published keys (RS256, ES256, EdDSA).
    pub token_keys: Option<crate::keys::KeySource>,
    /// How often the published keys are re-read.
    pub token_keys_refresh: Duration,
    /// `iss`, `aud` and clock leeway every token must satisfy.
    pub token_rules: imsg_common::token::TokenRules,
    /// Names this gateway's lease on broker nodes.
    pub gateway_id: String,
    pub streams: StreamSettings,
    /// How long shutdown waits for streams and calls to finish.
    pub shutdown_grace: Duration,
    /// Where media bytes go; an embedded broker defaults to
    /// `<data dir>/media`, a gateway in front of remote brokers has no
    /// media without one (its media RPCs answer FAILED_PRECONDITION).
    pub media_store: Option<MediaStoreConfig>,
    pub media_limits: MediaLimits,
    /// How long an upload that no message references is kept.
    pub media_unreferenced_ttl: Duration,
}

impl GatewayConfig {
    pub fn new(listen: SocketAddr, broker: BrokerTarget, jwt_secret: impl Into<String>) -> Self {
        Self {
            listen,
            tls: None,
            health_listen: None,
            metrics_listen: None,
            broker,
            jwt_secret: Some(jwt_secret.into()),
            token_keys: None,
            token_keys_refresh: Duration::from_secs(60),
            token_rules: Default::default(),
            gateway_id: format!("gw-{:016x}", rand::random::<u64>()),
            streams: StreamSettings::default(),
            shutdown_grace: Duration::from_secs(10),
            media_store: None,
            media_limits: MediaLimits::default(),
            media_unreferenced_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// A gateway serving on a socket.
pub struct RunningGateway {
    pub addr: SocketAddr,
    gateway: Arc<Gateway>,
    broker: Option<Broker>,
    stop: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    grace: Duration,
}

impl RunningGateway {
    /// Binds, starts the backend and serves until [`Self::shutdown`].
    pub async fn start(config: GatewayConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            config.jwt_secret.is_some() || config.token_keys.is_some(),
            "tokens need a way to be verified: a JWT secret or published keys (JWKS)"
        );
        let auth = Authenticator::with_rules(config.jwt_secret.as_deref(), config.token_rules.clone())
            .map_err(anyhow::Error::msg)?;
        let stop = CancellationToken::new();
        if let Some(source) = &config.token_keys {
            crate::keys::keep_fresh(auth.clone(), source.clone(), config.token_keys_refresh, stop.clone()).await?;
        }
        let (backend, broker) = match &config.broker {
            BrokerTarget::Embedded(broker_config) => {
                let broker = Broker::open(broker_config.clone()).await?;
                (Backend::Embedded(broker.clone()), Some(broker))
            }
            BrokerTarget::Remote { urls } => {
                let remote = RemoteBroker::connect(urls, config.gateway_id.clone(), stop.clone())
                    .await
                    .map_err(anyhow::Error::msg)?;
                (Backend::Remote(remote), None)
            }
        };
        let media_store = match (&config.media_store, &config.broker) {
            (Some(store), _) => Some(store.clone()),
            (None, BrokerTarget::Embedded(broker)) => Some(MediaStoreConfig::Local(broker.data_dir.join("media"))),
            (None, BrokerTarget::Remote { .. }) => None,
        };
        let media = match media_store {
            Some(store) => {
                let mut media = Media::new(MediaStore::open(&store)?, config.media_limits.clone());
                media.unreferenced_ttl = config.media_unreferenced_ttl;
                Some(Arc::new(media))
            }
            None => None,
        };
        if let Some(media) = &media {
            tokio::spawn(sweep_media(media.clone(), stop.clone()));
        }
        let gateway = Arc::new(Gateway {
            auth,
            backend,
            media,
            budgets: Default::default(),
            typing_limiter: PerUserLimiter::new(config.streams.typing_burst, config.streams.typing_per_second),
            streams: Streams::default(),
            stream_settings: config.streams.clone(),
        });
        tokio::spawn(forget_idle_users(gateway.clone(), stop.clone()));
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<MessagingServiceServer<MessagingApi>>().await;
        if let Some(broker) = &broker {
            imsg_broker::cli::fail_stop_on_storage_failure(
                broker.fail_stop(),
                health_reporter.clone(),
                <MessagingServiceServer<MessagingApi> as tonic::server::NamedService>::NAME,
            );
        }
        if let Some(metrics_addr) = config.metrics_listen {
            let bound = imsg_broker::metrics::serve(metrics_addr, stop.clone()).await?;
            tracing::info!(%bound, "metrics served");
        }
        if let Some(health_addr) = config.health_listen {
            imsg_broker::cli::spawn_health_port(health_addr, health.clone(), stop.clone()).await?;
        }
        let reflection = tonic_reflection::server::Builder::configure()
            .register_file_descriptor_set(imsg_proto::public_file_descriptor_set())
            .build_v1()?;
        let api = MessagingServiceServer::new(MessagingApi::new(gateway.clone()))
            .max_decoding_message_size(crate::wire::WireLimits::default().message_bytes);
        let moderation = ModerationServiceServer::new(MessagingApi::new(gateway.clone()));
        let server_stop = stop.clone();
        let tls = match &config.tls {
            Some(files) => Some(imsg_common::tls::ReloadingTls::load(files.clone()).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let router = tonic::transport::Server::builder()
            .trace_fn(imsg_broker::telemetry::rpc_span)
            // Find devices that vanished without closing their connection.
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .http2_max_header_list_size(crate::wire::HEADER_LIST_ACCEPTED)
            .layer(crate::wire::WireLimits::default())
            .add_service(health)
            .add_service(reflection)
            .add_service(api)
            .add_service(moderation);
        let stopping = async move {
            server_stop.cancelled().await;
            health_reporter.set_not_serving::<MessagingServiceServer<MessagingApi>>().await;
        };
        let server = match tls {
            Some(tls) => {
                tokio::spawn(router.serve_with_incoming_shutdown(imsg_common::tls::incoming(listener, tls), stopping))
            }
            None => tokio::spawn(router.serve_with_incoming_shutdown(incoming(listener), stopping)),
        };
        tracing::info!(%addr, tls = config.tls.is_some(), broker = ?config.broker, "gateway serving");
        Ok(Self { addr, gateway, broker, stop, server, grace: config.shutdown_grace })
    }

    /// Device streams currently open.
    pub fn open_streams(&self) -> usize {
        self.gateway.streams.open_count()
    }

    /// Stops accepting, tells every device stream goodbye, waits up to the
    /// grace period for calls to finish, then makes storage durable.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.gateway.streams.shutdown.cancel();
        self.stop.cancel();
        match tokio::time::timeout(self.grace, self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "server ended with an error"),
            Ok(Err(error)) => tracing::warn!(%error, "server task failed"),
            Err(_) => tracing::warn!("grace period over; closing remaining connections"),
        }
        if let Some(broker) = self.broker {
            broker.shutdown().await?;
        }
        Ok(())
    }
}

/// Accepted connections with Nagle off: events are small frames that must
/// not wait for the peer's delayed ACK (a 40 ms stall otherwise). tonic's
/// `tcp_nodelay` only applies to sockets it binds itself.
pub fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Deletes unreferenced uploads past their TTL, every few minutes (and
/// once soon after start).
async fn sweep_media(media: Arc<Media>, stop: CancellationToken) {
    let every = (media.unreferenced_ttl / 4).clamp(Duration::from_millis(200), Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
                match media.sweep(now).await {
                    Ok((0, 0)) => {}
                    Ok((media, uploads)) => tracing::info!(media, uploads, "deleted unreferenced media and stale uploads"),
                    Err(error) => tracing::warn!(%error, "media sweep failed"),
                }
            }
        }
    }
}

async fn forget_idle_users(gateway: Arc<Gateway>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(30)) => {
                gateway.budgets.forget_expired();
                gateway.typing_limiter.forget_idle();
            }
        }
    }
}
