//! A partition: one single-writer task that owns the conversations and the
//! users hashed to it, and their sled tree.
//!
//! The task takes commands in order, changes its in-memory state, collects
//! the writes of everything it took into one [`WriteBatch`], and hands the
//! batch to the node's writer thread. Replies and publications wait in
//! `pending` until the writer reports the batch published (logged, synced,
//! applied); meanwhile the task keeps taking commands, so one sync covers
//! many batches of many partitions (group commit).
//! Every reply waits behind the newest write of its partition, so nobody is
//! ever shown data that could still be lost. The writer applies a batch to
//! sled only once it is logged, so the few reads of sled that could meet
//! recent data (history, replay pages, trimming) are clamped to what has
//! been published: a conversation's published seq, a partition's published
//! cursor.
//!
//! The rules themselves are in [`crate::core`], without I/O; the two roles
//! of a partition are the shells around them: `conversation` (loading
//! conversations, applying the rules' effects, history pages, the outbox
//! that fans updates out) and `user` (settings, inbox membership, appending
//! to update logs, sessions, replay and presence pushes).

use crate::metrics::METRICS;

mod accounts;
mod compaction;
mod conversation;
mod dispatch;
mod messages;
mod moderation;
mod push;
mod relations;
#[cfg(test)]
mod testing;
mod user;

use std::{collections::VecDeque, sync::Arc, time::Duration};

use imsg_proto::v1::OpenStreamResponse;
use tokio::sync::{Notify, oneshot};

pub use crate::core::{MarkKind, MembershipChange, NewConversation, NewMessage, Viewer};
pub use crate::mailbox::{
    Command, ERASE_BATCH, Erased, Forgotten, Mailbox, ModerationOp, ModerationOutcome, NotificationChange, OpenStep,
    Reply, SessionHandle, Traced, UserContext,
};
use crate::{
    config::Limits,
    error::Result,
    events::UpdateItem,
    ids::PartitionId,
    router::Router,
    storage::{Durability, PartitionMeta, PartitionStore, UpdateEntry, WriteBatch},
};

/// Why the task's loop ended.
enum Stop {
    /// The queues closed.
    Closed,
    Shutdown(oneshot::Sender<()>),
    Frozen(oneshot::Sender<()>),
}

/// A freeze in progress. Draining: client writes are refused (dropped: the
/// caller sees UNAVAILABLE) but fan-out still flows in and out, until
/// nothing is pending and every outbox batch this partition sent is
/// confirmed. Sealing: incoming updates are refused too (their lanes
/// re-send them to the new owner), and the last bookkeeping is written.
/// Waiting for the outbox matters: the new owner would otherwise re-send
/// those batches while our lanes still deliver them, out of order.
struct Freezing {
    sealing: bool,
    reply: oneshot::Sender<()>,
}

/// Something to do once the batch it belongs to is durable.
enum Deferred {
    Run(Box<dyn FnOnce() + Send>),
    /// Re-send an outbox batch read back after a start (durable already)
    /// to the members' partitions. (New batches are sent as they are
    /// handed to the writer: [`Partition::commit`].)
    Fanout {
        batch: u64,
        items: Vec<UpdateItem>,
        /// The span of the first command that published into the batch.
        span: tracing::Span,
    },
    /// Push a logged event to a user's live sessions (it is published).
    Push {
        user_id: String,
        cursor: u64,
        /// Boxed: a frame is large, most deferred items are small.
        frame: Box<OpenStreamResponse>,
    },
    /// A message write is published: history reads may now include it.
    MessagePublished {
        message: Arc<imsg_proto::v1::Message>,
    },
    /// Tell the source partition its updates are durable here.
    Done(oneshot::Sender<()>),
}

/// The write batch being built plus what waits for it.
#[derive(Default)]
struct Batch {
    writes: WriteBatch,
    deferred: Vec<Deferred>,
    outbox: Vec<crate::storage::OutboxItem>,
    outbox_items: Vec<UpdateItem>,
    /// The span of the first command that published into the batch.
    outbox_span: Option<tracing::Span>,
    /// The spans of the other commands that did (only when spans are
    /// exported): the batch's fan-out links to them.
    outbox_links: Vec<tracing::Span>,
    updates: Vec<UpdateEntry>,
    meta_dirty: bool,
    /// Appends the writer waits for, paid when this batch is handed over
    /// (or found empty).
    owed: Vec<crate::storage::Owed>,
}

