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
        let dm = crate::ids::direct_conversation_id("a", "b");
        assert!(conversation_id("conversation_id", &dm).is_ok());
        assert!(conversation_id("conversation_id", "dm_xyz").is_err());
        assert!(conversation_id("conversation_id", "other_0123456789abcdef0123456789abcdef").is_err());
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
