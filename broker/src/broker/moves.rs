//! This node's side of a partition move (the operator procedure is
//! `crate::cluster::moves`): freezing, exporting, importing, releasing, and
//! stepping down where another node claims a partition at a higher epoch.
//! Every step holds the node's ownership lock.

use imsg_proto::internal::v1::{ExportPartitionRequest, Route};
use tokio::sync::oneshot;

use super::Broker;
use crate::{
    cluster::Peers,
    error::{Error, Result},
    ids::PartitionId,
    partition::Command,
    router::Slot,
    storage::{OWNERSHIP_KEY, OwnershipRecord, PartitionStore, WriteBatch},
};

impl Broker {
    /// Move step 1: the partition stops taking writes, drains, and stops.
    pub async fn freeze_partition(&self, partition: PartitionId, epoch: u64) -> Result<()> {
        let _guard = self.inner.ownership.lock().await;
        if matches!(self.inner.router.slot_of(partition), Slot::Frozen { epoch: held } if held == epoch) {
            return Ok(()); // a retried freeze
        }
        self.inner.router.check_owner(partition, Some(epoch))?;
        self.freeze_locked(partition, epoch).await
    }

    async fn freeze_locked(&self, partition: PartitionId, epoch: u64) -> Result<()> {
        let Slot::Serving { queues, .. } = self.inner.router.slot_of(partition) else {
            return Err(Error::FailedPrecondition(format!("partition {partition} is not serving")));
        };
        self.inner.router.set_slot(partition, Slot::Draining { queues, epoch });
        let (reply, frozen) = oneshot::channel();
        self.inner.router.control(partition, Command::Freeze { reply })?;
        let _ = frozen.await;
        let task = self.inner.partitions.lock().unwrap_or_else(|e| e.into_inner()).remove(&partition);
        if let Some(task) = task {
            let _ = task.await;
        }
        self.inner.router.set_slot(partition, Slot::Frozen { epoch });
        Ok(())
    }

    /// Undoes a freeze (an abandoned move): serve again at the same epoch.
    pub async fn thaw_partition(&self, partition: PartitionId, epoch: u64) -> Result<()> {
        let _guard = self.inner.ownership.lock().await;
        match self.inner.router.slot_of(partition) {
            Slot::Frozen { epoch: held } if held == epoch => self.start_partition(partition, epoch),
            Slot::Serving { epoch: held, .. } if held == epoch => Ok(()),
            _ => Err(Error::FailedPrecondition(format!("partition {partition} is not frozen here at epoch {epoch}"))),
        }
    }

    /// Move step 2, old owner: rows of a frozen partition, in key order,
    /// `limit` at a time after `after`.
    pub fn export_rows(
        &self,
        partition: PartitionId,
        epoch: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.check_frozen(partition, epoch)?;
        self.inner.store.partition(partition)?.rows_after(after, limit)
    }

    /// Refuses to export a partition that is not frozen here at `epoch`.
    pub fn check_frozen(&self, partition: PartitionId, epoch: u64) -> Result<()> {
        match self.inner.router.slot_of(partition) {
            Slot::Frozen { epoch: held } if held == epoch => Ok(()),
            _ => Err(Error::FailedPrecondition(format!(
                "partition {partition} is not frozen here at epoch {epoch}; freeze it first"
            ))),
        }
    }

