//! Wiring: from a validated [`Config`] to running listeners, and back down on shutdown.
//!
//! [`App::start`] does everything that can fail — binding, restoring activation state,
//! watching the config — before egressd reports itself listening, so "listening" means
//! ready, reloads included. [`App::run`] then serves until shutdown.
//!
//! The proxy runs thread-per-core: `proxy.workers` threads, each with a current-thread
//! runtime, its own `SO_REUSEPORT` listener and its own [`Proxy`] (so its own upstream pool).
//! A request, its upstream connection and its tunnel stay on the thread that accepted the
//! client: no cross-thread wake-up per request. They share the policy, the revocation
//! registry, the metrics and the `max_connections` places. The admin listener, reloads and
//! signals run on the main runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use notify::RecommendedWatcher;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::control::admin::{serve_admin, Admin};
use crate::control::config::{Config, ProxySettings};
use crate::control::edit::AllowlistEditor;
use crate::control::identity::IdentityKeeper;
use crate::control::reload::{self, Reloader, SharedStart, Trigger};
use crate::control::rotate::Rotator;
use crate::control::trace::Auditor;
use crate::egress::resolve::DnsResolver;
use crate::egress::revoke::Registry;
use crate::egress::tls::HandshakeHook;
use crate::egress::{EgressClient, EgressOptions, Snapshot};
use crate::metrics::Metrics;
use crate::policy::activation::{ActivationBook, Opened};
use crate::policy::Policy;
use crate::proxy::headers::Via;
use crate::proxy::secrets::SecretsApi;
use crate::proxy::server::{bind_workers, serve_proxy, ConnLimits};
use crate::proxy::{FailureThrottle, Proxy};
use crate::schedule::clock::SystemClock;
use crate::schedule::service::Scheduler;
use crate::schedule::store::{FileStore, ScheduleStore};
use crate::secrets::file::FileBackend;
use crate::secrets::{SecretBackend, SecretStore};
use crate::state::postgres::allowlist::SharedAllowlist;
use crate::state::postgres::denials::SharedDenials;
use crate::state::postgres::schedules::PgScheduleStore;
use crate::state::postgres::secrets::PgSecretBackend;
use crate::state::postgres::Database;
use crate::state::StateSettings;
use crate::util::drain::Draining;
use tokio::runtime::Handle;

/// A ready egressd: listeners bound, state restored, config watched.
pub struct App {
    settings: ProxySettings,
    workers: Vec<Worker>,
    admin_listener: TcpListener,
    admin: Arc<Admin>,
    reloader: Arc<Reloader>,
    /// Set when shutdown begins, `drain_delay` before the listeners stop.
    draining: Draining,
    /// Dropping it stops the watch.
    _watcher: RecommendedWatcher,
}

