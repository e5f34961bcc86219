//! The PostgreSQL backend: a small connection pool over `tokio-postgres`, TLS through
//! rustls (the certificate is always verified), the embedded schema ([`schema`]), and the
//! stores built on it ([`schedules`]).
//!
//! Every operation has a deadline ([`OP_TIMEOUT`]): a database that is slow or gone turns
//! into [`DbError`] quickly, which callers report as "state unavailable" and retry; it never
//! holds a proxied request, since none waits for it.

pub mod allowlist;
pub mod denials;
pub mod schedules;
pub mod schema;
pub mod secrets;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{describe, PgSettings};

/// The longest any one database operation may take before it counts as unavailable.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections kept: the scheduler (which claims the runs due at one minute side by side),
/// admin requests and the change poll; never the request path.
const POOL_SIZE: usize = 10;

/// Why the database could not be used, in words an operator can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    #[error("cannot reach the database {target}: {message}")]
    Unreachable { target: String, message: String },
    #[error("the database {target} refused egressd: {message}")]
    Refused { target: String, message: String },
    #[error("the database schema is version {found}, newer than this egressd's ({known}): a newer egressd migrated it; run that version or newer")]
    SchemaNewer { found: i32, known: i32 },
    #[error("the database has no egressd schema yet (egressd run applies it at start)")]
    SchemaMissing,
    #[error("the database schema is version {found}; this egressd needs {known} (egressd run applies it at start)")]
    SchemaBehind { found: i32, known: i32 },
    #[error("{0}")]
    Query(String),
    #[error("no answer from the database within {0:?}")]
    Timeout(Duration),
    #[error("cannot read state.ca_file {path}: {message}")]
    Ca { path: String, message: String },
}

impl DbError {
    /// A driver error, classified: a refusal by the server (wrong password, no such
    /// database, no permission) says so; anything else is a failure to reach it.
    fn from_pg(target: &str, err: tokio_postgres::Error) -> DbError {
        match err.as_db_error() {
            Some(db) => DbError::Refused {
                target: target.to_string(),
                message: format!("{} ({})", db.message(), db.code().code()),
            },
            None => DbError::Unreachable {
                target: target.to_string(),
                message: chain(&err),
            },
        }
    }
}

