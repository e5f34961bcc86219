//! Turns an [`Outcome`] into the markdown of `BENCHMARKS.md`: context (date, machine,
//! versions, command), the targets with pass or miss, one table per scenario with medians and
//! ratios, the access log's cost (egressd as shipped against the access log off), egressd under
//! a flood of denials (with `--denial-flood`), the mTLS
//! origination figures (which have no target), the shared-state section (the postgres
//! backend against the file backend, and tick lag), and notes on method.
//!
//! The file is rewritten whole, except that a run which did not measure the postgres backend
//! carries the shared-state section of the file it replaces over unchanged (it says when and
//! by what command it was measured): that measurement needs a database and a few minutes of
//! minute boundaries, and a plain run should not erase it.

use std::fmt::Write;

use crate::flood::{FloodPair, FloodSection, FloodTally, GROUPS};
use crate::mtls::{Handshakes, MtlsRuns, MtlsSample, MtlsScenario, MtlsSection, Via};
use crate::peers::Kind;
use crate::scenarios::{
    MemorySample, Outcome, Percentiles, Sample, Scenario, SharedState, EARLY_TUNNELS, HTTP_CONNS,
    TUNNEL_CONCURRENCY,
};
use crate::ticklag::{TickLag, TARGET_P99_MS};

/// First line of the shared-state section; [`carried_section`] finds it by this prefix.
const SHARED_BEGIN: &str = "<!-- shared-state: begin";
const SHARED_END: &str = "<!-- shared-state: end -->";

/// The scenarios of issue 21's "keep-alive and tunnel figures equal within noise".
pub const BACKEND_TARGET_SCENARIOS: [Scenario; 4] = [
    Scenario::KeepAlive,
    Scenario::NewTunnels,
    Scenario::Bulk1,
    Scenario::Bulk4,
];

/// The median of each figure over a path's repetitions.
#[derive(Debug, Clone)]
pub struct Summary {
    pub value: f64,
    pub latency: Option<Percentiles>,
    pub cpu_cores: Option<f64>,
    pub cpu_per_op: Option<f64>,
    pub switches_per_op: Option<f64>,
    /// Summed over repetitions.
    pub errors: u64,
    /// Client connections per repetition (median).
    pub connects: f64,
}

pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

fn median_of<T>(items: &[T], f: impl Fn(&T) -> Option<f64>) -> Option<f64> {
    median(items.iter().filter_map(f).collect())
}

pub fn summarize(samples: &[Sample]) -> Summary {
    let latency = samples
        .iter()
        .any(|s| s.latency.is_some())
        .then(|| Percentiles {
            p50: median_of(samples, |s| s.latency.map(|l| l.p50)).unwrap_or(f64::NAN),
            p99: median_of(samples, |s| s.latency.map(|l| l.p99)).unwrap_or(f64::NAN),
            p999: median_of(samples, |s| s.latency.map(|l| l.p999)).unwrap_or(f64::NAN),
        });
    Summary {
        value: median_of(samples, |s| Some(s.value)).unwrap_or(f64::NAN),
        latency,
        cpu_cores: median_of(samples, |s| s.cpu_cores),
        cpu_per_op: median_of(samples, |s| s.cpu_per_op),
        switches_per_op: median_of(samples, |s| s.switches_per_op),
        errors: samples.iter().map(|s| s.errors).sum(),
        connects: median_of(samples, |s| Some(s.connects as f64)).unwrap_or(0.0),
    }
}

/// The postgres backend against the file backend in one scenario, from the repetitions of
/// each in the same run.
#[derive(Debug, Clone, Copy)]
pub struct Comparison {
    /// Medians, in the scenario's unit.
    pub file: f64,
    pub postgres: f64,
    /// postgres ÷ file.
    pub ratio: f64,
    /// The larger of the two paths' [`spread`]s; `None` with one repetition.
    pub noise: Option<f64>,
    /// The lowest and highest postgres ÷ file ratio of one repetition (the two ran next to
    /// each other, so these share conditions).
    pub paired: Option<(f64, f64)>,
}

impl Comparison {
    pub fn of(file: &[f64], postgres: &[f64]) -> Option<Comparison> {
        let (f, p) = (median(file.to_vec())?, median(postgres.to_vec())?);
        let paired: Vec<f64> = file
            .iter()
            .zip(postgres)
            .filter(|(f, _)| **f > 0.0)
            .map(|(f, p)| p / f)
            .collect();
        let low = paired.iter().copied().reduce(f64::min);
        let high = paired.iter().copied().reduce(f64::max);
        (f > 0.0).then(|| Comparison {
            file: f,
            postgres: p,
            ratio: p / f,
            noise: spread(file).zip(spread(postgres)).map(|(a, b)| a.max(b)),
            paired: low.zip(high),
        })
    }

    /// Equal within noise: the medians differ by no more than either path's repetitions do
    /// among themselves.
    pub fn within_noise(&self) -> Option<bool> {
        self.noise.map(|n| (self.ratio - 1.0).abs() <= n)
    }

    pub fn verdict_text(&self) -> &'static str {
        match self.within_noise() {
            Some(true) => "within noise",
            Some(false) => "outside noise",
            None => "n/a (one repetition)",
        }
    }
}

/// How far a path's repetitions spread: (max − min) ÷ median; `None` with fewer than two.
pub fn spread(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    median(values.to_vec())
        .filter(|m| *m > 0.0)
        .map(|m| (max - min) / m)
}

impl Outcome {
    /// egressd (postgres state) against egressd in `scenario`, when both ran.
    pub fn backend_comparison(&self, scenario: Scenario) -> Option<Comparison> {
        let (_, per_kind) = self.scenarios.iter().find(|(s, _)| *s == scenario)?;
        let values = |kind: Kind| {
            per_kind
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, runs)| runs.iter().map(|r| r.value).collect::<Vec<f64>>())
        };
        Comparison::of(&values(Kind::Egressd)?, &values(Kind::EgressdPostgres)?)
    }

    pub fn summary(&self, scenario: Scenario, kind: Kind) -> Option<Summary> {
        let (_, per_kind) = self.scenarios.iter().find(|(s, _)| *s == scenario)?;
        let (_, samples) = per_kind.iter().find(|(k, _)| *k == kind)?;
        Some(summarize(samples))
    }

    /// `kind`'s median divided by `reference`'s, for a scenario's main figure.
    pub fn ratio(&self, scenario: Scenario, kind: Kind, reference: Kind) -> Option<f64> {
        let value = self.summary(scenario, kind)?.value;
        let base = self.summary(scenario, reference)?.value;
        (base > 0.0).then(|| value / base)
    }

    /// What "relay" means in `scenario`'s ratios and targets: the faster of the two relays
    /// measured in this run.
    pub fn relay(&self, scenario: Scenario) -> Option<Kind> {
        [Kind::CopyRelay, Kind::SpliceRelay]
            .into_iter()
            .filter_map(|k| Some((k, self.summary(scenario, k)?.value)))
            .filter(|(_, value)| value.is_finite())
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(k, _)| k)
    }

    /// The peer with the highest median in `scenario` (see [`Kind::is_peer`]).
    pub fn best_peer(&self, scenario: Scenario) -> Option<Kind> {
        self.scenarios
            .iter()
            .find(|(s, _)| *s == scenario)?
            .1
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| k.is_peer())
            .filter_map(|k| Some((k, self.summary(scenario, k)?.value)))
            .filter(|(_, value)| value.is_finite())
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(k, _)| k)
    }

    /// `kind`'s median divided by that of [`Outcome::relay`].
    pub fn ratio_to_relay(&self, scenario: Scenario, kind: Kind) -> Option<f64> {
        self.ratio(scenario, kind, self.relay(scenario)?)
    }

    /// Median KiB per idle tunnel, and the median count reached.
    pub fn idle_cost(&self, kind: Kind) -> Option<(f64, f64)> {
        let (_, samples) = self.memory.iter().find(|(k, _)| *k == kind)?;
        let per = median_of(samples, MemorySample::per_tunnel_kib)?;
        Some((per, median_of(samples, |s| Some(s.reached as f64))?))
    }

    /// Median KiB per idle tunnel over the first [`EARLY_TUNNELS`], and the median count.
    pub fn early_idle_cost(&self, kind: Kind) -> Option<(f64, f64)> {
        let (_, samples) = self.memory.iter().find(|(k, _)| *k == kind)?;
        let per = median_of(samples, MemorySample::early_per_tunnel_kib)?;
        let reached = median_of(samples, |s| Some(s.early?.reached as f64))?;
        Some((per, reached))
    }
}

