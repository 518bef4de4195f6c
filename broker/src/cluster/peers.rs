//! The other broker nodes as seen from a node or a gateway: a gRPC client
//! per node and the partition map built from their claims.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use imsg_proto::internal::v1::{
    CallPartitionRequest, GetClusterStateRequest, PartitionState, Route, broker_service_client::BrokerServiceClient,
    call_partition_request,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, transport::Channel};

use crate::{
    error::{Error, Result},
    ids::PartitionId,
};

/// Who owns a partition, per the newest claims seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub node: u32,
    pub epoch: u64,
    /// False while the partition is frozen for a move.
    pub serving: bool,
}

impl Owner {
    pub fn route(&self, partition: PartitionId) -> Route {
        Route { partition, epoch: self.epoch }
    }
}

/// How long a node may take to answer a cluster-state poll before it counts
/// as unreachable for this round (its last known claims are kept).
const STATE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one call to another node may take: long enough for a loaded
/// node to commit, short enough that a hung node fails callers quickly.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Every broker node, and the partition map. Cheap to share (`Arc`).
pub struct Peers {
    nodes: Vec<Node>,
    /// This process's own node (its claims are known locally), if any.
    self_index: Option<u32>,
    partitions: u32,
    /// Newest claim per partition by another node, and per node the claims
    /// it made when it last answered.
    map: RwLock<Map>,
    refresh_now: Notify,
}

struct Node {
    url: String,
    client: BrokerClient,
}

#[derive(Default)]
struct Map {
    owners: Vec<Option<Owner>>,
    claims_by_node: Vec<Vec<(PartitionId, Owner)>>,
}

impl Peers {
    /// Clients for `urls` (connected lazily: nodes may start in any order).
    pub fn new(urls: &[String], self_index: Option<u32>, partitions: u32) -> Result<Arc<Self>> {
        let mut nodes = Vec::with_capacity(urls.len());
        for url in urls {
            nodes.push(Node { url: url.clone(), client: connect(url)? });
        }
        Ok(Arc::new(Self {
            map: RwLock::new(Map {
                owners: vec![None; partitions as usize],
                claims_by_node: vec![Vec::new(); urls.len()],
            }),
            nodes,
            self_index,
            partitions,
            refresh_now: Notify::new(),
        }))
    }

    pub fn partition_count(&self) -> u32 {
        self.partitions
    }

    pub fn url(&self, node: u32) -> &str {
        self.nodes.get(node as usize).map_or("", |n| n.url.as_str())
    }

    pub fn client(&self, node: u32) -> Result<BrokerClient> {
        self.nodes
            .get(node as usize)
            .map(|n| n.client.clone())
            .ok_or_else(|| Error::Unavailable(format!("node {node} is not in the cluster layout")))
    }

