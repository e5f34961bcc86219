//! Wiring: from a validated [`Config`] to running listeners, and back down on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{serve_admin, Admin};
use crate::config::Config;
use crate::connect::Dialer;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::resolve::DnsResolver;
use crate::server::{serve_proxy, ConnLimits};

/// Bound listeners, ready to serve.
pub struct App {
    config: Config,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
}

impl App {
    /// Binds both listeners (port 0 picks a free port; see [`App::proxy_addr`]).
    pub async fn bind(config: Config) -> anyhow::Result<App> {
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

    /// Serves until `shutdown` is cancelled, then drains for the grace period.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let own_addrs = vec![self.proxy_addr(), self.admin_addr()];
        let settings = self.config.proxy.clone();
        let policy = Arc::new(ArcSwap::from_pointee(self.config.policy.clone()));
        let metrics = Arc::new(Metrics::new());
        let resolver = DnsResolver::new(&self.config.dns);
        let dialer = Arc::new(Dialer::new(resolver, own_addrs, settings.connect_timeout));
        let proxy = Arc::new(Proxy::new(
            policy.clone(),
            dialer,
            metrics.clone(),
            &settings,
        ));
        let admin = Arc::new(Admin {
            policy,
            metrics,
            token: settings.admin_token.clone(),
            loaded_at: SystemTime::now(),
            generation: 1,
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
