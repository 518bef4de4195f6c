//! Broker configuration: storage location, durability mode, partition count
//! and every limit the broker enforces (invariant 6: bounded everything).
//!
//! Values are validated once, at start, by [`BrokerConfig::validate`].

use std::{path::PathBuf, str::FromStr, time::Duration};

/// When an acknowledged write is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// Acknowledge only after the write-ahead log is fdatasync'ed (group
    /// commit: one sync covers every write that arrived meanwhile).
    Always,
    /// Acknowledge once logged (written, not synced) and sync every
    /// interval: an explicit operator choice that trades up to the last
    /// interval of writes, on power loss, for latency.
    Interval(Duration),
}

impl FromStr for FsyncMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "always" {
            return Ok(Self::Always);
        }
        let millis = s
            .strip_prefix("interval:")
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .ok_or_else(|| format!("expected `always` or `interval:<ms>` (ms > 0), got `{s}`"))?;
        Ok(Self::Interval(Duration::from_millis(millis)))
    }
}

/// A fault injected into the writer thread, for the tests that prove the
/// node fail-stops (set with `--inject-fault`; never in production).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedFault {
    /// The writer panics in its `n`-th round that has work.
    WriterPanic { round: u64 },
    /// The writer stops making progress (sleeps forever) in that round.
    WriterStall { round: u64 },
}

impl FromStr for InjectedFault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, round) = s.split_once(':').ok_or_else(|| format!("expected `<kind>:<round>`, got `{s}`"))?;
        let round = round.parse::<u64>().map_err(|_| format!("round must be a number, got `{round}`"))?;
        match kind {
            "writer-panic" => Ok(Self::WriterPanic { round }),
            "writer-stall" => Ok(Self::WriterStall { round }),
            _ => Err(format!("unknown fault `{kind}` (writer-panic, writer-stall)")),
        }
    }
}

/// Where push notifications go (see `crate::push`).
#[derive(Debug, Clone)]
pub struct PushConfig {
    pub webhook_url: String,
    /// Signs each request (at least 16 bytes).
    pub webhook_secret: String,
}

/// Limits the broker enforces on every request, queue and stream.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest text message, in bytes (UTF-8).
    pub max_text_bytes: usize,
    /// Largest group, counting every member.
    pub max_group_members: usize,
    /// Longest group title, in bytes.
    pub max_title_bytes: usize,
    /// Events buffered per device session before it counts as a slow
    /// consumer and is disconnected.
    pub session_queue: usize,
    /// Commands buffered per partition before callers are told to back off.
    pub partition_queue: usize,
    /// Commands a partition folds into one write batch.
    pub max_batch: usize,
    /// Recent client message ids remembered per conversation for dedup.
    pub dedup_window: usize,
    /// Update-log entries retained per partition; older cursors must resync.
    pub update_log_retention: usize,
    /// Live sessions one user may hold at once.
    pub max_sessions_per_user: usize,
    /// How long a typing signal lasts without being renewed.
    pub typing_ttl: Duration,
    /// How long a gateway's sessions live without a lease renewal.
    pub lease_ttl: Duration,
    /// How long after sending a sender may edit a message.
    pub edit_window: Duration,
    /// Messages a sender may send in a direct conversation whose other
    /// member has not accepted it (a message request).
    pub max_request_messages: u32,
    /// Requests per second per user, across every gateway (leased from
    /// the user's partition), and the burst allowed.
    pub user_requests_per_second: f64,
    pub user_request_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_bytes: 16 * 1024,
            max_group_members: 250,
            max_title_bytes: 256,
            session_queue: 1024,
            partition_queue: 8192,
            max_batch: 1024,
            dedup_window: 1024,
            update_log_retention: 250_000,
            max_sessions_per_user: 16,
            typing_ttl: Duration::from_secs(6),
            lease_ttl: Duration::from_secs(10),
            edit_window: Duration::from_secs(15 * 60),
            max_request_messages: 3,
            user_requests_per_second: 1000.0,
            user_request_burst: 2000,
        }
    }
}

/// Largest `max_text_bytes` allowed (a message row stays under storage's
/// row bound).
pub const MAX_TEXT_BYTES_BOUND: usize = 64 * 1024;

/// Largest `max_group_members` allowed (a group's record lists every member
/// and must stay under storage's row bound).
pub const MAX_GROUP_MEMBERS_BOUND: usize = 1000;

