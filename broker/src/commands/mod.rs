//! The command table: every client command, one row each.
//!
//! A row names the command (its variant of the `Execute` oneof), the
//! answer it gives, and the `Broker` method that runs it; the command's
//! request type implements [`ClientCommand`] beside it: where it starts
//! (its home key, which decides the partition and so the node) and what it
//! checks before anything runs. From the table follow [`validate()`] and
//! [`home_key`] (used by the broker and, before the hop, by a remote
//! gateway) and the broker's dispatch. The gateway's unary RPCs are listed
//! once more in `gateway/src/service.rs`, checked by the compiler against
//! the proto's service.
//!
//! Adding a command: its messages and RPC in the proto, a row here with its
//! `ClientCommand` impl and handler, its rule in `crate::core`, and its
//! partition step (`crate::partition`). See docs/ARCHITECTURE.md.

use imsg_proto::internal::v1::{AcquireBudgetRequest, Caller, MessageMediaRequest, execute_request, execute_response};
use imsg_proto::v1::{
    AddConversationMembersRequest, CreateConversationRequest, DeleteMessageForMeRequest, EditMessageRequest,
    ForwardMessageRequest, GetConversationRequest, GetPresenceRequest, GetSettingsRequest, LeaveConversationRequest,
    ListConversationsRequest, ListMessagesRequest, MarkDelivered, MarkRead, ReactToMessageRequest,
    RemoveConversationMemberRequest, SendMessageRequest, TypingSignal, UnsendMessageRequest, UpdateConversationRequest,
    UpdateSettingsRequest, WhoMayMessage, create_conversation_request, send_message_request,
};

use crate::{
    Broker,
    config::Limits,
    error::{Error, Result},
    validate::{self, MAX_PRESENCE_BATCH, conversation_id, id, page_size, page_token, text, title},
};

/// Most conversations one ForwardMessage sends to.
pub const MAX_FORWARD_TARGETS: usize = 5;

/// What each client command declares.
pub trait ClientCommand {
    /// The key whose partition the command starts at: its conversation's,
    /// or the caller's for their own settings, inbox and presence.
    fn home_key(&self, caller: &Caller) -> String;
    /// Every id, size and shape, so that a refused command is refused
    /// before anything runs, naming its field.
    fn validate(&self, limits: &Limits, caller: &Caller) -> Result<()>;
}

/// Writes [`home_key`], [`validate`] and the broker's dispatch from the
/// rows: `Variant => AnswerVariant by handler`.
macro_rules! command_table {
    ($($variant:ident => $answer:ident by $handler:ident),* $(,)?) => {
        /// The home key of any client command ([`ClientCommand::home_key`]).
        pub fn home_key(caller: &Caller, command: &execute_request::Command) -> String {
            match command {
                $(execute_request::Command::$variant(request) => request.home_key(caller),)*
            }
        }

        /// Validates the caller's identity and the command
        /// ([`ClientCommand::validate`]).
        pub fn validate(limits: &Limits, caller: &Caller, command: &execute_request::Command) -> Result<()> {
            id("caller.user_id", &caller.user_id)?;
            id("caller.device_id", &caller.device_id)?;
            match command {
                $(execute_request::Command::$variant(request) => request.validate(limits, caller),)*
            }
        }

        impl Broker {
            /// Runs a validated command whose home partition is served here.
            pub(crate) async fn dispatch(
                &self,
                caller: Caller,
                home: String,
                command: execute_request::Command,
            ) -> Result<execute_response::Result> {
                Ok(match command {
                    $(execute_request::Command::$variant(request) => {
                        execute_response::Result::$answer(self.$handler(caller, home, request).await?)
                    })*
                })
            }
        }
    };
}

