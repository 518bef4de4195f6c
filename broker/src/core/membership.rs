//! Who is in a conversation: creating one, adding and removing members,
//! leaving, the title, and admin succession.
//!
//! A direct conversation has exactly its two members for ever; a group has
//! at least one admin at all times (when the last admin leaves, the longest
//! member is promoted) and at most `max_group_members` members. Every
//! change is logged for every member, and for the removed ones (who must
//! learn they are out).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use imsg_proto::internal::v1::Caller;
use imsg_proto::v1::{Conversation as ConversationView, ConversationKind, CreateConversationResponse, MemberRole};

use super::{Conversation, Effects, Logged, Viewer, Write};
use crate::{
    config::Limits,
    error::{Error, Result},
    events::LoggedEvent,
    storage::{ConversationRecord, MemberRecord, RequestState},
};

/// A group conversation to create, or the peer of a direct one.
#[derive(Debug)]
pub enum NewConversation {
    Direct { peer_user_id: String },
    Group { title: String, member_ids: Vec<String> },
}

/// A membership change of a group.
#[derive(Debug)]
pub enum MembershipChange {
    /// Adds users; those in `requests` join as message requests (the
    /// caller is not their contact).
    Add {
        user_ids: Vec<String>,
        requests: Vec<String>,
    },
    /// Removes a member; when the caller removes themself, they leave.
    Remove(String),
    Title(String),
}

impl MembershipChange {
    /// Adds users, none of them as a request.
    pub fn add(user_ids: Vec<String>) -> Self {
        Self::Add { user_ids, requests: Vec::new() }
    }
}

impl Conversation {
    /// Creates conversation `id` (derived from the pair, or from the
    /// creator and request id, so a retry lands here again: see
    /// `Self::recreate`).
    pub fn create(
        caller: &Caller,
        id: &str,
        spec: NewConversation,
        limits: &Limits,
        now_ms: i64,
    ) -> Result<(Self, CreateConversationResponse, Effects)> {
        Self::create_with_requests(caller, id, spec, limits, now_ms, &[])
    }

    /// Creates a conversation where the members in `requests` join as
    /// message requests (see `core::privacy`).
    pub fn create_with_requests(
        caller: &Caller,
        id: &str,
        spec: NewConversation,
        limits: &Limits,
        now_ms: i64,
        requests: &[String],
    ) -> Result<(Self, CreateConversationResponse, Effects)> {
        let (kind, title, members) = match spec {
            NewConversation::Direct { peer_user_id } => {
                let mut members = vec![caller.user_id.clone(), peer_user_id];
                members.sort();
                (
                    ConversationKind::Direct,
                    String::new(),
                    members.into_iter().map(|u| (u, MemberRole::Member)).collect(),
                )
            }
            NewConversation::Group { title, member_ids } => {
                let mut members: Vec<(String, MemberRole)> = vec![(caller.user_id.clone(), MemberRole::Admin)];
                let mut seen = HashSet::from([caller.user_id.clone()]);
                for user in member_ids {
                    if seen.insert(user.clone()) {
                        members.push((user, MemberRole::Member));
                    }
                }
                if members.len() > limits.max_group_members {
                    return Err(Error::GroupFull { max: limits.max_group_members });
                }
                (ConversationKind::Group, title, members)
            }
        };
        let record = ConversationRecord {
            id: id.to_owned(),
            kind: kind as i32,
            title,
            create_time_ms: now_ms,
            members: members
                .into_iter()
                .map(|(user_id, role)| MemberRecord {
                    request: request_state(requests, &user_id),
                    user_id,
                    role: role as i32,
                    joined_after_seq: 0,
                })
                .collect(),
            creator: caller.user_id.clone(),
            change_time_ms: now_ms,
            blocked_by: Vec::new(),
            request_sends: 0,
        };
        let mut conversation = Self::restore(record, None, HashMap::new());
        conversation.dedup = Some(Default::default());
        let mut effects = Effects::default();
        effects.writes.push(Write::Conversation(conversation.record.clone()));
        conversation.log_change(&mut effects, Vec::new());
        let response = CreateConversationResponse {
            conversation: Some(conversation.snapshot(Some(&Viewer::new(&caller.user_id)))),
            created: true,
        };
        Ok((conversation, response, effects))
    }

    /// A create that finds the conversation already there: the same answer
    /// again for a member of the direct pair or the group's creator (a
    /// retry), a refusal for anyone else.
    pub fn recreate(&self, caller: &Caller, spec: &NewConversation) -> Result<CreateConversationResponse> {
        let allowed = match spec {
            NewConversation::Direct { .. } => self.member(&caller.user_id).is_some(),
            NewConversation::Group { .. } => self.record.creator == caller.user_id,
        };
        if !allowed {
            return Err(Error::FailedPrecondition(format!("conversation {} already exists", self.record.id)));
        }
        Ok(CreateConversationResponse {
            conversation: Some(self.snapshot(Some(&Viewer::new(&caller.user_id)))),
            created: false,
        })
    }

