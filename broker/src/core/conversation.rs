//! A conversation's state and how each member sees it.
//!
//! The record (members, roles, title) is durable; the rest is derived when
//! the conversation loads: the last seq is its last message key, the dedup
//! window the tail of its messages (see `storage`).

use std::{collections::HashMap, sync::Arc, time::Instant};

use imsg_proto::v1::{
    Conversation as ConversationView, ConversationKind, ConversationSummary, Folder, Member, Message,
};

use crate::{
    core::DedupWindow,
    error::{Error, Result},
    storage::{ConversationRecord, MemberRecord, ReceiptRecord, RequestState},
};

/// The caller's identity plus the settings that shape what they may see.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub user_id: String,
    pub hide_read_receipts: bool,
    /// Users the viewer blocks or is blocked by: none of their read
    /// receipts are shown (exactly as if they hid them).
    pub separated: Vec<String>,
}

impl Viewer {
    pub fn new(user_id: impl Into<String>) -> Self {
        Self { user_id: user_id.into(), hide_read_receipts: false, separated: Vec::new() }
    }

    /// Whether the viewer sees `member`'s read position here.
    fn sees_read_of(&self, member: &str, receipt: &ReceiptRecord, conversation: &Conversation) -> bool {
        !(self.hide_read_receipts
            || receipt.hide_read
            || self.separated.iter().any(|u| u == member)
            || conversation.is_request_for(member))
    }
}

/// One conversation, loaded.
#[derive(Debug)]
pub struct Conversation {
    pub(crate) record: ConversationRecord,
    pub(crate) last_seq: u64,
    /// Messages up to this seq are in storage (published): history reads
    /// stop here.
    pub(crate) published_seq: u64,
    pub(crate) last_activity_ms: i64,
    pub(crate) last_message: Option<Arc<Message>>,
    pub(crate) receipts: HashMap<String, ReceiptRecord>,
    /// Loaded on the first send after a start (`None` until then).
    pub(crate) dedup: Option<DedupWindow>,
    /// Who is typing, until when.
    pub(crate) typing: HashMap<String, Instant>,
}

impl Conversation {
    /// A conversation as storage holds it: its record, its newest message
    /// (if any) and its members' receipts.
    pub fn restore(
        record: ConversationRecord,
        last_message: Option<Message>,
        receipts: HashMap<String, ReceiptRecord>,
    ) -> Self {
        let last_seq = last_message.as_ref().map_or(0, |m| m.seq);
        let last_activity_ms =
            last_message.as_ref().map_or(record.change_time_ms, |m| m.server_time_ms.max(record.change_time_ms));
        Self {
            record,
            last_seq,
            published_seq: last_seq,
            last_activity_ms,
            last_message: last_message.map(Arc::new),
            receipts,
            dedup: None,
            typing: HashMap::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.record.id
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn published_seq(&self) -> u64 {
        self.published_seq
    }

    /// Storage has every message up to `seq` (the shell says so once the
    /// batch that wrote it is published).
    pub fn message_published(&mut self, seq: u64) {
        self.published_seq = self.published_seq.max(seq);
    }

    pub fn needs_dedup_window(&self) -> bool {
        self.dedup.is_none()
    }

    pub fn set_dedup_window(&mut self, window: DedupWindow) {
        self.dedup = Some(window);
    }

    pub fn member(&self, user: &str) -> Option<&MemberRecord> {
        self.record.members.iter().find(|m| m.user_id == user)
    }

    /// Only members read or write a conversation (invariant 5).
    pub fn require_member(&self, user: &str) -> Result<&MemberRecord> {
        self.member(user).ok_or_else(|| Error::NotMember(self.record.id.clone()))
    }

    /// `stored`, the message `seq` as storage holds it, if `user` may see
    /// it: a member, joined before it was sent. Anything else gets the same
    /// answer as a message that does not exist.
    pub fn visible_message<'m>(&self, user: &str, seq: u64, stored: Option<&'m Message>) -> Result<&'m Message> {
        let joined_after = self.require_member(user)?.joined_after_seq;
        match stored {
            Some(message) if seq > joined_after && seq <= self.last_seq && message.seq == seq => Ok(message),
            _ => Err(Error::MessageNotFound { conversation_id: self.record.id.clone(), seq }),
        }
    }

