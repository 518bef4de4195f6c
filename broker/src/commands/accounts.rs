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
    partition::{Command, Forgotten},
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
    /// Sessions closed and what the account touched read first; then the
    /// copies of its blocks elsewhere and its messages in every
    /// conversation; its own state last. Every step is idempotent and the
    /// state that names the rest goes last, so a retry after a failure
    /// completes the deletion.
    pub(super) async fn delete_account(
        &self,
        caller: Caller,
        user_id: String,
        _: DeleteAccountRequest,
    ) -> Result<DeleteAccountResponse> {
        let forgotten = self.forget(&user_id, false).await?;
        for blocked in &forgotten.blocked {
            self.relate(blocked, vec![caller.user_id.clone()], RelationChange::UnblockedBy).await?;
            self.pair_block(&caller.user_id, blocked, false).await?;
        }
        let mut messages_erased = 0;
        for conversation_id in &forgotten.conversations {
            let mut after_seq = 0;
            loop {
                let (id, user) = (conversation_id.clone(), user_id.clone());
                let partition = self.partition_of(&id);
                let erased = self
                    .call(partition, |reply| Command::EraseSender {
                        conversation_id: id,
                        user_id: user,
                        after_seq,
                        reply,
                    })
                    .await?;
                messages_erased += erased.messages;
                if erased.more_after == 0 {
                    break;
                }
                after_seq = erased.more_after;
            }
        }
        self.forget(&user_id, true).await?;
        Ok(DeleteAccountResponse { conversations: forgotten.conversations.len() as u32, messages_erased })
    }

    async fn forget(&self, user: &str, erase: bool) -> Result<Forgotten> {
        let user_id = user.to_owned();
        let partition = self.partition_of(&user_id);
        self.call(partition, |reply| Command::Forget { user_id, erase, reply }).await
    }
}