impl App {
    /// Binds both listeners (port 0 picks a free port), restores activation state from
    /// `state_dir` and starts watching the config file. `config_text` is the text `config`
    /// was parsed from: a reload of identical text is a no-op. `metrics` comes in made, as
    /// the log writer, started before the config is read, counts into it.
    pub async fn start(
        config: Config,
        config_text: String,
        metrics: Metrics,
    ) -> anyhow::Result<App> {
        let settings = config.proxy.clone();
        check_open_files_limit(settings.max_connections);
        let listeners = bind_workers(settings.listen, settings.workers)
            .with_context(|| format!("cannot listen on proxy.listen {}", settings.listen))?;
        let admin_listener = TcpListener::bind(settings.admin_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on proxy.admin_listen {}",
                    settings.admin_listen
                )
            })?;
        let own_addrs = vec![listeners[0].local_addr()?, admin_listener.local_addr()?];

        let metrics = Arc::new(metrics);
        let (store, database) = open_state(&config).await?;
        let secrets = open_secrets(&config, database.as_ref()).await?;
        let shared = database
            .as_ref()
            .map(|db| Arc::new(SharedAllowlist::new(db.clone(), Handle::current())));
        let mut policy = config.policy.clone();
        let (book, shared_start) = open_activation_book(&config, &mut policy, shared).await?;
        // The policy and the client identities in force, one snapshot for every egress client.
        let snapshot =
            Snapshot::handle_with_origins(policy, config.mtls.clone(), config.origins.clone());
        // Set at SIGTERM, before the listeners stop: readiness fails, keep-alive clients go.
        let draining = Draining::default();
        let registry = Arc::new(Registry::default());
        let resolver = DnsResolver::new(&config.dns);
        let options = EgressOptions {
            connect_timeout: settings.connect_timeout,
            response_header_timeout: settings.response_header_timeout,
        };
        let on_handshake: HandshakeHook = {
            let metrics = metrics.clone();
            Arc::new(move |pattern, outcome| metrics.mtls_handshake(&pattern.to_string(), outcome))
        };
        // Each worker's, and the scheduler's: the same snapshot and resolver, a pool each on
        // the runtime that uses it, so no connection crosses runtimes.
        let egress_client = || {
            Arc::new(
                EgressClient::new(
                    snapshot.clone(),
                    resolver.clone(),
                    own_addrs.clone(),
                    options,
                )
                .with_handshake_hook(on_handshake.clone())
                .with_secrets(secrets.clone()),
            )
        };
        let secrets_api = match (&config.secrets, &secrets) {
            (Some(settings), Some(store)) => Some(SecretsApi {
                host: settings.host.clone(),
                store: store.clone(),
            }),
            _ => None,
        };
        // Function credentials: read now, on each reload and when a token file changes.
        let identity = IdentityKeeper::new();
        identity.apply(settings.identity, config.token_files.clone());
        let failures = Arc::new(FailureThrottle::default());
        let workers: Vec<Worker> = listeners
            .into_iter()
            .map(|listener| {
                let proxy = Arc::new(
                    Proxy::new(
                        egress_client(),
                        metrics.clone(),
                        registry.clone(),
                        settings.idle_timeout,
                        settings.tunnel_relay,
                    )
                    .with_sni(settings.connect_sni, settings.header_read_timeout)
                    .with_via(Via::new(&settings.via_name))
                    .with_draining(draining.clone())
                    .with_identity(identity.handle(), failures.clone())
                    .with_secrets(secrets_api.clone()),
                );
                Worker { listener, proxy }
            })
            .collect();
        let schedule_egress = egress_client();
        // Every egress client: their pools are dropped when a swap changes what they dialled
        // under.
        let pools: Vec<Arc<EgressClient>> = workers
            .iter()
            .map(|w| w.proxy.egress.clone())
            .chain([schedule_egress.clone()])
            .collect();
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let audit_egress = pools[0].clone();
        let rotator = Rotator::new(snapshot.clone(), pools.clone());
        rotator
            .watch(&config.mtls)
            .context("cannot watch the [[mtls]] certificate files")?;

        let scheduler = Scheduler::new(
            store,
            schedule_egress.clone(),
            settings.schedule_timeout,
            metrics.clone(),
            Arc::new(SystemClock),
        );
        // Functions undeployed while egressd was down lose their schedules now; the store
        // writes (and fsyncs), so not on an async worker.
        {
            let scheduler = scheduler.clone();
            tokio::task::spawn_blocking(move || scheduler.reconcile_functions())
                .await
                .context("deleting the schedules of undeployed functions")?;
        }
        let after_swap = {
            let (rotator, scheduler) = (rotator.clone(), scheduler.clone());
            Box::new(move |old: &Snapshot, new: &Snapshot| {
                if old.policy.functions != new.policy.functions {
                    scheduler.reconcile_functions();
                }
                if !old.pool_still_valid_under(new) {
                    // Pooled connections were dialled under the old address rules, or
                    // present an identity that no longer applies.
                    for egress in &pools {
                        egress.reset_pool();
                    }
                }
                if !old.identities.same_as(&new.identities) {
                    if let Err(err) = rotator.watch(&new.identities) {
                        tracing::error!(error = %err, "cannot watch the new [[mtls]] files; rotations will need a reload");
                    }
                }
            })
        };
        let reloader = Reloader::new(
            &config,
            book,
            snapshot,
            registry,
            metrics.clone(),
            config_text,
            after_swap,
            shared_start,
        );
        if let Some(shared) = reloader.shared() {
            let changed = Arc::new(tokio::sync::Notify::new());
            tokio::spawn(shared.clone().listen(changed.clone()));
            tokio::spawn(follow_shared_state(
                reloader.clone(),
                changed,
                metrics.clone(),
            ));
        }
        {
            let identity = identity.clone();
            reloader.after_reload(Box::new(move |mode, token_files| {
                identity.apply(mode, token_files)
            }));
        }
        let watcher = reload::watch(reloader.clone()).context("cannot watch the config file")?;
        // Recent denials merged across replicas: each writes its rows every few seconds.
        let shared_denials = database
            .as_ref()
            .map(|db| Arc::new(SharedDenials::new(db.clone())));
        if let Some(shared) = &shared_denials {
            tokio::spawn(shared.clone().keep_flushing(metrics.clone()));
        }
        let admin = Arc::new(Admin {
            metrics,
            reloader: reloader.clone(),
            rotator,
            identity,
            scheduler,
            token: settings.admin_token.clone(),
            editor: Arc::new(AllowlistEditor::new(
                config.path.clone(),
                settings.admin_allowlist_edit,
            )),
            auditor: Auditor {
                egress: audit_egress,
            },
            loopback: settings.admin_listen.ip().is_loopback(),
            draining: draining.clone(),
            database,
            shared_denials: shared_denials.clone(),
            secrets_host: config
                .secrets
                .as_ref()
                .map_or(String::new(), |s| s.host.to_string()),
            secrets,
        });
        Ok(App {
            settings,
            workers,
            admin_listener,
            admin,
            reloader,
            draining,
            _watcher: watcher,
        })
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.workers[0]
            .listener
            .local_addr()
            .expect("bound listener")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("bound listener")
    }

    /// Serves until `shutdown` is cancelled; then fails readiness and answers keep-alive
    /// requests with `Connection: close` for `drain_delay` while still accepting, then stops
    /// accepting and drains for the grace period. Each message on `reload_signal` (SIGHUP)
    /// reloads the config.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        mut reload_signal: mpsc::Receiver<()>,
    ) -> anyhow::Result<()> {
        // What the listeners and the scheduler stop on: `shutdown` plus the drain delay.
        let stop = CancellationToken::new();
        {
            let (stop, draining) = (stop.clone(), self.draining.clone());
            let delay = self.settings.drain_delay;
            tokio::spawn(async move {
                shutdown.cancelled().await;
                draining.start();
                tracing::info!(
                    ?delay,
                    "draining: /readyz fails and keep-alive clients are told to close; still accepting"
                );
                tokio::time::sleep(delay).await;
                stop.cancel();
            });
        }
        let shutdown = stop;
        tokio::spawn(reload::retry_refused_reloads(self.reloader.clone()));
        tokio::spawn(trim_after_spikes(self.admin.metrics.clone()));
        tokio::spawn(self.admin.scheduler.clone().serve(shutdown.clone()));
        // Fired runs get the same grace as the proxy's connections, then are cut.
        let scheduler_drained = {
            let (scheduler, shutdown) = (self.admin.scheduler.clone(), shutdown.clone());
            let grace = self.settings.shutdown_grace;
            tokio::spawn(async move {
                shutdown.cancelled().await;
                scheduler.drain(grace).await;
            })
        };
        let reloader = self.reloader.clone();
        let rotator = self.admin.rotator.clone();
        let identity = self.admin.identity.clone();
        tokio::spawn(async move {
            while reload_signal.recv().await.is_some() {
                let (reloader, rotator) = (reloader.clone(), rotator.clone());
                let identity = identity.clone();
                // SIGHUP re-reads everything: the config, and the [[mtls]] files even when
                // the config did not change.
                let _ = tokio::task::spawn_blocking(move || {
                    reloader.reload(Trigger::Sighup);
                    rotator.rotate();
                    identity.refresh();
                })
                .await;
            }
        });
        let admin_task = tokio::spawn(serve_admin(
            self.admin_listener,
            self.admin,
            shutdown.clone(),
        ));
        let limits = ConnLimits {
            header_read_timeout: self.settings.header_read_timeout,
            max_head_bytes: self.settings.max_request_head_bytes,
            permits: Arc::new(Semaphore::new(self.settings.max_connections)),
        };
        let grace = self.settings.shutdown_grace;
        let mut threads = Vec::with_capacity(self.workers.len());
        for (n, worker) in self.workers.into_iter().enumerate() {
            let (limits, shutdown) = (limits.clone(), shutdown.clone());
            let thread = std::thread::Builder::new()
                .name(format!("egressd-proxy-{n}"))
                .spawn(move || worker.run(limits, shutdown, grace))
                .context("cannot start a proxy worker thread")?;
            threads.push(thread);
        }
        for thread in threads {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .context("waiting for a proxy worker")?
                .map_err(|_| anyhow::anyhow!("a proxy worker panicked"))??;
        }
        let _ = admin_task.await;
        let _ = scheduler_drained.await;
        Ok(())
    }
}

