//! Reports: a readable summary, JSON with stable field names, and an HTML
//! page with latency-over-time and percentile plots (inline SVG, no
//! scripts, no network).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{metrics::Percentiles, scenario::Scenario};

/// Latency percentiles of one second of the send phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    pub t: u64,
    pub ack: Percentiles,
    pub deliver: Percentiles,
    pub acked: u64,
}

/// One point of a percentile curve: (percentile, milliseconds).
pub type CurvePoint = (f64, f64);

/// The result of one run. Field names are the JSON contract.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub offered_rate: f64,
    pub duration_s: f64,
    pub ingest_rate: f64,
    pub delivery_rate: f64,
    pub ack_ms: Percentiles,
    pub deliver_ms: Percentiles,
    pub sent: u64,
    pub acked: u64,
    /// Acknowledged changes to messages (reactions, edits, unsends).
    pub changes: u64,
    /// Acknowledged messages that carried a photo (uploaded first).
    pub photos: u64,
    pub delivered: u64,
    pub expected_deliveries: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub send_errors: u64,
    pub shed: u64,
    pub stream_errors: u64,
    pub reconnects: u64,
    /// What `--chaos` did during the run, if anything.
    pub chaos: Option<String>,
    pub connections: u64,
    pub users: u64,
    pub conversations: u64,
    pub server_cpu_s_per_1k: Option<f64>,
    /// Server CPU per acknowledged message, in microseconds.
    pub server_cpu_us_per_message: Option<f64>,
    /// What the generator cost, and whether it was the limit.
    pub generator: Option<crate::generator::Usage>,
    /// Sends went as unary calls (`--unary-sends`), not on the streams.
    pub unary_sends: bool,
    pub server_peak_rss_bytes: Option<u64>,
    pub idle_streams: Option<u64>,
    pub server_bytes_per_stream: Option<f64>,
    /// Server cores in use while the idle streams were held.
    pub server_idle_cores: Option<f64>,
    /// The resume scenario's measurement.
    pub resume: Option<ResumeResult>,
    pub timeline: Vec<Second>,
    pub ack_histogram: Vec<CurvePoint>,
    pub deliver_histogram: Vec<CurvePoint>,
}

impl Report {
    /// Correct: nothing lost, duplicated or reordered, no send failed.
    pub fn is_correct(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.reordered == 0
    }

    /// Meets a p99 send-to-delivery objective with every send answered.
    pub fn meets(&self, slo_p99_ms: f64) -> bool {
        self.is_correct() && self.send_errors == 0 && self.shed == 0 && self.deliver_ms.p99 <= slo_p99_ms
    }
}

/// A backlog replayed to a device that was offline.
#[derive(Debug, Clone, Serialize)]
pub struct ResumeResult {
    pub backlog: u64,
    /// From `hello` to `Ready`.
    pub replay_ms: f64,
    /// Server CPU spent meanwhile.
    pub server_cpu_ms: Option<f64>,
}

/// The sweep's result: every run, and the best rate meeting the objective.
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    pub slo_p99_ms: f64,
    pub best_rate: Option<f64>,
    pub runs: Vec<Report>,
}

/// Latency at percentiles from 0 to 99.999, for plotting.
pub fn quantile_curve(h: &Histogram<u64>) -> Vec<CurvePoint> {
    if h.is_empty() {
        return Vec::new();
    }
    [0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999]
        .iter()
        .map(|p| (*p, h.value_at_quantile(p / 100.0) as f64 / 1000.0))
        .collect()
}

