//! Storage: the only module that touches sled.
//!
//! One sled database per node, one tree per partition. The partition logic
//! sees typed reads and a typed [`WriteBatch`]; keys and encodings live here.
//!
//! ## Layout (rows per message)
//! sled rows cost ~6.5 us of CPU each, so a send writes exactly one row, the
//! message itself. Everything else is coalesced per write batch (one outbox
//! row, one update-log row per user partition, one meta row) or derived in
//! memory at load: a conversation's last seq is its last message key, the
//! dedup window is rebuilt from the tail of its messages.
//!
//! | key                       | value                  |
//! |---------------------------|------------------------|
//! | `c` conv                  | [`ConversationRecord`] |
//! | `m` conv `/` seq (BE u64) | `imsg.v1.Message` + [`SealedContent`] |
//! | `a` conv `/` seq          | [`ReactionsRecord`]    |
//! | `h` conv `/` user `/` seq | (empty): deleted for that user |
//! | `K` slot (BE u64)         | content key, in the key file, not sled ([`shred`]) |
//! | `r` conv `/` user         | [`ReceiptRecord`]      |
//! | `o` batch (BE u64)        | [`OutboxRecord`]       |
//! | `u` first cursor (BE u64) | [`UpdateBatchRecord`]  |
//! | `s` user                  | [`SettingsRecord`]     |
//! | `i` user `/` conv         | (empty): inbox member; `r`: not accepted (a request) |
//! | `l` user `/` other user   | [`RelationRecord`]: blocks, contact |
//! | `t` user `/` device       | [`PushTargetRecord`]   |
//! | `n` user `/` conv         | [`NotifyRecord`]: mute, previews |
//! | `P` number (BE u64)       | [`PushRecord`]: the push outbox |
//! | `R` number (BE u64)       | `imsg.v1.Report` with its evidence (moderation partition) |
//! | `A` number (BE u64)       | `imsg.v1.AuditEntry` (moderation partition) |
//! | `M`                       | [`PartitionMeta`]      |
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
pub mod id_secret;
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

pub use self::durability::Durability;
use self::{
    durability::{Destination, Writer},
    failstop::FailStop,
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
    db: sled::Db,
    keys: Arc<KeyFiles>,
    dir: PathBuf,
    log: Arc<dyn LogDir>,
    rows_written: Arc<AtomicU64>,
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
        let keys = Arc::new(KeyFiles::new(&config.data_dir));
        let (replayed, next_segment) = replay(&db, &keys, &*log)?;
        // Make the replayed state durable, marked as holding every segment
        // so far, then start an empty log.
        let old = log.list()?;
        checkpoint::checkpoint(&db, &keys, &SledFiles::new(&config.data_dir), &*log, next_segment)?;
        if replayed > 0 {
            tracing::info!(operations = replayed, segments = old.len(), "replayed the write-ahead log");
        }
        let segment = log.create(next_segment)?;
        let durability = Arc::new(Durability::new(config.fsync, fail_stop));
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
            let (db, keys, dir, log) = (db.clone(), keys.clone(), config.data_dir.clone(), log.clone());
            std::thread::Builder::new()
                .name("imsg-checkpoint".into())
                .spawn(move || durability.run_checkpointer(db, keys, dir, log))
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
            db,
            keys,
            dir: config.data_dir.clone(),
            log,
            rows_written: Arc::new(AtomicU64::new(0)),
            durability,
            threads: Mutex::new(vec![writer, checkpointer, watchdog]),
        }))
    }

    /// The tree of one partition.
    pub fn partition(&self, id: PartitionId) -> Result<PartitionStore> {
        Ok(PartitionStore {
            id,
            files: Destination { tree: self.db.open_tree(tree_name(id))?, keys: self.keys.get(id)? },
            rows_written: self.rows_written.clone(),
            durability: self.durability.clone(),
        })
    }

    /// Rows written or removed since start, by every partition: what the
    /// commit path has cost (and proof that ephemeral signals cost none).
    pub fn rows_written(&self) -> u64 {
        self.rows_written.load(Ordering::Relaxed)
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
        checkpoint::checkpoint(&self.db, &self.keys, &SledFiles::new(&self.dir), &*self.log, newest + 1)
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
fn replay(db: &sled::Db, keys: &KeyFiles, log: &dyn LogDir) -> Result<(usize, u64)> {
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
            batches.push((Destination { tree: db.open_tree(tree_name(tree))?, keys: keys.get(tree)? }, ops));
        }
        durability::apply(&batches)?;
    }
    let after_listed = log.list()?.last().map_or(1, |n| n + 1);
    Ok((replayed, after_listed.max(wal_from)))
}

