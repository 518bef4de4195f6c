//! Input validation shared by the gateway (to refuse early, before a network
//! hop) and the broker (which must not trust its callers' shapes either).
//! Every check names the field it refers to.

use crate::{
    config::Limits,
    error::{Error, Result},
    ids::{DIRECT_PREFIX, GROUP_PREFIX},
};

pub use crate::ids::MAX_ID_LEN;
/// Largest page any list RPC returns.
pub const MAX_PAGE_SIZE: usize = 200;
/// Default page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Most users one GetPresence may ask about.
pub const MAX_PRESENCE_BATCH: usize = 200;

/// A user, device, request or client message id ([`crate::ids::check_id`]).
pub fn id(field: &'static str, value: &str) -> Result<()> {
    crate::ids::check_id(value).map_err(|reason| Error::invalid(field, reason))
}

/// A conversation id as the broker derives them (`dm_` or `g_` + 32 hex).
pub fn conversation_id(field: &'static str, value: &str) -> Result<()> {
    let hex = value
        .strip_prefix(DIRECT_PREFIX)
        .or_else(|| value.strip_prefix(GROUP_PREFIX))
        .ok_or_else(|| Error::invalid(field, "malformed conversation id"))?;
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(Error::invalid(field, "malformed conversation id"));
    }
    Ok(())
}

/// Message text: not empty (after trimming), at most `max_text_bytes`.
pub fn text(limits: &Limits, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid("content.text", "must not be empty"));
    }
    if value.len() > limits.max_text_bytes {
        return Err(Error::invalid(
            "content.text",
            format!("{} bytes is over the limit of {}", value.len(), limits.max_text_bytes),
        ));
    }
    Ok(())
}

/// Text that may be empty (a caption, a link's text): at most
/// `max_text_bytes`.
pub fn caption(limits: &Limits, field: &'static str, value: &str) -> Result<()> {
    if value.len() > limits.max_text_bytes {
        return Err(Error::invalid(
            field,
            format!("{} bytes is over the limit of {}", value.len(), limits.max_text_bytes),
        ));
    }
    Ok(())
}

/// Longest URL accepted anywhere in a message.
pub const MAX_URL_BYTES: usize = 2048;
/// Longest shared item title (Instagram's caption limit, in characters).
pub const MAX_SHARED_TITLE_CHARS: usize = 2200;
/// Longest link preview title and description, in characters.
pub const MAX_PREVIEW_TITLE_CHARS: usize = 300;
pub const MAX_PREVIEW_DESCRIPTION_CHARS: usize = 1000;

/// An absolute URL with one of `schemes`, at most [`MAX_URL_BYTES`];
/// empty only when `optional`.
pub fn url(field: &'static str, value: &str, schemes: &[&str], optional: bool) -> Result<()> {
    if value.is_empty() {
        return if optional { Ok(()) } else { Err(Error::invalid(field, "must not be empty")) };
    }
    if value.len() > MAX_URL_BYTES {
        return Err(Error::invalid(field, format!("longer than {MAX_URL_BYTES} bytes")));
    }
    let parsed = ::url::Url::parse(value).map_err(|e| Error::invalid(field, format!("not a URL: {e}")))?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(Error::invalid(field, format!("must be an {} URL", schemes.join(" or "))));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid(field, "must name a host"));
    }
    Ok(())
}

fn chars_at_most(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.chars().count() > max {
        return Err(Error::invalid(field, format!("longer than {max} characters")));
    }
    Ok(())
}

/// A shared post, reel or profile: what a client needs to render its card.
pub fn shared(limits: &Limits, shared: &imsg_proto::v1::SharedContent) -> Result<()> {
    use imsg_proto::v1::SharedKind;
    if !matches!(SharedKind::try_from(shared.kind), Ok(SharedKind::Post | SharedKind::Reel | SharedKind::Profile)) {
        return Err(Error::invalid("content.shared.kind", "must be POST, REEL or PROFILE"));
    }
    if shared.item_id.is_empty() || shared.item_id.len() > 128 || shared.item_id.chars().any(char::is_control) {
        return Err(Error::invalid("content.shared.item_id", "1 to 128 bytes, no control characters"));
    }
    url("content.shared.url", &shared.url, &["https"], false)?;
    if shared.author.len() > MAX_ID_LEN || shared.author.chars().any(char::is_control) {
        return Err(Error::invalid(
            "content.shared.author",
            format!("at most {MAX_ID_LEN} bytes, no control characters"),
        ));
    }
    chars_at_most("content.shared.title", &shared.title, MAX_SHARED_TITLE_CHARS)?;
    url("content.shared.thumbnail_url", &shared.thumbnail_url, &["https"], true)?;
    caption(limits, "content.shared.caption", &shared.caption)
}

