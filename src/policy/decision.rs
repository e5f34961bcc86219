//! The policy decision: may this request leave, and which rule says so.
//!
//! A [`Policy`] is the swappable part of the configuration (allowlist, ports, private ranges).
//! The proxy loads it once per request; a decision is a pure function of the policy and the
//! [`Target`], so `egressd explain` and the live proxy cannot disagree.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use crate::policy::allowlist::{Allowlist, Lookup, RuleId};
use crate::policy::function::Functions;
use crate::policy::host::{Host, HostError};
use crate::policy::inject::Injections;
use crate::policy::netguard::PrivateAllow;
use crate::policy::origination::Originations;
use crate::util::time::format_utc;

/// Where a request wants to go.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

impl Target {
    /// Parses `host:port` (authority form, as in CONNECT). IPv6 hosts are bracketed.
    pub fn parse_authority(authority: &str) -> Result<Target, TargetError> {
        let (host, port) = split_authority(authority)?;
        let port = port.ok_or(TargetError::MissingPort)?;
        Ok(Target {
            host: Host::parse(host)?,
            port: parse_port(port)?,
        })
    }

    /// Parses `host[:port]` as in an `http://` URL or a `Host` header. A port that is present
    /// must be valid — it never silently becomes the default.
    pub fn parse_authority_or(authority: &str, default_port: u16) -> Result<Target, TargetError> {
        let (host, port) = split_authority(authority)?;
        let port = port.map(parse_port).transpose()?.unwrap_or(default_port);
        Ok(Target {
            host: Host::parse(host)?,
            port,
        })
    }
}

/// Splits an authority into host and optional port text. Bracketed IPv6 hosts keep their
/// brackets; an unbracketed host with colons is refused (its port would be ambiguous).
fn split_authority(authority: &str) -> Result<(&str, Option<&str>), TargetError> {
    if authority.contains('@') {
        return Err(TargetError::Userinfo);
    }
    if authority.starts_with('[') {
        let end = authority.find(']').ok_or(TargetError::MissingPort)? + 1;
        return match &authority[end..] {
            "" => Ok((&authority[..end], None)),
            rest => match rest.strip_prefix(':') {
                Some(port) => Ok((&authority[..end], Some(port))),
                None => Err(TargetError::BadPort(rest.to_string())),
            },
        };
    }
    match authority.split_once(':') {
        None => Ok((authority, None)),
        Some((_, port)) if port.contains(':') => Err(TargetError::MissingPort),
        Some((host, port)) => Ok((host, Some(port))),
    }
}

fn parse_port(port: &str) -> Result<u16, TargetError> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(TargetError::BadPort(port.to_string())),
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A target that cannot even be looked up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the target has no port; CONNECT needs host:port")]
    MissingPort,
    #[error("\"{0}\" is not a valid port")]
    BadPort(String),
    #[error("user information in the target is not allowed")]
    Userinfo,
    #[error("{0}")]
    Host(#[from] HostError),
}

/// How a request leaves, which decides the port rule that applies. Metrics keep one series
/// per protocol, indexed by [`Protocol::index`]: adding a caller is one variant here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// A CONNECT tunnel (`HTTPS_PROXY`): `connect_ports`.
    Connect,
    /// A forwarded plain-HTTP request (`HTTP_PROXY`): `http_ports`.
    Http,
}

impl Protocol {
    /// Every protocol, in [`Protocol::index`] order.
    pub const ALL: [Protocol; 2] = [Protocol::Connect, Protocol::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Connect => "connect",
            Protocol::Http => "http",
        }
    }

    /// Position in [`Protocol::ALL`], for per-protocol arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The config key of the ports this protocol may reach.
    pub fn ports_key(self) -> &'static str {
        match self {
            Protocol::Connect => "proxy.connect_ports",
            Protocol::Http => "proxy.http_ports",
        }
    }
}

/// Why a request was refused; the code travels in `X-Egress-Denied` and metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    NotAllowlisted,
    PortNotAllowed,
    PrivateDestination,
    InvalidTarget,
    /// Only patterns still inside their activation delay match.
    PendingActivation,
    /// A request inside an HTTP CONNECT tunnel names another host than the tunnel's.
    TunnelHostMismatch,
    /// A CONNECT to a host egressd originates mTLS for: the tunnel could not carry the
    /// client certificate.
    MtlsOriginationRequired,
    /// A tunnel's TLS ClientHello names a host the policy does not allow.
    SniNotAllowlisted,
    /// A tunnel's TLS ClientHello names another host than the CONNECT (`connect_sni = "match"`).
    SniMismatch,
    /// A tunnel's first bytes start a TLS handshake egressd cannot read, so cannot check.
    SniUnreadable,
    /// `proxy.identity = "required"` and the request carried no credentials: 407.
    IdentityRequired,
    /// The request's credentials are malformed, or name an unknown function or a wrong
    /// token (one answer for both): 407.
    IdentityInvalid,
    /// A CONNECT to a host with an `[[inject]]` rule: egressd cannot add a header inside a
    /// tunnel.
    InjectionRequiresOrigination,
}

