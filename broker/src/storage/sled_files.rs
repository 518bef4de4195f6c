//! sled's files on disk: opening them so that a power cut at any instant
//! leaves a database sled can open, and making them durable at checkpoints.
//!
//! sled 0.34 makes its log "stable" with `sync_file_range`, which does not
//! flush the drive's cache and never reaches some filesystems: only our own
//! `fdatasync` calls count. Three things follow.
//!
//! - **No blob files, by construction.** sled stores a page fragment larger
//!   than a quarter of its segment size as a separate blob file, written
//!   without any sync and unlinked on sled's own schedule; under a power cut
//!   that lost acknowledged rows and left sled unable to open (issue found
//!   with a power-cut filesystem, see docs/durability.md). The segment size
//!   is fixed when a database is created; [`SEGMENT_SIZE`] is sled's largest
//!   (16 MiB: fragments up to ~4 MiB stay in the log), and every row the
//!   broker writes is at most [`MAX_ROW_BYTES`] (checked where rows are
//!   built, see `WriteBatch`). A sled leaf splits once it holds more than 16
//!   entries, so even a leaf of [`LEAF_ENTRIES_BOUND`] maximal rows stays
//!   under the threshold. A checkpoint still syncs any blob before the log
//!   that may point to it, and warns: finding one is a bug.
//! - **Durable before sled reads it.** After a crash without power loss the
//!   page cache may still hold sled writes that never reached the disk;
//!   sled's recovery reads them and writes a *synced* snapshot that points
//!   into them. A power cut right then would leave a snapshot referring to
//!   lost log bytes. So before sled opens, its files are fdatasync'ed: what
//!   sled recovers from is exactly what is on disk.
//! - **sled's metadata too.** The `conf` file, the data directory and its
//!   parent are synced after creation; a `conf` left empty by a cut during
//!   a first start (nothing was acknowledged yet) is rewritten.
//!
//! sled reports corruption by panicking. Opening catches that and answers an
//! error naming the file and the cause, so the node exits with a clear
//! message instead of a backtrace (or spinning).

use std::{
    fs::File,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// sled's segment size for every database this broker creates.
pub const SEGMENT_SIZE: usize = 16 * 1024 * 1024;

/// sled writes a fragment as a blob once it is larger than this (its
/// `segment_size / MINIMUM_ITEMS_PER_SEGMENT - SEG_HEADER_LEN`, less the
/// message header: rounded down generously).
pub const BLOB_THRESHOLD: usize = SEGMENT_SIZE / 4 - 1024;

/// Largest key plus value the broker ever writes in one row.
pub const MAX_ROW_BYTES: usize = 128 * 1024;

/// A sled leaf splits past 16 entries (and a merge adds at most 4); this
/// bound leaves room on top of both.
pub const LEAF_ENTRIES_BOUND: usize = 28;

const _: () = assert!(LEAF_ENTRIES_BOUND * (MAX_ROW_BYTES + 64) < BLOB_THRESHOLD);

/// Opens (or creates) the sled database in `dir`; see the module docs.
pub fn open(dir: &Path, cache_capacity_bytes: u64) -> Result<sled::Db> {
    create_dir_durably(dir)?;
    let conf = dir.join("conf");
    if std::fs::metadata(&conf).is_ok_and(|m| m.len() == 0) {
        // A first start cut short before `conf` was synced; nothing was
        // ever acknowledged from this directory.
        std::fs::remove_file(&conf).map_err(|e| io_error(&conf, "removing an empty sled conf", e))?;
    }
    let files = SledFiles::new(dir);
    files.sync_all()?;
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_capacity_bytes)
        .segment_size(SEGMENT_SIZE)
        .mode(sled::Mode::HighThroughput)
        // Durability comes from the WAL; sled flushes at checkpoints only.
        .flush_every_ms(None);
    let db = match std::panic::catch_unwind(AssertUnwindSafe(|| config.open())) {
        Ok(Ok(db)) => db,
        Ok(Err(sled::Error::Unsupported(reason))) => {
            return Err(Error::Internal(format!(
                "cannot open {}: {reason} (this data directory was created by an older imsg with a \
                 segment size that lets sled write blob files, which are not power-safe; move its \
                 partitions to a new node with `imsg-broker move-partition`)",
                conf.display()
            )));
        }
        Ok(Err(sled::Error::Corruption { at, .. })) => {
            return Err(Error::Internal(format!(
                "sled's log {} is corrupt at {at:?}; the node cannot start on it",
                dir.join("db").display()
            )));
        }
        Ok(Err(error)) => return Err(Error::Internal(format!("opening sled in {}: {error}", dir.display()))),
        Err(panic) => {
            return Err(Error::Internal(format!(
                "sled could not recover {}: it panicked with `{}`; the node cannot start on it",
                dir.join("db").display(),
                panic_message(&*panic)
            )));
        }
    };
    files.sync_all()?;
    Ok(db)
}

