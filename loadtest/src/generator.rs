//! What the generator itself costs, so a run can tell when it measured the
//! generator rather than the server.
//!
//! On a shared machine the two compete for the same cores. Two signs say
//! the generator, not the server, set the limit: its send loop fell behind
//! its own schedule (sends issued late: the open loop is no longer open),
//! or it used most of the cores the server would have needed.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Schedule lag p99 beyond which the generator counts as saturated.
const LAG_LIMIT_MS: f64 = 5.0;

/// Share of the machine's cores beyond which the generator counts as
/// saturated (half of them: the other half is the server's).
const CORE_SHARE_LIMIT: f64 = 0.45;

/// CPU seconds (user + system) this process has used.
pub fn cpu_seconds() -> f64 {
    crate::spawn::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// How late the send loop issued each send, against its schedule.
pub struct ScheduleLag(Histogram<u64>);

impl Default for ScheduleLag {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid histogram bounds"))
    }
}

impl ScheduleLag {
    pub fn record(&mut self, micros: u64) {
        self.0.saturating_record(micros.max(1));
    }
}

/// The generator's share of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub cpu_seconds: f64,
    /// CPU per acknowledged message, in microseconds.
    pub cpu_us_per_message: f64,
    /// Cores in use on average while sending and draining.
    pub cores_used: f64,
    /// Cores this machine has.
    pub machine_cores: usize,
    /// How late sends left against the open-loop schedule, p99.
    pub schedule_lag_p99_ms: f64,
    /// Why the generator, not the server, may have set the limit.
    pub saturated: Option<String>,
}

impl Usage {
    pub fn measured(cpu_seconds: f64, messages: u64, active: Duration, lag: ScheduleLag) -> Self {
        let machine_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cores_used = cpu_seconds / active.as_secs_f64().max(1e-3);
        let schedule_lag_p99_ms = lag.0.value_at_quantile(0.99) as f64 / 1000.0;
        let saturated = if schedule_lag_p99_ms > LAG_LIMIT_MS {
            Some(format!(
                "sends left {schedule_lag_p99_ms:.1} ms late (p99): the send loop could not keep its schedule"
            ))
        } else if cores_used > CORE_SHARE_LIMIT * machine_cores as f64 {
            Some(format!("it used {cores_used:.2} of the machine's {machine_cores} cores"))
        } else {
            None
        };
        Self {
            cpu_seconds,
            cpu_us_per_message: if messages == 0 { 0.0 } else { cpu_seconds * 1e6 / messages as f64 },
            cores_used,
            machine_cores,
            schedule_lag_p99_ms,
            saturated,
        }
    }
}
