//! One run of a schedule as recorded: how it ended ([`RunState`]), what it got
//! ([`RunStatus`]) and when it was due ([`RunRecord`]). The types are the compiler's; what a
//! user sees of them — the API's JSON, the state file, the log, the metric label — stays the
//! strings it always was.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::egress::ErrorKind;
use crate::policy::DenyReason;

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// The function answered 2xx.
    Success,
    /// Any other status, a denial, a DNS/connect/TLS error or the deadline.
    Failure,
    /// The previous run was still going when this one was due.
    Skipped,
    /// egressd was down when it was due.
    Missed,
}

impl RunState {
    /// The JSON value and the `outcome` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Success => "success",
            RunState::Failure => "failure",
            RunState::Skipped => "skipped",
            RunState::Missed => "missed",
        }
    }
}

/// What a run got: the function's HTTP status, or why there was none. Written as one string
/// (`"200"`, `"not-allowlisted"`, `"dns"`, `"timeout"`...) in the API, the state file and
/// the log, as it always was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    /// The function answered with this status.
    Http(u16),
    /// The policy refused the invocation.
    Denied(DenyReason),
    /// Egress failed: DNS, connect, TLS, the upstream.
    Egress(ErrorKind),
    /// No answer within `proxy.schedule_timeout`.
    Timeout,
    /// The function is not deployed as productive.
    Undeployed,
    /// The previous run was still going.
    Skipped,
    /// egressd was not running, or its clock stepped.
    Missed,
    /// egressd shut down before the run finished.
    Shutdown,
    /// The replica that claimed the run stopped before recording how it ended (its lease
    /// ran out); the run is not invoked again, since the function may have had it.
    Abandoned,
}

impl RunStatus {
    pub fn as_str(&self) -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed(match self {
            RunStatus::Http(code) => return std::borrow::Cow::Owned(code.to_string()),
            RunStatus::Denied(reason) => reason.code(),
            RunStatus::Egress(kind) => kind.as_str(),
            RunStatus::Timeout => "timeout",
            RunStatus::Undeployed => "undeployed",
            RunStatus::Skipped => "skipped",
            RunStatus::Missed => "missed",
            RunStatus::Shutdown => "shutdown",
            RunStatus::Abandoned => "abandoned",
        })
    }

    pub fn parse(text: &str) -> Option<RunStatus> {
        if let Ok(code) = text.parse::<u16>() {
            return (100..=999).contains(&code).then_some(RunStatus::Http(code));
        }
        let fixed = [
            RunStatus::Timeout,
            RunStatus::Undeployed,
            RunStatus::Skipped,
            RunStatus::Missed,
            RunStatus::Shutdown,
            RunStatus::Abandoned,
        ];
        fixed
            .into_iter()
            .find(|s| s.as_str() == text)
            .or_else(|| DenyReason::from_code(text).map(RunStatus::Denied))
            .or_else(|| ErrorKind::parse(text).map(RunStatus::Egress))
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl Serialize for RunStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.as_str())
    }
}

impl<'de> Deserialize<'de> for RunStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        RunStatus::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown run status {text:?}")))
    }
}

/// One run of a schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The nominal time the run was due (a `run now` records when it was asked for).
    pub scheduled_for: DateTime<Utc>,
    pub state: RunState,
    /// The HTTP status, or why there was none.
    pub status: RunStatus,
    pub duration_ms: u64,
    /// Why it failed, in words.
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What users see of a run — the API's JSON, the state file, the log's `status`, the
    /// metric's `outcome` — is spelt as it always was, whatever the types underneath.
    #[test]
    fn the_wire_strings_stay_as_users_see_them() {
        let cases = [
            (RunStatus::Http(200), "200"),
            (RunStatus::Http(503), "503"),
            (
                RunStatus::Denied(DenyReason::NotAllowlisted),
                "not-allowlisted",
            ),
            (
                RunStatus::Denied(DenyReason::PendingActivation),
                "pending-activation",
            ),
            (
                RunStatus::Denied(DenyReason::MtlsOriginationRequired),
                "mtls-origination-required",
            ),
            (RunStatus::Egress(ErrorKind::Dns), "dns"),
            (RunStatus::Egress(ErrorKind::Tls), "tls"),
            (
                RunStatus::Egress(ErrorKind::UpstreamTimeout),
                "upstream-timeout",
            ),
            (RunStatus::Timeout, "timeout"),
            (RunStatus::Undeployed, "undeployed"),
            (RunStatus::Skipped, "skipped"),
            (RunStatus::Missed, "missed"),
            (RunStatus::Shutdown, "shutdown"),
            (RunStatus::Abandoned, "abandoned"),
        ];
        for (status, wire) in cases {
            assert_eq!(status.to_string(), wire);
            assert_eq!(RunStatus::parse(wire), Some(status), "{wire}");
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{wire}\"")
            );
        }
        for reason in DenyReason::ALL {
            let status = RunStatus::Denied(reason);
            assert_eq!(RunStatus::parse(&status.to_string()), Some(status));
        }
        for kind in ErrorKind::ALL {
            let status = RunStatus::Egress(kind);
            assert_eq!(RunStatus::parse(&status.to_string()), Some(status));
        }
        for (state, wire) in [
            (RunState::Success, "success"),
            (RunState::Failure, "failure"),
            (RunState::Skipped, "skipped"),
            (RunState::Missed, "missed"),
        ] {
            assert_eq!(state.as_str(), wire);
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{wire}\"")
            );
        }
        let record = r#"{"scheduled_for":"2026-12-03T10:01:00Z","state":"failure","status":"not-allowlisted","duration_ms":3,"reason":"add it"}"#;
        let parsed: RunRecord = serde_json::from_str(record).unwrap();
        assert_eq!(parsed.status, RunStatus::Denied(DenyReason::NotAllowlisted));
        assert_eq!(serde_json::to_string(&parsed).unwrap(), record);
        let unknown = record.replace("not-allowlisted", "exploded");
        let err = serde_json::from_str::<RunRecord>(&unknown).unwrap_err();
        assert!(
            err.to_string().contains("unknown run status \"exploded\""),
            "{err}"
        );
    }
}
