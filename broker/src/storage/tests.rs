//! Tests of the store: recovery, replay, checkpoints, row bounds, and
//! what a checkpoint leaves on disk of unsent content.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use imsg_proto::v1::Message;

use super::{sled_files::MAX_ROW_BYTES, *};

fn config(dir: &Path) -> BrokerConfig {
    let mut config = BrokerConfig::new(dir);
    config.partitions = 2;
    config.cache_capacity_bytes = 4 * 1024 * 1024;
    config
}

/// Reopens in the same process: sled's I/O pool may hold the file lock
/// for a moment after the last handle is dropped (a restart is a new
/// process and never meets this).
fn reopen(dir: &Path) -> Arc<Store> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(&config(dir)) {
            Err(Error::Storage(e)) if e.to_string().contains("lock") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

fn wait_published(store: &Store, generation: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.durability().durable() < generation {
        assert!(Instant::now() < deadline, "the writer never published");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A released partition's rows go (in chunks: this one has more than a
/// chunk); its ownership record and other partitions' rows stay.
#[test]
fn clearing_a_partition_keeps_only_its_ownership_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&config(dir.path())).unwrap();
    let (released, neighbour) = (store.partition(0).unwrap(), store.partition(1).unwrap());
    let mut batch = WriteBatch::default();
    for n in 0..2_500 {
        batch.put_inbox_entry(&format!("user{n}"), "dm_0123", false);
    }
    batch.put_ownership(&OwnershipRecord { epoch: 3, released: true });
    wait_published(&store, released.apply(batch, true));
    let mut batch = WriteBatch::default();
    batch.put_inbox_entry("alice", "dm_0123", false);
    wait_published(&store, neighbour.apply(batch, true));

    wait_published(&store, released.clear_data().unwrap());
    let left: Vec<Vec<u8>> = released.rows_after(None, 10).unwrap().into_iter().map(|(key, _)| key).collect();
    assert_eq!(left, vec![OWNERSHIP_KEY.to_vec()]);
    assert_eq!(released.ownership().unwrap(), Some(OwnershipRecord { epoch: 3, released: true }));
    assert_eq!(neighbour.all_inbox_entries().unwrap().len(), 1, "other partitions are untouched");
    assert_eq!(released.clear_data().unwrap(), 0, "nothing left to clear");
    store.close().unwrap();
}

/// A crash leaves a log whose last record was cut short. Opening replays
/// every whole record, ignores the torn tail, and starts a fresh log.
#[test]
fn recovery_replays_the_wal_up_to_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut logged = WriteBatch::default();
    logged.put_settings("alice", &SettingsRecord::with_privacy(true, false));
    let mut torn = WriteBatch::default();
    torn.put_settings("bob", &SettingsRecord::with_privacy(true, true));
    let mut bytes = Vec::new();
    wal::encode_record(&mut bytes, 1, &logged.ops);
    let whole = bytes.len();
    wal::encode_record(&mut bytes, 1, &torn.ops);
    bytes.truncate(whole + (bytes.len() - whole) / 2);
    std::fs::write(dir.path().join("wal-000000000007.log"), &bytes).unwrap();

    let store = Store::open(&config(dir.path())).unwrap();
    let settings = store.partition(1).unwrap().all_settings().unwrap();
    assert_eq!(settings.len(), 1, "only the whole record is replayed: {settings:?}");
    assert_eq!(settings[0].0, "alice");
    assert!(settings[0].1.hide_read_receipts);
    let segments = wal::LogDir::list(&wal::Segments::new(dir.path())).unwrap();
    assert_eq!(segments, vec![8], "replayed segments are removed once sled holds them");
    store.close().unwrap();
}

/// What a partition hands over becomes readable once published, and a
/// clean close checkpoints it into sled so the next open replays nothing.
#[test]
fn published_batches_are_readable_and_survive_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&config(dir.path())).unwrap();
    let partition = store.partition(0).unwrap();
    let mut batch = WriteBatch::default();
    batch.put_inbox_entry("alice", "dm_0123", false);
    wait_published(&store, partition.apply(batch, true));
    assert_eq!(partition.all_inbox_entries().unwrap(), vec![("alice".to_string(), "dm_0123".to_string(), false)]);
    store.close().unwrap();
    drop(partition);
    drop(store);
    let store = reopen(dir.path());
    assert_eq!(store.partition(0).unwrap().all_inbox_entries().unwrap().len(), 1);
    store.close().unwrap();
}

