//! The values stored in sled (`imsg_broker::storage::records`, messages as
//! `imsg.v1.Message` plus `SealedContent`, reports and audit entries) and
//! the keys of content-key rows, from arbitrary bytes: what a node reads
//! back from its disk, or copies from another node in a partition move.
//!
//! Proves: decoding any bytes as any record never panics, and a record
//! that decodes
//! - re-encodes to bytes that decode to the same record, of the length
//!   `encoded_len` says (rows are rewritten after a read-modify-write);
//! - (an outbox item) rebuilds its event with `LoggedEvent::from_outbox`,
//!   whose outbox record is the item again: what a restart re-sends is
//!   what was logged;
//! - (an update-log entry) replays to a frame whenever it names an event
//!   (`events::replayed_frame`);
//! - (settings, relation) survive the trip to their API view and back;
//! - (a content-key row key) names the slot whose row key it is.
//!
//! Input: selector byte (see `STORAGE_RECORDS`), then the record's bytes.

#![no_main]

use imsg_broker::{
    events::{LoggedEvent, replayed_frame},
    storage::{
        ConversationRecord, NotifyRecord, OutboxRecord, OwnershipRecord, PartitionMeta, PushRecord, PushTargetRecord,
        ReactionsRecord, ReceiptRecord, RelationRecord, SealedContent, SettingsRecord, UpdateBatchRecord, shred,
    },
};
use imsg_fuzz::{Input, STORAGE_RECORDS};
use imsg_proto::v1::{AuditEntry, Conversation, Message, Report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let selector = input.byte() as usize % STORAGE_RECORDS.len();
    let bytes = input.rest();
    match STORAGE_RECORDS[selector] {
        "SealedContent" => drop(round_trip::<SealedContent>(bytes)),
        "ReactionsRecord" => drop(round_trip::<ReactionsRecord>(bytes)),
        "ConversationRecord" => drop(round_trip::<ConversationRecord>(bytes)),
        "ReceiptRecord" => drop(round_trip::<ReceiptRecord>(bytes)),
        "OutboxRecord" => {
            let Some(record) = round_trip::<OutboxRecord>(bytes) else { return };
            for item in record.items {
                let Some(event) = item.event else { continue };
                // The stored message the event names, if it names one.
                let stored = event.message_seq().map(|seq| Message { seq, ..Message::default() });
                let rebuilt = LoggedEvent::from_outbox(&item.conversation_id, event.clone(), stored, conversation())
                    .expect("an outbox event with its message rebuilds");
                assert_eq!(rebuilt.outbox_record(), event, "an outbox event does not survive a restart");
                let _ = rebuilt.entry_for("alice", true);
                let _ = rebuilt.recipients(vec!["alice".into(), "bob".into()]);
                if event.message_seq().is_some() {
                    let gone = LoggedEvent::from_outbox(&item.conversation_id, event, None, conversation());
                    assert!(gone.is_none(), "an event whose message is gone was rebuilt");
                }
            }
        }
        "UpdateBatchRecord" => {
            let Some(record) = round_trip::<UpdateBatchRecord>(bytes) else { return };
            for entry in record.entries {
                let stored = Some(Message { seq: entry.cursor, ..Message::default() });
                let named = entry.kind.is_some();
                let frame = replayed_frame(&entry.conversation_id, entry.kind, stored, Some(conversation()));
                assert_eq!(frame.is_some(), named, "an update-log entry that names an event did not replay");
            }
        }
        "SettingsRecord" => {
            let Some(record) = round_trip::<SettingsRecord>(bytes) else { return };
            // The view leaves out the suspension, which only moderators set.
            let expected = SettingsRecord { suspended: false, ..record };
            assert_eq!(SettingsRecord::from_view(&record.view()), expected);
        }
        "PushTargetRecord" => drop(round_trip::<PushTargetRecord>(bytes)),
        "NotifyRecord" => drop(round_trip::<NotifyRecord>(bytes)),
        "PushRecord" => drop(round_trip::<PushRecord>(bytes)),
        "RelationRecord" => {
            let Some(record) = round_trip::<RelationRecord>(bytes) else { return };
            assert_eq!(RelationRecord::from_view(&record.view("bob")), record);
            let _ = (record.separated(), record.is_contact(), record.is_empty());
        }
        "PartitionMeta" => drop(round_trip::<PartitionMeta>(bytes)),
        "OwnershipRecord" => drop(round_trip::<OwnershipRecord>(bytes)),
        // One row decodes as both: the message's header and its sealed
        // content (tags far apart, see records.rs).
        "MessageRow" => {
            round_trip::<Message>(bytes);
            round_trip::<SealedContent>(bytes);
        }
        "Report" => drop(round_trip::<Report>(bytes)),
        "AuditEntry" => drop(round_trip::<AuditEntry>(bytes)),
        "KeyRow" => {
            if let Some(slot) = shred::slot_of_row(bytes) {
                assert_eq!(shred::key_row(slot), bytes, "a content-key row key names another slot");
            }
            let slot = u64::from_le_bytes(bytes.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]));
            assert_eq!(shred::slot_of_row(&shred::key_row(slot)), Some(slot));
        }
        other => unreachable!("no record {other}"),
    }
});

/// Decodes `bytes`; a record that decodes must re-encode to itself.
fn round_trip<T: prost::Message + Default + PartialEq>(bytes: &[u8]) -> Option<T> {
    let record = T::decode(bytes).ok()?;
    let encoded = record.encode_to_vec();
    assert_eq!(encoded.len(), record.encoded_len(), "encoded_len is not the encoded length");
    let again = T::decode(encoded.as_slice()).expect("a re-encoded record decodes");
    assert!(again == record, "a record does not survive re-encoding");
    Some(record)
}

fn conversation() -> Conversation {
    Conversation { conversation_id: "g_fedcba9876543210fedcba9876543210".into(), ..Conversation::default() }
}
