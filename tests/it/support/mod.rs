//! Test support: the real `egressd` binary on loopback, real origins, real clients.
//!
//! Every server binds `127.0.0.1:0`; names reach the origins through `[dns] overrides`, with
//! `allow_private_cidrs = ["127.0.0.0/8"]` so loopback origins are reachable.
#![allow(dead_code)]

pub mod balancer;
pub mod mtls;
pub mod postgres;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_egressd");

/// Bounded wait for events that should happen promptly; never a speed assertion.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A running `egressd run` process. Killed on drop.
pub struct Egressd {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// The test's files: the config and the state dir, and whatever the test put beside them.
    dir: PathBuf,
    /// Removed on drop; `None` when the test keeps the directory itself.
    tempdir: Option<tempfile::TempDir>,
    pub config_path: PathBuf,
    /// Kept for restarts.
    run_as: RunAs,
    logs: Arc<Mutex<Vec<String>>>,
}

/// The user egressd runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunAs {
    /// The test process's own user (root in CI).
    Invoker,
    /// nobody/nogroup when the tests run as root, so that file permissions apply to egressd;
    /// the invoker otherwise, for whom they apply already.
    Unprivileged,
}

/// The uid and gid of nobody/nogroup, whom [`EgressdBuilder::unprivileged`] runs egressd as.
pub const NOBODY: u32 = 65534;

/// Whether the tests run as root, for whom a chmod 000 file is as readable as any.
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").expect("procfs").uid() == 0
}

/// Sets the permission bits of `path` (`0o000`: unreadable for anyone but root).
pub fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl RunAs {
    /// The `egressd` command run as this user. Unprivileged under root, `dir` (the test's
    /// files) and everything in it is given to nobody first.
    fn command(self, dir: &std::path::Path) -> Command {
        let mut cmd = Command::new(BIN);
        if self == RunAs::Unprivileged && running_as_root() {
            use std::os::unix::process::CommandExt;
            assert_others_can_reach(std::path::Path::new(BIN));
            assert_others_can_reach(dir);
            chown_all(dir, NOBODY);
            cmd.uid(NOBODY).gid(NOBODY);
        }
        cmd
    }
}

/// Panics unless every directory above `path` lets other users through (as /tmp does).
fn assert_others_can_reach(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for parent in path
        .ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
    {
        let mode = std::fs::metadata(parent).unwrap().permissions().mode();
        assert!(
            mode & 0o001 != 0,
            "egressd runs as nobody here, who cannot enter {} (mode {mode:o}): {}",
            parent.display(),
            path.display()
        );
    }
}

/// `chown -R id:id path`.
fn chown_all(path: &std::path::Path, id: u32) {
    std::os::unix::fs::lchown(path, Some(id), Some(id)).unwrap();
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_all(&entry.unwrap().path(), id);
        }
    }
}

/// Builder for an egressd config; `[proxy]` listens on free loopback ports.
pub struct EgressdBuilder {
    proxy_lines: Vec<String>,
    overrides: Vec<(String, String)>,
    dns_lines: Vec<String>,
    /// Raw TOML between `[dns]` and `[allowlist]` (e.g. `[[mtls]]` tables).
    tables: Vec<String>,
    domains: Vec<String>,
    run_as: RunAs,
}

/// egressd allowing `api.test` (resolved to loopback) for plain HTTP on `origin`'s port; only
/// 443 is open for CONNECT.
pub fn api_proxy(origin: &Origin) -> EgressdBuilder {
    http_proxy("api.test", origin.port())
}

/// egressd allowing `name` (resolved to loopback) for plain HTTP on `port`; only 443 is open
/// for CONNECT.
pub fn http_proxy(name: &str, port: u16) -> EgressdBuilder {
    egressd().allow_local(name).ports(&[443], &[port])
}

/// egressd allowing `name` (resolved to loopback) for CONNECT on `port` only.
pub fn tunnel_proxy(name: &str, port: u16) -> EgressdBuilder {
    egressd().allow_local(name).ports(&[port], &[])
}