/// What a caught panic said.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".into())
}

/// `create_dir_all`, then fsync of every directory whose entries changed,
/// so the data directory itself survives a power cut.
fn create_dir_durably(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at {
        if path.as_os_str().is_empty() || path.exists() {
            break;
        }
        missing.push(path.to_path_buf());
        at = path.parent();
    }
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, "creating the data directory", e))?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// sled's files in one data directory.
pub struct SledFiles {
    dir: PathBuf,
}

impl SledFiles {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    /// After `flush`: makes sled's log durable, blobs first (the log may
    /// point to them), then the directories naming them.
    pub fn sync(&self) -> Result<()> {
        let blobs = self.dir.join("blobs");
        let mut found = 0;
        if let Ok(entries) = std::fs::read_dir(&blobs) {
            for entry in entries.flatten() {
                if sync_file_if_present(&entry.path())? {
                    found += 1;
                }
            }
        }
        if found > 0 {
            tracing::warn!(blobs = found, "sled wrote blob files: a row over the size bound reached sled (a bug)");
            sync_dir(&blobs)?;
        }
        sync_file_if_present(&self.dir.join("db"))?;
        Ok(())
    }

    /// Everything sled keeps: blobs, log, snapshots, `conf`, and the
    /// directory entries of all of them.
    fn sync_all(&self) -> Result<()> {
        self.sync()?;
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name == "conf" || name.starts_with("snap.") {
                    sync_file_if_present(&entry.path())?;
                }
            }
        }
        sync_dir(&self.dir)
    }
}

/// fdatasync of one file; false when it does not exist (sled may remove a
/// file between a listing and its sync: a file that is gone needs none).
fn sync_file_if_present(path: &Path) -> Result<bool> {
    match File::open(path).and_then(|f| f.sync_data()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(path, "fdatasync", e)),
    }
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, "fsync of directory", e))
}

fn io_error(path: &Path, what: &str, error: std::io::Error) -> Error {
    Error::Internal(format!("{what} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the 50-member group benchmark: sled deleted a blob between
    /// a directory listing and its fdatasync. A vanished file is skipped;
    /// other errors still fail.
    #[test]
    fn a_file_removed_before_its_sync_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("1234");
        assert!(!sync_file_if_present(&blob).unwrap(), "missing file: nothing to sync");
        std::fs::write(&blob, b"data").unwrap();
        assert!(sync_file_if_present(&blob).unwrap());
    }

    /// A database created with another segment size (an older imsg's 512
    /// KiB, which lets sled write blobs) is refused with an error naming the
    /// file, not opened and not a panic.
    #[test]
    fn a_database_with_another_segment_size_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        drop(sled::Config::new().path(dir.path()).segment_size(512 * 1024).open().unwrap());
        let error = loop {
            match open(dir.path(), 1 << 20) {
                Err(Error::Internal(message)) if message.contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(error) => break error.to_string(),
                Ok(_) => panic!("opened a blob-prone database"),
            }
        };
        assert!(error.contains("conf") && error.contains("segment size"), "{error}");
    }

    /// A cut during a first start can leave `conf` empty; that directory
    /// opens (nothing in it was ever acknowledged).
    #[test]
    fn an_empty_conf_from_a_cut_first_start_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("conf"), b"").unwrap();
        let db = open(dir.path(), 1 << 20).unwrap();
        db.insert(b"k", b"v").unwrap();
        assert!(std::fs::metadata(dir.path().join("conf")).unwrap().len() > 0);
    }
}
