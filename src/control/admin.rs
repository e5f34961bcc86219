//! The admin listener: health, metrics, the allowlist with activation state, and reload.
//!
//! Loopback by default; a non-loopback address requires a bearer token (checked at config
//! load). Routes are one table ([`ROUTES`]); a route marked mutating requires
//! `Authorization: Bearer <token>` whenever a token is configured, so a new state-changing
//! endpoint cannot forget the check.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::config::AdminToken;
use super::edit::{check_entry, pattern_kind, AllowlistEditor, EditError};
use super::explain::explain_policy;
use super::reload::{Outcome, Reloader, Trigger};
use super::rotate::Rotator;
use super::trace::Auditor;
use crate::metrics::Metrics;
use crate::schedule::cron::{self, CronExpr};
use crate::schedule::function::DeployState;
use crate::schedule::service::Scheduler;
use crate::schedule::store::{NewSchedule, RunRecord, RunState, Schedule, StoreError};
use crate::util::body::{text_response, HttpBody};
use crate::util::listener::accept;
use crate::util::time::{format_utc, unix_ms};
use http_body_util::BodyExt;

/// What an admin route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Health,
    Metrics,
    Allowlist,
    Mtls,
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
    Console(Asset),
}

/// The console's files, embedded at compile time: no build step, no CDN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asset {
    Html,
    Js,
    Css,
}

impl Asset {
    fn body_and_type(self) -> (&'static str, &'static str) {
        match self {
            Asset::Html => (
                include_str!("console/index.html"),
                "text/html; charset=utf-8",
            ),
            Asset::Js => (
                include_str!("console/app.js"),
                "text/javascript; charset=utf-8",
            ),
            Asset::Css => (include_str!("console/app.css"), "text/css; charset=utf-8"),
        }
    }
}

/// One admin route.
struct Route {
    method: Method,
    path: &'static str,
    /// Changes state: needs the bearer token when one is configured.
    mutating: bool,
    endpoint: Endpoint,
}

/// Every admin route.
const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/healthz",
        mutating: false,
        endpoint: Endpoint::Health,
    },
    Route {
        method: Method::GET,
        path: "/metrics",
        mutating: false,
        endpoint: Endpoint::Metrics,
    },
    Route {
        method: Method::GET,
        path: "/v1/allowlist",
        mutating: false,
        endpoint: Endpoint::Allowlist,
    },
    Route {
        method: Method::GET,
        path: "/v1/mtls",
        mutating: false,
        endpoint: Endpoint::Mtls,
    },
    Route {
        method: Method::POST,
        path: "/v1/reload",
        mutating: true,
        endpoint: Endpoint::Reload,
    },
    Route {
        method: Method::GET,
        path: "/v1/schedules",
        mutating: false,
        endpoint: Endpoint::SchedulesList,
    },
    Route {
        method: Method::POST,
        path: "/v1/schedules",
        mutating: true,
        endpoint: Endpoint::SchedulesCreate,
    },
    Route {
        method: Method::GET,
        path: "/v1/schedules/{id}",
        mutating: false,
        endpoint: Endpoint::ScheduleGet,
    },
    Route {
        method: Method::DELETE,
        path: "/v1/schedules/{id}",
        mutating: true,
        endpoint: Endpoint::ScheduleDelete,
    },
    Route {
        method: Method::POST,
        path: "/v1/schedules/{id}/run",
        mutating: true,
        endpoint: Endpoint::ScheduleRun,
    },
    Route {
        method: Method::GET,
        path: "/v1/status",
        mutating: false,
        endpoint: Endpoint::Status,
    },
    Route {
        method: Method::GET,
        path: "/v1/functions",
        mutating: false,
        endpoint: Endpoint::Functions,
    },
    Route {
        method: Method::GET,
        path: "/v1/cron",
        mutating: false,
        endpoint: Endpoint::CronPreview,
    },
    Route {
        method: Method::GET,
        path: "/v1/allowlist/check",
        mutating: false,
        endpoint: Endpoint::AllowlistCheck,
    },
    Route {
        method: Method::POST,
        path: "/v1/allowlist",
        mutating: true,
        endpoint: Endpoint::AllowlistAdd,
    },
    Route {
        method: Method::DELETE,
        path: "/v1/allowlist/{id}",
        mutating: true,
        endpoint: Endpoint::AllowlistRemove,
    },
    Route {
        method: Method::GET,
        path: "/v1/explain",
        mutating: false,
        endpoint: Endpoint::Explain,
    },
    // Makes outbound requests, so it takes the token like a change would.
    Route {
        method: Method::POST,
        path: "/v1/trace",
        mutating: true,
        endpoint: Endpoint::Trace,
    },
    Route {
        method: Method::GET,
        path: "/",
        mutating: false,
        endpoint: Endpoint::Console(Asset::Html),
    },
    Route {
        method: Method::GET,
        path: "/console/app.js",
        mutating: false,
        endpoint: Endpoint::Console(Asset::Js),
    },
    Route {
        method: Method::GET,
        path: "/console/app.css",
        mutating: false,
        endpoint: Endpoint::Console(Asset::Css),
    },
];

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
    /// The `[[mtls]]` identities in force and their rotation errors.
    pub rotator: Arc<Rotator>,
    /// Schedules: the API's store and runs.
    pub scheduler: Arc<Scheduler>,
    /// Required on state-changing endpoints when set.
    pub token: Option<AdminToken>,
    /// The console's Add button and bin icon.
    pub editor: Arc<AllowlistEditor>,
    /// Follows redirect chains for "Check a URL".
    pub auditor: Auditor,
    /// Whether the admin listener is on loopback: then requests must name a loopback host,
    /// so a DNS-rebinding page cannot reach the API by a name of its own.
    pub loopback: bool,
}

