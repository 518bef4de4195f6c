//! `imsg-loadtest`: drive a deployment (or one it starts) and report.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use std::sync::Arc;

use clap::Parser;

/// mimalloc, as in the servers: the generator allocates a few small
/// buffers per message, and glibc's malloc was ~8% of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use imsg_loadtest::{
    report::{self, Report, Sweep},
    scenario::{self, RunOptions, Scenario},
    spawn::{Chaos, Deployment, SpawnPlan},
};

/// Open-loop, correctness-checking load generator for imsg.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Gateway addresses (host:port, comma-separated) of a running deployment.
    #[arg(long, value_delimiter = ',', required_unless_present = "spawn")]
    target: Vec<SocketAddr>,
    /// Start a local deployment from the binaries beside this one.
    #[arg(long)]
    spawn: bool,
    /// With --spawn: broker processes (0 = one gateway with an embedded broker).
    #[arg(long, default_value_t = 0)]
    brokers: usize,
    /// With --spawn: gateway processes.
    #[arg(long, default_value_t = 1)]
    gateways: usize,
    /// With --spawn: the servers' --fsync.
    #[arg(long, default_value = "always")]
    fsync: String,
    /// With --spawn: the servers' partition count.
    #[arg(long, default_value_t = 64)]
    partitions: u32,
    /// The deployment's JWT secret.
    #[arg(long, env = "IMSG_JWT_SECRET", default_value = "imsg-loadtest-secret-0123456789")]
    jwt_secret: String,
    #[arg(long, value_enum, default_value = "dm")]
    scenario: Scenario,
    /// Offered messages per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Run at each of these rates and report the highest meeting --slo-p99-ms.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<f64>,
    /// The p99 send-to-delivery objective of a sweep, in milliseconds.
    #[arg(long, default_value_t = 20.0)]
    slo_p99_ms: f64,
    /// Length of the send phase (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Simulated users (one device each).
    #[arg(long, default_value_t = 2000)]
    users: usize,
    /// gRPC connections the devices are multiplexed over.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Group size of the group scenario.
    #[arg(long, default_value_t = 50)]
    group_size: usize,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 64)]
    message_bytes: usize,
    /// Sends allowed in flight before new ones are shed (and counted).
    #[arg(long, default_value_t = 200_000)]
    max_in_flight: u64,
    /// How long to wait for outstanding deliveries after sending.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Messages the resume scenario has waiting for an offline device.
    #[arg(long, default_value_t = 10_000)]
    resume_backlog: usize,
    /// Streams the idle scenario holds.
    #[arg(long, default_value_t = 10_000)]
    idle_streams: usize,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write an HTML report with latency plots.
    #[arg(long)]
    html: Option<std::path::PathBuf>,
    /// With --spawn: SIGKILL one broker or gateway mid-run and restart it;
    /// the run must still lose, duplicate and reorder nothing.
    #[arg(long, value_enum, requires = "spawn")]
    chaos: Option<Chaos>,
    /// When chaos strikes, from the start of sending (default: a third of --duration).
    #[arg(long, value_parser = humantime::parse_duration)]
    chaos_after: Option<Duration>,
    /// How long the killed process stays down.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    chaos_downtime: Duration,
    /// Send every message as a unary `SendMessage` call instead of on the
    /// sending device's stream (the SDKs' fast path).
    #[arg(long)]
    unary_sends: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

/// One thread: the generator shares the machine with the servers, and on a
/// multi-threaded runtime most of its CPU went to waking its own worker
/// threads for each message (docs/benchmarks.md, issue 15: 25% less CPU per
/// message on one thread, which carries 10,000 msg/s at a third of a core).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let deployment = if args.spawn {
        let plan = SpawnPlan {
            brokers: args.brokers,
            gateways: args.gateways,
            fsync: args.fsync.clone(),
            partitions: args.partitions,
            secret: args.jwt_secret.clone(),
            extra_server_args: Vec::new(),
        };
        let deployment = Deployment::start(&plan).await.context("starting the deployment")?;
        let (gateways, brokers) = deployment.counts();
        eprintln!("spawned {gateways} gateway(s), {brokers} broker(s)");
        Some(deployment)
    } else {
        None
    };
    let targets = match &deployment {
        Some(d) => d.gateway_addrs(),
        None => args.target.clone(),
    };
    let options = RunOptions {
        scenario: args.scenario,
        rate: args.rate,
        duration: args.duration,
        users: args.users,
        connections: args.connections,
        group_size: args.group_size,
        message_bytes: args.message_bytes,
        max_in_flight: args.max_in_flight,
        drain: args.drain,
        idle_streams: args.idle_streams,
        resume_backlog: args.resume_backlog,
        secret: args.jwt_secret.clone(),
        progress: !args.quiet,
        unary_sends: args.unary_sends,
        sending: Some(Arc::new(tokio::sync::Notify::new())),
    };
    if args.chaos.is_some() && !args.sweep.is_empty() {
        anyhow::bail!("--chaos runs at one rate; drop --sweep");
    }
    let rates = if args.sweep.is_empty() { vec![args.rate] } else { args.sweep.clone() };
    let mut reports: Vec<Report> = Vec::new();
    for rate in rates {
        let options = RunOptions { rate, ..options.clone() };
        let report = match (args.chaos, &deployment) {
            (Some(chaos), Some(deployment)) => {
                // Timed from the start of sending, not of setting up.
                let after = args.chaos_after.unwrap_or(args.duration / 3);
                let sending = options.sending.clone().unwrap_or_default();
                let (report, chaos_note) = tokio::join!(scenario::run(&targets, &options, Some(deployment)), async {
                    sending.notified().await;
                    deployment.chaos(chaos, after, args.chaos_downtime).await
                });
                let mut report = report?;
                report.chaos = Some(chaos_note.context("chaos")?);
                report
            }
            _ => scenario::run(&targets, &options, deployment.as_ref()).await?,
        };
        println!("{}", report::summary(&report));
        reports.push(report);
    }
    let correct = reports.iter().all(Report::is_correct);
    if let Some(path) = &args.html {
        std::fs::write(path, report::html(&reports, &command))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let json = if args.sweep.is_empty() {
            serde_json::to_string_pretty(&reports[0])?
        } else {
            let best = reports
                .iter()
                .filter(|r| r.meets(args.slo_p99_ms))
                .map(|r| r.offered_rate)
                .fold(None, |a: Option<f64>, r| Some(a.map_or(r, |a| a.max(r))));
            serde_json::to_string_pretty(&Sweep {
                slo_p99_ms: args.slo_p99_ms,
                best_rate: best,
                runs: reports.clone(),
            })?
        };
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if !args.sweep.is_empty() {
        match reports.iter().filter(|r| r.meets(args.slo_p99_ms)).map(|r| r.offered_rate).reduce(f64::max) {
            Some(best) => println!("highest rate meeting p99 <= {} ms: {best:.0} msg/s", args.slo_p99_ms),
            None => println!("no rate met p99 <= {} ms", args.slo_p99_ms),
        }
    }
    drop(deployment);
    if !correct {
        eprintln!("FAILED: lost, duplicated or reordered messages");
        std::process::exit(1);
    }
    Ok(())
}
