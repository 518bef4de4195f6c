//! Group commit and the watchdog: the one thread that makes writes
//! durable, and what stops the node if it cannot.
//!
//! Partitions hand their batches over; the writer thread logs them to the
//! write-ahead log ([`wal`]) with one `write` and one `fdatasync` per round,
//! applies them to sled, and tells the partitions that wait for that round
//! (and only those) that their batches are published.
//!
//! A write is *urgent* when something waits for it (an ack, a delivery) and
//! *lazy* when nothing does (bookkeeping that a crash would redo): lazy
//! writes never start a round, they ride along with the next one.
//!
//! ## One round per message
//! A message's partition hands its fan-out to the members' partitions as
//! soon as it hands the message to the writer, not once it is durable, and
//! counts each such hand-off as an append [`Owed`] to the writer. A round
//! about to start waits (at most the configured linger) until nothing is
//! owed, so the message and its members' update-log entries are logged and
//! synced together: one `fdatasync` per message instead of two in a row.
//! This is safe because the log is one sequence: a target's entries are
//! appended after the message, so they are never durable without it (a
//! torn tail loses a suffix, never a middle), and a target waits, before
//! showing them to anyone, for the message's generation as well as its own
//! ([`crate::router`] waits for it before fan-out leaves the node).
//!
//! Closed segments go to the checkpointer ([`super::checkpoint`]), which
//! makes them redundant.
//!
//! ## Fail-stop
//! An error or panic in the writer or the checkpointer, a writer that makes
//! no progress for `stall_timeout` while writes wait, or a checkpoint that
//! runs that long (the watchdog thread) triggers [`FailStop`]: the node
//! reports NOT_SERVING and exits.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use super::{
    failstop::{FailStop, InjectedFault},
    held::{self, HeldRows},
    message_log::{MessageLog, Stored},
    shred::{self, KeyFile},
    sled_files::panic_message,
    wal,
};
use crate::metrics::METRICS;
use crate::{config::FsyncMode, error::Result};

/// A segment is checkpointed at this size even before the checkpoint
/// interval, bounding replay time.
pub const MAX_SEGMENT_BYTES: usize = 64 * 1024 * 1024;

/// What the writer waits for (`Durability::writer_waits`): nothing (a
/// round, or between two waits), an urgent batch, or owed appends.
const BUSY: u8 = 0;
const WAITS_FOR_URGENT: u8 = 1;
const WAITS_FOR_OWED: u8 = 2;

pub struct Durability {
    mode: FsyncMode,
    /// Batches handed over but not yet written.
    log: Mutex<Pending>,
    /// Generation of the newest batch appended.
    written: AtomicU64,
    /// Generation of the newest urgent batch.
    urgent: AtomicU64,
    /// Everything up to this generation is logged (and synced, in `always`
    /// mode) and applied to sled: the published watermark.
    durable: AtomicU64,
    /// Appends on their way to this node's partitions that a round should
    /// wait for (module docs), and the longest it waits.
    owed: AtomicUsize,
    linger: Duration,
    /// The shortest time between the starts of two rounds (0: none).
    spacing: Duration,
    /// Rounds that wrote something (tests count them).
    rounds: AtomicU64,
    wake: Mutex<()>,
    wake_signal: Condvar,
    /// What the writer waits for on `wake_signal`, if anything
    /// ([`WAITS_FOR_URGENT`], [`WAITS_FOR_OWED`]): only what it waits for
    /// signals it. A condvar signal is a system call whether anyone waits or
    /// not; signalling every urgent append cost 3.8 `futex` calls per 1:1
    /// message at 8,000 msg/s, most of the node's system calls, while the
    /// writer was busy with a round or lingering for owed appends.
    writer_waits: AtomicU8,
    stopping: AtomicBool,
    /// Partitions waiting for a generation to become durable.
    waiters: Mutex<Vec<(u64, Arc<Notify>)>>,
    /// Closed segments waiting for a checkpoint.
    pub(super) closed: Mutex<Vec<u64>>,
    /// Bytes logged to the newest closed segment: what the checkpointer
    /// sizes the next spare segment by ([`wal::Segments`]).
    pub(super) last_segment_bytes: AtomicUsize,
    pub(super) closed_signal: Condvar,
    /// When the running checkpoint started (0: none runs), for the watchdog.
    pub(super) checkpoint_started: Mutex<Option<Instant>>,
    pub(super) fail_stop: FailStop,
}

