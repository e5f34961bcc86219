//! The paths under test and the processes behind them.
//!
//! Every path is a [`Kind`]: the references (direct, the copy relay, the splice relay), egressd
//! as shipped and its variants (access log off, JSON log, shared state in PostgreSQL, copy
//! relay), and the peers (squid, tinyproxy, Apache Traffic Server, Apache httpd, g3proxy).
//! [`Kind::start`] brings one up on a free loopback port with a generated config in its own
//! temp dir and waits until it accepts connections; a proxy that is not installed comes back
//! as [`Started::Missing`] with the reason. Each [`Process`] is killed when dropped, and the
//! harness's own children (upstream, relays) also exit when their stdin closes, so even a
//! killed harness leaves none of them behind.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::load::Route;
use crate::upstream::UpstreamAddrs;
use crate::{LOOPBACK, UPSTREAM_HOST};

/// How long a process may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A child process, killed on drop.
pub struct Process {
    name: &'static str,
    child: Child,
    /// Closing it tells the harness's own children to exit.
    _stdin: Option<ChildStdin>,
    /// Config, logs and pid files; removed after the process is gone.
    dir: Option<TempDir>,
    /// The process that does the work, when it is not `child`: httpd's parent only supervises
    /// its one worker process, whose CPU and memory are the figures.
    worker: Option<u32>,
    /// Stop with SIGTERM before SIGKILL (see [`Process::terminate`]).
    terminate_first: bool,
}

impl Process {
    /// The process whose CPU and memory are measured.
    pub fn pid(&self) -> u32 {
        self.worker.unwrap_or_else(|| self.child.id())
    }

