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
use crate::config::{Config, DnsSettings, ProxySettings};
use crate::connect::PolicyHandle;
use crate::metrics::Metrics;
use crate::policy::Policy;
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

/// Called after each swap with the old and the new policy.
pub type SwapHook = Box<dyn Fn(&Policy, &Policy) + Send + Sync>;

pub struct Reloader {
    path: PathBuf,
    policy: PolicyHandle,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Settings read only at start; a reload that changes them is warned about.
    started_with: (ProxySettings, DnsSettings),
    /// Held for a whole reload: one reload at a time.
    inner: Mutex<Inner>,
    /// Held only for the swap and for readers: admin requests never wait for a parse.
    status: Mutex<Status>,
    on_swap: SwapHook,
}

struct Inner {
    book: ActivationBook,
    last_text: String,
    /// The activation delay in force. A reload that shortens it still gives the entries it
    /// adds the longer one, so one edit cannot add an entry and skip its delay.
    delay: Duration,
}

impl Reloader {
    /// Takes over the activation book opened at start-up.
    pub fn new(
        config: &Config,
        book: ActivationBook,
        policy: PolicyHandle,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        loaded_text: String,
        on_swap: SwapHook,
    ) -> Arc<Self> {
        metrics.config_generation.set(1);
        Arc::new(Reloader {
            path: config.path.clone(),
            policy,
            registry,
            metrics,
            started_with: (config.proxy.clone(), config.dns.clone()),
            inner: Mutex::new(Inner {
                book,
                last_text: loaded_text,
                delay: config.proxy.activation_delay,
            }),
            status: Mutex::new(Status {
                generation: 1,
                loaded_at: SystemTime::now(),
                last_error: None,
            }),
            on_swap,
        })
    }

    /// The policy in force and the status that describes it, read together: a reload swaps
    /// the policy and bumps the generation under the same (short) lock.
    pub fn snapshot(&self) -> (Arc<Policy>, Status) {
        let status = self.status.lock().expect("status lock");
        (self.policy.load_full(), status.clone())
    }

    pub fn status(&self) -> Status {
        self.status.lock().expect("status lock").clone()
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
        let config = match Config::parse_for_reload(&self.path, &text) {
            Ok(config) => config,
            Err(err) => return self.fail(trigger, err.problems()),
        };
        let parsed_in = started.elapsed();
        self.warn_about_restart_settings(&config);
        let now = SystemTime::now();
        let new_delay = config.proxy.activation_delay;
        let mut policy = config.policy;
        let delay_for_added = new_delay.max(inner.delay);
        let (added, removed) = inner.book.update(&policy.allowlist, delay_for_added, now);
        inner.delay = new_delay;
        inner.book.apply(&mut policy.allowlist, 0);
        let policy = Arc::new(policy);

        let (old, generation) = {
            let mut status = self.status.lock().expect("status lock");
            let old = self.policy.swap(policy.clone());
            status.generation += 1;
            status.loaded_at = now;
            status.last_error = None;
            (old, status.generation)
        };
        let effective_in = started.elapsed();
        (self.on_swap)(&old, &policy);
        inner.last_text = text;

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
        // The old policy is freed here, on this blocking thread, unless a request still holds
        // it: freeing a large index should not land on a proxy worker.
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

    fn fail(&self, trigger: &str, problems: Vec<String>) -> Outcome {
        for problem in &problems {
            tracing::error!(trigger, problem = %problem, "config reload failed; the running config stays in force");
        }
        self.metrics.reload("failure");
        self.status.lock().expect("status lock").last_error =
            Some((problems.join("\n"), SystemTime::now()));
        Outcome::Failed(problems)
    }

    fn warn_about_restart_settings(&self, new: &Config) {
        let (old, old_dns) = &self.started_with;
        let p = &new.proxy;
        let changed = [
            ("proxy.listen", old.listen != p.listen),
            ("proxy.admin_listen", old.admin_listen != p.admin_listen),
            (
                "proxy.max_connections",
                old.max_connections != p.max_connections,
            ),
            (
                "proxy.max_request_head_bytes",
                old.max_request_head_bytes != p.max_request_head_bytes,
            ),
            (
                "proxy.header_read_timeout",
                old.header_read_timeout != p.header_read_timeout,
            ),
            (
                "proxy.connect_timeout",
                old.connect_timeout != p.connect_timeout,
            ),
            ("proxy.idle_timeout", old.idle_timeout != p.idle_timeout),
            (
                "proxy.shutdown_grace",
                old.shutdown_grace != p.shutdown_grace,
            ),
            ("proxy.state_dir", old.state_dir != p.state_dir),
            ("dns.servers", old_dns.servers != new.dns.servers),
            ("dns.timeout", old_dns.timeout != new.dns.timeout),
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