impl DenyReason {
    /// Every reason, for parsing the wire codes back.
    pub const ALL: [DenyReason; 13] = [
        DenyReason::NotAllowlisted,
        DenyReason::PortNotAllowed,
        DenyReason::PrivateDestination,
        DenyReason::InvalidTarget,
        DenyReason::PendingActivation,
        DenyReason::TunnelHostMismatch,
        DenyReason::MtlsOriginationRequired,
        DenyReason::SniNotAllowlisted,
        DenyReason::SniMismatch,
        DenyReason::SniUnreadable,
        DenyReason::IdentityRequired,
        DenyReason::IdentityInvalid,
        DenyReason::InjectionRequiresOrigination,
    ];

    /// The reason whose [`DenyReason::code`] is `code`.
    pub fn from_code(code: &str) -> Option<DenyReason> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    pub fn code(self) -> &'static str {
        match self {
            DenyReason::NotAllowlisted => "not-allowlisted",
            DenyReason::PortNotAllowed => "port-not-allowed",
            DenyReason::PrivateDestination => "private-destination",
            DenyReason::InvalidTarget => "invalid-target",
            DenyReason::PendingActivation => "pending-activation",
            DenyReason::TunnelHostMismatch => "tunnel-host-mismatch",
            DenyReason::MtlsOriginationRequired => "mtls-origination-required",
            DenyReason::SniNotAllowlisted => "sni-not-allowlisted",
            DenyReason::SniMismatch => "sni-mismatch",
            DenyReason::SniUnreadable => "sni-unreadable",
            DenyReason::IdentityRequired => "identity-required",
            DenyReason::IdentityInvalid => "identity-invalid",
            DenyReason::InjectionRequiresOrigination => "injection-requires-origination",
        }
    }
}

/// A refusal with the sentence shown to the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("denied ({}): {message}", reason.code())]
pub struct Denial {
    pub reason: DenyReason,
    pub message: String,
    /// The allowlist entry that would fix it, where one would: the host that is on no
    /// entry, the entry still inside its activation delay. Recent denials are grouped by it.
    pub fix: Option<Box<str>>,
}

impl Denial {
    pub fn new(reason: DenyReason, message: impl Into<String>) -> Self {
        Denial {
            reason,
            message: message.into(),
            fix: None,
        }
    }

    /// The same, fixed by adding `entry` to the allowlist (or by its activation).
    pub fn with_fix(mut self, entry: impl Into<Box<str>>) -> Self {
        self.fix = Some(entry.into());
        self
    }

    pub fn invalid_target(err: &TargetError) -> Self {
        Denial::new(DenyReason::InvalidTarget, err.to_string())
    }

    pub fn private(ip: IpAddr, range: &str) -> Self {
        Denial::new(
            DenyReason::PrivateDestination,
            format!("{ip} is in the {range} range; egressd does not connect to internal addresses unless proxy.allow_private_cidrs covers them"),
        )
    }
}

/// Ports a protocol may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSet(Vec<u16>);

impl PortSet {
    pub fn new(mut ports: Vec<u16>) -> Self {
        ports.sort_unstable();
        ports.dedup();
        PortSet(ports)
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.binary_search(&port).is_ok()
    }

    pub fn ports(&self) -> &[u16] {
        &self.0
    }
}

/// Everything a decision depends on. Replaced as a whole on reload.
#[derive(Clone, Debug)]
pub struct Policy {
    pub allowlist: Allowlist,
    pub connect_ports: PortSet,
    pub http_ports: PortSet,
    pub private: PrivateAllow,
    /// Static DNS answers (`[dns] overrides`), consulted before the resolver. They live here,
    /// not in the resolver, so a reload changes them together with the allowlist.
    pub dns_overrides: HashMap<Box<str>, IpAddr>,
    /// Hosts egressd originates TLS for (`[[mtls]]`): a CONNECT to them is refused unless
    /// the entry allows it, and a plain-HTTP request goes out over TLS to the entry's port.
    pub origination: Originations,
    /// The `[[inject]]` rules: headers egressd adds from the secret store. A CONNECT to a
    /// covered host is refused unless the rule allows it.
    pub injections: Injections,
    /// The `[[functions]]`: which may be scheduled and invoked, and where.
    pub functions: Functions,
}

