//! The paths under test and the processes behind them.
//!
//! Every path is a [`Kind`]: the references (direct, the copy relay, the splice relay) and the
//! proxies (egressd, egressd with its shared state in PostgreSQL, egressd with its copy relay,
//! squid, tinyproxy). [`Kind::start`] brings
//! one up on a free loopback port with a generated config in its own temp dir and waits until
//! it accepts connections; a proxy that is not installed comes back as [`Started::Missing`].
//! Each [`Process`] is killed when dropped, and the harness's own children (upstream, relays)
//! also exit when their stdin closes, so even a killed harness leaves none of them behind.

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
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
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
        for name in ["stderr.log", "cache.log"] {
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
}

impl Drop for Process {
    fn drop(&mut self) {
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
    Egressd,
    /// egressd with `[state] backend = "postgres"`: the same config plus the database, for
    /// the A/B against the file backend (issue 21). Runs only when a database was given, and
    /// right after egressd, so the two share each repetition's conditions.
    EgressdPostgres,
    /// egressd with `[proxy] tunnel_relay = "copy"`: run in the bulk scenarios only, to show
    /// what its default splice relay gives.
    EgressdCopy,
    Squid,
    Tinyproxy,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Direct,
        Kind::CopyRelay,
        Kind::SpliceRelay,
        Kind::Egressd,
        Kind::EgressdPostgres,
        Kind::EgressdCopy,
        Kind::Squid,
        Kind::Tinyproxy,
    ];

    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::CopyRelay => "copy relay",
            Kind::SpliceRelay => "splice relay",
            Kind::Egressd => "egressd",
            Kind::EgressdPostgres => "egressd (postgres state)",
            Kind::EgressdCopy => "egressd (copy relay)",
            Kind::Squid => "squid",
            Kind::Tinyproxy => "tinyproxy",
        }
    }

    /// The name on the command line (`--only`).
    pub fn key(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::CopyRelay => "copy-relay",
            Kind::SpliceRelay => "splice-relay",
            Kind::Egressd => "egressd",
            Kind::EgressdPostgres => "egressd-postgres",
            Kind::EgressdCopy => "egressd-copy",
            Kind::Squid => "squid",
            Kind::Tinyproxy => "tinyproxy",
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
            Kind::Egressd | Kind::EgressdPostgres | Kind::EgressdCopy
        )
    }

    /// How this path names the upstream, when it is not [`UPSTREAM_HOST`].
    pub fn note(self) -> Option<&'static str> {
        match self {
            Kind::Tinyproxy => Some(
                "tinyproxy resolves names only through the system resolver, so it is sent to \
                 127.0.0.1 literally (its filter allows exactly that host)",
            ),
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
    /// `RUST_LOG` for egressd.
    pub egressd_log: String,
    /// Extra `[proxy]` lines for egressd (`--egressd-proxy`), for A/B runs.
    pub egressd_proxy: Vec<String>,
    /// The database URL of [`Kind::EgressdPostgres`]; `None` when that path does not run.
    pub state_url: Option<String>,
    /// What the report says about that database.
    pub state_database: Option<String>,
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
    /// The proxy is not installed.
    Missing,
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
        match self {
            Kind::Direct => running(Route::Direct, None),
            Kind::CopyRelay | Kind::SpliceRelay => {
                let (route, process) = start_relay(env, self == Kind::SpliceRelay)?;
                running(route, Some(process))
            }
            Kind::Egressd => {
                let (addr, process) = start_egressd(env, None, None)?;
                running(proxy_route(addr, UPSTREAM_HOST), Some(process))
            }
            Kind::EgressdPostgres => {
                let url = env.state_url.as_deref().context(
                    "egressd (postgres state) needs a database: --egressd-postgres or \
                     --egressd-postgres-url",
                )?;
                let (addr, process) = start_egressd(env, None, Some(url))?;
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
                let (addr, process) = start_egressd(env, switch.then_some("copy"), None)?;
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
            Kind::Squid => match find_program("squid") {
                Some(squid) => {
                    let (addr, process) = start_squid(&squid, env.upstream)?;
                    running(proxy_route(addr, UPSTREAM_HOST), Some(process))
                }
                None => Ok(Started::Missing),
            },
            Kind::Tinyproxy => match find_program("tinyproxy") {
                Some(tinyproxy) => {
                    let (addr, process) = start_tinyproxy(&tinyproxy, env.upstream)?;
                    running(proxy_route(addr, &LOOPBACK.to_string()), Some(process))
                }
                None => Ok(Started::Missing),
            },
        }
    }

    /// The version string shown in the report.
    pub fn version(self, env: &Env) -> String {
        let found = match self {
            Kind::Direct | Kind::CopyRelay | Kind::SpliceRelay => {
                Some(format!("harness {}", env!("CARGO_PKG_VERSION")))
            }
            Kind::Egressd | Kind::EgressdPostgres | Kind::EgressdCopy => {
                first_line(&env.egressd, &["--version"]).map(|v| match git_revision() {
                    Some(rev) => format!("{v} (git {rev})"),
                    None => v,
                })
            }
            Kind::Squid => find_program("squid").and_then(|p| first_line(&p, &["-v"])),
            Kind::Tinyproxy => find_program("tinyproxy").and_then(|p| first_line(&p, &["-v"])),
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
    mut command: Command,
    dir: TempDir,
    addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, Process)> {
    let stderr = File::create(dir.path().join("stderr.log"))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let mut process = Process {
        name,
        child,
        _stdin: None,
        dir: Some(dir),
    };
    process.wait_listening(addr)?;
    Ok((addr, process))
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

/// Starts egressd; `tunnel_relay` sets `[proxy] tunnel_relay`, else the build's default;
/// `state_url` puts its state in that PostgreSQL database, else in its own state dir.
fn start_egressd(
    env: &Env,
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
    let mut command = Command::new(&env.egressd);
    command
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", &env.egressd_log);
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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
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