/// Both tunnel relays: every tunnel test runs against each.
pub const RELAYS: [&str; 2] = ["splice", "copy"];

pub fn egressd() -> EgressdBuilder {
    EgressdBuilder {
        // A fixed Via pseudonym: responses then read `via: 1.1 egressd` whatever the host.
        proxy_lines: vec![
            "allow_private_cidrs = [\"127.0.0.0/8\"]".into(),
            "via_name = \"egressd\"".into(),
            // No load balancer to wait for: SIGTERM stops accepting at once (a test that
            // checks the drain sets its own).
            "drain_delay = \"0s\"".into(),
        ],
        overrides: Vec::new(),
        dns_lines: Vec::new(),
        tables: Vec::new(),
        domains: Vec::new(),
        run_as: RunAs::Invoker,
    }
}

impl EgressdBuilder {
    /// Adds a raw `key = value` line to `[proxy]`.
    pub fn proxy(mut self, line: &str) -> Self {
        self.proxy_lines.push(line.to_string());
        self
    }

    /// Runs egressd as nobody when the tests run as root (CI does), so that permission faults
    /// show: root reads a chmod 000 file anyway. The test's directory is given to nobody so
    /// that egressd can run at all. Not root, it changes nothing.
    pub fn unprivileged(mut self) -> Self {
        self.run_as = RunAs::Unprivileged;
        self
    }

    /// Replaces the default `allow_private_cidrs`.
    pub fn strict_private(mut self) -> Self {
        self.proxy_lines
            .retain(|l| !l.starts_with("allow_private_cidrs"));
        self
    }

    /// Replaces the default `drain_delay` of 0 s.
    pub fn drain_delay(mut self, delay: &str) -> Self {
        self.proxy_lines.retain(|l| !l.starts_with("drain_delay"));
        self.proxy(&format!("drain_delay = \"{delay}\""))
    }

    /// Replaces the fixed `via_name`.
    pub fn via_name(mut self, name: &str) -> Self {
        self.proxy_lines.retain(|l| !l.starts_with("via_name"));
        self.proxy(&format!("via_name = \"{name}\""))
    }

    pub fn dns(mut self, name: &str, ip: &str) -> Self {
        self.overrides.push((name.into(), ip.into()));
        self
    }

    pub fn dns_line(mut self, line: &str) -> Self {
        self.dns_lines.push(line.into());
        self
    }

    pub fn allow(mut self, domain: &str) -> Self {
        self.domains.push(domain.into());
        self
    }

    /// Allows `name` and resolves it to loopback, where the test's servers listen.
    /// Adds raw TOML tables (e.g. `[[mtls]]`) before `[allowlist]`.
    pub fn table(mut self, toml: &str) -> Self {
        self.tables.push(toml.to_string());
        self
    }

    /// `proxy.tunnel_relay`: "splice" or "copy".
    pub fn relay(self, relay: &str) -> Self {
        self.proxy(&format!("tunnel_relay = \"{relay}\""))
    }

    pub fn allow_local(self, name: &str) -> Self {
        self.dns(name, "127.0.0.1").allow(name)
    }

    pub fn ports(self, connect: &[u16], http: &[u16]) -> Self {
        self.proxy(&format!("connect_ports = {connect:?}"))
            .proxy(&format!("http_ports = {http:?}"))
    }

