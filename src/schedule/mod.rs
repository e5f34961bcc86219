//! **Scheduled invocations.** Functions invoked on cron expressions, through the same
//! [`crate::egress::EgressClient`] as a function's own requests, so the allowlist, activation,
//! SSRF checks and mTLS origination apply to them alike.
//!
//! Beside [`crate::proxy`]: imports from [`crate::egress`], [`crate::policy`],
//! [`crate::metrics`] and [`crate::util`], never from the proxy or control layers:
//! [`clock`], the wall clock passed in; [`cron`], the expressions and their evaluation;
//! [`store`], schedules and their runs, persisted
//! behind a trait; [`run`], one run as recorded; [`runner`], what is due when (the planner);
//! [`service`], the task that sleeps and fires; [`invoke`], one invocation through the
//! egress client.

pub mod clock;
pub mod cron;
pub mod invoke;
pub mod run;
pub mod runner;
pub mod service;
pub mod store;