command_table! {
    CreateConversation => CreateConversation by create_conversation,
    GetConversation => GetConversation by get_conversation,
    ListConversations => ListConversations by list_conversations,
    UpdateConversation => UpdateConversation by update_conversation,
    AddConversationMembers => AddConversationMembers by add_conversation_members,
    RemoveConversationMember => RemoveConversationMember by remove_conversation_member,
    LeaveConversation => LeaveConversation by leave_conversation,
    SendMessage => SendMessage by send_message,
    ListMessages => ListMessages by list_messages,
    ReactToMessage => ReactToMessage by react_to_message,
    EditMessage => EditMessage by edit_message,
    UnsendMessage => UnsendMessage by unsend_message,
    DeleteMessageForMe => DeleteMessageForMe by delete_message_for_me,
    ForwardMessage => ForwardMessage by forward_message,
    MessageMedia => MessageMedia by message_media,
    AcquireBudget => AcquireBudget by acquire_budget,
    GetSettings => GetSettings by get_settings,
    UpdateSettings => UpdateSettings by update_settings,
    GetPresence => GetPresence by get_presence,
    BlockUser => BlockUser by block_user,
    UnblockUser => UnblockUser by unblock_user,
    ListBlockedUsers => ListBlockedUsers by list_blocked_users,
    AcceptConversation => AcceptConversation by accept_conversation,
    DeclineConversation => DeclineConversation by decline_conversation,
    DeclareContacts => DeclareContacts by declare_contacts,
    RegisterPushTarget => RegisterPushTarget by register_push_target,
    UnregisterPushTarget => UnregisterPushTarget by unregister_push_target,
    SetConversationNotifications => SetConversationNotifications by set_conversation_notifications,
    Report => Report by report,
    ListReports => ListReports by list_reports,
    ClaimReport => ClaimReport by claim_report,
    ResolveReport => ResolveReport by resolve_report,
    LiftSuspension => LiftSuspension by lift_suspension,
    ListAuditLog => ListAuditLog by list_audit_log,
    DeleteAccount => DeleteAccount by delete_account,
    Typing => Accepted by typing,
    MarkDelivered => Accepted by mark_delivered,
    MarkRead => Accepted by mark_read,
}

// ---- the rows: what each command checks and where it starts ----

impl ClientCommand for CreateConversationRequest {
    /// The caller's: the conversation's id is derived there with the
    /// brokers' secret (gateways do not hold it), the members asked whether
    /// they accept the caller, and the conversation created where it lives.
    fn home_key(&self, caller: &Caller) -> String {
        caller.user_id.clone()
    }

    fn validate(&self, limits: &Limits, caller: &Caller) -> Result<()> {
        match &self.kind {
            Some(create_conversation_request::Kind::Direct(direct)) => {
                id("direct.peer_user_id", &direct.peer_user_id)?;
                if direct.peer_user_id == caller.user_id {
                    return Err(Error::invalid("direct.peer_user_id", "a direct conversation needs another user"));
                }
                if !self.request_id.is_empty() {
                    id("request_id", &self.request_id)?;
                }
            }
            Some(create_conversation_request::Kind::Group(group)) => {
                id("request_id", &self.request_id)?;
                title(limits, &group.title)?;
                if group.member_ids.len() >= limits.max_group_members {
                    return Err(Error::GroupFull { max: limits.max_group_members });
                }
                for member in &group.member_ids {
                    id("group.member_ids", member)?;
                }
            }
            None => return Err(Error::invalid("kind", "set `direct` or `group`")),
        }
        Ok(())
    }
}

impl ClientCommand for GetConversationRequest {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        conversation_id("conversation_id", &self.conversation_id)
    }
}

impl ClientCommand for ListConversationsRequest {
    fn home_key(&self, caller: &Caller) -> String {
        caller.user_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        page_size(self.page_size)?;
        page_token(&self.page_token).map(drop)
    }
}

impl ClientCommand for UpdateConversationRequest {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, limits: &Limits, _: &Caller) -> Result<()> {
        conversation_id("conversation_id", &self.conversation_id)?;
        title(limits, &self.title)
    }
}

impl ClientCommand for AddConversationMembersRequest {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, limits: &Limits, _: &Caller) -> Result<()> {
        conversation_id("conversation_id", &self.conversation_id)?;
        if self.user_ids.is_empty() {
            return Err(Error::invalid("user_ids", "must not be empty"));
        }
        if self.user_ids.len() >= limits.max_group_members {
            return Err(Error::GroupFull { max: limits.max_group_members });
        }
        self.user_ids.iter().try_for_each(|user| id("user_ids", user))
    }
}

impl ClientCommand for RemoveConversationMemberRequest {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        conversation_id("conversation_id", &self.conversation_id)?;
        id("user_id", &self.user_id)
    }
}

impl ClientCommand for LeaveConversationRequest {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        conversation_id("conversation_id", &self.conversation_id)
    }
}

