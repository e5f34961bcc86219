//! The egressd benchmark harness (issue 3).
//!
//! One run walks: start the [`upstream`] and the two [`relay`]s (copy and splice) as child
//! processes of this binary, start egressd (with its default relay and with its copy relay),
//! squid and tinyproxy where installed ([`peers`]), then drive each [`scenarios`] scenario
//! against every path, interleaved, with the load clients in [`load`]. The [`mtls`]
//! scenarios then measure egressd's TLS origination against a TLS upstream of their own,
//! with certificates from [`pki`].
//! With a database ([`postgres`]), egressd also runs with its state there, and [`ticklag`]
//! measures the scheduler's tick lag with three replicas on it.
//! With `--denial-flood`, [`flood`] measures egressd again under a flood of refusals.
//! The [`allowlist`] figures come from in-process timing. [`report`] turns the medians into
//! markdown and [`chart`] into a PNG of the ratios.
//!
//! Everything listens and connects on 127.0.0.1 only.

pub mod allowlist;
pub mod chart;
pub mod flood;
pub mod http1;
pub mod load;
pub mod mtls;
pub mod peers;
pub mod pki;
pub mod postgres;
pub mod relay;
pub mod report;
pub mod scenarios;
pub mod ticklag;
pub mod upstream;

/// The only address the harness listens on or connects to.
pub const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The name egressd and squid are told maps to [`LOOPBACK`].
pub const UPSTREAM_HOST: &str = "upstream.test";
