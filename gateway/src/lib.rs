//! imsg gateway: the stateless front door. Terminates client connections,
//! authenticates (JWT), validates, rate-limits, holds one stream per device,
//! and routes every command to the broker. Killing a gateway loses nothing:
//! its devices reconnect to any gateway and resume from their cursor.

pub mod backend;
pub mod export;
pub mod keys;
pub mod media;
pub mod ratelimit;
pub mod server;
pub mod service;
pub mod stream;
pub mod stream_sends;
pub mod wire;
pub mod woken;

pub use server::{BrokerTarget, GatewayConfig, RunningGateway};
