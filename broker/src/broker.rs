//! The broker node's front: starts the partitions and turns each client
//! command into calls on the partitions that own its data.
//!
//! Both the internal gRPC API ([`crate::grpc`]) and a gateway embedding the
//! broker call [`Broker::execute`] and [`Broker::open_session`], so the
//! embedded single-node server and the two-process form run the same code.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use std::collections::HashMap;

use dashmap::DashMap;
use imsg_proto::internal::v1::{Caller, Route, execute_request, execute_response};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    cluster::Peers,
    commands,
    config::BrokerConfig,
    error::{Error, Result},
    ids::{IdKey, PartitionId},
    partition::{Command, Mailbox, Partition, Reply, UserContext, Viewer},
    router::{PartitionQueues, Router, Slot},
    session::{SessionFields, SessionStream},
    storage::{OwnershipRecord, Store},
    validate,
};

mod moves;

use moves::{release_store, write_ownership};

/// A running broker node. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    config: BrokerConfig,
    /// Derives conversation ids (see `imsg_common::ids`).
    id_key: IdKey,
    /// Sends push notifications (`None`: no webhook configured).
    push: Option<crate::push::Outlet>,
    /// Users' standing (suspended or not) as last read from their
    /// partitions.
    standings: crate::standing::Standings,
    store: Arc<Store>,
    router: Router,
    /// The task of every partition this node runs.
    partitions: std::sync::Mutex<HashMap<PartitionId, tokio::task::JoinHandle<()>>>,
    /// Serialises ownership changes (moves, step-downs) on this node.
    ownership: tokio::sync::Mutex<()>,
    leases: DashMap<String, Instant>,
    next_session: AtomicU64,
    stop: CancellationToken,
}

impl Broker {
    /// Opens the data directory and starts every partition this node owns.
    /// On a node's first start it claims its share of the initial layout
    /// (every partition, standalone); see [`crate::cluster`].
    pub async fn open(config: BrokerConfig) -> Result<Self> {
        config.validate().map_err(Error::FailedPrecondition)?;
        let store = Store::open(&config)?;
        let id_key = crate::storage::id_secret::id_key(&config)?;
        let stop = CancellationToken::new();
        let cluster = &config.cluster;
        let peers = if cluster.is_standalone() {
            None
        } else {
            Some(Peers::new(&cluster.nodes, Some(cluster.node_index), config.partitions)?)
        };
        let router = Router::new(config.partitions, peers.clone(), stop.clone());
        let push = config.push.clone().map(|push| crate::push::Outlet::start(push, router.clone(), stop.clone()));
        let inner = Arc::new(Inner {
            config,
            id_key,
            push,
            standings: Default::default(),
            store,
            router,
            partitions: std::sync::Mutex::new(HashMap::new()),
            ownership: tokio::sync::Mutex::new(()),
            leases: DashMap::new(),
            next_session: AtomicU64::new(1),
            stop,
        });
        let broker = Self { inner };
        if let Some(peers) = &peers {
            // Learn the others' claims before serving anything: a move whose
            // last step (release) never reached this node, because it died
            // in between, left a claim here that another node outranks.
            // Serving that copy even briefly would take fan-out from this
            // node's own partitions into a log nobody reads any more.
            peers.refresh().await;
        }
        let mut owned = 0;
        for partition in 0..broker.inner.config.partitions {
            let store = broker.inner.store.partition(partition)?;
            let epoch = match store.ownership()? {
                Some(record) if record.released => {
                    store.clear_data()?; // finishes a clean-up a crash interrupted
                    continue;
                }
                Some(record) => record.epoch,
                None if broker.inner.config.cluster.initially_owns(partition) => {
                    write_ownership(&store, OwnershipRecord { epoch: 1, released: false }).await;
                    1
                }
                None => continue,
            };
            if let Some(owner) = peers.as_ref().and_then(|peers| peers.owner(partition))
                && owner.epoch > epoch
            {
                tracing::warn!(partition, held = epoch, newer = owner.epoch, node = owner.node, "outranked: released");
                release_store(&store, owner.epoch).await?;
                continue;
            }
            broker.start_partition(partition, epoch)?;
            owned += 1;
        }
        tokio::spawn(reap_leases(Arc::downgrade(&broker.inner)));
        if let Some(peers) = peers {
            let weak = Arc::downgrade(&broker.inner);
            let after = move |peers: &Peers| {
                if let Some(inner) = weak.upgrade() {
                    Broker { inner }.step_down_where_outranked(peers);
                }
            };
            tokio::spawn(peers.run_refresher(Duration::from_secs(1), broker.inner.stop.clone(), after));
        }
        tracing::info!(
            data_dir = %broker.inner.config.data_dir.display(),
            partitions = broker.inner.config.partitions,
            owned,
            node = broker.inner.config.cluster.node_index,
            fsync = ?broker.inner.config.fsync,
            "broker started"
        );
        Ok(broker)
    }

