//! Request parsing: from what a client sent to the [`Target`] the policy decides on.
//!
//! CONNECT takes authority-form `host:port`; a forwarded request takes an absolute-form
//! `http://` target whose `Host`, if any, names the same authority; a request inside an HTTP
//! tunnel must name the tunnel's authority. Anything else is refused here, before the policy
//! sees it: malformed → 400, well-formed but unusable (`127.1`) → 403 `invalid-target`.

use http::header;
use http::{Request, Uri};

use crate::policy::{Denial, Target, TargetError};

/// Why a request is refused before the policy sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request itself is malformed: 400.
    BadRequest(String),
    /// The target is well-formed but unusable (e.g. `127.1`): 403 `invalid-target`.
    Denied(Denial),
}

fn target_refusal(err: TargetError) -> Refusal {
    match err {
        TargetError::Host(_) => Refusal::Denied(Denial::invalid_target(&err)),
        other => Refusal::BadRequest(other.to_string()),
    }
}

/// The target of a CONNECT: authority-form `host:port` only.
pub fn connect_target(uri: &Uri) -> Result<Target, Refusal> {
    let authority = match (uri.scheme(), uri.authority(), uri.path_and_query()) {
        (None, Some(authority), None) => authority,
        _ => {
            return Err(Refusal::BadRequest(format!(
                "CONNECT needs authority-form host:port, not {uri:?}"
            )))
        }
    };
    Target::parse_authority(authority.as_str()).map_err(target_refusal)
}

