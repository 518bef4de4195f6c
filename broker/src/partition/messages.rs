//! The message role of a partition: what the conversation shell does with
//! one sent message. Reading it as storage holds it (or will, once the
//! batches in flight are published: the `unpublished` overlay), writing it
//! (its content sealed under its key slot), the actions on it (react, edit,
//! unsend, delete for me, read for a forward) and the reply previews made
//! when messages are served.

use std::{collections::HashMap, sync::Arc};

use imsg_proto::{internal::v1::Caller, v1::Message};

use super::{Deferred, Partition};
use crate::{
    core::{Effects, replies},
    error::{Error, Result},
    mailbox::{MessageAction, MessageOutcome},
    now_ms,
};

impl Partition {
    /// Message `seq` as storage holds it (or will, once the batches in
    /// flight are published), with its content-key slot.
    pub(super) fn stored_message(&self, id: &str, seq: u64) -> Result<Option<(Arc<Message>, Option<u64>)>> {
        if let Some((message, slot)) = self.conversations.unpublished.get(&(id.to_owned(), seq)) {
            return Ok(Some((message.clone(), *slot)));
        }
        Ok(self.store.stored_message(id, seq)?.map(|(message, slot)| (Arc::new(message), slot)))
    }

    /// Writes a message row (new or rewritten: its slot is reused, so an
    /// edit overwrites the old key and an unsend erases it) and remembers
    /// it until published.
    pub(super) fn write_message(&mut self, message: Arc<Message>, new: bool) -> Result<()> {
        let existing = if new { None } else { self.stored_message(&message.conversation_id, message.seq)? };
        let slot = existing.and_then(|(_, slot)| slot).unwrap_or_else(|| self.store.new_content_slot());
        self.batch.writes.put_message(&message, slot);
        self.remember_unpublished(message, Some(slot));
        Ok(())
    }

    pub(super) fn remember_unpublished(&mut self, message: Arc<Message>, slot: Option<u64>) {
        let key = (message.conversation_id.clone(), message.seq);
        self.conversations.unpublished.insert(key, (message.clone(), slot));
        self.defer(Deferred::MessagePublished { message });
    }

    /// Reacting to, editing, unsending, deleting for oneself, or reading
    /// for a forward one message.
    pub(super) fn act_on_message(
        &mut self,
        caller: &Caller,
        id: &str,
        seq: u64,
        action: MessageAction,
    ) -> Result<MessageOutcome> {
        let window = self.limits.edit_window;
        let stored = self.stored_message(id, seq)?.map(|(message, _)| message);
        let stored = stored.as_deref();
        let conversation = self.conversation(id)?;
        let (outcome, effects) = match action {
            MessageAction::React { emoji } => {
                (MessageOutcome::Done, conversation.react(caller, seq, stored, &emoji, now_ms())?)
            }
            MessageAction::Edit { text } => {
                let (response, effects) = conversation.edit(caller, seq, stored, text, window, now_ms())?;
                (MessageOutcome::Edited(response), effects)
            }
            MessageAction::Unsend => (MessageOutcome::Done, conversation.unsend(caller, seq, stored)?),
            MessageAction::DeleteForMe => (MessageOutcome::Done, conversation.delete_for_me(caller, seq, stored)?),
            MessageAction::ReadForForward => {
                let message = conversation.visible_message(&caller.user_id, seq, stored)?;
                let content = message
                    .content
                    .clone()
                    .ok_or_else(|| Error::FailedPrecondition(format!("message {seq} was unsent")))?;
                (MessageOutcome::Content(content), Effects::default())
            }
        };
        self.apply_effects(effects)?;
        Ok(outcome)
    }

    /// Fills in what a served message shows of the message it replies to,
    /// as that is now.
    pub(super) fn attach_reply_previews(&self, id: &str, messages: &mut [Message]) -> Result<()> {
        let page: HashMap<u64, Message> = messages
            .iter()
            .filter(|m| messages.iter().any(|r| r.reply_to_seq == m.seq))
            .map(|m| (m.seq, m.clone()))
            .collect();
        for message in messages.iter_mut().filter(|m| m.reply_to_seq != 0) {
            let seq = message.reply_to_seq;
            let quoted = match page.get(&seq) {
                Some(quoted) => Some(quoted.clone()),
                None => self.store.message(id, seq)?,
            };
            message.reply_preview = Some(replies::preview(seq, quoted.as_ref()));
        }
        Ok(())
    }

