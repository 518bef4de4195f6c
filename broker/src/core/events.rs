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

use imsg_proto::v1::{
    Conversation, ConversationUpdate, LoggedChange, LoggedReceipt, Message, Presence, ReceiptUpdate, event,
    logged_update,
};

use crate::{
    core::receipts::read_seq_for,
    error::{Error, Result},
    storage::{ChangedEvent, OutboxEvent, ReceiptEvent, UpdateKind},
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
}

impl LoggedEvent {
    pub fn conversation_id(&self) -> &str {
        match self {
            Self::Message(message) => &message.conversation_id,
            Self::Receipt { conversation_id, .. } => conversation_id,
            Self::Changed { conversation, .. } => &conversation.conversation_id,
        }
    }

    /// Who gets it: the members, and for a membership change also the
    /// members it removed (who must learn they are out).
    pub fn recipients(&self, mut members: Vec<String>) -> Vec<String> {
        if let Self::Changed { removed_user_ids, .. } = self {
            members.extend(removed_user_ids.iter().cloned());
        }
        members
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
        }
    }

    /// Rebuilds the event from its outbox record, given the stored message
    /// for a message record and the conversation now (events carry it with
    /// zeroed watermarks). `None` when the message is gone.
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
        }
    }
}

/// What a removed member is told of the conversation: only its id.
fn removed_view(conversation_id: &str) -> Conversation {
    Conversation { conversation_id: conversation_id.to_owned(), ..Default::default() }
}

/// The frame a device replaying its update log gets for an entry, given
/// the stored message (for a message entry) and the conversation now (for a
/// change). `None` when that is gone (retention) or the entry is empty.
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
        ];
        for event in &events {
            match event {
                LoggedEvent::Message(_) | LoggedEvent::Receipt { .. } | LoggedEvent::Changed { .. } => {}
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
                LoggedEvent::Message(message) => Some((**message).clone()),
                _ => None,
            };
            let rebuilt = LoggedEvent::from_outbox(&id, event.outbox_record(), stored.clone(), conversation());
            assert_eq!(rebuilt.as_ref(), Some(&event), "outbox");
            for recipient in ["alice", "carol"] {
                let (entry, live) = event.entry_for(recipient, false);
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
    fn a_message_gone_from_storage_is_skipped_not_invented() {
        assert_eq!(LoggedEvent::from_outbox("g_1", OutboxEvent::MessageSeq(3), None, conversation()), None);
        assert_eq!(replayed_frame("g_1", Some(UpdateKind::MessageSeq(3)), None, None), None);
        assert_eq!(replayed_frame("g_1", None, Some(message()), None), None);
    }
}
