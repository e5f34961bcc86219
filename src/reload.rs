//! Reloading the config file: watched with `notify`, on SIGHUP, or on `POST /v1/reload`.
//!
//! A reload reads and validates the whole file before anything changes. A file that fails
//! (syntax, unknown key, invalid pattern, empty or cut short) never replaces the running
//! config: the last good one keeps serving and the error is kept for `/v1/allowlist` and
//! counted. A good file is turned into a new [`Policy`], the activation book is updated
//! (new patterns pending, removed ones gone) and persisted, and the policy is swapped in one
//! atomic store — requests in flight keep the snapshot they loaded. Then every tunnel and
//! connection the new policy denies is cut.
//!
//! The watcher watches the file's directory, not the file: editors replace files by rename
//! and Kubernetes swaps a `..data` symlink, and both only show up as directory events.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify_debouncer_mini::{new_debouncer, notify::RecursiveMode, DebounceEventResult, Debouncer};

use crate::activation::{unix_ms, ActivationBook};
use crate::config::{Config, ProxySettings};
use crate::connect::PolicyHandle;
use crate::metrics::Metrics;
use crate::revoke::Registry;

/// What the admin API shows about the loaded config.
#[derive(Clone, Debug)]
pub struct Status {
    pub generation: u64,
    pub loaded_at: SystemTime,
    /// The last failed reload, until a good one clears it.
    pub last_error: Option<(String, SystemTime)>,
}

/// The result of one reload attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Reloaded {
        generation: u64,
        added: Vec<String>,
        removed: usize,
        revoked: usize,
    },
    Unchanged,
    Failed(Vec<String>),
}

pub struct Reloader {
    path: PathBuf,
    policy: PolicyHandle,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Listener settings in force; changes to them need a restart and are only warned about.
    started_with: ProxySettings,
    inner: Mutex<Inner>,
}

struct Inner {
    book: ActivationBook,
    last_text: String,
    status: Status,
}

impl Reloader {
    /// Applies the activation book to the start-up config and returns the reloader holding it.
    pub fn new(
        config: &Config,
        book: ActivationBook,
        policy: PolicyHandle,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        loaded_text: String,
    ) -> Arc<Self> {
        metrics.config_generation.set(1);
        Arc::new(Reloader {
            path: config.path.clone(),
            policy,
            registry,
            metrics,
            started_with: config.proxy.clone(),
            inner: Mutex::new(Inner {
                book,
                last_text: loaded_text,
                status: Status {
                    generation: 1,
                    loaded_at: SystemTime::now(),
                    last_error: None,
                },
            }),
        })
    }

    /// The policy in force and the status that describes it, read together: a reload swaps
    /// the policy and bumps the generation under the same lock.
    pub fn snapshot(&self) -> (Arc<crate::policy::Policy>, Status) {
        let inner = self.inner.lock().expect("reload lock");
        (self.policy.load_full(), inner.status.clone())
    }

    pub fn status(&self) -> Status {
        self.inner.lock().expect("reload lock").status.clone()
    }

    /// Stamps of the current patterns, for the admin view.
    pub fn stamp(&self, pattern: &crate::allowlist::Pattern) -> Option<crate::activation::Stamp> {
        self.inner.lock().expect("reload lock").book.stamp(pattern)
    }

