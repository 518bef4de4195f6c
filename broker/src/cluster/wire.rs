//! Partition commands on the wire: what a node sends when the partition a
//! command is for lives on another node (`forward`), and what the owner
//! does with it (`serve`).
//!
//! Only steps that one partition asks of another cross nodes: user
//! contexts, inbox summaries, presence queries, replay bodies and
//! snapshots, fan-out updates, ephemeral signals, forwarded copies of a
//! message (sent from the source conversation's node), relations (read or
//! changed on a user's partition), a block's copy in a direct
//! conversation, and creating a conversation (from the creator's node,
//! which derives its id and asked the members). Commands that carry
//! live handles (sessions) or start a client command always run on the
//! node that owns their home partition (the gateway routes them there).

use std::sync::Arc;
use tracing::Instrument as _;

use imsg_proto::internal::v1::{
    Accepted, ApplyUpdatesCall, CreateConversationCall, EraseSenderCall, EraseSenderResult, FileReportCall,
    HideReadChangedCall, LoggedUpdate, MessagesCall, MessagesResult, MutedConversation, PairBlockCall,
    PresenceFanoutCall, PresenceQueryCall, PresenceQueryResult, PushEphemeralCall, RelationChange, RelationsCall,
    RemoveMessageCall, SendForwardedCall, SnapshotsCall, SnapshotsResult, StandingCall, StandingResult, SummariesCall,
    SummariesResult, UserContextCall, UserContextResult, call_partition_request::Call,
    call_partition_response::Result as Answer, push_ephemeral_call,
};
use imsg_proto::v1::{
    CreateConversationRequest, DirectConversationSpec, GroupConversationSpec, Message, ReportResponse, TypingUpdate,
    create_conversation_request,
};
use tokio::sync::oneshot;

use super::{Owner, Peers};
use crate::{
    core::{NewConversation, NewMessage, Viewer},
    error::{Error, Result},
    events::{Ephemeral, LoggedEvent, UpdateItem},
    ids::PartitionId,
    mailbox::{Command, Erased, ModerationOp, ModerationOutcome, Reply, UserContext},
};

