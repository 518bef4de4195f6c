//! Invariants 1, 2 and 3 under power loss: the real server runs on a
//! filesystem that forgets every write not made durable by fsync
//! (`imsg-powercut`, a FUSE filesystem with an ext4-like ordered-metadata
//! model). Clients record each acknowledgement the moment it arrives; the
//! server is SIGKILLed and the power cut at a chosen moment (at random,
//! right after the first acks, inside a checkpoint, during recovery); the
//! server restarts on what survived and every acknowledged message must be
//! in history at its seq, exactly once, gap-free, and a retried client id
//! must return its original seq, and in its sender's update log (replayed
//! to the sender's device; the log's entries are fanned out before the
//! message is durable and must never survive without it, or be lost while
//! it survives). Acknowledged group creations must exist.
//!
//! Workloads produce the rows that once broke sled under a cut: 16 KiB
//! texts, and 250-member groups with 64-character ids in 2 partitions.
//!
//! The same harness must fail when durability is relaxed: under
//! `--fsync interval:2000` it reports loss.
//!
//! Cycles: `IMSG_POWERCUT_CYCLES` (default 56), seed: `IMSG_POWERCUT_SEED`.
//! Skips, saying why, where FUSE cannot be mounted. Results are written up
//! in docs/durability.md.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use imsg_powercut::{PowerCutFs, Trigger, fuse_available};
use imsg_proto::v1::{
    CreateConversationRequest, GroupConversationSpec, SendMessageRequest, TextContent, create_conversation_request,
    event, send_message_request,
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{
    harness::{Client, PATIENCE, Process, binary, server_command},
    watchdog::{Phase, Watchdog},
};

/// A cycle takes seconds; one that takes this long is stuck ([`Watchdog`]).
const CYCLE_LIMIT: Duration = Duration::from_secs(150);

/// What clients were told, the moment they were told it.
#[derive(Default)]
struct Ledger {
    /// conversation -> client id -> what was acknowledged
    acked: HashMap<String, BTreeMap<String, Acked>>,
    /// Groups whose creation was acknowledged.
    groups: Vec<String>,
    /// Acks recorded in the current cycle.
    acks_this_cycle: usize,
}

#[derive(Debug, Clone, Copy)]
struct Acked {
    seq: u64,
    text_len: usize,
    /// Index into SENDERS.
    sender: usize,
}

/// What a check after a restart found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Findings {
    acked: usize,
    lost: usize,
    duplicated: usize,
    gaps: usize,
    retry_mismatches: usize,
    missing_groups: usize,
    /// Acknowledged messages their sender's update log does not replay.
    unlogged: usize,
    /// sled blob files on the filesystem (never power-safe).
    blob_files: usize,
}

impl Findings {
    fn clean(&self) -> bool {
        self.lost
            + self.duplicated
            + self.gaps
            + self.retry_mismatches
            + self.missing_groups
            + self.unlogged
            + self.blob_files
            == 0
    }
}

#[derive(Debug, Clone, Copy)]
enum Workload {
    /// 1:1 conversations, texts of 12-16 KiB.
    LargeTexts,
    /// 250-member groups (64-character ids), new ones created every cycle.
    BigGroups,
    /// Many small 1:1 and group messages.
    Mixed,
}

#[derive(Debug, Clone, Copy)]
enum CutAt {
    /// A random moment while clients send.
    Random,
    /// As soon as the first few acks of the cycle arrived.
    FirstAcks,
    /// Inside a checkpoint: at sled's log fsync (everything flushed, not
    /// yet durable) or in the middle of the flush itself.
    Checkpoint,
    /// At a random moment, then again while the restarted node recovers.
    TwiceDuringRecovery,
}

const SENDERS: [&str; 3] = ["alice", "bob", "carol"];
const PARTITIONS: &str = "2";

struct Rig {
    fs: PowerCutFs,
    mountpoint: tempfile::TempDir,
    mount: Option<imsg_powercut::Mount>,
    fsync: &'static str,
    rng: StdRng,
    ledger: Arc<Mutex<Ledger>>,
    group_count: usize,
    /// Each sender's update-log cursor as of the last check, and the
    /// acknowledged messages already found in its log.
    log_cursors: [u64; SENDERS.len()],
    logged: HashSet<(String, u64)>,
    /// What the cycle is doing, for the watchdog's report.
    phase: Phase,
}

