//! The handlers of blocking, message requests and declared contacts, and
//! the step that asks people whether they accept someone (`core::privacy`).
//!
//! A block is owned by the blocker's partition but enforced in three
//! places, written in an order that makes "listed" imply "enforced": first
//! the copy in the pair's direct conversation (sends there), then the
//! blocked user's partition (what reaches their devices), last the
//! blocker's own list. Unblocking undoes them in the reverse order. Every
//! step is idempotent, so a retry after a failure completes the rest.

use futures::future::try_join_all;
use imsg_common::token::ROLE_SERVICE;
use imsg_proto::internal::v1::{Caller, RelationChange, RelationsResult};
use imsg_proto::v1::*;

use super::ClientCommand;
use crate::{
    Broker,
    config::Limits,
    core::privacy::{Admission, admission},
    error::{Error, Result},
    partition::Command,
    storage::{RelationRecord, SettingsRecord},
    validate::{conversation_id, id},
};

/// Most users one DeclareContacts names.
pub const MAX_DECLARED_CONTACTS: usize = 200;

/// Another user named by a block or unblock.
fn other_user(caller: &Caller, user: &str) -> Result<()> {
    id("user_id", user)?;
    if user == caller.user_id {
        return Err(Error::invalid("user_id", "names the caller"));
    }
    Ok(())
}

impl ClientCommand for BlockUserRequest {
    fn home_key(&self, caller: &Caller) -> String {
        caller.user_id.clone()
    }

    fn validate(&self, _: &Limits, caller: &Caller) -> Result<()> {
        other_user(caller, &self.user_id)
    }
}

impl ClientCommand for UnblockUserRequest {
    fn home_key(&self, caller: &Caller) -> String {
        caller.user_id.clone()
    }

    fn validate(&self, _: &Limits, caller: &Caller) -> Result<()> {
        other_user(caller, &self.user_id)
    }
}

impl ClientCommand for ListBlockedUsersRequest {
    fn home_key(&self, caller: &Caller) -> String {
        caller.user_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        Ok(())
    }
}

impl ClientCommand for AcceptConversationRequest {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        conversation_id("conversation_id", &self.conversation_id)
    }
}

impl ClientCommand for DeclineConversationRequest {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        conversation_id("conversation_id", &self.conversation_id)
    }
}

impl ClientCommand for DeclareContactsRequest {
    /// The partition of the user whose contacts these are.
    fn home_key(&self, _: &Caller) -> String {
        self.user_id.clone()
    }

    fn validate(&self, _: &Limits, caller: &Caller) -> Result<()> {
        if !caller.roles.iter().any(|r| r == ROLE_SERVICE) {
            return Err(Error::PermissionDenied(format!("declaring contacts needs the `{ROLE_SERVICE}` role")));
        }
        id("user_id", &self.user_id)?;
        if self.contact_user_ids.is_empty() || self.contact_user_ids.len() > MAX_DECLARED_CONTACTS {
            return Err(Error::invalid("contact_user_ids", format!("1 to {MAX_DECLARED_CONTACTS} users")));
        }
        for contact in &self.contact_user_ids {
            id("contact_user_ids", contact)?;
            if *contact == self.user_id {
                return Err(Error::invalid("contact_user_ids", "names the user themself"));
            }
        }
        Ok(())
    }
}

impl Broker {
    pub(super) async fn block_user(
        &self,
        caller: Caller,
        _: String,
        request: BlockUserRequest,
    ) -> Result<BlockUserResponse> {
        let (blocker, blocked) = (caller.user_id, request.user_id);
        self.pair_block(&blocker, &blocked, true).await?;
        self.relate(&blocked, vec![blocker.clone()], RelationChange::BlockedBy).await?;
        self.relate(&blocker, vec![blocked], RelationChange::Block).await?;
        Ok(BlockUserResponse {})
    }

    pub(super) async fn unblock_user(
        &self,
        caller: Caller,
        _: String,
        request: UnblockUserRequest,
    ) -> Result<UnblockUserResponse> {
        let (blocker, blocked) = (caller.user_id, request.user_id);
        self.relate(&blocker, vec![blocked.clone()], RelationChange::Unblock).await?;
        self.relate(&blocked, vec![blocker.clone()], RelationChange::UnblockedBy).await?;
        self.pair_block(&blocker, &blocked, false).await?;
        Ok(UnblockUserResponse {})
    }

