//! URLs as clients and redirects write them, turned into what a decision takes: the target and
//! the protocol, with IDNs in punycode; and `Location` values resolved against the request.

use http::Uri;

use super::{Protocol, Target, TargetError};

/// The target and protocol of `input`: `host` (CONNECT to 443), `host:port` (CONNECT), or an
/// `http://` (plain HTTP, port 80) or `https://` (CONNECT, port 443) URL.
pub fn target_of(input: &str) -> Result<(Target, Protocol), TargetError> {
    if input.contains("://") {
        let ascii = to_ascii_url(input);
        let uri: Uri = ascii
            .parse()
            .map_err(|_| TargetError::BadPort(input.to_string()))?;
        let (protocol, default_port) = match uri.scheme_str() {
            Some("http") => (Protocol::Http, 80),
            _ => (Protocol::Connect, 443),
        };
        let authority = uri.authority().ok_or(TargetError::MissingPort)?;
        let target = Target::parse_authority_or(authority.as_str(), default_port)?;
        return Ok((target, protocol));
    }
    let target = Target::parse_authority_or(&host_to_ascii(input), 443)?;
    Ok((target, Protocol::Connect))
}

/// IDNs typed on the command line are compared in punycode, as clients send them.
fn host_to_ascii(input: &str) -> String {
    if input.is_ascii() {
        return input.to_string();
    }
    let (host, port) = match input.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (input, None),
    };
    let host = idna::domain_to_ascii(host).unwrap_or_else(|_| host.to_string());
    match port {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

fn to_ascii_url(input: &str) -> String {
    let Some((scheme, rest)) = input.split_once("://") else {
        return input.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    format!("{scheme}://{}{}", host_to_ascii(&rest[..end]), &rest[end..])
}

/// `location` resolved against `base` as a browser would: absolute, scheme-relative,
/// absolute-path or relative-path. The WHATWG URL rules decide (the `url` crate), since they are
/// what browsers and most HTTP clients follow: `/\\evil.test` is scheme-relative to them, and
/// tabs and newlines inside a `Location` are dropped, so a simpler join would name the wrong
/// next host. Text those rules refuse is joined as RFC 3986 §5.2 would, without dot-segment
/// removal.
pub fn resolve_location(base: &str, location: &str) -> String {
    if let Ok(joined) = url::Url::parse(base).and_then(|base| base.join(location)) {
        return joined.into();
    }
    if location.contains("://") {
        return location.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    if let Some(authority_and_path) = location.strip_prefix("//") {
        return format!("{scheme}://{authority_and_path}");
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let path = &rest[authority_end..];
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    format!("{scheme}://{authority}{dir}{location}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_like_a_browser() {
        let cases = [
            (
                "absolute",
                "http://a.test/x",
                "https://b.test/y",
                "https://b.test/y",
            ),
            (
                "scheme-relative",
                "http://a.test/x",
                "//b.test/y",
                "http://b.test/y",
            ),
            (
                "absolute path",
                "http://a.test/x/y?q",
                "/z",
                "http://a.test/z",
            ),
            (
                "relative path",
                "http://a.test/x/y?q=/1",
                "z",
                "http://a.test/x/z",
            ),
            (
                "relative from root",
                "http://a.test",
                "z",
                "http://a.test/z",
            ),
        ];
        for (name, base, location, want) in cases {
            assert_eq!(resolve_location(base, location), want, "{name}");
        }
    }

    /// Found by `tests/it/properties.rs`: a browser reads a backslash as a slash and drops tabs,
    /// so these `Location`s lead to another host, not to a path on the same one.
    #[test]
    fn locations_that_only_look_like_paths() {
        let cases = [
            ("backslash", "/\\evil.test/x", "http://evil.test/x"),
            ("two backslashes", "\\\\evil.test", "http://evil.test/"),
            (
                "tab between the slashes",
                "/\t/evil.test",
                "http://evil.test/",
            ),
            (
                "scheme without slashes",
                "https:evil.test",
                "https://evil.test/",
            ),
        ];
        for (name, location, want) in cases {
            assert_eq!(
                resolve_location("http://a.test/p", location),
                want,
                "{name}"
            );
        }
    }
}