#[derive(Serialize)]
struct AllowlistView {
    generation: u64,
    loaded_at: String,
    last_error: Option<ErrorView>,
    /// The server's clock, so that a countdown is right even when the browser's is not.
    now: String,
    /// Whether entries can be added and removed here; if not, why.
    editable: bool,
    read_only_reason: Option<String>,
    entries: Vec<EntryView>,
}

#[derive(Serialize)]
struct ErrorView {
    message: String,
    at: String,
}

#[derive(Serialize)]
struct EntryView {
    pattern: String,
    kind: &'static str,
    state: &'static str,
    added_at: Option<String>,
    active_at: String,
    line: Option<u32>,
}

/// `GET /v1/mtls`: what each client identity is, never key material.
#[derive(Serialize)]
struct MtlsView {
    entries: Vec<MtlsEntryView>,
}

#[derive(Serialize)]
struct MtlsEntryView {
    host: String,
    port: u16,
    allow_connect: bool,
    line: u32,
    subject: String,
    issuer: String,
    sha256: String,
    not_after: String,
    loaded_at: String,
    /// The last replacement that failed to load, until a good one.
    last_error: Option<ErrorView>,
}

#[derive(Serialize)]
struct ReloadView {
    result: &'static str,
    generation: u64,
    added: Vec<String>,
    removed: usize,
    revoked: usize,
    errors: Vec<String>,
}

