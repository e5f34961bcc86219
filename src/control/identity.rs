//! Keeps the function credentials in force: `proxy.identity` and each productive function's
//! `token_file`, read at start, on every reload, and whenever a token file changes (its
//! directory is watched, so a Kubernetes Secret's `..data` swap counts), like the `[[mtls]]`
//! certificates.
//!
//! A token file that no longer reads or parses keeps the function's previous tokens serving,
//! as a bad certificate keeps the old one; the error is logged with the file and shown in
//! `GET /v1/identity` until a good file comes. Rolling a token over is writing both tokens
//! into the file, moving the clients to the new one, then leaving only the new one.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use notify::RecommendedWatcher;

use super::config::TokenFile;
use crate::policy::identity::{Identities, IdentityHandle, IdentityMode, TokenDigest};
use crate::util::sync::lock;
use crate::util::watch::watch_files;

/// The credentials in force and where they come from.
pub struct IdentityKeeper {
    handle: IdentityHandle,
    inner: Mutex<Inner>,
    /// Dropping it stops the watch; replaced when the set of token files changes.
    watcher: Mutex<Option<RecommendedWatcher>>,
}

#[derive(Default)]
struct Inner {
    mode: IdentityMode,
    files: Vec<TokenFile>,
    /// The digests in force per function, as last read successfully.
    loaded: HashMap<String, Vec<TokenDigest>>,
    /// The last failed read per function, until a good one.
    errors: BTreeMap<String, String>,
}

/// One function's credentials, for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FunctionIdentity {
    pub function: String,
    pub token_file: String,
    /// Tokens in force (0 when the file never read).
    pub tokens: usize,
    /// Why the file's current contents are not in force.
    pub error: Option<String>,
}

impl IdentityKeeper {
    pub fn new() -> Arc<Self> {
        Arc::new(IdentityKeeper {
            handle: IdentityHandle::default(),
            inner: Mutex::default(),
            watcher: Mutex::default(),
        })
    }

    /// What the proxy reads, per request.
    pub fn handle(&self) -> IdentityHandle {
        self.handle.clone()
    }

    pub fn mode(&self) -> IdentityMode {
        lock(&self.inner).mode
    }

    /// Puts `mode` and `files` (a config just put in force) in force: reads every file and
    /// watches the set when it changed. Blocking (file I/O).
    pub fn apply(self: &Arc<Self>, mode: IdentityMode, files: Vec<TokenFile>) {
        let rewatch = {
            let mut inner = lock(&self.inner);
            if inner.mode != mode {
                tracing::info!(
                    from = inner.mode.as_str(),
                    to = mode.as_str(),
                    "proxy.identity changed"
                );
            }
            inner.mode = mode;
            let rewatch = inner.files != files;
            inner.files = files;
            rewatch
        };
        if rewatch {
            self.watch();
        }
        self.refresh();
    }

    /// Re-reads every token file; a file that fails keeps its function's previous tokens.
    /// Blocking (file I/O).
    pub fn refresh(&self) {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        let mut loaded = HashMap::new();
        for file in inner.files.clone() {
            match file.read() {
                Ok(digests) => {
                    let previous = inner.loaded.get(&file.function);
                    if previous.is_some_and(|p| *p != digests) {
                        tracing::info!(function = %file.function, tokens = digests.len(), "function tokens reloaded");
                    }
                    inner.errors.remove(&file.function);
                    loaded.insert(file.function.clone(), digests);
                }
                Err(err) => {
                    let kept = inner.loaded.get(&file.function).cloned();
                    tracing::error!(function = %file.function, file = %file.path.display(), error = %err, kept_tokens = kept.as_ref().map_or(0, Vec::len), "token file does not load; the function keeps the tokens it had");
                    inner.errors.insert(file.function.clone(), err);
                    if let Some(kept) = kept {
                        loaded.insert(file.function.clone(), kept);
                    }
                }
            }
        }
        let files = &inner.files;
        inner
            .errors
            .retain(|function, _| files.iter().any(|f| &f.function == function));
        inner.loaded = loaded;
        let identities = Identities::new(
            inner.mode,
            inner
                .loaded
                .iter()
                .map(|(name, digests)| (name.clone(), digests.clone()))
                .collect(),
        );
        self.handle.store(Arc::new(identities));
    }

    /// Each function's credentials, by name.
    pub fn functions(&self) -> Vec<FunctionIdentity> {
        let inner = lock(&self.inner);
        inner
            .files
            .iter()
            .map(|file| FunctionIdentity {
                function: file.function.clone(),
                token_file: file.path.display().to_string(),
                tokens: inner.loaded.get(&file.function).map_or(0, Vec::len),
                error: inner.errors.get(&file.function).cloned(),
            })
            .collect()
    }

    /// Watches the token files in force, instead of the last set.
    fn watch(self: &Arc<Self>) {
        let files: Vec<PathBuf> = lock(&self.inner)
            .files
            .iter()
            .map(|f| f.path.clone())
            .collect();
        let watcher = if files.is_empty() {
            None
        } else {
            let keeper = Arc::downgrade(self);
            match watch_files(&files, move || {
                if let Some(keeper) = keeper.upgrade() {
                    keeper.refresh();
                }
            }) {
                Ok(watcher) => Some(watcher),
                Err(err) => {
                    tracing::error!(error = %err, "cannot watch the token files; a changed token needs a reload (SIGHUP)");
                    None
                }
            }
        };
        *lock(&self.watcher) = watcher;
    }
}
