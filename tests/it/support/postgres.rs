//! A throwaway PostgreSQL for the shared-state tests: the server binaries installed on the
//! machine (Debian's `postgresql`), `initdb` in a temp dir, a random loopback port, run as
//! the `postgres` user when the tests run as root. Every test gets a database of its own
//! ([`database`]). `EGRESSD_TEST_DATABASE_URL` names an existing server instead (a role
//! that may create databases and roles).
//!
//! The server is started by a thread that lives as long as the test process and is its
//! parent, with a parent-death signal: when the tests end, however they end, it stops.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The password of every role the tests create.
pub const PASSWORD: &str = "egressd-test-pw";

/// A server the tests may create databases on.
pub struct Server {
    /// `postgres://…` of a role that can create databases and roles.
    admin_url: String,
    host: String,
    port: u16,
    /// Our own server's data directory; `None` for `EGRESSD_TEST_DATABASE_URL`.
    data: Option<PathBuf>,
    bin: Option<PathBuf>,
    /// Extra `-c name=value` settings of our own server (TLS).
    settings: Vec<String>,
}

/// One test's database, owned by a role of its own.
pub struct TestDb {
    pub url: String,
    pub name: String,
    pub port: u16,
    pub host: String,
}

impl TestDb {
    /// The URL with another password, for the wrong-password case.
    pub fn url_with_password(&self, password: &str) -> String {
        self.url.replace(PASSWORD, password)
    }

