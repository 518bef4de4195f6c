//! A partition's rows: the key layout (see the table in the storage
//! module docs), typed reads ([`PartitionStore`]) and typed writes
//! ([`WriteBatch`]), each row bounded so sled never writes a blob file.

use std::{
    collections::{HashMap, HashSet},
    ops::Bound,
    sync::Arc,
};

use imsg_proto::v1::{Message, Reaction};
use prost::Message as _;

use super::{
    Durability,
    durability::Destination,
    held,
    records::*,
    shred::{self, KEY_ROW_TAG},
    sled_files::MAX_ROW_BYTES,
    wal,
};
use crate::{
    error::{Error, Result},
    ids::PartitionId,
};

pub(super) fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| p.len() + 1).sum::<usize>();
    let mut key = Vec::with_capacity(len);
    key.push(tag);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(b'/');
        }
        key.extend_from_slice(part);
    }
    key
}

/// The key of a partition's [`OwnershipRecord`]; a partition move copies
/// every other row and writes its own.
pub const OWNERSHIP_KEY: &[u8] = b"O";

/// The key of an update-log batch as first written: `u` and its first
/// cursor.
fn update_key(first_cursor: u64) -> Vec<u8> {
    key(b'u', &[&first_cursor.to_be_bytes()])
}

/// Ends the key of a compacted update-log row, after `u` and its first
/// cursor: it sorts right after the key of the first batch it holds, and
/// before any later batch's.
const COMPACTED_MARK: u8 = b'+';

/// One row of a user partition's update log.
pub struct UpdateRow {
    pub key: Vec<u8>,
    /// The cursor of its first entry.
    pub first: u64,
    /// Several batches written again as one (`partition::compaction`).
    pub compacted: bool,
    pub record: UpdateBatchRecord,
}

fn update_row(key: Vec<u8>, value: &[u8]) -> Result<UpdateRow> {
    let first = key.get(1..9).and_then(|bytes| bytes.try_into().ok()).map(u64::from_be_bytes);
    let first = first.ok_or_else(|| Error::Internal("an update-log key without its cursor".into()))?;
    Ok(UpdateRow { compacted: key.len() > 9, first, key, record: decode(value)? })
}

fn message_key(conversation: &str, seq: u64) -> Vec<u8> {
    key(b'm', &[conversation.as_bytes(), &seq.to_be_bytes()])
}

fn reactions_key(conversation: &str, seq: u64) -> Vec<u8> {
    key(b'a', &[conversation.as_bytes(), &seq.to_be_bytes()])
}

fn hidden_key(conversation: &str, user: &str, seq: u64) -> Vec<u8> {
    key(b'h', &[conversation.as_bytes(), user.as_bytes(), &seq.to_be_bytes()])
}

/// A message row's content, opened with its key (none: erased, the
/// message unsent; rows from before sealing carry it in the clear).
fn open_content(
    conversation: &str,
    mut message: Message,
    sealed: &SealedContent,
    key: Option<&[u8; shred::KEY_BYTES]>,
) -> Result<Message> {
    if let Some(key) = key {
        let plain = shred::open(key, &seal_context(conversation, message.seq), &sealed.sealed)?;
        message.content = decode::<Message>(&plain)?.content;
    }
    Ok(message)
}

/// What binds a message's sealed content to its place.
fn seal_context(conversation: &str, seq: u64) -> Vec<u8> {
    key(b'm', &[conversation.as_bytes(), &seq.to_be_bytes()])
}

pub(super) fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(bytes.len().checked_sub(8)?..)?.try_into().ok()?))
}

pub(super) fn decode<T: prost::Message + Default>(bytes: &[u8]) -> Result<T> {
    Ok(T::decode(bytes)?)
}

pub(super) fn text_after(key: &[u8], prefix_len: usize) -> Result<&str> {
    std::str::from_utf8(&key[prefix_len..]).map_err(|_| Error::Internal("non-utf8 key".into()))
}

/// Typed access to one partition's tree.
#[derive(Clone)]
pub struct PartitionStore {
    pub(super) id: PartitionId,
    pub(super) files: Destination,
    pub(super) rows_written: Arc<super::RowCounts>,
    pub(super) durability: Arc<Durability>,
}

