//! The durability argument (module docs, and `wal`'s) as deterministic
//! tests: the log on a simulated disk ([`wal::sim::SimDisk`]) that loses
//! what was not synced, tears writes, fails or holds syncs and deletions,
//! with sled in a temp dir. "Replay into a fresh sled" is the worst case of
//! a cut for sled: it lost everything a checkpoint had not yet made durable.

use std::{path::Path, sync::Arc, time::Duration};

use super::*;
use crate::{
    config::BrokerConfig,
    storage::{
        SettingsRecord, Store, WriteBatch,
        wal::{LogDir, sim::SimDisk},
    },
};

fn config(dir: &Path, checkpoint_every: Duration) -> BrokerConfig {
    let mut config = BrokerConfig::new(dir);
    config.partitions = 2;
    config.cache_capacity_bytes = 4 * 1024 * 1024;
    config.checkpoint_interval = checkpoint_every;
    config
}

/// Checkpoints never come in these tests unless asked for.
const NEVER: Duration = Duration::from_secs(3600);

fn open(dir: &Path, disk: &SimDisk, checkpoint_every: Duration) -> (Arc<Store>, FailStop) {
    let fail_stop = FailStop::without_exit();
    let store = Store::open_with(&config(dir, checkpoint_every), Arc::new(disk.clone()), fail_stop.clone()).unwrap();
    (store, fail_stop)
}

