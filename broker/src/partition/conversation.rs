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
        replies,
    },
    error::{Error, Result},
    events::{Ephemeral, LoggedEvent, UpdateItem},
    ids::PartitionId,
    mailbox::{MessageAction, MessageOutcome},
    now_ms,
    storage::OutboxItem,
    validate,
};

/// The conversations of one partition that are loaded in memory.
#[derive(Default)]
pub(super) struct Conversations {
    map: HashMap<String, Conversation>,
    /// Receipt rows changed in memory only (a sender's own watermarks move
    /// with each send); written at the next tick, not per message.
    dirty_receipts: HashSet<(String, String)>,
    /// Outbox batches not yet confirmed by every target, from the moment
    /// a batch is numbered (before it is even durable, let alone sent):
    /// outbox progress must never pass a batch whose fan-out has not
    /// reached every target durably, or a crash in between would lose it.
    pub(super) outbox_unconfirmed: BTreeSet<u64>,
    /// Conversations where someone may be typing: the expiry tick visits
    /// these, not every loaded conversation.
    typing_in: HashSet<String>,
    /// Messages written (new, edited, reacted to, unsent) but not yet
    /// published, with their content-key slot: what storage will hold once
    /// they are. The next change to one of them must start from here, not
    /// from sled (an edit on top of a pending unsend would bring the
    /// content back).
    unpublished: HashMap<(String, u64), (Arc<Message>, Option<u64>)>,
}

