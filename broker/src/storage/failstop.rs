//! Fail-stop: a node whose storage can no longer make writes durable stops,
//! instead of serving reads forever while never acknowledging a write.
//!
//! The writer thread is the only way anything becomes durable. If it panics
//! (sled reports corruption by panicking), errors (a failed `fdatasync`
//! leaves the page cache in an unknown state: retrying and pretending is the
//! "fsyncgate" mistake), or stops making progress while work waits (the
//! watchdog sees it), the node must not limp on. [`FailStop::trigger`]
//! records why, wakes whoever watches [`FailStop::failed`] (the servers set
//! their gRPC health to NOT_SERVING and exit with [`EXIT_CODE`]), and exits
//! the process itself after [`GRACE`] in case nobody does, so a stuck
//! runtime cannot keep a broken node alive. Orchestrators restart it;
//! recovery replays the write-ahead log.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

/// Exit status of a node stopped by a storage failure (`EX_SOFTWARE`).
pub const EXIT_CODE: i32 = 70;

/// How long the servers get to report NOT_SERVING before the process exits
/// on its own.
pub const GRACE: Duration = Duration::from_secs(2);

/// Shared by the storage threads (which trigger it) and the servers (which
/// watch it).
#[derive(Clone, Default)]
pub struct FailStop {
    inner: Arc<Inner>,
}

struct Inner {
    failed: CancellationToken,
    reason: Mutex<Option<String>>,
    /// Whether triggering ends the process (always, but in tests of the
    /// storage itself, which watch [`FailStop::reason`] instead).
    exits: bool,
}

impl Default for Inner {
    fn default() -> Self {
        Self { failed: CancellationToken::new(), reason: Mutex::new(None), exits: true }
    }
}

impl FailStop {
    /// Records the first reason, wakes the watchers and schedules the exit.
    /// Returns at once; the caller should stop doing storage work.
    pub fn trigger(&self, reason: impl Into<String>) {
        let reason = reason.into();
        {
            let mut slot = self.inner.reason.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_some() {
                return;
            }
            tracing::error!(%reason, "storage failed: stopping the node (fail-stop)");
            *slot = Some(reason);
        }
        self.inner.failed.cancel();
        if !self.inner.exits {
            return;
        }
        let _ = std::thread::Builder::new().name("imsg-failstop".into()).spawn(|| {
            std::thread::sleep(GRACE);
            eprintln!("imsg: storage failed; exiting with status {EXIT_CODE}");
            std::process::exit(EXIT_CODE);
        });
    }

    /// A fail-stop that records and wakes but leaves the process alone, for
    /// tests that fail storage on purpose and check what it did.
    #[cfg(test)]
    pub fn without_exit() -> Self {
        Self { inner: Arc::new(Inner { exits: false, ..Inner::default() }) }
    }

    /// Resolves once storage has failed.
    pub async fn failed(&self) {
        self.inner.failed.cancelled().await
    }

    /// Why storage failed, if it did.
    pub fn reason(&self) -> Option<String> {
        self.inner.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub use crate::config::InjectedFault;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_faults_parse_and_bad_ones_are_refused() {
        assert_eq!("writer-panic:3".parse(), Ok(InjectedFault::WriterPanic { round: 3 }));
        assert_eq!("writer-stall:1".parse(), Ok(InjectedFault::WriterStall { round: 1 }));
        assert!("writer-panic".parse::<InjectedFault>().is_err());
        assert!("disk-fire:2".parse::<InjectedFault>().is_err());
    }
}
