//! End-to-end tests: real servers, real sockets, real gRPC clients. Each
//! test names the behaviour or invariant (docs/ARCHITECTURE.md) it proves.

mod harness;
mod messaging;
