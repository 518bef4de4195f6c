//! The log's segment files in the data directory, written over zeros.
//!
//! An `fdatasync` after an append that grows a file must also make the new
//! size and the new blocks durable: an ext4 journal commit (the jbd2
//! thread, its own write and cache flush) before the call returns, once per
//! round. Written over blocks that a file already has, it writes only the
//! data: 128 -> 90-100 us per sync for 700-byte records on this machine's
//! disk, 185 -> 144-152 us per round of the WAL at 1,000 1:1 messages per
//! second (docs/benchmarks.md, "Performance, fifth steps"). So the checkpointer, off the writer's path, readies a
//! *spare* segment ([`Segments::prepare`]): a file of zeros, synced, sized
//! from the last segment; the writer's next [`LogDir::create`] links it
//! into place (its name made durable as before) and overwrites it from the
//! start. Zeros, not `fallocate`: fallocated blocks are *unwritten*
//! extents, and writing them changes metadata again. Not an old segment
//! recycled either: its bytes (messages, content keys) would stay on disk
//! until overwritten, and deleted content must be gone.
//!
//! A segment therefore ends with zeros after its last record; replay reads
//! a zero tail as the segment's clean end ([`super::decode_segment`]).

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{LogDir, LogFile};
use crate::error::{Error, Result};

/// Spares are written in pieces of this size, and sized in multiples of it.
const ZEROS: usize = 1024 * 1024;

/// The segment files of a data directory.
pub struct Segments {
    dir: PathBuf,
    /// A file of zeros for the next segment, if one is ready.
    spare: Mutex<Option<(PathBuf, File)>>,
    spares_made: AtomicU64,
}

impl Segments {
    /// The segments of `dir`. Spares left by an earlier run (a crash while
    /// one was ready) are deleted.
    pub fn new(dir: &Path) -> Self {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with("wal-spare-") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Self { dir: dir.to_path_buf(), spare: Mutex::new(None), spares_made: AtomicU64::new(0) }
    }

    pub fn path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("wal-{number:012}.log"))
    }

    fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io("fsync of the data directory", e))
    }

    fn take_spare(&self) -> Option<(PathBuf, File)> {
        self.spare.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl LogDir for Segments {
    fn list(&self) -> Result<Vec<u64>> {
        let mut numbers = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io("listing the WAL", e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(number) = name.strip_prefix("wal-").and_then(|n| n.strip_suffix(".log"))
                && let Ok(number) = number.parse()
            {
                numbers.push(number);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    fn read(&self, number: u64) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        File::open(self.path(number))
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| io("reading a WAL segment", e))?;
        Ok(bytes)
    }

    /// The spare put in place if one is ready, else a new empty file; either
    /// way its name is durable before anything is written to it.
    fn create(&self, number: u64) -> Result<Box<dyn LogFile>> {
        let path = self.path(number);
        let file = match self.take_spare() {
            Some((spare, file)) => {
                // A link, not a rename: like `create_new`, it refuses to
                // replace a segment of that number.
                let linked = std::fs::hard_link(&spare, &path);
                std::fs::remove_file(&spare).map_err(|e| io("unlinking a spare WAL segment", e))?;
                linked.map_err(|e| io("linking a spare WAL segment", e))?;
                file
            }
            None => OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&path)
                .map_err(|e| io("creating a WAL segment", e))?,
        };
        self.sync_dir()?;
        Ok(Box::new(SegmentFile(file)))
    }

    fn remove(&self, numbers: &[u64]) -> Result<()> {
        for number in numbers {
            std::fs::remove_file(self.path(*number)).map_err(|e| io("removing a WAL segment", e))?;
        }
        if !numbers.is_empty() {
            self.sync_dir()?;
        }
        Ok(())
    }

    fn describe(&self, number: u64) -> String {
        self.path(number).display().to_string()
    }

    /// Writes a spare of at least `bytes` zeros and syncs it, unless one is
    /// ready. Its name need not be durable: a spare lost to a crash is only
    /// a file to delete ([`Segments::new`]).
    fn prepare(&self, bytes: usize) -> Result<()> {
        if self.spare.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            return Ok(());
        }
        let path = self.dir.join(format!("wal-spare-{}.tmp", self.spares_made.fetch_add(1, Ordering::Relaxed)));
        let zeros = vec![0u8; ZEROS];
        let write = || -> std::io::Result<File> {
            let mut file = OpenOptions::new().create_new(true).write(true).open(&path)?;
            for _ in 0..bytes.div_ceil(ZEROS).max(1) {
                file.write_all(&zeros)?;
            }
            file.sync_data()?;
            // The segment's writes start at the beginning.
            file.rewind()?;
            Ok(file)
        };
        match write() {
            Ok(file) => {
                *self.spare.lock().unwrap_or_else(|e| e.into_inner()) = Some((path, file));
                Ok(())
            }
            Err(error) => {
                let _ = std::fs::remove_file(&path);
                Err(io("writing a spare WAL segment", error))
            }
        }
    }
}

