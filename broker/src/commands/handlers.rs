//! The handlers of the command table: each runs its command on the
//! partitions it needs (and the steps several commands share).

use imsg_proto::internal::v1::*;
use imsg_proto::v1::*;

use crate::{
    Broker,
    core::budget::Grant,
    error::{Error, Result},
    mailbox::{MessageAction, MessageOutcome},
    partition::{Command, MarkKind, MembershipChange, NewConversation, NewMessage},
    validate,
};
use imsg_proto::v1::message::Content;

impl Broker {
    /// Derives the conversation's id, asks the members whether they accept
    /// the caller (refused, or as a message request), creates it where it
    /// lives; the peer of a direct conversation becomes the caller's
    /// contact (the caller wrote to them).
    pub(super) async fn create_conversation(
        &self,
        caller: Caller,
        _: String,
        request: CreateConversationRequest,
    ) -> Result<CreateConversationResponse> {
        let (conversation_id, spec) = match request.kind {
            Some(create_conversation_request::Kind::Direct(direct)) => (
                self.id_key().direct_conversation_id(&caller.user_id, &direct.peer_user_id),
                NewConversation::Direct { peer_user_id: direct.peer_user_id },
            ),
            Some(create_conversation_request::Kind::Group(group)) => (
                self.id_key().group_conversation_id(&caller.user_id, &request.request_id),
                NewConversation::Group { title: group.title, member_ids: group.member_ids },
            ),
            None => return Err(Error::invalid("kind", "set `direct` or `group`")),
        };
        let invited: Vec<String> = match &spec {
            NewConversation::Direct { peer_user_id } => vec![peer_user_id.clone()],
            NewConversation::Group { member_ids, .. } => {
                let unique: std::collections::BTreeSet<&String> =
                    member_ids.iter().filter(|m| **m != caller.user_id).collect();
                unique.into_iter().cloned().collect()
            }
        };
        let requests = self.admit(&caller.user_id, &invited).await?;
        let direct = matches!(spec, NewConversation::Direct { .. });
        let user = caller.user_id.clone();
        let partition = self.partition_of(&conversation_id);
        let created = self
            .call(partition, |reply| Command::CreateConversation { caller, conversation_id, spec, requests, reply })
            .await?;
        if direct {
            self.relate(&user, invited, RelationChange::Contact).await?;
        }
        Ok(created)
    }

    pub(super) async fn get_conversation(
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

    pub(super) async fn update_conversation(
        &self,
        caller: Caller,
        conversation_id: String,
        request: UpdateConversationRequest,
    ) -> Result<UpdateConversationResponse> {
        let conversation = self.change(caller, conversation_id, MembershipChange::Title(request.title)).await?;
        Ok(UpdateConversationResponse { conversation: Some(conversation) })
    }

    pub(super) async fn add_conversation_members(
        &self,
        caller: Caller,
        conversation_id: String,
        request: AddConversationMembersRequest,
    ) -> Result<AddConversationMembersResponse> {
        let requests = self.admit(&caller.user_id, &request.user_ids).await?;
        let change = MembershipChange::Add { user_ids: request.user_ids, requests };
        let conversation = self.change(caller, conversation_id, change).await?;
        Ok(AddConversationMembersResponse { conversation: Some(conversation) })
    }

    pub(super) async fn remove_conversation_member(
        &self,
        caller: Caller,
        conversation_id: String,
        request: RemoveConversationMemberRequest,
    ) -> Result<RemoveConversationMemberResponse> {
        let conversation = self.change(caller, conversation_id, MembershipChange::Remove(request.user_id)).await?;
        Ok(RemoveConversationMemberResponse { conversation: Some(conversation) })
    }

    pub(super) async fn leave_conversation(
        &self,
        caller: Caller,
        conversation_id: String,
        _: LeaveConversationRequest,
    ) -> Result<LeaveConversationResponse> {
        let change = MembershipChange::Remove(caller.user_id.clone());
        self.change(caller, conversation_id, change).await?;
        Ok(LeaveConversationResponse {})
    }

    pub(super) async fn send_message(
        &self,
        caller: Caller,
        conversation_id: String,
        request: SendMessageRequest,
    ) -> Result<SendMessageResponse> {
        let message = NewMessage::from_request(request)?;
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::Send { caller, conversation_id, message, reply }).await
    }

    pub(super) async fn react_to_message(
        &self,
        caller: Caller,
        conversation_id: String,
        request: ReactToMessageRequest,
    ) -> Result<ReactToMessageResponse> {
        let action = MessageAction::React { emoji: request.emoji };
        self.act_on_message(caller, conversation_id, request.seq, action).await?;
        Ok(ReactToMessageResponse {})
    }