/// What the writer thread starts with.
pub struct Writer {
    pub log: Arc<dyn wal::LogDir>,
    /// The open, empty current segment and its number.
    pub segment: Box<dyn wal::LogFile>,
    pub number: u64,
    pub checkpoint_every: Duration,
    pub fault: Option<InjectedFault>,
}

impl Durability {
    pub fn new(mode: FsyncMode, linger: Duration, spacing: Duration, fail_stop: FailStop) -> Self {
        Self {
            mode,
            owed: AtomicUsize::new(0),
            linger,
            spacing,
            rounds: AtomicU64::new(0),
            log: Mutex::new(Pending::default()),
            written: AtomicU64::new(0),
            urgent: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            wake: Mutex::new(()),
            wake_signal: Condvar::new(),
            writer_waits: AtomicU8::new(BUSY),
            stopping: AtomicBool::new(false),
            waiters: Mutex::new(Vec::new()),
            closed: Mutex::new(Vec::new()),
            last_segment_bytes: AtomicUsize::new(0),
            closed_signal: Condvar::new(),
            checkpoint_started: Mutex::new(None),
            fail_stop,
        }
    }

    /// Hands a batch over; returns its generation. Every round that starts
    /// later covers it. Only an urgent batch starts one.
    pub(super) fn append(&self, destination: &Destination, tree_id: u32, ops: Vec<wal::Op>, urgent: bool) -> u64 {
        let generation = {
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            wal::encode_record(&mut log.bytes, tree_id, &ops);
            log.ops.push((destination.clone(), ops));
            let generation = self.written.fetch_add(1, Ordering::SeqCst) + 1;
            log.last = generation;
            generation
        };
        if urgent {
            self.urgent.fetch_max(generation, Ordering::SeqCst);
            self.wake_writer(WAITS_FOR_URGENT);
        }
        generation
    }

    /// Signals the writer if it waits for `what`. No wake-up is lost: the
    /// writer sets `writer_waits` before it reads `urgent` or `owed`, and an
    /// append or a paid [`Owed`] changes those before it reads
    /// `writer_waits` (all `SeqCst`), so one of the two sees the other; and
    /// the signal is sent under the lock the writer checks under.
    fn wake_writer(&self, what: u8) {
        if self.writer_waits.load(Ordering::SeqCst) == what {
            let _guard = self.wake.lock().unwrap_or_else(|e| e.into_inner());
            self.wake_signal.notify_one();
        }
    }

