//! The scenarios and the order they run in.
//!
//! Each scenario runs every path once per repetition, in a fixed order (direct, copy relay,
//! splice relay, egressd and its variants, then the peers, then again; see [`Kind::ALL`]), so
//! slow drift of the machine (thermal, page cache, a noisy neighbour) spreads over all paths
//! instead of landing on one. The report takes the median of the repetitions. egressd with its
//! copy relay runs in the bulk scenarios only, where the relay is what is measured; egressd
//! with its JSON log in those that write a log line per request or tunnel at a high rate. The
//! idle-tunnel scenario starts a fresh instance of each path per repetition, so memory freed by
//! earlier scenarios cannot hide the cost of a tunnel. The [`mtls`] scenarios, egressd's alone,
//! follow. With `--denial-flood`, [`flood`] measures egressd as shipped in keep-alive and new
//! tunnels again, quiet and under a flood of refusals, right after the throughput scenarios.
//! egressd with the postgres backend runs in the five throughput scenarios only (see
//! [`Kind::EgressdPostgres`]); its tick lag is measured by [`crate::ticklag`].

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::allowlist;
use crate::flood::{self, FloodSection};
use crate::load::{self, Tally, Window};
use crate::mtls::{self, MtlsSection};
use crate::peers::{self, Env, Kind, Started, Subject};
use crate::report;
use crate::ticklag::TickLag;

/// How long and how often to measure.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub reps: usize,
    pub warmup: Duration,
    pub measure: Duration,
    /// Idle tunnels to hold; at most [`Settings::idle_tunnels_requested`], fewer when the
    /// open-files limit cannot fit them.
    pub idle_tunnels: usize,
    pub idle_tunnels_requested: usize,
    pub memory_reps: usize,
    pub allowlist_entries: usize,
    pub allowlist_lookups: usize,
    pub reloads: usize,
    /// Refusals per second of the denial flood (`--denial-flood`); `None`: not measured.
    pub denial_flood: Option<u32>,
}

impl Settings {
    /// About five minutes on two cores.
    pub fn full() -> Settings {
        Settings {
            quick: false,
            reps: 3,
            warmup: Duration::from_millis(500),
            measure: Duration::from_secs(2),
            idle_tunnels: 10_000,
            idle_tunnels_requested: 10_000,
            memory_reps: 2,
            allowlist_entries: allowlist::ENTRIES,
            allowlist_lookups: 2_000_000,
            reloads: 3,
            denial_flood: None,
        }
    }

    /// A smoke run of every code path, well under a minute.
    pub fn quick() -> Settings {
        Settings {
            quick: true,
            reps: 1,
            warmup: Duration::from_millis(100),
            measure: Duration::from_millis(300),
            idle_tunnels: 500,
            idle_tunnels_requested: 500,
            memory_reps: 1,
            allowlist_entries: 10_000,
            allowlist_lookups: 100_000,
            reloads: 1,
            denial_flood: None,
        }
    }
}

