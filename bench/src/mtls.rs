//! The mTLS origination scenarios (issue 10), egressd's alone: squid, tinyproxy and the
//! relays cannot present a client certificate on behalf of a plain-HTTP client. The reference
//! is the harness client doing the TLS itself ("direct TLS"), with the same identity and
//! trust.
//!
//! A run makes fresh certificates ([`pki`]), starts the TLS upstream as a child process
//! (three listeners: keep-alive; `Connection: close` with resumable sessions; close with
//! sessions refused) and one egressd with an `[[mtls]]` entry per listener, each under its own
//! host name so that egressd's handshake counters come per scenario. The client sends egressd
//! plain keep-alive HTTP. egressd pools upstream connections, so only a close from the
//! upstream makes it open a new TLS connection for the next request: the close scenarios
//! measure handshakes. `egressd_mtls_handshakes_total`, read from egressd's admin listener at
//! both ends of the measured window, says how many of them resumed; on the direct path the
//! client counts them itself.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::ServerName;
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::load::{self, HttpTarget, Tally, Window};
use crate::peers::{self, Env, Logging, Process};
use crate::pki::{self, Pki};
use crate::scenarios::{self, Sample, Settings, HTTP_CONNS, TUNNEL_CONCURRENCY};
use crate::upstream::TlsUpstreamAddrs;
use crate::LOOPBACK;

/// How long reading egressd's metrics may take.
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsScenario {
    /// Keep-alive requests: egressd reuses its pooled upstream TLS connections.
    KeepAlive,
    /// A new upstream TLS connection per request, sessions resumable (the default).
    Resumed,
    /// A new upstream TLS connection per request, the upstream refusing resumption.
    Full,
}

impl MtlsScenario {
    pub const ALL: [MtlsScenario; 3] = [
        MtlsScenario::KeepAlive,
        MtlsScenario::Resumed,
        MtlsScenario::Full,
    ];

    pub fn title(self) -> String {
        let c = self.concurrency();
        match self {
            MtlsScenario::KeepAlive => {
                format!("7a. Keep-alive requests through mTLS origination, {c} connections")
            }
            MtlsScenario::Resumed => format!(
                "7b. New upstream TLS connection per request, session resumption on (the default), {c} at a time"
            ),
            MtlsScenario::Full => format!(
                "7c. New upstream TLS connection per request, the upstream refusing resumption, {c} at a time"
            ),
        }
    }

    /// Short name, for progress lines.
    pub fn label(self) -> &'static str {
        match self {
            MtlsScenario::KeepAlive => "mtls keep-alive",
            MtlsScenario::Resumed => "mtls resumed",
            MtlsScenario::Full => "mtls full",
        }
    }

    /// The host egressd's `[[mtls]]` entry for this scenario covers (and its metric label).
    pub fn host(self) -> &'static str {
        match self {
            MtlsScenario::KeepAlive => "keepalive.mtls.test",
            MtlsScenario::Resumed => "resumed.mtls.test",
            MtlsScenario::Full => "full.mtls.test",
        }
    }

    pub fn concurrency(self) -> usize {
        match self {
            MtlsScenario::KeepAlive => HTTP_CONNS,
            MtlsScenario::Resumed | MtlsScenario::Full => TUNNEL_CONCURRENCY,
        }
    }

    /// Whether each request opens a new upstream TLS connection.
    pub fn handshakes(self) -> bool {
        self != MtlsScenario::KeepAlive
    }

    pub fn unit(self) -> &'static str {
        if self.handshakes() {
            "handshakes/s"
        } else {
            "req/s"
        }
    }

    pub fn cost_unit(self) -> &'static str {
        if self.handshakes() {
            "µs/handshake"
        } else {
            "µs/req"
        }
    }

    /// What per-operation figures count.
    pub fn op(self) -> &'static str {
        if self.handshakes() {
            "handshake"
        } else {
            "req"
        }
    }

    fn upstream(self, addrs: TlsUpstreamAddrs) -> SocketAddr {
        match self {
            MtlsScenario::KeepAlive => addrs.keep_alive,
            MtlsScenario::Resumed => addrs.close,
            MtlsScenario::Full => addrs.close_full,
        }
    }
}