/// The meta row is rewritten by nearly every batch of a busy partition
/// (`held`): its newest value is read back at once, sled gets it only at a
/// checkpoint (once, however often it was written), and a restart finds
/// the newest.
#[test]
fn the_meta_row_is_held_until_a_checkpoint_and_read_back_newest() {
    let dir = tempfile::tempdir().unwrap();
    let mut no_timed_checkpoint = config(dir.path());
    no_timed_checkpoint.checkpoint_interval = Duration::from_secs(3600);
    let store = Store::open(&no_timed_checkpoint).unwrap();
    let partition = store.partition(0).unwrap();
    for next_cursor in 2..=5 {
        let mut batch = WriteBatch::default();
        batch.put_meta(&PartitionMeta { next_outbox: 1, outbox_done: 1, next_cursor });
        wait_published(&store, partition.apply(batch, true));
    }
    assert_eq!(partition.meta().unwrap().next_cursor, 5);
    assert_eq!(partition.files.tree.get(b"M").unwrap(), None, "held: not in sled before a checkpoint");
    store.close().unwrap();
    assert_eq!(
        partition.files.tree.get(b"M").unwrap().map(|row| rows::decode::<PartitionMeta>(&row).unwrap().next_cursor),
        Some(5)
    );
    drop(partition);
    drop(store);
    let store = reopen(dir.path());
    assert_eq!(store.partition(0).unwrap().meta().unwrap().next_cursor, 5);
    store.close().unwrap();
}

/// No sled blob files (sled_files): the largest record of each kind the
/// limits allow still fits the row bound. (Outbox rows are chunked by
/// the partition; see its test.)
#[test]
fn worst_case_rows_fit_the_row_bound() {
    use crate::config::{MAX_GROUP_MEMBERS_BOUND, MAX_TEXT_BYTES_BOUND};
    let long_id = |n: usize| format!("{n:064}");
    let conversation = format!("g_{}", "x".repeat(40));
    let mut batch = WriteBatch::default();
    batch.put_message(
        &Message {
            conversation_id: conversation.clone(),
            seq: u64::MAX,
            sender_id: long_id(1),
            sender_device_id: long_id(2),
            client_message_id: long_id(3),
            server_time_ms: i64::MAX,
            reply_to_seq: u64::MAX,
            content: Some(imsg_proto::v1::message::Content::Text(imsg_proto::v1::TextContent {
                text: "é".repeat(MAX_TEXT_BYTES_BOUND / 2),
            })),
            ..Message::default()
        },
        u64::MAX,
    );
    // The largest shared card: every field at its bound.
    let url = format!("https://{}", "u".repeat(crate::validate::MAX_URL_BYTES - 8));
    batch.put_message(
        &Message {
            conversation_id: conversation.clone(),
            seq: u64::MAX,
            sender_id: long_id(1),
            content: Some(imsg_proto::v1::message::Content::Shared(imsg_proto::v1::SharedContent {
                kind: 1,
                item_id: "i".repeat(128),
                url: url.clone(),
                author: long_id(4),
                title: "é".repeat(crate::validate::MAX_SHARED_TITLE_CHARS),
                thumbnail_url: url,
                caption: "é".repeat(MAX_TEXT_BYTES_BOUND / 2),
            })),
            ..Message::default()
        },
        u64::MAX,
    );
    // Every member of the largest group reacting with a long emoji.
    let family = "👨\u{200d}👩\u{200d}👧\u{200d}👦";
    assert!(crate::validate::emoji(family).is_ok());
    let reactions: Vec<imsg_proto::v1::Reaction> = (0..MAX_GROUP_MEMBERS_BOUND)
        .map(|n| imsg_proto::v1::Reaction { user_id: long_id(n), emoji: family.into(), react_time_ms: i64::MAX })
        .collect();
    batch.put_reactions(&conversation, u64::MAX, &reactions);
    batch.put_conversation(&ConversationRecord {
        id: conversation.clone(),
        kind: 2,
        title: "t".repeat(256),
        create_time_ms: i64::MAX,
        members: (0..MAX_GROUP_MEMBERS_BOUND)
            .map(|n| MemberRecord { user_id: long_id(n), role: 2, joined_after_seq: u64::MAX, request: 2 })
            .collect(),
        creator: long_id(0),
        change_time_ms: i64::MAX,
        blocked_by: vec![long_id(0), long_id(1)],
        request_sends: u32::MAX,
    });
    let receipt = ReceiptEvent { user_id: long_id(9), delivered_seq: u64::MAX, read_seq: u64::MAX, hide_read: true };
    batch.put_update_batch(
        u64::MAX,
        &UpdateBatchRecord {
            entries: (0..256)
                .map(|n| UpdateEntry {
                    cursor: u64::MAX,
                    user_id: long_id(n),
                    conversation_id: conversation.clone(),
                    kind: Some(UpdateKind::Receipt(receipt.clone())),
                })
                .collect(),
        },
    );
    for op in &batch.ops {
        let wal::Op::Put { key, value } = op else { continue };
        assert!(key.len() + value.len() <= MAX_ROW_BYTES, "row {:?}: {} bytes", key[0] as char, value.len());
    }
}

