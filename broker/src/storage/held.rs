//! Rows held in memory until the next checkpoint, so a row that is written
//! and removed between two checkpoints never costs sled anything.
//!
//! The outbox is such a row: a conversation partition writes one with each
//! batch of new events and removes it once every member's partition has
//! taken the fan-out, milliseconds later. Nobody reads it unless the node
//! restarts. In sled it was an insert and a remove per batch, 39% of all
//! sled row writes at 10,000 1:1 messages per second (a batch there holds
//! about one message; docs/benchmarks.md, "Performance, third steps").
//! An update-log batch as first written is another: its user partition
//! writes it again within a tick, compacted with the others of that tick
//! (`partition::compaction`), and removes it.
//!
//! The write-ahead log already makes the row durable; sled is only where
//! the log's operations are kept once a checkpoint deletes the segments
//! that hold them. So the writer applies held rows here instead of to sled
//! (after the round's sync, like every row: nothing here is unpublished),
//! and a remove that finds its row here erases it. A checkpoint first
//! writes whatever is still held to sled, then records that sled holds the
//! segments ([`super::checkpoint`]): a checkpoint never vouches for a row
//! that is only in memory. A restart replays the segments after the last
//! checkpoint, which re-creates the rows that were held.
//!
//! Readers see sled with the held rows laid over it ([`overlay`]).

use std::{
    cmp::Ordering,
    collections::BTreeMap,
    ops::{Bound, RangeBounds},
    sync::{Arc, Mutex, MutexGuard},
};

use crate::error::Result;

/// Whether a row of this key is held here rather than written to sled:
/// outbox rows (`o`) and a user partition's update-log batches as first
/// written (`u` and the first cursor: 9 bytes), which the partition soon
/// writes again as one compacted row (`partition::compaction`); see the
/// layout in the storage module docs.
pub fn is_held(key: &[u8]) -> bool {
    match key.first() {
        Some(b'o') => true,
        Some(b'u') => key.len() == 9,
        _ => false,
    }
}

/// The held rows of one partition's tree.
#[derive(Default)]
pub struct HeldRows {
    rows: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl HeldRows {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn put(&self, key: &[u8], value: &[u8]) {
        self.lock().insert(key.to_vec(), value.to_vec());
    }

    /// Removes a held row; `false` if it is not held here (a checkpoint
    /// wrote it to sled, or the replay at start did), so sled has it.
    pub(super) fn remove(&self, key: &[u8]) -> bool {
        self.lock().remove(key).is_some()
    }

    /// Moves every held row into `tree`. The lock is kept meanwhile, so a
    /// remove that arrives during the move finds its row in sled.
    fn write_to(&self, tree: &sled::Tree) -> Result<()> {
        let mut rows = self.lock();
        for (key, value) in rows.iter() {
            tree.insert(key.as_slice(), value.as_slice())?;
        }
        rows.clear();
        Ok(())
    }

    /// The greatest held key of `range`.
    fn last_key<R: RangeBounds<Vec<u8>>>(&self, range: R) -> Option<Vec<u8>> {
        self.lock().range(range).next_back().map(|(key, _)| key.clone())
    }
}

/// The first `limit` rows of `range` in `tree`, in key order, with the rows
/// `held` for it laid over them ([`overlay_iter`]).
pub fn overlay<R>(held: Option<&HeldRows>, tree: &sled::Tree, range: R, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>
where
    R: RangeBounds<Vec<u8>> + Clone,
{
    overlay_iter(held, tree, range).take(limit).collect()
}

/// The rows of `range` in `tree`, in key order, with the rows `held` for it
/// laid over them (a held row replaces sled's of the same key), read lazily
/// from sled. The held rows, a few ticks' worth, are copied first: a
/// checkpoint that moves a row meanwhile moves it into sled, where the read
/// finds it again (once: rows are merged by key).
pub fn overlay_iter<'a, R>(
    held: Option<&HeldRows>,
    tree: &'a sled::Tree,
    range: R,
) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a
where
    R: RangeBounds<Vec<u8>> + Clone,
{
    let held: Vec<(Vec<u8>, Vec<u8>)> = match held {
        Some(held) => held.lock().range(range.clone()).map(|(k, v)| (k.clone(), v.clone())).collect(),
        None => Vec::new(),
    };
    let mut held = held.into_iter().peekable();
    let mut stored = tree.range::<&[u8], _>((as_slice(range.start_bound()), as_slice(range.end_bound()))).peekable();
    std::iter::from_fn(move || {
        let order = match (held.peek(), stored.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) | (Some(_), Some(Err(_))) => Ordering::Greater,
            (Some((held_key, _)), Some(Ok((stored_key, _)))) => held_key.as_slice().cmp(stored_key.as_ref()),
        };
        if order == Ordering::Equal {
            // The held row is the newer: it replaces sled's.
            stored.next();
        }
        match order {
            Ordering::Greater => {
                stored.next().map(|row| row.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into))
            }
            _ => held.next().map(Ok),
        }
    })
}

