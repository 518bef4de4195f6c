//! Input validation shared by the gateway (to refuse early, before a network
//! hop) and the broker (which must not trust its callers' shapes either).
//! Every check names the field it refers to.

use imsg_proto::v1::{Caller, create_conversation_request, execute_request, send_message_request};

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

/// Validates a whole client command: every id, size and shape, so that a
/// refused command is refused before anything runs (and names its field).
pub fn command(limits: &Limits, caller: &Caller, command: &execute_request::Command) -> Result<()> {
    use execute_request::Command as C;
    id("caller.user_id", &caller.user_id)?;
    id("caller.device_id", &caller.device_id)?;
    match command {
        C::CreateConversation(request) => match &request.kind {
            Some(create_conversation_request::Kind::Direct(direct)) => {
                id("direct.peer_user_id", &direct.peer_user_id)?;
                if direct.peer_user_id == caller.user_id {
                    return Err(Error::invalid("direct.peer_user_id", "a direct conversation needs another user"));
                }
                if !request.request_id.is_empty() {
                    id("request_id", &request.request_id)?;
                }
            }
            Some(create_conversation_request::Kind::Group(group)) => {
                id("request_id", &request.request_id)?;
                title(limits, &group.title)?;
                if group.member_ids.len() >= limits.max_group_members {
                    return Err(Error::GroupFull { max: limits.max_group_members });
                }
                for member in &group.member_ids {
                    id("group.member_ids", member)?;
                }
            }
            None => return Err(Error::invalid("kind", "set `direct` or `group`")),
        },
        C::GetConversation(r) => conversation_id("conversation_id", &r.conversation_id)?,
        C::ListConversations(r) => {
            page_size(r.page_size)?;
            page_token(&r.page_token)?;
        }
        C::UpdateConversation(r) => {
            conversation_id("conversation_id", &r.conversation_id)?;
            title(limits, &r.title)?;
        }
        C::AddConversationMembers(r) => {
            conversation_id("conversation_id", &r.conversation_id)?;
            if r.user_ids.is_empty() {
                return Err(Error::invalid("user_ids", "must not be empty"));
            }
            if r.user_ids.len() >= limits.max_group_members {
                return Err(Error::GroupFull { max: limits.max_group_members });
            }
            for user in &r.user_ids {
                id("user_ids", user)?;
            }
        }
        C::RemoveConversationMember(r) => {
            conversation_id("conversation_id", &r.conversation_id)?;
            id("user_id", &r.user_id)?;
        }
        C::LeaveConversation(r) => conversation_id("conversation_id", &r.conversation_id)?,
        C::SendMessage(r) => {
            conversation_id("conversation_id", &r.conversation_id)?;
            id("client_message_id", &r.client_message_id)?;
            match &r.content {
                Some(send_message_request::Content::Text(t)) => text(limits, &t.text)?,
                None => return Err(Error::invalid("content", "must be set")),
            }
        }
        C::ListMessages(r) => {
            conversation_id("conversation_id", &r.conversation_id)?;
            page_size(r.page_size)?;
            page_token(&r.page_token)?;
        }
        C::GetSettings(_) | C::UpdateSettings(_) => {}
        C::GetPresence(r) => {
            if r.user_ids.len() > MAX_PRESENCE_BATCH {
                return Err(Error::invalid("user_ids", format!("at most {MAX_PRESENCE_BATCH} users")));
            }
            for user in &r.user_ids {
                id("user_ids", user)?;
            }
        }
        C::Typing(r) => conversation_id("conversation_id", &r.conversation_id)?,
        C::MarkDelivered(r) => mark(&r.conversation_id, r.seq)?,
        C::MarkRead(r) => mark(&r.conversation_id, r.seq)?,
    }
    Ok(())
}

fn mark(conversation: &str, seq: u64) -> Result<()> {
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
