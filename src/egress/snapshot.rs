//! What every way out works from, swapped whole: the [`Policy`] (what may leave, where egressd
//! originates TLS, the functions) and the client identities it presents there.
//!
//! One [`ArcSwap`] holds both, shared by every egress client (each proxy worker's, the
//! scheduler's): a reload stores a new snapshot in one operation, a certificate rotation
//! stores one with the same policy and new identities, and a request loads one and keeps it,
//! so no caller ever sees a policy with another config's identities or functions.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::tls::{MtlsTable, TlsOrigins};
use crate::policy::Policy;

/// The policy and the identities in force together.
#[derive(Debug)]
pub struct Snapshot {
    pub policy: Arc<Policy>,
    /// The `[[mtls]]` client certificates, by the same patterns as the policy's origination
    /// rules.
    pub identities: Arc<MtlsTable>,
    /// Hosts egressd opens TLS to without a client certificate (`[[inject]]`).
    pub origins: Arc<TlsOrigins>,
}

impl Snapshot {
    /// A handle holding `policy` and `identities`, for the process or a test.
    pub fn handle(policy: Policy, identities: MtlsTable) -> SnapshotHandle {
        Arc::new(ArcSwap::from_pointee(Snapshot {
            policy: Arc::new(policy),
            identities: Arc::new(identities),
            origins: Arc::default(),
        }))
    }

    /// As [`Snapshot::handle`], with the hosts egressd opens plain TLS to.
    pub fn handle_with_origins(
        policy: Policy,
        identities: MtlsTable,
        origins: TlsOrigins,
    ) -> SnapshotHandle {
        Arc::new(ArcSwap::from_pointee(Snapshot {
            policy: Arc::new(policy),
            identities: Arc::new(identities),
            origins: Arc::new(origins),
        }))
    }

    /// Whether connections dialled under `self` may carry requests under `next`: the same
    /// addresses may be dialled and the same identities presented.
    pub fn pool_still_valid_under(&self, next: &Snapshot) -> bool {
        self.policy.private == next.policy.private
            && self.policy.dns_overrides == next.policy.dns_overrides
            && self.identities.same_as(&next.identities)
            && self.origins.same_as(&next.origins)
    }
}

/// The snapshot in force, shared by every egress client.
pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;
