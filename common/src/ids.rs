//! Identifiers: partition placement and the ids the broker derives.
//!
//! Placement must never change for a given key (it decides where data lives
//! on disk), so it uses FNV-1a, which is fixed by definition, not std's
//! `DefaultHasher`, whose algorithm may change between Rust releases.
//! Conversation ids are derived, not random, which is what makes creation
//! idempotent: the direct conversation of a pair has exactly one id, and a
//! group's id is fixed by (creator, request id), so a retried create lands on
//! the same partition and finds what the first attempt wrote. They are
//! keyed with a server secret ([`IdKey`], HMAC-SHA256): nobody without it
//! can compute the id of someone else's conversation and probe whether it
//! exists.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Longest user, device, client message or request id.
pub const MAX_ID_LEN: usize = 64;

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@')
}

/// Why `value` is not a user, device, request or client message id (1..=64
/// characters of `[A-Za-z0-9_.@-]`), or `Ok`. Ids never contain `/`, which
/// storage keys rely on.
pub fn check_id(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > MAX_ID_LEN {
        return Err(format!("longer than {MAX_ID_LEN} characters"));
    }
    if !value.chars().all(is_id_char) {
        return Err("may only contain A-Z a-z 0-9 _ . @ -".into());
    }
    Ok(())
}

/// Index of a partition, `0..P`.
pub type PartitionId = u32;

/// FNV-1a, 64 bit.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The partition that owns a conversation or a user's private state.
pub fn partition_of(key: &str, partitions: u32) -> PartitionId {
    (fnv1a(key.as_bytes()) % u64::from(partitions)) as PartitionId
}

/// The secret conversation ids are derived with. The same on every node
/// of a cluster, and never changed (ids derived before would not be found
/// again by creating the conversation).
#[derive(Clone)]
pub struct IdKey(Hmac<Sha256>);

/// Shortest accepted id secret, in bytes.
pub const MIN_ID_SECRET_BYTES: usize = 16;

impl IdKey {
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < MIN_ID_SECRET_BYTES {
            return Err(format!("the id secret must be at least {MIN_ID_SECRET_BYTES} bytes"));
        }
        Hmac::new_from_slice(secret).map(Self).map_err(|e| e.to_string())
    }

    fn digest_hex(&self, parts: &[&str]) -> String {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(&[0u8]);
        }
        let digest = mac.finalize().into_bytes();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The one direct conversation of a pair, whatever the order of the pair.
    pub fn direct_conversation_id(&self, a: &str, b: &str) -> String {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        format!("{DIRECT_PREFIX}{}", self.digest_hex(&["direct", low, high]))
    }

    /// The group a creator makes with a given request id.
    pub fn group_conversation_id(&self, creator: &str, request_id: &str) -> String {
        format!("{GROUP_PREFIX}{}", self.digest_hex(&["group", creator, request_id]))
    }
}

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdKey(..)")
    }
}

/// Prefix of direct conversation ids.
pub const DIRECT_PREFIX: &str = "dm_";
/// Prefix of group conversation ids.
pub const GROUP_PREFIX: &str = "g_";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_id_is_the_same_for_either_order_and_differs_per_pair() {
        let key = IdKey::new(b"0123456789abcdef").unwrap();
        assert_eq!(key.direct_conversation_id("alice", "bob"), key.direct_conversation_id("bob", "alice"));
        assert_ne!(key.direct_conversation_id("alice", "bob"), key.direct_conversation_id("alice", "carol"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(key.direct_conversation_id("ab", "c"), key.direct_conversation_id("a", "bc"));
    }

    #[test]
    fn ids_cannot_be_computed_without_the_secret() {
        let ours = IdKey::new(b"0123456789abcdef").unwrap();
        let guess = IdKey::new(b"fedcba9876543210").unwrap();
        assert_ne!(ours.direct_conversation_id("alice", "bob"), guess.direct_conversation_id("alice", "bob"));
        assert_ne!(ours.group_conversation_id("alice", "r1"), guess.group_conversation_id("alice", "r1"));
        assert!(IdKey::new(b"short").is_err());
    }

    #[test]
    fn placement_is_stable_across_releases() {
        // Pinned values: if these change, data on disk is in the wrong place.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(partition_of("alice", 64), (fnv1a(b"alice") % 64) as u32);
    }
}