/// The task's state.
pub struct Partition {
    id: PartitionId,
    limits: Limits,
    store: PartitionStore,
    durability: Arc<Durability>,
    /// Woken by the writer when the oldest pending batch is published.
    durable_wake: Arc<Notify>,
    router: Router,
    meta: PartitionMeta,
    batch: Batch,
    /// Newest generation this partition wrote.
    last_generation: u64,
    /// Batches written but not yet durable, oldest first.
    pending: VecDeque<(u64, Vec<Deferred>)>,
    ticks: u64,
    conversations: conversation::Conversations,
    users: user::Users,
    freezing: Option<Freezing>,
    /// Where durable push notifications go (`None`: no webhook set).
    push: Option<crate::push::Outlet>,
    /// The moderation queue, if this partition holds it (loaded on use).
    moderation: Option<moderation::Queue>,
    /// Request budgets of this partition's users (in memory).
    budgets: crate::core::budget::Budgets,
}

/// How often a busy partition runs its timed work ([`Partition::on_tick`]).
const TICK: Duration = Duration::from_millis(100);

/// A partition that did nothing for this many ticks, with nothing waiting
/// for one, ticks only every [`IDLE_TICK`] (update-log trimming and
/// forgetting idle budgets) until its next command: 64 idle partitions
/// waking ten times a second cost a node 0.01 cores of wake-ups.
const QUIET_TICKS: u32 = 20;
const IDLE_TICK: Duration = Duration::from_secs(10);

/// Ticks (of 100 ms) between checkpoints of watermarks that moved in
/// memory only: a crash loses at most this much of a sender's own read
/// position, which only affects unread counts of their own messages.
const RECEIPT_CHECKPOINT_TICKS: u64 = 10;

/// Entries per update-log row (~100 bytes each: well under sled's blob
/// threshold).
const UPDATE_ROW_ENTRIES: usize = 256;

/// Largest outbox row a batch starts a new one at; one item alone is at
/// most ~70 KiB (a removal naming every member of the largest group), so a
/// row stays under storage's row bound.
const OUTBOX_ROW_BYTES: usize = 48 * 1024;

/// Splits `records`, in order, into runs whose encoded size stays within
/// `limit` (a single larger record gets a run of its own).
fn chunk_by_encoded_len<T: prost::Message>(records: Vec<T>, limit: usize) -> Vec<Vec<T>> {
    let mut chunks: Vec<Vec<T>> = Vec::new();
    let mut size = 0;
    for record in records {
        let len = record.encoded_len() + 4;
        match chunks.last_mut() {
            Some(chunk) if size + len <= limit => chunk.push(record),
            _ => {
                chunks.push(vec![record]);
                size = 0;
            }
        }
        size += len;
    }
    chunks
}

impl Partition {
    /// Loads a partition's durable state: meta, user settings and inboxes,
    /// the retained update log. Conversations load lazily on first use.
    pub fn load(
        id: PartitionId,
        limits: Limits,
        store: PartitionStore,
        durability: Arc<Durability>,
        router: Router,
        push: Option<crate::push::Outlet>,
    ) -> Result<Self> {
        let mut meta = store.meta()?;
        let (next_outbox, next_cursor) = store.next_numbers_in_logs()?;
        meta.next_outbox = meta.next_outbox.max(next_outbox);
        meta.next_cursor = meta.next_cursor.max(next_cursor);
        let users = user::Users::load(&store, &meta)?;
        Ok(Self {
            id,
            durable_wake: Arc::new(Notify::new()),
            limits: limits.clone(),
            meta,
            batch: Batch::default(),
            last_generation: 0,
            pending: VecDeque::new(),
            ticks: 0,
            conversations: conversation::Conversations::default(),
            users,
            freezing: None,
            store,
            durability,
            router,
            push,
            moderation: None,
            budgets: crate::core::budget::Budgets::new(limits.user_request_burst, limits.user_requests_per_second),
        })
    }

