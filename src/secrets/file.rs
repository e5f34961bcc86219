//! The file backend: `state_dir/secrets.json`, owner-only (0600), holding sealed values
//! and the key check. Every change is written (temp file, fsync, rename) before it is
//! acknowledged, under one lock, so concurrent writers are ordered and a crash leaves the
//! last acknowledged store. A file that cannot be read is reported with its path and never
//! written over.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::backend::{
    BackendError, BoxFuture, Meta, SecretBackend, StoredSecret, Update, WriteError,
};
use crate::util::fsio::{remove_leftovers, write_privately};
use crate::util::sync::lock;

pub const STORE_FILE: &str = "secrets.json";
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    format: u32,
    key_check: String,
    /// One more with every change.
    revision: u64,
    secrets: Vec<StoredSecret>,
}

#[derive(Clone, Default)]
struct State {
    /// Read by `open`; `None` until then.
    key_check: Option<String>,
    revision: u64,
    secrets: BTreeMap<String, StoredSecret>,
}

pub struct FileBackend {
    path: PathBuf,
    state: Arc<Mutex<State>>,
}

impl FileBackend {
    pub fn new(state_dir: &Path) -> FileBackend {
        FileBackend {
            path: state_dir.join(STORE_FILE),
            state: Arc::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `change` on a copy of the state and writes it; the copy becomes the state only
    /// once it is on disk. Blocking (fsync): on the blocking pool.
    fn write<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut State) -> Result<T, WriteError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, WriteError>> {
        let (state, path) = (self.state.clone(), self.path.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut current = lock(&state);
                let mut next = current.clone();
                let result = change(&mut next)?;
                next.revision += 1;
                save(&path, &next)?;
                *current = next;
                Ok(result)
            })
            .await
            .map_err(|e| BackendError::Unavailable(format!("the store's writer failed: {e}")))?
        })
    }
}

fn save(path: &Path, state: &State) -> Result<(), BackendError> {
    let file = StoreFile {
        format: FORMAT,
        key_check: state.key_check.clone().expect("opened before written"),
        revision: state.revision,
        secrets: state.secrets.values().cloned().collect(),
    };
    let bytes = serde_json::to_vec_pretty(&file).expect("serializable");
    write_privately(path, &bytes)
        .map_err(|e| BackendError::Unavailable(format!("cannot write {}: {e}", path.display())))
}

/// The store in `path`: empty when there is no file yet.
fn load(path: &Path) -> Result<Option<StoreFile>, BackendError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(BackendError::Unavailable(format!(
                "cannot read {}: {err}",
                path.display()
            )))
        }
    };
    let file: StoreFile = serde_json::from_slice(&bytes).map_err(|err| {
        BackendError::Corrupt(format!(
            "{}: not a secret store egressd can read ({err}); nothing was written to it: restore it from a backup, or move it away to start with no secrets",
            path.display()
        ))
    })?;
    if file.format != FORMAT {
        return Err(BackendError::Corrupt(format!(
            "{}: store format {} (this egressd reads {FORMAT}); nothing was written to it",
            path.display(),
            file.format
        )));
    }
    Ok(Some(file))
}

impl SecretBackend for FileBackend {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn open(&self, check: &str) -> BoxFuture<'_, Result<Vec<StoredSecret>, BackendError>> {
        let (state, path, check) = (self.state.clone(), self.path.clone(), check.to_string());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let file = load(&path)?;
                let mut state = lock(&state);
                *state = State {
                    key_check: Some(check.clone()),
                    ..State::default()
                };
                let Some(file) = file else {
                    return Ok(Vec::new());
                };
                if file.key_check != check {
                    return Err(BackendError::WrongKey {
                        key_file: String::new(),
                        store: path.display().to_string(),
                        given: check,
                        stored: file.key_check,
                    });
                }
                // Only now that the file is known good: a write's leftover temp files.
                remove_leftovers(&path);
                state.revision = file.revision;
                state.secrets = file
                    .secrets
                    .iter()
                    .map(|s| (s.key.clone(), s.clone()))
                    .collect();
                Ok(file.secrets)
            })
            .await
            .map_err(|e| BackendError::Unavailable(format!("reading the store failed: {e}")))?
        })
    }

    fn revision(&self) -> BoxFuture<'_, Result<u64, BackendError>> {
        let revision = lock(&self.state).revision;
        Box::pin(async move { Ok(revision) })
    }

    fn all(&self) -> BoxFuture<'_, Result<(u64, Vec<StoredSecret>), BackendError>> {
        let state = lock(&self.state);
        let all = (state.revision, state.secrets.values().cloned().collect());
        Box::pin(async move { Ok(all) })
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredSecret>, BackendError>> {
        let found = lock(&self.state).secrets.get(key).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn create(&self, secret: StoredSecret, limit: usize) -> BoxFuture<'_, Result<(), WriteError>> {
        self.write(move |state| {
            if state.secrets.contains_key(&secret.key) {
                return Err(WriteError::Exists(secret.key));
            }
            if state.secrets.len() >= limit {
                return Err(WriteError::Full(limit));
            }
            state.secrets.insert(secret.key.clone(), secret);
            Ok(())
        })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        update: Update,
    ) -> BoxFuture<'a, Result<Meta, WriteError>> {
        let key = key.to_string();
        self.write(move |state| {
            let secret = state
                .secrets
                .get_mut(&key)
                .ok_or_else(|| WriteError::NotFound(key.clone()))?;
            if update.expected.is_some_and(|v| v != secret.meta.version) {
                return Err(WriteError::VersionMismatch {
                    key,
                    current: secret.meta.version,
                });
            }
            secret.sealed = update.sealed;
            secret.meta.version += 1;
            secret.meta.updated_at = update.at;
            secret.meta.last_writer = update.writer;
            Ok(secret.meta.clone())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Meta, WriteError>> {
        let key = key.to_string();
        self.write(move |state| match state.secrets.remove(&key) {
            Some(secret) => Ok(secret.meta),
            None => Err(WriteError::NotFound(key)),
        })
    }

    fn rekey<'a>(
        &'a self,
        old_check: &'a str,
        new_check: &'a str,
        resealed: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'a, Result<(), WriteError>> {
        let (old_check, new_check) = (old_check.to_string(), new_check.to_string());
        self.write(move |state| {
            let changed = || BackendError::changed_during_rekey().into();
            if state.key_check.as_deref() != Some(old_check.as_str())
                || resealed.len() != state.secrets.len()
            {
                return Err(changed());
            }
            for (key, sealed) in resealed {
                state.secrets.get_mut(&key).ok_or_else(changed)?.sealed = sealed;
            }
            state.key_check = Some(new_check);
            Ok(())
        })
    }
}
