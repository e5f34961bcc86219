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

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::RecommendedWatcher;

use super::config::{Config, TokenFile};
use crate::egress::revoke::Registry;
use crate::egress::tls::{MtlsTable, TlsOrigins};
use crate::egress::{Snapshot, SnapshotHandle};
use crate::metrics::{Metrics, ReloadResult};
use crate::policy::activation::ActivationBook;
use crate::policy::allowlist::Pattern;
use crate::policy::identity::IdentityMode;
use crate::policy::Policy;
use crate::state::postgres::allowlist::{SharedAllowlist, SharedView};
use crate::state::postgres::DbError;
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
    /// Another replica changed the shared state (an edit, an agreed activation time).
    Shared,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Watch => "watch",
            Trigger::Sighup => "SIGHUP",
            Trigger::Admin => "admin",
            Trigger::AdminEdit => "admin-edit",
            Trigger::Retry => "retry",
            Trigger::Shared => "shared-state",
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
    /// The shared entries in force (postgres backend): the console shows them as added
    /// there, and only they can be removed there.
    pub shared_entries: Arc<HashSet<Pattern>>,
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

/// Told after each reload of the file that was put in force, with its config: the settings
/// that live outside the snapshot (`proxy.identity`, the token files).
pub type AfterReload = Box<dyn Fn(IdentityMode, Vec<TokenFile>) + Send + Sync>;

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
    after_reload: std::sync::OnceLock<AfterReload>,
    /// Set while the last reload was refused because activation state could not be written;
    /// the retry task reloads until it can.
    persist_failed: AtomicBool,
    /// The allowlist's shared half (postgres backend): entries added from the console and
    /// the activation times every replica agrees on.
    shared: Option<Arc<SharedAllowlist>>,
    /// Set while the shared state could not be read or written: the next refresh agrees
    /// again (with the removals it missed).
    shared_stale: AtomicBool,
}

/// The shared half as found at start.
pub struct SharedStart {
    pub allowlist: Arc<SharedAllowlist>,
    pub entries: Vec<Pattern>,
    pub version: i64,
    /// The database was away at start: the entries are the local copy.
    pub stale: bool,
}

/// A config file read and validated, or the file's policy in force when the shared state
/// changed: what [`Reloader::apply`] puts in force.
struct Parsed {
    policy: Policy,
    identities: Arc<MtlsTable>,
    origins: Arc<TlsOrigins>,
    delay: Duration,
    /// The file's text; `None` for a change of the shared state.
    text: Option<String>,
    parsed_in: Duration,
}

/// How often a reload refused for unwritable activation state is tried again.
pub const PERSIST_RETRY: Duration = Duration::from_secs(5);

struct Inner {
    book: ActivationBook,
    last_text: String,
    /// The activation delay in force. A reload that shortens it still gives the entries it
    /// adds the longer one, so one edit cannot add an entry and skip its delay.
    delay: Duration,
    /// The config file's policy as parsed, before shared entries are merged in: what a
    /// change of the shared state is applied to.
    file_policy: Policy,
    /// The shared entries in force, and the change counter they were read at.
    shared_entries: Vec<Pattern>,
    shared_version: i64,
    /// Patterns dropped from the file while the shared state was away, to be marked
    /// removed there once it answers.
    unmarked_removals: Vec<Pattern>,
}