/// Sends `command` to the partition's owner on another node. Answers go to
/// the command's reply; a command that cannot cross nodes is given back
/// (boxed: it is the rare path).
pub fn forward(peers: &Arc<Peers>, owner: Owner, partition: PartitionId, command: Command) -> Result<(), Box<Command>> {
    match command {
        Command::UserContext { user_id, reply } => {
            ask(peers, owner, partition, Call::UserContext(UserContextCall { user_id }), reply, |answer| match answer {
                Answer::UserContext(context) => Some(UserContext {
                    settings: context.settings.unwrap_or_default(),
                    conversation_ids: context.conversation_ids.into(),
                    separated: context.separated_user_ids,
                    muted: context.muted.into_iter().map(|m| (m.conversation_id, m.until_ms)).collect(),
                }),
                _ => None,
            })
        }
        Command::Summaries { viewer, conversation_ids, reply } => {
            let call = Call::Summaries(SummariesCall {
                viewer_user_id: viewer.user_id,
                viewer_hides_read_receipts: viewer.hide_read_receipts,
                conversation_ids,
                viewer_separated_user_ids: viewer.separated,
            });
            ask(peers, owner, partition, call, reply, |answer| match answer {
                Answer::Summaries(result) => Some(result.summaries),
                _ => None,
            })
        }
        Command::PresenceQuery { viewer, user_ids, viewer_conversations, reply } => {
            let call = Call::PresenceQuery(PresenceQueryCall {
                user_ids,
                viewer_conversation_ids: viewer_conversations.to_vec(),
                viewer_user_id: viewer,
            });
            ask(peers, owner, partition, call, reply, |answer| match answer {
                Answer::PresenceQuery(result) => Some(result.presences),
                _ => None,
            })
        }
        Command::Messages { conversation_id, seqs, reply } => {
            let call = Call::Messages(MessagesCall { conversation_id, seqs });
            ask(peers, owner, partition, call, reply, |answer| match answer {
                Answer::Messages(result) => Some(result.messages),
                _ => None,
            })
        }
        Command::Snapshots { conversation_ids, reply } => {
            let call = Call::Snapshots(SnapshotsCall { conversation_ids });
            ask(peers, owner, partition, call, reply, |answer| match answer {
                Answer::Snapshots(result) => Some(result.conversations),
                _ => None,
            })
        }
        Command::PushEphemeral { user_ids, event } => {
            let event = match event {
                Ephemeral::Typing { conversation_id, user_id, active } => {
                    push_ephemeral_call::Event::Typing(TypingUpdate { conversation_id, user_id, active })
                }
                Ephemeral::Presence(presence) => push_ephemeral_call::Event::Presence(presence),
            };
            tell(peers, owner, partition, Call::PushEphemeral(PushEphemeralCall { user_ids, event: Some(event) }));
        }
        Command::PresenceFanout { presence, conversation_ids } => {
            let call = Call::PresenceFanout(PresenceFanoutCall { presence: Some(presence), conversation_ids });
            tell(peers, owner, partition, call);
        }
        Command::HideReadChanged { user_id, hide_read, conversation_ids } => {
            let call = Call::HideReadChanged(HideReadChangedCall { user_id, hide_read, conversation_ids });
            tell(peers, owner, partition, call);
        }
        // Only forwarded copies cross: a client's own send runs at its home.
        Command::Send { caller, conversation_id, message, reply } if message.forwarded => {
            let call = Call::SendForwarded(SendForwardedCall {
                caller: Some(caller),
                conversation_id,
                client_message_id: message.client_message_id,
                message: Some(Message { content: Some(message.content), ..Message::default() }),
            });
            ask(peers, owner, partition, call, reply, |answer| match answer {
                Answer::Sent(sent) => Some(sent),
                _ => None,
            })
        }
        Command::Relations { user_id, others, change, reply } => {
            let call = Call::Relations(RelationsCall { user_id, other_user_ids: others, change: change as i32 });
            ask(peers, owner, partition, call, reply, |answer| match answer {
                Answer::Relations(result) => Some(result),
                _ => None,
            })
        }
        Command::PairBlock { conversation_id, blocker, blocked, reply } => {
            let call = Call::PairBlock(PairBlockCall { conversation_id, blocker, blocked });
            ask(peers, owner, partition, call, reply, |answer| match answer {
                Answer::Accepted(_) => Some(()),
                _ => None,
            })
        }
        Command::CreateConversation { caller, conversation_id, spec, requests, reply } => {
            let kind = match spec {
                NewConversation::Direct { peer_user_id } => {
                    create_conversation_request::Kind::Direct(DirectConversationSpec { peer_user_id })
                }
                NewConversation::Group { title, member_ids } => {
                    create_conversation_request::Kind::Group(GroupConversationSpec { title, member_ids })
                }
            };
            let call = Call::CreateConversation(CreateConversationCall {
                caller: Some(caller),
                conversation_id,
                request: Some(CreateConversationRequest { kind: Some(kind), ..Default::default() }),
                request_user_ids: requests,
            });
            ask(peers, owner, partition, call, reply, |answer| match answer {
                Answer::Created(created) => Some(created),
                _ => None,
            })
        }
        Command::Moderation { op: ModerationOp::File(report), reply } => {
            let call = Call::FileReport(FileReportCall { report: Some(*report) });
            ask(peers, owner, partition, call, reply, |answer| match answer {
                Answer::Filed(filed) => Some(ModerationOutcome::Filed(filed.report_id)),
                _ => None,
            })
        }
        Command::RemoveMessage { conversation_id, seq, reply } => {
            let call = Call::RemoveMessage(RemoveMessageCall { conversation_id, seq });
            ask(peers, owner, partition, call, reply, |answer| match answer {
                Answer::Accepted(_) => Some(()),
                _ => None,
            })
        }
        Command::Standing { user_id, suspend, reply } => {
            let call = Call::Standing(StandingCall { user_id, suspend });
            ask(peers, owner, partition, call, reply, |answer| match answer {
                Answer::Standing(standing) => Some(standing.suspended),
                _ => None,
            })
        }
        Command::EraseSender { conversation_id, user_id, after_seq, reply } => {
            let call = Call::EraseSender(EraseSenderCall { conversation_id, user_id, after_seq });
            ask(peers, owner, partition, call, reply, |answer| match answer {
                Answer::Erased(erased) => Some(Erased { messages: erased.messages, more_after: erased.more_after }),
                _ => None,
            })
        }
        other => return Err(Box::new(other)),
    }
    Ok(())
}

