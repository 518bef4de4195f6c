//! A FUSE filesystem for tests that simulates power loss.
//!
//! [`PowerCutFs`] keeps every file's bytes in memory, tracks what `fsync` made
//! durable, and on [`PowerCutFs::cut`] throws away everything else, the way a
//! machine losing power would. A test mounts it, runs a real server with its
//! data directory on the mount, kills the server, cuts, and restarts the
//! server on what survived: anything the server acknowledged must still be
//! there. Tests that find FUSE unusable ([`fuse_available`]) should skip.
//!
//! # Crash model
//!
//! The model is the weakest guarantee a POSIX filesystem gives, so software
//! that survives it survives real disks; it follows what ext4 and xfs do with
//! their journals for metadata.
//!
//! - **Data.** A `write` (or truncate, extend, `fallocate`) changes a file's
//!   *current* bytes only. An `fsync` or `fdatasync` of the file makes its
//!   current bytes and size its *durable* ones; so does a write with `O_DSYNC`
//!   or `O_SYNC`, which is a write plus `fdatasync`. Nothing else makes data
//!   durable: no writeback of other files, no timer, no `close`. A page cache
//!   may hold unsynced data for ever, and software must not rely on luck.
//!   `sync_file_range` never reaches FUSE, which is the point: it is not a
//!   durability barrier (it does not flush the disk cache, nor metadata).
//! - **Namespace** (create, mkdir, unlink, rmdir, rename, link, symlink):
//!   applied to the *current* namespace at once and pending until the next
//!   `fsync` of *any* file or directory, which makes the whole namespace
//!   durable, in order, like a journal commit. So the durable namespace is the
//!   namespace as of the last `fsync` of anything. A file's own `fsync`
//!   therefore also makes its directory entry durable, as on ext4 and xfs;
//!   software that wants to be portable still syncs the directory.
//! - **Cut.** Every file's bytes and size go back to its durable ones (a file
//!   never synced is empty), and the namespace goes back to the durable one:
//!   files created since vanish, files unlinked since reappear with their
//!   durable bytes, renames are undone. Inodes no namespace names any more are
//!   freed. Handles opened before the cut belong to the killed process and
//!   answer `EIO`.
//! - Permissions and timestamps are not part of the model: they are kept as
//!   set, uid and gid are 0 unless changed.
//!
//! # Kernel caching
//!
//! Entry and attribute TTLs are zero and every file is opened with
//! `FOPEN_DIRECT_IO`, so every lookup, stat, read and write reaches this
//! filesystem and the kernel never holds data or metadata that a cut would
//! have to invalidate. Inode numbers are never reused: one the kernel still
//! remembers from before a cut either names the same file or answers
//! `ENOENT`. A filesystem can also be unmounted and mounted again (on the same
//! state) around a cut, for a fresh kernel view. `flock` and `fcntl` locks are
//! handled by the kernel locally; a shared mmap of a file is refused (direct
//! I/O). Files are also opened with `FOPEN_NOFLUSH`, so `close` never waits for
//! this filesystem: without it, a test process exiting with a file still open
//! on its own mount would deadlock, its last thread waiting in `close` for an
//! answer from the thread serving the mount, which is already gone.
//!
//! # Triggers
//!
//! [`PowerCutFs::arm`] stops the filesystem at a chosen `write` or `fsync`:
//! before applying the matching request it notifies the [`Armed`] handle and
//! blocks the request until [`PowerCutFs::cut`] (answered `EIO`, not applied)
//! or [`Armed::release`] (applied normally). Requests are served on one
//! thread, so every other request waits too: the filesystem is frozen at that
//! point, and the test kills the server there.
//!
//! A process killed while its request is blocked here cannot finish dying (it
//! stays in state `D`): the kernel waits for the answer to a request the
//! filesystem already took. Call [`PowerCutFs::cut`] *before* waiting for the
//! killed process. No test thread may touch the mount while a request is
//! blocked, or it waits too.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use imsg_powercut::{PowerCutFs, Trigger};
//! # fn example(dir: &std::path::Path, mut server: std::process::Child) -> std::io::Result<()> {
//! let fs = PowerCutFs::new();
//! let mount = fs.mount(dir)?;
//! let armed = fs.arm(Trigger::fsync_of_prefix("wal-").after(100));
//! // ... start the server on `dir` and load it ...
//! assert!(armed.wait(Duration::from_secs(30)));
//! server.kill()?;
//! fs.cut(); // answers the blocked fsync, so the server can die
//! server.wait()?;
//! drop(mount);
//! let _mount = fs.mount(dir)?; // restart the server on what survived
//! # Ok(())
//! # }
//! ```

