//! The user role of a partition: settings, inbox membership, the per-user
//! update log (invariant 4), live device sessions and presence.
//!
//! The update log of all users of a partition is one sequence of batches;
//! an entry's cursor is its position in that sequence, so a user's cursors
//! increase monotonically (with gaps where other users' entries sit). Which
//! cursors belong to which user is an in-memory index, rebuilt from the
//! retained batches at start.

use std::collections::{BTreeSet, HashMap, HashSet};

use imsg_proto::v1::{
    Event, OpenStreamResponse, Presence, PresenceUpdate, Ready, Settings, TypingUpdate, UpdateSettingsRequest, event,
    open_stream_response,
};
use tokio::sync::{mpsc::error::TrySendError, oneshot};

use super::{Command, Deferred, OpenStep, Partition, SessionHandle, UserContext};
use crate::{
    core::{
        presence::{self, receives_presence},
        update_log::{Resume, Retention, UserLog},
    },
    error::{Error, Result},
    events::{Ephemeral, LoggedEvent, UpdateItem},
    metrics::METRICS,
    now_ms,
    storage::{
        NotifyRecord, Owed, PartitionMeta, PartitionStore, PushTargetRecord, RelationRecord, SettingsRecord,
        UpdateEntry, UpdateKind,
    },
};

#[derive(Default)]
pub(super) struct UserState {
    pub(super) settings: SettingsRecord,
    pub(super) conversations: BTreeSet<String>,
    /// Conversations the user has not accepted (message requests): they
    /// show the user's presence to nobody and push nothing.
    pub(super) requests: foldhash::HashSet<String>,
    /// How the user stands toward others (`core::privacy`).
    pub(super) relations: foldhash::HashMap<String, RelationRecord>,
    /// Push targets by device (`core::notify`).
    pub(super) push_targets: HashMap<String, PushTargetRecord>,
    /// Notification settings by conversation.
    pub(super) notify: HashMap<String, NotifyRecord>,
    log: UserLog,
    pub(super) sessions: Vec<SessionHandle>,
    last_active_ms: i64,
}

impl UserState {
    /// Whether the user and `other` block each other either way: nothing
    /// personal passes between them.
    pub(super) fn separated_from(&self, other: &str) -> bool {
        self.relations.get(other).is_some_and(RelationRecord::separated)
    }
}

/// The users of one partition.
#[derive(Default)]
pub(super) struct Users {
    pub(super) map: foldhash::HashMap<String, UserState>,
    pub(super) retention: Retention,
    /// Update-log batches written since the last compaction, oldest first
    /// (`partition::compaction`).
    pub(super) uncompacted: std::collections::VecDeque<(u64, Vec<crate::storage::UpdateEntry>)>,
    /// Entries up to this cursor are in sled (published); newer ones are
    /// only in memory and reach live sessions when published.
    published: u64,
    /// Number of the next push-outbox row.
    pub(super) next_push: u64,
}

impl Users {
    /// Device sessions live on this partition.
    pub(super) fn live_sessions(&self) -> usize {
        self.map.values().map(|s| s.sessions.len()).sum()
    }

    pub(super) fn load(store: &PartitionStore, meta: &PartitionMeta) -> Result<Self> {
        let mut users = Self { published: meta.next_cursor.saturating_sub(1), ..Self::default() };
        for (user, settings) in store.all_settings()? {
            users.map.entry(user).or_default().settings = settings;
        }
        for (user, conversation, request) in store.all_inbox_entries()? {
            let state = users.map.entry(user).or_default();
            if request {
                state.requests.insert(conversation.clone());
            }
            state.conversations.insert(conversation);
        }
        for (user, other, relation) in store.all_relations()? {
            users.map.entry(user).or_default().relations.insert(other, relation);
        }
        for (user, device, target) in store.all_push_targets()? {
            users.map.entry(user).or_default().push_targets.insert(device, target);
        }
        for (user, conversation, record) in store.all_notify_settings()? {
            users.map.entry(user).or_default().notify.insert(conversation, record);
        }
        for row in store.update_batches() {
            let row = row?;
            for entry in &row.record.entries {
                let state = users.map.entry(entry.user_id.clone()).or_default();
                state.log.record(entry.cursor);
                if let Some(UpdateKind::MessageSeq(seq)) = entry.kind {
                    state.log.accept_message(&entry.conversation_id, seq);
                }
            }
            users.retention.note_batch(row.first, row.record.entries.len(), row.compacted);
        }
        Ok(users)
    }

