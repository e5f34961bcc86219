//! The admin listener's routes: one table ([`ROUTES`]) saying, per method and path, what the
//! route does, whether it changes state and what body it reads. The guards
//! ([`super::guard`]) read the table before any handler runs, so a new route cannot forget
//! a check.

use http::{Method, StatusCode};

use crate::policy::function::MAX_NAME_CHARS;
use crate::schedule::cron::MAX_CRON_CHARS;
use crate::schedule::store::MAX_PAYLOAD_CHARS;

/// What an admin route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Endpoint {
    Health,
    /// Readiness: fails from SIGTERM on, while `/healthz` still answers.
    Ready,
    Metrics,
    Allowlist,
    Mtls,
    /// Function credentials: the mode and each token file's state (never a token).
    Identity,
    Reload,
    SchedulesList,
    SchedulesCreate,
    ScheduleGet,
    ScheduleDelete,
    ScheduleRun,
    Status,
    Functions,
    CronPreview,
    AllowlistCheck,
    AllowlistAdd,
    AllowlistRemove,
    Explain,
    Trace,
    /// Recent refusals, grouped by what would fix them.
    Denials,
    /// Secret keys and metadata (never values): operators only.
    SecretsList,
    SecretsCreate,
    SecretsUpdate,
    SecretsDelete,
    Console(Asset),
}

/// The console's files, embedded at compile time: no build step, no CDN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Asset {
    Html,
    Js,
    Css,
}

impl Asset {
    pub(super) fn body_and_type(self) -> (&'static str, &'static str) {
        match self {
            Asset::Html => (
                include_str!("../console/index.html"),
                "text/html; charset=utf-8",
            ),
            Asset::Js => (
                include_str!("../console/app.js"),
                "text/javascript; charset=utf-8",
            ),
            Asset::Css => (
                include_str!("../console/app.css"),
                "text/css; charset=utf-8",
            ),
        }
    }
}

/// What a route reads from the request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Body {
    /// Nothing. A state change without a body still refuses a form's content type.
    Empty,
    /// One JSON object, sent as `application/json`.
    Json(JsonBody),
}

/// A JSON object's size, from its fields' limits in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct JsonBody {
    /// The field that makes a body large, named when a body is too large.
    pub field: &'static str,
    /// Its limit, in characters.
    pub chars: usize,
    /// The other fields' limits together, in characters.
    pub other_chars: usize,
    /// What the limits are, as the error says it.
    pub limits: &'static str,
}

/// A character in JSON takes at most 12 bytes: one outside the Basic Multilingual Plane,
/// escaped as two `\uXXXX` surrogates (Python's `json.dumps` does it by default).
const JSON_BYTES_PER_CHAR: usize = 12;
/// Room for the keys, quotes, commas and whitespace around the fields.
const JSON_FRAMING_BYTES: usize = 4096;

impl JsonBody {
    /// The largest body a valid request can have, however its characters are escaped; a
    /// larger body is refused before it is read.
    pub const fn max_bytes(&self) -> usize {
        JSON_BYTES_PER_CHAR * (self.chars + self.other_chars) + JSON_FRAMING_BYTES
    }
}

/// `POST /v1/schedules`: `{"function", "cron", "payload"}`.
pub(super) const SCHEDULE_BODY: JsonBody = JsonBody {
    field: "payload",
    chars: MAX_PAYLOAD_CHARS,
    other_chars: MAX_NAME_CHARS + MAX_CRON_CHARS,
    limits: "payload is limited to 8000 characters, function to 63, cron to 512",
};

/// The longest entry read: a domain name is at most 253 characters; the rest leaves room
/// for a pasted URL, which gets a hint rather than a size error.
const MAX_DOMAIN_INPUT_CHARS: usize = 1024;

/// `POST /v1/allowlist`: `{"domain"}`.
pub(super) const ENTRY_BODY: JsonBody = JsonBody {
    field: "domain",
    chars: MAX_DOMAIN_INPUT_CHARS,
    other_chars: 0,
    limits: "domain is limited to 1024 characters",
};

/// The longest URL "Check a URL" follows (browsers and servers commonly stop near 8 KiB).
const MAX_URL_CHARS: usize = 8192;

/// `POST /v1/trace`: `{"url"}`.
pub(super) const TRACE_BODY: JsonBody = JsonBody {
    field: "url",
    chars: MAX_URL_CHARS,
    other_chars: 0,
    limits: "url is limited to 8192 characters",
};

/// `POST /v1/secrets`: `{"key", "value", "default"}`; `PUT /v1/secrets/{key}`: `{"value"}`.
pub(super) const SECRET_BODY: JsonBody = JsonBody {
    field: "value",
    chars: crate::secrets::value::MAX_VALUE_BYTES,
    other_chars: crate::secrets::value::MAX_KEY_CHARS + 16,
    limits: "value is limited to 65536 bytes, key to 128 characters",
};

/// One admin route.
pub(super) struct Route {
    pub method: Method,
    pub path: &'static str,
    /// Changes state (or, like `/v1/trace`, makes requests): needs the bearer token when
    /// one is configured, a same-origin `Origin` when a browser sends one, and a content
    /// type no cross-site form can send.
    pub mutating: bool,
    /// Reads what only operators may see (secret keys): the bearer token is required as
    /// for a change.
    pub private: bool,
    pub body: Body,
    pub endpoint: Endpoint,
}

