//! Device sessions: replay from a cursor, then live events, on one stream.
//!
//! Opening a session alternates between the user's partition, which hands
//! out pages of missed update-log entries, and the conversation partitions,
//! which supply the message bodies and snapshots those entries refer to.
//! When a page comes back empty the partition registers the session and
//! queues `Ready` on it in the same step, so nothing can fall between replay
//! and live (invariant 4). The stream drops duplicates by cursor, so a live
//! event that raced the last page is never shown twice.

use std::{
    collections::{BTreeMap, HashMap},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use imsg_proto::v1::{Goodbye, Message, OpenStreamResponse, ResyncRequired, open_stream_response};
use tokio::sync::mpsc;

use crate::{
    error::Result,
    events::replayed_frame,
    partition::{Command, OpenStep, SessionHandle},
    router::Router,
    storage::{UpdateEntry, UpdateKind},
};

/// Entries fetched per replay step.
const REPLAY_PAGE: usize = 256;

/// The frames of one device session. Dropping it closes the session.
pub struct SessionStream {
    frames: mpsc::Receiver<Box<OpenStreamResponse>>,
    close_reason: Arc<std::sync::Mutex<Option<String>>>,
    router: Router,
    user_id: String,
    session_id: u64,
    last_cursor: u64,
    finished: bool,
}

impl SessionStream {
    /// Starts replaying after `cursor` and returns the stream at once.
    pub(crate) fn open(router: Router, handle_fields: SessionFields, cursor: u64, queue: usize) -> Self {
        let (frames_tx, frames) = mpsc::channel(queue);
        let close_reason = Arc::new(std::sync::Mutex::new(None));
        let handle = SessionHandle {
            id: handle_fields.session_id,
            user_id: handle_fields.user_id.clone(),
            device_id: handle_fields.device_id,
            gateway_id: handle_fields.gateway_id,
            frames: frames_tx,
            close_reason: close_reason.clone(),
        };
        tokio::spawn(replay(router.clone(), handle, cursor));
        Self {
            frames,
            close_reason,
            router,
            user_id: handle_fields.user_id,
            session_id: handle_fields.session_id,
            last_cursor: cursor,
            finished: false,
        }
    }
}

/// Identity of a session being opened.
pub(crate) struct SessionFields {
    pub session_id: u64,
    pub user_id: String,
    pub device_id: String,
    pub gateway_id: String,
}

impl tokio_stream::Stream for SessionStream {
    type Item = OpenStreamResponse;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            match self.frames.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(frame)) => {
                    if let Some(open_stream_response::Frame::Event(event)) = &frame.frame
                        && event.cursor != 0
                    {
                        if event.cursor <= self.last_cursor {
                            continue; // already delivered by replay
                        }
                        self.last_cursor = event.cursor;
                    }
                    return Poll::Ready(Some(*frame));
                }
                Poll::Ready(None) => {
                    self.finished = true;
                    let reason = self.close_reason.lock().unwrap_or_else(|e| e.into_inner()).take();
                    return Poll::Ready(reason.map(|reason| OpenStreamResponse {
                        frame: Some(open_stream_response::Frame::Goodbye(Goodbye { reason })),
                    }));
                }
            }
        }
    }
}

impl Drop for SessionStream {
    fn drop(&mut self) {
        let partition = self.router.partition_of(&self.user_id);
        self.router
            .internal(partition, Command::CloseSession { user_id: self.user_id.clone(), session_id: self.session_id });
    }
}

async fn ask<T>(
    router: &Router,
    partition: u32,
    make: impl FnOnce(crate::partition::Reply<T>) -> Command,
) -> Result<T> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    router.try_internal(partition, make(reply))?;
    answer.await.map_err(|_| crate::error::Error::Unavailable(format!("partition {partition} stopped")))?
}

