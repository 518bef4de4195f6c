//! What happens to a sent message afterwards: its sender edits it (within
//! the edit window) or unsends it (any time; it becomes a tombstone that
//! keeps its seq, and storage erases its content); any member deletes it
//! for themselves (hidden on all their devices, nobody else affected).

use std::{sync::Arc, time::Duration};

use imsg_proto::internal::v1::Caller;
use imsg_proto::v1::{EditMessageResponse, Message, message::Content};

use super::{Conversation, Effects, Logged, Write};
use crate::{
    error::{Error, Result},
    events::LoggedEvent,
};

impl Conversation {
    /// The caller's own message `seq`, still standing.
    fn own_message<'m>(&self, caller: &Caller, seq: u64, stored: Option<&'m Message>) -> Result<&'m Message> {
        let target = self.visible_message(&caller.user_id, seq, stored)?;
        if target.sender_id != caller.user_id {
            return Err(Error::PermissionDenied(format!("message {seq} was sent by someone else")));
        }
        Ok(target)
    }

    /// Logs a message's new state for every member and keeps the inbox
    /// line in step.
    fn publish_change(&mut self, updated: Arc<Message>, effects: &mut Effects) {
        self.message_changed(&updated);
        effects.logged.push(Logged { recipients: self.listeners(), event: LoggedEvent::MessageUpdated(updated) });
    }

    /// Replaces the text of a text message (the caption of a shared item,
    /// the text of a link) within `window` of sending.
    pub fn edit(
        &mut self,
        caller: &Caller,
        seq: u64,
        stored: Option<&Message>,
        text: String,
        window: Duration,
        now_ms: i64,
    ) -> Result<(EditMessageResponse, Effects)> {
        let target = self.own_message(caller, seq, stored)?;
        if target.unsent {
            return Err(Error::FailedPrecondition(format!("message {seq} was unsent")));
        }
        let age = Duration::from_millis(now_ms.saturating_sub(target.server_time_ms).max(0) as u64);
        if age > window {
            return Err(Error::FailedPrecondition(format!(
                "message {seq} can no longer be edited: the window is {} minutes after sending",
                window.as_secs() / 60
            )));
        }
        let mut updated = target.clone();
        match &mut updated.content {
            Some(Content::Text(content)) => {
                if text.trim().is_empty() {
                    return Err(Error::invalid("text", "a text message cannot be edited to nothing"));
                }
                content.text = text;
            }
            Some(Content::Shared(shared)) => shared.caption = text,
            Some(Content::Media(media)) => media.caption = text,
            Some(Content::Link(link)) => link.text = text,
            None => return Err(Error::FailedPrecondition(format!("message {seq} has nothing to edit"))),
        }
        let edit_time_ms = now_ms.max(target.server_time_ms);
        updated.edit_time_ms = edit_time_ms;
        let updated = Arc::new(updated);
        let mut effects = Effects::default();
        effects.writes.push(Write::Rewrite(updated.clone()));
        self.publish_change(updated, &mut effects);
        Ok((EditMessageResponse { edit_time_ms }, effects))
    }

    /// Unsends the caller's message for everyone: a tombstone with the same
    /// seq, sender and time, without content or reactions. Unsending again
    /// changes nothing.
    pub fn unsend(&mut self, caller: &Caller, seq: u64, stored: Option<&Message>) -> Result<Effects> {
        let target = self.own_message(caller, seq, stored)?;
        Ok(self.tombstone(target, false))
    }

    /// Replaces `user`'s messages among `stored` by tombstones saying the
    /// account was deleted (their content keys are erased with them).
    pub fn erase_sender(&mut self, user: &str, stored: &[Message]) -> (u64, Effects) {
        let mut effects = Effects::default();
        let mut erased = 0;
        for message in stored.iter().filter(|m| m.sender_id == user && !m.sender_deleted) {
            let one = self.tombstone(message, true);
            effects.writes.extend(one.writes);
            effects.logged.extend(one.logged);
            erased += 1;
        }
        (erased, effects)
    }

    /// Removes message `seq` for everyone: a moderator's decision, the same
    /// tombstone as an unsend (a missing or unsent message: nothing to do).
    pub fn remove(&mut self, seq: u64, stored: Option<&Message>) -> Effects {
        match stored {
            Some(target) if target.seq == seq && seq <= self.last_seq => self.tombstone(target, false),
            _ => Effects::default(),
        }
    }

    fn tombstone(&mut self, target: &Message, sender_deleted: bool) -> Effects {
        if target.unsent && !sender_deleted {
            return Effects::default();
        }
        let tombstone = Arc::new(Message {
            content: None,
            unsent: true,
            sender_deleted,
            edit_time_ms: 0,
            reactions: Vec::new(),
            reply_preview: None,
            ..target.clone()
        });
        let mut effects = Effects::default();
        effects.writes.push(Write::Rewrite(tombstone.clone()));
        if !target.reactions.is_empty() {
            effects.writes.push(Write::Reactions(tombstone.clone()));
        }
        self.publish_change(tombstone, &mut effects);
        effects
    }

    /// Hides message `seq` from the caller's own history, on all their
    /// devices (only they are told).
    pub fn delete_for_me(&mut self, caller: &Caller, seq: u64, stored: Option<&Message>) -> Result<Effects> {
        self.visible_message(&caller.user_id, seq, stored)?;
        let mut effects = Effects::default();
        effects.writes.push(Write::Hidden {
            conversation_id: self.record.id.clone(),
            user_id: caller.user_id.clone(),
            seq,
        });
        effects.logged.push(Logged {
            recipients: vec![caller.user_id.clone()],
            event: LoggedEvent::Hidden {
                conversation_id: self.record.id.clone(),
                user_id: caller.user_id.clone(),
                seq,
            },
        });
        Ok(effects)
    }
}

