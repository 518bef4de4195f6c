//! Triggers: stop the filesystem at a chosen write or fsync so a test can kill
//! the process doing it at exactly that point.
//!
//! The request that fires a trigger waits here, holding no lock on the
//! filesystem state, until it gets a verdict: `Fail` (from [`crate::PowerCutFs::cut`],
//! or from dropping the `Mount` or the last `PowerCutFs`), answered with `EIO`
//! and not applied, or `Apply` (from [`Armed::release`]), applied normally.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use fuser::Errno;

use crate::{Shared, lock};

/// The kind of operation a trigger waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    /// A `write` to a file.
    Write,
    /// An `fsync`/`fdatasync` of a file or directory.
    Fsync,
}

#[derive(Debug, Clone)]
enum NamePattern {
    Exact(OsString),
    Prefix(OsString),
}

impl NamePattern {
    fn matches(&self, name: &OsStr) -> bool {
        match self {
            NamePattern::Exact(exact) => name == exact,
            NamePattern::Prefix(prefix) => name.as_bytes().starts_with(prefix.as_bytes()),
        }
    }
}

/// Which operation to stop at: its kind, a pattern for the file's name (the
/// last path component, matched against every name the file currently has),
/// and how many matching operations to let through first.
#[derive(Debug, Clone)]
pub struct Trigger {
    operation: Operation,
    name: NamePattern,
    skip: u64,
}

impl Trigger {
    /// A `write` to a file named exactly `name`.
    pub fn write_to(name: impl AsRef<OsStr>) -> Self {
        Self::new(Operation::Write, NamePattern::Exact(name.as_ref().to_owned()))
    }

    /// A `write` to a file whose name starts with `prefix`.
    pub fn write_to_prefix(prefix: impl AsRef<OsStr>) -> Self {
        Self::new(Operation::Write, NamePattern::Prefix(prefix.as_ref().to_owned()))
    }

    /// An `fsync` or `fdatasync` of a file or directory named exactly `name`.
    pub fn fsync_of(name: impl AsRef<OsStr>) -> Self {
        Self::new(Operation::Fsync, NamePattern::Exact(name.as_ref().to_owned()))
    }

    /// An `fsync` or `fdatasync` of a file or directory whose name starts with `prefix`.
    pub fn fsync_of_prefix(prefix: impl AsRef<OsStr>) -> Self {
        Self::new(Operation::Fsync, NamePattern::Prefix(prefix.as_ref().to_owned()))
    }

    /// Lets the first `skipped` matching operations through; the next one fires.
    pub fn after(self, skipped: u64) -> Self {
        Trigger { skip: skipped, ..self }
    }

    fn new(operation: Operation, name: NamePattern) -> Self {
        Trigger { operation, name, skip: 0 }
    }
}

#[derive(Debug, Clone, Copy)]
enum Verdict {
    Apply,
    Fail,
}

#[derive(Debug)]
struct Waiting {
    id: u64,
    trigger: Trigger,
    skips_left: u64,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    /// The armed trigger that has not fired yet.
    waiting: Option<Waiting>,
    /// Triggers that fired, while their `Armed` handle lives.
    fired: HashSet<u64>,
    /// Requests blocked by a fired trigger, with their verdict once given.
    blocked: HashMap<u64, Option<Verdict>>,
}

#[derive(Debug, Default)]
pub(crate) struct Triggers {
    table: Mutex<Table>,
    changed: Condvar,
}

impl Triggers {
    pub(crate) fn arm(&self, trigger: Trigger) -> u64 {
        let mut table = lock(&self.table);
        let id = table.next_id;
        table.next_id += 1;
        let skips_left = trigger.skip;
        table.waiting = Some(Waiting { id, trigger, skips_left });
        id
    }

    /// Whether an armed trigger waits for `operation` (cheap: callers look up
    /// file names only when it does).
    pub(crate) fn is_waiting_for(&self, operation: Operation) -> bool {
        lock(&self.table).waiting.as_ref().is_some_and(|waiting| waiting.trigger.operation == operation)
    }

    /// Called before applying `operation` to a file with these `names`: if the
    /// armed trigger matches, fires it and blocks until a verdict.
    pub(crate) fn pass(&self, operation: Operation, names: &[OsString]) -> Result<(), Errno> {
        let mut table = lock(&self.table);
        let Some(waiting) = table.waiting.as_mut() else {
            return Ok(());
        };
        if waiting.trigger.operation != operation || !names.iter().any(|name| waiting.trigger.name.matches(name)) {
            return Ok(());
        }
        if waiting.skips_left > 0 {
            waiting.skips_left -= 1;
            return Ok(());
        }
        let id = waiting.id;
        table.waiting = None;
        table.fired.insert(id);
        table.blocked.insert(id, None);
        self.changed.notify_all();
        loop {
            if let Some(verdict) = table.blocked.get(&id).copied().flatten() {
                table.blocked.remove(&id);
                return match verdict {
                    Verdict::Apply => Ok(()),
                    Verdict::Fail => Err(Errno::EIO),
                };
            }
            table = self.changed.wait(table).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Answers every blocked request with `EIO` (without applying it).
    pub(crate) fn fail_blocked(&self) {
        let mut table = lock(&self.table);
        for verdict in table.blocked.values_mut() {
            verdict.get_or_insert(Verdict::Fail);
        }
        self.changed.notify_all();
    }

    /// [`Self::fail_blocked`], and disarms the waiting trigger.
    pub(crate) fn shut_down(&self) {
        lock(&self.table).waiting = None;
        self.fail_blocked();
    }

    fn release(&self, id: u64) {
        let mut table = lock(&self.table);
        if table.waiting.as_ref().is_some_and(|waiting| waiting.id == id) {
            table.waiting = None;
        }
        if let Some(verdict) = table.blocked.get_mut(&id) {
            verdict.get_or_insert(Verdict::Apply);
        }
        self.changed.notify_all();
    }

    fn wait_fired(&self, id: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut table = lock(&self.table);
        loop {
            if table.fired.contains(&id) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            table = self.changed.wait_timeout(table, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    fn forget(&self, id: u64) {
        let mut table = lock(&self.table);
        if table.waiting.as_ref().is_some_and(|waiting| waiting.id == id) {
            table.waiting = None;
        }
        table.fired.remove(&id);
    }
}

/// An armed [`Trigger`], from [`crate::PowerCutFs::arm`].
///
/// Dropping it disarms a trigger that has not fired; a request it already
/// blocked stays blocked until [`crate::PowerCutFs::cut`] (or until the
/// `Mount` or the last `PowerCutFs` is dropped).
pub struct Armed {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: u64,
}

impl Armed {
    /// Blocks until the trigger fired (the matching request is then blocked,
    /// not yet applied); `false` if `timeout` passed first.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.shared.triggers.wait_fired(self.id, timeout)
    }

    /// Lets the blocked request go on and be applied normally; before the
    /// trigger fired, disarms it.
    pub fn release(&self) {
        self.shared.triggers.release(self.id);
    }
}

impl std::fmt::Debug for Armed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Armed").field("id", &self.id).finish()
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.shared.triggers.forget(self.id);
    }
}