    /// Move step 2, new owner: copies a frozen partition from `source`,
    /// makes the copy durable with the new epoch, and serves it.
    pub async fn import_partition(
        &self,
        partition: PartitionId,
        epoch: u64,
        source_url: &str,
        source_epoch: u64,
    ) -> Result<u64> {
        let _guard = self.inner.ownership.lock().await;
        if let Some(held) = self.inner.router.local_epoch(partition) {
            if held == epoch {
                return Ok(0); // a retried import
            }
            return Err(Error::FailedPrecondition(format!("partition {partition} is already here at epoch {held}")));
        }
        if epoch <= source_epoch {
            return Err(Error::invalid("route.epoch", "the new epoch must be above the source's"));
        }
        let store = self.inner.store.partition(partition)?;
        // Leftovers of an earlier stay here go first.
        let mut generation = store.clear_data()?;
        let mut client = crate::cluster::peers::connect(source_url)?;
        let request = ExportPartitionRequest { route: Some(Route { partition, epoch: source_epoch }) };
        let mut frames = client
            .export_partition(request)
            .await
            .map_err(|status| Error::Unavailable(format!("exporting from {source_url}: {}", status.message())))?
            .into_inner();
        let mut copied = 0u64;
        while let Some(frame) = frames
            .message()
            .await
            .map_err(|status| Error::Unavailable(format!("exporting from {source_url}: {}", status.message())))?
        {
            let mut batch = WriteBatch::default();
            for row in frame.rows {
                // The source's ownership row is replaced below.
                if row.key != OWNERSHIP_KEY {
                    batch.put_row(row.key, row.value);
                    copied += 1;
                }
            }
            generation = store.apply(batch, true);
        }
        let mut claim = WriteBatch::default();
        claim.put_ownership(&OwnershipRecord { epoch, released: false });
        generation = generation.max(store.apply(claim, true));
        store.durable(generation).await;
        self.start_partition(partition, epoch)?;
        if let Some(peers) = self.inner.router.peers() {
            peers.refresh_soon();
        }
        tracing::info!(partition, epoch, rows = copied, source_url, "partition imported");
        Ok(copied)
    }

    /// Move step 3, old owner: the partition belongs to another node at
    /// `epoch` now; record that durably and never serve it again.
    pub async fn release_partition(&self, partition: PartitionId, epoch: u64, new_owner: u32) -> Result<()> {
        let _guard = self.inner.ownership.lock().await;
        self.release_locked(partition, epoch, new_owner).await
    }

    async fn release_locked(&self, partition: PartitionId, epoch: u64, new_owner: u32) -> Result<()> {
        match self.inner.router.slot_of(partition) {
            Slot::Frozen { epoch: held } if held < epoch => {}
            Slot::Absent => return Ok(()),
            _ => {
                return Err(Error::FailedPrecondition(format!(
                    "partition {partition} must be frozen here below epoch {epoch} to be released"
                )));
            }
        }
        release_store(&self.inner.store.partition(partition)?, epoch).await?;
        self.inner.router.set_slot(partition, Slot::Absent);
        if let Some(peers) = self.inner.router.peers() {
            peers.refresh_soon();
        }
        tracing::info!(partition, epoch, new_owner, "partition released");
        Ok(())
    }

    /// Fencing's safety net: a partition another node claims at a higher
    /// epoch (a move whose last step never reached us) is not ours.
    pub(super) fn step_down_where_outranked(&self, peers: &Peers) {
        for partition in 0..self.inner.config.partitions {
            let (Some(held), Some(owner)) = (self.inner.router.local_epoch(partition), peers.owner(partition)) else {
                continue;
            };
            if owner.epoch <= held {
                continue;
            }
            let broker = self.clone();
            tokio::spawn(async move {
                let _guard = broker.inner.ownership.lock().await;
                tracing::warn!(partition, held, newer = owner.epoch, node = owner.node, "outranked: stepping down");
                if matches!(broker.inner.router.slot_of(partition), Slot::Serving { .. })
                    && let Err(error) = broker.freeze_locked(partition, held).await
                {
                    tracing::error!(partition, %error, "stepping down failed");
                    return;
                }
                if let Err(error) = broker.release_locked(partition, owner.epoch, owner.node).await {
                    tracing::error!(partition, %error, "stepping down failed");
                }
            });
        }
    }
}

/// Records durably that a partition belongs to another node at `epoch`,
/// then drops this node's copy of its rows: the new owner has them durably
/// (a node claims a partition only once its import is durable).
pub(super) async fn release_store(store: &PartitionStore, epoch: u64) -> Result<()> {
    write_ownership(store, OwnershipRecord { epoch, released: true }).await;
    let generation = store.clear_data()?;
    store.durable(generation).await;
    Ok(())
}

/// Writes a partition's ownership record and waits until it is durable.
pub(super) async fn write_ownership(store: &PartitionStore, record: OwnershipRecord) {
    let mut batch = WriteBatch::default();
    batch.put_ownership(&record);
    let generation = store.apply(batch, true);
    store.durable(generation).await;
}
