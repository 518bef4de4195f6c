//! Storage: the only module that touches sled.
//!
//! One sled database per node, one tree per partition; a partition's
//! messages are in a file of their own ([`message_log`]), not in sled. The
//! partition logic sees typed reads and a typed [`WriteBatch`]; keys and
//! encodings live here.
//!
//! ## Layout (rows per message)
//! sled rows cost ~6.5 us of CPU each, so a send writes exactly one row, the
//! message itself. Everything else is coalesced per write batch (one outbox
//! row, one update-log row per user partition, one meta row; the outbox,
//! update-log and meta rows are held in memory, see [`held`], and the update log
//! reaches sled compacted, a tick's batches in one row; the message row is
//! held too, and reaches sled from the checkpointer's thread) or derived in
//! memory at load: a conversation's last seq is its last message key, the
//! dedup window is rebuilt from the tail of its messages.
//!
//! | key                       | value                  |
//! |---------------------------|------------------------|
//! | `c` conv                  | [`ConversationRecord`] |
//! | `m` conv `/` seq (BE u64) | `imsg.v1.Message` + [`SealedContent`], held in memory until the checkpointer writes it ([`held`]) to the partition's message log, not sled ([`message_log`]) |
//! | `a` conv `/` seq          | [`ReactionsRecord`]    |
//! | `h` conv `/` user `/` seq | (empty): deleted for that user |
//! | `K` slot (BE u64)         | content key, in the key file, not sled ([`shred`]) |
//! | `r` conv `/` user         | [`ReceiptRecord`]      |
//! | `o` batch (BE u64)        | [`OutboxRecord`]       |
//! | `u` first cursor (BE u64) | [`UpdateBatchRecord`]: a batch as written, held in memory ([`held`]) |
//! | `u` first cursor `+`      | [`UpdateBatchRecord`]: batches compacted into one row |
//! | `s` user                  | [`SettingsRecord`]     |
//! | `i` user `/` conv         | (empty): inbox member; `r`: not accepted (a request) |
//! | `l` user `/` other user   | [`RelationRecord`]: blocks, contact |
//! | `t` user `/` device       | [`PushTargetRecord`]   |
//! | `n` user `/` conv         | [`NotifyRecord`]: mute, previews |
//! | `P` number (BE u64)       | [`PushRecord`]: the push outbox |
//! | `R` number (BE u64)       | `imsg.v1.Report` with its evidence (moderation partition) |
//! | `A` number (BE u64)       | `imsg.v1.AuditEntry` (moderation partition) |
//! | `M`                       | [`PartitionMeta`], held in memory until the next checkpoint ([`held`]) |
//! | `O`                       | [`OwnershipRecord`]    |
//!
//! Ids never contain `/` (see `validate::id`) and conversation ids have a
//! fixed length, so prefix scans cannot run into a neighbour's keys.
//!
//! ## Durability (invariant 1)
//! A batch is durable once its operations are in the write-ahead log
//! ([`wal`]): the writer thread ([`durability`]) appends everything written
//! since the last round with one `write` and one `fdatasync` (group commit),
//! for all partitions at once, and only *then* applies the operations to
//! sled, with plain inserts and removes. sled's own batches are not used on
//! this path: each `apply_batch` seals sled's log buffer and writes it out
//! (a `pwrite`, a `sync_file_range` and a wake-up of every sled I/O thread),
//! which cost more than everything else the broker did. Applying after the
//! sync means sled never holds a change the WAL does not, so recovery
//! (sled's state, then the WAL replayed) never resurrects half of an
//! unacknowledged batch. Partitions therefore read sled only for what has
//! been published (see `partition`).
//!
//! sled is made durable only at checkpoints, by the checkpointer thread, and
//! log segments are deleted only once sled durably records that it holds
//! them ([`durability`] says why that is safe at any
//! instant of a power cut). Only that thread ever flushes sled, which also
//! avoids the concurrent `flush_async` deadlock of sled 0.34
//! (spacejam/sled#1308). sled never writes a blob file, the one part of it
//! that is not power-safe ([`sled_files`]). Any failure of the writer stops
//! the node ([`failstop`]).
//!
//! The argument is tested by cutting power: `gateway/tests/e2e/powercut.rs`
//! runs the server on a filesystem that forgets every unsynced write
//! (docs/durability.md).

pub mod checkpoint;
pub mod durability;
pub mod failstop;
pub mod held;
pub mod id_secret;
pub mod message_log;
pub mod moderation_rows;
pub mod records;
pub mod rows;
pub mod shred;
pub mod sled_files;
pub mod user_rows;
pub mod wal;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

