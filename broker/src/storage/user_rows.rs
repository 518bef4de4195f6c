//! The rows of a partition's users (see the table in the storage module
//! docs): settings, inbox membership, relations, push targets,
//! per-conversation notification settings, and the push outbox.

use prost::Message as _;

use super::{
    records::*,
    rows::{PartitionStore, WriteBatch, be_u64, decode, key, text_after},
};
use crate::error::{Error, Result};

fn push_key(number: u64) -> Vec<u8> {
    let mut key = vec![b'P'];
    key.extend_from_slice(&number.to_be_bytes());
    key
}

/// The value of an inbox row whose conversation the user has not accepted.
const INBOX_REQUEST: &[u8] = b"r";

impl PartitionStore {
    pub fn all_settings(&self) -> Result<Vec<(String, SettingsRecord)>> {
        self.files
            .tree
            .scan_prefix(b"s")
            .map(|row| {
                let (k, v) = row?;
                Ok((text_after(&k, 1)?.to_owned(), decode(&v)?))
            })
            .collect()
    }

    /// Every (user, conversation, is a request) inbox membership of this
    /// partition's users.
    pub fn all_inbox_entries(&self) -> Result<Vec<(String, String, bool)>> {
        self.pairs(b'i', |v| Ok(v == INBOX_REQUEST))
    }

    /// Every (user, other user, relation) of this partition's users.
    pub fn all_relations(&self) -> Result<Vec<(String, String, RelationRecord)>> {
        self.pairs(b'l', decode)
    }

    /// Every (user, device, push target) of this partition's users.
    pub fn all_push_targets(&self) -> Result<Vec<(String, String, PushTargetRecord)>> {
        self.pairs(b't', decode)
    }

    /// Every (user, conversation, notification settings).
    pub fn all_notify_settings(&self) -> Result<Vec<(String, String, NotifyRecord)>> {
        self.pairs(b'n', decode)
    }

    /// The push outbox: notifications the webhook has not taken yet.
    pub fn pending_pushes(&self) -> Result<Vec<(u64, PushRecord)>> {
        self.files
            .tree
            .scan_prefix(b"P")
            .map(|row| {
                let (k, v) = row?;
                Ok((be_u64(&k[1..]).unwrap_or(0), decode(&v)?))
            })
            .collect()
    }

    /// The rows `tag` user `/` other, decoded.
    fn pairs<T>(&self, tag: u8, value: impl Fn(&[u8]) -> Result<T>) -> Result<Vec<(String, String, T)>> {
        self.files
            .tree
            .scan_prefix([tag])
            .map(|row| {
                let (k, v) = row?;
                let text = text_after(&k, 1)?;
                let (user, other) = text.split_once('/').ok_or_else(|| Error::Internal("bad pair key".into()))?;
                Ok((user.to_owned(), other.to_owned(), value(&v)?))
            })
            .collect()
    }
}

impl WriteBatch {
    pub fn remove_settings(&mut self, user: &str) {
        self.remove(key(b's', &[user.as_bytes()]));
    }

    pub fn put_settings(&mut self, user: &str, record: &SettingsRecord) {
        self.put(key(b's', &[user.as_bytes()]), record.encode_to_vec());
    }

    pub fn put_inbox_entry(&mut self, user: &str, conversation: &str, request: bool) {
        let value = if request { INBOX_REQUEST.to_vec() } else { Vec::new() };
        self.put(key(b'i', &[user.as_bytes(), conversation.as_bytes()]), value);
    }

    pub fn put_push_target(&mut self, user: &str, device: &str, record: Option<&PushTargetRecord>) {
        let key = key(b't', &[user.as_bytes(), device.as_bytes()]);
        match record {
            Some(record) => self.put(key, record.encode_to_vec()),
            None => self.remove(key),
        }
    }

    /// A user's settings for one conversation; the default is removed.
    pub fn put_notify_settings(&mut self, user: &str, conversation: &str, record: &NotifyRecord) {
        let key = key(b'n', &[user.as_bytes(), conversation.as_bytes()]);
        if *record == NotifyRecord::default() { self.remove(key) } else { self.put(key, record.encode_to_vec()) }
    }

    pub fn put_push(&mut self, number: u64, record: &PushRecord) {
        self.put(push_key(number), record.encode_to_vec());
    }

    pub fn remove_push(&mut self, number: u64) {
        self.remove(push_key(number));
    }

    /// A user's relation to another; an empty one is removed.
    pub fn put_relation(&mut self, user: &str, other: &str, record: &RelationRecord) {
        let key = key(b'l', &[user.as_bytes(), other.as_bytes()]);
        if record.is_empty() { self.remove(key) } else { self.put(key, record.encode_to_vec()) }
    }

    pub fn remove_inbox_entry(&mut self, user: &str, conversation: &str) {
        self.remove(key(b'i', &[user.as_bytes(), conversation.as_bytes()]));
    }
}
