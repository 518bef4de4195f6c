//! Push notifications: who is notified of a message, and with what text.
//!
//! A member is notified of someone else's message on each device that has
//! a push target and no live stream, unless the conversation is a message
//! request to them (requests never push), or they muted it or everything.
//! The text goes along only when neither their setting nor the
//! conversation's hides previews. Each notification has an idempotency key
//! fixed by (user, device, conversation, seq): every retry, after a crash
//! too, carries the same one, so the push gateway drops repeats.

use imsg_proto::v1::{Message, message::Content};
use sha2::{Digest, Sha256};

use crate::storage::{NotifyRecord, SettingsRecord};

/// Muted until `until_ms` (-1: until unmuted; 0: not muted) at `now_ms`?
pub fn muted(until_ms: i64, now_ms: i64) -> bool {
    until_ms == -1 || until_ms > now_ms
}

/// What a notification of `message` to `recipient` says, or `None` when
/// there is to be none.
pub fn preview(
    message: &Message,
    recipient: &str,
    settings: &SettingsRecord,
    conversation: Option<&NotifyRecord>,
    is_request: bool,
    now_ms: i64,
) -> Option<Preview> {
    let conversation = conversation.copied().unwrap_or_default();
    if message.sender_id == recipient
        || is_request
        || muted(settings.notifications_muted_until_ms, now_ms)
        || muted(conversation.muted_until_ms, now_ms)
    {
        return None;
    }
    let hidden = settings.hide_push_previews || conversation.hide_previews;
    Some(Preview { text: if hidden { None } else { Some(summary(message)) } })
}

/// A notification's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    pub text: Option<String>,
}

/// One line for a lock screen.
fn summary(message: &Message) -> String {
    match &message.content {
        Some(Content::Text(text)) => text.text.clone(),
        Some(Content::Media(media)) if !media.caption.is_empty() => media.caption.clone(),
        Some(Content::Media(_)) => "sent an attachment".into(),
        Some(Content::Link(link)) if !link.text.is_empty() => link.text.clone(),
        Some(Content::Link(link)) => link.url.clone(),
        Some(Content::Shared(_)) => "shared a post".into(),
        None => String::new(),
    }
}

/// The key every attempt at one notification carries.
pub fn idempotency_key(user: &str, device: &str, conversation: &str, seq: u64) -> String {
    let mut hasher = Sha256::new();
    for part in [user, device, conversation, &seq.to_string()] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hasher.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use imsg_proto::v1::TextContent;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn message(sender: &str, text: &str) -> Message {
        Message {
            sender_id: sender.into(),
            conversation_id: "dm_1".into(),
            seq: 4,
            content: Some(Content::Text(TextContent { text: text.into() })),
            ..Message::default()
        }
    }

    #[test]
    fn a_member_is_notified_of_others_messages_with_the_text() {
        let settings = SettingsRecord::default();
        let hi = message("alice", "hi bob");
        assert_eq!(preview(&hi, "bob", &settings, None, false, NOW), Some(Preview { text: Some("hi bob".into()) }));
        assert_eq!(preview(&hi, "alice", &settings, None, false, NOW), None, "not of one's own");
    }

    #[test]
    fn requests_and_mutes_send_nothing_and_a_mute_ends() {
        let hi = message("alice", "hi bob");
        let settings = SettingsRecord::default();
        assert_eq!(preview(&hi, "bob", &settings, None, true, NOW), None, "a request never pushes");
        let forever = NotifyRecord { muted_until_ms: -1, hide_previews: false };
        assert_eq!(preview(&hi, "bob", &settings, Some(&forever), false, NOW), None);
        let until = NotifyRecord { muted_until_ms: NOW + 1, hide_previews: false };
        assert_eq!(preview(&hi, "bob", &settings, Some(&until), false, NOW), None);
        assert!(preview(&hi, "bob", &settings, Some(&until), false, NOW + 1).is_some(), "the mute ran out");
        let all = SettingsRecord { notifications_muted_until_ms: -1, ..SettingsRecord::default() };
        assert_eq!(preview(&hi, "bob", &all, None, false, NOW), None);
    }

    #[test]
    fn previews_hide_by_the_users_or_the_conversations_setting() {
        let hi = message("alice", "secret");
        let hidden = SettingsRecord { hide_push_previews: true, ..SettingsRecord::default() };
        assert_eq!(preview(&hi, "bob", &hidden, None, false, NOW), Some(Preview { text: None }));
        let quiet = NotifyRecord { muted_until_ms: 0, hide_previews: true };
        let shown = SettingsRecord::default();
        assert_eq!(preview(&hi, "bob", &shown, Some(&quiet), false, NOW), Some(Preview { text: None }));
    }

    #[test]
    fn the_idempotency_key_is_fixed_by_the_notification() {
        let key = idempotency_key("bob", "phone", "dm_1", 4);
        assert_eq!(key, idempotency_key("bob", "phone", "dm_1", 4));
        assert_ne!(key, idempotency_key("bob", "tablet", "dm_1", 4));
        assert_ne!(key, idempotency_key("bob", "phone", "dm_1", 5));
    }
}
