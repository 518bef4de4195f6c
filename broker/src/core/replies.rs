//! Replies: the preview of a quoted message. It is made whenever a reply is
//! served (sent live, listed, replayed), never stored, so it always shows
//! the quoted message as it is now: edited, or unavailable once unsent.

use imsg_proto::v1::{MediaKind, Message, ReplyPreview, SharedKind, message::Content};

/// Characters of text a preview keeps.
pub const SNIPPET_CHARS: usize = 100;

/// The preview of message `seq`, given what storage holds of it.
pub fn preview(seq: u64, quoted: Option<&Message>) -> ReplyPreview {
    match quoted {
        Some(message) if !message.unsent && message.content.is_some() => ReplyPreview {
            seq,
            sender_id: message.sender_id.clone(),
            snippet: snippet(message.content.as_ref()),
            unavailable: false,
        },
        _ => ReplyPreview { seq, unavailable: true, ..ReplyPreview::default() },
    }
}

/// The beginning of a message's text, or a label for its kind.
pub fn snippet(content: Option<&Content>) -> String {
    let text = match content {
        Some(Content::Text(text)) => text.text.as_str(),
        Some(Content::Link(link)) if !link.text.is_empty() => link.text.as_str(),
        Some(Content::Link(link)) => link.url.as_str(),
        Some(Content::Shared(shared)) if !shared.caption.is_empty() => shared.caption.as_str(),
        Some(Content::Media(media)) if !media.caption.is_empty() => media.caption.as_str(),
        Some(Content::Media(media)) => match MediaKind::try_from(media.kind) {
            Ok(MediaKind::Photo) => "photo",
            Ok(MediaKind::Video) => "video",
            Ok(MediaKind::Voice) => "voice message",
            Ok(MediaKind::Gif) => "GIF",
            Ok(MediaKind::Sticker) => "sticker",
            _ => "file",
        },
        Some(Content::Shared(shared)) => match SharedKind::try_from(shared.kind) {
            Ok(SharedKind::Reel) => "shared a reel",
            Ok(SharedKind::Profile) => "shared a profile",
            _ => "shared a post",
        },
        None => "",
    };
    text.chars().take(SNIPPET_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use imsg_proto::v1::{LinkContent, SharedContent, TextContent};

    use super::*;

    fn message(content: Content) -> Message {
        Message { seq: 4, sender_id: "alice".into(), content: Some(content), ..Message::default() }
    }

    #[test]
    fn a_preview_quotes_the_beginning_of_the_text() {
        let long = "x".repeat(500);
        let preview = preview(4, Some(&message(Content::Text(TextContent { text: long }))));
        assert_eq!(preview.snippet.chars().count(), SNIPPET_CHARS);
        assert_eq!((preview.seq, preview.sender_id.as_str(), preview.unavailable), (4, "alice", false));
    }

    #[test]
    fn an_unsent_or_missing_message_is_unavailable_and_shows_nothing() {
        let mut unsent = message(Content::Text(TextContent { text: "secret".into() }));
        unsent.unsent = true;
        for quoted in [Some(&unsent), None] {
            let preview = preview(4, quoted);
            assert!(preview.unavailable);
            assert_eq!((preview.snippet.as_str(), preview.sender_id.as_str()), ("", ""));
        }
    }

    #[test]
    fn links_and_shared_items_get_a_readable_snippet() {
        let link = Content::Link(LinkContent { url: "https://a.example/x".into(), ..Default::default() });
        assert_eq!(snippet(Some(&link)), "https://a.example/x");
        let reel = Content::Shared(SharedContent { kind: SharedKind::Reel as i32, ..Default::default() });
        assert_eq!(snippet(Some(&reel)), "shared a reel");
    }
}
