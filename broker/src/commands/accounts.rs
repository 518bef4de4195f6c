//! Deleting an account (a privacy right): its row of the command table and
//! its handler. Exporting one's data needs no command of its own: the
//! gateway assembles it from the caller's ordinary reads.

use imsg_proto::internal::v1::{Caller, RelationChange};
use imsg_proto::v1::{DeleteAccountRequest, DeleteAccountResponse};

use super::ClientCommand;
use crate::{
    Broker,
    config::Limits,
    error::Result,
    partition::{Command, ERASE_BATCH},
};

impl ClientCommand for DeleteAccountRequest {
    fn home_key(&self, caller: &Caller) -> String {
        caller.user_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        Ok(())
    }
}

impl Broker {
    /// The user's own state first (sessions closed, nothing new reaches
    /// them), then the copies of their blocks elsewhere, then their
    /// messages in every conversation. Each step is idempotent: a retry
    /// after a failure completes the rest (the conversations are only
    /// known from the first step, so a failed deletion is retried by the
    /// conversations it reported, see the closing note in ARCHITECTURE).
    pub(super) async fn delete_account(
        &self,
        caller: Caller,
        user_id: String,
        _: DeleteAccountRequest,
    ) -> Result<DeleteAccountResponse> {
        let partition = self.partition_of(&user_id);
        let user = user_id.clone();
        let forgotten = self.call(partition, |reply| Command::Forget { user_id: user, reply }).await?;
        for blocked in &forgotten.blocked {
            self.relate(blocked, vec![caller.user_id.clone()], RelationChange::UnblockedBy).await?;
            self.pair_block(&caller.user_id, blocked, false).await?;
        }
        let mut messages_erased = 0;
        for conversation_id in &forgotten.conversations {
            loop {
                let (id, user) = (conversation_id.clone(), user_id.clone());
                let partition = self.partition_of(&id);
                let erased = self
                    .call(partition, |reply| Command::EraseSender { conversation_id: id, user_id: user, reply })
                    .await?;
                messages_erased += erased;
                if erased < ERASE_BATCH {
                    break;
                }
            }
        }
        Ok(DeleteAccountResponse { conversations: forgotten.conversations.len() as u32, messages_erased })
    }
}
