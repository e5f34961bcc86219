//! **What may leave.** Hosts and targets, the allowlist index, the private address ranges,
//! activation times, where egressd originates TLS ([`origination`]), the deployed functions
//! ([`function`]), and the decision that combines them.
//!
//! Pure and synchronous: a decision is a function of a [`Policy`] snapshot, a [`Target`] and
//! the time, so `egressd explain`, the proxy and the scheduler cannot disagree. The only I/O
//! is the activation state file ([`activation`]). Imports nothing from the layers above;
//! uses [`crate::util`] only.

pub mod activation;
pub mod allowlist;
mod decision;
pub mod denials;
pub mod function;
pub mod host;
pub mod identity;
pub mod inject;
pub mod netguard;
pub mod origination;
pub mod url;

pub use decision::{Denial, DenyReason, Policy, PortSet, Protocol, Target, TargetError};

/// The live policy, swapped as a whole on reload; readers load a snapshot per request.
pub type PolicyHandle = std::sync::Arc<arc_swap::ArcSwap<Policy>>;
