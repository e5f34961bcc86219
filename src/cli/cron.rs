//! `egressd cron`: the next runs of an expression, to check it before scheduling with it.

use std::process::ExitCode;

use chrono::{DateTime, Local, SecondsFormat, Utc};

use crate::schedule::cron::CronExpr;

/// Prints the next `count` runs of `expr` after `after` (default: now), one a line, in UTC
/// (RFC 3339) and in local time; or the error with examples, exit 1.
pub fn cron(expr: &str, count: usize, after: Option<&str>) -> ExitCode {
    let after = match after.map(DateTime::parse_from_rfc3339) {
        None => Utc::now(),
        Some(Ok(at)) => at.with_timezone(&Utc),
        Some(Err(err)) => {
            eprintln!("--after: {err}; write an RFC 3339 time, e.g. 2026-11-28T10:00:00Z");
            return ExitCode::FAILURE;
        }
    };
    let expr = match CronExpr::parse(expr) {
        Ok(expr) => expr,
        Err(err) => {
            eprintln!("invalid cron expression: {err}");
            return ExitCode::FAILURE;
        }
    };
    for run in expr.upcoming(after, count) {
        let local = run.with_timezone(&Local);
        say!(
            "{}  {}",
            run.to_rfc3339_opts(SecondsFormat::Secs, true),
            local.format("%Y-%m-%d %H:%M:%S %:z (local)")
        );
    }
    ExitCode::SUCCESS
}
