//! imsg-loadtest: the tool operators use to size a deployment and the
//! project uses to prove its performance and correctness claims.
//!
//! [`scenario::run`] offers open-loop load and measures; [`checker`] judges
//! every run's trace; [`report`] prints, writes JSON and HTML; [`spawn`]
//! starts a local deployment from the binaries built beside this one.

pub mod checker;
pub mod client;
pub mod generator;
pub mod metrics;
pub mod quiet;
pub mod report;
pub mod scenario;
pub mod sending;
pub mod spawn;
