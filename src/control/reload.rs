//! Reloading the config file: watched with `notify`, on SIGHUP, or on `POST /v1/reload`.
//!
//! A reload reads and validates the whole file before anything changes. A file that fails
//! (syntax, unknown key, invalid pattern, empty or cut short) never replaces the running
//! config: the last good one keeps serving and the error is kept for `/v1/allowlist` and
//! counted. A good file is turned into a new [`Policy`] (allowlist, ports, private ranges,
//! origination rules, functions), the activation book is updated (new patterns pending,
//! removed ones gone) and persisted, and the policy is swapped with the file's client
//! identities as one [`Snapshot`], in one atomic store — requests in flight keep the
//! snapshot they loaded. Then every tunnel and connection the new policy denies is cut, and
//! the followers are told ([`AfterSwap`]).
//!
//! The activation book is persisted *before* the swap. A reload whose new activation state
//! cannot be written (state dir read-only, disk full) is refused like a bad file and retried
//! every [`PERSIST_RETRY`]: egressd never serves an allowlist its state file does not record,
//! so no stop in any window can turn "removed, then re-added while down" into "known, active
//! at once".
//!
//! The watcher watches the file's directory, not the file: editors replace files by rename
//! and Kubernetes swaps a `..data` symlink, and both only show up as directory events. Only
//! events that can change what egressd reads count — creation, modification, rename and
//! removal of the config file or of `..data` — never accesses (each reload reads the file,
//! and counting that read would reload forever) and never other files in the directory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::RecommendedWatcher;

use super::config::Config;
use crate::egress::revoke::Registry;
use crate::egress::{Snapshot, SnapshotHandle};
use crate::metrics::{Metrics, ReloadResult};
use crate::policy::activation::ActivationBook;
use crate::policy::Policy;
use crate::util::sync::lock;
use crate::util::time::unix_ms;
use crate::util::watch::{watch_files, WatchError};

/// What asked for a reload; the `trigger` field of reload log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The config file (or the `..data` link) changed.
    Watch,
    Sighup,
    /// `POST /v1/reload`.
    Admin,
    /// An allowlist edit through the admin API (the console).
    AdminEdit,
    /// The retry of a reload refused for unwritable activation state.
    Retry,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Watch => "watch",
            Trigger::Sighup => "SIGHUP",
            Trigger::Admin => "admin",
            Trigger::AdminEdit => "admin-edit",
            Trigger::Retry => "retry",
        }
    }
}

/// What the admin API shows about the loaded config.
#[derive(Clone, Debug)]
pub struct Status {
    pub generation: u64,
    pub loaded_at: SystemTime,
    /// How long an entry added now waits before it allows anything.
    pub activation_delay: Duration,
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

/// Told after each swap, with the old and the new snapshot: the followers that react to it
/// (pools to drop, certificate files to watch, schedules of undeployed functions to delete).
/// The snapshot itself is already in force, whole, when it runs.
pub type AfterSwap = Box<dyn Fn(&Snapshot, &Snapshot) + Send + Sync>;

pub struct Reloader {
    path: PathBuf,
    /// The policy and identities in force, swapped whole.
    snapshot: SnapshotHandle,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Settings read only at start; a reload that changes them is warned about.
    started_with: Vec<(&'static str, String)>,
    /// Held for a whole reload: one reload at a time.
    inner: Mutex<Inner>,
    /// Held only for the swap and for readers: admin requests never wait for a parse.
    status: Mutex<Status>,
    after_swap: AfterSwap,
    /// Set while the last reload was refused because activation state could not be written;
    /// the retry task reloads until it can.
    persist_failed: AtomicBool,
}

/// How often a reload refused for unwritable activation state is tried again.
pub const PERSIST_RETRY: Duration = Duration::from_secs(5);

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
        snapshot: SnapshotHandle,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        loaded_text: String,
        after_swap: AfterSwap,
    ) -> Arc<Self> {
        metrics.config_generation.set(1);
        Arc::new(Reloader {
            path: config.path.clone(),
            snapshot,
            registry,
            metrics,
            started_with: config.restart_only(),
            inner: Mutex::new(Inner {
                book,
                last_text: loaded_text,
                delay: config.proxy.activation_delay,
            }),
            status: Mutex::new(Status {
                generation: 1,
                loaded_at: SystemTime::now(),
                activation_delay: config.proxy.activation_delay,
                last_error: None,
            }),
            after_swap,
            persist_failed: AtomicBool::new(false),
        })
    }

