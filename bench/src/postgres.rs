//! The PostgreSQL behind the shared-state measurements: an existing server named by URL, or
//! a throwaway one the harness starts itself from the server binaries on the machine
//! (Debian's `/usr/lib/postgresql/N/bin`): `initdb` in a temp dir, a free loopback port,
//! run as the `postgres` user when the harness runs as root (PostgreSQL refuses root).
//!
//! The throwaway server is stopped and its directory removed when [`Postgres`] is dropped,
//! which also happens when the harness returns an error. If the harness is killed instead,
//! the server gets SIGQUIT (immediate shutdown) as its parent dies (`setpriv --pdeathsig`),
//! and the next run removes the directory it left.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::peers::free_port;

/// Password of the roles on a throwaway server; it listens on loopback only and lives for
/// one harness run.
const PASSWORD: &str = "egressd-bench";
/// The role egressd connects as on a throwaway server: a database owner, not a superuser,
/// as in a deployment.
const ROLE: &str = "egressd";
/// Prefix of a throwaway server's directory in the temp dir; the harness's pid follows.
const DIR_PREFIX: &str = "egressd-bench-pg-";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the shared state lives for this run.
pub enum Postgres {
    /// `--egressd-postgres-url`: every use shares this database.
    Existing {
        url: String,
        version: String,
    },
    Throwaway(Throwaway),
}

/// A server of the harness's own.
pub struct Throwaway {
    child: Child,
    port: u16,
    version: String,
    /// Data directory, socket and log; removed after the server is gone.
    root: TempDir,
}

impl Postgres {
    /// Checks that `url` answers and reads its version.
    pub fn existing(url: &str) -> anyhow::Result<Postgres> {
        let version =
            server_version(url).with_context(|| format!("cannot reach PostgreSQL at {url}"))?;
        Ok(Postgres::Existing {
            url: url.to_string(),
            version,
        })
    }

    /// Starts a throwaway server.
    pub fn throwaway() -> anyhow::Result<Postgres> {
        Throwaway::start()
            .context("cannot start a throwaway PostgreSQL")
            .map(Postgres::Throwaway)
    }

    /// A database URL for one use (`name` on a throwaway server, created empty; the same
    /// database for every use of an existing one).
    pub fn database(&self, name: &str) -> anyhow::Result<String> {
        match self {
            Postgres::Existing { url, .. } => Ok(url.clone()),
            Postgres::Throwaway(server) => server.create_database(name),
        }
    }

    /// What the report says about the database.
    pub fn describe(&self) -> String {
        match self {
            Postgres::Existing { version, .. } => {
                format!("PostgreSQL {version}, an existing server (`--egressd-postgres-url`)")
            }
            Postgres::Throwaway(server) => format!(
                "PostgreSQL {}, a throwaway server on 127.0.0.1 started by the harness \
                 (`initdb` defaults, fsync on; TCP with scram-sha-256, no TLS)",
                server.version
            ),
        }
    }
}

impl Throwaway {
    fn start() -> anyhow::Result<Throwaway> {
        let bin = server_binaries().context(
            "no PostgreSQL server binaries (initdb, postgres) in /usr/lib/postgresql/*/bin or \
             PATH; install Debian's postgresql, or name a server with --egressd-postgres-url",
        )?;
        remove_stale_dirs();
        let root = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()?;
        let pwfile = root.path().join("pw");
        std::fs::write(&pwfile, PASSWORD)?;
        if running_as_root() {
            chown_to_postgres(root.path())?;
        }
        initdb(&bin, root.path(), &pwfile)?;
        let port = free_port()?;
        let child = spawn_server(&bin, root.path(), port)?;
        let mut server = Throwaway {
            child,
            port,
            version: String::new(),
            root,
        };
        server.version = server.wait_ready()?;
        run_sql(
            &server.url("postgres", "postgres"),
            &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"),
        )?;
        Ok(server)
    }

