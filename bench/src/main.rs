//! `egressd-bench`: parses arguments and wires. Without a subcommand it runs the benchmark;
//! `tick-lag` measures the scheduler's tick lag with several replicas on one PostgreSQL; the
//! hidden `upstream`, `mtls-upstream` and `relay` subcommands are the harness's own child
//! processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use egressd_bench::peers::{self, Env, Kind};
use egressd_bench::postgres::Postgres;
use egressd_bench::relay::{self, RelayKind};
use egressd_bench::report::{self, Context};
use egressd_bench::scenarios::{self, Scenario, Settings, SharedState};
use egressd_bench::ticklag::{self, TickLagSettings};
use egressd_bench::upstream::{self, TlsUpstreamAddrs, UpstreamAddrs};
use egressd_bench::{chart, flood, pki, LOOPBACK};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "egressd-bench",
    about = "Benchmarks egressd against squid, tinyproxy, Traffic Server, Apache httpd, g3proxy, a plain TCP relay and the direct path, on loopback"
)]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct RunArgs {
    /// Smoke run of every scenario (under a minute). Writes files only when --out/--chart say
    /// where.
    #[arg(long)]
    quick: bool,
    /// Markdown report [default: BENCHMARKS.md at the repository root; none with --quick].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Ratio chart [default: bench/ratios.png; a temporary file with --quick].
    #[arg(long)]
    chart: Option<PathBuf>,
    /// The egressd binary to measure [default: `cargo build --release` it first and use
    /// target/release/egressd].
    #[arg(long)]
    egressd: Option<PathBuf>,
    /// RUST_LOG for the egressd rows that log as shipped (all but "egressd (access log off)",
    /// which always runs with `warn`) [default: unset, egressd's own default: `info`, access
    /// log on].
    #[arg(long, value_name = "FILTER")]
    egressd_log: Option<String>,
    /// Measure only these proxies (comma separated: egressd, egressd-log-off, egressd-json,
    /// egressd-postgres, egressd-copy, squid, tinyproxy, trafficserver, apache2, g3proxy);
    /// `egressd` brings `egressd-log-off` (the access log off, the reference for the log's
    /// cost) and `egressd-copy` (egressd with its copy relay, bulk scenarios only) along.
    /// Direct and the two relays always run. `egressd-postgres` needs --egressd-postgres or
    /// --egressd-postgres-url.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The g3proxy binary to measure (an opt-in peer built from bytedance/g3's source)
    /// [default: `g3proxy` on PATH, else skipped].
    #[arg(long, value_name = "PATH")]
    g3proxy: Option<PathBuf>,
    /// Repetitions per scenario and path [default: 3, or 1 with --quick].
    #[arg(long)]
    reps: Option<usize>,
    /// Measured seconds per run [default: 2, or 0.3 with --quick].
    #[arg(long)]
    seconds: Option<f64>,
    /// An extra `[proxy]` line for egressd's config (repeatable), e.g. `--egressd-proxy
    /// 'workers = 1'`, for A/B runs with --scenario.
    #[arg(long)]
    egressd_proxy: Vec<String>,
    /// Only these scenarios (comma separated: keep-alive, per-request, bulk-1, bulk-4,
    /// new-tunnels, idle-tunnels), for A/B runs and profiling: medians with CPU and context switches per
    /// operation are printed, and no report is written.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Also measure egressd with `[state] backend = "postgres"` ("egressd (postgres state)")
    /// on a throwaway PostgreSQL the harness starts from the server binaries on this machine
    /// and removes afterwards; a full run then also measures the tick lag of three replicas.
    #[arg(long, conflicts_with = "egressd_postgres_url")]
    egressd_postgres: bool,
    /// Like --egressd-postgres, on an existing database (postgres://…, no TLS); egressd
    /// writes its schema and state there.
    #[arg(long, value_name = "URL")]
    egressd_postgres_url: Option<String>,
    /// Also measure egressd as shipped in keep-alive and new tunnels quiet and under a flood
    /// of requests its allowlist refuses, each to a host never asked for before (the worst
    /// case for its book of recent denials), alternated in every repetition, then the flood
    /// alone for egressd's CPU per refusal. With --scenario the section is printed.
    #[arg(long)]
    denial_flood: bool,
    /// Refusals per second the denial flood asks for.
    #[arg(
        long,
        value_name = "PER_SECOND",
        default_value_t = flood::DEFAULT_RATE,
        requires = "denial_flood"
    )]
    denial_flood_rate: u32,
    /// Minute boundaries the tick-lag measurement waits for, with the postgres backend
    /// [default: 3 in a full run; 0, meaning none, with --quick or --scenario].
    #[arg(long, value_name = "N")]
    tick_lag_minutes: Option<u32>,
}