impl PartitionStore {
    pub fn meta(&self) -> Result<PartitionMeta> {
        Ok(match held::get(self.files.held.as_deref(), self.files.stored(), b"M")? {
            Some(bytes) => decode(&bytes)?,
            None => PartitionMeta { next_outbox: 1, outbox_done: 1, next_cursor: 1 },
        })
    }

    /// This node's claim on the partition; `None` if it never held it.
    pub fn ownership(&self) -> Result<Option<OwnershipRecord>> {
        self.files.tree.get(OWNERSHIP_KEY)?.map(|bytes| decode(&bytes)).transpose()
    }

    /// Up to `limit` rows after `after` (from the first when `None`), in key
    /// order: a partition move copies a frozen partition with these.
    pub fn rows_after(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let from = match after {
            Some(key) => Bound::Excluded(key.to_vec()),
            None => Bound::Unbounded,
        };
        let mut rows = self.overlaid((from, Bound::Unbounded), limit)?;
        // The content-key slots are rows too, kept in the key file: merged
        // in key order.
        let first_slot = match after {
            None => Some(0),
            Some(key) => match (key.first(), shred::slot_of_row(key)) {
                (_, Some(slot)) => slot.checked_add(1),
                (Some(tag), None) if *tag > KEY_ROW_TAG => None,
                _ => Some(0),
            },
        };
        if let Some(first) = first_slot {
            let slots = self.files.keys.slots_from(first, limit)?;
            rows.extend(slots.into_iter().map(|(slot, key)| (shred::key_row(slot), key.to_vec())));
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            rows.truncate(limit);
        }
        Ok(rows)
    }