#[cfg(test)]
mod tests {
    use imsg_proto::v1::{Reaction, TextContent};

    use super::*;
    use crate::core::testing::*;

    const WINDOW: Duration = Duration::from_secs(15 * 60);

    fn with_message() -> (Conversation, Message) {
        let mut conversation = group("alice", &["bob"]);
        conversation.set_dedup_window(Default::default());
        let (_, effects) = conversation.send(&caller("alice"), new_text("a", "helo"), None, &limits(), T0).unwrap();
        (conversation, sent_message(&effects))
    }

    fn rewritten(effects: &Effects) -> Message {
        match &effects.writes[0] {
            Write::Rewrite(message) => (**message).clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_sender_edits_within_the_window_and_every_member_sees_it_marked() {
        let (mut conversation, message) = with_message();
        let at = T0 + 60_000;
        let (response, effects) =
            conversation.edit(&caller("alice"), 1, Some(&message), "hello".into(), WINDOW, at).unwrap();
        let edited = rewritten(&effects);
        assert_eq!(edited.content, Some(Content::Text(TextContent { text: "hello".into() })));
        assert_eq!((edited.edit_time_ms, response.edit_time_ms, edited.seq), (at, at, 1));
        assert!(matches!(&effects.logged[0].event, LoggedEvent::MessageUpdated(m) if m.edit_time_ms == at));
        assert_eq!(effects.logged[0].recipients.len(), 2);
        assert_eq!(conversation.summary(&crate::core::Viewer::new("bob")).unwrap().last_message.unwrap(), edited);
    }

    #[test]
    fn after_the_window_an_edit_is_a_failed_precondition_and_changes_nothing() {
        let (mut conversation, message) = with_message();
        let late = T0 + WINDOW.as_millis() as i64 + 1;
        let error = conversation.edit(&caller("alice"), 1, Some(&message), "x".into(), WINDOW, late).unwrap_err();
        assert!(matches!(error, Error::FailedPrecondition(_)), "{error:?}");
        let just_in = T0 + WINDOW.as_millis() as i64;
        assert!(conversation.edit(&caller("alice"), 1, Some(&message), "x".into(), WINDOW, just_in).is_ok());
    }

    #[test]
    fn only_the_sender_edits_or_unsends() {
        let (mut conversation, message) = with_message();
        let error = conversation.edit(&caller("bob"), 1, Some(&message), "x".into(), WINDOW, T0).unwrap_err();
        assert!(matches!(error, Error::PermissionDenied(_)));
        assert!(matches!(conversation.unsend(&caller("bob"), 1, Some(&message)), Err(Error::PermissionDenied(_))));
        assert!(matches!(conversation.unsend(&caller("mallory"), 1, Some(&message)), Err(Error::NotMember(_))));
    }

    #[test]
    fn unsend_leaves_a_tombstone_with_the_same_seq_and_no_content_or_reactions() {
        let (mut conversation, mut message) = with_message();
        message.reactions.push(Reaction { user_id: "bob".into(), emoji: "😂".into(), react_time_ms: T0 });
        let effects = conversation.unsend(&caller("alice"), 1, Some(&message)).unwrap();
        let tombstone = rewritten(&effects);
        assert!(tombstone.unsent);
        assert_eq!((tombstone.seq, tombstone.sender_id.as_str()), (1, "alice"));
        assert_eq!(tombstone.content, None);
        assert!(matches!(&effects.writes[1], Write::Reactions(m) if m.reactions.is_empty()), "reactions go too");
        assert_eq!(conversation.last_seq(), 1, "seqs stay gap-free");
        let inbox = conversation.summary(&crate::core::Viewer::new("bob")).unwrap().last_message.unwrap();
        assert!(inbox.unsent && inbox.content.is_none(), "the inbox line no longer shows the text");

        assert!(conversation.unsend(&caller("alice"), 1, Some(&tombstone)).unwrap().is_empty(), "idempotent");
        let error = conversation.edit(&caller("alice"), 1, Some(&tombstone), "x".into(), WINDOW, T0).unwrap_err();
        assert!(matches!(error, Error::FailedPrecondition(_)));
    }

    #[test]
    fn delete_for_me_hides_for_the_caller_alone() {
        let (mut conversation, message) = with_message();
        let effects = conversation.delete_for_me(&caller("bob"), 1, Some(&message)).unwrap();
        assert!(matches!(&effects.writes[..], [Write::Hidden { user_id, seq: 1, .. }] if user_id == "bob"));
        assert_eq!(effects.logged[0].recipients, vec!["bob".to_string()]);
        let error = conversation.delete_for_me(&caller("bob"), 9, None).unwrap_err();
        assert!(matches!(error, Error::MessageNotFound { .. }));
    }

    #[test]
    fn a_deleted_accounts_messages_become_tombstones_saying_so() {
        let mut conversation = group("alice", &["bob"]);
        let (_, sent) = conversation.send(&caller("bob"), new_text("b", "mine"), None, &limits(), T0).unwrap();
        let (_, other) = conversation.send(&caller("alice"), new_text("a", "hers"), None, &limits(), T0).unwrap();
        let stored = [sent_message(&sent), sent_message(&other)];
        let (erased, effects) = conversation.erase_sender("bob", &stored);
        assert_eq!(erased, 1);
        let tombstones: Vec<_> = effects
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Rewrite(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(tombstones.len(), 1);
        assert!(tombstones[0].sender_deleted && tombstones[0].unsent && tombstones[0].content.is_none());
        let again = [(*tombstones[0]).clone()];
        assert_eq!(conversation.erase_sender("bob", &again).0, 0, "erasing twice changes nothing");
    }
}