/// One target from the issue and how egressd did.
#[derive(Debug, Clone)]
pub struct TargetCheck {
    pub name: String,
    pub goal: String,
    pub measured: String,
    /// `None` when it could not be measured (a peer missing).
    pub pass: Option<bool>,
}

impl TargetCheck {
    pub fn verdict(&self) -> &'static str {
        match self.pass {
            Some(true) => "pass",
            Some(false) => "**miss**",
            None => "n/a",
        }
    }
}

fn check(
    name: &str,
    goal: &str,
    measured: Option<(f64, String)>,
    ok: impl Fn(f64) -> bool,
) -> TargetCheck {
    TargetCheck {
        name: name.to_string(),
        goal: goal.to_string(),
        pass: measured.as_ref().map(|(v, _)| ok(*v)),
        measured: measured
            .map(|(_, text)| text)
            .unwrap_or_else(|| "not measured".into()),
    }
}

/// A table of targets, one row each: name, goal, measured, result.
fn write_target_table(md: &mut String, heading: &str, checks: &[TargetCheck]) {
    let _ = writeln!(
        md,
        "| {heading} | goal | measured | result |\n|---|---|---|---|"
    );
    for t in checks {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            t.name,
            t.goal,
            t.measured,
            t.verdict()
        );
    }
}

pub fn targets(o: &Outcome) -> Vec<TargetCheck> {
    use Kind::{CopyRelay, Egressd, EgressdLogOff, SpliceRelay, Squid};
    use Scenario::*;
    // egressd against `reference` (none: it was not measured).
    let versus = |s: Scenario, reference: Option<Kind>| {
        let reference = reference?;
        let r = o.ratio(s, Egressd, reference)?;
        let egressd = o.summary(s, Egressd)?.value;
        let base = o.summary(s, reference)?.value;
        Some((
            r,
            format!(
                "{} {} ({} vs {} {})",
                times(r),
                reference.name(),
                figure(s, egressd),
                figure(s, base),
                s.unit()
            ),
        ))
    };
    let p50 = |k| {
        o.summary(KeepAlive, k)
            .and_then(|s| s.latency)
            .map(|l| l.p50)
            .filter(|p| p.is_finite())
    };
    // For latency the better relay is the one with the lower p50.
    let relay_p50 = [CopyRelay, SpliceRelay]
        .into_iter()
        .filter_map(|k| Some((k, p50(k)?)))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let p50_ratio = p50(Egressd).zip(relay_p50).map(|(e, (k, r))| {
        (
            e / r,
            format!("{} ({e:.0} µs vs {r:.0} µs, {})", times(e / r), k.name()),
        )
    });
    let held =
        |(kib, n): (f64, f64)| (kib, format!("{kib:.2} KiB ({} tunnels held)", thousands(n)));
    let idle = o.idle_cost(Egressd).map(held);
    let idle_early = o.early_idle_cost(Egressd).map(held);
    let a = &o.allowlist;
    let (worst_mix, worst_ns) = a
        .find_ns
        .iter()
        .copied()
        .max_by(|x, y| x.1.total_cmp(&y.1))
        .map(|(m, ns)| (m.name(), ns))
        .unwrap_or(("none", f64::NAN));
    let entries = thousands(a.entries as f64);
    let reload_ms = a.reload.as_secs_f64() * 1e3;
    let keep_alive = format!("keep-alive req/s, {HTTP_CONNS} connections");
    let bulk1 = "CONNECT bulk, 1 stream";
    let bulk4 = "CONNECT bulk, 4 streams";
    let new_tunnels = format!("new tunnels/s, {TUNNEL_CONCURRENCY} at a time");
    let mut checks = vec![
        check(
            &keep_alive,
            "≥ 0.85× relay",
            versus(KeepAlive, o.relay(KeepAlive)),
            |r| r >= 0.85,
        ),
        check(
            &keep_alive,
            "≥ 1.3× best peer",
            versus(KeepAlive, o.best_peer(KeepAlive)),
            |r| r >= 1.3,
        ),
        check(
            &keep_alive,
            "≥ 3× squid",
            versus(KeepAlive, Some(Squid)),
            |r| r >= 3.0,
        ),
        check(
            "keep-alive p50 latency",
            "≤ 1.3× relay's",
            p50_ratio,
            |r| r <= 1.3,
        ),
        check(
            "keep-alive req/s, access log on (as shipped)",
            "≥ 0.90× access log off",
            versus(KeepAlive, Some(EgressdLogOff)),
            |r| r >= 0.9,
        ),
    ];
    // Bulk and new tunnels: against the better relay, and ahead of every peer.
    for (name, scenario, least, goal) in [
        (bulk1, Bulk1, 1.0, "≥ 1.0× relay"),
        (bulk4, Bulk4, 1.0, "≥ 1.0× relay"),
        (new_tunnels.as_str(), NewTunnels, 0.95, "≥ 0.95× relay"),
    ] {
        checks.push(check(
            name,
            goal,
            versus(scenario, o.relay(scenario)),
            |r| r >= least,
        ));
        checks.push(check(
            name,
            "ahead of every peer",
            versus(scenario, o.best_peer(scenario)),
            |r| r > 1.0,
        ));
    }
    checks.extend([
        check(
            &format!(
                "RSS per idle tunnel, first {}",
                thousands(EARLY_TUNNELS as f64)
            ),
            "≤ 4 KiB",
            idle_early,
            |kib| kib <= 4.0,
        ),
        check("RSS per idle tunnel, all", "≤ 4 KiB", idle, |kib| {
            kib <= 4.0
        }),
        check(
            &format!("allowlist decision, {entries} entries"),
            "≤ 150 ns",
            Some((
                worst_ns,
                format!("{worst_ns:.0} ns (slowest mix: {worst_mix})"),
            )),
            |ns| ns <= 150.0,
        ),
        check(
            &format!("reload of a {entries}-entry file"),
            "≤ 200 ms",
            Some((reload_ms, millis(a.reload))),
            |ms| ms <= 200.0,
        ),
    ]);
    checks
}

/// Machine and run context, gathered once.
#[derive(Debug, Clone)]
pub struct Context {
    pub date: String,
    pub nproc: usize,
    pub cpu: String,
    pub memory: String,
    pub kernel: String,
    pub rustc: String,
    pub command: String,
    /// 1-minute load averages at the start and end of the run: other work on the machine
    /// skews every figure.
    pub load: (String, String),
}

impl Context {
    pub fn gather(command: String) -> Context {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, model)| model.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let rustc = std::process::Command::new("rustc")
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Context {
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            memory,
            kernel,
            rustc,
            command,
            load: (load_average(), String::new()),
        }
    }

    /// Records the load average at the end of the run.
    pub fn finish(&mut self) {
        self.load.1 = load_average();
    }
}

/// The 1-minute load average, from `/proc/loadavg`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Formats a figure in a scenario's unit.
pub fn figure(scenario: Scenario, value: f64) -> String {
    match scenario.unit() {
        "Gbit/s" => format!("{value:.2}"),
        _ => thousands(value),
    }
}

pub fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "–".into();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// A duration in ms, or in s once ms digits only get in the way.
fn millis(took: std::time::Duration) -> String {
    let ms = took.as_secs_f64() * 1e3;
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1e3)
    } else {
        format!("{ms:.1} ms")
    }
}

pub fn times(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{ratio:.2}×")
    } else {
        "–".into()
    }
}

fn opt(value: Option<f64>, digits: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "–".into(),
    }
}

