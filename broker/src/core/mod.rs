//! The rules, without I/O: each rule is a function of the state it needs,
//! the command, and the time, returning a reply plus [`Effects`]: rows to
//! write, events to log for members, ephemeral signals. No tokio, sled,
//! tonic or router in here; the partition (`crate::partition`) is the shell
//! that loads state, applies effects, waits for durability and replies.
//! So every rule is tested in memory, in milliseconds (the tests beside
//! each module).
//!
//! One module per concept. Of a conversation: [`conversation`] (the state
//! and how members see it), [`membership`], [`send`] (sequencing and
//! dedup, forwarding), [`dedup`] (the window of recent client ids),
//! [`replies`], [`reactions`], [`edits`] (edit, unsend, delete for me),
//! [`receipts`], [`typing`]. Of a user: [`update_log`]
//! (cursors, resume, retention), [`presence`] (who sees what). Between
//! users: [`privacy`] (blocks, contacts, who may message whom, message
//! requests), [`notify`] (who gets a push notification, saying what). Of
//! the service: [`budget`] (per-user request budgets, leased to gateways).

pub mod budget;
pub mod conversation;
pub mod dedup;
pub mod edits;
pub mod effects;
pub mod events;
pub mod membership;
pub mod moderation;
pub mod notify;
pub mod presence;
pub mod privacy;
pub mod reactions;
pub mod receipts;
pub mod replies;
pub mod send;
pub mod typing;
pub mod update_log;

pub use self::{
    conversation::{Conversation, Viewer},
    dedup::DedupWindow,
    effects::{Effects, Logged, Signal, Write},
    membership::{MembershipChange, NewConversation},
    receipts::MarkKind,
    send::NewMessage,
};

#[cfg(test)]
pub(crate) mod testing {
    //! Small builders shared by the core's tests.

    use imsg_proto::internal::v1::Caller;
    use imsg_proto::v1::{Message, TextContent, message::Content};

    use super::*;
    use crate::config::Limits;

    pub fn new_text(client_id: &str, text: &str) -> NewMessage {
        NewMessage {
            client_message_id: client_id.into(),
            reply_to_seq: 0,
            content: Content::Text(TextContent { text: text.into() }),
            forwarded: false,
        }
    }

    /// The message a send's effects write.
    pub fn sent_message(effects: &Effects) -> Message {
        effects
            .writes
            .iter()
            .find_map(|w| match w {
                Write::Message(m) => Some((**m).clone()),
                _ => None,
            })
            .expect("a send writes its message")
    }

    pub const T0: i64 = 1_700_000_000_000;

    pub fn caller(user: &str) -> Caller {
        Caller { user_id: user.into(), device_id: "phone".into(), ..Default::default() }
    }

    pub fn limits() -> Limits {
        Limits { max_group_members: 5, dedup_window: 4, ..Limits::default() }
    }

    pub fn group(creator: &str, members: &[&str]) -> Conversation {
        let spec =
            NewConversation::Group { title: "g".into(), member_ids: members.iter().map(|m| m.to_string()).collect() };
        Conversation::create(&caller(creator), "g_0001", spec, &limits(), T0).unwrap().0
    }

    pub fn direct(a: &str, b: &str) -> Conversation {
        let spec = NewConversation::Direct { peer_user_id: b.into() };
        Conversation::create(&caller(a), "dm_0001", spec, &limits(), T0).unwrap().0
    }
}