    fn url(&self, role: &str, database: &str) -> String {
        format!(
            "postgres://{role}:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Polls until the server answers, failing early if it exits; returns its version.
    fn wait_ready(&mut self) -> anyhow::Result<String> {
        let url = self.url("postgres", "postgres");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("postgres exited ({status}):\n{}", self.log_tail());
            }
            match server_version(&url) {
                Ok(version) => return Ok(version),
                Err(err) if Instant::now() > deadline => {
                    bail!(
                        "postgres not ready within {READY_TIMEOUT:?}: {err:#}\n{}",
                        self.log_tail()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn create_database(&self, name: &str) -> anyhow::Result<String> {
        run_sql(
            &self.url("postgres", "postgres"),
            &format!("CREATE DATABASE {name} OWNER {ROLE}"),
        )
        .with_context(|| format!("creating database {name}"))?;
        Ok(self.url(ROLE, name))
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(self.root.path().join("server.log")) {
            let _ = file.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Throwaway {
    /// Immediate shutdown (SIGQUIT): nothing here needs to survive, and the postmaster takes
    /// its backends down with it, which SIGKILL would leave to notice on their own.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `root` (a TempDir) goes after this, with the data directory.
    }
}

fn initdb(bin: &Path, root: &Path, pwfile: &Path) -> anyhow::Result<()> {
    let out = as_postgres(&bin.join("initdb"), false)
        .args(["-U", "postgres", "-E", "UTF8", "--no-sync"])
        .args([
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--pwfile",
        ])
        .arg(pwfile)
        .arg("-D")
        .arg(root.join("data"))
        .output()
        .context("running initdb")?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Starts `postgres` on `port` with its socket in `root`. Called from the thread that lives
/// as long as the harness (the parent-death signal follows the thread that forked).
fn spawn_server(bin: &Path, root: &Path, port: u16) -> anyhow::Result<Child> {
    let log = File::create(root.join("server.log"))?;
    as_postgres(&bin.join("postgres"), true)
        .arg("-D")
        .arg(root.join("data"))
        .args(["-p", &port.to_string(), "-k"])
        .arg(root)
        .args(["-c", "listen_addresses=127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting postgres")
}

/// `program` run through `setpriv`: as `postgres` when we are root, and with SIGQUIT on the
/// harness's death when `pdeathsig`.
fn as_postgres(program: &Path, pdeathsig: bool) -> Command {
    let mut command = Command::new("setpriv");
    if pdeathsig {
        command.args(["--pdeathsig", "QUIT"]);
    }
    if running_as_root() {
        command.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]);
    }
    command.arg("--").arg(program);
    command
}

/// Whether the effective user is root, as `id -u` says (no libc binding needed for one
/// question asked once).
fn running_as_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
    })
}

fn chown_to_postgres(dir: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .context("running chown")?;
    anyhow::ensure!(
        status.success(),
        "chown postgres {} failed (is there a postgres user?)",
        dir.display()
    );
    Ok(())
}

/// The newest `/usr/lib/postgresql/N/bin`, else a PATH directory with `initdb` and `postgres`.
fn server_binaries() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("postgres").is_file() && bin.join("initdb").is_file())
                .then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
}

/// Directories of throwaway servers whose harness is gone (killed before it could clean up).
fn remove_stale_dirs() {
    for entry in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Runs `work` on a runtime of its own on a thread of its own, so it may be called from
/// inside the harness's runtime as well as outside it.
fn block_on<T: Send>(work: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime")
                    .block_on(work)
            })
            .join()
            .expect("the SQL thread does not panic")
    })
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn run_sql(url: &str, sql: &str) -> anyhow::Result<()> {
    block_on(async {
        connect(url).await?.batch_execute(sql).await?;
        Ok(())
    })
}

/// `server_version` of the server at `url`, e.g. "15.14 (Debian 15.14-0+deb12u1)".
fn server_version(url: &str) -> anyhow::Result<String> {
    block_on(async {
        let client = connect(url).await?;
        let row = client.query_one("SHOW server_version", &[]).await?;
        Ok(row.get::<_, String>(0))
    })
}