fn settings(user: &str, hide: bool) -> WriteBatch {
    let mut batch = WriteBatch::default();
    batch.put_settings(user, &SettingsRecord::with_privacy(hide, hide));
    batch
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Users with settings in partition 0 after recovering from `disk` into
/// the sled at `dir`.
fn recovered(dir: &Path, disk: &SimDisk) -> Vec<(String, bool)> {
    let (store, _) = open(dir, disk, NEVER);
    let users = store.partition(0).unwrap().all_settings().unwrap();
    store.close().unwrap();
    users.into_iter().map(|(user, record)| (user, record.hide_read_receipts)).collect()
}

#[test]
fn nothing_is_published_before_its_round_is_synced_and_a_cut_then_loses_it() {
    let (dir, disk) = (tempfile::tempdir().unwrap(), SimDisk::new());
    let (store, _) = open(dir.path(), &disk, NEVER);
    disk.hold_syncs();
    let generation = store.partition(0).unwrap().apply(settings("alice", true), true);
    std::thread::sleep(Duration::from_millis(50));
    assert!(store.durability().durable() < generation, "published before its fdatasync");

    let after = tempfile::tempdir().unwrap();
    assert_eq!(recovered(after.path(), &disk.after_cut(0)), vec![], "nobody was told, and it is gone");
    disk.release_syncs();
    wait_until("published after the sync", || store.durability().durable() >= generation);
    store.close().unwrap();
}

#[test]
fn a_published_batch_survives_a_cut_that_tears_the_write_after_it() {
    let (dir, disk) = (tempfile::tempdir().unwrap(), SimDisk::new());
    let (store, _) = open(dir.path(), &disk, NEVER);
    let partition = store.partition(0).unwrap();
    let published = partition.apply(settings("alice", true), true);
    wait_until("alice published", || store.durability().durable() >= published);
    disk.hold_syncs();
    let torn = partition.apply(settings("bob", true), true);
    wait_until("bob's round written, waiting for its sync", || {
        // What is written (synced or not), not yet what would survive.
        disk.list().unwrap().iter().any(|n| wal::decode_segment(&disk.read(*n).unwrap()).0.len() == 2)
    });
    assert!(store.durability().durable() < torn);

    let cut = disk.after_cut(7); // bob's record cut 7 bytes in
    let newest = *cut.list().unwrap().last().unwrap();
    let (ops, complete) = wal::decode_segment(&cut.read(newest).unwrap());
    assert!(!complete && ops.len() == 1, "a torn tail after one whole record");
    let after = tempfile::tempdir().unwrap();
    assert_eq!(recovered(after.path(), &cut), vec![("alice".to_string(), true)]);
    disk.release_syncs();
    store.close().unwrap();
}

#[test]
fn a_failed_fsync_stops_the_writer_and_acknowledges_nothing() {
    let (dir, disk) = (tempfile::tempdir().unwrap(), SimDisk::new());
    let (store, fail_stop) = open(dir.path(), &disk, NEVER);
    disk.fail_next_sync();
    let generation = store.partition(0).unwrap().apply(settings("alice", true), true);
    wait_until("the node fail-stops", || fail_stop.reason().is_some());
    assert!(fail_stop.reason().unwrap().contains("simulated I/O error"), "{:?}", fail_stop.reason());
    std::thread::sleep(Duration::from_millis(50));
    assert!(store.durability().durable() < generation, "acknowledged after a failed fsync");
    assert!(store.close().is_err(), "a failed store must not pretend to close cleanly");
}

#[test]
fn a_cut_during_a_checkpoint_replays_every_segment_it_had_not_yet_deleted() {
    let (dir, disk) = (tempfile::tempdir().unwrap(), SimDisk::new());
    let (store, _) = open(dir.path(), &disk, Duration::from_millis(20));
    disk.hold_removals();
    let partition = store.partition(0).unwrap();
    for n in 0..6 {
        let generation = partition.apply(settings(&format!("user{n}"), true), true);
        wait_until("published", || store.durability().durable() >= generation);
        std::thread::sleep(Duration::from_millis(30)); // the writer closes segments meanwhile
    }
    wait_until("a checkpoint waits to delete", || disk.removal_waiting());
    assert!(disk.list().unwrap().len() >= 3, "several segments closed: {:?}", disk.list().unwrap());

    // sled lost all it had (worst case); the log still has every segment.
    let after = tempfile::tempdir().unwrap();
    let users = recovered(after.path(), &disk.after_cut(0));
    assert_eq!(users.len(), 6, "{users:?}");
    disk.release_removals();
    store.close().unwrap();
}

#[test]
fn a_crash_between_a_checkpoint_and_its_deletions_skips_the_covered_segments() {
    let (dir, disk) = (tempfile::tempdir().unwrap(), SimDisk::new());
    disk.set_durable_removals(false);
    let (store, _) = open(dir.path(), &disk, Duration::from_millis(20));
    let partition = store.partition(0).unwrap();
    let old = partition.apply(settings("alice", false), true);
    wait_until("old value published", || store.durability().durable() >= old);
    let first = disk.list().unwrap()[0];
    wait_until("a checkpoint deleted the old value's segment", || !disk.list().unwrap().contains(&first));
    // Only that deletion is lost; later ones (the close's) reach the disk.
    disk.set_durable_removals(true);
    let new = partition.apply(settings("alice", true), true);
    wait_until("new value published", || store.durability().durable() >= new);
    // Every segment with a record gone, not the newest segment gone: the
    // writer may already have started the next one, empty, which no
    // checkpoint deletes until something is written to it. (One removed
    // between the listing and the read holds nothing.)
    let holds_a_record = |n: &u64| disk.read(*n).is_ok_and(|bytes| !wal::decode_segment(&bytes).0.is_empty());
    wait_until("a checkpoint deleted the new value's segment", || !disk.list().unwrap().iter().any(holds_a_record));
    store.close().unwrap();
    drop(partition);
    drop(store);

    // The first deletion was lost: the old value's segment is back, the
    // newer ones that overwrote it are not.
    let cut = disk.after_cut(0);
    assert_eq!(cut.list().unwrap().first(), Some(&first));
    assert_eq!(recovered(dir.path(), &cut), vec![("alice".to_string(), true)], "old value replayed over new");
}

/// `--commit-window-us`: back-to-back rounds start at least the window
/// apart, so what arrives meanwhile shares one sync; a round after a quiet
/// spell starts at once.
#[test]
fn rounds_start_at_least_the_commit_window_apart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), NEVER);
    config.commit_window = Duration::from_millis(200);
    let store = Store::open_with(&config, Arc::new(SimDisk::new()), FailStop::without_exit()).unwrap();
    let partition = store.partition(0).unwrap();
    std::thread::sleep(Duration::from_millis(250)); // quiet: longer than the window

    let started = Instant::now();
    let first = partition.apply(settings("alice", true), true);
    wait_until("the first published", || store.durability().durable() >= first);
    let first_took = started.elapsed();
    let second = partition.apply(settings("bob", true), true);
    wait_until("the second published", || store.durability().durable() >= second);
    assert!(first_took < Duration::from_millis(150), "a round after a quiet spell waited {first_took:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the second round came {:?} after the first",
        started.elapsed()
    );
    store.close().unwrap();
}

/// The writer is signalled only when it waits for what changed
/// (`Durability::wake_writer`). Were a signal lost, a round would wait for
/// its timeout, here an hour: many threads appending urgent batches while
/// owing fan-outs, each waiting for its own to be published, all finish
/// within the test's deadline.
#[test]
fn no_urgent_append_waits_for_the_writers_timeout_when_signals_are_skipped() {
    let (dir, disk) = (tempfile::tempdir().unwrap(), SimDisk::new());
    let (store, _) = open(dir.path(), &disk, NEVER);
    let appenders: Vec<_> = (0..4)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || {
                for n in 0..250 {
                    let owed = store.durability().owe();
                    let generation =
                        store.partition(thread % 2).unwrap().apply(settings(&format!("u{thread}-{n}"), true), true);
                    drop(owed);
                    wait_until("an urgent batch published", || store.durability().durable() >= generation);
                }
            })
        })
        .collect();
    for appender in appenders {
        appender.join().unwrap();
    }
    assert!(store.durability().rounds() >= 1);
    store.close().unwrap();
}