/// Feeds missed entries into the session's queue, then lets the user's
/// partition register it live.
async fn replay(router: Router, session: SessionHandle, mut cursor: u64) {
    let partition = router.partition_of(&session.user_id);
    let frames = session.frames.clone();
    let mut replayed = 0u64;
    loop {
        let step = ask(&router, partition, |reply| Command::OpenSession {
            session: session.clone(),
            after_cursor: cursor,
            replayed,
            page: REPLAY_PAGE,
            reply,
        })
        .await;
        let entries = match step {
            Ok(OpenStep::Page { entries }) if !entries.is_empty() => entries,
            Ok(OpenStep::Page { .. }) => {
                tracing::error!(user = session.user_id, cursor, "update log index points at missing entries");
                return finish_with(&session, "internal error: update log inconsistent");
            }
            Ok(OpenStep::Live) => {
                tracing::debug!(user = session.user_id, replayed, "session live");
                return;
            }
            Ok(OpenStep::Resync { cursor }) => {
                let frame = OpenStreamResponse {
                    frame: Some(open_stream_response::Frame::ResyncRequired(ResyncRequired { cursor })),
                };
                let _ = frames.send(Box::new(frame)).await;
                return;
            }
            Err(error) => return finish_with(&session, &error.to_string()),
        };
        cursor = entries.last().map_or(cursor, |e| e.cursor);
        let frames_of_page = match materialize(&router, entries).await {
            Ok(frames) => frames,
            Err(error) => return finish_with(&session, &error.to_string()),
        };
        for frame in frames_of_page {
            replayed += 1;
            if frames.send(Box::new(frame)).await.is_err() {
                return; // the device went away
            }
        }
    }
}

fn finish_with(session: &SessionHandle, reason: &str) {
    *session.close_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
}

/// Turns update-log entries into event frames, fetching message bodies and
/// conversation snapshots from their partitions.
async fn materialize(router: &Router, entries: Vec<UpdateEntry>) -> Result<Vec<OpenStreamResponse>> {
    let mut wanted_messages: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut wanted_snapshots: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for entry in &entries {
        if let Some(seq) = entry.kind.as_ref().and_then(UpdateKind::message_seq) {
            wanted_messages.entry(entry.conversation_id.clone()).or_default().push(seq);
        }
        if let Some(UpdateKind::ConversationRemoved(false)) = entry.kind {
            wanted_snapshots
                .entry(router.partition_of(&entry.conversation_id))
                .or_default()
                .push(entry.conversation_id.clone());
        }
    }
    // Each message with the number of entries that show it: the last one
    // takes it, the others a copy.
    let mut messages: HashMap<String, HashMap<u64, (Message, usize)>> = HashMap::new();
    for (conversation_id, seqs) in wanted_messages {
        let partition = router.partition_of(&conversation_id);
        let mut uses: HashMap<u64, usize> = HashMap::with_capacity(seqs.len());
        for seq in &seqs {
            *uses.entry(*seq).or_default() += 1;
        }
        let id = conversation_id.clone();
        let found = ask(router, partition, |reply| Command::Messages { conversation_id: id, seqs, reply }).await?;
        let by_seq = found.into_iter().map(|message| {
            let uses = uses.get(&message.seq).copied().unwrap_or(1);
            (message.seq, (message, uses))
        });
        messages.insert(conversation_id, by_seq.collect());
    }
    let mut snapshots = HashMap::new();
    for (partition, conversation_ids) in wanted_snapshots {
        for snapshot in ask(router, partition, |reply| Command::Snapshots { conversation_ids, reply }).await? {
            snapshots.insert(snapshot.conversation_id.clone(), snapshot);
        }
    }
    let mut frames = Vec::with_capacity(entries.len());
    for entry in entries {
        // A message and its later changes replay from the one stored copy,
        // as it is now.
        let stored_message = entry
            .kind
            .as_ref()
            .and_then(UpdateKind::message_seq)
            .and_then(|seq| take_or_copy(messages.get_mut(&entry.conversation_id)?, seq));
        let conversation_now = snapshots.get(&entry.conversation_id).cloned();
        let Some(kind) = replayed_frame(&entry.conversation_id, entry.kind, stored_message, conversation_now) else {
            continue; // removed from storage since (retention)
        };
        frames.push(OpenStreamResponse {
            frame: Some(open_stream_response::Frame::Event(imsg_proto::v1::Event {
                cursor: entry.cursor,
                kind: Some(kind),
            })),
        });
    }
    Ok(frames)
}

/// The message `seq` for one of the entries that show it: the last one
/// takes it.
fn take_or_copy(by_seq: &mut HashMap<u64, (Message, usize)>, seq: u64) -> Option<Message> {
    let (message, uses) = by_seq.get_mut(&seq)?;
    *uses = uses.saturating_sub(1);
    if *uses == 0 { by_seq.remove(&seq).map(|(message, _)| message) } else { Some(message.clone()) }
}