pub use self::durability::{Durability, Owed};
use self::{
    checkpoint::CheckpointedFiles,
    durability::{Destination, Writer},
    failstop::FailStop,
    held::HeldRowsByPartition,
    message_log::MessageLogs,
    shred::KeyFiles,
    sled_files::SledFiles,
    wal::LogDir,
};
pub use self::{
    records::*,
    rows::{OWNERSHIP_KEY, PartitionStore, WriteBatch},
};
use crate::{
    config::BrokerConfig,
    error::{Error, Result},
    ids::PartitionId,
};

/// The node's sled database and its durability machinery.
pub struct Store {
    /// sled, the key files and message logs, the held rows: what a
    /// checkpoint makes durable besides the log.
    files: CheckpointedFiles,
    dir: PathBuf,
    log: Arc<dyn LogDir>,
    rows_written: Arc<RowCounts>,
    durability: Arc<Durability>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Store {
    /// Opens (or creates) the database under `config.data_dir`, replays the
    /// write-ahead log, and starts the writer, checkpointer and watchdog
    /// threads. Refuses
    /// a directory created with another partition count: placement would
    /// silently change.
    pub fn open(config: &BrokerConfig) -> Result<Arc<Self>> {
        Self::open_with(config, Arc::new(wal::Segments::new(&config.data_dir)), FailStop::default())
    }

    /// [`Self::open`] with the log on `log` (a simulated disk in tests) and
    /// failures reported to `fail_stop`.
    pub fn open_with(config: &BrokerConfig, log: Arc<dyn LogDir>, fail_stop: FailStop) -> Result<Arc<Self>> {
        let db = sled_files::open(&config.data_dir, config.cache_capacity_bytes)?;
        let partitions_key = b"partitions";
        match db.get(partitions_key)? {
            Some(stored) => {
                let stored = u32::from_be_bytes(
                    stored.as_ref().try_into().map_err(|_| Error::Internal("bad partition count".into()))?,
                );
                if stored != config.partitions {
                    return Err(Error::FailedPrecondition(format!(
                        "data dir was created with {stored} partitions, not {}",
                        config.partitions
                    )));
                }
            }
            None => {
                db.insert(partitions_key, &config.partitions.to_be_bytes())?;
            }
        }
        let files = CheckpointedFiles {
            db: db.clone(),
            keys: Arc::new(KeyFiles::new(&config.data_dir)),
            messages: Arc::new(MessageLogs::new(&config.data_dir, db.clone())),
            held: Arc::new(HeldRowsByPartition::default()),
        };
        let (replayed, next_segment) = replay(&files, &*log)?;
        // Make the replayed state durable, marked as holding every segment
        // so far, then start an empty log.
        let old = log.list()?;
        checkpoint::checkpoint(&files, &SledFiles::new(&config.data_dir), &*log, next_segment)?;
        if replayed > 0 {
            tracing::info!(operations = replayed, segments = old.len(), "replayed the write-ahead log");
        }
        let segment = log.create(next_segment)?;
        let durability = Arc::new(Durability::new(config.fsync, config.fanout_linger, config.commit_window, fail_stop));
        let writer = {
            let durability = durability.clone();
            let writer = Writer {
                log: log.clone(),
                segment,
                number: next_segment,
                checkpoint_every: config.checkpoint_interval,
                fault: config.inject_fault,
            };
            std::thread::Builder::new()
                .name("imsg-writer".into())
                .spawn(move || durability.run_writer(writer))
                .map_err(|e| Error::Internal(format!("spawning the writer: {e}")))?
        };
        let checkpointer = {
            let durability = durability.clone();
            let files = files.clone();
            let (dir, log) = (config.data_dir.clone(), log.clone());
            std::thread::Builder::new()
                .name("imsg-checkpoint".into())
                .spawn(move || durability.run_checkpointer(files, dir, log))
                .map_err(|e| Error::Internal(format!("spawning the checkpointer: {e}")))?
        };
        let watchdog = {
            let durability = durability.clone();
            let stall_timeout = config.writer_stall_timeout;
            std::thread::Builder::new()
                .name("imsg-watchdog".into())
                .spawn(move || durability.run_watchdog(stall_timeout))
                .map_err(|e| Error::Internal(format!("spawning the watchdog: {e}")))?
        };
        Ok(Arc::new(Self {
            files,
            dir: config.data_dir.clone(),
            log,
            rows_written: Arc::new(RowCounts::default()),
            durability,
            threads: Mutex::new(vec![writer, checkpointer, watchdog]),
        }))
    }

    /// The tree of one partition.
    pub fn partition(&self, id: PartitionId) -> Result<PartitionStore> {
        let tree = self.files.db.open_tree(tree_name(id))?;
        let messages = self.files.messages.get(id, &tree)?;
        Ok(PartitionStore {
            id,
            files: Destination {
                held: Some(self.files.held.get(id, &tree, &messages)),
                keys: self.files.keys.get(id)?,
                tree,
                messages,
            },
            rows_written: self.rows_written.clone(),
            durability: self.durability.clone(),
        })
    }

    /// Rows written or removed in sled, the message logs and the key files
    /// since start, by every partition: what the commit path has cost (and
    /// proof that ephemeral signals cost none). Rows held in memory
    /// ([`held`]: the outbox, update-log batches before their compaction)
    /// are not counted: they cost sled nothing unless a checkpoint finds
    /// them still held.
    pub fn rows_written(&self) -> u64 {
        self.rows_written.total()
    }

    /// [`Self::rows_written`] by kind: the first byte of the row key
    /// (`m` message, `o` outbox, `u` update-log batch, ...; `storage::rows`).
    pub fn rows_written_by_kind(&self) -> BTreeMap<char, u64> {
        self.rows_written.by_kind()
    }

    pub fn durability(&self) -> &Arc<Durability> {
        &self.durability
    }

    /// Stops the threads after a last durable round, then checkpoints so the
    /// next start has nothing to replay. Idempotent. Refuses after a
    /// storage failure: nothing may pretend the data is safe then.
    pub fn close(&self) -> Result<()> {
        self.durability.stop();
        for handle in std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner())) {
            let _ = handle.join();
        }
        if let Some(reason) = self.durability.fail_stop().reason() {
            return Err(Error::Internal(format!("storage failed earlier: {reason}")));
        }
        // Everything logged is applied: a fresh, empty segment carries the
        // numbering on, and every older one goes at this last checkpoint
        // (content keys of unsent messages must not wait in the log for
        // the next start).
        let Some(&newest) = self.log.list()?.last() else { return Ok(()) };
        drop(self.log.create(newest + 1)?);
        checkpoint::checkpoint(&self.files, &SledFiles::new(&self.dir), &*self.log, newest + 1)
    }
}

