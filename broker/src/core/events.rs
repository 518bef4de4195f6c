//! The event catalog: every event that flows between partitions, each
//! defined once with all its forms.
//!
//! A [`LoggedEvent`] goes into each recipient's update log. It exists as:
//! - the event itself, made by a rule of [`crate::core`];
//! - its outbox record ([`LoggedEvent::outbox_record`]), what a restart
//!   re-sends from, and the event rebuilt from it ([`LoggedEvent::from_outbox`]);
//! - its wire form between nodes ([`LoggedEvent::to_wire`],
//!   [`LoggedEvent::from_wire`]);
//! - a recipient's update-log entry and the live frame they are pushed
//!   ([`LoggedEvent::entry_for`]), and the same frame rebuilt from the entry
//!   when a device replays ([`replayed_frame`]).
//!
//! Adding an event is one variant here and one arm in each of those, which
//! the compiler enforces; `every_form_of_every_event_round_trips` checks
//! them against each other.
//!
//! [`Ephemeral`] signals (typing, presence) are pushed to live sessions and
//! never written anywhere (invariant 7).

use std::sync::Arc;

use imsg_proto::internal::v1::{LoggedChange, LoggedHidden, LoggedReceipt, logged_update};
use imsg_proto::v1::{
    Conversation, ConversationUpdate, Message, MessageHidden, MessageUpdate, Presence, ReactionUpdate, ReceiptUpdate,
    event,
};

use crate::{
    core::receipts::read_seq_for,
    error::{Error, Result},
    storage::{ChangedEvent, HiddenEvent, OutboxEvent, ReactionEvent, ReceiptEvent, UpdateKind},
};

/// An event that goes into each recipient's update log.
#[derive(Debug, Clone, PartialEq)]
pub enum LoggedEvent {
    Message(Arc<Message>),
    Receipt {
        conversation_id: String,
        user_id: String,
        delivered_seq: u64,
        read_seq: u64,
        /// The reader hides read receipts: others get `read_seq = 0`.
        hide_read: bool,
    },
    Changed {
        /// Member watermarks are zeroed: receipts travel as their own events.
        conversation: Arc<Conversation>,
        removed_user_ids: Arc<[String]>,
    },
    /// A member set, changed or (empty emoji) removed their reaction.
    Reaction {
        conversation_id: String,
        seq: u64,
        user_id: String,
        emoji: String,
        react_time_ms: i64,
    },
    /// A message was edited or unsent: its new state. Its later forms are
    /// re-read from storage, so an unsent message's content never returns.
    MessageUpdated(Arc<Message>),
    /// `user_id` deleted a message for themselves: only their devices hear.
    Hidden {
        conversation_id: String,
        user_id: String,
        seq: u64,
    },
}

impl LoggedEvent {
    /// A membership change that leaves `user` a member who has not accepted
    /// the conversation (a message request).
    pub fn is_request_for(&self, user: &str) -> bool {
        match self {
            Self::Changed { conversation, .. } => {
                conversation.members.iter().any(|m| m.user_id == user && m.request_pending)
            }
            _ => false,
        }
    }

    pub fn conversation_id(&self) -> &str {
        match self {
            Self::Message(message) | Self::MessageUpdated(message) => &message.conversation_id,
            Self::Receipt { conversation_id, .. }
            | Self::Reaction { conversation_id, .. }
            | Self::Hidden { conversation_id, .. } => conversation_id,
            Self::Changed { conversation, .. } => &conversation.conversation_id,
        }
    }

    /// Who gets it: the members; for a membership change also the members
    /// it removed (who must learn they are out); for a deletion for
    /// oneself, only that user.
    pub fn recipients(&self, mut members: Vec<String>) -> Vec<String> {
        match self {
            Self::Changed { removed_user_ids, .. } => {
                members.extend(removed_user_ids.iter().cloned());
                members
            }
            Self::Hidden { user_id, .. } => vec![user_id.clone()],
            _ => members,
        }
    }

