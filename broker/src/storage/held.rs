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
//! Messages (`m` rows) are held too, for a different reason: they stay, but
//! every message waited for its sled insert in the writer's round, the one
//! serial stage of a send. Held, they reach sled from the checkpointer's
//! thread, every `WRITE_BEHIND_EVERY` (100 ms) and at each checkpoint
//! ([`HeldRowsByPartition::write_messages_to_sled`]): p99 at 10,000 1:1
//! messages per second fell from 28-38 ms to 21-24 ms (docs/benchmarks.md,
//! "Performance, fifth steps"). An edit or unsend of a held message
//! replaces it here; a removal is held as a tombstone until sled's copy is
//! removed.
//!
//! The partition's meta row (`M`) is held for the same reason as messages:
//! a busy partition rewrites it in nearly every round (each confirmed
//! outbox batch moves its counters), and only the last value matters, so
//! a checkpoint writes it to sled once.
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
    ops::RangeBounds,
    sync::{Arc, Mutex, MutexGuard},
};

use super::message_log::{MessageLog, Stored};
use crate::error::Result;

/// How a row of some key is held here rather than written to sled as it
/// is applied; see the layout in the storage module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldKind {
    /// Written once under a fresh key (outbox numbers and first cursors
    /// only grow), and mostly removed before a checkpoint: outbox rows
    /// (`o`) and a user partition's update-log batches as first written
    /// (`u` and the first cursor: 9 bytes), which the partition soon writes
    /// again as one compacted row (`partition::compaction`).
    Transient,
    /// Kept for good, and rewritten under the same key (an edit, an
    /// unsend): messages (`m`). Held, they reach sled at the checkpoint
    /// (the checkpointer's thread) instead of in the writer's round, which
    /// every message waits for.
    Message,
    /// The partition's meta row (`M`: its counters), rewritten by nearly
    /// every batch of a busy partition (each confirmed outbox batch moves
    /// it). Held, its rewrites between two checkpoints cost sled one
    /// insert, from the checkpointer's thread, instead of one in each of
    /// the writer's rounds.
    Meta,
}

/// Whether, and how, a row of this key is held.
pub fn held_kind(key: &[u8]) -> Option<HeldKind> {
    match key.first() {
        Some(b'o') => Some(HeldKind::Transient),
        Some(b'u') if key.len() == 9 => Some(HeldKind::Transient),
        Some(b'm') => Some(HeldKind::Message),
        Some(b'M') if key.len() == 1 => Some(HeldKind::Meta),
        _ => None,
    }
}

/// A held row: its value, or `None` when it was removed while an older
/// value was on its way to sled (a checkpoint writing it): the next
/// checkpoint removes sled's copy, and readers see no row meanwhile.
type HeldValue = Option<Vec<u8>>;

type Rows = BTreeMap<Vec<u8>, HeldValue>;

/// The held rows of one partition's tree.
#[derive(Default)]
pub struct HeldRows {
    state: Mutex<Held>,
}

/// Two generations of held writes, so that a checkpoint writes them out
/// without holding the lock: the writer thread puts and removes rows with
/// every round, and it waited for whole checkpoints (2-24 ms each at 8,000
/// 1:1 messages per second, docs/benchmarks.md "Performance, fourth
/// steps"), which was the slowest of its rounds. Held rows here, held
/// content-key slots in `shred`.
pub(super) struct Generations<K, V> {
    /// Written since the current move began.
    pub(super) current: BTreeMap<K, V>,
    /// What a checkpoint is writing out, without the lock: still read
    /// until it is there.
    pub(super) moving: Arc<BTreeMap<K, V>>,
}

impl<K, V> Default for Generations<K, V> {
    fn default() -> Self {
        Self { current: BTreeMap::new(), moving: Arc::default() }
    }
}

impl<K: Ord + Clone, V: Clone> Generations<K, V> {
    /// The held write of `key`, newest generation first (for a row,
    /// `Some(None)` is a removed one).
    pub(super) fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.current.get(key).or_else(|| self.moving.get(key))
    }

    /// Makes what `take` takes out of the current writes the moving ones,
    /// and returns them for the move (done: [`Self::finish_move`]).
    pub(super) fn start_move(
        &mut self,
        take: impl FnOnce(&mut BTreeMap<K, V>) -> BTreeMap<K, V>,
    ) -> Arc<BTreeMap<K, V>> {
        let mut writes = take(&mut self.current);
        if !self.moving.is_empty() {
            // A move that failed half-way (the node is stopping): its
            // writes go again, under the newer ones.
            let mut older = (*self.moving).clone();
            older.append(&mut writes);
            writes = older;
        }
        self.moving = Arc::new(writes);
        self.moving.clone()
    }

    pub(super) fn finish_move(&mut self) {
        self.moving = Arc::default();
    }
}

