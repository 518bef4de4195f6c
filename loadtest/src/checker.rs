//! The correctness checker: every acknowledged message must reach every
//! online member device but the one that sent it (which has the ack)
//! exactly once and in seq order, and be in history;
//! every acknowledged change to a message (a reaction, an edit, an unsend)
//! must reach every member device exactly once, after the message itself,
//! and an unsent message must be a tombstone in history.
//!
//! It only sees a trace (acks, deliveries, history reads), so it can be fed
//! a crafted trace in tests to prove it catches each kind of fault.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

/// A device's view of one conversation.
#[derive(Debug, Default, Clone)]
pub struct DeliveryLog {
    last_seq: u64,
    seen: SeqSet,
    /// Changes to messages, by key ([`Change::key`]).
    changes: HashSet<String>,
    /// Seqs of messages a change arrived before: out of order, unless the
    /// device sent the message itself (it never receives its own).
    early_changes: Vec<u64>,
    pub duplicates: u64,
    pub reordered: u64,
}

/// What names one change to a message in a trace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    Reaction { seq: u64, user: String, emoji: String },
    Edit { seq: u64, edit_time_ms: i64 },
    Unsend { seq: u64 },
}

impl Change {
    pub fn seq(&self) -> u64 {
        match self {
            Self::Reaction { seq, .. } | Self::Edit { seq, .. } | Self::Unsend { seq } => *seq,
        }
    }

    fn key(&self) -> String {
        format!("{self:?}")
    }
}

impl DeliveryLog {
    /// Records one delivery of `seq`.
    pub fn record(&mut self, seq: u64) {
        if !self.seen.insert(seq) {
            self.duplicates += 1;
        } else if seq < self.last_seq {
            self.reordered += 1;
        }
        self.last_seq = self.last_seq.max(seq);
    }

    /// Records one delivery of a change: a duplicate if seen before, early
    /// if the message it changes had not arrived yet.
    pub fn record_change(&mut self, change: &Change) {
        if !self.changes.insert(change.key()) {
            self.duplicates += 1;
        } else if !self.seen.contains(change.seq()) {
            self.early_changes.push(change.seq());
        }
    }

    fn has(&self, seq: u64) -> bool {
        self.seen.contains(seq)
    }

    fn has_change(&self, change: &Change) -> bool {
        self.changes.contains(&change.key())
    }
}

/// A set of seqs, one bit each: a conversation's seqs are dense from 1, so
/// a device's deliveries of a whole run fit in a few kilobytes, where a
/// hash set cost the generator more per delivery than the rest of its
/// bookkeeping (hashing, and growing tables of millions of entries).
/// Seqs past [`SeqSet::DENSE_BELOW`] (which no run reaches, but a faulty
/// server could send) are kept in a hash set instead.
#[derive(Debug, Default, Clone)]
struct SeqSet {
    words: Vec<u64>,
    sparse: HashSet<u64>,
}

impl SeqSet {
    /// 2^26 seqs: at most 8 MiB of bits per conversation and device.
    const DENSE_BELOW: u64 = 1 << 26;

    /// Adds `seq`; `false` if it was there already.
    fn insert(&mut self, seq: u64) -> bool {
        if seq >= Self::DENSE_BELOW {
            return self.sparse.insert(seq);
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let new = self.words[word] & bit == 0;
        self.words[word] |= bit;
        new
    }

    fn contains(&self, seq: u64) -> bool {
        if seq >= Self::DENSE_BELOW {
            return self.sparse.contains(&seq);
        }
        self.words.get((seq / 64) as usize).is_some_and(|word| word & (1u64 << (seq % 64)) != 0)
    }
}

/// What went wrong, counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// (acked message, member device) pairs never delivered, plus acked
    /// messages missing from (or wrong in) history.
    pub lost: u64,
    /// Deliveries of a seq the device had already received.
    pub duplicates: u64,
    /// Deliveries that arrived after a higher seq of the same conversation,
    /// plus history that is not gap-free ascending.
    pub reordered: u64,
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        *self == Self::default()
    }
}

/// Collects the trace of a run and judges it.
#[derive(Debug, Default)]
pub struct Checker {
    /// conversation -> seq -> (client message id, sending device)
    acked: HashMap<String, BTreeMap<u64, (String, String)>>,
    /// conversation -> devices that must receive all of it
    audience: HashMap<String, Vec<String>>,
    /// (device, conversation) -> deliveries
    deliveries: HashMap<(String, String), DeliveryLog>,
    /// conversation -> (seq, client id) as read back
    history: HashMap<String, Vec<(u64, String)>>,
    /// conversation -> acknowledged changes
    changes: HashMap<String, Vec<Change>>,
    /// conversation -> seqs history shows as unsent
    unsent_in_history: HashMap<String, HashSet<u64>>,
}

impl Checker {
    pub fn expect_audience(&mut self, conversation: &str, devices: Vec<String>) {
        self.audience.insert(conversation.to_owned(), devices);
    }

