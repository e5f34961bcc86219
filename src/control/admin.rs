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
use super::reload::{Outcome, Reloader, Trigger};
use super::rotate::Rotator;
use crate::metrics::Metrics;
use crate::policy::allowlist::Pattern;
use crate::schedule::cron::CronExpr;
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
}

#[derive(Serialize)]
struct AllowlistView {
    generation: u64,
    loaded_at: String,
    last_error: Option<ErrorView>,
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
        let generation = self.reloader.status().generation;
        let (status, view) = match outcome {
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
        };
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
                    kind: match pattern {
                        Pattern::Exact(_) => "exact",
                        Pattern::Wildcard(_) => "wildcard",
                        Pattern::Ip(_) => "ip",
                    },
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
        AllowlistView {
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
