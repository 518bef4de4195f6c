//! The conversation role of a partition: membership, sequencing, dedup,
//! receipts, typing, history, and the outbox that carries every durable
//! change to the members' user partitions.
//!
//! A conversation loads lazily on first use: its record, its last seq (the
//! last message key), its receipt rows; the dedup window (the tail of its
//! messages) loads on its first send. Nothing per message is written but
//! the message itself (see `storage`).

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Instant,
};

use imsg_proto::v1::{
    Caller, Conversation, ConversationKind, ConversationSummary, CreateConversationResponse, ListMessagesRequest,
    ListMessagesResponse, Member, MemberRole, Message, Presence, SendMessageRequest, SendMessageResponse,
    message::Content,
};

use super::{Command, Deferred, MarkKind, MembershipChange, NewConversation, Partition, Viewer};
use crate::{
    error::{Error, Result},
    events::{Ephemeral, LoggedEvent, UpdateItem},
    ids::PartitionId,
    now_ms,
    storage::{
        ChangedEvent, ConversationRecord, MemberRecord, OutboxEvent, OutboxItem, PartitionStore, ReceiptEvent,
        ReceiptRecord,
    },
    validate,
};

/// The conversations of one partition that are loaded in memory.
#[derive(Default)]
pub(super) struct Conversations {
    map: HashMap<String, ConversationState>,
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
}

struct ConversationState {
    record: ConversationRecord,
    last_seq: u64,
    /// Messages up to this seq are in sled (published): history reads
    /// stop here.
    published_seq: u64,
    last_activity_ms: i64,
    last_message: Option<Arc<Message>>,
    receipts: HashMap<String, ReceiptRecord>,
    dedup: Option<DedupWindow>,
    /// Who is typing, until when.
    typing: HashMap<String, Instant>,
}

/// The newest client message ids of a conversation (invariant 3).
#[derive(Default)]
struct DedupWindow {
    seen: HashMap<(String, String), (u64, i64)>,
    order: VecDeque<(String, String)>,
}

impl DedupWindow {
    fn remember(&mut self, capacity: usize, message: &Message) {
        let key = (message.sender_id.clone(), message.client_message_id.clone());
        if self.seen.insert(key.clone(), (message.seq, message.server_time_ms)).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }
}

impl ConversationState {
    fn load(store: &PartitionStore, id: &str) -> Result<Option<Self>> {
        let Some(record) = store.conversation(id)? else { return Ok(None) };
        let last_seq = store.last_message_seq(id)?;
        let last_message = if last_seq > 0 { store.message(id, last_seq)?.map(Arc::new) } else { None };
        let last_activity_ms =
            last_message.as_ref().map_or(record.change_time_ms, |m| m.server_time_ms.max(record.change_time_ms));
        let receipts = store.receipts(id)?.into_iter().collect();
        Ok(Some(Self {
            record,
            last_seq,
            published_seq: last_seq,
            last_activity_ms,
            last_message,
            receipts,
            dedup: None,
            typing: HashMap::new(),
        }))
    }

    fn member(&self, user: &str) -> Option<&MemberRecord> {
        self.record.members.iter().find(|m| m.user_id == user)
    }

    fn require_member(&self, user: &str) -> Result<&MemberRecord> {
        self.member(user).ok_or_else(|| Error::NotMember(self.record.id.clone()))
    }

    fn is_group(&self) -> bool {
        self.record.kind == ConversationKind::Group as i32
    }

    fn member_ids(&self) -> Vec<String> {
        self.record.members.iter().map(|m| m.user_id.clone()).collect()
    }

    /// The conversation as `viewer` sees it; without a viewer (events) the
    /// watermarks are zero, since receipts travel as their own events.
    fn snapshot(&self, viewer: Option<&Viewer>) -> Conversation {
        let members = self
            .record
            .members
            .iter()
            .map(|m| {
                let receipt = self.receipts.get(&m.user_id).copied().unwrap_or_default();
                let (delivered_seq, read_seq) = match viewer {
                    None => (0, 0),
                    Some(v) if v.user_id == m.user_id => (receipt.delivered_seq, receipt.read_seq),
                    Some(v) if v.hide_read_receipts || receipt.hide_read => (receipt.delivered_seq, 0),
                    Some(_) => (receipt.delivered_seq, receipt.read_seq),
                };
                Member {
                    user_id: m.user_id.clone(),
                    role: m.role,
                    delivered_seq,
                    read_seq,
                    joined_after_seq: m.joined_after_seq,
                }
            })
            .collect();
        Conversation {
            conversation_id: self.record.id.clone(),
            kind: self.record.kind,
            title: self.record.title.clone(),
            members,
            last_seq: self.last_seq,
            last_activity_ms: self.last_activity_ms,
            create_time_ms: self.record.create_time_ms,
        }
    }
}

