//! Safety and privacy: message requests, blocking, who may message this
//! user, push targets and mutes, reports, and the privacy rights (export,
//! account deletion). The calls of [`Client`] for them (see `core::privacy`,
//! `core::notify` and `core::moderation` in the broker for the rules).

use imsg_proto::v1::{
    AcceptConversationRequest, BlockUserRequest, Conversation, DeclineConversationRequest, DeleteAccountRequest,
    DeleteAccountResponse, ExportMyDataRequest, Folder, ListBlockedUsersRequest, ListConversationsRequest,
    ListConversationsResponse, PushPlatform, RegisterPushTargetRequest, ReportReason, ReportRequest,
    SetConversationNotificationsRequest, UnblockUserRequest, UnregisterPushTargetRequest, UpdateSettingsRequest,
    WhoMayMessage,
};

use crate::{Client, Error};

impl Client {
    /// Accepts a message request: the conversation moves to the inbox and
    /// its sender may write freely.
    pub async fn accept(&self, conversation: &str) -> Result<Conversation, Error> {
        let request = AcceptConversationRequest { conversation_id: conversation.into() };
        let response =
            self.retrying(request, |mut api, request| async move { api.accept_conversation(request).await }).await?;
        Ok(response.conversation.unwrap_or_default())
    }

    /// Declines a message request: hidden from this user; the sender is not
    /// told.
    pub async fn decline(&self, conversation: &str) -> Result<(), Error> {
        let request = DeclineConversationRequest { conversation_id: conversation.into() };
        self.retrying(request, |mut api, request| async move { api.decline_conversation(request).await }).await?;
        Ok(())
    }

    /// The message requests waiting for this user (first page).
    pub async fn requests(&self) -> Result<ListConversationsResponse, Error> {
        let request = ListConversationsRequest { folder: Folder::Requests as i32, ..Default::default() };
        self.retrying(request, |mut api, request| async move { api.list_conversations(request).await }).await
    }

    /// Blocks a user.
    pub async fn block(&self, user: &str) -> Result<(), Error> {
        let request = BlockUserRequest { user_id: user.into() };
        self.retrying(request, |mut api, request| async move { api.block_user(request).await }).await?;
        Ok(())
    }

    /// Lifts a block.
    pub async fn unblock(&self, user: &str) -> Result<(), Error> {
        let request = UnblockUserRequest { user_id: user.into() };
        self.retrying(request, |mut api, request| async move { api.unblock_user(request).await }).await?;
        Ok(())
    }

    /// The users this user blocks, sorted.
    pub async fn blocked_users(&self) -> Result<Vec<String>, Error> {
        let request = ListBlockedUsersRequest {};
        let response =
            self.retrying(request, |mut api, request| async move { api.list_blocked_users(request).await }).await?;
        Ok(response.user_ids)
    }

    /// Who may start a conversation with this user.
    pub async fn set_who_may_message(&self, who: WhoMayMessage) -> Result<(), Error> {
        let request = UpdateSettingsRequest { who_may_message: Some(who as i32), ..Default::default() };
        self.retrying(request, |mut api, request| async move { api.update_settings(request).await }).await?;
        Ok(())
    }

    /// Push notifications for this device go to `token` on `platform`
    /// while it has no live stream.
    pub async fn register_push_target(&self, platform: PushPlatform, token: &str) -> Result<(), Error> {
        let request = RegisterPushTargetRequest { platform: platform as i32, token: token.into() };
        self.retrying(request, |mut api, request| async move { api.register_push_target(request).await }).await?;
        Ok(())
    }

    /// No more push notifications for this device.
    pub async fn unregister_push_target(&self) -> Result<(), Error> {
        let request = UnregisterPushTargetRequest {};
        self.retrying(request, |mut api, request| async move { api.unregister_push_target(request).await }).await?;
        Ok(())
    }

    /// Mutes a conversation until `until_ms` (-1: until unmuted, 0: unmute),
    /// and hides its text from notifications or not.
    pub async fn mute(&self, conversation: &str, until_ms: i64, hide_previews: bool) -> Result<(), Error> {
        let request = SetConversationNotificationsRequest {
            conversation_id: conversation.into(),
            muted_until_ms: until_ms,
            hide_previews,
        };
        self.retrying(request, |mut api, request| async move { api.set_conversation_notifications(request).await })
            .await?;
        Ok(())
    }

    /// Reports a message (`seq`; 0: the conversation) to the moderators,
    /// blocking its sender too when `block`; answers the report's id.
    pub async fn report(
        &self,
        conversation: &str,
        seq: u64,
        reason: ReportReason,
        comment: &str,
        block: bool,
    ) -> Result<String, Error> {
        let request = ReportRequest {
            conversation_id: conversation.into(),
            seq,
            reason: reason as i32,
            comment: comment.into(),
            block,
        };
        Ok(self.retrying(request, |mut api, request| async move { api.report(request).await }).await?.report_id)
    }

    /// This user's data as one JSON document.
    pub async fn export_my_data(&self) -> Result<Vec<u8>, Error> {
        let mut stream = self.api.clone().export_my_data(ExportMyDataRequest {}).await?.into_inner();
        let mut document = Vec::new();
        while let Some(piece) = stream.message().await? {
            document.extend_from_slice(&piece.chunk);
        }
        Ok(document)
    }

    /// Deletes this user's account (see the RPC's documentation).
    pub async fn delete_account(&self) -> Result<DeleteAccountResponse, Error> {
        self.retrying(DeleteAccountRequest {}, |mut api, request| async move { api.delete_account(request).await })
            .await
    }
}