    pub fn config_text(&self, state_dir: &std::path::Path) -> String {
        let mut text = String::from("[proxy]\n");
        text.push_str(&format!(
            "state_dir = {:?}\n",
            state_dir.display().to_string()
        ));
        if !self.proxy_lines.iter().any(|l| l.starts_with("listen")) {
            text.push_str("listen = \"127.0.0.1:0\"\n");
        }
        text.push_str("admin_listen = \"127.0.0.1:0\"\n");
        for line in &self.proxy_lines {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("[dns]\n");
        let overrides: Vec<String> = self
            .overrides
            .iter()
            .map(|(n, ip)| format!("\"{n}\" = \"{ip}\""))
            .collect();
        text.push_str(&format!("overrides = {{ {} }}\n", overrides.join(", ")));
        for line in &self.dns_lines {
            text.push_str(line);
            text.push('\n');
        }
        for table in &self.tables {
            text.push_str(table);
            text.push('\n');
        }
        let domains: Vec<String> = self.domains.iter().map(|d| format!("\"{d}\"")).collect();
        text.push_str(&format!(
            "[allowlist]\ndomains = [{}]\n",
            domains.join(", ")
        ));
        text
    }

    /// Writes the config as `dir/egressd.toml`, with the state dir `dir/state`.
    pub fn write_config(&self, dir: &std::path::Path) -> PathBuf {
        let config_path = dir.join("egressd.toml");
        std::fs::write(&config_path, self.config_text(&dir.join("state"))).unwrap();
        config_path
    }

    /// Writes the config in a new temp dir, starts the binary and waits for its listening
    /// line.
    pub fn start(self) -> Egressd {
        let dir = tempfile::tempdir().unwrap();
        let config_path = self.write_config(dir.path());
        Egressd::launch(
            dir.path().to_path_buf(),
            Some(dir),
            config_path,
            self.run_as,
        )
    }

    /// Like [`EgressdBuilder::start`], in `dir`, which holds the test's other files (e.g.
    /// certificates) and which the test keeps.
    pub fn start_in(self, dir: &std::path::Path) -> Egressd {
        let config_path = self.write_config(dir);
        Egressd::launch(dir.to_path_buf(), None, config_path, self.run_as)
    }

    /// Runs `egressd run` on `config` for a start that must fail: waits (bounded) for the exit
    /// and returns its code and stderr.
    pub async fn run_to_exit(&self, config: &std::path::Path) -> (Option<i32>, String) {
        let dir = config.parent().expect("the config is in the test's dir");
        let mut cmd = tokio::process::Command::from(self.run_as.command(dir));
        cmd.args(["run", "--config"]).arg(config).kill_on_drop(true);
        let out = tokio::time::timeout(PATIENCE, cmd.output())
            .await
            .expect("egressd to exit")
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Egressd {
    /// Starts the binary, as the test's user, on `config_path` in `dir`.
    pub fn spawn(dir: tempfile::TempDir, config_path: PathBuf) -> Egressd {
        Egressd::launch(
            dir.path().to_path_buf(),
            Some(dir),
            config_path,
            RunAs::Invoker,
        )
    }

    fn launch(
        dir: PathBuf,
        tempdir: Option<tempfile::TempDir>,
        config_path: PathBuf,
        run_as: RunAs,
    ) -> Egressd {
        let mut child = run_as
            .command(&dir)
            .args(["--log-format", "json", "run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start egressd");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("egressd listening") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.clone());
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let line = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("egressd did not start; logs: {:?}", logs.lock().unwrap())
        });
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        let addr = |key: &str| json[key].as_str().unwrap().parse().unwrap();
        Egressd {
            proxy: addr("proxy"),
            admin: addr("admin"),
            child,
            dir,
            tempdir,
            config_path,
            run_as,
            logs,
        }
    }

    /// The temp dir holding the config and the state dir.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Stops with SIGTERM and starts again on the same config and state dir.
    pub async fn restart(mut self) -> Egressd {
        self.terminate().await;
        self.restart_stopped()
    }

    /// Starts again after the process was stopped (see [`Egressd::terminate`]).
    pub fn restart_stopped(mut self) -> Egressd {
        let tempdir = self.tempdir.take();
        Egressd::launch(
            self.dir.clone(),
            tempdir,
            self.config_path.clone(),
            self.run_as,
        )
    }

    /// Replaces the `domains = [...]` line of the config, writing the file the way `how` says.
    pub fn set_domains(&self, domains: &[&str], how: Write) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        write_file(&self.config_path, &with_domains(&text, domains), how);
    }

