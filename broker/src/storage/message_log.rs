//! Messages (`m` rows) in an append-only file per partition, not in sled.
//!
//! sled was the largest cost left on the commit path: the checkpointer's
//! inserts of message rows and sled's I/O threads writing them out were
//! ~16 µs of CPU per message in the in-process bench (44% of it), and a
//! third of the inserts split a leaf (sled splits past 16 entries, and
//! messages arrive in seq order). A message is written once and read by
//! key or by a conversation's range; an edit or unsend replaces it now and
//! then. That is a log with an index, so that is what this is: a record
//! per row appended to `messages/p<partition>.log`, and an in-memory index
//! of where each value is ([`index`]: 16 bytes a message), rebuilt at open
//! by reading the file.
//!
//! ## Durability
//! Rows reach the file the way they reached sled: held in memory after the
//! writer's round ([`super::held`]), appended by the checkpointer every
//! `WRITE_BEHIND_EVERY` and at each checkpoint, never synced in between.
//! A checkpoint syncs the file and records its end in sled's default tree
//! ([`MessageLogs::sync_and_record_all`]) before the flush that records
//! `wal_from` ([`super::checkpoint`]): the end and the marker become
//! durable together. At open the file is cut back to the recorded end
//! (what lies beyond was never vouched for, and may be torn after a power
//! cut) and the write-ahead log is replayed from the marker, which writes
//! again every message after it. Replay appends rows the file may already
//! hold; the last record of a key wins, so that is harmless.
//!
//! ## Deleted content
//! An edit or removal appends a new record (a tombstone for a removal)
//! and leaves the old bytes in the file, as sled left them in its own. The
//! content in them is sealed under a key in the partition's key file
//! ([`super::shred`]), which the edit or unsend erased: the bytes left
//! behind open for nobody. Space is not reclaimed: the file only grows.
//!
//! ## Format
//! Record: `key_len: u32 LE`, `value_len: u32 LE` ([`TOMBSTONE`] for a
//! removal), `crc32: u32 LE` of the lengths, key and value; then the key and
//! the value.

mod index;

