//! Content keys, so that deleted content is gone from the disk
//! (crypto-shredding).
//!
//! sled is log-structured: overwriting or removing a row appends the new
//! state and leaves the old bytes in its file until the segment happens to
//! be reused, which may be never. So a message's content is never written
//! to sled in the clear: it is sealed (ChaCha20-Poly1305, aws-lc's) under a key of its
//! own, and the key lives here, in a plain file of fixed 32-byte slots per
//! partition (`keys/p<partition>.keys`) that is overwritten in place. An
//! edit seals the new content under a new key in the same slot; an unsend
//! zeroes the slot. Once that write is synced, the old ciphertext left in
//! sled (or anywhere) can no longer be read by anyone, the server included.
//!
//! Keys travel like rows: a slot is the row `K` + slot (big-endian u64) of
//! its partition, written and removed through the write-ahead log with the
//! message row it belongs to, so the same group commit makes both durable
//! and replay restores both. The writer applies slot rows here instead of
//! to sled, and holds them in memory ([`KeyFile::hold_all`]), as it holds
//! messages (`held`): the log already makes them durable, and a `pwrite`
//! per partition in each of the writer's rounds was a syscall in the one
//! serial stage of a send. The checkpointer writes them to the file every
//! `WRITE_BEHIND_EVERY` and at each checkpoint, and syncs the key files
//! before it records that the log segments are covered (`checkpoint`);
//! reads lay the held slots over the file. A partition move copies the
//! slots with the other rows ([`super::PartitionStore::rows_after`]).

use std::{
    collections::{BTreeMap, HashMap},
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use super::held::Generations;
use crate::error::{Error, Result};

/// Bytes of one key slot.
pub const KEY_BYTES: usize = 32;

/// First byte of a key slot's row key.
pub const KEY_ROW_TAG: u8 = b'K';

/// The row key of `slot`.
pub fn key_row(slot: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(KEY_ROW_TAG);
    key.extend_from_slice(&slot.to_be_bytes());
    key
}

/// The slot a row key names, if it is a key slot's row.
pub fn slot_of_row(key: &[u8]) -> Option<u64> {
    match key {
        [KEY_ROW_TAG, slot @ ..] => Some(u64::from_be_bytes(slot.try_into().ok()?)),
        _ => None,
    }
}

/// A fresh random key.
pub fn new_key() -> [u8; KEY_BYTES] {
    rand::random()
}

/// Seals `plaintext` under `key`. Each key seals exactly one plaintext (an
/// edit gets a new key), so a fixed nonce is safe; `context` (the message's
/// place) is authenticated, so a sealed row cannot be moved to another.
///
/// ChaCha20-Poly1305 (RFC 8439) as aws-lc implements it: the bytes RustCrypto's
/// `chacha20poly1305` sealed before (a test pins that), at a fifth of its
/// cost on a message-sized plaintext (2.3 against 0.43 µs for 70 bytes, on
/// the worker of every send and every read of history).
pub fn seal(key: &[u8; KEY_BYTES], context: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut sealed = Vec::with_capacity(plaintext.len() + CHACHA20_POLY1305.tag_len());
    sealed.extend_from_slice(plaintext);
    cipher(key)
        .seal_in_place_append_tag(fixed_nonce(), Aad::from(context), &mut sealed)
        .expect("sealing a message-sized plaintext cannot fail");
    sealed
}

/// Opens what [`seal`] sealed; an error when the key or context is wrong.
pub fn open(key: &[u8; KEY_BYTES], context: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    let mut plain = sealed.to_vec();
    let plain_len = cipher(key)
        .open_in_place(fixed_nonce(), Aad::from(context), &mut plain)
        .map_err(|_| Error::Internal("sealed content does not open with its key".into()))?
        .len();
    plain.truncate(plain_len);
    Ok(plain)
}

fn cipher(key: &[u8; KEY_BYTES]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("ChaCha20-Poly1305 takes a 32-byte key"))
}

/// One key, one plaintext: the nonce need not vary.
fn fixed_nonce() -> Nonce {
    Nonce::assume_unique_for_key([0; NONCE_LEN])
}

/// The node's key files, one per partition, opened on first use.
pub struct KeyFiles {
    dir: PathBuf,
    files: Mutex<BTreeMap<u32, Arc<KeyFile>>>,
}

