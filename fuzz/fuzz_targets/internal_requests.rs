//! Every message of the internal broker API that crosses the network into
//! a node or a gateway, from arbitrary bytes: decoded with imsg's codec as
//! the generated server (or client) decodes it, then taken through what
//! `broker/src/grpc.rs` and the broker do before a partition runs anything:
//! - `Execute`: caller and command required, the command table's
//!   validation and home key (`Broker::execute`), the refusal's status;
//! - `OpenSession`, `RenewLease`: the id checks of the caller and gateway;
//! - `CallPartition`: route and call required, then the whole of
//!   `cluster::wire::serve`, which turns a call from another node into a
//!   partition command (here handed to a partition that is not there:
//!   the command is dropped, so `serve` must answer an error, not hang or
//!   panic, except for signals, which are answered once queued); fan-out
//!   updates also go through the event catalog's wire form;
//! - the partition-move requests: the route they require;
//! - responses (what gateways and nodes decode from each other): decoding.
//!
//! Proves: no input panics any of that, and
//! - a validated `Execute` has a well-formed caller and a home key that is
//!   an id, a derived conversation id or the moderation queue's key;
//! - a fan-out update's event converts from its wire form and back to the
//!   same wire form (`LoggedEvent::{from_wire, to_wire}`), so what a node
//!   applies is what was sent.
//!
//! Input: selector byte (which message, see `INTERNAL_MESSAGES`), then the
//! message's protobuf bytes.

#![no_main]

use imsg_broker::{Error, Limits, cluster::wire, commands, core::moderation::QUEUE_KEY, events::LoggedEvent, validate};
use imsg_fuzz::{Input, InternalMessage, decode_internal};
use imsg_proto::internal::v1::{Route, call_partition_request::Call, call_partition_response::Result as Answer};
use libfuzzer_sys::fuzz_target;
use tonic::Status;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let selector = input.byte();
    let Ok(message) = decode_internal(selector, input.rest()) else { return };
    let limits = Limits::default();
    match message {
        InternalMessage::ExecuteRequest(request) => {
            let (Some(caller), Some(command)) = (request.caller, request.command) else { return };
            let verdict = commands::validate(&limits, &caller, &command);
            let home = commands::home_key(&caller, &command);
            match verdict {
                Err(error) => drop(Status::from(error)),
                Ok(()) => {
                    assert!(validate::id("caller.user_id", &caller.user_id).is_ok());
                    assert!(validate::id("caller.device_id", &caller.device_id).is_ok());
                    assert!(
                        validate::id("home", &home).is_ok()
                            || validate::conversation_id("home", &home).is_ok()
                            || home == QUEUE_KEY,
                        "a validated command has the home key {home:?}"
                    );
                    // `Broker::check_route`: the route must name the home.
                    let home_partition = imsg_common::ids::partition_of(&home, 64);
                    let _ = request.route.is_some_and(|route| route.partition == home_partition);
                }
            }
        }
        InternalMessage::OpenSessionRequest(request) => {
            let Some(caller) = request.caller else { return };
            let checked = validate::id("caller.user_id", &caller.user_id)
                .and_then(|()| validate::id("caller.device_id", &caller.device_id))
                .and_then(|()| match request.gateway_id.as_str() {
                    "" => Ok(()),
                    gateway => validate::id("gateway_id", gateway),
                });
            if let Err(error) = checked {
                drop(Status::from(error));
            }
        }
        InternalMessage::RenewLeaseRequest(request) => {
            if let Err(error) = validate::id("gateway_id", &request.gateway_id) {
                drop(Status::from(error));
            }
        }
        InternalMessage::CallPartitionRequest(request) => {
            let (Some(_route), Some(call)) = (request.route, request.call) else { return };
            if let Call::ApplyUpdates(updates) = &call {
                for event in updates.updates.iter().filter_map(|update| update.event.clone()) {
                    if let Ok(logged) = LoggedEvent::from_wire(event.clone()) {
                        assert_eq!(logged.to_wire(), event, "an update's wire form does not round-trip");
                    }
                }
            }
            // Signals are answered once queued; every other call waits for
            // the partition's reply, which never comes here.
            let signal = matches!(call, Call::PushEphemeral(_) | Call::PresenceFanout(_) | Call::HideReadChanged(_));
            let served = futures::executor::block_on(wire::serve(call, |command| {
                drop(command);
                Ok(())
            }));
            match served {
                Ok(answer) => assert!(
                    signal && matches!(answer, Answer::Accepted(_)),
                    "a call answered without a partition: {answer:?}"
                ),
                Err(error) => drop(Status::from(error)),
            }
        }
        InternalMessage::FreezePartitionRequest(request) => require(request.route),
        InternalMessage::ThawPartitionRequest(request) => require(request.route),
        InternalMessage::ExportPartitionRequest(request) => require(request.route),
        InternalMessage::ImportPartitionRequest(request) => require(request.route),
        InternalMessage::ReleasePartitionRequest(request) => require(request.route),
        // No unary public command is in the internal table.
        InternalMessage::Command(_) => unreachable!("the internal table has no commands"),
        InternalMessage::GetClusterStateRequest(_)
        | InternalMessage::ExecuteResponse(_)
        | InternalMessage::OpenSessionResponse(_)
        | InternalMessage::RenewLeaseResponse(_)
        | InternalMessage::CallPartitionResponse(_)
        | InternalMessage::GetClusterStateResponse(_)
        | InternalMessage::ExportPartitionResponse(_)
        | InternalMessage::ImportPartitionResponse(_) => {}
    }
});

/// grpc.rs's `route()`: the partition-move requests need one.
fn require(route: Option<Route>) {
    if route.is_none() {
        drop(Status::from(Error::invalid("route", "must be set")));
    }
}
