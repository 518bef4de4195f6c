//! The filesystem through real syscalls on a real mount. Every test skips
//! (with the reason printed) where FUSE cannot be mounted.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use imsg_powercut::{Mount, PowerCutFs, Trigger, fuse_available};
use nix::errno::Errno;
use tempfile::TempDir;

const FIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A mounted filesystem in a temporary directory. The mount is declared first,
/// so it is dropped (unmounted) before the directory is removed.
struct Fixture {
    mount: Option<Mount>,
    fs: PowerCutFs,
    dir: TempDir,
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn unmount(&mut self) {
        self.mount.take();
        assert!(!is_mounted(self.root()), "{} is still mounted", self.root().display());
    }

    fn remount(&mut self) {
        self.mount = Some(self.fs.mount(self.dir.path()).expect("mounting again"));
    }
}

fn fixture() -> Option<Fixture> {
    if let Err(why) = fuse_available() {
        eprintln!("skipping: FUSE is not available here: {why}");
        return None;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let fs = PowerCutFs::new();
    let mount = fs.mount(dir.path()).expect("mounting");
    Some(Fixture { mount: Some(mount), fs, dir })
}

macro_rules! fixture_or_skip {
    () => {
        match fixture() {
            Some(fixture) => fixture,
            None => return,
        }
    };
}

fn is_mounted(path: &Path) -> bool {
    let path = path.canonicalize().unwrap();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo.lines().any(|line| line.split(' ').nth(4) == Some(path.to_str().unwrap()))
}

fn write_synced(path: &Path, bytes: &[u8]) {
    let mut file = File::create(path).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
}

fn sync_directory(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

fn files(fs: &PowerCutFs) -> Vec<(String, u64)> {
    fs.files().into_iter().map(|(path, size)| (path.to_str().unwrap().to_owned(), size)).collect()
}

fn errno(error: &std::io::Error) -> Errno {
    Errno::from_raw(error.raw_os_error().expect("an OS error"))
}

#[test]
fn only_synced_bytes_survive_a_cut() {
    let fx = fixture_or_skip!();
    let path = fx.path("data");
    let mut file = File::create(&path).unwrap();
    file.write_all(b"durable").unwrap();
    file.sync_data().unwrap();
    file.write_all(b" and lost").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"durable and lost");

    fx.fs.cut();
    assert_eq!(fs::read(&path).unwrap(), b"durable");
    let stale = file.write_all(b"x").expect_err("a handle from before the cut is stale");
    assert_eq!(errno(&stale), Errno::EIO);
    drop(file);

    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(1000).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 1000);
    fx.fs.cut();
    assert_eq!(fs::metadata(&path).unwrap().len(), 7, "an extension never synced reverts");
    assert_eq!(fs::read(&path).unwrap(), b"durable");

    let stats = fx.fs.stats();
    assert_eq!((stats.cuts, stats.fsyncs, stats.files), (2, 1, 1));
    assert_eq!(stats.bytes_discarded, 9 + 993);
}

#[test]
fn a_write_with_o_dsync_is_durable() {
    let fx = fixture_or_skip!();
    let path = fx.path("wal");
    let mut file = OpenOptions::new().create(true).write(true).custom_flags(libc::O_DSYNC).open(&path).unwrap();
    file.write_all(b"logged").unwrap();
    fx.fs.cut();
    assert_eq!(fs::read(&path).unwrap(), b"logged");
}

#[test]
fn a_new_entry_is_durable_after_an_fsync_of_anything() {
    let fx = fixture_or_skip!();
    fs::write(fx.path("never-committed"), b"bytes").unwrap();
    fs::create_dir(fx.path("dir")).unwrap();
    fx.fs.cut();
    assert!(!fx.path("never-committed").exists());
    assert!(!fx.path("dir").exists());
    assert_eq!(fx.fs.stats().files, 0);

    fs::create_dir(fx.path("dir")).unwrap();
    fs::write(fx.path("dir/created"), b"data never synced").unwrap();
    write_synced(&fx.path("other"), b"synced");
    fx.fs.cut();
    assert_eq!(fs::read(fx.path("dir/created")).unwrap(), b"", "the entry survives, its data does not");
    assert_eq!(fs::read(fx.path("other")).unwrap(), b"synced");
    assert_eq!(files(&fx.fs), [("dir/created".to_owned(), 0), ("other".to_owned(), 6)]);
}

