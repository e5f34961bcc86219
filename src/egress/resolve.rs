//! Name resolution behind our own trait.
//!
//! hickory's API moves between minor versions, so the rest of egressd sees only [`Resolve`].
//! Static `[dns] overrides` are part of the policy and answered by the dialer before it asks
//! a resolver.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

/// Resolver settings, read at start (the static overrides are part of the policy).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsSettings {
    /// Name servers to ask; empty means the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    pub timeout: Duration,
}

/// Why no resolver could be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the DNS resolver: {0}")]
struct BuildError(String);

pub type ResolveFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, ResolveError>> + Send + 'a>>;

/// Turns a host name into the addresses to check and dial.
pub trait Resolve: Send + Sync + 'static {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a>;
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no address found for {0}")]
    NotFound(String),
    #[error("DNS lookup for {0} timed out")]
    Timeout(String),
    #[error("DNS lookup for {name} failed: {message}")]
    Failed { name: String, message: String },
}

/// The configured (or system) name servers, through hickory.
pub struct DnsResolver {
    resolver: Option<TokioResolver>,
    timeout: Duration,
}

impl DnsResolver {
    /// Builds the resolver from config; without usable system config, only overrides answer
    /// (logged), rather than falling back to a public resolver the operator never chose.
    pub fn new(settings: &DnsSettings) -> Arc<Self> {
        let resolver = match build_hickory(settings) {
            Ok(r) => Some(r),
            Err(err) => {
                tracing::warn!(error = %err, "no DNS resolver available; only [dns] overrides will resolve");
                None
            }
        };
        Arc::new(DnsResolver {
            resolver,
            timeout: settings.timeout,
        })
    }
}

fn build_hickory(settings: &DnsSettings) -> Result<TokioResolver, BuildError> {
    let mut builder = if settings.servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| BuildError(e.to_string()))?
    } else {
        let servers = settings.servers.iter().map(name_server).collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    opts.timeout = settings.timeout;
    opts.attempts = 1;
    builder.build().map_err(|e| BuildError(e.to_string()))
}

fn name_server(addr: &SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
}

impl Resolve for DnsResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            let Some(resolver) = &self.resolver else {
                return Err(ResolveError::Failed {
                    name: name.to_string(),
                    message: "no resolver configured".into(),
                });
            };
            // A fully qualified query: search domains must not turn "api" into "api.corp".
            let fqdn = format!("{name}.");
            let lookup = tokio::time::timeout(self.timeout, resolver.lookup_ip(fqdn.as_str()))
                .await
                .map_err(|_| ResolveError::Timeout(name.to_string()))?;
            match lookup {
                Ok(found) => {
                    let addrs: Vec<IpAddr> = found.iter().collect();
                    if addrs.is_empty() {
                        Err(ResolveError::NotFound(name.to_string()))
                    } else {
                        Ok(addrs)
                    }
                }
                Err(err) if err.is_no_records_found() || err.is_nx_domain() => {
                    Err(ResolveError::NotFound(name.to_string()))
                }
                Err(err) => Err(ResolveError::Failed {
                    name: name.to_string(),
                    message: err.to_string(),
                }),
            }
        })
    }
}
