//! The admin listener's guards: what every request must pass before its handler runs, in
//! one place, read off the route table ([`super::routes::ROUTES`]).
//!
//! The threat is a web page in an operator's browser: it can make the browser send requests
//! to the admin listener, but not read the answers, set arbitrary headers or send a body
//! other than a form's. So:
//! - **Host**: on a loopback listener the API and console answer only a loopback name, so
//!   a page on a rebound name of its own cannot reach them (DNS rebinding). Probes and
//!   scrapers (`/healthz`, `/readyz`, `/metrics`) answer any `Host`.
//! - **Origin**: a state change that a browser sent from another origin (scheme, host and
//!   port, compared whole) is refused (CSRF). Clients that are not browsers send none.
//! - **Token**: with `admin_token_file`, a state change needs `Authorization: Bearer`, and
//!   so does a read of what only operators may see (the secret keys).
//! - **Content type**: a route that reads a body reads JSON sent as `application/json`, a
//!   type no cross-site form can send; a state change without a body refuses a form's types.
//!   So a client or proxy that drops `Origin` still cannot be made to post a form here.
//!
//! Bodies are then read by [`read_json`]: one JSON object, no larger than the largest valid
//! request, parsed into a type that refuses unknown fields.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use super::routes::{Body, Endpoint, Route};
use super::views::api_error;
use crate::control::config::AdminToken;
use crate::util::body::{text_response, HttpBody};

/// What the guards compare a request with.
pub(super) struct Guards<'a> {
    /// Required on state changes when set.
    pub token: Option<&'a AdminToken>,
    /// Whether the listener is on loopback: then requests must name a loopback host.
    pub loopback: bool,
}

impl Guards<'_> {
    /// Runs every guard `route` needs; the refusal to send when one fails.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, route: &Route, headers: &HeaderMap) -> Result<(), Response<HttpBody>> {
        let probe = matches!(
            route.endpoint,
            Endpoint::Health | Endpoint::Ready | Endpoint::Metrics
        );
        if probe {
            return Ok(());
        }
        let host = single(headers, &header::HOST).unwrap_or("");
        if self.loopback && !host.is_empty() && !is_loopback_authority(host) {
            return Err(text_response(
                StatusCode::FORBIDDEN,
                "the admin listener is on loopback: use http://127.0.0.1:PORT/ or http://localhost:PORT/\n",
            ));
        }
        if !route.mutating && !route.private {
            return Ok(());
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !same_origin(origin, host) {
                return Err(text_response(
                    StatusCode::FORBIDDEN,
                    format!("cross-origin request from {origin} refused: a state change must come from http://{host}\n"),
                ));
            }
        }
        if !self.authorized(headers) {
            let mut r = text_response(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Err(r);
        }
        content_type_allowed(route.body, headers)
    }

    /// Whether the request may change state: always without a configured token, otherwise
    /// only with `Authorization: Bearer <token>`.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = self.token else {
            return true;
        };
        single(headers, &header::AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|presented| token.matches(presented.trim()))
    }
}

/// The value of a header sent exactly once, as text.
fn single<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok(),
        _ => None,
    }
}

/// A JSON route takes `application/json` only; a route without a body takes no content type
/// or JSON's (what `fetch` without a body and curl send), never a form's.
#[allow(clippy::result_large_err)]
fn content_type_allowed(body: Body, headers: &HeaderMap) -> Result<(), Response<HttpBody>> {
    let present = headers.contains_key(header::CONTENT_TYPE);
    let json = single(headers, &header::CONTENT_TYPE).is_some_and(is_json_media_type);
    let message = match body {
        Body::Json(_) if json => return Ok(()),
        Body::Empty if json || !present => return Ok(()),
        Body::Json(_) => "send the body as JSON with Content-Type: application/json",
        Body::Empty => "this request takes no body: send it without one, or with Content-Type: application/json",
    };
    Err(api_error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        message.into(),
        None,
    ))
}

/// Whether a `Content-Type` value is JSON: the media type `application/json` in any case,
/// with parameters, but no charset other than UTF-8 (the only one JSON has).
pub(super) fn is_json_media_type(value: &str) -> bool {
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        && parts.all(|parameter| match parameter.split_once('=') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
                value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            }
            Some((name, _)) => !name.trim().is_empty(),
            None => parameter.trim().is_empty(),
        })
}