#[derive(Args)]
struct TickLagArgs {
    /// The egressd binary [default: `cargo build --release` it first and use
    /// target/release/egressd].
    #[arg(long)]
    egressd: Option<PathBuf>,
    /// An existing database (postgres://…, no TLS) instead of a throwaway PostgreSQL; the
    /// schedules created are deleted at the end.
    #[arg(long, value_name = "URL")]
    postgres_url: Option<String>,
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Every-minute schedules to create.
    #[arg(long, default_value_t = 10)]
    schedules: usize,
    /// Minute boundaries to wait for.
    #[arg(long, default_value_t = 3)]
    minutes: u32,
}

#[derive(Subcommand)]
enum Role {
    /// Tick lag of egressd replicas sharing their schedules in one PostgreSQL: starts a
    /// throwaway server (or uses --postgres-url), the replicas and a function upstream,
    /// creates every-minute schedules, waits for minute boundaries, and prints the lag
    /// percentiles and whether each tick was invoked once.
    TickLag(TickLagArgs),
    /// Serve the upstream (HTTP and TCP) and print its addresses.
    #[command(hide = true)]
    Upstream,
    /// Serve HTTP over TLS requiring client certificates, with the certificates in `--pki`,
    /// and print its addresses.
    #[command(hide = true)]
    MtlsUpstream {
        #[arg(long)]
        pki: PathBuf,
    },
    /// Relay one loopback port per target and print the ports, in order.
    #[command(hide = true)]
    Relay {
        #[arg(long = "to", required = true)]
        targets: Vec<SocketAddr>,
        /// Move bytes with splice(2) instead of read/write.
        #[arg(long)]
        splice: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.role {
        Some(Role::Upstream) => serve_child(|| async {
            let http = TcpListener::bind((LOOPBACK, 0)).await?;
            let tcp = TcpListener::bind((LOOPBACK, 0)).await?;
            let addrs = UpstreamAddrs {
                http: http.local_addr()?,
                tcp: tcp.local_addr()?,
            };
            Ok((addrs.to_line(), upstream::serve(http, tcp)))
        }),
        Some(Role::MtlsUpstream { pki }) => serve_child(|| async move {
            let resuming = pki::server_config(&pki, true)?;
            let refusing = pki::server_config(&pki, false)?;
            let keep_alive = TcpListener::bind((LOOPBACK, 0)).await?;
            let close = TcpListener::bind((LOOPBACK, 0)).await?;
            let close_full = TcpListener::bind((LOOPBACK, 0)).await?;
            let addrs = TlsUpstreamAddrs {
                keep_alive: keep_alive.local_addr()?,
                close: close.local_addr()?,
                close_full: close_full.local_addr()?,
            };
            let serve = async move {
                tokio::join!(
                    upstream::serve_tls(keep_alive, resuming.clone(), false),
                    upstream::serve_tls(close, resuming, true),
                    upstream::serve_tls(close_full, refusing, true),
                );
            };
            Ok((addrs.to_line(), serve))
        }),
        Some(Role::Relay { targets, splice }) => serve_child(|| async move {
            let kind = if splice {
                RelayKind::Splice
            } else {
                RelayKind::Copy
            };
            let mut listeners = Vec::new();
            for target in targets {
                listeners.push((TcpListener::bind((LOOPBACK, 0)).await?, target));
            }
            let line = listeners
                .iter()
                .map(|(l, _)| l.local_addr().map(|a| a.to_string()))
                .collect::<Result<Vec<_>, _>>()?
                .join(" ");
            let serve = serve_relays(listeners, kind);
            Ok((line, serve))
        }),
        Some(Role::TickLag(args)) => run_tick_lag(args),
        None => run_harness(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("egressd-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Serves every relay listener until the process exits.
async fn serve_relays(listeners: Vec<(TcpListener, SocketAddr)>, kind: RelayKind) {
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, target) in listeners {
        tasks.spawn(relay::serve(listener, target, kind));
    }
    while tasks.join_next().await.is_some() {}
}

/// Runs a child role on a multi-threaded runtime: binds, prints its addresses as one line,
/// serves until the harness closes our stdin (or dies, which closes it too).
fn serve_child<B, BF, S>(bind: B) -> anyhow::Result<()>
where
    B: FnOnce() -> BF,
    BF: std::future::Future<Output = anyhow::Result<(String, S)>>,
    S: std::future::Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (line, serve) = bind().await?;
        println!("{line}");
        tokio::spawn(serve);
        tokio::task::spawn_blocking(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        })
        .await?;
        Ok(())
    })
}

