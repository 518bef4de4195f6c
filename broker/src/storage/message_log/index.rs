//! The message log's index: where each row's value is in the file.
//!
//! It lives in memory for every message a partition holds, so its size per
//! message is what matters. A message's key is `m` conversation `/` seq
//! (big-endian u64), and a conversation's seqs are gap-free from its first:
//! so the places of a conversation's messages are an array indexed by seq,
//! 16 bytes a message, under one copy of the key's prefix. A B-tree keyed
//! by the whole key was ~120 bytes a message. Keys of any other shape (none
//! today), and seqs further than [`MAX_GAP`] from a conversation's array
//! (none a broker writes, but a row is only bytes: a fuzzer found that an
//! array stretched to seq 2^63 does not fit in memory), are kept by key; a
//! key is in one of the two, never both.
//!
//! Key order is (prefix, seq) order: conversation ids never contain `/`, so
//! no prefix is a prefix of another, and every key of one conversation
//! sorts before every key of the next.

use std::{collections::BTreeMap, ops::Bound};

use super::merge;

/// The most absent seqs an array is stretched over to place a seq.
const MAX_GAP: u64 = 1024;

/// Where a row's value is in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Place {
    pub offset: u64,
    pub len: u32,
}

impl Place {
    /// A seq with no row (removed, or not written).
    const ABSENT: Place = Place { offset: 0, len: u32::MAX };

    fn present(self) -> Option<Place> {
        (self != Self::ABSENT).then_some(self)
    }
}

/// A conversation's messages: `places[i]` is seq `first + i`'s.
struct Seqs {
    first: u64,
    places: Vec<Place>,
}

/// A walk's bounds and direction (`backward`: descending).
#[derive(Clone, Copy)]
pub(super) struct Span<'b> {
    pub lower: &'b Bound<Vec<u8>>,
    pub upper: &'b Bound<Vec<u8>>,
    pub backward: bool,
}

#[derive(Default)]
pub(super) struct Index {
    conversations: BTreeMap<Box<[u8]>, Seqs>,
    other: BTreeMap<Vec<u8>, Place>,
}

/// A message key's prefix (`m` conversation `/`) and seq.
fn split(key: &[u8]) -> Option<(&[u8], u64)> {
    let at = key.len().checked_sub(8).filter(|at| *at >= 2)?;
    (key[at - 1] == b'/').then(|| (&key[..at], u64::from_be_bytes(key[at..].try_into().expect("8 bytes"))))
}

fn above(key: &[u8], lower: &Bound<Vec<u8>>) -> bool {
    match lower {
        Bound::Included(bound) => key >= bound.as_slice(),
        Bound::Excluded(bound) => key > bound.as_slice(),
        Bound::Unbounded => true,
    }
}

fn below(key: &[u8], upper: &Bound<Vec<u8>>) -> bool {
    match upper {
        Bound::Included(bound) => key <= bound.as_slice(),
        Bound::Excluded(bound) => key < bound.as_slice(),
        Bound::Unbounded => true,
    }
}

fn bound_key(bound: &Bound<Vec<u8>>) -> Option<&[u8]> {
    match bound {
        Bound::Included(key) | Bound::Excluded(key) => Some(key),
        Bound::Unbounded => None,
    }
}

impl Index {
    pub fn get(&self, key: &[u8]) -> Option<Place> {
        let in_array = split(key).and_then(|(prefix, seq)| {
            let seqs = self.conversations.get(prefix)?;
            let i = usize::try_from(seq.checked_sub(seqs.first)?).ok()?;
            seqs.places.get(i).copied().and_then(Place::present)
        });
        in_array.or_else(|| self.other.get(key).copied())
    }

    pub fn insert(&mut self, key: &[u8], place: Place) {
        match split(key) {
            Some((prefix, seq)) if self.place_in_array(prefix, seq, place) => {
                if !self.other.is_empty() {
                    self.other.remove(key);
                }
            }
            _ => {
                self.other.insert(key.to_vec(), place);
            }
        }
    }

