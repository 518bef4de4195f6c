//! How messages and their changes read in a terminal: one line each, with
//! what kind of message it is, its reply preview, edit mark and reactions.

use imsg_proto::v1::{MediaContent, MediaKind, Message, ReactionUpdate, SharedKind, message::Content};

/// The content of a message as text.
pub fn content(message: &Message) -> String {
    if message.unsent {
        return "(unsent)".into();
    }
    match &message.content {
        Some(Content::Text(text)) => text.text.clone(),
        Some(Content::Link(link)) if link.text.is_empty() => format!("[link] {}", link.url),
        Some(Content::Link(link)) => format!("{} [link] {}", link.text, link.url),
        Some(Content::Shared(shared)) => {
            let kind = match SharedKind::try_from(shared.kind) {
                Ok(SharedKind::Reel) => "reel",
                Ok(SharedKind::Profile) => "profile",
                _ => "post",
            };
            let caption = if shared.caption.is_empty() { String::new() } else { format!("{} ", shared.caption) };
            format!("{caption}[shared {kind} by @{}: {}] {}", shared.author, shared.title, shared.url)
        }
        Some(Content::Media(media)) => {
            let caption = if media.caption.is_empty() { String::new() } else { format!(" {}", media.caption) };
            format!("[{}]{caption}", medium(media))
        }
        None => "(unsupported content)".into(),
    }
}

/// A medium in a few words: kind, size, dimensions or duration, name.
pub fn medium(media: &MediaContent) -> String {
    let kind = match MediaKind::try_from(media.kind) {
        Ok(MediaKind::Photo) => "photo",
        Ok(MediaKind::Video) => "video",
        Ok(MediaKind::Voice) => "voice",
        Ok(MediaKind::Gif) => "GIF",
        Ok(MediaKind::Sticker) => "sticker",
        _ => "file",
    };
    let size = match media.size_bytes {
        n if n >= 1024 * 1024 => format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0)),
        n if n >= 1024 => format!("{:.0} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    };
    let mut parts = vec![kind.to_string(), size];
    if media.width > 0 {
        parts.push(format!("{}x{}", media.width, media.height));
    }
    if media.duration_ms > 0 {
        parts.push(format!("{}:{:02}", media.duration_ms / 60_000, media.duration_ms / 1000 % 60));
    }
    if !media.file_name.is_empty() {
        parts.push(media.file_name.clone());
    }
    parts.join(" ")
}

/// A whole message line: `[seq] sender: content`, then what decorates it.
pub fn line(message: &Message) -> String {
    let mut line = format!("[{}] {}: ", message.seq, message.sender_id);
    if let Some(preview) = &message.reply_preview {
        if preview.unavailable {
            line.push_str(&format!("(replying to [{}], unavailable) ", preview.seq));
        } else {
            line.push_str(&format!("(replying to [{}] {}: \"{}\") ", preview.seq, preview.sender_id, preview.snippet));
        }
    }
    if message.forwarded {
        line.push_str("(forwarded) ");
    }
    line.push_str(&content(message));
    if message.edit_time_ms > 0 {
        line.push_str(" (edited)");
    }
    if !message.reactions.is_empty() {
        let reactions: Vec<String> = message.reactions.iter().map(|r| format!("{} {}", r.emoji, r.user_id)).collect();
        line.push_str(&format!("  [{}]", reactions.join(", ")));
    }
    line
}

/// A reaction as it happens.
pub fn reaction(update: &ReactionUpdate) -> String {
    if update.emoji.is_empty() {
        format!("   {} removed their reaction to [{}]", update.user_id, update.seq)
    } else {
        format!("   {} reacted {} to [{}]", update.user_id, update.emoji, update.seq)
    }
}

/// An edit or unsend as it happens.
pub fn update(message: &Message) -> String {
    if message.unsent {
        format!("   {} unsent [{}]", message.sender_id, message.seq)
    } else {
        format!("   edited: {}", line(message))
    }
}

#[cfg(test)]
mod tests {
    use imsg_proto::v1::{LinkContent, Reaction, ReplyPreview, TextContent};

    use super::*;

    #[test]
    fn a_line_shows_reply_edit_forward_and_reactions() {
        let message = Message {
            seq: 5,
            sender_id: "bob".into(),
            content: Some(Content::Text(TextContent { text: "yes".into() })),
            reply_preview: Some(ReplyPreview {
                seq: 2,
                sender_id: "alice".into(),
                snippet: "lunch?".into(),
                unavailable: false,
            }),
            edit_time_ms: 1,
            forwarded: true,
            reactions: vec![Reaction { user_id: "alice".into(), emoji: "👍".into(), react_time_ms: 1 }],
            ..Message::default()
        };
        assert_eq!(line(&message), "[5] bob: (replying to [2] alice: \"lunch?\") (forwarded) yes (edited)  [👍 alice]");
    }

    #[test]
    fn a_medium_reads_as_kind_size_and_dimensions() {
        let photo = MediaContent {
            kind: MediaKind::Photo as i32,
            size_bytes: 1_572_864,
            width: 640,
            height: 480,
            caption: "cat".into(),
            ..Default::default()
        };
        let message = Message { content: Some(Content::Media(photo)), ..Message::default() };
        assert_eq!(content(&message), "[photo 1.5 MiB 640x480] cat");
        let voice =
            MediaContent { kind: MediaKind::Voice as i32, size_bytes: 2048, duration_ms: 75_000, ..Default::default() };
        assert_eq!(medium(&voice), "voice 2 KiB 1:15");
    }

    #[test]
    fn unsent_and_links_read_plainly() {
        let unsent = Message { seq: 3, sender_id: "a".into(), unsent: true, ..Message::default() };
        assert_eq!(update(&unsent), "   a unsent [3]");
        let link = Message {
            content: Some(Content::Link(LinkContent { url: "https://x.org".into(), ..Default::default() })),
            ..Message::default()
        };
        assert_eq!(content(&link), "[link] https://x.org");
    }
}