fn run_harness(args: RunArgs) -> anyhow::Result<()> {
    let mut settings = if args.quick {
        Settings::quick()
    } else {
        Settings::full()
    };
    if let Some(reps) = args.reps {
        settings.reps = reps.max(1);
    }
    if let Some(seconds) = args.seconds {
        settings.measure = std::time::Duration::from_secs_f64(seconds);
    }
    if args.denial_flood {
        anyhow::ensure!(
            args.denial_flood_rate > 0,
            "--denial-flood-rate must be above 0"
        );
        settings.denial_flood = Some(args.denial_flood_rate);
    }
    // Started here, on the main thread, which lives as long as the harness: the server's
    // parent-death signal follows the thread that started it.
    let postgres = open_postgres(args.egressd_postgres_url.as_deref(), args.egressd_postgres)?;
    let kinds = selected_kinds(&args.only, postgres.is_some())?;
    let state_url = match &postgres {
        Some(pg) => Some(pg.database("egressd_bench")?),
        None => None,
    };
    let state_database = postgres.as_ref().map(Postgres::describe);
    let default_minutes = if args.quick || !args.scenario.is_empty() {
        0
    } else {
        TickLagSettings::default().minutes
    };
    let tick_lag_minutes = args.tick_lag_minutes.unwrap_or(default_minutes);
    let fd_limit = raise_fd_limit(settings.idle_tunnels);
    // A proxy holds two descriptors per tunnel, plus its listeners, logs and spare room.
    let fit = (fd_limit as usize).saturating_sub(256) / 2;
    settings.idle_tunnels = settings.idle_tunnels.min(fit);
    let egressd = match args.egressd {
        Some(path) => path,
        None => build_egressd()?,
    };
    let root = peers::workspace_root();
    let out = match (&args.out, args.quick) {
        (Some(out), _) => Some(out.clone()),
        (None, false) => Some(root.join("BENCHMARKS.md")),
        (None, true) => None,
    };
    // In quick mode the chart is still drawn, to a temp dir, so rendering cannot rot.
    let scratch = tempfile::tempdir()?;
    let chart_path = match (&args.chart, args.quick) {
        (Some(chart), _) => chart.clone(),
        (None, false) => root.join("bench").join("ratios.png"),
        (None, true) => scratch.path().join("ratios.png"),
    };
    if !args.scenario.is_empty() {
        let idle = args.scenario.iter().any(|s| s == "idle-tunnels");
        let named: Vec<String> = args
            .scenario
            .iter()
            .filter(|s| *s != "idle-tunnels")
            .cloned()
            .collect();
        let chosen = selected_scenarios(&named)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(async {
            let (upstream_process, line) =
                peers::spawn_harness_child(&std::env::current_exe()?, "upstream", &[])?;
            let env = Env {
                upstream: UpstreamAddrs::from_line(&line)?,
                harness: std::env::current_exe()?,
                egressd,
                egressd_log: args.egressd_log.clone(),
                egressd_proxy: args.egressd_proxy.clone(),
                state_url,
                state_database,
                g3proxy: args.g3proxy.clone(),
            };
            let done = scenarios::run_focused(settings, &env, &kinds, &chosen, idle).await;
            drop(upstream_process);
            done?;
            if let Some(pg) = &postgres {
                if let Some(lag) = tick_lag(pg, &env.egressd, tick_lag_minutes).await {
                    println!("{}", lag.map_err(|e| anyhow::anyhow!(e))?.summary());
                }
            }
            Ok(())
        });
    }
    let mut context = Context::gather(invocation());
    let harness = std::env::current_exe()?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        let (upstream_process, line) = peers::spawn_harness_child(&harness, "upstream", &[])?;
        let env = Env {
            upstream: UpstreamAddrs::from_line(&line)?,
            harness,
            egressd,
            egressd_log: args.egressd_log.clone(),
            egressd_proxy: args.egressd_proxy.clone(),
            state_url,
            state_database,
            g3proxy: args.g3proxy.clone(),
        };
        let outcome = scenarios::run(settings, &env, &kinds, fd_limit).await;
        drop(upstream_process);
        let mut outcome = outcome?;
        if let Some(pg) = &postgres {
            outcome.shared_state = Some(SharedState {
                database: pg.describe(),
                tick_lag: tick_lag(pg, &env.egressd, tick_lag_minutes).await,
            });
        }
        anyhow::Ok(outcome)
    })?;

    chart::render(&outcome, &chart_path).context("drawing the chart")?;
    let link = out
        .as_deref()
        .and_then(Path::parent)
        .and_then(|dir| chart_path.strip_prefix(dir).ok())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| chart_path.display().to_string());
    context.finish();
    // The file this run replaces, for the shared-state section a run without the postgres
    // backend keeps.
    let previous = out.as_deref().and_then(|o| std::fs::read_to_string(o).ok());
    let markdown = report::markdown(&outcome, &context, Some(&link), previous.as_deref());
    println!("{markdown}");
    if let Some(out) = out {
        std::fs::write(&out, &markdown).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {} and {}", out.display(), chart_path.display());
    } else {
        eprintln!(
            "quick run: chart drawn to {} (no report written; pass --out to keep one)",
            chart_path.display()
        );
    }
    Ok(())
}

