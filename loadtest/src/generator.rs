//! What the generator itself costs, so a run can tell when it measured the
//! generator rather than the server.
//!
//! On a shared machine the two compete for the same cores. When the send
//! loop falls behind its own schedule (sends issued late: the open loop is
//! no longer open), the cores were saturated; whose doing that was is told
//! by who used more of them. A generator using more than its half of the
//! machine is a limit even on schedule.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Schedule lag p99 beyond which the generator counts as saturated.
const LAG_LIMIT_MS: f64 = 5.0;

/// Share of the machine's cores beyond which the generator counts as a
/// limit by itself (half of them: the other half is the server's).
const CORE_SHARE_LIMIT: f64 = 0.5;

/// CPU seconds (user + system) this process has used.
pub fn cpu_seconds() -> f64 {
    crate::spawn::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// CPU seconds spent per message, in microseconds (0 without messages).
pub fn per_message_us(cpu_seconds: f64, messages: u64) -> f64 {
    if messages == 0 { 0.0 } else { cpu_seconds * 1e6 / messages as f64 }
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
    /// Why the machine as a whole may have (both sides' CPU together).
    pub machine_saturated: Option<String>,
}

impl Usage {
    /// `server_cpu_seconds`: what the servers used meanwhile, when known
    /// (they ran on this machine).
    pub fn measured(
        cpu_seconds: f64,
        messages: u64,
        active: Duration,
        lag: ScheduleLag,
        server_cpu_seconds: Option<f64>,
    ) -> Self {
        let machine_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let seconds = active.as_secs_f64().max(1e-3);
        let cores_used = cpu_seconds / seconds;
        let server_cores = server_cpu_seconds.map(|cpu| cpu / seconds);
        let schedule_lag_p99_ms = lag.0.value_at_quantile(0.99) as f64 / 1000.0;
        let late = schedule_lag_p99_ms > LAG_LIMIT_MS;
        let both = match server_cores {
            Some(server) => format!("generator {cores_used:.2} + servers {server:.2} of {machine_cores} cores"),
            None => format!("generator {cores_used:.2} of {machine_cores} cores"),
        };
        let generator_heavier = server_cores.is_none_or(|server| cores_used >= server);
        let saturated = if late && generator_heavier {
            Some(format!("sends left {schedule_lag_p99_ms:.1} ms late (p99) and it used the most CPU ({both})"))
        } else if cores_used > CORE_SHARE_LIMIT * machine_cores as f64 {
            Some(format!("it used more than half of the machine ({both})"))
        } else {
            None
        };
        let machine_saturated = (late && saturated.is_none()).then(|| {
            format!(
                "sends left {schedule_lag_p99_ms:.1} ms late (p99): the cores were saturated ({both}), so latency \
                 includes waiting for a CPU"
            )
        });
        Self {
            cpu_seconds,
            cpu_us_per_message: per_message_us(cpu_seconds, messages),
            cores_used,
            machine_cores,
            schedule_lag_p99_ms,
            saturated,
            machine_saturated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag_of(micros: u64) -> ScheduleLag {
        let mut lag = ScheduleLag::default();
        for _ in 0..100 {
            lag.record(micros);
        }
        lag
    }

    #[test]
    fn late_sends_blame_whoever_used_more_cpu() {
        let ten_seconds = Duration::from_secs(10);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // Late, and the generator used more than the servers: its limit.
        let usage = Usage::measured(4.0, 1000, ten_seconds, lag_of(8_000), Some(2.0));
        assert!(usage.saturated.is_some() && usage.machine_saturated.is_none(), "{usage:?}");
        assert_eq!(usage.cpu_us_per_message, 4000.0);
        // Late, but the servers used more: the machine was full, not the
        // generator's fault.
        let usage = Usage::measured(2.0, 1000, ten_seconds, lag_of(8_000), Some(12.0));
        assert!(usage.saturated.is_none() && usage.machine_saturated.is_some(), "{usage:?}");
        // On time and light: nothing to say.
        let usage = Usage::measured(1.0, 1000, ten_seconds, lag_of(300), Some(12.0));
        assert!(usage.saturated.is_none() && usage.machine_saturated.is_none(), "{usage:?}");
        // On time but over half the machine: a limit by itself.
        let usage = Usage::measured(10.0 * cores * 0.6, 1000, ten_seconds, lag_of(300), None);
        assert!(usage.saturated.is_some(), "{usage:?}");
    }
}