/// The row of `key`: held, or else in `tree`.
pub fn get(held: Option<&HeldRows>, tree: &sled::Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
    if let Some(value) = held.and_then(|held| held.lock().get(key).cloned()) {
        return Ok(Some(value));
    }
    Ok(tree.get(key)?.map(|value| value.to_vec()))
}

/// The greatest key of `range` in `tree` or `held` for it.
pub fn last_key<R>(held: Option<&HeldRows>, tree: &sled::Tree, range: R) -> Result<Option<Vec<u8>>>
where
    R: RangeBounds<Vec<u8>> + Clone,
{
    let held = held.and_then(|held| held.last_key(range.clone()));
    let stored = tree.range::<&[u8], _>((as_slice(range.start_bound()), as_slice(range.end_bound()))).next_back();
    let stored = stored.transpose()?.map(|(key, _)| key.to_vec());
    Ok(held.max(stored))
}

fn as_slice(bound: Bound<&Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(key) => Bound::Included(key.as_slice()),
        Bound::Excluded(key) => Bound::Excluded(key.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Every partition's [`HeldRows`] on this node, with its tree.
#[derive(Default)]
pub struct HeldRowsByPartition {
    partitions: Mutex<BTreeMap<u32, (sled::Tree, Arc<HeldRows>)>>,
}

impl HeldRowsByPartition {
    /// The held rows of `partition`, whose tree is `tree`.
    pub fn get(&self, partition: u32, tree: &sled::Tree) -> Arc<HeldRows> {
        let mut partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        partitions.entry(partition).or_insert_with(|| (tree.clone(), Arc::default())).1.clone()
    }

    /// Writes every held row to its tree: before a checkpoint records that
    /// sled holds the log segments so far.
    pub fn write_all_to_sled(&self) -> Result<()> {
        let partitions: Vec<_> = self.partitions.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        partitions.iter().try_for_each(|(tree, held)| held.write_to(tree))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        (dir, tree)
    }

    #[test]
    fn a_row_removed_before_the_checkpoint_never_reaches_sled() {
        let (_dir, tree) = tree();
        let held = HeldRowsByPartition::default();
        let rows = held.get(1, &tree);
        rows.put(b"o1", b"one");
        rows.put(b"o2", b"two");
        assert!(rows.remove(b"o1"));
        held.write_all_to_sled().unwrap();
        assert_eq!(tree.get(b"o1").unwrap(), None);
        assert_eq!(tree.get(b"o2").unwrap().as_deref(), Some(&b"two"[..]));
        // Written out: a later remove finds it in sled, not here.
        assert!(!rows.remove(b"o2"));
    }

    #[test]
    fn readers_see_sled_with_the_held_rows_laid_over_it() {
        let (_dir, tree) = tree();
        tree.insert(b"o1", b"in sled").unwrap();
        tree.insert(b"o3", b"in sled").unwrap();
        tree.insert(b"p1", b"other kind").unwrap();
        let rows = HeldRows::default();
        rows.put(b"o2", b"held");
        rows.put(b"o3", b"held, newer");
        let all = overlay(Some(&rows), &tree, b"o".to_vec()..b"p".to_vec(), 10).unwrap();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"o1".to_vec(), b"in sled".to_vec()),
            (b"o2".to_vec(), b"held".to_vec()),
            (b"o3".to_vec(), b"held, newer".to_vec()),
        ];
        assert_eq!(all, expected);
        let first_two = overlay(Some(&rows), &tree, b"o".to_vec()..b"p".to_vec(), 2).unwrap();
        assert_eq!(first_two, expected[..2]);
        let lazily: Vec<_> =
            overlay_iter(Some(&rows), &tree, b"o".to_vec()..b"p".to_vec()).collect::<Result<_>>().unwrap();
        assert_eq!(lazily, expected);
        let from_o2: Vec<_> = overlay_iter(Some(&rows), &tree, b"o2".to_vec()..).collect::<Result<_>>().unwrap();
        assert_eq!(from_o2.len(), 3, "o2, o3 (held over sled's) and p1");
        let last = last_key(Some(&rows), &tree, b"o".to_vec()..b"p".to_vec()).unwrap();
        assert_eq!(last.as_deref(), Some(&b"o3"[..]));
        rows.put(b"o4", b"held");
        let last = last_key(Some(&rows), &tree, b"o".to_vec()..b"p".to_vec()).unwrap();
        assert_eq!(last.as_deref(), Some(&b"o4"[..]));
    }
}