    pub fn acked(&mut self, conversation: &str, seq: u64, client_id: &str, sending_device: &str) {
        let acked = (client_id.to_owned(), sending_device.to_owned());
        self.acked.entry(conversation.to_owned()).or_default().insert(seq, acked);
    }

    pub fn delivered(&mut self, device: &str, conversation: &str, seq: u64) {
        self.deliveries.entry((device.to_owned(), conversation.to_owned())).or_default().record(seq);
    }

    /// Adds a log a device kept by itself during the run.
    pub fn add_log(&mut self, device: &str, conversation: &str, log: DeliveryLog) {
        self.deliveries.insert((device.to_owned(), conversation.to_owned()), log);
    }

    pub fn history(&mut self, conversation: &str, messages: Vec<(u64, String)>) {
        self.history.insert(conversation.to_owned(), messages);
    }

    pub fn change_acked(&mut self, conversation: &str, change: Change) {
        self.changes.entry(conversation.to_owned()).or_default().push(change);
    }

    pub fn unsent_in_history(&mut self, conversation: &str, seqs: HashSet<u64>) {
        self.unsent_in_history.insert(conversation.to_owned(), seqs);
    }

    /// Acknowledged messages in all conversations.
    pub fn acked_count(&self) -> u64 {
        self.acked.values().map(|a| a.len() as u64).sum()
    }

    /// Deliveries the acknowledged messages call for.
    pub fn expected_deliveries(&self) -> u64 {
        let audience = |c: &String| self.audience.get(c).map_or(0, |d| d.len() as u64);
        let messages: u64 = self.acked.iter().map(|(c, a)| a.len() as u64 * audience(c).saturating_sub(1)).sum();
        let changes: u64 = self.changes.iter().map(|(c, a)| a.len() as u64 * audience(c)).sum();
        messages + changes
    }

