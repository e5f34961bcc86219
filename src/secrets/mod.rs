//! **The secret store.** Operators create secrets and never see a value again; functions
//! read and update them through the proxy with their identity (the last writer wins, or
//! `If-Match` refuses a lost race); deletion is immediate. egressd can also inject a value
//! into an outgoing request itself, so function code never holds the credential.
//!
//! Values are sealed with the master key ([`seal`]) before they reach a backend
//! ([`backend`]: a file in `state_dir`, or PostgreSQL for several replicas); the backend is
//! the truth for every read and write of the API. Injection reads a plaintext copy in
//! memory ([`SecretStore::value`]), swapped whole after every write and whenever the
//! backend's revision moves (polled every [`FOLLOW_INTERVAL`]), so the request path takes
//! no lock and waits for no store, and a delete on one replica is in force on every
//! replica within a second.
//!
//! Values never reach a log, a metric, an error or `Debug` output: [`SecretValue`] prints
//! its length only and is wiped when dropped. Each create, read, update and delete writes
//! one audit line (who, key, version).
//!
//! Imports from [`crate::util`] only.

pub mod backend;
pub mod file;
pub mod seal;
pub mod value;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};

pub use backend::{BackendError, Meta, SecretBackend, StoredSecret, Update, WriteError};
pub use seal::MasterKey;
pub use value::{InvalidSecret, SecretKey, SecretValue, Writer, MAX_SECRETS};

use crate::util::sync::lock;

/// How often a replica asks the backend whether another one changed a secret.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);

/// Why a secret operation failed; each maps to one status code.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(transparent)]
    Invalid(#[from] InvalidSecret),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Damaged(#[from] seal::OpenError),
}

impl From<SecretError> for WriteError {
    fn from(err: SecretError) -> WriteError {
        match err {
            SecretError::Write(w) => w,
            other => WriteError::Backend(BackendError::Corrupt(other.to_string())),
        }
    }
}

pub struct SecretStore {
    master: Arc<MasterKey>,
    backend: Arc<dyn SecretBackend>,
    /// Plaintext copies for injection, swapped whole.
    cache: ArcSwap<HashMap<String, SecretValue>>,
    /// The backend revision `cache` reflects.
    revision: AtomicU64,
    /// Backend work runs here (the main runtime), whichever worker asked.
    runtime: tokio::runtime::Handle,
    /// Functions seen reading or writing each key since start, for the console's warning
    /// before a delete.
    users: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Whether the key check passed and the values were read. A shared database away at
    /// start leaves it false: the store answers "unavailable" and [`SecretStore::follow`]
    /// opens it once the database is back.
    opened: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("backend", &self.backend.describe())
            .field("master", &self.master)
            .finish_non_exhaustive()
    }
}

impl SecretStore {
    /// Opens the store: the key check must match (or is recorded, for a new store) and
    /// every value must open. Any failure is an error naming the store; nothing is written.
    pub async fn open(
        master: Arc<MasterKey>,
        backend: Arc<dyn SecretBackend>,
    ) -> Result<Arc<SecretStore>, SecretError> {
        let store = SecretStore::closed(master, backend);
        store.open_now().await?;
        Ok(Arc::new(store))
    }

    /// As [`SecretStore::open`], but a backend that is unavailable for now (a shared
    /// database away) is not an error: the store starts closed and opens itself when
    /// [`SecretStore::follow`] reaches the backend. A wrong key or an unreadable store
    /// still is.
    pub async fn open_when_available(
        master: Arc<MasterKey>,
        backend: Arc<dyn SecretBackend>,
    ) -> Result<Arc<SecretStore>, SecretError> {
        let store = SecretStore::closed(master, backend);
        match store.open_now().await {
            Ok(()) => {}
            Err(SecretError::Backend(BackendError::Unavailable(err))) => {
                tracing::error!(store = %store.describe(), error = %err, "the secret store is unavailable at start; functions get 503 and injection fails until it is reached (tried every {FOLLOW_INTERVAL:?})");
            }
            Err(err) => return Err(err),
        }
        Ok(Arc::new(store))
    }