const fn read(path: &'static str, endpoint: Endpoint) -> Route {
    Route {
        method: Method::GET,
        path,
        mutating: false,
        private: false,
        body: Body::Empty,
        endpoint,
    }
}

const fn read_private(path: &'static str, endpoint: Endpoint) -> Route {
    Route {
        method: Method::GET,
        path,
        mutating: false,
        private: true,
        body: Body::Empty,
        endpoint,
    }
}

const fn change(method: Method, path: &'static str, body: Body, endpoint: Endpoint) -> Route {
    Route {
        method,
        path,
        mutating: true,
        private: true,
        body,
        endpoint,
    }
}

/// Every admin route.
pub(super) const ROUTES: &[Route] = &[
    read("/healthz", Endpoint::Health),
    read("/readyz", Endpoint::Ready),
    read("/metrics", Endpoint::Metrics),
    read("/v1/allowlist", Endpoint::Allowlist),
    read("/v1/mtls", Endpoint::Mtls),
    read("/v1/identity", Endpoint::Identity),
    change(Method::POST, "/v1/reload", Body::Empty, Endpoint::Reload),
    read("/v1/schedules", Endpoint::SchedulesList),
    change(
        Method::POST,
        "/v1/schedules",
        Body::Json(SCHEDULE_BODY),
        Endpoint::SchedulesCreate,
    ),
    read("/v1/schedules/{id}", Endpoint::ScheduleGet),
    change(
        Method::DELETE,
        "/v1/schedules/{id}",
        Body::Empty,
        Endpoint::ScheduleDelete,
    ),
    change(
        Method::POST,
        "/v1/schedules/{id}/run",
        Body::Empty,
        Endpoint::ScheduleRun,
    ),
    read("/v1/status", Endpoint::Status),
    read("/v1/functions", Endpoint::Functions),
    read("/v1/cron", Endpoint::CronPreview),
    read("/v1/allowlist/check", Endpoint::AllowlistCheck),
    change(
        Method::POST,
        "/v1/allowlist",
        Body::Json(ENTRY_BODY),
        Endpoint::AllowlistAdd,
    ),
    change(
        Method::DELETE,
        "/v1/allowlist/{id}",
        Body::Empty,
        Endpoint::AllowlistRemove,
    ),
    read("/v1/explain", Endpoint::Explain),
    // Makes outbound requests, so it is guarded like a change.
    change(
        Method::POST,
        "/v1/trace",
        Body::Json(TRACE_BODY),
        Endpoint::Trace,
    ),
    read("/v1/denials", Endpoint::Denials),
    read_private("/v1/secrets", Endpoint::SecretsList),
    change(
        Method::POST,
        "/v1/secrets",
        Body::Json(SECRET_BODY),
        Endpoint::SecretsCreate,
    ),
    change(
        Method::PUT,
        "/v1/secrets/{id}",
        Body::Json(SECRET_BODY),
        Endpoint::SecretsUpdate,
    ),
    change(
        Method::DELETE,
        "/v1/secrets/{id}",
        Body::Empty,
        Endpoint::SecretsDelete,
    ),
    read("/", Endpoint::Console(Asset::Html)),
    read("/console/app.js", Endpoint::Console(Asset::Js)),
    read("/console/app.css", Endpoint::Console(Asset::Css)),
];

/// The route for `method` and `path`, with the `{id}` segment if the route has one; 404 for
/// an unknown path, 405 for a known path with another method.
pub(super) fn find_route(
    method: &Method,
    path: &str,
) -> Result<(&'static Route, String), StatusCode> {
    let mut known_path = false;
    for route in ROUTES {
        if let Some(id) = path_matches(route.path, path) {
            if route.method == method {
                return Ok((route, id));
            }
            known_path = true;
        }
    }
    Err(if known_path {
        StatusCode::METHOD_NOT_ALLOWED
    } else {
        StatusCode::NOT_FOUND
    })
}

/// Whether `path` fits `pattern`, whose `{id}` segment matches one non-empty segment;
/// returns that segment (empty when the pattern has none).
fn path_matches(pattern: &str, path: &str) -> Option<String> {
    let mut id = String::new();
    let mut pattern_segments = pattern.split('/');
    let mut path_segments = path.split('/');
    loop {
        match (pattern_segments.next(), path_segments.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(segment)) if !segment.is_empty() => id = segment.to_string(),
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_that_reads_a_body_changes_state() {
        for route in ROUTES {
            if matches!(route.body, Body::Json(_)) {
                assert!(route.mutating, "{} {}", route.method, route.path);
            }
            if !route.mutating {
                assert_eq!(route.method, Method::GET, "{}", route.path);
            }
        }
    }

    #[test]
    fn the_schedule_limits_text_names_the_real_limits() {
        let text = format!(
            "payload is limited to {MAX_PAYLOAD_CHARS} characters, function to {MAX_NAME_CHARS}, cron to {MAX_CRON_CHARS}"
        );
        assert_eq!(SCHEDULE_BODY.limits, text);
        assert_eq!(
            ENTRY_BODY.limits,
            format!("domain is limited to {MAX_DOMAIN_INPUT_CHARS} characters")
        );
        assert_eq!(
            TRACE_BODY.limits,
            format!("url is limited to {MAX_URL_CHARS} characters")
        );
        assert_eq!(
            SECRET_BODY.limits,
            format!(
                "value is limited to {} bytes, key to {} characters",
                crate::secrets::value::MAX_VALUE_BYTES,
                crate::secrets::value::MAX_KEY_CHARS
            )
        );
    }
}