/// An error and its causes, on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// A connection pool on the shared database, and who this replica is in its ledger.
pub struct Database {
    pool: Pool,
    target: String,
    /// Set once the schema is known to be current; until then every operation first tries
    /// to bring it there (a replica may start while the database is away).
    schema_ready: std::sync::atomic::AtomicBool,
    /// Whether the last operation reached the database, and what failed if not.
    health: std::sync::Mutex<Health>,
    /// This process, as it signs its claims: the `via_name` (the pod name) and a random
    /// suffix, so a restarted pod never mistakes its predecessor's claims for its own.
    replica: String,
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl Database {
    /// Connects, applies the embedded migrations (under an advisory lock: replicas that
    /// start together apply each once) and returns the pool. Every failure names the
    /// database and the problem; nothing is written when the schema is newer than ours.
    pub async fn open(settings: &PgSettings, replica_name: &str) -> Result<Arc<Database>, DbError> {
        let db = Self::connect(settings, replica_name)?;
        db.ready().await?;
        // The pool filled up front: a wrong password fails the start, not the first request,
        // and the first minute's claims (made side by side) do not each wait for a
        // connection and its SCRAM handshake.
        db.warm().await?;
        Ok(Arc::new(db))
    }

    /// Opens every connection of the pool at once.
    async fn warm(&self) -> Result<(), DbError> {
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..POOL_SIZE {
            let pool = self.pool.clone();
            opening.spawn(async move { pool.get().await });
        }
        let mut held = Vec::with_capacity(POOL_SIZE);
        while let Some(opened) = opening.join_next().await {
            match opened.expect("opening a connection does not panic") {
                Ok(client) => held.push(client),
                Err(deadpool_postgres::PoolError::Backend(err)) => return Err(self.error(err)),
                Err(err) => {
                    return Err(DbError::Unreachable {
                        target: self.target.clone(),
                        message: err.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    /// Brings the schema up to date unless that is known done (under the migration lock,
    /// on a connection of its own).
    pub async fn ready(&self) -> Result<(), DbError> {
        use std::sync::atomic::Ordering;
        if self.schema_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let migrated = async {
            let (mut client, _task) = self.dedicated().await?;
            schema::migrate(&mut client)
                .await
                .map_err(|e| e.at(&self.target))
        };
        let result = tokio::time::timeout(OP_TIMEOUT * 2, migrated)
            .await
            .map_err(|_| DbError::Timeout(OP_TIMEOUT * 2))
            .and_then(|r| r);
        self.note(&result);
        result?;
        self.schema_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the database answered the last operation, and the error if it did not.
    pub fn health(&self) -> Health {
        crate::util::sync::lock(&self.health).clone()
    }

    /// Records how an operation went, logging a change between up and down once.
    fn note<T>(&self, result: &Result<T, DbError>) {
        let mut health = crate::util::sync::lock(&self.health);
        match result {
            Ok(_) if !health.up => {
                tracing::info!(database = %self.target, "the shared state is reachable again");
                *health = Health {
                    up: true,
                    error: None,
                };
            }
            Err(err) if !matches!(err, DbError::Query(_)) => {
                if health.up {
                    tracing::error!(database = %self.target, error = %err, "the shared state is unavailable; serving with the last state, admin writes refused, nothing scheduled is fired");
                }
                *health = Health {
                    up: false,
                    error: Some(err.to_string()),
                };
            }
            _ => {}
        }
    }

    /// Connects once and reads the schema version, writing nothing (`egressd check`).
    /// Returns the version found; a schema newer than this binary's is an error.
    pub async fn probe(settings: &PgSettings) -> Result<(String, i32), DbError> {
        let db = Self::connect(settings, "check")?;
        let (client, _task) = db.dedicated().await?;
        let found = db
            .within_deadline(async { schema::version(&client).await.map_err(|e| db.error(e)) })
            .await?;
        if found > schema::latest() {
            return Err(DbError::SchemaNewer {
                found,
                known: schema::latest(),
            });
        }
        Ok((db.target, found))
    }

    /// The pool, without touching the database.
    pub fn connect(settings: &PgSettings, replica_name: &str) -> Result<Database, DbError> {
        let mut pg = settings
            .url
            .clone()
            .expect("the start-up config reads state.url_file");
        let target = describe(&pg);
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("egressd");
        }
        let tls = tls(settings)?;
        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::Query(e.to_string()))?;
        Ok(Database {
            pool,
            target,
            schema_ready: std::sync::atomic::AtomicBool::new(false),
            health: std::sync::Mutex::new(Health {
                up: true,
                error: None,
            }),
            replica: format!("{replica_name}/{}", random_suffix()),
            pg,
            tls,
        })
    }

    /// `user@host:port/dbname`, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// This replica's name in the ledger.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        use deadpool_postgres::PoolError;
        self.pool.get().await.map_err(|err| match err {
            PoolError::Backend(err) => DbError::from_pg(&self.target, err),
            PoolError::Timeout(_) => DbError::Timeout(OP_TIMEOUT),
            other => DbError::Unreachable {
                target: self.target.clone(),
                message: other.to_string(),
            },
        })
    }

    /// A connection of its own, outside the pool: for the migration lock and for LISTEN.
    /// The returned task drives it; dropping the client closes it.
    pub async fn dedicated(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), DbError> {
        let connecting = self.pg.connect(self.tls.clone());
        let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting)
            .await
            .map_err(|_| DbError::Timeout(CONNECT_TIMEOUT * 2))?
            .map_err(|e| DbError::from_pg(&self.target, e))?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((client, task))
    }

    /// `work` within [`OP_TIMEOUT`].
    /// A connection outside the pool with its connection half returned undriven, for LISTEN
    /// (the caller polls it for notifications).
    pub async fn connect_raw(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
                    tokio_postgres::Socket,
                >>::Stream,
            >,
        ),
        DbError,
    > {
        let connecting = self.pg.connect(self.tls.clone());
        tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting)
            .await
            .map_err(|_| DbError::Timeout(CONNECT_TIMEOUT * 2))?
            .map_err(|e| DbError::from_pg(&self.target, e))
    }

    /// `work` on a pooled connection within [`OP_TIMEOUT`], once the schema is current;
    /// a driver error is classified against this database.
    pub async fn run<T>(
        &self,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, DbError> {
        self.timed(async {
            let mut client = self.client().await?;
            work(&mut client).await.map_err(|e| self.error(e))
        })
        .await
    }

    /// `work` within [`OP_TIMEOUT`], once the schema is current; the outcome updates
    /// [`Database::health`].
    pub async fn timed<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, DbError>>,
    ) -> Result<T, DbError> {
        self.ready().await?;
        self.within_deadline(work).await
    }

    /// `work` within [`OP_TIMEOUT`], schema or not (the check reads the version with it);
    /// the outcome updates [`Database::health`].
    async fn within_deadline<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, DbError>>,
    ) -> Result<T, DbError> {
        let result = tokio::time::timeout(OP_TIMEOUT, work)
            .await
            .map_err(|_| DbError::Timeout(OP_TIMEOUT))
            .and_then(|r| r);
        self.note(&result);
        result
    }

    /// One round trip, for the health check.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.timed(async {
            let client = self.client().await?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| self.error(e))?;
            Ok(())
        })
        .await
    }

    /// Whether this error means the database cannot be used for now (rather than that
    /// egressd is misconfigured for it: a wrong password, a newer schema).
    pub fn is_transient(err: &DbError) -> bool {
        matches!(err, DbError::Unreachable { .. } | DbError::Timeout(_))
    }

    /// A driver error, classified against this database.
    pub fn error(&self, err: tokio_postgres::Error) -> DbError {
        DbError::from_pg(&self.target, err)
    }
}

/// The shared state's reachability, for `/v1/status`, the console and the metric.
#[derive(Clone, Debug)]
pub struct Health {
    pub up: bool,
    pub error: Option<String>,
}

/// A read-only transaction that sees one snapshot of the database.
pub async fn snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
}

/// The TLS connector: the configured CA, or the Mozilla roots. Used when the URL's
/// `sslmode` asks for TLS (`require`) or the server offers it (`prefer`, the default).
fn tls(settings: &PgSettings) -> Result<MakeRustlsConnect, DbError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match &settings.ca_file {
        Some(path) => {
            let ca_error = |message: String| DbError::Ca {
                path: path.display().to_string(),
                message,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_error(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no CERTIFICATE in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn random_suffix() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 3];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