/// Deleted content is gone from storage: once an unsent message's
/// tombstone has been checkpointed, neither its text nor the key that
/// sealed it is in any file under the data dir, and the sealed bytes
/// that sled may still hold can no longer be opened.
#[test]
fn an_unsent_messages_text_and_key_are_in_no_file_after_the_next_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&config(dir.path())).unwrap();
    let partition = store.partition(0).unwrap();
    let text = format!("launch-code-{}", rand::random::<u64>());
    let message = Message {
        conversation_id: "dm_0123".into(),
        seq: 1,
        sender_id: "alice".into(),
        content: Some(imsg_proto::v1::message::Content::Text(imsg_proto::v1::TextContent { text: text.clone() })),
        ..Message::default()
    };
    let slot = partition.new_content_slot();
    let mut batch = WriteBatch::default();
    batch.put_message(&message, slot);
    wait_published(&store, partition.apply(batch, true));
    let key = partition.files.keys.get(slot).unwrap().expect("the key is written");
    assert_eq!(partition.message("dm_0123", 1).unwrap().unwrap(), message, "sealed and opened again");

    let tombstone = Message { content: None, unsent: true, ..message.clone() };
    let mut batch = WriteBatch::default();
    batch.put_message(&tombstone, slot);
    wait_published(&store, partition.apply(batch, true));
    assert_eq!(partition.message("dm_0123", 1).unwrap().unwrap(), tombstone);
    store.close().unwrap(); // the last checkpoint
    drop(partition);
    drop(store);

    let mut files = vec![dir.path().to_owned()];
    let mut scanned = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        scanned += bytes.len();
        assert!(!bytes.windows(text.len()).any(|w| w == text.as_bytes()), "the text is in {}", path.display());
        assert!(!bytes.windows(key.len()).any(|w| w == key), "the key is in {}", path.display());
    }
    assert!(scanned > 0);
}

/// Invariant 1 across a checkpoint: segments a checkpoint covered are
/// never replayed, even when a power cut undid their deletion; else
/// their old values would overwrite newer ones.
#[test]
fn segments_a_checkpoint_covered_are_not_replayed_after_their_deletion_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let stale = {
        let mut bytes = Vec::new();
        let mut old = WriteBatch::default();
        old.put_settings("alice", &SettingsRecord::with_privacy(false, false));
        wal::encode_record(&mut bytes, 0, &old.ops);
        bytes
    };
    let store = Store::open(&config(dir.path())).unwrap();
    let partition = store.partition(0).unwrap();
    let mut batch = WriteBatch::default();
    batch.put_settings("alice", &SettingsRecord::with_privacy(true, true));
    wait_published(&store, partition.apply(batch, true));
    store.close().unwrap();
    drop(partition);
    drop(store);
    let live = wal::LogDir::list(&wal::Segments::new(dir.path())).unwrap();
    assert_eq!(live.len(), 1, "a clean close keeps only the newest, empty segment");
    // The deletion of an older segment that the checkpoint covered is
    // "undone": it is back, holding the old value.
    std::fs::write(wal::Segments::new(dir.path()).path(live[0] - 1), &stale).unwrap();

    let store = reopen(dir.path());
    let settings = store.partition(0).unwrap().all_settings().unwrap();
    assert_eq!(settings.len(), 1);
    assert!(settings[0].1.hide_read_receipts, "a covered segment was replayed over newer state");
    store.close().unwrap();
}