fn selected_scenarios(names: &[String]) -> anyhow::Result<Vec<Scenario>> {
    names
        .iter()
        .map(|name| {
            Scenario::ALL
                .into_iter()
                .find(|s| s.key() == name)
                .with_context(|| {
                    let keys: Vec<&str> = Scenario::ALL.iter().map(|s| s.key()).collect();
                    format!(
                        "unknown scenario {name:?} (choose from {})",
                        keys.join(", ")
                    )
                })
        })
        .collect()
}

/// The paths to run: `only`'s (all without it) and the references; egressd (postgres state)
/// only when `database` says there is one to run it on.
fn selected_kinds(only: &[String], database: bool) -> anyhow::Result<Vec<Kind>> {
    let choices: Vec<&str> = Kind::ALL
        .iter()
        .filter(|k| !k.is_reference())
        .map(|k| k.key())
        .collect();
    for name in only {
        anyhow::ensure!(
            choices.contains(&name.as_str()),
            "unknown path {name:?} in --only (choose from {})",
            choices.join(", ")
        );
    }
    let asked = |key: &str| only.iter().any(|n| n == key);
    anyhow::ensure!(
        database || !asked(Kind::EgressdPostgres.key()),
        "egressd-postgres in --only needs a database: --egressd-postgres (a throwaway \
         PostgreSQL) or --egressd-postgres-url URL"
    );
    Ok(Kind::ALL
        .into_iter()
        .filter(|k| *k != Kind::EgressdPostgres || database)
        .filter(|k| {
            k.is_reference()
                || only.is_empty()
                || asked(k.key())
                || (matches!(k, Kind::EgressdLogOff | Kind::EgressdCopy)
                    && asked(Kind::Egressd.key()))
        })
        .collect())
}

