//! Rate limits. A user's unary requests spend tokens leased from the
//! budget at their partition ([`BudgetLeases`], see
//! `imsg_broker::core::budget`), so the limit holds across gateways; typing
//! signals and a stream's upstream frames have buckets here, per user and
//! per stream.

use std::time::{Duration, Instant};

use dashmap::DashMap;
pub use imsg_broker::core::budget::TokenBucket;
use imsg_proto::internal::v1::{AcquireBudgetRequest, Caller, execute_request, execute_response};
use tonic::Status;

use crate::backend::Backend;

/// Tokens asked for per lease: one round trip to the user's partition per
/// this many requests (or per lease lifetime, for a slow user).
const LEASE_TOKENS: u32 = 32;
/// Unspent tokens of a lease are dropped after this long, so tokens do not
/// pile up at gateways a user no longer uses.
const LEASE_LIFETIME: Duration = Duration::from_secs(10);

/// The tokens this gateway holds of each user's budget.
#[derive(Default)]
pub struct BudgetLeases {
    leases: DashMap<String, Lease>,
}

struct Lease {
    tokens: u32,
    expires: Instant,
}

impl BudgetLeases {
    /// Spends one of `caller`'s tokens, leasing more from their partition
    /// when this gateway holds none. `Ok(Err(wait))`: the budget is spent.
    pub async fn spend(&self, backend: &Backend, caller: &Caller) -> Result<Result<(), Duration>, Status> {
        let now = Instant::now();
        if let Some(mut lease) = self.leases.get_mut(&caller.user_id)
            && lease.expires > now
            && lease.tokens > 0
        {
            lease.tokens -= 1;
            return Ok(Ok(()));
        }
        let command = execute_request::Command::AcquireBudget(AcquireBudgetRequest { want: LEASE_TOKENS });
        let answer = match backend.execute(caller.clone(), command).await? {
            execute_response::Result::AcquireBudget(answer) => answer,
            _ => return Err(Status::internal("the broker answered a budget lease with something else")),
        };
        if answer.granted == 0 {
            return Ok(Err(Duration::from_millis(answer.retry_after_ms.max(1))));
        }
        // Concurrent leases of one user add up; none is given twice.
        let mut lease = self.leases.entry(caller.user_id.clone()).or_insert(Lease { tokens: 0, expires: now });
        if lease.expires <= now {
            lease.tokens = 0;
        }
        lease.tokens += answer.granted - 1;
        lease.expires = now + LEASE_LIFETIME;
        Ok(Ok(()))
    }

    /// Forgets expired leases.
    pub fn forget_expired(&self) {
        let now = Instant::now();
        self.leases.retain(|_, lease| lease.expires > now);
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
    fn a_bucket_allows_its_capacity_then_refills_over_time() {
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