mod file_data;
mod fuse_ops;
mod model;
mod mount;
mod trigger;

use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use crate::mount::Mount;
pub use crate::trigger::{Armed, Trigger};

use crate::model::Model;
use crate::trigger::Triggers;

/// The simulated disk: its state outlives mounts, so it can be unmounted and
/// mounted again. Clones share the state.
#[derive(Clone)]
pub struct PowerCutFs {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// State shared by the handles, the mounts and the armed triggers.
pub(crate) struct Shared {
    model: Mutex<Model>,
    triggers: Triggers,
}

impl Shared {
    pub(crate) fn model(&self) -> MutexGuard<'_, Model> {
        lock(&self.model)
    }
}

/// Dropped with the last [`PowerCutFs`] clone: nobody is left to cut or
/// release, so a blocked request is answered.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.triggers.shut_down();
    }
}

/// Counters since [`PowerCutFs::new`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// `write` requests applied.
    pub writes: u64,
    /// Bytes those writes carried.
    pub bytes_written: u64,
    /// `fsync` and `fdatasync` requests applied, of files and directories.
    pub fsyncs: u64,
    /// Power cuts.
    pub cuts: u64,
    /// Bytes of file changes cuts threw away: unsynced ranges of surviving
    /// files, whole contents of files that vanished.
    pub bytes_discarded: u64,
    /// Regular files in the current namespace.
    pub files: u64,
}

impl PowerCutFs {
    /// An empty filesystem (just a root directory, durable).
    pub fn new() -> Self {
        let shared = Arc::new(Shared { model: Mutex::new(Model::new()), triggers: Triggers::default() });
        PowerCutFs { _owner: Arc::new(Owner(shared.clone())), shared }
    }

    /// Mounts the filesystem on `mountpoint` (an existing directory), served
    /// on a background thread until the returned [`Mount`] is dropped.
    ///
    /// Fails with a message saying why if FUSE cannot be used here (see
    /// [`fuse_available`]) or the kernel refuses the mount.
    pub fn mount(&self, mountpoint: &Path) -> std::io::Result<Mount> {
        mount::mount(self.shared.clone(), mountpoint)
    }

    /// The power cut: reverts to the durable state (see the crate docs) and
    /// answers a request blocked by a trigger with `EIO`.
    pub fn cut(&self) {
        self.shared.model().cut();
        self.shared.triggers.fail_blocked();
    }

    /// Arms `trigger`, replacing any armed trigger that has not fired.
    pub fn arm(&self, trigger: Trigger) -> Armed {
        Armed { id: self.shared.triggers.arm(trigger), shared: self.shared.clone() }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.shared.model().stats()
    }

    /// Every regular file in the current namespace: its path relative to the
    /// root and its current size, sorted by path.
    pub fn files(&self) -> Vec<(PathBuf, u64)> {
        self.shared.model().files()
    }
}

impl Default for PowerCutFs {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for PowerCutFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PowerCutFs").field("stats", &self.stats()).finish()
    }
}

/// `Ok` if this process can mount a [`PowerCutFs`]: it runs as root (mounting
/// without `fusermount` needs it) and can open `/dev/fuse`. Otherwise, why not.
pub fn fuse_available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root, which mounting FUSE without fusermount needs".to_owned());
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(mount::FUSE_DEVICE)
        .map(drop)
        .map_err(|error| format!("cannot open {}: {error}", mount::FUSE_DEVICE))
}

/// Locks `mutex`, ignoring poisoning: the state stays usable if a test
/// thread panicked while holding it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
