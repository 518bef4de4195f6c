//! A partition's rows as the broker reads them back: keys laid out as the
//! broker lays them out (or any key), values arbitrary bytes, written into
//! a real store (sled, the write-ahead log and the content-key file, in a
//! temporary directory) through `WriteBatch::put_row`, the path a
//! partition move copies another node's rows with. Then every typed read
//! of `PartitionStore` runs over them: the record decodes of rows.rs,
//! user_rows.rs and moderation_rows.rs, and their key parsing (numbers
//! after a prefix, `user/other` pairs, text after a prefix, content-key
//! slots merged into a scan).
//!
//! Proves: no rows on disk make a read panic (they may fail with an
//! error), the writer never fails on them (the node would stop), and a
//! full scan (`rows_after`, what a partition move exports) returns exactly
//! the rows written, each with its value.
//!
//! Input: row count byte, then rows (`imsg_fuzz::read_row`), then the
//! reads' parameters: seq range (two u64), a page limit byte, an update-log
//! cursor (u64), a conversation and a user id (pieces) and a scan start
//! key (piece).
//!
//! The store lives for the whole run; each input first removes the
//! previous input's rows in the same batch. Its directory is
//! `$TMPDIR/imsg-fuzz-rows-<pid>`; directories of processes that are gone
//! are removed at start.

#![no_main]

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use imsg_broker::{
    BrokerConfig, FsyncMode,
    storage::{PartitionStore, Store, WriteBatch, shred},
};
use imsg_fuzz::{CONVERSATIONS, Input, USERS, read_row};
use libfuzzer_sys::fuzz_target;

/// Most rows one input writes.
const MAX_ROWS: usize = 32;

struct Fixture {
    store: Arc<Store>,
    partition: PartitionStore,
    /// Keys the previous input wrote, removed by the next one.
    previous: Mutex<Vec<Vec<u8>>>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let tmp = std::env::temp_dir();
        remove_stale_dirs(&tmp);
        let dir = tmp.join(format!("imsg-fuzz-rows-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = BrokerConfig::new(&dir);
        config.partitions = 1;
        config.cache_capacity_bytes = 8 * 1024 * 1024;
        // Durable enough for a scratch store; every round still reaches
        // sled before it is published, which is all the reads need.
        config.fsync = FsyncMode::Interval(Duration::from_millis(50));
        let store = Store::open(&config).expect("opening the scratch store");
        let partition = store.partition(0).expect("partition 0");
        Fixture { store, partition, previous: Mutex::new(Vec::new()) }
    })
}

/// Removes the directories of earlier runs whose process is gone.
fn remove_stale_dirs(tmp: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("imsg-fuzz-rows-")) else { continue };
        if !PathBuf::from("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let partition = &fixture.partition;
    let mut input = Input::new(data);

    // Write: the previous input's rows out, this one's in, one batch.
    let mut batch = WriteBatch::default();
    let mut previous = fixture.previous.lock().unwrap();
    for key in previous.drain(..) {
        batch.remove_row(key);
    }
    let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for _ in 0..(input.byte() as usize % (MAX_ROWS + 1)) {
        let (_, key, value) = read_row(&mut input);
        previous.push(key.clone());
        // An all-zero content key is an erased slot: no row.
        if shred::slot_of_row(&key).is_some() && value.iter().all(|b| *b == 0) {
            expected.remove(&key);
        } else {
            expected.insert(key.clone(), value.clone());
        }
        batch.put_row(key, value);
    }
    drop(previous);
    if !batch.is_empty() {
        let generation = partition.apply(batch, true);
        futures::executor::block_on(partition.durable(generation));
    }
    if let Some(reason) = fixture.store.durability().fail_stop().reason() {
        panic!("the writer failed on these rows: {reason}");
    }

    // Read: everything the broker reads, over whatever is there.
    let (from, to) = (input.u64(), input.u64());
    let limit = input.byte() as usize;
    let cursor = input.u64();
    let own_conversation = String::from_utf8_lossy(input.piece()).into_owned();
    let own_user = String::from_utf8_lossy(input.piece()).into_owned();
    let after = input.piece().to_vec();

    let _ = partition.meta();
    let _ = partition.ownership();
    let _ = partition.next_numbers_in_logs();
    let _ = partition.outbox_from(from);
    let _ = partition.update_batches().collect::<Vec<_>>();
    let _ = partition.update_batches_from(cursor).collect::<Vec<_>>();
    let _ = partition.all_settings();
    let _ = partition.all_inbox_entries();
    let _ = partition.all_relations();
    let _ = partition.all_push_targets();
    let _ = partition.all_notify_settings();
    let _ = partition.pending_pushes();
    let _ = partition.reports();
    let _ = partition.audit_entries();
    let users: Vec<&str> = USERS.iter().copied().chain([own_user.as_str()]).collect();
    for conversation in CONVERSATIONS.iter().copied().chain([own_conversation.as_str()]) {
        let _ = partition.conversation(conversation);
        let last = partition.last_message_seq(conversation);
        for newest_first in [false, true] {
            let _ = partition.messages(conversation, from, to, limit, newest_first);
            let _ = partition.messages(conversation, 0, u64::MAX, 64, newest_first);
        }
        for seq in [from, to, last.unwrap_or(0)] {
            let _ = partition.stored_message(conversation, seq);
        }
        let _ = partition.receipts(conversation);
        for user in &users {
            let _ = partition.hidden_between(conversation, user, from, to);
            let _ = partition.hidden_between(conversation, user, 0, u64::MAX);
        }
    }
    let _ = partition.rows_after(Some(&after), limit);

    // A full scan is exactly what was written.
    let scanned = partition.rows_after(None, 4 * MAX_ROWS).expect("a full scan");
    let expected: Vec<(Vec<u8>, Vec<u8>)> = expected.into_iter().collect();
    assert_eq!(scanned, expected, "a full scan is not what was written");
});