    /// The `/v1/allowlist` view.
    pub async fn allowlist(&self) -> serde_json::Value {
        let (status, body) = self.admin_get("/v1/allowlist").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub async fn generation(&self) -> u64 {
        self.allowlist().await["generation"].as_u64().unwrap()
    }

    /// Waits until `/v1/allowlist` satisfies `pred`.
    pub async fn wait_allowlist(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        eventually("the allowlist view to match", || async {
            let view = self.allowlist().await;
            pred(&view).then_some(view)
        })
        .await
    }

    /// Waits until the config generation exceeds `previous`.
    pub async fn wait_generation_above(&self, previous: u64) -> serde_json::Value {
        self.wait_allowlist(|v| v["generation"].as_u64().unwrap() > previous)
            .await
    }

    pub async fn admin_post(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        self.admin_request(&format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        ))
        .await
    }

    /// Sends `method path` with a JSON body to the admin listener; returns status and body.
    pub async fn admin_json(&self, method: &str, path: &str, json: &str) -> (u16, String) {
        self.admin_request(&json_request(method, path, json)).await
    }

    /// Like [`Egressd::admin_json`], for a test that may have killed egressd: `None` when
    /// there is no connection or no answer.
    pub async fn try_admin_json(
        &self,
        method: &str,
        path: &str,
        json: &str,
    ) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(self.admin).await.ok()?;
        let request = json_request(method, path, json);
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let raw = String::from_utf8_lossy(&raw).into_owned();
        raw.starts_with("HTTP/1.1 ")
            .then(|| (status(&raw), body(&raw).to_string()))
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        self.admin_request(&format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        ))
        .await
    }

    /// Sends `request` to the admin listener; returns the status and the body.
    async fn admin_request(&self, request: &str) -> (u16, String) {
        let raw = raw_exchange(self.admin, request.as_bytes()).await;
        (status(&raw), body(&raw).to_string())
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics(&self) -> String {
        let (status, text) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "{text}");
        text
    }

    /// The current value of one series (see [`metric`]).
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics().await, series)
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    /// Every JSON log line emitted so far.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Access-log records (one per request or tunnel) emitted so far.
    pub fn access_logs(&self) -> Vec<serde_json::Value> {
        self.log_lines()
            .into_iter()
            .filter(|v| v.get("decision").is_some())
            .collect()
    }

    /// Waits until any JSON log line satisfies `pred`.
    pub async fn wait_for_line(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        eventually("a matching log line", || async {
            self.log_lines().into_iter().find(&pred)
        })
        .await
    }

    /// Waits until an access-log record satisfies `pred`.
    pub async fn wait_for_log(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        eventually("a matching access-log line", || async {
            self.access_logs().into_iter().find(&pred)
        })
        .await
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self) -> Option<i32> {
        let child = &mut self.child;
        eventually("egressd to exit", || {
            let status = child.try_wait().unwrap();
            async move { status.map(|s| s.code()) }
        })
        .await
    }

    /// Stops with SIGTERM and checks that it exits cleanly.
    pub async fn terminate(&mut self) {
        self.signal("TERM");
        assert_eq!(self.wait_exit().await, Some(0), "exit code after SIGTERM");
    }
}