impl Policy {
    /// Decides on the target alone at `now_ms` (Unix milliseconds); the dialer checks
    /// resolved addresses afterwards.
    pub fn decide(
        &self,
        target: &Target,
        protocol: Protocol,
        now_ms: u64,
    ) -> Result<RuleId, Denial> {
        let rule = match self.allowlist.lookup(&target.host, now_ms) {
            Lookup::Active(rule) => rule,
            Lookup::Pending(rule) => return Err(self.pending(rule)),
            Lookup::NoMatch => {
                return Err(Denial::new(
                    DenyReason::NotAllowlisted,
                    self.allowlist.denial_hint(&target.host),
                )
                .with_fix(target.host.to_string()))
            }
        };
        let ports = match protocol {
            Protocol::Connect => &self.connect_ports,
            Protocol::Http => &self.http_ports,
        };
        if !ports.contains(target.port) {
            let key = protocol.ports_key();
            return Err(Denial::new(
                DenyReason::PortNotAllowed,
                format!(
                    "port {} is not open for {} requests (allowed: {:?}); add it to {key}",
                    target.port,
                    protocol.as_str(),
                    ports.ports()
                ),
            ));
        }
        if let Host::Ip(ip) = target.host {
            self.check_address(ip)?;
        }
        if protocol == Protocol::Connect {
            self.check_tunnel_allowed(&target.host)?;
        }
        Ok(rule)
    }

    /// A CONNECT to a host egressd originates mTLS for is refused unless its entry allows
    /// it: the tunnel's TLS would be end to end, without the client certificate.
    fn check_tunnel_allowed(&self, host: &Host) -> Result<(), Denial> {
        if let Some(rule) = self
            .injections
            .lookup(host)
            .iter()
            .find(|r| !r.allow_connect)
        {
            return Err(Denial::new(
                DenyReason::InjectionRequiresOrigination,
                format!(
                    "egressd adds the {} header to requests to {host} from the secret store, which it cannot do inside a tunnel: send plain http://{host}/ through HTTP_PROXY and egressd opens TLS itself ([[inject]] \"{}\", line {}; allow_connect = true tunnels without the header)",
                    rule.header, rule.pattern, rule.line
                ),
            ));
        }
        match self.origination.lookup(host).filter(|r| !r.allow_connect) {
            None => Ok(()),
            Some(rule) => Err(Denial::new(
                DenyReason::MtlsOriginationRequired,
                format!(
                    "{host} requires a client certificate, which egressd presents for you: send plain http://{host}/ through HTTP_PROXY and egressd opens mTLS to port {} ([[mtls]] \"{}\", line {})",
                    rule.port, rule.pattern, rule.line
                ),
            )),
        }
    }

    fn pending(&self, rule: RuleId) -> Denial {
        Denial::new(
            DenyReason::PendingActivation,
            format!(
                "{} was added recently and becomes active at {} (UTC); new allowlist entries wait out proxy.activation_delay",
                self.describe_rule(rule),
                format_utc(self.allowlist.active_at(rule)),
            ),
        )
        .with_fix(self.allowlist.pattern(rule).to_string())
    }

    /// Refuses special addresses that no `allow_private_cidrs` entry opens.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), Denial> {
        match self.private.refuses(ip) {
            Some(range) => Err(Denial::private(ip, range)),
            None => Ok(()),
        }
    }

    /// "rule "x" (line N)" for logs and explain output.
    pub fn describe_rule(&self, rule: RuleId) -> String {
        let pattern = self.allowlist.pattern(rule);
        match self.allowlist.line(rule) {
            Some(line) => format!("\"{pattern}\" (line {line})"),
            None => format!("\"{pattern}\""),
        }
    }
}

