//! Tick lag with several egressd replicas on one database (issue 21).
//!
//! Starts a function upstream (HTTP on loopback, answers 200 and notes which schedule and
//! tick each invocation was for), then `replicas` × `egressd run` with
//! `[state] backend = "postgres"` on the same database, creates `schedules` every-minute
//! schedules through their admin APIs (in turn, so the schedules are shared, not local), and
//! waits for `minutes` minute boundaries. The lag of a run is the `lag_ms` of its
//! `scheduled run` log line: milliseconds from the nominal time to the start of the
//! invocation, after the replica claimed the tick in the run ledger. The function upstream
//! checks that each (schedule, tick) was invoked exactly once across the replicas.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::http1::{head_len, Head};
use crate::peers::{self, free_port, Process};
use crate::LOOPBACK;

/// The name the replicas are told maps to the function upstream.
const FUNCTION_HOST: &str = "fn.test";
/// How long after the last boundary the runs have to finish and log (they take
/// milliseconds; the rest is slack for a loaded machine).
const SETTLE: Duration = Duration::from_secs(10);
/// Schedules are not created closer than this to a minute boundary, so none of them is
/// created while its first tick is being handled.
const BOUNDARY_MARGIN: u64 = 10;
/// How long a replica may take to answer `/readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The goal from issue 21.
pub const TARGET_P99_MS: i64 = 50;

#[derive(Debug, Clone, Copy)]
pub struct TickLagSettings {
    pub replicas: usize,
    pub schedules: usize,
    /// Minute boundaries to wait for.
    pub minutes: u32,
}

impl Default for TickLagSettings {
    fn default() -> Self {
        TickLagSettings {
            replicas: 3,
            schedules: 10,
            minutes: 3,
        }
    }
}

/// What one measurement found.
#[derive(Debug, Clone)]
pub struct TickLag {
    pub settings: TickLagSettings,
    /// Lags of the runs the replicas logged for our (schedule, tick)s, ascending, in ms.
    pub lags_ms: Vec<i64>,
    /// The same lags per tick (Unix seconds), ascending, with the replica (its index) that
    /// fired them, in tick order: shows how lag grows with the schedules due together.
    pub by_tick: Vec<(u64, Vec<(i64, usize)>)>,
    /// Runs each replica fired, in replica order.
    pub per_replica: Vec<usize>,
    /// Logged runs whose outcome was not `Success`.
    pub failed: usize,
    /// (schedule, tick) pairs expected: schedules × minutes.
    pub expected: usize,
    /// Invocations the function upstream received for those pairs.
    pub invocations: usize,
    /// Pairs invoked more than once.
    pub duplicates: usize,
    /// Pairs never invoked.
    pub missing: usize,
}

impl TickLag {
    /// The `q` quantile (0..=1) of the lags, as [`crate::scenarios::Percentiles`] takes it:
    /// the sample at index ⌊n·q⌋.
    pub fn quantile_ms(&self, q: f64) -> Option<i64> {
        let n = self.lags_ms.len();
        (n > 0).then(|| self.lags_ms[((n as f64 * q) as usize).min(n - 1)])
    }

    pub fn p50_ms(&self) -> Option<i64> {
        self.quantile_ms(0.5)
    }

    pub fn p99_ms(&self) -> Option<i64> {
        self.quantile_ms(0.99)
    }

    pub fn max_ms(&self) -> Option<i64> {
        self.lags_ms.last().copied()
    }

    /// Every expected tick fired once, as a success.
    pub fn once_each(&self) -> bool {
        self.duplicates == 0
            && self.missing == 0
            && self.failed == 0
            && self.lags_ms.len() == self.expected
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let ms = |v: Option<i64>| v.map_or("–".into(), |v| format!("{v} ms"));
        format!(
            "tick lag: {} runs (of {} expected), p50 {}, p99 {}, max {}; function invoked {} \
             times, {} (schedule, tick) twice, {} missing, {} failed; runs per replica {:?}; \
             lags (ms, ascending) {:?}",
            self.lags_ms.len(),
            self.expected,
            ms(self.p50_ms()),
            ms(self.p99_ms()),
            ms(self.max_ms()),
            self.invocations,
            self.duplicates,
            self.missing,
            self.failed,
            self.per_replica,
            self.lags_ms
        )
    }
}