impl Drop for Egressd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` with its `domains = [...]` line replaced.
pub fn with_domains(text: &str, domains: &[&str]) -> String {
    let list: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    let mut out: String = text
        .lines()
        .map(|l| {
            if l.starts_with("domains = ") {
                format!("domains = [{}]", list.join(", "))
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

/// How a test writes a config file, as editors and Kubernetes do.
#[derive(Clone, Copy, Debug)]
pub enum Write {
    /// Truncate and write the same inode.
    InPlace,
    /// Write a temp file beside it and rename it over (vim, most editors, `sed -i`).
    Rename,
}

pub fn write_file(path: &std::path::Path, text: &str, how: Write) {
    match how {
        Write::InPlace => std::fs::write(path, text).unwrap(),
        Write::Rename => {
            let tmp = path.with_extension("tmp~");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }
}

/// Polls `probe` until it yields a value, for at most [`PATIENCE`]; panics naming `what`.
/// For events that happen promptly but not synchronously (a reload, a log line).
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(what, PATIENCE, probe).await
}

/// [`eventually`] with a patience of `timeout` instead of [`PATIENCE`]: for an event that
/// takes longer by design (a timer, a settling period), or a probe that waits itself.
pub async fn eventually_within<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_explained_within(what, timeout, || {
        let probed = probe();
        async move { probed.await.ok_or_else(String::new) }
    })
    .await
}

/// [`eventually`] for a probe that says, when the event has not happened yet, what it saw
/// instead (`Err`); the panic reports the last such state.
/// The state is formatted only for the panic, so it may be costly to describe.
pub async fn eventually_explained<T, E, F, Fut>(what: &str, probe: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    eventually_explained_within(what, PATIENCE, probe).await
}

/// [`eventually_explained`] with a patience of `timeout`. The one polling loop: every other
/// wait in the tests comes here. A probe that is slow itself counts against `timeout`; the
/// last probe may start just before the deadline, so the wait can overrun it by one probe.
pub async fn eventually_explained_within<T, E, F, Fut>(
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = match probe().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            match seen.to_string().as_str() {
                "" => panic!("timed out after {timeout:?} waiting for {what}"),
                seen => panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The end of a table test that runs every case before it fails: panics, once, listing
/// `failures` (one "case name: what was wrong" line per failed case) out of `cases` run.
#[track_caller]
pub fn assert_no_failures(failures: &[String], cases: usize) {
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// What each open file descriptor of process `pid` points at (`socket:[…]`, `pipe:[…]`, a
/// path), sorted, so a failure can say which one was left behind.
pub fn open_fds(pid: u32) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            Some(format!(
                "{}->{}",
                entry.file_name().to_string_lossy(),
                target.display()
            ))
        })
        .collect();
    fds.sort();
    fds
}

/// An HTTP origin that reports what it received: `GET /echo` answers with the request head
/// as text; other routes are in [`origin_route`].
pub struct Origin {
    pub addr: SocketAddr,
}

pub async fn origin() -> Origin {
    let addr = serve(|stream| async move {
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service_fn(origin_route))
            .await;
    })
    .await;
    Origin { addr }
}

/// Listens on a free loopback port and runs `handle` on every connection, each in a task of
/// its own, for as long as the test runs.
async fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream));
        }
    });
    addr
}

impl Origin {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

async fn origin_route(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path().to_string();
    let mut head = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
    for (name, value) in req.headers() {
        head.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
    }
    let response = match path.as_str() {
        "/hop" => Response::builder()
            .header("connection", "x-private-hop")
            .header("x-private-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-end-to-end", "kept")
            .body(Full::new(Bytes::from(head)))
            .unwrap(),
        "/body" => {
            let body = req.into_body().collect().await?.to_bytes();
            Response::new(Full::new(Bytes::from(format!(
                "received {} bytes",
                body.len()
            ))))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Response::new(Full::new(Bytes::from("slow done")))
        }
        "/big" => Response::new(Full::new(Bytes::from(vec![b'x'; 1 << 20]))),
        _ => Response::new(Full::new(Bytes::from(head))),
    };
    Ok(response)
}

/// An origin for redirect audits, on one port for every name:
/// `/start` → 302 `http://b.test:PORT/next` → 301 `/final` (relative) → 200;
/// `/to-internal` → 302 `http://internal.test:PORT/`; `/loop` → 302 `/loop`;
/// `/no-head` answers HEAD with 405 and GET with a 302 to `/final`.
pub async fn redirecting_origin() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| async move {
                    let redirect = |status: u16, to: String| {
                        Response::builder().status(status).header("location", to)
                    };
                    let response = match (req.method().as_str(), req.uri().path()) {
                        (_, "/start") => redirect(302, format!("http://b.test:{port}/next")),
                        (_, "/next") => redirect(301, "/final".into()),
                        (_, "/to-internal") => {
                            redirect(302, format!("http://internal.test:{port}/"))
                        }
                        (_, "/loop") => redirect(302, "/loop".into()),
                        ("HEAD", "/no-head") => Response::builder().status(405),
                        (_, "/no-head") => redirect(302, "final".into()),
                        _ => Response::builder().status(200),
                    };
                    Ok::<_, hyper::Error>(response.body(Full::new(Bytes::new())).unwrap())
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

/// An upstream that answers any request with a chunked body that never ends: `chunk` (the
/// chunk's wire form) again and again, `pause` apart, for as long as the peer reads.
pub async fn endless_upstream(chunk: Vec<u8>, pause: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                read_head(&mut stream).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await;
                while stream.write_all(&chunk).await.is_ok() {
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            });
        }
    });
    port
}