    /// The directory holding the process's config and `stderr.log`, if it has one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(TempDir::path)
    }

    /// The tail of the process's log, for error messages.
    fn log_tail(&self) -> String {
        let Some(dir) = &self.dir else {
            return String::new();
        };
        let mut text = String::new();
        // squid's and Traffic Server's own logs, where their errors go.
        for name in ["stderr.log", "cache.log", "diags.log"] {
            if let Ok(mut file) = File::open(dir.path().join(name)) {
                let _ = file.read_to_string(&mut text);
            }
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until `addr` accepts connections, failing early if the process dies.
    fn wait_listening(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}):\n{}", self.name, self.log_tail());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on {addr}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the proxy at `addr` answers a request for the upstream with 200, failing
    /// early if the process dies.
    fn wait_proxying(&mut self, addr: SocketAddr, upstream: UpstreamAddrs) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let port = upstream.http.port();
        let request = format!(
            "GET http://{UPSTREAM_HOST}:{port}/ HTTP/1.1\r\nHost: {UPSTREAM_HOST}:{port}\r\n\
             Connection: close\r\n\r\n"
        );
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}):\n{}", self.name, self.log_tail());
            }
            let last = match status_line(addr, &request) {
                Ok(line) if line.starts_with("HTTP/1.1 200") => return Ok(()),
                Ok(line) => line,
                Err(err) => err.to_string(),
            };
            if Instant::now() > deadline {
                bail!(
                    "{} did not carry a request (last answer: {last}):\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the first child process of this one to appear, and measures that instead.
    fn measure_child(&mut self) -> anyhow::Result<()> {
        let pid = self.child.id();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .with_context(|| format!("reading the children of {}", self.name))?;
            if let Some(first) = children.split_whitespace().next() {
                self.worker = Some(first.parse()?);
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} started no worker process:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM, kills the worker, if any, and waits a little for the process to exit by
    /// itself: httpd's parent waits several seconds for a worker whose threads still hold
    /// tunnels before it kills it, and a worker whose parent was killed first lives on.
    fn terminate(&mut self) {
        #[cfg(target_os = "linux")]
        {
            use rustix::process::{kill_process, Pid, Signal};
            if kill_process(Pid::from_child(&self.child), Signal::TERM).is_err() {
                return;
            }
            let worker = self.worker.and_then(|w| Pid::from_raw(w.try_into().ok()?));
            if let Some(worker) = worker {
                let _ = kill_process(worker, Signal::KILL);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Sends `request` to `addr` and returns the first line of the answer.
fn status_line(addr: SocketAddr, request: &str) -> std::io::Result<String> {
    use std::io::Write;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(request.as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.terminate_first {
            self.terminate();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The paths, in the order they run within each repetition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    /// The harness relay moving bytes with read/write.
    CopyRelay,
    /// The harness relay moving bytes with splice(2).
    SpliceRelay,
    /// egressd as shipped: its default logging, an access-log line per request and per tunnel
    /// in text on stderr (a file here). The headline row (issue 22).
    Egressd,
    /// egressd with `RUST_LOG=warn`, the access log off: the reference that prices the access
    /// log. Runs in every throughput scenario right after egressd, so the two share each
    /// repetition's conditions.
    EgressdLogOff,
    /// egressd with `--log-format json`, the other shipped format: run in the scenarios that
    /// write a line per request or tunnel at a high rate.
    EgressdJson,
    /// egressd with `[state] backend = "postgres"`: the same config plus the database, for
    /// the A/B against the file backend (issue 21). Runs only when a database was given, and
    /// next to egressd, so the two share each repetition's conditions.
    EgressdPostgres,
    /// egressd with `[proxy] tunnel_relay = "copy"`: run in the bulk scenarios only, to show
    /// what its default splice relay gives.
    EgressdCopy,
    Squid,
    Tinyproxy,
    /// Apache Traffic Server as a pure forward proxy: `traffic_server` alone (no
    /// `traffic_manager`), from a runroot in its temp dir.
    TrafficServer,
    /// Apache httpd 2.4's mod_proxy forward proxy (mpm_event).
    Apache,
    /// g3proxy (bytedance/g3): opt-in, a binary built from source, given with `--g3proxy` or
    /// found on `PATH`.
    G3proxy,
}

impl Kind {
    /// Another proxy, one egressd is measured against (not a reference path or an egressd).
    pub fn is_peer(self) -> bool {
        matches!(
            self,
            Kind::Squid | Kind::Tinyproxy | Kind::TrafficServer | Kind::Apache | Kind::G3proxy
        )
    }

    pub const ALL: [Kind; 13] = [
        Kind::Direct,
        Kind::CopyRelay,
        Kind::SpliceRelay,
        Kind::Egressd,
        Kind::EgressdLogOff,
        Kind::EgressdJson,
        Kind::EgressdPostgres,
        Kind::EgressdCopy,
        Kind::Squid,
        Kind::Tinyproxy,
        Kind::TrafficServer,
        Kind::Apache,
        Kind::G3proxy,
    ];

    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::CopyRelay => "copy relay",
            Kind::SpliceRelay => "splice relay",
            Kind::Egressd => "egressd",
            Kind::EgressdLogOff => "egressd (access log off)",
            Kind::EgressdJson => "egressd (JSON log)",
            Kind::EgressdPostgres => "egressd (postgres state)",
            Kind::EgressdCopy => "egressd (copy relay)",
            Kind::Squid => "squid",
            Kind::Tinyproxy => "tinyproxy",
            Kind::TrafficServer => "trafficserver",
            Kind::Apache => "apache httpd",
            Kind::G3proxy => "g3proxy",
        }
    }

    /// The name on the command line (`--only`).
    pub fn key(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::CopyRelay => "copy-relay",
            Kind::SpliceRelay => "splice-relay",
            Kind::Egressd => "egressd",
            Kind::EgressdLogOff => "egressd-log-off",
            Kind::EgressdJson => "egressd-json",
            Kind::EgressdPostgres => "egressd-postgres",
            Kind::EgressdCopy => "egressd-copy",
            Kind::Squid => "squid",
            Kind::Tinyproxy => "tinyproxy",
            Kind::TrafficServer => "trafficserver",
            Kind::Apache => "apache2",
            Kind::G3proxy => "g3proxy",
        }
    }

    /// Direct and the relays: always measured, and a failure to start is fatal.
    pub fn is_reference(self) -> bool {
        matches!(self, Kind::Direct | Kind::CopyRelay | Kind::SpliceRelay)
    }

    pub fn is_relay(self) -> bool {
        matches!(self, Kind::CopyRelay | Kind::SpliceRelay)
    }

    pub fn is_egressd(self) -> bool {
        matches!(
            self,
            Kind::Egressd
                | Kind::EgressdLogOff
                | Kind::EgressdJson
                | Kind::EgressdPostgres
                | Kind::EgressdCopy
        )
    }

    /// How this path names the upstream, when it is not [`UPSTREAM_HOST`].
    pub fn note(self) -> Option<&'static str> {
        match self {
            Kind::Tinyproxy => Some(
                "tinyproxy resolves names only through the system resolver, so it is sent to \
                 127.0.0.1 literally (its filter allows exactly that host)",
            ),
            Kind::Apache => Some(
                "apache httpd resolves names only through the system resolver, so it is sent \
                 to 127.0.0.1 literally",
            ),
            _ => None,
        }
    }

    /// Why a peer that [`Kind::start`] found missing did not run.
    fn missing(self) -> String {
        match self {
            Kind::G3proxy => "not found: an opt-in peer built from source (bytedance/g3); \
                              pass --g3proxy PATH or put g3proxy on PATH"
                .into(),
            Kind::EgressdJson => "this egressd build has no `--log-format`".into(),
            _ => format!(
                "not installed (apt-get install -y {})",
                self.package().unwrap_or(self.key())
            ),
        }
    }

    /// The Debian package that installs this peer.
    fn package(self) -> Option<&'static str> {
        match self {
            Kind::Squid => Some("squid"),
            Kind::Tinyproxy => Some("tinyproxy"),
            Kind::TrafficServer => Some("trafficserver"),
            Kind::Apache => Some("apache2"),
            _ => None,
        }
    }

    /// The peer's binary, if installed.
    fn program(self, env: &Env) -> Option<PathBuf> {
        match self {
            Kind::Squid => find_program("squid"),
            Kind::Tinyproxy => find_program("tinyproxy"),
            Kind::TrafficServer => find_program("traffic_server"),
            Kind::Apache => find_program("apache2"),
            Kind::G3proxy => env.g3proxy.clone().or_else(|| find_program("g3proxy")),
            _ => None,
        }
    }
}

/// What the harness needs to start a path.
pub struct Env {
    pub upstream: UpstreamAddrs,
    /// This binary, which also serves as upstream and relay.
    pub harness: PathBuf,
    pub egressd: PathBuf,
    /// `RUST_LOG` for the egressd rows that log as shipped (`--egressd-log`); `None` leaves it
    /// unset, so egressd logs at its default level, access log included.
    pub egressd_log: Option<String>,
    /// Extra `[proxy]` lines for egressd (`--egressd-proxy`), for A/B runs.
    pub egressd_proxy: Vec<String>,
    /// The database URL of [`Kind::EgressdPostgres`]; `None` when that path does not run.
    pub state_url: Option<String>,
    /// What the report says about that database.
    pub state_database: Option<String>,
    /// The g3proxy binary given with `--g3proxy`; without it, `PATH` is searched.
    pub g3proxy: Option<PathBuf>,
}

/// A running path.
pub struct Subject {
    pub kind: Kind,
    pub route: Route,
    /// The process whose CPU and memory are measured (none for direct).
    pub process: Option<Process>,
    /// How this path's setup differs from its kind's usual one, for the report.
    pub setup: Option<String>,
}

impl Subject {
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }
}

pub enum Started {
    Running(Subject),
    /// The proxy is not installed (or this egressd build lacks the feature), and why.
    Missing(String),
}

/// How an egressd instance logs. The access log is an `info` line per request and per tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logging {
    /// As shipped: text lines, `RUST_LOG` unset (or `--egressd-log`'s value).
    Shipped,
    /// `--log-format json`, at the shipped level.
    Json,
    /// `RUST_LOG=warn`: the access log off.
    Off,
}

impl Kind {
    pub fn start(self, env: &Env) -> anyhow::Result<Started> {
        let running = |route, process| {
            Ok(Started::Running(Subject {
                kind: self,
                route,
                process,
                setup: None,
            }))
        };
        let egressd = |logging| {
            let (addr, process) = start_egressd(env, logging, None, None)?;
            running(proxy_route(addr, UPSTREAM_HOST), Some(process))
        };
        match self {
            Kind::Direct => running(Route::Direct, None),
            Kind::CopyRelay | Kind::SpliceRelay => {
                let (route, process) = start_relay(env, self == Kind::SpliceRelay)?;
                running(route, Some(process))
            }
            Kind::Egressd => egressd(Logging::Shipped),
            Kind::EgressdLogOff => egressd(Logging::Off),
            Kind::EgressdJson if egressd_has_log_format(env)? => egressd(Logging::Json),
            Kind::EgressdJson => Ok(Started::Missing(self.missing())),
            Kind::EgressdPostgres => {
                let url = env.state_url.as_deref().context(
                    "egressd (postgres state) needs a database: --egressd-postgres or \
                     --egressd-postgres-url",
                )?;
                let (addr, process) = start_egressd(env, Logging::Shipped, None, Some(url))?;
                Ok(Started::Running(Subject {
                    kind: self,
                    route: proxy_route(addr, UPSTREAM_HOST),
                    process: Some(process),
                    setup: Some(format!(
                        "with `[state] backend = \"postgres\"` on {}",
                        env.state_database.as_deref().unwrap_or("PostgreSQL")
                    )),
                }))
            }
            Kind::EgressdCopy => {
                // A build from before the switch rejects it (unknown field), and its only
                // relay copies anyway.
                let switch = egressd_has_relay_switch(env)?;
                let (addr, process) =
                    start_egressd(env, Logging::Shipped, switch.then_some("copy"), None)?;
                Ok(Started::Running(Subject {
                    kind: self,
                    route: proxy_route(addr, UPSTREAM_HOST),
                    process: Some(process),
                    setup: Some(if switch {
                        concat!(
                            r#"with `[proxy] tunnel_relay = "copy"` "#,
                            "(read/write through a buffer instead of splice)"
                        )
                        .into()
                    } else {
                        "with its default relay, as this build has no `tunnel_relay` switch".into()
                    }),
                }))
            }
            Kind::Squid | Kind::Tinyproxy | Kind::TrafficServer | Kind::Apache | Kind::G3proxy => {
                let Some(program) = self.program(env) else {
                    return Ok(Started::Missing(self.missing()));
                };
                let (addr, process) = match self {
                    Kind::Squid => start_squid(&program, env.upstream)?,
                    Kind::Tinyproxy => start_tinyproxy(&program, env.upstream)?,
                    Kind::TrafficServer => start_trafficserver(&program, env.upstream)?,
                    Kind::Apache => start_apache(&program, env.upstream)?,
                    _ => start_g3proxy(&program)?,
                };
                // Those that resolve names only through the system resolver get the
                // address; their `note` says so in the report.
                let host = match self {
                    Kind::Tinyproxy | Kind::Apache => LOOPBACK.to_string(),
                    _ => UPSTREAM_HOST.to_string(),
                };
                running(proxy_route(addr, &host), Some(process))
            }
        }
    }

    /// The version string shown in the report.
    pub fn version(self, env: &Env) -> String {
        let found = match self {
            Kind::Direct | Kind::CopyRelay | Kind::SpliceRelay => {
                Some(format!("harness {}", env!("CARGO_PKG_VERSION")))
            }
            Kind::Egressd
            | Kind::EgressdLogOff
            | Kind::EgressdJson
            | Kind::EgressdPostgres
            | Kind::EgressdCopy => {
                first_line(&env.egressd, &["--version"]).map(|v| match git_revision() {
                    Some(rev) => format!("{v} (git {rev})"),
                    None => v,
                })
            }
            Kind::Squid | Kind::Tinyproxy => {
                self.program(env).and_then(|p| first_line(&p, &["-v"]))
            }
            // "Traffic Server 9.2.9 Apr  4 2026 14:52:39 localhost": the build date and host
            // say nothing here.
            Kind::TrafficServer => self
                .program(env)
                .and_then(|p| first_line(&p, &["-V"]))
                .map(|v| v.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
            // "Server version: Apache/2.4.71 (Debian)".
            Kind::Apache => {
                self.program(env)
                    .and_then(|p| first_line(&p, &["-v"]))
                    .map(|v| match v.strip_prefix("Server version:") {
                        Some(rest) => rest.trim().to_string(),
                        None => v,
                    })
            }
            Kind::G3proxy => self.program(env).and_then(|p| first_line(&p, &["-V"])),
        };
        found.unwrap_or_else(|| "unknown".into())
    }
}

fn proxy_route(addr: SocketAddr, host: &str) -> Route {
    Route::Proxy {
        addr,
        host: host.to_string(),
    }
}

/// The workspace this crate belongs to (the egressd repository root).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

/// The commit egressd was built from, marked when `src/` has uncommitted changes.
fn git_revision() -> Option<String> {
    let root = workspace_root();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let rev = git(&["rev-parse", "--short", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no", "--", "src"])
        .is_some_and(|changes| !changes.is_empty());
    Some(if dirty {
        format!("{rev} with uncommitted changes in src/")
    } else {
        rev
    })
}

fn first_line(program: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    // tinyproxy and some squid builds print their version on stderr.
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    let line = String::from_utf8_lossy(&text)
        .lines()
        .next()?
        .trim()
        .to_string();
    (!line.is_empty()).then_some(line)
}

/// Looks in `PATH` and the sbin directories, where Debian installs the daemons.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((LOOPBACK, 0))?.local_addr()?.port())
}

/// Starts this binary in a child role and reads the one line it prints once listening.
pub fn spawn_harness_child(
    harness: &Path,
    role: &'static str,
    args: &[String],
) -> anyhow::Result<(Process, String)> {
    let mut child = Command::new(harness)
        .arg(role)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", harness.display()))?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("piped stdout");
    let process = Process {
        name: role,
        child,
        _stdin: stdin,
        dir: None,
        worker: None,
        terminate_first: false,
    };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim().is_empty() {
        bail!("{role} exited before listening");
    }
    Ok((process, line.trim().to_string()))
}

/// Spawns `command` with its stderr in `dir/stderr.log` and waits for it to listen on `addr`.
pub(crate) fn spawn_daemon(
    name: &'static str,
    command: Command,
    dir: TempDir,
    addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, Process)> {
    let mut process = spawn_logged(name, command, dir)?;
    process.wait_listening(addr)?;
    Ok((addr, process))
}

/// Spawns `command` with its stderr in `dir/stderr.log`.
fn spawn_logged(name: &'static str, mut command: Command, dir: TempDir) -> anyhow::Result<Process> {
    let stderr = File::create(dir.path().join("stderr.log"))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Process {
        name,
        child,
        _stdin: None,
        dir: Some(dir),
        worker: None,
        terminate_first: false,
    })
}

/// Starts the harness relay (copy or splice), one port for the upstream's HTTP and one for its
/// TCP service.
fn start_relay(env: &Env, splice: bool) -> anyhow::Result<(Route, Process)> {
    let mut args = vec![
        "--to".to_string(),
        env.upstream.http.to_string(),
        "--to".into(),
        env.upstream.tcp.to_string(),
    ];
    if splice {
        args.push("--splice".into());
    }
    let (process, line) = spawn_harness_child(&env.harness, "relay", &args)?;
    let addrs: Vec<SocketAddr> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("relay printed {line:?}"))?;
    let [http, tcp] = addrs[..] else {
        bail!("relay printed {line:?}, expected two addresses");
    };
    Ok((Route::Relay { http, tcp }, process))
}

/// Whether this egressd build accepts `[proxy] tunnel_relay`, asked of `egressd check`.
fn egressd_has_relay_switch(env: &Env) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("egressd.toml");
    let addr = SocketAddr::new(LOOPBACK, free_port()?);
    let admin = SocketAddr::new(LOOPBACK, free_port()?);
    std::fs::write(
        &path,
        egressd_config(env, addr, admin, dir.path(), Some("copy"), None),
    )?;
    let out = Command::new(&env.egressd)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .with_context(|| format!("cannot run {}", env.egressd.display()))?;
    Ok(out.status.success())
}