    /// Removes every row but the ownership record, a chunk at a time (a
    /// released partition's data, or what an earlier stay left before an
    /// import). Returns the generation to wait for (0: nothing to remove).
    pub fn clear_data(&self) -> Result<u64> {
        let mut generation = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let rows = self.rows_after(after.as_deref(), 1024)?;
            let Some((last, _)) = rows.last() else { return Ok(generation) };
            after = Some(last.clone());
            let mut batch = WriteBatch::default();
            for (key, _) in rows {
                if key != OWNERSHIP_KEY {
                    batch.remove_row(key);
                }
            }
            if !batch.is_empty() {
                generation = self.apply(batch, true);
            }
        }
    }

    /// Waits until `generation` is durable (published).
    pub async fn durable(&self, generation: u64) {
        self.durability.durable_at(generation).await;
    }

    /// The next outbox batch number and update-log cursor implied by the
    /// rows themselves: urgent batches do not rewrite the meta row, so the
    /// newest outbox and update-log keys are the truth about what was used.
    pub fn next_numbers_in_logs(&self) -> Result<(u64, u64)> {
        let outbox = b"o".to_vec()..b"p".to_vec();
        let next_outbox = match held::last_key(self.files.held.as_deref(), self.files.stored(), outbox)? {
            Some(key) => be_u64(&key).unwrap_or(0).saturating_add(1),
            None => 0,
        };
        let held = self.files.held.as_deref();
        let next_cursor = match held::last_key(held, self.files.stored(), b"u".to_vec()..b"v".to_vec())? {
            Some(key) => {
                let value = held::get(held, self.files.stored(), &key)?.unwrap_or_default();
                let record: UpdateBatchRecord = decode(&value)?;
                record.entries.last().map_or(0, |e| e.cursor.saturating_add(1))
            }
            None => 0,
        };
        Ok((next_outbox, next_cursor))
    }

    pub fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>> {
        self.files.tree.get(key(b'c', &[id.as_bytes()]))?.map(|b| decode(&b)).transpose()
    }

    /// Seq of the newest message of a conversation, 0 when it has none.
    pub fn last_message_seq(&self, conversation: &str) -> Result<u64> {
        let range = message_key(conversation, 0)..=message_key(conversation, u64::MAX);
        let last = held::last_key(self.files.held.as_deref(), self.files.stored(), range)?;
        Ok(last.and_then(|key| be_u64(&key)).unwrap_or(0))
    }

    /// Messages with `from <= seq <= to`, at most `limit`, newest first when
    /// `newest_first`; always returned in ascending order.
    pub fn messages(
        &self,
        conversation: &str,
        from: u64,
        to: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<Message>> {
        if from > to || limit == 0 {
            return Ok(Vec::new());
        }
        let range = message_key(conversation, from)..=message_key(conversation, to);
        let rows = held::overlay_iter_in(self.files.held.as_deref(), self.files.stored(), range, newest_first)
            .take(limit)
            .map(|row| {
                let (_, value) = row?;
                Ok((decode::<Message>(&value)?, decode::<SealedContent>(&value)?))
            })
            .collect::<Result<Vec<_>>>()?;
        // The page's keys in a few reads (a page's slots are close together).
        let keys = self.files.keys.get_many(rows.iter().filter_map(|(_, sealed)| sealed.key_slot))?;
        let mut messages = rows
            .into_iter()
            .map(|(message, sealed)| {
                let key = sealed.key_slot.and_then(|slot| keys.get(&slot));
                open_content(conversation, message, &sealed, key)
            })
            .collect::<Result<Vec<_>>>()?;
        if newest_first {
            messages.reverse();
        }
        if let (Some(first), Some(last)) = (messages.first().map(|m| m.seq), messages.last().map(|m| m.seq)) {
            let mut reactions = self.reactions_between(conversation, first, last)?;
            for message in &mut messages {
                message.reactions = reactions.remove(&message.seq).unwrap_or_default();
            }
        }
        Ok(messages)
    }

    pub fn message(&self, conversation: &str, seq: u64) -> Result<Option<Message>> {
        Ok(self.stored_message(conversation, seq)?.map(|(message, _)| message))
    }

    /// A message as stored, its content opened and its reactions attached,
    /// with the key slot its content is sealed under (`None` for a
    /// tombstone).
    pub fn stored_message(&self, conversation: &str, seq: u64) -> Result<Option<(Message, Option<u64>)>> {
        let held = self.files.held.as_deref();
        let Some(row) = held::get(held, self.files.stored(), &message_key(conversation, seq))? else { return Ok(None) };
        let (mut message, slot) = self.unseal(conversation, &row)?;
        if let Some(row) = self.files.tree.get(reactions_key(conversation, seq))? {
            message.reactions = decode::<ReactionsRecord>(&row)?.reactions;
        }
        Ok(Some((message, slot)))
    }

    /// Decodes a message row and opens its sealed content. A slot that was
    /// erased (the message unsent) leaves the content empty.
    fn unseal(&self, conversation: &str, row: &[u8]) -> Result<(Message, Option<u64>)> {
        let sealed: SealedContent = decode(row)?;
        let key = sealed.key_slot.map(|slot| self.files.keys.get(slot)).transpose()?.flatten();
        Ok((open_content(conversation, decode(row)?, &sealed, key.as_ref())?, sealed.key_slot))
    }

    /// The reactions of the messages with `from <= seq <= to`, by seq.
    fn reactions_between(&self, conversation: &str, from: u64, to: u64) -> Result<HashMap<u64, Vec<Reaction>>> {
        self.files
            .tree
            .range(reactions_key(conversation, from)..=reactions_key(conversation, to))
            .map(|row| {
                let (k, v) = row?;
                Ok((be_u64(&k).unwrap_or(0), decode::<ReactionsRecord>(&v)?.reactions))
            })
            .collect()
    }

    /// Which of the seqs `from..=to` `user` deleted for themselves.
    pub fn hidden_between(&self, conversation: &str, user: &str, from: u64, to: u64) -> Result<HashSet<u64>> {
        if from > to {
            return Ok(HashSet::new());
        }
        self.files
            .tree
            .range(hidden_key(conversation, user, from)..=hidden_key(conversation, user, to))
            .map(|row| Ok(be_u64(&row?.0).unwrap_or(0)))
            .collect()
    }

    /// A slot to seal a new message's content under.
    pub fn new_content_slot(&self) -> u64 {
        self.files.keys.allocate()
    }

    pub fn receipts(&self, conversation: &str) -> Result<Vec<(String, ReceiptRecord)>> {
        let prefix = key(b'r', &[conversation.as_bytes(), b""]);
        self.files
            .tree
            .scan_prefix(&prefix)
            .map(|row| {
                let (k, v) = row?;
                Ok((text_after(&k, prefix.len())?.to_owned(), decode(&v)?))
            })
            .collect()
    }

    /// Outbox batches at or after `from`, in order.
    pub fn outbox_from(&self, from: u64) -> Result<Vec<(u64, OutboxRecord)>> {
        let batches = key(b'o', &[&from.to_be_bytes()])..key(b'o', &[&u64::MAX.to_be_bytes()]);
        self.overlaid(batches, usize::MAX)?
            .into_iter()
            .map(|(k, v)| Ok((be_u64(&k).unwrap_or(0), decode(&v)?)))
            .collect()
    }

    /// The first `limit` rows of `range`: sled's, with the rows held in
    /// memory until the next checkpoint laid over them ([`held`]).
    fn overlaid<R>(&self, range: R, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>
    where
        R: std::ops::RangeBounds<Vec<u8>> + Clone,
    {
        held::overlay(self.files.held.as_deref(), self.files.stored(), range, limit)
    }

    /// Every retained update-log row, oldest first.
    pub fn update_batches(&self) -> impl Iterator<Item = Result<UpdateRow>> + '_ {
        self.update_batches_from(0)
    }

    /// Update-log rows that may hold cursors `>= cursor`, oldest first.
    /// While a compaction is being applied, a batch can be read both on its
    /// own and inside the compacted row (in that order): readers take each
    /// cursor once.
    pub fn update_batches_from(&self, cursor: u64) -> impl Iterator<Item = Result<UpdateRow>> + '_ {
        let held = self.files.held.as_deref();
        // The row holding `cursor` may start before it (a compacted row's
        // key sorts after its first batch's own).
        let mut through = update_key(cursor);
        through.push(u8::MAX);
        let start = match held::last_key(held, self.files.stored(), update_key(0)..=through) {
            Ok(Some(key)) => key,
            _ => update_key(cursor),
        };
        held::overlay_iter(held, self.files.stored(), start..b"v".to_vec()).map(|row| {
            let (key, value) = row?;
            update_row(key, &value)
        })
    }

    /// Hands a batch to the writer, which logs it, syncs, and applies it to
    /// sled; returns the generation to wait for (see [`Durability`]). Until
    /// that generation is published, reads of this tree do not see it.
    pub fn apply(&self, batch: WriteBatch, urgent: bool) -> u64 {
        self.rows_written.count(&batch.ops);
        self.durability.append(&self.files, self.id, batch.ops, urgent)
    }
}

