//! Routing commands to partitions.
//!
//! Each partition has two queues. Client commands use a bounded one: when it
//! is full the caller gets RESOURCE_EXHAUSTED at once (invariant 6) instead
//! of queueing without limit. Partition-to-partition traffic (fan-out,
//! confirmations, ephemeral signals) uses an unbounded one, because a
//! partition must never block on another (two partitions fanning out to each
//! other would deadlock); it is bounded in effect by the client queues, since
//! every internal message is caused by a bounded number of client commands
//! (at most one per member of a bounded group).

use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::{
    error::{Error, Result},
    ids::{PartitionId, partition_of},
    partition::Command,
};

/// The queues of one partition.
pub struct PartitionQueues {
    pub commands: mpsc::Sender<Command>,
    pub internal: mpsc::UnboundedSender<Command>,
}

/// Knows where every partition's queues are.
#[derive(Clone)]
pub struct Router {
    partitions: Arc<[PartitionQueues]>,
}

impl Router {
    pub fn new(partitions: Vec<PartitionQueues>) -> Self {
        Self { partitions: partitions.into() }
    }

    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    pub fn partition_of(&self, key: &str) -> PartitionId {
        partition_of(key, self.partition_count())
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

    /// Queues a client command, refusing at once when the partition is full.
    pub fn submit(&self, partition: PartitionId, command: Command) -> Result<()> {
        let queues = self.queues(partition)?;
        queues.commands.try_send(command).map_err(|error| match error {
            TrySendError::Full(_) => {
                Error::ResourceExhausted(format!("partition {partition} is overloaded; retry later"))
            }
            TrySendError::Closed(_) => Error::Unavailable(format!("partition {partition} is stopped")),
        })
    }

    /// Queues partition-to-partition traffic. Returns false when the target
    /// stopped (its work is then redone from its durable state on restart).
    pub fn internal(&self, partition: PartitionId, command: Command) -> bool {
        self.queues(partition).is_ok_and(|q| q.internal.send(command).is_ok())
    }

    /// Every partition (for node-wide notices such as a lost gateway).
    pub fn broadcast(&self, make: impl Fn() -> Command) {
        for queues in self.partitions.iter() {
            let _ = queues.internal.send(make());
        }
    }

    fn queues(&self, partition: PartitionId) -> Result<&PartitionQueues> {
        self.partitions
            .get(partition as usize)
            .ok_or_else(|| Error::Unavailable(format!("partition {partition} is not served here")))
    }
}