impl KeyFiles {
    pub fn new(data_dir: &Path) -> Self {
        Self { dir: data_dir.to_owned(), files: Mutex::new(BTreeMap::new()) }
    }

    pub fn get(&self, partition: u32) -> Result<Arc<KeyFile>> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = files.get(&partition) {
            return Ok(file.clone());
        }
        let file = Arc::new(KeyFile::open(&self.dir, partition)?);
        files.insert(partition, file.clone());
        Ok(file)
    }

    /// Syncs every key file written since its last sync: before a
    /// checkpoint records that the log segments are covered.
    pub fn sync_all(&self) -> Result<()> {
        self.each(KeyFile::sync)
    }

    /// Writes every held slot to its file ([`KeyFile::write_held`]).
    pub fn write_held_all(&self) -> Result<()> {
        self.each(KeyFile::write_held)
    }

    fn each(&self, what: impl Fn(&KeyFile) -> Result<()>) -> Result<()> {
        let files: Vec<_> = self.files.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        files.iter().try_for_each(|file| what(file))
    }
}

/// Slots written by the writer and not yet in the file, by slot: a key,
/// or `None` for an erased slot; in two generations, as held rows
/// ([`Generations`]).
type HeldSlots = Generations<u64, Option<[u8; KEY_BYTES]>>;

/// One partition's key slots.
pub struct KeyFile {
    path: PathBuf,
    file: File,
    /// Written since the last sync.
    dirty: AtomicBool,
    /// The next slot to hand out: past every slot ever written.
    next_slot: AtomicU64,
    held: Mutex<HeldSlots>,
}