    /// Adds members, removes one (or the caller leaves), or sets the title.
    /// Only admins change a group, but anyone may leave.
    pub fn change_membership(
        &mut self,
        caller: &Caller,
        change: MembershipChange,
        limits: &Limits,
        now_ms: i64,
    ) -> Result<(ConversationView, Effects)> {
        let viewer = Viewer::new(&caller.user_id);
        let me = self.require_member(&caller.user_id)?.clone();
        if !self.is_group() {
            return Err(Error::FailedPrecondition("a direct conversation's members and title cannot change".into()));
        }
        let is_admin = me.role == MemberRole::Admin as i32;
        let leaving = matches!(&change, MembershipChange::Remove(user) if *user == caller.user_id);
        if !is_admin && !leaving {
            return Err(Error::PermissionDenied("only group admins may do this".into()));
        }
        let mut removed = Vec::new();
        match change {
            MembershipChange::Add { user_ids, requests } => {
                let new: Vec<String> = user_ids
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|u| self.member(u).is_none())
                    .collect();
                if new.is_empty() {
                    return Ok((self.snapshot(Some(&viewer)), Effects::default()));
                }
                if self.record.members.len() + new.len() > limits.max_group_members {
                    return Err(Error::GroupFull { max: limits.max_group_members });
                }
                let joined_after_seq = self.last_seq;
                self.record.members.extend(new.into_iter().map(|user_id| MemberRecord {
                    request: request_state(&requests, &user_id),
                    user_id,
                    role: MemberRole::Member as i32,
                    joined_after_seq,
                }));
            }
            MembershipChange::Remove(user) => {
                if self.member(&user).is_none() {
                    return Err(Error::invalid("user_id", format!("{user} is not a member")));
                }
                self.record.members.retain(|m| m.user_id != user);
                self.receipts.remove(&user);
                self.typing.remove(&user);
                // A group never stays without an admin: promote the longest member.
                if !self.record.members.iter().any(|m| m.role == MemberRole::Admin as i32)
                    && let Some(first) = self.record.members.first_mut()
                {
                    first.role = MemberRole::Admin as i32;
                }
                removed.push(user);
            }
            MembershipChange::Title(title) => self.record.title = title,
        }
        self.record.change_time_ms = now_ms;
        self.last_activity_ms = self.last_activity_ms.max(now_ms);
        let mut effects = Effects::default();
        effects.writes.push(Write::Conversation(self.record.clone()));
        self.log_change(&mut effects, removed);
        Ok((self.snapshot(Some(&viewer)), effects))
    }

    /// The members (and those just removed) learn the new membership.
    pub(super) fn log_change(&self, effects: &mut Effects, removed: Vec<String>) {
        let event =
            LoggedEvent::Changed { conversation: Arc::new(self.snapshot(None)), removed_user_ids: removed.into() };
        effects.logged.push(Logged { recipients: event.recipients(self.listeners()), event });
    }
}

