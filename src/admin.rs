//! The admin listener: health, metrics and the allowlist as JSON. Loopback by default; a
//! non-loopback address requires a bearer token (checked at config load).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::allowlist::Pattern;
use crate::config::AdminToken;
use crate::connect::PolicyHandle;
use crate::metrics::Metrics;
use crate::proxy::{full, ProxyBody};

pub struct Admin {
    pub policy: PolicyHandle,
    pub metrics: Arc<Metrics>,
    /// Required on state-changing endpoints when set.
    pub token: Option<AdminToken>,
    pub loaded_at: SystemTime,
    pub generation: u64,
}

#[derive(Serialize)]
struct AllowlistView {
    generation: u64,
    loaded_at: String,
    last_error: Option<String>,
    entries: Vec<EntryView>,
}

#[derive(Serialize)]
struct EntryView {
    pattern: String,
    kind: &'static str,
    state: &'static str,
    line: Option<u32>,
}

pub async fn serve_admin(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.route(req)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Admin {
    fn route(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
            (&Method::GET, "/metrics") => {
                let mut r = text(StatusCode::OK, self.metrics.render());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            (&Method::GET, "/v1/allowlist") => self.allowlist(),
            (_, "/healthz" | "/metrics" | "/v1/allowlist") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }

    fn allowlist(&self) -> Response<ProxyBody> {
        let policy = self.policy.load();
        let list = &policy.allowlist;
        let entries = list
            .patterns()
            .iter()
            .enumerate()
            .map(|(id, pattern)| EntryView {
                pattern: pattern.to_string(),
                kind: match pattern {
                    Pattern::Exact(_) => "exact",
                    Pattern::Wildcard(_) => "wildcard",
                    Pattern::Ip(_) => "ip",
                },
                state: "active",
                line: list.line(id as u32),
            })
            .collect();
        let view = AllowlistView {
            generation: self.generation,
            loaded_at: humantime::format_rfc3339_seconds(self.loaded_at).to_string(),
            last_error: None,
            entries,
        };
        let mut r = text(
            StatusCode::OK,
            serde_json::to_string_pretty(&view).expect("serializable") + "\n",
        );
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