/// Whether this egressd build takes `--log-format`, asked of its `--help`.
fn egressd_has_log_format(env: &Env) -> anyhow::Result<bool> {
    let out = Command::new(&env.egressd)
        .arg("--help")
        .output()
        .with_context(|| format!("cannot run {}", env.egressd.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--log-format"))
}

/// `egressd run` on the config at `config`, logging as `logging` says.
pub(crate) fn egressd_command(env: &Env, config: &Path, logging: Logging) -> Command {
    let mut command = Command::new(&env.egressd);
    if logging == Logging::Json {
        command.args(["--log-format", "json"]);
    }
    command.arg("run").arg("--config").arg(config);
    match (logging, &env.egressd_log) {
        (Logging::Off, _) => command.env("RUST_LOG", "warn"),
        (_, Some(level)) => command.env("RUST_LOG", level),
        // Not inherited either: the harness's own environment must not change the headline.
        (_, None) => command.env_remove("RUST_LOG"),
    };
    command
}

/// Starts egressd logging as `logging` says; `tunnel_relay` sets `[proxy] tunnel_relay`, else
/// the build's default; `state_url` puts its state in that PostgreSQL database, else in its
/// own state dir.
fn start_egressd(
    env: &Env,
    logging: Logging,
    tunnel_relay: Option<&str>,
    state_url: Option<&str>,
) -> anyhow::Result<(SocketAddr, Process)> {
    let dir = tempfile::tempdir()?;
    let addr = SocketAddr::new(LOOPBACK, free_port()?);
    let admin = SocketAddr::new(LOOPBACK, free_port()?);
    let path = dir.path().join("egressd.toml");
    let url_file = match state_url {
        Some(url) => Some(write_url_file(dir.path(), url)?),
        None => None,
    };
    let config = egressd_config(
        env,
        addr,
        admin,
        dir.path(),
        tunnel_relay,
        url_file.as_deref(),
    );
    std::fs::write(&path, config)?;
    let command = egressd_command(env, &path, logging);
    spawn_daemon("egressd", command, dir, addr)
}

/// Writes `url` to `dir/database-url` for `[state] url_file`: egressd warns about a password
/// inline in `url`.
pub(crate) fn write_url_file(dir: &Path, url: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("database-url");
    std::fs::write(&path, url).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The `[state]` table for the database URL in `url_file`.
pub(crate) fn state_table(url_file: &Path) -> String {
    format!(
        "[state]\nbackend = \"postgres\"\nurl_file = {:?}\n",
        url_file.display().to_string()
    )
}

fn egressd_config(
    env: &Env,
    addr: SocketAddr,
    admin: SocketAddr,
    dir: &Path,
    tunnel_relay: Option<&str>,
    url_file: Option<&Path>,
) -> String {
    let mut relay = tunnel_relay
        .map(|r| format!("tunnel_relay = \"{r}\"\n"))
        .unwrap_or_default();
    for line in &env.egressd_proxy {
        relay.push_str(line);
        relay.push('\n');
    }
    let state = url_file.map(state_table).unwrap_or_default();
    format!(
        r#"[proxy]
listen = "{addr}"
admin_listen = "{admin}"
# Its own, fresh, for every instance: a first start, like the other instances', and nothing
# written to the working directory (the default `state`).
state_dir = {state_dir:?}
{relay}connect_ports = [{tcp}]
http_ports = [{http}]
allow_private_cidrs = ["127.0.0.0/8"]
connect_timeout = "10s"
idle_timeout = "5m"
# Above the idle-tunnel count, so the memory scenario measures tunnels, not refusals.
max_connections = 30000

[dns]
overrides = {{ "{UPSTREAM_HOST}" = "{LOOPBACK}" }}

{state}
[allowlist]
domains = ["{UPSTREAM_HOST}"]
"#,
        state_dir = dir.join("state").display().to_string(),
        tcp = env.upstream.tcp.port(),
        http = env.upstream.http.port(),
    )
}

fn start_squid(squid: &Path, upstream: UpstreamAddrs) -> anyhow::Result<(SocketAddr, Process)> {
    let dir = tempfile::tempdir()?;
    // Squid drops root for its own user, which must still write its log and pid here.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
    let addr = SocketAddr::new(LOOPBACK, free_port()?);
    let d = dir.path().display();
    std::fs::write(
        dir.path().join("hosts"),
        format!("{LOOPBACK} {UPSTREAM_HOST}\n"),
    )?;
    let config = format!(
        r#"http_port {addr}
pid_filename {d}/squid.pid
cache_log {d}/cache.log
access_log none
cache_store_log none
cache deny all
cache_mem 0 MB
coredump_dir {d}
hosts_file {d}/hosts
dns_nameservers {LOOPBACK}
pinger_enable off
netdb_filename none
logfile_rotate 0
shutdown_lifetime 0 seconds
max_filedescriptors 65536
acl SSL_ports port {tcp}
acl Safe_ports port {http} {tcp}
acl CONNECT method CONNECT
acl upstream dstdomain {UPSTREAM_HOST}
http_access deny !Safe_ports
http_access deny CONNECT !SSL_ports
http_access allow upstream
http_access deny all
"#,
        tcp = upstream.tcp.port(),
        http = upstream.http.port(),
    );
    let path = dir.path().join("squid.conf");
    std::fs::write(&path, config)?;
    let mut command = Command::new(squid);
    command.arg("-N").arg("-f").arg(&path);
    spawn_daemon("squid", command, dir, addr)
}

fn start_tinyproxy(
    tinyproxy: &Path,
    upstream: UpstreamAddrs,
) -> anyhow::Result<(SocketAddr, Process)> {
    let dir = tempfile::tempdir()?;
    let addr = SocketAddr::new(LOOPBACK, free_port()?);
    let filter = dir.path().join("filter");
    std::fs::write(&filter, "^127\\.0\\.0\\.1$\n")?;
    let config = format!(
        r#"Port {port}
Listen {LOOPBACK}
Timeout 600
MaxClients 30000
LogLevel Critical
DisableViaHeader Yes
Allow {LOOPBACK}
ConnectPort {tcp}
Filter "{filter}"
FilterDefaultDeny Yes
FilterURLs Off
"#,
        port = addr.port(),
        tcp = upstream.tcp.port(),
        filter = filter.display(),
    );
    let path = dir.path().join("tinyproxy.conf");
    std::fs::write(&path, config)?;
    let mut command = Command::new(tinyproxy);
    command.arg("-d").arg("-c").arg(&path);
    spawn_daemon("tinyproxy", command, dir, addr)
}

/// Starts Traffic Server as a pure forward proxy: no reverse proxy or remap rules, no HTTP
/// cache (no storage at all), no transaction logs. `traffic_server` runs alone (the
/// `traffic_manager` of the Debian service is not needed) from a runroot in the temp dir,
/// so it reads its config there and writes its lock, state and `diags.log` there too. Empty
/// `cache.config`, `parent.config` and `sni.yaml` are left out: it only warns about them.
fn start_trafficserver(
    traffic_server: &Path,
    upstream: UpstreamAddrs,
) -> anyhow::Result<(SocketAddr, Process)> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let etc = root.join("etc");
    for sub in ["etc", "run", "var", "cache"] {
        std::fs::create_dir(root.join(sub))?;
    }
    let addr = SocketAddr::new(LOOPBACK, free_port()?);
    let d = root.display();
    // Binaries and plugins from the package; everything written, in the temp dir.
    let runroot = format!(
        "prefix: {d}\nexec_prefix: /usr\nbindir: /usr/bin\nsbindir: /usr/sbin\n\
         sysconfdir: {d}/etc\ndatadir: {d}/cache\nincludedir: /usr/include\n\
         libdir: /usr/lib/trafficserver\nlibexecdir: /usr/lib/trafficserver/modules\n\
         localstatedir: {d}/var\nruntimedir: {d}/run\nlogdir: {d}\ncachedir: {d}/cache\n"
    );
    std::fs::write(root.join("runroot.yaml"), runroot)?;
    let records = format!(
        r#"CONFIG proxy.config.http.server_ports STRING {port}:ipv4:ip-in={LOOPBACK}
CONFIG proxy.config.reverse_proxy.enabled INT 0
CONFIG proxy.config.url_remap.remap_required INT 0
CONFIG proxy.config.http.cache.http INT 0
CONFIG proxy.config.http.connect_ports STRING {tcp}
CONFIG proxy.config.log.logging_enabled INT 0
CONFIG proxy.config.admin.user_id STRING #-1
CONFIG proxy.config.hostdb.host_file.path STRING {d}/etc/hosts
CONFIG proxy.config.body_factory.template_sets_dir STRING /etc/trafficserver/body_factory
CONFIG proxy.config.exec_thread.autoconfig INT 1
CONFIG proxy.config.exec_thread.autoconfig.scale FLOAT 1.0
CONFIG proxy.config.net.connections_throttle INT 30000
CONFIG proxy.config.net.max_connections_in INT 30000
CONFIG proxy.config.http.transaction_no_activity_timeout_in INT 600
CONFIG proxy.config.http.transaction_no_activity_timeout_out INT 600
CONFIG proxy.config.http.keep_alive_no_activity_timeout_in INT 120
"#,
        port = addr.port(),
        tcp = upstream.tcp.port(),
    );
    std::fs::write(etc.join("records.config"), records)?;
    // Loopback clients may use every method, CONNECT included; loopback is the only
    // destination, as it is the only one reachable here.
    let ip_allow = format!(
        r#"ip_allow:
  - apply: in
    ip_addrs: {LOOPBACK}
    action: allow
    methods: ALL
  - apply: out
    ip_addrs: {LOOPBACK}
    action: allow
    methods: ALL
"#
    );
    std::fs::write(etc.join("ip_allow.yaml"), ip_allow)?;
    std::fs::write(etc.join("hosts"), format!("{LOOPBACK} {UPSTREAM_HOST}\n"))?;
    // Empty: no cache storage, no remap rules, no plugins, no TLS listeners.
    for empty in [
        "storage.config",
        "volume.config",
        "remap.config",
        "plugin.config",
        "ssl_multicert.config",
    ] {
        std::fs::write(etc.join(empty), "")?;
    }
    let mut command = Command::new(traffic_server);
    command.arg(format!("--run-root={d}/runroot.yaml"));
    let mut process = spawn_logged("traffic_server", command, dir)?;
    // It listens about a second before it has read its hosts file, answering "Unknown Host"
    // to every request until then.
    process.wait_proxying(addr, upstream)?;
    Ok((addr, process))
}

/// Starts Apache httpd's forward proxy (mod_proxy, mod_proxy_http, mod_proxy_connect) with
/// mpm_event in the foreground: one worker process of 128 threads, so CPU and memory are
/// that process's; keep-alive without a request limit; no access log. Its generic forward
/// proxy opens an upstream connection per request (pooling needs a worker defined per
/// backend, which a forward proxy does not have), and a tunnel holds a thread while open.
fn start_apache(apache: &Path, upstream: UpstreamAddrs) -> anyhow::Result<(SocketAddr, Process)> {
    let dir = tempfile::tempdir()?;
    // Started as root, the worker runs as www-data, and must still reach the mutex files.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
    let addr = SocketAddr::new(LOOPBACK, free_port()?);
    let d = dir.path().display();
    let modules = "/usr/lib/apache2/modules";
    let config = format!(
        r#"ServerRoot "{d}"
ServerName {LOOPBACK}
Listen {addr}
PidFile {d}/httpd.pid
Mutex file:{d} default
DefaultRuntimeDir {d}
ErrorLog /dev/stderr
LogLevel warn
User www-data
Group www-data
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule authz_host_module {modules}/mod_authz_host.so
LoadModule proxy_module {modules}/mod_proxy.so
LoadModule proxy_http_module {modules}/mod_proxy_http.so
LoadModule proxy_connect_module {modules}/mod_proxy_connect.so
ServerLimit 1
StartServers 1
ThreadLimit 128
ThreadsPerChild 128
MaxRequestWorkers 128
MinSpareThreads 1
MaxSpareThreads 128
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 120
Timeout 600
ProxyRequests On
ProxyVia Off
ProxyTimeout 600
AllowCONNECT {tcp} {http}
<Proxy "*">
    Require ip {LOOPBACK}
</Proxy>
"#,
        tcp = upstream.tcp.port(),
        http = upstream.http.port(),
    );
    let path = dir.path().join("httpd.conf");
    std::fs::write(&path, config)?;
    let mut command = Command::new(apache);
    command.arg("-D").arg("FOREGROUND").arg("-f").arg(&path);
    let mut process = spawn_logged("apache2", command, dir)?;
    process.terminate_first = true;
    process.wait_listening(addr)?;
    process.measure_child()?;
    Ok((addr, process))
}

/// Starts g3proxy as a plain HTTP proxy: a `direct_fixed` escaper that may reach loopback
/// (its default denies it) and maps the upstream's name to its address itself, so no DNS
/// query is sent; no task logs; 64 KiB copy buffers, like the harness's copy relay.
fn start_g3proxy(g3proxy: &Path) -> anyhow::Result<(SocketAddr, Process)> {
    let dir = tempfile::tempdir()?;
    let addr = SocketAddr::new(LOOPBACK, free_port()?);
    let config = format!(
        r#"---
log: discard

resolver:
  # Never asked: the escaper's redirection answers for the only name in use.
  - name: default
    type: hickory
    server: {LOOPBACK}

escaper:
  - name: default
    type: direct_fixed
    resolver: default
    resolve_strategy: IPv4Only
    resolve_redirection:
      {UPSTREAM_HOST}: [{LOOPBACK}]
    egress_network_filter:
      default: forbid
      allow: {LOOPBACK}

server:
  - name: http
    type: http_proxy
    escaper: default
    listen:
      address: "{addr}"
    tcp_copy_buffer_size: 64K
"#
    );
    let path = dir.path().join("g3proxy.yaml");
    std::fs::write(&path, config)?;
    let mut command = Command::new(g3proxy);
    command.arg("-c").arg(&path).arg("-C").arg(dir.path());
    spawn_daemon("g3proxy", command, dir, addr)
}

/// Resident memory of `pid` in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc status")
}

/// User plus system CPU time of `pid` (all its threads) in seconds, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    stat_cpu_seconds(format!("/proc/{pid}/stat"))
}