    pub(super) fn published_cursor(&mut self, cursor: u64) {
        self.published = self.published.max(cursor);
    }

    pub(super) fn close_all_sessions(&mut self, reason: &str) {
        for state in self.map.values_mut() {
            for session in state.sessions.drain(..) {
                close(&session, reason);
            }
        }
    }
}

/// Drops a session, leaving the reason for its stream to report.
fn close(session: &SessionHandle, reason: &str) {
    *session.close_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
}

/// Queues a frame on a session; false when the session is gone or, too
/// slow to keep up, dropped.
fn deliver(session: &SessionHandle, frame: Box<OpenStreamResponse>) -> bool {
    match session.frames.try_send(frame) {
        Ok(()) => {
            METRICS.deliveries.inc();
            true
        }
        Err(TrySendError::Full(_)) => {
            METRICS.slow_consumer_drops.inc();
            close(session, "slow consumer: too many undelivered events");
            false
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

/// The user and device that sent a new message, when `frame` carries one
/// (live only: replay sends a device its own messages too, as it may have
/// lost them).
fn sent_by(frame: &OpenStreamResponse) -> Option<(&str, &str)> {
    match &frame.frame {
        Some(open_stream_response::Frame::Event(Event { kind: Some(event::Kind::Message(message)), .. })) => {
            Some((message.sender_id.as_str(), message.sender_device_id.as_str()))
        }
        _ => None,
    }
}

fn event_frame(cursor: u64, kind: event::Kind) -> OpenStreamResponse {
    OpenStreamResponse { frame: Some(open_stream_response::Frame::Event(Event { cursor, kind: Some(kind) })) }
}

impl Partition {
    /// Appends fanned-out events to the recipients' update logs; they are
    /// pushed live and confirmed to the source once durable.
    pub(super) fn apply_updates(
        &mut self,
        items: Vec<UpdateItem>,
        after: u64,
        owed: Vec<Owed>,
        done: oneshot::Sender<()>,
    ) {
        // Nothing from here is shown before the source's batch is durable
        // (every later reply waits behind it anyway); the writer's round
        // waits for this batch (paid when it is handed over).
        self.last_generation = self.last_generation.max(after);
        self.batch.owed.extend(owed);
        let mut to_notify = Vec::new();
        for item in items {
            for user in &item.user_ids {
                // Looked up by `&str` first: a member's state nearly always
                // exists, and `entry` would copy the key for every member.
                if !self.users.map.contains_key(user) {
                    self.users.map.insert(user.clone(), UserState::default());
                }
                let state = self.users.map.get_mut(user).expect("inserted above");
                let conversation_id = item.event.conversation_id().to_owned();
                if let LoggedEvent::Message(message) = &*item.event
                    && !state.log.accept_message(&conversation_id, message.seq)
                {
                    continue; // a re-sent batch: already logged
                }
                // A separated pair sees no read receipts of each other,
                // exactly as if they were hidden.
                let hides_read = state.settings.hide_read_receipts
                    || matches!(&*item.event, LoggedEvent::Receipt { user_id, .. } if state.separated_from(user_id));
                let (kind, frame_kind) = item.event.entry_for(user, hides_read);
                // Inbox membership (and whether it is a request) follows
                // membership changes.
                if let UpdateKind::ConversationRemoved(removed) = kind {
                    if removed {
                        state.requests.remove(&conversation_id);
                        if state.conversations.remove(&conversation_id) {
                            self.batch.writes.remove_inbox_entry(user, &conversation_id);
                        }
                    } else {
                        let request = item.event.is_request_for(user);
                        let was_request = state.requests.contains(&conversation_id);
                        if request {
                            state.requests.insert(conversation_id.clone());
                        } else {
                            state.requests.remove(&conversation_id);
                        }
                        if state.conversations.insert(conversation_id.clone()) || request != was_request {
                            self.batch.writes.put_inbox_entry(user, &conversation_id, request);
                        }
                    }
                }
                // Only a user with push targets may be notified.
                if let LoggedEvent::Message(message) = &*item.event
                    && !state.push_targets.is_empty()
                {
                    to_notify.push((user.clone(), message.clone()));
                }
                let cursor = self.meta.next_cursor;
                self.meta.next_cursor += 1;
                state.log.record(cursor);
                self.batch.updates.push(UpdateEntry {
                    cursor,
                    user_id: user.clone(),
                    conversation_id,
                    kind: Some(kind),
                });
                self.batch.deferred.push(Deferred::Push {
                    user_id: user.clone(),
                    cursor,
                    frame: Box::new(event_frame(cursor, frame_kind)),
                });
            }
        }
        for (user, message) in to_notify {
            self.notify(&user, &message);
        }
        self.defer(Deferred::Done(done));
    }

    /// Writes a frame to every live session of a user, except a new
    /// message to the device that sent it (it has the acknowledgement; the
    /// sender's other devices get it). A session whose queue is full is a
    /// slow consumer: it is dropped with a reason rather than allowed to
    /// grow memory (invariant 6).
    ///
    /// The last receiving session gets `frame` itself, the others a copy:
    /// a frame carries the whole message, and a group message makes one
    /// per member (nearly always one device each), so copying it for every
    /// session doubled the copies of a group's fan-out.
    pub(super) fn push_to_sessions(&mut self, user: &str, frame: Box<OpenStreamResponse>) {
        let Some(state) = self.users.map.get_mut(user) else { return };
        if state.sessions.is_empty() {
            return;
        }
        // Owned: the frame moves out below. Only a user's own new message
        // has one (to their other devices), so this rarely allocates.
        let sending_device = sent_by(&frame).filter(|(sender, _)| *sender == user).map(|(_, device)| device.to_owned());
        let echoes = |session: &SessionHandle| sending_device.as_deref() == Some(session.device_id.as_str());
        let mut receivers_left = state.sessions.iter().filter(|session| !echoes(session)).count();
        let before = state.sessions.len();
        let mut frame = Some(frame);
        state.sessions.retain(|session| {
            if echoes(session) {
                return true; // no echo
            }
            receivers_left -= 1;
            let copy = if receivers_left == 0 { frame.take() } else { frame.clone() };
            copy.is_none_or(|copy| deliver(session, copy))
        });
        if before > 0 && state.sessions.is_empty() {
            state.last_active_ms = now_ms();
            self.presence_changed(user);
        }
    }

    pub(super) fn push_ephemeral(&mut self, users: &[String], event: &Ephemeral) {
        for user in users {
            let Some(state) = self.users.map.get(user) else { continue };
            if state.sessions.is_empty() || state.separated_from(event.user_id()) {
                continue;
            }
            let kind = match event {
                Ephemeral::Typing { conversation_id, user_id, active } => event::Kind::Typing(TypingUpdate {
                    conversation_id: conversation_id.clone(),
                    user_id: user_id.clone(),
                    active: *active,
                }),
                Ephemeral::Presence(presence) => {
                    if !receives_presence(&state.settings) {
                        continue;
                    }
                    event::Kind::Presence(PresenceUpdate { presence: Some(presence.clone()) })
                }
            };
            self.push_to_sessions(user, Box::new(event_frame(0, kind)));
        }
    }

    /// One step of opening a session after `after_cursor`.
    pub(super) fn open_session(
        &mut self,
        session: SessionHandle,
        after_cursor: u64,
        replayed: u64,
        page: usize,
    ) -> Result<OpenStep> {
        let head = self.meta.next_cursor - 1;
        let max_sessions = self.limits.max_sessions_per_user;
        let state = self.users.map.entry(session.user_id.clone()).or_default();
        if state.settings.suspended {
            return Err(Error::PermissionDenied("account suspended".into()));
        }
        match state.log.resume(after_cursor, head, self.users.published, page) {
            Resume::Resync { cursor } => return Ok(OpenStep::Resync { cursor }),
            Resume::Replay(cursors) => {
                let first = cursors[0];
                let mut wanted: HashSet<u64> = cursors.into_iter().collect();
                let mut entries = Vec::with_capacity(wanted.len());
                for row in self.store.update_batches_from(first) {
                    // Each cursor once: a batch being compacted can be read
                    // twice (`PartitionStore::update_batches_from`).
                    let row = row?;
                    entries.extend(
                        row.record
                            .entries
                            .into_iter()
                            .filter(|e| e.user_id == session.user_id && wanted.remove(&e.cursor)),
                    );
                    if wanted.is_empty() {
                        break;
                    }
                }
                return Ok(OpenStep::Page { entries });
            }
            Resume::CaughtUp => {}
        }
        // The stream went away while replaying: do not register a ghost.
        if session.frames.is_closed() {
            return Err(Error::Unavailable("session closed while opening".into()));
        }
        if state.sessions.len() >= max_sessions {
            return Err(Error::TooManySessions { max: max_sessions });
        }
        let ready = OpenStreamResponse {
            frame: Some(open_stream_response::Frame::Ready(Ready { cursor: after_cursor, replayed })),
        };
        session.frames.try_send(Box::new(ready)).map_err(|_| Error::SessionQueueFull)?;
        let first_session = state.sessions.is_empty();
        state.sessions.push(session.clone());
        state.last_active_ms = now_ms();
        if first_session {
            self.presence_changed(&session.user_id);
        }
        Ok(OpenStep::Live)
    }

    pub(super) fn close_session(&mut self, user: &str, session_id: u64, reason: Option<&str>) {
        let Some(state) = self.users.map.get_mut(user) else { return };
        let before = state.sessions.len();
        state.sessions.retain(|s| {
            let keep = s.id != session_id;
            if !keep && let Some(reason) = reason {
                close(s, reason);
            }
            keep
        });
        if before > 0 && state.sessions.is_empty() {
            state.last_active_ms = now_ms();
            self.presence_changed(user);
        }
    }

    /// Closes every live session of a user, telling each device why.
    pub(super) fn close_user_sessions(&mut self, user: &str, reason: &str) {
        let Some(state) = self.users.map.get_mut(user) else { return };
        if state.sessions.is_empty() {
            return;
        }
        for session in state.sessions.drain(..) {
            close(&session, reason);
        }
        state.last_active_ms = now_ms();
        self.presence_changed(user);
    }

    /// A gateway's lease ran out: its sessions are gone.
    pub(super) fn drop_gateway(&mut self, gateway_id: &str) {
        let mut went_offline = Vec::new();
        for (user, state) in &mut self.users.map {
            let before = state.sessions.len();
            state.sessions.retain(|s| {
                let keep = s.gateway_id != gateway_id;
                if !keep {
                    close(s, "gateway lease expired");
                }
                keep
            });
            if before > 0 && state.sessions.is_empty() {
                state.last_active_ms = now_ms();
                went_offline.push(user.clone());
            }
        }
        for user in went_offline {
            self.presence_changed(&user);
        }
    }

    fn visible_presence(&self, user: &str) -> Presence {
        match self.users.map.get(user) {
            Some(s) => presence::visible_presence(user, &s.settings, !s.sessions.is_empty(), s.last_active_ms),
            None => presence::visible_presence(user, &SettingsRecord::default(), false, 0),
        }
    }

    /// Tells the user's contacts, through the partitions of the user's
    /// conversations, what they may now see of the user's presence.
    pub(super) fn presence_changed(&mut self, user: &str) {
        let Some(state) = self.users.map.get(user) else { return };
        let presence = self.visible_presence(user);
        for (partition, conversation_ids) in self.router.group_by_partition(&state.conversations) {
            self.router.internal(partition, Command::PresenceFanout { presence: presence.clone(), conversation_ids });
        }
    }

    pub(super) fn user_context(&mut self, user: &str) -> UserContext {
        let state = self.users.map.get(user);
        UserContext {
            settings: state.map(|s| SettingsRecord::view(&s.settings)).unwrap_or_default(),
            conversation_ids: state.map(|s| s.conversations.iter().cloned().collect()).unwrap_or_default(),
            separated: state
                .map(|s| s.relations.iter().filter(|(_, r)| r.separated()).map(|(u, _)| u.clone()).collect())
                .unwrap_or_default(),
            muted: state
                .map(|s| {
                    s.notify.iter().filter(|(_, n)| n.muted_until_ms != 0).map(|(c, n)| (c.clone(), n.muted_until_ms))
                })
                .into_iter()
                .flatten()
                .collect(),
        }
    }

    pub(super) fn update_settings(&mut self, user: &str, request: &UpdateSettingsRequest) -> Result<Settings> {
        let state = self.users.map.entry(user.to_owned()).or_default();
        let before = state.settings;
        if let Some(hide) = request.hide_read_receipts {
            state.settings.hide_read_receipts = hide;
        }
        if let Some(hide) = request.hide_activity_status {
            state.settings.hide_activity_status = hide;
        }
        if let Some(until) = request.notifications_muted_until_ms {
            state.settings.notifications_muted_until_ms = until;
        }
        if let Some(hide) = request.hide_push_previews {
            state.settings.hide_push_previews = hide;
        }
        if let Some(who) = request.who_may_message {
            state.settings.who_may_message = who;
        }
        let after = state.settings;
        if after == before {
            return Ok(SettingsRecord::view(&after));
        }
        self.batch.writes.put_settings(user, &after);
        if after.hide_read_receipts != before.hide_read_receipts {
            for (partition, conversation_ids) in self.router.group_by_partition(&state.conversations) {
                self.router.internal(
                    partition,
                    Command::HideReadChanged {
                        user_id: user.to_owned(),
                        hide_read: after.hide_read_receipts,
                        conversation_ids,
                    },
                );
            }
        }
        if after.hide_activity_status != before.hide_activity_status {
            self.presence_changed(user);
        }
        Ok(SettingsRecord::view(&after))
    }

    /// Presence of this partition's `users` for `viewer`, whose
    /// conversations are `viewer_conversations`: only users who share one
    /// (that they accepted), do not hide their activity, and neither block
    /// nor are blocked by the viewer.
    pub(super) fn presence_query(
        &mut self,
        viewer: &str,
        users: &[String],
        viewer_conversations: &[String],
    ) -> Vec<Presence> {
        let shared: HashSet<&str> = viewer_conversations.iter().map(String::as_str).collect();
        users
            .iter()
            .filter(|user| {
                self.users.map.get(*user).is_some_and(|s| {
                    let accepted = s.conversations.iter().filter(|c| !s.requests.contains(*c));
                    !s.separated_from(viewer) && presence::may_query(&s.settings, accepted, &shared)
                })
            })
            .map(|user| self.visible_presence(user))
            .collect()
    }

    /// Drops the oldest update-log rows beyond the retention limit. A
    /// user whose entries were dropped gets "resync required" for older
    /// cursors, never a silent gap.
    pub(super) fn trim_update_log(&mut self) {
        while let Some(oldest) =
            self.users.retention.next_to_trim(self.limits.update_log_retention, self.users.published)
        {
            let row = match self.store.update_batches_from(oldest.first).next() {
                Some(Ok(row)) if row.first == oldest.first && row.compacted == oldest.compacted => row,
                // Its compaction is written but not applied yet: the next
                // tick trims the compacted row.
                Some(Ok(row)) if row.first == oldest.first && oldest.compacted => break,
                _ => {
                    tracing::error!(partition = self.id, first = oldest.first, "update batch missing while trimming");
                    break;
                }
            };
            self.users.retention.trimmed_front();
            if self.users.uncompacted.front().is_some_and(|(first, _)| *first == oldest.first) {
                // Gone before its compaction: not to be written again.
                self.users.uncompacted.pop_front();
            }
            for entry in &row.record.entries {
                if let Some(state) = self.users.map.get_mut(&entry.user_id) {
                    state.log.trimmed(entry.cursor);
                }
            }
            self.batch.writes.remove_row(row.key);
            // The newest cursor may now live only in the meta row.
            self.batch.meta_dirty = true;
        }
    }
}