impl Partition {
    /// Loads a conversation if it exists; returns whether it does.
    fn load_conversation(&mut self, id: &str) -> Result<bool> {
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

    fn conversation(&mut self, id: &str) -> Result<&mut Conversation> {
        if !self.load_conversation(id)? {
            return Err(Error::ConversationNotFound(id.to_owned()));
        }
        self.conversations.map.get_mut(id).ok_or_else(|| Error::ConversationNotFound(id.to_owned()))
    }

    /// Message `seq` as storage holds it (or will, once the batches in
    /// flight are published), with its content-key slot.
    fn stored_message(&self, id: &str, seq: u64) -> Result<Option<(Arc<Message>, Option<u64>)>> {
        if let Some((message, slot)) = self.conversations.unpublished.get(&(id.to_owned(), seq)) {
            return Ok(Some((message.clone(), *slot)));
        }
        Ok(self.store.stored_message(id, seq)?.map(|(message, slot)| (Arc::new(message), slot)))
    }

    /// Writes a message row (new or rewritten: its slot is reused, so an
    /// edit overwrites the old key and an unsend erases it) and remembers
    /// it until published.
    fn write_message(&mut self, message: Arc<Message>, new: bool) -> Result<()> {
        let existing = if new { None } else { self.stored_message(&message.conversation_id, message.seq)? };
        let slot = existing.and_then(|(_, slot)| slot).unwrap_or_else(|| self.store.new_content_slot());
        self.batch.writes.put_message(&message, slot);
        self.remember_unpublished(message, Some(slot));
        Ok(())
    }

    fn remember_unpublished(&mut self, message: Arc<Message>, slot: Option<u64>) {
        let key = (message.conversation_id.clone(), message.seq);
        self.conversations.unpublished.insert(key, (message.clone(), slot));
        self.defer(Deferred::MessagePublished { message });
    }

    /// Carries out what a rule decided: rows into this batch, logged events
    /// into the outbox, signals to live sessions.
    fn apply_effects(&mut self, effects: Effects) -> Result<()> {
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
    ) -> Result<CreateConversationResponse> {
        if self.load_conversation(id)? {
            return self.conversation(id)?.recreate(caller, &spec);
        }
        let (conversation, response, effects) = Conversation::create(caller, id, spec, &self.limits, now_ms())?;
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
        let (response, effects) = self.conversation(id)?.send(caller, new, quoted.as_deref(), window, now_ms())?;
        self.apply_effects(effects)?;
        Ok(response)
    }

    /// Reacting to, editing, unsending, deleting for oneself, or reading
    /// for a forward one message.
    pub(super) fn act_on_message(
        &mut self,
        caller: &Caller,
        id: &str,
        seq: u64,
        action: MessageAction,
    ) -> Result<MessageOutcome> {
        let window = self.limits.edit_window;
        let stored = self.stored_message(id, seq)?.map(|(message, _)| message);
        let stored = stored.as_deref();
        let conversation = self.conversation(id)?;
        let (outcome, effects) = match action {
            MessageAction::React { emoji } => {
                (MessageOutcome::Done, conversation.react(caller, seq, stored, &emoji, now_ms())?)
            }
            MessageAction::Edit { text } => {
                let (response, effects) = conversation.edit(caller, seq, stored, text, window, now_ms())?;
                (MessageOutcome::Edited(response), effects)
            }
            MessageAction::Unsend => (MessageOutcome::Done, conversation.unsend(caller, seq, stored)?),
            MessageAction::DeleteForMe => (MessageOutcome::Done, conversation.delete_for_me(caller, seq, stored)?),
            MessageAction::ReadForForward => {
                let message = conversation.visible_message(&caller.user_id, seq, stored)?;
                let content = message
                    .content
                    .clone()
                    .ok_or_else(|| Error::FailedPrecondition(format!("message {seq} was unsent")))?;
                (MessageOutcome::Content(content), Effects::default())
            }
        };
        self.apply_effects(effects)?;
        Ok(outcome)
    }

    /// Fills in what a served message shows of the message it replies to,
    /// as that is now.
    fn attach_reply_previews(&self, id: &str, messages: &mut [Message]) -> Result<()> {
        let page: HashMap<u64, Message> = messages
            .iter()
            .filter(|m| messages.iter().any(|r| r.reply_to_seq == m.seq))
            .map(|m| (m.seq, m.clone()))
            .collect();
        for message in messages.iter_mut().filter(|m| m.reply_to_seq != 0) {
            let seq = message.reply_to_seq;
            let quoted = match page.get(&seq) {
                Some(quoted) => Some(quoted.clone()),
                None => self.store.message(id, seq)?,
            };
            message.reply_preview = Some(replies::preview(seq, quoted.as_ref()));
        }
        Ok(())
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

    /// A write of `message` is published: history reads may include it, and
    /// storage holds it (unless a newer write of it is still in flight).
    pub(super) fn message_published(&mut self, message: &Arc<Message>) {
        let key = (message.conversation_id.clone(), message.seq);
        if self.conversations.unpublished.get(&key).is_some_and(|(newest, _)| Arc::ptr_eq(newest, message)) {
            self.conversations.unpublished.remove(&key);
        }
        if let Some(conversation) = self.conversations.map.get_mut(&message.conversation_id) {
            conversation.message_published(message.seq);
        }
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

    pub(super) fn messages_by_seq(&mut self, id: &str, seqs: &[u64]) -> Result<Vec<Message>> {
        let mut messages = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(message) = self.store.message(id, *seq)? {
                messages.push(message);
            }
        }
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
            if conversation.member(&presence.user_id).is_none() {
                continue;
            }
            audience.extend(conversation.others(&presence.user_id));
        }
        self.push_ephemeral_to(&audience, Ephemeral::Presence(presence));
    }

    /// Sends a durable outbox batch to the partitions of its recipients and
    /// learns, through a small task, when all of them have it durably.
    pub(super) fn fan_out(&mut self, batch: u64, items: Vec<UpdateItem>) {
        let mut by_partition: HashMap<PartitionId, Vec<UpdateItem>> = HashMap::new();
        for item in items {
            for (partition, user_ids) in self.router.group_by_partition(&item.user_ids) {
                by_partition.entry(partition).or_default().push(UpdateItem { user_ids, event: item.event.clone() });
            }
        }
        let confirmations: Vec<_> =
            by_partition.into_iter().map(|(partition, items)| self.router.deliver_updates(partition, items)).collect();
        let router = self.router.clone();
        let me = self.id;
        tokio::spawn(async move {
            for confirmed in confirmations {
                // Lanes retry until the target has the updates durable; one
                // that never confirms (this node stopping) leaves the batch
                // in the outbox, re-sent on the next start.
                if confirmed.await.is_err() {
                    return;
                }
            }
            router.internal(me, Command::FanoutDone { batch });
        });
    }

    /// Every target confirmed an outbox batch. The record is removed at the
    /// next tick, in one lazy batch with the others (nothing waits for it).
    pub(super) fn fanout_done(&mut self, batch: u64) {
        self.conversations.outbox_unconfirmed.remove(&batch);
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
            self.defer(Deferred::Fanout { batch, items });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{
        config::BrokerConfig,
        core::testing::new_text,
        router::Router,
        storage::{Store, wal::Op},
    };

    /// The rows each command adds to its partition's batch, besides the
    /// per-batch rows every command shares (one outbox row, the members'
    /// update-log rows): the row budget of docs/benchmarks.md.
    #[tokio::test]
    async fn rows_a_message_a_reaction_an_edit_and_an_unsend_cost() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = BrokerConfig::new(dir.path());
        config.partitions = 1;
        config.cache_capacity_bytes = 4 * 1024 * 1024;
        let store = Store::open(&config).unwrap();
        let router = Router::new(config.partitions, None, CancellationToken::new());
        let mut partition =
            Partition::load(0, config.limits.clone(), store.partition(0).unwrap(), store.durability().clone(), router)
                .unwrap();
        let alice = Caller { user_id: "alice".into(), device_id: "phone".into() };
        let bob = Caller { user_id: "bob".into(), device_id: "phone".into() };
        let id = crate::ids::direct_conversation_id("alice", "bob");
        partition.create_conversation(&alice, &id, NewConversation::Direct { peer_user_id: "bob".into() }).unwrap();
        let rows = |partition: &mut Partition| {
            let batch = std::mem::take(&mut partition.batch);
            batch
                .writes
                .ops()
                .iter()
                .map(|op| match op {
                    Op::Put { key, .. } => format!("put {}", key[0] as char),
                    Op::Remove { key } => format!("remove {}", key[0] as char),
                })
                .collect::<Vec<_>>()
        };
        rows(&mut partition);

        partition.send(&alice, &id, new_text("a1", "hi")).unwrap();
        assert_eq!(rows(&mut partition), ["put K", "put m"], "a message: its content key and its row");
        partition.act_on_message(&bob, &id, 1, MessageAction::React { emoji: "👍".into() }).unwrap();
        assert_eq!(rows(&mut partition), ["put a"], "a reaction: the message's reaction row");
        partition.act_on_message(&alice, &id, 1, MessageAction::Edit { text: "hello".into() }).unwrap();
        assert_eq!(rows(&mut partition), ["put K", "put m"], "an edit: a new key in the same slot, the row");
        partition.act_on_message(&alice, &id, 1, MessageAction::Unsend).unwrap();
        assert_eq!(
            rows(&mut partition),
            ["remove K", "put m", "remove a"],
            "an unsend: the key erased, the tombstone, the reactions gone"
        );
        partition.act_on_message(&bob, &id, 1, MessageAction::DeleteForMe).unwrap();
        assert_eq!(rows(&mut partition), ["put h"], "a deletion for oneself: one marker row");
        let photo = imsg_proto::v1::MediaContent {
            media_id: "m_0123456789abcdef0123456789abcdef".into(),
            kind: imsg_proto::v1::MediaKind::Photo as i32,
            size_bytes: 2_000_000,
            caption: "cat".into(),
            ..Default::default()
        };
        let media = NewMessage { content: imsg_proto::v1::message::Content::Media(photo), ..new_text("a2", "") };
        partition.send(&alice, &id, media).unwrap();
        assert_eq!(
            rows(&mut partition),
            ["put K", "put m"],
            "a media message: as a text (the bytes are in the object store)"
        );
        store.close().unwrap();
    }

    /// An edit arriving while an unsend of the same message is still in
    /// flight (not yet published) must see the tombstone, not the old row
    /// in sled, or it would write the content back.
    #[tokio::test]
    async fn a_change_starts_from_the_newest_unpublished_state_not_from_sled() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = BrokerConfig::new(dir.path());
        config.partitions = 1;
        config.cache_capacity_bytes = 4 * 1024 * 1024;
        let store = Store::open(&config).unwrap();
        let router = Router::new(config.partitions, None, CancellationToken::new());
        let mut partition =
            Partition::load(0, config.limits.clone(), store.partition(0).unwrap(), store.durability().clone(), router)
                .unwrap();
        let alice = Caller { user_id: "alice".into(), device_id: "phone".into() };
        let id = crate::ids::direct_conversation_id("alice", "bob");
        partition.create_conversation(&alice, &id, NewConversation::Direct { peer_user_id: "bob".into() }).unwrap();
        partition.send(&alice, &id, new_text("a1", "secret")).unwrap();
        partition.act_on_message(&alice, &id, 1, MessageAction::Unsend).unwrap();
        let error = partition.act_on_message(&alice, &id, 1, MessageAction::Edit { text: "back".into() }).unwrap_err();
        assert!(matches!(error, Error::FailedPrecondition(_)), "{error:?}");
        let reaction = partition.act_on_message(&alice, &id, 1, MessageAction::React { emoji: "👍".into() });
        assert!(matches!(reaction, Err(Error::FailedPrecondition(_))));
        store.close().unwrap();
    }
}
