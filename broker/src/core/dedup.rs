//! The dedup window (invariant 3): the newest client message ids of a
//! conversation, so a re-sent message answers its original seq.
//!
//! Every loaded conversation that takes sends holds one, up to
//! `Limits::dedup_window` (1,024) entries, so its size per entry is what a
//! node pays per active conversation. An entry is a 128-bit fingerprint of
//! (sender, client id) under a key drawn at process start, not the two
//! strings: a full window is about 75 KiB (2,048 buckets of 33 bytes and a
//! ring of 16-byte entries; a test below measures it), against some four
//! times that before, by layout (tables per sender of 41-byte buckets,
//! which churn grew to twice what they held, a ring of two `String`s per
//! entry, three heap copies of the ids; three allocations a send).
//!
//! Two different pairs share a fingerprint with probability about 2^-128;
//! the hash is keyed (SipHash-1-3) with a secret no client knows, so not
//! even a member choosing ids can aim at another's. The window is rebuilt
//! from the log after a start, so a new key each start costs nothing.

use std::{collections::VecDeque, hash::Hasher, sync::OnceLock};

use imsg_proto::v1::Message;
use siphasher::sip128::{Hasher128, SipHasher13};

/// A (sender, client id) pair, fingerprinted.
type Fingerprint = u128;

/// The newest client message ids of a conversation, by fingerprint.
#[derive(Debug, Default)]
pub struct DedupWindow {
    /// Fingerprint to the message's (seq, server time).
    seen: foldhash::HashMap<Fingerprint, (u64, i64)>,
    /// Fingerprints oldest first, to forget beyond the capacity.
    order: VecDeque<Fingerprint>,
}

impl DedupWindow {
    /// Rebuilt from the newest messages, oldest first.
    pub fn from_tail(capacity: usize, tail: &[Message]) -> Self {
        let mut window = Self::default();
        for message in tail {
            window.remember(capacity, message);
        }
        window
    }

    pub fn remember(&mut self, capacity: usize, message: &Message) {
        let fingerprint = fingerprint(&message.sender_id, &message.client_message_id);
        if !self.seen.contains_key(&fingerprint) {
            // Forget first, so neither map nor ring holds one over capacity.
            while self.order.len() >= capacity.max(1) {
                let Some(oldest) = self.order.pop_front() else { break };
                self.seen.remove(&oldest);
            }
            self.order.push_back(fingerprint);
        }
        self.seen.insert(fingerprint, (message.seq, message.server_time_ms));
        // Removals leave tombstones, and a table more than half full grows
        // when they use up its room: a window at capacity would settle at
        // twice the buckets it needs. Rebuilt at its size instead (about
        // once per capacity/2 sends, a copy of the window each time).
        if self.seen.capacity() > 2 * capacity.max(16) {
            self.seen.shrink_to(capacity);
        }
    }

    /// `(seq, server time)` of what `sender` sent with `client_id`, if
    /// still remembered.
    pub fn get(&self, sender: &str, client_id: &str) -> Option<(u64, i64)> {
        self.seen.get(&fingerprint(sender, client_id)).copied()
    }
}

/// Both strings length-prefixed, so ("ab", "c") and ("a", "bc") differ.
fn fingerprint(sender: &str, client_id: &str) -> Fingerprint {
    static KEY: OnceLock<(u64, u64)> = OnceLock::new();
    let (key0, key1) = *KEY.get_or_init(rand::random);
    let mut hasher = SipHasher13::new_with_keys(key0, key1);
    for part in [sender, client_id] {
        hasher.write(&(part.len() as u64).to_le_bytes());
        hasher.write(part.as_bytes());
    }
    hasher.finish128().as_u128()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, sender: &str, client_id: &str) -> Message {
        Message { seq, sender_id: sender.into(), client_message_id: client_id.into(), ..Message::default() }
    }

    #[test]
    fn the_dedup_window_forgets_the_oldest_beyond_its_capacity() {
        let tail: Vec<Message> = (1..=5).map(|n| message(n, "alice", &format!("c{n}"))).collect();
        let window = DedupWindow::from_tail(3, &tail);
        assert_eq!(window.get("alice", "c1"), None);
        assert_eq!(window.get("alice", "c2"), None);
        assert_eq!(window.get("alice", "c3").map(|(seq, _)| seq), Some(3));
        assert_eq!(window.get("alice", "c5").map(|(seq, _)| seq), Some(5));
        assert_eq!(window.get("bob", "c5"), None, "ids are per sender");
        assert_eq!((window.seen.len(), window.order.len()), (3, 3), "nothing kept beyond the capacity");
    }

    #[test]
    fn the_boundary_between_sender_and_client_id_is_part_of_the_fingerprint() {
        let window = DedupWindow::from_tail(8, &[message(1, "ab", "c")]);
        assert_eq!(window.get("ab", "c").map(|(seq, _)| seq), Some(1));
        assert_eq!(window.get("a", "bc"), None);
        assert_eq!(window.get("abc", ""), None);
    }

    #[test]
    fn a_remembered_id_sent_again_keeps_one_entry_and_its_newest_seq() {
        let mut window = DedupWindow::default();
        window.remember(2, &message(1, "alice", "c1"));
        window.remember(2, &message(2, "alice", "c1"));
        window.remember(2, &message(3, "bob", "c1"));
        assert_eq!(window.get("alice", "c1").map(|(seq, _)| seq), Some(2));
        assert_eq!(window.get("bob", "c1").map(|(seq, _)| seq), Some(3));
        assert_eq!(window.order.len(), 2);
    }

    #[test]
    fn a_full_window_under_churn_keeps_its_capacity_in_about_seventy_five_bytes_an_entry() {
        let mut window = DedupWindow::default();
        for seq in 1..=20_000u64 {
            window.remember(1024, &message(seq, &format!("user{}", seq % 3), &format!("{seq:032x}")));
        }
        assert_eq!((window.seen.len(), window.order.len()), (1024, 1024));
        // A hashbrown bucket is the entry plus a control byte.
        let bytes = window.seen.capacity() * (size_of::<(Fingerprint, (u64, i64))>() + 1)
            + window.order.capacity() * size_of::<Fingerprint>();
        assert!(bytes <= 1024 * 80, "{bytes} bytes for 1,024 entries");
        assert_eq!(window.get("user2", &format!("{:032x}", 20_000u64)).map(|(seq, _)| seq), Some(20_000));
    }
}
