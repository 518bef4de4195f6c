//! Per-user request budgets, kept where each user is unique: their own
//! partition. Gateways lease tokens from it in small chunks
//! ([`Budgets::grant`]) and spend them locally, so a user's budget is the
//! same whether their devices use one gateway or ten: the tokens granted
//! across all gateways never pass what the bucket holds. A lease a gateway
//! does not spend before it expires is lost to the user (a few requests'
//! worth), never given twice.
//!
//! Budgets live in memory: a restart or a move of the partition refills
//! them, which errs on the side of the user.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// A refilling budget: `capacity` at most, `per_second` added each second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn new(capacity: u32, per_second: f64) -> Self {
        Self { capacity: f64::from(capacity), per_second, tokens: f64::from(capacity), updated: Instant::now() }
    }

    /// Takes one token if there is one; otherwise says how long until
    /// there is (what a refused client is told to wait).
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.take_up_to(1, now).map(|_| ())
    }

    /// Takes as many whole tokens as there are, up to `want` (at least
    /// one); none: how long until there is one.
    pub fn take_up_to(&mut self, want: u32, now: Instant) -> Result<u32, Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
        if self.tokens >= 1.0 {
            let taken = self.tokens.floor().min(f64::from(want.max(1)));
            self.tokens -= taken;
            Ok(taken as u32)
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_second.max(f64::MIN_POSITIVE)))
        }
    }

    pub fn idle_since(&self) -> Instant {
        self.updated
    }
}

/// What a lease request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// This many tokens, to spend within the lease.
    Tokens(u32),
    /// None now; one will be there after this long.
    Wait(Duration),
}

/// The budgets of the users of one partition.
#[derive(Debug)]
pub struct Budgets {
    buckets: HashMap<String, TokenBucket>,
    capacity: u32,
    per_second: f64,
}

/// A bucket untouched this long is full again, so it is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60);

impl Budgets {
    pub fn new(capacity: u32, per_second: f64) -> Self {
        Self { buckets: HashMap::new(), capacity, per_second }
    }

    /// Leases up to `want` tokens of `user`'s budget.
    pub fn grant(&mut self, user: &str, want: u32, now: Instant) -> Grant {
        let (capacity, per_second) = (self.capacity, self.per_second);
        let bucket = self.buckets.entry(user.to_owned()).or_insert_with(|| TokenBucket::new(capacity, per_second));
        match bucket.take_up_to(want, now) {
            Ok(tokens) => Grant::Tokens(tokens),
            Err(wait) => Grant::Wait(wait),
        }
    }

    /// Drops buckets that have refilled (bounded memory).
    pub fn forget_idle(&mut self, now: Instant) {
        self.buckets.retain(|_, bucket| now.saturating_duration_since(bucket.idle_since()) < FORGET_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_never_grant_more_than_the_bucket_holds_whoever_asks() {
        // Ten gateways asking for 4 each at once share a burst of 10.
        let mut budgets = Budgets::new(10, 5.0);
        let now = Instant::now();
        let granted: u32 = (0..10)
            .map(|_| match budgets.grant("alice", 4, now) {
                Grant::Tokens(n) => n,
                Grant::Wait(_) => 0,
            })
            .sum();
        assert_eq!(granted, 10);
        match budgets.grant("alice", 4, now) {
            Grant::Wait(wait) => assert_eq!(wait, Duration::from_millis(200)),
            other => panic!("granted past the budget: {other:?}"),
        }
        // A second later five more have refilled; other users are apart.
        assert_eq!(budgets.grant("alice", 100, now + Duration::from_secs(1)), Grant::Tokens(5));
        assert_eq!(budgets.grant("bob", 100, now), Grant::Tokens(10));
    }

    #[test]
    fn idle_buckets_are_forgotten_once_refilled() {
        let mut budgets = Budgets::new(10, 5.0);
        let now = Instant::now();
        budgets.grant("alice", 10, now);
        budgets.forget_idle(now + Duration::from_secs(1));
        assert_eq!(budgets.buckets.len(), 1);
        budgets.forget_idle(now + FORGET_AFTER);
        assert!(budgets.buckets.is_empty());
        assert_eq!(budgets.grant("alice", 100, now + FORGET_AFTER), Grant::Tokens(10));
    }
}