    /// Whether the last reload was refused because activation state could not be written.
    pub fn persist_failed(&self) -> bool {
        self.persist_failed.load(Ordering::Relaxed)
    }

    /// The policy in force and the status that describes it, read together: a reload swaps
    /// the policy and bumps the generation under the same (short) lock.
    pub fn snapshot(&self) -> (Arc<Policy>, Status) {
        let status = lock(&self.status);
        (self.snapshot.load().policy.clone(), status.clone())
    }

    /// The watched config file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// Reads, validates and applies the config file. Blocking (file I/O, parsing): call it
    /// from a blocking thread.
    pub fn reload(&self, trigger: Trigger) -> Outcome {
        let mut inner = lock(&self.inner);
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
            self.metrics.reload(ReloadResult::Unchanged);
            // A bad edit reverted to the text in force: its error no longer applies.
            lock(&self.status).last_error = None;
            self.persist_failed.store(false, Ordering::Relaxed);
            if trigger == Trigger::Watch {
                tracing::debug!(trigger = trigger.as_str(), "config unchanged");
            } else {
                tracing::info!(trigger = trigger.as_str(), "config unchanged");
            }
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
        for warning in &config.warnings {
            tracing::warn!(trigger = trigger.as_str(), "{warning}");
        }
        let identities = Arc::new(config.mtls);
        let mut policy = config.policy;
        let delay_for_added = new_delay.max(inner.delay);
        let mut book = inner.book.clone();
        let (added, removed) = book.update(&policy.allowlist, delay_for_added, now);
        // Written before the swap: a stop at any moment leaves a state file that records at
        // least every pattern in force, with its real times.
        let persist_started = std::time::Instant::now();
        if !added.is_empty() || removed > 0 {
            if let Err(err) = book.persist() {
                self.metrics.state_persist_failures.inc();
                self.persist_failed.store(true, Ordering::Relaxed);
                return self.fail(
                    trigger,
                    vec![format!(
                        "cannot write activation state in {}: {err}; the running config stays in force and the reload is retried every {}s",
                        book.dir().map(|d| d.display().to_string()).unwrap_or_default(),
                        PERSIST_RETRY.as_secs()
                    )],
                );
            }
        }
        let persisted_in = persist_started.elapsed();
        self.persist_failed.store(false, Ordering::Relaxed);
        inner.book = book;
        inner.delay = new_delay;
        inner.book.apply(&mut policy.allowlist, 0);
        let policy = Arc::new(policy);
        let next = Arc::new(Snapshot {
            policy: policy.clone(),
            identities,
        });

        let (old, generation) = {
            let mut status = lock(&self.status);
            let old = self.snapshot.swap(next.clone());
            status.generation += 1;
            status.loaded_at = now;
            status.activation_delay = new_delay;
            status.last_error = None;
            (old, status.generation)
        };
        let effective_in = started.elapsed();
        inner.last_text = text;

        let revoked = self.registry.revoke_denied(&policy, unix_ms(now), |kind, target| {
            self.metrics.revoked(kind);
            tracing::warn!(kind = kind.as_str(), target = %target, "revoked: the reloaded allowlist no longer allows it");
        });
        // Last: the new snapshot is in force and what it denies is cut, whatever a follower does.
        (self.after_swap)(&old, &next);
        drop(inner);
        // The old policy is freed here, on this blocking thread, unless a request still holds
        // it: freeing a large index should not land on a proxy worker.
        drop(old);

        self.metrics.reload(ReloadResult::Success);
        self.metrics.config_generation.set(generation as i64);
        tracing::info!(
            trigger = trigger.as_str(),
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

    fn fail(&self, trigger: Trigger, problems: Vec<String>) -> Outcome {
        for problem in &problems {
            tracing::error!(trigger = trigger.as_str(), problem = %problem, "config reload failed; the running config stays in force");
        }
        self.metrics.reload(ReloadResult::Failure);
        lock(&self.status).last_error = Some((problems.join("\n"), SystemTime::now()));
        Outcome::Failed(problems)
    }

    fn warn_about_restart_settings(&self, new: &Config) {
        let changed = self
            .started_with
            .iter()
            .zip(new.restart_only())
            .filter(|(old, new)| **old != *new);
        for ((key, _), _) in changed {
            tracing::warn!(
                key,
                "changed in the file but takes effect only after a restart"
            );
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Watches the config file and reloads once the relevant events settle.
pub fn watch(reloader: Arc<Reloader>) -> Result<RecommendedWatcher, WatchError> {
    let path = reloader.path.clone();
    watch_files(&[path], move || {
        reloader.reload(Trigger::Watch);
    })
}

/// Retries a reload refused because activation state could not be written, until it goes
/// through (or the config changes back).
pub async fn retry_refused_reloads(reloader: Arc<Reloader>) {
    let mut tick = tokio::time::interval(PERSIST_RETRY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if reloader.persist_failed() {
            let reloader = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || reloader.reload(Trigger::Retry)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::allowlist::Lookup;
    use crate::policy::host::Host;
    use std::path::Path;

    /// A reloader over a config file in a temp dir, allowing `domains`, with a 60 s delay.
    struct Fixture {
        dir: tempfile::TempDir,
        reloader: Arc<Reloader>,
        snapshot: SnapshotHandle,
        /// Makes the next swap's followers panic.
        panic_after_swap: Arc<AtomicBool>,
    }

    fn config_text(domains: &[&str], state_dir: &Path) -> String {
        let list: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
        format!(
            "[proxy]\nstate_dir = {:?}\nactivation_delay = \"60s\"\n[allowlist]\ndomains = [{}]\n",
            state_dir.display().to_string(),
            list.join(", ")
        )
    }

    impl Fixture {
        fn new(domains: &[&str]) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("egressd.toml");
            std::fs::write(&path, config_text(domains, &dir.path().join("state"))).unwrap();
            let (config, text) = Config::load_with_text(&path).unwrap();
            let (book, _) = ActivationBook::open(
                Some(&config.proxy.state_dir),
                &config.policy.allowlist,
                config.proxy.activation_delay,
                SystemTime::now(),
            );
            book.persist().unwrap();
            let snapshot = Snapshot::handle(config.policy.clone(), config.mtls.clone());
            let panic_after_swap = Arc::new(AtomicBool::new(false));
            let panics = panic_after_swap.clone();
            let reloader = Reloader::new(
                &config,
                book,
                snapshot.clone(),
                Arc::new(Registry::default()),
                Arc::new(Metrics::new()),
                text,
                Box::new(move |_, _| {
                    if panics.swap(false, Ordering::SeqCst) {
                        panic!("a bug in a follower of the swap");
                    }
                }),
            );
            Fixture {
                dir,
                reloader,
                snapshot,
                panic_after_swap,
            }
        }

        fn write(&self, domains: &[&str]) {
            let text = config_text(domains, &self.dir.path().join("state"));
            std::fs::write(self.dir.path().join("egressd.toml"), text).unwrap();
        }

        fn lookup(&self, host: &str) -> Lookup {
            self.snapshot
                .load()
                .policy
                .allowlist
                .lookup(&Host::parse(host).unwrap(), crate::util::time::now_ms())
        }
    }

    #[test]
    fn the_same_text_is_unchanged_and_an_edit_is_applied() {
        let f = Fixture::new(&["a.test"]);
        assert_eq!(f.reloader.reload(Trigger::Sighup), Outcome::Unchanged);
        f.write(&["a.test", "b.test"]);
        assert_eq!(
            f.reloader.reload(Trigger::Sighup),
            Outcome::Reloaded {
                generation: 2,
                added: vec!["b.test".into()],
                removed: 0,
                revoked: 0
            }
        );
        assert!(
            matches!(f.lookup("b.test"), Lookup::Pending(_)),
            "added entries wait"
        );
        assert!(matches!(f.lookup("a.test"), Lookup::Active(_)));
    }

    #[test]
    fn a_bad_file_keeps_the_policy_and_reverting_it_clears_the_error() {
        let f = Fixture::new(&["a.test"]);
        f.write(&["*.*.a.test"]);
        assert!(matches!(
            f.reloader.reload(Trigger::Watch),
            Outcome::Failed(_)
        ));
        assert!(f.reloader.status().last_error.is_some());
        assert!(matches!(f.lookup("a.test"), Lookup::Active(_)));
        f.write(&["a.test"]);
        assert_eq!(f.reloader.reload(Trigger::Watch), Outcome::Unchanged);
        assert_eq!(f.reloader.status().last_error, None);
        assert_eq!(f.reloader.status().generation, 1);
    }

    #[test]
    fn unwritable_state_refuses_the_reload_until_a_retry_can_write_it() {
        let f = Fixture::new(&["a.test", "b.test"]);
        let state = f.dir.path().join("state");
        let aside = f.dir.path().join("state.aside");
        std::fs::rename(&state, &aside).unwrap();
        std::fs::write(&state, "not a directory").unwrap();
        f.write(&["a.test"]);
        let Outcome::Failed(problems) = f.reloader.reload(Trigger::Watch) else {
            panic!("the reload must be refused");
        };
        assert!(
            problems[0].contains("cannot write activation state"),
            "{problems:?}"
        );
        assert!(f.reloader.persist_failed());
        assert!(
            matches!(f.lookup("b.test"), Lookup::Active(_)),
            "nothing changed"
        );

        std::fs::remove_file(&state).unwrap();
        std::fs::rename(&aside, &state).unwrap();
        assert!(matches!(
            f.reloader.reload(Trigger::Retry),
            Outcome::Reloaded { removed: 1, .. }
        ));
        assert!(!f.reloader.persist_failed());
        assert!(matches!(f.lookup("b.test"), Lookup::NoMatch));
        let persisted = std::fs::read_to_string(state.join("activation.json")).unwrap();
        assert!(!persisted.contains("b.test"), "{persisted}");
    }

    #[test]
    fn a_panic_while_the_reload_locks_are_held_does_not_stop_reloads() {
        let f = Fixture::new(&["a.test"]);
        // A bug in the middle of a reload: both locks held, in the order `reload` takes them.
        let reloader = f.reloader.clone();
        let panicked = std::thread::spawn(move || {
            let _inner = reloader.inner.lock().unwrap();
            let _status = reloader.status.lock().unwrap();
            panic!("a bug while reloading");
        })
        .join();
        assert!(panicked.is_err());
        assert!(f.reloader.inner.is_poisoned() && f.reloader.status.is_poisoned());

        assert_eq!(f.reloader.status().generation, 1);
        f.write(&["a.test", "b.test"]);
        assert!(matches!(
            f.reloader.reload(Trigger::Watch),
            Outcome::Reloaded { generation: 2, .. }
        ));
        assert!(matches!(f.lookup("b.test"), Lookup::Pending(_)));
        assert_eq!(f.reloader.snapshot().1.generation, 2);
        f.write(&["*.*.a.test"]);
        assert!(matches!(
            f.reloader.reload(Trigger::Watch),
            Outcome::Failed(_)
        ));
        assert!(f.reloader.status().last_error.is_some());
    }

    #[test]
    fn a_panic_inside_the_swap_does_not_stop_reloads() {
        let f = Fixture::new(&["a.test"]);
        f.panic_after_swap.store(true, Ordering::SeqCst);
        f.write(&["a.test", "b.test"]);
        let reloader = f.reloader.clone();
        let panicked = std::thread::spawn(move || reloader.reload(Trigger::Watch)).join();
        assert!(panicked.is_err(), "the follower panicked inside the reload");
        // The snapshot was swapped whole before the followers ran.
        assert!(matches!(f.lookup("b.test"), Lookup::Pending(_)));
        assert_eq!(f.reloader.status().generation, 2);
        assert_eq!(
            f.reloader.reload(Trigger::Watch),
            Outcome::Unchanged,
            "the text in force was recorded before the followers ran"
        );
        f.write(&["a.test", "b.test", "c.test"]);
        assert!(matches!(
            f.reloader.reload(Trigger::Watch),
            Outcome::Reloaded { generation: 3, .. }
        ));
        assert!(matches!(f.lookup("c.test"), Lookup::Pending(_)));
    }
}