impl Partition {
    /// Loads a conversation if it exists; returns whether it does.
    fn load_conversation(&mut self, id: &str) -> Result<bool> {
        if self.conversations.map.contains_key(id) {
            return Ok(true);
        }
        match ConversationState::load(&self.store, id)? {
            Some(state) => {
                self.conversations.map.insert(id.to_owned(), state);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn conversation(&mut self, id: &str) -> Result<&mut ConversationState> {
        if !self.load_conversation(id)? {
            return Err(Error::ConversationNotFound(id.to_owned()));
        }
        self.conversations.map.get_mut(id).ok_or_else(|| Error::ConversationNotFound(id.to_owned()))
    }

    /// Queues a durable change for the members' update logs.
    fn publish(&mut self, recipients: Vec<String>, event: LoggedEvent, record: OutboxEvent) {
        self.batch.outbox.push(OutboxItem { conversation_id: event.conversation_id().to_owned(), event: Some(record) });
        self.batch.outbox_items.push(UpdateItem { user_ids: recipients, event: Arc::new(event) });
    }

    fn publish_changed(&mut self, id: &str, removed: Vec<String>) {
        let Some(state) = self.conversations.map.get(id) else { return };
        let mut recipients = state.member_ids();
        recipients.extend(removed.iter().cloned());
        let event = LoggedEvent::Changed {
            conversation: Arc::new(state.snapshot(None)),
            removed_user_ids: removed.clone().into(),
        };
        self.publish(recipients, event, OutboxEvent::Changed(ChangedEvent { removed_user_ids: removed }));
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
        let viewer = Viewer { user_id: caller.user_id.clone(), hide_read_receipts: false };
        if self.load_conversation(id)? {
            let state = self.conversation(id)?;
            let allowed = match &spec {
                NewConversation::Direct { .. } => state.member(&caller.user_id).is_some(),
                NewConversation::Group { .. } => state.record.creator == caller.user_id,
            };
            if !allowed {
                return Err(Error::FailedPrecondition(format!("conversation {id} already exists")));
            }
            return Ok(CreateConversationResponse {
                conversation: Some(state.snapshot(Some(&viewer))),
                created: false,
            });
        }
        let now = now_ms();
        let (kind, title, members) = match spec {
            NewConversation::Direct { peer_user_id } => {
                let mut members = vec![caller.user_id.clone(), peer_user_id];
                members.sort();
                (
                    ConversationKind::Direct,
                    String::new(),
                    members.into_iter().map(|u| (u, MemberRole::Member)).collect(),
                )
            }
            NewConversation::Group { title, member_ids } => {
                let mut members: Vec<(String, MemberRole)> = vec![(caller.user_id.clone(), MemberRole::Admin)];
                let mut seen = HashSet::from([caller.user_id.clone()]);
                for user in member_ids {
                    if seen.insert(user.clone()) {
                        members.push((user, MemberRole::Member));
                    }
                }
                if members.len() > self.limits.max_group_members {
                    return Err(Error::GroupFull { max: self.limits.max_group_members });
                }
                (ConversationKind::Group, title, members)
            }
        };
        let record = ConversationRecord {
            id: id.to_owned(),
            kind: kind as i32,
            title,
            create_time_ms: now,
            members: members
                .into_iter()
                .map(|(user_id, role)| MemberRecord { user_id, role: role as i32, joined_after_seq: 0 })
                .collect(),
            creator: caller.user_id.clone(),
            change_time_ms: now,
        };
        self.batch.writes.put_conversation(&record);
        let state = ConversationState {
            record,
            last_seq: 0,
            published_seq: 0,
            last_activity_ms: now,
            last_message: None,
            receipts: HashMap::new(),
            dedup: Some(DedupWindow::default()),
            typing: HashMap::new(),
        };
        let snapshot = state.snapshot(Some(&viewer));
        self.conversations.map.insert(id.to_owned(), state);
        self.publish_changed(id, Vec::new());
        Ok(CreateConversationResponse { conversation: Some(snapshot), created: true })
    }

    pub(super) fn get_conversation(&mut self, viewer: &Viewer, id: &str) -> Result<Conversation> {
        let state = self.conversation(id)?;
        state.require_member(&viewer.user_id)?;
        Ok(state.snapshot(Some(viewer)))
    }

    pub(super) fn change_membership(
        &mut self,
        caller: &Caller,
        id: &str,
        change: MembershipChange,
    ) -> Result<Conversation> {
        let max_members = self.limits.max_group_members;
        let viewer = Viewer { user_id: caller.user_id.clone(), hide_read_receipts: false };
        let state = self.conversation(id)?;
        let me = state.require_member(&caller.user_id)?.clone();
        if !state.is_group() {
            return Err(Error::FailedPrecondition("a direct conversation's members and title cannot change".into()));
        }
        let is_admin = me.role == MemberRole::Admin as i32;
        let leaving = matches!(&change, MembershipChange::Remove(user) if *user == caller.user_id);
        if !is_admin && !leaving {
            return Err(Error::PermissionDenied("only group admins may do this".into()));
        }
        let mut removed = Vec::new();
        match change {
            MembershipChange::Add(users) => {
                let new: Vec<String> = users
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|u| state.member(u).is_none())
                    .collect();
                if new.is_empty() {
                    return Ok(state.snapshot(Some(&viewer)));
                }
                if state.record.members.len() + new.len() > max_members {
                    return Err(Error::GroupFull { max: max_members });
                }
                let joined_after_seq = state.last_seq;
                state.record.members.extend(new.into_iter().map(|user_id| MemberRecord {
                    user_id,
                    role: MemberRole::Member as i32,
                    joined_after_seq,
                }));
            }
            MembershipChange::Remove(user) => {
                if state.member(&user).is_none() {
                    return Err(Error::invalid("user_id", format!("{user} is not a member")));
                }
                state.record.members.retain(|m| m.user_id != user);
                state.receipts.remove(&user);
                state.typing.remove(&user);
                // A group never stays without an admin: promote the longest member.
                if !state.record.members.iter().any(|m| m.role == MemberRole::Admin as i32)
                    && let Some(first) = state.record.members.first_mut()
                {
                    first.role = MemberRole::Admin as i32;
                }
                removed.push(user);
            }
            MembershipChange::Title(title) => state.record.title = title,
        }
        let now = now_ms();
        state.record.change_time_ms = now;
        state.last_activity_ms = state.last_activity_ms.max(now);
        let snapshot = state.snapshot(Some(&viewer));
        let record = state.record.clone();
        self.batch.writes.put_conversation(&record);
        self.publish_changed(id, removed);
        Ok(snapshot)
    }

    fn ensure_dedup(&mut self, id: &str) -> Result<()> {
        let window = self.limits.dedup_window;
        let Some(state) = self.conversations.map.get(id) else { return Ok(()) };
        if state.dedup.is_some() {
            return Ok(());
        }
        let tail = self.store.messages(id, 1, state.last_seq, window, true)?;
        let mut dedup = DedupWindow::default();
        for message in &tail {
            dedup.remember(window, message);
        }
        if let Some(state) = self.conversations.map.get_mut(id) {
            state.dedup = Some(dedup);
        }
        Ok(())
    }

    pub(super) fn send(&mut self, caller: &Caller, request: SendMessageRequest) -> Result<SendMessageResponse> {
        let id = request.conversation_id.clone();
        self.conversation(&id)?.require_member(&caller.user_id)?;
        self.ensure_dedup(&id)?;
        let window = self.limits.dedup_window;
        let state = self.conversation(&id)?;
        let dedup_key = (caller.user_id.clone(), request.client_message_id.clone());
        if let Some((seq, server_time_ms)) = state.dedup.as_ref().and_then(|d| d.seen.get(&dedup_key)) {
            return Ok(SendMessageResponse { seq: *seq, server_time_ms: *server_time_ms, duplicate: true });
        }
        if request.reply_to_seq > state.last_seq {
            return Err(Error::invalid(
                "reply_to_seq",
                format!("no message {} in this conversation", request.reply_to_seq),
            ));
        }
        let seq = state.last_seq + 1;
        // Server time never goes backwards within a conversation.
        let server_time_ms = now_ms().max(state.last_activity_ms);
        let message = Arc::new(Message {
            conversation_id: id.clone(),
            seq,
            sender_id: caller.user_id.clone(),
            sender_device_id: caller.device_id.clone(),
            client_message_id: request.client_message_id,
            server_time_ms,
            reply_to_seq: request.reply_to_seq,
            content: request.content.map(|c| match c {
                imsg_proto::v1::send_message_request::Content::Text(text) => Content::Text(text),
            }),
        });
        state.last_seq = seq;
        state.last_activity_ms = server_time_ms;
        state.last_message = Some(message.clone());
        if let Some(dedup) = state.dedup.as_mut() {
            dedup.remember(window, &message);
        }
        // Sending implies having read and received everything before.
        let own = state.receipts.entry(caller.user_id.clone()).or_default();
        own.delivered_seq = seq;
        own.read_seq = seq;
        let was_typing = state.typing.remove(&caller.user_id).is_some();
        let members = state.member_ids();
        self.conversations.dirty_receipts.insert((id.clone(), caller.user_id.clone()));
        self.batch.writes.put_message(&message);
        self.defer(Deferred::MessagePublished { conversation_id: id.clone(), seq });
        if was_typing {
            let others: Vec<String> = members.iter().filter(|u| **u != caller.user_id).cloned().collect();
            self.push_ephemeral_to(
                &others,
                Ephemeral::Typing { conversation_id: id.clone(), user_id: caller.user_id.clone(), active: false },
            );
        }
        self.publish(members, LoggedEvent::Message(message), OutboxEvent::MessageSeq(seq));
        Ok(SendMessageResponse { seq, server_time_ms, duplicate: false })
    }

    pub(super) fn list_messages(
        &mut self,
        caller: &Caller,
        request: &ListMessagesRequest,
    ) -> Result<ListMessagesResponse> {
        let page_size = validate::page_size(request.page_size)?;
        let token = validate::page_token(&request.page_token)?;
        let state = self.conversation(&request.conversation_id)?;
        let first_visible = state.require_member(&caller.user_id)?.joined_after_seq + 1;
        // Newer messages are not in sled yet, and not acknowledged either.
        let last_seq = state.published_seq;
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
        Ok(ListMessagesResponse { messages, next_page_token: next.map(|n| n.to_string()).unwrap_or_default() })
    }

    pub(super) fn message_published(&mut self, id: &str, seq: u64) {
        if let Some(state) = self.conversations.map.get_mut(id) {
            state.published_seq = state.published_seq.max(seq);
        }
    }

    pub(super) fn typing(&mut self, caller: &Caller, id: &str, active: bool) -> Result<()> {
        let ttl = self.limits.typing_ttl;
        self.conversation(id)?.require_member(&caller.user_id)?;
        if active {
            self.conversations.typing_in.insert(id.to_owned());
        }
        let state = self.conversation(id)?;
        let changed = if active {
            state.typing.insert(caller.user_id.clone(), Instant::now() + ttl).is_none()
        } else {
            state.typing.remove(&caller.user_id).is_some()
        };
        if changed {
            let others: Vec<String> = state.member_ids().into_iter().filter(|u| *u != caller.user_id).collect();
            self.push_ephemeral_to(
                &others,
                Ephemeral::Typing { conversation_id: id.to_owned(), user_id: caller.user_id.clone(), active },
            );
        }
        Ok(())
    }

    /// Typing that was not renewed within the TTL stops, on the server.
    pub(super) fn expire_typing(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        let conversations = &mut self.conversations;
        conversations.typing_in.retain(|id| {
            let Some(state) = conversations.map.get_mut(id) else { return false };
            state.typing.retain(|user, until| {
                let keep = *until > now;
                if !keep {
                    expired.push((
                        id.clone(),
                        user.clone(),
                        state.record.members.iter().map(|m| m.user_id.clone()).collect::<Vec<_>>(),
                    ));
                }
                keep
            });
            !state.typing.is_empty()
        });
        for (conversation_id, user_id, members) in expired {
            let others: Vec<String> = members.into_iter().filter(|u| *u != user_id).collect();
            self.push_ephemeral_to(&others, Ephemeral::Typing { conversation_id, user_id, active: false });
        }
    }

    /// Moves a member's watermarks forward (never back): `read <= delivered
    /// <= last seq`. `hide_read` is the reader's setting, supplied by their
    /// user partition.
    pub(super) fn mark(&mut self, caller: &Caller, id: &str, seq: u64, kind: MarkKind, hide_read: bool) -> Result<()> {
        let state = self.conversation(id)?;
        state.require_member(&caller.user_id)?;
        if seq > state.last_seq {
            return Err(Error::invalid("seq", format!("beyond the last message ({})", state.last_seq)));
        }
        let receipt = state.receipts.entry(caller.user_id.clone()).or_default();
        let before = *receipt;
        receipt.delivered_seq = receipt.delivered_seq.max(seq);
        if kind == MarkKind::Read {
            receipt.read_seq = receipt.read_seq.max(seq);
        }
        receipt.hide_read = hide_read;
        let after = *receipt;
        if after == before {
            return Ok(());
        }
        let members = state.member_ids();
        self.conversations.dirty_receipts.remove(&(id.to_owned(), caller.user_id.clone()));
        self.batch.writes.put_receipt(id, &caller.user_id, &after);
        if after.delivered_seq == before.delivered_seq && after.read_seq == before.read_seq {
            return Ok(()); // only the setting changed: nothing to tell
        }
        let receipt = ReceiptEvent {
            user_id: caller.user_id.clone(),
            delivered_seq: after.delivered_seq,
            read_seq: after.read_seq,
            hide_read,
        };
        let event = LoggedEvent::Receipt {
            conversation_id: id.to_owned(),
            user_id: caller.user_id.clone(),
            delivered_seq: after.delivered_seq,
            read_seq: after.read_seq,
            hide_read,
        };
        self.publish(members, event, OutboxEvent::Receipt(receipt));
        Ok(())
    }

    /// Writes receipts that moved in memory only (a sender's own).
    pub(super) fn checkpoint_receipts(&mut self) {
        for (id, user) in std::mem::take(&mut self.conversations.dirty_receipts) {
            if let Some(receipt) = self.conversations.map.get(&id).and_then(|s| s.receipts.get(&user)) {
                self.batch.writes.put_receipt(&id, &user, receipt);
            }
        }
    }

    pub(super) fn hide_read_changed(&mut self, user: &str, hide_read: bool, ids: &[String]) {
        for id in ids {
            let Ok(state) = self.conversation(id) else { continue };
            if state.member(user).is_none() {
                continue;
            }
            let receipt = state.receipts.entry(user.to_owned()).or_default();
            receipt.hide_read = hide_read;
            let receipt = *receipt;
            self.batch.writes.put_receipt(id, user, &receipt);
        }
    }

    pub(super) fn summaries(&mut self, viewer: &Viewer, ids: &[String]) -> Result<Vec<ConversationSummary>> {
        let mut summaries = Vec::with_capacity(ids.len());
        for id in ids {
            if !self.load_conversation(id)? {
                continue;
            }
            let state = self.conversation(id)?;
            let Some(me) = state.member(&viewer.user_id) else { continue };
            let seen = state.receipts.get(&viewer.user_id).map_or(0, |r| r.read_seq).max(me.joined_after_seq);
            let last_message =
                state.last_message.as_ref().filter(|m| m.seq > me.joined_after_seq).map(|m| (**m).clone());
            summaries.push(ConversationSummary {
                conversation: Some(state.snapshot(Some(viewer))),
                unread_count: state.last_seq.saturating_sub(seen),
                last_message,
            });
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
        Ok(messages)
    }

    pub(super) fn snapshots(&mut self, ids: &[String]) -> Result<Vec<Conversation>> {
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
            let Ok(state) = self.conversation(id) else { continue };
            if state.member(&presence.user_id).is_none() {
                continue;
            }
            audience.extend(state.record.members.iter().map(|m| m.user_id.clone()).filter(|u| *u != presence.user_id));
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
                if !self.load_conversation(&id)? {
                    continue;
                }
                let members = self.conversation(&id)?.member_ids();
                match item.event {
                    Some(OutboxEvent::MessageSeq(seq)) => {
                        if let Some(message) = self.store.message(&id, seq)? {
                            items.push(UpdateItem {
                                user_ids: members,
                                event: Arc::new(LoggedEvent::Message(Arc::new(message))),
                            });
                        }
                    }
                    Some(OutboxEvent::Receipt(r)) => items.push(UpdateItem {
                        user_ids: members,
                        event: Arc::new(LoggedEvent::Receipt {
                            conversation_id: id,
                            user_id: r.user_id,
                            delivered_seq: r.delivered_seq,
                            read_seq: r.read_seq,
                            hide_read: r.hide_read,
                        }),
                    }),
                    Some(OutboxEvent::Changed(changed)) => {
                        let state = self.conversation(&id)?;
                        let mut recipients = members;
                        recipients.extend(changed.removed_user_ids.iter().cloned());
                        items.push(UpdateItem {
                            user_ids: recipients,
                            event: Arc::new(LoggedEvent::Changed {
                                conversation: Arc::new(state.snapshot(None)),
                                removed_user_ids: changed.removed_user_ids.into(),
                            }),
                        });
                    }
                    None => {}
                }
            }
            tracing::info!(partition = self.id, batch, "re-sending unconfirmed outbox batch");
            self.conversations.outbox_unconfirmed.insert(batch);
            self.defer(Deferred::Fanout { batch, items });
        }
        Ok(())
    }
}
