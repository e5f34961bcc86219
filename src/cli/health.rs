//! `egressd health`: asks a running egressd's `/healthz`, for container health checks.
//!
//! Distroless and scratch images have no shell, curl or wget, so a Docker `HEALTHCHECK` (exec
//! form) runs the binary itself. Exit 0 only when `/healthz` answers 200 `ok`; exit 1 (which
//! Docker reads as unhealthy) otherwise, with the reason on stderr.

use std::process::ExitCode;
use std::time::Duration;

use http::Method;

use super::admin_api::call;

/// Checks `/healthz` on the admin listener at `admin` (`http://host:port`), giving up after
/// `timeout`.
pub fn health(admin: &str, timeout: Duration) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // The timer needs the runtime, so the timeout is built inside it.
    let answer = runtime.block_on(async {
        tokio::time::timeout(
            timeout,
            call(admin, None, Method::GET, "/healthz", String::new()),
        )
        .await
    });
    match answer {
        Ok(Ok((200, body))) if body.trim() == "ok" => {
            say!("ok");
            ExitCode::SUCCESS
        }
        Ok(Ok((status, body))) => {
            eprintln!("{admin}/healthz: HTTP {status}: {}", body.trim());
            ExitCode::FAILURE
        }
        Ok(Err(err)) => {
            eprintln!("cannot reach the admin listener at {admin}: {err}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("{admin}/healthz: no answer within {timeout:?}");
            ExitCode::FAILURE
        }
    }
}