    /// Places `seq` in its conversation's array; false when it is too far
    /// from it ([`MAX_GAP`]).
    fn place_in_array(&mut self, prefix: &[u8], seq: u64, place: Place) -> bool {
        let seqs = match self.conversations.get_mut(prefix) {
            Some(seqs) => seqs,
            None => self.conversations.entry(prefix.into()).or_insert(Seqs { first: seq, places: Vec::new() }),
        };
        let end = seqs.first.saturating_add(seqs.places.len() as u64);
        if seq.saturating_add(MAX_GAP) < seqs.first || seq > end.saturating_add(MAX_GAP) {
            return false;
        }
        if seq < seqs.first {
            // Written out of order (rare: nothing does today): shift.
            let gap = (seqs.first - seq) as usize;
            seqs.places.splice(0..0, std::iter::repeat_n(Place::ABSENT, gap));
            seqs.first = seq;
        }
        let i = (seq - seqs.first) as usize;
        if i >= seqs.places.len() {
            seqs.places.resize(i + 1, Place::ABSENT);
        }
        seqs.places[i] = place;
        true
    }

    pub fn remove(&mut self, key: &[u8]) {
        self.other.remove(key);
        let Some((prefix, seq)) = split(key) else { return };
        let Some(seqs) = self.conversations.get_mut(prefix) else { return };
        if let Some(place) = seq.checked_sub(seqs.first).and_then(|i| seqs.places.get_mut(i as usize)) {
            *place = Place::ABSENT;
        }
        while seqs.places.last() == Some(&Place::ABSENT) {
            seqs.places.pop();
        }
        if seqs.places.is_empty() {
            self.conversations.remove(prefix);
        }
    }

    /// Rows in the index (tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let messages = self.conversations.values().flat_map(|seqs| &seqs.places).filter(|p| p.present().is_some());
        messages.count() + self.other.len()
    }

    /// Up to `limit` rows within the span, in its order.
    pub fn chunk(&self, span: Span<'_>, limit: usize) -> Vec<(Vec<u8>, Place)> {
        let (messages, other) = (self.messages(span, limit), self.others(span, limit));
        // Both in the walk's order: merged, the first `limit`.
        merge(messages.into_iter(), other.into_iter(), span.backward, |(key, _)| Some(key.as_slice()))
            .take(limit)
            .collect()
    }

    fn others(&self, span: Span<'_>, limit: usize) -> Vec<(Vec<u8>, Place)> {
        let Span { lower, upper, backward } = span;
        let rows = self.other.iter().filter(|(key, _)| above(key, lower) && below(key, upper));
        let clone = |(key, place): (&Vec<u8>, &Place)| (key.clone(), *place);
        if backward { rows.rev().take(limit).map(clone).collect() } else { rows.take(limit).map(clone).collect() }
    }

    fn messages(&self, span: Span<'_>, limit: usize) -> Vec<(Vec<u8>, Place)> {
        let Span { lower, upper, backward } = span;
        let mut rows = Vec::new();
        // The conversation that may hold the first key: the last prefix
        // not after the bound (a prefix sorts before its own keys).
        let start = bound_key(if backward { upper } else { lower });
        let from = start.and_then(|key| {
            self.conversations.range::<[u8], _>((Bound::Unbounded, Bound::Included(key))).next_back().map(|(p, _)| p)
        });
        let conversations: Box<dyn Iterator<Item = (&Box<[u8]>, &Seqs)>> = match (from, backward) {
            (Some(from), false) => {
                Box::new(self.conversations.range::<[u8], _>((Bound::Included(&**from), Bound::Unbounded)))
            }
            (None, false) => Box::new(self.conversations.iter()),
            (Some(from), true) => {
                Box::new(self.conversations.range::<[u8], _>((Bound::Unbounded, Bound::Included(&**from))).rev())
            }
            (None, true) => Box::new(self.conversations.iter().rev()),
        };
        let mut key = Vec::new();
        for (prefix, seqs) in conversations {
            let key_of = |key: &mut Vec<u8>, i: usize| {
                key.clear();
                key.extend_from_slice(prefix);
                key.extend_from_slice(&(seqs.first + i as u64).to_be_bytes());
            };
            // Keys grow with the index. Forward, `i` is the first index
            // within the lower bound; backward, one past the last within
            // the upper.
            let mut i = partition(seqs.places.len(), |i| {
                key_of(&mut key, i);
                if backward { below(&key, upper) } else { !above(&key, lower) }
            });
            loop {
                let index = if backward {
                    match i.checked_sub(1) {
                        Some(previous) => previous,
                        None => break,
                    }
                } else if i < seqs.places.len() {
                    i
                } else {
                    break;
                };
                key_of(&mut key, index);
                let within = if backward { above(&key, lower) } else { below(&key, upper) };
                if !within {
                    // Every later conversation's keys are further still.
                    return rows;
                }
                if let Some(place) = seqs.places[index].present() {
                    rows.push((key.clone(), place));
                    if rows.len() == limit {
                        return rows;
                    }
                }
                i = if backward { index } else { index + 1 };
            }
        }
        rows
    }
}

