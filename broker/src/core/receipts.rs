//! Delivery and read watermarks: per member, they only move forward,
//! `read <= delivered <= last seq`, and a member who hides read receipts
//! keeps their read position to themself (see
//! [`Conversation::snapshot`]).

use imsg_proto::internal::v1::Caller;

use super::{Conversation, Effects, Logged, Write};
use crate::{
    error::{Error, Result},
    events::LoggedEvent,
};

/// Which watermark a mark moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    Delivered,
    /// Read implies delivered.
    Read,
}

/// The read position of `reader` as `recipient` may see it in their update
/// log: hidden (0) when either hides read receipts, never from oneself.
pub fn read_seq_for(recipient: &str, recipient_hides: bool, reader: &str, reader_hides: bool, read_seq: u64) -> u64 {
    if recipient != reader && (reader_hides || recipient_hides) { 0 } else { read_seq }
}

impl Conversation {
    /// Moves the caller's watermark to `seq` (never back). `hide_read` is
    /// the caller's setting, which their user partition supplies.
    pub fn mark(&mut self, caller: &Caller, seq: u64, kind: MarkKind, hide_read: bool) -> Result<Effects> {
        self.require_member(&caller.user_id)?;
        if seq > self.last_seq {
            return Err(Error::invalid("seq", format!("beyond the last message ({})", self.last_seq)));
        }
        let receipt = self.receipts.entry(caller.user_id.clone()).or_default();
        let before = *receipt;
        receipt.delivered_seq = receipt.delivered_seq.max(seq);
        if kind == MarkKind::Read {
            receipt.read_seq = receipt.read_seq.max(seq);
        }
        receipt.hide_read = hide_read;
        let after = *receipt;
        let mut effects = Effects::default();
        if after == before {
            return Ok(effects);
        }
        effects.writes.push(Write::Receipt {
            conversation_id: self.record.id.clone(),
            user_id: caller.user_id.clone(),
            record: after,
        });
        if after.delivered_seq == before.delivered_seq && after.read_seq == before.read_seq {
            return Ok(effects); // only the setting changed: nothing to tell
        }
        // A member who has not accepted tells only their own devices.
        let recipients =
            if self.is_request_for(&caller.user_id) { vec![caller.user_id.clone()] } else { self.listeners() };
        effects.logged.push(Logged {
            recipients,
            event: LoggedEvent::Receipt {
                conversation_id: self.record.id.clone(),
                user_id: caller.user_id.clone(),
                delivered_seq: after.delivered_seq,
                read_seq: after.read_seq,
                hide_read,
            },
        });
        Ok(effects)
    }

    /// The user changed their read-receipt setting: their receipt here
    /// records it (a no-op for a non-member).
    pub fn set_hide_read(&mut self, user: &str, hide_read: bool) -> Effects {
        let mut effects = Effects::default();
        if self.member(user).is_none() {
            return effects;
        }
        let receipt = self.receipts.entry(user.to_owned()).or_default();
        receipt.hide_read = hide_read;
        effects.writes.push(Write::Receipt {
            conversation_id: self.record.id.clone(),
            user_id: user.to_owned(),
            record: *receipt,
        });
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Viewer, testing::*};

    fn with_messages(count: u64) -> Conversation {
        let mut conversation = group("alice", &["bob", "carol"]);
        conversation.last_seq = count;
        conversation
    }

    #[test]
    fn watermarks_only_move_forward_and_a_step_back_is_silent() {
        let mut conversation = with_messages(5);
        conversation.mark(&caller("bob"), 4, MarkKind::Read, false).unwrap();
        let effects = conversation.mark(&caller("bob"), 2, MarkKind::Read, false).unwrap();
        assert!(effects.is_empty());
        let receipt = conversation.receipt("bob");
        assert_eq!((receipt.delivered_seq, receipt.read_seq), (4, 4));
    }

    #[test]
    fn read_implies_delivered_but_delivered_does_not_imply_read() {
        let mut conversation = with_messages(5);
        conversation.mark(&caller("bob"), 3, MarkKind::Delivered, false).unwrap();
        assert_eq!(conversation.receipt("bob").read_seq, 0);
        conversation.mark(&caller("bob"), 5, MarkKind::Read, false).unwrap();
        assert_eq!((conversation.receipt("bob").delivered_seq, conversation.receipt("bob").read_seq), (5, 5));
    }