    pub fn verdict(&self) -> Verdict {
        let mut verdict = Verdict::default();
        for ((device, conversation), log) in &self.deliveries {
            verdict.duplicates += log.duplicates;
            verdict.reordered += log.reordered;
            let sender = |seq: &u64| self.acked.get(conversation).and_then(|a| a.get(seq)).map(|(_, s)| s);
            verdict.reordered += log.early_changes.iter().filter(|seq| sender(seq) != Some(device)).count() as u64;
        }
        let empty = DeliveryLog::default();
        for (conversation, acked) in &self.acked {
            for device in self.audience.get(conversation).into_iter().flatten() {
                let log = self.deliveries.get(&(device.clone(), conversation.clone())).unwrap_or(&empty);
                let owed = acked.iter().filter(|(_, (_, sender))| sender != device);
                verdict.lost += owed.filter(|(seq, _)| !log.has(**seq)).count() as u64;
            }
            if let Some(history) = self.history.get(conversation) {
                let stored: HashMap<u64, &String> = history.iter().map(|(s, id)| (*s, id)).collect();
                verdict.lost += acked.iter().filter(|(seq, (id, _))| stored.get(seq) != Some(&id)).count() as u64;
                let gap_free = history.iter().enumerate().all(|(i, (seq, _))| *seq == i as u64 + 1);
                if !gap_free {
                    verdict.reordered += 1;
                }
            }
        }
        for (conversation, changes) in &self.changes {
            for device in self.audience.get(conversation).into_iter().flatten() {
                let log = self.deliveries.get(&(device.clone(), conversation.clone())).unwrap_or(&empty);
                verdict.lost += changes.iter().filter(|change| !log.has_change(change)).count() as u64;
            }
            if let Some(unsent) = self.unsent_in_history.get(conversation) {
                let tombstones_missing = changes
                    .iter()
                    .filter(|change| matches!(change, Change::Unsend { seq } if !unsent.contains(seq)))
                    .count();
                verdict.lost += tombstones_missing as u64;
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seq_set_holds_each_seq_once_dense_or_not() {
        let mut set = SeqSet::default();
        for seq in [1, 2, 64, 65, 1000, SeqSet::DENSE_BELOW, u64::MAX] {
            assert!(!set.contains(seq));
            assert!(set.insert(seq), "{seq} is new");
            assert!(!set.insert(seq), "{seq} is a repeat");
            assert!(set.contains(seq));
        }
        assert!(!set.contains(3) && !set.contains(63) && !set.contains(999));
        assert!(set.words.len() <= 1000 / 64 + 1, "u64::MAX went to the sparse set");
    }

    /// A conversation with three devices and three acked messages sent by
    /// `s`, all delivered (to the two others) and stored correctly.
    fn clean() -> Checker {
        let mut checker = Checker::default();
        checker.expect_audience("c", vec!["a".into(), "b".into(), "s".into()]);
        for seq in 1..=3 {
            checker.acked("c", seq, &format!("m{seq}"), "s");
        }
        checker.history("c", (1..=3).map(|s| (s, format!("m{s}"))).collect());
        checker
    }

    #[test]
    fn a_clean_trace_passes() {
        let mut checker = clean();
        for device in ["a", "b"] {
            for seq in 1..=3 {
                checker.delivered(device, "c", seq);
            }
        }
        assert!(checker.verdict().is_clean(), "{:?}", checker.verdict());
        assert_eq!(checker.expected_deliveries(), 6, "nothing is owed to the sending device");
    }

    #[test]
    fn the_sending_device_is_owed_its_changes_not_its_messages() {
        let mut checker = clean();
        let edit = Change::Edit { seq: 2, edit_time_ms: 7 };
        checker.change_acked("c", edit.clone());
        for device in ["a", "b"] {
            for seq in 1..=3 {
                checker.delivered(device, "c", seq);
            }
        }
        let mut logs: Vec<(&str, DeliveryLog)> = ["a", "b"]
            .iter()
            .map(|d| (*d, checker.deliveries[&(d.to_string(), "c".to_string())].clone()))
            .chain(std::iter::once(("s", DeliveryLog::default())))
            .collect();
        for (device, log) in &mut logs {
            log.record_change(&edit);
            checker.add_log(device, "c", log.clone());
        }
        assert!(checker.verdict().is_clean(), "the edit of its own message is in order on s: {:?}", checker.verdict());
        assert_eq!(checker.expected_deliveries(), 6 + 3);
        let mut silent = clean();
        silent.change_acked("c", edit);
        for device in ["a", "b"] {
            for seq in 1..=3 {
                silent.delivered(device, "c", seq);
            }
        }
        assert_eq!(silent.verdict().lost, 3, "every device, the sender's too, is owed the edit");
    }

    #[test]
    fn the_checker_catches_a_lost_message() {
        let mut checker = clean();
        for seq in 1..=3 {
            checker.delivered("a", "c", seq);
        }
        checker.delivered("b", "c", 1);
        checker.delivered("b", "c", 3);
        assert_eq!(checker.verdict(), Verdict { lost: 1, duplicates: 0, reordered: 0 });
    }

    #[test]
    fn the_checker_catches_a_message_missing_from_history() {
        let mut checker = clean();
        for device in ["a", "b"] {
            for seq in 1..=3 {
                checker.delivered(device, "c", seq);
            }
        }
        checker.history("c", vec![(1, "m1".into()), (2, "m2".into())]);
        assert_eq!(checker.verdict().lost, 1);
    }

    #[test]
    fn the_checker_catches_a_duplicated_message() {
        let mut checker = clean();
        for device in ["a", "b"] {
            for seq in [1, 2, 2, 3] {
                checker.delivered(device, "c", seq);
            }
        }
        assert_eq!(checker.verdict(), Verdict { lost: 0, duplicates: 2, reordered: 0 });
    }

    #[test]
    fn the_checker_catches_a_lost_duplicated_or_early_change() {
        let reaction = Change::Reaction { seq: 2, user: "b".into(), emoji: "👍".into() };
        let unsend = Change::Unsend { seq: 3 };
        let mut checker = clean();
        checker.change_acked("c", reaction.clone());
        checker.change_acked("c", unsend.clone());
        checker.unsent_in_history("c", [3].into());
        for device in ["a", "b"] {
            for seq in 1..=3 {
                checker.delivered(device, "c", seq);
            }
        }
        let mut logs: Vec<DeliveryLog> =
            ["a", "b"].iter().map(|d| checker.deliveries[&(d.to_string(), "c".to_string())].clone()).collect();
        logs[0].record_change(&reaction);
        logs[0].record_change(&unsend);
        logs[1].record_change(&reaction);
        logs[1].record_change(&reaction);
        let mut sender_log = DeliveryLog::default();
        sender_log.record_change(&reaction);
        sender_log.record_change(&unsend);
        checker.add_log("a", "c", logs[0].clone());
        checker.add_log("b", "c", logs[1].clone());
        checker.add_log("s", "c", sender_log);
        assert_eq!(checker.verdict(), Verdict { lost: 1, duplicates: 1, reordered: 0 }, "b lost the unsend");
        assert_eq!(checker.expected_deliveries(), 6 + 6);

        let mut early = DeliveryLog::default();
        early.record_change(&reaction);
        checker.add_log("a", "c", early);
        assert_eq!(checker.verdict().reordered, 1, "a change before its message");
        checker.add_log("a", "c", logs[0].clone());
        checker.unsent_in_history("c", HashSet::new());
        assert_eq!(checker.verdict().lost, 2, "history must show the tombstone");
    }

    #[test]
    fn the_checker_catches_a_reordered_message() {
        let mut checker = clean();
        for seq in [1, 3, 2] {
            checker.delivered("a", "c", seq);
        }
        for seq in 1..=3 {
            checker.delivered("b", "c", seq);
        }
        assert_eq!(checker.verdict(), Verdict { lost: 0, duplicates: 0, reordered: 1 });
    }
}
