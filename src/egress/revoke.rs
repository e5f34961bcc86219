//! Revocation: after a reload, cut what the new policy no longer allows.
//!
//! Every CONNECT tunnel and every client connection registers here with what it is talking
//! to (a tunnel: its target and the address dialled; a keep-alive connection: the target of
//! its latest request). A reload re-decides each entry under the new policy and cancels the
//! ones it denies. The registry is touched when connections and tunnels open and close, and
//! a connection's own slot when it starts a request — never a shared lock per byte.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::policy::{Policy, Protocol, Target};
use crate::util::sync::lock;

/// What is registered; the `kind` label of `egressd_revoked_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveKind {
    /// A CONNECT tunnel (bytes, or HTTP inside).
    Tunnel,
    /// A client connection, by the target of its latest request.
    Connection,
}

impl LiveKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LiveKind::Tunnel => "tunnel",
            LiveKind::Connection => "connection",
        }
    }
}

/// What a registered tunnel or connection is talking to.
#[derive(Clone, Debug)]
pub struct Peer {
    pub target: Target,
    pub protocol: Protocol,
    /// The address dialled, re-checked against the private ranges (tunnels only).
    pub addr: Option<SocketAddr>,
    /// The host a tunnel's TLS ClientHello named, when it is not the CONNECT host: the
    /// tunnel lives only while both are allowed.
    pub sni: Option<Target>,
}

/// One tunnel or client connection.
pub struct Live {
    kind: LiveKind,
    peer: Mutex<Option<Peer>>,
    cancel: CancellationToken,
    revoked: AtomicBool,
}

impl Live {
    /// Records the peer of the connection's latest request.
    pub fn set_peer(&self, target: &Target, protocol: Protocol) {
        let mut slot = lock(&self.peer);
        // Keep-alive requests mostly repeat the target: skip the clone then.
        if slot
            .as_ref()
            .is_some_and(|p| p.target == *target && p.protocol == protocol)
        {
            return;
        }
        *slot = Some(Peer {
            target: target.clone(),
            protocol,
            addr: None,
            sni: None,
        });
    }

    /// Records the host a tunnel's ClientHello named, so a reload that removes it cuts the
    /// tunnel as if its CONNECT host were removed.
    pub fn set_sni(&self, named: Target) {
        if let Some(peer) = lock(&self.peer).as_mut() {
            peer.sni = Some(named);
        }
    }

    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }

    pub fn was_revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }
}

/// Cancels `live` if `policy` denies its peer, calling `on_revoke` first (so metrics and
/// logs are in place before the peer sees the close).
fn revoke_if_denied(
    live: &Live,
    policy: &Policy,
    now_ms: u64,
    on_revoke: &mut impl FnMut(LiveKind, &Target),
) -> bool {
    let Some(peer) = lock(&live.peer).clone() else {
        return false;
    };
    let denied = policy.decide(&peer.target, peer.protocol, now_ms).is_err()
        || peer
            .sni
            .as_ref()
            .is_some_and(|named| policy.decide(named, peer.protocol, now_ms).is_err())
        || peer
            .addr
            .is_some_and(|a| policy.check_address(a.ip()).is_err());
    if denied && !live.revoked.swap(true, Ordering::Relaxed) {
        on_revoke(live.kind, &peer.target);
        live.cancel.cancel();
        return true;
    }
    false
}

#[derive(Default)]
pub struct Registry {
    next_id: AtomicU64,
    entries: Mutex<HashMap<u64, Arc<Live>>>,
}

/// Removes its entry from the registry when dropped.
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
    pub live: Arc<Live>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.registry.entries).remove(&self.id);
    }
}

impl Registry {
    /// Registers a tunnel or connection; `cancel` fires on revocation.
    pub fn register(
        self: &Arc<Self>,
        kind: LiveKind,
        peer: Option<Peer>,
        cancel: CancellationToken,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let live = Arc::new(Live {
            kind,
            peer: Mutex::new(peer),
            cancel,
            revoked: AtomicBool::new(false),
        });
        lock(&self.entries).insert(id, live.clone());
        Registration {
            registry: self.clone(),
            id,
            live,
        }
    }

    /// Cancels every entry `policy` no longer allows at `now_ms`; returns how many.
    pub fn revoke_denied(
        &self,
        policy: &Policy,
        now_ms: u64,
        mut on_revoke: impl FnMut(LiveKind, &Target),
    ) -> usize {
        let entries: Vec<Arc<Live>> = lock(&self.entries).values().cloned().collect();
        entries
            .iter()
            .filter(|live| revoke_if_denied(live, policy, now_ms, &mut on_revoke))
            .count()
    }

    /// Checks one fresh registration against a policy newer than the one it was allowed by.
    pub fn recheck(
        &self,
        registration: &Registration,
        policy: &Policy,
        now_ms: u64,
        mut on_revoke: impl FnMut(LiveKind, &Target),
    ) {
        revoke_if_denied(&registration.live, policy, now_ms, &mut on_revoke);
    }

    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> Policy {
        Policy::for_tests(entries)
    }

    fn tunnel(registry: &Arc<Registry>, authority: &str) -> Registration {
        let peer = Peer {
            target: Target::parse_authority(authority).unwrap(),
            protocol: Protocol::Connect,
            addr: None,
            sni: None,
        };
        registry.register(LiveKind::Tunnel, Some(peer), CancellationToken::new())
    }

    #[test]
    fn a_panic_while_the_registry_is_locked_leaves_it_working() {
        let registry = Arc::new(Registry::default());
        let kept = tunnel(&registry, "a.test:443");
        let doomed = tunnel(&registry, "c.test:443");
        let panicked = std::thread::spawn(move || {
            // Unwinding drops the guard (poisoning the lock), then the registration, whose
            // `Drop` takes the lock again: a second panic there would abort the process.
            let registration = doomed;
            let _entries = registration.registry.entries.lock().unwrap();
            panic!("a bug while the registry is locked");
        })
        .join();
        assert!(panicked.is_err());
        assert!(registry.entries.is_poisoned());
        assert_eq!(registry.len(), 1, "the unwound registration removed itself");

        let dropped = tunnel(&registry, "b.test:443");
        assert_eq!(registry.len(), 2);
        drop(dropped);
        assert_eq!(registry.len(), 1);
        assert_eq!(
            registry.revoke_denied(&policy(&["b.test"]), 0, |_, _| {}),
            1
        );
        assert!(kept.live.was_revoked() && kept.live.cancelled().is_cancelled());
    }
}
