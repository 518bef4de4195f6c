//! The conversation role of a partition: the shell around the conversation
//! rules of [`crate::core`]. It loads conversations lazily (record, newest
//! message, receipts; the dedup window on the first send), applies the
//! rules' effects to the batch, the outbox and live sessions, serves
//! history, and fans the outbox out to the members' user partitions.
//!
//! Nothing per message is written but the message itself (see `storage`).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Instant,
};

use imsg_proto::internal::v1::Caller;
use imsg_proto::v1::{
    Conversation as ConversationView, ConversationSummary, CreateConversationResponse, ListMessagesRequest,
    ListMessagesResponse, Message, Presence, SendMessageResponse,
};

use super::{Command, Deferred, Partition};
use crate::{
    core::{
        Conversation, DedupWindow, Effects, MarkKind, MembershipChange, NewConversation, NewMessage, Viewer, Write,
    },
    error::{Error, Result},
    events::{Ephemeral, LoggedEvent, UpdateItem},
    ids::PartitionId,
    now_ms,
    router::{FanoutConfirmation, Written},
    storage::{OutboxItem, Owed},
    validate,
};

/// An outbox batch's updates by target partition, each with the append
/// the writer waits for (if the batch is not handed over yet).
pub(super) struct FanOut {
    batch: u64,
    targets: Vec<(PartitionId, Vec<UpdateItem>, Option<Owed>)>,
    span: tracing::Span,
}

/// The conversations of one partition that are loaded in memory.
#[derive(Default)]
pub(super) struct Conversations {
    pub(super) map: foldhash::HashMap<String, Conversation>,
    /// Receipt rows changed in memory only (a sender's own watermarks move
    /// with each send); written at the next tick, not per message.
    dirty_receipts: HashSet<(String, String)>,
    /// Outbox batches not yet confirmed by every target, from the moment
    /// a batch is numbered (before it is even durable, let alone sent):
    /// outbox progress must never pass a batch whose fan-out has not
    /// reached every target durably, or a crash in between would lose it.
    pub(super) outbox_unconfirmed: BTreeSet<u64>,
    /// When each unconfirmed batch was numbered (the fan-out lag metric).
    pub(super) outbox_started: foldhash::HashMap<u64, Instant>,
    /// Conversations where someone may be typing: the expiry tick visits
    /// these, not every loaded conversation.
    typing_in: HashSet<String>,
    /// Messages written (new, edited, reacted to, unsent) but not yet
    /// published, with their content-key slot: what storage will hold once
    /// they are. The next change to one of them must start from here, not
    /// from sled (an edit on top of a pending unsend would bring the
    /// content back).
    pub(super) unpublished: foldhash::HashMap<(String, u64), (Arc<Message>, Option<u64>)>,
}

impl Conversations {
    /// Whether something here waits for a tick: typing to expire, receipts
    /// to checkpoint, outbox batches whose progress is not yet recorded.
    pub(super) fn waits_for_ticks(&self) -> bool {
        !self.typing_in.is_empty() || !self.dirty_receipts.is_empty() || !self.outbox_unconfirmed.is_empty()
    }
}

impl Partition {
    /// Loads a conversation if it exists; returns whether it does.
    pub(super) fn load_conversation(&mut self, id: &str) -> Result<bool> {
        if self.conversations.map.contains_key(id) {
            return Ok(true);
        }
        let Some(record) = self.store.conversation(id)? else { return Ok(false) };
        let last_seq = self.store.last_message_seq(id)?;
        let last_message = if last_seq > 0 { self.store.message(id, last_seq)? } else { None };
        let receipts = self.store.receipts(id)?.into_iter().collect();
        self.conversations.map.insert(id.to_owned(), Conversation::restore(record, last_message, receipts));
        Ok(true)
    }

