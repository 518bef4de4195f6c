//! What a rule asks the shell to do: the only way the core changes the
//! world outside its own state.

use std::sync::Arc;

use imsg_proto::v1::Message;

use crate::{
    events::{Ephemeral, LoggedEvent},
    storage::{ConversationRecord, ReceiptRecord},
};

/// The effects of one command, in order.
#[derive(Debug, Default)]
pub struct Effects {
    /// Rows to write in this partition's batch.
    pub writes: Vec<Write>,
    /// Durable events for members' update logs (through the outbox).
    pub logged: Vec<Logged>,
    /// Ephemeral signals for live sessions, never written (invariant 7).
    pub signals: Vec<Signal>,
    /// Receipts that moved in memory only (a sender's own watermarks move
    /// with each send); written at the next checkpoint tick, not per
    /// message: `(conversation, user)`.
    pub lazy_receipts: Vec<(String, String)>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.logged.is_empty() && self.signals.is_empty() && self.lazy_receipts.is_empty()
    }
}

/// One row to write.
#[derive(Debug)]
pub enum Write {
    Conversation(ConversationRecord),
    /// A new message.
    Message(Arc<Message>),
    /// An existing message's new state: edited (its content sealed anew) or
    /// unsent (its content erased from storage).
    Rewrite(Arc<Message>),
    /// A message's reactions, as they now are (none: the row goes).
    Reactions(Arc<Message>),
    /// A message deleted for one user.
    Hidden {
        conversation_id: String,
        user_id: String,
        seq: u64,
    },
    Receipt {
        conversation_id: String,
        user_id: String,
        record: ReceiptRecord,
    },
}

/// A durable event for `recipients`' update logs (its outbox record and
/// other forms follow from it: `crate::events`).
#[derive(Debug)]
pub struct Logged {
    pub recipients: Vec<String>,
    pub event: LoggedEvent,
}

/// An ephemeral signal for `recipients`' live sessions.
#[derive(Debug)]
pub struct Signal {
    pub recipients: Vec<String>,
    pub event: Ephemeral,
}