/// Who does the TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The harness client, straight to the upstream.
    DirectTls,
    /// egressd, for a client sending it plain HTTP.
    Egressd,
}

impl Via {
    pub const ALL: [Via; 2] = [Via::DirectTls, Via::Egressd];

    pub fn name(self) -> &'static str {
        match self {
            Via::DirectTls => "direct TLS",
            Via::Egressd => "egressd",
        }
    }
}

/// TLS handshakes by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handshakes {
    pub full: u64,
    pub resumed: u64,
    pub failed: u64,
}

impl Handshakes {
    fn since(self, before: Handshakes) -> Handshakes {
        Handshakes {
            full: self.full.saturating_sub(before.full),
            resumed: self.resumed.saturating_sub(before.resumed),
            failed: self.failed.saturating_sub(before.failed),
        }
    }
}

/// One run of one mTLS scenario on one path.
#[derive(Debug, Clone)]
pub struct MtlsSample {
    /// The same figures as every other scenario's; the value and CPU are per request, and in
    /// the close scenarios every request is one new upstream TLS connection.
    pub run: Sample,
    /// Handshakes inside the measured window (`None`: egressd's metrics could not be read).
    pub handshakes: Option<Handshakes>,
}

/// Each path's repetitions of one mTLS scenario, in run order.
pub type MtlsRuns = Vec<(MtlsScenario, Vec<(Via, Vec<MtlsSample>)>)>;

/// What became of the mTLS scenarios.
#[derive(Debug, Clone)]
pub enum MtlsSection {
    Measured(MtlsRuns),
    /// This egressd build cannot originate mTLS; why.
    Skipped(String),
}

/// Everything running for the mTLS scenarios; all of it stops on drop.
struct Setup {
    /// The certificate files, which egressd may re-read.
    _pki: Pki,
    _upstream_process: Process,
    upstream: TlsUpstreamAddrs,
    egressd: Process,
    proxy: SocketAddr,
    admin: SocketAddr,
    /// The direct path's TLS client.
    client: TlsConnector,
}

/// Starts the mTLS upstream and egressd, runs every mTLS scenario on both paths, interleaved
/// as the other scenarios are, and stops them again.
pub async fn run(settings: &Settings, env: &Env) -> anyhow::Result<MtlsSection> {
    let hosts = MtlsScenario::ALL.map(MtlsScenario::host);
    let pki = Pki::generate(&hosts)?;
    let (upstream_process, line) = peers::spawn_harness_child(
        &env.harness,
        "mtls-upstream",
        &["--pki".into(), pki.dir().display().to_string()],
    )?;
    let upstream = TlsUpstreamAddrs::from_line(&line)?;
    let (proxy, admin, egressd) = match start_egressd(env, &pki, upstream)? {
        Ok(started) => started,
        Err(why) => {
            eprintln!("skipping the mTLS scenarios: {why}");
            return Ok(MtlsSection::Skipped(why));
        }
    };
    let setup = Setup {
        client: TlsConnector::from(pki::client_config(pki.dir())?),
        _pki: pki,
        _upstream_process: upstream_process,
        upstream,
        egressd,
        proxy,
        admin,
    };
    smoke_check(&setup).await?;

    let mut runs = MtlsRuns::new();
    for scenario in MtlsScenario::ALL {
        let mut per_via: Vec<(Via, Vec<MtlsSample>)> =
            Via::ALL.iter().map(|v| (*v, Vec::new())).collect();
        for rep in 0..settings.reps {
            for (via, samples) in per_via.iter_mut() {
                let sample = measure(scenario, *via, &setup, settings).await;
                let split = sample
                    .handshakes
                    .map(|h| format!("  handshakes {} resumed, {} full", h.resumed, h.full))
                    .unwrap_or_default();
                eprintln!(
                    "{:<20} rep {}/{} {:<20} {:>12.2} {}  errors {}{split}",
                    scenario.label(),
                    rep + 1,
                    settings.reps,
                    via.name(),
                    sample.run.value,
                    scenario.unit(),
                    sample.run.errors
                );
                samples.push(sample);
            }
        }
        runs.push((scenario, per_via));
    }
    Ok(MtlsSection::Measured(runs))
}

