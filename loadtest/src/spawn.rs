//! Starting a local deployment from the binaries built beside this one, and
//! sampling the servers' CPU time and memory from /proc.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// One spawned server process, with what it takes to start it again.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub name: &'static str,
    args: Vec<String>,
}

/// A deployment this tool started; stopped (SIGKILL) when dropped. Servers
/// sit behind locks so chaos can kill and restart them mid-run.
pub struct Deployment {
    pub gateways: Mutex<Vec<Server>>,
    pub brokers: Mutex<Vec<Server>>,
    secret: String,
    _data: tempfile::TempDir,
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!("{} not found beside {}; build the workspace first", name, me.display());
    }
    Ok(path)
}

async fn start(name: &'static str, args: Vec<String>, secret: &str) -> anyhow::Result<Server> {
    let mut child = Command::new(sibling(name)?)
        .args(&args)
        .env("IMSG_JWT_SECRET", secret)
        // Cluster nodes must derive conversation ids alike.
        .env("IMSG_ID_SECRET", format!("{secret}-conversation-ids"))
        .env("RUST_LOG", std::env::var("IMSG_SERVER_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = line.split("listening on ").nth(1) {
                return Ok::<_, anyhow::Error>(addr.trim().parse::<SocketAddr>()?);
            }
        }
        bail!("{name} exited before listening")
    })
    .await
    .with_context(|| format!("{name} did not start in time"))??;
    Ok(Server { child, addr, name, args })
}

/// A free loopback port (bound and released: brokers must know each
/// other's addresses before any of them starts).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// What to start.
pub struct SpawnPlan {
    pub brokers: usize,
    pub gateways: usize,
    pub fsync: String,
    pub partitions: u32,
    pub secret: String,
    pub extra_server_args: Vec<String>,
}

/// Which process chaos kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Chaos {
    /// SIGKILL one broker node mid-run, then restart it on the same data.
    KillBroker,
    /// SIGKILL one gateway mid-run (its devices reconnect through another),
    /// then restart it.
    KillGateway,
}

impl Deployment {
    pub async fn start(plan: &SpawnPlan) -> anyhow::Result<Self> {
        let data = tempfile::Builder::new().prefix("imsg-loadtest-").tempdir()?;
        let common = |dir: PathBuf| -> Vec<String> {
            let mut args = vec![
                "--data-dir".into(),
                dir.display().to_string(),
                "--fsync".into(),
                plan.fsync.clone(),
                "--partitions".into(),
                plan.partitions.to_string(),
            ];
            args.extend(plan.extra_server_args.iter().cloned());
            args
        };
        if plan.brokers == 0 {
            if plan.gateways != 1 {
                bail!("without brokers, exactly one gateway (with an embedded broker) is started");
            }
            let mut args = vec!["--embedded-broker".into(), "--listen".into(), "127.0.0.1:0".into()];
            args.extend(common(data.path().join("node")));
            let gateway = start("imsg-gateway", args, &plan.secret).await?;
            return Ok(Self {
                gateways: Mutex::new(vec![gateway]),
                brokers: Mutex::new(Vec::new()),
                secret: plan.secret.clone(),
                _data: data,
            });
        }
        let ports = (0..plan.brokers).map(|_| free_port()).collect::<anyhow::Result<Vec<_>>>()?;
        let nodes: Vec<String> = ports.iter().map(|port| format!("http://127.0.0.1:{port}")).collect();
        let mut brokers = Vec::new();
        for (index, port) in ports.iter().enumerate() {
            let mut args = vec!["--listen".into(), format!("127.0.0.1:{port}")];
            if plan.brokers > 1 {
                args.extend(["--nodes".into(), nodes.join(","), "--node-index".into(), index.to_string()]);
            }
            args.extend(common(data.path().join(format!("broker-{index}"))));
            brokers.push(start("imsg-broker", args, &plan.secret).await?);
        }
        if plan.brokers > 1 {
            // Nodes poll each other's claims every second; let the maps fill.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let mut gateways = Vec::new();
        for _ in 0..plan.gateways.max(1) {
            // The partition count and limits come from the brokers.
            let args =
                vec!["--broker".into(), nodes.join(","), "--listen".into(), format!("127.0.0.1:{}", free_port()?)];
            gateways.push(start("imsg-gateway", args, &plan.secret).await?);
        }
        Ok(Self {
            gateways: Mutex::new(gateways),
            brokers: Mutex::new(brokers),
            secret: plan.secret.clone(),
            _data: data,
        })
    }

    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        lock(&self.gateways).iter().map(|g| g.addr).collect()
    }

    pub fn counts(&self) -> (usize, usize) {
        (lock(&self.gateways).len(), lock(&self.brokers).len())
    }

    /// Kills one process of the chosen kind with SIGKILL after `after`,
    /// keeps it down for `downtime`, and restarts it with the same flags
    /// (and data directory). Returns what it did, for the report.
    pub async fn chaos(&self, chaos: Chaos, after: Duration, downtime: Duration) -> anyhow::Result<String> {
        tokio::time::sleep(after).await;
        let servers = match chaos {
            Chaos::KillBroker => &self.brokers,
            Chaos::KillGateway => &self.gateways,
        };
        let (name, args, pid) = {
            let mut servers = lock(servers);
            // The last one: with several gateways, the first stays up for
            // devices to move to; any broker holds partitions.
            let victim = servers.last_mut().context("nothing to kill")?;
            let pid = victim.child.id();
            victim.child.start_kill().context("sending SIGKILL")?;
            (victim.name, victim.args.clone(), pid)
        };
        eprintln!("\nchaos: SIGKILL {name} (pid {pid:?}); restarting in {downtime:?}");
        tokio::time::sleep(downtime).await;
        let restarted = start(name, args, &self.secret).await?;
        eprintln!("chaos: {name} restarted (pid {:?})", restarted.child.id());
        let note = format!("SIGKILL {name} pid {pid:?} at {after:?}, restarted after {downtime:?}");
        if let Some(slot) = lock(servers).last_mut() {
            *slot = restarted;
        }
        Ok(note)
    }

    fn pids(&self) -> Vec<u32> {
        let gateways = lock(&self.gateways);
        let brokers = lock(&self.brokers);
        gateways.iter().chain(brokers.iter()).filter_map(|s| s.child.id()).collect()
    }

    /// CPU seconds (user + system) the servers used so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.pids().into_iter().filter_map(cpu_seconds).sum()
    }

    /// Sum over servers of each one's peak resident memory.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.pids().into_iter().filter_map(|pid| status_kib(pid, "VmHWM:")).sum::<u64>() * 1024
    }

    /// Sum over servers of current resident memory.
    pub fn rss_bytes(&self) -> u64 {
        self.pids().into_iter().filter_map(|pid| status_kib(pid, "VmRSS:")).sum::<u64>() * 1024
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn clock_ticks_per_second() -> f64 {
    #[allow(unsafe_code)]
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU seconds (user + system) process `pid` has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_second())
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until a condition holds or the deadline passes.
pub async fn wait_until(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}