impl ClientCommand for SendMessageRequest {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, limits: &Limits, _: &Caller) -> Result<()> {
        conversation_id("conversation_id", &self.conversation_id)?;
        id("client_message_id", &self.client_message_id)?;
        match &self.content {
            Some(send_message_request::Content::Text(t)) => text(limits, &t.text),
            Some(send_message_request::Content::Shared(shared)) => validate::shared(limits, shared),
            Some(send_message_request::Content::Link(link)) => validate::link(limits, link),
            Some(send_message_request::Content::Media(media)) => validate::media(limits, media),
            None => Err(Error::invalid("content", "must be set")),
        }
    }
}

/// A message named by conversation and seq.
fn message_ref(conversation: &str, seq: u64) -> Result<()> {
    conversation_id("conversation_id", conversation)?;
    if seq == 0 {
        return Err(Error::invalid("seq", "must be at least 1"));
    }
    Ok(())
}

impl ClientCommand for ReactToMessageRequest {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        message_ref(&self.conversation_id, self.seq)?;
        validate::emoji(&self.emoji)
    }
}

impl ClientCommand for EditMessageRequest {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, limits: &Limits, _: &Caller) -> Result<()> {
        message_ref(&self.conversation_id, self.seq)?;
        validate::caption(limits, "text", &self.text)
    }
}

impl ClientCommand for UnsendMessageRequest {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        message_ref(&self.conversation_id, self.seq)
    }
}

impl ClientCommand for DeleteMessageForMeRequest {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        message_ref(&self.conversation_id, self.seq)
    }
}

impl ClientCommand for MessageMediaRequest {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        message_ref(&self.conversation_id, self.seq)
    }
}

/// Most tokens one lease may take.
pub const MAX_BUDGET_LEASE: u32 = 1000;

impl ClientCommand for AcquireBudgetRequest {
    /// The caller's: the one place their budget is counted.
    fn home_key(&self, caller: &Caller) -> String {
        caller.user_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        if self.want == 0 || self.want > MAX_BUDGET_LEASE {
            return Err(Error::invalid("want", format!("1 to {MAX_BUDGET_LEASE} tokens")));
        }
        Ok(())
    }
}

impl ClientCommand for ForwardMessageRequest {
    /// The source conversation: its partition checks the caller may see
    /// the message; the copies go from there.
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        message_ref(&self.conversation_id, self.seq)?;
        id("client_message_id", &self.client_message_id)?;
        if self.to_conversation_ids.is_empty() || self.to_conversation_ids.len() > MAX_FORWARD_TARGETS {
            return Err(Error::invalid("to_conversation_ids", format!("1 to {MAX_FORWARD_TARGETS} conversations")));
        }
        for (i, target) in self.to_conversation_ids.iter().enumerate() {
            conversation_id("to_conversation_ids", target)?;
            if self.to_conversation_ids[..i].contains(target) {
                return Err(Error::invalid("to_conversation_ids", format!("{target} is named twice")));
            }
        }
        Ok(())
    }
}

impl ClientCommand for ListMessagesRequest {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        conversation_id("conversation_id", &self.conversation_id)?;
        page_size(self.page_size)?;
        page_token(&self.page_token).map(drop)
    }
}

impl ClientCommand for GetSettingsRequest {
    fn home_key(&self, caller: &Caller) -> String {
        caller.user_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        Ok(())
    }
}

impl ClientCommand for UpdateSettingsRequest {
    fn home_key(&self, caller: &Caller) -> String {
        caller.user_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        if let Some(who) = self.who_may_message
            && WhoMayMessage::try_from(who).is_err()
        {
            return Err(Error::invalid("who_may_message", format!("unknown value {who}")));
        }
        Ok(())
    }
}

impl ClientCommand for GetPresenceRequest {
    fn home_key(&self, caller: &Caller) -> String {
        caller.user_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        if self.user_ids.len() > MAX_PRESENCE_BATCH {
            return Err(Error::invalid("user_ids", format!("at most {MAX_PRESENCE_BATCH} users")));
        }
        self.user_ids.iter().try_for_each(|user| id("user_ids", user))
    }
}

impl ClientCommand for TypingSignal {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        conversation_id("conversation_id", &self.conversation_id)
    }
}

impl ClientCommand for MarkDelivered {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        validate::mark(&self.conversation_id, self.seq)
    }
}

impl ClientCommand for MarkRead {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        validate::mark(&self.conversation_id, self.seq)
    }
}

mod accounts;
mod handlers;
mod moderation;
mod notifications;
mod relations;
