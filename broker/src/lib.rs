//! imsg broker: partitioned, durable per-conversation logs with realtime
//! delivery, resume, receipts, presence and typing.
//!
//! Start with [`Broker`]: it owns the partitions ([`partition`]), each a
//! single-writer task over its sled tree ([`storage`]). [`grpc`] serves the
//! internal broker API to gateways; a gateway may instead embed a `Broker`.

pub mod broker;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod core;
pub mod error;
pub mod grpc;
pub mod layout;
pub mod mailbox;
pub mod metrics;
pub mod partition;
pub mod push;
pub mod router;
pub mod runtime;
pub mod session;
pub mod standing;
pub mod storage;
pub mod telemetry;
pub mod validate;

/// The event catalog lives with the rules that make the events.
pub use crate::core::events;
pub use broker::Broker;
pub use config::{BrokerConfig, FsyncMode, Limits};
pub use error::{Error, Result};
/// Placement and ids live in `imsg-common`, shared with clients.
pub use imsg_common::ids;
pub use session::SessionStream;

/// Milliseconds since the Unix epoch, the unit of every server timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
