//! The admin listener: health, metrics, the allowlist with activation state, reload,
//! schedules, and the console.
//!
//! Loopback by default; a non-loopback address requires a bearer token (checked at config
//! load). Routes are one table ([`routes::ROUTES`]) that says what each changes and reads;
//! the guards ([`guard`]) run from it before any handler, so a new state-changing endpoint
//! cannot forget a check. What the API answers is in [`views`]; schedules in [`schedules`].

mod denials;
mod guard;
mod routes;
mod schedules;
mod secrets;
mod views;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use guard::{read_json, Guards};
use routes::{find_route, Endpoint, Route};
use schedules::{cron_preview, run_now_error, store_error};
use views::*;

use super::config::AdminToken;
use super::edit::{check_entry, pattern_kind, AllowlistEditor, EditError};
use super::explain::{explain_policy, identity_note};
use super::reload::{Outcome, Reloader, Trigger};
use super::rotate::Rotator;
use super::trace::Auditor;
use crate::metrics::Metrics;
use crate::policy::allowlist::Pattern;
use crate::policy::function::DeployState;
use crate::schedule::service::Scheduler;
use crate::state::postgres::allowlist::{SharedAllowlist, SharedEditError};
use crate::util::body::{text_response, HttpBody};
use crate::util::drain::Draining;
use crate::util::listener::accept;
use crate::util::time::{format_utc, unix_ms};

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
    /// The `[[mtls]]` identities in force and their rotation errors.
    pub rotator: Arc<Rotator>,
    /// Function credentials in force (`proxy.identity`, token files).
    pub identity: Arc<crate::control::identity::IdentityKeeper>,
    /// Schedules: the API's store and runs.
    pub scheduler: Arc<Scheduler>,
    /// The shared database, with the postgres backend.
    pub database: Option<Arc<crate::state::postgres::Database>>,
    /// Required on state-changing endpoints when set.
    pub token: Option<AdminToken>,
    /// The console's Add button and bin icon.
    pub editor: Arc<AllowlistEditor>,
    /// Follows redirect chains for "Check a URL".
    pub auditor: Auditor,
    /// Whether the admin listener is on loopback: then requests must name a loopback host,
    /// so a DNS-rebinding page cannot reach the API by a name of its own.
    pub loopback: bool,
    /// Set at SIGTERM: `/readyz` then fails, so a load balancer stops sending connections.
    pub draining: Draining,
    /// The secret store (`[secrets]`), for operators.
    pub secrets: Option<Arc<crate::secrets::SecretStore>>,
    /// Where functions reach the store (`[secrets] host`), shown on the console.
    pub secrets_host: String,
    /// Recent denials of the other replicas, with the postgres backend.
    pub shared_denials: Option<Arc<crate::state::postgres::denials::SharedDenials>>,
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
        let guards = Guards {
            token: self.token.as_ref(),
            loopback: self.loopback,
        };
        if let Err(refusal) = guards.check(route, req.headers()) {
            return refusal;
        }
        match route.endpoint {
            Endpoint::Health => text_response(StatusCode::OK, "ok\n"),
            Endpoint::Ready if self.draining.is_draining() => {
                text_response(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            Endpoint::Ready => text_response(StatusCode::OK, "ready\n"),
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
            Endpoint::SchedulesList => match self.scheduler.list().await {
                Ok(schedules) => {
                    let now = self.scheduler.now();
                    let views: Vec<ScheduleView> =
                        schedules.iter().map(|s| schedule_view(s, now)).collect();
                    json(StatusCode::OK, &views)
                }
                Err(err) => store_error(err),
            },
            Endpoint::SchedulesCreate => self.create_schedule(req, route).await,
            Endpoint::ScheduleGet => self.schedule(&id).await,
            Endpoint::ScheduleDelete => match self.scheduler.delete(&id).await {
                Ok(schedule) => json(
                    StatusCode::OK,
                    &schedule_view(&schedule, self.scheduler.now()),
                ),
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
            Endpoint::AllowlistAdd => self.edit_allowlist(req, route, None).await,
            Endpoint::AllowlistRemove => self.edit_allowlist(req, route, Some(id)).await,
            Endpoint::Explain => {
                let mut query = query(&req);
                let url = query.remove("url").unwrap_or_default();
                let function = query.remove("function").filter(|f| !f.trim().is_empty());
                json(StatusCode::OK, &self.explain(&url, function.as_deref()))
            }
            Endpoint::Identity => json(
                StatusCode::OK,
                &IdentityView {
                    mode: self.identity.mode().as_str(),
                    functions: self.identity.functions(),
                },
            ),
            Endpoint::Trace => self.trace(req, route).await,
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
            Endpoint::Denials => match self
                .denials(query(&req).get("since").map(String::as_str))
                .await
            {
                Ok(view) => json(StatusCode::OK, &view),
                Err(message) => api_error(StatusCode::BAD_REQUEST, message, Some("since")),
            },
            Endpoint::SecretsList => self.list_secrets().await,
            Endpoint::SecretsCreate => self.create_secret(req, route).await,
            Endpoint::SecretsUpdate => self.update_secret(req, route, &id).await,
            Endpoint::SecretsDelete => self.delete_secret(&id).await,
            Endpoint::ScheduleRun => match self.scheduler.run_now(&id).await {
                Ok(_) => self.schedule(&id).await,
                Err(err) => run_now_error(err),
            },
        }
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

    /// Whether the console may add and remove entries, or why not.
    fn allowlist_writable(&self) -> Result<(), String> {
        // With the postgres backend the console edits the shared allowlist, whatever the
        // file's mount; the file's own entries are changed in the file.
        match self.reloader.shared().is_some() {
            true => Ok(()),
            false => self.editor.writable(),
        }
    }

    fn allowlist(&self) -> AllowlistView {
        let (policy, status) = self.reloader.snapshot();
        let list = &policy.allowlist;
        let now = unix_ms(SystemTime::now());
        let shared_backend = self.reloader.shared().is_some();
        let file_writable = self.editor.writable();
        let shared_entries = status.shared_entries.clone();
        let entries = list
            .patterns()
            .iter()
            .enumerate()
            .map(|(id, pattern)| {
                let key = pattern.to_string();
                let active_at = list.active_at(id as u32);
                let shared = shared_backend && shared_entries.contains(pattern);
                EntryView {
                    source: if shared { "shared" } else { "file" },
                    removable: shared || (!shared_backend && file_writable.is_ok()),
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
        let writable = self.allowlist_writable();
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

/// Scripts, styles and requests from the admin listener only: the console loads nothing
/// from elsewhere, and an injected string could not either.
const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

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

impl Admin {
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
            state: match &self.database {
                None => StateView {
                    backend: "file",
                    database: None,
                    up: true,
                    error: None,
                },
                Some(db) => {
                    let health = db.health();
                    StateView {
                        backend: "postgres",
                        database: Some(db.target().to_string()),
                        up: health.up,
                        error: health.error,
                    }
                }
            },
        }
    }

    fn functions(&self) -> Vec<FunctionView> {
        self.scheduler
            .policy()
            .functions
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

    fn explain(&self, input: &str, function: Option<&str>) -> ExplainView {
        let policy = self.reloader.snapshot().0;
        let explanation = explain_policy(&policy, input.trim(), SystemTime::now());
        ExplainView {
            input: input.to_string(),
            allowed: explanation.is_allowed(),
            code: explanation.denial().map(|d| d.reason.code()),
            message: explanation.to_string(),
            identity: identity_note(&self.identity.handle().load(), function.map(str::trim)),
        }
    }

    /// `POST /v1/allowlist {"domain"}` (`remove` is `None`) or `DELETE /v1/allowlist/{entry}`:
    /// edits the file, then reloads it as a hand edit would be.
    async fn edit_allowlist(
        &self,
        req: Request<Incoming>,
        route: &Route,
        remove: Option<String>,
    ) -> Response<HttpBody> {
        let (entry, action) = match remove {
            Some(encoded) => (
                percent_encoding::percent_decode_str(&encoded)
                    .decode_utf8_lossy()
                    .into_owned(),
                EditAction::Remove,
            ),
            None => {
                match read_json::<EntryRequest>(req, route, "{\"domain\": \"api.example.com\"}")
                    .await
                {
                    Ok(request) => (request.domain, EditAction::Add),
                    Err(response) => return response,
                }
            }
        };
        if let Some(shared) = self.reloader.shared().cloned() {
            return self.edit_shared(shared, entry, action).await;
        }
        let reloader = self.reloader.clone();
        let editor = self.editor.clone();
        let result = tokio::task::spawn_blocking(move || {
            let edited = match action {
                EditAction::Add => editor.add(&entry),
                EditAction::Remove => editor.remove(&entry),
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
        tracing::info!(entry = %pattern, action = action.as_str(), "allowlist edited through the admin API");
        self.edit_answer(&pattern, action, outcome)
    }

    /// What an edit answers: the entry, the action and the reload that put it in force
    /// (201 for an add that went through).
    fn edit_answer(
        &self,
        pattern: &Pattern,
        action: EditAction,
        outcome: Outcome,
    ) -> Response<HttpBody> {
        let (status, reload) = reload_view(outcome, self.reloader.status().generation);
        let status = if status == StatusCode::OK && action == EditAction::Add {
            StatusCode::CREATED
        } else {
            status
        };
        json(
            status,
            &EditView {
                entry: pattern.to_string(),
                action: action.as_str(),
                reload,
            },
        )
    }

    /// An edit of the shared allowlist (postgres backend): the entry is added to or removed
    /// from the database, then this replica follows at once (the others on NOTIFY or
    /// their next poll). The config file's entries are not removable here.
    async fn edit_shared(
        &self,
        shared: Arc<SharedAllowlist>,
        entry: String,
        action: EditAction,
    ) -> Response<HttpBody> {
        let pattern = match Pattern::parse(entry.trim()) {
            Ok(pattern) => pattern,
            Err(err) => {
                return api_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("{:?}: {err}", entry.trim()),
                    Some("domain"),
                )
            }
        };
        let in_file = {
            let (policy, status) = self.reloader.snapshot();
            policy.allowlist.contains(&pattern) && !status.shared_entries.contains(&pattern)
        };
        if in_file {
            let where_ = self.reloader.path().display();
            let message = match action {
                EditAction::Add => format!("{pattern} is in the config file {where_} already"),
                EditAction::Remove => format!(
                    "{pattern} is in the config file {where_}; remove it there (the console removes only entries added here)"
                ),
            };
            return api_error(StatusCode::CONFLICT, message, Some("domain"));
        }
        let reloader = self.reloader.clone();
        let edited = pattern.clone();
        let result = tokio::task::spawn_blocking(move || {
            let now = unix_ms(SystemTime::now());
            let delay = reloader.status().activation_delay.as_millis() as u64;
            let done = match action {
                EditAction::Add => shared.add(&edited, delay, now, "admin-api"),
                EditAction::Remove => shared.remove(&edited, now),
            };
            done.map(|()| reloader.refresh_shared(Trigger::AdminEdit))
        })
        .await
        .expect("the edit task does not panic");
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(SharedEditError::Duplicate(e)) => {
                return api_error(
                    StatusCode::CONFLICT,
                    format!("{e} is on the allowlist already"),
                    Some("domain"),
                )
            }
            Err(SharedEditError::NotFound(e)) => {
                return api_error(
                    StatusCode::NOT_FOUND,
                    format!("{e} is not on the allowlist"),
                    Some("domain"),
                )
            }
            Err(SharedEditError::Db(err)) => return state_unavailable(&err.to_string()),
        };
        tracing::info!(entry = %pattern, action = action.as_str(), "shared allowlist edited through the admin API");
        self.edit_answer(&pattern, action, outcome)
    }

    async fn trace(&self, req: Request<Incoming>, route: &Route) -> Response<HttpBody> {
        let request =
            match read_json::<TraceRequest>(req, route, "{\"url\": \"http://example.com/\"}").await
            {
                Ok(request) => request,
                Err(response) => return response,
            };
        let policy = self.reloader.snapshot().0;
        let report = self.auditor.trace(&policy, request.url.trim()).await;
        json(StatusCode::OK, &report)
    }
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