/// Proves every scenario works on both paths, so a broken setup fails here with a message
/// instead of as a table of errors.
async fn smoke_check(setup: &Setup) -> anyhow::Result<()> {
    for scenario in MtlsScenario::ALL {
        for via in Via::ALL {
            let tally =
                load::smoke(|window| drive(scenario, via, setup, window, Arc::default())).await;
            if tally.ops == 0 || tally.errors > 0 {
                let answer = match via {
                    Via::Egressd => format!(
                        "; egressd answered: {}",
                        one_answer(setup.proxy, scenario.host()).await
                    ),
                    Via::DirectTls => String::new(),
                };
                anyhow::bail!(
                    "{} failed its smoke check ({}: {} ok, {} errors){answer}",
                    via.name(),
                    scenario.label(),
                    tally.ops,
                    tally.errors
                );
            }
        }
    }
    Ok(())
}

/// The head of egressd's answer to one request for `host`, for error messages.
async fn one_answer(proxy: SocketAddr, host: &str) -> String {
    let exchange = async {
        let mut stream = load::connect(proxy).await?;
        let request = http_target(proxy, &format!("http://{host}/"), host).close;
        stream.write_all(&request).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, io::Error>(answer)
    };
    match tokio::time::timeout(METRICS_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => {
            let text = String::from_utf8_lossy(&answer);
            let head = text.split("\r\n\r\n").next().unwrap_or_default();
            format!("{head:?}")
        }
        Ok(Err(err)) => format!("nothing ({err})"),
        Err(_) => "nothing within 5 s".into(),
    }
}

async fn measure(
    scenario: MtlsScenario,
    via: Via,
    setup: &Setup,
    settings: &Settings,
) -> MtlsSample {
    let window = Window::after_warmup(settings.warmup, settings.measure);
    let egressd = via == Via::Egressd;
    let usage = egressd.then(|| tokio::spawn(scenarios::usage_during(setup.egressd.pid(), window)));
    let counted = egressd.then(|| tokio::spawn(handshakes_during(setup.admin, scenario, window)));
    let seen = Arc::new(HandshakeCounter::default());
    let tally = drive(scenario, via, setup, window, seen.clone()).await;
    let usage = match usage {
        Some(handle) => handle.await.ok().flatten(),
        None => None,
    };
    let handshakes = match counted {
        Some(handle) => handle.await.ok().flatten(),
        None => Some(seen.read()),
    };
    let ops = tally.ops as f64;
    MtlsSample {
        run: Sample::of_run(
            ops / window.seconds(),
            ops,
            1e6,
            tally,
            usage,
            &window,
            true,
        ),
        handshakes,
    }
}

/// Runs one scenario on one path; `seen` counts the direct client's handshakes.
async fn drive(
    scenario: MtlsScenario,
    via: Via,
    setup: &Setup,
    window: Window,
    seen: Arc<HandshakeCounter>,
) -> Tally {
    let host = scenario.host();
    let conns = scenario.concurrency();
    match via {
        Via::Egressd => {
            // Absolute-form for the default port 80: egressd originates TLS to the entry's.
            let target = http_target(setup.proxy, &format!("http://{host}/"), host);
            load::http_keep_alive(Arc::new(target), conns, window).await
        }
        Via::DirectTls => {
            let addr = scenario.upstream(setup.upstream);
            let target = http_target(addr, "/", host);
            let connector = setup.client.clone();
            let name = ServerName::try_from(host).expect("the scenario hosts are DNS names");
            let dial = move || {
                let (connector, name, seen) = (connector.clone(), name.clone(), seen.clone());
                async move {
                    let tcp = load::connect(addr).await?;
                    let tls = connector.connect(name, tcp).await;
                    let kind = tls.as_ref().ok().map(|s| s.get_ref().1.handshake_kind());
                    seen.record(&window, kind.flatten(), tls.is_err());
                    tls
                }
            };
            load::keep_alive_over(Arc::new(target), conns, window, dial).await
        }
    }
}

