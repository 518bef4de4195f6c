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

use imsg_proto::internal::v1::{
    Accepted, Caller, MessageMediaRequest, MessageMediaResponse, execute_request, execute_response,
};
use imsg_proto::v1::{
    AddConversationMembersRequest, AddConversationMembersResponse, CreateConversationRequest,
    CreateConversationResponse, DeleteMessageForMeRequest, DeleteMessageForMeResponse, EditMessageRequest,
    EditMessageResponse, ForwardMessageRequest, ForwardMessageResponse, ForwardedMessage, GetConversationRequest,
    GetConversationResponse, GetPresenceRequest, GetPresenceResponse, GetSettingsRequest, GetSettingsResponse,
    LeaveConversationRequest, LeaveConversationResponse, ListConversationsRequest, ListConversationsResponse,
    ListMessagesRequest, ListMessagesResponse, MarkDelivered, MarkRead, ReactToMessageRequest, ReactToMessageResponse,
    RemoveConversationMemberRequest, RemoveConversationMemberResponse, SendMessageRequest, SendMessageResponse,
    TypingSignal, UnsendMessageRequest, UnsendMessageResponse, UpdateConversationRequest, UpdateConversationResponse,
    UpdateSettingsRequest, UpdateSettingsResponse, create_conversation_request, message::Content, send_message_request,
};

use crate::{
    Broker,
    config::Limits,
    error::{Error, Result},
    ids::{direct_conversation_id, group_conversation_id},
    mailbox::{MessageAction, MessageOutcome},
    partition::{Command, MarkKind, MembershipChange, NewConversation, NewMessage, Viewer},
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
    GetSettings => GetSettings by get_settings,
    UpdateSettings => UpdateSettings by update_settings,
    GetPresence => GetPresence by get_presence,
    Typing => Accepted by typing,
    MarkDelivered => Accepted by mark_delivered,
    MarkRead => Accepted by mark_read,
}

// ---- the rows: what each command checks and where it starts ----

impl ClientCommand for CreateConversationRequest {
    /// The derived id of the conversation to create: a retry lands on the
    /// same partition and finds what the first attempt wrote.
    fn home_key(&self, caller: &Caller) -> String {
        match &self.kind {
            Some(create_conversation_request::Kind::Direct(direct)) => {
                direct_conversation_id(&caller.user_id, &direct.peer_user_id)
            }
            Some(create_conversation_request::Kind::Group(_)) => {
                group_conversation_id(&caller.user_id, &self.request_id)
            }
            None => caller.user_id.clone(),
        }
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

// ---- the handlers: each runs its command on the partitions it needs ----

impl Broker {
    async fn create_conversation(
        &self,
        caller: Caller,
        conversation_id: String,
        request: CreateConversationRequest,
    ) -> Result<CreateConversationResponse> {
        let spec = match request.kind {
            Some(create_conversation_request::Kind::Direct(direct)) => {
                NewConversation::Direct { peer_user_id: direct.peer_user_id }
            }
            Some(create_conversation_request::Kind::Group(group)) => {
                NewConversation::Group { title: group.title, member_ids: group.member_ids }
            }
            None => return Err(Error::invalid("kind", "set `direct` or `group`")),
        };
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::CreateConversation { caller, conversation_id, spec, reply }).await
    }

    async fn get_conversation(
        &self,
        caller: Caller,
        conversation_id: String,
        _: GetConversationRequest,
    ) -> Result<GetConversationResponse> {
        let viewer = self.viewer(&caller).await?;
        let partition = self.partition_of(&conversation_id);
        let conversation =
            self.call(partition, |reply| Command::GetConversation { viewer, conversation_id, reply }).await?;
        Ok(GetConversationResponse { conversation: Some(conversation) })
    }

    async fn update_conversation(
        &self,
        caller: Caller,
        conversation_id: String,
        request: UpdateConversationRequest,
    ) -> Result<UpdateConversationResponse> {
        let conversation = self.change(caller, conversation_id, MembershipChange::Title(request.title)).await?;
        Ok(UpdateConversationResponse { conversation: Some(conversation) })
    }

    async fn add_conversation_members(
        &self,
        caller: Caller,
        conversation_id: String,
        request: AddConversationMembersRequest,
    ) -> Result<AddConversationMembersResponse> {
        let conversation = self.change(caller, conversation_id, MembershipChange::Add(request.user_ids)).await?;
        Ok(AddConversationMembersResponse { conversation: Some(conversation) })
    }

    async fn remove_conversation_member(
        &self,
        caller: Caller,
        conversation_id: String,
        request: RemoveConversationMemberRequest,
    ) -> Result<RemoveConversationMemberResponse> {
        let conversation = self.change(caller, conversation_id, MembershipChange::Remove(request.user_id)).await?;
        Ok(RemoveConversationMemberResponse { conversation: Some(conversation) })
    }

    async fn leave_conversation(
        &self,
        caller: Caller,
        conversation_id: String,
        _: LeaveConversationRequest,
    ) -> Result<LeaveConversationResponse> {
        let change = MembershipChange::Remove(caller.user_id.clone());
        self.change(caller, conversation_id, change).await?;
        Ok(LeaveConversationResponse {})
    }

    async fn send_message(
        &self,
        caller: Caller,
        conversation_id: String,
        request: SendMessageRequest,
    ) -> Result<SendMessageResponse> {
        let message = NewMessage::from_request(request)?;
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::Send { caller, conversation_id, message, reply }).await
    }