use self::index::{Index, Place, Span};
use std::{
    collections::{BTreeMap, VecDeque},
    fs::{File, OpenOptions},
    io::{BufReader, Read},
    ops::{Bound, RangeBounds},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use super::sled_files::sync_dir;
use crate::error::{Error, Result};

/// First byte of the keys kept here.
pub const MESSAGE_TAG: u8 = b'm';

/// `value_len` of a removal's record.
const TOMBSTONE: u32 = u32::MAX;

/// Bytes before a record's key.
const HEADER_BYTES: u64 = 12;

/// Index entries a range walk takes under the lock at a time.
const WALK_CHUNK: usize = 64;

/// Whether a row of this key is kept in the message log.
pub fn is_message_key(key: &[u8]) -> bool {
    key.first() == Some(&MESSAGE_TAG)
}

/// Key, in sled's default tree, of the recorded end of `partition`'s log.
fn end_key(partition: u32) -> Vec<u8> {
    let mut key = b"message_log_end/".to_vec();
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// The rows in the file, and where the next record goes.
#[derive(Default)]
struct Rows {
    index: Index,
    end: u64,
}

/// One partition's message log.
pub struct MessageLog {
    path: PathBuf,
    file: File,
    rows: Mutex<Rows>,
    /// Appended to since the last sync.
    dirty: AtomicBool,
}

impl MessageLog {
    /// Opens (or creates) the log at `path`, cut back to `end` (the end a
    /// checkpoint recorded; what follows was never vouched for), and reads
    /// its index. A damaged record before `end` is an error: it was synced.
    pub fn open(path: &Path, end: u64) -> Result<Self> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io("opening", path, e))?;
        // The new file's name must survive a power cut before a checkpoint
        // relies on what is in it.
        sync_dir(dir)?;
        let len = file.metadata().map_err(|e| io("reading the size of", path, e))?.len();
        if len < end {
            return Err(Error::Internal(format!(
                "message log {} has {len} bytes, but a checkpoint recorded {end}",
                path.display()
            )));
        }
        if len > end {
            file.set_len(end).map_err(|e| io("cutting back", path, e))?;
        }
        let index = read_index(&file, end).map_err(|e| match e {
            Error::Internal(what) => Error::Internal(format!("message log {}: {what}", path.display())),
            other => other,
        })?;
        Ok(Self { path: path.to_owned(), file, rows: Mutex::new(Rows { index, end }), dirty: AtomicBool::new(false) })
    }

    fn lock(&self) -> MutexGuard<'_, Rows> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends rows (`None`: removed) with one write, in order, the last of
    /// a key winning.
    pub fn write<'r>(&self, rows: impl IntoIterator<Item = (&'r [u8], Option<&'r [u8]>)>) -> Result<()> {
        let mut bytes = Vec::new();
        let mut placed = Vec::new();
        for (key, value) in rows {
            let start = bytes.len() as u64;
            encode(&mut bytes, key, value);
            let place =
                value.map(|value| Place { offset: start + HEADER_BYTES + key.len() as u64, len: value.len() as u32 });
            placed.push((key, place));
        }
        if placed.is_empty() {
            return Ok(());
        }
        let mut rows = self.lock();
        let at = rows.end;
        self.file.write_all_at(&bytes, at).map_err(|e| io("appending to", &self.path, e))?;
        self.dirty.store(true, Ordering::Release);
        rows.end += bytes.len() as u64;
        for (key, place) in placed {
            match place {
                Some(place) => rows.index.insert(key, Place { offset: at + place.offset, ..place }),
                None => rows.index.remove(key),
            }
        }
        Ok(())
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let place = self.lock().index.get(key);
        place.map(|place| self.read(place)).transpose()
    }

    fn read(&self, place: Place) -> Result<Vec<u8>> {
        let mut value = vec![0; place.len as usize];
        self.file.read_exact_at(&mut value, place.offset).map_err(|e| io("reading", &self.path, e))?;
        Ok(value)
    }

    /// The rows of `range` in key order (descending when `backward`), read
    /// lazily: the index is walked a chunk at a time, so a long range holds
    /// the lock only briefly and reads only what is taken.
    pub fn rows<R>(&self, range: R, backward: bool) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + '_
    where
        R: RangeBounds<Vec<u8>>,
    {
        self.walk(range, backward).map(|(key, place)| Ok((key, self.read(place)?)))
    }

    /// The keys of `range` in key order (descending when `backward`).
    pub fn keys<R>(&self, range: R, backward: bool) -> impl Iterator<Item = Vec<u8>> + '_
    where
        R: RangeBounds<Vec<u8>>,
    {
        self.walk(range, backward).map(|(key, _)| key)
    }

    fn walk<R>(&self, range: R, backward: bool) -> impl Iterator<Item = (Vec<u8>, Place)> + '_
    where
        R: RangeBounds<Vec<u8>>,
    {
        let mut lower = range.start_bound().cloned();
        let mut upper = range.end_bound().cloned();
        let mut taken: VecDeque<(Vec<u8>, Place)> = VecDeque::new();
        let mut exhausted = false;
        std::iter::from_fn(move || {
            if taken.is_empty() && !exhausted {
                let span = Span { lower: &lower, upper: &upper, backward };
                taken = self.lock().index.chunk(span, WALK_CHUNK).into();
                exhausted = taken.len() < WALK_CHUNK;
                if let Some((last, _)) = taken.back() {
                    let past = Bound::Excluded(last.clone());
                    if backward { upper = past } else { lower = past }
                }
            }
            taken.pop_front()
        })
    }

    /// Makes every append so far durable; returns the end it covers.
    pub fn sync(&self) -> Result<u64> {
        let end = self.lock().end;
        if self.dirty.swap(false, Ordering::AcqRel)
            && let Err(e) = self.file.sync_data()
        {
            self.dirty.store(true, Ordering::Release);
            return Err(io("syncing", &self.path, e));
        }
        Ok(end)
    }

    /// Rows in the index (tests).
    #[cfg(test)]
    pub fn row_count(&self) -> usize {
        self.lock().index.len()
    }
}