/// CPU time of the calling thread in seconds: from `/proc/thread-self/schedstat` (in ns; a
/// thread costing a few per cent of a core shows there, where 10 ms ticks round it away),
/// else utime + stime from `/proc/thread-self/stat`.
pub fn thread_cpu_seconds() -> anyhow::Result<f64> {
    let nanos = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        // "0 0 0": the kernel keeps no scheduler statistics.
        .filter(|ns| *ns > 0);
    match nanos {
        Some(ns) => Ok(ns as f64 / 1e9),
        None => stat_cpu_seconds("/proc/thread-self/stat"),
    }
}

/// utime + stime of a `stat` file of procfs, in seconds.
fn stat_cpu_seconds(path: impl AsRef<Path>) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path)?;
    // Fields after the command name, which may itself hold spaces: state is the first,
    // utime and stime the 12th and 13th.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("short stat")?.parse::<u64>()?
        + fields.get(12).context("short stat")?.parse::<u64>()?;
    // USER_HZ is 100 on every Linux architecture the harness runs on.
    Ok(ticks as f64 / 100.0)
}

/// Context switches (voluntary plus involuntary) of each thread of a process at one moment.
#[derive(Debug, Clone, Default)]
pub struct Switches {
    per_thread: HashMap<u32, u64>,
}