#[cfg(test)]
impl Policy {
    /// A policy for unit tests: `entries` on the allowlist, CONNECT to 443 and HTTP to 80,
    /// every other rule at its default. The one place a test builds a policy field by field,
    /// so a new field is added here once.
    pub(crate) fn for_tests(entries: &[&str]) -> Policy {
        use crate::policy::allowlist::Pattern;
        Policy {
            allowlist: Allowlist::new(entries.iter().map(|e| Pattern::parse(e).unwrap())),
            connect_ports: PortSet::new(vec![443]),
            http_ports: PortSet::new(vec![80]),
            private: PrivateAllow::default(),
            dns_overrides: HashMap::new(),
            origination: Originations::default(),
            injections: Injections::default(),
            functions: Functions::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::allowlist::Pattern;

    fn policy(entries: &[&str]) -> Policy {
        Policy::for_tests(entries)
    }

    fn target(s: &str) -> Target {
        Target::parse_authority(s).unwrap()
    }

    #[test]
    fn authority_parsing() {
        assert_eq!(
            target("Example.com:443").host,
            Host::Domain("example.com".into())
        );
        assert_eq!(target("[::1]:8443").port, 8443);
        assert_eq!(
            Target::parse_authority("example.com"),
            Err(TargetError::MissingPort)
        );
        assert_eq!(
            Target::parse_authority("::1"),
            Err(TargetError::MissingPort)
        );
        assert_eq!(
            Target::parse_authority("u:p@example.com:443"),
            Err(TargetError::Userinfo)
        );
        assert!(matches!(
            Target::parse_authority("example.com:0"),
            Err(TargetError::BadPort(_))
        ));
        assert!(matches!(
            Target::parse_authority("example.com:+443"),
            Err(TargetError::BadPort(_))
        ));
        let or80 = |s| Target::parse_authority_or(s, 80);
        assert_eq!(or80("example.com").unwrap().port, 80);
        assert_eq!(or80("[::1]").unwrap().port, 80);
        assert_eq!(or80("[::1]:8080").unwrap().port, 8080);
        assert!(matches!(
            or80("example.com:99999"),
            Err(TargetError::BadPort(_))
        ));
        assert!(matches!(
            or80("example.com:443x"),
            Err(TargetError::BadPort(_))
        ));
        assert!(matches!(or80("example.com:"), Err(TargetError::BadPort(_))));
        assert!(matches!(or80("[::1]x"), Err(TargetError::BadPort(_))));
        assert!(matches!(
            Target::parse_authority("127.1:443"),
            Err(TargetError::Host(HostError::NonCanonicalIp(_)))
        ));
    }

    #[test]
    fn decision_order_is_allowlist_then_port_then_address() {
        let p = policy(&["www.example.com", "10.0.0.1"]);
        assert!(p
            .decide(&target("www.example.com:443"), Protocol::Connect, 0)
            .is_ok());
        let deny = |t: &str, proto| p.decide(&target(t), proto, 0).unwrap_err().reason;
        assert_eq!(
            deny("example.com:443", Protocol::Connect),
            DenyReason::NotAllowlisted
        );
        assert_eq!(
            deny("www.example.com:80", Protocol::Connect),
            DenyReason::PortNotAllowed
        );
        assert_eq!(
            deny("www.example.com:443", Protocol::Http),
            DenyReason::PortNotAllowed
        );
        assert_eq!(
            deny("10.0.0.1:443", Protocol::Connect),
            DenyReason::PrivateDestination
        );
    }

    #[test]
    fn a_connect_to_an_mtls_host_needs_its_entry_to_allow_tunnels() {
        use crate::policy::origination::{Origination, Originations};
        let mut p = policy(&["payments.example", "*.open.example"]);
        let rule = |pattern: &str, allow_connect| Origination {
            pattern: Pattern::parse(pattern).unwrap(),
            port: 8443,
            allow_connect,
            line: 7,
        };
        p.origination = Originations::new(vec![
            rule("payments.example", false),
            rule("*.open.example", true),
        ]);
        let denial = p
            .decide(&target("payments.example:443"), Protocol::Connect, 0)
            .unwrap_err();
        assert_eq!(denial.reason, DenyReason::MtlsOriginationRequired);
        assert!(
            denial.message.contains("opens mTLS to port 8443") && denial.message.contains("line 7"),
            "{}",
            denial.message
        );
        let http = Target::parse_authority_or("payments.example", 80).unwrap();
        assert!(
            p.decide(&http, Protocol::Http, 0).is_ok(),
            "plain HTTP is originated"
        );
        assert!(p
            .decide(&target("a.open.example:443"), Protocol::Connect, 0)
            .is_ok());
    }

    #[test]
    fn pending_patterns_deny_with_their_activation_time() {
        let mut p = policy(&["www.example.com"]);
        p.allowlist.set_active_at(0, 1_800_000_000_000);
        let target = target("www.example.com:443");
        let denial = p
            .decide(&target, Protocol::Connect, 1_799_999_999_999)
            .unwrap_err();
        assert_eq!(denial.reason, DenyReason::PendingActivation);
        assert!(
            denial
                .message
                .contains("becomes active at 2027-01-15T08:00:00Z (UTC)"),
            "{}",
            denial.message
        );
        assert!(p
            .decide(&target, Protocol::Connect, 1_800_000_000_000)
            .is_ok());
    }
}