/// The held rows of one partition's tree.
type Held = Generations<Vec<u8>, HeldValue>;

impl Held {
    /// The held rows of `range`, newest generation first, removed ones
    /// included.
    fn range<R: RangeBounds<Vec<u8>> + Clone>(&self, range: R) -> Rows {
        self.range_with(range, HeldValue::clone)
    }

    /// The held keys of `range`, newest generation first: `true` for a row,
    /// `false` for a removed one. No value is copied.
    fn keys<R: RangeBounds<Vec<u8>> + Clone>(&self, range: R) -> BTreeMap<Vec<u8>, bool> {
        self.range_with(range, Option::is_some)
    }

    /// `what` of each held row of `range`, by key, newest generation first.
    fn range_with<R, T>(&self, range: R, what: impl Fn(&HeldValue) -> T) -> BTreeMap<Vec<u8>, T>
    where
        R: RangeBounds<Vec<u8>> + Clone,
    {
        let mut rows: BTreeMap<_, _> = self.moving.range(range.clone()).map(|(k, v)| (k.clone(), what(v))).collect();
        rows.extend(self.current.range(range).map(|(k, v)| (k.clone(), what(v))));
        rows
    }
}

impl HeldRows {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds a row, taking its bytes as they are (the writer's logged
    /// operation, not a copy of it).
    pub(super) fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.lock().current.insert(key.into(), Some(value.into()));
    }

    /// Removes a row of `kind`; `false` if it is not held here (a
    /// checkpoint wrote it to sled, or the replay at start did), so sled
    /// has it and nothing else writes it: the caller removes it there. A
    /// row that a checkpoint is writing to sled right now is removed here,
    /// and from sled by the next checkpoint (after this one's write, in
    /// order); so is a message or the meta row, whose older copy may be in
    /// sled. A transient row held here has no older copy in sled.
    pub(super) fn remove(&self, key: &[u8], kind: HeldKind) -> bool {
        let mut held = self.lock();
        if kind != HeldKind::Transient || held.moving.contains_key(key) || held.current.get(key) == Some(&None) {
            held.current.insert(key.to_vec(), None);
            return true;
        }
        held.current.remove(key).is_some()
    }

    /// Moves every held row to where it is stored, without holding the
    /// lock while it writes: meanwhile the rows are still read here (over
    /// the stored copies of the same values), new ones are put beside them,
    /// and a remove of one of them is kept for the next move
    /// ([`Self::remove`]).
    fn write_to(&self, stored: Stored<'_>, messages_only: bool) -> Result<()> {
        let moving = self.start_move(messages_only);
        stored.write(moving.iter().map(|(key, value)| (key.as_slice(), value.as_deref())))?;
        self.lock().finish_move();
        Ok(())
    }

    /// Makes the current rows (or only the messages among them) the
    /// moving ones, and returns them.
    fn start_move(&self, messages_only: bool) -> Arc<Rows> {
        self.lock().start_move(if messages_only { take_messages } else { std::mem::take })
    }
}

/// The message rows (`m` keys) of `rows`, taken out.
fn take_messages(rows: &mut Rows) -> Rows {
    let mut messages = rows.split_off(b"m".as_slice());
    let mut after = messages.split_off(b"n".as_slice());
    rows.append(&mut after);
    messages
}

/// The first `limit` rows of `range` where they are stored, in key order,
/// with the rows `held` for it laid over them ([`overlay_iter`]).
pub fn overlay<R>(
    held: Option<&HeldRows>,
    stored: Stored<'_>,
    range: R,
    limit: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>>
where
    R: RangeBounds<Vec<u8>> + Clone,
{
    overlay_iter(held, stored, range).take(limit).collect()
}

/// The rows of `range` where they are stored, in key order, with the rows
/// `held` for it laid over them (a held row replaces the stored one of the
/// same key, a removed one hides it), read lazily. The held rows, a few
/// ticks' worth, are copied first: a checkpoint that moves a row meanwhile
/// moves it where the read finds it again (once: rows are merged by key).
pub fn overlay_iter<'a, R>(
    held: Option<&HeldRows>,
    stored: Stored<'a>,
    range: R,
) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a
where
    R: RangeBounds<Vec<u8>> + Clone,
{
    overlay_iter_in(held, stored, range, false)
}