/// Admin connections served at once; more are closed at accept. Scrapers and operators need
/// a handful; the cap keeps a flood on a non-loopback admin port from taking file
/// descriptors the proxy needs.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// A request head must arrive within this time.
const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn serve_admin(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    while let Some((stream, _)) = accept(&listener, &shutdown, "admin").await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.route(req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

impl Admin {
    async fn route(&self, req: Request<Incoming>) -> Response<HttpBody> {
        let (route, id) = match find_route(req.method(), req.uri().path()) {
            Ok(found) => found,
            Err(StatusCode::NOT_FOUND) => {
                return text_response(StatusCode::NOT_FOUND, "not found\n")
            }
            Err(status) => return text_response(status, "method not allowed\n"),
        };
        // Probes and scrapers name the listener as they like; the API and console do not.
        let guarded = !matches!(route.endpoint, Endpoint::Health | Endpoint::Metrics);
        if let Err(refusal) = self.same_origin(&req, guarded, route.mutating) {
            return refusal;
        }
        if route.mutating && !self.authorized(&req) {
            let mut r = text_response(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        match route.endpoint {
            Endpoint::Health => text_response(StatusCode::OK, "ok\n"),
            Endpoint::Metrics => {
                self.update_expiry_gauges();
                let mut r = text_response(StatusCode::OK, self.metrics.render());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            Endpoint::Allowlist => json(StatusCode::OK, &self.allowlist()),
            Endpoint::Mtls => json(StatusCode::OK, &self.mtls()),
            Endpoint::Reload => self.reload().await,
            Endpoint::SchedulesList => {
                let views: Vec<ScheduleView> = self
                    .scheduler
                    .store
                    .list()
                    .iter()
                    .map(schedule_view)
                    .collect();
                json(StatusCode::OK, &views)
            }
            Endpoint::SchedulesCreate => self.create_schedule(req).await,
            Endpoint::ScheduleGet => match self.scheduler.store.get(&id) {
                Some(schedule) => json(StatusCode::OK, &schedule_view(&schedule)),
                None => api_error(StatusCode::NOT_FOUND, format!("no schedule {id:?}"), None),
            },
            Endpoint::ScheduleDelete => match self.scheduler.store.delete(&id) {
                Ok(schedule) => json(StatusCode::OK, &schedule_view(&schedule)),
                Err(err) => store_error(err),
            },
            Endpoint::Status => json(StatusCode::OK, &self.status()),
            Endpoint::Functions => json(StatusCode::OK, &self.functions()),
            Endpoint::CronPreview => cron_preview(&query(&req)),
            Endpoint::AllowlistCheck => {
                let input = query(&req).remove("domain").unwrap_or_default();
                let policy = self.reloader.snapshot().0;
                json(StatusCode::OK, &check_entry(&input, &policy.allowlist))
            }
            Endpoint::AllowlistAdd => self.edit_allowlist(req, None).await,
            Endpoint::AllowlistRemove => self.edit_allowlist(req, Some(id)).await,
            Endpoint::Explain => {
                let url = query(&req).remove("url").unwrap_or_default();
                json(StatusCode::OK, &self.explain(&url))
            }
            Endpoint::Trace => self.trace(req).await,
            Endpoint::Console(asset) => {
                let (body, content_type) = asset.body_and_type();
                let mut r = text_response(StatusCode::OK, body);
                let h = r.headers_mut();
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                h.insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(CONSOLE_CSP),
                );
                h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
                h.insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                h.insert(
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                );
                r
            }
            Endpoint::ScheduleRun => match self.scheduler.run_now(&id).await {
                Ok(_) => match self.scheduler.store.get(&id) {
                    Some(schedule) => json(StatusCode::OK, &schedule_view(&schedule)),
                    None => api_error(StatusCode::NOT_FOUND, format!("no schedule {id:?}"), None),
                },
                Err(err) => store_error(err),
            },
        }
    }

    /// Whether the request may change state: always without a configured token, otherwise
    /// only with `Authorization: Bearer <token>`.
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|presented| token.matches(presented.trim()))
    }

    async fn reload(&self) -> Response<HttpBody> {
        let reloader = self.reloader.clone();
        let outcome = tokio::task::spawn_blocking(move || reloader.reload(Trigger::Admin))
            .await
            .unwrap_or_else(|e| Outcome::Failed(vec![format!("reload task failed: {e}")]));
        let (status, view) = reload_view(outcome, self.reloader.status().generation);
        json(status, &view)
    }

    /// Seconds until each client certificate expires, as of this scrape.
    fn update_expiry_gauges(&self) {
        let now = SystemTime::now();
        for entry in self.rotator.table().entries() {
            let not_after = entry.identity.certificate.not_after;
            let seconds = match not_after.duration_since(now) {
                Ok(left) => left.as_secs() as i64,
                Err(past) => -(past.duration().as_secs() as i64),
            };
            self.metrics
                .set_mtls_expiry(&entry.spec.pattern.to_string(), seconds);
        }
    }

    fn mtls(&self) -> MtlsView {
        let table = self.rotator.table();
        let entries = table
            .entries()
            .iter()
            .map(|entry| {
                let pattern = entry.spec.pattern.to_string();
                let cert = &entry.identity.certificate;
                MtlsEntryView {
                    last_error: self.rotator.error(&pattern).map(|(message, at)| ErrorView {
                        message,
                        at: format_utc(unix_ms(at)),
                    }),
                    host: pattern,
                    port: entry.spec.port,
                    allow_connect: entry.spec.allow_connect,
                    line: entry.spec.line,
                    subject: cert.subject.clone(),
                    issuer: cert.issuer.clone(),
                    sha256: cert.sha256.clone(),
                    not_after: format_utc(unix_ms(cert.not_after)),
                    loaded_at: format_utc(unix_ms(entry.identity.loaded_at)),
                }
            })
            .collect();
        MtlsView { entries }
    }

    fn allowlist(&self) -> AllowlistView {
        let (policy, status) = self.reloader.snapshot();
        let list = &policy.allowlist;
        let now = unix_ms(SystemTime::now());
        let entries = list
            .patterns()
            .iter()
            .enumerate()
            .map(|(id, pattern)| {
                let key = pattern.to_string();
                let active_at = list.active_at(id as u32);
                EntryView {
                    added_at: list.added_at(id as u32).map(format_utc),
                    pattern: key,
                    kind: pattern_kind(pattern),
                    state: if active_at <= now {
                        "active"
                    } else {
                        "pending"
                    },
                    active_at: format_utc(active_at),
                    line: list.line(id as u32),
                }
            })
            .collect();
        let writable = self.editor.writable();
        AllowlistView {
            now: format_utc(now),
            editable: writable.is_ok(),
            read_only_reason: writable.err(),
            generation: status.generation,
            loaded_at: format_utc(unix_ms(status.loaded_at)),
            last_error: status.last_error.map(|(message, at)| ErrorView {
                message,
                at: format_utc(unix_ms(at)),
            }),
            entries,
        }
    }
}

/// The route for `method` and `path`, with the `{id}` segment if the route has one; 404 for
/// an unknown path, 405 for a known path with another method.
fn find_route(method: &Method, path: &str) -> Result<(&'static Route, String), StatusCode> {
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

/// The largest schedule request body read.
const MAX_BODY: usize = 64 * 1024;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    function: String,
    cron: String,
    #[serde(default)]
    payload: String,
}

impl Admin {
    async fn create_schedule(&self, req: Request<Incoming>) -> Response<HttpBody> {
        let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(err) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {err}"),
                    None,
                )
            }
        };
        let request: CreateRequest = match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(err) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    format!("expected {{\"function\", \"cron\", \"payload\"}} as JSON: {err}"),
                    None,
                )
            }
        };
        let functions = self.scheduler.functions();
        let new = match NewSchedule::new(&request.function, &request.cron, &request.payload, |f| {
            functions.is_productive(f)
        }) {
            Ok(new) => new,
            Err(err) => {
                return api_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    err.to_string(),
                    Some(err.field()),
                )
            }
        };
        match self.scheduler.store.create(new, chrono::Utc::now()) {
            Ok(schedule) => {
                self.scheduler.created();
                tracing::info!(schedule = %schedule.id, function = %schedule.function, cron = %schedule.cron, "schedule created");
                json(StatusCode::CREATED, &schedule_view(&schedule))
            }
            Err(err) => store_error(err),
        }
    }
}