    async fn react_to_message(
        &self,
        caller: Caller,
        conversation_id: String,
        request: ReactToMessageRequest,
    ) -> Result<ReactToMessageResponse> {
        let action = MessageAction::React { emoji: request.emoji };
        self.act_on_message(caller, conversation_id, request.seq, action).await?;
        Ok(ReactToMessageResponse {})
    }

    async fn edit_message(
        &self,
        caller: Caller,
        conversation_id: String,
        request: EditMessageRequest,
    ) -> Result<EditMessageResponse> {
        let action = MessageAction::Edit { text: request.text };
        match self.act_on_message(caller, conversation_id, request.seq, action).await? {
            MessageOutcome::Edited(response) => Ok(response),
            other => Err(Error::Internal(format!("an edit answered {other:?}"))),
        }
    }

    async fn unsend_message(
        &self,
        caller: Caller,
        conversation_id: String,
        request: UnsendMessageRequest,
    ) -> Result<UnsendMessageResponse> {
        self.act_on_message(caller, conversation_id, request.seq, MessageAction::Unsend).await?;
        Ok(UnsendMessageResponse {})
    }

    async fn delete_message_for_me(
        &self,
        caller: Caller,
        conversation_id: String,
        request: DeleteMessageForMeRequest,
    ) -> Result<DeleteMessageForMeResponse> {
        self.act_on_message(caller, conversation_id, request.seq, MessageAction::DeleteForMe).await?;
        Ok(DeleteMessageForMeResponse {})
    }

    /// Reads the message where it is (the caller must see it), then sends
    /// a copy, marked forwarded, to each target in order: a copy is an
    /// ordinary send there (membership, dedup by the one client message
    /// id, so a retry after a partial failure completes the rest).
    async fn forward_message(
        &self,
        caller: Caller,
        conversation_id: String,
        request: ForwardMessageRequest,
    ) -> Result<ForwardMessageResponse> {
        let content = match self
            .act_on_message(caller.clone(), conversation_id, request.seq, MessageAction::ReadForForward)
            .await?
        {
            MessageOutcome::Content(content) => content,
            other => return Err(Error::Internal(format!("reading for a forward answered {other:?}"))),
        };
        let mut messages = Vec::with_capacity(request.to_conversation_ids.len());
        for target in request.to_conversation_ids {
            let message = NewMessage {
                client_message_id: request.client_message_id.clone(),
                reply_to_seq: 0,
                content: content.clone(),
                forwarded: true,
            };
            let (caller, conversation_id) = (caller.clone(), target.clone());
            let partition = self.partition_of(&target);
            let sent = self.call(partition, |reply| Command::Send { caller, conversation_id, message, reply }).await?;
            messages.push(ForwardedMessage {
                conversation_id: target,
                seq: sent.seq,
                server_time_ms: sent.server_time_ms,
                duplicate: sent.duplicate,
            });
        }
        Ok(ForwardMessageResponse { messages })
    }