    /// The single-writer loop.
    pub async fn run(mut self, mut mailbox: Mailbox) {
        let stopped = self.serve(&mut mailbox).await;
        // Everything acknowledged-to-be must become durable before stopping.
        while !self.pending.is_empty() {
            self.durable_wake.notified().await;
            self.run_durable();
        }
        match stopped {
            Stop::Closed => self.users.close_all_sessions("server shutting down"),
            Stop::Shutdown(reply) => {
                self.users.close_all_sessions("server shutting down");
                let _ = reply.send(());
            }
            Stop::Frozen(reply) => {
                self.users.close_all_sessions("partition moving to another node; reconnect");
                tracing::info!(partition = self.id, "partition frozen");
                let _ = reply.send(());
            }
        }
    }

    async fn serve(&mut self, mailbox: &mut Mailbox) -> Stop {
        // Whatever a crash interrupted between commit and fan-out goes first.
        if let Err(error) = self.resend_outbox() {
            tracing::error!(partition = self.id, %error, "re-sending outbox failed");
        }
        if let Err(error) = self.resend_pushes() {
            tracing::error!(partition = self.id, %error, "re-sending push notifications failed");
        }
        self.commit();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Ticks since the partition last did anything: past QUIET_TICKS it
        // ticks every IDLE_TICK only, until the next command.
        let mut quiet_ticks = 0;
        loop {
            let took_command = tokio::select! {
                biased;
                _ = self.durable_wake.notified(), if !self.pending.is_empty() => {
                    self.run_durable();
                    false
                }
                command = mailbox.internal.recv() => {
                    let Some(command) = command else { return Stop::Closed };
                    if let Some(stop) = self.take(command, mailbox) {
                        return Stop::Shutdown(stop);
                    }
                    true
                }
                command = mailbox.commands.recv() => {
                    let Some(command) = command else { return Stop::Closed };
                    if let Some(stop) = self.take(command, mailbox) {
                        return Stop::Shutdown(stop);
                    }
                    true
                }
                _ = tick.tick(), if self.freezing.is_none() => {
                    self.on_tick();
                    self.commit();
                    let label = crate::metrics::PartitionLabel { partition: self.id };
                    METRICS.partition_queue_depth.get_or_create(&label).set(mailbox.commands.len() as i64);
                    if self.ticks.is_multiple_of(10) {
                        METRICS.live_sessions.get_or_create(&label).set(self.users.live_sessions() as i64);
                    }
                    let waits = self.conversations.waits_for_ticks()
                        || !self.pending.is_empty()
                        || !self.users.uncompacted.is_empty();
                    quiet_ticks = if waits { 0 } else { quiet_ticks + 1 };
                    if quiet_ticks >= QUIET_TICKS {
                        tick.reset_after(IDLE_TICK);
                    }
                    false
                }
            };
            if took_command && quiet_ticks > 0 {
                if quiet_ticks >= QUIET_TICKS {
                    tick.reset();
                }
                quiet_ticks = 0;
            }
            if self.freeze_step()
                && let Some(freezing) = self.freezing.take()
            {
                return Stop::Frozen(freezing.reply);
            }
        }
    }

    /// Advances a freeze; true once the partition may stop.
    fn freeze_step(&mut self) -> bool {
        let Some(freezing) = &mut self.freezing else { return false };
        if !freezing.sealing && self.pending.is_empty() && self.conversations.outbox_unconfirmed.is_empty() {
            freezing.sealing = true;
            self.checkpoint_receipts();
            self.persist_outbox_progress();
            self.compact_update_log();
            // Waited for like any reply, so the rows are in sled before
            // anyone copies them.
            self.defer(Deferred::Run(Box::new(|| {})));
            self.commit();
        }
        self.freezing.as_ref().is_some_and(|f| f.sealing) && self.pending.is_empty()
    }