    pub(super) fn conversation(&mut self, id: &str) -> Result<&mut Conversation> {
        if !self.load_conversation(id)? {
            return Err(Error::ConversationNotFound(id.to_owned()));
        }
        self.conversations.map.get_mut(id).ok_or_else(|| Error::ConversationNotFound(id.to_owned()))
    }

    /// Carries out what a rule decided: rows into this batch, logged events
    /// into the outbox, signals to live sessions.
    pub(super) fn apply_effects(&mut self, effects: Effects) -> Result<()> {
        for write in effects.writes {
            match write {
                Write::Conversation(record) => self.batch.writes.put_conversation(&record),
                Write::Message(message) => self.write_message(message, true)?,
                Write::Rewrite(message) => self.write_message(message, false)?,
                Write::Reactions(message) => {
                    self.batch.writes.put_reactions(&message.conversation_id, message.seq, &message.reactions);
                    let slot = self.stored_message(&message.conversation_id, message.seq)?.and_then(|(_, slot)| slot);
                    self.remember_unpublished(message, slot);
                }
                Write::Hidden { conversation_id, user_id, seq } => {
                    self.batch.writes.put_hidden(&conversation_id, &user_id, seq);
                }
                Write::Receipt { conversation_id, user_id, record } => {
                    self.batch.writes.put_receipt(&conversation_id, &user_id, &record);
                    self.conversations.dirty_receipts.remove(&(conversation_id, user_id));
                }
            }
        }
        self.conversations.dirty_receipts.extend(effects.lazy_receipts);
        for signal in effects.signals {
            self.push_ephemeral_to(&signal.recipients, signal.event);
        }
        for logged in effects.logged {
            self.publish(logged.recipients, logged.event);
        }
        Ok(())
    }

    /// Queues a durable change for the members' update logs.
    fn publish(&mut self, recipients: Vec<String>, event: LoggedEvent) {
        self.batch.outbox.push(OutboxItem {
            conversation_id: event.conversation_id().to_owned(),
            event: Some(event.outbox_record()),
        });
        self.batch.outbox_items.push(UpdateItem { user_ids: recipients, event: Arc::new(event) });
        let span = crate::telemetry::carried();
        match &self.batch.outbox_span {
            None => self.batch.outbox_span = Some(span),
            Some(first) => {
                if !span.is_none() && span != *first && !self.batch.outbox_links.contains(&span) {
                    self.batch.outbox_links.push(span);
                }
            }
        }
    }

