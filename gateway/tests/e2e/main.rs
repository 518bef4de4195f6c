//! End-to-end tests: real servers, real sockets, real gRPC clients. Each
//! test names the behaviour or invariant (docs/ARCHITECTURE.md) it proves.

mod cluster;
mod crash;
mod errors;
mod failstop;
mod harness;
mod media;
mod messaging;
mod metrics;
mod moderation;
mod nodes;
mod ops;
mod powercut;
mod presence;
mod privacy;
mod push;
mod receipts;
mod resume;
mod rich;
mod rights;
mod stream_sends;
mod tls;
mod tokens;
mod traces;
mod typing;
mod watchdog;
