//! What flows between partitions: durable updates from a conversation
//! partition to its members' user partitions, and ephemeral signals (typing,
//! presence) that are pushed to live sessions and never written anywhere
//! (invariant 7).

use std::sync::Arc;

use imsg_proto::v1::{Conversation, Message, Presence};

/// An event that goes into each recipient's update log.
#[derive(Debug, Clone)]
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
