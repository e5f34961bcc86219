//! The secret store as functions see it: `http://secrets.egressd.internal/v1/secrets/{key}`
//! (`[secrets] host`) through the proxy, answered by egressd itself — the name is never
//! resolved or forwarded, and the admin listener does not serve it.
//!
//! Only a function may use it, identified by the credentials in its proxy URL whatever
//! `proxy.identity` says: no or wrong credentials is a `407`. A function reads (`GET`:
//! the value as the body, `ETag: "<version>"`) and replaces (`PUT`: the last writer wins;
//! `If-Match: "<version>"` refuses a lost race with `412`) what operators created; creating
//! and deleting are for operators (`403`).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::server::ClientConn;
use super::Proxy;
use crate::policy::host::Host;
use crate::policy::identity::{Caller, Refusal};
use crate::policy::{Denial, DenyReason, Protocol};
use crate::secrets::{
    InvalidSecret, Meta, SecretError, SecretStore, SecretValue, WriteError, Writer,
};
use crate::util::body::{full, HttpBody};

/// The API's path prefix.
const PREFIX: &str = "/v1/secrets/";

/// Where functions reach the store, and the store.
#[derive(Clone)]
pub struct SecretsApi {
    pub host: Host,
    pub store: Arc<SecretStore>,
}

impl SecretsApi {
    /// Whether `req` is addressed to the store: its target's host is the store's.
    pub fn addresses<B>(&self, req: &Request<B>) -> bool {
        let host = match req.uri().host() {
            Some(host) => host,
            None => return false,
        };
        // The common case, a request for somewhere else, costs one comparison.
        let name = match &self.host {
            Host::Domain(name) => name,
            Host::Ip(_) => return false,
        };
        host.trim_end_matches('.').eq_ignore_ascii_case(name)
    }
}

impl Proxy {
    /// Answers a request addressed to the secret store.
    pub(super) async fn serve_secrets(
        self: Arc<Self>,
        api: &SecretsApi,
        mut conn: ClientConn,
        req: Request<Incoming>,
    ) -> Response<HttpBody> {
        let connect = req.method() == Method::CONNECT;
        let function = match self.identity.load().identify(req.headers()) {
            Ok(function) => function,
            Err(Refusal::Missing) => {
                let denial = Denial::new(
                    DenyReason::IdentityRequired,
                    "the secret store answers functions only, whatever proxy.identity says: put the function's credentials in the proxy URL, HTTP_PROXY=http://FUNCTION:TOKEN@HOST:PORT",
                );
                return self
                    .refuse_credentials_with(&conn, &req, Refusal::Missing, denial)
                    .await;
            }
            Err(refusal) => return self.refuse_credentials(&conn, &req, refusal).await,
        };
        conn.caller = Caller::Function(function.clone());
        let protocol = if connect {
            Protocol::Connect
        } else {
            Protocol::Http
        };
        let mut record = self.record(protocol, &conn, &req);
        let plain_tunnel = connect && req.uri().port_u16() == Some(80);
        if plain_tunnel {
            // Some clients (undici's ProxyAgent) tunnel even http:// URLs: the store is
            // then served inside the tunnel, to the function the CONNECT named.
            record.allowed(StatusCode::OK);
            let (api, proxy) = (api.clone(), self.clone());
            self.tasks.spawn(async move {
                proxy.serve_secrets_tunnel(api, conn, req, record).await;
            });
            return Response::new(crate::util::body::empty());
        }
        if connect || req.uri().scheme_str() != Some("http") {
            return record.bad_request(format!(
                "the secret store speaks plain HTTP to egressd: GET http://{}/v1/secrets/KEY through HTTP_PROXY (the request never leaves egressd)",
                api.host
            ));
        }
        let response = answer(&api.store, &function, req).await;
        record.answered(response)
    }

    /// The store's API inside a CONNECT tunnel to its host's port 80, for the function
    /// whose credentials opened it; each request logged like one sent in the open.
    async fn serve_secrets_tunnel(
        self: Arc<Self>,
        api: SecretsApi,
        conn: ClientConn,
        req: Request<Incoming>,
        record: super::access::AccessRecord,
    ) {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(error = %err, "client went away before the tunnel opened");
                return;
            }
        };
        let hard_stop = self.hard_stop.clone();
        let Caller::Function(function) = conn.caller.clone() else {
            return;
        };
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (proxy, conn, api, function) =
                (self.clone(), conn.clone(), api.clone(), function.clone());
            async move {
                let record = proxy.record(Protocol::Http, &conn, &req);
                let response = record.answered(answer(&api.store, &function, req).await);
                Ok::<_, std::convert::Infallible>(proxy.with_our_via(response, false))
            }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .serve_connection(upgraded, service);
        tokio::select! {
            _ = served => {}
            _ = hard_stop.cancelled() => {}
        }
        drop(record);
    }
}

