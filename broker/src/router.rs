//! Routing commands to partitions, on this node or on the node that owns
//! them.
//!
//! Each local partition has two queues. Client commands use a bounded one:
//! when it is full the caller gets RESOURCE_EXHAUSTED at once (invariant 6)
//! instead of queueing without limit. Partition-to-partition traffic
//! (confirmations, ephemeral signals, replay reads) uses an unbounded one,
//! because a partition must never block on another (two partitions fanning
//! out to each other would deadlock); it is bounded in effect by the client
//! queues, since every internal message is caused by a bounded number of
//! client commands (at most one per member of a bounded group).
//!
//! A partition owned by another node is reached through [`crate::cluster`]:
//! the command is forwarded with the epoch this node saw.
//!
//! Fan-out updates travel in *lanes*, one per target partition per node:
//! a lane delivers in order, one delivery at a time (batching whatever
//! queued meanwhile), and retries a delivery until the target has it
//! durable, re-resolving the owner on every attempt. Order matters because
//! a user partition drops a message at or below the newest seq it logged
//! for that user and conversation (that is how re-sends are deduplicated):
//! if a later batch could overtake an earlier one that was refused (target
//! down, frozen for a move, moved), the earlier one would be dropped as a
//! duplicate. One lane per target keeps every source's batches in order,
//! across node failures and partition moves alike.
//!
//! A lane may carry updates whose source batch is not durable yet (one
//! round per message, `storage::durability`): to a local partition they go
//! at once, with the source's generation to wait for and the append the
//! writer waits for; to another node only once the source's batch is
//! durable, since that node's log knows nothing of ours.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use imsg_proto::internal::v1::{PartitionClaim, PartitionState, call_partition_request::Call};
use tokio::sync::{
    mpsc::{self, error::TrySendError},
    oneshot,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    cluster::{Owner, Peers, wire},
    error::{Error, Result},
    events::UpdateItem,
    ids::{PartitionId, partition_of},
    mailbox::{Command, Traced},
    storage::{Durability, Owed},
};

/// The queues of one local partition.
#[derive(Clone)]
pub struct PartitionQueues {
    pub commands: mpsc::Sender<Traced>,
    pub internal: mpsc::UnboundedSender<Traced>,
}

/// How this node holds a partition.
#[derive(Clone, Default)]
pub enum Slot {
    /// Not here: another node owns it (or nobody known does).
    #[default]
    Absent,
    Serving {
        queues: PartitionQueues,
        epoch: u64,
    },
    /// Being frozen for a move: client commands are refused, internal
    /// traffic still flows until the partition has drained.
    Draining {
        queues: PartitionQueues,
        epoch: u64,
    },
    /// Frozen: its task stopped, its rows are read-only (being copied).
    Frozen {
        epoch: u64,
    },
}

/// Most updates one lane delivery carries.
const LANE_BATCH: usize = 512;

/// Longest pause between two delivery attempts of a lane.
const LANE_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Knows where every partition is. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    partitions: u32,
    slots: Vec<RwLock<Slot>>,
    /// The other nodes; `None` for a standalone node.
    peers: Option<Arc<Peers>>,
    lanes: Vec<mpsc::UnboundedSender<LaneItem>>,
}

struct LaneItem {
    items: Vec<UpdateItem>,
    written: Option<Written>,
    done: FanoutConfirmation,
    /// The span of the command whose updates these are.
    span: tracing::Span,
}

/// One outbox batch's fan-out, confirmed by its targets' lanes: the last
/// lane to have its updates durable at the target tells the source
/// partition (`FanoutDone`). A lane that never confirms (this node
/// stopping) drops its share, and the batch stays in the outbox, re-sent on
/// the next start. Counting here instead of awaiting one receiver per
/// target spares a task per batch.
#[derive(Clone)]
pub struct FanoutConfirmation(Arc<Confirmations>);

struct Confirmations {
    remaining: AtomicUsize,
    router: Router,
    source: PartitionId,
    batch: u64,
}

impl FanoutConfirmation {
    /// Waits for `targets` confirmations (none: confirmed at once).
    pub fn new(router: &Router, source: PartitionId, batch: u64, targets: usize) -> Self {
        let confirmation = Self(Arc::new(Confirmations {
            remaining: AtomicUsize::new(targets),
            router: router.clone(),
            source,
            batch,
        }));
        if targets == 0 {
            confirmation.done();
        }
        confirmation
    }

