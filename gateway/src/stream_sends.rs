//! Messages sent on a device's stream: the fast path for clients that hold
//! a stream anyway (the SDKs do). The stream was authenticated once, when
//! it opened, so a send costs no HTTP/2 stream, no headers and no token
//! check; it is still charged to the user's request budget, validated and
//! run exactly as the unary `SendMessage` is ([`Gateway::run_as`]).
//!
//! Sends are pipelined: up to [`MAX_IN_FLIGHT`] per stream are running or
//! queued. Those to one conversation run one after the other, in the order
//! they arrived, so a device's messages keep their order in a conversation
//! (two running at once could be assigned seqs in either order); sends to
//! different conversations run side by side. Each gets a `SendOutcome`
//! naming its `client_message_id`. When the limit is reached the relay
//! stops reading the device's frames until a send finishes: backpressure
//! through HTTP/2 flow control, not a refusal.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Instant,
};

use futures::{FutureExt, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use imsg_proto::internal::v1::{Caller, execute_request::Command, execute_response::Result as Outcome};
use imsg_proto::v1::{SendMessageRequest, SendOutcome, send_outcome};
use tonic::Status;

use crate::{
    service::{Gateway, record},
    stream::error_frame,
};

/// Sends a stream may have running or queued at once.
pub const MAX_IN_FLIGHT: usize = 64;

/// The sends of one stream that have no outcome yet. Allocated on the
/// first send and freed when the last one is answered: an idle stream (most
/// of them) holds a null pointer, not a queue.
#[derive(Default)]
pub struct StreamSends(Option<Box<InFlight>>);

#[derive(Default)]
struct InFlight {
    running: FuturesUnordered<BoxFuture<'static, (String, SendOutcome)>>,
    /// Conversations with a send running, and the sends waiting behind it.
    waiting: HashMap<String, VecDeque<SendMessageRequest>>,
    count: usize,
}

impl StreamSends {
    /// Whether the stream must stop taking sends until one finishes.
    pub fn is_full(&self) -> bool {
        self.0.as_ref().is_some_and(|sends| sends.count >= MAX_IN_FLIGHT)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Takes a send: runs it now, or queues it behind the running send to
    /// the same conversation.
    pub fn submit(&mut self, gateway: &Arc<Gateway>, caller: &Caller, request: SendMessageRequest) {
        self.0.get_or_insert_default().submit(gateway, caller, request);
    }

    /// The next outcome, starting the send queued behind it; pending
    /// forever when nothing runs (for `select!`, guard it with
    /// [`Self::is_empty`]).
    pub async fn next_outcome(&mut self, gateway: &Arc<Gateway>, caller: &Caller) -> SendOutcome {
        let Some(sends) = self.0.as_mut() else { return std::future::pending().await };
        let outcome = sends.next_outcome(gateway, caller).await;
        if sends.count == 0 {
            self.0 = None;
        }
        outcome
    }
}

impl InFlight {
    fn submit(&mut self, gateway: &Arc<Gateway>, caller: &Caller, request: SendMessageRequest) {
        self.count += 1;
        match self.waiting.get_mut(&request.conversation_id) {
            Some(queue) => queue.push_back(request),
            None => {
                self.waiting.insert(request.conversation_id.clone(), VecDeque::new());
                self.start(gateway, caller, request);
            }
        }
    }

    async fn next_outcome(&mut self, gateway: &Arc<Gateway>, caller: &Caller) -> SendOutcome {
        let Some((conversation, outcome)) = self.running.next().await else {
            return std::future::pending().await;
        };
        self.count -= 1;
        let next = self.waiting.get_mut(&conversation).and_then(VecDeque::pop_front);
        match next {
            Some(request) => self.start(gateway, caller, request),
            None => {
                self.waiting.remove(&conversation);
            }
        }
        outcome
    }

    fn start(&mut self, gateway: &Arc<Gateway>, caller: &Caller, request: SendMessageRequest) {
        let (gateway, caller) = (gateway.clone(), caller.clone());
        self.running.push(
            async move {
                let started = Instant::now();
                let conversation = request.conversation_id.clone();
                let client_message_id = request.client_message_id.clone();
                let result = send(&gateway, caller, request).await;
                record("SendMessage", &result, started);
                let outcome = match result {
                    Ok(sent) => send_outcome::Outcome::Sent(sent),
                    Err(status) => send_outcome::Outcome::Error(error_frame(&status)),
                };
                (conversation, SendOutcome { client_message_id, outcome: Some(outcome) })
            }
            .boxed(),
        );
    }
}

async fn send(
    gateway: &Gateway,
    caller: Caller,
    request: SendMessageRequest,
) -> Result<imsg_proto::v1::SendMessageResponse, Status> {
    gateway.admit(&caller).await?;
    match gateway.run_as(caller, Command::SendMessage(request)).await? {
        Outcome::SendMessage(sent) => Ok(sent),
        _ => Err(Status::internal("broker answered with the wrong result kind")),
    }
}
