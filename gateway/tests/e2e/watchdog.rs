//! A time limit on one step of a fault test, kept from outside the test's
//! runtime, so that a hang ends with a report instead of holding CI until
//! its own limit (a stop's CI once ran out of time inside the power-cut
//! test, with nothing printed about where it waited).
//!
//! The limit is kept by a thread of its own: it also fires when the test's
//! task is stuck in a blocking call, where a `tokio::time::timeout` would
//! never be polled. When it fires it reports what the test was doing (its
//! [`Phase`]) and what the node under test is doing (each thread's state,
//! its kernel stack, and gdb's backtraces where gdb is installed), then
//! SIGKILLs the node: a test waiting on the node then fails on its own,
//! with its usual message. A test still stuck a while after that aborts
//! the test binary: a failure CI reports, not a hang.

use std::{
    io::Write,
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI32, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use crate::harness::unsafe_kill;

/// How long a test may stay stuck after the watchdog killed its node.
const AFTER_THE_KILL: Duration = Duration::from_secs(60);

/// What a test is doing now, and the pid of the node it runs (0 if none),
/// for the watchdog's report.
#[derive(Clone, Default)]
pub struct Phase {
    doing: Arc<Mutex<String>>,
    node: Arc<AtomicI32>,
}

impl Phase {
    pub fn set(&self, doing: impl Into<String>) {
        *self.doing.lock().unwrap_or_else(|e| e.into_inner()) = doing.into();
    }

    pub fn set_node(&self, pid: Option<u32>) {
        self.node.store(pid.map_or(0, |pid| pid as i32), Ordering::Relaxed);
    }

    fn doing(&self) -> String {
        self.doing.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Fires unless dropped within its limit.
pub struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Watches `step` for `limit`; see the module docs for what firing does.
    pub fn arm(step: String, limit: Duration, phase: Phase) -> Self {
        let (done, finished) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            if finished.recv_timeout(limit) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            let pid = phase.node.load(Ordering::Relaxed);
            let mut report = format!(
                "\nWATCHDOG: {step} took over {limit:?}, while {}; the node under test (pid {pid}):\n",
                phase.doing()
            );
            if pid > 0 {
                report.push_str(&describe_process(pid));
                let _ = unsafe_kill(pid, libc::SIGKILL);
                report.push_str("WATCHDOG: node SIGKILLed; the test should now fail by itself\n");
            }
            // Straight to the descriptor: a test's captured output is only
            // printed when it ends, and this one may not.
            let _ = std::io::stderr().lock().write_all(report.as_bytes());
            if finished.recv_timeout(AFTER_THE_KILL) == Err(mpsc::RecvTimeoutError::Timeout) {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "WATCHDOG: {step} still stuck {AFTER_THE_KILL:?} after the kill, while {}: aborting",
                    phase.doing()
                );
                std::process::abort();
            }
        });
        Self { done: Some(done), thread: Some(thread) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Each thread of `pid`: name, scheduler state, where in the kernel it
/// waits; then gdb's backtraces of every thread, if gdb is installed.
fn describe_process(pid: i32) -> String {
    let mut out = String::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map(|dir| dir.flatten().collect::<Vec<_>>());
    for task in tasks.unwrap_or_default() {
        let dir = task.path();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let state = read("status").lines().find(|l| l.starts_with("State:")).unwrap_or_default().to_owned();
        out.push_str(&format!(
            "  thread {} {:?}: {state}, wchan {}\n",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan")
        ));
        for frame in read("stack").lines().take(8) {
            out.push_str(&format!("      {frame}\n"));
        }
    }
    if Path::new("/usr/bin/gdb").exists() {
        let backtraces = Command::new("timeout")
            .args(["60", "gdb", "-p", &pid.to_string(), "-batch", "-nx", "-ex", "thread apply all bt 30"])
            .output();
        if let Ok(output) = backtraces {
            out.push_str(&String::from_utf8_lossy(&output.stdout));
        }
    }
    out
}

#[test]
fn a_step_over_its_limit_is_reported_and_its_node_killed() {
    use std::os::unix::process::ExitStatusExt;
    let mut node = Command::new("sleep").arg("30").spawn().unwrap();
    let phase = Phase::default();
    phase.set("waiting for a node that never answers");
    phase.set_node(Some(node.id()));
    let watchdog = Watchdog::arm("a step".into(), Duration::from_millis(200), phase);
    let status = node.wait().unwrap();
    // Dropped well before AFTER_THE_KILL: no abort.
    drop(watchdog);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the watchdog did not kill the node: {status:?}");
}
