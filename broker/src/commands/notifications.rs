//! Push targets and notification settings: their rows of the command
//! table (`core::notify` holds the rules).

use imsg_proto::internal::v1::Caller;
use imsg_proto::v1::{
    PushPlatform, RegisterPushTargetRequest, RegisterPushTargetResponse, SetConversationNotificationsRequest,
    SetConversationNotificationsResponse, UnregisterPushTargetRequest, UnregisterPushTargetResponse,
};

use super::ClientCommand;
use crate::{
    Broker,
    config::Limits,
    error::{Error, Result},
    partition::{Command, NotificationChange},
    storage::{NotifyRecord, PushTargetRecord},
    validate::conversation_id,
};

/// Longest push token, in bytes.
pub const MAX_PUSH_TOKEN_BYTES: usize = 4096;

impl ClientCommand for RegisterPushTargetRequest {
    fn home_key(&self, caller: &Caller) -> String {
        caller.user_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        match PushPlatform::try_from(self.platform) {
            Ok(PushPlatform::Unspecified) | Err(_) => {
                return Err(Error::invalid("platform", "set apns, fcm or web"));
            }
            Ok(_) => {}
        }
        if self.token.is_empty() || self.token.len() > MAX_PUSH_TOKEN_BYTES {
            return Err(Error::invalid("token", format!("1 to {MAX_PUSH_TOKEN_BYTES} bytes")));
        }
        Ok(())
    }
}

impl ClientCommand for UnregisterPushTargetRequest {
    fn home_key(&self, caller: &Caller) -> String {
        caller.user_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        Ok(())
    }
}

impl ClientCommand for SetConversationNotificationsRequest {
    /// The caller's: these are their settings (nothing about the
    /// conversation is read, so nothing is learnt about it).
    fn home_key(&self, caller: &Caller) -> String {
        caller.user_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        conversation_id("conversation_id", &self.conversation_id)?;
        if self.muted_until_ms < -1 {
            return Err(Error::invalid("muted_until_ms", "a time, 0 (unmuted) or -1 (until unmuted)"));
        }
        Ok(())
    }
}

impl Broker {
    pub(super) async fn register_push_target(
        &self,
        caller: Caller,
        user_id: String,
        request: RegisterPushTargetRequest,
    ) -> Result<RegisterPushTargetResponse> {
        let target = PushTargetRecord { platform: request.platform, token: request.token };
        let change = NotificationChange::Target { device_id: caller.device_id, target: Some(target) };
        self.change_notifications(user_id, change).await?;
        Ok(RegisterPushTargetResponse {})
    }

    pub(super) async fn unregister_push_target(
        &self,
        caller: Caller,
        user_id: String,
        _: UnregisterPushTargetRequest,
    ) -> Result<UnregisterPushTargetResponse> {
        let change = NotificationChange::Target { device_id: caller.device_id, target: None };
        self.change_notifications(user_id, change).await?;
        Ok(UnregisterPushTargetResponse {})
    }

    pub(super) async fn set_conversation_notifications(
        &self,
        _: Caller,
        user_id: String,
        request: SetConversationNotificationsRequest,
    ) -> Result<SetConversationNotificationsResponse> {
        let record = NotifyRecord { muted_until_ms: request.muted_until_ms, hide_previews: request.hide_previews };
        let change = NotificationChange::Conversation { conversation_id: request.conversation_id, record };
        self.change_notifications(user_id, change).await?;
        Ok(SetConversationNotificationsResponse {})
    }

    async fn change_notifications(&self, user_id: String, change: NotificationChange) -> Result<()> {
        let partition = self.partition_of(&user_id);
        self.call(partition, |reply| Command::Notifications { user_id, change, reply }).await
    }
}
