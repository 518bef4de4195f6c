//! Where the gateway sends commands: a broker in this process
//! (`--embedded-broker`) or a cluster of broker nodes over the internal
//! broker API, routed by the partition map.
//! Either way the gateway keeps no durable state.

use std::{pin::Pin, sync::Arc, time::Duration};

use imsg_broker::{
    Broker, Limits,
    cluster::{Owner, Peers},
    commands,
    ids::partition_of,
};
use imsg_common::retry::transient;
use imsg_proto::internal::v1::{
    Caller, ExecuteRequest, GetClusterStateRequest, OpenSessionRequest, RenewLeaseRequest, Route, execute_request,
    execute_response,
};
use imsg_proto::v1::OpenStreamResponse;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

/// A device session's frames, whichever backend serves it.
pub type Frames = Pin<Box<dyn Stream<Item = Result<OpenStreamResponse, Status>> + Send>>;

/// The broker the gateway routes to.
#[derive(Clone)]
pub enum Backend {
    Embedded(Broker),
    Remote(RemoteBroker),
}

/// Broker nodes reached over gRPC: the partition map tells which node
/// serves a command's home partition, and this gateway holds a lease on
/// every node (its sessions may live on any of them).
#[derive(Clone)]
pub struct RemoteBroker {
    peers: Arc<Peers>,
    gateway_id: String,
    /// The brokers' limits: bad input is refused here, before a network
    /// hop. (An embedded broker validates in `Broker::execute`, once.)
    limits: Arc<Limits>,
}

/// Attempts per request when the map turns out stale (a partition moved).
const ROUTE_ATTEMPTS: usize = 3;

/// What a client is told to wait when no node serves a partition right now.
const RETRY_ROUTING_AFTER: Duration = Duration::from_millis(200);

/// How long a unary command may wait on a broker node.
const EXECUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a starting gateway waits for a broker node to tell it the
/// cluster's partition count and limits.
const DISCOVERY_PATIENCE: Duration = Duration::from_secs(60);

impl RemoteBroker {
    /// Learns the partition count and the client limits from the cluster
    /// (waiting up to [`DISCOVERY_PATIENCE`] for a node to answer), loads the
    /// partition map, and keeps the map fresh and this gateway's leases
    /// renewed until `stop`. Nodes that start later are reached lazily.
    pub async fn connect(urls: &[String], gateway_id: String, stop: CancellationToken) -> Result<Self, String> {
        if urls.is_empty() {
            return Err("at least one broker url is needed".into());
        }
        let (partitions, limits) = discover(urls).await?;
        tracing::info!(partitions, ?limits, "learned the cluster's partition count and limits");
        let peers = Peers::new(urls, None, partitions).map_err(|e| e.to_string())?;
        peers.refresh().await;
        tokio::spawn(peers.clone().run_refresher(Duration::from_secs(1), stop.clone(), |_| {}));
        let broker = Self { peers, gateway_id, limits: Arc::new(limits) };
        for node in 0..urls.len() as u32 {
            tokio::spawn(broker.clone().renew_lease(node, stop.clone()));
        }
        Ok(broker)
    }

