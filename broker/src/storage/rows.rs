//! A partition's rows: the key layout (see the table in the storage
//! module docs), typed reads ([`PartitionStore`]) and typed writes
//! ([`WriteBatch`]), each row bounded so sled never writes a blob file.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use imsg_proto::v1::Message;
use prost::Message as _;
use tokio::sync::Notify;

use super::{Durability, records::*, sled_files::MAX_ROW_BYTES, wal};
use crate::{
    error::{Error, Result},
    ids::PartitionId,
};

fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
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

fn message_key(conversation: &str, seq: u64) -> Vec<u8> {
    key(b'm', &[conversation.as_bytes(), &seq.to_be_bytes()])
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(bytes.len().checked_sub(8)?..)?.try_into().ok()?))
}

fn decode<T: prost::Message + Default>(bytes: &[u8]) -> Result<T> {
    Ok(T::decode(bytes)?)
}

fn text_after(key: &[u8], prefix_len: usize) -> Result<&str> {
    std::str::from_utf8(&key[prefix_len..]).map_err(|_| Error::Internal("non-utf8 key".into()))
}

/// Typed access to one partition's tree.
#[derive(Clone)]
pub struct PartitionStore {
    pub(super) id: PartitionId,
    pub(super) tree: sled::Tree,
    pub(super) rows_written: Arc<AtomicU64>,
    pub(super) durability: Arc<Durability>,
}

impl PartitionStore {
    pub fn meta(&self) -> Result<PartitionMeta> {
        Ok(match self.tree.get(b"M")? {
            Some(bytes) => decode(&bytes)?,
            None => PartitionMeta { next_outbox: 1, outbox_done: 1, next_cursor: 1 },
        })
    }

    /// This node's claim on the partition; `None` if it never held it.
    pub fn ownership(&self) -> Result<Option<OwnershipRecord>> {
        self.tree.get(OWNERSHIP_KEY)?.map(|bytes| decode(&bytes)).transpose()
    }