    /// Its outbox record. Bodies are not copied: a message is re-read by
    /// seq, a change re-sends the conversation as it is then.
    pub fn outbox_record(&self) -> OutboxEvent {
        match self {
            Self::Message(message) => OutboxEvent::MessageSeq(message.seq),
            Self::Receipt { user_id, delivered_seq, read_seq, hide_read, .. } => OutboxEvent::Receipt(ReceiptEvent {
                user_id: user_id.clone(),
                delivered_seq: *delivered_seq,
                read_seq: *read_seq,
                hide_read: *hide_read,
            }),
            Self::Changed { removed_user_ids, .. } => {
                OutboxEvent::Changed(ChangedEvent { removed_user_ids: removed_user_ids.to_vec() })
            }
            Self::Reaction { seq, user_id, emoji, react_time_ms, .. } => OutboxEvent::Reaction(ReactionEvent {
                seq: *seq,
                user_id: user_id.clone(),
                emoji: emoji.clone(),
                react_time_ms: *react_time_ms,
            }),
            Self::MessageUpdated(message) => OutboxEvent::MessageUpdatedSeq(message.seq),
            Self::Hidden { user_id, seq, .. } => {
                OutboxEvent::Hidden(HiddenEvent { user_id: user_id.clone(), seq: *seq })
            }
        }
    }

    /// Rebuilds the event from its outbox record, given the stored message
    /// for a record naming one ([`OutboxEvent::message_seq`]) and the
    /// conversation now (events carry it with zeroed watermarks). `None`
    /// when the message is gone.
    pub fn from_outbox(
        conversation_id: &str,
        record: OutboxEvent,
        stored_message: Option<Message>,
        conversation_now: Conversation,
    ) -> Option<Self> {
        Some(match record {
            OutboxEvent::MessageSeq(_) => Self::Message(Arc::new(stored_message?)),
            OutboxEvent::Receipt(r) => Self::Receipt {
                conversation_id: conversation_id.to_owned(),
                user_id: r.user_id,
                delivered_seq: r.delivered_seq,
                read_seq: r.read_seq,
                hide_read: r.hide_read,
            },
            OutboxEvent::Changed(changed) => Self::Changed {
                conversation: Arc::new(conversation_now),
                removed_user_ids: changed.removed_user_ids.into(),
            },
            OutboxEvent::Reaction(r) => Self::Reaction {
                conversation_id: conversation_id.to_owned(),
                seq: r.seq,
                user_id: r.user_id,
                emoji: r.emoji,
                react_time_ms: r.react_time_ms,
            },
            OutboxEvent::MessageUpdatedSeq(_) => Self::MessageUpdated(Arc::new(stored_message?)),
            OutboxEvent::Hidden(h) => {
                Self::Hidden { conversation_id: conversation_id.to_owned(), user_id: h.user_id, seq: h.seq }
            }
        })
    }

    /// Its form on the wire between nodes.
    pub fn to_wire(&self) -> logged_update::Event {
        match self {
            Self::Message(message) => logged_update::Event::Message((**message).clone()),
            Self::Receipt { conversation_id, user_id, delivered_seq, read_seq, hide_read } => {
                logged_update::Event::Receipt(LoggedReceipt {
                    conversation_id: conversation_id.clone(),
                    user_id: user_id.clone(),
                    delivered_seq: *delivered_seq,
                    read_seq: *read_seq,
                    hide_read: *hide_read,
                })
            }
            Self::Changed { conversation, removed_user_ids } => logged_update::Event::Change(LoggedChange {
                conversation: Some((**conversation).clone()),
                removed_user_ids: removed_user_ids.to_vec(),
            }),
            Self::Reaction { .. } => logged_update::Event::Reaction(self.reaction_update()),
            Self::MessageUpdated(message) => logged_update::Event::MessageUpdated((**message).clone()),
            Self::Hidden { conversation_id, user_id, seq } => logged_update::Event::Hidden(LoggedHidden {
                conversation_id: conversation_id.clone(),
                user_id: user_id.clone(),
                seq: *seq,
            }),
        }
    }