    /// Sends an ephemeral signal to users' live sessions, wherever their
    /// partitions are. Never written (invariant 7).
    pub(super) fn push_ephemeral_to<'a>(&self, users: impl IntoIterator<Item = &'a String>, event: Ephemeral) {
        for (partition, user_ids) in self.router.group_by_partition(users) {
            self.router.internal(partition, Command::PushEphemeral { user_ids, event: event.clone() });
        }
    }

    pub(super) fn create_conversation(
        &mut self,
        caller: &Caller,
        id: &str,
        spec: NewConversation,
        requests: &[String],
    ) -> Result<CreateConversationResponse> {
        if self.load_conversation(id)? {
            let conversation = self.conversation(id)?;
            // Writing back to whoever wrote first accepts their request.
            if !conversation.is_group() && conversation.is_request_for(&caller.user_id) {
                let (_, effects) = conversation.accept(caller, now_ms())?;
                self.apply_effects(effects)?;
            }
            return self.conversation(id)?.recreate(caller, &spec);
        }
        let (conversation, response, effects) =
            Conversation::create_with_requests(caller, id, spec, &self.limits, now_ms(), requests)?;
        self.conversations.map.insert(id.to_owned(), conversation);
        self.apply_effects(effects)?;
        Ok(response)
    }

    pub(super) fn get_conversation(&mut self, viewer: &Viewer, id: &str) -> Result<ConversationView> {
        let conversation = self.conversation(id)?;
        conversation.require_member(&viewer.user_id)?;
        Ok(conversation.snapshot(Some(viewer)))
    }

    pub(super) fn change_membership(
        &mut self,
        caller: &Caller,
        id: &str,
        change: MembershipChange,
    ) -> Result<ConversationView> {
        let limits = self.limits.clone();
        let (view, effects) = self.conversation(id)?.change_membership(caller, change, &limits, now_ms())?;
        self.apply_effects(effects)?;
        Ok(view)
    }

    pub(super) fn send(&mut self, caller: &Caller, id: &str, new: NewMessage) -> Result<SendMessageResponse> {
        let window = self.limits.dedup_window;
        let conversation = self.conversation(id)?;
        conversation.require_member(&caller.user_id)?;
        if conversation.needs_dedup_window() {
            let last_seq = conversation.last_seq();
            let tail = self.store.messages(id, 1, last_seq, window, true)?;
            self.conversation(id)?.set_dedup_window(DedupWindow::from_tail(window, &tail));
        }
        let quoted = match new.reply_to_seq {
            0 => None,
            seq => self.stored_message(id, seq)?.map(|(message, _)| message),
        };
        let limits = self.limits.clone();
        let (response, effects) = self.conversation(id)?.send(caller, new, quoted.as_deref(), &limits, now_ms())?;
        if !response.duplicate {
            crate::metrics::METRICS.messages_sent.inc();
        }
        self.apply_effects(effects)?;
        Ok(response)
    }

    pub(super) fn list_messages(
        &mut self,
        caller: &Caller,
        request: &ListMessagesRequest,
    ) -> Result<ListMessagesResponse> {
        let page_size = validate::page_size(request.page_size)?;
        let token = validate::page_token(&request.page_token)?;
        let conversation = self.conversation(&request.conversation_id)?;
        let first_visible = conversation.require_member(&caller.user_id)?.joined_after_seq + 1;
        // Newer messages are not in sled yet, and not acknowledged either.
        let last_seq = conversation.published_seq();
        let (messages, next) = match request.after_seq {
            Some(after) => {
                let from = token.unwrap_or(after.saturating_add(1)).max(first_visible);
                let mut page = self.store.messages(&request.conversation_id, from, last_seq, page_size + 1, false)?;
                let more = page.len() > page_size;
                page.truncate(page_size);
                let next = if more { page.last().map(|m| m.seq + 1) } else { None };
                (page, next)
            }
            None => {
                let to = token.unwrap_or(last_seq).min(last_seq);
                let mut page = self.store.messages(&request.conversation_id, first_visible, to, page_size + 1, true)?;
                let more = page.len() > page_size;
                if more {
                    page.remove(0);
                }
                let next = if more { page.first().map(|m| m.seq - 1) } else { None };
                (page, next)
            }
        };
        let mut messages = messages;
        if let (Some(first), Some(last)) = (messages.first().map(|m| m.seq), messages.last().map(|m| m.seq)) {
            let hidden = self.store.hidden_between(&request.conversation_id, &caller.user_id, first, last)?;
            messages.retain(|m| !hidden.contains(&m.seq));
        }
        self.attach_reply_previews(&request.conversation_id, &mut messages)?;
        Ok(ListMessagesResponse { messages, next_page_token: next.map(|n| n.to_string()).unwrap_or_default() })
    }

    pub(super) fn typing(&mut self, caller: &Caller, id: &str, active: bool) -> Result<()> {
        let ttl = self.limits.typing_ttl;
        let conversation = self.conversation(id)?;
        let effects = conversation.typing(caller, active, Instant::now(), ttl)?;
        if conversation.anyone_typing() {
            self.conversations.typing_in.insert(id.to_owned());
        }
        self.apply_effects(effects)
    }

    /// Typing that was not renewed within the TTL stops, on the server.
    pub(super) fn expire_typing(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        let conversations = &mut self.conversations;
        conversations.typing_in.retain(|id| {
            let Some(conversation) = conversations.map.get_mut(id) else { return false };
            expired.push(conversation.expire_typing(now));
            conversation.anyone_typing()
        });
        for effects in expired {
            self.apply_effects_or_log(effects);
        }
    }

    /// Moves a member's watermarks forward (never back). `hide_read` is the
    /// reader's setting, supplied by their user partition.
    pub(super) fn mark(&mut self, caller: &Caller, id: &str, seq: u64, kind: MarkKind, hide_read: bool) -> Result<()> {
        let effects = self.conversation(id)?.mark(caller, seq, kind, hide_read)?;
        self.apply_effects(effects)
    }

    /// Writes receipts that moved in memory only (a sender's own).
    pub(super) fn checkpoint_receipts(&mut self) {
        for (id, user) in std::mem::take(&mut self.conversations.dirty_receipts) {
            if let Some(conversation) = self.conversations.map.get(&id) {
                self.batch.writes.put_receipt(&id, &user, &conversation.receipt(&user));
            }
        }
    }

    pub(super) fn hide_read_changed(&mut self, user: &str, hide_read: bool, ids: &[String]) {
        for id in ids {
            let Ok(conversation) = self.conversation(id) else { continue };
            let effects = conversation.set_hide_read(user, hide_read);
            self.apply_effects_or_log(effects);
        }
    }

    pub(super) fn summaries(&mut self, viewer: &Viewer, ids: &[String]) -> Result<Vec<ConversationSummary>> {
        let mut summaries = Vec::with_capacity(ids.len());
        for id in ids {
            if !self.load_conversation(id)? {
                continue;
            }
            summaries.extend(self.conversation(id)?.summary(viewer));
        }
        Ok(summaries)
    }

    /// The stored messages with these seqs (replay). Seqs that lie close
    /// together, as a replay page's do, are read as one range: one pass over
    /// the rows, a few reads of the key file and of the reactions, instead
    /// of three lookups per message.
    pub(super) fn messages_by_seq(&mut self, id: &str, seqs: &[u64]) -> Result<Vec<Message>> {
        let (Some(&first), Some(&last)) = (seqs.iter().min(), seqs.iter().max()) else { return Ok(Vec::new()) };
        let mut messages = if last - first < 2 * seqs.len() as u64 {
            let wanted: std::collections::HashSet<u64> = seqs.iter().copied().collect();
            let mut messages = self.store.messages(id, first, last, usize::MAX, false)?;
            messages.retain(|message| wanted.contains(&message.seq));
            messages
        } else {
            let mut messages = Vec::with_capacity(seqs.len());
            for seq in seqs {
                if let Some(message) = self.store.message(id, *seq)? {
                    messages.push(message);
                }
            }
            messages
        };
        self.attach_reply_previews(id, &mut messages)?;
        Ok(messages)
    }

    /// For work no caller waits on (ticks, signals from other partitions):
    /// effects that cannot be applied are logged, not returned.
    fn apply_effects_or_log(&mut self, effects: Effects) {
        if let Err(error) = self.apply_effects(effects) {
            tracing::error!(partition = self.id, %error, "applying effects failed");
        }
    }

    pub(super) fn snapshots(&mut self, ids: &[String]) -> Result<Vec<ConversationView>> {
        let mut snapshots = Vec::with_capacity(ids.len());
        for id in ids {
            if self.load_conversation(id)? {
                snapshots.push(self.conversation(id)?.snapshot(None));
            }
        }
        Ok(snapshots)
    }

    /// Tells the members of the subject's conversations (once each) that
    /// the subject's presence changed.
    pub(super) fn presence_fanout(&mut self, presence: Presence, ids: &[String]) {
        let mut audience = BTreeSet::new();
        for id in ids {
            let Ok(conversation) = self.conversation(id) else { continue };
            // A member who has not accepted shows nobody their presence.
            if conversation.member(&presence.user_id).is_none() || conversation.is_request_for(&presence.user_id) {
                continue;
            }
            audience.extend(conversation.others(&presence.user_id));
        }
        self.push_ephemeral_to(&audience, Ephemeral::Presence(presence));
    }

    /// Sends a durable outbox batch to the partitions of its recipients and
    /// learns, through a small task, when all of them have it durably.
    /// Groups an outbox batch's updates by target partition; `owe`: each
    /// target is an append the writer's next round waits for (a batch not
    /// yet handed over).
    pub(super) fn plan_fan_out(&self, batch: u64, items: Vec<UpdateItem>, span: tracing::Span, owe: bool) -> FanOut {
        let mut by_partition: HashMap<PartitionId, Vec<UpdateItem>> = HashMap::new();
        span.in_scope(|| {
            for item in items {
                for (partition, user_ids) in self.router.group_by_partition(&item.user_ids) {
                    by_partition.entry(partition).or_default().push(UpdateItem { user_ids, event: item.event.clone() });
                }
            }
        });
        let targets =
            by_partition.into_iter().map(|(partition, items)| (partition, items, owe.then(|| self.durability.owe())));
        FanOut { batch, targets: targets.collect(), span }
    }

    /// Sends an outbox batch to its targets' lanes; `generation`: the
    /// batch that logged it (only targets that owe an append, planned
    /// before that batch was handed over, wait for it).
    pub(super) fn send_fan_out(&mut self, fan_out: FanOut, generation: u64) {
        let FanOut { batch, targets, span } = fan_out;
        let _entered = span.enter();
        // Lanes retry until the target has the updates durable.
        let done = FanoutConfirmation::new(&self.router, self.id, batch, targets.len());
        for (partition, items, owed) in targets {
            let written = owed.map(|owed| Written { generation, owed });
            self.router.deliver_updates(partition, items, written, done.clone());
        }
    }

    /// Every target confirmed an outbox batch. The record is removed at the
    /// next tick, in one lazy batch with the others (nothing waits for it).
    pub(super) fn fanout_done(&mut self, batch: u64) {
        self.conversations.outbox_unconfirmed.remove(&batch);
        if let Some(started) = self.conversations.outbox_started.remove(&batch) {
            crate::metrics::METRICS.fanout_lag_seconds.observe(started.elapsed().as_secs_f64());
        }
    }

    /// Removes confirmed outbox records and remembers how far confirmation
    /// reached, so a restart re-sends only what may not have arrived.
    pub(super) fn persist_outbox_progress(&mut self) {
        let done = self.conversations.outbox_unconfirmed.first().copied().unwrap_or(self.meta.next_outbox);
        if done > self.meta.outbox_done {
            for old in self.meta.outbox_done..done {
                self.batch.writes.remove_outbox(old);
            }
            self.meta.outbox_done = done;
            self.batch.meta_dirty = true;
        }
    }

    /// Re-sends outbox batches a crash left unconfirmed. Targets drop what
    /// they already have, so re-sending is safe.
    pub(super) fn resend_outbox(&mut self) -> Result<()> {
        for (batch, record) in self.store.outbox_from(self.meta.outbox_done)? {
            let mut items = Vec::with_capacity(record.items.len());
            for item in record.items {
                let id = item.conversation_id;
                let Some(record) = item.event else { continue };
                if !self.load_conversation(&id)? {
                    continue;
                }
                let stored_message = match record.message_seq() {
                    Some(seq) => self.store.message(&id, seq)?,
                    None => None,
                };
                let conversation = self.conversation(&id)?;
                let (members, now) = (conversation.member_ids(), conversation.snapshot(None));
                if let Some(event) = LoggedEvent::from_outbox(&id, record, stored_message, now) {
                    items.push(UpdateItem { user_ids: event.recipients(members), event: Arc::new(event) });
                }
            }
            tracing::info!(partition = self.id, batch, "re-sending unconfirmed outbox batch");
            self.conversations.outbox_unconfirmed.insert(batch);
            self.defer(Deferred::Fanout { batch, items, span: tracing::Span::none() });
        }
        Ok(())
    }
}