    /// The newest durable generation.
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::SeqCst)
    }

    /// Counts an append that is on its way (a fan-out to a partition of
    /// this node): rounds wait for it until it is dropped. Take it before
    /// handing over the batch it follows, so no round can start unaware.
    pub fn owe(self: &Arc<Self>) -> Owed {
        self.owed.fetch_add(1, Ordering::SeqCst);
        Owed(self.clone())
    }

    /// Rounds that wrote something so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Waits until `generation` is durable.
    pub async fn durable_at(&self, generation: u64) {
        let wake = Arc::new(Notify::new());
        while self.durable() < generation {
            self.notify_when_durable(generation, &wake);
            wake.notified().await;
        }
    }

    /// Notifies `waker` once `generation` is durable (at once if it is).
    pub fn notify_when_durable(&self, generation: u64, waker: &Arc<Notify>) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock the writer takes to publish: no lost wakeup.
        if generation <= self.durable() {
            waker.notify_one();
        } else {
            waiters.push((generation, waker.clone()));
        }
    }

    pub fn fail_stop(&self) -> &FailStop {
        &self.fail_stop
    }

    fn publish(&self, target: u64) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        self.durable.store(target, Ordering::SeqCst);
        waiters.retain(|(generation, waker)| {
            let waiting = *generation > target;
            if !waiting {
                waker.notify_one();
            }
            waiting
        });
    }

    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let guard = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        self.wake_signal.notify_all();
        drop(guard);
        let _closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        self.closed_signal.notify_all();
    }

    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The writer thread's body: rounds until stopped; any error or panic
    /// fail-stops the node.
    pub(super) fn run_writer(&self, writer: Writer) {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.write_rounds(writer))) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => self.fail_stop.trigger(format!("the writer could not make writes durable: {error}")),
            Err(panic) => self.fail_stop.trigger(format!("the writer panicked: {}", panic_message(&*panic))),
        }
    }

    /// Every round: writes the log, syncs it (always mode, or when the
    /// interval passed), applies the batches to sled, publishes; between
    /// rounds, closes the segment for a checkpoint when due (module docs).
    fn write_rounds(&self, mut writer: Writer) -> Result<()> {
        let mut segment_bytes = 0usize;
        let mut opened = Instant::now();
        let mut synced = Instant::now();
        let mut unsynced = false;
        let mut rounds_with_work = 0u64;
        let mut round_started = Instant::now();
        loop {
            let stopping = self.wait_for_work(writer.checkpoint_every);
            // A commit window: what arrives meanwhile joins this round.
            let since = round_started.elapsed();
            if !stopping && since < self.spacing {
                std::thread::sleep(self.spacing - since);
            }
            round_started = Instant::now();
            let pending = std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()));
            if !pending.bytes.is_empty() {
                rounds_with_work += 1;
                self.rounds.fetch_add(1, Ordering::SeqCst);
                inject(writer.fault, rounds_with_work);
            }
            unsynced |= !pending.bytes.is_empty();
            let sync = unsynced
                && match self.mode {
                    FsyncMode::Always => true,
                    FsyncMode::Interval(every) => stopping || synced.elapsed() >= every,
                };
            // A failed write or sync leaves the page cache in an unknown
            // state (the "fsyncgate" lesson): never retry and pretend, stop.
            writer.segment.append(&pending.bytes)?;
            if sync {
                let started = Instant::now();
                writer.segment.sync()?;
                METRICS.wal_fsync_seconds.observe(started.elapsed().as_secs_f64());
                synced = Instant::now();
                unsynced = false;
            }
            if !pending.ops.is_empty() {
                METRICS.group_commit_batches.observe(pending.ops.len() as f64);
            }
            apply(pending.ops)?;
            segment_bytes += pending.bytes.len();
            if pending.last > self.durable() {
                self.publish(pending.last);
            }
            if stopping {
                return Ok(());
            }
            let due = opened.elapsed() >= writer.checkpoint_every || segment_bytes >= MAX_SEGMENT_BYTES;
            if segment_bytes > 0 && !unsynced && due {
                let next = writer.number + 1;
                match writer.log.create(next) {
                    Ok(segment) => {
                        writer.segment = segment;
                        self.last_segment_bytes.store(segment_bytes, Ordering::Relaxed);
                        let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
                        closed.push(writer.number);
                        self.closed_signal.notify_one();
                        drop(closed);
                        writer.number = next;
                        segment_bytes = 0;
                        opened = Instant::now();
                    }
                    // Out of files or space for a moment: the current
                    // segment keeps everything, the checkpoint waits.
                    Err(error) => tracing::warn!(%error, "could not start a new WAL segment; checkpoint postponed"),
                }
            }
        }
    }

    /// Blocks until an urgent batch waits, or the checkpoint interval (in
    /// interval mode, the smaller of it and the sync interval) passed; then,
    /// while appends are owed, for at most the linger (module docs).
    /// Returns whether the store is stopping.
    fn wait_for_work(&self, checkpoint_every: Duration) -> bool {
        let guard = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        self.writer_waits.store(WAITS_FOR_URGENT, Ordering::SeqCst);
        let idle = |_: &mut ()| !self.stopping() && self.urgent.load(Ordering::SeqCst) <= self.durable();
        let timeout = match self.mode {
            FsyncMode::Always => checkpoint_every,
            FsyncMode::Interval(every) => every.min(checkpoint_every),
        };
        let (guard, _) = self.wake_signal.wait_timeout_while(guard, timeout, idle).unwrap_or_else(|e| e.into_inner());
        self.writer_waits.store(WAITS_FOR_OWED, Ordering::SeqCst);
        let owed = |_: &mut ()| !self.stopping() && self.owed.load(Ordering::SeqCst) > 0;
        let _guard = self.wake_signal.wait_timeout_while(guard, self.linger, owed).unwrap_or_else(|e| e.into_inner());
        self.writer_waits.store(BUSY, Ordering::SeqCst);
        self.stopping()
    }

    /// The watchdog thread's body: fail-stops the node when urgent writes
    /// wait and the published watermark has not moved for `stall_timeout`
    /// (a writer stuck in sled, or on a disk that stopped answering), or
    /// when one checkpoint has run that long.
    pub(super) fn run_watchdog(&self, stall_timeout: Duration) {
        let tick = (stall_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut last = self.durable();
        let mut since = Instant::now();
        while !self.stopping() {
            std::thread::sleep(tick);
            let durable = self.durable();
            let waiting = self.urgent.load(Ordering::SeqCst) > durable;
            if durable != last || !waiting {
                last = durable;
                since = Instant::now();
            } else if since.elapsed() >= stall_timeout {
                self.fail_stop.trigger(format!(
                    "the writer made no progress for {:?} while writes waited (stuck in sled or the disk)",
                    since.elapsed()
                ));
                return;
            }
            let checkpoint = *self.checkpoint_started.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(started) = checkpoint
                && started.elapsed() >= stall_timeout
            {
                self.fail_stop
                    .trigger(format!("a checkpoint has run for {:?} (stuck in sled or the disk)", started.elapsed()));
                return;
            }
        }
    }
}