fn http_target(addr: SocketAddr, request_target: &str, host: &str) -> HttpTarget {
    let request = |extra: &str| {
        format!("GET {request_target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").into_bytes()
    };
    HttpTarget {
        addr,
        keep_alive: request(""),
        close: request("Connection: close\r\n"),
    }
}

/// The direct client's handshakes inside the window.
#[derive(Debug, Default)]
struct HandshakeCounter {
    full: AtomicU64,
    resumed: AtomicU64,
    failed: AtomicU64,
}

impl HandshakeCounter {
    fn record(&self, window: &Window, kind: Option<HandshakeKind>, failed: bool) {
        if !window.counts(Instant::now()) {
            return;
        }
        let counter = match (failed, kind) {
            (true, _) => &self.failed,
            (false, Some(HandshakeKind::Resumed)) => &self.resumed,
            (false, _) => &self.full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> Handshakes {
        Handshakes {
            full: self.full.load(Ordering::Relaxed),
            resumed: self.resumed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// egressd's handshake counters for `scenario`'s entry, read at the start and end of
/// `window`.
async fn handshakes_during(
    admin: SocketAddr,
    scenario: MtlsScenario,
    window: Window,
) -> Option<Handshakes> {
    tokio::time::sleep_until(window.from).await;
    let before = handshake_counters(admin, scenario.host()).await.ok()?;
    tokio::time::sleep_until(window.until).await;
    let after = handshake_counters(admin, scenario.host()).await.ok()?;
    Some(after.since(before))
}

/// egressd's `egressd_mtls_handshakes_total` for the entry `host`, from its admin listener.
async fn handshake_counters(admin: SocketAddr, host: &str) -> io::Result<Handshakes> {
    let fetch = async {
        let mut stream = load::connect(admin).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: egressd\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        Ok::<_, io::Error>(text)
    };
    let text = tokio::time::timeout(METRICS_TIMEOUT, fetch)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    Ok(parse_handshakes(&text, host))
}

/// The handshake counters of the entry `host` in a metrics exposition; a series egressd has
/// not created yet (no handshake of that outcome so far) counts zero.
fn parse_handshakes(metrics: &str, host: &str) -> Handshakes {
    let entry = format!("entry=\"{host}\"");
    let mut found = Handshakes::default();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("egressd_mtls_handshakes_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        if !labels.split(',').any(|label| label == entry) {
            continue;
        }
        let Some(count) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let slot = match labels.split(',').find_map(|l| l.strip_prefix("outcome=")) {
            Some("\"full\"") => &mut found.full,
            Some("\"resumed\"") => &mut found.resumed,
            Some("\"failed\"") => &mut found.failed,
            _ => continue,
        };
        *slot = count as u64;
    }
    found
}

/// Starts egressd with an `[[mtls]]` entry per scenario: (proxy, admin, process), or why this
/// build cannot (it rejects `[[mtls]]`).
fn start_egressd(
    env: &Env,
    pki: &Pki,
    upstream: TlsUpstreamAddrs,
) -> anyhow::Result<Result<(SocketAddr, SocketAddr, Process), String>> {
    let dir = tempfile::tempdir()?;
    let addr = SocketAddr::new(LOOPBACK, peers::free_port()?);
    let admin = SocketAddr::new(LOOPBACK, peers::free_port()?);
    let path = dir.path().join("egressd.toml");
    std::fs::write(
        &path,
        egressd_config(pki, upstream, addr, admin, dir.path()),
    )?;
    let check = Command::new(&env.egressd)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .with_context(|| format!("cannot run {}", env.egressd.display()))?;
    if !check.status.success() {
        let text = String::from_utf8_lossy(&check.stdout).into_owned()
            + &String::from_utf8_lossy(&check.stderr);
        // A build from before mTLS origination; anything else is the harness's fault.
        if text.contains("unknown field") && text.contains("mtls") {
            return Ok(Err(
                "this egressd build does not accept `[[mtls]]` (no mTLS origination)".into(),
            ));
        }
        anyhow::bail!("egressd check rejected the mTLS config:\n{text}");
    }
    let command = peers::egressd_command(env, &path, Logging::Shipped);
    let (addr, process) = peers::spawn_daemon("egressd", command, dir, addr)?;
    Ok(Ok((addr, admin, process)))
}

fn egressd_config(
    pki: &Pki,
    upstream: TlsUpstreamAddrs,
    addr: SocketAddr,
    admin: SocketAddr,
    state_dir: &Path,
) -> String {
    let hosts = MtlsScenario::ALL.map(MtlsScenario::host);
    let overrides = hosts
        .iter()
        .map(|h| format!("\"{h}\" = \"{LOOPBACK}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let file = |name: &str| format!("{:?}", pki.path(name).display().to_string());
    let entries: String = MtlsScenario::ALL
        .iter()
        .map(|s| {
            format!(
                "[[mtls]]\nhost = \"{host}\"\nclient_cert = {cert}\nclient_key = {key}\nca = {ca}\nport = {port}\n\n",
                host = s.host(),
                cert = file(pki::CLIENT_CERT),
                key = file(pki::CLIENT_KEY),
                ca = file(pki::SERVER_CA),
                port = s.upstream(upstream).port(),
            )
        })
        .collect();
    let domains = hosts
        .iter()
        .map(|h| format!("\"{h}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[proxy]
listen = "{addr}"
admin_listen = "{admin}"
# Its own, fresh: a first start, where every entry is active at once. The default, `state`
# in the working directory, is the other egressd instances' activation state: this
# allowlist would drop their entry, which would then wait out activation_delay again.
state_dir = {state_dir:?}
http_ports = [80]
allow_private_cidrs = ["127.0.0.0/8"]
connect_timeout = "10s"
idle_timeout = "5m"

[dns]
overrides = {{ {overrides} }}

{entries}[allowlist]
domains = [{domains}]
"#,
        state_dir = state_dir.display().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_counters_are_read_for_one_entry() {
        let metrics = "\
# TYPE egressd_mtls_handshakes counter
egressd_mtls_handshakes_total{entry=\"resumed.mtls.test\",outcome=\"full\"} 3
egressd_mtls_handshakes_total{entry=\"resumed.mtls.test\",outcome=\"resumed\"} 1200
egressd_mtls_handshakes_total{entry=\"full.mtls.test\",outcome=\"full\"} 99
egressd_mtls_handshakes_total{outcome=\"failed\",entry=\"resumed.mtls.test\"} 2.0
# EOF
";
        let cases = [
            (
                "every outcome, labels in any order",
                "resumed.mtls.test",
                Handshakes {
                    full: 3,
                    resumed: 1200,
                    failed: 2,
                },
            ),
            (
                "outcomes not seen yet count zero",
                "full.mtls.test",
                Handshakes {
                    full: 99,
                    ..Handshakes::default()
                },
            ),
            (
                "an entry that is a suffix of another's does not match it",
                "mtls.test",
                Handshakes::default(),
            ),
        ];
        for (name, host, expected) in cases {
            assert_eq!(parse_handshakes(metrics, host), expected, "{name}");
        }
    }
}