/// The number of leading indexes in `0..len` for which `before` holds
/// (`before` holds for a prefix of them).
fn partition(len: usize, mut before: impl FnMut(usize) -> bool) -> usize {
    let (mut low, mut high) = (0, len);
    while low < high {
        let middle = low + (high - low) / 2;
        if before(middle) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator (the test must not depend on a seed
    /// it cannot print).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    fn message_key(conversation: &str, seq: u64) -> Vec<u8> {
        [b"m", conversation.as_bytes(), b"/", &seq.to_be_bytes()].concat()
    }

    fn random_bound(rng: &mut Lcg, conversations: &[&str]) -> Bound<Vec<u8>> {
        let key = match rng.below(4) {
            0 => return Bound::Unbounded,
            1 => [b"m", conversations[rng.below(3) as usize].as_bytes(), b"/"].concat(),
            2 => b"m".to_vec(),
            _ => message_key(conversations[rng.below(3) as usize], rng.below(40)),
        };
        if rng.below(2) == 0 { Bound::Included(key) } else { Bound::Excluded(key) }
    }

    #[test]
    fn walks_and_reads_match_a_map_of_whole_keys_after_random_writes_and_removals() {
        let mut rng = Lcg(7);
        let conversations = ["dm_aa", "dm_ab", "g_b"];
        let mut index = Index::default();
        let mut model: BTreeMap<Vec<u8>, Place> = BTreeMap::new();
        for step in 0..3000u64 {
            let key = match rng.below(20) {
                0 | 1 => format!("m{}", rng.below(5)).into_bytes(), // not a message key
                // Far from the others: kept by key, not in an array.
                2 => {
                    message_key(conversations[rng.below(3) as usize], [u64::MAX, 1 << 40, 5000][rng.below(3) as usize])
                }
                _ => message_key(conversations[rng.below(3) as usize], 1 + rng.below(36)),
            };
            if rng.below(4) == 0 {
                index.remove(&key);
                model.remove(&key);
            } else {
                let place = Place { offset: step, len: rng.below(100) as u32 };
                index.insert(&key, place);
                model.insert(key.clone(), place);
            }
            assert_eq!(index.get(&key), model.get(&key).copied());
            let (lower, upper) = (random_bound(&mut rng, &conversations), random_bound(&mut rng, &conversations));
            let valid = |l: &Bound<Vec<u8>>, u: &Bound<Vec<u8>>| match (bound_key(l), bound_key(u)) {
                (Some(l), Some(u)) => l < u,
                _ => true,
            };
            if !valid(&lower, &upper) {
                continue;
            }
            let backward = rng.below(2) == 0;
            let limit = 1 + rng.below(20) as usize;
            let expected: Vec<_> = {
                let rows = model.range((lower.clone(), upper.clone())).map(|(k, p)| (k.clone(), *p));
                if backward { rows.rev().take(limit).collect() } else { rows.take(limit).collect() }
            };
            let span = Span { lower: &lower, upper: &upper, backward };
            assert_eq!(index.chunk(span, limit), expected, "step {step}: {lower:?}..{upper:?}");
        }
        assert_eq!(index.len(), model.len());
    }

    #[test]
    fn a_message_costs_its_place_and_not_a_copy_of_its_key() {
        let mut index = Index::default();
        for seq in 1..=1000 {
            index.insert(&message_key("dm_aa", seq), Place { offset: seq, len: 1 });
        }
        assert_eq!(index.conversations.len(), 1);
        assert_eq!(index.conversations.values().next().unwrap().places.len(), 1000);
        assert!(index.other.is_empty());
        assert_eq!(std::mem::size_of::<Place>(), 16);
    }
}
