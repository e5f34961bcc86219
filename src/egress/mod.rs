//! **How bytes leave.** Resolve, check every address, pin, dial; the upstream HTTP pool; the
//! tunnel relay; and the [`EgressClient`], the one way out of egressd.
//!
//! Everything egressd sends upstream — a function's forwarded request, a CONNECT tunnel, a
//! scheduled invocation, a hop of the redirect audit — goes through [`EgressClient`]: a
//! [`Permit`] comes only from its policy decision, and both of its ways out
//! ([`EgressClient::send`] for HTTP, [`EgressClient::dial`] for tunnels) take one. The dialer
//! and the pool's connector are private, so no second route out can exist. Imports from
//! [`crate::policy`] and [`crate::util`] only.

mod client;
mod dial;
pub mod resolve;
pub mod revoke;
#[cfg(target_os = "linux")]
pub mod snapshot;
mod splice;
pub mod tls;
pub mod tunnel;

pub use client::{authority_text, http_uri, EgressClient, EgressOptions, Permit, SendError};
pub use dial::EgressError;
pub use snapshot::{Snapshot, SnapshotHandle};

/// What went wrong, as egressd reports it in `X-Egress-Error`, the reason phrase and the
/// `reason` metric label. Denials have their own vocabulary ([`crate::policy::DenyReason`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The client's request is malformed.
    BadRequest,
    /// The request has already passed through egressd.
    Loop,
    /// Over `max_connections`.
    TooManyConnections,
    /// The name did not resolve.
    Dns,
    ConnectRefused,
    ConnectTimeout,
    /// Any other connect error (unreachable, reset).
    ConnectFailed,
    /// The upstream broke the HTTP exchange.
    Upstream,
    /// The upstream sent no response head in time, or its body went idle.
    UpstreamTimeout,
    /// Originating TLS to the upstream failed (mTLS).
    Tls,
    /// The client stopped sending its request body for the idle timeout.
    ClientTimeout,
    /// An `[[inject]]` rule names a secret the store does not have (or egressd has no
    /// store): the request is not sent without its credential.
    SecretMissing,
    /// An `[[inject]]` rule's secret cannot be carried in a header (a line break in it).
    SecretUnusable,
}

/// Why egress failed, as the caller answers it: a policy denial (its own status, header and
/// metric label) or an error of a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause<'a> {
    Denied(&'a crate::policy::Denial),
    Error(ErrorKind),
}

impl ErrorKind {
    /// Every kind, for parsing the wire strings back.
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::BadRequest,
        ErrorKind::Loop,
        ErrorKind::TooManyConnections,
        ErrorKind::Dns,
        ErrorKind::ConnectRefused,
        ErrorKind::ConnectTimeout,
        ErrorKind::ConnectFailed,
        ErrorKind::Upstream,
        ErrorKind::UpstreamTimeout,
        ErrorKind::Tls,
        ErrorKind::ClientTimeout,
        ErrorKind::SecretMissing,
        ErrorKind::SecretUnusable,
    ];

    /// The kind whose [`ErrorKind::as_str`] is `text`.
    pub fn parse(text: &str) -> Option<ErrorKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad-request",
            ErrorKind::Loop => "loop",
            ErrorKind::TooManyConnections => "too-many-connections",
            ErrorKind::Dns => "dns",
            ErrorKind::ConnectRefused => "connect-refused",
            ErrorKind::ConnectTimeout => "connect-timeout",
            ErrorKind::ConnectFailed => "connect-failed",
            ErrorKind::Upstream => "upstream",
            ErrorKind::UpstreamTimeout => "upstream-timeout",
            ErrorKind::Tls => "tls",
            ErrorKind::ClientTimeout => "client-timeout",
            ErrorKind::SecretMissing => "secret-missing",
            ErrorKind::SecretUnusable => "secret-unusable",
        }
    }
}