/// Runs the measurement against the database at `url`.
pub async fn measure(
    egressd: &Path,
    url: &str,
    settings: TickLagSettings,
) -> anyhow::Result<TickLag> {
    anyhow::ensure!(
        settings.replicas > 0 && settings.schedules > 0 && settings.minutes > 0,
        "tick lag needs at least one replica, schedule and minute"
    );
    let function = FunctionUpstream::start().await?;
    let mut replicas = Vec::new();
    for n in 0..settings.replicas {
        let replica = Replica::start(egressd, url, function.addr.port())
            .with_context(|| format!("starting replica {}", n + 1))?;
        replicas.push(replica);
    }
    for replica in &replicas {
        replica.wait_ready().await?;
    }
    // Clear of the next boundary, so every schedule's first tick is the same one.
    if secs_to_next_minute(unix_now()) < BOUNDARY_MARGIN {
        tokio::time::sleep(Duration::from_secs(BOUNDARY_MARGIN + 1)).await;
    }
    let mut ids = Vec::new();
    for n in 0..settings.schedules {
        ids.push(replicas[n % replicas.len()].create_schedule(n).await?);
    }
    let now = unix_now();
    let first = now + secs_to_next_minute(now);
    let ticks: Vec<u64> = (0..settings.minutes as u64)
        .map(|k| first + 60 * k)
        .collect();
    eprintln!(
        "tick lag: {} schedules on {} replicas; waiting for {} minute boundaries (until {} s after the last)",
        ids.len(),
        replicas.len(),
        ticks.len(),
        SETTLE.as_secs()
    );
    for tick in &ticks {
        sleep_until_unix(*tick, Duration::ZERO).await;
        eprintln!("tick lag: boundary {tick} (unix s)");
    }
    sleep_until_unix(*ticks.last().expect("minutes > 0"), SETTLE).await;
    for id in &ids {
        if let Err(err) = replicas[0].delete_schedule(id).await {
            eprintln!("tick lag: cannot delete schedule {id}: {err:#}");
        }
    }
    let logs = replicas
        .iter()
        .map(Replica::runs)
        .collect::<anyhow::Result<Vec<_>>>()?;
    drop(replicas);
    let invoked = function.received();
    Ok(tally(settings, &ids, &ticks, &logs, &invoked))
}

/// A run as its replica logged it.
#[derive(Debug, Clone, PartialEq)]
struct LoggedRun {
    schedule: String,
    /// Nominal time, Unix seconds.
    tick: u64,
    lag_ms: i64,
    success: bool,
}

/// Counts what the logs and the function upstream say about our (schedule, tick) pairs.
fn tally(
    settings: TickLagSettings,
    ids: &[String],
    ticks: &[u64],
    logs: &[Vec<LoggedRun>],
    invoked: &[(String, u64)],
) -> TickLag {
    let ours =
        |schedule: &str, tick: u64| ids.iter().any(|id| id == schedule) && ticks.contains(&tick);
    let mut lags_ms = Vec::new();
    let mut failed = 0;
    let mut per_replica = Vec::new();
    let mut by_tick: Vec<(u64, Vec<(i64, usize)>)> =
        ticks.iter().map(|t| (*t, Vec::new())).collect();
    for (replica, runs) in logs.iter().enumerate() {
        let mine: Vec<&LoggedRun> = runs.iter().filter(|r| ours(&r.schedule, r.tick)).collect();
        per_replica.push(mine.len());
        for run in mine {
            lags_ms.push(run.lag_ms);
            failed += usize::from(!run.success);
            if let Some((_, lags)) = by_tick.iter_mut().find(|(t, _)| *t == run.tick) {
                lags.push((run.lag_ms, replica));
            }
        }
    }
    lags_ms.sort_unstable();
    for (_, lags) in &mut by_tick {
        lags.sort_unstable();
    }
    let mut counts: HashMap<(&str, u64), usize> = HashMap::new();
    for (schedule, tick) in invoked.iter().filter(|(s, t)| ours(s, *t)) {
        *counts.entry((schedule.as_str(), *tick)).or_default() += 1;
    }
    let expected: BTreeSet<(&str, u64)> = ids
        .iter()
        .flat_map(|id| ticks.iter().map(move |t| (id.as_str(), *t)))
        .collect();
    TickLag {
        settings,
        lags_ms,
        by_tick,
        per_replica,
        failed,
        expected: expected.len(),
        invocations: counts.values().sum(),
        duplicates: counts.values().filter(|n| **n > 1).count(),
        missing: expected.iter().filter(|p| !counts.contains_key(p)).count(),
    }
}

/// One `egressd run` with the shared state in the database.
struct Replica {
    admin: SocketAddr,
    process: Process,
}

