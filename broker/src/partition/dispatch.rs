//! The partition's dispatch: each command to the step that carries it
//! out (refusing client writes while the partition freezes for a move).

use super::{Command, Freezing, Partition};

impl Partition {
    pub(super) fn handle(&mut self, command: Command) {
        if let Some(freezing) = &self.freezing {
            let refused = command.writes_as_client()
                || (freezing.sealing
                    && matches!(command, Command::ApplyUpdates { .. } | Command::HideReadChanged { .. }));
            if refused {
                return; // dropped: the caller sees UNAVAILABLE, a lane re-sends
            }
        }
        match command {
            Command::CreateConversation { caller, conversation_id, spec, requests, reply } => {
                let result = self.create_conversation(&caller, &conversation_id, spec, &requests);
                self.reply(reply, result);
            }
            Command::Respond { caller, conversation_id, accept, reply } => {
                let result = self.respond(&caller, &conversation_id, accept);
                self.reply(reply, result);
            }
            Command::PairBlock { conversation_id, blocker, blocked, reply } => {
                let result = self.pair_block(&conversation_id, &blocker, blocked);
                self.reply(reply, result);
            }
            Command::Notifications { user_id, change, reply } => {
                let result = self.change_notifications(&user_id, change);
                self.reply(reply, result);
            }
            Command::PushDelivered { numbers } => self.push_delivered(&numbers),
            Command::Evidence { caller, conversation_id, seq, reply } => {
                let result = self.evidence(&caller, &conversation_id, seq);
                self.reply(reply, result);
            }
            Command::RemoveMessage { conversation_id, seq, reply } => {
                let result = self.remove_message(&conversation_id, seq);
                self.reply(reply, result);
            }
            Command::Standing { user_id, suspend, reply } => {
                let result = Ok(self.standing(&user_id, suspend));
                self.reply(reply, result);
            }
            Command::Forget { user_id, erase, reply } => {
                let result = Ok(self.forget(&user_id, erase));
                self.reply(reply, result);
            }
            Command::EraseSender { conversation_id, user_id, after_seq, reply } => {
                let result = self.erase_sender(&conversation_id, &user_id, after_seq);
                self.reply(reply, result);
            }
            Command::Moderation { op, reply } => {
                let result = self.moderate(op);
                self.reply(reply, result);
            }
            Command::Relations { user_id, others, change, reply } => {
                let result = self.relations(&user_id, &others, change);
                self.reply(reply, result);
            }
            Command::GetConversation { viewer, conversation_id, reply } => {
                let result = self.get_conversation(&viewer, &conversation_id);
                self.reply(reply, result);
            }
            Command::ChangeMembership { caller, conversation_id, change, reply } => {
                let result = self.change_membership(&caller, &conversation_id, change);
                self.reply(reply, result);
            }
            Command::Send { caller, conversation_id, message, reply } => {
                let result = self.send(&caller, &conversation_id, message);
                self.reply(reply, result);
            }
            Command::ActOnMessage { caller, conversation_id, seq, action, reply } => {
                let result = self.act_on_message(&caller, &conversation_id, seq, action);
                self.reply(reply, result);
            }
            Command::ListMessages { caller, request, reply } => {
                let result = self.list_messages(&caller, &request);
                self.reply(reply, result);
            }
            Command::Typing { caller, conversation_id, active, reply } => {
                let result = self.typing(&caller, &conversation_id, active);
                self.reply(reply, result);
            }
            Command::Mark { caller, conversation_id, seq, kind, hide_read, reply } => {
                let result = self.mark(&caller, &conversation_id, seq, kind, hide_read);
                self.reply(reply, result);
            }
            Command::Summaries { viewer, conversation_ids, reply } => {
                let result = self.summaries(&viewer, &conversation_ids);
                self.reply(reply, result);
            }
            Command::Messages { conversation_id, seqs, reply } => {
                let result = self.messages_by_seq(&conversation_id, &seqs);
                self.reply(reply, result);
            }
            Command::Snapshots { conversation_ids, reply } => {
                let result = self.snapshots(&conversation_ids);
                self.reply(reply, result);
            }
            Command::PresenceFanout { presence, conversation_ids } => self.presence_fanout(presence, &conversation_ids),
            Command::HideReadChanged { user_id, hide_read, conversation_ids } => {
                self.hide_read_changed(&user_id, hide_read, &conversation_ids);
            }
            Command::FanoutDone { batch } => self.fanout_done(batch),
            Command::ApplyUpdates { items, after, owed, done } => self.apply_updates(items, after, owed, done),
            Command::PushEphemeral { user_ids, event } => self.push_ephemeral(&user_ids, &event),
            Command::OpenSession { session, after_cursor, replayed, page, reply } => {
                let result = self.open_session(session, after_cursor, replayed, page);
                self.reply(reply, result);
            }
            Command::CloseSession { user_id, session_id } => self.close_session(&user_id, session_id, None),
            Command::DropGateway { gateway_id } => self.drop_gateway(&gateway_id),
            Command::UserContext { user_id, reply } => {
                let result = Ok(self.user_context(&user_id));
                self.reply(reply, result);
            }
            // In memory only: answered at once, not behind the writes.
            Command::AcquireBudget { user_id, want, reply } => {
                let _ = reply.send(Ok(self.budgets.grant(&user_id, want, std::time::Instant::now())));
            }
            Command::UpdateSettings { user_id, request, reply } => {
                let result = self.update_settings(&user_id, &request);
                self.reply(reply, result);
            }
            Command::PresenceQuery { viewer, user_ids, viewer_conversations, reply } => {
                let result = Ok(self.presence_query(&viewer, &user_ids, &viewer_conversations));
                self.reply(reply, result);
            }
            Command::Freeze { reply } => {
                if self.freezing.is_none() {
                    tracing::info!(partition = self.id, "freezing for a move");
                    self.freezing = Some(Freezing { sealing: false, reply });
                }
            }
            Command::Shutdown { .. } => unreachable!("handled by take"),
        }
    }
}
