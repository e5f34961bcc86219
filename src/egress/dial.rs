//! Resolve, check, pin, dial: the step between a policy decision and a byte on the wire.
//!
//! Every address a name resolves to is checked against the private ranges; one bad address
//! refuses the whole name, because the dialler cannot know which one an attacker controls.
//! The address that passed the check is the one dialled — there is no second lookup, so a DNS
//! answer that changes between check and connect (rebinding) gains nothing.
//!
//! [`Dialer`] is private to the egress layer: CONNECT tunnels reach it through
//! [`EgressClient::dial`](super::EgressClient::dial) and forwarded requests through the
//! client's pool, both with a [`Permit`](super::Permit) from the policy decision.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::resolve::{Resolve, ResolveError};
use super::{Cause, ErrorKind};
use crate::policy::host::Host;
use crate::policy::{Denial, DenyReason, Policy, Target};

/// Why an allowed request could not reach its upstream.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(transparent)]
    Denied(Denial),
    #[error(transparent)]
    Dns(ResolveError),
    #[error("{target}: connection refused by {addr}")]
    Refused { target: String, addr: SocketAddr },
    #[error("{target}: connect timed out after {timeout:?}")]
    Timeout { target: String, timeout: Duration },
    #[error("{target}: connect to {addr} failed: {source}")]
    Connect {
        target: String,
        addr: SocketAddr,
        source: io::Error,
    },
    /// Originating TLS (mTLS) to the upstream failed.
    #[error("{target}: {message}")]
    Tls { target: String, message: String },
}

impl EgressError {
    /// A copy for reporting: the error inside hyper's error chain is only borrowed.
    pub(super) fn clone_for_report(&self) -> EgressError {
        match self {
            EgressError::Denied(d) => EgressError::Denied(d.clone()),
            EgressError::Dns(e) => EgressError::Dns(e.clone()),
            EgressError::Refused { target, addr } => EgressError::Refused {
                target: target.clone(),
                addr: *addr,
            },
            EgressError::Timeout { target, timeout } => EgressError::Timeout {
                target: target.clone(),
                timeout: *timeout,
            },
            EgressError::Connect {
                target,
                addr,
                source,
            } => EgressError::Connect {
                target: target.clone(),
                addr: *addr,
                source: io::Error::new(source.kind(), source.to_string()),
            },
            EgressError::Tls { target, message } => EgressError::Tls {
                target: target.clone(),
                message: message.clone(),
            },
        }
    }

    /// A denial (an address the policy refuses), or the `X-Egress-Error` kind.
    pub fn cause(&self) -> Cause<'_> {
        Cause::Error(match self {
            EgressError::Denied(denial) => return Cause::Denied(denial),
            EgressError::Dns(_) => ErrorKind::Dns,
            EgressError::Refused { .. } => ErrorKind::ConnectRefused,
            EgressError::Timeout { .. } => ErrorKind::ConnectTimeout,
            EgressError::Connect { .. } => ErrorKind::ConnectFailed,
            EgressError::Tls { .. } => ErrorKind::Tls,
        })
    }
}

/// Dials upstreams for one egressd instance.
pub(super) struct Dialer {
    resolver: Arc<dyn Resolve>,
    /// egressd's own listeners: dialling them would loop requests through the proxy.
    own_addrs: Vec<SocketAddr>,
    connect_timeout: Duration,
}

impl Dialer {
    pub(super) fn new(
        resolver: Arc<dyn Resolve>,
        own_addrs: Vec<SocketAddr>,
        connect_timeout: Duration,
    ) -> Self {
        Dialer {
            resolver,
            own_addrs,
            connect_timeout,
        }
    }

    /// Resolves `target`, checks every address against `policy`, connects to the first that
    /// answers. Returns the stream and the address it is connected to.
    pub(super) async fn dial(
        &self,
        target: &Target,
        policy: &Policy,
    ) -> Result<(TcpStream, SocketAddr), EgressError> {
        let addrs = interleave_families(self.checked_addresses(target, policy).await?);
        let attempt = async {
            let (stream, addr) = race(addrs, ATTEMPT_DELAY, TcpStream::connect)
                .await
                .map_err(|(addr, err)| connect_error(target, addr, err))?;
            let _ = stream.set_nodelay(true);
            Ok((stream, addr))
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| EgressError::Timeout {
                target: target.to_string(),
                timeout: self.connect_timeout,
            })?
    }

