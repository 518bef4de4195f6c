//! Mounting without `fusermount`: as root, `mount(2)` takes an open
//! `/dev/fuse` descriptor directly, and fuser serves it on a background
//! thread. Unmounting is ours too, so it can fall back to a lazy unmount
//! when something still has a file open on the mount.

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use fuser::{BackgroundSession, Config, Session, SessionACL};
use nix::mount::{MntFlags, MsFlags};
use nix::unistd::{getegid, geteuid};

use crate::Shared;
use crate::fuse_ops::FuseAdapter;

pub(crate) const FUSE_DEVICE: &str = "/dev/fuse";

/// How often a busy mount is retried before falling back to a lazy unmount:
/// a process killed while using the mount may still be closing its files.
const UNMOUNT_ATTEMPTS: u32 = 10;
const UNMOUNT_RETRY_DELAY: Duration = Duration::from_millis(20);

/// A mounted [`crate::PowerCutFs`]. Dropping it answers any request blocked by
/// a trigger with `EIO`, disarms the trigger, and unmounts (lazily if the
/// mount is still busy after a short wait, so no mount is ever left behind).
pub struct Mount {
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mount").field("mountpoint", &self.mountpoint).finish()
    }
}

pub(crate) fn mount(shared: Arc<Shared>, mountpoint: &Path) -> io::Result<Mount> {
    crate::fuse_available().map_err(|why| io::Error::new(io::ErrorKind::PermissionDenied, why))?;
    let mountpoint = mountpoint.canonicalize()?;
    let device = OpenOptions::new().read(true).write(true).open(FUSE_DEVICE)?;
    let options = format!("fd={},rootmode=40755,user_id={},group_id={}", device.as_raw_fd(), geteuid(), getegid());
    nix::mount::mount(
        Some("powercut"),
        &mountpoint,
        Some("fuse.powercut"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|errno| {
        io::Error::new(
            io::Error::from(errno).kind(),
            format!("mount(2) of a FUSE filesystem on {} refused: {errno}", mountpoint.display()),
        )
    })?;
    let adapter = FuseAdapter { shared: shared.clone() };
    match Session::from_fd(adapter, OwnedFd::from(device), SessionACL::Owner, Config::default())
        .and_then(Session::spawn)
    {
        Ok(session) => Ok(Mount { mountpoint, session: Some(session), shared }),
        Err(error) => {
            unmount(&mountpoint);
            Err(error)
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.shared.triggers.shut_down();
        let completely = unmount(&self.mountpoint);
        if let Some(session) = self.session.take()
            && completely
        {
            // The kernel ended the connection with the unmount, so the session
            // thread is finishing; after a lazy unmount it only finishes once the
            // last file open on the detached mount is closed, so it is not waited for.
            let _ = session.join();
        }
    }
}

/// Unmounts, retrying while busy, then lazily. Returns whether the filesystem
/// is completely gone (rather than only detached from the directory tree).
fn unmount(mountpoint: &Path) -> bool {
    for attempt in 1..=UNMOUNT_ATTEMPTS {
        match nix::mount::umount(mountpoint) {
            Ok(()) => return true,
            Err(nix::errno::Errno::EBUSY) if attempt < UNMOUNT_ATTEMPTS => thread::sleep(UNMOUNT_RETRY_DELAY),
            Err(_) => break,
        }
    }
    let _ = nix::mount::umount2(mountpoint, MntFlags::MNT_DETACH);
    false
}