    async fn list_messages(
        &self,
        caller: Caller,
        conversation_id: String,
        request: ListMessagesRequest,
    ) -> Result<ListMessagesResponse> {
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::ListMessages { caller, request, reply }).await
    }

    async fn get_settings(&self, caller: Caller, _: String, _: GetSettingsRequest) -> Result<GetSettingsResponse> {
        let context = self.user_context(&caller.user_id).await?;
        Ok(GetSettingsResponse { settings: Some(context.settings) })
    }

    async fn update_settings(
        &self,
        _: Caller,
        user_id: String,
        request: UpdateSettingsRequest,
    ) -> Result<UpdateSettingsResponse> {
        let partition = self.partition_of(&user_id);
        let settings = self.call(partition, |reply| Command::UpdateSettings { user_id, request, reply }).await?;
        Ok(UpdateSettingsResponse { settings: Some(settings) })
    }

    async fn get_presence(
        &self,
        caller: Caller,
        _: String,
        request: GetPresenceRequest,
    ) -> Result<GetPresenceResponse> {
        self.presence(&caller, request.user_ids).await
    }

    async fn list_conversations(
        &self,
        caller: Caller,
        _: String,
        request: ListConversationsRequest,
    ) -> Result<ListConversationsResponse> {
        self.inbox(&caller, &request).await
    }

    async fn typing(&self, caller: Caller, conversation_id: String, signal: TypingSignal) -> Result<Accepted> {
        let active = signal.active;
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::Typing { caller, conversation_id, active, reply }).await?;
        Ok(Accepted {})
    }

    async fn mark_delivered(&self, caller: Caller, conversation_id: String, mark: MarkDelivered) -> Result<Accepted> {
        self.mark(caller, conversation_id, mark.seq, MarkKind::Delivered).await?;
        Ok(Accepted {})
    }

    async fn mark_read(&self, caller: Caller, conversation_id: String, mark: MarkRead) -> Result<Accepted> {
        self.mark(caller, conversation_id, mark.seq, MarkKind::Read).await?;
        Ok(Accepted {})
    }

    /// The medium of a message the caller can see (gateways ask, to
    /// authorize downloads and release unsent media).
    async fn message_media(
        &self,
        caller: Caller,
        conversation_id: String,
        request: MessageMediaRequest,
    ) -> Result<MessageMediaResponse> {
        let media = match self.act_on_message(caller, conversation_id, request.seq, MessageAction::ReadForForward).await
        {
            Ok(MessageOutcome::Content(Content::Media(media))) => Some(media),
            Ok(_) => None,
            // An unsent message holds nothing any more.
            Err(Error::FailedPrecondition(_)) => None,
            Err(error) => return Err(error),
        };
        Ok(MessageMediaResponse { media })
    }

    // ---- steps several commands share ----

    async fn act_on_message(
        &self,
        caller: Caller,
        conversation_id: String,
        seq: u64,
        action: MessageAction,
    ) -> Result<MessageOutcome> {
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::ActOnMessage { caller, conversation_id, seq, action, reply }).await
    }

    async fn change(
        &self,
        caller: Caller,
        conversation_id: String,
        change: MembershipChange,
    ) -> Result<imsg_proto::v1::Conversation> {
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::ChangeMembership { caller, conversation_id, change, reply }).await
    }

    async fn mark(&self, caller: Caller, conversation_id: String, seq: u64, kind: MarkKind) -> Result<()> {
        // The reader's setting comes from their own partition, not the request.
        let hide_read = self.user_context(&caller.user_id).await?.settings.hide_read_receipts;
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::Mark { caller, conversation_id, seq, kind, hide_read, reply }).await
    }

    /// The caller's inbox: their conversations by last activity.
    async fn inbox(
        &self,
        caller: &Caller,
        request: &imsg_proto::v1::ListConversationsRequest,
    ) -> Result<ListConversationsResponse> {
        let page_size = validate::page_size(request.page_size)?;
        let offset = validate::page_token(&request.page_token)?.unwrap_or(0) as usize;
        let context = self.user_context(&caller.user_id).await?;
        let viewer =
            Viewer { user_id: caller.user_id.clone(), hide_read_receipts: context.settings.hide_read_receipts };
        let mut summaries = Vec::new();
        for (partition, conversation_ids) in self.router().group_by_partition(context.conversation_ids.iter()) {
            let viewer = viewer.clone();
            summaries
                .extend(self.call(partition, |reply| Command::Summaries { viewer, conversation_ids, reply }).await?);
        }
        let activity = |s: &imsg_proto::v1::ConversationSummary| {
            s.conversation.as_ref().map(|c| (c.last_activity_ms, c.conversation_id.clone())).unwrap_or_default()
        };
        summaries.sort_by_key(|s| std::cmp::Reverse(activity(s)));
        let total = summaries.len();
        let page: Vec<_> = summaries.into_iter().skip(offset).take(page_size).collect();
        let next = offset + page.len();
        Ok(ListConversationsResponse {
            conversations: page,
            next_page_token: if next < total { next.to_string() } else { String::new() },
        })
    }

    async fn presence(&self, caller: &Caller, user_ids: Vec<String>) -> Result<GetPresenceResponse> {
        let context = self.user_context(&caller.user_id).await?;
        // Reciprocal: who hides their activity sees nobody's.
        if context.settings.hide_activity_status {
            return Ok(GetPresenceResponse { presences: Vec::new() });
        }
        let others = user_ids.iter().filter(|u| **u != caller.user_id);
        let mut presences = Vec::new();
        for (partition, user_ids) in self.router().group_by_partition(others) {
            let viewer_conversations = context.conversation_ids.clone();
            presences.extend(
                self.call(partition, |reply| Command::PresenceQuery { user_ids, viewer_conversations, reply }).await?,
            );
        }
        presences.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(GetPresenceResponse { presences })
    }
}