/// A TCP server that echoes until EOF, then closes: shows half-close passing through.
pub async fn echo_server() -> SocketAddr {
    serve(|mut stream| async move {
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received).await;
        let _ = stream
            .write_all(format!("echo:{}", String::from_utf8_lossy(&received)).as_bytes())
            .await;
        let _ = stream.shutdown().await;
    })
    .await
}

/// A loopback port where nothing answers, reserved for as long as the value is held; it
/// derefs to the port number and displays as it.
///
/// Dropping a listener and using its number later is a race in a test binary whose tests run
/// in parallel: another test may bind the number in between. So the port stays bound, but
/// answers nothing: a TCP socket bound without `listen`, so a connection is refused (RST,
/// `ECONNREFUSED`), and a UDP socket bound and connected to itself, so a datagram from anyone
/// else bounces (ICMP port unreachable, `ECONNREFUSED` to a connected sender such as a DNS
/// client). Neither sets `SO_REUSEADDR` or `SO_REUSEPORT`, so no other socket can bind the
/// port, not even egressd's `SO_REUSEPORT` listeners.
pub struct ClosedPort {
    port: u16,
    /// Bound, not listening: holds the TCP port and refuses connections to it.
    _tcp: socket2::Socket,
    /// Connected to itself: holds the UDP port and takes no datagram from anyone else.
    _udp: std::net::UdpSocket,
}

impl ClosedPort {
    fn reserve() -> ClosedPort {
        // The number comes from a TCP bind to port 0; the same UDP port may be taken, then
        // another number is tried.
        for _ in 0..100 {
            let tcp = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .unwrap();
            tcp.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
                .unwrap();
            let port = tcp.local_addr().unwrap().as_socket().unwrap().port();
            let Ok(udp) = std::net::UdpSocket::bind(("127.0.0.1", port)) else {
                continue;
            };
            udp.connect(udp.local_addr().unwrap()).unwrap();
            return ClosedPort {
                port,
                _tcp: tcp,
                _udp: udp,
            };
        }
        panic!("no loopback port free for both TCP and UDP in 100 tries");
    }
}

impl std::ops::Deref for ClosedPort {
    type Target = u16;

    fn deref(&self) -> &u16 {
        &self.port
    }
}

impl std::fmt::Display for ClosedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.port.fmt(f)
    }
}

/// A port where nothing answers, held until the returned value is dropped (see
/// [`ClosedPort`]): keep it alive for as long as the test relies on the port being closed.
#[must_use = "the port is closed only while this is held"]
pub fn closed_port() -> ClosedPort {
    ClosedPort::reserve()
}

/// Sends raw bytes, reads until the peer closes (bounded), returns what came back.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response head (up to the blank line) from `stream`.
pub async fn read_head(stream: &mut TcpStream) -> String {
    read_until(stream, b"\r\n\r\n").await
}

/// Reads from `stream` up to and including `end`, a byte at a time so nothing after it is
/// consumed; panics if the peer closes first or nothing comes for [`PATIENCE`].
pub async fn read_until(stream: &mut TcpStream, end: &[u8]) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(end) {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
            .await
            .expect("data in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed before {:?}: {:?}",
            String::from_utf8_lossy(end),
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    String::from_utf8(buf).unwrap()
}

/// Reads until the peer closes the connection. Panics naming `what` if it has not closed
/// within [`PATIENCE`]; an I/O error (a reset) is returned.
pub async fn read_to_close(stream: &mut TcpStream, what: &str) -> std::io::Result<Vec<u8>> {
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received))
        .await
        .unwrap_or_else(|_| panic!("{what} was not closed in time"))?;
    Ok(received)
}

