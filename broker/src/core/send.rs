//! Sending: membership, dedup by client message id (invariant 3), the next
//! gap-free seq (invariant 2), server time that never goes backwards in a
//! conversation, replies to what the sender may see, and what a send
//! implies (the sender has read everything up to it, and stopped typing).
//! A forwarded copy is a send too, marked as such.

use std::sync::Arc;

use imsg_proto::internal::v1::Caller;
use imsg_proto::v1::{Message, SendMessageRequest, SendMessageResponse, message::Content, send_message_request};

use super::{Conversation, Effects, Logged, Signal, Write, replies};
use crate::{
    config::Limits,
    error::{Error, Result},
    events::{Ephemeral, LoggedEvent},
};

/// A message to append, as the send rule takes it.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub client_message_id: String,
    pub reply_to_seq: u64,
    pub content: Content,
    /// A copy of a message from another conversation.
    pub forwarded: bool,
}

impl NewMessage {
    /// What a client's SendMessage asks for (validated before).
    pub fn from_request(request: SendMessageRequest) -> Result<Self> {
        let content = request.content.ok_or_else(|| Error::invalid("content", "must be set"))?;
        Ok(Self {
            client_message_id: request.client_message_id,
            reply_to_seq: request.reply_to_seq,
            content: message_content(content),
            forwarded: false,
        })
    }
}

/// A request's content as a message holds it (the two oneofs carry the
/// same kinds).
pub fn message_content(content: send_message_request::Content) -> Content {
    match content {
        send_message_request::Content::Text(text) => Content::Text(text),
        send_message_request::Content::Shared(shared) => Content::Shared(shared),
        send_message_request::Content::Link(link) => Content::Link(link),
        send_message_request::Content::Media(media) => Content::Media(media),
    }
}