/// Writes of one partition batch, logged as one record (replayed whole).
#[derive(Default)]
pub struct WriteBatch {
    pub(super) ops: Vec<wal::Op>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations so far (tests count rows with it).
    #[cfg(test)]
    pub fn ops(&self) -> &[wal::Op] {
        &self.ops
    }

    /// Every row is at most [`MAX_ROW_BYTES`], so sled never writes a blob
    /// file ([`sled_files`]); the records are bounded where they are built
    /// (limits, chunked outbox and update-log rows) and
    /// `worst_case_rows_fit_the_row_bound` checks the bound.
    pub(super) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if key.len() + value.len() > MAX_ROW_BYTES {
            tracing::error!(
                tag = key.first().map(|t| *t as char).unwrap_or('?').to_string(),
                bytes = key.len() + value.len(),
                bound = MAX_ROW_BYTES,
                "a row over the size bound: sled may write it as a blob file, which is not power-safe"
            );
        }
        self.ops.push(wal::Op::Put { key, value });
    }

    pub(super) fn remove(&mut self, key: Vec<u8>) {
        self.ops.push(wal::Op::Remove { key });
    }

    pub fn put_conversation(&mut self, record: &ConversationRecord) {
        self.put(key(b'c', &[record.id.as_bytes()]), record.encode_to_vec());
    }

    /// Writes a message row. Its content is sealed under a fresh key in
    /// `slot` (an edit reuses the slot, so the old key is overwritten in
    /// place); a message without content (unsent) erases the slot instead.
    /// Reactions and the reply preview are not part of the row (reactions
    /// have their own, previews are made when served).
    pub fn put_message(&mut self, message: &Message, slot: u64) {
        let mut row = header_of(message).encode_to_vec();
        match &message.content {
            Some(content) => {
                let key = shred::new_key();
                // The bytes of `Message { content, ..default }`, without
                // copying the content into one first.
                let mut plain = Vec::with_capacity(content.encoded_len());
                content.encode(&mut plain);
                let context = seal_context(&message.conversation_id, message.seq);
                let sealed = SealedContent { key_slot: Some(slot), sealed: shred::seal(&key, &context, &plain) };
                sealed.encode(&mut row).expect("encoding into a Vec cannot fail");
                self.put(shred::key_row(slot), key.to_vec());
            }
            None => self.remove(shred::key_row(slot)),
        }
        self.put(message_key(&message.conversation_id, message.seq), row);
    }

    /// Writes a message's reactions (none: removes the row).
    pub fn put_reactions(&mut self, conversation: &str, seq: u64, reactions: &[Reaction]) {
        let key = reactions_key(conversation, seq);
        if reactions.is_empty() {
            self.remove(key);
        } else {
            self.put(key, ReactionsRecord { reactions: reactions.to_vec() }.encode_to_vec());
        }
    }

    /// Hides a message from one user's history.
    pub fn put_hidden(&mut self, conversation: &str, user: &str, seq: u64) {
        self.put(hidden_key(conversation, user, seq), Vec::new());
    }

    pub fn put_receipt(&mut self, conversation: &str, user: &str, record: &ReceiptRecord) {
        self.put(key(b'r', &[conversation.as_bytes(), user.as_bytes()]), record.encode_to_vec());
    }

    pub fn put_outbox(&mut self, batch: u64, record: &OutboxRecord) {
        self.put(key(b'o', &[&batch.to_be_bytes()]), record.encode_to_vec());
    }

    pub fn remove_outbox(&mut self, batch: u64) {
        self.remove(key(b'o', &[&batch.to_be_bytes()]));
    }

    /// An update-log batch as first written: held in memory
    /// ([`super::held`]) until compacted.
    pub fn put_update_batch(&mut self, first_cursor: u64, record: &UpdateBatchRecord) {
        self.put(update_key(first_cursor), record.encode_to_vec());
    }

    pub fn remove_update_batch(&mut self, first_cursor: u64) {
        self.remove(update_key(first_cursor));
    }

    /// Adjacent batches written again as one row, from `first_cursor`
    /// (`partition::compaction`): this row goes to sled.
    pub fn put_compacted_update_batch(&mut self, first_cursor: u64, record: &UpdateBatchRecord) {
        let mut key = update_key(first_cursor);
        key.push(COMPACTED_MARK);
        self.put(key, record.encode_to_vec());
    }

    pub fn put_meta(&mut self, meta: &PartitionMeta) {
        self.put(b"M".to_vec(), meta.encode_to_vec());
    }

    pub fn put_ownership(&mut self, record: &OwnershipRecord) {
        self.put(OWNERSHIP_KEY.to_vec(), record.encode_to_vec());
    }

    /// A row copied verbatim from another node's tree (a partition move).
    pub fn put_row(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.put(key, value);
    }

    pub fn remove_row(&mut self, key: Vec<u8>) {
        self.remove(key);
    }
}

/// What a message row holds in the clear: the message without its content
/// (sealed apart), reactions (their own rows) or reply preview (filled in
/// when served). Every field is named, so a new one cannot be left out
/// unnoticed.
fn header_of(message: &Message) -> Message {
    let Message {
        conversation_id,
        seq,
        sender_id,
        sender_device_id,
        client_message_id,
        server_time_ms,
        reply_to_seq,
        edit_time_ms,
        unsent,
        content: _,
        forwarded,
        reactions: _,
        reply_preview: _,
        sender_deleted,
    } = message;
    Message {
        conversation_id: conversation_id.clone(),
        seq: *seq,
        sender_id: sender_id.clone(),
        sender_device_id: sender_device_id.clone(),
        client_message_id: client_message_id.clone(),
        server_time_ms: *server_time_ms,
        reply_to_seq: *reply_to_seq,
        edit_time_ms: *edit_time_ms,
        unsent: *unsent,
        content: None,
        forwarded: *forwarded,
        reactions: Vec::new(),
        reply_preview: None,
        sender_deleted: *sender_deleted,
    }
}
