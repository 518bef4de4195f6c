//! Message requests, blocking and who may message this user: the calls of
//! [`Client`] for them (see `core::privacy` in the broker for the rules).

use imsg_proto::v1::{
    AcceptConversationRequest, BlockUserRequest, Conversation, DeclineConversationRequest, Folder,
    ListBlockedUsersRequest, ListConversationsRequest, ListConversationsResponse, UnblockUserRequest,
    UpdateSettingsRequest, WhoMayMessage,
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
}