impl Replica {
    fn start(egressd: &Path, url: &str, function_port: u16) -> anyhow::Result<Replica> {
        let dir = tempfile::tempdir()?;
        let addr = SocketAddr::new(LOOPBACK, free_port()?);
        let admin = SocketAddr::new(LOOPBACK, free_port()?);
        let url_file = peers::write_url_file(dir.path(), url)?;
        let config = replica_config(addr, admin, dir.path(), function_port, &url_file);
        let path = dir.path().join("egressd.toml");
        std::fs::write(&path, config)?;
        let mut command = with_pdeathsig(egressd);
        command
            .args(["--log-format", "json", "run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info");
        let (_, process) = peers::spawn_daemon("egressd", command, dir, addr)?;
        Ok(Replica { admin, process })
    }

    /// Waits for `/readyz` to answer 200: the replica reached the database.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let answer = admin_request(self.admin, "GET", "/readyz", None).await;
            if matches!(answer, Ok((200, _))) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "replica on {} not ready within {READY_TIMEOUT:?}: {answer:?}",
                    self.admin
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates an every-minute schedule; returns its id.
    async fn create_schedule(&self, n: usize) -> anyhow::Result<String> {
        let body =
            format!(r#"{{"function": "tick", "cron": "* * * * *", "payload": "{{\"n\": {n}}}"}}"#);
        let (status, answer) = admin_request(self.admin, "POST", "/v1/schedules", Some(&body))
            .await
            .context("POST /v1/schedules")?;
        anyhow::ensure!(status == 201, "POST /v1/schedules: {status} {answer}");
        let json: serde_json::Value = serde_json::from_str(&answer)
            .with_context(|| format!("POST /v1/schedules answered {answer:?}"))?;
        json["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no id in {answer}"))
    }

    /// Deletes a schedule, so a database that outlives the run is left without it.
    async fn delete_schedule(&self, id: &str) -> anyhow::Result<()> {
        let path = format!("/v1/schedules/{id}");
        let (status, answer) = admin_request(self.admin, "DELETE", &path, None).await?;
        anyhow::ensure!((200..300).contains(&status), "{status} {answer}");
        Ok(())
    }

    /// The `scheduled run` lines of its log.
    fn runs(&self) -> anyhow::Result<Vec<LoggedRun>> {
        let dir = self.process.dir().context("a replica has a directory")?;
        let path = dir.join("stderr.log");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text.lines().filter_map(parse_run).collect())
    }
}