/// A count per operation: a fraction per request, thousands per GB.
fn per_op(value: Option<f64>) -> String {
    match value {
        Some(v) if v >= 100.0 => thousands(v),
        Some(v) if v >= 10.0 => opt(Some(v), 1),
        v => opt(v, 2),
    }
}

/// The whole `BENCHMARKS.md`. `previous` is the file this one replaces, whose shared-state
/// section is kept when this run did not measure one.
pub fn markdown(o: &Outcome, ctx: &Context, chart: Option<&str>, previous: Option<&str>) -> String {
    let mut md = String::new();
    let s = &o.settings;
    let mode = if s.quick {
        " (quick smoke run: figures are rough)"
    } else {
        ""
    };
    let _ = writeln!(md, "# egressd benchmarks\n");
    let _ = writeln!(
        md,
        "Generated {} by `{}`{mode}. Regenerate with the same command; see [Method](#method).\n",
        ctx.date, ctx.command
    );
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(
        md,
        "| machine | nproc {}, {}, {} RAM, Linux {} |",
        ctx.nproc, ctx.cpu, ctx.memory, ctx.kernel
    );
    for m in &o.measured {
        let extra = match m.kind {
            Kind::Egressd => format!(
                ", release build, {}{}, text lines on stderr (a file here)",
                if o.egressd_log.is_none() {
                    "as shipped: "
                } else {
                    ""
                },
                log_level(o)
            ),
            Kind::EgressdLogOff => {
                ", release build, `RUST_LOG=warn`: the access log off, the reference for its cost"
                    .into()
            }
            Kind::EgressdJson => format!(
                ", release build, `--log-format json`, {}; not in the bulk scenarios",
                log_level(o)
            ),
            Kind::EgressdPostgres => format!(
                ", release build, {}",
                m.setup
                    .as_deref()
                    .unwrap_or("with `[state] backend = \"postgres\"`")
            ),
            Kind::EgressdCopy => format!(
                ", release build, {}; CONNECT bulk scenarios only",
                m.setup.as_deref().unwrap_or("with its copy relay")
            ),
            Kind::Direct => ": client straight to the upstream".into(),
            Kind::CopyRelay => ": byte-for-byte TCP forwarder, read/write, no parsing".into(),
            Kind::SpliceRelay => {
                ": byte-for-byte TCP forwarder, splice(2) through a pipe, no parsing".into()
            }
            Kind::Squid | Kind::Tinyproxy | Kind::TrafficServer | Kind::Apache | Kind::G3proxy => {
                String::new()
            }
        };
        let _ = writeln!(md, "| {} | {}{extra} |", m.kind.name(), m.version);
    }
    for (kind, why) in &o.skipped {
        let _ = writeln!(md, "| {} | skipped: {why} |", kind.name());
    }
    let _ = writeln!(md, "| toolchain | {} |", ctx.rustc);
    let _ = writeln!(
        md,
        "| repetitions | {} × {:.1} s measured after {:.1} s warm-up, per path and scenario, interleaved; medians shown |",
        s.reps,
        s.measure.as_secs_f64(),
        s.warmup.as_secs_f64()
    );
    let _ = writeln!(md, "| open-files limit | {} |", o.fd_limit);
    let _ = writeln!(
        md,
        "| load average (1 min) | {} at start, {} at end (other work on the machine skews the figures) |\n",
        ctx.load.0, ctx.load.1
    );

    let _ = writeln!(md, "## Targets (egressd)\n");
    write_target_table(&mut md, "target", &targets(o));
    if targets(o).iter().any(|t| t.pass == Some(false)) {
        let _ = writeln!(
            md,
            "\nWhere the time goes on the paths that miss, with the profiles and the commands that took them: [bench/PROFILE.md](bench/PROFILE.md)."
        );
    }
    if let Some(chart) = chart {
        let _ = writeln!(md, "\n![Ratios to direct and to the faster relay]({chart})");
    }

    let _ = writeln!(md, "\n## Results\n");
    for (scenario, per_kind) in &o.scenarios {
        scenario_table(&mut md, o, *scenario, per_kind.iter().map(|(k, _)| *k));
    }
    access_log_table(&mut md, o);
    if let Some(section) = &o.denial_flood {
        denial_flood_section(&mut md, section);
    }
    memory_table(&mut md, o);
    allowlist_table(&mut md, o);
    if let Some(section) = &o.mtls {
        mtls_section(&mut md, section);
    }
    match &o.shared_state {
        Some(shared) => shared_state_section(&mut md, o, ctx, shared),
        None => {
            if let Some(carried) = previous.and_then(carried_section) {
                let _ = writeln!(md, "{carried}\n");
            }
        }
    }
    notes(&mut md, o, ctx);
    md
}

/// The log level of the egressd rows that log as shipped, for the context table.
fn log_level(o: &Outcome) -> String {
    match &o.egressd_log {
        None => "access log on (`RUST_LOG` unset, so `info`)".into(),
        Some(filter) => format!("`RUST_LOG={filter}` (`--egressd-log`)"),
    }
}

/// egressd as shipped, and with its JSON log, against egressd with the access log off: the
/// medians, their ratio and the lowest and highest ratio of one repetition, whose runs were
/// next to each other.
fn access_log_table(md: &mut String, o: &Outcome) {
    let values = |scenario: Scenario, kind: Kind| {
        let (_, per_kind) = o.scenarios.iter().find(|(s, _)| *s == scenario)?;
        let (_, runs) = per_kind.iter().find(|(k, _)| *k == kind)?;
        Some(runs.iter().map(|r| r.value).collect::<Vec<f64>>())
    };
    // Where a line is written per request or tunnel at a high rate; a bulk tunnel writes one
    // in seconds, so there the two differ by noise only.
    let rows: Vec<(Scenario, Vec<f64>)> = Scenario::ALL
        .into_iter()
        .filter(|s| s.runs_on(Kind::EgressdJson))
        .filter_map(|s| Some((s, values(s, Kind::EgressdLogOff)?)))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "### The access log's cost: egressd as shipped against the access log off\n\n\
         egressd logs a line per request and per tunnel at `info`, its default level; \
         egressd (access log off) is the same binary and config with `RUST_LOG=warn`, run \
         right after it in every repetition, and egressd (JSON log) the same as egressd with \
         `--log-format json`. Ratios of the medians; in brackets the lowest and highest ratio \
         of one repetition. CPU per operation is each path's median. The bulk scenarios, \
         where a tunnel logs one line in seconds, are in their tables above.\n"
    );
    let _ = writeln!(
        md,
        "| scenario | log off | text log (as shipped) | text ÷ off | JSON log | JSON ÷ off | CPU per op: off / text / JSON |\n\
         |---|---:|---:|---:|---:|---:|---|"
    );
    for (scenario, off) in rows {
        // `Comparison` names its sides after the state backends: the reference, here the log
        // off, is `file`.
        let against = |kind: Kind| {
            let on = values(scenario, kind)?;
            let c = Comparison::of(&off, &on)?;
            Some((c.postgres, c.ratio, c.paired))
        };
        let cells = |kind: Kind| match against(kind) {
            Some((median, ratio, paired)) => (
                figure(scenario, median),
                match paired {
                    Some((low, high)) if low != high => {
                        format!("{} ({low:.2}–{high:.2})", times(ratio))
                    }
                    _ => times(ratio),
                },
            ),
            None => ("–".into(), "–".into()),
        };
        let (text, text_ratio) = cells(Kind::Egressd);
        let (json, json_ratio) = cells(Kind::EgressdJson);
        let cpu = |kind: Kind| opt(o.summary(scenario, kind).and_then(|s| s.cpu_per_op), 1);
        let _ = writeln!(
            md,
            "| {} ({}) | {} | {text} | {text_ratio} | {json} | {json_ratio} | {} / {} / {} {} |",
            scenario.key(),
            scenario.unit(),
            figure(scenario, median(off.clone()).unwrap_or(f64::NAN)),
            cpu(Kind::EgressdLogOff),
            cpu(Kind::Egressd),
            cpu(Kind::EgressdJson),
            scenario.cost_unit()
        );
    }
    let _ = writeln!(md);
}

