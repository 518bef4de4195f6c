//! The shell of push notifications (`core::notify`) on a user partition:
//! the devices' push targets, the per-conversation settings, and the push
//! outbox a message's notifications are written to in the batch of its
//! update-log entry (see `crate::push` for the way out).

use std::sync::Arc;

use imsg_proto::v1::Message;

use super::{Deferred, NotificationChange, Partition};
use crate::{core::notify, error::Result, now_ms, push::Queued, storage::PushRecord};

impl Partition {
    pub(super) fn change_notifications(&mut self, user: &str, change: NotificationChange) -> Result<()> {
        let state = self.users.map.entry(user.to_owned()).or_default();
        match change {
            NotificationChange::Target { device_id, target } => {
                self.batch.writes.put_push_target(user, &device_id, target.as_ref());
                match target {
                    Some(target) => state.push_targets.insert(device_id, target),
                    None => state.push_targets.remove(&device_id),
                };
            }
            NotificationChange::Conversation { conversation_id, record } => {
                self.batch.writes.put_notify_settings(user, &conversation_id, &record);
                if record == Default::default() {
                    state.notify.remove(&conversation_id);
                } else {
                    state.notify.insert(conversation_id, record);
                }
            }
        }
        Ok(())
    }

    /// Writes a notification of `message` for each of `user`'s devices that
    /// has a push target and no live stream, if the rules say so; each is
    /// handed to the outlet once durable.
    pub(super) fn notify(&mut self, user: &str, message: &Arc<Message>) {
        let Some(outlet) = self.push.clone() else { return };
        let Some(state) = self.users.map.get(user) else { return };
        if state.push_targets.is_empty() {
            return;
        }
        let conversation = &message.conversation_id;
        let is_request = state.requests.contains(conversation);
        let now = now_ms();
        let Some(preview) =
            notify::preview(message, user, &state.settings, state.notify.get(conversation), is_request, now)
        else {
            return;
        };
        let online: Vec<&str> = state.sessions.iter().map(|s| s.device_id.as_str()).collect();
        let records: Vec<PushRecord> = state
            .push_targets
            .iter()
            .filter(|(device, _)| !online.contains(&device.as_str()))
            .map(|(device, target)| PushRecord {
                idempotency_key: notify::idempotency_key(user, device, conversation, message.seq),
                user_id: user.to_owned(),
                device_id: device.clone(),
                platform: target.platform,
                token: target.token.clone(),
                conversation_id: conversation.clone(),
                seq: message.seq,
                sender_id: message.sender_id.clone(),
                text: preview.text.clone(),
                created_ms: now,
            })
            .collect();
        for record in records {
            let number = self.users.next_push;
            self.users.next_push += 1;
            self.batch.writes.put_push(number, &record);
            let (outlet, partition, span) = (outlet.clone(), self.id, crate::telemetry::carried());
            self.batch
                .deferred
                .push(Deferred::Run(Box::new(move || outlet.send(Queued { partition, number, record, span }))));
        }
    }

    pub(super) fn push_delivered(&mut self, numbers: &[u64]) {
        for number in numbers {
            self.batch.writes.remove_push(*number);
        }
    }

    /// Hands the push outbox a crash (or a move) left to the outlet again.
    pub(super) fn resend_pushes(&mut self) -> Result<()> {
        let Some(outlet) = self.push.clone() else { return Ok(()) };
        for (number, record) in self.store.pending_pushes()? {
            self.users.next_push = self.users.next_push.max(number + 1);
            outlet.send(Queued { partition: self.id, number, record, span: tracing::Span::none() });
        }
        Ok(())
    }
}