/// A schedule as the API shows it: times in RFC 3339 UTC.
#[derive(Serialize)]
struct ScheduleView {
    id: String,
    function: String,
    cron: String,
    payload: String,
    created_at: String,
    next_run: Option<String>,
    last_run: Option<String>,
    last_state: Option<RunState>,
    last_status: Option<String>,
    last_duration_ms: Option<u64>,
    last_reason: Option<String>,
    runs: Vec<RunRecord>,
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn schedule_view(schedule: &Schedule) -> ScheduleView {
    let last = schedule.last_run();
    let next_run = CronExpr::parse(&schedule.cron)
        .ok()
        .and_then(|cron| cron.next_after(chrono::Utc::now()))
        .map(rfc3339);
    ScheduleView {
        id: schedule.id.clone(),
        function: schedule.function.clone(),
        cron: schedule.cron.clone(),
        payload: schedule.payload.clone(),
        created_at: rfc3339(schedule.created_at),
        next_run,
        last_run: last.map(|r| rfc3339(r.scheduled_for)),
        last_state: last.map(|r| r.state),
        last_status: last.map(|r| r.status.clone()),
        last_duration_ms: last.map(|r| r.duration_ms),
        last_reason: last.and_then(|r| r.reason.clone()),
        runs: schedule.runs.iter().cloned().collect(),
    }
}

/// `{"error": "...", "field": "..."}` with `status`.
fn api_error(status: StatusCode, error: String, field: Option<&str>) -> Response<HttpBody> {
    json(
        status,
        &serde_json::json!({ "error": error, "field": field }),
    )
}

fn store_error(err: StoreError) -> Response<HttpBody> {
    let status = match err {
        StoreError::LimitReached => StatusCode::CONFLICT,
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::Write { .. } => StatusCode::SERVICE_UNAVAILABLE,
    };
    api_error(status, err.to_string(), None)
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<HttpBody> {
    let mut r = text_response(
        status,
        serde_json::to_string_pretty(value).expect("serializable") + "\n",
    );
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Scripts, styles and requests from the admin listener only: the console loads nothing
/// from elsewhere, and an injected string could not either.
const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// `GET /v1/status`: what the console's header shows.
#[derive(Serialize)]
struct StatusView {
    version: &'static str,
    generation: u64,
    loaded_at: String,
    config_path: String,
    last_error: Option<ErrorView>,
    /// Whether state changes need `Authorization: Bearer <token>`.
    token_required: bool,
    /// Seconds an added allowlist entry waits before it is active.
    activation_delay_secs: u64,
    schedule_limit: usize,
    payload_limit: usize,
}

#[derive(Serialize)]
struct FunctionView {
    name: String,
    state: &'static str,
    productive: bool,
}

/// `GET /v1/cron?expr=...&count=N`: the next runs, or the error with examples.
#[derive(Serialize)]
struct CronView {
    expr: String,
    valid: bool,
    next: Vec<String>,
    error: Option<String>,
    field: Option<&'static str>,
    examples: Vec<CronExample>,
}

#[derive(Serialize)]
struct CronExample {
    expr: &'static str,
    meaning: &'static str,
}

/// What an allowlist edit did: the entry, and the reload that loaded it.
#[derive(Serialize)]
struct EditView {
    entry: String,
    action: &'static str,
    reload: ReloadView,
}

#[derive(Serialize)]
struct ExplainView {
    input: String,
    allowed: bool,
    code: Option<&'static str>,
    message: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryRequest {
    domain: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceRequest {
    url: String,
}

/// The most runs `GET /v1/cron` lists.
const MAX_PREVIEW: usize = 20;

impl Admin {
    /// Refuses a request a browser sent on another site's behalf: a cross-origin `Origin`
    /// on a state change (CSRF), or on a loopback listener a `Host` that is not loopback
    /// (DNS rebinding).
    #[allow(clippy::result_large_err)]
    fn same_origin(
        &self,
        req: &Request<Incoming>,
        guarded: bool,
        mutating: bool,
    ) -> Result<(), Response<HttpBody>> {
        if !guarded {
            return Ok(());
        }
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if self.loopback && !host.is_empty() && !is_loopback_authority(host) {
            return Err(text_response(
                StatusCode::FORBIDDEN,
                "the admin listener is on loopback: use http://127.0.0.1:PORT/ or http://localhost:PORT/\n",
            ));
        }
        if !mutating {
            return Ok(());
        }
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|h| h.to_str().ok());
        match origin {
            None => Ok(()),
            Some(origin) if origin.split_once("://").map(|(_, a)| a) == Some(host) => Ok(()),
            Some(origin) => Err(text_response(
                StatusCode::FORBIDDEN,
                format!("cross-origin request from {origin} refused\n"),
            )),
        }
    }

    fn status(&self) -> StatusView {
        let status = self.reloader.status();
        StatusView {
            version: env!("CARGO_PKG_VERSION"),
            generation: status.generation,
            loaded_at: format_utc(unix_ms(status.loaded_at)),
            config_path: self.reloader.path().display().to_string(),
            last_error: status.last_error.map(|(message, at)| ErrorView {
                message,
                at: format_utc(unix_ms(at)),
            }),
            token_required: self.token.is_some(),
            activation_delay_secs: status.activation_delay.as_secs(),
            schedule_limit: crate::schedule::store::MAX_SCHEDULES,
            payload_limit: crate::schedule::store::MAX_PAYLOAD_CHARS,
        }
    }

    fn functions(&self) -> Vec<FunctionView> {
        self.scheduler
            .functions()
            .all()
            .iter()
            .map(|f| FunctionView {
                name: f.name.clone(),
                state: match f.state {
                    DeployState::Productive => "productive",
                    DeployState::Undeployed => "undeployed",
                },
                productive: f.state == DeployState::Productive,
            })
            .collect()
    }

    fn explain(&self, input: &str) -> ExplainView {
        let policy = self.reloader.snapshot().0;
        let explanation = explain_policy(&policy, input.trim(), SystemTime::now());
        ExplainView {
            input: input.to_string(),
            allowed: explanation.is_allowed(),
            code: explanation.denial().map(|d| d.reason.code()),
            message: explanation.to_string(),
        }
    }

    /// `POST /v1/allowlist {"domain"}` (`remove` is `None`) or `DELETE /v1/allowlist/{entry}`:
    /// edits the file, then reloads it as a hand edit would be.
    async fn edit_allowlist(
        &self,
        req: Request<Incoming>,
        remove: Option<String>,
    ) -> Response<HttpBody> {
        let (entry, action) = match remove {
            Some(encoded) => (
                percent_encoding::percent_decode_str(&encoded)
                    .decode_utf8_lossy()
                    .into_owned(),
                "removed",
            ),
            None => match read_json::<EntryRequest>(req, "{\"domain\": \"api.example.com\"}").await
            {
                Ok(request) => (request.domain, "added"),
                Err(response) => return response,
            },
        };
        let reloader = self.reloader.clone();
        let editor = self.editor.clone();
        let result = tokio::task::spawn_blocking(move || {
            let edited = if action == "added" {
                editor.add(&entry)
            } else {
                editor.remove(&entry)
            };
            edited.map(|pattern| (pattern, reloader.reload(Trigger::AdminEdit)))
        })
        .await
        .unwrap_or_else(|e| Err(EditError::Shape(format!("edit task failed: {e}"))));
        let (pattern, outcome) = match result {
            Ok(done) => done,
            Err(err) => {
                let status = match err {
                    EditError::ReadOnly(_) => StatusCode::FORBIDDEN,
                    EditError::InvalidEntry(_) | EditError::WouldNotLoad(_) => {
                        StatusCode::UNPROCESSABLE_ENTITY
                    }
                    EditError::Duplicate(..) => StatusCode::CONFLICT,
                    EditError::NotFound(_) => StatusCode::NOT_FOUND,
                    EditError::Shape(_) | EditError::Io { .. } => StatusCode::CONFLICT,
                };
                return api_error(status, err.to_string(), Some("domain"));
            }
        };
        tracing::info!(entry = %pattern, action, "allowlist edited through the admin API");
        let (status, reload) = reload_view(outcome, self.reloader.status().generation);
        let status = if status == StatusCode::OK && action == "added" {
            StatusCode::CREATED
        } else {
            status
        };
        json(
            status,
            &EditView {
                entry: pattern.to_string(),
                action,
                reload,
            },
        )
    }

    async fn trace(&self, req: Request<Incoming>) -> Response<HttpBody> {
        let request =
            match read_json::<TraceRequest>(req, "{\"url\": \"http://example.com/\"}").await {
                Ok(request) => request,
                Err(response) => return response,
            };
        let policy = self.reloader.snapshot().0;
        let report = self.auditor.trace(&policy, request.url.trim()).await;
        json(StatusCode::OK, &report)
    }
}

/// A JSON request body of at most [`MAX_BODY`] bytes; 415 without a JSON content type (so a
/// cross-site form cannot send one), 400 with `example` when it does not parse.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    example: &str,
) -> Result<T, Response<HttpBody>> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json {
        return Err(api_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as JSON with Content-Type: application/json".into(),
            None,
        ));
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {err}"),
                None,
            ))
        }
    };
    serde_json::from_slice(&body).map_err(|err| {
        api_error(
            StatusCode::BAD_REQUEST,
            format!("expected {example}: {err}"),
            None,
        )
    })
}