#[test]
fn an_unlink_is_undone_until_committed() {
    let fx = fixture_or_skip!();
    let path = fx.path("victim");
    write_synced(&path, b"keep");
    fs::remove_file(&path).unwrap();
    assert!(!path.exists());
    fx.fs.cut();
    assert_eq!(fs::read(&path).unwrap(), b"keep", "the unlink was never committed");

    fs::remove_file(&path).unwrap();
    sync_directory(fx.root());
    fx.fs.cut();
    assert!(!path.exists());
    assert_eq!(fx.fs.stats().files, 0);
}

#[test]
fn a_rename_is_durable_once_committed() {
    let fx = fixture_or_skip!();
    let target = fx.path("config");
    let temp = fx.path("config.tmp");
    write_synced(&target, b"old");
    write_synced(&temp, b"new");
    fs::rename(&temp, &target).unwrap();
    sync_directory(fx.root());
    fx.fs.cut();
    assert_eq!(fs::read(&target).unwrap(), b"new");
    assert!(!temp.exists());

    write_synced(&temp, b"newer");
    fs::rename(&temp, &target).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"newer");
    fx.fs.cut();
    assert_eq!(fs::read(&target).unwrap(), b"new", "the rename was never committed");
    assert_eq!(fs::read(&temp).unwrap(), b"newer");
}

#[test]
fn posix_file_semantics() {
    let fx = fixture_or_skip!();
    let path = fx.path("file");

    fs::write(&path, b"one").unwrap();
    let mut appender = OpenOptions::new().append(true).open(&path).unwrap();
    let writer = OpenOptions::new().write(true).open(&path).unwrap();
    writer.write_all_at(b"12345678", 0).unwrap();
    appender.write_all(b"end").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"12345678end", "O_APPEND writes at the current end");

    let exclusive = OpenOptions::new().write(true).create_new(true).open(&path);
    assert_eq!(exclusive.unwrap_err().kind(), ErrorKind::AlreadyExists);

    writer.set_len(2).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"12");
    writer.write_all_at(b"z", 10).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"12\0\0\0\0\0\0\0\0z", "a write past the end zero-fills");
    assert_eq!(nix::unistd::lseek(&writer, 3, nix::unistd::Whence::SeekData), Ok(3));
    assert_eq!(nix::unistd::lseek(&writer, 3, nix::unistd::Whence::SeekHole), Ok(11));

    nix::fcntl::fallocate(&writer, nix::fcntl::FallocateFlags::empty(), 0, 20).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 20);
    let punch = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
    assert_eq!(nix::fcntl::fallocate(&writer, punch, 0, 4), Err(Errno::EOPNOTSUPP));

    OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 0, "O_TRUNC truncates");

    fs::create_dir(fx.path("dir")).unwrap();
    fs::write(fx.path("dir/inner"), b"").unwrap();
    fs::hard_link(&path, fx.path("link")).unwrap();
    std::os::unix::fs::symlink("file", fx.path("symlink")).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().nlink(), 2);
    assert_eq!(fs::read_link(fx.path("symlink")).unwrap(), Path::new("file"));
    let mut names: Vec<_> = fs::read_dir(fx.root()).unwrap().map(|entry| entry.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["dir", "file", "link", "symlink"]);

    assert_eq!(errno(&fs::remove_dir(fx.path("dir")).unwrap_err()), Errno::ENOTEMPTY);
    let no_replace = nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &fx.path("link"),
        nix::fcntl::AT_FDCWD,
        &path,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    );
    assert_eq!(no_replace, Err(Errno::EEXIST));
    fs::rename(fx.path("dir/inner"), fx.path("moved")).unwrap();
    fs::remove_dir(fx.path("dir")).unwrap();
    assert_eq!(files(&fx.fs), [("file".to_owned(), 0), ("link".to_owned(), 0), ("moved".to_owned(), 0)]);

    let mut permissions = fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o600);
    fs::set_permissions(&path, permissions).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn a_cut_answers_an_fsync_blocked_by_a_trigger_with_an_error() {
    let fx = fixture_or_skip!();
    let path = fx.path("x");
    let mut file = File::create(&path).unwrap();
    file.write_all(b"durable").unwrap();
    file.sync_all().unwrap();
    file.write_all(b" pending").unwrap();

    let armed = fx.fs.arm(Trigger::fsync_of("x"));
    let syncing = thread::spawn(move || file.sync_all());
    assert!(armed.wait(FIRE_TIMEOUT), "the trigger fired");
    fx.fs.cut();
    let result = syncing.join().unwrap();
    assert_eq!(errno(&result.unwrap_err()), Errno::EIO);
    assert_eq!(fs::read(&path).unwrap(), b"durable");
    assert_eq!(fx.fs.stats().fsyncs, 1, "the blocked fsync was not applied");

    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b" synced").unwrap();
    let armed = fx.fs.arm(Trigger::fsync_of("x"));
    let syncing = thread::spawn(move || file.sync_data());
    assert!(armed.wait(FIRE_TIMEOUT));
    armed.release();
    syncing.join().unwrap().expect("a released fsync succeeds");
    fx.fs.cut();
    assert_eq!(fs::read(&path).unwrap(), b"durable synced");
}

