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
//! at 1,000 msg/s, 0.31 instead of 0.86 `writev`s per delivery
//! (docs/benchmarks.md, "Performance, third steps").
//!
//! ## How many workers
//! A process that runs a broker has a storage writer thread that is busy
//! with every round (its `write`, `fdatasync` and sled work) and a
//! checkpointer beside it; tokio's default of one worker per core puts
//! three busy threads on two cores. Worse at low rates: a worker that
//! wakes a task also wakes a parked sibling to share it (always, with the
//! LIFO slot off), and on a virtual machine that is an interrupt to an
//! idle CPU. One worker per core *but one* ([`workers_beside_storage`])
//! left this machine's gateway with 9-21% less CPU per 1:1 message at
//! 1,000/s (alternating pairs: 301 against 330 µs on a quiet hour, 389
//! against 493 on a noisy one) and a p99 of 2.5-3.0 instead of 4.2-5.9 ms,
//! less CPU near capacity in most pairs, 17-21% less per group message,
//! and no lower a 1:1 rate within the SLO. The price is the
//! ceiling of fan-out-heavy work: a group of 50 at 2,000 msg/s (98,000
//! deliveries/s) had a p99 of 126 ms with one worker, 54 with two; and
//! the in-process commit path (`cargo bench`) carries 7% less. On more
//! cores one worker fewer costs less (docs/benchmarks.md, "Performance,
//! ninth steps"). `--worker-threads` overrides it.

/// Worker threads for a process that runs a broker: one per core but one,
/// left to the storage writer; at least one.
pub fn workers_beside_storage() -> usize {
    workers_per_core().saturating_sub(1).max(1)
}

/// Worker threads for a process without storage: one per core.
pub fn workers_per_core() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A multi-threaded runtime with every driver enabled and `workers` worker
/// threads.
pub fn multi_thread(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    keep_freed_memory();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().worker_threads(workers.max(1));
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

/// Tells mimalloc (the servers' allocator) to keep memory it frees instead
/// of returning it to the kernel after a second. sled allocates a fresh
/// 16 MiB log buffer for each of its log segments and frees it once
/// written; returned to the kernel, every new buffer came back as
/// transparent huge pages the kernel had to zero first (1,100-3,000 faults
/// of 2 MiB in 4 s at 8,000 dm/s, `clear_page_erms` 5% of the gateway's
/// CPU). Kept, the same memory is reused: ~30 faults in 4 s, about 6% less
/// CPU in three runs, the same peak memory (docs/benchmarks.md,
/// "Performance, third steps").
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: `mi_option_set` sets a process-wide option of mimalloc and may
    // be called at any time (mimalloc's documentation); it takes no
    // pointers. When mimalloc is not the allocator (tests), the option is
    // set and never read.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// `mi_option_purge_delay`, which the crate's bindings lack: the one before
/// `mi_option_use_numa_nodes` in `mimalloc.h` (v2 and v3 alike).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_use_numa_nodes - 1;