    async fn checked_addresses(
        &self,
        target: &Target,
        policy: &Policy,
    ) -> Result<Vec<SocketAddr>, EgressError> {
        let ips = match &target.host {
            Host::Ip(ip) => vec![*ip],
            Host::Domain(name) => match policy.dns_overrides.get(name) {
                Some(ip) => vec![*ip],
                None => self
                    .resolver
                    .resolve(name)
                    .await
                    .map_err(EgressError::Dns)?,
            },
        };
        let mut addrs = Vec::with_capacity(ips.len());
        for ip in ips {
            policy.check_address(ip).map_err(EgressError::Denied)?;
            let addr = SocketAddr::new(ip, target.port);
            if self.is_own_listener(addr) {
                return Err(EgressError::Denied(Denial::new(
                    DenyReason::PrivateDestination,
                    format!(
                        "{addr} is egressd's own listener; requests may not loop through the proxy"
                    ),
                )));
            }
            addrs.push(addr);
        }
        Ok(addrs)
    }

    /// Whether `addr` reaches one of our listeners: the same address, or any loopback or
    /// unspecified address on a listener's port when that listener is on loopback or on all
    /// interfaces. (A listener on all interfaces is also reachable on the host's own
    /// addresses; those are private and refused unless opened. Loops through other
    /// addresses are caught by the `Via` check on forwarded requests.)
    fn is_own_listener(&self, addr: SocketAddr) -> bool {
        let local = |ip: std::net::IpAddr| ip.is_loopback() || ip.is_unspecified();
        self.own_addrs.iter().any(|own| {
            own.port() == addr.port()
                && (own.ip() == addr.ip() || (local(own.ip()) && local(addr.ip())))
        })
    }
}

fn connect_error(target: &Target, addr: SocketAddr, err: io::Error) -> EgressError {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => EgressError::Refused {
            target: target.to_string(),
            addr,
        },
        _ => EgressError::Connect {
            target: target.to_string(),
            addr,
            source: err,
        },
    }
}