/// The API's answer to one request from `function`.
async fn answer(store: &SecretStore, function: &str, req: Request<Incoming>) -> Response<HttpBody> {
    let Some(key) = req.uri().path().strip_prefix(PREFIX) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("the secret store answers {PREFIX}KEY"),
        );
    };
    let key = percent_encoding::percent_decode_str(key)
        .decode_utf8_lossy()
        .into_owned();
    match *req.method() {
        Method::GET => read(store, &key, function).await,
        Method::PUT => {
            let expected = match if_match(&req) {
                Ok(expected) => expected,
                Err(response) => return response,
            };
            let value = match read_value(req).await {
                Ok(value) => value,
                Err(response) => return response,
            };
            let writer = Writer::Function(function.to_string());
            match store.update(&key, value, expected, writer).await {
                Ok(meta) => written(&key, &meta),
                Err(err) => store_error(err),
            }
        }
        Method::POST => error(
            StatusCode::FORBIDDEN,
            "secrets are created by operators, on the console's Secrets page; a function reads and updates them".into(),
        ),
        Method::DELETE => error(
            StatusCode::FORBIDDEN,
            "secrets are deleted by operators, on the console's Secrets page; a function reads and updates them".into(),
        ),
        _ => {
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "the secret store answers GET and PUT".into(),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, PUT"));
            response
        }
    }
}

async fn read(store: &SecretStore, key: &str, function: &str) -> Response<HttpBody> {
    match store.read(key, function).await {
        Ok(Some((value, meta))) => {
            let mut response = Response::new(full(Bytes::copy_from_slice(value.expose())));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            headers.insert(header::ETAG, etag(meta.version));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Ok(None) => store_error(SecretError::Write(WriteError::NotFound(key.to_string()))),
        Err(err) => store_error(err),
    }
}

/// `If-Match: "<version>"` (or `*`: any version), as the version it expects.
#[allow(clippy::result_large_err)]
fn if_match<B>(req: &Request<B>) -> Result<Option<u64>, Response<HttpBody>> {
    let Some(value) = req.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|t| t.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                format!(
                    "If-Match takes the ETag of a read, e.g. \"3\" with its quotes; got {text:?}"
                ),
            )
        })
}

/// The request body as a value: at most 64 KiB of UTF-8.
#[allow(clippy::result_large_err)]
async fn read_value(req: Request<Incoming>) -> Result<SecretValue, Response<HttpBody>> {
    use crate::secrets::value::MAX_VALUE_BYTES;
    let limited = Limited::new(req.into_body(), MAX_VALUE_BYTES);
    let bytes = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a secret value is at most {MAX_VALUE_BYTES} bytes (64 KiB)"),
            ))
        }
        Err(err) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {err}"),
            ))
        }
    };
    SecretValue::new(bytes.to_vec()).map_err(|err| invalid(&err))
}

fn written(key: &str, meta: &Meta) -> Response<HttpBody> {
    let body = serde_json::json!({
        "key": key,
        "version": meta.version,
        "updated_at": meta.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    let mut response = json(StatusCode::OK, &body);
    response
        .headers_mut()
        .insert(header::ETAG, etag(meta.version));
    response
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a header value")
}

fn invalid(err: &InvalidSecret) -> Response<HttpBody> {
    let status = match err {
        InvalidSecret::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        InvalidSecret::Key(_) | InvalidSecret::NotUtf8 => StatusCode::BAD_REQUEST,
    };
    error(status, err.to_string())
}

/// The status of a store error: shared by the proxy's API and the admin API's.
pub fn store_status(err: &SecretError) -> StatusCode {
    match err {
        SecretError::Invalid(InvalidSecret::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
        SecretError::Invalid(_) => StatusCode::BAD_REQUEST,
        SecretError::Write(WriteError::NotFound(_)) => StatusCode::NOT_FOUND,
        SecretError::Write(WriteError::Exists(_)) => StatusCode::CONFLICT,
        SecretError::Write(WriteError::Full(_)) => StatusCode::INSUFFICIENT_STORAGE,
        SecretError::Write(WriteError::VersionMismatch { .. }) => StatusCode::PRECONDITION_FAILED,
        SecretError::Write(WriteError::Backend(_))
        | SecretError::Backend(_)
        | SecretError::Damaged(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn store_error(err: SecretError) -> Response<HttpBody> {
    let status = store_status(&err);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(error = %err, "the secret store failed a function's request");
    }
    let mut response = error(status, err.to_string());
    if let SecretError::Write(WriteError::VersionMismatch { current, .. }) = err {
        response.headers_mut().insert(header::ETAG, etag(current));
    }
    response
}

fn error(status: StatusCode, message: String) -> Response<HttpBody> {
    json(status, &serde_json::json!({ "error": message }))
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<HttpBody> {
    let mut response = Response::new(full(body.to_string() + "\n"));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
