//! Deleting an account, on the partitions it touches: each conversation
//! replaces the user's messages by tombstones saying the account was
//! deleted (`erase_sender`, in batches), leaving groups; last, the user's
//! own state goes (`forget`).

use imsg_proto::internal::v1::Caller;

use super::{ERASE_BATCH, Erased, Forgotten, Partition};
use crate::{core::MembershipChange, error::Result};

impl Partition {
    /// What `user`'s partition holds that others must clean up, their
    /// sessions closed; with `erase`, their state removed too.
    pub(super) fn forget(&mut self, user: &str, erase: bool) -> Forgotten {
        self.close_user_sessions(user, "account deleted");
        let Some(state) = self.users.map.get_mut(user) else { return Forgotten::default() };
        let forgotten = Forgotten {
            conversations: state.conversations.iter().cloned().collect(),
            blocked: state.relations.iter().filter(|(_, r)| r.blocks).map(|(u, _)| u.clone()).collect(),
        };
        if !erase {
            return forgotten;
        }
        let writes = &mut self.batch.writes;
        writes.remove_settings(user);
        for conversation in std::mem::take(&mut state.conversations) {
            writes.remove_inbox_entry(user, &conversation);
        }
        for (other, _) in std::mem::take(&mut state.relations) {
            writes.put_relation(user, &other, &Default::default());
        }
        for (device, _) in std::mem::take(&mut state.push_targets) {
            writes.put_push_target(user, &device, None);
        }
        for (conversation, _) in std::mem::take(&mut state.notify) {
            writes.put_notify_settings(user, &conversation, &Default::default());
        }
        state.settings = Default::default();
        state.requests.clear();
        forgotten
    }

    /// Erases `user`'s messages here after `after_seq`, up to
    /// `ERASE_BATCH` of them, saying where to go on; with the last batch a
    /// group is left too. Each call reads on from where the last stopped.
    pub(super) fn erase_sender(&mut self, id: &str, user: &str, after_seq: u64) -> Result<Erased> {
        if !self.load_conversation(id)? {
            return Ok(Erased::default());
        }
        let last_seq = self.conversation(id)?.last_seq();
        let mut found = Vec::new();
        let mut more_after = 0;
        for seq in after_seq + 1..=last_seq {
            if let Some((message, _)) = self.stored_message(id, seq)?
                && message.sender_id == user
                && !message.sender_deleted
            {
                found.push((*message).clone());
                if found.len() as u64 == ERASE_BATCH {
                    more_after = seq;
                    break;
                }
            }
        }
        let (messages, effects) = self.conversation(id)?.erase_sender(user, &found);
        self.apply_effects(effects)?;
        let conversation = self.conversation(id)?;
        if more_after == 0 && conversation.is_group() && conversation.member(user).is_some() {
            let leaving = Caller { user_id: user.to_owned(), ..Caller::default() };
            self.change_membership(&leaving, id, MembershipChange::Remove(user.to_owned()))?;
        }
        Ok(Erased { messages, more_after })
    }
}
