//! Compacting the update log: a user partition writes each batch of
//! update-log entries as a row of its own (`u` and the first cursor), which
//! storage holds in memory ([`crate::storage::held`]); on its next tick the
//! partition writes those batches again as one row (`u`, the first cursor,
//! `+`), in chunks of at most `UPDATE_ROW_ENTRIES` entries, with the removes
//! of the rows it replaces. Only the compacted row reaches sled. At 10,000
//! 1:1 messages a second a batch holds about one entry, so sled wrote
//! ~1.8 update-log rows per message; now it writes one per partition and
//! tick, plus whatever a checkpoint finds still held (docs/benchmarks.md,
//! "Performance, third steps").
//!
//! Why it is safe:
//! - The compaction is an ordinary batch of this partition, logged after the
//!   batches it compacts, so the log replays them in that order; a cut
//!   keeps the whole compaction or none of it.
//! - Trims are this partition's writes too. Retention counts the compacted
//!   row as one ([`Retention::compact`](crate::core::update_log::Retention::compact)),
//!   and a trim that finds the batches still on their own (the compaction
//!   not yet applied) waits for the next tick; a batch trimmed before its
//!   compaction leaves the list of batches to compact.
//! - Readers may meet a batch twice while a compaction is applied (on its
//!   own, then inside the compacted row) and take each cursor once.

use super::{Partition, UPDATE_ROW_ENTRIES};
use crate::storage::UpdateBatchRecord;

impl Partition {
    /// Writes the batches since the last compaction again as compacted rows.
    pub(super) fn compact_update_log(&mut self) {
        let mut chunk: Vec<(u64, Vec<crate::storage::UpdateEntry>)> = Vec::new();
        let mut entries = 0;
        while let Some((first, batch)) = self.users.uncompacted.pop_front() {
            if !chunk.is_empty() && entries + batch.len() > UPDATE_ROW_ENTRIES {
                self.write_compacted(std::mem::take(&mut chunk));
                entries = 0;
            }
            entries += batch.len();
            chunk.push((first, batch));
        }
        if !chunk.is_empty() {
            self.write_compacted(chunk);
        }
    }

    fn write_compacted(&mut self, batches: Vec<(u64, Vec<crate::storage::UpdateEntry>)>) {
        let first = batches[0].0;
        let count = batches.len();
        let mut record = UpdateBatchRecord { entries: Vec::new() };
        let mut replaced = Vec::with_capacity(count);
        for (first, entries) in batches {
            replaced.push(first);
            record.entries.extend(entries);
        }
        // The compacted row first: a reader during the apply finds the
        // entries twice, never nowhere.
        self.batch.writes.put_compacted_update_batch(first, &record);
        for first in replaced {
            self.batch.writes.remove_update_batch(first);
        }
        self.users.retention.compact(first, count);
    }
}
