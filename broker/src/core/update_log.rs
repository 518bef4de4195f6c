//! The per-user update log (invariant 4): every durable event for a user
//! gets a cursor; a device resumes after its last cursor and receives
//! exactly what it missed, or, if that is older than what is retained, an
//! explicit "resync required", never a silent gap.
//!
//! The cursors of all users of a partition form one sequence (an entry's
//! cursor is its position in the partition's log), so a user's cursors
//! increase with gaps where other users' entries sit. [`UserLog`] is one
//! user's index into it, [`Retention`] the partition's bound on it.

use std::collections::{HashMap, VecDeque};

/// One user's retained cursors and what was trimmed.
#[derive(Debug, Default)]
pub struct UserLog {
    /// Retained cursors, ascending.
    cursors: VecDeque<u64>,
    /// Highest cursor of this user's that retention removed.
    trimmed_through: u64,
    /// Newest message seq logged per conversation: a re-sent outbox batch
    /// must not log a message twice.
    appended_seq: HashMap<String, u64>,
}

/// Where a device that asks to resume after a cursor stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// Older than what is retained, or from the future: reload state, then
    /// reconnect after `cursor`.
    Resync { cursor: u64 },
    /// These entries (at most a page) come next.
    Replay(Vec<u64>),
    /// Nothing published is missing: go live.
    CaughtUp,
}

impl UserLog {
    /// Whether message `seq` of `conversation` is new for this user (and
    /// remembers it): a re-sent batch carries messages already logged.
    pub fn accept_message(&mut self, conversation: &str, seq: u64) -> bool {
        // Looked up by `&str` first: a member's conversation is nearly
        // always known, and `entry` would copy its id for every message.
        match self.appended_seq.get_mut(conversation) {
            Some(appended) if *appended >= seq => false,
            Some(appended) => {
                *appended = seq;
                true
            }
            None => {
                self.appended_seq.insert(conversation.to_owned(), seq);
                seq > 0
            }
        }
    }

    /// Records a cursor appended for this user (ascending).
    pub fn record(&mut self, cursor: u64) {
        self.cursors.push_back(cursor);
    }

    /// Retention removed `cursor` (this user's oldest, or another's in the
    /// same batch).
    pub fn trimmed(&mut self, cursor: u64) {
        if self.cursors.front() == Some(&cursor) {
            self.cursors.pop_front();
        }
        self.trimmed_through = self.trimmed_through.max(cursor);
    }

    /// What a device resuming after `after` gets, given the partition's
    /// newest cursor (`head`) and the newest one in storage (`published`):
    /// entries not published yet reach the device live, not in replay.
    pub fn resume(&self, after: u64, head: u64, published: u64, page: usize) -> Resume {
        if after > head || after < self.trimmed_through {
            // The published cursor, not the head: entries after it are not
            // in storage yet, so a state reload may not reflect them;
            // replaying them after the reload is harmless, skipping them is
            // not.
            return Resume::Resync { cursor: published };
        }
        let start = self.cursors.partition_point(|c| *c <= after);
        let next: Vec<u64> = self.cursors.range(start..).take_while(|c| **c <= published).take(page).copied().collect();
        if next.is_empty() { Resume::CaughtUp } else { Resume::Replay(next) }
    }
}

/// The partition's retained update-log batches, bounded by
/// `update_log_retention` entries.
#[derive(Debug, Default)]
pub struct Retention {
    /// Rows of the log, oldest first.
    batches: VecDeque<RetainedRow>,
    retained: usize,
}

/// One row of the update log as retention counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainedRow {
    pub first: u64,
    pub entries: usize,
    /// A compacted row: several batches written again as one
    /// (`partition::compaction`).
    pub compacted: bool,
}

impl Retention {
    pub fn note_batch(&mut self, first_cursor: u64, entries: usize, compacted: bool) {
        self.batches.push_back(RetainedRow { first: first_cursor, entries, compacted });
        self.retained += entries;
    }

    /// The `count` rows from the one starting at `first` are now one
    /// compacted row (they must be adjacent and retained).
    pub fn compact(&mut self, first: u64, count: usize) {
        let Ok(start) = self.batches.binary_search_by_key(&first, |row| row.first) else { return };
        let entries = self.batches.drain(start..(start + count).min(self.batches.len())).map(|row| row.entries).sum();
        self.batches.insert(start, RetainedRow { first, entries, compacted: true });
    }

    /// The oldest row to drop to get back within `limit`, if any; only a
    /// row wholly `published` (in storage) can go.
    pub fn next_to_trim(&self, limit: usize, published: u64) -> Option<RetainedRow> {
        let &row = self.batches.front()?;
        (self.retained > limit && row.first + row.entries as u64 - 1 <= published).then_some(row)
    }

