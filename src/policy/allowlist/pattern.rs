//! Allowlist entry syntax: what an entry may say, parsed into a [`Pattern`] that cannot hold
//! an invalid value. Every refusal names the entry to write instead.

use std::fmt;
use std::net::IpAddr;

use crate::policy::host::{normalize_domain, Host, HostError};

/// One parsed allowlist entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Matches this name only.
    Exact(Box<str>),
    /// `*.suffix`: matches any name ending in `.suffix`, not `suffix` itself.
    Wildcard(Box<str>),
    Ip(IpAddr),
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(name) => f.write_str(name),
            Pattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
            Pattern::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Why an entry is not a valid pattern; each message says what to write instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error(
        "a bare \"*\" would allow every host; list the domains instead, e.g. \"*.example.com\""
    )]
    BareWildcard,
    #[error("\"*.\" needs a domain after it, e.g. \"*.example.com\"")]
    WildcardWithoutDomain,
    #[error("only one leading wildcard is allowed; use \"*.{0}\"")]
    SeveralWildcards(String),
    #[error("a wildcard must be the whole first label, as in \"*.{0}\"")]
    WildcardNotFirst(String),
    #[error("a wildcard must be the whole first label; use \"*.{0}\" for its subdomains or \"{0}\" for the name itself")]
    PartialLabelWildcard(String),
    #[error(
        "a wildcard must be followed by a domain of at least two labels, e.g. \"*.example.{0}\""
    )]
    WildcardTooBroad(String),
    #[error("entries are host names, not URLs; write \"{0}\"")]
    HasScheme(String),
    #[error("entries are host names without a path; write \"{0}\"")]
    HasPath(String),
    #[error("entries are host names without a port; write \"{0}\" and list the port in proxy.connect_ports or proxy.http_ports")]
    HasPort(String),
    #[error("IPv6 entries are written without brackets; write \"{0}\"")]
    BracketedIp(String),
    #[error("entries may not contain whitespace")]
    Whitespace,
    #[error("{0}")]
    Host(#[from] HostError),
}

impl Pattern {
    pub fn parse(entry: &str) -> Result<Pattern, PatternError> {
        if entry.chars().any(char::is_whitespace) {
            return Err(PatternError::Whitespace);
        }
        if let Some((_, rest)) = entry.split_once("://") {
            let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
            return Err(PatternError::HasScheme(unbracketed(strip_port(host))));
        }
        if let Some((host, _)) = entry.split_once('/') {
            return Err(PatternError::HasPath(host.to_string()));
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return Ok(Pattern::Ip(ip));
        }
        if let Some(bracketed) = bracketed_ipv6(entry) {
            return Err(bracketed);
        }
        if entry.contains(':') {
            return Err(PatternError::HasPort(strip_port(entry).to_string()));
        }
        match entry {
            "*" => return Err(PatternError::BareWildcard),
            "*." => return Err(PatternError::WildcardWithoutDomain),
            _ => {}
        }
        match entry.strip_prefix("*.") {
            Some(suffix) => parse_wildcard(suffix),
            None => parse_exact(entry),
        }
    }

    /// Whether this entry alone lets `host` through.
    pub fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (Pattern::Exact(name), Host::Domain(d)) => **name == **d,
            (Pattern::Wildcard(suffix), Host::Domain(d)) => {
                d.len() > suffix.len() + 1
                    && d.ends_with(&**suffix)
                    && d.as_bytes()[d.len() - suffix.len() - 1] == b'.'
            }
            (Pattern::Ip(ip), Host::Ip(target)) => ip == target,
            _ => false,
        }
    }
}

/// A URL's host as an entry writes it: an IPv6 address without its brackets.
fn unbracketed(host: &str) -> String {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .filter(|inside| inside.parse::<std::net::Ipv6Addr>().is_ok())
        .unwrap_or(host)
        .to_string()
}