    /// Runs SQL as the database's owner.
    pub fn execute(&self, sql: &str) {
        run_sql(&self.url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The first column of the first row, as text.
    pub fn query_text(&self, sql: &str) -> Option<String> {
        query_text(&self.url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The shared server, started on first use.
pub fn server() -> &'static Server {
    SERVER
        .get_or_init(|| match std::env::var("EGRESSD_TEST_DATABASE_URL") {
            Ok(url) => external(&url),
            Err(_) => Server::start_own(),
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("cannot start a PostgreSQL for the tests: {e}"))
}

/// A fresh database on the shared server, owned by a fresh role with [`PASSWORD`].
pub fn database() -> TestDb {
    server().database()
}

fn external(url: &str) -> Result<Server, String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    Ok(Server {
        admin_url: url.to_string(),
        host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        data: None,
        bin: None,
        settings: Vec::new(),
    })
}

impl Server {
    fn start_own() -> Result<Server, String> {
        Self::start_own_with(None)
    }

    /// Our own server; with `tls` (certificate and key, PEM) it also speaks TLS.
    fn start_own_with(tls: Option<(&str, &str)>) -> Result<Server, String> {
        let bin = server_binaries().ok_or(
            "no PostgreSQL server binaries (initdb, postgres); install Debian's postgresql, or set EGRESSD_TEST_DATABASE_URL",
        )?;
        // One directory per server: a test's own server lives beside the shared one.
        let root = std::env::temp_dir().join(format!(
            "egressd-it-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        remove_stale_servers();
        std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        let data = root.join("data");
        let pwfile = root.join("pw");
        std::fs::write(&pwfile, PASSWORD).map_err(|e| e.to_string())?;
        let mut settings = Vec::new();
        if let Some((cert, key)) = tls {
            let (cert_path, key_path) = (root.join("server.crt"), root.join("server.key"));
            std::fs::write(&cert_path, cert).map_err(|e| e.to_string())?;
            std::fs::write(&key_path, key).map_err(|e| e.to_string())?;
            // PostgreSQL refuses a key others can read.
            super::set_mode(&key_path, 0o600);
            settings.push("ssl=on".to_string());
            settings.push(format!("ssl_cert_file={}", cert_path.display()));
            settings.push(format!("ssl_key_file={}", key_path.display()));
        }
        if super::running_as_root() {
            chown_to_postgres(&root)?;
        }
        let out = as_postgres(&bin.join("initdb"))
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--auth-local=trust",
            ])
            .args(["--auth-host=scram-sha-256", "--pwfile"])
            .arg(&pwfile)
            .arg("-D")
            .arg(&data)
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let port = free_port();
        let server = Server {
            admin_url: format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"),
            host: "127.0.0.1".into(),
            port,
            data: Some(data),
            bin: Some(bin),
            settings,
        };
        server.spawn_keeper()?;
        server.wait_ready(Duration::from_secs(30))?;
        Ok(server)
    }

    /// Starts the server from a thread that never ends, so the parent-death signal fires
    /// only when the whole test process goes.
    fn spawn_keeper(&self) -> Result<(), String> {
        let mut command = self.postgres_command();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("postgres-keeper".into())
            .spawn(move || match command.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(()));
                    let _ = child.wait();
                    // Stopped by a test (pg_ctl stop): park until the process ends, so a
                    // restarted server's parent is still alive.
                    loop {
                        std::thread::park();
                    }
                }
                Err(err) => {
                    let _ = tx.send(Err(err.to_string()));
                }
            })
            .map_err(|e| e.to_string())?;
        rx.recv().map_err(|e| e.to_string())?
    }

    fn postgres_command(&self) -> Command {
        let data = self.data.as_ref().expect("our own server");
        let root = data.parent().expect("data has a parent");
        let log = std::fs::File::create(
            root.join(format!("log-{}", NEXT.fetch_add(1, Ordering::SeqCst))),
        )
        .expect("a server log");
        let mut command =
            as_postgres_with_pdeathsig(&self.bin.as_ref().expect("binaries").join("postgres"));
        command
            .arg("-D")
            .arg(data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(root)
            // Durable as configured by default (fsync on): the outage tests crash the server
            // with `pg_ctl stop -m immediate` and expect every acknowledged write back.
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=300", "-c", "shared_buffers=32MB"])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        command
    }

    fn wait_ready(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            match run_sql(&self.admin_url, "SELECT 1") {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() > deadline => {
                    return Err(format!("not ready within {within:?}: {err}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn database(&self) -> TestDb {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("egressd_t{}_{n}", std::process::id());
        run_sql(
            &self.admin_url,
            &format!("CREATE ROLE {name} LOGIN PASSWORD '{PASSWORD}'"),
        )
        .expect("create role");
        run_sql(
            &self.admin_url,
            &format!("CREATE DATABASE {name} OWNER {name}"),
        )
        .expect("create database");
        TestDb {
            url: format!(
                "postgres://{name}:{PASSWORD}@{}:{}/{name}",
                self.host, self.port
            ),
            name,
            port: self.port,
            host: self.host.clone(),
        }
    }
}

/// A server of the test's own, for tests that stop and start it (`pg_ctl stop -m
/// immediate`); the shared one must stay up for the others.
pub struct OwnServer {
    server: Server,
}

impl OwnServer {
    pub fn start() -> OwnServer {
        OwnServer {
            server: Server::start_own().unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}")),
        }
    }

    /// A server that also speaks TLS with this certificate and key (PEM).
    pub fn start_with_tls(cert: &str, key: &str) -> OwnServer {
        OwnServer {
            server: Server::start_own_with(Some((cert, key)))
                .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}")),
        }
    }

    pub fn database(&self) -> TestDb {
        self.server.database()
    }

    /// `pg_ctl stop -m immediate`: the server is gone at once, as in a crash.
    pub fn stop_immediately(&self) {
        let server = &self.server;
        let out = as_postgres(&server.bin.as_ref().unwrap().join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(server.data.as_ref().unwrap())
            .output()
            .expect("pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        self.server.spawn_keeper().expect("restart postgres");
        self.server
            .wait_ready(Duration::from_secs(30))
            .expect("postgres back");
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let (Some(bin), Some(data)) = (&self.server.bin, &self.server.data) {
            let _ = as_postgres(&bin.join("pg_ctl"))
                .args(["stop", "-m", "immediate", "-D"])
                .arg(data)
                .output();
            let _ = std::fs::remove_dir_all(data.parent().unwrap());
        }
    }
}

/// `initdb` and `postgres`: Debian's newest `/usr/lib/postgresql/N/bin`, else the PATH's.
fn server_binaries() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
}

/// PostgreSQL refuses to run as root: as root, run it as `postgres`.
fn as_postgres(program: &Path) -> Command {
    if super::running_as_root() {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Like [`as_postgres`], with SIGQUIT (immediate shutdown) when our keeper thread ends.
fn as_postgres_with_pdeathsig(program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command.args(["--pdeathsig", "QUIT"]);
    if super::running_as_root() {
        command.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]);
    }
    command.arg("--").arg(program);
    command
}

fn chown_to_postgres(dir: &Path) -> Result<(), String> {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .map_err(|e| e.to_string())?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| "chown postgres".to_string())
}

/// Data dirs of test runs that are no longer running.
fn remove_stale_servers() {
    for entry in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(pid) = name
            .strip_prefix("egressd-it-pg-")
            .and_then(|rest| rest.split('-').next())
        {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `work` to completion on a runtime of its own, on a thread of its own: callable from
/// sync tests and from inside a test's runtime alike.
fn block_on<T: Send>(work: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(work)
            })
            .join()
            .unwrap()
    })
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs SQL statements on `url`.
pub fn run_sql(url: &str, sql: &str) -> Result<(), String> {
    block_on(async {
        let client = connect(url).await?;
        client
            .batch_execute(sql)
            .await
            .map_err(|e| format!("{e:?}"))
    })
}

/// The first column of the first row, as text (`::text` it in the query).
pub fn query_text(url: &str, sql: &str) -> Result<Option<String>, String> {
    block_on(async {
        let client = connect(url).await?;
        let rows = client.query(sql, &[]).await.map_err(|e| format!("{e:?}"))?;
        Ok(rows.first().and_then(|r| r.get::<_, Option<String>>(0)))
    })
}

/// Whether this machine can run the shared-state tests: server binaries or a URL.
pub fn available() -> bool {
    std::env::var_os("EGRESSD_TEST_DATABASE_URL").is_some() || server_binaries().is_some()
}

/// A child process killed on drop (a replica the test started by hand).
pub struct Killed(pub Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