impl Conversation {
    /// Sends a message. The dedup window must be loaded
    /// ([`Conversation::needs_dedup_window`]); a retry of a remembered
    /// (sender, client id) answers the original seq and changes nothing.
    /// `quoted` is the stored message `reply_to_seq` names, if any.
    pub fn send(
        &mut self,
        caller: &Caller,
        new: NewMessage,
        quoted: Option<&Message>,
        limits: &Limits,
        now_ms: i64,
    ) -> Result<(SendMessageResponse, Effects)> {
        let joined_after = self.require_member(&caller.user_id)?.joined_after_seq;
        let dedup = self.dedup.as_ref().ok_or_else(|| Error::Internal("dedup window not loaded".into()))?;
        if let Some((seq, server_time_ms)) = dedup.get(&caller.user_id, &new.client_message_id) {
            return Ok((SendMessageResponse { seq, server_time_ms, duplicate: true }, Effects::default()));
        }
        let mut effects = Effects::default();
        // Blocks and message requests (`core::privacy`).
        self.admit_send(&caller.user_id, limits, &mut effects)?;
        // Only what the sender may see can be quoted: a later joiner quoting
        // an older message would read it in the preview.
        if new.reply_to_seq > self.last_seq || (new.reply_to_seq != 0 && new.reply_to_seq <= joined_after) {
            return Err(Error::invalid(
                "reply_to_seq",
                format!("no message {} in this conversation", new.reply_to_seq),
            ));
        }
        let seq = self.last_seq + 1;
        let server_time_ms = now_ms.max(self.last_activity_ms);
        let message = Arc::new(Message {
            conversation_id: self.record.id.clone(),
            seq,
            sender_id: caller.user_id.clone(),
            sender_device_id: caller.device_id.clone(),
            client_message_id: new.client_message_id,
            server_time_ms,
            reply_to_seq: new.reply_to_seq,
            content: Some(new.content),
            forwarded: new.forwarded,
            reply_preview: (new.reply_to_seq != 0).then(|| replies::preview(new.reply_to_seq, quoted)),
            ..Message::default()
        });
        self.last_seq = seq;
        self.last_activity_ms = server_time_ms;
        self.last_message = Some(message.clone());
        if let Some(dedup) = self.dedup.as_mut() {
            dedup.remember(limits.dedup_window, &message);
        }
        // Sending implies having read and received everything before.
        let own = self.receipts.entry(caller.user_id.clone()).or_default();
        own.delivered_seq = seq;
        own.read_seq = seq;
        effects.lazy_receipts.push((self.record.id.clone(), caller.user_id.clone()));
        if self.typing.remove(&caller.user_id).is_some() {
            effects.signals.push(Signal {
                recipients: self.others(&caller.user_id),
                event: Ephemeral::Typing {
                    conversation_id: self.record.id.clone(),
                    user_id: caller.user_id.clone(),
                    active: false,
                },
            });
        }
        effects.writes.push(Write::Message(message.clone()));
        effects.logged.push(Logged { recipients: self.listeners(), event: LoggedEvent::Message(message) });
        Ok((SendMessageResponse { seq, server_time_ms, duplicate: false }, effects))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{DedupWindow, MembershipChange, testing::*};

    fn text(client_id: &str) -> NewMessage {
        new_text(client_id, "hi")
    }

    fn send(
        conversation: &mut Conversation,
        by: &str,
        client_id: &str,
        at: i64,
    ) -> Result<(SendMessageResponse, Effects)> {
        conversation.send(&caller(by), text(client_id), None, &limits(), at)
    }

    #[test]
    fn seqs_are_gap_free_from_one_whoever_sends() {
        let mut conversation = group("alice", &["bob"]);
        let seqs: Vec<u64> = [("alice", "a1"), ("bob", "b1"), ("alice", "a2")]
            .iter()
            .map(|(by, id)| send(&mut conversation, by, id, T0).unwrap().0.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(conversation.last_seq(), 3);
    }

    #[test]
    fn a_retried_client_id_returns_the_original_seq_and_writes_nothing() {
        let mut conversation = group("alice", &["bob"]);
        let (first, _) = send(&mut conversation, "alice", "same", T0).unwrap();
        send(&mut conversation, "bob", "other", T0 + 1).unwrap();
        let (again, effects) = send(&mut conversation, "alice", "same", T0 + 2).unwrap();
        assert_eq!((again.seq, again.server_time_ms, again.duplicate), (first.seq, first.server_time_ms, true));
        assert!(effects.is_empty(), "a duplicate writes nothing: {effects:?}");
        assert_eq!(conversation.last_seq(), 2);
    }

    #[test]
    fn the_same_client_id_from_another_sender_is_a_new_message() {
        let mut conversation = group("alice", &["bob"]);
        send(&mut conversation, "alice", "x", T0).unwrap();
        let (bobs, _) = send(&mut conversation, "bob", "x", T0).unwrap();
        assert_eq!((bobs.seq, bobs.duplicate), (2, false));
    }

    #[test]
    fn an_id_older_than_the_dedup_window_is_sent_again() {
        let mut conversation = group("alice", &["bob"]);
        for n in 0..5 {
            send(&mut conversation, "alice", &format!("c{n}"), T0).unwrap();
        }
        // The window holds 4: c0 is forgotten, c1 is not.
        assert!(send(&mut conversation, "alice", "c1", T0).unwrap().0.duplicate);
        assert!(!send(&mut conversation, "alice", "c0", T0).unwrap().0.duplicate);
    }

    #[test]
    fn non_members_cannot_send_and_nothing_changes() {
        let mut conversation = group("alice", &["bob"]);
        assert!(matches!(send(&mut conversation, "mallory", "m", T0), Err(Error::NotMember(_))));
        assert_eq!(conversation.last_seq(), 0);
    }

    #[test]
    fn a_reply_to_a_future_message_is_refused_and_changes_nothing() {
        let mut conversation = group("alice", &["bob"]);
        send(&mut conversation, "alice", "a", T0).unwrap();
        let mut request = text("r");
        request.reply_to_seq = 2;
        let error = conversation.send(&caller("bob"), request, None, &limits(), T0).unwrap_err();
        assert!(matches!(error, Error::InvalidArgument { field: "reply_to_seq", .. }));
        assert_eq!(conversation.last_seq(), 1);
        let mut request = text("r");
        request.reply_to_seq = 1;
        assert_eq!(conversation.send(&caller("bob"), request, None, &limits(), T0).unwrap().0.seq, 2);
    }

    #[test]
    fn a_reply_carries_a_preview_of_what_it_quotes() {
        let mut conversation = group("alice", &["bob"]);
        let (_, effects) = send(&mut conversation, "alice", "a", T0).unwrap();
        let quoted = sent_message(&effects);
        let mut reply = new_text("r", "me too");
        reply.reply_to_seq = 1;
        let (_, effects) = conversation.send(&caller("bob"), reply, Some(&quoted), &limits(), T0).unwrap();
        let preview = sent_message(&effects).reply_preview.unwrap();
        assert_eq!((preview.seq, preview.sender_id.as_str(), preview.snippet.as_str()), (1, "alice", "hi"));
        assert!(!preview.unavailable);
    }

    #[test]
    fn a_later_joiner_cannot_quote_what_predates_them() {
        let mut conversation = group("alice", &["bob"]);
        send(&mut conversation, "alice", "a", T0).unwrap();
        conversation
            .change_membership(&caller("alice"), MembershipChange::add(vec!["carol".into()]), &limits(), T0)
            .unwrap();
        let mut reply = text("c");
        reply.reply_to_seq = 1;
        let error = conversation.send(&caller("carol"), reply, None, &limits(), T0).unwrap_err();
        assert!(matches!(error, Error::InvalidArgument { field: "reply_to_seq", .. }));
        assert_eq!(conversation.last_seq(), 1, "nothing changed");
    }

    #[test]
    fn a_forwarded_copy_is_marked_and_keeps_its_content() {
        let mut conversation = group("alice", &["bob"]);
        let mut copy = new_text("f", "look");
        copy.forwarded = true;
        let (_, effects) = conversation.send(&caller("bob"), copy, None, &limits(), T0).unwrap();
        let message = sent_message(&effects);
        assert!(message.forwarded);
        assert_eq!(message.content, new_text("x", "look").content.into());
    }

    #[test]
    fn server_time_never_goes_backwards_in_a_conversation() {
        let mut conversation = group("alice", &["bob"]);
        let (first, _) = send(&mut conversation, "alice", "a", T0 + 100).unwrap();
        let (second, _) = send(&mut conversation, "bob", "b", T0 + 10).unwrap(); // the clock stepped back
        assert_eq!(second.server_time_ms, first.server_time_ms);
    }

    #[test]
    fn a_send_writes_one_row_and_logs_the_message_for_every_member() {
        let mut conversation = group("alice", &["bob", "carol"]);
        let (_, effects) = send(&mut conversation, "alice", "a", T0).unwrap();
        assert!(matches!(&effects.writes[..], [Write::Message(m)] if m.seq == 1 && m.sender_id == "alice"));
        assert_eq!(effects.logged.len(), 1);
        assert_eq!(effects.logged[0].recipients.len(), 3, "the sender's other devices too");
        assert!(matches!(&effects.logged[0].event, LoggedEvent::Message(m) if m.seq == 1));
    }

    #[test]
    fn sending_marks_everything_read_for_the_sender_in_memory_only() {
        let mut conversation = group("alice", &["bob"]);
        send(&mut conversation, "bob", "b", T0).unwrap();
        let (_, effects) = send(&mut conversation, "alice", "a", T0).unwrap();
        let own = conversation.receipt("alice");
        assert_eq!((own.delivered_seq, own.read_seq), (2, 2));
        assert_eq!(effects.lazy_receipts, vec![("g_0001".to_string(), "alice".to_string())]);
        assert!(!effects.writes.iter().any(|w| matches!(w, Write::Receipt { .. })), "no receipt row per message");
    }

    #[test]
    fn a_send_stops_the_senders_typing_for_the_others() {
        let mut conversation = group("alice", &["bob"]);
        conversation.typing.insert("alice".into(), std::time::Instant::now());
        let (_, effects) = send(&mut conversation, "alice", "a", T0).unwrap();
        assert!(matches!(
            &effects.signals[..],
            [Signal { recipients, event: Ephemeral::Typing { active: false, .. } }] if recipients == &["bob"]
        ));
        let (_, effects) = send(&mut conversation, "alice", "b", T0).unwrap();
        assert!(effects.signals.is_empty(), "nothing to stop the second time");
    }

    #[test]
    fn a_send_before_the_window_is_loaded_is_an_internal_error_not_a_duplicate_miss() {
        let record = group("alice", &["bob"]).record;
        let mut restored = Conversation::restore(record, None, Default::default());
        assert!(matches!(send(&mut restored, "alice", "a", T0), Err(Error::Internal(_))));
        restored.set_dedup_window(DedupWindow::default());
        assert_eq!(send(&mut restored, "alice", "a", T0).unwrap().0.seq, 1);
    }
}
