//! Latency histograms (HdrHistogram) with a per-second timeline.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Microseconds: 1 us to 10 minutes at 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// A latency distribution being recorded, one histogram per second of the
/// run; the run's total is their sum, made once at the end (one record per
/// sample, not two).
///
/// Not sharded: the generator runs on one thread, so the lock is never
/// contended. Each histogram is ~170 KiB of counters (3 digits over 1 us to
/// 10 minutes); sixteen shards of them per second, and a progress line
/// that merged the whole run every second, were a fifth of the generator's
/// CPU at 1,000 msg/s, most of it the kernel zeroing fresh pages
/// (docs/benchmarks.md, "Performance, eighth steps").
#[derive(Default)]
pub struct LatencyRecorder {
    per_second: Mutex<Vec<Histogram<u64>>>,
}

impl LatencyRecorder {
    /// Records `micros` observed during second `second` of the run.
    pub fn record(&self, second: usize, micros: u64) {
        let mut per_second = self.per_second.lock().unwrap_or_else(|e| e.into_inner());
        let value = micros.clamp(1, 600_000_000);
        while per_second.len() <= second {
            per_second.push(histogram());
        }
        per_second[second].saturating_record(value);
    }

    /// The distribution of second `second` alone (empty if nothing was
    /// recorded in it).
    pub fn second(&self, second: usize) -> Percentiles {
        let per_second = self.per_second.lock().unwrap_or_else(|e| e.into_inner());
        per_second.get(second).map(Percentiles::of).unwrap_or_default()
    }

    /// The whole run, and each of its seconds.
    pub fn merged(&self) -> (Histogram<u64>, Vec<Histogram<u64>>) {
        let seconds = self.per_second.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut total = histogram();
        for second in &seconds {
            let _ = total.add(second);
        }
        (total, seconds)
    }
}

/// The summary of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Counters the progress line and the summary read.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// Acknowledged messages that carried a photo.
    pub photos: AtomicU64,
    pub delivered: AtomicU64,
    pub send_errors: AtomicU64,
    /// Sends not issued because too many were already in flight.
    pub shed: AtomicU64,
    pub in_flight: AtomicU64,
    pub reconnects: AtomicU64,
    pub stream_errors: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
