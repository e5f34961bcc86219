//! Header rules for a forwarding proxy (RFC 9110 §7.6): hop-by-hop headers stop here, `Via`
//! records the hop, `Max-Forwards` limits OPTIONS/TRACE chains.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// This instance's `Via` entry, `1.1 <pseudonym>` (RFC 9110 §7.6.3). The pseudonym is
/// `proxy.via_name` (default: the host name), so that two egressd instances in a chain — a
/// pod-local sidecar in front of the shared gateway — do not take each other for a loop.
#[derive(Clone, Debug)]
pub struct Via {
    name: Box<str>,
    value: HeaderValue,
}

impl Via {
    /// `name` must be a token (checked by the config).
    pub fn new(name: &str) -> Via {
        Via {
            name: name.into(),
            value: HeaderValue::from_str(&format!("1.1 {name}"))
                .expect("a token is a header value"),
        }
    }

    /// Appends this hop to `Via`.
    pub fn add(&self, headers: &mut HeaderMap) {
        headers.append(header::VIA, self.value.clone());
    }

    /// Whether `Via` already names this instance: the request is looping through it.
    pub fn is_ours(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::VIA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|hop| hop.split_whitespace().nth(1) == Some(&*self.name))
    }
}

impl Default for Via {
    fn default() -> Self {
        Via::new("egressd")
    }
}

/// Whether `name` can be a `Via` pseudonym: an RFC 9110 token of at most 64 bytes.
pub fn is_pseudonym(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Headers that describe one connection and never cross the proxy. `Trailer` is not one: it
/// announces the trailer fields of the message, which egressd forwards.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names — except
/// message framing and `Host`, which a client must not be able to strip through us.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(named) = connection_named(headers) {
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

fn connection_named(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut values = headers.get_all(header::CONNECTION).iter().peekable();
    values.peek()?;
    let named = values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| !is_protected(name))
        .collect();
    Some(named)
}

fn is_protected(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::HOST
}

/// Whether a request asks to upgrade to WebSocket: `Upgrade: websocket` alone (any other
/// protocol, `h2c` included, is not carried) and `upgrade` among the `Connection` tokens.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    let websocket = matches!(
        (upgrades.next(), upgrades.next()),
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"websocket")
    );
    websocket
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Puts back the two hop-by-hop headers of a WebSocket handshake, after stripping.
pub fn set_websocket_upgrade(headers: &mut HeaderMap) {
    headers.append(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// Whether the client accepts trailer fields (`TE: trailers`). `TE` itself is hop-by-hop;
/// egressd forwards trailers, so it asks the upstream for them on the client's behalf.
pub fn wants_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("trailers")
        })
}

/// Asks the next hop for trailers: `TE: trailers`, with the `TE` connection option RFC 9110
/// §10.1.4 requires beside it.
pub fn ask_for_trailers(headers: &mut HeaderMap) {
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers.append(header::CONNECTION, HeaderValue::from_static("te"));
}

/// What `Max-Forwards` asks of an OPTIONS or TRACE request.
#[derive(Debug, PartialEq, Eq)]
pub enum MaxForwards {
    /// No header, or not OPTIONS/TRACE: forward as is.
    Absent,
    /// Zero: egressd is the final recipient and answers itself.
    AnswerHere,
    /// Forward with the header lowered by one.
    Forward(u32),
    Invalid,
}

pub fn max_forwards(method: &http::Method, headers: &HeaderMap) -> MaxForwards {
    if method != http::Method::OPTIONS && method != http::Method::TRACE {
        return MaxForwards::Absent;
    }
    let Some(value) = headers.get(header::MAX_FORWARDS) else {
        return MaxForwards::Absent;
    };
    match value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
    {
        Some(0) => MaxForwards::AnswerHere,
        Some(n) => MaxForwards::Forward(n - 1),
        None => MaxForwards::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_standard_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret, content-length, host"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("content-length", "3"),
            ("host", "example.com"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-length", "host", "x-kept"]);
        let mut h = map(&[("trailer", "x-checksum")]);
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key("trailer"), "Trailer is end to end");
    }

    /// (name, request headers, carried to the upstream?)
    type UpgradeCase = (&'static str, &'static [(&'static str, &'static str)], bool);

    #[test]
    fn only_websocket_upgrades_are_carried() {
        let cases: &[UpgradeCase] = &[
            (
                "websocket",
                &[("connection", "Upgrade"), ("upgrade", "websocket")],
                true,
            ),
            (
                "case and other tokens",
                &[
                    ("connection", "keep-alive, UPGRADE"),
                    ("upgrade", "WebSocket"),
                ],
                true,
            ),
            (
                "h2c",
                &[
                    ("connection", "Upgrade, HTTP2-Settings"),
                    ("upgrade", "h2c"),
                ],
                false,
            ),
            (
                "websocket among others",
                &[("connection", "upgrade"), ("upgrade", "h2c, websocket")],
                false,
            ),
            (
                "two Upgrade headers",
                &[
                    ("connection", "upgrade"),
                    ("upgrade", "websocket"),
                    ("upgrade", "websocket"),
                ],
                false,
            ),
            ("no Connection: upgrade", &[("upgrade", "websocket")], false),
            ("no Upgrade", &[("connection", "upgrade")], false),
        ];
        for (name, headers, carried) in cases {
            assert_eq!(is_websocket_upgrade(&map(headers)), *carried, "{name}");
        }
    }

    #[test]
    fn our_via_is_recognised_by_our_pseudonym_only() {
        let via = Via::new("gw-7f9c");
        assert!(via.is_ours(&map(&[("via", "1.0 fred, 1.1 gw-7f9c")])));
        assert!(!via.is_ours(&map(&[("via", "1.1 sidecar-1, 1.1 egressd")])));
        assert!(!via.is_ours(&map(&[("via", "1.1 gw-7f9c-lookalike")])));
        assert!(!via.is_ours(&map(&[])));
        let mut h = HeaderMap::new();
        via.add(&mut h);
        assert_eq!(h["via"], "1.1 gw-7f9c");
    }

    #[test]
    fn pseudonyms_are_tokens() {
        for ok in ["egressd", "gw-7f9c.pod", "a_b~c"] {
            assert!(is_pseudonym(ok), "{ok}");
        }
        for bad in ["", "two words", "a,b", "x\u{e9}", &"x".repeat(65)] {
            assert!(!is_pseudonym(bad), "{bad:?}");
        }
    }

    #[test]
    fn te_trailers_is_recognised() {
        assert!(wants_trailers(&map(&[("te", "gzip, trailers")])));
        assert!(wants_trailers(&map(&[("te", "Trailers;q=1")])));
        assert!(!wants_trailers(&map(&[("te", "gzip")])));
        assert!(!wants_trailers(&map(&[])));
    }

    #[test]
    fn max_forwards_only_for_options_and_trace() {
        let h = map(&[("max-forwards", "0")]);
        assert_eq!(max_forwards(&http::Method::GET, &h), MaxForwards::Absent);
        assert_eq!(
            max_forwards(&http::Method::OPTIONS, &h),
            MaxForwards::AnswerHere
        );
        let h = map(&[("max-forwards", "3")]);
        assert_eq!(
            max_forwards(&http::Method::TRACE, &h),
            MaxForwards::Forward(2)
        );
        let h = map(&[("max-forwards", "x")]);
        assert_eq!(max_forwards(&http::Method::TRACE, &h), MaxForwards::Invalid);
    }
}