/// [`overlay_iter`], in descending key order when `backward`.
pub fn overlay_iter_in<'a, R>(
    held: Option<&HeldRows>,
    stored: Stored<'a>,
    range: R,
    backward: bool,
) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a
where
    R: RangeBounds<Vec<u8>> + Clone,
{
    let held = held.map(|held| held.lock().range(range.clone())).unwrap_or_default();
    let held: Box<dyn Iterator<Item = (Vec<u8>, HeldValue)>> =
        if backward { Box::new(held.into_iter().rev()) } else { Box::new(held.into_iter()) };
    let mut held = held.peekable();
    let mut stored = stored.rows(range, backward).peekable();
    // Merged in the walk's order: "less" is whichever comes first.
    let walk = move |order: Ordering| if backward { order.reverse() } else { order };
    std::iter::from_fn(move || {
        loop {
            let order = match (held.peek(), stored.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) | (Some(_), Some(Err(_))) => Ordering::Greater,
                (Some((held_key, _)), Some(Ok((stored_key, _)))) => walk(held_key.cmp(stored_key)),
            };
            if order == Ordering::Equal {
                // The held row is the newer: it replaces the stored one.
                stored.next();
            }
            match order {
                Ordering::Greater => return stored.next(),
                _ => match held.next() {
                    Some((key, Some(value))) => return Some(Ok((key, value))),
                    Some((_, None)) => continue,
                    None => return None,
                },
            }
        }
    })
}

/// The row of `key`: held, or else where it is stored.
pub fn get(held: Option<&HeldRows>, stored: Stored<'_>, key: &[u8]) -> Result<Option<Vec<u8>>> {
    if let Some(value) = held.and_then(|held| held.lock().get(key).cloned()) {
        return Ok(value);
    }
    stored.get(key)
}