    /// Keeps the inbox line's copy of the newest message in step with a
    /// change to it (an edit must show, an unsent text must not).
    pub(crate) fn message_changed(&mut self, message: &Arc<Message>) {
        if self.last_message.as_ref().is_some_and(|last| last.seq == message.seq) {
            self.last_message = Some(message.clone());
        }
    }

    pub fn is_group(&self) -> bool {
        self.record.kind == ConversationKind::Group as i32
    }

    pub fn member_ids(&self) -> Vec<String> {
        self.record.members.iter().map(|m| m.user_id.clone()).collect()
    }

    /// Every member but `user`.
    pub fn others(&self, user: &str) -> Vec<String> {
        self.record.members.iter().map(|m| m.user_id.clone()).filter(|u| u != user).collect()
    }

    pub fn receipt(&self, user: &str) -> ReceiptRecord {
        self.receipts.get(user).copied().unwrap_or_default()
    }

    /// The conversation as `viewer` sees it; without a viewer (events) the
    /// watermarks are zero, since receipts travel as their own events. Read
    /// receipts are reciprocal: a viewer who hides theirs sees no one's, and
    /// nobody sees the read position of a member who hides theirs.
    pub fn snapshot(&self, viewer: Option<&Viewer>) -> ConversationView {
        let members = self
            .record
            .members
            .iter()
            .map(|m| {
                let receipt = self.receipt(&m.user_id);
                let (delivered_seq, read_seq) = match viewer {
                    None => (0, 0),
                    Some(v) if v.user_id == m.user_id => (receipt.delivered_seq, receipt.read_seq),
                    Some(v) if !v.sees_read_of(&m.user_id, &receipt, self) => (receipt.delivered_seq, 0),
                    Some(_) => (receipt.delivered_seq, receipt.read_seq),
                };
                Member {
                    user_id: m.user_id.clone(),
                    role: m.role,
                    delivered_seq,
                    read_seq,
                    joined_after_seq: m.joined_after_seq,
                    request_pending: m.request != RequestState::Accepted as i32,
                }
            })
            .collect();
        ConversationView {
            conversation_id: self.record.id.clone(),
            kind: self.record.kind,
            title: self.record.title.clone(),
            members,
            last_seq: self.last_seq,
            last_activity_ms: self.last_activity_ms,
            create_time_ms: self.record.create_time_ms,
        }
    }

    /// The inbox line of `viewer`; `None` if they are not a member or
    /// declined it. Unread counts start after what they read and after
    /// they joined; a message from before they joined is not shown.
    pub fn summary(&self, viewer: &Viewer) -> Option<ConversationSummary> {
        let me = self.member(&viewer.user_id)?;
        let folder = match RequestState::try_from(me.request) {
            Ok(RequestState::Declined) => return None,
            Ok(RequestState::Pending) => Folder::Requests,
            _ => Folder::Inbox,
        };
        let seen = self.receipt(&viewer.user_id).read_seq.max(me.joined_after_seq);
        let last_message = self.last_message.as_ref().filter(|m| m.seq > me.joined_after_seq).map(|m| (**m).clone());
        Some(ConversationSummary {
            conversation: Some(self.snapshot(Some(viewer))),
            unread_count: self.last_seq.saturating_sub(seen),
            last_message,
            folder: folder as i32,
            // The viewer's own setting, from their partition (the inbox
            // fills it in).
            muted_until_ms: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testing::*;

    #[test]
    fn outsiders_are_not_members_and_learn_nothing_from_the_refusal() {
        let conversation = group("alice", &["bob"]);
        let error = conversation.require_member("mallory").unwrap_err();
        assert!(matches!(error, Error::NotMember(_)));
        assert_eq!(conversation.others("alice"), vec!["bob".to_string()]);
    }

    #[test]
    fn a_restored_conversation_continues_from_its_last_message() {
        let record = group("alice", &["bob"]).record;
        let last = Message { seq: 7, server_time_ms: T0 + 50, conversation_id: "g_0001".into(), ..Message::default() };
        let conversation = Conversation::restore(record, Some(last), HashMap::new());
        assert_eq!((conversation.last_seq(), conversation.published_seq()), (7, 7));
        assert_eq!(conversation.last_activity_ms, T0 + 50);
        assert!(conversation.needs_dedup_window());
    }
}