/// Reads one response: its head, then a `Content-Length` body (none without the header).
pub async fn read_response(stream: &mut TcpStream) -> String {
    let head = read_head(stream).await;
    let len: usize = header(&head, "content-length")
        .map(|l| l.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0; len];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut body))
        .await
        .expect("body in time")
        .unwrap();
    head + &String::from_utf8_lossy(&body)
}

/// Sends one request on an open connection and reads its response (see [`read_response`]).
pub async fn exchange(stream: &mut TcpStream, request: &[u8]) -> String {
    stream.write_all(request).await.unwrap();
    read_response(stream).await
}

/// `GET http://{authority}{path}` in absolute form, with a matching Host header.
pub fn http_get(authority: &str, path: &str) -> String {
    format!("GET http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\n\r\n")
}

/// `method path` to the admin API with a JSON body, on a connection closed after it.
fn json_request(method: &str, path: &str, json: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )
}

/// The status code of a raw response.
pub fn status(response: &str) -> u16 {
    response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response:?}"))
}

/// The body of a raw response: what follows the blank line.
pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Proxy variables a client could pick up from the test runner's environment.
const PROXY_VARS: [&str; 7] = [
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "no_proxy",
];

/// Clears every proxy variable of `cmd`, then sets only `env`.
fn only_proxy_env(cmd: &mut tokio::process::Command, env: &[(&str, &str)]) {
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
}

/// Runs curl and returns (exit code, stdout, stderr).
pub async fn curl(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10"]).args(args);
    only_proxy_env(&mut cmd, env);
    let out = cmd.output().await.expect("curl is installed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Opens a CONNECT tunnel to `authority` through `proxy` and checks it was granted.
pub async fn open_tunnel(proxy: SocketAddr, authority: &str) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "CONNECT {authority}: {head}"
    );
    stream
}

/// Sends one request on a new connection and reads exactly one response (head plus
/// `Content-Length` body), without waiting for the connection to close.
pub async fn one_response(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    exchange(&mut stream, request).await
}

/// An HTTPS origin with a certificate for `name`, generated now. Returns its address and the
/// PEM of the certificate for the client to trust.
pub async fn tls_origin(name: &str) -> (SocketAddr, String) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let pem = cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.der().to_vec())], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let addr = serve(move |stream| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service_fn(origin_route))
                .await;
        }
    })
    .await;
    (addr, pem)
}

/// What a [`raw_origin`] does after writing its reply.
#[derive(Clone, Copy, Debug)]
pub enum Then {
    /// Close the connection (an HTTP/1.0 close-delimited body ends here).
    Close,
    /// Keep the connection open and send nothing more.
    Stall,
}

/// A TCP origin that reads a request head, writes `reply` verbatim, then does `then`: for
/// upstreams that misbehave in ways a real HTTP server library will not.
pub async fn raw_origin(reply: &'static [u8], then: Then) -> SocketAddr {
    serve(move |mut stream| async move {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let _ = stream.write_all(reply).await;
        match then {
            Then::Close => {
                let _ = stream.shutdown().await;
            }
            Then::Stall => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
    })
    .await
}

/// A TCP origin that accepts connections and never answers.
pub async fn silent_origin() -> SocketAddr {
    serve(|stream| async move {
        let _held = stream;
        std::future::pending::<()>().await
    })
    .await
}

/// The value of one Prometheus series (`name{labels}` exactly as rendered), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

/// Runs a Python 3 snippet with only the given environment proxy variables set; returns
/// (exit code, stdout, stderr). Python's standard library is the client: no packages needed.
pub async fn python(script: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args(["-c", script]);
    only_proxy_env(&mut cmd, env);
    let out = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .expect("python in time")
        .expect("python3 is installed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