    /// Reads, validates and applies the config file. Blocking (file I/O, parsing): call it
    /// from a blocking thread.
    pub fn reload(&self, trigger: &str) -> Outcome {
        let mut inner = self.inner.lock().expect("reload lock");
        let started = std::time::Instant::now();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) => {
                return self.fail(
                    &mut inner,
                    trigger,
                    vec![format!("{}: cannot read: {err}", self.path.display())],
                )
            }
        };
        if text == inner.last_text {
            self.metrics.reload("unchanged");
            tracing::info!(trigger, "config unchanged");
            return Outcome::Unchanged;
        }
        let config = match Config::parse(&self.path, &text) {
            Ok(config) => config,
            Err(err) => return self.fail(&mut inner, trigger, err.problems()),
        };
        let parsed_in = started.elapsed();
        self.warn_about_restart_settings(&config.proxy);
        let now = SystemTime::now();
        let mut policy = config.policy;
        let (added, removed) =
            inner
                .book
                .update(&policy.allowlist, config.proxy.activation_delay, now);
        inner.book.apply(&mut policy.allowlist, 0);
        let policy = Arc::new(policy);
        // The old policy is dropped here, on this blocking thread, unless a request still
        // holds it: freeing a large index must not land on a proxy worker if avoidable.
        let old = self.policy.swap(policy.clone());
        let effective_in = started.elapsed();
        inner.last_text = text;
        inner.status.generation += 1;
        inner.status.loaded_at = now;
        inner.status.last_error = None;
        let generation = inner.status.generation;

        let revoked = self.registry.revoke_denied(&policy, unix_ms(now), |kind, target| {
            self.metrics.revoked(kind);
            tracing::warn!(kind, target = %target, "revoked: the reloaded allowlist no longer allows it");
        });
        // Persisting after the swap is safe: a crash before the write leaves new patterns
        // unknown to the state file, so they start a fresh (later) delay at the restart,
        // and removed ones are dropped because the config no longer lists them.
        let persist_started = std::time::Instant::now();
        if !added.is_empty() || removed > 0 {
            if let Err(err) = inner.book.persist() {
                tracing::error!(error = %err, "cannot persist activation state; a restart would restart pending delays");
            }
        }
        let persisted_in = persist_started.elapsed();
        drop(inner);
        drop(old);
        self.metrics.reload("success");
        self.metrics.config_generation.set(generation as i64);
        tracing::info!(
            trigger,
            generation,
            entries = policy.allowlist.len(),
            added = added.len(),
            removed,
            revoked,
            took_ms = ms(started.elapsed()),
            effective_ms = ms(effective_in),
            parse_ms = ms(parsed_in),
            persist_ms = ms(persisted_in),
            "config reloaded"
        );
        Outcome::Reloaded {
            generation,
            added,
            removed,
            revoked,
        }
    }

    fn fail(&self, inner: &mut Inner, trigger: &str, problems: Vec<String>) -> Outcome {
        for problem in &problems {
            tracing::error!(trigger, problem = %problem, "config reload failed; the running config stays in force");
        }
        self.metrics.reload("failure");
        inner.status.last_error = Some((problems.join("\n"), SystemTime::now()));
        Outcome::Failed(problems)
    }

    fn warn_about_restart_settings(&self, new: &ProxySettings) {
        let old = &self.started_with;
        let changed = [
            ("proxy.listen", old.listen != new.listen),
            ("proxy.admin_listen", old.admin_listen != new.admin_listen),
            (
                "proxy.max_connections",
                old.max_connections != new.max_connections,
            ),
            (
                "proxy.max_request_head_bytes",
                old.max_request_head_bytes != new.max_request_head_bytes,
            ),
            (
                "proxy.header_read_timeout",
                old.header_read_timeout != new.header_read_timeout,
            ),
            (
                "proxy.connect_timeout",
                old.connect_timeout != new.connect_timeout,
            ),
            ("proxy.idle_timeout", old.idle_timeout != new.idle_timeout),
            ("proxy.state_dir", old.state_dir != new.state_dir),
            ("proxy.admin_token_file", old.admin_token != new.admin_token),
        ];
        for (key, differs) in changed {
            if differs {
                tracing::warn!(
                    key,
                    "changed in the file but takes effect only after a restart"
                );
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Watches the config file's directory and reloads (debounced) on any change there.
/// The returned debouncer must be kept alive.
pub fn watch(
    reloader: Arc<Reloader>,
) -> anyhow::Result<Debouncer<notify_debouncer_mini::notify::RecommendedWatcher>> {
    let dir = watch_dir(&reloader.path);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut debouncer = new_debouncer(
        Duration::from_millis(200),
        move |result: DebounceEventResult| match result {
            Ok(_) => {
                let _ = tx.send(());
            }
            Err(err) => tracing::warn!(error = %err, "config watch error"),
        },
    )?;
    debouncer
        .watcher()
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| anyhow::anyhow!("cannot watch {}: {e}", dir.display()))?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            while rx.try_recv().is_ok() {}
            let reloader = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || reloader.reload("watch")).await;
        }
    });
    Ok(debouncer)
}

fn watch_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