    async fn renew_lease(self, node: u32, stop: CancellationToken) {
        let Ok(mut client) = self.peers.client(node) else { return };
        let mut every = Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match client.renew_lease(RenewLeaseRequest { gateway_id: self.gateway_id.clone() }).await {
                // Renew three times per lease, so one lost renewal is harmless.
                Ok(response) => every = Duration::from_millis((response.into_inner().ttl_ms / 3).max(100)),
                Err(status) => {
                    tracing::debug!(node, %status, "lease renewal failed");
                    every = Duration::from_secs(1);
                }
            }
        }
    }

    /// The node serving the partition of `key`, as the map says now.
    fn owner_of(&self, key: &str) -> Result<(u32, Owner), Status> {
        let partition = partition_of(key, self.peers.partition_count());
        let owner = self.peers.owner(partition).ok_or_else(|| {
            self.peers.refresh_soon();
            transient(
                Code::Unavailable,
                format!(
                    "no broker node is known to serve partition {partition} yet (are the brokers up, with the same \
                     --partitions as this gateway?); retry"
                ),
                RETRY_ROUTING_AFTER,
            )
        })?;
        Ok((partition, owner))
    }

    /// Runs `call` on the owner of `key`'s partition. A refusal for a stale
    /// map (ABORTED) refreshes the map and tries again; an unreachable node
    /// is UNAVAILABLE for the client (retryable) and nothing else is held up.
    async fn routed<T, F, Fut>(&self, key: &str, call: F) -> Result<T, Status>
    where
        F: Fn(imsg_broker::cluster::peers::BrokerClient, Route) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        for _ in 0..ROUTE_ATTEMPTS {
            let (partition, owner) = self.owner_of(key)?;
            let client = self.peers.client(owner.node).map_err(Status::from)?;
            match tokio::time::timeout(EXECUTE_TIMEOUT, call(client, owner.route(partition))).await {
                Err(_) => {
                    return Err(transient(
                        Code::Unavailable,
                        format!("broker node {} did not answer in time", owner.node),
                        RETRY_ROUTING_AFTER,
                    ));
                }
                Ok(Err(status)) if status.code() == Code::Aborted => {
                    self.peers.refresh().await;
                }
                Ok(Err(status)) => return Err(self.peers.remote_error(owner.node, partition, status).into()),
                Ok(Ok(value)) => return Ok(value),
            }
        }
        Err(transient(Code::Unavailable, "the partition is changing owner; retry", RETRY_ROUTING_AFTER))
    }
}

impl Backend {
    pub async fn execute(
        &self,
        caller: Caller,
        command: execute_request::Command,
    ) -> Result<execute_response::Result, Status> {
        match self {
            Self::Embedded(broker) => Ok(broker.execute(&caller, None, command).await?),
            Self::Remote(remote) => {
                commands::validate(&remote.limits, &caller, &command)?;
                let home = commands::home_key(&caller, &command);
                remote
                    .routed(&home, |mut client, route| {
                        let request = ExecuteRequest {
                            caller: Some(caller.clone()),
                            command: Some(command.clone()),
                            route: Some(route),
                        };
                        async move { client.execute(request).await }
                    })
                    .await?
                    .into_inner()
                    .result
                    .ok_or_else(|| Status::internal("broker answered without a result"))
            }
        }
    }

    pub async fn open_session(&self, caller: Caller, cursor: u64) -> Result<Frames, Status> {
        match self {
            Self::Embedded(broker) => Ok(Box::pin(broker.open_session(&caller, "", cursor, None)?.map(Ok))),
            Self::Remote(remote) => {
                let user_id = caller.user_id.clone();
                let frames = remote
                    .routed(&user_id, |mut client, route| {
                        let request = OpenSessionRequest {
                            caller: Some(caller.clone()),
                            gateway_id: remote.gateway_id.clone(),
                            cursor,
                            route: Some(route),
                        };
                        async move { client.open_session(request).await }
                    })
                    .await?
                    .into_inner();
                Ok(Box::pin(frames.filter_map(|frame| match frame {
                    Ok(frame) => frame.frame.map(Ok),
                    Err(status) => Some(Err(status)),
                })))
            }
        }
    }
}

/// Asks the nodes, in turn, for the cluster's partition count and limits
/// until one answers.
async fn discover(urls: &[String]) -> Result<(u32, Limits), String> {
    let deadline = tokio::time::Instant::now() + DISCOVERY_PATIENCE;
    loop {
        for url in urls {
            let Ok(mut client) = imsg_broker::cluster::peers::connect(url) else { continue };
            let answer =
                tokio::time::timeout(Duration::from_secs(2), client.get_cluster_state(GetClusterStateRequest {}));
            if let Ok(Ok(state)) = answer.await {
                let state = state.into_inner();
                let learned = state.limits.unwrap_or_default();
                let defaults = Limits::default();
                let or_default = |value: u32, default: usize| if value == 0 { default } else { value as usize };
                let limits = Limits {
                    max_text_bytes: or_default(learned.max_text_bytes, defaults.max_text_bytes),
                    max_group_members: or_default(learned.max_group_members, defaults.max_group_members),
                    max_title_bytes: or_default(learned.max_title_bytes, defaults.max_title_bytes),
                    ..defaults
                };
                return Ok((state.partition_count, limits));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "no broker node answered within {DISCOVERY_PATIENCE:?} at {}; cannot learn the partition count",
                urls.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
