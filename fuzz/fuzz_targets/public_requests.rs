//! Every request of the public API, from arbitrary bytes, through what the
//! servers do with it before any partition sees it: decoded by tonic with
//! imsg's codec (`imsg_proto::codec`, as the generated servers decode),
//! turned into its command as `gateway/src/service.rs` and the stream relay
//! do, then validated and routed by the command table
//! (`imsg_broker::commands::{validate, home_key}`, what both a remote
//! gateway and the broker run), its refusal mapped to the status a client
//! sees, and a validated send converted as the broker converts it.
//!
//! Proves: no input panics any of that, and
//! - a command that passes validation has a home key that is a valid id,
//!   a derived conversation id or the moderation queue's key (storage keys
//!   rely on it: ids never hold `/`), and it places on a partition;
//! - a validated `SendMessage` converts to a new message (its content is
//!   set);
//! - validation is deterministic (the gateway and the broker both run it
//!   and must agree).
//!
//! Input: selector byte (which message, see `PUBLIC_MESSAGES`), roles byte
//! (bit 0 moderator, bit 1 service), limits byte (bit 0: tiny limits, so
//! the fuzzer reaches size refusals), then the message's protobuf bytes.

#![no_main]

use imsg_broker::{
    Limits, commands,
    core::{moderation::QUEUE_KEY, send::NewMessage},
    validate,
};
use imsg_fuzz::{Input, PublicMessage, caller, decode_public};
use imsg_proto::{
    internal::v1::{Caller, execute_request::Command},
    v1::open_stream_request::Frame,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let selector = input.byte();
    let caller = caller(input.byte());
    let limits = if input.byte() & 1 == 0 {
        Limits::default()
    } else {
        Limits { max_text_bytes: 8, max_group_members: 3, max_title_bytes: 4, ..Limits::default() }
    };
    let Ok(message) = decode_public(selector, input.rest()) else { return };
    match message {
        PublicMessage::Command(command) => check(&limits, &caller, command),
        // The stream relay's upstream frames (gateway/src/stream.rs): these
        // four run as commands; a refresh token is verified (the `tokens`
        // target covers that), ping and hello are answered in place.
        PublicMessage::OpenStreamRequest(request) => match request.frame {
            Some(Frame::SendMessage(send)) => check(&limits, &caller, Command::SendMessage(*send)),
            Some(Frame::Typing(typing)) => check(&limits, &caller, Command::Typing(typing)),
            Some(Frame::MarkDelivered(mark)) => check(&limits, &caller, Command::MarkDelivered(mark)),
            Some(Frame::MarkRead(mark)) => check(&limits, &caller, Command::MarkRead(mark)),
            Some(Frame::RefreshToken(_) | Frame::Hello(_) | Frame::Ping(_)) | None => {}
        },
        // Handled by the gateway's media store and export, which check the
        // ids they are given there; decoding is what is shared.
        PublicMessage::UploadMediaRequest(_)
        | PublicMessage::GetUploadRequest(_)
        | PublicMessage::DownloadMediaRequest(_)
        | PublicMessage::ExportMyDataRequest(_) => {}
    }
});

/// Validates and routes a command as the gateway and broker do.
fn check(limits: &Limits, caller: &Caller, command: Command) {
    let verdict = commands::validate(limits, caller, &command);
    let home = commands::home_key(caller, &command);
    assert_eq!(
        verdict.is_ok(),
        commands::validate(limits, caller, &command).is_ok(),
        "validation is not deterministic"
    );
    match verdict {
        Err(error) => {
            // What the client is told (with retry advice when transient).
            let _ = tonic::Status::from(error);
        }
        Ok(()) => {
            assert!(
                validate::id("home", &home).is_ok()
                    || validate::conversation_id("home", &home).is_ok()
                    || home == QUEUE_KEY,
                "a validated command has the home key {home:?}"
            );
            assert!(imsg_common::ids::partition_of(&home, 64) < 64);
            if let Command::SendMessage(request) = command {
                NewMessage::from_request(request).expect("a validated send has content");
            }
        }
    }
}