    /// A write of `message` is published: history reads may include it, and
    /// storage holds it (unless a newer write of it is still in flight).
    pub(super) fn message_published(&mut self, message: &Arc<Message>) {
        let key = (message.conversation_id.clone(), message.seq);
        if self.conversations.unpublished.get(&key).is_some_and(|(newest, _)| Arc::ptr_eq(newest, message)) {
            self.conversations.unpublished.remove(&key);
        }
        if let Some(conversation) = self.conversations.map.get_mut(&message.conversation_id) {
            conversation.message_published(message.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        core::{NewConversation, NewMessage, testing::new_text},
        storage::wal::Op,
    };

    /// The rows each command adds to its partition's batch, besides the
    /// per-batch rows every command shares (one outbox row, the members'
    /// update-log rows): the row budget of docs/benchmarks.md.
    #[tokio::test]
    async fn rows_a_message_a_reaction_an_edit_and_an_unsend_cost() {
        let (_dir, store, mut partition) = super::super::testing::loaded_partition(1);
        let alice = Caller { user_id: "alice".into(), device_id: "phone".into(), ..Default::default() };
        let bob = Caller { user_id: "bob".into(), device_id: "phone".into(), ..Default::default() };
        let id = crate::ids::IdKey::new(b"test-id-secret-0123").unwrap().direct_conversation_id("alice", "bob");
        partition
            .create_conversation(&alice, &id, NewConversation::Direct { peer_user_id: "bob".into() }, &[])
            .unwrap();
        let rows = |partition: &mut Partition| {
            let batch = std::mem::take(&mut partition.batch);
            batch
                .writes
                .ops()
                .iter()
                .map(|op| match op {
                    Op::Put { key, .. } => format!("put {}", key[0] as char),
                    Op::Remove { key } => format!("remove {}", key[0] as char),
                })
                .collect::<Vec<_>>()
        };
        rows(&mut partition);

        partition.send(&alice, &id, new_text("a1", "hi")).unwrap();
        assert_eq!(rows(&mut partition), ["put K", "put m"], "a message: its content key and its row");
        partition.act_on_message(&bob, &id, 1, MessageAction::React { emoji: "👍".into() }).unwrap();
        assert_eq!(rows(&mut partition), ["put a"], "a reaction: the message's reaction row");
        partition.act_on_message(&alice, &id, 1, MessageAction::Edit { text: "hello".into() }).unwrap();
        assert_eq!(rows(&mut partition), ["put K", "put m"], "an edit: a new key in the same slot, the row");
        partition.act_on_message(&alice, &id, 1, MessageAction::Unsend).unwrap();
        assert_eq!(
            rows(&mut partition),
            ["remove K", "put m", "remove a"],
            "an unsend: the key erased, the tombstone, the reactions gone"
        );
        partition.act_on_message(&bob, &id, 1, MessageAction::DeleteForMe).unwrap();
        assert_eq!(rows(&mut partition), ["put h"], "a deletion for oneself: one marker row");
        let photo = imsg_proto::v1::MediaContent {
            media_id: "m_0123456789abcdef0123456789abcdef".into(),
            kind: imsg_proto::v1::MediaKind::Photo as i32,
            size_bytes: 2_000_000,
            caption: "cat".into(),
            ..Default::default()
        };
        let media = NewMessage { content: imsg_proto::v1::message::Content::Media(photo), ..new_text("a2", "") };
        partition.send(&alice, &id, media).unwrap();
        assert_eq!(
            rows(&mut partition),
            ["put K", "put m"],
            "a media message: as a text (the bytes are in the object store)"
        );
        store.close().unwrap();
    }

    /// An edit arriving while an unsend of the same message is still in
    /// flight (not yet published) must see the tombstone, not the old row
    /// in sled, or it would write the content back.
    #[tokio::test]
    async fn a_change_starts_from_the_newest_unpublished_state_not_from_sled() {
        let (_dir, store, mut partition) = super::super::testing::loaded_partition(1);
        let alice = Caller { user_id: "alice".into(), device_id: "phone".into(), ..Default::default() };
        let id = crate::ids::IdKey::new(b"test-id-secret-0123").unwrap().direct_conversation_id("alice", "bob");
        partition
            .create_conversation(&alice, &id, NewConversation::Direct { peer_user_id: "bob".into() }, &[])
            .unwrap();
        partition.send(&alice, &id, new_text("a1", "secret")).unwrap();
        partition.act_on_message(&alice, &id, 1, MessageAction::Unsend).unwrap();
        let error = partition.act_on_message(&alice, &id, 1, MessageAction::Edit { text: "back".into() }).unwrap_err();
        assert!(matches!(error, Error::FailedPrecondition(_)), "{error:?}");
        let reaction = partition.act_on_message(&alice, &id, 1, MessageAction::React { emoji: "👍".into() });
        assert!(matches!(reaction, Err(Error::FailedPrecondition(_))));
        store.close().unwrap();
    }
}