#[test]
fn a_write_trigger_can_skip_matching_writes() {
    let fx = fixture_or_skip!();
    let mut other = File::create(fx.path("other")).unwrap();
    let mut wal = File::create(fx.path("wal-0001")).unwrap();

    let armed = fx.fs.arm(Trigger::write_to_prefix("wal-").after(2));
    let writing = thread::spawn(move || {
        for record in [b"one ", b"two ", b"3rd "] {
            other.write_all(b"unrelated").unwrap();
            wal.write_all(record)?;
        }
        Ok::<_, std::io::Error>(())
    });
    assert!(armed.wait(FIRE_TIMEOUT));
    assert_eq!(fx.fs.stats().writes, 5, "three writes to `other`, two let through to the WAL");
    armed.release();
    writing.join().unwrap().unwrap();
    assert_eq!(fs::read(fx.path("wal-0001")).unwrap(), b"one two 3rd ");

    let armed = fx.fs.arm(Trigger::write_to("absent"));
    assert!(!armed.wait(Duration::from_millis(50)));
}

#[test]
fn dropping_the_mount_answers_a_blocked_request_and_unmounts() {
    let mut fx = fixture_or_skip!();
    let mut file = File::create(fx.path("y")).unwrap();
    let armed = fx.fs.arm(Trigger::write_to("y"));
    let writing = thread::spawn(move || file.write_all(b"never applied"));
    assert!(armed.wait(FIRE_TIMEOUT));
    fx.unmount();
    assert_eq!(errno(&writing.join().unwrap().unwrap_err()), Errno::EIO);
    assert_eq!(fx.fs.stats().writes, 0);
}

#[test]
fn a_remount_sees_the_state_left_by_the_cut() {
    let mut fx = fixture_or_skip!();
    fs::create_dir(fx.path("data")).unwrap();
    write_synced(&fx.path("data/db"), b"synced");
    fs::write(fx.path("data/blob"), b"lost").unwrap();
    let ino = fs::metadata(fx.path("data/db")).unwrap().ino();
    fx.unmount();
    assert!(!fx.path("data").exists(), "unmounted");
    fx.fs.cut();
    fx.remount();
    assert_eq!(fs::read(fx.path("data/db")).unwrap(), b"synced");
    assert!(!fx.path("data/blob").exists());
    assert_eq!(fs::metadata(fx.path("data/db")).unwrap().ino(), ino, "inode numbers are stable");
    assert_eq!(files(&fx.fs), [("data/db".to_owned(), 6)]);
}