    /// A store not opened yet: no values, every operation "unavailable".
    fn closed(master: Arc<MasterKey>, backend: Arc<dyn SecretBackend>) -> SecretStore {
        SecretStore {
            master,
            backend,
            cache: ArcSwap::default(),
            revision: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::current(),
            users: Mutex::default(),
            opened: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Checks the key against the store and reads every value into the cache.
    async fn open_now(&self) -> Result<(), SecretError> {
        let (master, backend) = (&self.master, &self.backend);
        let stored = backend
            .open(master.check())
            .await
            .map_err(|err| match err {
                BackendError::WrongKey {
                    store,
                    given,
                    stored,
                    ..
                } => BackendError::WrongKey {
                    key_file: master.path.display().to_string(),
                    store,
                    given,
                    stored,
                },
                other => other,
            })?;
        let cache = open_all(master, &stored)?;
        let revision = backend.revision().await?;
        tracing::info!(store = %backend.describe(), secrets = cache.len(), key_check = master.check(), "secret store opened");
        self.cache.store(Arc::new(cache));
        self.revision.store(revision, Ordering::Release);
        self.opened.store(true, Ordering::Release);
        Ok(())
    }

    /// An error unless the store is open.
    fn check_open(&self) -> Result<(), SecretError> {
        match self.opened.load(Ordering::Acquire) {
            true => Ok(()),
            false => Err(BackendError::Unavailable(format!(
                "{} has not been reached since egressd started",
                self.describe()
            ))
            .into()),
        }
    }

    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// The value of `key` as last known here, for injection: no lock, no wait.
    pub fn value(&self, key: &str) -> Option<SecretValue> {
        self.cache.load().get(key).cloned()
    }

    /// Whether `key` exists, as last known here.
    pub fn contains(&self, key: &str) -> bool {
        self.cache.load().contains_key(key)
    }

    /// Every key with its metadata, oldest first; never a value.
    pub async fn list(&self) -> Result<Vec<(String, Meta)>, SecretError> {
        self.check_open()?;
        let backend = self.backend.clone();
        let (_, all) = self.on_runtime(async move { backend.all().await }).await?;
        let mut list: Vec<(String, Meta)> = all.into_iter().map(|s| (s.key, s.meta)).collect();
        list.sort_by(|a, b| (a.1.created_at, &a.0).cmp(&(b.1.created_at, &b.0)));
        Ok(list)
    }

    /// Functions seen using `key` since this process started.
    pub fn users(&self, key: &str) -> BTreeSet<String> {
        lock(&self.users).get(key).cloned().unwrap_or_default()
    }

    /// An operator creates a secret.
    pub async fn create(
        &self,
        key: &str,
        value: SecretValue,
        default: bool,
    ) -> Result<Meta, SecretError> {
        self.check_open()?;
        let key = SecretKey::parse(key)?;
        let now = now();
        let meta = Meta {
            created_at: now,
            updated_at: now,
            version: 1,
            last_writer: Writer::Operator.label(),
            default,
        };
        let secret = StoredSecret {
            key: key.to_string(),
            sealed: self.master.seal(&key, &value),
            meta: meta.clone(),
        };
        let backend = self.backend.clone();
        self.on_runtime(async move { backend.create(secret, MAX_SECRETS).await })
            .await?;
        audit("create", &key, meta.version, &Writer::Operator);
        self.refresh_now().await;
        Ok(meta)
    }

    /// A function reads a secret: its value and metadata, `None` if there is no such key.
    /// Read from the backend, so a write on another replica is seen at once.
    pub async fn read(
        &self,
        key: &str,
        function: &str,
    ) -> Result<Option<(SecretValue, Meta)>, SecretError> {
        self.check_open()?;
        let key = SecretKey::parse(key)?;
        let backend = self.backend.clone();
        let wanted = key.to_string();
        let Some(stored) = self
            .on_runtime(async move { backend.get(&wanted).await })
            .await?
        else {
            return Ok(None);
        };
        let value = self.master.open(&stored.key, &stored.sealed)?;
        let writer = Writer::Function(function.to_string());
        audit("read", &key, stored.meta.version, &writer);
        self.used_by(&key, function);
        Ok(Some((value, stored.meta)))
    }

    /// Replaces a value: the last writer wins, unless `expected` (If-Match) names another
    /// version than the stored one.
    pub async fn update(
        &self,
        key: &str,
        value: SecretValue,
        expected: Option<u64>,
        writer: Writer,
    ) -> Result<Meta, SecretError> {
        self.check_open()?;
        let key = SecretKey::parse(key)?;
        let update = Update {
            sealed: self.master.seal(&key, &value),
            expected,
            writer: writer.label(),
            at: now(),
        };
        let backend = self.backend.clone();
        let name = key.to_string();
        let meta = self
            .on_runtime(async move { backend.update(&name, update).await })
            .await?;
        audit("update", &key, meta.version, &writer);
        if let Writer::Function(function) = &writer {
            self.used_by(&key, function);
        }
        self.refresh_now().await;
        Ok(meta)
    }

    /// An operator deletes a secret: gone for every function and every injection now.
    pub async fn delete(&self, key: &str) -> Result<Meta, SecretError> {
        self.check_open()?;
        let key = SecretKey::parse(key)?;
        let backend = self.backend.clone();
        let name = key.to_string();
        let meta = self
            .on_runtime(async move { backend.delete(&name).await })
            .await?;
        audit("delete", &key, meta.version, &Writer::Operator);
        lock(&self.users).remove(key.as_str());
        self.refresh_now().await;
        Ok(meta)
    }

    /// Reads every value again if the backend's revision moved since the cache was filled.
    pub async fn refresh(&self) -> Result<bool, SecretError> {
        if !self.opened.load(Ordering::Acquire) {
            self.open_now().await?;
            return Ok(true);
        }
        let backend = self.backend.clone();
        let revision = self
            .on_runtime(async move { backend.revision().await })
            .await?;
        if revision == self.revision.load(Ordering::Acquire) {
            return Ok(false);
        }
        let backend = self.backend.clone();
        let (revision, all) = self.on_runtime(async move { backend.all().await }).await?;
        let cache = open_all(&self.master, &all)?;
        self.cache.store(Arc::new(cache));
        self.revision.store(revision, Ordering::Release);
        Ok(true)
    }

    /// After a write here: the cache follows at once (an error is retried by [`follow`]).
    async fn refresh_now(&self) {
        if let Err(err) = self.refresh().await {
            tracing::warn!(error = %err, "cannot re-read the secret store after a write; retried every {FOLLOW_INTERVAL:?}");
        }
    }

    /// Keeps the cache in step with writes made elsewhere (other replicas), until the
    /// process ends. Errors are logged once per change of state.
    pub async fn follow(self: Arc<Self>) {
        let mut failing = false;
        loop {
            tokio::time::sleep(FOLLOW_INTERVAL).await;
            match self.refresh().await {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!(store = %self.describe(), "the secret store is readable again");
                }
                Ok(_) => {}
                Err(err) if !failing => {
                    failing = true;
                    tracing::error!(store = %self.describe(), error = %err, "cannot follow the secret store; injection uses the values last read");
                }
                Err(_) => {}
            }
        }
    }

    /// Re-encrypts every value under `new` and records its key check, in one write.
    pub async fn rekey(&self, new: &MasterKey) -> Result<usize, SecretError> {
        self.check_open()?;
        let backend = self.backend.clone();
        let (_, all) = self.on_runtime(async move { backend.all().await }).await?;
        let mut resealed = Vec::with_capacity(all.len());
        for secret in &all {
            let value = self.master.open(&secret.key, &secret.sealed)?;
            let key = SecretKey::parse(&secret.key)?;
            resealed.push((secret.key.clone(), new.seal(&key, &value)));
        }
        let count = resealed.len();
        let backend = self.backend.clone();
        let (old, fresh) = (self.master.check().to_string(), new.check().to_string());
        self.on_runtime(async move { backend.rekey(&old, &fresh, resealed).await })
            .await?;
        tracing::info!(audit = "secret.rekey", store = %self.describe(), secrets = count, old_key_check = self.master.check(), new_key_check = new.check(), "secrets re-encrypted with a new key");
        Ok(count)
    }

    fn used_by(&self, key: &SecretKey, function: &str) {
        let mut users = lock(&self.users);
        let seen = users.entry(key.to_string()).or_default();
        if !seen.contains(function) {
            seen.insert(function.to_string());
        }
    }

    /// Runs backend work on the store's runtime and waits for it.
    async fn on_runtime<T: Send + 'static, E>(
        &self,
        work: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
    ) -> Result<T, SecretError>
    where
        E: Into<SecretError> + Send + 'static,
    {
        match self.runtime.spawn(work).await {
            Ok(result) => result.map_err(Into::into),
            Err(err) => {
                Err(BackendError::Unavailable(format!("the store task failed: {err}")).into())
            }
        }
    }
}