/// The target of a forwarded request: absolute-form `http://` whose `Host` header, if any,
/// agrees.
pub fn forward_target<B>(req: &Request<B>) -> Result<Target, Refusal> {
    let uri = req.uri();
    match uri.scheme_str() {
        Some("http") => {}
        None => {
            return Err(Refusal::BadRequest(
                "egressd is a forward proxy: send absolute-form requests (set HTTP_PROXY), or CONNECT for https".into(),
            ))
        }
        Some(other) => {
            return Err(Refusal::BadRequest(format!(
                "scheme \"{other}\" cannot be forwarded; only http:// requests are forwarded, use CONNECT (HTTPS_PROXY) for https"
            )))
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| Refusal::BadRequest("the request target has no host".into()))?;
    if authority.as_str().contains('@') {
        return Err(Refusal::BadRequest(
            "user information in the URL is not allowed".into(),
        ));
    }
    let target = Target::parse_authority_or(authority.as_str(), 80).map_err(target_refusal)?;
    check_host_header(req, &target)?;
    Ok(target)
}

fn check_host_header<B>(req: &Request<B>, target: &Target) -> Result<(), Refusal> {
    let mut values = req.headers().get_all(header::HOST).iter();
    let Some(value) = values.next() else {
        return Ok(());
    };
    if values.next().is_some() {
        return Err(Refusal::BadRequest("more than one Host header".into()));
    }
    let text = value
        .to_str()
        .map_err(|_| Refusal::BadRequest("the Host header is not ASCII".into()))?;
    if parse_host_header(text).as_ref() != Some(target) {
        return Err(Refusal::BadRequest(format!(
            "the Host header names \"{text}\" but the request target names \"{target}\""
        )));
    }
    Ok(())
}

fn parse_host_header(text: &str) -> Option<Target> {
    Target::parse_authority_or(text, 80).ok()
}

/// A request inside an HTTP tunnel may only talk to the tunnel's authority: its `Host` (and
/// its authority, if sent in absolute form) must name it. The error is the sentence for the
/// `tunnel-host-mismatch` denial.
pub fn check_tunnel_request<B>(req: &Request<B>, tunnel: &Target) -> Result<(), String> {
    let uri = req.uri();
    if let Some(authority) = uri.authority() {
        let named = Target::parse_authority_or(authority.as_str(), 80).ok();
        if uri.scheme_str() != Some("http") || named.as_ref() != Some(tunnel) {
            return Err(format!(
                "the request names \"{uri}\" inside a tunnel to \"{tunnel}\"; a tunnel carries requests to its own host only"
            ));
        }
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let Some(value) = hosts.next() else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    if hosts.next().is_some() || parse_host_header(text).as_ref() != Some(tunnel) {
        return Err(format!(
            "the Host header names \"{text}\" inside a tunnel to \"{tunnel}\"; a tunnel carries requests to its own host only"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DenyReason;

    fn request(target: &str, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::builder().uri(target);
        for host in hosts {
            builder = builder.header(header::HOST, *host);
        }
        builder.body(()).unwrap()
    }

    /// What a parse is expected to give.
    #[derive(Debug)]
    enum Want {
        Target(&'static str),
        BadRequest(&'static str),
        Invalid,
    }

    fn check(name: &str, got: Result<Target, Refusal>, want: &Want) {
        match (got, want) {
            (Ok(target), Want::Target(t)) => assert_eq!(target.to_string(), *t, "{name}"),
            (Err(Refusal::BadRequest(msg)), Want::BadRequest(part)) => {
                assert!(msg.contains(part), "{name}: {msg}")
            }
            (Err(Refusal::Denied(d)), Want::Invalid) => {
                assert_eq!(d.reason, DenyReason::InvalidTarget, "{name}")
            }
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }

    /// (name, request target, Host headers, expected)
    const FORWARD: &[(&str, &str, &[&str], Want)] = &[
        (
            "absolute-form with agreeing Host",
            "http://api.test/x",
            &["api.test"],
            Want::Target("api.test:80"),
        ),
        (
            "no Host header",
            "http://api.test:8080/",
            &[],
            Want::Target("api.test:8080"),
        ),
        (
            "case and trailing dot are normalised",
            "http://API.Test./",
            &["api.test"],
            Want::Target("api.test:80"),
        ),
        (
            "Host with the default port spelt out",
            "http://api.test/",
            &["api.test:80"],
            Want::Target("api.test:80"),
        ),
        (
            "origin-form",
            "/x",
            &["api.test"],
            Want::BadRequest("absolute-form"),
        ),
        (
            "https is for CONNECT",
            "https://api.test/",
            &[],
            Want::BadRequest("use CONNECT"),
        ),
        (
            "userinfo",
            "http://u:p@api.test/",
            &[],
            Want::BadRequest("user information"),
        ),
        (
            "Host names another host",
            "http://api.test/",
            &["other.test"],
            Want::BadRequest("the Host header names"),
        ),
        (
            "Host names another port",
            "http://api.test/",
            &["api.test:81"],
            Want::BadRequest("the Host header names"),
        ),
        (
            "two Host headers",
            "http://api.test/",
            &["api.test", "api.test"],
            Want::BadRequest("more than one Host"),
        ),
        (
            "bad port",
            "http://api.test:99999/",
            &[],
            Want::BadRequest("not a valid port"),
        ),
        (
            "non-canonical IP literal",
            "http://127.1/",
            &[],
            Want::Invalid,
        ),
    ];

    #[test]
    fn forwarded_request_targets() {
        for (name, target, hosts, want) in FORWARD {
            check(name, forward_target(&request(target, hosts)), want);
        }
    }

    /// (name, CONNECT target, expected)
    const CONNECT: &[(&str, &str, Want)] = &[
        (
            "host and port",
            "api.test:443",
            Want::Target("api.test:443"),
        ),
        (
            "bracketed IPv6",
            "[2001:db8::1]:443",
            Want::Target("[2001:db8::1]:443"),
        ),
        ("no port", "api.test", Want::BadRequest("no port")),
        (
            "port zero",
            "api.test:0",
            Want::BadRequest("not a valid port"),
        ),
        ("non-canonical IP literal", "0x7f.1:443", Want::Invalid),
    ];

    #[test]
    fn connect_targets() {
        for (name, target, want) in CONNECT {
            let uri: Uri = target.parse().unwrap();
            check(name, connect_target(&uri), want);
        }
        let absolute: Uri = "http://api.test:443/".parse().unwrap();
        check(
            "absolute-form CONNECT",
            connect_target(&absolute),
            &Want::BadRequest("authority-form"),
        );
    }

    /// (name, request target, Host headers, allowed inside a tunnel to api.test:8080?)
    const IN_TUNNEL: &[(&str, &str, &[&str], bool)] = &[
        (
            "origin-form with the tunnel's Host",
            "/x",
            &["api.test:8080"],
            true,
        ),
        ("origin-form without Host", "/x", &[], true),
        (
            "absolute-form to the tunnel",
            "http://api.test:8080/x",
            &["api.test:8080"],
            true,
        ),
        ("Host names another host", "/x", &["other.test:8080"], false),
        (
            "Host leaves out the tunnel's port",
            "/x",
            &["api.test"],
            false,
        ),
        (
            "absolute-form to another host",
            "http://other.test:8080/x",
            &["api.test:8080"],
            false,
        ),
        (
            "absolute-form https",
            "https://api.test:8080/x",
            &["api.test:8080"],
            false,
        ),
        (
            "two Host headers",
            "/x",
            &["api.test:8080", "api.test:8080"],
            false,
        ),
    ];

    #[test]
    fn requests_inside_an_http_tunnel() {
        let tunnel = Target::parse_authority("api.test:8080").unwrap();
        for (name, target, hosts, allowed) in IN_TUNNEL {
            let got = check_tunnel_request(&request(target, hosts), &tunnel);
            assert_eq!(got.is_ok(), *allowed, "{name}: {got:?}");
        }
    }
}
