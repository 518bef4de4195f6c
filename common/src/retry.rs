//! Which errors a client retries: one rule for the Rust SDK, the load
//! tester and the test harness (and, in Python, `imsg.client.retry_after`).
//!
//! The server decides, not the client: every refusal that a retry of the
//! same request can outlive (a partition overloaded or moving, a node
//! restarting, a rate limit) carries `google.rpc.RetryInfo` with the delay
//! to wait; a permanent refusal (a full group, a bad argument, not a
//! member) never does, whatever its code. A call that got no verdict from
//! the server at all (the connection failed or was cut: UNAVAILABLE,
//! CANCELLED, UNKNOWN or DEADLINE_EXCEEDED without details) is retried with
//! the client's own backoff. Sends stay safe to retry because each carries
//! its client message id (invariant 3).

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// A refusal that a retry may outlive, with the delay the client should
/// wait before trying again.
pub fn transient(code: Code, message: impl Into<String>, retry_after: Duration) -> Status {
    Status::with_error_details(code, message, ErrorDetails::with_retry_info(Some(retry_after)))
}

/// Whether to retry after `status`, and after how long: `Some(delay)` to
/// retry (a zero delay: use the client's own backoff), `None` when retrying
/// the same request cannot succeed.
pub fn retry_after(status: &Status) -> Option<Duration> {
    if let Some(info) = status.get_details_retry_info() {
        return Some(info.retry_delay.unwrap_or_default());
    }
    let no_verdict =
        matches!(status.code(), Code::Unavailable | Code::Cancelled | Code::Unknown | Code::DeadlineExceeded)
            && status.details().is_empty();
    no_verdict.then_some(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transient_refusal_is_retried_after_its_delay() {
        let status = transient(Code::ResourceExhausted, "partition 3 is overloaded", Duration::from_millis(50));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(retry_after(&status), Some(Duration::from_millis(50)));
        let moving = transient(Code::Unavailable, "partition 3 is moving", Duration::from_millis(100));
        assert_eq!(retry_after(&moving), Some(Duration::from_millis(100)));
    }

    #[test]
    fn a_permanent_refusal_is_never_retried_whatever_its_code() {
        for status in [
            Status::resource_exhausted("a group has at most 250 members"),
            Status::invalid_argument("text: must not be empty"),
            Status::permission_denied("not a member"),
            Status::failed_precondition("blocked"),
            Status::not_found("conversation not found"),
            Status::unauthenticated("token expired"),
        ] {
            assert_eq!(retry_after(&status), None, "{status:?}");
        }
    }

    #[test]
    fn a_call_without_a_verdict_is_retried_with_the_clients_backoff() {
        for code in [Code::Unavailable, Code::Cancelled, Code::Unknown, Code::DeadlineExceeded] {
            assert_eq!(retry_after(&Status::new(code, "transport error")), Some(Duration::ZERO), "{code:?}");
        }
    }
}
