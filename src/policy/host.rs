//! Host names as egressd compares them.
//!
//! Both the allowlist entries and the request targets go through the same normalisation so
//! that matching is a plain string comparison: ASCII lower case, one trailing dot removed,
//! labels checked against DNS limits. Anything that looks like a number in the last label is
//! an IPv4 literal and must be written canonically (`127.0.0.1`); the shorthand forms that
//! C resolvers accept (`127.1`, `2130706433`, `0x7f.1`, `0177.0.0.1`) are refused outright,
//! because a resolver would turn them into addresses the allowlist author never saw.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest host name DNS can carry (without the trailing dot).
const MAX_NAME_LEN: usize = 253;
/// Longest single DNS label.
const MAX_LABEL_LEN: usize = 63;

/// A validated, normalised host: a domain name or an IP literal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// Lower-case ASCII (punycode) name without a trailing dot.
    Domain(Box<str>),
    Ip(IpAddr),
}

impl Host {
    /// Parses a host as it appears in a request target or on the command line.
    /// IPv6 literals may be bracketed. Non-ASCII names are refused with their punycode form.
    pub fn parse(input: &str) -> Result<Host, HostError> {
        if input.is_empty() {
            return Err(HostError::Empty);
        }
        if let Some(inner) = input.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            return inner
                .parse::<Ipv6Addr>()
                .map(|ip| Host::Ip(IpAddr::V6(ip)))
                .map_err(|_| HostError::BadIpv6(input.to_string()));
        }
        if input.contains(':') {
            return input
                .parse::<Ipv6Addr>()
                .map(|ip| Host::Ip(IpAddr::V6(ip)))
                .map_err(|_| HostError::BadIpv6(input.to_string()));
        }
        let name = normalize_domain(input)?;
        if ends_in_number(&name) {
            return parse_canonical_ipv4(&name)
                .map(|ip| Host::Ip(IpAddr::V4(ip)))
                .ok_or_else(|| HostError::NonCanonicalIp(input.to_string()));
        }
        Ok(Host::Domain(name.into_boxed_str()))
    }

    pub fn as_domain(&self) -> Option<&str> {
        match self {
            Host::Domain(d) => Some(d),
            Host::Ip(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Why a string is not a usable host.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("empty host")]
    Empty,
    #[error("\"{0}\" is not ASCII; write its punycode form \"{1}\"")]
    NonAscii(String, String),
    #[error("\"{0}\" is not a valid host name (labels may hold letters, digits, '-' and '_')")]
    BadCharacter(String),
    #[error("\"{0}\" has an empty label")]
    EmptyLabel(String),
    #[error("\"{0}\" has a label longer than 63 bytes")]
    LabelTooLong(String),
    #[error("\"{0}\" is longer than 253 bytes")]
    NameTooLong(String),
    #[error("\"{0}\" has a label that starts or ends with '-'")]
    HyphenAtEdge(String),
    #[error(
        "\"{0}\" is not a canonical IPv4 address; write all four decimal parts, e.g. \"127.0.0.1\""
    )]
    NonCanonicalIp(String),
    #[error("\"{0}\" is not a valid IPv6 address")]
    BadIpv6(String),
}

/// Lower-cases, strips one trailing dot and checks DNS label rules.
/// Returns the punycode suggestion for non-ASCII input.
pub fn normalize_domain(input: &str) -> Result<String, HostError> {
    if !input.is_ascii() {
        let suggestion = idna::domain_to_ascii(input).unwrap_or_else(|_| "?".to_string());
        return Err(HostError::NonAscii(input.to_string(), suggestion));
    }
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    if trimmed.is_empty() {
        return Err(HostError::Empty);
    }
    if trimmed.len() > MAX_NAME_LEN {
        return Err(HostError::NameTooLong(input.to_string()));
    }
    for label in trimmed.split('.') {
        check_label(label, input)?;
    }
    Ok(trimmed.to_ascii_lowercase())
}

fn check_label(label: &str, whole: &str) -> Result<(), HostError> {
    if label.is_empty() {
        return Err(HostError::EmptyLabel(whole.to_string()));
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(HostError::LabelTooLong(whole.to_string()));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(HostError::BadCharacter(whole.to_string()));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(HostError::HyphenAtEdge(whole.to_string()));
    }
    Ok(())
}

/// The WHATWG URL rule: a host whose last label is a number (decimal or `0x` hex) is an IPv4
/// address, whatever the other labels look like.
fn ends_in_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    let digits = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .map(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or(false);
    digits || last.bytes().all(|b| b.is_ascii_digit())
}

/// Accepts exactly four decimal parts without leading zeros, each at most 255.
fn parse_canonical_ipv4(name: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = name.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        let canonical = !part.is_empty()
            && part.len() <= 3
            && part.bytes().all(|b| b.is_ascii_digit())
            && (part == "0" || !part.starts_with('0'));
        if !canonical {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(s: &str) -> Host {
        Host::Domain(s.into())
    }

    #[test]
    fn names_are_lowercased_and_lose_one_trailing_dot() {
        assert_eq!(
            Host::parse("WWW.Example.COM").unwrap(),
            domain("www.example.com")
        );
        assert_eq!(Host::parse("example.com.").unwrap(), domain("example.com"));
        assert_eq!(
            Host::parse("example.com..").unwrap_err(),
            HostError::EmptyLabel("example.com..".into())
        );
    }

    #[test]
    fn canonical_ip_literals_parse() {
        assert_eq!(
            Host::parse("127.0.0.1").unwrap(),
            Host::Ip("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            Host::parse("[::1]").unwrap(),
            Host::Ip("::1".parse().unwrap())
        );
        assert_eq!(
            Host::parse("::1").unwrap(),
            Host::Ip("::1".parse().unwrap())
        );
    }

    #[test]
    fn non_canonical_ipv4_literals_are_refused() {
        for input in [
            "127.1",
            "2130706433",
            "0x7f.1",
            "0177.0.0.1",
            "0x7f000001",
            "1.2.3.256",
            "1.2.3.4.5",
            "foo.123",
            "127.0.0.01",
        ] {
            assert!(
                matches!(Host::parse(input), Err(HostError::NonCanonicalIp(_))),
                "{input} should be a non-canonical IP"
            );
        }
    }

    #[test]
    fn numbers_inside_names_are_fine() {
        assert_eq!(
            Host::parse("123.example.com").unwrap(),
            domain("123.example.com")
        );
        assert_eq!(Host::parse("a1b2.io").unwrap(), domain("a1b2.io"));
    }

    #[test]
    fn label_rules() {
        assert!(matches!(
            Host::parse(&"a".repeat(64)),
            Err(HostError::LabelTooLong(_))
        ));
        let long = format!("{}.com", vec!["a".repeat(60); 5].join("."));
        assert!(matches!(Host::parse(&long), Err(HostError::NameTooLong(_))));
        assert!(matches!(
            Host::parse("a b.com"),
            Err(HostError::BadCharacter(_))
        ));
        assert!(matches!(
            Host::parse("-a.com"),
            Err(HostError::HyphenAtEdge(_))
        ));
    }

    #[test]
    fn non_ascii_suggests_punycode() {
        let err = Host::parse("bücher.de").unwrap_err();
        assert_eq!(
            err,
            HostError::NonAscii("bücher.de".into(), "xn--bcher-kva.de".into())
        );
    }
}