    /// Handles a command and everything else already queued (up to the batch
    /// limit), then commits them as one batch. Returns the shutdown reply
    /// when asked to stop.
    fn take(&mut self, first: Traced, mailbox: &mut Mailbox) -> Option<oneshot::Sender<()>> {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(Traced { command, span }) = next.take() {
            if let Command::Shutdown { reply } = command {
                self.checkpoint_receipts();
                self.compact_update_log();
                self.commit();
                return Some(reply);
            }
            span.in_scope(|| self.handle(command));
            taken += 1;
            if taken < self.limits.max_batch {
                next = mailbox.internal.try_recv().ok().or_else(|| mailbox.commands.try_recv().ok());
            }
        }
        self.commit();
        None
    }

    /// Replies once everything written so far is durable. A refusal changed
    /// nothing, but it still waits: it may have been decided on state that
    /// is not durable yet.
    fn reply<T: Send + 'static>(&mut self, reply: Reply<T>, result: Result<T>) {
        self.batch.deferred.push(Deferred::Run(Box::new(move || {
            let _ = reply.send(result);
        })));
    }

    fn defer(&mut self, deferred: Deferred) {
        self.batch.deferred.push(deferred);
    }

    /// Hands the batch being built to the writer and queues what waits for
    /// it. A batch that nobody waits for is written lazily (see
    /// [`Durability`]). (Holding new work back while a batch is in flight
    /// made batches bigger but added a round of latency, and did not lower
    /// CPU per message: docs/benchmarks.md.)
    fn commit(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        // One outbox batch per row of at most OUTBOX_ROW_BYTES (a batch of
        // group removals could otherwise pass storage's row bound).
        // Each is sent as soon as the batch is handed over, its targets
        // counted before, so no round starts unaware of them (one round per
        // message: `storage::durability`).
        let mut items = std::mem::take(&mut batch.outbox_items).into_iter();
        let mut fan_outs = Vec::new();
        let outbox_span =
            crate::telemetry::outbox_span(self.id, batch.outbox_span.take(), std::mem::take(&mut batch.outbox_links));
        for records in chunk_by_encoded_len(std::mem::take(&mut batch.outbox), OUTBOX_ROW_BYTES) {
            let number = self.meta.next_outbox;
            self.meta.next_outbox += 1;
            self.conversations.outbox_unconfirmed.insert(number);
            self.conversations.outbox_started.insert(number, std::time::Instant::now());
            let count = records.len();
            batch.writes.put_outbox(number, &crate::storage::OutboxRecord { items: records });
            fan_outs.push(self.plan_fan_out(number, items.by_ref().take(count).collect(), outbox_span.clone(), true));
        }
        // Rows of at most UPDATE_ROW_ENTRIES entries: a group fan-out batch
        // would otherwise pass sled's blob threshold (~128 KiB), and every
        // blob is a file of its own to write, sync and delete.
        let mut updates = std::mem::take(&mut batch.updates).into_iter().peekable();
        while updates.peek().is_some() {
            let record =
                crate::storage::UpdateBatchRecord { entries: updates.by_ref().take(UPDATE_ROW_ENTRIES).collect() };
            let first = record.entries[0].cursor;
            batch.writes.put_update_batch(first, &record);
            self.users.retention.note_batch(first, record.entries.len(), false);
            self.users.uncompacted.push_back((first, record.entries));
        }
        if batch.meta_dirty {
            batch.writes.put_meta(&self.meta);
        }
        let urgent = !batch.deferred.is_empty() || !fan_outs.is_empty();
        if !batch.writes.is_empty() {
            let generation = self.store.apply(batch.writes, urgent);
            if urgent {
                self.last_generation = generation;
            }
        }
        for fan_out in fan_outs {
            self.send_fan_out(fan_out, self.last_generation);
        }
        if batch.deferred.is_empty() {
            return;
        }
        let wait_for = self.last_generation;
        if wait_for <= self.durability.durable() && self.pending.is_empty() {
            self.run_deferred(batch.deferred);
        } else {
            self.durability.notify_when_durable(wait_for, &self.durable_wake);
            self.pending.push_back((wait_for, batch.deferred));
        }
    }

    fn run_durable(&mut self) {
        let durable = self.durability.durable();
        while self.pending.front().is_some_and(|(generation, _)| *generation <= durable) {
            if let Some((_, deferred)) = self.pending.pop_front() {
                self.run_deferred(deferred);
            }
        }
        // Running deferred work can produce writes (trimming, receipts).
        self.commit();
    }

    fn run_deferred(&mut self, deferred: Vec<Deferred>) {
        for item in deferred {
            match item {
                Deferred::Run(run) => run(),
                Deferred::Fanout { batch, items, span } => {
                    let fan_out = self.plan_fan_out(batch, items, span, false);
                    self.send_fan_out(fan_out, 0);
                }
                Deferred::Push { user_id, cursor, frame } => {
                    self.users.published_cursor(cursor);
                    self.push_to_sessions(&user_id, frame);
                }
                Deferred::MessagePublished { message } => self.message_published(&message),
                Deferred::Done(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        self.expire_typing();
        if self.ticks.is_multiple_of(RECEIPT_CHECKPOINT_TICKS) {
            self.checkpoint_receipts();
        }
        self.persist_outbox_progress();
        self.trim_update_log();
        self.compact_update_log();
        if self.ticks.is_multiple_of(600) {
            self.budgets.forget_idle(std::time::Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::storage::{OutboxEvent, OutboxItem};

    /// Architecture Invariant 2 (every member's log receives every message,
    /// across a crash): outbox progress, written lazily at each tick, must
    /// not pass a batch from the moment it is numbered until every target
    /// confirmed it. A tick between the batch's commit and its fan-out used
    /// to record it as done; a SIGKILL before the targets had it durable
    /// then lost it for good (the restart re-sends only from the recorded
    /// progress).
    #[tokio::test]
    async fn outbox_progress_never_passes_a_batch_before_every_target_confirmed_it() {
        let (_dir, _store, mut partition) = super::testing::loaded_partition(2);
        let before = partition.meta.outbox_done;

        partition
            .batch
            .outbox
            .push(OutboxItem { conversation_id: "c".into(), event: Some(OutboxEvent::MessageSeq(1)) });
        partition.commit();
        let numbered = partition.meta.next_outbox - 1;
        assert_eq!(numbered, before, "the first outbox batch gets the first number");

        // Ticks while the batch waits to be durable, then while it is fanned out.
        partition.on_tick();
        assert_eq!(partition.meta.outbox_done, before, "progress passed a batch still waiting to be durable");
        while !partition.pending.is_empty() {
            partition.durable_wake.notified().await;
            partition.run_durable();
        }
        partition.on_tick();
        assert_eq!(partition.meta.outbox_done, before, "progress passed a batch not yet confirmed by its targets");

        partition.fanout_done(numbered);
        partition.on_tick();
        assert_eq!(partition.meta.outbox_done, numbered + 1, "a confirmed batch is recorded as done");
    }

    /// No sled blob files (storage::sled_files): a batch of removals from
    /// full groups, each naming every member, is split into outbox rows
    /// that each stay under the row bound, in order, none lost.
    #[test]
    fn outbox_rows_stay_under_the_row_bound_for_the_largest_batches() {
        let removal = |n: usize| OutboxItem {
            conversation_id: format!("g_{n:030}"),
            event: Some(OutboxEvent::Changed(crate::storage::ChangedEvent {
                removed_user_ids: (0..crate::config::MAX_GROUP_MEMBERS_BOUND).map(|m| format!("{m:064}")).collect(),
            })),
        };
        let items: Vec<OutboxItem> = (0..40).map(removal).collect();
        let chunks = chunk_by_encoded_len(items.clone(), OUTBOX_ROW_BYTES);
        assert!(chunks.len() > 1);
        for chunk in &chunks {
            let row = crate::storage::OutboxRecord { items: chunk.clone() }.encoded_len() + 16;
            assert!(row <= crate::storage::sled_files::MAX_ROW_BYTES, "outbox row of {row} bytes");
        }
        assert_eq!(chunks.concat(), items, "every item, in order");
        let small: Vec<OutboxItem> = (0..1024)
            .map(|n| OutboxItem { conversation_id: format!("dm_{n:040}"), event: Some(OutboxEvent::MessageSeq(n)) })
            .collect();
        assert!(
            chunk_by_encoded_len(small, OUTBOX_ROW_BYTES).iter().all(|chunk| {
                crate::storage::OutboxRecord { items: chunk.clone() }.encoded_len() <= OUTBOX_ROW_BYTES
            })
        );
    }
}