impl Reloader {
    /// Takes over the activation book opened at start-up, and the shared half of the
    /// allowlist when there is one.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        book: ActivationBook,
        snapshot: SnapshotHandle,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        loaded_text: String,
        after_swap: AfterSwap,
        shared: Option<SharedStart>,
    ) -> Arc<Self> {
        metrics.config_generation.set(1);
        let (shared, entries, version, stale) = match shared {
            Some(s) => (Some(s.allowlist), s.entries, s.version, s.stale),
            None => (None, Vec::new(), 0, false),
        };
        let shared_set = Arc::new(entries.iter().cloned().collect());
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
                file_policy: config.policy.clone(),
                shared_entries: entries,
                shared_version: version,
                unmarked_removals: Vec::new(),
            }),
            status: Mutex::new(Status {
                generation: 1,
                loaded_at: SystemTime::now(),
                activation_delay: config.proxy.activation_delay,
                last_error: None,
                shared_entries: shared_set,
            }),
            after_swap,
            after_reload: std::sync::OnceLock::new(),
            persist_failed: AtomicBool::new(false),
            shared,
            shared_stale: AtomicBool::new(stale),
        })
    }

    /// The shared half of the allowlist, with the postgres backend.
    pub fn shared(&self) -> Option<&Arc<SharedAllowlist>> {
        self.shared.as_ref()
    }

    /// Follows the shared state: when its change counter moved (or the last attempt
    /// failed), reads the shared entries and agreed times and swaps them in. Blocking
    /// (database round trips): call it from a blocking thread.
    pub fn refresh_shared(&self, trigger: Trigger) -> Outcome {
        let Some(shared) = self.shared.clone() else {
            return Outcome::Unchanged;
        };
        let mut inner = lock(&self.inner);
        let started = std::time::Instant::now();
        let stale = self.shared_stale.load(Ordering::Relaxed);
        match shared.version() {
            Ok(version) if version == inner.shared_version && !stale => return Outcome::Unchanged,
            Ok(_) => {}
            Err(_) => return Outcome::Unchanged,
        }
        let file_policy = inner.file_policy.clone();
        let patterns = file_policy.allowlist.patterns().to_vec();
        let view = match stale {
            // The last reload could not agree: agree now, with what it could not mark.
            true => shared.agree(
                &patterns,
                &inner.unmarked_removals,
                inner.delay.as_millis() as u64,
                unix_ms(SystemTime::now()),
            ),
            false => shared.read(&patterns),
        };
        let (identities, origins) = {
            let now = self.snapshot.load();
            (now.identities.clone(), now.origins.clone())
        };
        let delay = inner.delay;
        self.apply(
            &mut inner,
            Parsed {
                policy: file_policy,
                identities,
                origins,
                delay,
                text: None,
                parsed_in: Duration::ZERO,
            },
            Some(view),
            trigger,
            started,
        )
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
        let (identity, token_files) = (config.proxy.identity, config.token_files.clone());
        let removed_from_file: Vec<Pattern> = inner
            .file_policy
            .allowlist
            .patterns()
            .iter()
            .filter(|p| !config.policy.allowlist.contains(p))
            .cloned()
            .collect();
        let view = self.shared.as_ref().map(|shared| {
            let mut removed = std::mem::take(&mut inner.unmarked_removals);
            removed.extend(removed_from_file.iter().cloned());
            let view = shared.agree(
                config.policy.allowlist.patterns(),
                &removed,
                new_delay.max(inner.delay).as_millis() as u64,
                unix_ms(now),
            );
            if view.is_err() {
                inner.unmarked_removals = removed;
            }
            view
        });
        let outcome = self.apply(
            &mut inner,
            Parsed {
                policy: config.policy,
                identities: Arc::new(config.mtls),
                origins: Arc::new(config.origins),
                delay: new_delay,
                text: Some(text),
                parsed_in,
            },
            view,
            trigger,
            started,
        );
        if matches!(outcome, Outcome::Reloaded { .. }) {
            if let Some(after_reload) = self.after_reload.get() {
                after_reload(identity, token_files);
            }
        }
        outcome
    }

    /// Sets what is told of each config put in force by a reload (once).
    pub fn after_reload(&self, hook: AfterReload) {
        let _ = self.after_reload.set(hook);
    }

    /// Merges the shared entries into the file's policy, updates and persists activation
    /// times (agreed ones win), swaps the snapshot and cuts what it no longer allows. A
    /// refresh of the shared state (`parsed.text` none) that changes nothing swaps nothing.
    fn apply(
        &self,
        inner: &mut Inner,
        parsed: Parsed,
        view: Option<Result<SharedView, DbError>>,
        trigger: Trigger,
        started: std::time::Instant,
    ) -> Outcome {
        let now = SystemTime::now();
        let Parsed {
            policy: file_policy,
            identities,
            origins,
            delay: new_delay,
            text,
            parsed_in,
        } = parsed;
        let (entries, agreed, version) = match view {
            None => (Vec::new(), None, 0),
            Some(Ok(view)) => {
                self.shared_stale.store(false, Ordering::Relaxed);
                (view.entries, Some(view.stamps), view.version)
            }
            Some(Err(err)) => {
                if !self.shared_stale.swap(true, Ordering::Relaxed) {
                    tracing::error!(trigger = trigger.as_str(), error = %err, "cannot agree on activation times with the shared state; added entries wait out their delay locally, removals act now, and the agreement is retried every second");
                }
                (inner.shared_entries.clone(), None, inner.shared_version)
            }
        };
        let mut policy = file_policy.clone();
        policy.allowlist = file_policy.allowlist.with_shared(&entries);
        let delay_for_added = new_delay.max(inner.delay);
        let mut book = inner.book.clone();
        let (added, removed) = book.update(&policy.allowlist, delay_for_added, now);
        let times_changed = agreed.as_ref().is_some_and(|a| book.agree_with(a));
        if text.is_none() && added.is_empty() && removed == 0 && !times_changed {
            inner.shared_version = version;
            return Outcome::Unchanged;
        }
        // Written before the swap: a stop at any moment leaves a state file that records at
        // least every pattern in force, with its real times.
        let persist_started = std::time::Instant::now();
        if !added.is_empty() || removed > 0 || times_changed {
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
        if let (Some(_), Some(dir)) = (&self.shared, book.dir()) {
            if let Err(err) = crate::state::local::save_entries(dir, &entries) {
                tracing::warn!(error = %err, "cannot keep the local copy of the shared allowlist entries");
            }
        }
        let persisted_in = persist_started.elapsed();
        self.persist_failed.store(false, Ordering::Relaxed);
        inner.book = book;
        inner.delay = new_delay;
        inner.file_policy = file_policy;
        inner.shared_entries = entries;
        inner.shared_version = version;
        inner.book.apply(&mut policy.allowlist, 0);
        let policy = Arc::new(policy);
        let next = Arc::new(Snapshot {
            policy: policy.clone(),
            identities,
            origins,
        });

        let shared_set = Arc::new(inner.shared_entries.iter().cloned().collect());
        let (old, generation) = {
            let mut status = lock(&self.status);
            let old = self.snapshot.swap(next.clone());
            status.generation += 1;
            status.loaded_at = now;
            status.activation_delay = new_delay;
            status.shared_entries = shared_set;
            if text.is_some() {
                status.last_error = None;
            }
            (old, status.generation)
        };
        let effective_in = started.elapsed();
        if let Some(text) = text {
            inner.last_text = text;
        }

        let revoked = self.registry.revoke_denied(&policy, unix_ms(now), |kind, target| {
            self.metrics.revoked(kind);
            tracing::warn!(kind = kind.as_str(), target = %target, "revoked: the reloaded allowlist no longer allows it");
        });
        // Last: the new snapshot is in force and what it denies is cut, whatever a follower does.
        (self.after_swap)(&old, &next);
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
                None,
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