impl Rig {
    fn new(fsync: &'static str, seed: u64) -> Self {
        let fs = PowerCutFs::new();
        let mountpoint = tempfile::tempdir().unwrap();
        let mount = Some(fs.mount(mountpoint.path()).expect("mounting the power-cut filesystem"));
        Self {
            fs,
            mountpoint,
            mount,
            fsync,
            rng: StdRng::seed_from_u64(seed),
            ledger: Arc::default(),
            group_count: 0,
            log_cursors: [0; SENDERS.len()],
            logged: HashSet::new(),
            phase: Phase::default(),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.mountpoint.path().join("imsg-data")
    }

    fn args(&self) -> Vec<String> {
        [
            "--embedded-broker",
            "--data-dir",
            &self.data_dir().display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--partitions",
            PARTITIONS,
            "--fsync",
            self.fsync,
            "--cache-mb",
            "16",
            // Frequent checkpoints: more of them to cut inside.
            "--checkpoint-interval-ms",
            "150",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    async fn start(&self) -> Process {
        self.phase.set("starting the node");
        let node = Process::spawn(&server_binary(), &self.args()).await;
        self.phase.set_node(node.child.id());
        node
    }

    /// Cuts the power under a killed node: the kill first (a request the
    /// filesystem holds would keep it from dying), then the cut, then the
    /// wait; then a fresh mount, so the kernel holds nothing from before.
    async fn kill_and_cut(&mut self, mut child: tokio::process::Child) {
        self.phase.set("killing the node and cutting the power");
        let _ = child.start_kill();
        self.fs.cut();
        let _ = tokio::time::timeout(PATIENCE, child.wait()).await.expect("the killed node did not die");
        // Reaped: its pid may be anyone's now, and the watchdog kills by pid.
        self.phase.set_node(None);
        drop(self.mount.take());
        self.mount = Some(self.fs.mount(self.mountpoint.path()).expect("remounting after the cut"));
    }

    /// [`Self::cycle`] under a [`Watchdog`].
    async fn guarded_cycle(&mut self, cycle: usize, workload: Workload, cut_at: CutAt) -> Findings {
        let step = format!("power-cut cycle {cycle} ({workload:?}, cut {cut_at:?})");
        let _watchdog = Watchdog::arm(step, CYCLE_LIMIT, self.phase.clone());
        self.cycle(cycle, workload, cut_at).await
    }

    /// One cycle: start on what survived, load, cut at `cut_at`, restart,
    /// check everything acknowledged so far.
    async fn cycle(&mut self, cycle: usize, workload: Workload, cut_at: CutAt) -> Findings {
        let node = self.start().await;
        let addr = node.addr;
        self.phase.set("creating the conversations to send to");
        let targets = self.prepare(addr, cycle, workload).await;
        self.ledger.lock().unwrap().acks_this_cycle = 0;
        self.phase.set("sending, until the cut");
        let senders = self.spawn_senders(addr, cycle, workload, targets);
        match cut_at {
            CutAt::Random | CutAt::TwiceDuringRecovery => {
                let after = self.rng.random_range(50..1200);
                tokio::time::sleep(Duration::from_millis(after)).await;
            }
            CutAt::FirstAcks => {
                let wanted = self.rng.random_range(1..=5);
                self.wait_for_acks(wanted).await;
            }
            CutAt::Checkpoint => {
                // A checkpoint with acknowledged messages in it.
                self.wait_for_acks(20).await;
                let trigger = if self.rng.random_bool(0.5) {
                    Trigger::fsync_of("db")
                } else {
                    Trigger::write_to("db").after(self.rng.random_range(0..4))
                };
                let armed = self.fs.arm(trigger);
                self.phase.set("sending, until a checkpoint's write or sync");
                let fired = tokio::task::spawn_blocking(move || {
                    let fired = armed.wait(Duration::from_secs(20));
                    (fired, armed)
                })
                .await
                .unwrap();
                assert!(fired.0, "no checkpoint within 20 s");
                drop(fired.1);
            }
        }
        self.kill_and_cut(node.child).await;
        self.phase.set("waiting for the senders to see the node gone");
        for sender in senders {
            let _ = sender.await;
        }
        if let CutAt::TwiceDuringRecovery = cut_at {
            self.cut_during_recovery().await;
        }
        let node = self.start().await;
        let mut findings = self.check(node.addr).await;
        self.phase.set("stopping the checked node");
        node.sigkill().await;
        self.phase.set_node(None);
        findings.blob_files =
            self.fs.files().iter().filter(|(path, _)| path.components().any(|c| c.as_os_str() == "blobs")).count();
        findings
    }

    async fn wait_for_acks(&self, wanted: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.ledger.lock().unwrap().acks_this_cycle < wanted {
            assert!(tokio::time::Instant::now() < deadline, "{wanted} acks did not arrive");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Starts the node with a trigger armed on its recovery's sled writes
    /// or syncs, and cuts there.
    async fn cut_during_recovery(&mut self) {
        let trigger = if self.rng.random_bool(0.5) {
            Trigger::fsync_of("db").after(self.rng.random_range(0..3))
        } else {
            Trigger::write_to("db").after(self.rng.random_range(0..8))
        };
        let armed = self.fs.arm(trigger);
        self.phase.set("starting the node, to cut during its recovery");
        let mut child = server_command(&server_binary(), &self.args()).spawn().unwrap();
        self.phase.set_node(child.id());
        let stdout = child.stdout.take().unwrap();
        let fired = tokio::task::spawn_blocking(move || armed.wait(Duration::from_secs(5))).await.unwrap();
        if !fired {
            // Recovery wrote less than the trigger waited for: the node is
            // up; cut it at a random early moment instead.
            let mut lines = BufReader::new(stdout).lines();
            let _ = tokio::time::timeout(PATIENCE, lines.next_line()).await;
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(0..100))).await;
        }
        self.kill_and_cut(child).await;
    }

    /// Creates what the workload sends to; returns (sender, conversation).
    async fn prepare(&mut self, addr: std::net::SocketAddr, cycle: usize, workload: Workload) -> Vec<(usize, String)> {
        let clients = connect_all(addr).await;
        let mut targets = Vec::new();
        match workload {
            Workload::LargeTexts | Workload::Mixed => {
                targets.push((0, clients[0].direct_with(SENDERS[1]).await));
                targets.push((1, clients[1].direct_with(SENDERS[2]).await));
                targets.push((2, clients[2].direct_with(SENDERS[0]).await));
                if let Workload::Mixed = workload
                    && let Some(group) = self.known_group()
                {
                    targets.push((0, group.clone()));
                    targets.push((1, group));
                }
            }
            Workload::BigGroups => {
                // Two new 250-member groups every cycle; creation is acked
                // like a send, and must survive like one.
                for n in 0..2 {
                    let request_id = format!("create-{cycle}-{n}");
                    let members: Vec<String> = SENDERS[1..]
                        .iter()
                        .map(|s| s.to_string())
                        .chain((0..247).map(|m| format!("member-{cycle:04}-{n}-{m:03}-{}", "x".repeat(40))))
                        .collect();
                    let request = CreateConversationRequest {
                        request_id,
                        kind: Some(create_conversation_request::Kind::Group(GroupConversationSpec {
                            title: format!("group {cycle}-{n}"),
                            member_ids: members,
                        })),
                    };
                    let created = clients[0].api.clone().create_conversation(request).await.unwrap().into_inner();
                    let id = created.conversation.unwrap().conversation_id;
                    // The senders know the creator; the others' invitations
                    // stay message requests.
                    for sender in &SENDERS[1..] {
                        clients[0].accept_as(sender, &id).await;
                    }
                    self.ledger.lock().unwrap().groups.push(id.clone());
                    self.group_count += 1;
                }
                let groups = self.ledger.lock().unwrap().groups.clone();
                for (sender, group) in groups.iter().rev().take(3).enumerate() {
                    targets.push((sender, group.clone()));
                }
            }
        }
        targets
    }

    fn known_group(&mut self) -> Option<String> {
        self.ledger.lock().unwrap().groups.choose(&mut self.rng).cloned()
    }

    fn spawn_senders(
        &mut self,
        addr: std::net::SocketAddr,
        cycle: usize,
        workload: Workload,
        targets: Vec<(usize, String)>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut senders = Vec::new();
        for (worker, (sender, conversation)) in targets.into_iter().enumerate() {
            let ledger = self.ledger.clone();
            let seed = self.rng.random::<u64>();
            senders.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let client = Client::connect(addr, SENDERS[sender], "phone").await;
                for n in 0..100_000 {
                    let id = format!("c{cycle}-w{worker}-{n}");
                    let len = match workload {
                        Workload::LargeTexts => rng.random_range(12 * 1024..=16 * 1024),
                        Workload::BigGroups => rng.random_range(100..4096),
                        Workload::Mixed => rng.random_range(10..400),
                    };
                    let text = text_for(&id, len);
                    let request = SendMessageRequest {
                        conversation_id: conversation.clone(),
                        client_message_id: id.clone(),
                        reply_to_seq: 0,
                        content: Some(send_message_request::Content::Text(TextContent { text })),
                    };
                    match client.api.clone().send_message(request).await {
                        Ok(ack) => {
                            let mut ledger = ledger.lock().unwrap();
                            let acked = Acked { seq: ack.get_ref().seq, text_len: len, sender };
                            ledger.acked.entry(conversation.clone()).or_default().insert(id, acked);
                            ledger.acks_this_cycle += 1;
                        }
                        Err(_) => return, // the node is gone
                    }
                }
            }));
        }
        senders
    }

