//! `egressd schedules list|create|delete|run`: the schedules API from the command line,
//! with times in UTC and in local time.

use std::path::Path;
use std::process::ExitCode;

use chrono::{DateTime, Local, Utc};
use http::Method;

use super::admin_api::call;

/// What to do.
pub enum Action {
    List,
    Create {
        function: String,
        cron: String,
        payload: String,
    },
    Delete(String),
    Run(String),
}

/// Runs `action` against the admin listener at `admin` (`http://host:port`).
pub fn schedules(admin: &str, token_file: Option<&Path>, action: Action) -> ExitCode {
    let token = match token_file.map(std::fs::read_to_string) {
        None => None,
        Some(Ok(token)) => Some(token.trim().to_string()),
        Some(Err(err)) => {
            eprintln!("--token-file: {err}");
            return ExitCode::FAILURE;
        }
    };
    let (method, path, body) = match &action {
        Action::List => (Method::GET, "/v1/schedules".to_string(), String::new()),
        Action::Create {
            function,
            cron,
            payload,
        } => (
            Method::POST,
            "/v1/schedules".to_string(),
            serde_json::json!({"function": function, "cron": cron, "payload": payload}).to_string(),
        ),
        Action::Delete(id) => (Method::DELETE, format!("/v1/schedules/{id}"), String::new()),
        Action::Run(id) => (
            Method::POST,
            format!("/v1/schedules/{id}/run"),
            String::new(),
        ),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let answer = runtime.block_on(call(admin, token.as_deref(), method, &path, body));
    let (status, body) = match answer {
        Ok(answer) => answer,
        Err(err) => {
            eprintln!("cannot reach the admin listener at {admin}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&body) else {
        eprintln!("HTTP {status}: {body}");
        return ExitCode::FAILURE;
    };
    if status >= 400 {
        let field = value["field"]
            .as_str()
            .map(|f| format!(" ({f})"))
            .unwrap_or_default();
        eprintln!(
            "HTTP {status}{field}: {}",
            value["error"].as_str().unwrap_or(&body)
        );
        return ExitCode::FAILURE;
    }
    match value.as_array() {
        Some(list) if list.is_empty() => say!("no schedules"),
        Some(list) => list.iter().for_each(print_schedule),
        None => print_schedule(&value),
    }
    ExitCode::SUCCESS
}

/// `2026-11-28T10:05:00Z (05:05 local)`, or `-`.
fn both(value: &serde_json::Value) -> String {
    let Some(text) = value.as_str() else {
        return "-".into();
    };
    match text.parse::<DateTime<Utc>>() {
        Ok(t) => format!(
            "{text} ({} local)",
            t.with_timezone(&Local).format("%Y-%m-%d %H:%M %:z")
        ),
        Err(_) => text.to_string(),
    }
}

fn print_schedule(s: &serde_json::Value) {
    say!(
        "{}  {}  {:?}",
        s["id"].as_str().unwrap_or("?"),
        s["function"].as_str().unwrap_or("?"),
        s["cron"].as_str().unwrap_or("?")
    );
    say!("  next run  {}", both(&s["next_run"]));
    let last = match s["last_state"].as_str() {
        Some(state) => format!(
            "{} — {state}, {} in {} ms{}",
            both(&s["last_run"]),
            s["last_status"].as_str().unwrap_or("?"),
            s["last_duration_ms"],
            s["last_reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        None => "-".into(),
    };
    say!("  last run  {last}");
}