/// A link (http or https) with optional text and client-supplied preview.
pub fn link(limits: &Limits, link: &imsg_proto::v1::LinkContent) -> Result<()> {
    url("content.link.url", &link.url, &["http", "https"], false)?;
    caption(limits, "content.link.text", &link.text)?;
    if let Some(preview) = &link.preview {
        chars_at_most("content.link.preview.title", &preview.title, MAX_PREVIEW_TITLE_CHARS)?;
        chars_at_most("content.link.preview.description", &preview.description, MAX_PREVIEW_DESCRIPTION_CHARS)?;
        url("content.link.preview.image_url", &preview.image_url, &["https"], true)?;
    }
    Ok(())
}

/// A medium a client sends: an upload's id and a caption. (The gateway
/// fills in the rest from what it verified at upload.)
pub fn media(limits: &Limits, media: &imsg_proto::v1::MediaContent) -> Result<()> {
    let ok = media
        .media_id
        .strip_prefix("m_")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(Error::invalid("content.media.media_id", "malformed media id"));
    }
    caption(limits, "content.media.caption", &media.caption)
}

/// One message's content, whatever its kind.
pub fn content(limits: &Limits, content: Option<&imsg_proto::v1::message::Content>) -> Result<()> {
    use imsg_proto::v1::message::Content;
    match content {
        Some(Content::Text(t)) => text(limits, &t.text),
        Some(Content::Shared(s)) => shared(limits, s),
        Some(Content::Link(l)) => link(limits, l),
        Some(Content::Media(m)) => media(limits, m),
        None => Err(Error::invalid("content", "must be set")),
    }
}

/// A reaction: exactly one emoji (with its modifiers), or empty to remove.
pub fn emoji(value: &str) -> Result<()> {
    if !value.is_empty() && emojis::get(value).is_none() {
        return Err(Error::invalid("emoji", "must be exactly one emoji"));
    }
    Ok(())
}

/// A group title: at most `max_title_bytes`, no control characters.
pub fn title(limits: &Limits, value: &str) -> Result<()> {
    if value.len() > limits.max_title_bytes {
        return Err(Error::invalid("title", format!("longer than {} bytes", limits.max_title_bytes)));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid("title", "must not contain control characters"));
    }
    Ok(())
}

/// A page size: 0 means the default; negative is an error; large is capped.
pub fn page_size(value: i32) -> Result<usize> {
    match value {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(Error::invalid("page_size", "must not be negative")),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

/// A page token the broker issued: a decimal number.
pub fn page_token(value: &str) -> Result<Option<u64>> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse::<u64>().map(Some).map_err(|_| Error::invalid("page_token", "not a token this server issued"))
}

/// A mark: a conversation and a seq of at least 1.
pub fn mark(conversation: &str, seq: u64) -> Result<()> {
    conversation_id("conversation_id", conversation)?;
    if seq == 0 {
        return Err(Error::invalid("seq", "must be at least 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_empty_long_and_odd_characters() {
        assert!(id("user_id", "alice.b-1@x").is_ok());
        assert!(id("user_id", "").is_err());
        assert!(id("user_id", &"a".repeat(65)).is_err());
        assert!(id("user_id", "al ice").is_err());
        assert!(id("user_id", "alice/..").is_err());
    }

    #[test]
    fn conversation_ids_must_look_derived() {
        let dm = crate::ids::IdKey::new(b"test-id-secret-0123").unwrap().direct_conversation_id("a", "b");
        assert!(conversation_id("conversation_id", &dm).is_ok());
        assert!(conversation_id("conversation_id", "dm_xyz").is_err());
        assert!(conversation_id("conversation_id", "other_0123456789abcdef0123456789abcdef").is_err());
    }

    #[test]
    fn links_must_be_absolute_http_with_a_host() {
        let link = |url: &str| imsg_proto::v1::LinkContent { url: url.into(), ..Default::default() };
        let limits = Limits::default();
        assert!(super::link(&limits, &link("https://example.com/a?b=c")).is_ok());
        assert!(super::link(&limits, &link("http://example.com")).is_ok());
        for bad in ["", "javascript:alert(1)", "file:///etc/passwd", "example.com", "https://", "ftp://x.org"] {
            assert!(super::link(&limits, &link(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_reaction_is_one_emoji_or_nothing() {
        for good in ["", "❤️", "👍🏽", "👨‍👩‍👧", "🇫🇷"] {
            assert!(emoji(good).is_ok(), "{good:?} refused");
        }
        for bad in ["a", "❤️❤️", "<3", "👍 ", ":+1:"] {
            assert!(emoji(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn text_limits_are_enforced_in_bytes() {
        let limits = Limits { max_text_bytes: 4, ..Limits::default() };
        assert!(text(&limits, "abcd").is_ok());
        assert!(text(&limits, "abcde").is_err());
        assert!(text(&limits, "ééé").is_err()); // 6 bytes
        assert!(text(&limits, "  ").is_err());
    }
}