    /// Loads a partition from storage and starts serving it at `epoch`.
    fn start_partition(&self, partition: PartitionId, epoch: u64) -> Result<()> {
        let config = &self.inner.config;
        let (commands_tx, commands) = mpsc::channel(config.limits.partition_queue);
        let (internal_tx, internal) = mpsc::unbounded_channel();
        let task = Partition::load(
            partition,
            config.limits.clone(),
            self.inner.store.partition(partition)?,
            self.inner.store.durability().clone(),
            self.inner.router.clone(),
            self.inner.push.clone(),
        )?;
        let handle = tokio::spawn(task.run(Mailbox { commands, internal }));
        self.inner.partitions.lock().unwrap_or_else(|e| e.into_inner()).insert(partition, handle);
        let queues = PartitionQueues { commands: commands_tx, internal: internal_tx };
        self.inner.router.set_slot(partition, Slot::Serving { queues, epoch });
        let label = crate::metrics::PartitionLabel { partition };
        crate::metrics::METRICS.partition_epoch.get_or_create(&label).set(epoch as i64);
        Ok(())
    }

    /// The routing state, for the cluster RPCs.
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    pub fn node_index(&self) -> u32 {
        self.inner.config.cluster.node_index
    }

    /// Fires when storage can no longer make writes durable; the servers
    /// watch it (see [`crate::cli::fail_stop_on_storage_failure`]).
    pub fn fail_stop(&self) -> crate::storage::failstop::FailStop {
        self.inner.store.durability().fail_stop().clone()
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// Storage rows written since start (see [`Store::rows_written`]).
    pub fn rows_written(&self) -> u64 {
        self.inner.store.rows_written()
    }

    /// [`Self::rows_written`] by kind (see [`Store::rows_written_by_kind`]).
    pub fn rows_written_by_kind(&self) -> std::collections::BTreeMap<char, u64> {
        self.inner.store.rows_written_by_kind()
    }

    /// Rounds of the writer that logged something so far (each one
    /// `fdatasync` in `always` mode).
    pub fn durability_rounds(&self) -> u64 {
        self.inner.store.durability().rounds()
    }

    pub(crate) fn partition_of(&self, key: &str) -> PartitionId {
        self.inner.router.partition_of(key)
    }

    /// Submits a client command to a partition and waits for its answer.
    pub(crate) async fn call<T>(&self, partition: PartitionId, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.inner.router.submit(partition, make(reply))?;
        answer.await.map_err(|_| Error::Unavailable(format!("partition {partition} stopped")))?
    }

    pub(crate) async fn user_context(&self, user_id: &str) -> Result<UserContext> {
        let user_id = user_id.to_owned();
        self.call(self.partition_of(&user_id), |reply| Command::UserContext { user_id, reply }).await
    }

    pub(crate) async fn viewer(&self, caller: &Caller) -> Result<Viewer> {
        Ok(self.user_context(&caller.user_id).await?.viewer(&caller.user_id))
    }

    /// The key conversation ids are derived with.
    pub(crate) fn id_key(&self) -> &IdKey {
        &self.inner.id_key
    }

    /// Refuses a request whose home partition (that of `home_key`) this
    /// node does not serve, or serves at another epoch than `route` says.
    fn check_route(&self, home_key: &str, route: Option<&Route>) -> Result<()> {
        let home = self.partition_of(home_key);
        if let Some(route) = route
            && route.partition != home
        {
            return Err(Error::invalid("route.partition", format!("the request's home partition is {home}")));
        }
        self.inner.router.check_owner(home, route.map(|r| r.epoch))
    }

    /// Runs one client command as `caller` (already authenticated). The
    /// command's home partition must be served here, at `epoch` if given.
    /// What each command checks and does is in the command table
    /// ([`crate::commands`]).
    pub async fn execute(
        &self,
        caller: &Caller,
        route: Option<&Route>,
        command: execute_request::Command,
    ) -> Result<execute_response::Result> {
        commands::validate(&self.inner.config.limits, caller, &command)?;
        let home = commands::home_key(caller, &command);
        self.check_route(&home, route)?;
        self.refuse_if_suspended(&caller.user_id).await?;
        self.dispatch(caller.clone(), home, command).await
    }

    /// A suspended user's calls are refused (see `crate::standing`).
    async fn refuse_if_suspended(&self, user: &str) -> Result<()> {
        let suspended = match self.inner.standings.recent(user) {
            Some(suspended) => suspended,
            None => {
                let suspended = self.set_standing(user, None).await?;
                self.inner.standings.remember(user, suspended);
                suspended
            }
        };
        if suspended { Err(Error::PermissionDenied("account suspended".into())) } else { Ok(()) }
    }

    /// Whether `user` is suspended, after (un)suspending them.
    pub(crate) async fn set_standing(&self, user: &str, suspend: Option<bool>) -> Result<bool> {
        let user_id = user.to_owned();
        let partition = self.partition_of(&user_id);
        let suspended = self.call(partition, |reply| Command::Standing { user_id, suspend, reply }).await?;
        if suspend.is_some() {
            self.inner.standings.forget(user);
        }
        Ok(suspended)
    }

    /// Opens a device session: replay after `cursor`, then live events.
    /// `gateway_id` ties it to a gateway lease (empty: no lease, for a
    /// gateway in the same process).
    pub fn open_session(
        &self,
        caller: &Caller,
        gateway_id: &str,
        cursor: u64,
        route: Option<&Route>,
    ) -> Result<SessionStream> {
        validate::id("caller.user_id", &caller.user_id)?;
        validate::id("caller.device_id", &caller.device_id)?;
        self.check_route(&caller.user_id, route)?;
        if !gateway_id.is_empty() {
            validate::id("gateway_id", gateway_id)?;
            self.renew_lease(gateway_id);
        }
        if self.inner.stop.is_cancelled() {
            return Err(Error::Unavailable("broker is shutting down".into()));
        }
        let fields = SessionFields {
            session_id: self.inner.next_session.fetch_add(1, Ordering::Relaxed),
            user_id: caller.user_id.clone(),
            device_id: caller.device_id.clone(),
            gateway_id: gateway_id.to_owned(),
        };
        Ok(SessionStream::open(self.inner.router.clone(), fields, cursor, self.inner.config.limits.session_queue))
    }

    /// Extends a gateway's lease; returns how long it lasts.
    pub fn renew_lease(&self, gateway_id: &str) -> Duration {
        let ttl = self.inner.config.limits.lease_ttl;
        self.inner.leases.insert(gateway_id.to_owned(), Instant::now() + ttl);
        ttl
    }

    /// Stops every partition after making their work durable, then syncs
    /// and closes storage. Live sessions end with a goodbye.
    pub async fn shutdown(self) -> Result<()> {
        let mut stopped = Vec::new();
        for partition in 0..self.inner.router.partition_count() {
            let (reply, done) = oneshot::channel();
            if self.inner.router.control(partition, Command::Shutdown { reply }).is_ok() {
                stopped.push(done);
            }
        }
        for done in stopped {
            let _ = done.await;
        }
        // Lanes and the map refresher stop only now: partitions may have
        // waited on fan-out confirmations while stopping.
        self.inner.stop.cancel();
        let tasks = std::mem::take(&mut *self.inner.partitions.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, task) in tasks {
            let _ = task.await;
        }
        self.inner.store.close()?;
        tracing::info!("broker stopped; storage synced");
        Ok(())
    }
}

/// Drops the sessions of gateways whose lease ran out, so a gateway that
/// vanished without closing its streams does not keep users online.
async fn reap_leases(inner: std::sync::Weak<Inner>) {
    loop {
        let every = match inner.upgrade() {
            Some(inner) => (inner.config.limits.lease_ttl / 4).max(Duration::from_millis(50)),
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.stop.is_cancelled() {
            return;
        }
        let now = Instant::now();
        let expired: Vec<String> =
            inner.leases.iter().filter(|lease| *lease.value() <= now).map(|lease| lease.key().clone()).collect();
        for gateway_id in expired {
            inner.leases.remove(&gateway_id);
            tracing::warn!(gateway_id, "gateway lease expired; dropping its sessions");
            inner.router.broadcast(|| Command::DropGateway { gateway_id: gateway_id.clone() });
        }
    }
}