/// RFC 8305's connection attempt delay: the next address is tried when the one before has
/// not connected within this time, or at once when it fails. A black-holed first address
/// (often IPv6) then costs 250 ms, not the whole `connect_timeout`.
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Orders addresses as RFC 8305 §4 does: alternate the families, starting with the family
/// of the resolver's first answer.
fn interleave_families(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return addrs;
    };
    let first_is_v6 = first.is_ipv6();
    let (mut lead, mut other): (Vec<_>, Vec<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_is_v6);
    let mut out = Vec::with_capacity(lead.len() + other.len());
    lead.reverse();
    other.reverse();
    loop {
        match (lead.pop(), other.pop()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Happy Eyeballs: starts a connection attempt per address, each `delay` after the one
/// before (or as soon as it fails), and returns the first to connect; the others are
/// abandoned. On failure, the last address's error.
async fn race<C, F, Fut>(
    addrs: Vec<SocketAddr>,
    delay: Duration,
    connect: F,
) -> Result<(C, SocketAddr), (SocketAddr, io::Error)>
where
    C: Send + 'static,
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<C>> + Send + 'static,
{
    // The common case, one address, needs no race.
    if let [addr] = addrs[..] {
        return connect(addr)
            .await
            .map(|c| (c, addr))
            .map_err(|e| (addr, e));
    }
    let mut attempts = tokio::task::JoinSet::new();
    let mut waiting = addrs.into_iter();
    let mut last_error = None;
    loop {
        if let Some(addr) = waiting.next() {
            let attempt = connect(addr);
            attempts.spawn(async move { (addr, attempt.await) });
        }
        let more = waiting.len() > 0;
        let next_attempt = tokio::time::sleep(delay);
        tokio::pin!(next_attempt);
        loop {
            tokio::select! {
                Some(joined) = attempts.join_next() => match joined {
                    Ok((addr, Ok(conn))) => return Ok((conn, addr)),
                    Ok((addr, Err(err))) => last_error = Some((addr, err)),
                    Err(join) => tracing::warn!(error = %join, "connect attempt task failed"),
                },
                _ = &mut next_attempt, if more => break,
                else => {
                    return Err(last_error.unwrap_or_else(|| {
                        (SocketAddr::from(([0, 0, 0, 0], 0)), io::Error::other("no address to connect to"))
                    }))
                }
            }
            // A failure starts the next attempt at once.
            if more && attempts.is_empty() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::resolve::ResolveFuture;
    use crate::policy::netguard::PrivateAllow;
    use crate::policy::PortSet;
    use std::net::IpAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers each lookup with the next address list, like a rebinding DNS server.
    struct SequenceResolver {
        answers: Vec<Vec<IpAddr>>,
        calls: AtomicUsize,
    }

    impl Resolve for SequenceResolver {
        fn resolve<'a>(&'a self, _name: &'a str) -> ResolveFuture<'a> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = self.answers[n.min(self.answers.len() - 1)].clone();
            Box::pin(async move { Ok(answer) })
        }
    }

    fn policy(open: &str) -> Policy {
        Policy {
            connect_ports: PortSet::new(vec![]),
            http_ports: PortSet::new(vec![]),
            private: PrivateAllow::new(vec![open.parse().unwrap()]),
            ..Policy::for_tests(&[])
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[tokio::test]
    async fn the_checked_address_is_the_dialled_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let resolver = Arc::new(SequenceResolver {
            answers: vec![ips(&["127.0.0.1"]), ips(&["127.0.0.2"])],
            calls: AtomicUsize::new(0),
        });
        let dialer = Dialer::new(resolver.clone(), vec![], Duration::from_secs(5));
        let target = Target {
            host: Host::Domain("rebind.test".into()),
            port,
        };
        let policy = policy("127.0.0.1/32");
        let (_, addr) = dialer.dial(&target, &policy).await.unwrap();
        assert_eq!(addr, SocketAddr::new("127.0.0.1".parse().unwrap(), port));
        assert_eq!(
            resolver.calls.load(Ordering::SeqCst),
            1,
            "one lookup per dial"
        );
        // The rebound answer is checked on its own and refused.
        let err = dialer.dial(&target, &policy).await.unwrap_err();
        assert!(
            matches!(&err, EgressError::Denied(d) if d.reason == DenyReason::PrivateDestination),
            "{err}"
        );
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn families_alternate_starting_with_the_first_answer() {
        let sorted = interleave_families(addrs(&[
            "[2001:db8::1]:443",
            "[2001:db8::2]:443",
            "192.0.2.1:443",
            "192.0.2.2:443",
            "192.0.2.3:443",
        ]));
        assert_eq!(
            sorted,
            addrs(&[
                "[2001:db8::1]:443",
                "192.0.2.1:443",
                "[2001:db8::2]:443",
                "192.0.2.2:443",
                "192.0.2.3:443",
            ])
        );
    }

    /// A connect that never answers for port 1 (a black hole), fails at once for port 2
    /// and succeeds for any other port.
    async fn scripted_connect(addr: SocketAddr) -> io::Result<u16> {
        match addr.port() {
            1 => std::future::pending().await,
            2 => Err(io::ErrorKind::ConnectionRefused.into()),
            port => Ok(port),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_black_holed_first_address_costs_one_attempt_delay() {
        let started = tokio::time::Instant::now();
        let (port, _) = race(
            addrs(&["[::1]:1", "127.0.0.1:443"]),
            ATTEMPT_DELAY,
            scripted_connect,
        )
        .await
        .unwrap();
        assert_eq!(port, 443);
        assert_eq!(started.elapsed(), ATTEMPT_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_attempt_starts_the_next_at_once() {
        let started = tokio::time::Instant::now();
        let (port, _) = race(
            addrs(&["[::1]:2", "127.0.0.1:443"]),
            ATTEMPT_DELAY,
            scripted_connect,
        )
        .await
        .unwrap();
        assert_eq!(port, 443);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_address_fails_the_last_error_is_returned() {
        let (addr, err) = race(
            addrs(&["[::1]:2", "127.0.0.1:2"]),
            ATTEMPT_DELAY,
            scripted_connect,
        )
        .await
        .unwrap_err();
        assert_eq!(addr, "127.0.0.1:2".parse().unwrap());
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn one_private_answer_refuses_the_whole_name() {
        let resolver = Arc::new(SequenceResolver {
            answers: vec![ips(&["127.0.0.1", "10.0.0.1"])],
            calls: AtomicUsize::new(0),
        });
        let dialer = Dialer::new(resolver, vec![], Duration::from_secs(5));
        let target = Target {
            host: Host::Domain("mixed.test".into()),
            port: 443,
        };
        let err = dialer
            .dial(&target, &policy("127.0.0.1/32"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("10.0.0.1"), "{err}");
    }
}
