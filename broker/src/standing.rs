//! What a node remembers of users' standing (suspended or not), read from
//! their partitions: for a few seconds, so that checking every command
//! costs a map lookup, not a call to another partition. A suspension is
//! seen by every node's calls within [`TTL`] (the user's streams close at
//! once, on their partition).

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// How long a node trusts what it read of a user's standing.
pub const TTL: Duration = Duration::from_secs(5);

/// Most standings remembered (the memory starts over beyond).
const MAX_REMEMBERED: usize = 100_000;

#[derive(Default)]
pub struct Standings(DashMap<String, (bool, Instant)>);

impl Standings {
    /// Whether `user` is suspended, if read less than [`TTL`] ago.
    pub fn recent(&self, user: &str) -> Option<bool> {
        self.0.get(user).filter(|entry| entry.1.elapsed() < TTL).map(|entry| entry.0)
    }

    pub fn remember(&self, user: &str, suspended: bool) {
        if self.0.len() >= MAX_REMEMBERED {
            self.0.clear();
        }
        self.0.insert(user.to_owned(), (suspended, Instant::now()));
    }

    /// The standing changed here: read it again next time.
    pub fn forget(&self, user: &str) {
        self.0.remove(user);
    }
}