    /// The row [`Self::next_to_trim`] named is gone.
    pub fn trimmed_front(&mut self) {
        if let Some(row) = self.batches.pop_front() {
            self.retained -= row.entries;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(cursors: &[u64]) -> UserLog {
        let mut log = UserLog::default();
        for cursor in cursors {
            log.record(*cursor);
        }
        log
    }

    #[test]
    fn a_device_gets_exactly_what_it_missed_in_pages() {
        let log = log(&[2, 5, 6, 9]);
        assert_eq!(log.resume(0, 9, 9, 10), Resume::Replay(vec![2, 5, 6, 9]));
        assert_eq!(log.resume(5, 9, 9, 10), Resume::Replay(vec![6, 9]));
        assert_eq!(log.resume(2, 9, 9, 2), Resume::Replay(vec![5, 6]), "a page at a time");
        assert_eq!(log.resume(9, 9, 9, 10), Resume::CaughtUp);
        assert_eq!(log.resume(7, 9, 9, 10), Resume::Replay(vec![9]), "other users' cursors in between");
    }

    #[test]
    fn entries_not_yet_published_come_live_not_in_replay() {
        let log = log(&[2, 5, 6]);
        assert_eq!(log.resume(2, 6, 5, 10), Resume::Replay(vec![5]));
        assert_eq!(log.resume(5, 6, 5, 10), Resume::CaughtUp);
    }

    #[test]
    fn a_cursor_older_than_retention_gets_resync_never_a_gap() {
        let mut log = log(&[2, 5, 6]);
        log.trimmed(2);
        log.trimmed(4); // another user's entry in the same batch
        assert_eq!(log.resume(1, 6, 6, 10), Resume::Resync { cursor: 6 });
        assert_eq!(log.resume(3, 6, 6, 10), Resume::Resync { cursor: 6 });
        assert_eq!(log.resume(4, 6, 6, 10), Resume::Replay(vec![5, 6]));
    }

    #[test]
    fn a_cursor_from_the_future_gets_resync_at_the_published_cursor() {
        let log = log(&[2]);
        assert_eq!(log.resume(50, 9, 7, 10), Resume::Resync { cursor: 7 });
    }

    #[test]
    fn a_resent_message_is_logged_once() {
        let mut log = UserLog::default();
        assert!(log.accept_message("dm_1", 1));
        assert!(log.accept_message("dm_1", 2));
        assert!(!log.accept_message("dm_1", 2), "re-sent after a crash");
        assert!(!log.accept_message("dm_1", 1));
        assert!(log.accept_message("dm_2", 1), "per conversation");
    }

    fn row(first: u64, entries: usize, compacted: bool) -> Option<RetainedRow> {
        Some(RetainedRow { first, entries, compacted })
    }

    #[test]
    fn retention_drops_the_oldest_published_batches_beyond_its_limit() {
        let mut retention = Retention::default();
        retention.note_batch(1, 3, false);
        retention.note_batch(4, 3, false);
        retention.note_batch(7, 3, false);
        assert_eq!(retention.next_to_trim(9, 9), None, "within the limit");
        assert_eq!(retention.next_to_trim(5, 9), row(1, 3, false));
        retention.trimmed_front();
        assert_eq!(retention.next_to_trim(5, 9), row(4, 3, false));
        retention.trimmed_front();
        assert_eq!(retention.next_to_trim(5, 9), None);
    }

    #[test]
    fn retention_never_drops_what_is_not_in_storage_yet() {
        let mut retention = Retention::default();
        retention.note_batch(1, 3, false);
        retention.note_batch(4, 3, false);
        assert_eq!(retention.next_to_trim(1, 2), None, "batch 1-3 is not wholly published");
        assert_eq!(retention.next_to_trim(1, 3), row(1, 3, false));
    }

    #[test]
    fn compacted_batches_are_retained_and_trimmed_as_one_row() {
        let mut retention = Retention::default();
        retention.note_batch(1, 2, false);
        retention.note_batch(3, 1, false);
        retention.note_batch(4, 4, false);
        retention.note_batch(8, 1, false);
        retention.compact(3, 2);
        assert_eq!(retention.next_to_trim(0, 8), row(1, 2, false));
        retention.trimmed_front();
        assert_eq!(retention.next_to_trim(0, 8), row(3, 5, true), "cursors 3-7, one row");
        assert_eq!(retention.next_to_trim(0, 6), None, "not wholly published");
        retention.trimmed_front();
        assert_eq!(retention.next_to_trim(0, 8), row(8, 1, false));
        assert_eq!(retention.next_to_trim(1, 8), None, "one entry left, within the limit");
    }
}