/// egressd quiet against egressd under a flood of denials (issue 25): the verdict, the
/// figures of both sides with their ratio and noise, what the flood achieved and what it cost.
pub fn denial_flood_section(md: &mut String, f: &FloodSection) {
    let rate = thousands(f64::from(f.rate));
    let _ = writeln!(md, "### Under a flood of denials (egressd only)\n");
    let _ = writeln!(
        md,
        "egressd as shipped, one instance, measured quiet and then under a flood of refusals, \
         scenario by scenario, in each repetition ({} of {:.1} s measured after {:.1} s \
         warm-up; the flood runs through both). The flood asks for {rate} requests per \
         second that the allowlist refuses, `GET http://hN.flood.invalid/ HTTP/1.1` \
         (absolute-form) with N never repeated, on {} keep-alive connections that each send \
         one every {:.0} ms, in {} groups spread over that time, from a thread of the harness's \
         own, and reads the 403s. Every refusal is a new row in egressd's book of recent denials, which, full at \
         1,000 rows, evicts a tenth every hundredth: its worst case. Each refusal also writes an \
         access-log line. **The flood takes CPU from the same {} cores** as egressd, the \
         upstream and the load client (its own thread's CPU, from \
         `/proc/thread-self/schedstat`, is in the second table), so a small drop can be the \
         generator's, not egressd's. Medians; per repetition, the \
         lowest and highest ratio of a quiet run and the flooded run after it; noise, the \
         larger spread of the two sides' repetitions, (max − min) ÷ median.\n",
        f.reps,
        f.measure.as_secs_f64(),
        f.warmup.as_secs_f64(),
        f.connections,
        f.connections as f64 * 1e3 / f64::from(f.rate),
        GROUPS,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let throughput: Vec<(Scenario, Option<Comparison>)> = f
        .runs
        .iter()
        .map(|(s, pairs)| (*s, flood_comparison(pairs, |r| Some(r.value))))
        .collect();
    let verdicts: Vec<Option<bool>> = throughput
        .iter()
        .map(|(_, c)| c.and_then(|c| c.within_noise()))
        .collect();
    let unchanged = if verdicts.is_empty() || verdicts.contains(&None) {
        None
    } else {
        Some(verdicts.iter().all(|v| *v == Some(true)))
    };
    let ratios = throughput
        .iter()
        .map(|(s, c)| format!("{} {}", s.key(), times(c.map_or(f64::NAN, |c| c.ratio))))
        .collect::<Vec<_>>()
        .join(", ");
    write_target_table(
        md,
        "target (issue 25)",
        &[TargetCheck {
            name: format!("keep-alive req/s and new tunnels/s under {rate} denials/s"),
            goal: "unchanged within noise (same run, quiet and flood alternated)".into(),
            measured: format!("flood ÷ quiet: {ratios}"),
            pass: unchanged,
        }],
    );
    let _ = writeln!(
        md,
        "\n| figure | quiet | under flood | flood ÷ quiet | per repetition | noise | unchanged within noise |\n\
         |---|---:|---:|---:|---:|---:|---|"
    );
    for (scenario, pairs) in &f.runs {
        type Figure = fn(&Sample) -> Option<f64>;
        let mut rows: Vec<(&str, Figure)> = vec![(scenario.unit(), |s| Some(s.value))];
        if scenario.has_latency() {
            rows.push(("p50 µs", |s| s.latency.map(|l| l.p50)));
            rows.push(("p99 µs", |s| s.latency.map(|l| l.p99)));
        }
        for (what, value) in rows {
            let name = format!("{} {what}", scenario.key());
            let Some(c) = flood_comparison(pairs, value) else {
                let _ = writeln!(md, "| {name} | – | – | – | – | – | n/a |");
                continue;
            };
            let verdict = match c.within_noise() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a (one repetition)",
            };
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} | {} | {verdict} |",
                thousands(c.file),
                thousands(c.postgres),
                times(c.ratio),
                match c.paired {
                    Some((low, high)) if low != high => format!("{low:.2}–{high:.2}×"),
                    Some((low, _)) => times(low),
                    None => "–".into(),
                },
                c.noise
                    .map_or("–".into(), |n| format!("±{:.1} %", n * 100.0)),
            );
        }
    }
    let _ = writeln!(
        md,
        "\n| flood during | refusals/s achieved | other answers and errors | egressd CPU (cores), quiet / flooded | the flood's own thread (cores) |\n\
         |---|---:|---:|---:|---:|"
    );
    for (scenario, pairs) in &f.runs {
        let tallies: Vec<FloodTally> = pairs.iter().map(|p| p.tally).collect();
        let cores =
            |side: fn(&FloodPair) -> &Sample| opt(median_of(pairs, |p| side(p).cpu_cores), 2);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} / {} | {} |",
            scenario.key(),
            flood_rate_cell(&tallies),
            tallies.iter().map(|t| t.errors).sum::<u64>(),
            cores(|p| &p.quiet),
            cores(|p| &p.flood),
            opt(median_of(&tallies, FloodTally::cpu_cores), 3),
        );
    }
    let a = &f.alone;
    let _ = writeln!(
        md,
        "| nothing else, {:.1} s | {} | {} | – / {} | {} |\n",
        a.tally.seconds,
        thousands(a.tally.rate()),
        a.tally.errors,
        opt(a.egressd_cores(), 3),
        opt(a.tally.cpu_cores(), 3),
    );
    let _ = match (a.micros_per_refusal(), a.refusals_per_cpu_second()) {
        (Some(us), Some(per)) => writeln!(
            md,
            "Alone, the flood cost egressd {us:.1} µs of CPU per refusal: {} refusals per \
             CPU-second (utime + stime from `/proc/PID/stat` at both ends of the window, 10 ms \
             ticks), the book, the access-log line and the 403 together.\n",
            thousands(per)
        ),
        _ => writeln!(
            md,
            "egressd's CPU for the flood alone could not be read (or rounded to no tick).\n"
        ),
    };
}

/// Quiet against flooded for one figure, from the pairs of one scenario (`Comparison` names
/// its sides after the state backends: quiet is `file`, flooded `postgres`).
fn flood_comparison(
    pairs: &[FloodPair],
    figure: impl Fn(&Sample) -> Option<f64>,
) -> Option<Comparison> {
    let (quiet, flooded): (Vec<f64>, Vec<f64>) = pairs
        .iter()
        .filter_map(|p| Some((figure(&p.quiet)?, figure(&p.flood)?)))
        .filter(|(q, f)| q.is_finite() && f.is_finite())
        .unzip();
    Comparison::of(&quiet, &flooded)
}

/// The median refusal rate of the flooded runs, with its range when they differ.
fn flood_rate_cell(tallies: &[FloodTally]) -> String {
    let rates: Vec<f64> = tallies.iter().map(FloodTally::rate).collect();
    let low = thousands(rates.iter().copied().fold(f64::INFINITY, f64::min));
    let high = thousands(rates.iter().copied().fold(f64::NEG_INFINITY, f64::max));
    let mid = thousands(median(rates).unwrap_or(f64::NAN));
    if low != high {
        format!("{mid} ({low}–{high})")
    } else {
        mid
    }
}

/// The shared-state section of an earlier `BENCHMARKS.md`, markers included.
pub fn carried_section(previous: &str) -> Option<&str> {
    let start = previous.find(SHARED_BEGIN)?;
    let end = start + previous[start..].find(SHARED_END)? + SHARED_END.len();
    Some(&previous[start..end])
}