fn encode(out: &mut Vec<u8>, key: &[u8], value: Option<&[u8]>) {
    let lengths = [(key.len() as u32).to_le_bytes(), value.map_or(TOMBSTONE, |v| v.len() as u32).to_le_bytes()];
    let mut crc = crc32fast::Hasher::new();
    lengths.iter().for_each(|bytes| crc.update(bytes));
    crc.update(key);
    crc.update(value.unwrap_or_default());
    lengths.iter().for_each(|bytes| out.extend_from_slice(bytes));
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value.unwrap_or_default());
}

/// Reads every record before `end` into an index (the last of a key wins).
fn read_index(file: &File, end: u64) -> Result<Index> {
    let mut reader = BufReader::with_capacity(1 << 20, file.take(end));
    let mut rows = Index::default();
    let mut offset = 0u64;
    let damaged = |offset: u64, what: &str| Error::Internal(format!("damaged record at offset {offset}: {what}"));
    while offset < end {
        let mut header = [0u8; HEADER_BYTES as usize];
        reader.read_exact(&mut header).map_err(|_| damaged(offset, "cut short"))?;
        let word = |i: usize| u32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        let (key_len, value_len, crc) = (word(0), word(1), word(2));
        let body_len = key_len as u64 + if value_len == TOMBSTONE { 0 } else { value_len as u64 };
        if offset + HEADER_BYTES + body_len > end {
            return Err(damaged(offset, "runs past the recorded end"));
        }
        let mut body = vec![0u8; body_len as usize];
        reader.read_exact(&mut body).map_err(|_| damaged(offset, "cut short"))?;
        let mut check = crc32fast::Hasher::new();
        check.update(&header[..8]);
        check.update(&body);
        if check.finalize() != crc {
            return Err(damaged(offset, "checksum mismatch"));
        }
        let key = &body[..key_len as usize];
        if value_len == TOMBSTONE {
            rows.remove(key);
        } else {
            rows.insert(key, Place { offset: offset + HEADER_BYTES + key_len as u64, len: value_len });
        }
        offset += HEADER_BYTES + body_len;
    }
    Ok(rows)
}

fn io(what: &str, path: &Path, error: std::io::Error) -> Error {
    Error::Internal(format!("{what} {}: {error}", path.display()))
}

/// The node's message logs, one per partition, opened on first use.
pub struct MessageLogs {
    dir: PathBuf,
    db: sled::Db,
    logs: Mutex<BTreeMap<u32, Arc<MessageLog>>>,
}

impl MessageLogs {
    pub fn new(data_dir: &Path, db: sled::Db) -> Self {
        Self { dir: data_dir.join("messages"), db, logs: Mutex::default() }
    }

    /// `partition`'s log, whose rows live in `tree` otherwise. Opening it
    /// moves any message rows still in sled (written by a version before
    /// this log) into it.
    pub fn get(&self, partition: u32, tree: &sled::Tree) -> Result<Arc<MessageLog>> {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(log) = logs.get(&partition) {
            return Ok(log.clone());
        }
        let end =
            self.db.get(end_key(partition))?.and_then(|v| v.as_ref().try_into().ok()).map_or(0, u64::from_be_bytes);
        let log = Arc::new(MessageLog::open(&self.dir.join(format!("p{partition:05}.log")), end)?);
        self.move_out_of_sled(partition, tree, &log)?;
        logs.insert(partition, log.clone());
        Ok(log)
    }

    /// Moves the message rows of `tree` into `log`: appended and synced,
    /// the end recorded, then removed from sled and sled flushed. A crash
    /// before the flush moves them again (the last record of a key wins).
    fn move_out_of_sled(&self, partition: u32, tree: &sled::Tree, log: &MessageLog) -> Result<()> {
        let range = [MESSAGE_TAG].to_vec()..[MESSAGE_TAG + 1].to_vec();
        let mut moved = Vec::new();
        let mut chunk = Vec::new();
        for row in tree.range(range) {
            let (key, value) = row?;
            chunk.push((key.to_vec(), value.to_vec()));
            if chunk.len() == 1024 {
                log.write(chunk.iter().map(|(k, v)| (k.as_slice(), Some(v.as_slice()))))?;
                moved.extend(chunk.drain(..).map(|(k, _)| k));
            }
        }
        log.write(chunk.iter().map(|(k, v)| (k.as_slice(), Some(v.as_slice()))))?;
        moved.extend(chunk.into_iter().map(|(k, _)| k));
        if moved.is_empty() {
            return Ok(());
        }
        self.db.insert(end_key(partition), &log.sync()?.to_be_bytes())?;
        for key in &moved {
            tree.remove(key)?;
        }
        self.db.flush()?;
        tracing::info!(partition, rows = moved.len(), "moved message rows from sled to the message log");
        Ok(())
    }