    /// Confirms this share; the last one tells the source partition.
    fn confirm(self) {
        if self.0.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done();
        }
    }

    fn done(&self) {
        self.0.router.internal(self.0.source, Command::FanoutDone { batch: self.0.batch });
    }
}

/// Updates whose source batch was handed to this node's writer, perhaps
/// not yet durable: its generation, and the append the writer waits for.
pub struct Written {
    pub generation: u64,
    pub owed: Owed,
}

/// What one lane delivery waits for: the newest source generation among
/// its updates and the appends owed for them.
#[derive(Default)]
struct Following {
    after: u64,
    durability: Option<Arc<Durability>>,
    owed: Vec<Owed>,
}

impl Following {
    fn add(&mut self, written: Option<Written>) {
        if let Some(Written { generation, owed }) = written {
            self.after = self.after.max(generation);
            self.durability.get_or_insert_with(|| owed.durability().clone());
            self.owed.push(owed);
        }
    }
}

impl Router {
    /// A router with no local partitions yet; lanes run until `stop`.
    pub fn new(partitions: u32, peers: Option<Arc<Peers>>, stop: CancellationToken) -> Self {
        let mut lanes = Vec::with_capacity(partitions as usize);
        let mut receivers = Vec::with_capacity(partitions as usize);
        for _ in 0..partitions {
            let (tx, rx) = mpsc::unbounded_channel();
            lanes.push(tx);
            receivers.push(rx);
        }
        let router = Self {
            inner: Arc::new(Inner {
                partitions,
                slots: (0..partitions).map(|_| RwLock::new(Slot::Absent)).collect(),
                peers,
                lanes,
            }),
        };
        for (partition, receiver) in receivers.into_iter().enumerate() {
            tokio::spawn(router.clone().run_lane(partition as PartitionId, receiver, stop.clone()));
        }
        router
    }

    pub fn partition_count(&self) -> u32 {
        self.inner.partitions
    }

    pub fn partition_of(&self, key: &str) -> PartitionId {
        partition_of(key, self.inner.partitions)
    }

    pub fn peers(&self) -> Option<&Arc<Peers>> {
        self.inner.peers.as_ref()
    }