/// Everything a broker node needs to start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Directory holding the sled database.
    pub data_dir: PathBuf,
    /// Partition count P, fixed when the data directory is created.
    pub partitions: u32,
    pub fsync: FsyncMode,
    /// sled page cache size in bytes.
    pub cache_capacity_bytes: u64,
    /// How often sled is checkpointed and the write-ahead log truncated;
    /// bounds how much a restart replays.
    pub checkpoint_interval: Duration,
    /// Longest a durability round waits for fan-out appends owed to it
    /// (`storage::durability`: a message and its update-log entries share
    /// one round).
    pub fanout_linger: Duration,
    /// The shortest time between the starts of two durability rounds:
    /// writes arriving meanwhile share the next one (fewer `fdatasync`s at
    /// moderate load, for up to this much more latency). Zero: a round
    /// starts as soon as something waits for one.
    pub commit_window: Duration,
    /// The node fail-stops when urgent writes wait this long without the
    /// writer making progress (see `storage::failstop`).
    pub writer_stall_timeout: Duration,
    /// A fault injected into the writer, for fail-stop tests only.
    pub inject_fault: Option<InjectedFault>,
    pub limits: Limits,
    /// Where the node sits in the cluster (standalone by default).
    pub cluster: crate::layout::ClusterConfig,
    /// The secret conversation ids are keyed with (`imsg_common::ids::IdKey`),
    /// the same on every node. Unset: a standalone node creates one in its
    /// data directory (`id.secret`) on first start.
    pub id_secret: Option<String>,
    /// Where push notifications go (none without).
    pub push: Option<PushConfig>,
}

impl BrokerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            partitions: 64,
            fsync: FsyncMode::Always,
            cache_capacity_bytes: 256 * 1024 * 1024,
            checkpoint_interval: Duration::from_secs(1),
            fanout_linger: Duration::from_micros(300),
            commit_window: Duration::ZERO,
            writer_stall_timeout: Duration::from_secs(30),
            inject_fault: None,
            limits: Limits::default(),
            cluster: crate::layout::ClusterConfig::standalone(),
            id_secret: None,
            push: None,
        }
    }

    /// Checks the values once, at start, so a bad flag fails loudly instead
    /// of surfacing later as odd behaviour.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        if let Some(push) = &self.push {
            url::Url::parse(&push.webhook_url).map_err(|e| format!("push webhook url: {e}"))?;
            if push.webhook_secret.len() < 16 {
                return Err("the push webhook secret must be at least 16 bytes".into());
            }
        }
        if !(l.user_requests_per_second > 0.0 && l.user_requests_per_second.is_finite()) || l.user_request_burst == 0 {
            return Err(format!("user requests per second must be positive, got {}", l.user_requests_per_second));
        }
        if self.partitions == 0 || self.partitions > 4096 {
            return Err(format!("partitions must be 1..=4096, got {}", self.partitions));
        }
        // Every row must stay under storage's row bound (no sled blob files,
        // which are not power-safe): a message holds one text, a group
        // record every member.
        if l.max_text_bytes == 0 || l.max_text_bytes > MAX_TEXT_BYTES_BOUND {
            return Err(format!("max text bytes must be 1..={MAX_TEXT_BYTES_BOUND}, got {}", l.max_text_bytes));
        }
        if !(2..=MAX_GROUP_MEMBERS_BOUND).contains(&l.max_group_members) {
            return Err(format!(
                "max group members must be 2..={MAX_GROUP_MEMBERS_BOUND}, got {}",
                l.max_group_members
            ));
        }
        for (name, value) in [
            ("session queue", l.session_queue),
            ("partition queue", l.partition_queue),
            ("max batch", l.max_batch),
            ("dedup window", l.dedup_window),
            ("update log retention", l.update_log_retention),
            ("max sessions per user", l.max_sessions_per_user),
        ] {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if self.checkpoint_interval.is_zero() {
            return Err("checkpoint interval must be positive".into());
        }
        if self.writer_stall_timeout < Duration::from_millis(100) {
            return Err("writer stall timeout must be at least 100 ms".into());
        }
        if l.typing_ttl.is_zero() || l.lease_ttl.is_zero() {
            return Err("typing ttl and lease ttl must be positive".into());
        }
        self.cluster.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_mode_parses_always_and_interval_and_rejects_the_rest() {
        assert_eq!("always".parse::<FsyncMode>(), Ok(FsyncMode::Always));
        assert_eq!("interval:5".parse::<FsyncMode>(), Ok(FsyncMode::Interval(Duration::from_millis(5))));
        assert!("interval:0".parse::<FsyncMode>().is_err());
        assert!("never".parse::<FsyncMode>().is_err());
    }
}