    /// A reaction's frame (a default one for any other event).
    fn reaction_update(&self) -> ReactionUpdate {
        match self {
            Self::Reaction { conversation_id, seq, user_id, emoji, react_time_ms } => ReactionUpdate {
                conversation_id: conversation_id.clone(),
                seq: *seq,
                user_id: user_id.clone(),
                emoji: emoji.clone(),
                react_time_ms: *react_time_ms,
            },
            _ => ReactionUpdate::default(),
        }
    }

    pub fn from_wire(event: logged_update::Event) -> Result<Self> {
        Ok(match event {
            logged_update::Event::Message(message) => Self::Message(Arc::new(message)),
            logged_update::Event::Receipt(r) => Self::Receipt {
                conversation_id: r.conversation_id,
                user_id: r.user_id,
                delivered_seq: r.delivered_seq,
                read_seq: r.read_seq,
                hide_read: r.hide_read,
            },
            logged_update::Event::Change(change) => Self::Changed {
                conversation: Arc::new(
                    change.conversation.ok_or_else(|| Error::invalid("updates.change.conversation", "must be set"))?,
                ),
                removed_user_ids: change.removed_user_ids.into(),
            },
            logged_update::Event::Reaction(r) => Self::Reaction {
                conversation_id: r.conversation_id,
                seq: r.seq,
                user_id: r.user_id,
                emoji: r.emoji,
                react_time_ms: r.react_time_ms,
            },
            logged_update::Event::MessageUpdated(message) => Self::MessageUpdated(Arc::new(message)),
            logged_update::Event::Hidden(h) => {
                Self::Hidden { conversation_id: h.conversation_id, user_id: h.user_id, seq: h.seq }
            }
        })
    }

    /// `recipient`'s update-log entry for this event and the frame pushed
    /// to their live devices. A receipt's read position is hidden when
    /// either side hides read receipts ([`read_seq_for`]).
    pub fn entry_for(&self, recipient: &str, recipient_hides_read: bool) -> (UpdateKind, event::Kind) {
        match self {
            Self::Message(message) => (UpdateKind::MessageSeq(message.seq), event::Kind::Message((**message).clone())),
            Self::Receipt { conversation_id, user_id, delivered_seq, read_seq, hide_read } => {
                let read_seq = read_seq_for(recipient, recipient_hides_read, user_id, *hide_read, *read_seq);
                (
                    UpdateKind::Receipt(ReceiptEvent {
                        user_id: user_id.clone(),
                        delivered_seq: *delivered_seq,
                        read_seq,
                        hide_read: false,
                    }),
                    event::Kind::Receipt(ReceiptUpdate {
                        conversation_id: conversation_id.clone(),
                        user_id: user_id.clone(),
                        delivered_seq: *delivered_seq,
                        read_seq,
                    }),
                )
            }
            Self::Changed { conversation, removed_user_ids } => {
                let removed = removed_user_ids.iter().any(|u| u == recipient);
                let conversation =
                    if removed { removed_view(&conversation.conversation_id) } else { (**conversation).clone() };
                (
                    UpdateKind::ConversationRemoved(removed),
                    event::Kind::Conversation(ConversationUpdate { conversation: Some(conversation), removed }),
                )
            }
            Self::Reaction { seq, user_id, emoji, react_time_ms, .. } => (
                UpdateKind::Reaction(ReactionEvent {
                    seq: *seq,
                    user_id: user_id.clone(),
                    emoji: emoji.clone(),
                    react_time_ms: *react_time_ms,
                }),
                event::Kind::Reaction(self.reaction_update()),
            ),
            Self::MessageUpdated(message) => (
                UpdateKind::MessageUpdatedSeq(message.seq),
                event::Kind::MessageUpdate(MessageUpdate { message: Some((**message).clone()) }),
            ),
            Self::Hidden { conversation_id, seq, .. } => (
                UpdateKind::HiddenSeq(*seq),
                event::Kind::MessageHidden(MessageHidden { conversation_id: conversation_id.clone(), seq: *seq }),
            ),
        }
    }
}

