use super::*;

fn log_in(dir: &Path, end: u64) -> Result<MessageLog> {
    MessageLog::open(&dir.join("messages/p00001.log"), end)
}

fn rows(log: &MessageLog, range: impl RangeBounds<Vec<u8>>, backward: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    log.rows(range, backward).collect::<Result<_>>().unwrap()
}

fn row(key: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
    (key.as_bytes().to_vec(), value.as_bytes().to_vec())
}

#[test]
fn rows_are_read_by_key_and_by_range_both_ways_the_last_write_of_a_key_winning() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(dir.path(), 0).unwrap();
    log.write([(&b"m1"[..], Some(&b"one"[..])), (b"m2", Some(b"two")), (b"m3", Some(b"three"))]).unwrap();
    log.write([(&b"m2"[..], Some(&b"two, edited"[..])), (b"m3", None)]).unwrap();
    assert_eq!(log.get(b"m1").unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(log.get(b"m2").unwrap().as_deref(), Some(&b"two, edited"[..]));
    assert_eq!(log.get(b"m3").unwrap(), None, "removed");
    assert_eq!(rows(&log, b"m".to_vec()..b"n".to_vec(), false), vec![row("m1", "one"), row("m2", "two, edited")]);
    assert_eq!(rows(&log, b"m".to_vec()..b"n".to_vec(), true), vec![row("m2", "two, edited"), row("m1", "one")]);
    assert_eq!(rows(&log, b"m2".to_vec().., false), vec![row("m2", "two, edited")]);
    assert_eq!(rows(&log, ..b"m2".to_vec(), true), vec![row("m1", "one")]);
}

#[test]
fn a_long_range_is_walked_in_chunks_without_losing_or_repeating_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(dir.path(), 0).unwrap();
    let keys: Vec<Vec<u8>> =
        (0..WALK_CHUNK as u64 * 3 + 5).map(|seq| [b"m".as_slice(), &seq.to_be_bytes()].concat()).collect();
    log.write(keys.iter().map(|key| (key.as_slice(), Some(key.as_slice())))).unwrap();
    let forward: Vec<_> = log.keys(b"m".to_vec()..b"n".to_vec(), false).collect();
    assert_eq!(forward, keys);
    let backward: Vec<_> = log.keys(b"m".to_vec()..=keys[WALK_CHUNK * 2].clone(), true).collect();
    let expected: Vec<_> = keys[..=WALK_CHUNK * 2].iter().rev().cloned().collect();
    assert_eq!(backward, expected);
    // Exactly a chunk's worth, then the bound meets the last key taken.
    let exact: Vec<_> = log.keys(keys[0].clone()..keys[WALK_CHUNK].clone(), false).collect();
    assert_eq!(exact, keys[..WALK_CHUNK]);
}

#[test]
fn a_reopened_log_is_cut_back_to_the_recorded_end_and_keeps_every_row_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(dir.path(), 0).unwrap();
    log.write([(&b"m1"[..], Some(&b"one"[..])), (b"m2", Some(b"two"))]).unwrap();
    log.write([(&b"m1"[..], None)]).unwrap();
    let end = log.sync().unwrap();
    // Written after the checkpoint recorded `end`: the log replays it.
    log.write([(&b"m3"[..], Some(&b"three"[..]))]).unwrap();
    drop(log);
    let path = dir.path().join("messages/p00001.log");
    assert!(std::fs::metadata(&path).unwrap().len() > end);
    let log = log_in(dir.path(), end).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), end, "cut back");
    assert_eq!(rows(&log, b"m".to_vec()..b"n".to_vec(), false), vec![row("m2", "two")]);
    // Appends go after the cut.
    log.write([(&b"m3"[..], Some(&b"three again"[..]))]).unwrap();
    let end = log.sync().unwrap();
    drop(log);
    let log = log_in(dir.path(), end).unwrap();
    assert_eq!(rows(&log, b"m".to_vec()..b"n".to_vec(), false), vec![row("m2", "two"), row("m3", "three again")]);
}

#[test]
fn damage_before_the_recorded_end_and_a_file_shorter_than_it_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(dir.path(), 0).unwrap();
    log.write([(&b"m1"[..], Some(&b"one"[..])), (b"m2", Some(b"two"))]).unwrap();
    let end = log.sync().unwrap();
    drop(log);
    let path = dir.path().join("messages/p00001.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let error = log_in(dir.path(), end).err().expect("a flipped byte is found").to_string();
    assert!(error.contains("checksum mismatch"), "{error}");
    let error = log_in(dir.path(), end + 1).err().expect("too short").to_string();
    assert!(error.contains("a checkpoint recorded"), "{error}");
}

#[test]
fn stored_rows_merge_sled_and_the_message_log_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path().join("db")).temporary(true).open().unwrap();
    let tree = db.open_tree("t").unwrap();
    let log = log_in(dir.path(), 0).unwrap();
    let stored = Stored { tree: &tree, messages: &log };
    stored
        .write([(&b"c1"[..], Some(&b"conversation"[..])), (b"m1", Some(b"message")), (b"r1", Some(b"receipt"))])
        .unwrap();
    assert_eq!(tree.len(), 2, "the message went to its log");
    assert_eq!(log.row_count(), 1);
    let all: Vec<_> = stored.rows(.., false).collect::<Result<_>>().unwrap();
    assert_eq!(all, vec![row("c1", "conversation"), row("m1", "message"), row("r1", "receipt")]);
    let keys: Vec<_> = stored.keys(.., true).collect::<Result<_>>().unwrap();
    assert_eq!(keys, vec![b"r1".to_vec(), b"m1".to_vec(), b"c1".to_vec()]);
    assert_eq!(stored.get(b"m1").unwrap().as_deref(), Some(&b"message"[..]));
    stored.write([(&b"m1"[..], None), (b"c1", None)]).unwrap();
    assert_eq!(stored.rows(.., false).collect::<Result<Vec<_>>>().unwrap(), vec![row("r1", "receipt")]);
}

#[test]
fn message_rows_left_in_sled_by_an_older_version_move_to_the_log_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path().join("db")).open().unwrap();
    let tree = db.open_tree("p00001").unwrap();
    tree.insert(b"c1", b"conversation").unwrap();
    tree.insert(b"m1", b"one").unwrap();
    tree.insert(b"m2", b"two").unwrap();
    let logs = MessageLogs::new(dir.path(), db.clone());
    let log = logs.get(1, &tree).unwrap();
    assert_eq!(rows(&log, b"m".to_vec()..b"n".to_vec(), false), vec![row("m1", "one"), row("m2", "two")]);
    assert_eq!(tree.len(), 1, "only the conversation is left in sled");
    // A restart finds them in the log, at the recorded end.
    drop((log, logs));
    let logs = MessageLogs::new(dir.path(), db.clone());
    let log = logs.get(1, &tree).unwrap();
    assert_eq!(rows(&log, b"m".to_vec()..b"n".to_vec(), false), vec![row("m1", "one"), row("m2", "two")]);
}