fn bytes(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

/// The summary a person reads at the end of a run.
pub fn summary(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "scenario {:?}, offered {:.0} msg/s for {:.1} s",
        report.scenario, report.offered_rate, report.duration_s
    );
    if let Some(streams) = report.idle_streams {
        let _ = writeln!(s, "  idle streams held       {streams}");
        if let Some(per) = report.server_bytes_per_stream {
            let _ = writeln!(s, "  server memory / stream  {:.0} bytes ({:.2} KiB)", per, per / 1024.0);
        }
        if let Some(cores) = report.server_idle_cores {
            let _ = writeln!(s, "  server CPU while idle   {cores:.4} cores");
        }
        if let Some(peak) = report.server_peak_rss_bytes {
            let _ = writeln!(s, "  server peak RSS         {}", bytes(peak));
        }
        return s;
    }
    if let Some(resume) = &report.resume {
        let _ = writeln!(
            s,
            "  resume   {} missed messages replayed to one device in {:.1} ms ({} delivered){}",
            resume.backlog,
            resume.replay_ms,
            report.delivered,
            resume.server_cpu_ms.map(|ms| format!("; server CPU {ms:.0} ms")).unwrap_or_default(),
        );
        let _ = writeln!(
            s,
            "  correctness  lost {}  duplicates {}  reordered {}",
            report.lost, report.duplicates, report.reordered
        );
        return s;
    }
    let _ = writeln!(
        s,
        "  ingested   {:>10.0} msg/s   ({} acked of {} sent, {} with photos, {} changes to messages)",
        report.ingest_rate, report.acked, report.sent, report.photos, report.changes
    );
    let _ = writeln!(
        s,
        "  delivered  {:>10.0} msg/s   ({} of {} expected)",
        report.delivery_rate, report.delivered, report.expected_deliveries
    );
    let _ = writeln!(s, "  latency (ms)        p50      p90      p99    p99.9      max");
    for (name, p) in [("send->ack", &report.ack_ms), ("send->delivery", &report.deliver_ms)] {
        let _ = writeln!(s, "  {name:<15} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}", p.p50, p.p90, p.p99, p.p999, p.max);
    }
    let _ = writeln!(
        s,
        "  correctness  lost {}  duplicates {}  reordered {}   (send errors {}, shed {}, stream errors {}, reconnects {})",
        report.lost,
        report.duplicates,
        report.reordered,
        report.send_errors,
        report.shed,
        report.stream_errors,
        report.reconnects
    );
    let _ = writeln!(
        s,
        "  load  {} users, {} conversations, {} connections",
        report.users, report.conversations, report.connections
    );
    if let (Some(cpu), Some(per_message)) = (report.server_cpu_s_per_1k, report.server_cpu_us_per_message) {
        let _ = writeln!(s, "  server CPU  {per_message:.0} us per message, {cpu:.3} s per 1,000 deliveries");
    }
    if let Some(generator) = &report.generator {
        let _ = writeln!(
            s,
            "  generator CPU  {:.0} us per message, {:.2} of {} cores; sends left late by {:.2} ms (p99){}",
            generator.cpu_us_per_message,
            generator.cores_used,
            generator.machine_cores,
            generator.schedule_lag_p99_ms,
            if report.unary_sends { "; unary sends" } else { "" },
        );
        if let Some(why) = &generator.saturated {
            let _ = writeln!(s, "  WARNING: the generator, not the server, may have set the limit: {why}");
        }
        if let Some(why) = &generator.machine_saturated {
            let _ = writeln!(s, "  note: {why}");
        }
    }
    if let Some(peak) = report.server_peak_rss_bytes {
        let _ = writeln!(s, "  server peak RSS  {}", bytes(peak));
    }
    s
}

