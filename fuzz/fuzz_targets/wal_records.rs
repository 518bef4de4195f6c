//! The write-ahead log's record format (`imsg_broker::storage::wal`), the
//! bytes recovery reads back after a crash.
//!
//! Proves, against `decode_segment`'s contract ("reads records, stopping at
//! the first torn or corrupt one; clean when the records end where the
//! bytes do, or where only zeros follow"):
//! - arbitrary bytes never panic it (nor make it allocate without bound);
//!   any prefix of them decodes to a prefix of what they decode to; and a
//!   record written where a complete segment's records end (over the zeros
//!   after them, as the writer writes over a spare segment of zeros)
//!   decodes after its operations;
//! - records built from the input and encoded with `encode_record` decode
//!   to exactly their operations, in order, complete;
//! - such a segment cut anywhere (a torn write) decodes to exactly the
//!   records wholly before the cut, complete only when the cut falls on a
//!   record boundary or only zeros follow the last whole record (a
//!   record's first bytes can be zero: its length's low byte);
//! - such a segment with any one bit flipped (a corrupt sector) decodes to
//!   exactly the records before the one holding the flipped bit, and is
//!   never complete.
//!
//! Input: mode byte. Even: a u16 cut position, then raw segment bytes.
//! Odd: records (count byte; each: tree u32, op count byte, each op: kind
//! byte (even put, odd remove), key piece, value piece for a put), then the
//! cut position (u32) and the flipped bit (position u32, bit byte); see
//! `imsg_fuzz::Input` for the encoding of each.

#![no_main]

use imsg_broker::storage::wal::{Op, decode_segment, decode_segment_to, encode_record};
use imsg_fuzz::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    if input.byte() % 2 == 0 {
        let cut = input.u16() as usize;
        raw(cut, input.rest());
    } else {
        structured(&mut input);
    }
});

fn raw(cut: usize, bytes: &[u8]) {
    let (ops, complete, end) = decode_segment_to(bytes);
    let (prefix_ops, _) = decode_segment(&bytes[..cut.min(bytes.len())]);
    assert!(ops.starts_with(&prefix_ops), "a prefix decoded to more than the whole");
    if complete {
        let appended = [Op::Put { key: b"k".to_vec(), value: b"v".to_vec() }, Op::Remove { key: Vec::new() }];
        let mut record = Vec::new();
        encode_record(&mut record, 7, &appended);
        // Written where the records end, over the zeros that may follow.
        let mut longer = bytes[..end].to_vec();
        longer.extend_from_slice(&record);
        longer.extend_from_slice(bytes.get(end + record.len()..).unwrap_or_default());
        let (more, complete) = decode_segment(&longer);
        assert!(complete, "a complete segment with a record appended is not complete");
        let expected: Vec<(u32, Op)> = ops.into_iter().chain(appended.into_iter().map(|op| (7, op))).collect();
        assert_eq!(more, expected);
    }
}

fn structured(input: &mut Input<'_>) {
    let mut segment = Vec::new();
    // Byte offset of each record boundary, and each record's operations.
    let mut bounds = vec![0usize];
    let mut records: Vec<Vec<(u32, Op)>> = Vec::new();
    for _ in 0..input.byte() % 8 {
        let tree = input.u32();
        let ops: Vec<Op> = (0..input.byte() % 8)
            .map(|_| {
                let kind = input.byte();
                let key = input.piece().to_vec();
                if kind % 2 == 0 { Op::Put { key, value: input.piece().to_vec() } } else { Op::Remove { key } }
            })
            .collect();
        encode_record(&mut segment, tree, &ops);
        bounds.push(segment.len());
        records.push(ops.into_iter().map(|op| (tree, op)).collect());
    }
    let before = |record: usize| records[..record].concat();

    assert_eq!(decode_segment(&segment), (before(records.len()), true), "encoded records do not round-trip");

    // A torn write: the segment cut anywhere.
    let cut = input.u32() as usize % (segment.len() + 1);
    let whole = bounds.iter().filter(|bound| **bound <= cut).count() - 1;
    let (ops, complete) = decode_segment(&segment[..cut]);
    assert_eq!(ops, before(whole), "a segment cut at {cut} decoded to other than its whole records");
    let zeros_after_whole = segment[bounds[whole]..cut].iter().all(|byte| *byte == 0);
    assert_eq!(complete, zeros_after_whole, "a segment cut at {cut}: wrong completeness");

    // A corrupt sector: one bit flipped.
    if !segment.is_empty() {
        let at = input.u32() as usize % segment.len();
        let bit = input.byte() % 8;
        let mut corrupt = segment.clone();
        corrupt[at] ^= 1 << bit;
        let hit = bounds.iter().filter(|bound| **bound <= at).count() - 1;
        let (ops, complete) = decode_segment(&corrupt);
        assert_eq!(ops, before(hit), "a bit flipped at {at}.{bit} let other than the records before it through");
        assert!(!complete, "a bit flipped at {at}.{bit} went unnoticed");
    }
}