/// The database for the postgres backend: an existing one at `url`, a throwaway server when
/// `throwaway`, or none.
fn open_postgres(url: Option<&str>, throwaway: bool) -> anyhow::Result<Option<Postgres>> {
    match (url, throwaway) {
        (Some(url), _) => Postgres::existing(url).map(Some),
        (None, true) => Postgres::throwaway().map(Some),
        (None, false) => Ok(None),
    }
}

/// Tick lag of three replicas on a database of its own on `pg`, or `None` when `minutes` is
/// 0. A failure is kept as text: the report says so instead of losing the run's other
/// figures.
async fn tick_lag(
    pg: &Postgres,
    egressd: &Path,
    minutes: u32,
) -> Option<Result<ticklag::TickLag, String>> {
    if minutes == 0 {
        return None;
    }
    let settings = TickLagSettings {
        minutes,
        ..TickLagSettings::default()
    };
    let measured = async {
        let url = pg.database("egressd_tick_lag")?;
        ticklag::measure(egressd, &url, settings).await
    }
    .await;
    match &measured {
        Ok(lag) => eprintln!("{}", lag.summary()),
        Err(err) => eprintln!("tick lag failed: {err:#}"),
    }
    Some(measured.map_err(|e| format!("{e:#}")))
}

/// `egressd-bench tick-lag`: prints the figures; writes nothing.
fn run_tick_lag(args: TickLagArgs) -> anyhow::Result<()> {
    let egressd = match args.egressd {
        Some(path) => path,
        None => build_egressd()?,
    };
    // On the main thread, as in run_harness.
    let postgres = match &args.postgres_url {
        Some(url) => Postgres::existing(url)?,
        None => Postgres::throwaway()?,
    };
    let url = postgres.database("egressd_tick_lag")?;
    let settings = TickLagSettings {
        replicas: args.replicas,
        schedules: args.schedules,
        minutes: args.minutes,
    };
    let load_before = report::load_average();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let lag = runtime.block_on(ticklag::measure(&egressd, &url, settings))?;
    println!("database: {}", postgres.describe());
    println!(
        "load average (1 min): {load_before} at start, {} at end",
        report::load_average()
    );
    println!("{}", lag.summary());
    let pass = lag
        .p99_ms()
        .is_some_and(|p99| p99 <= ticklag::TARGET_P99_MS)
        && lag.once_each();
    println!(
        "target p99 ≤ {} ms with each tick once: {}",
        ticklag::TARGET_P99_MS,
        if pass { "pass" } else { "miss" }
    );
    Ok(())
}

/// The command line as a user would type it, for the report.
fn invocation() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut command = "cargo run --release -p egressd-bench".to_string();
    if !args.is_empty() {
        command.push_str(" -- ");
        command.push_str(&args.join(" "));
    }
    command
}

/// Lifts the open-files limit so the idle-tunnel scenario can hold its tunnels: the proxy
/// needs two descriptors per tunnel, the client and the upstream one each. Children inherit
/// the limit. Returns the soft limit in force.
fn raise_fd_limit(tunnels: usize) -> u64 {
    use rlimit::Resource;
    let want = (tunnels as u64 * 2 + 4096).max(65_536);
    if let Ok((soft, hard)) = Resource::NOFILE.get() {
        if soft >= want {
            return soft;
        }
        // Raising the hard limit needs root; otherwise take what the hard limit allows.
        if Resource::NOFILE.set(want, want.max(hard)).is_err() {
            let _ = Resource::NOFILE.set(hard, hard);
        }
    }
    Resource::NOFILE.get().map_or(0, |(soft, _)| soft)
}

/// Builds the egressd binary in release mode and returns its path.
fn build_egressd() -> anyhow::Result<PathBuf> {
    let root = peers::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building egressd (release)…");
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "-p", "egressd", "--bin", "egressd"])
        .status()
        .context("running cargo build")?;
    anyhow::ensure!(status.success(), "cargo build of egressd failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join("egressd"))
}
