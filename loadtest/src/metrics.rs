//! Latency histograms (HdrHistogram) with a per-second timeline, recorded
//! from many tasks at once through a few independently locked shards.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Microseconds: 1 us to 10 minutes at 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

const SHARDS: usize = 16;

/// Latencies by the second they were meant for; the run's total is their
/// sum, made once at the end (one record per sample, not two).
struct Shard {
    per_second: Vec<Histogram<u64>>,
}

/// A latency distribution being recorded, overall and per second of the run.
pub struct LatencyRecorder {
    shards: Vec<Mutex<Shard>>,
    next: AtomicUsize,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard { per_second: Vec::new() })).collect(),
            next: AtomicUsize::new(0),
        }
    }
}

impl LatencyRecorder {
    /// Records `micros` observed during second `second` of the run.
    pub fn record(&self, second: usize, micros: u64) {
        let shard = self.next.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let mut shard = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        let value = micros.clamp(1, 600_000_000);
        while shard.per_second.len() <= second {
            shard.per_second.push(histogram());
        }
        shard.per_second[second].saturating_record(value);
    }

    /// Everything recorded so far, merged.
    pub fn merged(&self) -> (Histogram<u64>, Vec<Histogram<u64>>) {
        let mut total = histogram();
        let mut seconds: Vec<Histogram<u64>> = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (i, h) in shard.per_second.iter().enumerate() {
                let _ = total.add(h);
                while seconds.len() <= i {
                    seconds.push(histogram());
                }
                let _ = seconds[i].add(h);
            }
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