// ---- HTML ----

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 300.0;
const MARGIN: f64 = 50.0;

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// A line chart as inline SVG. `log_x` maps x as percentiles do
/// (distance to 100%, on a log scale).
fn chart(title: &str, x_label: &str, series: &[Series<'_>], percentile_x: bool) -> String {
    let map_x = |x: f64| if percentile_x { -((100.0 - x).max(0.001) / 100.0).log10() } else { x };
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().map(|(x, y)| (map_x(*x), *y))).collect();
    let (x_max, y_max) = all.iter().fold((1e-9f64, 1e-9f64), |(a, b), (x, y)| (a.max(*x), b.max(*y)));
    let x_min = all.iter().map(|(x, _)| *x).fold(f64::INFINITY, f64::min).min(0.0);
    let sx = |x: f64| MARGIN + (map_x(x) - x_min) / (x_max - x_min).max(1e-9) * (WIDTH - 2.0 * MARGIN);
    let sy = |y: f64| HEIGHT - MARGIN - y / (y_max * 1.1) * (HEIGHT - 2.0 * MARGIN);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">
<text x="{}" y="18" text-anchor="middle" font-size="14">{title}</text>
<line x1="{MARGIN}" y1="{b}" x2="{r}" y2="{b}" stroke="#444"/><line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{b}" stroke="#444"/>
<text x="{}" y="{}" text-anchor="middle">{x_label}</text><text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">ms</text>
"##,
        WIDTH / 2.0,
        WIDTH / 2.0,
        HEIGHT - 12.0,
        HEIGHT / 2.0,
        HEIGHT / 2.0,
        b = HEIGHT - MARGIN,
        r = WIDTH - MARGIN,
    );
    for i in 0..=4 {
        let y = y_max * 1.1 * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{MARGIN}" y1="{py}" x2="{r}" y2="{py}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{y:.1}</text>"##,
            MARGIN - 4.0,
            sy(y) + 4.0,
            py = sy(y),
            r = WIDTH - MARGIN,
        );
    }
    let ticks: Vec<f64> = if percentile_x {
        vec![0.0, 90.0, 99.0, 99.9, 99.99, 99.999]
    } else {
        let max_t = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(0.0, f64::max);
        let step = (max_t / 8.0).ceil().max(1.0);
        (0..=8).map(|i| f64::from(i) * step).filter(|t| *t <= max_t).collect()
    };
    for t in ticks {
        let _ = write!(svg, r#"<text x="{}" y="{}" text-anchor="middle">{t}</text>"#, sx(t), HEIGHT - MARGIN + 14.0);
    }
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s.points.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/><rect x="{}" y="{}" width="10" height="10" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            path.join(" "),
            WIDTH - MARGIN - 150.0,
            MARGIN + 14.0 * i as f64,
            WIDTH - MARGIN - 136.0,
            MARGIN + 9.0 + 14.0 * i as f64,
            s.name,
            c = s.color,
        );
    }
    svg.push_str("</svg>");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A self-contained HTML page for one or more runs.
pub fn html(reports: &[Report], command: &str) -> String {
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>imsg load test</title>\
         <style>body{font-family:sans-serif;max-width:820px;margin:2em auto;color:#222}pre{background:#f5f5f5;padding:1em;overflow:auto}</style>\
         </head><body><h1>imsg load test</h1>",
    );
    let _ = write!(page, "<p>Command:</p><pre>{}</pre>", escape(command));
    for report in reports {
        let _ = write!(
            page,
            "<h2>{:?} at {:.0} msg/s</h2><pre>{}</pre>",
            report.scenario,
            report.offered_rate,
            escape(&summary(report))
        );
        if report.timeline.is_empty() {
            continue;
        }
        let over_time =
            |pick: fn(&Second) -> f64| report.timeline.iter().map(|s| (s.t as f64, pick(s))).collect::<Vec<_>>();
        page.push_str(&chart(
            "Latency over time (by intended send second)",
            "second of the run",
            &[
                Series { name: "delivery p99", color: "#d62728", points: over_time(|s| s.deliver.p99) },
                Series { name: "delivery p50", color: "#ff9896", points: over_time(|s| s.deliver.p50) },
                Series { name: "ack p99", color: "#1f77b4", points: over_time(|s| s.ack.p99) },
                Series { name: "ack p50", color: "#aec7e8", points: over_time(|s| s.ack.p50) },
            ],
            false,
        ));
        page.push_str("<br>");
        page.push_str(&chart(
            "Latency by percentile",
            "percentile",
            &[
                Series { name: "send to delivery", color: "#d62728", points: report.deliver_histogram.clone() },
                Series { name: "send to ack", color: "#1f77b4", points: report.ack_histogram.clone() },
            ],
            true,
        ));
    }
    page.push_str("</body></html>\n");
    page
}