impl KeyFile {
    pub fn open(dir: &Path, partition: u32) -> Result<Self> {
        let keys_dir = dir.join("keys");
        std::fs::create_dir_all(&keys_dir).map_err(|e| io("creating", &keys_dir, e))?;
        let path = keys_dir.join(format!("p{partition:05}.keys"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("opening", &path, e))?;
        // The new file's name must survive a power cut before any key in it
        // is relied on (it is, at the first checkpoint).
        File::open(&keys_dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing", &keys_dir, e))?;
        let len = file.metadata().map_err(|e| io("reading the size of", &path, e))?.len();
        let next_slot = len.div_ceil(KEY_BYTES as u64);
        Ok(Self {
            path,
            file,
            dirty: AtomicBool::new(false),
            next_slot: AtomicU64::new(next_slot),
            held: Mutex::default(),
        })
    }

    /// A slot no message uses (slots are never reused: one whose write a
    /// crash lost is simply left empty).
    pub fn allocate(&self) -> u64 {
        self.next_slot.fetch_add(1, Ordering::Relaxed)
    }

    /// The key in `slot`; `None` when it was erased or never written.
    ///
    /// (Slot numbers come from rows, which a corrupt file or an imported
    /// partition could fill with anything: [`slot_offset`] bounds them.)
    pub fn get(&self, slot: u64) -> Result<Option<[u8; KEY_BYTES]>> {
        if let Some(held) = self.held_slot(slot) {
            return Ok(held);
        }
        let mut key = [0u8; KEY_BYTES];
        // A slot past any file (a corrupt or imported row): no key.
        let Some(offset) = slot_offset(slot) else { return Ok(None) };
        match self.file.read_exact_at(&mut key, offset) {
            Ok(()) => Ok(slot_key(key)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(io("reading", &self.path, e)),
        }
    }

    /// The keys of `slots` (erased and unwritten ones left out), read in as
    /// few reads as the slots allow: neighbours within [`READ_SPAN`] slots
    /// share one read.
    pub fn get_many(&self, slots: impl IntoIterator<Item = u64>) -> Result<HashMap<u64, [u8; KEY_BYTES]>> {
        // Slots past any file (corrupt or imported rows) have no key.
        let mut slots: Vec<u64> = slots.into_iter().filter(|slot| slot_offset(*slot).is_some()).collect();
        slots.sort_unstable();
        slots.dedup();
        let mut keys = HashMap::with_capacity(slots.len());
        let mut rest = &slots[..];
        while let Some(&first) = rest.first() {
            let run = rest.iter().take_while(|slot| **slot - first < READ_SPAN).count();
            let last = rest[run - 1];
            let mut bytes = vec![0u8; ((last - first + 1) as usize) * KEY_BYTES];
            let read = read_at_most(&self.file, &mut bytes, first * KEY_BYTES as u64)
                .map_err(|e| io("reading", &self.path, e))?;
            for &slot in &rest[..run] {
                let at = ((slot - first) as usize) * KEY_BYTES;
                if at + KEY_BYTES <= read
                    && let Some(key) = slot_key(bytes[at..at + KEY_BYTES].try_into().expect("a slot's bytes"))
                {
                    keys.insert(slot, key);
                }
            }
            rest = &rest[run..];
        }
        let held = self.lock_held();
        for slot in slots {
            match held.get(&slot) {
                Some(Some(key)) => keys.insert(slot, *key),
                Some(None) => keys.remove(&slot),
                None => None,
            };
        }
        Ok(keys)
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, HeldSlots> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The held write of `slot`, if any: `Some(None)` for an erased slot.
    fn held_slot(&self, slot: u64) -> Option<Option<[u8; KEY_BYTES]>> {
        self.lock_held().get(&slot).copied()
    }

    /// Holds slot writes (or with `None`, erasures) in memory, the last
    /// write of a slot winning, until [`Self::write_held`]: the writer's
    /// way, the log having made them durable (module docs).
    pub fn hold_all(&self, slots: Vec<(u64, Option<&[u8]>)>) -> Result<()> {
        let mut held = self.lock_held();
        for (slot, key) in slots {
            // A zero key is an erased slot in the file: so here too.
            let key = match key {
                Some(key) => slot_key(<[u8; KEY_BYTES]>::try_from(key).map_err(|_| key_size_error(key))?),
                None => None,
            };
            slot_offset(slot).ok_or_else(|| past_any_file(slot))?;
            held.current.insert(slot, key);
            self.next_slot.fetch_max(slot + 1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes the held slots to the file (not synced: [`Self::sync`]).
    /// Only the checkpointer calls it, so two never run at once.
    pub fn write_held(&self) -> Result<()> {
        let moving = {
            let mut held = self.lock_held();
            if held.current.is_empty() && held.moving.is_empty() {
                return Ok(());
            }
            held.start_move(std::mem::take)
        };
        self.put_all(moving.iter().map(|(slot, key)| (*slot, key.as_ref().map(|key| &key[..]))).collect())?;
        self.lock_held().finish_move();
        Ok(())
    }

    /// Writes (or with `None` erases) a slot, in place. Durable at the next
    /// [`Self::sync`].
    pub fn put(&self, slot: u64, key: Option<&[u8]>) -> Result<()> {
        self.put_all(vec![(slot, key)])
    }

    /// Writes (or with `None` erases) many slots, the last write of a slot
    /// winning, with one write per run of adjacent slots.
    pub fn put_all(&self, mut slots: Vec<(u64, Option<&[u8]>)>) -> Result<()> {
        // Stable: of several writes to one slot, the last stays last.
        slots.sort_by_key(|(slot, _)| *slot);
        let mut newest: Vec<(u64, Option<&[u8]>)> = Vec::with_capacity(slots.len());
        for (slot, key) in slots {
            match newest.last_mut() {
                Some(last) if last.0 == slot => last.1 = key,
                _ => newest.push((slot, key)),
            }
        }
        let mut rest = &newest[..];
        while let Some(&(first, _)) = rest.first() {
            let run = rest.iter().enumerate().take_while(|(i, (slot, _))| *slot == first + *i as u64).count();
            let mut bytes = Vec::with_capacity(run * KEY_BYTES);
            for (_, key) in &rest[..run] {
                match key {
                    Some(key) if key.len() == KEY_BYTES => bytes.extend_from_slice(key),
                    Some(key) => return Err(key_size_error(key)),
                    None => bytes.extend_from_slice(&[0; KEY_BYTES]),
                }
            }
            let offset = slot_offset(first).ok_or_else(|| past_any_file(first))?;
            self.file.write_all_at(&bytes, offset).map_err(|e| io("writing", &self.path, e))?;
            self.next_slot.fetch_max(first + run as u64, Ordering::Relaxed);
            self.dirty.store(true, Ordering::Release);
            rest = &rest[run..];
        }
        Ok(())
    }

    /// Every written slot from `from` on, in order, at most `limit`.
    pub fn slots_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, [u8; KEY_BYTES])>> {
        let end = self.next_slot.load(Ordering::Relaxed);
        let mut found = Vec::new();
        let mut slot = from;
        while slot < end && found.len() < limit {
            if let Some(key) = self.get(slot)? {
                found.push((slot, key));
            }
            slot += 1;
        }
        Ok(found)
    }

    /// Makes every write so far durable (a no-op when nothing changed).
    pub fn sync(&self) -> Result<()> {
        if self.dirty.swap(false, Ordering::AcqRel)
            && let Err(e) = self.file.sync_data()
        {
            self.dirty.store(true, Ordering::Release);
            return Err(io("syncing", &self.path, e));
        }
        Ok(())
    }
}

/// A slot's bytes as its key: all zeros is an erased (or never written)
/// slot.
fn slot_key(bytes: [u8; KEY_BYTES]) -> Option<[u8; KEY_BYTES]> {
    (bytes != [0; KEY_BYTES]).then_some(bytes)
}

fn key_size_error(key: &[u8]) -> Error {
    Error::Internal(format!("a content key of {} bytes", key.len()))
}

fn past_any_file(slot: u64) -> Error {
    Error::Internal(format!("content key slot {slot} is past any key file"))
}

/// Slots one read of [`KeyFile::get_many`] may span (8 KiB).
pub const READ_SPAN: u64 = 256;

/// Reads into `buf` from `offset` until it is full or the file ends;
/// returns how much was read.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn io(what: &str, path: &Path, error: std::io::Error) -> Error {
    Error::Internal(format!("{what} {}: {error}", path.display()))
}

/// Where `slot`'s key is in the file; `None` for a slot no file can hold
/// (its offset would overflow).
fn slot_offset(slot: u64) -> Option<u64> {
    slot.checked_mul(KEY_BYTES as u64).filter(|offset| offset.checked_add(KEY_BYTES as u64 * READ_SPAN).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_sealed_by_earlier_versions_opens_and_seals_to_the_same_bytes() {
        // Before, RustCrypto's `chacha20poly1305` sealed every row; the
        // algorithm and nonce are the same, so are the bytes, both ways.
        use chacha20poly1305::{
            ChaCha20Poly1305, KeyInit,
            aead::{Aead, Payload},
        };
        for len in [0usize, 1, 63, 64, 70, 300, 4096] {
            let (key, context) = (new_key(), format!("dm_{len}/7"));
            let plain: Vec<u8> = (0..len).map(|n| (n * 7 + len) as u8).collect();
            let earlier = ChaCha20Poly1305::new(&key.into())
                .encrypt(&Default::default(), Payload { msg: &plain, aad: context.as_bytes() })
                .unwrap();
            assert_eq!(seal(&key, context.as_bytes(), &plain), earlier, "{len} bytes");
            assert_eq!(open(&key, context.as_bytes(), &earlier).unwrap(), plain, "{len} bytes");
            let mut tampered = earlier.clone();
            tampered[0] ^= 1;
            assert!(open(&key, context.as_bytes(), &tampered).is_err(), "{len} bytes");
        }
    }

    #[test]
    fn an_erased_slot_no_longer_opens_what_it_sealed_and_its_key_bytes_are_gone_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyFile::open(dir.path(), 3).unwrap();
        let slot = keys.allocate();
        let key = new_key();
        let sealed = seal(&key, b"dm_1/7", b"meet me at noon");
        assert!(!sealed.windows(4).any(|w| w == b"noon"), "sealed content is not in the clear");
        keys.put(slot, Some(&key)).unwrap();
        keys.sync().unwrap();
        let stored = keys.get(slot).unwrap().unwrap();
        assert_eq!(open(&stored, b"dm_1/7", &sealed).unwrap(), b"meet me at noon");
        assert!(open(&stored, b"dm_1/8", &sealed).is_err(), "bound to its place");

        keys.put(slot, None).unwrap();
        keys.sync().unwrap();
        assert_eq!(keys.get(slot).unwrap(), None);
        let file = std::fs::read(dir.path().join("keys/p00003.keys")).unwrap();
        assert!(!file.windows(KEY_BYTES).any(|w| w == key), "the key's bytes are overwritten");
    }

    #[test]
    fn many_keys_are_read_together_and_match_one_by_one_reads() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyFile::open(dir.path(), 1).unwrap();
        let written: Vec<(u64, [u8; KEY_BYTES])> = [0u64, 1, 5, 255, 256, 900, 2000]
            .into_iter()
            .map(|slot| {
                let key = new_key();
                keys.put(slot, Some(&key)).unwrap();
                (slot, key)
            })
            .collect();
        keys.put(5, None).unwrap();
        let asked = [2000u64, 0, 1, 5, 255, 256, 900, 901, 5000];
        let found = keys.get_many(asked).unwrap();
        for slot in asked {
            assert_eq!(found.get(&slot).copied(), keys.get(slot).unwrap(), "slot {slot}");
        }
        assert_eq!(found.len(), written.len() - 1, "the erased slot and unwritten ones are left out");
    }

    #[test]
    fn many_writes_land_like_the_same_writes_one_by_one_the_last_of_a_slot_winning() {
        let dir = tempfile::tempdir().unwrap();
        let (batched, single) = (KeyFile::open(dir.path(), 1).unwrap(), KeyFile::open(dir.path(), 2).unwrap());
        let keys: Vec<[u8; KEY_BYTES]> = (0..6).map(|_| new_key()).collect();
        let writes: Vec<(u64, Option<&[u8]>)> = vec![
            (7, Some(&keys[0])),
            (3, Some(&keys[1])),
            (4, Some(&keys[2])),
            (3, None),
            (5, Some(&keys[3])),
            (9, Some(&keys[4])),
            (4, Some(&keys[5])),
        ];
        for (slot, key) in &writes {
            single.put(*slot, *key).unwrap();
        }
        batched.put_all(writes).unwrap();
        for slot in 0..12 {
            assert_eq!(batched.get(slot).unwrap(), single.get(slot).unwrap(), "slot {slot}");
        }
        assert_eq!(batched.get(4).unwrap(), Some(keys[5]), "the later write of a slot wins");
        assert_eq!(batched.get(3).unwrap(), None, "erased after being written");
        assert_eq!(batched.allocate(), 10);
    }

    /// The writer's slots are held in memory: read at once (one by one,
    /// together, in order), in the file only once written, and a held
    /// erasure hides the file's key until then.
    #[test]
    fn held_slots_are_read_over_the_file_and_reach_it_when_written() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyFile::open(dir.path(), 4).unwrap();
        let path = dir.path().join("keys/p00004.keys");
        let (old, new) = (new_key(), new_key());
        keys.put(2, Some(&old)).unwrap();
        keys.put(3, Some(&old)).unwrap();
        keys.hold_all(vec![(1, Some(&new)), (2, None), (3, Some(&[0; KEY_BYTES]))]).unwrap();
        assert_eq!(keys.get(1).unwrap(), Some(new), "a held key is read before it is in the file");
        assert_eq!(keys.get(2).unwrap(), None, "a held erasure hides the file's key");
        assert_eq!(keys.get(3).unwrap(), None, "a zero key is an erasure, as in the file");
        assert_eq!(keys.get_many([1, 2, 3]).unwrap(), HashMap::from([(1, new)]));
        assert_eq!(keys.slots_from(0, 10).unwrap(), vec![(1, new)]);
        assert_eq!(keys.allocate(), 4, "held slots are never handed out again");
        let file = std::fs::read(&path).unwrap();
        assert!(!file.windows(KEY_BYTES).any(|w| w == new), "held: not in the file yet");
        assert!(file.windows(KEY_BYTES).any(|w| w == old), "the erasure is not in the file yet");

        keys.write_held().unwrap();
        let file = std::fs::read(&path).unwrap();
        assert!(file.windows(KEY_BYTES).any(|w| w == new), "written");
        assert!(!file.windows(KEY_BYTES).any(|w| w == old), "the erased key's bytes are overwritten");
        assert_eq!(keys.get(1).unwrap(), Some(new));
        assert_eq!(keys.get(2).unwrap(), None);
    }

    #[test]
    fn slots_are_never_handed_out_twice_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyFile::open(dir.path(), 0).unwrap();
        let (a, b) = (keys.allocate(), keys.allocate());
        keys.put(b, Some(&new_key())).unwrap();
        keys.sync().unwrap();
        drop(keys);
        let keys = KeyFile::open(dir.path(), 0).unwrap();
        let c = keys.allocate();
        assert!(c > a && c > b, "{a} {b} {c}");
        assert_eq!(keys.slots_from(0, 10).unwrap().iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![b]);
        assert_eq!(slot_of_row(&key_row(b)), Some(b));
        assert_eq!(slot_of_row(b"Kshort"), None);
    }
}