/// A call with an answer: decoded into the reply (an answer of the wrong
/// kind is an internal error, not a panic).
fn ask<T: Send + 'static>(
    peers: &Arc<Peers>,
    owner: Owner,
    partition: PartitionId,
    call: Call,
    reply: Reply<T>,
    decode: impl FnOnce(Answer) -> Option<T> + Send + 'static,
) {
    let peers = peers.clone();
    tokio::spawn(
        async move {
            let result = peers.call_partition(owner, partition, call).await.and_then(|answer| {
                decode(answer).ok_or_else(|| Error::Internal(format!("node {} answered the wrong kind", owner.node)))
            });
            let _ = reply.send(result);
        }
        .in_current_span(),
    );
}

/// A signal without an answer: lost if the owner is down, like a signal to
/// a local partition that stopped (ephemeral by definition).
fn tell(peers: &Arc<Peers>, owner: Owner, partition: PartitionId, call: Call) {
    let peers = peers.clone();
    tokio::spawn(
        async move {
            if let Err(error) = peers.call_partition(owner, partition, call).await {
                tracing::debug!(partition, %error, "signal to another node dropped");
            }
        }
        .in_current_span(),
    );
}

/// Fan-out updates as they travel.
pub fn encode_updates(items: &[UpdateItem]) -> ApplyUpdatesCall {
    let updates = items
        .iter()
        .map(|item| LoggedUpdate { user_ids: item.user_ids.clone(), event: Some(item.event.to_wire()) })
        .collect();
    ApplyUpdatesCall { updates }
}

fn decode_updates(call: ApplyUpdatesCall) -> Result<Vec<UpdateItem>> {
    call.updates
        .into_iter()
        .map(|update| {
            let event =
                LoggedEvent::from_wire(update.event.ok_or_else(|| Error::invalid("updates.event", "must be set"))?)?;
            Ok(UpdateItem { user_ids: update.user_ids, event: Arc::new(event) })
        })
        .collect()
}

