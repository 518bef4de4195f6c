//! Reactions: one emoji per member per message, replaced by a new one,
//! removed with an empty one. Kept with the message (a summary row of its
//! own, shown in history) and logged for every member, so live devices and
//! resuming ones both learn of each change.

use std::sync::Arc;

use imsg_proto::internal::v1::Caller;
use imsg_proto::v1::{Message, Reaction};

use super::{Conversation, Effects, Logged, Write};
use crate::{
    error::{Error, Result},
    events::LoggedEvent,
};

impl Conversation {
    /// Sets (or, with an empty `emoji`, removes) the caller's reaction to
    /// `stored`, the message `seq`. The same reaction again changes nothing.
    pub fn react(
        &mut self,
        caller: &Caller,
        seq: u64,
        stored: Option<&Message>,
        emoji: &str,
        now_ms: i64,
    ) -> Result<Effects> {
        let target = self.visible_message(&caller.user_id, seq, stored)?;
        if target.unsent {
            return Err(Error::FailedPrecondition(format!("message {seq} was unsent")));
        }
        let current = target.reactions.iter().find(|r| r.user_id == caller.user_id).map(|r| r.emoji.as_str());
        if current.unwrap_or("") == emoji {
            return Ok(Effects::default());
        }
        let mut updated = target.clone();
        updated.reactions.retain(|r| r.user_id != caller.user_id);
        if !emoji.is_empty() {
            updated.reactions.push(Reaction {
                user_id: caller.user_id.clone(),
                emoji: emoji.to_owned(),
                react_time_ms: now_ms,
            });
        }
        let updated = Arc::new(updated);
        self.message_changed(&updated);
        let mut effects = Effects::default();
        effects.writes.push(Write::Reactions(updated));
        effects.logged.push(Logged {
            recipients: self.member_ids(),
            event: LoggedEvent::Reaction {
                conversation_id: self.record.id.clone(),
                seq,
                user_id: caller.user_id.clone(),
                emoji: emoji.to_owned(),
                react_time_ms: now_ms,
            },
        });
        Ok(effects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{MembershipChange, testing::*};

    /// A group with one message from alice, and that message as stored.
    fn with_message() -> (Conversation, Message) {
        let mut conversation = group("alice", &["bob", "carol"]);
        conversation.set_dedup_window(Default::default());
        let (_, effects) = conversation.send(&caller("alice"), new_text("a", "hi"), None, &limits(), T0).unwrap();
        (conversation, sent_message(&effects))
    }

    fn reactions_written(effects: &Effects) -> Vec<(String, String)> {
        match &effects.writes[..] {
            [Write::Reactions(message)] => {
                message.reactions.iter().map(|r| (r.user_id.clone(), r.emoji.clone())).collect()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_reaction_per_member_replaced_by_the_next_and_removed_by_an_empty_one() {
        let (mut conversation, mut message) = with_message();
        let effects = conversation.react(&caller("bob"), 1, Some(&message), "👍", T0).unwrap();
        assert_eq!(reactions_written(&effects), vec![("bob".to_string(), "👍".to_string())]);
        assert_eq!(effects.logged[0].recipients.len(), 3, "every member, the sender's devices too");
        let Write::Reactions(updated) = &effects.writes[0] else { unreachable!() };
        message = (**updated).clone();

        let effects = conversation.react(&caller("bob"), 1, Some(&message), "❤️", T0 + 1).unwrap();
        assert_eq!(reactions_written(&effects), vec![("bob".to_string(), "❤️".to_string())], "replaced");
        let Write::Reactions(updated) = &effects.writes[0] else { unreachable!() };
        message = (**updated).clone();

        let effects = conversation.react(&caller("bob"), 1, Some(&message), "", T0 + 2).unwrap();
        assert_eq!(reactions_written(&effects), vec![], "removed");
        assert!(
            matches!(&effects.logged[0].event, LoggedEvent::Reaction { emoji, .. } if emoji.is_empty()),
            "members learn of the removal"
        );
    }

    #[test]
    fn the_same_reaction_again_or_removing_none_changes_nothing() {
        let (mut conversation, message) = with_message();
        assert!(conversation.react(&caller("bob"), 1, Some(&message), "", T0).unwrap().is_empty());
        let effects = conversation.react(&caller("bob"), 1, Some(&message), "👍", T0).unwrap();
        let Write::Reactions(updated) = &effects.writes[0] else { unreachable!() };
        assert!(conversation.react(&caller("bob"), 1, Some(updated), "👍", T0).unwrap().is_empty());
    }

    #[test]
    fn outsiders_and_later_joiners_get_not_found_for_what_they_cannot_see() {
        let (mut conversation, message) = with_message();
        assert!(matches!(
            conversation.react(&caller("mallory"), 1, Some(&message), "👍", T0),
            Err(Error::NotMember(_))
        ));
        conversation
            .change_membership(&caller("alice"), MembershipChange::add(vec!["dave".into()]), &limits(), T0)
            .unwrap();
        let error = conversation.react(&caller("dave"), 1, Some(&message), "👍", T0).unwrap_err();
        assert!(matches!(error, Error::MessageNotFound { seq: 1, .. }));
        let error = conversation.react(&caller("bob"), 2, None, "👍", T0).unwrap_err();
        assert!(matches!(error, Error::MessageNotFound { seq: 2, .. }), "the same answer as for a future seq");
    }

    #[test]
    fn an_unsent_message_takes_no_reactions() {
        let (mut conversation, mut message) = with_message();
        message.unsent = true;
        message.content = None;
        let error = conversation.react(&caller("bob"), 1, Some(&message), "👍", T0).unwrap_err();
        assert!(matches!(error, Error::FailedPrecondition(_)));
    }
}