/// An append on its way to the writer (see [`Durability::owe`]); paid
/// when dropped: once the batch it stands for is handed over, or when it
/// will not come (the target refused it, or is on another node).
pub struct Owed(Arc<Durability>);

impl Owed {
    pub fn durability(&self) -> &Arc<Durability> {
        &self.0
    }
}

impl Drop for Owed {
    fn drop(&mut self) {
        if self.0.owed.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.wake_writer(WAITS_FOR_OWED);
        }
    }
}

/// Runs an injected fault when its round comes (tests only).
fn inject(fault: Option<InjectedFault>, round: u64) {
    match fault {
        Some(InjectedFault::WriterPanic { round: at }) if at == round => {
            panic!("injected fault: writer panic in round {round}")
        }
        Some(InjectedFault::WriterStall { round: at }) if at == round => {
            tracing::warn!(round, "injected fault: the writer stops making progress");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        _ => {}
    }
}

/// Batches handed to the writer and not yet written.
#[derive(Default)]
struct Pending {
    /// Their WAL records.
    bytes: Vec<u8>,
    /// Their operations, to apply after the log.
    ops: Vec<(Destination, Vec<wal::Op>)>,
    /// The newest generation among them.
    last: u64,
}

/// Where one partition's logged operations land: its sled tree, its
/// message log, and its key file for content-key slots ([`shred`]).
#[derive(Clone)]
pub struct Destination {
    pub tree: sled::Tree,
    /// Where its message rows are kept instead of sled ([`message_log`]).
    pub messages: Arc<MessageLog>,
    pub keys: Arc<KeyFile>,
    /// Where held rows go ([`held`]); `None` when replaying the log at
    /// start, which writes everything where it is stored: a row the log
    /// re-creates may be stored already, and its remove must reach it.
    pub held: Option<Arc<HeldRows>>,
}

impl Destination {
    /// Where its rows are kept once out of memory.
    pub fn stored(&self) -> Stored<'_> {
        Stored { tree: &self.tree, messages: &self.messages }
    }
}

/// Applies logged operations: rows one by one, in order; the content-key
/// slots of each batch after them, held in memory until the checkpointer
/// writes them (`shred`). Nothing reads either before the round is
/// published, so the order between the two does not matter.
/// The operations are consumed: a held row keeps the bytes it was logged
/// with instead of a copy.
pub(super) fn apply(batches: Vec<(Destination, Vec<wal::Op>)>) -> Result<()> {
    for (destination, ops) in batches {
        let mut slots: Vec<(u64, Option<Vec<u8>>)> = Vec::new();
        // Written where they are stored after the loop, in order: the
        // message rows among them with one append (replay at start).
        let mut stored: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for op in ops {
            match op {
                wal::Op::Put { key, value } => match (shred::slot_of_row(&key), &destination.held) {
                    (Some(slot), _) => slots.push((slot, Some(value))),
                    (None, Some(held)) if held::held_kind(&key).is_some() => held.put(key, value),
                    (None, _) => stored.push((key, Some(value))),
                },
                wal::Op::Remove { key } => match (shred::slot_of_row(&key), &destination.held) {
                    (Some(slot), _) => slots.push((slot, None)),
                    (None, Some(held)) if held::held_kind(&key).is_some_and(|kind| held.remove(&key, kind)) => {}
                    (None, _) => stored.push((key, None)),
                },
            }
        }
        destination.stored().write(stored.iter().map(|(key, value)| (key.as_slice(), value.as_deref())))?;
        let slots = slots.iter().map(|(slot, key)| (*slot, key.as_deref())).collect();
        // Held like the rows (`shred`), except while the log is replayed at
        // start, which writes everything to the files.
        match destination.held {
            Some(_) => destination.keys.hold_all(slots)?,
            None => destination.keys.put_all(slots)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