fn shared_state_section(md: &mut String, o: &Outcome, ctx: &Context, shared: &SharedState) {
    let _ = writeln!(
        md,
        "{SHARED_BEGIN}: generated by runs with --egressd-postgres or --egressd-postgres-url; \
         runs without either keep this section as it is -->\n"
    );
    let _ = writeln!(md, "## Shared state: the postgres backend\n");
    let _ = writeln!(
        md,
        "Measured {} by `{}`, load average (1 min) {} at start and {} at end. The database: {}.\n",
        ctx.date, ctx.command, ctx.load.0, ctx.load.1, shared.database
    );
    let comparisons: Vec<(Scenario, Comparison)> = Scenario::ALL
        .into_iter()
        .filter_map(|s| Some((s, o.backend_comparison(s)?)))
        .collect();
    shared_state_targets(md, &comparisons, shared.tick_lag.as_ref());
    backend_table(md, o, &comparisons);
    tick_lag_part(md, shared.tick_lag.as_ref());
    let _ = writeln!(md, "{SHARED_END}\n");
}

/// The two targets of issue 21 with pass or miss.
fn shared_state_targets(
    md: &mut String,
    comparisons: &[(Scenario, Comparison)],
    tick_lag: Option<&Result<TickLag, String>>,
) {
    let named: Vec<&(Scenario, Comparison)> = comparisons
        .iter()
        .filter(|(s, _)| BACKEND_TARGET_SCENARIOS.contains(s))
        .collect();
    let verdicts: Vec<Option<bool>> = named.iter().map(|(_, c)| c.within_noise()).collect();
    let equal = if named.len() < BACKEND_TARGET_SCENARIOS.len() || verdicts.contains(&None) {
        None
    } else {
        Some(verdicts.iter().all(|v| *v == Some(true)))
    };
    let ratios = named
        .iter()
        .map(|(s, c)| format!("{} {}", s.key(), times(c.ratio)))
        .collect::<Vec<_>>()
        .join(", ");
    let equal_check = TargetCheck {
        name: "keep-alive, new tunnels and bulk with the postgres backend".into(),
        goal: "equal to the file backend's within noise (same run)".into(),
        measured: format!("postgres ÷ file: {ratios}"),
        pass: equal,
    };
    let lag_check = match tick_lag {
        Some(Ok(lag)) => TargetCheck {
            name: format!(
                "tick lag p99, {} replicas on a local database",
                lag.settings.replicas
            ),
            goal: format!("≤ {TARGET_P99_MS} ms, each tick fired once"),
            measured: format!(
                "{} ({} runs); {}",
                lag.p99_ms().map_or("–".into(), |v| format!("{v} ms")),
                lag.lags_ms.len(),
                once_text(lag)
            ),
            pass: lag
                .p99_ms()
                .map(|p99| p99 <= TARGET_P99_MS && lag.once_each()),
        },
        Some(Err(why)) => TargetCheck {
            name: "tick lag p99, several replicas on a local database".into(),
            goal: format!("≤ {TARGET_P99_MS} ms"),
            measured: format!("the measurement failed: {why}"),
            pass: Some(false),
        },
        None => TargetCheck {
            name: "tick lag p99, several replicas on a local database".into(),
            goal: format!("≤ {TARGET_P99_MS} ms"),
            measured: "not measured in this run (`--quick` or `--tick-lag-minutes 0`)".into(),
            pass: None,
        },
    };
    write_target_table(md, "target (issue 21)", &[equal_check, lag_check]);
    let _ = writeln!(md);
}

fn once_text(lag: &TickLag) -> String {
    if lag.once_each() {
        format!(
            "each of the {} (schedule, tick) pairs invoked once, all succeeded",
            lag.expected
        )
    } else {
        format!(
            "{} of {} pairs invoked, {} twice, {} missing, {} runs failed",
            lag.expected - lag.missing,
            lag.expected,
            lag.duplicates,
            lag.missing,
            lag.failed
        )
    }
}

fn backend_table(md: &mut String, o: &Outcome, comparisons: &[(Scenario, Comparison)]) {
    let _ = writeln!(
        md,
        "### State backends: file against postgres\n\n\
         egressd and egressd (postgres state) in the same run, the same binary and config but \
         for the `[state]` table, interleaved with the other paths in every repetition ({} of \
         {:.1} s). Medians; the Results tables above have their latency and CPU figures. Noise is the \
         larger of the two paths' spread over their repetitions, (max − min) ÷ median; the \
         backends are equal within noise when the ratio of the medians differs from 1 by no \
         more than that. Per repetition: the lowest and highest ratio of the two runs of one \
         repetition, which ran one after the other.\n",
        o.settings.reps,
        o.settings.measure.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| scenario | file backend | postgres backend | postgres ÷ file | per repetition | noise | equal within noise |\n|---|---:|---:|---:|---:|---:|---|"
    );
    for (scenario, c) in comparisons {
        let verdict = match c.within_noise() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        let aside = if BACKEND_TARGET_SCENARIOS.contains(scenario) {
            ""
        } else {
            " (not in the target)"
        };
        let _ = writeln!(
            md,
            "| {} ({}) | {} | {} | {:.3}× | {} | {} | {verdict}{aside} |",
            scenario.key(),
            scenario.unit(),
            figure(*scenario, c.file),
            figure(*scenario, c.postgres),
            c.ratio,
            c.paired
                .map_or("–".into(), |(low, high)| format!("{low:.2}–{high:.2}×")),
            c.noise
                .map_or("–".into(), |n| format!("±{:.1} %", n * 100.0)),
        );
    }
    let _ = writeln!(md);
}

fn tick_lag_part(md: &mut String, tick_lag: Option<&Result<TickLag, String>>) {
    let lag = match tick_lag {
        Some(Ok(lag)) => lag,
        Some(Err(why)) => {
            let _ = writeln!(md, "### Tick lag\n\nThe measurement failed: {why}\n");
            return;
        }
        None => {
            let _ = writeln!(
                md,
                "### Tick lag\n\nNot measured in this run. `cargo run --release -p \
                 egressd-bench -- tick-lag` measures it alone.\n"
            );
            return;
        }
    };
    let t = &lag.settings;
    let _ = writeln!(
        md,
        "### Tick lag: {} replicas, one database\n\n\
         {} `egressd run` processes with the postgres backend on one database, after the \
         throughput scenarios (their paths stopped). {} schedules of a function that answers \
         200 on loopback, every minute (`* * * * *`), created through the replicas' admin \
         APIs in turn; {} minute boundaries. Each tick is claimed in the run ledger by one \
         replica before it is invoked. Lag: `lag_ms` of the `scheduled run` log line, from \
         the nominal time to the start of the invocation, after the claim. The function \
         counts the invocations per (schedule, `x-egress-scheduled-time`).\n",
        t.replicas, t.replicas, t.schedules, t.minutes
    );
    let ms = |v: Option<i64>| v.map_or("–".into(), |v| v.to_string());
    let per_replica = lag
        .per_replica
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        md,
        "| runs | p50 ms | p99 ms | max ms | invocations at the function | per (schedule, tick) | runs per replica |\n|---:|---:|---:|---:|---:|---|---|"
    );
    let _ = writeln!(
        md,
        "| {} of {} | {} | {} | {} | {} | {} twice, {} missing, {} failed | {per_replica} |\n",
        lag.lags_ms.len(),
        lag.expected,
        ms(lag.p50_ms()),
        ms(lag.p99_ms()),
        ms(lag.max_ms()),
        lag.invocations,
        lag.duplicates,
        lag.missing,
        lag.failed
    );
    let _ = writeln!(
        md,
        "Every lag in ms per tick, ascending, with the replica (1–{}) that fired the run:\n",
        t.replicas
    );
    for (tick, lags) in &lag.by_tick {
        let at = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(*tick),
        );
        let lags = lags
            .iter()
            .map(|(ms, replica)| format!("{ms} ({})", replica + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(md, "- {at}: {lags}");
    }
    let _ = writeln!(md);
    if lag.lags_ms.len() <= 100 {
        // ⌊0.99·n⌋ is the last index for n ≤ 100.
        let _ = writeln!(
            md,
            "With 100 runs or fewer, p99 is the largest lag: the sample at index ⌊0.99·n⌋ of \
             the sorted lags is the last one.\n"
        );
    }
}