/// The greatest key of `range` where it is stored or `held` for it, rows
/// removed while held not counted.
pub fn last_key<R>(held: Option<&HeldRows>, stored: Stored<'_>, range: R) -> Result<Option<Vec<u8>>>
where
    R: RangeBounds<Vec<u8>> + Clone,
{
    let held = held.map(|held| held.lock().keys(range.clone())).unwrap_or_default();
    let newest_held = held.iter().rev().find(|(_, present)| **present).map(|(key, _)| key.clone());
    let mut newest_stored = None;
    for key in stored.keys(range, true) {
        let key = key?;
        if held.get(&key) != Some(&false) {
            newest_stored = Some(key);
            break;
        }
    }
    Ok(newest_held.max(newest_stored))
}

/// Every partition's [`HeldRows`] on this node, and where they are stored.
#[derive(Default)]
pub struct HeldRowsByPartition {
    partitions: Mutex<BTreeMap<u32, Partition>>,
}

/// One partition's held rows and where they go.
#[derive(Clone)]
struct Partition {
    tree: sled::Tree,
    messages: Arc<MessageLog>,
    held: Arc<HeldRows>,
}

impl HeldRowsByPartition {
    /// The held rows of `partition`, stored in `tree` and `messages`.
    pub fn get(&self, partition: u32, tree: &sled::Tree, messages: &Arc<MessageLog>) -> Arc<HeldRows> {
        let mut partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let entry = partitions.entry(partition).or_insert_with(|| Partition {
            tree: tree.clone(),
            messages: messages.clone(),
            held: Arc::default(),
        });
        entry.held.clone()
    }

    /// Writes every held row where it is stored: before a checkpoint
    /// records that sled and the message logs hold the log segments so far.
    pub fn write_all_out(&self) -> Result<()> {
        self.write_out(false)
    }

    /// Writes the held messages to their message logs between checkpoints,
    /// a tenth of a second behind the writer, a few at a time, instead of
    /// all at the checkpoint (a once-a-second burst that competed with the
    /// partitions: docs/benchmarks.md, "Performance, fourth steps").
    /// Transient rows stay, to be removed.
    pub fn write_messages_out(&self) -> Result<()> {
        self.write_out(true)
    }

    fn write_out(&self, messages_only: bool) -> Result<()> {
        let partitions: Vec<_> = self.partitions.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        partitions.iter().try_for_each(|partition| {
            let stored = Stored { tree: &partition.tree, messages: &partition.messages };
            partition.held.write_to(stored, messages_only)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition's stores: a sled tree and a message log.
    struct Stores {
        _dir: tempfile::TempDir,
        tree: sled::Tree,
        messages: Arc<MessageLog>,
    }

    impl Stores {
        fn stored(&self) -> Stored<'_> {
            Stored { tree: &self.tree, messages: &self.messages }
        }

        /// The stored row of `key`, not the held one.
        fn stored_row(&self, key: &[u8]) -> Option<Vec<u8>> {
            self.stored().get(key).unwrap()
        }
    }

    fn stores() -> Stores {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let messages = Arc::new(MessageLog::open(&dir.path().join("messages/p00001.log"), 0).unwrap());
        Stores { _dir: dir, tree, messages }
    }

    #[test]
    fn a_row_removed_before_the_checkpoint_never_reaches_sled() {
        let stores = stores();
        let tree = &stores.tree;
        let held = HeldRowsByPartition::default();
        let rows = held.get(1, tree, &stores.messages);
        rows.put(b"o1", b"one");
        rows.put(b"o2", b"two");
        assert!(rows.remove(b"o1", HeldKind::Transient));
        held.write_all_out().unwrap();
        assert_eq!(tree.get(b"o1").unwrap(), None);
        assert_eq!(tree.get(b"o2").unwrap().as_deref(), Some(&b"two"[..]));
        // Written out: a later remove finds it in sled, not here.
        assert!(!rows.remove(b"o2", HeldKind::Transient));
    }

    #[test]
    fn readers_see_sled_with_the_held_rows_laid_over_it() {
        let stores = stores();
        let tree = &stores.tree;
        tree.insert(b"o1", b"in sled").unwrap();
        tree.insert(b"o3", b"in sled").unwrap();
        tree.insert(b"p1", b"other kind").unwrap();
        let rows = HeldRows::default();
        rows.put(b"o2", b"held");
        rows.put(b"o3", b"held, newer");
        let all = overlay(Some(&rows), stores.stored(), b"o".to_vec()..b"p".to_vec(), 10).unwrap();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"o1".to_vec(), b"in sled".to_vec()),
            (b"o2".to_vec(), b"held".to_vec()),
            (b"o3".to_vec(), b"held, newer".to_vec()),
        ];
        assert_eq!(all, expected);
        let first_two = overlay(Some(&rows), stores.stored(), b"o".to_vec()..b"p".to_vec(), 2).unwrap();
        assert_eq!(first_two, expected[..2]);
        let lazily: Vec<_> =
            overlay_iter(Some(&rows), stores.stored(), b"o".to_vec()..b"p".to_vec()).collect::<Result<_>>().unwrap();
        assert_eq!(lazily, expected);
        let from_o2: Vec<_> =
            overlay_iter(Some(&rows), stores.stored(), b"o2".to_vec()..).collect::<Result<_>>().unwrap();
        assert_eq!(from_o2.len(), 3, "o2, o3 (held over sled's) and p1");
        let last = last_key(Some(&rows), stores.stored(), b"o".to_vec()..b"p".to_vec()).unwrap();
        assert_eq!(last.as_deref(), Some(&b"o3"[..]));
        rows.put(b"o4", b"held");
        let last = last_key(Some(&rows), stores.stored(), b"o".to_vec()..b"p".to_vec()).unwrap();
        assert_eq!(last.as_deref(), Some(&b"o4"[..]));
    }

    #[test]
    fn a_checkpoint_moves_rows_without_the_lock_and_a_row_removed_meanwhile_leaves_sled_at_the_next() {
        let stores = stores();
        let tree = &stores.tree;
        let rows = HeldRows::default();
        rows.put(b"o1", b"one");
        rows.put(b"o2", b"two");
        // A checkpoint starts moving o1 and o2; meanwhile the writer
        // removes o1 and puts o3, and readers see exactly that.
        let moving = rows.start_move(false);
        assert!(rows.remove(b"o1", HeldKind::Transient), "held: the caller must not remove it from sled itself");
        rows.put(b"o3", b"three");
        let read = || overlay(Some(&rows), stores.stored(), b"o".to_vec()..b"p".to_vec(), 10).unwrap();
        let expected = vec![(b"o2".to_vec(), b"two".to_vec()), (b"o3".to_vec(), b"three".to_vec())];
        assert_eq!(read(), expected);
        // The move writes what it took, o1 included, and ends.
        for (key, value) in moving.iter() {
            tree.insert(key.as_slice(), value.clone().unwrap()).unwrap();
        }
        rows.lock().moving = Arc::default();
        assert_eq!(tree.get(b"o1").unwrap().as_deref(), Some(&b"one"[..]), "in sled for now");
        assert_eq!(read(), expected, "o1 stays hidden");
        assert_eq!(get(Some(&rows), stores.stored(), b"o1").unwrap(), None);
        assert_eq!(
            last_key(Some(&rows), stores.stored(), b"o".to_vec()..b"o3".to_vec()).unwrap().as_deref(),
            Some(&b"o2"[..])
        );
        assert!(rows.remove(b"o1", HeldKind::Transient), "removed again: still the next checkpoint's to do");
        // The next checkpoint removes it from sled, and holds nothing more.
        rows.write_to(stores.stored(), false).unwrap();
        assert_eq!(tree.get(b"o1").unwrap(), None);
        assert_eq!(read(), expected);
        assert!(!rows.remove(b"o2", HeldKind::Transient), "in sled now");
        assert!(rows.lock().current.is_empty() && rows.lock().moving.is_empty());
    }

    #[test]
    fn a_message_is_held_until_the_checkpoint_and_its_edits_and_removal_reach_the_message_log_in_order() {
        let stores = stores();
        let rows = HeldRows::default();
        let kind = held_kind(b"m1").unwrap();
        assert_eq!(kind, HeldKind::Message);
        rows.put(b"m1", b"first");
        rows.put(b"m2", b"second");
        assert_eq!(stores.stored_row(b"m1"), None, "not in the message log before the checkpoint");
        rows.write_to(stores.stored(), false).unwrap();
        assert_eq!(stores.stored_row(b"m1").as_deref(), Some(&b"first"[..]));
        // Edited after the checkpoint: the held copy is read, the log gets
        // it at the next one.
        rows.put(b"m1", b"edited");
        assert_eq!(get(Some(&rows), stores.stored(), b"m1").unwrap().as_deref(), Some(&b"edited"[..]));
        rows.write_to(stores.stored(), false).unwrap();
        assert_eq!(stores.stored_row(b"m1").as_deref(), Some(&b"edited"[..]));
        // Removed: held as removed (the log has a copy), gone from it next.
        rows.put(b"m3", b"third");
        assert!(rows.remove(b"m1", kind), "a message's removal is the checkpoint's to write");
        assert_eq!(get(Some(&rows), stores.stored(), b"m1").unwrap(), None);
        let newest_first: Vec<_> = overlay_iter_in(Some(&rows), stores.stored(), b"m".to_vec()..b"n".to_vec(), true)
            .collect::<Result<_>>()
            .unwrap();
        let expected = vec![(b"m3".to_vec(), b"third".to_vec()), (b"m2".to_vec(), b"second".to_vec())];
        assert_eq!(newest_first, expected, "backward, the removed m1 hidden though the log still has it");
        assert_eq!(
            last_key(Some(&rows), stores.stored(), b"m".to_vec()..b"m3".to_vec()).unwrap().as_deref(),
            Some(&b"m2"[..])
        );
        rows.write_to(stores.stored(), false).unwrap();
        assert_eq!(stores.stored_row(b"m1"), None);
        assert_eq!(stores.stored_row(b"m3").as_deref(), Some(&b"third"[..]));
        assert_eq!(stores.tree.len(), 0, "messages never reach sled");
    }

    #[test]
    fn between_checkpoints_only_the_messages_are_written_out() {
        let stores = stores();
        let tree = &stores.tree;
        let held = HeldRowsByPartition::default();
        let rows = held.get(1, tree, &stores.messages);
        rows.put(b"m1", b"message");
        rows.put(b"o1", b"outbox");
        rows.put(b"u\0\0\0\0\0\0\0\x01", b"update batch");
        held.write_messages_out().unwrap();
        assert_eq!(stores.stored_row(b"m1").as_deref(), Some(&b"message"[..]));
        assert_eq!(tree.get(b"m1").unwrap(), None, "messages are kept in the message log, not sled");
        assert_eq!(tree.get(b"o1").unwrap(), None, "transient rows wait for their removal");
        assert_eq!(tree.len(), 0);
        assert!(rows.remove(b"o1", HeldKind::Transient), "still held");
        held.write_all_out().unwrap();
        assert_eq!(tree.len(), 1, "the checkpoint writes the rest: the update batch");
        assert_eq!(stores.messages.row_count(), 1);
    }
}
