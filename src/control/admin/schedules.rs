//! Schedules on the admin API: creating one, and the cron preview the console shows while
//! an expression is typed. Listing, reading, deleting and running read the store directly
//! (`super::Admin::route`).

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::guard::read_json;
use super::routes::Route;
use super::views::{
    api_error, json, rfc3339, schedule_view, state_unavailable, CronExample, CronView,
};
use super::Admin;
use crate::schedule::cron::{self, CronExpr};
use crate::schedule::service::RunNowError;
use crate::schedule::store::{NewSchedule, StoreError};
use crate::util::body::HttpBody;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    function: String,
    cron: String,
    #[serde(default)]
    payload: String,
}

impl Admin {
    /// `POST /v1/schedules {"function", "cron", "payload"}`.
    pub(super) async fn create_schedule(
        &self,
        req: Request<Incoming>,
        route: &Route,
    ) -> Response<HttpBody> {
        let request: CreateRequest = match read_json(
            req,
            route,
            "{\"function\": \"refresh-token\", \"cron\": \"*/5 * * * *\", \"payload\": \"...\"}",
        )
        .await
        {
            Ok(request) => request,
            Err(refusal) => return refusal,
        };
        let policy = self.scheduler.policy();
        let new = match NewSchedule::new(&request.function, &request.cron, &request.payload, |f| {
            policy.functions.is_productive(f)
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
        match self.scheduler.create(new).await {
            Ok(schedule) => {
                tracing::info!(schedule = %schedule.id, function = %schedule.function, cron = %schedule.cron, "schedule created");
                json(
                    StatusCode::CREATED,
                    &schedule_view(&schedule, self.scheduler.now()),
                )
            }
            Err(err) => store_error(err),
        }
    }

    /// `GET /v1/schedules/{id}`, and the answer of a run by hand.
    pub(super) async fn schedule(&self, id: &str) -> Response<HttpBody> {
        match self.scheduler.get(id).await {
            Ok(Some(schedule)) => json(
                StatusCode::OK,
                &schedule_view(&schedule, self.scheduler.now()),
            ),
            Ok(None) => api_error(StatusCode::NOT_FOUND, format!("no schedule {id:?}"), None),
            Err(err) => store_error(err),
        }
    }
}

pub(super) fn run_now_error(err: RunNowError) -> Response<HttpBody> {
    let status = match err {
        RunNowError::NotFound(_) => StatusCode::NOT_FOUND,
        RunNowError::Busy(_) => StatusCode::CONFLICT,
        RunNowError::Store(err) => return store_error(err),
    };
    api_error(status, err.to_string(), None)
}

pub(super) fn store_error(err: StoreError) -> Response<HttpBody> {
    let status = match err {
        StoreError::LimitReached => StatusCode::CONFLICT,
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::Write { .. } => StatusCode::SERVICE_UNAVAILABLE,
        StoreError::Unavailable(_) => return state_unavailable(&err.to_string()),
    };
    api_error(status, err.to_string(), None)
}

/// The most runs `GET /v1/cron` lists.
const MAX_PREVIEW: usize = 20;

pub(super) fn cron_preview(
    params: &std::collections::HashMap<String, String>,
) -> Response<HttpBody> {
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
