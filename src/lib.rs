//! egressd: an egress forward proxy with a strict domain allowlist.
//!
//! The request path reads as a walk through the modules:
//! [`server`] (listener, limits, shutdown) → [`proxy`] (request parsing) → [`policy`]
//! (decision over the [`allowlist`]) → [`connect`] (resolve via [`resolve`], check with
//! [`netguard`], pin, dial) → [`tunnel`] or the pooled HTTP client (relay).
//! [`config`] turns the TOML file into these types; [`admin`] and [`metrics`] observe them.

pub mod activation;
pub mod admin;
pub mod allowlist;
pub mod app;
pub mod config;
pub mod connect;
pub mod explain;
pub mod headers;
pub mod host;
pub mod metrics;
pub mod netguard;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod resolve;
pub mod revoke;
pub mod server;
pub mod tunnel;