    /// Groups keys (user or conversation ids) by the partition that owns
    /// them, so each partition gets one command for all of its keys.
    pub fn group_by_partition<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a String>,
    ) -> BTreeMap<PartitionId, Vec<String>> {
        let mut groups: BTreeMap<PartitionId, Vec<String>> = BTreeMap::new();
        for key in keys {
            groups.entry(self.partition_of(key)).or_default().push(key.clone());
        }
        groups
    }

    /// How this node holds `partition` now.
    pub fn slot_of(&self, partition: PartitionId) -> Slot {
        self.inner
            .slots
            .get(partition as usize)
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// How traffic treats this node's hold on `partition`: a local copy
    /// that another node is known to hold at a higher epoch (a move whose
    /// release never reached this node, until it steps down) counts as
    /// absent, so nothing reads or writes it and traffic goes to the owner.
    fn routing_slot(&self, partition: PartitionId) -> Slot {
        let slot = self.slot_of(partition);
        let held = match &slot {
            Slot::Absent => return slot,
            Slot::Serving { epoch, .. } | Slot::Draining { epoch, .. } | Slot::Frozen { epoch } => *epoch,
        };
        match self.remote_owner(partition) {
            Some(owner) if owner.epoch > held => Slot::Absent,
            _ => slot,
        }
    }

    pub fn set_slot(&self, partition: PartitionId, slot: Slot) {
        if let Some(s) = self.inner.slots.get(partition as usize) {
            *s.write().unwrap_or_else(|e| e.into_inner()) = slot;
        }
    }

    /// The epoch at which this node holds `partition`, if it does.
    pub fn local_epoch(&self, partition: PartitionId) -> Option<u64> {
        match self.slot_of(partition) {
            Slot::Absent => None,
            Slot::Serving { epoch, .. } | Slot::Draining { epoch, .. } | Slot::Frozen { epoch } => Some(epoch),
        }
    }

    /// Every partition this node holds, as it reports them to others.
    pub fn claims(&self) -> Vec<PartitionClaim> {
        (0..self.inner.partitions)
            .filter_map(|partition| {
                let (epoch, state) = match self.slot_of(partition) {
                    Slot::Absent => return None,
                    Slot::Serving { epoch, .. } => (epoch, PartitionState::Serving),
                    Slot::Draining { epoch, .. } | Slot::Frozen { epoch } => (epoch, PartitionState::Frozen),
                };
                Some(PartitionClaim { partition, epoch, state: state as i32 })
            })
            .collect()
    }

    /// Refuses a client request for a partition this node does not serve,
    /// or serves at another epoch than the sender saw (`None`: any epoch).
    pub fn check_owner(&self, partition: PartitionId, epoch: Option<u64>) -> Result<()> {
        self.check(partition, epoch, false)
    }

    /// Like [`Self::check_owner`] for a call from another node: a draining
    /// partition still takes fan-out and reads until it is frozen.
    pub fn check_internal(&self, partition: PartitionId, epoch: u64) -> Result<()> {
        self.check(partition, Some(epoch), true)
    }

    fn check(&self, partition: PartitionId, epoch: Option<u64>, internal: bool) -> Result<()> {
        let held = match self.routing_slot(partition) {
            Slot::Serving { epoch, .. } => epoch,
            Slot::Draining { epoch, .. } if internal => epoch,
            Slot::Draining { .. } | Slot::Frozen { .. } => {
                return Err(moving(partition));
            }
            Slot::Absent => {
                let owner = self
                    .remote_owner(partition)
                    .map_or("unknown".to_owned(), |o| format!("node {} at epoch {}", o.node, o.epoch));
                return Err(Error::NotOwner(format!(
                    "partition {partition} is not owned by this node (owner: {owner})"
                )));
            }
        };
        match epoch {
            Some(seen) if seen != held => Err(Error::NotOwner(format!(
                "stale epoch for partition {partition}: request has {seen}, this node holds it at {held}"
            ))),
            _ => Ok(()),
        }
    }

    fn remote_owner(&self, partition: PartitionId) -> Option<Owner> {
        self.inner.peers.as_ref().and_then(|peers| peers.owner(partition))
    }

    /// Sends a command to a partition on another node, or explains why not.
    fn forward(&self, partition: PartitionId, command: Command) -> Result<()> {
        let peers = self.inner.peers.as_ref().ok_or_else(|| {
            Error::Unavailable(format!("partition {partition} is not served by this standalone node"))
        })?;
        let owner = self.remote_owner(partition).ok_or_else(|| {
            peers.refresh_soon();
            Error::Unavailable(format!("no node is known to own partition {partition} yet; retry"))
        })?;
        if !owner.serving {
            return Err(moving(partition));
        }
        wire::forward(peers, owner, partition, command).map_err(|_| {
            Error::NotOwner(format!("partition {partition} is owned by node {}; this command runs there", owner.node))
        })
    }

    /// Queues a client command, refusing at once when the partition is full.
    pub fn submit(&self, partition: PartitionId, command: Command) -> Result<()> {
        match self.routing_slot(partition) {
            Slot::Serving { queues, .. } => {
                queues.commands.try_send(Traced::new(command)).map_err(|error| match error {
                    TrySendError::Full(_) => Error::PartitionOverloaded { partition },
                    TrySendError::Closed(_) => Error::Unavailable(format!("partition {partition} is stopped")),
                })
            }
            Slot::Draining { .. } | Slot::Frozen { .. } => Err(moving(partition)),
            Slot::Absent => self.forward(partition, command),
        }
    }

    /// Queues partition-to-partition traffic, here or on the owner. Returns
    /// false when it could not be queued (a stopped or moving target: its
    /// work is then redone from durable state, or was ephemeral).
    pub fn internal(&self, partition: PartitionId, command: Command) -> bool {
        self.try_internal(partition, command).is_ok()
    }

    /// [`Self::internal`], saying why it could not be queued.
    pub fn try_internal(&self, partition: PartitionId, command: Command) -> Result<()> {
        self.enqueue_internal(partition, self.routing_slot(partition), command, |command| {
            self.forward(partition, command)
        })
    }

    /// Queues traffic that only a local partition may take (sessions, a
    /// call forwarded by another node).
    pub fn local(&self, partition: PartitionId, command: Command) -> Result<()> {
        self.enqueue_internal(partition, self.routing_slot(partition), command, |_| Err(not_here(partition)))
    }

    /// Queues a command that controls the partition task itself (freeze,
    /// shutdown): it reaches the task even when another node outranks it,
    /// since that is exactly when the task must be frozen.
    pub fn control(&self, partition: PartitionId, command: Command) -> Result<()> {
        self.enqueue_internal(partition, self.slot_of(partition), command, |_| Err(not_here(partition)))
    }

    /// Queues on the internal queue of the partition held as `slot`;
    /// `absent` decides what happens when it is not held here.
    fn enqueue_internal(
        &self,
        partition: PartitionId,
        slot: Slot,
        command: Command,
        absent: impl FnOnce(Command) -> Result<()>,
    ) -> Result<()> {
        match slot {
            Slot::Serving { queues, .. } | Slot::Draining { queues, .. } => queues
                .internal
                .send(Traced::new(command))
                .map_err(|_| Error::Unavailable(format!("partition {partition} is stopped"))),
            Slot::Frozen { .. } => Err(moving(partition)),
            Slot::Absent => absent(command),
        }
    }

    /// Every local partition (for node-wide notices such as a lost gateway).
    pub fn broadcast(&self, make: impl Fn() -> Command) {
        for partition in 0..self.inner.partitions {
            let _ = self.local(partition, make());
        }
    }

    /// Hands fan-out updates to the lane of their target partition, which
    /// confirms `done` once they are durable there. `written`: the source
    /// batch they follow, if it may not be durable yet.
    pub fn deliver_updates(
        &self,
        partition: PartitionId,
        items: Vec<UpdateItem>,
        written: Option<Written>,
        done: FanoutConfirmation,
    ) {
        if let Some(lane) = self.inner.lanes.get(partition as usize) {
            let _ = lane.send(LaneItem { items, written, done, span: crate::telemetry::carried() });
        }
    }

    async fn run_lane(
        self,
        partition: PartitionId,
        mut queue: mpsc::UnboundedReceiver<LaneItem>,
        stop: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                item = queue.recv() => match item { Some(item) => item, None => return },
            };
            // A batch mixing several commands' updates belongs to the
            // trace of the first, and links to the others'.
            let span = if crate::telemetry::exporting() {
                tracing::info_span!(parent: &first.span, "fanout", partition, updates = tracing::field::Empty)
            } else {
                tracing::Span::none()
            };
            let mut waiting = vec![first.done];
            let mut items = first.items;
            let mut following = Following::default();
            following.add(first.written);
            while items.len() < LANE_BATCH {
                match queue.try_recv() {
                    Ok(more) => {
                        crate::telemetry::link(&span, &more.span);
                        items.extend(more.items);
                        following.add(more.written);
                        waiting.push(more.done);
                    }
                    Err(_) => break,
                }
            }
            span.record("updates", items.len());
            let mut backoff = Duration::from_millis(10);
            loop {
                match self.deliver_once(partition, &items, &mut following).instrument(span.clone()).await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::debug!(partition, %error, "fan-out delivery failed; retrying in order");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(LANE_MAX_BACKOFF);
                    }
                }
            }
            for done in waiting {
                done.confirm();
            }
        }
    }

    async fn deliver_once(
        &self,
        partition: PartitionId,
        items: &[UpdateItem],
        following: &mut Following,
    ) -> Result<()> {
        let local = match self.routing_slot(partition) {
            Slot::Serving { queues, .. } | Slot::Draining { queues, .. } => Some(queues.internal),
            Slot::Frozen { .. } => {
                following.owed.clear(); // not appended for now: rounds need not wait
                return Err(moving(partition));
            }
            Slot::Absent => None,
        };
        if let Some(internal) = local {
            let (done, applied) = oneshot::channel();
            let (after, owed) = (following.after, std::mem::take(&mut following.owed));
            internal
                .send(Traced::new(Command::ApplyUpdates { items: items.to_vec(), after, owed, done }))
                .map_err(|_| Error::Unavailable(format!("partition {partition} is stopped")))?;
            return applied.await.map_err(|_| Error::Unavailable(format!("partition {partition} refused the updates")));
        }
        following.owed.clear();
        if let Some(durability) = &following.durability {
            durability.durable_at(following.after).await;
        }
        let peers = self.inner.peers.as_ref().ok_or_else(|| Error::Unavailable("no peers".into()))?;
        let owner = peers
            .owner(partition)
            .ok_or_else(|| Error::Unavailable(format!("no node is known to own partition {partition}")))?;
        peers.call_partition(owner, partition, Call::ApplyUpdates(wire::encode_updates(items))).await.map(|_| ())
    }
}

fn not_here(partition: PartitionId) -> Error {
    Error::NotOwner(format!("partition {partition} is not owned by this node"))
}

/// The refusal for a partition in the middle of a move (retryable).
fn moving(partition: PartitionId) -> Error {
    Error::PartitionMoving { partition }
}
