//! The rows of the moderation queue's partition (see the table in the
//! storage module docs): reports with their evidence, and the audit log.

use imsg_proto::v1::{AuditEntry, Report};
use prost::Message as _;

use super::rows::{PartitionStore, WriteBatch, be_u64, decode};
use crate::error::Result;

fn numbered(tag: u8, number: u64) -> Vec<u8> {
    let mut key = vec![tag];
    key.extend_from_slice(&number.to_be_bytes());
    key
}

impl PartitionStore {
    /// Every report, by number.
    pub fn reports(&self) -> Result<Vec<(u64, Report)>> {
        self.numbered_rows(b'R')
    }

    /// Every audit entry, by number.
    pub fn audit_entries(&self) -> Result<Vec<(u64, AuditEntry)>> {
        self.numbered_rows(b'A')
    }

    fn numbered_rows<T: prost::Message + Default>(&self, tag: u8) -> Result<Vec<(u64, T)>> {
        self.files
            .tree
            .scan_prefix([tag])
            .map(|row| {
                let (k, v) = row?;
                Ok((be_u64(&k).unwrap_or(0), decode(&v)?))
            })
            .collect()
    }
}

impl WriteBatch {
    pub fn put_report(&mut self, number: u64, report: &Report) {
        self.put(numbered(b'R', number), report.encode_to_vec());
    }

    pub fn put_audit_entry(&mut self, entry: &AuditEntry) {
        self.put(numbered(b'A', entry.number), entry.encode_to_vec());
    }
}