    /// Everything acknowledged so far, against what the restarted node has.
    async fn check(&mut self, addr: std::net::SocketAddr) -> Findings {
        self.phase.set("checking history");
        let clients = connect_all(addr).await;
        let (acked, groups) = {
            let ledger = self.ledger.lock().unwrap();
            (ledger.acked.clone(), ledger.groups.clone())
        };
        let mut findings = Findings::default();
        for group in &groups {
            if clients[0].try_history(group).await.is_err() {
                findings.missing_groups += 1;
            }
        }
        for (conversation, messages) in &acked {
            findings.acked += messages.len();
            let Some(first) = messages.values().next() else { continue };
            let reader = &clients[first.sender];
            let history = match reader.try_history(conversation).await {
                Ok(history) => history,
                Err(_) => {
                    findings.lost += messages.len();
                    continue;
                }
            };
            for (n, message) in history.iter().enumerate() {
                if message.seq != n as u64 + 1 {
                    findings.gaps += 1;
                }
            }
            let mut by_client_id: HashMap<&str, Vec<&imsg_proto::v1::Message>> = HashMap::new();
            for message in &history {
                by_client_id.entry(message.client_message_id.as_str()).or_default().push(message);
            }
            findings.duplicated += by_client_id.values().filter(|copies| copies.len() > 1).count();
            for (id, acked) in messages {
                let intact = by_client_id.get(id.as_str()).and_then(|copies| copies.first()).is_some_and(|stored| {
                    stored.seq == acked.seq && text_of(stored).is_some_and(|text| *text == text_for(id, acked.text_len))
                });
                if !intact {
                    findings.lost += 1;
                }
            }
            // Retries of recent acked ids (inside the dedup window of 1,024
            // per conversation) must return the original seq.
            let newest_seq = history.last().map_or(0, |m| m.seq);
            let recent: Vec<(&String, &Acked)> =
                messages.iter().filter(|(_, acked)| acked.seq + 500 > newest_seq).collect();
            for _ in 0..3 {
                let Some((id, acked)) = recent.choose(&mut self.rng) else { break };
                let retried = clients[acked.sender]
                    .api
                    .clone()
                    .send_message(SendMessageRequest {
                        conversation_id: conversation.clone(),
                        client_message_id: id.to_string(),
                        reply_to_seq: 0,
                        content: Some(send_message_request::Content::Text(TextContent {
                            text: text_for(id, acked.text_len),
                        })),
                    })
                    .await;
                if retried.map(|ack| ack.into_inner().seq).ok() != Some(acked.seq) {
                    findings.retry_mismatches += 1;
                }
            }
        }
        findings.unlogged = self.check_update_logs(&clients, &acked).await;
        findings
    }

