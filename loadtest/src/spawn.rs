//! Starting a local deployment from the binaries built beside this one, and
//! sampling the servers' CPU time and memory from /proc.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// One spawned server process.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub name: &'static str,
}

/// A deployment this tool started; stopped (SIGKILL) when dropped.
pub struct Deployment {
    pub gateways: Vec<Server>,
    pub brokers: Vec<Server>,
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
    Ok(Server { child, addr, name })
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
        match (plan.brokers, plan.gateways) {
            (0, gateways) => {
                if gateways != 1 {
                    bail!("without brokers, exactly one gateway (with an embedded broker) is started");
                }
                let mut args = vec!["--embedded-broker".into(), "--listen".into(), "127.0.0.1:0".into()];
                args.extend(common(data.path().join("node")));
                let gateway = start("imsg-gateway", args, &plan.secret).await?;
                Ok(Self { gateways: vec![gateway], brokers: Vec::new(), _data: data })
            }
            (1, gateways) => {
                let mut args = vec!["--listen".into(), "127.0.0.1:0".into()];
                args.extend(common(data.path().join("broker-0")));
                let broker = start("imsg-broker", args, &plan.secret).await?;
                let mut started = Vec::new();
                for _ in 0..gateways.max(1) {
                    let args = vec![
                        "--broker".into(),
                        format!("http://{}", broker.addr),
                        "--listen".into(),
                        "127.0.0.1:0".into(),
                    ];
                    started.push(start("imsg-gateway", args, &plan.secret).await?);
                }
                Ok(Self { gateways: started, brokers: vec![broker], _data: data })
            }
            (n, _) => bail!("--brokers {n}: more than one broker needs the cluster support, which is not built yet"),
        }
    }

    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.gateways.iter().map(|g| g.addr).collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.gateways.iter().chain(&self.brokers).filter_map(|s| s.child.id()).collect()
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

fn clock_ticks_per_second() -> f64 {
    #[allow(unsafe_code)]
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn cpu_seconds(pid: u32) -> Option<f64> {
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