/// One proxy thread: its listener and the proxy state it serves it with.
struct Worker {
    listener: std::net::TcpListener,
    proxy: Arc<Proxy>,
}

impl Worker {
    /// Serves on a runtime of this thread's own until `shutdown`, then drains for `grace`.
    fn run(
        self,
        limits: ConnLimits,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot build a proxy worker runtime")?;
        runtime.block_on(async move {
            let listener = TcpListener::from_std(self.listener)?;
            let proxy = self.proxy;
            serve_proxy(listener, proxy.clone(), limits, shutdown).await;
            tracing::info!(?grace, "shutting down: no new connections, draining");
            proxy.tasks.close();
            if tokio::time::timeout(grace, proxy.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    open = proxy.tasks.len(),
                    "grace period over; cutting what is left"
                );
                proxy.hard_stop.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(1), proxy.tasks.wait()).await;
            }
            Ok(())
        })
    }
}

/// The schedules: in `proxy.state_dir` (one replica), or in the shared database, whose
/// schema is brought up to date first. A database that cannot be reached now does not stop
/// the start (the proxy serves; admin writes and the scheduler wait for it); one that
/// refuses egressd (a wrong password, a schema from a newer egressd) does.
/// The secret store of `[secrets]`, in `state_dir` or the shared database; `None` without
/// `[secrets]`. A wrong key, a store that cannot be read or a value that does not open
/// stops the start, and nothing is written.
async fn open_secrets(
    config: &Config,
    database: Option<&Arc<Database>>,
) -> anyhow::Result<Option<Arc<SecretStore>>> {
    let Some(settings) = &config.secrets else {
        return Ok(None);
    };
    let key = settings
        .key
        .clone()
        .expect("the start-up config reads secrets.key_file");
    let backend: Arc<dyn SecretBackend> = match database {
        None => Arc::new(FileBackend::new(&config.proxy.state_dir)),
        Some(db) => Arc::new(PgSecretBackend::new(db.clone())),
    };
    // A shared database may be away while this replica starts (it opens the store when
    // the database is back); a file that cannot be read stops the start.
    let store = match database {
        None => SecretStore::open(key, backend).await,
        Some(_) => SecretStore::open_when_available(key, backend).await,
    }
    .context("cannot open the secret store ([secrets])")?;
    if database.is_some() {
        // Other replicas write too: follow their changes for injection.
        tokio::spawn(store.clone().follow());
    }
    Ok(Some(store))
}