    /// Acknowledged messages missing from their sender's update log: each
    /// sender's device replays its log from where the last check stopped
    /// (retried for a few seconds: a restart re-sends the outbox batches a
    /// cut interrupted, asynchronously).
    async fn check_update_logs(
        &mut self,
        clients: &[Client],
        acked: &HashMap<String, BTreeMap<String, Acked>>,
    ) -> usize {
        self.phase.set("checking the senders' update logs");
        let mut unlogged = 0;
        for (index, client) in clients.iter().enumerate() {
            let mut missing: HashSet<(String, u64)> = acked
                .iter()
                .flat_map(|(conversation, messages)| {
                    messages.values().filter(|a| a.sender == index).map(|a| (conversation.clone(), a.seq))
                })
                .filter(|key| !self.logged.contains(key))
                .collect();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let mut cursor = self.log_cursors[index];
            loop {
                let mut device = client.open(self.log_cursors[index]).await;
                for kind in device.ready().await {
                    if let event::Kind::Message(message) = kind {
                        missing.remove(&(message.conversation_id.clone(), message.seq));
                    }
                }
                cursor = cursor.max(device.cursor);
                if missing.is_empty() || tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            unlogged += missing.len();
            self.log_cursors[index] = cursor;
        }
        for (conversation, messages) in acked {
            self.logged.extend(messages.values().map(|a| (conversation.clone(), a.seq)));
        }
        unlogged
    }
}

fn text_for(id: &str, len: usize) -> String {
    let mut text = format!("{id}:");
    while text.len() < len {
        text.push(char::from(b'a' + (text.len() % 26) as u8));
    }
    text.truncate(len.max(id.len() + 1));
    text
}

fn text_of(message: &imsg_proto::v1::Message) -> Option<&String> {
    match &message.content {
        Some(imsg_proto::v1::message::Content::Text(text)) => Some(&text.text),
        _ => None,
    }
}

async fn connect_all(addr: std::net::SocketAddr) -> Vec<Client> {
    let mut clients = Vec::new();
    for user in SENDERS {
        clients.push(Client::connect(addr, user, "phone").await);
    }
    clients
}

/// The server under test: this build's `imsg-gateway`, or another build
/// named by `IMSG_POWERCUT_SERVER` (to show what the harness finds in an
/// older storage design, docs/durability.md).
fn server_binary() -> PathBuf {
    std::env::var_os("IMSG_POWERCUT_SERVER").map(PathBuf::from).unwrap_or_else(|| binary("imsg-gateway"))
}

fn seed() -> u64 {
    std::env::var("IMSG_POWERCUT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random)
}

fn cycles() -> usize {
    std::env::var("IMSG_POWERCUT_CYCLES").ok().and_then(|s| s.parse().ok()).unwrap_or(56)
}

fn skip_without_fuse() -> bool {
    match fuse_available() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("SKIPPED: the power-cut tests need FUSE: {why}");
            true
        }
    }
}

