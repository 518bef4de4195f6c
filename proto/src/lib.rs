//! Wire types of imsg: the public client API (`MessagingService`) and the
//! internal broker API (`BrokerService`), both in package `imsg.v1`.
//!
//! Generated at build time from `proto/imsg/v1/` — the single source of truth
//! for every SDK — so there is nothing to edit here by hand.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("imsg.v1");
}

/// Encoded `FileDescriptorSet` of imsg.v1, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/imsg_descriptor.bin"));