struct SegmentFile(File);

impl LogFile for SegmentFile {
    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.0.write_all(bytes).map_err(|e| io("writing the WAL", e))
    }

    fn sync(&mut self) -> Result<()> {
        self.0.sync_data().map_err(|e| io("fdatasync of the WAL", e))
    }
}

fn io(what: &str, error: std::io::Error) -> Error {
    Error::Internal(format!("{what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::wal::{Op, decode_segment, encode_record};

    fn record(key: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, 1, &[Op::Put { key: key.to_vec(), value: b"value".to_vec() }]);
        bytes
    }

    #[test]
    fn a_spare_becomes_the_next_segment_and_its_zero_tail_reads_as_a_clean_end() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::new(dir.path());
        segments.prepare(10).unwrap();
        segments.prepare(10).unwrap(); // one is ready: nothing more
        let mut segment = segments.create(7).unwrap();
        segment.append(&record(b"a")).unwrap();
        segment.append(&record(b"b")).unwrap();
        segment.sync().unwrap();
        let file_len = std::fs::metadata(segments.path(7)).unwrap().len();
        assert_eq!(file_len, ZEROS as u64, "written over the spare's zeros, not appended");
        let (ops, clean) = decode_segment(&segments.read(7).unwrap());
        assert!(clean, "a zero tail is the segment's end");
        assert_eq!(ops.len(), 2);
        assert_eq!(segments.list().unwrap(), vec![7], "no spare left behind, none listed");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // Without a spare, a segment starts empty, as before.
        drop(segments.create(8).unwrap());
        assert_eq!(std::fs::metadata(segments.path(8)).unwrap().len(), 0);
        // A spare never replaces a segment of the same number.
        segments.prepare(1).unwrap();
        assert!(segments.create(8).is_err());
        assert_eq!(std::fs::metadata(segments.path(8)).unwrap().len(), 0);
    }

    #[test]
    fn spares_left_by_a_crash_are_deleted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        Segments::new(dir.path()).prepare(1).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let segments = Segments::new(dir.path());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(segments.list().unwrap().is_empty());
    }

    #[test]
    fn a_record_torn_over_the_zeros_is_not_a_clean_end() {
        let mut bytes = record(b"a");
        let whole = bytes.len();
        let torn = record(b"b");
        bytes.extend_from_slice(&torn[..torn.len() - 3]);
        bytes.resize(whole + 4096, 0);
        let (ops, clean) = decode_segment(&bytes);
        assert_eq!(ops.len(), 1);
        assert!(!clean);
        // Zeros, then bytes: a record whose start was lost, not an end.
        let mut bytes = record(b"a");
        bytes.resize(whole + 64, 0);
        bytes.extend_from_slice(&record(b"c"));
        assert!(!decode_segment(&bytes).1);
    }
}
