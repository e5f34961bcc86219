//! Where sealed secrets are kept: [`SecretBackend`], implemented by a file in `state_dir`
//! ([`super::file`]) and by PostgreSQL (`crate::state::postgres::secrets`). A backend sees
//! only sealed values; it never holds the master key or a plaintext.
//!
//! The backend is the truth: versions are assigned by it (so two replicas' writers get
//! strictly increasing versions), and a write is acknowledged only once it is stored.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What is known of a secret besides its value: what operators see.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// 1 when created, one more with every update.
    pub version: u64,
    /// `operator` or `function:NAME`.
    pub last_writer: String,
    /// Created at provisioning; hidden in the console unless asked for.
    pub default: bool,
}

/// A secret as stored: its key, its sealed value, its metadata.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredSecret {
    pub key: String,
    #[serde(with = "base64_bytes")]
    pub sealed: Vec<u8>,
    #[serde(flatten)]
    pub meta: Meta,
}

impl fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSecret")
            .field("key", &self.key)
            .field("sealed", &format_args!("<{} bytes>", self.sealed.len()))
            .field("meta", &self.meta)
            .finish()
    }
}

/// The store could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Unreachable or failing for now (a database away, a disk error): try again.
    #[error("the secret store is unavailable: {0}")]
    Unavailable(String),
    /// What is stored cannot be read; nothing is written over it.
    #[error("{0}")]
    Corrupt(String),
    /// The store was sealed with another key.
    #[error("secrets.key_file {key_file} is not the key {store} was sealed with (key check {given}, the store records {stored}); start with the key file it was created with, or re-encrypt with `egressd secrets rekey`")]
    WrongKey {
        key_file: String,
        store: String,
        given: String,
        stored: String,
    },
}

impl BackendError {
    /// The secrets changed between the read of a rekey and its write.
    pub fn changed_during_rekey() -> BackendError {
        BackendError::Corrupt(
            "the secrets changed while they were re-encrypted; run rekey again".into(),
        )
    }
}

/// Why a write was not made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("a secret {0:?} exists already; update it with PUT, or delete it first")]
    Exists(String),
    #[error("no secret {0:?}; secrets are created by operators (the console's Secrets page or POST /v1/secrets)")]
    NotFound(String),
    #[error("the store holds {0} secrets, its limit; delete one first")]
    Full(usize),
    #[error("secret {key:?} is at version {current}, not the version in If-Match")]
    VersionMismatch { key: String, current: u64 },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A new value for an existing secret.
#[derive(Clone)]
pub struct Update {
    pub sealed: Vec<u8>,
    /// `If-Match`: the write is refused unless the secret is at this version.
    pub expected: Option<u64>,
    pub writer: String,
    pub at: DateTime<Utc>,
}

/// Keeps sealed secrets. Futures borrow the backend; the store runs them on its runtime.
pub trait SecretBackend: Send + Sync + 'static {
    /// Where the secrets are, for messages: a file's path, a database.
    fn describe(&self) -> String;
    /// Checks that the store was sealed with the key whose check value is `check` (records
    /// it when the store has none yet) and returns every secret. Writes nothing when the
    /// key is wrong or the store unreadable.
    fn open(&self, check: &str) -> BoxFuture<'_, Result<Vec<StoredSecret>, BackendError>>;
    /// A number that moves with every change, cheap enough to poll.
    fn revision(&self) -> BoxFuture<'_, Result<u64, BackendError>>;
    /// Every secret, and the revision they are at.
    fn all(&self) -> BoxFuture<'_, Result<(u64, Vec<StoredSecret>), BackendError>>;
    fn get<'a>(&'a self, key: &'a str)
        -> BoxFuture<'a, Result<Option<StoredSecret>, BackendError>>;
    /// Adds a secret unless its key exists or the store holds `limit` secrets.
    fn create(&self, secret: StoredSecret, limit: usize) -> BoxFuture<'_, Result<(), WriteError>>;
    /// Replaces a value; the version becomes one more than the stored one.
    fn update<'a>(
        &'a self,
        key: &'a str,
        update: Update,
    ) -> BoxFuture<'a, Result<Meta, WriteError>>;
    /// Removes a secret; returns what it was.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Meta, WriteError>>;
    /// Replaces every sealed value and the key check at once (`egressd secrets rekey`), if
    /// the store is still sealed with `old_check`.
    fn rekey<'a>(
        &'a self,
        old_check: &'a str,
        new_check: &'a str,
        resealed: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'a, Result<(), WriteError>>;
}

/// Sealed bytes as base64 in JSON.
mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}