impl Switches {
    /// Reads `/proc/PID/task/*/status`: `/proc/PID/status` alone counts the main thread only.
    pub fn of(pid: u32) -> anyhow::Result<Switches> {
        let mut per_thread = HashMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let task = task?;
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            // A thread may exit between the listing and the read.
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            let mut count = 0;
            for line in status.lines() {
                let value = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"));
                if let Some(value) = value {
                    count += value.trim().parse::<u64>()?;
                }
            }
            per_thread.insert(tid, count);
        }
        Ok(Switches { per_thread })
    }

    /// Switches since `before`: threads started since count in full; threads that exited
    /// since are lost (their final counts are gone with them).
    pub fn since(&self, before: &Switches) -> u64 {
        self.per_thread
            .iter()
            .map(|(tid, now)| now.saturating_sub(before.per_thread.get(tid).copied().unwrap_or(0)))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn env_with_log(egressd_log: Option<&str>) -> Env {
        let addr = SocketAddr::new(LOOPBACK, 9);
        Env {
            upstream: UpstreamAddrs {
                http: addr,
                tcp: addr,
            },
            harness: PathBuf::from("egressd-bench"),
            egressd: PathBuf::from("egressd"),
            egressd_log: egressd_log.map(str::to_string),
            egressd_proxy: Vec::new(),
            state_url: None,
            state_database: None,
            g3proxy: None,
        }
    }

    /// `RUST_LOG` as the command sets it: `Some(None)` when it removes it.
    fn rust_log(command: &Command) -> Option<Option<&OsStr>> {
        command
            .get_envs()
            .find(|(key, _)| *key == "RUST_LOG")
            .map(|(_, value)| value)
    }

    #[test]
    fn egressd_rows_log_as_shipped_unless_the_access_log_is_off() {
        let config = Path::new("egressd.toml");
        let shipped = egressd_command(&env_with_log(None), config, Logging::Shipped);
        assert_eq!(rust_log(&shipped), Some(None), "not inherited either");
        let args: Vec<&OsStr> = shipped.get_args().collect();
        assert_eq!(args, ["run", "--config", "egressd.toml"]);

        let json = egressd_command(&env_with_log(None), config, Logging::Json);
        let args: Vec<&OsStr> = json.get_args().collect();
        assert_eq!(args[..3], ["--log-format", "json", "run"]);
        assert_eq!(rust_log(&json), Some(None));

        let overridden = env_with_log(Some("debug"));
        let shipped = egressd_command(&overridden, config, Logging::Shipped);
        assert_eq!(rust_log(&shipped), Some(Some(OsStr::new("debug"))));
        let off = egressd_command(&overridden, config, Logging::Off);
        assert_eq!(rust_log(&off), Some(Some(OsStr::new("warn"))));
    }

    #[test]
    fn switches_count_new_threads_in_full_and_drop_exited_ones() {
        let before = Switches {
            per_thread: HashMap::from([(1, 10), (2, 5)]),
        };
        let after = Switches {
            per_thread: HashMap::from([(1, 12), (3, 4)]),
        };
        assert_eq!(after.since(&before), 2 + 4);
    }

    #[test]
    fn switches_are_read_for_every_thread_of_a_process() {
        let worker = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(200)));
        let switches = Switches::of(std::process::id()).unwrap();
        worker.join().unwrap();
        assert!(switches.per_thread.len() >= 2, "{switches:?}");
    }
}