    /// The owner of `partition` among the other nodes, if any claims it.
    pub fn owner(&self, partition: PartitionId) -> Option<Owner> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).owners.get(partition as usize).copied().flatten()
    }

    /// Asks for a refresh as soon as possible (a request met a stale map).
    pub fn refresh_soon(&self) {
        self.refresh_now.notify_one();
    }

    /// Polls every other node for its claims and rebuilds the map. A node
    /// that does not answer keeps the claims it made last time, so its
    /// partitions fail fast as unavailable instead of looking unowned.
    pub async fn refresh(&self) {
        let polls =
            self.nodes.iter().enumerate().filter(|(i, _)| Some(*i as u32) != self.self_index).map(|(i, node)| {
                let mut client = node.client.clone();
                async move {
                    let answer =
                        tokio::time::timeout(STATE_TIMEOUT, client.get_cluster_state(GetClusterStateRequest {}))
                            .await
                            .ok()
                            .and_then(|answer| answer.ok());
                    (i, answer.map(|a| a.into_inner()))
                }
            });
        let answers = futures_join_all(polls).await;
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for (node, answer) in answers {
            if let Some(state) = answer {
                if state.partition_count != self.partitions {
                    tracing::error!(
                        node,
                        theirs = state.partition_count,
                        ours = self.partitions,
                        "node has another partition count; ignoring its claims"
                    );
                    continue;
                }
                map.claims_by_node[node] = state
                    .claims
                    .iter()
                    .filter(|c| c.partition < self.partitions)
                    .map(|c| {
                        let serving = c.state == PartitionState::Serving as i32;
                        (c.partition, Owner { node: node as u32, epoch: c.epoch, serving })
                    })
                    .collect();
            }
        }
        let mut owners: Vec<Option<Owner>> = vec![None; self.partitions as usize];
        for claims in &map.claims_by_node {
            for (partition, claim) in claims {
                let slot = &mut owners[*partition as usize];
                if slot.is_none_or(|current| claim.epoch > current.epoch) {
                    *slot = Some(*claim);
                }
            }
        }
        map.owners = owners;
    }

    /// Refreshes every `every` (and at once when asked) until `stop`,
    /// calling `after` after each refresh. The caller did the first refresh
    /// itself, before it needed the map.
    pub async fn run_refresher(
        self: Arc<Self>,
        every: Duration,
        stop: CancellationToken,
        after: impl Fn(&Peers) + Send + 'static,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
                _ = self.refresh_now.notified() => {}
            }
            self.refresh().await;
            after(&self);
        }
    }

    /// Runs a partition call on its owner. Unreachable nodes and refusals
    /// for a stale epoch become UNAVAILABLE (retryable) for the caller; a
    /// refusal also triggers a map refresh.
    pub async fn call_partition(
        &self,
        owner: Owner,
        partition: PartitionId,
        call: call_partition_request::Call,
    ) -> Result<imsg_proto::internal::v1::call_partition_response::Result> {
        let mut client = self.client(owner.node)?;
        let request = CallPartitionRequest { route: Some(owner.route(partition)), call: Some(call) };
        let answer = tokio::time::timeout(CALL_TIMEOUT, client.call_partition(request))
            .await
            .map_err(|_| Error::Unavailable(format!("node {} did not answer in time", owner.node)))?;
        match answer {
            Ok(response) => response
                .into_inner()
                .result
                .ok_or_else(|| Error::Internal(format!("node {} answered without a result", owner.node))),
            Err(status) => Err(self.remote_error(owner.node, partition, status)),
        }
    }

    /// Turns a status from another node into the error our caller sees.
    pub fn remote_error(&self, node: u32, partition: PartitionId, status: Status) -> Error {
        match status.code() {
            Code::Aborted => {
                self.refresh_soon();
                Error::Unavailable(format!("partition {partition} changed owner ({}); retry", status.message()))
            }
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
                Error::Unavailable(format!("node {node} ({}) is unavailable: {}", self.url(node), status.message()))
            }
            _ => Error::Remote(status),
        }
    }
}

/// A client of the internal API; every call carries the trace context of
/// the span it is made in.
pub type BrokerClient =
    BrokerServiceClient<tonic::service::interceptor::InterceptedService<Channel, crate::telemetry::Propagate>>;

/// This process's identity on the internal API, set once at start from
/// its flags. Process-wide because every internal client of a process
/// (gateway backend, lanes, moves, admin commands) presents the same
/// certificate, as a process has one set of flags.
static INTERNAL_TLS: std::sync::OnceLock<imsg_common::tls::ClientTls> = std::sync::OnceLock::new();

/// Makes every internal call to an `https://` URL present this identity
/// and trust only its CA. The first call wins.
pub fn use_internal_tls(tls: imsg_common::tls::ClientTls) {
    let _ = INTERNAL_TLS.set(tls);
}

/// A lazily connected client with the settings every internal hop uses.
pub fn connect(url: &str) -> Result<BrokerClient> {
    let mut endpoint = Channel::from_shared(url.to_owned())
        .map_err(|e| Error::FailedPrecondition(format!("broker url {url}: {e}")))?;
    if url.starts_with("https://") {
        let tls = INTERNAL_TLS.get().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "broker url {url} is https: internal TLS needs --internal-tls-cert, --internal-tls-key and --internal-tls-ca"
            ))
        })?;
        endpoint = endpoint
            .tls_config(tls.tonic())
            .map_err(|e| Error::FailedPrecondition(format!("broker url {url}: {e}")))?;
    }
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(3));
    Ok(BrokerServiceClient::with_interceptor(endpoint.connect_lazy(), crate::telemetry::Propagate)
        .max_decoding_message_size(16 * 1024 * 1024)
        .max_encoding_message_size(16 * 1024 * 1024))
}

/// Awaits every future concurrently (a few nodes: no need for a crate).
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(value) = handle.await {
            out.push(value);
        }
    }
    out
}
