//! Who may reach whom: blocks, contacts, the who-may-message setting, and
//! message requests.
//!
//! The relations live on each user's partition ([`RelationRecord`]: whom
//! the user blocks, who blocks them, whom they accepted or wrote to, what
//! the host application declared). Starting a conversation consults the
//! recipient's ([`admission`]); a direct conversation keeps a copy of the
//! pair's blocks in its record, so a send consults no other partition.
//!
//! A blocked user learns nothing: every refusal a block causes is the same
//! error, word for word, as the refusal of a privacy setting
//! ([`Error::Refused`]). Between a blocked pair nothing personal passes in
//! a group either (presence, typing, read receipts: the user partitions
//! filter them, see `partition::relations`).
//!
//! A message request is a member whose [`RequestState`] is not accepted:
//! the conversation is in their requests folder, the sender sees none of
//! their receipts, typing or presence, and may send only
//! `Limits::max_request_messages` until it is accepted. A declined request
//! stays pending to the sender's eyes, and the decliner hears nothing more.

use imsg_proto::internal::v1::Caller;
use imsg_proto::v1::{Conversation as ConversationView, WhoMayMessage};

use super::{Conversation, Effects, Viewer, Write};
use crate::{
    config::Limits,
    error::{Error, Result},
    storage::{RelationRecord, RequestState, SettingsRecord},
};

/// How a new conversation reaches a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Straight to the inbox: the sender is a contact.
    Inbox,
    /// Into the requests folder.
    Request,
}

/// Whether someone may start a conversation with `recipient` (or add them
/// to a group), given the recipient's settings and their relation to that
/// someone. A block by the recipient and a refusing setting give the same
/// error; the sender's own block of the recipient is said plainly (it is
/// the sender's own doing).
pub fn admission(recipient: &str, settings: &SettingsRecord, relation: &RelationRecord) -> Result<Admission> {
    if relation.blocked_by {
        return Err(Error::FailedPrecondition(format!("you block {recipient}; unblock them first")));
    }
    if relation.blocks {
        return Err(Error::Refused(recipient.to_owned()));
    }
    match WhoMayMessage::try_from(settings.who_may_message).unwrap_or(WhoMayMessage::Everyone) {
        WhoMayMessage::NobodyNew => Err(Error::Refused(recipient.to_owned())),
        _ if relation.is_contact() => Ok(Admission::Inbox),
        WhoMayMessage::Contacts => Err(Error::Refused(recipient.to_owned())),
        WhoMayMessage::Unspecified | WhoMayMessage::Everyone => Ok(Admission::Request),
    }
}

impl Conversation {
    /// A member's request state (accepted for non-members).
    pub fn request_state(&self, user: &str) -> RequestState {
        self.member(user).and_then(|m| RequestState::try_from(m.request).ok()).unwrap_or(RequestState::Accepted)
    }

    /// Whether `user` has not accepted (pending or declined): others see
    /// none of their receipts, typing or presence here.
    pub fn is_request_for(&self, user: &str) -> bool {
        self.request_state(user) != RequestState::Accepted
    }

    /// Members who hear this conversation's events: not those who declined.
    pub fn listeners(&self) -> Vec<String> {
        self.record
            .members
            .iter()
            .filter(|m| m.request != RequestState::Declined as i32)
            .map(|m| m.user_id.clone())
            .collect()
    }

    /// A direct conversation where either member blocks the other takes
    /// nothing new from either. The blocked member gets the privacy
    /// refusal; the blocker is told it is their block.
    pub fn require_unblocked(&self, caller: &str) -> Result<()> {
        if self.is_group() || self.record.blocked_by.is_empty() {
            return Ok(());
        }
        if self.record.blocked_by.iter().any(|b| b == caller) {
            return Err(Error::FailedPrecondition("you block the other member; unblock them first".into()));
        }
        Err(Error::Refused(self.others(caller).into_iter().next().unwrap_or_default()))
    }