fn request_state(requests: &[String], user: &str) -> i32 {
    if requests.iter().any(|r| r == user) { RequestState::Pending as i32 } else { RequestState::Accepted as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testing::*;

    fn roles(conversation: &Conversation) -> Vec<(String, i32)> {
        conversation.record.members.iter().map(|m| (m.user_id.clone(), m.role)).collect()
    }

    fn change(conversation: &mut Conversation, by: &str, change: MembershipChange) -> Result<Effects> {
        conversation.change_membership(&caller(by), change, &limits(), T0 + 1).map(|(_, effects)| effects)
    }

    #[test]
    fn a_direct_conversation_has_its_two_members_in_a_fixed_order() {
        let ab = direct("bob", "alice");
        assert_eq!(ab.member_ids(), vec!["alice".to_string(), "bob".to_string()]);
        assert!(!ab.is_group());
    }

    #[test]
    fn creating_writes_the_record_and_tells_every_member() {
        let spec = NewConversation::Group { title: "trip".into(), member_ids: vec!["bob".into(), "bob".into()] };
        let (conversation, response, effects) =
            Conversation::create(&caller("alice"), "g_1", spec, &limits(), T0).unwrap();
        assert!(response.created);
        assert_eq!(roles(&conversation), vec![("alice".into(), MemberRole::Admin as i32), ("bob".into(), 1)]);
        assert!(matches!(effects.writes.as_slice(), [Write::Conversation(record)] if record.id == "g_1"));
        assert_eq!(effects.logged.len(), 1);
        assert_eq!(effects.logged[0].recipients, vec!["alice".to_string(), "bob".to_string()]);
    }

    #[test]
    fn a_group_over_the_limit_is_refused_at_creation() {
        let spec = NewConversation::Group {
            title: "big".into(),
            member_ids: (0..5).map(|n| format!("u{n}")).collect(), // 6 with the creator
        };
        let error = Conversation::create(&caller("alice"), "g_1", spec, &limits(), T0).unwrap_err();
        assert!(matches!(error, Error::GroupFull { max: 5 }));
    }

    #[test]
    fn a_retried_create_answers_the_same_and_a_stranger_is_refused() {
        let conversation = group("alice", &["bob"]);
        let spec = NewConversation::Group { title: "g".into(), member_ids: vec![] };
        let again = conversation.recreate(&caller("alice"), &spec).unwrap();
        assert!(!again.created);
        assert!(matches!(conversation.recreate(&caller("bob"), &spec), Err(Error::FailedPrecondition(_))));
        let dm = direct("alice", "bob");
        let spec = NewConversation::Direct { peer_user_id: "alice".into() };
        assert!(dm.recreate(&caller("bob"), &spec).is_ok());
        assert!(dm.recreate(&caller("carol"), &spec).is_err());
    }

    #[test]
    fn added_members_see_only_what_comes_after_they_joined() {
        let mut conversation = group("alice", &["bob"]);
        conversation.last_seq = 9;
        change(&mut conversation, "alice", MembershipChange::add(vec!["carol".into(), "carol".into()])).unwrap();
        assert_eq!(conversation.member("carol").unwrap().joined_after_seq, 9);
        assert_eq!(conversation.record.members.len(), 3);
    }

    #[test]
    fn adding_people_already_in_changes_nothing_and_writes_nothing() {
        let mut conversation = group("alice", &["bob"]);
        let effects = change(&mut conversation, "alice", MembershipChange::add(vec!["bob".into()])).unwrap();
        assert!(effects.is_empty());
    }

    #[test]
    fn adding_past_the_limit_is_refused_and_changes_nothing() {
        let mut conversation = group("alice", &["b", "c", "d"]);
        let error =
            change(&mut conversation, "alice", MembershipChange::add(vec!["e".into(), "f".into()])).unwrap_err();
        assert!(matches!(error, Error::GroupFull { .. }));
        assert_eq!(conversation.record.members.len(), 4);
    }

    #[test]
    fn only_admins_change_a_group_but_anyone_may_leave() {
        let mut conversation = group("alice", &["bob", "carol"]);
        let denied = change(&mut conversation, "bob", MembershipChange::Remove("carol".into())).unwrap_err();
        assert!(matches!(denied, Error::PermissionDenied(_)));
        let denied = change(&mut conversation, "bob", MembershipChange::Title("mine".into())).unwrap_err();
        assert!(matches!(denied, Error::PermissionDenied(_)));
        change(&mut conversation, "bob", MembershipChange::Remove("bob".into())).unwrap();
        assert!(conversation.member("bob").is_none());
    }

    #[test]
    fn removed_members_are_told_and_their_receipts_and_typing_go() {
        let mut conversation = group("alice", &["bob", "carol"]);
        conversation.receipts.insert("carol".into(), Default::default());
        conversation.typing.insert("carol".into(), std::time::Instant::now());
        let effects = change(&mut conversation, "alice", MembershipChange::Remove("carol".into())).unwrap();
        assert!(!conversation.receipts.contains_key("carol") && !conversation.typing.contains_key("carol"));
        let logged = &effects.logged[0];
        assert!(logged.recipients.contains(&"carol".to_string()), "the removed member learns it");
        assert!(
            matches!(&logged.event, LoggedEvent::Changed { removed_user_ids, .. } if removed_user_ids[..] == ["carol"])
        );
    }

    #[test]
    fn when_the_last_admin_leaves_the_longest_member_becomes_admin() {
        let mut conversation = group("alice", &["bob", "carol"]);
        change(&mut conversation, "alice", MembershipChange::Remove("alice".into())).unwrap();
        assert_eq!(roles(&conversation), vec![("bob".into(), MemberRole::Admin as i32), ("carol".into(), 1)]);
    }

    #[test]
    fn removing_a_non_member_is_an_invalid_argument() {
        let mut conversation = group("alice", &["bob"]);
        let error = change(&mut conversation, "alice", MembershipChange::Remove("zed".into())).unwrap_err();
        assert!(matches!(error, Error::InvalidArgument { field: "user_id", .. }));
    }

    #[test]
    fn a_direct_conversation_cannot_change_and_outsiders_cannot_touch_a_group() {
        let mut dm = direct("alice", "bob");
        let error = change(&mut dm, "alice", MembershipChange::Title("x".into())).unwrap_err();
        assert!(matches!(error, Error::FailedPrecondition(_)));
        let mut conversation = group("alice", &["bob"]);
        let error = change(&mut conversation, "mallory", MembershipChange::Remove("mallory".into())).unwrap_err();
        assert!(matches!(error, Error::NotMember(_)));
    }

    #[test]
    fn a_title_change_is_written_and_moves_last_activity() {
        let mut conversation = group("alice", &["bob"]);
        let effects = change(&mut conversation, "alice", MembershipChange::Title("renamed".into())).unwrap();
        assert_eq!(conversation.record.title, "renamed");
        assert_eq!(conversation.last_activity_ms, T0 + 1);
        assert!(matches!(&effects.writes[..], [Write::Conversation(r)] if r.title == "renamed"));
    }
}
