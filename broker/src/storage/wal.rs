//! The write-ahead log that makes batches durable.
//!
//! sled 0.34 makes writes durable through `flush`, which seals a log buffer,
//! hands it to sled's I/O thread pool (waking every idle pool thread) and
//! waits on `sync_file_range` per buffer. Doing that for every group commit
//! cost more CPU than everything else the broker does (docs/benchmarks.md).
//! So a batch is made durable here instead: its key/value operations are
//! appended to a segment file with one `write` and one `fdatasync` per round
//! for all partitions, and sled is only flushed at checkpoints.
//!
//! ## Why this is equivalent
//! - The writer applies a round's batches to sled right after logging them,
//!   and closes a segment only between rounds, so when a segment is closed
//!   every batch in it is already in sled.
//! - A checkpoint records in sled that it holds every closed segment
//!   (`wal_from`), flushes sled and fdatasyncs its files, then deletes the
//!   closed segments: their batches are now durable in sled itself
//!   (`durability` says why at any instant of a power cut).
//! - Recovery opens sled (which recovers some state at least as new as the
//!   last checkpoint) and replays, in order, every remaining segment from
//!   `wal_from` on. Replay is idempotent: each record holds absolute puts and
//!   removes, every change since the checkpoint is in the log, and per key
//!   the last one wins; a covered segment whose deletion a cut undid is
//!   skipped, not replayed over newer values.
//! - A record carries its length and a CRC32; replay stops at the first torn
//!   or corrupt record, which can only be the tail of the newest segment
//!   (no acknowledgement ever depended on it).
//!
//! ## Format
//! Segment files `wal-<number>.log`. Record: `len: u32 LE`, `crc32: u32 LE`
//! of the payload, payload. Payload: `count: u32`, then per operation
//! `tree: u32`, `kind: u8` (1 put, 2 remove), `key_len: u32`, key, and for a
//! put `value_len: u32`, value. Zeros may follow the last record: a segment
//! is written over a file of zeros ([`Segments`]).

mod segments;

pub use segments::Segments;

use crate::error::Result;

/// One operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8> },
    Remove { key: Vec<u8> },
}

/// Appends one record (the operations of one partition batch on `tree`).
pub fn encode_record(out: &mut Vec<u8>, tree: u32, ops: &[Op]) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]); // length and crc, filled in below
    out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for op in ops {
        out.extend_from_slice(&tree.to_le_bytes());
        match op {
            Op::Put { key, value } => {
                out.push(1);
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            Op::Remove { key } => {
                out.push(2);
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(key);
            }
        }
    }
    let payload_len = (out.len() - start - 8) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads records from the bytes of a segment, stopping at the first torn or
/// corrupt one; clean (`true`) when the records end where the bytes do, or
/// where only zeros follow. Yields `(tree, op)` in log order.
pub fn decode_segment(bytes: &[u8]) -> (Vec<(u32, Op)>, bool) {
    let (ops, clean, _) = decode_segment_to(bytes);
    (ops, clean)
}

/// [`decode_segment`], and the offset where the records it read end: where
/// the next record is written.
///
/// Zeros to the end are a clean end: a segment is written over a spare of
/// zeros ([`Segments`]). A record's length is never zero, but its first
/// bytes can be (the length's low byte), so a torn write that left only
/// those reads as a clean end too; only the newest segment can be torn
/// (segments close after a sync), and its end is where writing resumes
/// either way.
pub fn decode_segment_to(bytes: &[u8]) -> (Vec<(u32, Op)>, bool, usize) {
    let mut ops = Vec::new();
    let mut at = 0usize;
    let u32_at =
        |bytes: &[u8], at: usize| -> Option<u32> { Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?)) };
    while at < bytes.len() {
        if bytes[at..].iter().all(|byte| *byte == 0) {
            return (ops, true, at);
        }
        let (Some(len), Some(crc)) = (u32_at(bytes, at), u32_at(bytes, at + 4)) else { return (ops, false, at) };
        let Some(payload) = bytes.get(at + 8..at + 8 + len as usize) else { return (ops, false, at) };
        if crc32fast::hash(payload) != crc {
            return (ops, false, at);
        }
        match decode_payload(payload) {
            Some(record) => ops.extend(record),
            None => return (ops, false, at),
        }
        at += 8 + len as usize;
    }
    (ops, true, at)
}