    /// Whether a send from `caller` is allowed by the request rules, and
    /// the record change it implies: a member who has not accepted cannot
    /// send; the other side of a direct request may send a few messages.
    pub fn admit_send(&mut self, caller: &str, limits: &Limits, effects: &mut Effects) -> Result<()> {
        self.require_unblocked(caller)?;
        if self.is_request_for(caller) {
            return Err(Error::FailedPrecondition("accept the message request first".into()));
        }
        let other_has_not_accepted =
            self.record.members.iter().any(|m| m.user_id != caller && m.request != RequestState::Accepted as i32);
        if self.is_group() || !other_has_not_accepted {
            return Ok(());
        }
        if self.record.request_sends >= limits.max_request_messages {
            return Err(Error::FailedPrecondition(format!(
                "message request not accepted yet: at most {} messages until it is",
                limits.max_request_messages
            )));
        }
        self.record.request_sends += 1;
        effects.writes.push(Write::Conversation(self.record.clone()));
        Ok(())
    }

    /// Accepts the caller's request (idempotent): the conversation moves to
    /// their inbox and the others learn it through a change event.
    pub fn accept(&mut self, caller: &Caller, now_ms: i64) -> Result<(ConversationView, Effects)> {
        let mut effects = Effects::default();
        if self.require_member(&caller.user_id)?.request != RequestState::Accepted as i32 {
            self.set_request_state(&caller.user_id, RequestState::Accepted, now_ms);
            effects.writes.push(Write::Conversation(self.record.clone()));
            self.log_change(&mut effects, Vec::new());
        }
        Ok((self.snapshot(Some(&Viewer::new(&caller.user_id))), effects))
    }

    /// Declines the caller's request: hidden from them from now on. Nobody
    /// is told (to the others the request looks pending still). Only a
    /// pending request can be declined.
    pub fn decline(&mut self, caller: &Caller, now_ms: i64) -> Result<Effects> {
        let mut effects = Effects::default();
        match RequestState::try_from(self.require_member(&caller.user_id)?.request) {
            Ok(RequestState::Pending) => {
                self.set_request_state(&caller.user_id, RequestState::Declined, now_ms);
                effects.writes.push(Write::Conversation(self.record.clone()));
            }
            Ok(RequestState::Declined) => {}
            _ => return Err(Error::FailedPrecondition("this conversation is not a message request".into())),
        }
        Ok(effects)
    }

    fn set_request_state(&mut self, user: &str, state: RequestState, now_ms: i64) {
        if let Some(member) = self.record.members.iter_mut().find(|m| m.user_id == user) {
            member.request = state as i32;
        }
        self.record.change_time_ms = now_ms;
    }

