//! egressd: an egress forward proxy with a strict domain allowlist.
//!
//! The crate is layered; each layer is a folder and imports only from the layers below it:
//!
//! | layer | owns |
//! |---|---|
//! | [`control`] | config file, reload (watch, SIGHUP, API), admin listener and console, `explain`, the redirect audit |
//! | [`state`] | shared state for several replicas: the PostgreSQL backend (schema, schedules and the run ledger) |
//! | [`proxy`] | the client-facing listener, request parsing, CONNECT and forwarding, access log |
//! | [`schedule`] | beside [`proxy`]: cron schedules of functions, invoked through the same [`egress::EgressClient`] |
//! | [`secrets`] | the secret store: values sealed at rest, the file backend, the in-memory copy injection reads |
//! | [`egress`] | resolve → check every address → pin → dial, the upstream pool, the tunnel relay, and the [`egress::EgressClient`], the one way out |
//! | [`policy`] | hosts, the allowlist, private ranges, activation times, the decision |
//!
//! Beside them: [`metrics`] (every layer above egress records there) and [`util`] (time,
//! HTTP bodies, the accept loop; imports nothing of egressd's). [`app`] wires the layers
//! into a running process; [`cli`] holds the commands `main.rs` dispatches to.
//!
//! The request path reads as a walk through the modules: [`proxy::server`] (listener, limits,
//! shutdown) → [`proxy::request`] (parse the target) → [`egress::EgressClient::decide`]
//! ([`policy::Policy::decide`] over the [`policy::allowlist`], issuing a [`egress::Permit`]) →
//! [`egress::EgressClient::dial`] or [`egress::EgressClient::send`] (resolve via
//! [`egress::resolve`], check with [`policy::netguard`], pin, connect) → [`egress::tunnel`] or
//! the pooled HTTP client (relay) → [`proxy::access`] (one log line, the metrics). A scheduled
//! run takes the same way out: [`schedule::service`] fires what [`schedule::runner`] says is
//! due, and [`schedule::invoke`] sends it with [`egress::EgressClient::send`].
//!
//! The same layers, for readers of the repository: `docs/architecture.md`.

#![deny(unsafe_code)]

pub mod app;
pub mod cli;
pub mod control;
pub mod egress;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod schedule;
pub mod secrets;
pub mod state;
pub mod util;