    /// Up to `limit` rows after `after` (from the first when `None`), in key
    /// order: a partition move copies a frozen partition with these.
    pub fn rows_after(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let rows = match after {
            Some(key) => self.tree.range::<&[u8], _>((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded)),
            None => self.tree.iter(),
        };
        rows.take(limit).map(|row| row.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Error::from)).collect()
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
        let waker = Arc::new(Notify::new());
        while self.durability.durable() < generation {
            self.durability.notify_when_durable(generation, &waker);
            waker.notified().await;
        }
    }

    /// The next outbox batch number and update-log cursor implied by the
    /// rows themselves: urgent batches do not rewrite the meta row, so the
    /// newest outbox and update-log keys are the truth about what was used.
    pub fn next_numbers_in_logs(&self) -> Result<(u64, u64)> {
        let next_outbox = match self.tree.scan_prefix(b"o").next_back() {
            Some(row) => be_u64(&row?.0).unwrap_or(0) + 1,
            None => 0,
        };
        let next_cursor = match self.tree.scan_prefix(b"u").next_back() {
            Some(row) => {
                let (_, value) = row?;
                let record: UpdateBatchRecord = decode(&value)?;
                record.entries.last().map_or(0, |e| e.cursor + 1)
            }
            None => 0,
        };
        Ok((next_outbox, next_cursor))
    }

    pub fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>> {
        self.tree.get(key(b'c', &[id.as_bytes()]))?.map(|b| decode(&b)).transpose()
    }

    /// Seq of the newest message of a conversation, 0 when it has none.
    pub fn last_message_seq(&self, conversation: &str) -> Result<u64> {
        let prefix = key(b'm', &[conversation.as_bytes(), b""]);
        match self.tree.scan_prefix(prefix).next_back() {
            Some(row) => Ok(be_u64(&row?.0).unwrap_or(0)),
            None => Ok(0),
        }
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
        let range = self.tree.range(message_key(conversation, from)..=message_key(conversation, to));
        let rows: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            if newest_first { Box::new(range.rev()) } else { Box::new(range) };
        let mut messages = rows
            .take(limit)
            .map(|row| row.map_err(Error::from).and_then(|(_, v)| decode::<Message>(&v)))
            .collect::<Result<Vec<_>>>()?;
        if newest_first {
            messages.reverse();
        }
        Ok(messages)
    }

    pub fn message(&self, conversation: &str, seq: u64) -> Result<Option<Message>> {
        self.tree.get(message_key(conversation, seq))?.map(|b| decode(&b)).transpose()
    }

    pub fn receipts(&self, conversation: &str) -> Result<Vec<(String, ReceiptRecord)>> {
        let prefix = key(b'r', &[conversation.as_bytes(), b""]);
        self.tree
            .scan_prefix(&prefix)
            .map(|row| {
                let (k, v) = row?;
                Ok((text_after(&k, prefix.len())?.to_owned(), decode(&v)?))
            })
            .collect()
    }

    /// Outbox batches at or after `from`, in order.
    pub fn outbox_from(&self, from: u64) -> Result<Vec<(u64, OutboxRecord)>> {
        self.tree
            .range(key(b'o', &[&from.to_be_bytes()])..key(b'o', &[&u64::MAX.to_be_bytes()]))
            .map(|row| {
                let (k, v) = row?;
                Ok((be_u64(&k).unwrap_or(0), decode(&v)?))
            })
            .collect()
    }

    /// Every retained update-log batch, oldest first: `(first cursor, batch)`.
    pub fn update_batches(&self) -> impl Iterator<Item = Result<(u64, UpdateBatchRecord)>> + '_ {
        self.update_batches_from(0)
    }

    /// Update-log batches that may hold cursors `>= cursor`, oldest first.
    pub fn update_batches_from(&self, cursor: u64) -> impl Iterator<Item = Result<(u64, UpdateBatchRecord)>> + '_ {
        // The batch holding `cursor` may start before it.
        let start = self
            .tree
            .range(key(b'u', &[&0u64.to_be_bytes()])..=key(b'u', &[&cursor.to_be_bytes()]))
            .next_back()
            .and_then(|row| row.ok())
            .and_then(|(k, _)| be_u64(&k))
            .unwrap_or(cursor);
        self.tree.range(key(b'u', &[&start.to_be_bytes()])..=key(b'u', &[&u64::MAX.to_be_bytes()])).map(|row| {
            let (k, v) = row?;
            Ok((be_u64(&k).unwrap_or(0), decode(&v)?))
        })
    }

    pub fn all_settings(&self) -> Result<Vec<(String, SettingsRecord)>> {
        self.tree
            .scan_prefix(b"s")
            .map(|row| {
                let (k, v) = row?;
                Ok((text_after(&k, 1)?.to_owned(), decode(&v)?))
            })
            .collect()
    }

    /// Every (user, conversation) inbox membership of this partition's users.
    pub fn all_inbox_entries(&self) -> Result<Vec<(String, String)>> {
        self.tree
            .scan_prefix(b"i")
            .map(|row| {
                let (k, _) = row?;
                let text = text_after(&k, 1)?;
                let (user, conversation) =
                    text.split_once('/').ok_or_else(|| Error::Internal("bad inbox key".into()))?;
                Ok((user.to_owned(), conversation.to_owned()))
            })
            .collect()
    }

    /// Hands a batch to the writer, which logs it, syncs, and applies it to
    /// sled; returns the generation to wait for (see [`Durability`]). Until
    /// that generation is published, reads of this tree do not see it.
    pub fn apply(&self, batch: WriteBatch, urgent: bool) -> u64 {
        self.rows_written.fetch_add(batch.ops.len() as u64, Ordering::Relaxed);
        self.durability.append(&self.tree, self.id, batch.ops, urgent)
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

    /// Every row is at most [`MAX_ROW_BYTES`], so sled never writes a blob
    /// file ([`sled_files`]); the records are bounded where they are built
    /// (limits, chunked outbox and update-log rows) and
    /// `worst_case_rows_fit_the_row_bound` checks the bound.
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
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

    fn remove(&mut self, key: Vec<u8>) {
        self.ops.push(wal::Op::Remove { key });
    }

    pub fn put_conversation(&mut self, record: &ConversationRecord) {
        self.put(key(b'c', &[record.id.as_bytes()]), record.encode_to_vec());
    }

    pub fn put_message(&mut self, message: &Message) {
        self.put(message_key(&message.conversation_id, message.seq), message.encode_to_vec());
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

    pub fn put_update_batch(&mut self, first_cursor: u64, record: &UpdateBatchRecord) {
        self.put(key(b'u', &[&first_cursor.to_be_bytes()]), record.encode_to_vec());
    }

    pub fn remove_update_batch(&mut self, first_cursor: u64) {
        self.remove(key(b'u', &[&first_cursor.to_be_bytes()]));
    }

    pub fn put_settings(&mut self, user: &str, record: &SettingsRecord) {
        self.put(key(b's', &[user.as_bytes()]), record.encode_to_vec());
    }

    pub fn put_inbox_entry(&mut self, user: &str, conversation: &str) {
        self.put(key(b'i', &[user.as_bytes(), conversation.as_bytes()]), Vec::new());
    }

    pub fn remove_inbox_entry(&mut self, user: &str, conversation: &str) {
        self.remove(key(b'i', &[user.as_bytes(), conversation.as_bytes()]));
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