/// What a removed member is told of the conversation: only its id.
fn removed_view(conversation_id: &str) -> Conversation {
    Conversation { conversation_id: conversation_id.to_owned(), ..Default::default() }
}

/// The frame a device replaying its update log gets for an entry, given
/// the stored message (for an entry naming one: [`UpdateKind::message_seq`])
/// and the conversation now (for a change). `None` when that is gone
/// (retention) or the entry is empty.
pub fn replayed_frame(
    conversation_id: &str,
    kind: Option<UpdateKind>,
    stored_message: Option<Message>,
    conversation_now: Option<Conversation>,
) -> Option<event::Kind> {
    Some(match kind? {
        UpdateKind::MessageSeq(_) => event::Kind::Message(stored_message?),
        UpdateKind::Receipt(receipt) => event::Kind::Receipt(ReceiptUpdate {
            conversation_id: conversation_id.to_owned(),
            user_id: receipt.user_id,
            delivered_seq: receipt.delivered_seq,
            read_seq: receipt.read_seq,
        }),
        UpdateKind::ConversationRemoved(removed) => {
            let conversation = if removed { removed_view(conversation_id) } else { conversation_now? };
            event::Kind::Conversation(ConversationUpdate { conversation: Some(conversation), removed })
        }
        UpdateKind::Reaction(r) => event::Kind::Reaction(ReactionUpdate {
            conversation_id: conversation_id.to_owned(),
            seq: r.seq,
            user_id: r.user_id,
            emoji: r.emoji,
            react_time_ms: r.react_time_ms,
        }),
        UpdateKind::MessageUpdatedSeq(_) => {
            event::Kind::MessageUpdate(MessageUpdate { message: Some(stored_message?) })
        }
        UpdateKind::HiddenSeq(seq) => {
            event::Kind::MessageHidden(MessageHidden { conversation_id: conversation_id.to_owned(), seq })
        }
    })
}

/// One logged event and the recipients (all in the target partition).
#[derive(Debug, Clone)]
pub struct UpdateItem {
    pub user_ids: Vec<String>,
    pub event: Arc<LoggedEvent>,
}

/// Signals that only live sessions see.
#[derive(Debug, Clone)]
pub enum Ephemeral {
    Typing { conversation_id: String, user_id: String, active: bool },
    Presence(Presence),
}