/// Runs a call from another node on a local partition; `submit` queues the
/// command (it fails when the partition is not served here).
pub async fn serve(call: Call, submit: impl FnOnce(Command) -> Result<()>) -> Result<Answer> {
    async fn answer<T>(
        submit: impl FnOnce(Command) -> Result<()>,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        submit(make(reply))?;
        answer.await.map_err(|_| Error::Unavailable("partition stopped".into()))?
    }
    let accepted = Answer::Accepted(Accepted {});
    Ok(match call {
        Call::UserContext(call) => {
            let context = answer(submit, |reply| Command::UserContext { user_id: call.user_id, reply }).await?;
            Answer::UserContext(UserContextResult {
                settings: Some(context.settings),
                conversation_ids: context.conversation_ids.to_vec(),
                separated_user_ids: context.separated,
                muted: context
                    .muted
                    .into_iter()
                    .map(|(conversation_id, until_ms)| MutedConversation { conversation_id, until_ms })
                    .collect(),
            })
        }
        Call::Summaries(call) => {
            let viewer = Viewer {
                user_id: call.viewer_user_id,
                hide_read_receipts: call.viewer_hides_read_receipts,
                separated: call.viewer_separated_user_ids,
            };
            let conversation_ids = call.conversation_ids;
            let summaries = answer(submit, |reply| Command::Summaries { viewer, conversation_ids, reply }).await?;
            Answer::Summaries(SummariesResult { summaries })
        }
        Call::PresenceQuery(call) => {
            let (viewer, user_ids, viewer_conversations) =
                (call.viewer_user_id, call.user_ids, call.viewer_conversation_ids.into());
            let presences =
                answer(submit, |reply| Command::PresenceQuery { viewer, user_ids, viewer_conversations, reply })
                    .await?;
            Answer::PresenceQuery(PresenceQueryResult { presences })
        }
        Call::Messages(call) => {
            let (conversation_id, seqs) = (call.conversation_id, call.seqs);
            let messages = answer(submit, |reply| Command::Messages { conversation_id, seqs, reply }).await?;
            Answer::Messages(MessagesResult { messages })
        }
        Call::Snapshots(call) => {
            let conversation_ids = call.conversation_ids;
            let conversations = answer(submit, |reply| Command::Snapshots { conversation_ids, reply }).await?;
            Answer::Snapshots(SnapshotsResult { conversations })
        }
        Call::ApplyUpdates(call) => {
            let items = decode_updates(call)?;
            let (done, applied) = oneshot::channel();
            // Sent only once durable at the source (`Router::deliver_updates`).
            submit(Command::ApplyUpdates { items, after: 0, owed: Vec::new(), done })?;
            // Answered only once durable here: the sender then confirms its
            // outbox batch. A refusal (dropped) makes the sender re-send.
            applied
                .await
                .map_err(|_| Error::Unavailable("partition stopped before the updates were durable".into()))?;
            accepted
        }
        Call::PushEphemeral(call) => {
            let event = match call.event.ok_or_else(|| Error::invalid("event", "must be set"))? {
                push_ephemeral_call::Event::Typing(t) => {
                    Ephemeral::Typing { conversation_id: t.conversation_id, user_id: t.user_id, active: t.active }
                }
                push_ephemeral_call::Event::Presence(presence) => Ephemeral::Presence(presence),
            };
            submit(Command::PushEphemeral { user_ids: call.user_ids, event })?;
            accepted
        }
        Call::PresenceFanout(call) => {
            let presence = call.presence.ok_or_else(|| Error::invalid("presence", "must be set"))?;
            submit(Command::PresenceFanout { presence, conversation_ids: call.conversation_ids })?;
            accepted
        }
        Call::SendForwarded(call) => {
            let caller = call.caller.ok_or_else(|| Error::invalid("caller", "must be set"))?;
            let content =
                call.message.and_then(|m| m.content).ok_or_else(|| Error::invalid("message.content", "must be set"))?;
            let message =
                NewMessage { client_message_id: call.client_message_id, reply_to_seq: 0, content, forwarded: true };
            let conversation_id = call.conversation_id;
            let sent = answer(submit, |reply| Command::Send { caller, conversation_id, message, reply }).await?;
            Answer::Sent(sent)
        }
        Call::Relations(call) => {
            let change = RelationChange::try_from(call.change)
                .map_err(|_| Error::invalid("change", format!("unknown relation change {}", call.change)))?;
            let (user_id, others) = (call.user_id, call.other_user_ids);
            Answer::Relations(answer(submit, |reply| Command::Relations { user_id, others, change, reply }).await?)
        }
        Call::PairBlock(call) => {
            let (conversation_id, blocker, blocked) = (call.conversation_id, call.blocker, call.blocked);
            answer(submit, |reply| Command::PairBlock { conversation_id, blocker, blocked, reply }).await?;
            accepted
        }
        Call::CreateConversation(call) => {
            let caller = call.caller.ok_or_else(|| Error::invalid("caller", "must be set"))?;
            let spec = match call.request.and_then(|r| r.kind) {
                Some(create_conversation_request::Kind::Direct(direct)) => {
                    NewConversation::Direct { peer_user_id: direct.peer_user_id }
                }
                Some(create_conversation_request::Kind::Group(group)) => {
                    NewConversation::Group { title: group.title, member_ids: group.member_ids }
                }
                None => return Err(Error::invalid("request.kind", "must be set")),
            };
            let (conversation_id, requests) = (call.conversation_id, call.request_user_ids);
            Answer::Created(
                answer(submit, |reply| Command::CreateConversation { caller, conversation_id, spec, requests, reply })
                    .await?,
            )
        }
        Call::FileReport(call) => {
            let report = call.report.ok_or_else(|| Error::invalid("report", "must be set"))?;
            let op = ModerationOp::File(Box::new(report));
            match answer(submit, |reply| Command::Moderation { op, reply }).await? {
                ModerationOutcome::Filed(report_id) => Answer::Filed(ReportResponse { report_id }),
                other => return Err(Error::Internal(format!("filing answered {other:?}"))),
            }
        }
        Call::RemoveMessage(call) => {
            let (conversation_id, seq) = (call.conversation_id, call.seq);
            answer(submit, |reply| Command::RemoveMessage { conversation_id, seq, reply }).await?;
            accepted
        }
        Call::Standing(call) => {
            let (user_id, suspend) = (call.user_id, call.suspend);
            let suspended = answer(submit, |reply| Command::Standing { user_id, suspend, reply }).await?;
            Answer::Standing(StandingResult { suspended })
        }
        Call::EraseSender(call) => {
            let (conversation_id, user_id, after_seq) = (call.conversation_id, call.user_id, call.after_seq);
            let erased =
                answer(submit, |reply| Command::EraseSender { conversation_id, user_id, after_seq, reply }).await?;
            Answer::Erased(EraseSenderResult { messages: erased.messages, more_after: erased.more_after })
        }
        Call::HideReadChanged(call) => {
            submit(Command::HideReadChanged {
                user_id: call.user_id,
                hide_read: call.hide_read,
                conversation_ids: call.conversation_ids,
            })?;
            accepted
        }
    })
}