#[cfg(test)]
mod tests {
    use std::{
        path::Path,
        time::{Duration, Instant},
    };

    use imsg_proto::v1::Message;

    use super::{sled_files::MAX_ROW_BYTES, *};

    fn config(dir: &Path) -> BrokerConfig {
        let mut config = BrokerConfig::new(dir);
        config.partitions = 2;
        config.cache_capacity_bytes = 4 * 1024 * 1024;
        config
    }

    /// Reopens in the same process: sled's I/O pool may hold the file lock
    /// for a moment after the last handle is dropped (a restart is a new
    /// process and never meets this).
    fn reopen(dir: &Path) -> Arc<Store> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Store::open(&config(dir)) {
                Err(Error::Storage(e)) if e.to_string().contains("lock") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other.unwrap(),
            }
        }
    }

    fn wait_published(store: &Store, generation: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.durability().durable() < generation {
            assert!(Instant::now() < deadline, "the writer never published");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A released partition's rows go (in chunks: this one has more than a
    /// chunk); its ownership record and other partitions' rows stay.
    #[test]
    fn clearing_a_partition_keeps_only_its_ownership_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&config(dir.path())).unwrap();
        let (released, neighbour) = (store.partition(0).unwrap(), store.partition(1).unwrap());
        let mut batch = WriteBatch::default();
        for n in 0..2_500 {
            batch.put_inbox_entry(&format!("user{n}"), "dm_0123", false);
        }
        batch.put_ownership(&OwnershipRecord { epoch: 3, released: true });
        wait_published(&store, released.apply(batch, true));
        let mut batch = WriteBatch::default();
        batch.put_inbox_entry("alice", "dm_0123", false);
        wait_published(&store, neighbour.apply(batch, true));

        wait_published(&store, released.clear_data().unwrap());
        let left: Vec<Vec<u8>> = released.rows_after(None, 10).unwrap().into_iter().map(|(key, _)| key).collect();
        assert_eq!(left, vec![OWNERSHIP_KEY.to_vec()]);
        assert_eq!(released.ownership().unwrap(), Some(OwnershipRecord { epoch: 3, released: true }));
        assert_eq!(neighbour.all_inbox_entries().unwrap().len(), 1, "other partitions are untouched");
        assert_eq!(released.clear_data().unwrap(), 0, "nothing left to clear");
        store.close().unwrap();
    }

    /// A crash leaves a log whose last record was cut short. Opening replays
    /// every whole record, ignores the torn tail, and starts a fresh log.
    #[test]
    fn recovery_replays_the_wal_up_to_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut logged = WriteBatch::default();
        logged.put_settings("alice", &SettingsRecord::with_privacy(true, false));
        let mut torn = WriteBatch::default();
        torn.put_settings("bob", &SettingsRecord::with_privacy(true, true));
        let mut bytes = Vec::new();
        wal::encode_record(&mut bytes, 1, &logged.ops);
        let whole = bytes.len();
        wal::encode_record(&mut bytes, 1, &torn.ops);
        bytes.truncate(whole + (bytes.len() - whole) / 2);
        std::fs::write(dir.path().join("wal-000000000007.log"), &bytes).unwrap();

        let store = Store::open(&config(dir.path())).unwrap();
        let settings = store.partition(1).unwrap().all_settings().unwrap();
        assert_eq!(settings.len(), 1, "only the whole record is replayed: {settings:?}");
        assert_eq!(settings[0].0, "alice");
        assert!(settings[0].1.hide_read_receipts);
        let segments = wal::LogDir::list(&wal::Segments::new(dir.path())).unwrap();
        assert_eq!(segments, vec![8], "replayed segments are removed once sled holds them");
        store.close().unwrap();
    }

    /// What a partition hands over becomes readable once published, and a
    /// clean close checkpoints it into sled so the next open replays nothing.
    #[test]
    fn published_batches_are_readable_and_survive_a_clean_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&config(dir.path())).unwrap();
        let partition = store.partition(0).unwrap();
        let mut batch = WriteBatch::default();
        batch.put_inbox_entry("alice", "dm_0123", false);
        wait_published(&store, partition.apply(batch, true));
        assert_eq!(partition.all_inbox_entries().unwrap(), vec![("alice".to_string(), "dm_0123".to_string(), false)]);
        store.close().unwrap();
        drop(partition);
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(store.partition(0).unwrap().all_inbox_entries().unwrap().len(), 1);
        store.close().unwrap();
    }

    /// No sled blob files (sled_files): the largest record of each kind the
    /// limits allow still fits the row bound. (Outbox rows are chunked by
    /// the partition; see its test.)
    #[test]
    fn worst_case_rows_fit_the_row_bound() {
        use crate::config::{MAX_GROUP_MEMBERS_BOUND, MAX_TEXT_BYTES_BOUND};
        let long_id = |n: usize| format!("{n:064}");
        let conversation = format!("g_{}", "x".repeat(40));
        let mut batch = WriteBatch::default();
        batch.put_message(
            &Message {
                conversation_id: conversation.clone(),
                seq: u64::MAX,
                sender_id: long_id(1),
                sender_device_id: long_id(2),
                client_message_id: long_id(3),
                server_time_ms: i64::MAX,
                reply_to_seq: u64::MAX,
                content: Some(imsg_proto::v1::message::Content::Text(imsg_proto::v1::TextContent {
                    text: "é".repeat(MAX_TEXT_BYTES_BOUND / 2),
                })),
                ..Message::default()
            },
            u64::MAX,
        );
        // The largest shared card: every field at its bound.
        let url = format!("https://{}", "u".repeat(crate::validate::MAX_URL_BYTES - 8));
        batch.put_message(
            &Message {
                conversation_id: conversation.clone(),
                seq: u64::MAX,
                sender_id: long_id(1),
                content: Some(imsg_proto::v1::message::Content::Shared(imsg_proto::v1::SharedContent {
                    kind: 1,
                    item_id: "i".repeat(128),
                    url: url.clone(),
                    author: long_id(4),
                    title: "é".repeat(crate::validate::MAX_SHARED_TITLE_CHARS),
                    thumbnail_url: url,
                    caption: "é".repeat(MAX_TEXT_BYTES_BOUND / 2),
                })),
                ..Message::default()
            },
            u64::MAX,
        );
        // Every member of the largest group reacting with a long emoji.
        let family = "👨\u{200d}👩\u{200d}👧\u{200d}👦";
        assert!(crate::validate::emoji(family).is_ok());
        let reactions: Vec<imsg_proto::v1::Reaction> = (0..MAX_GROUP_MEMBERS_BOUND)
            .map(|n| imsg_proto::v1::Reaction { user_id: long_id(n), emoji: family.into(), react_time_ms: i64::MAX })
            .collect();
        batch.put_reactions(&conversation, u64::MAX, &reactions);
        batch.put_conversation(&ConversationRecord {
            id: conversation.clone(),
            kind: 2,
            title: "t".repeat(256),
            create_time_ms: i64::MAX,
            members: (0..MAX_GROUP_MEMBERS_BOUND)
                .map(|n| MemberRecord { user_id: long_id(n), role: 2, joined_after_seq: u64::MAX, request: 2 })
                .collect(),
            creator: long_id(0),
            change_time_ms: i64::MAX,
            blocked_by: vec![long_id(0), long_id(1)],
            request_sends: u32::MAX,
        });
        let receipt =
            ReceiptEvent { user_id: long_id(9), delivered_seq: u64::MAX, read_seq: u64::MAX, hide_read: true };
        batch.put_update_batch(
            u64::MAX,
            &UpdateBatchRecord {
                entries: (0..256)
                    .map(|n| UpdateEntry {
                        cursor: u64::MAX,
                        user_id: long_id(n),
                        conversation_id: conversation.clone(),
                        kind: Some(UpdateKind::Receipt(receipt.clone())),
                    })
                    .collect(),
            },
        );
        for op in &batch.ops {
            let wal::Op::Put { key, value } = op else { continue };
            assert!(key.len() + value.len() <= MAX_ROW_BYTES, "row {:?}: {} bytes", key[0] as char, value.len());
        }
    }

    /// Deleted content is gone from storage: once an unsent message's
    /// tombstone has been checkpointed, neither its text nor the key that
    /// sealed it is in any file under the data dir, and the sealed bytes
    /// that sled may still hold can no longer be opened.
    #[test]
    fn an_unsent_messages_text_and_key_are_in_no_file_after_the_next_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&config(dir.path())).unwrap();
        let partition = store.partition(0).unwrap();
        let text = format!("launch-code-{}", rand::random::<u64>());
        let message = Message {
            conversation_id: "dm_0123".into(),
            seq: 1,
            sender_id: "alice".into(),
            content: Some(imsg_proto::v1::message::Content::Text(imsg_proto::v1::TextContent { text: text.clone() })),
            ..Message::default()
        };
        let slot = partition.new_content_slot();
        let mut batch = WriteBatch::default();
        batch.put_message(&message, slot);
        wait_published(&store, partition.apply(batch, true));
        let key = partition.files.keys.get(slot).unwrap().expect("the key is written");
        assert_eq!(partition.message("dm_0123", 1).unwrap().unwrap(), message, "sealed and opened again");

        let tombstone = Message { content: None, unsent: true, ..message.clone() };
        let mut batch = WriteBatch::default();
        batch.put_message(&tombstone, slot);
        wait_published(&store, partition.apply(batch, true));
        assert_eq!(partition.message("dm_0123", 1).unwrap().unwrap(), tombstone);
        store.close().unwrap(); // the last checkpoint
        drop(partition);
        drop(store);

        let mut files = vec![dir.path().to_owned()];
        let mut scanned = 0;
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            scanned += bytes.len();
            assert!(!bytes.windows(text.len()).any(|w| w == text.as_bytes()), "the text is in {}", path.display());
            assert!(!bytes.windows(key.len()).any(|w| w == key), "the key is in {}", path.display());
        }
        assert!(scanned > 0);
    }

    /// Invariant 1 across a checkpoint: segments a checkpoint covered are
    /// never replayed, even when a power cut undid their deletion; else
    /// their old values would overwrite newer ones.
    #[test]
    fn segments_a_checkpoint_covered_are_not_replayed_after_their_deletion_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let stale = {
            let mut bytes = Vec::new();
            let mut old = WriteBatch::default();
            old.put_settings("alice", &SettingsRecord::with_privacy(false, false));
            wal::encode_record(&mut bytes, 0, &old.ops);
            bytes
        };
        let store = Store::open(&config(dir.path())).unwrap();
        let partition = store.partition(0).unwrap();
        let mut batch = WriteBatch::default();
        batch.put_settings("alice", &SettingsRecord::with_privacy(true, true));
        wait_published(&store, partition.apply(batch, true));
        store.close().unwrap();
        drop(partition);
        drop(store);
        let live = wal::LogDir::list(&wal::Segments::new(dir.path())).unwrap();
        assert_eq!(live.len(), 1, "a clean close keeps only the newest, empty segment");
        // The deletion of an older segment that the checkpoint covered is
        // "undone": it is back, holding the old value.
        std::fs::write(wal::Segments::new(dir.path()).path(live[0] - 1), &stale).unwrap();

        let store = reopen(dir.path());
        let settings = store.partition(0).unwrap().all_settings().unwrap();
        assert_eq!(settings.len(), 1);
        assert!(settings[0].1.hide_read_receipts, "a covered segment was replayed over newer state");
        store.close().unwrap();
    }
}