/// The query string's parameters, decoded; the first of a repeated name wins.
fn query(req: &Request<Incoming>) -> std::collections::HashMap<String, String> {
    let mut params = std::collections::HashMap::new();
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        params
            .entry(k.into_owned())
            .or_insert_with(|| v.into_owned());
    }
    params
}

fn cron_preview(params: &std::collections::HashMap<String, String>) -> Response<HttpBody> {
    let expr = params.get("expr").cloned().unwrap_or_default();
    let count = params
        .get("count")
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(5)
        .clamp(1, MAX_PREVIEW);
    let examples = cron::EXAMPLES
        .iter()
        .map(|(expr, meaning)| CronExample { expr, meaning })
        .collect();
    let view = match CronExpr::parse(&expr) {
        Ok(cron) => CronView {
            next: cron
                .upcoming(chrono::Utc::now(), count)
                .into_iter()
                .map(rfc3339)
                .collect(),
            expr,
            valid: true,
            error: None,
            field: None,
            examples,
        },
        Err(err) => CronView {
            expr,
            valid: false,
            next: vec![],
            field: err.field,
            error: Some(format!(
                "{}: {}",
                err.field.map_or_else(
                    || format!("{:?}", err.value),
                    |f| format!("{f} field {:?}", err.value)
                ),
                err.message
            )),
            examples,
        },
    };
    json(StatusCode::OK, &view)
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

fn reload_view(outcome: Outcome, generation: u64) -> (StatusCode, ReloadView) {
    match outcome {
        Outcome::Reloaded {
            added,
            removed,
            revoked,
            ..
        } => (
            StatusCode::OK,
            ReloadView {
                result: "reloaded",
                generation,
                added,
                removed,
                revoked,
                errors: vec![],
            },
        ),
        Outcome::Unchanged => (
            StatusCode::OK,
            ReloadView {
                result: "unchanged",
                generation,
                added: vec![],
                removed: 0,
                revoked: 0,
                errors: vec![],
            },
        ),
        Outcome::Failed(errors) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            ReloadView {
                result: "failed",
                generation,
                added: vec![],
                removed: 0,
                revoked: 0,
                errors,
            },
        ),
    }
}