fn scenario_table(
    md: &mut String,
    o: &Outcome,
    scenario: Scenario,
    kinds: impl Iterator<Item = Kind>,
) {
    let unit = scenario.unit();
    let _ = writeln!(md, "### {}\n", scenario.title());
    if let Some(relay) = o.relay(scenario) {
        let _ = writeln!(
            md,
            "× relay: against the {}, the faster relay here.\n",
            relay.name()
        );
    }
    let latency_head = if scenario.has_latency() {
        " p50 µs | p99 µs | p99.9 µs |"
    } else {
        ""
    };
    let latency_rule = if scenario.has_latency() {
        "---:|---:|---:|"
    } else {
        ""
    };
    let _ = writeln!(
        md,
        "| path | {unit} | × direct | × relay |{latency_head} CPU (cores) | CPU {} | ctx sw/{} | client conns per run | errors |",
        scenario.cost_unit(),
        scenario.op()
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|{latency_rule}---:|---:|---:|---:|---:|"
    );
    for kind in kinds {
        let Some(sum) = o.summary(scenario, kind) else {
            continue;
        };
        let latency = match (scenario.has_latency(), sum.latency) {
            (true, Some(l)) => format!(" {:.0} | {:.0} | {:.0} |", l.p50, l.p99, l.p999),
            (true, None) => " – | – | – |".into(),
            _ => String::new(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |{latency} {} | {} | {} | {} | {} |",
            kind.name(),
            figure(scenario, sum.value),
            times(o.ratio(scenario, kind, Kind::Direct).unwrap_or(f64::NAN)),
            times(o.ratio_to_relay(scenario, kind).unwrap_or(f64::NAN)),
            opt(sum.cpu_cores, 2),
            opt(sum.cpu_per_op, 1),
            per_op(sum.switches_per_op),
            thousands(sum.connects),
            sum.errors
        );
    }
    let _ = writeln!(md);
}

fn memory_table(md: &mut String, o: &Outcome) {
    let s = &o.settings;
    let _ = writeln!(
        md,
        "### 5. Idle tunnels: RSS with {} CONNECT tunnels held open\n",
        thousands(s.idle_tunnels as f64)
    );
    if s.idle_tunnels < s.idle_tunnels_requested {
        let _ = writeln!(
            md,
            "{} were asked for; the open-files limit ({}, a hard limit the harness may not \
             raise here) leaves room for {} in a proxy, which needs two descriptors per tunnel.\n",
            thousands(s.idle_tunnels_requested as f64),
            o.fd_limit,
            thousands(s.idle_tunnels as f64)
        );
    }
    let _ = writeln!(
        md,
        "A fresh instance per repetition; each tunnel has carried one byte each way. \
         RSS from `/proc/PID/status` after a warm-up, again once the first {} are open (what \
         is paid early), and once all are.\n",
        thousands(EARLY_TUNNELS as f64)
    );
    let _ = writeln!(
        md,
        "| path | tunnels open | failures | RSS before (MiB) | RSS after (MiB) | KiB per tunnel, first {} | KiB per tunnel, all |\n|---|---:|---:|---:|---:|---:|---:|",
        thousands(EARLY_TUNNELS as f64)
    );
    for (kind, samples) in &o.memory {
        let before = median_of(samples, |s| Some(s.before_kib as f64 / 1024.0));
        let after = median_of(samples, |s| Some(s.after_kib as f64 / 1024.0));
        let reached = median_of(samples, |s| Some(s.reached as f64)).unwrap_or(0.0);
        let failures: u64 = samples.iter().map(|s| s.failures).sum();
        let _ = writeln!(
            md,
            "| {} | {} | {failures} | {} | {} | {} | {} |",
            kind.name(),
            thousands(reached),
            opt(before, 1),
            opt(after, 1),
            opt(o.early_idle_cost(*kind).map(|(kib, _)| kib), 2),
            opt(o.idle_cost(*kind).map(|(kib, _)| kib), 2)
        );
    }
    let _ = writeln!(md);
}

fn allowlist_table(md: &mut String, o: &Outcome) {
    let a = &o.allowlist;
    let _ = writeln!(
        md,
        "### 6. Allowlist with {} entries (half exact, half `*.` wildcards)\n",
        thousands(a.entries as f64)
    );
    let _ = writeln!(md, "| operation | time |\n|---|---:|");
    for (mix, ns) in &a.find_ns {
        let _ = writeln!(
            md,
            "| decision (`Allowlist::find`), {} | {ns:.0} ns |",
            mix.name()
        );
    }
    let _ = writeln!(
        md,
        "| `Host::parse` + decision, all mixes | {:.0} ns |",
        a.parse_and_find_ns
    );
    let rows = [
        (
            "reload: `Config::parse` of the whole file (TOML, entries, index)",
            a.reload,
        ),
        (
            "for comparison: `Pattern::parse` of every entry alone",
            a.patterns,
        ),
        (
            "for comparison: the index build (`Allowlist::new`) alone",
            a.index,
        ),
        (
            "the rest of the reload (TOML, spans and line numbers, policy)",
            a.reload.saturating_sub(a.patterns + a.index),
        ),
    ];
    for (what, took) in rows {
        let _ = writeln!(md, "| {what} | {} |", millis(took));
    }
    let _ = writeln!(
        md,
        "\nInline timing (reload: best of {}; lookups over 4,096 distinct hosts per mix). The \
         rigorous version is the criterion bench: `cargo bench -p egressd-bench --bench allowlist`.\n",
        a.reload_tries
    );
}

/// The median figures of one mTLS scenario on one path.
struct MtlsSummary {
    sum: Summary,
    /// Per field, the median over repetitions whose counts could be read.
    handshakes: Option<Handshakes>,
}

fn summarize_mtls(samples: &[MtlsSample]) -> MtlsSummary {
    let runs: Vec<Sample> = samples.iter().map(|s| s.run.clone()).collect();
    let counted: Vec<Handshakes> = samples.iter().filter_map(|s| s.handshakes).collect();
    let field = |f: fn(&Handshakes) -> u64| {
        median(counted.iter().map(|h| f(h) as f64).collect()).map_or(0, |m| m.round() as u64)
    };
    MtlsSummary {
        sum: summarize(&runs),
        handshakes: (!counted.is_empty()).then(|| Handshakes {
            full: field(|h| h.full),
            resumed: field(|h| h.resumed),
            failed: field(|h| h.failed),
        }),
    }
}

fn mtls_summary(runs: &MtlsRuns, scenario: MtlsScenario, via: Via) -> Option<MtlsSummary> {
    let (_, per_via) = runs.iter().find(|(s, _)| *s == scenario)?;
    let (_, samples) = per_via.iter().find(|(v, _)| *v == via)?;
    Some(summarize_mtls(samples))
}

fn mtls_section(md: &mut String, section: &MtlsSection) {
    let _ = writeln!(
        md,
        "### 7. mTLS origination (egressd only)
"
    );
    let runs = match section {
        MtlsSection::Measured(runs) => runs,
        MtlsSection::Skipped(why) => {
            let _ = writeln!(
                md,
                "Not measured: {why}.
"
            );
            return;
        }
    };
    let _ = writeln!(
        md,
        "The client sends egressd plain HTTP (`GET http://HOST/`, absolute-form, port 80); \
         egressd's `[[mtls]]` entry for the host makes it open TLS to the upstream's TLS port \
         and present a client certificate. The upstream is a rustls 0.23 server (ring, TLS 1.3 \
         negotiated) in its own child process that requires and verifies client certificates \
         and answers like the plain upstream (128-byte body). Certificates (ECDSA P-256: a \
         server CA, a client CA, one certificate each) are made with rcgen at every run. \
         Squid, tinyproxy and the relays cannot originate mTLS, so there are no ratios to them \
         and no targets; **direct TLS** is the harness client doing the same TLS itself, with \
         the same certificate, trust and rustls's default session cache (its CPU, on the \
         harness's single client thread, is not measured).\n"
    );
    let _ = writeln!(
        md,
        "egressd pools upstream connections, so in 7b and 7c the upstream answers every \
         request with `Connection: close`: each request needs a new upstream TCP and TLS \
         connection, and handshakes/s is requests/s. In 7c the upstream keeps no sessions and \
         sends no tickets (`NoServerSessionStorage`, `send_tls13_tickets = 0`), so every \
         handshake is full. Handshakes by outcome are those inside the measured window: \
         egressd's `egressd_mtls_handshakes_total{{entry,outcome}}` read from its admin \
         listener at both ends of the window, and the direct client's own count \
         (`handshake_kind()`).\n"
    );
    for scenario in MtlsScenario::ALL {
        let handshakes = scenario.handshakes();
        let _ = writeln!(md, "#### {}\n", scenario.title());
        let tail = if handshakes {
            "| resumed | full | failed |"
        } else {
            "| new upstream TLS connections |"
        };
        let _ = writeln!(
            md,
            "| path | {} | × direct TLS | p50 µs | p99 µs | p99.9 µs | CPU (cores) | CPU {} | ctx sw/{} {tail} client conns per run | errors |",
            scenario.unit(),
            scenario.cost_unit(),
            scenario.op()
        );
        let rule = if handshakes {
            "---:|---:|---:|"
        } else {
            "---:|"
        };
        let _ = writeln!(
            md,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|{rule}---:|---:|"
        );
        let direct = mtls_summary(runs, scenario, Via::DirectTls).map(|m| m.sum.value);
        for via in Via::ALL {
            let Some(MtlsSummary {
                sum,
                handshakes: split,
            }) = mtls_summary(runs, scenario, via)
            else {
                continue;
            };
            let ratio = direct
                .filter(|d| *d > 0.0)
                .map_or(f64::NAN, |d| sum.value / d);
            let latency = match sum.latency {
                Some(l) => format!("{:.0} | {:.0} | {:.0}", l.p50, l.p99, l.p999),
                None => "– | – | –".into(),
            };
            let count = |f: fn(&Handshakes) -> u64| {
                split
                    .as_ref()
                    .map_or("–".into(), |h| thousands(f(h) as f64))
            };
            let split = if handshakes {
                format!(
                    "| {} | {} | {} |",
                    count(|h| h.resumed),
                    count(|h| h.full),
                    count(|h| h.failed)
                )
            } else {
                format!("| {} |", count(|h| h.full + h.resumed))
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {latency} | {} | {} | {} {split} {} | {} |",
                via.name(),
                thousands(sum.value),
                times(ratio),
                opt(sum.cpu_cores, 2),
                opt(sum.cpu_per_op, 1),
                per_op(sum.switches_per_op),
                thousands(sum.connects),
                sum.errors
            );
        }
        let _ = writeln!(md);
    }
    mtls_takeaway(md, runs);
}

/// What a new upstream connection costs egressd, against a pooled one, and how many
/// handshakes resumed.
fn mtls_takeaway(md: &mut String, runs: &MtlsRuns) {
    let egressd = |s| mtls_summary(runs, s, Via::Egressd);
    let cost = |s| egressd(s).and_then(|m| m.sum.cpu_per_op);
    let mut lines = Vec::new();
    if let (Some(pooled), Some(resumed), Some(full)) = (
        cost(MtlsScenario::KeepAlive),
        cost(MtlsScenario::Resumed),
        cost(MtlsScenario::Full),
    ) {
        lines.push(format!(
            "egressd's CPU per request: {pooled:.1} µs on a pooled upstream connection (7a), \
             {resumed:.1} µs with a new connection and a resumed handshake (7b), {full:.1} µs \
             with a full one (7c). A new connection thus costs egressd about {:.0} µs with \
             resumption and {:.0} µs without (TCP connect and close included).",
            resumed - pooled,
            full - pooled
        ));
    }
    if let Some(h) = egressd(MtlsScenario::Resumed).and_then(|m| m.handshakes) {
        let total = h.full + h.resumed;
        if total > 0 {
            lines.push(format!(
                "Resumption in 7b: {} of {} handshakes resumed ({:.0} %). The likely \
                 reason for the full ones: rustls's client keeps at most 8 TLS 1.3 tickets per \
                 server, each used once, and more connections than that open at a time.",
                thousands(h.resumed as f64),
                thousands(total as f64),
                h.resumed as f64 * 100.0 / total as f64
            ));
        }
    }
    for line in lines {
        let _ = writeln!(md, "{line}\n");
    }
}

fn notes(md: &mut String, o: &Outcome, ctx: &Context) {
    let _ = writeln!(md, "## Method\n");
    let mut lines = vec![
        format!(
            "One command starts everything on 127.0.0.1: `{}`. Add `--quick` for a smoke run \
             (under a minute; it writes files only when given `--out`/`--chart`).",
            ctx.command
        ),
        "The upstream (a keep-alive HTTP/1.1 server answering every request with a 128-byte \
         body, and a TCP byte source/sink/echo service) and the relays are child processes of \
         the harness; the load client runs in the harness on one tokio thread. All of them, the \
         proxy under test and the upstream share the same cores, so every figure includes the \
         cost of the client and the upstream: compare ratios, not absolute numbers."
            .into(),
        "Direct: the client talks straight to the upstream. Relays: byte-for-byte TCP \
         forwarders with no HTTP parsing, in two variants. The copy relay reads into a 64 KiB \
         buffer and writes it out; the splice relay moves bytes socket → pipe → socket with \
         splice(2), never into user space. Each holds its buffer or pipe only while data \
         flows. For HTTP scenarios the client talks to them as if they were the origin. They \
         are the ceiling for any proxy, except with a new client connection per request: a \
         relay must then open a new upstream connection too, while the proxies reuse pooled \
         upstream connections."
            .into(),
        "\"Relay\" in the × relay column, the chart and the targets means the better of the two \
         relays in the same run, per scenario: the one with the higher throughput (each table \
         names it), and for the p50 target the one with the lower p50."
            .into(),
        format!(
            "egressd runs from the binary given with `--egressd` (by default \
             `target/release/egressd`, built first) as shipped: {}. **egressd (access log \
             off)** is the same binary and config with `RUST_LOG=warn`, right after egressd in \
             every repetition of the five throughput scenarios; **egressd (JSON log)** adds \
             `--log-format json` (keep-alive, per-request and new tunnels only). egressd \
             (postgres state), egressd (copy relay) and the mTLS instance log like egressd. \
             `--egressd-log FILTER` sets `RUST_LOG` for all of these but the access-log-off row.",
            match &o.egressd_log {
                None => "its default logging, `RUST_LOG` unset (level `info`): an access-log \
                         line per request and per tunnel, in text, on stderr, which the harness \
                         sends to a file in the instance's temp dir"
                    .to_string(),
                Some(filter) => format!("`RUST_LOG={filter}`, from `--egressd-log`"),
            }
        ),
    ];
    if let Some(pg) = o.measured.iter().find(|m| m.kind == Kind::EgressdPostgres) {
        lines.push(format!(
            "egressd (postgres state): the same binary and config as egressd, {}, measured in \
             the five throughput scenarios next to egressd (after its logging variants) in \
             each repetition. Its request path does not touch the database (the policy is in \
             memory; a background task polls a change counter every second and LISTENs), which \
             is what the A/B checks. Not in the idle-tunnel scenario, where the state backend \
             has nothing to do.",
            pg.setup
                .as_deref()
                .unwrap_or("with `[state] backend = \"postgres\"`")
        ));
    }
    if let Some(copy) = o.measured.iter().find(|m| m.kind == Kind::EgressdCopy) {
        lines.push(format!(
            "egressd (copy relay): the same binary and config as egressd, {}, measured in the \
             CONNECT bulk scenarios only: next to egressd it shows what splice gives.",
            copy.setup.as_deref().unwrap_or("with its copy relay")
        ));
    }
    lines.extend([
        "squid: `squid -N` with a generated config: `cache deny all`, `cache_mem 0`, \
         `access_log none`, `hosts_file` mapping upstream.test to 127.0.0.1, the upstream \
         ports in `Safe_ports`/`SSL_ports`, `http_access allow` for that domain only."
            .into(),
        "tinyproxy: `tinyproxy -d` with a generated config: `LogLevel Critical`, \
         `ConnectPort` for the upstream port, `Allow 127.0.0.1`, and a default-deny `Filter` \
         allowing only the test host."
            .into(),
    ]);
    lines.extend(o.measured.iter().filter_map(|m| peer_setup(m.kind)));
    lines.extend([
        "CPU (cores): CPU time of the path's process (from `/proc/PID/stat`, 10 ms ticks) \
         divided by the window; the next column divides it by the operations carried. Client \
         conns per run (warm-up included) above the connection count in keep-alive mean the \
         path closed connections the client wanted kept: tinyproxy closes after every \
         response, so the client reconnects (and retries a request that found its connection \
         closed, as HTTP clients do)."
            .into(),
        "ctx sw: context switches of the path's process, voluntary plus involuntary, from \
         `/proc/PID/task/*/status` (every thread; `/proc/PID/status` counts the main thread \
         only), read at the start and end of the window and divided by the requests, tunnels \
         or GB carried. A thread that exits inside the window takes its count with it."
            .into(),
        "The upstream always closes first, so TIME_WAIT stays on listening sockets and \
         repeated runs do not exhaust the client's ephemeral ports."
            .into(),
    ]);
    for kind in o.measured.iter().map(|m| m.kind) {
        if let Some(note) = kind.note() {
            lines.push(format!("{note}."));
        }
    }
    for (kind, why) in &o.skipped {
        lines.push(format!("{} was skipped: {why}.", kind.name()));
    }
    for line in lines {
        let _ = writeln!(md, "- {line}");
    }
}

/// How a peer beyond squid and tinyproxy was set up, for the method notes.
fn peer_setup(kind: Kind) -> Option<String> {
    let text = match kind {
        Kind::TrafficServer => {
            "trafficserver (Apache Traffic Server): `traffic_server` alone (no \
             `traffic_manager`) from a runroot in a temp dir (`--run-root`), as a pure forward \
             proxy: `reverse_proxy.enabled 0`, `url_remap.remap_required 0`, \
             `http.cache.http 0` and no cache storage, `log.logging_enabled 0`, `connect_ports` \
             the upstream's TCP port, an `ip_allow.yaml` allowing every method (CONNECT \
             included) from and to 127.0.0.1, a hosts file mapping upstream.test to 127.0.0.1, \
             event threads autoconfigured (one per core, its default), running as the invoking \
             user (`admin.user_id #-1`)."
        }
        Kind::Apache => {
            "apache httpd: `apache2 -D FOREGROUND -f` a generated config: mpm_event with one \
             worker process of 128 threads (its CPU and memory are the figures, not those of \
             the supervising parent), mod_proxy with mod_proxy_http and mod_proxy_connect, \
             `ProxyRequests On`, `AllowCONNECT` for the upstream's ports, `KeepAlive On` with \
             `MaxKeepAliveRequests 0`, no access log. Its generic forward proxy opens a new \
             upstream connection per request: httpd pools backend connections only for a \
             worker defined per backend (`ProxyPass`), which a forward proxy has not. A CONNECT \
             tunnel holds one of the 128 threads for as long as it is open, so it holds at \
             most 128 idle tunnels; the idle-tunnel table shows its cost per tunnel for those."
        }
        Kind::G3proxy => {
            "g3proxy: opt-in, a build of bytedance/g3 given with `--g3proxy PATH` or found on \
             PATH (skipped otherwise), with a generated config: an `http_proxy` server with \
             `tcp_copy_buffer_size: 64K`, a `direct_fixed` escaper whose \
             `egress_network_filter` allows 127.0.0.1 (its default forbids loopback) and whose \
             `resolve_redirection` maps upstream.test to 127.0.0.1 (no DNS query), \
             `log: discard`, its default runtime (a tokio worker thread per core)."
        }
        _ => return None,
    };
    Some(text.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_state_section_is_carried_with_its_markers() {
        let previous = format!(
            "# egressd benchmarks\n\nold tables\n\n{SHARED_BEGIN}: note -->\n\n## Shared state\n\nfigures\n{SHARED_END}\n\n## Method\n"
        );
        let carried = carried_section(&previous).unwrap();
        assert!(carried.starts_with(SHARED_BEGIN), "{carried}");
        assert!(carried.ends_with(SHARED_END), "{carried}");
        assert!(carried.contains("figures"));
        assert!(!carried.contains("Method"));
        assert_eq!(carried_section("# egressd benchmarks\n\n## Method\n"), None);
    }

    fn sample(value: f64, p50: f64) -> Sample {
        Sample {
            value,
            latency: Some(Percentiles {
                p50,
                p99: p50 * 2.0,
                p999: p50 * 3.0,
            }),
            cpu_cores: Some(1.0),
            cpu_per_op: None,
            switches_per_op: None,
            errors: 0,
            connects: 32,
        }
    }

    #[test]
    fn the_denial_flood_section_judges_throughput_against_the_quiet_runs() {
        use crate::flood::{FloodAlone, FloodPair, FloodSection, FloodTally};
        let tally = FloodTally {
            refusals: 4_000,
            errors: 0,
            connects: 8,
            cpu_seconds: Some(0.1),
            seconds: 2.0,
        };
        let pairs = |values: [(f64, f64); 3]| -> Vec<FloodPair> {
            values
                .iter()
                .map(|(quiet, flood)| FloodPair {
                    quiet: sample(*quiet, 800.0),
                    flood: sample(*flood, 820.0),
                    tally,
                })
                .collect()
        };
        let mut section = FloodSection {
            rate: 2_000,
            connections: 40,
            reps: 3,
            warmup: std::time::Duration::from_millis(500),
            measure: std::time::Duration::from_secs(2),
            runs: vec![
                (
                    Scenario::KeepAlive,
                    pairs([(100.0, 99.0), (104.0, 101.0), (98.0, 100.0)]),
                ),
                (
                    Scenario::NewTunnels,
                    pairs([(50.0, 50.0), (51.0, 49.0), (49.0, 50.0)]),
                ),
            ],
            alone: FloodAlone {
                tally,
                egressd_cpu_seconds: Some(0.16),
            },
        };
        let mut md = String::new();
        denial_flood_section(&mut md, &section);
        assert!(
            md.contains("keep-alive 1.00×, new-tunnels 1.00× | pass |"),
            "{md}"
        );
        assert!(
            md.contains("| keep-alive p50 µs | 800 | 820 | 1.02× | 1.02× |"),
            "{md}"
        );
        assert!(md.contains("| keep-alive | 2,000 | 0 | 1.00 / 1.00 | 0.050 |"));
        assert!(md.contains("40.0 µs of CPU per refusal: 25,000 refusals per CPU-second"));

        section.runs[1].1 = pairs([(50.0, 40.0), (51.0, 41.0), (49.0, 39.0)]);
        let mut md = String::new();
        denial_flood_section(&mut md, &section);
        assert!(md.contains("new-tunnels 0.80× | **miss** |"), "{md}");
    }

    #[test]
    fn backends_are_equal_when_the_ratio_is_inside_the_spread_of_the_repetitions() {
        let file = [100.0, 104.0, 98.0];
        let close = Comparison::of(&file, &[101.0, 97.0, 99.0]).unwrap();
        assert!((close.ratio - 0.99).abs() < 1e-9, "{close:?}");
        assert!((close.noise.unwrap() - 0.06).abs() < 1e-9, "{close:?}");
        assert_eq!(close.within_noise(), Some(true));
        let slower = Comparison::of(&file, &[90.0, 91.0, 89.0]).unwrap();
        assert_eq!(slower.within_noise(), Some(false));
        let (low, high) = slower.paired.unwrap();
        assert!((low - 91.0 / 104.0).abs() < 1e-9, "{slower:?}");
        assert!((high - 89.0 / 98.0).abs() < 1e-9, "{slower:?}");
        let once = Comparison::of(&[100.0], &[90.0]).unwrap();
        assert_eq!(once.within_noise(), None);
    }
}
