//! One invocation: `POST url` with the payload, through the egress client — the same
//! decision, pinning and mTLS origination as a function's own request, so a host that is not
//! allowlisted (or still pending activation) is a `failure` with that reason, never a bypass.

use crate::metrics::Metrics;
use crate::policy::denials::{Refusal, Seen};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request};
use http_body_util::{BodyExt, Limited};

use super::store::{RunRecord, RunState, RunStatus, Schedule};
use crate::egress::{Cause, EgressClient};
use crate::policy::function::Function;
use crate::policy::{Denial, Protocol, Target};
use crate::util::body::full;

/// How much of a function's response body is read (and discarded) before the run counts.
const RESPONSE_LIMIT: usize = 64 * 1024;

/// Invokes `function` for `schedule`'s run due at `nominal`, within `deadline`.
pub async fn invoke(
    egress: &EgressClient,
    function: &Function,
    schedule: &Schedule,
    nominal: DateTime<Utc>,
    deadline: Duration,
    metrics: &Metrics,
) -> RunRecord {
    let started = Instant::now();
    let attempt = attempt(egress, function, schedule, nominal, metrics);
    let outcome = tokio::time::timeout(deadline, attempt)
        .await
        .unwrap_or_else(|_| {
            Err((
                RunStatus::Timeout,
                format!("no response within {deadline:?} (schedule_timeout)"),
            ))
        });
    let duration_ms = started.elapsed().as_millis() as u64;
    let (state, status, reason) = match outcome {
        Ok(status) if (200..300).contains(&status) => {
            (RunState::Success, RunStatus::Http(status), None)
        }
        Ok(status) => (
            RunState::Failure,
            RunStatus::Http(status),
            Some(format!("the function answered HTTP {status}")),
        ),
        Err((status, reason)) => (RunState::Failure, status, Some(reason)),
    };
    RunRecord {
        scheduled_for: nominal,
        state,
        status,
        duration_ms,
        reason,
    }
}

/// The response status, or (why there was none, the reason in words).
async fn attempt(
    egress: &EgressClient,
    function: &Function,
    schedule: &Schedule,
    nominal: DateTime<Utc>,
    metrics: &Metrics,
) -> Result<u16, (RunStatus, String)> {
    // A refused invocation is a refusal like a function's own: among the recent denials,
    // under the function whose schedule it is.
    let denied = |d: Denial| {
        metrics.denial(
            &Refusal {
                seen: Seen::Denied(d.reason),
                fix: d.fix.as_deref(),
                target: &function.url,
                function: Some(&schedule.function),
                redirected_from: None,
            },
            crate::util::time::now_ms(),
        );
        (RunStatus::Denied(d.reason), d.message)
    };
    let authority = function.url.authority().map(|a| a.as_str()).unwrap_or("");
    // https:// leaves as a function's HTTPS_PROXY traffic would: the CONNECT port rules.
    let (protocol, default_port) = match function.url.scheme_str() {
        Some("https") => (Protocol::Connect, 443),
        _ => (Protocol::Http, 80),
    };
    let target = Target::parse_authority_or(authority, default_port)
        .map_err(|e| denied(Denial::invalid_target(&e)))?;
    let permit = egress.decide(&target, protocol).map_err(denied)?;
    let content_type = if serde_json::from_str::<serde_json::Value>(&schedule.payload).is_ok() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let request = Request::builder()
        .method(Method::POST)
        .uri(function.url.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
        .header("x-egress-schedule-id", schedule.id.as_str())
        .header(
            "x-egress-scheduled-time",
            nominal.to_rfc3339_opts(SecondsFormat::Secs, true),
        )
        .body(full(Bytes::from(schedule.payload.clone())))
        .expect("a valid URL and header values make a valid request");
    // On the function's behalf: its [[inject]] rules apply as to its own requests.
    let response = egress
        .send_as(&permit, request, Some(&schedule.function))
        .await
        .map_err(|err| match err.cause() {
            Cause::Denied(denial) => denied(denial.clone()),
            Cause::Error(kind) => (RunStatus::Egress(kind), err.to_string()),
        })?;
    let status = response.status().as_u16();
    // Read the answer to its end so the pooled connection can be reused.
    let _ = Limited::new(response.into_body(), RESPONSE_LIMIT)
        .collect()
        .await;
    Ok(status)
}