    /// Syncs every log and records its end, for the checkpoint's flush to
    /// make durable with `wal_from` (module docs).
    pub fn sync_and_record_all(&self) -> Result<()> {
        let logs: Vec<_> = self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone().into_iter().collect();
        for (partition, log) in logs {
            self.db.insert(end_key(partition), &log.sync()?.to_be_bytes())?;
        }
        Ok(())
    }
}

/// Where a partition's rows are kept once out of memory: sled, and the
/// message log for message rows. The two hold disjoint keys.
#[derive(Clone, Copy)]
pub struct Stored<'a> {
    pub tree: &'a sled::Tree,
    pub messages: &'a MessageLog,
}

impl<'a> Stored<'a> {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if is_message_key(key) {
            return self.messages.get(key);
        }
        Ok(self.tree.get(key)?.map(|value| value.to_vec()))
    }

    /// Writes rows (`None`: removed): message rows to the log with one
    /// append, the others to sled.
    pub fn write<'r>(&self, rows: impl IntoIterator<Item = (&'r [u8], Option<&'r [u8]>)>) -> Result<()> {
        let mut messages = Vec::new();
        for (key, value) in rows {
            match value {
                _ if is_message_key(key) => messages.push((key, value)),
                Some(value) => {
                    self.tree.insert(key, value)?;
                }
                None => {
                    self.tree.remove(key)?;
                }
            }
        }
        self.messages.write(messages)
    }

    /// The rows of `range`, in key order (descending when `backward`),
    /// read lazily.
    pub fn rows<R>(self, range: R, backward: bool) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a
    where
        R: RangeBounds<Vec<u8>> + Clone,
    {
        let tree = sled_range(self.tree, &range, backward).map(|row| {
            let (key, value) = row?;
            Ok((key.to_vec(), value.to_vec()))
        });
        merge(tree, self.messages.rows(range, backward), backward, |row| {
            row.as_ref().ok().map(|(key, _)| key.as_slice())
        })
    }

    /// The keys of `range`, in key order (descending when `backward`).
    pub fn keys<R>(self, range: R, backward: bool) -> impl Iterator<Item = Result<Vec<u8>>> + 'a
    where
        R: RangeBounds<Vec<u8>> + Clone,
    {
        let tree = sled_range(self.tree, &range, backward).map(|row| Ok(row?.0.to_vec()));
        merge(tree, self.messages.keys(range, backward).map(Ok), backward, |key| key.as_ref().ok().map(Vec::as_slice))
    }
}

fn sled_range<'a, R: RangeBounds<Vec<u8>>>(
    tree: &'a sled::Tree,
    range: &R,
    backward: bool,
) -> Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + 'a> {
    let stored = tree.range::<&[u8], _>((as_slice(range.start_bound()), as_slice(range.end_bound())));
    if backward { Box::new(stored.rev()) } else { Box::new(stored) }
}

pub(super) fn as_slice(bound: Bound<&Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(key) => Bound::Included(key.as_slice()),
        Bound::Excluded(key) => Bound::Excluded(key.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Two walks of disjoint keys as one, in the walk's order; an item without
/// a key (an error) comes out first.
pub(super) fn merge<T>(
    a: impl Iterator<Item = T>,
    b: impl Iterator<Item = T>,
    backward: bool,
    key_of: fn(&T) -> Option<&[u8]>,
) -> impl Iterator<Item = T> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || {
        let take_a = match (a.peek(), b.peek()) {
            (None, None) => return None,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(x), Some(y)) => match (key_of(x), key_of(y)) {
                (None, _) => true,
                (_, None) => false,
                (Some(x), Some(y)) => (x < y) != backward,
            },
        };
        if take_a { a.next() } else { b.next() }
    })
}

#[cfg(test)]
mod tests;