    pub(super) async fn list_blocked_users(
        &self,
        caller: Caller,
        _: String,
        _: ListBlockedUsersRequest,
    ) -> Result<ListBlockedUsersResponse> {
        let all = self.relate(&caller.user_id, Vec::new(), RelationChange::Unspecified).await?;
        let mut user_ids: Vec<String> =
            all.relations.into_iter().filter(|r| r.blocks).map(|r| r.other_user_id).collect();
        user_ids.sort();
        Ok(ListBlockedUsersResponse { user_ids })
    }

    /// Accepting makes the other member of a direct conversation a contact
    /// (their next conversations with the caller skip the requests folder).
    pub(super) async fn accept_conversation(
        &self,
        caller: Caller,
        conversation_id: String,
        _: AcceptConversationRequest,
    ) -> Result<AcceptConversationResponse> {
        let user = caller.user_id.clone();
        let partition = self.partition_of(&conversation_id);
        let conversation = self
            .call(partition, |reply| Command::Respond { caller, conversation_id, accept: true, reply })
            .await?
            .ok_or_else(|| Error::Internal("an accept answered no conversation".into()))?;
        // The other member of a direct conversation becomes a contact; in
        // any case the caller's presence is announced again (it was hidden
        // from the conversation while the request was pending).
        let others = match conversation.kind == ConversationKind::Direct as i32 {
            true => conversation.members.iter().map(|m| m.user_id.clone()).filter(|u| *u != user).collect(),
            false => Vec::new(),
        };
        self.relate(&user, others, RelationChange::Contact).await?;
        Ok(AcceptConversationResponse { conversation: Some(conversation) })
    }

    pub(super) async fn decline_conversation(
        &self,
        caller: Caller,
        conversation_id: String,
        _: DeclineConversationRequest,
    ) -> Result<DeclineConversationResponse> {
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::Respond { caller, conversation_id, accept: false, reply }).await?;
        Ok(DeclineConversationResponse {})
    }

    pub(super) async fn declare_contacts(
        &self,
        _: Caller,
        user_id: String,
        request: DeclareContactsRequest,
    ) -> Result<DeclareContactsResponse> {
        let change = if request.withdraw { RelationChange::Withdraw } else { RelationChange::Declare };
        self.relate(&user_id, request.contact_user_ids, change).await?;
        Ok(DeclareContactsResponse {})
    }

    // ---- steps the handlers share ----

    /// Whether each of `recipients` accepts `sender` into a new
    /// conversation: the first refusal is the answer, otherwise the
    /// recipients who receive it as a message request.
    pub(super) async fn admit(&self, sender: &str, recipients: &[String]) -> Result<Vec<String>> {
        let stances = try_join_all(
            recipients
                .iter()
                .map(|recipient| self.relate(recipient, vec![sender.to_owned()], RelationChange::Unspecified)),
        )
        .await?;
        let mut requests = Vec::new();
        for (recipient, stance) in recipients.iter().zip(stances) {
            let settings = SettingsRecord::from_view(&stance.settings.unwrap_or_default());
            let relation = stance.relations.first().map_or_else(RelationRecord::default, RelationRecord::from_view);
            if admission(recipient, &settings, &relation)? == Admission::Request {
                requests.push(recipient.clone());
            }
        }
        Ok(requests)
    }

    /// Changes (or only reads) `user`'s relations with `others` on their
    /// partition, wherever it is.
    pub(super) async fn relate(
        &self,
        user: &str,
        others: Vec<String>,
        change: RelationChange,
    ) -> Result<RelationsResult> {
        let user_id = user.to_owned();
        let partition = self.partition_of(&user_id);
        self.call(partition, |reply| Command::Relations { user_id, others, change, reply }).await
    }

    /// The copy of a block in the pair's direct conversation.
    pub(super) async fn pair_block(&self, blocker: &str, other: &str, blocked: bool) -> Result<()> {
        let conversation_id = self.id_key().direct_conversation_id(blocker, other);
        let blocker = blocker.to_owned();
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::PairBlock { conversation_id, blocker, blocked, reply }).await
    }
}
