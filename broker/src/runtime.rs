//! The servers' tokio runtime.
//!
//! One change from `#[tokio::main]`: the LIFO slot is off when the build
//! allows it (`--cfg tokio_unstable`, set in `.cargo/config.toml`). With
//! the slot, a task woken by the running task runs next on the same worker.
//! That is the wrong order for a fan-out: a partition wakes fifty device
//! streams, the first of them wakes its HTTP/2 connection, and the
//! connection runs before the other forty-nine streams have queued their
//! frames, so it writes one frame per `writev`. Without the slot the
//! connection runs after them and writes them together: in a group of 50
//! at 1,000 msg/s, 0.23 instead of 0.69 `writev`s per delivery
//! (docs/benchmarks.md, "Performance, third steps").

/// A multi-threaded runtime with every driver enabled.
pub fn multi_thread() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}
