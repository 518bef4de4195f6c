//! What every imsg crate and client shares, kept small so that clients (the
//! SDK, the CLI, the load tester) depend on it without the server's storage.
//!
//! - [`ids`]: id syntax, partition placement, derived conversation ids.
//! - [`token`]: issuing and verifying the bearer tokens (JWT) that carry a
//!   caller's identity.
//! - [`retry`]: which refusals are worth retrying, and how the server says
//!   so (`google.rpc.RetryInfo`).

pub mod ids;
pub mod retry;
#[cfg(feature = "test-keys")]
pub mod test_pki;
pub mod tls;
pub mod token;