async fn open_state(
    config: &Config,
) -> anyhow::Result<(Arc<dyn ScheduleStore>, Option<Arc<Database>>)> {
    match &config.state {
        StateSettings::File => {
            let store = FileStore::open(&config.proxy.state_dir)
                .context("cannot read the schedules in proxy.state_dir")?;
            Ok((Arc::new(store), None))
        }
        StateSettings::Postgres(pg) => {
            let context = || format!("[state] backend = \"postgres\" ({})", pg.source);
            let db = match Database::open(pg, &config.proxy.via_name).await {
                Ok(db) => db,
                Err(err) if Database::is_transient(&err) => {
                    tracing::error!(error = %err, "the shared state is unavailable at start; serving, and trying again every second");
                    Arc::new(Database::connect(pg, &config.proxy.via_name).with_context(context)?)
                }
                Err(err) => return Err(err).with_context(context),
            };
            tracing::info!(
                database = db.target(),
                replica = db.replica(),
                "shared state in PostgreSQL"
            );
            let store = PgScheduleStore::new(db.clone(), tokio::runtime::Handle::current());
            Ok((Arc::new(store), Some(db)))
        }
    }
}

/// Follows the shared state: at each NOTIFY from another replica, and every second as the
/// fallback, checks the change counter and swaps in what changed. The same round trip sets
/// `egressd_state_backend_up`, and applies the schema once a database that was away at
/// start comes back.
async fn follow_shared_state(
    reloader: Arc<Reloader>,
    changed: Arc<tokio::sync::Notify>,
    metrics: Arc<Metrics>,
) {
    let Some(db) = reloader.shared().map(|s| s.database().clone()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(SHARED_POLL) => {}
        }
        let reloader = reloader.clone();
        let _ = tokio::task::spawn_blocking(move || reloader.refresh_shared(Trigger::Shared)).await;
        metrics.state_backend_up.set(db.health().up as i64);
    }
}

