//! Checkpoints: why deleting log segments is safe.
//! Every `checkpoint_every` (and at [`MAX_SEGMENT_BYTES`](super::durability::MAX_SEGMENT_BYTES)) the writer, between
//! two rounds, starts a new segment N+1 (its directory entry synced) and
//! hands the closed ones to the checkpointer thread. Every operation in a
//! closed segment is already applied to sled (the writer applies a round
//! before it closes a segment). The checkpointer then:
//! 0. writes the content-key slots held in memory to the key files
//!    ([`super::shred`]) and syncs them, and writes the rows held in memory
//!    ([`super::held`]) to sled and the message logs;
//! 1. syncs the message logs and records their ends in sled
//!    ([`super::message_log`]), and records in sled itself that sled and
//!    the logs hold every segment below N+1 ([`WAL_FROM_KEY`]);
//! 2. flushes sled (everything inserted so far, the marker included, is
//!    written to sled's file) and fdatasyncs its files ([`SledFiles::sync`]);
//! 3. only then deletes the segments below N+1.
//!
//! The marker and the data it vouches for become durable in the same sync,
//! so a crash anywhere in between leaves either the old marker (and every
//! old segment is replayed: idempotent) or the new one (and the segments it
//! covers are skipped even if their deletion was lost). The writer goes on
//! inserting meanwhile: what it writes after the flush may reach the sync
//! half-written, which is the state a process crash at that instant leaves
//! and sled's own recovery handles (a torn tail of its log, after the
//! durable prefix that holds the marker). Pausing the writer for the
//! checkpoint instead cost 3-4x in p99 latency (docs/benchmarks.md).
//! Between checkpoints the checkpointer also flushes sled every
//! `WRITE_BEHIND_EVERY` (not a durability point), so a checkpoint's sync
//! has little left to write and does not stall the WAL's syncs behind it.
//!

use std::{
    panic::AssertUnwindSafe,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    durability::Durability,
    held::HeldRowsByPartition,
    message_log::MessageLogs,
    shred::KeyFiles,
    sled_files::{SledFiles, panic_message},
    wal,
};
use crate::error::Result;

/// How often the checkpointer writes sled's buffer out between checkpoints.
const WRITE_BEHIND_EVERY: Duration = Duration::from_millis(100);

/// Key, in sled's default tree, of the number of the oldest log segment
/// sled does not already hold (big-endian u64). See the module docs.
pub const WAL_FROM_KEY: &[u8] = b"wal_from";

/// The number stored under [`WAL_FROM_KEY`] (0 when never checkpointed).
pub fn wal_from(db: &sled::Db) -> Result<u64> {
    Ok(db.get(WAL_FROM_KEY)?.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)).unwrap_or(0))
}

pub fn set_wal_from(db: &sled::Db, number: u64) -> Result<()> {
    db.insert(WAL_FROM_KEY, &number.to_be_bytes())?;
    Ok(())
}

/// What a checkpoint makes durable besides the log: sled, the content-key
/// files, the message logs and the rows held in memory.
#[derive(Clone)]
pub(super) struct CheckpointedFiles {
    pub db: sled::Db,
    pub keys: Arc<KeyFiles>,
    pub messages: Arc<MessageLogs>,
    pub held: Arc<HeldRowsByPartition>,
}

impl Durability {
    /// The checkpointer thread's body: checkpoints closed segments until
    /// stopped (the store's close takes the last one); any error or panic
    /// fail-stops the node.
    pub(super) fn run_checkpointer(&self, files: CheckpointedFiles, dir: PathBuf, log: Arc<dyn wal::LogDir>) {
        let sled_files = SledFiles::new(&dir);
        let checkpoints = || -> Result<()> {
            loop {
                let (closed, timed_out) = {
                    let guard = self.closed.lock().unwrap_or_else(|e| e.into_inner());
                    let (mut guard, wait) = self
                        .closed_signal
                        .wait_timeout_while(guard, WRITE_BEHIND_EVERY, |closed| closed.is_empty() && !self.stopping())
                        .unwrap_or_else(|e| e.into_inner());
                    (std::mem::take(&mut *guard), wait.timed_out())
                };
                if timed_out {
                    // Write-behind: the held messages to their logs, the
                    // held key slots to their files, and sled's buffer to
                    // the kernel, now, so the checkpoint has little left
                    // to write (one big burst delayed the WAL's syncs).
                    // Not a durability point: nothing relies on it.
                    files.held.write_messages_out()?;
                    files.keys.write_held_all()?;
                    files.db.flush()?;
                    continue;
                }
                let Some(newest) = closed.iter().max() else { return Ok(()) };
                *self.checkpoint_started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                checkpoint(&files, &sled_files, &*log, newest + 1)?;
                *self.checkpoint_started.lock().unwrap_or_else(|e| e.into_inner()) = None;
                // The next segment's spare, sized for a little more than
                // the last one took. Without it (out of space for a
                // moment), the segment grows as it is written: slower only.
                let last = self.last_segment_bytes.load(std::sync::atomic::Ordering::Relaxed);
                if let Err(error) = log.prepare((last + last / 4).min(super::durability::MAX_SEGMENT_BYTES)) {
                    tracing::warn!(%error, "could not ready a spare WAL segment");
                }
            }
        };
        match std::panic::catch_unwind(AssertUnwindSafe(checkpoints)) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => self.fail_stop.trigger(format!("a checkpoint failed: {error}")),
            Err(panic) => self.fail_stop.trigger(format!("the checkpointer panicked: {}", panic_message(&*panic))),
        }
    }
}

/// One checkpoint (module docs): sled and the message logs hold every
/// operation of the segments below `current`; make that durable, then
/// delete them.
pub(super) fn checkpoint(
    files: &CheckpointedFiles,
    sled_files: &SledFiles,
    log: &dyn wal::LogDir,
    current: u64,
) -> Result<()> {
    let CheckpointedFiles { db, keys, messages, held } = files;
    let started = Instant::now();
    keys.write_held_all()?;
    keys.sync_all()?;
    held.write_all_out()?;
    messages.sync_and_record_all()?;
    set_wal_from(db, current)?;
    db.flush()?;
    sled_files.sync()?;
    let covered: Vec<u64> = log.list()?.into_iter().filter(|n| *n < current).collect();
    log.remove(&covered)?;
    crate::metrics::METRICS.checkpoint_seconds.observe(started.elapsed().as_secs_f64());
    tracing::debug!(segments = ?covered, took = ?started.elapsed(), "checkpoint");
    Ok(())
}
