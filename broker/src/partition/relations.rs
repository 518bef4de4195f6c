//! The shell of the privacy rules (`core::privacy`): a user's relations on
//! their partition (blocks both ways, contacts, declared ones), and on a
//! conversation's partition the answers to a message request and the copy
//! of a pair's blocks.
//!
//! The filter that keeps a separated pair's presence, typing and read
//! receipts apart sits where each reaches a device: the recipient's user
//! partition (`user.rs`: `push_ephemeral`, `apply_updates`,
//! `presence_query`), which holds both directions of the user's blocks.

use imsg_proto::internal::v1::{Caller, RelationChange, RelationsResult};
use imsg_proto::v1::Conversation as ConversationView;

use super::Partition;
use crate::{core::Effects, error::Result, now_ms};

impl Partition {
    /// Applies `change` to `user`'s relation with each of `others`, and
    /// answers the user's settings with those relations (every relation of
    /// the user when `others` is empty).
    pub(super) fn relations(
        &mut self,
        user: &str,
        others: &[String],
        change: RelationChange,
    ) -> Result<RelationsResult> {
        let state = self.users.map.entry(user.to_owned()).or_default();
        for other in others {
            let record = state.relations.entry(other.clone()).or_default();
            let before = *record;
            match change {
                RelationChange::Unspecified => {}
                RelationChange::Block => record.blocks = true,
                RelationChange::Unblock => record.blocks = false,
                RelationChange::BlockedBy => record.blocked_by = true,
                RelationChange::UnblockedBy => record.blocked_by = false,
                RelationChange::Contact => record.contact = true,
                RelationChange::Declare => record.declared = true,
                RelationChange::Withdraw => record.declared = false,
            }
            let after = *record;
            if after.is_empty() {
                state.relations.remove(other);
            }
            if after != before {
                self.batch.writes.put_relation(user, other, &after);
            }
        }
        // A new contact (an accepted conversation, one written to) may show
        // the user's presence where it was hidden: announce it again.
        if change == RelationChange::Contact && !state.sessions.is_empty() {
            self.presence_changed(user);
        }
        let state = self.users.map.entry(user.to_owned()).or_default();
        let relations = if others.is_empty() {
            state.relations.iter().map(|(other, record)| record.view(other)).collect()
        } else {
            others.iter().map(|other| state.relations.get(other).copied().unwrap_or_default().view(other)).collect()
        };
        Ok(RelationsResult { settings: Some(state.settings.view()), relations })
    }

    /// A member accepts (the view they now see) or declines (`None`) a
    /// conversation they were brought into as a request.
    pub(super) fn respond(&mut self, caller: &Caller, id: &str, accept: bool) -> Result<Option<ConversationView>> {
        let now = now_ms();
        let conversation = self.conversation(id)?;
        let (view, effects) = if accept {
            let (view, effects) = conversation.accept(caller, now)?;
            (Some(view), effects)
        } else {
            (None, conversation.decline(caller, now)?)
        };
        self.apply_effects(effects)?;
        Ok(view)
    }

    /// Records (or lifts) a block in the pair's direct conversation, if
    /// there is one.
    pub(super) fn pair_block(&mut self, id: &str, blocker: &str, blocked: bool) -> Result<()> {
        if !self.load_conversation(id)? {
            return Ok(());
        }
        let effects: Effects = self.conversation(id)?.set_pair_block(blocker, blocked);
        self.apply_effects(effects)
    }
}