fn decode_payload(payload: &[u8]) -> Option<Vec<(u32, Op)>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let slice = payload.get(at..at + n)?;
        at += n;
        Some(slice)
    };
    let read_u32 = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or([0; 4]));
    let count = read_u32(take(4)?);
    // An operation takes at least 9 bytes: a count the payload cannot hold
    // (a CRC-valid but malformed record) must not size the allocation.
    let mut ops = Vec::with_capacity((count as usize).min(payload.len() / 9));
    for _ in 0..count {
        let tree = read_u32(take(4)?);
        let kind = take(1)?[0];
        let key_len = read_u32(take(4)?) as usize;
        let key = take(key_len)?.to_vec();
        let op = match kind {
            1 => {
                let value_len = read_u32(take(4)?) as usize;
                Op::Put { key, value: take(value_len)?.to_vec() }
            }
            2 => Op::Remove { key },
            _ => return None,
        };
        ops.push((tree, op));
    }
    Some(ops)
}

/// Where the log's segments live: files in the data directory
/// ([`Segments`]), or a simulated disk in tests (`sim::SimDisk`) that
/// loses what was not synced, tears the last write, and fails an fsync on
/// demand, so the durability argument above is tested deterministically.
pub trait LogDir: Send + Sync {
    /// Existing segment numbers, oldest first.
    fn list(&self) -> Result<Vec<u64>>;
    fn read(&self, number: u64) -> Result<Vec<u8>>;
    /// Creates a new, empty segment whose name is durable.
    fn create(&self, number: u64) -> Result<Box<dyn LogFile>>;
    /// Deletes segments (a checkpoint made them redundant), oldest first.
    fn remove(&self, numbers: &[u64]) -> Result<()>;
    /// Names a segment in messages.
    fn describe(&self, number: u64) -> String;
    /// Readies the next [`LogDir::create`] to take about `bytes` without
    /// growing a file ([`Segments`] says why); called off the writer's path.
    fn prepare(&self, _bytes: usize) -> Result<()> {
        Ok(())
    }
}

/// One open segment: appended to, then synced.
pub trait LogFile: Send {
    /// Appends `bytes` (not yet durable: see [`LogFile::sync`]).
    fn append(&mut self, bytes: &[u8]) -> Result<()>;
    /// Makes everything appended so far durable.
    fn sync(&mut self) -> Result<()>;
}

/// A simulated disk for the log, for deterministic tests of the durability
/// argument: appends are lost at a cut ([`sim::SimDisk::after_cut`]) unless synced (but
/// for a torn piece of the unsynced tail, if asked), deletions unless they
/// are made durable, and an fsync can be made to fail or to wait.
#[cfg(test)]
pub mod sim {
    use std::{
        collections::BTreeMap,
        sync::{Arc, Condvar, Mutex, MutexGuard},
    };

    use super::{LogDir, LogFile};
    use crate::error::{Error, Result};

    #[derive(Clone, Default)]
    pub struct SimDisk {
        state: Arc<(Mutex<State>, Condvar)>,
    }

    #[derive(Default)]
    struct State {
        /// Segment number -> (bytes, length synced).
        files: BTreeMap<u64, (Vec<u8>, usize)>,
        /// Removals that a cut undoes (made while removals were not durable).
        removed: BTreeMap<u64, (Vec<u8>, usize)>,
        durable_removals: bool,
        removals_held: bool,
        removal_waiting: bool,
        fail_next_sync: bool,
        syncs_held: bool,
        syncs: u64,
    }

    impl SimDisk {
        /// Removals are durable at once, as the real directory's are.
        pub fn new() -> Self {
            let disk = Self::default();
            disk.state().durable_removals = true;
            disk
        }

        fn state(&self) -> MutexGuard<'_, State> {
            self.state.0.lock().unwrap_or_else(|e| e.into_inner())
        }

        /// What the disk would hold after a power cut now, as a new disk
        /// (this one goes on untouched): every segment keeps what was synced
        /// plus the first `torn` bytes of its unsynced tail (a write cut
        /// short); removals come back unless they were durable.
        pub fn after_cut(&self, torn: usize) -> SimDisk {
            let state = self.state();
            let mut files = state.files.clone();
            files.extend(state.removed.clone());
            for (bytes, synced) in files.values_mut() {
                let keep = synced.saturating_add(torn).min(bytes.len());
                bytes.truncate(keep);
                *synced = keep;
            }
            let disk = SimDisk::new();
            disk.state().files = files;
            disk
        }

        /// Removals wait until [`Self::release_removals`] (a checkpoint
        /// stopped between its sled sync and its deletions).
        pub fn hold_removals(&self) {
            self.state().removals_held = true;
        }

        pub fn release_removals(&self) {
            self.state().removals_held = false;
            self.state.1.notify_all();
        }