fn tree_name(id: PartitionId) -> String {
    format!("p{id:05}")
}

/// Re-applies every logged operation sled does not already hold, in log
/// order. Returns how many there were and the number for the next segment.
///
/// Segments below sled's `wal_from` marker are skipped: a checkpoint made
/// them redundant, and a deletion that a power cut undid must not replay
/// old values over newer ones.
fn replay(files: &CheckpointedFiles, log: &dyn LogDir) -> Result<(usize, u64)> {
    let CheckpointedFiles { db, keys, messages, .. } = files;
    let wal_from = checkpoint::wal_from(db)?;
    let numbers: Vec<u64> = log.list()?.into_iter().filter(|n| *n >= wal_from).collect();
    let mut replayed = 0;
    for (i, number) in numbers.iter().enumerate() {
        let (ops, complete) = wal::decode_segment(&log.read(*number)?);
        if !complete && i + 1 < numbers.len() {
            return Err(Error::Internal(format!("WAL segment {} is damaged before its end", log.describe(*number))));
        }
        let mut by_tree: BTreeMap<u32, Vec<wal::Op>> = BTreeMap::new();
        for (tree, op) in ops {
            by_tree.entry(tree).or_default().push(op);
            replayed += 1;
        }
        let mut batches = Vec::with_capacity(by_tree.len());
        for (tree, ops) in by_tree {
            let tree_of = db.open_tree(tree_name(tree))?;
            let messages = messages.get(tree, &tree_of)?;
            batches.push((Destination { tree: tree_of, messages, keys: keys.get(tree)?, held: None }, ops));
        }
        durability::apply(batches)?;
    }
    let after_listed = log.list()?.last().map_or(1, |n| n + 1);
    Ok((replayed, after_listed.max(wal_from)))
}

#[cfg(test)]
mod tests;

/// Rows written or removed in sled, the message logs or the key files,
/// counted by kind (the key's first byte); transient held rows are left out
/// ([`Store::rows_written`]).
pub(crate) struct RowCounts([AtomicU64; 128]);

impl Default for RowCounts {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl RowCounts {
    pub(crate) fn count(&self, ops: &[wal::Op]) {
        for op in ops {
            let (wal::Op::Put { key, .. } | wal::Op::Remove { key }) = op;
            // Transient held rows seldom reach sled, and the meta row once
            // per checkpoint however often it was written; a held message
            // does, once, at the next checkpoint: it is counted.
            if matches!(held::held_kind(key), Some(held::HeldKind::Transient | held::HeldKind::Meta)) {
                continue;
            }
            let kind = key.first().copied().unwrap_or(0) & 0x7f;
            self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn total(&self) -> u64 {
        self.0.iter().map(|count| count.load(Ordering::Relaxed)).sum()
    }

    fn by_kind(&self) -> BTreeMap<char, u64> {
        let counts = self.0.iter().enumerate().map(|(kind, count)| (kind as u8 as char, count.load(Ordering::Relaxed)));
        counts.filter(|(_, count)| *count > 0).collect()
    }
}
