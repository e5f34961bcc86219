//! What the admin API answers: the JSON views, and the helpers that send them.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde::Serialize;

use crate::control::reload::Outcome;
use crate::schedule::cron::CronExpr;
use crate::schedule::store::{RunRecord, RunState, Schedule};
use crate::util::body::{text_response, HttpBody};

#[derive(Serialize)]
pub(super) struct AllowlistView {
    pub generation: u64,
    pub loaded_at: String,
    pub last_error: Option<ErrorView>,
    /// The server's clock, so that a countdown is right even when the browser's is not.
    pub now: String,
    /// Whether entries can be added and removed here; if not, why.
    pub editable: bool,
    pub read_only_reason: Option<String>,
    pub entries: Vec<EntryView>,
}

#[derive(Serialize)]
pub(super) struct ErrorView {
    pub message: String,
    pub at: String,
}

#[derive(Serialize)]
pub(super) struct EntryView {
    pub pattern: String,
    pub kind: &'static str,
    pub state: &'static str,
    pub added_at: Option<String>,
    pub active_at: String,
    pub line: Option<u32>,
    /// `file` (the config file, at `line`) or `shared` (added from the console or the
    /// API with the postgres backend, shared by every replica).
    pub source: &'static str,
    /// Whether the console may remove it: shared entries, or the file's when the console
    /// edits the file.
    pub removable: bool,
}

/// `GET /v1/mtls`: what each client identity is, never key material.
#[derive(Serialize)]
pub(super) struct MtlsView {
    pub entries: Vec<MtlsEntryView>,
}

#[derive(Serialize)]
pub(super) struct MtlsEntryView {
    pub host: String,
    pub port: u16,
    pub allow_connect: bool,
    pub line: u32,
    pub subject: String,
    pub issuer: String,
    pub sha256: String,
    pub not_after: String,
    pub loaded_at: String,
    /// The last replacement that failed to load, until a good one.
    pub last_error: Option<ErrorView>,
}

#[derive(Serialize)]
pub(super) struct ReloadView {
    pub result: &'static str,
    pub generation: u64,
    pub added: Vec<String>,
    pub removed: usize,
    pub revoked: usize,
    pub errors: Vec<String>,
}

/// A schedule as the API shows it: times in RFC 3339 UTC.
#[derive(Serialize)]
pub(super) struct ScheduleView {
    pub id: String,
    pub function: String,
    pub cron: String,
    pub payload: String,
    pub created_at: String,
    pub next_run: Option<String>,
    pub last_run: Option<String>,
    pub last_state: Option<RunState>,
    pub last_status: Option<String>,
    pub last_duration_ms: Option<u64>,
    pub last_reason: Option<String>,
    pub runs: Vec<RunRecord>,
}

pub(super) fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `now` on the scheduler's clock.
pub(super) fn schedule_view(
    schedule: &Schedule,
    now: chrono::DateTime<chrono::Utc>,
) -> ScheduleView {
    let last = schedule.last_run();
    let next_run = CronExpr::parse(&schedule.cron)
        .ok()
        .and_then(|cron| cron.next_after(now))
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
        last_status: last.map(|r| r.status.to_string()),
        last_duration_ms: last.map(|r| r.duration_ms),
        last_reason: last.and_then(|r| r.reason.clone()),
        runs: schedule.runs.iter().cloned().collect(),
    }
}

/// `{"error": "...", "field": "..."}` with `status`.
pub(super) fn api_error(
    status: StatusCode,
    error: String,
    field: Option<&str>,
) -> Response<HttpBody> {
    json(
        status,
        &serde_json::json!({ "error": error, "field": field }),
    )
}

/// `503` with `X-Egress-Error: state-unavailable`: the shared state (the database) cannot be
/// reached, so nothing was changed. The proxy keeps serving with the state it has.
pub(super) fn state_unavailable(reason: &str) -> Response<HttpBody> {
    let mut r = api_error(StatusCode::SERVICE_UNAVAILABLE, reason.to_string(), None);
    r.headers_mut().insert(
        "x-egress-error",
        HeaderValue::from_static("state-unavailable"),
    );
    r
}

pub(super) fn json(status: StatusCode, value: &impl Serialize) -> Response<HttpBody> {
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

/// `GET /v1/status`: what the console's header shows.
#[derive(Serialize)]
pub(super) struct StatusView {
    pub version: &'static str,
    pub generation: u64,
    pub loaded_at: String,
    pub config_path: String,
    pub last_error: Option<ErrorView>,
    /// Whether state changes need `Authorization: Bearer <token>`.
    pub token_required: bool,
    /// Seconds an added allowlist entry waits before it is active.
    pub activation_delay_secs: u64,
    pub schedule_limit: usize,
    pub payload_limit: usize,
    /// Where shared state lives and whether it answers.
    pub state: StateView,
}

/// `state` in `/v1/status`.
#[derive(Serialize)]
pub(super) struct StateView {
    /// `file` or `postgres`.
    pub backend: &'static str,
    /// `user@host:port/dbname` (never the password).
    pub database: Option<String>,
    /// Whether the backend answered its last check; while not, admin writes get 503
    /// `state-unavailable` and nothing scheduled fires.
    pub up: bool,
    pub error: Option<String>,
}

#[derive(Serialize)]
pub(super) struct FunctionView {
    pub name: String,
    pub state: &'static str,
    pub productive: bool,
}

/// `GET /v1/cron?expr=...&count=N`: the next runs, or the error with examples.
#[derive(Serialize)]
pub(super) struct CronView {
    pub expr: String,
    pub valid: bool,
    pub next: Vec<String>,
    pub error: Option<String>,
    pub field: Option<&'static str>,
    pub examples: Vec<CronExample>,
}

#[derive(Serialize)]
pub(super) struct CronExample {
    pub expr: &'static str,
    pub meaning: &'static str,
}

/// An allowlist edit through the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EditAction {
    Add,
    Remove,
}

impl EditAction {
    /// The `action` of the answer and the log line.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            EditAction::Add => "added",
            EditAction::Remove => "removed",
        }
    }
}

/// What an allowlist edit did: the entry, and the reload that loaded it.
#[derive(Serialize)]
pub(super) struct EditView {
    pub entry: String,
    pub action: &'static str,
    pub reload: ReloadView,
}

#[derive(Serialize)]
pub(super) struct ExplainView {
    pub input: String,
    pub allowed: bool,
    pub code: Option<&'static str>,
    pub message: String,
    /// How `proxy.identity` changes the answer, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// `GET /v1/identity`.
#[derive(Serialize)]
pub(super) struct IdentityView {
    pub mode: &'static str,
    pub functions: Vec<crate::control::identity::FunctionIdentity>,
}

pub(super) fn reload_view(outcome: Outcome, generation: u64) -> (StatusCode, ReloadView) {
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