        /// Whether a removal is waiting at the gate.
        pub fn removal_waiting(&self) -> bool {
            self.state().removal_waiting
        }

        /// Whether the removals made from now on reach the disk at once or
        /// are undone by a cut (a crash between a checkpoint and its
        /// deletions).
        pub fn set_durable_removals(&self, durable: bool) {
            self.state().durable_removals = durable;
        }

        /// The next fsync fails (as a disk error would).
        pub fn fail_next_sync(&self) {
            self.state().fail_next_sync = true;
        }

        /// Fsyncs wait until [`Self::release_syncs`].
        pub fn hold_syncs(&self) {
            self.state().syncs_held = true;
        }

        pub fn release_syncs(&self) {
            self.state().syncs_held = false;
            self.state.1.notify_all();
        }

        /// Fsyncs completed so far.
        pub fn syncs(&self) -> u64 {
            self.state().syncs
        }
    }

    impl LogDir for SimDisk {
        fn list(&self) -> Result<Vec<u64>> {
            Ok(self.state().files.keys().copied().collect())
        }

        fn read(&self, number: u64) -> Result<Vec<u8>> {
            let state = self.state();
            let (bytes, _) = state.files.get(&number).ok_or_else(|| Error::Internal(format!("no segment {number}")))?;
            Ok(bytes.clone())
        }

        fn create(&self, number: u64) -> Result<Box<dyn LogFile>> {
            let mut state = self.state();
            if state.files.contains_key(&number) {
                return Err(Error::Internal(format!("segment {number} exists")));
            }
            state.files.insert(number, (Vec::new(), 0));
            Ok(Box::new(SimFile { disk: self.clone(), number }))
        }

        fn remove(&self, numbers: &[u64]) -> Result<()> {
            let (lock, released) = &*self.state;
            let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
            state.removal_waiting = state.removals_held;
            let mut state = released.wait_while(state, |s| s.removals_held).unwrap_or_else(|e| e.into_inner());
            state.removal_waiting = false;
            for number in numbers {
                if let Some(file) = state.files.remove(number)
                    && !state.durable_removals
                {
                    state.removed.insert(*number, file);
                }
            }
            Ok(())
        }

        fn describe(&self, number: u64) -> String {
            format!("simulated segment {number}")
        }
    }

    struct SimFile {
        disk: SimDisk,
        number: u64,
    }

    impl LogFile for SimFile {
        fn append(&mut self, bytes: &[u8]) -> Result<()> {
            let mut state = self.disk.state();
            let (data, _) = state.files.get_mut(&self.number).ok_or_else(|| Error::Internal("segment gone".into()))?;
            data.extend_from_slice(bytes);
            Ok(())
        }

        fn sync(&mut self) -> Result<()> {
            let (lock, released) = &*self.disk.state;
            let mut state = released
                .wait_while(lock.lock().unwrap_or_else(|e| e.into_inner()), |s| s.syncs_held)
                .unwrap_or_else(|e| e.into_inner());
            if std::mem::take(&mut state.fail_next_sync) {
                return Err(Error::Internal("fdatasync of the WAL: simulated I/O error".into()));
            }
            state.syncs += 1;
            if let Some((data, synced)) = state.files.get_mut(&self.number) {
                *synced = data.len();
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> Vec<Op> {
        vec![Op::Put { key: b"k1".to_vec(), value: b"v1".to_vec() }, Op::Remove { key: b"k2".to_vec() }]
    }

    #[test]
    fn records_round_trip_in_order() {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, 3, &ops());
        encode_record(&mut bytes, 7, &ops()[..1]);
        let (decoded, complete) = decode_segment(&bytes);
        assert!(complete);
        let expected: Vec<(u32, Op)> =
            ops().into_iter().map(|op| (3, op)).chain(std::iter::once((7, ops()[0].clone()))).collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn replay_stops_at_a_torn_or_corrupt_tail() {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, 1, &ops());
        let first_len = bytes.len();
        encode_record(&mut bytes, 2, &ops());
        // Torn: the second record is cut short.
        let (decoded, complete) = decode_segment(&bytes[..bytes.len() - 3]);
        assert!(!complete);
        assert_eq!(decoded.len(), 2, "only the first record survives");
        // Corrupt: a flipped byte in the second record's payload.
        let mut corrupt = bytes.clone();
        corrupt[first_len + 12] ^= 0xff;
        let (decoded, complete) = decode_segment(&corrupt);
        assert!(!complete);
        assert_eq!(decoded.len(), 2);
    }
}
