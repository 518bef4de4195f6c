//! Typing: an ephemeral signal to the other members, never written
//! (invariant 7). It lasts `ttl` unless renewed, stops when the user says
//! so or sends, and the partition's tick expires it on the server.

use std::time::{Duration, Instant};

use imsg_proto::internal::v1::Caller;

use super::{Conversation, Effects, Signal};
use crate::{error::Result, events::Ephemeral};

impl Conversation {
    /// The caller starts or stops typing. Only a change is signalled: a
    /// renewal extends the deadline quietly.
    pub fn typing(&mut self, caller: &Caller, active: bool, now: Instant, ttl: Duration) -> Result<Effects> {
        self.require_member(&caller.user_id)?;
        let changed = if active {
            self.typing.insert(caller.user_id.clone(), now + ttl).is_none()
        } else {
            self.typing.remove(&caller.user_id).is_some()
        };
        let mut effects = Effects::default();
        if changed {
            effects.signals.push(self.typing_signal(&caller.user_id, active));
        }
        Ok(effects)
    }

    /// Ends typing not renewed by `now`; returns the signals to send.
    pub fn expire_typing(&mut self, now: Instant) -> Effects {
        let expired: Vec<String> =
            self.typing.iter().filter(|(_, until)| **until <= now).map(|(user, _)| user.clone()).collect();
        let mut effects = Effects::default();
        for user in expired {
            self.typing.remove(&user);
            effects.signals.push(self.typing_signal(&user, false));
        }
        effects
    }

    /// Whether anyone may still be typing (the tick visits only these).
    pub fn anyone_typing(&self) -> bool {
        !self.typing.is_empty()
    }

    /// To the others who hear the conversation; nobody hears a member who
    /// has not accepted it.
    fn typing_signal(&self, user: &str, active: bool) -> Signal {
        let recipients = if self.is_request_for(user) {
            Vec::new()
        } else {
            self.listeners().into_iter().filter(|u| u != user).collect()
        };
        Signal {
            recipients,
            event: Ephemeral::Typing { conversation_id: self.record.id.clone(), user_id: user.to_owned(), active },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{core::testing::*, error::Error};

    const TTL: Duration = Duration::from_secs(6);

    fn typing_signals(effects: &Effects) -> Vec<(Vec<String>, bool)> {
        effects
            .signals
            .iter()
            .map(|s| match &s.event {
                Ephemeral::Typing { active, .. } => (s.recipients.clone(), *active),
                other => panic!("unexpected signal {other:?}"),
            })
            .collect()
    }

    #[test]
    fn starting_signals_the_others_once_and_renewing_is_quiet() {
        let mut conversation = group("alice", &["bob", "carol"]);
        let now = Instant::now();
        let started = conversation.typing(&caller("alice"), true, now, TTL).unwrap();
        assert_eq!(typing_signals(&started), vec![(vec!["bob".to_string(), "carol".to_string()], true)]);
        assert!(started.writes.is_empty() && started.logged.is_empty(), "typing is never written");
        assert!(conversation.typing(&caller("alice"), true, now + TTL / 2, TTL).unwrap().is_empty());
    }

    #[test]
    fn stopping_signals_and_stopping_twice_does_not() {
        let mut conversation = group("alice", &["bob"]);
        let now = Instant::now();
        conversation.typing(&caller("alice"), true, now, TTL).unwrap();
        let stopped = conversation.typing(&caller("alice"), false, now, TTL).unwrap();
        assert_eq!(typing_signals(&stopped), vec![(vec!["bob".to_string()], false)]);
        assert!(conversation.typing(&caller("alice"), false, now, TTL).unwrap().is_empty());
    }

    #[test]
    fn typing_not_renewed_within_the_ttl_expires_on_the_server() {
        let mut conversation = group("alice", &["bob"]);
        let now = Instant::now();
        conversation.typing(&caller("alice"), true, now, TTL).unwrap();
        conversation.typing(&caller("bob"), true, now + Duration::from_secs(3), TTL).unwrap();
        assert!(conversation.expire_typing(now + Duration::from_secs(5)).is_empty());
        let expired = conversation.expire_typing(now + TTL);
        assert_eq!(typing_signals(&expired), vec![(vec!["bob".to_string()], false)], "alice's ended");
        assert!(conversation.anyone_typing(), "bob's renewal is still running");
        conversation.expire_typing(now + Duration::from_secs(10));
        assert!(!conversation.anyone_typing());
    }

    #[test]
    fn outsiders_cannot_type_into_a_conversation() {
        let mut conversation = group("alice", &["bob"]);
        let error = conversation.typing(&caller("mallory"), true, Instant::now(), TTL).unwrap_err();
        assert!(matches!(error, Error::NotMember(_)));
    }
}