impl Ephemeral {
    /// Whose signal it is.
    pub fn user_id(&self) -> &str {
        match self {
            Self::Typing { user_id, .. } => user_id,
            Self::Presence(presence) => &presence.user_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use imsg_proto::v1::{Member, TextContent, message::Content};

    use super::*;

    fn conversation() -> Conversation {
        Conversation {
            conversation_id: "g_1".into(),
            kind: 2,
            title: "team".into(),
            members: vec![Member { user_id: "alice".into(), role: 2, ..Default::default() }],
            last_seq: 3,
            last_activity_ms: 7,
            create_time_ms: 5,
        }
    }

    fn message() -> Message {
        Message {
            conversation_id: "g_1".into(),
            seq: 3,
            sender_id: "alice".into(),
            sender_device_id: "phone".into(),
            client_message_id: "c3".into(),
            server_time_ms: 7,
            reply_to_seq: 1,
            content: Some(Content::Text(TextContent { text: "hi".into() })),
            ..Default::default()
        }
    }

    /// One of every event; the match makes a new variant a compile error
    /// here until it has a sample.
    fn every_event() -> Vec<LoggedEvent> {
        let events = vec![
            LoggedEvent::Message(Arc::new(message())),
            LoggedEvent::Receipt {
                conversation_id: "g_1".into(),
                user_id: "bob".into(),
                delivered_seq: 3,
                read_seq: 2,
                hide_read: false,
            },
            LoggedEvent::Changed {
                conversation: Arc::new(conversation()),
                removed_user_ids: vec!["carol".into()].into(),
            },
            LoggedEvent::Reaction {
                conversation_id: "g_1".into(),
                seq: 3,
                user_id: "bob".into(),
                emoji: "🔥".into(),
                react_time_ms: 9,
            },
            LoggedEvent::MessageUpdated(Arc::new(Message { edit_time_ms: 8, ..message() })),
            LoggedEvent::Hidden { conversation_id: "g_1".into(), user_id: "alice".into(), seq: 3 },
        ];
        for event in &events {
            match event {
                LoggedEvent::Message(_)
                | LoggedEvent::Receipt { .. }
                | LoggedEvent::Changed { .. }
                | LoggedEvent::Reaction { .. }
                | LoggedEvent::MessageUpdated(_)
                | LoggedEvent::Hidden { .. } => {}
            }
        }
        events
    }

    #[test]
    fn every_form_of_every_event_round_trips() {
        for event in every_event() {
            let id = event.conversation_id().to_owned();
            assert_eq!(LoggedEvent::from_wire(event.to_wire()).unwrap(), event, "wire");
            let stored = match &event {
                LoggedEvent::Message(message) | LoggedEvent::MessageUpdated(message) => Some((**message).clone()),
                _ => None,
            };
            assert_eq!(event.outbox_record().message_seq().is_some(), stored.is_some(), "outbox names its message");
            let rebuilt = LoggedEvent::from_outbox(&id, event.outbox_record(), stored.clone(), conversation());
            assert_eq!(rebuilt.as_ref(), Some(&event), "outbox");
            for recipient in ["alice", "carol"] {
                let (entry, live) = event.entry_for(recipient, false);
                assert_eq!(entry.message_seq().is_some(), stored.is_some(), "entry names its message");
                let replayed = replayed_frame(&id, Some(entry), stored.clone(), Some(conversation()));
                assert_eq!(replayed.as_ref(), Some(&live), "replay of {recipient}'s entry = live frame");
            }
        }
    }

    #[test]
    fn a_removed_member_learns_only_that_they_are_out() {
        let changed = &every_event()[2];
        let (entry, frame) = changed.entry_for("carol", false);
        assert_eq!(entry, UpdateKind::ConversationRemoved(true));
        let event::Kind::Conversation(update) = frame else { panic!("{frame:?}") };
        assert!(update.removed);
        assert_eq!(update.conversation.unwrap(), removed_view("g_1"), "no members, title or seq");
        assert_eq!(changed.recipients(vec!["alice".into()]), vec!["alice".to_string(), "carol".to_string()]);
    }

    #[test]
    fn a_receipts_read_position_is_hidden_in_the_log_of_whoever_may_not_see_it() {
        let receipt = &every_event()[1];
        let read = |event: &LoggedEvent, recipient: &str, hides: bool| match event.entry_for(recipient, hides).1 {
            event::Kind::Receipt(update) => update.read_seq,
            other => panic!("{other:?}"),
        };
        assert_eq!(read(receipt, "alice", false), 2);
        assert_eq!(read(receipt, "alice", true), 0, "alice hides hers, so sees none");
        assert_eq!(read(receipt, "bob", true), 2, "the reader's own devices");
        let hidden = LoggedEvent::Receipt {
            conversation_id: "g_1".into(),
            user_id: "bob".into(),
            delivered_seq: 3,
            read_seq: 2,
            hide_read: true,
        };
        assert_eq!(read(&hidden, "alice", false), 0, "bob hides his");
    }

    #[test]
    fn a_deletion_for_oneself_reaches_only_that_users_devices() {
        let hidden = &every_event()[5];
        assert_eq!(hidden.recipients(vec!["alice".into(), "bob".into()]), vec!["alice".to_string()]);
    }

    #[test]
    fn a_message_gone_from_storage_is_skipped_not_invented() {
        assert_eq!(LoggedEvent::from_outbox("g_1", OutboxEvent::MessageSeq(3), None, conversation()), None);
        assert_eq!(replayed_frame("g_1", Some(UpdateKind::MessageSeq(3)), None, None), None);
        assert_eq!(replayed_frame("g_1", None, Some(message()), None), None);
    }
}