/// `[v6]` or `[v6]:port`, a URL's form of an IPv6 address: the hint gives the bare address,
/// the form an entry takes.
fn bracketed_ipv6(entry: &str) -> Option<PatternError> {
    let (inside, after) = entry.strip_prefix('[')?.split_once(']')?;
    let ip = inside.parse::<std::net::Ipv6Addr>().ok()?.to_string();
    Some(match after {
        "" => PatternError::BracketedIp(ip),
        _ => PatternError::HasPort(ip),
    })
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn parse_wildcard(suffix: &str) -> Result<Pattern, PatternError> {
    if suffix.contains('*') {
        let rest: Vec<&str> = suffix.split('.').filter(|l| !l.contains('*')).collect();
        return Err(PatternError::SeveralWildcards(rest.join(".")));
    }
    let name = normalize_domain(suffix)?;
    if !name.contains('.') {
        return Err(PatternError::WildcardTooBroad(name));
    }
    // A suffix ending in a number is an IP literal, canonical or not (`*.a.443`): no name
    // under it is a valid host, so the entry could never match.
    if let Ok(Host::Ip(_)) | Err(HostError::NonCanonicalIp(_)) = Host::parse(&name) {
        return Err(HostError::NonCanonicalIp(format!("*.{suffix}")).into());
    }
    Ok(Pattern::Wildcard(name.into_boxed_str()))
}

fn parse_exact(entry: &str) -> Result<Pattern, PatternError> {
    if let Some(pos) = entry.find('*') {
        let first_label_end = entry.find('.').unwrap_or(entry.len());
        if pos < first_label_end {
            // `*x.com`: the wildcard is glued to other characters in the first label.
            return Err(PatternError::PartialLabelWildcard(entry.replace('*', "")));
        }
        let rest = entry[pos..].trim_start_matches(['*', '.']);
        let example = if rest.contains('.') {
            rest
        } else {
            "example.com"
        };
        return Err(PatternError::WildcardNotFirst(example.to_string()));
    }
    match Host::parse(entry)? {
        Host::Domain(name) => Ok(Pattern::Exact(name)),
        Host::Ip(ip) => Ok(Pattern::Ip(ip)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `tests/it/properties.rs`: `*.a.443` was accepted, though every name under it
    /// ends in a number and is refused as a host, so the entry could never match.
    #[test]
    fn wildcard_over_a_number_is_refused() {
        for entry in ["*.a.443", "*.example.0x7f", "*.1.2.3.4"] {
            assert!(
                matches!(
                    Pattern::parse(entry),
                    Err(PatternError::Host(HostError::NonCanonicalIp(_)))
                ),
                "{entry}: {:?}",
                Pattern::parse(entry)
            );
        }
    }

    /// (entry, expected message) — every invalid form names what to write instead.
    const INVALID_TABLE: &[(&str, &str)] = &[
        ("*", "a bare \"*\" would allow every host"),
        ("*.", "\"*.\" needs a domain after it"),
        (
            "*.*.example.com",
            "only one leading wildcard is allowed; use \"*.example.com\"",
        ),
        (
            "a.*.com",
            "a wildcard must be the whole first label, as in \"*.example.com\"",
        ),
        ("a.*.example.com", "as in \"*.example.com\""),
        ("*x.com", "use \"*.x.com\" for its subdomains or \"x.com\""),
        ("x.*", "a wildcard must be the whole first label"),
        ("*.com", "at least two labels"),
        ("a..com", "empty label"),
        (
            "https://example.com/path",
            "not URLs; write \"example.com\"",
        ),
        ("example.com/path", "without a path; write \"example.com\""),
        ("example.com:443", "without a port; write \"example.com\""),
        ("[::1]", "without brackets; write \"::1\""),
        ("[2001:DB8::1]:443", "without a port; write \"2001:db8::1\""),
        (
            "https://[2001:db8::1]:8443/x",
            "not URLs; write \"2001:db8::1\"",
        ),
        ("bücher.de", "punycode form \"xn--bcher-kva.de\""),
        ("", "empty host"),
        ("127.1", "not a canonical IPv4 address"),
        (" example.com", "whitespace"),
    ];

    #[test]
    fn invalid_table() {
        for (entry, expected) in INVALID_TABLE {
            let err = Pattern::parse(entry).expect_err(entry).to_string();
            assert!(
                err.contains(expected),
                "{entry:?}: {err:?} lacks {expected:?}"
            );
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(Pattern::parse(&long_label)
            .unwrap_err()
            .to_string()
            .contains("63 bytes"));
        let long_name = format!("{}.com", vec!["a".repeat(60); 5].join("."));
        assert!(Pattern::parse(&long_name)
            .unwrap_err()
            .to_string()
            .contains("253 bytes"));
    }
}