    /// Records or lifts `blocker`'s block in a direct conversation of theirs
    /// (a copy of the block their partition owns). Not a change the members
    /// are told of.
    pub fn set_pair_block(&mut self, blocker: &str, blocked: bool) -> Effects {
        let mut effects = Effects::default();
        let had = self.record.blocked_by.iter().any(|b| b == blocker);
        if self.is_group() || self.member(blocker).is_none() || had == blocked {
            return effects;
        }
        if blocked {
            self.record.blocked_by.push(blocker.to_owned());
        } else {
            self.record.blocked_by.retain(|b| b != blocker);
        }
        effects.writes.push(Write::Conversation(self.record.clone()));
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{NewConversation, testing::*};

    fn settings(who: WhoMayMessage) -> SettingsRecord {
        SettingsRecord { who_may_message: who as i32, ..SettingsRecord::default() }
    }

    const STRANGER: RelationRecord =
        RelationRecord { blocks: false, blocked_by: false, contact: false, declared: false };
    const CONTACT: RelationRecord = RelationRecord { contact: true, ..STRANGER };
    const DECLARED: RelationRecord = RelationRecord { declared: true, ..STRANGER };
    const BLOCKED: RelationRecord = RelationRecord { blocks: true, contact: true, ..STRANGER };

    #[test]
    fn strangers_arrive_as_requests_contacts_in_the_inbox() {
        let everyone = settings(WhoMayMessage::Everyone);
        assert_eq!(admission("bob", &everyone, &STRANGER).unwrap(), Admission::Request);
        assert_eq!(admission("bob", &SettingsRecord::default(), &STRANGER).unwrap(), Admission::Request);
        assert_eq!(admission("bob", &everyone, &CONTACT).unwrap(), Admission::Inbox);
        assert_eq!(admission("bob", &everyone, &DECLARED).unwrap(), Admission::Inbox);
    }

    #[test]
    fn who_may_message_refuses_strangers_or_everyone_new() {
        let contacts = settings(WhoMayMessage::Contacts);
        assert!(matches!(admission("bob", &contacts, &STRANGER), Err(Error::Refused(_))));
        assert_eq!(admission("bob", &contacts, &CONTACT).unwrap(), Admission::Inbox);
        let nobody = settings(WhoMayMessage::NobodyNew);
        assert!(matches!(admission("bob", &nobody, &CONTACT), Err(Error::Refused(_))));
    }

    #[test]
    fn a_block_is_refused_in_the_very_words_of_a_privacy_setting() {
        let by_block = admission("bob", &settings(WhoMayMessage::Everyone), &BLOCKED).unwrap_err();
        let by_setting = admission("bob", &settings(WhoMayMessage::NobodyNew), &STRANGER).unwrap_err();
        assert_eq!(by_block.to_string(), by_setting.to_string());
        let own = RelationRecord { blocked_by: true, ..STRANGER };
        assert!(matches!(admission("bob", &SettingsRecord::default(), &own), Err(Error::FailedPrecondition(_))));
    }

    fn direct_request() -> Conversation {
        let spec = NewConversation::Direct { peer_user_id: "bob".into() };
        let requests = vec!["bob".to_string()];
        Conversation::create_with_requests(&caller("alice"), "dm_1", spec, &limits(), T0, &requests).unwrap().0
    }

    #[test]
    fn a_request_takes_a_few_messages_then_waits_for_acceptance() {
        let mut conversation = direct_request();
        let limits = Limits { max_request_messages: 2, ..limits() };
        let mut effects = Effects::default();
        conversation.admit_send("alice", &limits, &mut effects).unwrap();
        conversation.admit_send("alice", &limits, &mut effects).unwrap();
        assert!(matches!(conversation.admit_send("alice", &limits, &mut effects), Err(Error::FailedPrecondition(_))));
        assert!(matches!(conversation.admit_send("bob", &limits, &mut effects), Err(Error::FailedPrecondition(_))));
        conversation.accept(&caller("bob"), T0 + 1).unwrap();
        conversation.admit_send("alice", &limits, &mut effects).unwrap();
        conversation.admit_send("bob", &limits, &mut effects).unwrap();
    }

    #[test]
    fn a_declined_request_hides_the_decliner_and_still_looks_pending() {
        let mut conversation = direct_request();
        assert!(conversation.decline(&caller("alice"), T0).is_err(), "only the recipient has a request");
        conversation.decline(&caller("bob"), T0).unwrap();
        assert_eq!(conversation.listeners(), vec!["alice".to_string()]);
        let seen_by_alice = conversation.snapshot(Some(&Viewer::new("alice")));
        let bob = seen_by_alice.members.iter().find(|m| m.user_id == "bob").unwrap();
        assert!(bob.request_pending, "the sender is not told of a decline");
    }

    #[test]
    fn a_blocked_pair_refuses_both_the_blocked_and_the_blocker() {
        let spec = NewConversation::Direct { peer_user_id: "bob".into() };
        let mut conversation = Conversation::create(&caller("alice"), "dm_1", spec, &limits(), T0).unwrap().0;
        assert_eq!(conversation.set_pair_block("alice", true).writes.len(), 1);
        assert!(conversation.set_pair_block("alice", true).writes.is_empty(), "idempotent");
        assert!(matches!(conversation.require_unblocked("bob"), Err(Error::Refused(_))));
        assert!(matches!(conversation.require_unblocked("alice"), Err(Error::FailedPrecondition(_))));
        conversation.set_pair_block("alice", false);
        conversation.require_unblocked("bob").unwrap();
    }
}