/// Concurrent connections in the HTTP scenarios.
pub const HTTP_CONNS: usize = 32;
/// Concurrent openers in the new-tunnel scenario.
pub const TUNNEL_CONCURRENCY: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    KeepAlive,
    PerRequest,
    Bulk1,
    Bulk4,
    NewTunnels,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::KeepAlive,
        Scenario::PerRequest,
        Scenario::Bulk1,
        Scenario::Bulk4,
        Scenario::NewTunnels,
    ];

    pub fn title(self) -> String {
        match self {
            Scenario::KeepAlive => {
                format!("1. HTTP/1.1 keep-alive, {HTTP_CONNS} connections (absolute-form)")
            }
            Scenario::PerRequest => {
                format!("2. HTTP/1.1, new client connection per request, {HTTP_CONNS} at a time")
            }
            Scenario::Bulk1 => "3a. CONNECT tunnel bulk download, 1 stream".into(),
            Scenario::Bulk4 => "3b. CONNECT tunnel bulk download, 4 streams".into(),
            Scenario::NewTunnels => format!(
                "4. New CONNECT tunnels, {TUNNEL_CONCURRENCY} at a time (open, one byte each way, close)"
            ),
        }
    }

    /// Short name, for progress lines and the chart.
    /// The name `--scenario` takes.
    pub fn key(self) -> &'static str {
        match self {
            Scenario::KeepAlive => "keep-alive",
            Scenario::PerRequest => "per-request",
            Scenario::Bulk1 => "bulk-1",
            Scenario::Bulk4 => "bulk-4",
            Scenario::NewTunnels => "new-tunnels",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Scenario::KeepAlive => "keep-alive req/s",
            Scenario::PerRequest => "conn/request req/s",
            Scenario::Bulk1 => "bulk 1 stream",
            Scenario::Bulk4 => "bulk 4 streams",
            Scenario::NewTunnels => "new tunnels/s",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Scenario::KeepAlive | Scenario::PerRequest => "req/s",
            Scenario::Bulk1 | Scenario::Bulk4 => "Gbit/s",
            Scenario::NewTunnels => "tunnels/s",
        }
    }

    /// What the per-operation CPU cost is counted per.
    pub fn cost_unit(self) -> &'static str {
        match self {
            Scenario::KeepAlive | Scenario::PerRequest => "µs/req",
            Scenario::Bulk1 | Scenario::Bulk4 => "ms/GB",
            Scenario::NewTunnels => "µs/tunnel",
        }
    }

    /// The operation per-operation figures count: a request, a tunnel, or a GB moved.
    pub fn op(self) -> &'static str {
        match self {
            Scenario::KeepAlive | Scenario::PerRequest => "req",
            Scenario::Bulk1 | Scenario::Bulk4 => "GB",
            Scenario::NewTunnels => "tunnel",
        }
    }

    /// Whether `kind` is measured in this scenario.
    pub fn runs_on(self, kind: Kind) -> bool {
        match kind {
            Kind::EgressdCopy => matches!(self, Scenario::Bulk1 | Scenario::Bulk4),
            // A bulk tunnel writes one line in seconds: the format cannot show there.
            Kind::EgressdJson => !matches!(self, Scenario::Bulk1 | Scenario::Bulk4),
            _ => true,
        }
    }

    pub fn has_latency(self) -> bool {
        matches!(self, Scenario::KeepAlive | Scenario::PerRequest)
    }

    async fn drive(self, subject: &Subject, env: &Env, window: Window) -> Tally {
        let upstream = env.upstream;
        match self {
            Scenario::KeepAlive => {
                let target = Arc::new(subject.route.http_target(upstream));
                load::http_keep_alive(target, HTTP_CONNS, window).await
            }
            Scenario::PerRequest => {
                let target = Arc::new(subject.route.http_target(upstream));
                load::http_close(target, HTTP_CONNS, window).await
            }
            Scenario::Bulk1 | Scenario::Bulk4 => {
                let streams = if self == Scenario::Bulk1 { 1 } else { 4 };
                let target = Arc::new(subject.route.tunnel_target(upstream));
                load::bulk_download(target, streams, window).await
            }
            Scenario::NewTunnels => {
                let target = Arc::new(subject.route.tunnel_target(upstream));
                load::new_tunnels(target, TUNNEL_CONCURRENCY, window).await
            }
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Percentiles {
    pub(crate) fn of(mut nanos: Vec<u64>) -> Option<Percentiles> {
        if nanos.is_empty() {
            return None;
        }
        nanos.sort_unstable();
        let at =
            |q: f64| nanos[((nanos.len() as f64 * q) as usize).min(nanos.len() - 1)] as f64 / 1e3;
        Some(Percentiles {
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
        })
    }
}

/// One run of one scenario on one path.
#[derive(Debug, Clone)]
pub struct Sample {
    /// In [`Scenario::unit`].
    pub value: f64,
    pub latency: Option<Percentiles>,
    /// CPU the path's process used, in cores (1.0 = one core busy all the window).
    pub cpu_cores: Option<f64>,
    /// That CPU per operation, in [`Scenario::cost_unit`].
    pub cpu_per_op: Option<f64>,
    /// Context switches of the path's process per [`Scenario::op`].
    pub switches_per_op: Option<f64>,
    pub errors: u64,
    pub connects: u64,
}

impl Sample {
    /// A run's figures: `value` in the scenario's unit, and the path's CPU and context
    /// switches per operation (`ops` of them), CPU in seconds × `scale` per operation.
    pub(crate) fn of_run(
        value: f64,
        ops: f64,
        scale: f64,
        tally: Tally,
        usage: Option<Usage>,
        window: &Window,
        latency: bool,
    ) -> Sample {
        let cpu_seconds = usage.as_ref().map(|u| u.cpu_seconds);
        Sample {
            value,
            latency: latency
                .then(|| Percentiles::of(tally.latencies_ns))
                .flatten(),
            cpu_cores: cpu_seconds.map(|s| s / window.seconds()),
            cpu_per_op: cpu_seconds.filter(|_| ops > 0.0).map(|s| s / ops * scale),
            switches_per_op: usage.filter(|_| ops > 0.0).map(|u| u.switches as f64 / ops),
            errors: tally.errors,
            connects: tally.connects,
        }
    }
}

/// The idle-tunnel memory of one fresh instance.
#[derive(Debug, Clone)]
pub struct MemorySample {
    pub target: usize,
    pub reached: usize,
    pub failures: u64,
    pub before_kib: u64,
    pub after_kib: u64,
    /// RSS once the first [`EARLY_TUNNELS`] were open: what is paid per tunnel early, which
    /// an average over 10,000 can hide (arenas and tables grown once, amortised later).
    pub early: Option<EarlySample>,
}

/// The checkpoint inside an idle-tunnel sample.
#[derive(Debug, Clone, Copy)]
pub struct EarlySample {
    pub reached: usize,
    pub after_kib: u64,
}

/// Where the idle-tunnel scenario reads RSS on its way to the full count.
pub const EARLY_TUNNELS: usize = 2_000;

impl MemorySample {
    pub fn per_tunnel_kib(&self) -> Option<f64> {
        per_tunnel(self.before_kib, self.after_kib, self.reached)
    }

    /// KiB per tunnel over the first [`EARLY_TUNNELS`].
    pub fn early_per_tunnel_kib(&self) -> Option<f64> {
        let early = self.early?;
        per_tunnel(self.before_kib, early.after_kib, early.reached)
    }
}

fn per_tunnel(before_kib: u64, after_kib: u64, tunnels: usize) -> Option<f64> {
    (tunnels > 0).then(|| after_kib.saturating_sub(before_kib) as f64 / tunnels as f64)
}

/// A path that was measured, with its version.
#[derive(Debug, Clone)]
pub struct Measured {
    pub kind: Kind,
    pub version: String,
    /// See [`Subject::setup`].
    pub setup: Option<String>,
}

/// Each path's repetitions of one measurement, in run order.
pub type PerPath<T> = Vec<(Kind, Vec<T>)>;

/// Everything one harness run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub settings: Settings,
    /// `RUST_LOG` of the egressd rows that log as shipped; `None`: unset, egressd's default.
    pub egressd_log: Option<String>,
    pub fd_limit: u64,
    pub measured: Vec<Measured>,
    /// Paths left out, and why.
    pub skipped: Vec<(Kind, String)>,
    pub scenarios: Vec<(Scenario, PerPath<Sample>)>,
    pub memory: PerPath<MemorySample>,
    /// The mTLS origination scenarios; `None` when egressd was not measured.
    pub mtls: Option<MtlsSection>,
    pub allowlist: allowlist::Timings,
    /// The postgres backend's database and tick lag; `None` when it was not measured.
    pub shared_state: Option<SharedState>,
    /// egressd quiet and under a flood of denials; `None` without `--denial-flood`.
    pub denial_flood: Option<FloodSection>,
}

/// The shared-state part of a run (issue 21).
#[derive(Debug, Clone)]
pub struct SharedState {
    /// The database egressd (postgres state) and the tick-lag replicas used.
    pub database: String,
    /// `None`: not measured in this run; `Err`: it failed, and why.
    pub tick_lag: Option<Result<TickLag, String>>,
}

/// Starts the paths in `kinds`, runs every scenario, and stops them again.
pub async fn run(
    settings: Settings,
    env: &Env,
    kinds: &[Kind],
    fd_limit: u64,
) -> anyhow::Result<Outcome> {
    let mut subjects = Vec::new();
    let mut skipped = Vec::new();
    for &kind in kinds {
        match start_checked(kind, env).await {
            Ok(Started::Running(subject)) => subjects.push(subject),
            Ok(Started::Missing(why)) => skipped.push((kind, why)),
            // Only a peer may be skipped; a broken reference or egressd is a failure.
            Err(err) if kind.is_reference() || kind.is_egressd() => return Err(err),
            Err(err) => skipped.push((kind, format!("failed to start: {err:#}"))),
        }
    }
    for (kind, why) in &skipped {
        eprintln!("skipping {}: {why}", kind.name());
    }
    let measured = subjects
        .iter()
        .map(|s| Measured {
            kind: s.kind,
            version: s.kind.version(env),
            setup: s.setup.clone(),
        })
        .collect();

    let mut scenarios = Vec::new();
    for scenario in Scenario::ALL {
        let subjects: Vec<&Subject> = subjects
            .iter()
            .filter(|s| scenario.runs_on(s.kind))
            .collect();
        let mut samples: PerPath<Sample> = subjects.iter().map(|s| (s.kind, Vec::new())).collect();
        for rep in 0..settings.reps {
            for (subject, (_, runs)) in subjects.iter().zip(samples.iter_mut()) {
                let sample = measure(scenario, subject, env, &settings).await;
                eprintln!(
                    "{:<20} rep {}/{} {:<24} {:>12.2} {}  errors {}",
                    scenario.label(),
                    rep + 1,
                    settings.reps,
                    subject.kind.name(),
                    sample.value,
                    scenario.unit(),
                    sample.errors
                );
                runs.push(sample);
            }
        }
        scenarios.push((scenario, samples));
    }
    let denial_flood = run_denial_flood(&subjects, env, &settings).await?;

    let memory_kinds: Vec<Kind> = subjects
        .iter()
        .map(|s| s.kind)
        .filter(|k| measures_idle_memory(*k))
        .collect();
    drop(subjects);
    let mut memory: PerPath<MemorySample> = memory_kinds.iter().map(|k| (*k, Vec::new())).collect();
    for rep in 0..settings.memory_reps {
        for (kind, runs) in memory.iter_mut() {
            let sample = idle_memory(*kind, env, settings.idle_tunnels).await?;
            eprintln!(
                "idle tunnels         rep {}/{} {:<20} {} of {} open, {:.2} KiB each",
                rep + 1,
                settings.memory_reps,
                kind.name(),
                sample.reached,
                sample.target,
                sample.per_tunnel_kib().unwrap_or(f64::NAN)
            );
            runs.push(sample);
        }
    }

    let mtls = if kinds.contains(&Kind::Egressd) {
        Some(mtls::run(&settings, env).await?)
    } else {
        None
    };

    eprintln!(
        "allowlist: timing lookups and a reload with {} entries",
        settings.allowlist_entries
    );
    let allowlist = allowlist::measure(
        settings.allowlist_entries,
        settings.allowlist_lookups,
        settings.reloads,
    )?;
    Ok(Outcome {
        egressd_log: env.egressd_log.clone(),
        settings,
        fd_limit,
        measured,
        skipped,
        scenarios,
        memory,
        mtls,
        allowlist,
        shared_state: None,
        denial_flood,
    })
}

/// The denial flood on egressd as shipped, when `settings` asks for it and egressd runs.
async fn run_denial_flood(
    subjects: &[Subject],
    env: &Env,
    settings: &Settings,
) -> anyhow::Result<Option<FloodSection>> {
    let Some(rate) = settings.denial_flood else {
        return Ok(None);
    };
    let Some(egressd) = subjects.iter().find(|s| s.kind == Kind::Egressd) else {
        eprintln!("denial flood: skipped, egressd is not among the paths measured");
        return Ok(None);
    };
    flood::measure(egressd, env, settings, rate).await.map(Some)
}

/// Whether the idle-tunnel scenario runs `kind`. Idle tunnels move no bytes, so egressd's
/// relay choice cannot show there, and neither can its state backend, which the tunnel path
/// never touches, nor its logging, which writes a line when a tunnel closes.
fn measures_idle_memory(kind: Kind) -> bool {
    !matches!(
        kind,
        Kind::Direct
            | Kind::EgressdCopy
            | Kind::EgressdPostgres
            | Kind::EgressdLogOff
            | Kind::EgressdJson
    )
}

/// Starts `kind` and proves it carries one request and one tunnel, so a misconfigured peer
/// fails here with a message instead of as a column of errors.
async fn start_checked(kind: Kind, env: &Env) -> anyhow::Result<Started> {
    let subject = match kind.start(env)? {
        Started::Running(subject) => subject,
        missing @ Started::Missing(_) => return Ok(missing),
    };
    for scenario in [Scenario::KeepAlive, Scenario::NewTunnels] {
        let tally = load::smoke(|window| scenario.drive(&subject, env, window)).await;
        if tally.ops == 0 || tally.errors > 0 {
            anyhow::bail!(
                "{} failed its smoke check ({}: {} ok, {} errors)",
                kind.name(),
                scenario.label(),
                tally.ops,
                tally.errors
            );
        }
    }
    Ok(Started::Running(subject))
}

async fn measure(scenario: Scenario, subject: &Subject, env: &Env, settings: &Settings) -> Sample {
    let window = Window::after_warmup(settings.warmup, settings.measure);
    measure_in(scenario, subject, env, window).await
}

/// One run of `scenario` on `subject` inside `window`.
pub(crate) async fn measure_in(
    scenario: Scenario,
    subject: &Subject,
    env: &Env,
    window: Window,
) -> Sample {
    let usage = subject
        .pid()
        .map(|pid| tokio::spawn(usage_during(pid, window)));
    let tally = scenario.drive(subject, env, window).await;
    let usage = match usage {
        Some(handle) => handle.await.ok().flatten(),
        None => None,
    };
    let seconds = window.seconds();
    let (value, ops) = match scenario {
        Scenario::Bulk1 | Scenario::Bulk4 => (
            tally.bytes as f64 * 8.0 / seconds / 1e9,
            tally.bytes as f64 / 1e9,
        ),
        _ => (tally.ops as f64 / seconds, tally.ops as f64),
    };
    // Seconds per op, shown as µs per request/tunnel or ms per GB.
    let scale = if scenario.cost_unit() == "ms/GB" {
        1e3
    } else {
        1e6
    };
    let latency = scenario.has_latency();
    Sample::of_run(value, ops, scale, tally, usage, &window, latency)
}

/// What a process spent inside a window.
pub(crate) struct Usage {
    pub(crate) cpu_seconds: f64,
    /// Context switches, voluntary and involuntary, over all its threads.
    switches: u64,
}

/// What `pid` spends inside `window`.
pub(crate) async fn usage_during(pid: u32, window: Window) -> Option<Usage> {
    tokio::time::sleep_until(window.from).await;
    let cpu = peers::cpu_seconds(pid).ok()?;
    let switches = peers::Switches::of(pid).ok()?;
    tokio::time::sleep_until(window.until).await;
    Some(Usage {
        cpu_seconds: peers::cpu_seconds(pid).ok()? - cpu,
        switches: peers::Switches::of(pid).ok()?.since(&switches),
    })
}

/// Opens `count` idle tunnels through a fresh instance of `kind` and reads its RSS before
/// and after.
async fn idle_memory(kind: Kind, env: &Env, count: usize) -> anyhow::Result<MemorySample> {
    let Started::Running(subject) = kind.start(env)? else {
        anyhow::bail!("{} vanished between scenarios", kind.name());
    };
    let pid = subject
        .pid()
        .expect("only paths with a process are measured");
    let target = Arc::new(subject.route.tunnel_target(env.upstream));
    // Warm up: first tunnels pay for lazily created runtime and allocator state.
    let (warm, _) = load::open_idle(
        target.clone(),
        64,
        16,
        Instant::now() + Duration::from_secs(10),
    )
    .await;
    load::close_idle(warm).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_kib = peers::rss_kib(pid)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = count.min(EARLY_TUNNELS);
    let (mut held, mut failures) = load::open_idle(target.clone(), first, 64, deadline).await;
    // Let queued work settle before reading each figure.
    let settle = Duration::from_millis(500);
    tokio::time::sleep(settle).await;
    let early = (count > first).then_some(EarlySample {
        reached: held.len(),
        after_kib: peers::rss_kib(pid)?,
    });
    if count > first {
        let (rest, more_failures) = load::open_idle(target, count - first, 64, deadline).await;
        held.extend(rest);
        failures += more_failures;
        tokio::time::sleep(settle).await;
    }
    let after_kib = peers::rss_kib(pid)?;
    let reached = held.len();
    load::close_idle(held).await;
    Ok(MemorySample {
        target: count,
        reached,
        failures,
        before_kib,
        after_kib,
        early,
    })
}

/// A quick comparison for A/B runs and profiling: only `chosen` scenarios, each path's median
/// with its CPU and context switches per operation, printed; nothing written.
pub async fn run_focused(
    settings: Settings,
    env: &Env,
    kinds: &[Kind],
    chosen: &[Scenario],
    idle_tunnels: bool,
) -> anyhow::Result<()> {
    let mut subjects = Vec::new();
    for &kind in kinds {
        match start_checked(kind, env).await? {
            Started::Running(subject) => subjects.push(subject),
            Started::Missing(why) => eprintln!("skipping {}: {why}", kind.name()),
        }
    }
    for &scenario in chosen {
        let subjects: Vec<&Subject> = subjects
            .iter()
            .filter(|s| scenario.runs_on(s.kind))
            .collect();
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); subjects.len()];
        for _ in 0..settings.reps {
            for (subject, runs) in subjects.iter().zip(samples.iter_mut()) {
                runs.push(measure(scenario, subject, env, &settings).await);
            }
        }
        for (subject, runs) in subjects.iter().zip(&samples) {
            let median = |f: &dyn Fn(&Sample) -> Option<f64>| {
                let mut v: Vec<f64> = runs.iter().filter_map(f).collect();
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
            };
            println!(
                "{:<16} {:<24} {:>12.2} {:<8} p50 {:>7.0} µs  cpu/op {:>8.1}  ctxsw/op {:>6.2}  errors {}",
                scenario.key(),
                subject.kind.name(),
                median(&|s| Some(s.value)),
                scenario.unit(),
                median(&|s| s.latency.as_ref().map(|l| l.p50)),
                median(&|s| s.cpu_per_op),
                median(&|s| s.switches_per_op),
                runs.iter().map(|s| s.errors).sum::<u64>(),
            );
        }
        print_backend_comparison(scenario, &subjects, &samples);
    }
    if let Some(section) = run_denial_flood(&subjects, env, &settings).await? {
        let mut md = String::new();
        report::denial_flood_section(&mut md, &section);
        println!("\n{md}");
    }
    // Only those that started: a missing peer has no idle memory to measure.
    let started: Vec<Kind> = subjects.iter().map(|s| s.kind).collect();
    drop(subjects);
    if idle_tunnels {
        for &kind in started.iter().filter(|k| measures_idle_memory(**k)) {
            for _ in 0..settings.memory_reps {
                let sample = idle_memory(kind, env, settings.idle_tunnels).await?;
                println!(
                    "idle-tunnels     {:<20} {} of {} open, {:.2} KiB each ({:.2} over the first {})",
                    kind.name(),
                    sample.reached,
                    sample.target,
                    sample.per_tunnel_kib().unwrap_or(f64::NAN),
                    sample.early_per_tunnel_kib().unwrap_or(f64::NAN),
                    EARLY_TUNNELS
                );
            }
        }
    }
    Ok(())
}

/// In an A/B of the state backends, the postgres ÷ file ratio of the medians and whether it is
/// within the noise of the repetitions (see [`report::Comparison`]).
fn print_backend_comparison(scenario: Scenario, subjects: &[&Subject], samples: &[Vec<Sample>]) {
    let values = |kind: Kind| {
        subjects
            .iter()
            .zip(samples)
            .find(|(s, _)| s.kind == kind)
            .map(|(_, runs)| runs.iter().map(|r| r.value).collect::<Vec<f64>>())
    };
    let (Some(file), Some(postgres)) = (values(Kind::Egressd), values(Kind::EgressdPostgres))
    else {
        return;
    };
    if let Some(c) = report::Comparison::of(&file, &postgres) {
        println!(
            "{:<16} postgres ÷ file {:.3}×, noise ±{:.1} % → {}",
            scenario.key(),
            c.ratio,
            c.noise.map_or(f64::NAN, |n| n * 100.0),
            c.verdict_text()
        );
    }
}
