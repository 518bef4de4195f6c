//! Token buckets: per user for unary calls (shared by all of a user's
//! devices on this gateway) and per stream for upstream frames.

use std::time::{Duration, Instant};

use dashmap::DashMap;

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
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_second.max(f64::MIN_POSITIVE)))
        }
    }

    fn idle_since(&self) -> Instant {
        self.updated
    }
}

/// Buckets keyed by user id.
pub struct PerUserLimiter {
    buckets: DashMap<String, TokenBucket>,
    capacity: u32,
    per_second: f64,
}

impl PerUserLimiter {
    pub fn new(capacity: u32, per_second: f64) -> Self {
        Self { buckets: DashMap::new(), capacity, per_second }
    }

    /// [`TokenBucket::try_take`] on `user`'s bucket.
    pub fn try_take(&self, user: &str) -> Result<(), Duration> {
        let now = Instant::now();
        if let Some(mut bucket) = self.buckets.get_mut(user) {
            return bucket.try_take(now);
        }
        let mut bucket = TokenBucket::new(self.capacity, self.per_second);
        let allowed = bucket.try_take(now);
        self.buckets.insert(user.to_owned(), bucket);
        allowed
    }

    /// Forgets users idle long enough for their bucket to be full again.
    pub fn forget_idle(&self) {
        let full_after = Duration::from_secs_f64(f64::from(self.capacity) / self.per_second.max(f64::MIN_POSITIVE));
        let now = Instant::now();
        self.buckets.retain(|_, bucket| now.saturating_duration_since(bucket.idle_since()) < full_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_its_capacity_then_refills_over_time() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2, 1.0);
        assert!(bucket.try_take(start).is_ok());
        assert!(bucket.try_take(start).is_ok());
        let wait = bucket.try_take(start).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(bucket.try_take(start + Duration::from_millis(1100)).is_ok());
    }

    #[test]
    fn users_have_separate_budgets() {
        let limiter = PerUserLimiter::new(1, 0.001);
        assert!(limiter.try_take("alice").is_ok());
        assert!(limiter.try_take("alice").is_err());
        assert!(limiter.try_take("bob").is_ok());
    }
}
