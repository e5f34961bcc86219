//! **Operating egressd.** The config file and its validation ([`config`]), reloads by watch,
//! signal or API ([`reload`]), the admin listener ([`admin`]) and `explain` ([`explain`]).
//!
//! The top layer: it may import from every layer below — [`crate::proxy`] (none needed so far),
//! [`crate::schedule`], [`crate::egress`], [`crate::policy`], [`crate::metrics`],
//! [`crate::util`] — and nothing imports from it except the wiring ([`crate::app`]) and the CLI
//! ([`crate::cli`]).

pub mod admin;
pub mod config;
pub mod edit;
pub mod explain;
pub mod identity;
pub mod reload;
pub mod rotate;
pub mod trace;