    #[test]
    fn a_mark_beyond_the_last_message_is_refused_and_changes_nothing() {
        let mut conversation = with_messages(2);
        let error = conversation.mark(&caller("bob"), 3, MarkKind::Read, false).unwrap_err();
        assert!(matches!(error, Error::InvalidArgument { field: "seq", .. }));
        assert_eq!(conversation.receipt("bob").delivered_seq, 0);
        assert!(matches!(conversation.mark(&caller("zed"), 1, MarkKind::Read, false), Err(Error::NotMember(_))));
    }

    #[test]
    fn a_moved_watermark_is_written_and_logged_for_every_member() {
        let mut conversation = with_messages(3);
        let effects = conversation.mark(&caller("bob"), 3, MarkKind::Read, false).unwrap();
        assert!(
            matches!(&effects.writes[..], [Write::Receipt { user_id, record, .. }] if user_id == "bob" && record.read_seq == 3)
        );
        assert_eq!(effects.logged[0].recipients.len(), 3);
    }

    #[test]
    fn a_setting_change_alone_is_written_but_not_announced() {
        let mut conversation = with_messages(3);
        conversation.mark(&caller("bob"), 3, MarkKind::Read, false).unwrap();
        let effects = conversation.mark(&caller("bob"), 3, MarkKind::Read, true).unwrap();
        assert_eq!(effects.writes.len(), 1);
        assert!(effects.logged.is_empty());
    }

    #[test]
    fn hidden_read_receipts_are_reciprocal() {
        let mut conversation = with_messages(3);
        conversation.mark(&caller("bob"), 3, MarkKind::Read, true).unwrap(); // bob hides
        conversation.mark(&caller("carol"), 2, MarkKind::Read, false).unwrap();
        let read_seq_of = |viewer: &Viewer, user: &str| {
            let view = conversation.snapshot(Some(viewer));
            view.members.iter().find(|m| m.user_id == user).map(|m| (m.delivered_seq, m.read_seq)).unwrap()
        };
        let alice = Viewer::new("alice");
        assert_eq!(read_seq_of(&alice, "bob"), (3, 0), "bob hides his read position, not delivery");
        assert_eq!(read_seq_of(&alice, "carol"), (2, 2));
        let bob = Viewer { hide_read_receipts: true, ..Viewer::new("bob") };
        assert_eq!(read_seq_of(&bob, "carol"), (2, 0), "who hides theirs sees no one's");
        assert_eq!(read_seq_of(&bob, "bob"), (3, 3), "but always their own");
        assert_eq!(conversation.snapshot(None).members[1].read_seq, 0, "events carry no watermarks");
    }

    #[test]
    fn receipts_in_update_logs_hide_the_read_position_either_way() {
        assert_eq!(read_seq_for("alice", false, "bob", false, 7), 7);
        assert_eq!(read_seq_for("alice", false, "bob", true, 7), 0, "the reader hides");
        assert_eq!(read_seq_for("alice", true, "bob", false, 7), 0, "the recipient hides, so sees none");
        assert_eq!(read_seq_for("bob", true, "bob", true, 7), 7, "one's own devices always see it");
    }

    #[test]
    fn the_setting_reaches_members_receipts_only() {
        let mut conversation = with_messages(1);
        assert_eq!(conversation.set_hide_read("bob", true).writes.len(), 1);
        assert!(conversation.receipt("bob").hide_read);
        assert!(conversation.set_hide_read("zed", true).is_empty());
    }

    #[test]
    fn unread_counts_start_after_what_was_read_and_after_joining() {
        let mut conversation = with_messages(10);
        conversation.mark(&caller("bob"), 4, MarkKind::Read, false).unwrap();
        assert_eq!(conversation.summary(&Viewer::new("bob")).unwrap().unread_count, 6);
        conversation.record.members[2].joined_after_seq = 8; // carol joined late
        assert_eq!(conversation.summary(&Viewer::new("carol")).unwrap().unread_count, 2);
        assert!(conversation.summary(&Viewer::new("zed")).is_none());
    }
}