/// `program`, killed when the harness dies if `setpriv` is there: a replica left behind
/// would go on polling the database. Called on the thread that lives as long as the harness
/// (the signal follows the thread that forked).
fn with_pdeathsig(program: &Path) -> Command {
    match peers::find_program("setpriv") {
        Some(setpriv) => {
            let mut command = Command::new(setpriv);
            command.args(["--pdeathsig", "KILL", "--"]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

fn replica_config(
    addr: SocketAddr,
    admin: SocketAddr,
    dir: &Path,
    function_port: u16,
    url_file: &Path,
) -> String {
    format!(
        r#"[proxy]
listen = "{addr}"
admin_listen = "{admin}"
state_dir = {state_dir:?}
connect_ports = [443]
http_ports = [{function_port}]
allow_private_cidrs = ["127.0.0.0/8"]
# A database that already knows other allowlists (an existing one, reused) must not hold
# the function's host back for the default five minutes.
activation_delay = "0s"
drain_delay = "0s"

[dns]
overrides = {{ "{FUNCTION_HOST}" = "{LOOPBACK}" }}

[[functions]]
name = "tick"
state = "productive"
url = "http://{FUNCTION_HOST}:{function_port}/invoke"

{state}
[allowlist]
domains = ["{FUNCTION_HOST}"]
"#,
        state_dir = dir.join("state").display().to_string(),
        state = peers::state_table(url_file),
    )
}

/// A `scheduled run` log line (JSON, fields flattened) as a [`LoggedRun`].
fn parse_run(line: &str) -> Option<LoggedRun> {
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    if json["message"] != "scheduled run" {
        return None;
    }
    Some(LoggedRun {
        schedule: json["schedule"].as_str()?.to_string(),
        tick: parse_time(json["scheduled_for"].as_str()?)?,
        lag_ms: json["lag_ms"].as_i64()?,
        success: json["state"] == "Success",
    })
}

/// Unix seconds of a time as egressd writes it: RFC 3339 in the `x-egress-scheduled-time`
/// header, chrono's `2026-12-03 14:05:00 UTC` in the log.
fn parse_time(text: &str) -> Option<u64> {
    let text = text.trim();
    let parsed = match text.strip_suffix(" UTC") {
        Some(naive) => humantime::parse_rfc3339_weak(naive),
        None => humantime::parse_rfc3339(text),
    };
    Some(parsed.ok()?.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

/// Sends one request with `Connection: close` to an admin listener; returns the status and
/// body.
async fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(json) = json {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            json.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(json.unwrap_or(""));
    let mut stream = TcpStream::connect(admin).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let end = head_len(&raw).with_context(|| format!("no response head from {admin}"))?;
    let head = Head::parse(&raw[..end]);
    Ok((
        head.status,
        String::from_utf8_lossy(&raw[end..]).into_owned(),
    ))
}

/// The function the schedules invoke: answers 200 to everything and notes the schedule id
/// and nominal time of each request.
struct FunctionUpstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<(String, u64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FunctionUpstream {
    async fn start() -> anyhow::Result<FunctionUpstream> {
        let listener = TcpListener::bind((LOOPBACK, 0)).await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, sink.clone()));
            }
        });
        Ok(FunctionUpstream {
            addr,
            received,
            task,
        })
    }

    fn received(&self) -> Vec<(String, u64)> {
        self.received.lock().expect("not poisoned").clone()
    }
}

impl Drop for FunctionUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request, notes it, answers 200 and closes (the upstream closes first, as the
/// harness's other upstream does).
async fn answer(mut stream: TcpStream, sink: Arc<Mutex<Vec<(String, u64)>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = head_len(&buf) {
            break end;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let body = Head::parse(&buf[..end]).content_length.unwrap_or(0);
    while buf.len() < end + body {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf[..end]);
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    };
    if let (Some(id), Some(tick)) = (
        header("x-egress-schedule-id"),
        header("x-egress-scheduled-time").and_then(|t| parse_time(&t)),
    ) {
        sink.lock().expect("not poisoned").push((id, tick));
    }
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await;
    let _ = stream.shutdown().await;
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds from `now` (Unix seconds) to the next minute boundary, in 1..=60.
fn secs_to_next_minute(now: u64) -> u64 {
    60 - now % 60
}

/// Sleeps until `after` past the Unix second `unix`, by the wall clock (the schedules
/// follow it too).
async fn sleep_until_unix(unix: u64, after: Duration) {
    let target = UNIX_EPOCH + Duration::from_secs(unix) + after;
    if let Ok(wait) = target.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_and_header_times_read_alike() {
        assert_eq!(parse_time("1970-01-01 00:01:00 UTC"), Some(60));
        assert_eq!(parse_time("1970-01-01T00:01:00Z"), Some(60));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn a_scheduled_run_line_is_read() {
        let line = r#"{"timestamp":"x","level":"INFO","message":"scheduled run","schedule":"s1","function":"tick","scheduled_for":"1970-01-01 00:02:00 UTC","state":"Success","status":"200","duration_ms":1,"lag_ms":7}"#;
        assert_eq!(
            parse_run(line),
            Some(LoggedRun {
                schedule: "s1".into(),
                tick: 120,
                lag_ms: 7,
                success: true
            })
        );
        assert_eq!(parse_run(r#"{"message":"firing","lag_ms":7}"#), None);
        assert_eq!(parse_run("not json"), None);
    }

    #[test]
    fn the_tally_finds_duplicates_and_gaps_and_ignores_other_ticks() {
        let run = |schedule: &str, tick, lag_ms| LoggedRun {
            schedule: schedule.into(),
            tick,
            lag_ms,
            success: true,
        };
        let ids = vec!["a".to_string(), "b".to_string()];
        let ticks = [60, 120];
        let logs = vec![
            vec![run("a", 60, 5), run("b", 60, 9), run("a", 0, 1000)],
            vec![run("a", 120, 3), run("other", 60, 1000)],
        ];
        let invoked = [("a", 60), ("b", 60), ("a", 120), ("a", 120), ("other", 60)]
            .map(|(s, t)| (s.to_string(), t));
        let lag = tally(TickLagSettings::default(), &ids, &ticks, &logs, &invoked);
        assert_eq!(lag.lags_ms, vec![3, 5, 9]);
        assert_eq!(
            lag.by_tick,
            vec![(60, vec![(5, 0), (9, 0)]), (120, vec![(3, 1)])]
        );
        assert_eq!(lag.per_replica, vec![2, 1]);
        assert_eq!((lag.expected, lag.invocations), (4, 4));
        assert_eq!((lag.duplicates, lag.missing), (1, 1));
        assert!(!lag.once_each());
        assert_eq!(
            (lag.p50_ms(), lag.p99_ms(), lag.max_ms()),
            (Some(5), Some(9), Some(9))
        );
    }

    #[test]
    fn the_next_boundary_is_never_now() {
        assert_eq!(secs_to_next_minute(120), 60);
        assert_eq!(secs_to_next_minute(121), 59);
        assert_eq!(secs_to_next_minute(179), 1);
    }
}
