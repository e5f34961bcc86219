//! Wiring: from a validated [`Config`] to running listeners, and back down on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::activation::{ActivationBook, Opened};
use crate::admin::{serve_admin, Admin};
use crate::config::Config;
use crate::connect::Dialer;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload::{self, Reloader};
use crate::resolve::DnsResolver;
use crate::revoke::Registry;
use crate::server::{serve_proxy, ConnLimits};

/// Bound listeners, ready to serve.
pub struct App {
    config: Config,
    /// The file text `config` was parsed from; a reload of identical text is a no-op.
    config_text: String,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
}

impl App {
    /// Binds both listeners (port 0 picks a free port; see [`App::proxy_addr`]).
    pub async fn bind(config: Config, config_text: String) -> anyhow::Result<App> {
        let proxy_listener = TcpListener::bind(config.proxy.listen)
            .await
            .with_context(|| format!("cannot listen on proxy.listen {}", config.proxy.listen))?;
        let admin_listener = TcpListener::bind(config.proxy.admin_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on proxy.admin_listen {}",
                    config.proxy.admin_listen
                )
            })?;
        Ok(App {
            config,
            config_text,
            proxy_listener,
            admin_listener,
        })
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_listener.local_addr().expect("bound listener")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("bound listener")
    }

    /// Serves until `shutdown` is cancelled, then drains for the grace period. `reload`
    /// fires for every SIGHUP.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        mut reload_signal: tokio::sync::mpsc::Receiver<()>,
    ) -> anyhow::Result<()> {
        let own_addrs = vec![self.proxy_addr(), self.admin_addr()];
        let settings = self.config.proxy.clone();
        let mut policy = self.config.policy.clone();
        let book = open_activation_book(&self.config, &mut policy)?;
        let policy = Arc::new(ArcSwap::from_pointee(policy));
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(Registry::default());
        let resolver = DnsResolver::new(&self.config.dns);
        let dialer = Arc::new(Dialer::new(resolver, own_addrs, settings.connect_timeout));
        let proxy = Arc::new(Proxy::new(
            policy.clone(),
            dialer,
            metrics.clone(),
            registry.clone(),
            &settings,
        ));
        let reloader = Reloader::new(
            &self.config,
            book,
            policy.clone(),
            registry,
            metrics.clone(),
            self.config_text,
        );
        let _watcher = reload::watch(reloader.clone()).context("cannot watch the config file")?;
        let on_signal = reloader.clone();
        tokio::spawn(async move {
            while reload_signal.recv().await.is_some() {
                let reloader = on_signal.clone();
                let _ = tokio::task::spawn_blocking(move || reloader.reload("SIGHUP")).await;
            }
        });
        let admin = Arc::new(Admin {
            policy,
            metrics,
            reloader,
            token: settings.admin_token.clone(),
        });
        let admin_task = tokio::spawn(serve_admin(self.admin_listener, admin, shutdown.clone()));
        serve_proxy(
            self.proxy_listener,
            proxy.clone(),
            ConnLimits::from(&settings),
            shutdown,
        )
        .await;

        tracing::info!(grace = ?settings.shutdown_grace, "shutting down: no new connections, draining");
        proxy.tasks.close();
        if tokio::time::timeout(settings.shutdown_grace, proxy.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = proxy.tasks.len(),
                "grace period over; cutting what is left"
            );
            proxy.hard_stop.cancel();
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), proxy.tasks.wait()).await;
        }
        let _ = admin_task.await;
        Ok(())
    }
}

/// Restores activation times from the state dir (creating it on first start) and applies them
/// to the start-up policy.
fn open_activation_book(
    config: &Config,
    policy: &mut crate::policy::Policy,
) -> anyhow::Result<ActivationBook> {
    let dir = &config.proxy.state_dir;
    let (book, opened) = ActivationBook::open(
        Some(dir),
        &policy.allowlist,
        config.proxy.activation_delay,
        SystemTime::now(),
    );
    match &opened {
        Opened::FirstStart => {
            tracing::info!(state_dir = %dir.display(), "first start: every configured pattern is active")
        }
        Opened::Restored { known, new } => {
            tracing::info!(state_dir = %dir.display(), known, new, "activation state restored; patterns added while stopped are pending")
        }
        Opened::Corrupt(err) => tracing::error!(
            error = %err,
            "activation state is unreadable; every pattern starts its activation delay now"
        ),
    }
    book.apply(&mut policy.allowlist, 0);
    book.persist().with_context(|| {
        format!(
            "cannot write activation state in proxy.state_dir {}",
            dir.display()
        )
    })?;
    Ok(book)
}