/// How often the shared state's change counter is polled when no NOTIFY came: an edit on
/// another replica is in force here within this (plus one round trip).
const SHARED_POLL: Duration = Duration::from_secs(1);

/// Restores activation times from the state dir (creating it on first start) and, with the
/// postgres backend, agrees on them with the other replicas and merges the shared entries
/// in (from the local copy when the database is away); applies them to the start-up
/// policy and writes the book back.
async fn open_activation_book(
    config: &Config,
    policy: &mut Policy,
    shared: Option<Arc<SharedAllowlist>>,
) -> anyhow::Result<(ActivationBook, Option<SharedStart>)> {
    let dir = &config.proxy.state_dir;
    let delay = config.proxy.activation_delay;
    let now = SystemTime::now();
    let (mut book, opened) = ActivationBook::open(Some(dir), &policy.allowlist, delay, now);
    match &opened {
        Opened::FirstStart => {
            tracing::info!(state_dir = %dir.display(), "first start: every configured pattern is active")
        }
        Opened::Restored { known, new } => tracing::info!(
            state_dir = %dir.display(),
            known,
            new,
            "activation state restored; patterns added while stopped are pending"
        ),
        Opened::Corrupt(err) => tracing::error!(
            error = %err,
            "activation state is unreadable; every pattern starts its activation delay now"
        ),
    }
    let mut shared_start = None;
    if let Some(shared) = shared {
        let patterns = policy.allowlist.patterns().to_vec();
        let agreeing = shared.clone();
        let (delay_ms, now_ms) = (delay.as_millis() as u64, crate::util::time::unix_ms(now));
        let view =
            tokio::task::spawn_blocking(move || agreeing.agree(&patterns, &[], delay_ms, now_ms))
                .await
                .context("agreeing on activation times")?;
        let (entries, version, agreed, stale) = match view {
            Ok(view) => (view.entries, view.version, Some(view.stamps), false),
            Err(err) => {
                tracing::error!(error = %err, "cannot read the shared allowlist; serving the local copy in proxy.state_dir until the database answers");
                (crate::state::local::load_entries(dir), 0, None, true)
            }
        };
        policy.allowlist = policy.allowlist.with_shared(&entries);
        book.update(&policy.allowlist, delay, now);
        if let Some(agreed) = &agreed {
            book.agree_with(agreed);
        }
        shared_start = Some(SharedStart {
            allowlist: shared,
            entries,
            version,
            stale,
        });
    }
    book.apply(&mut policy.allowlist, 0);
    book.persist().with_context(|| {
        format!(
            "cannot write activation state in proxy.state_dir {}",
            dir.display()
        )
    })?;
    if let Some(start) = &shared_start {
        if let Err(err) = crate::state::local::save_entries(dir, &start.entries) {
            tracing::warn!(error = %err, "cannot keep the local copy of the shared allowlist entries");
        }
    }
    Ok((book, shared_start))
}

/// Lifts the open-files soft limit to the hard one and says when even that cannot carry
/// `max_connections`.
fn check_open_files_limit(max_connections: usize) {
    let Some(raised) = crate::util::fdlimit::raise() else {
        return;
    };
    if raised.now != raised.was {
        tracing::info!(
            from = raised.was,
            to = raised.now,
            "raised the open-files limit to the hard limit"
        );
    }
    if let Some(warning) = crate::util::fdlimit::shortfall(max_connections, raised.now) {
        tracing::warn!("{warning}");
    }
}

/// Gives the heap back to the kernel once a load spike has passed (see `util::trim`).
async fn trim_after_spikes(metrics: Arc<Metrics>) {
    let mut policy = crate::util::trim::TrimPolicy::default();
    let mut every = tokio::time::interval(crate::util::trim::CHECK_EVERY);
    loop {
        every.tick().await;
        let live = metrics.active_connections.get() + metrics.active_tunnels.get();
        if policy.sample(live) {
            let released = tokio::task::spawn_blocking(crate::util::trim::release_free_memory)
                .await
                .unwrap_or(false);
            tracing::info!(live, released, "load spike over: trimmed the heap");
        }
    }
}