    pub(super) async fn edit_message(
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

    pub(super) async fn unsend_message(
        &self,
        caller: Caller,
        conversation_id: String,
        request: UnsendMessageRequest,
    ) -> Result<UnsendMessageResponse> {
        self.act_on_message(caller, conversation_id, request.seq, MessageAction::Unsend).await?;
        Ok(UnsendMessageResponse {})
    }

    pub(super) async fn delete_message_for_me(
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
    pub(super) async fn forward_message(
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

    pub(super) async fn list_messages(
        &self,
        caller: Caller,
        conversation_id: String,
        request: ListMessagesRequest,
    ) -> Result<ListMessagesResponse> {
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::ListMessages { caller, request, reply }).await
    }

    pub(super) async fn get_settings(
        &self,
        caller: Caller,
        _: String,
        _: GetSettingsRequest,
    ) -> Result<GetSettingsResponse> {
        let context = self.user_context(&caller.user_id).await?;
        Ok(GetSettingsResponse { settings: Some(context.settings) })
    }

    pub(super) async fn update_settings(
        &self,
        _: Caller,
        user_id: String,
        request: UpdateSettingsRequest,
    ) -> Result<UpdateSettingsResponse> {
        let partition = self.partition_of(&user_id);
        let settings = self.call(partition, |reply| Command::UpdateSettings { user_id, request, reply }).await?;
        Ok(UpdateSettingsResponse { settings: Some(settings) })
    }

    pub(super) async fn acquire_budget(
        &self,
        _: Caller,
        user_id: String,
        request: AcquireBudgetRequest,
    ) -> Result<AcquireBudgetResponse> {
        let partition = self.partition_of(&user_id);
        let want = request.want;
        Ok(match self.call(partition, |reply| Command::AcquireBudget { user_id, want, reply }).await? {
            Grant::Tokens(granted) => AcquireBudgetResponse { granted, retry_after_ms: 0 },
            Grant::Wait(wait) => AcquireBudgetResponse { granted: 0, retry_after_ms: wait.as_millis().max(1) as u64 },
        })
    }

    pub(super) async fn get_presence(
        &self,
        caller: Caller,
        _: String,
        request: GetPresenceRequest,
    ) -> Result<GetPresenceResponse> {
        self.presence(&caller, request.user_ids).await
    }

    pub(super) async fn list_conversations(
        &self,
        caller: Caller,
        _: String,
        request: ListConversationsRequest,
    ) -> Result<ListConversationsResponse> {
        self.inbox(&caller, &request).await
    }

    pub(super) async fn typing(
        &self,
        caller: Caller,
        conversation_id: String,
        signal: TypingSignal,
    ) -> Result<Accepted> {
        let active = signal.active;
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::Typing { caller, conversation_id, active, reply }).await?;
        Ok(Accepted {})
    }

    pub(super) async fn mark_delivered(
        &self,
        caller: Caller,
        conversation_id: String,
        mark: MarkDelivered,
    ) -> Result<Accepted> {
        self.mark(caller, conversation_id, mark.seq, MarkKind::Delivered).await?;
        Ok(Accepted {})
    }

    pub(super) async fn mark_read(&self, caller: Caller, conversation_id: String, mark: MarkRead) -> Result<Accepted> {
        self.mark(caller, conversation_id, mark.seq, MarkKind::Read).await?;
        Ok(Accepted {})
    }

    /// The medium of a message the caller can see (gateways ask, to
    /// authorize downloads and release unsent media).
    pub(super) async fn message_media(
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

    pub(super) async fn act_on_message(
        &self,
        caller: Caller,
        conversation_id: String,
        seq: u64,
        action: MessageAction,
    ) -> Result<MessageOutcome> {
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::ActOnMessage { caller, conversation_id, seq, action, reply }).await
    }

    pub(super) async fn change(
        &self,
        caller: Caller,
        conversation_id: String,
        change: MembershipChange,
    ) -> Result<imsg_proto::v1::Conversation> {
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::ChangeMembership { caller, conversation_id, change, reply }).await
    }

    pub(super) async fn mark(&self, caller: Caller, conversation_id: String, seq: u64, kind: MarkKind) -> Result<()> {
        // The reader's setting comes from their own partition, not the request.
        let hide_read = self.user_context(&caller.user_id).await?.settings.hide_read_receipts;
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::Mark { caller, conversation_id, seq, kind, hide_read, reply }).await
    }

    /// The caller's inbox: their conversations by last activity.
    pub(super) async fn inbox(
        &self,
        caller: &Caller,
        request: &imsg_proto::v1::ListConversationsRequest,
    ) -> Result<ListConversationsResponse> {
        let page_size = validate::page_size(request.page_size)?;
        let offset = validate::page_token(&request.page_token)?.unwrap_or(0) as usize;
        let context = self.user_context(&caller.user_id).await?;
        let viewer = context.viewer(&caller.user_id);
        let folder = match Folder::try_from(request.folder) {
            Ok(Folder::Requests) => Folder::Requests,
            _ => Folder::Inbox,
        };
        let mut summaries = Vec::new();
        for (partition, conversation_ids) in self.router().group_by_partition(context.conversation_ids.iter()) {
            let viewer = viewer.clone();
            summaries
                .extend(self.call(partition, |reply| Command::Summaries { viewer, conversation_ids, reply }).await?);
        }
        summaries.retain(|s| s.folder == folder as i32);
        let muted: std::collections::HashMap<&str, i64> =
            context.muted.iter().map(|(conversation, until)| (conversation.as_str(), *until)).collect();
        for summary in &mut summaries {
            let id = summary.conversation.as_ref().map(|c| c.conversation_id.as_str()).unwrap_or_default();
            summary.muted_until_ms = muted.get(id).copied().unwrap_or(0);
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

    pub(super) async fn presence(&self, caller: &Caller, user_ids: Vec<String>) -> Result<GetPresenceResponse> {
        let context = self.user_context(&caller.user_id).await?;
        // Reciprocal: who hides their activity sees nobody's.
        if context.settings.hide_activity_status {
            return Ok(GetPresenceResponse { presences: Vec::new() });
        }
        let others = user_ids.iter().filter(|u| **u != caller.user_id);
        let mut presences = Vec::new();
        for (partition, user_ids) in self.router().group_by_partition(others) {
            let (viewer, viewer_conversations) = (caller.user_id.clone(), context.conversation_ids.clone());
            presences.extend(
                self.call(partition, |reply| Command::PresenceQuery { viewer, user_ids, viewer_conversations, reply })
                    .await?,
            );
        }
        presences.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(GetPresenceResponse { presences })
    }
}