/// Whether `origin` is the listener's own: `http` (it serves no TLS), and the host and port
/// the request was sent to (`Host`), a missing port being 80.
pub(super) fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // `null` from a sandboxed frame or a file: page, or garbage
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return false;
    }
    match (host_and_port(authority), host_and_port(host)) {
        (Some((a, a_port)), Some((b, b_port))) => a.eq_ignore_ascii_case(b) && a_port == b_port,
        _ => false,
    }
}

/// `host[:port]` or `[v6][:port]`, the port 80 when absent; `None` when it is not that.
fn host_and_port(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = if authority.starts_with('[') {
        let close = authority.find(']')?;
        let (host, rest) = authority.split_at(close + 1);
        (host, rest.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#']) {
        return None;
    }
    let port = match port {
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            port.parse().ok()?
        }
        Some(_) => return None,
        None => 80,
    };
    Some((host, port))
}

/// `localhost`, a loopback IP, either with a port.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The route's JSON body as `T`: one object, at most as large as the largest valid request
/// (413 naming the field and the limits), 400 with `example` when it is not that object.
pub(super) async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    route: &Route,
    example: &str,
) -> Result<T, Response<HttpBody>> {
    let Body::Json(spec) = route.body else {
        unreachable!("{} reads no body", route.path)
    };
    let max = spec.max_bytes();
    let too_large = || {
        api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is over {max} bytes, larger than any valid request: {}",
                spec.limits
            ),
            Some(spec.field),
        )
    };
    let declared = single(req.headers(), &header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
    if declared.is_some_and(|length: usize| length > max) {
        return Err(too_large());
    }
    let body = match http_body_util::Limited::new(req.into_body(), max)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(err) => {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {err}"),
                None,
            ))
        }
    };
    // serde reads a struct from an array too (`["fn", "* * * * *", ""]`); the API takes
    // objects only, so the names say which value is which.
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            format!("expected a JSON object, {example}"),
            None,
        ));
    }
    serde_json::from_slice(&body).map_err(|err| {
        api_error(
            StatusCode::BAD_REQUEST,
            format!("expected {example}: {err}"),
            None,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types() {
        let cases = [
            ("application/json", true),
            ("Application/JSON", true),
            ("application/json; charset=utf-8", true),
            ("application/json;charset=\"UTF-8\"", true),
            (" application/json ; charset=utf-8 ", true),
            ("application/jsonx", false),
            ("application/json-patch+json", false),
            ("application/json; charset=latin1", false),
            ("application/json; =x", false),
            ("text/json", false),
            ("text/plain; application/json", false),
            ("text/plain", false),
            ("", false),
        ];
        for (value, json) in cases {
            assert_eq!(is_json_media_type(value), json, "{value:?}");
        }
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let cases = [
            ("http://127.0.0.1:9901", "127.0.0.1:9901", true),
            ("http://LOCALHOST:9901", "localhost:9901", true),
            ("http://[::1]:9901", "[::1]:9901", true),
            ("http://admin.internal", "admin.internal:80", true),
            ("http://admin.internal:80", "admin.internal", true),
            ("https://127.0.0.1:9901", "127.0.0.1:9901", false),
            ("ws://127.0.0.1:9901", "127.0.0.1:9901", false),
            ("evil://127.0.0.1:9901", "127.0.0.1:9901", false),
            ("http://127.0.0.1", "127.0.0.1:9901", false),
            ("http://127.0.0.1:9902", "127.0.0.1:9901", false),
            ("http://evil.test", "127.0.0.1:9901", false),
            ("http://127.0.0.1:9901/path", "127.0.0.1:9901", false),
            ("http://user@127.0.0.1:9901", "127.0.0.1:9901", false),
            ("http://127.0.0.1:9901", "", false),
            ("null", "127.0.0.1:9901", false),
            ("", "127.0.0.1:9901", false),
        ];
        for (origin, host, same) in cases {
            assert_eq!(
                same_origin(origin, host),
                same,
                "{origin:?} against {host:?}"
            );
        }
    }
}