/// A line straight to stderr, as the cycles go: libtest prints a test's
/// own output only when it ends, and a run of minutes should show that it
/// moves (and where it stopped, if it does).
fn progress(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn plan(cycle: usize) -> (Workload, CutAt) {
    let workload = [Workload::LargeTexts, Workload::BigGroups, Workload::Mixed][cycle % 3];
    let cut_at = [CutAt::Random, CutAt::FirstAcks, CutAt::Checkpoint, CutAt::TwiceDuringRecovery][(cycle / 3) % 4];
    (workload, cut_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_power_cuts_at_any_moment() {
    if skip_without_fuse() {
        return;
    }
    let seed = seed();
    let cycles = cycles();
    progress(&format!("power-cut cycles: {cycles}, seed {seed} (IMSG_POWERCUT_SEED to replay)"));
    let mut rig = Rig::new("always", seed);
    let mut total = Findings::default();
    for cycle in 0..cycles {
        let (workload, cut_at) = plan(cycle);
        let started = std::time::Instant::now();
        let findings = rig.guarded_cycle(cycle, workload, cut_at).await;
        progress(&format!(
            "power-cut cycle {cycle:>3}/{cycles} {workload:?}/{cut_at:?} in {:.1} s: {findings:?}",
            started.elapsed().as_secs_f64()
        ));
        assert!(findings.clean(), "cycle {cycle} ({workload:?}, cut {cut_at:?}, seed {seed}): {findings:?}");
        total = findings;
    }
    let stats = rig.fs.stats();
    eprintln!(
        "power-cut summary: {cycles} cycles, {} acked messages and {} groups checked after the last, 0 lost; \
         filesystem: {} cuts, {} fsyncs, {} MiB written, {} MiB discarded by cuts",
        total.acked,
        rig.group_count,
        stats.cuts,
        stats.fsyncs,
        stats.bytes_written >> 20,
        stats.bytes_discarded >> 20
    );
    assert!(total.acked > 1000, "the cycles acknowledged too little to prove anything: {total:?}");
    assert!(stats.bytes_discarded > 0, "no cut ever discarded anything: the cuts proved nothing");
}

/// The harness can fail: with syncs relaxed to every 2 s, a cut right
/// after acknowledgements loses some of them, and the check reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_fsync_loses_acknowledged_messages_and_the_harness_reports_it() {
    if skip_without_fuse() {
        return;
    }
    let seed = seed();
    let mut rig = Rig::new("interval:2000", seed);
    let mut lost = 0;
    for cycle in 0..4 {
        let findings = rig.guarded_cycle(cycle, Workload::Mixed, CutAt::Random).await;
        eprintln!("relaxed cycle {cycle}: {findings:?}");
        lost += findings.lost;
        if lost > 0 {
            break;
        }
    }
    assert!(lost > 0, "relaxed fsync lost nothing over 4 cuts: the harness cannot see loss (seed {seed})");
}