fn open_all(
    master: &MasterKey,
    stored: &[StoredSecret],
) -> Result<HashMap<String, SecretValue>, SecretError> {
    stored
        .iter()
        .map(|s| {
            let value = master.open(&s.key, &s.sealed)?;
            Ok((s.key.clone(), value))
        })
        .collect()
}

fn now() -> DateTime<Utc> {
    // Milliseconds are what every view shows; storing more would only differ between backends.
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// One line per change or read: who, which key, which version. Never the value.
fn audit(action: &str, key: &SecretKey, version: u64, by: &Writer) {
    tracing::info!(audit = %format_args!("secret.{action}"), key = %key, version, by = %by.label(), "secret {action}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use file::FileBackend;

    fn master(byte: u8) -> Arc<MasterKey> {
        Arc::new(MasterKey::from_bytes(
            &[byte; seal::KEY_BYTES],
            std::path::Path::new("test.key"),
        ))
    }

    async fn store(dir: &std::path::Path, byte: u8) -> Result<Arc<SecretStore>, SecretError> {
        SecretStore::open(master(byte), Arc::new(FileBackend::new(dir))).await
    }

    fn value(text: &str) -> SecretValue {
        SecretValue::from_string(text.into()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_secret_lives_from_create_to_delete_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1).await.unwrap();
        let created = s
            .create("partner-token", value("v1-plaintext"), false)
            .await
            .unwrap();
        assert_eq!(
            (created.version, created.last_writer.as_str()),
            (1, "operator")
        );
        assert_eq!(s.value("partner-token").unwrap(), value("v1-plaintext"));
        let updated = s
            .update(
                "partner-token",
                value("v2-plaintext"),
                None,
                Writer::Function("billing".into()),
            )
            .await
            .unwrap();
        assert_eq!(
            (updated.version, updated.last_writer.as_str()),
            (2, "function:billing")
        );
        assert!(matches!(
            s.update("partner-token", value("v3"), Some(1), Writer::Operator)
                .await,
            Err(SecretError::Write(WriteError::VersionMismatch {
                current: 2,
                ..
            }))
        ));
        assert!(matches!(
            s.create("partner-token", value("again"), false).await,
            Err(SecretError::Write(WriteError::Exists(_)))
        ));
        assert!(matches!(
            s.update("nobody-made-it", value("x"), None, Writer::Operator)
                .await,
            Err(SecretError::Write(WriteError::NotFound(_)))
        ));
        let on_disk = std::fs::read_to_string(dir.path().join(file::STORE_FILE)).unwrap();
        assert!(!on_disk.contains("plaintext"), "{on_disk}");
        drop(s);

        let s = store(dir.path(), 1).await.unwrap();
        let (read, meta) = s.read("partner-token", "billing").await.unwrap().unwrap();
        assert_eq!((read, meta.version), (value("v2-plaintext"), 2));
        assert_eq!(
            s.users("partner-token").into_iter().collect::<Vec<_>>(),
            ["billing"]
        );
        s.delete("partner-token").await.unwrap();
        assert!(s.value("partner-token").is_none());
        assert!(s.read("partner-token", "billing").await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_key_or_a_corrupt_file_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1).await.unwrap();
        s.create("k", value("v"), false).await.unwrap();
        drop(s);
        let path = dir.path().join(file::STORE_FILE);
        let before = std::fs::read(&path).unwrap();
        let err = store(dir.path(), 2).await.unwrap_err().to_string();
        assert!(err.contains("test.key") && err.contains("rekey"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);

        std::fs::write(&path, b"{\"format\": 1, \"key_check\": ").unwrap();
        let err = store(dir.path(), 1).await.unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{\"format\": 1, \"key_check\": "
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_is_bounded() {
        // The backend enforces the limit the store passes ([`MAX_SECRETS`]); a small one
        // here, so the test does not write a thousand files.
        let dir = tempfile::tempdir().unwrap();
        let backend = FileBackend::new(dir.path());
        backend.open("check").await.unwrap();
        let secret = |key: &str| StoredSecret {
            key: key.into(),
            sealed: vec![0; 28],
            meta: Meta {
                created_at: now(),
                updated_at: now(),
                version: 1,
                last_writer: "operator".into(),
                default: false,
            },
        };
        for key in ["a", "b", "c"] {
            backend.create(secret(key), 3).await.unwrap();
        }
        assert_eq!(
            backend.create(secret("d"), 3).await.unwrap_err(),
            WriteError::Full(3)
        );
        backend.delete("a").await.unwrap();
        backend.create(secret("d"), 3).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rekey_reseals_every_value_under_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1).await.unwrap();
        s.create("a", value("alpha"), false).await.unwrap();
        s.create("b", value("beta"), true).await.unwrap();
        assert_eq!(s.rekey(&master(2)).await.unwrap(), 2);
        drop(s);
        assert!(
            store(dir.path(), 1).await.is_err(),
            "the old key no longer opens it"
        );
        let s = store(dir.path(), 2).await.unwrap();
        assert_eq!(s.value("b").unwrap(), value("beta"));
    }
}
