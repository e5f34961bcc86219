//! Secrets on the admin API, for operators: create, list keys and metadata (never a value),
//! replace, delete. Values go in and never come out; functions read them through the proxy
//! ([`crate::proxy::secrets`]).

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use super::guard::read_json;
use super::routes::Route;
use super::views::{api_error, json};
use super::Admin;
use crate::policy::inject::Injection;
use crate::proxy::secrets::store_status;
use crate::secrets::{Meta, SecretError, SecretStore, SecretValue, Writer, MAX_SECRETS};
use crate::util::body::HttpBody;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    key: String,
    value: String,
    /// Created at provisioning: hidden in the console unless asked for.
    #[serde(default)]
    default: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    value: String,
}

/// `GET /v1/secrets`.
#[derive(Serialize)]
struct SecretsView {
    secrets: Vec<SecretView>,
    /// Where functions reach the store.
    host: String,
    limit: usize,
}

/// One secret as operators see it: never its value.
#[derive(Serialize)]
struct SecretView {
    key: String,
    created_at: String,
    updated_at: String,
    version: u64,
    last_writer: String,
    default: bool,
    /// The `[[inject]]` rules that send it: `host header (line N)`.
    injected_by: Vec<String>,
    /// Functions that use it: named by an `[[inject]]` rule, or seen reading or writing it
    /// since this replica started.
    functions: Vec<String>,
}

fn millis(time: &chrono::DateTime<chrono::Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Admin {
    #[allow(clippy::result_large_err)]
    fn secret_store(&self) -> Result<&SecretStore, Response<HttpBody>> {
        self.secrets.as_deref().ok_or_else(|| {
            api_error(
                StatusCode::NOT_FOUND,
                "egressd has no secret store: add [secrets] with key_file to the config and restart".into(),
                None,
            )
        })
    }

    fn secret_view(&self, store: &SecretStore, key: String, meta: Meta) -> SecretView {
        let usage = self.usage(store, &key);
        secret_view(key, meta, usage)
    }

    /// Who uses `key`: the `[[inject]]` rules that name it, and the functions those rules
    /// are limited to or that were seen reading or writing it.
    fn usage(&self, store: &SecretStore, key: &str) -> Usage {
        let policy = self.reloader.snapshot().0;
        let rules: Vec<&Injection> = policy.injections.using(key).collect();
        let mut functions = store.users(key);
        for rule in &rules {
            functions.extend(rule.functions.iter().flatten().cloned());
        }
        Usage {
            injected_by: rules
                .iter()
                .map(|r| format!("{} {} (line {})", r.pattern, r.header, r.line))
                .collect(),
            functions: functions.into_iter().collect(),
        }
    }

    /// `GET /v1/secrets`.
    pub(super) async fn list_secrets(&self) -> Response<HttpBody> {
        let store = match self.secret_store() {
            Ok(store) => store,
            Err(response) => return response,
        };
        match store.list().await {
            Ok(list) => json(
                StatusCode::OK,
                &SecretsView {
                    secrets: list
                        .into_iter()
                        .map(|(key, meta)| self.secret_view(store, key, meta))
                        .collect(),
                    host: self.secrets_host.clone(),
                    limit: MAX_SECRETS,
                },
            ),
            Err(err) => secret_error(err),
        }
    }

    /// `POST /v1/secrets {"key", "value", "default"}`.
    pub(super) async fn create_secret(
        &self,
        req: Request<Incoming>,
        route: &Route,
    ) -> Response<HttpBody> {
        let store = match self.secret_store() {
            Ok(store) => store,
            Err(response) => return response,
        };
        let request: CreateRequest = match read_json(
            req,
            route,
            "{\"key\": \"partner-token\", \"value\": \"...\"}",
        )
        .await
        {
            Ok(request) => request,
            Err(refusal) => return refusal,
        };
        let value = match SecretValue::from_string(request.value) {
            Ok(value) => value,
            Err(err) => return secret_error(err.into()),
        };
        match store.create(&request.key, value, request.default).await {
            Ok(meta) => json(
                StatusCode::CREATED,
                &self.secret_view(store, request.key, meta),
            ),
            Err(err) => secret_error(err),
        }
    }

    /// `PUT /v1/secrets/{key} {"value"}`: an operator replaces a value.
    pub(super) async fn update_secret(
        &self,
        req: Request<Incoming>,
        route: &Route,
        key: &str,
    ) -> Response<HttpBody> {
        let store = match self.secret_store() {
            Ok(store) => store,
            Err(response) => return response,
        };
        let request: UpdateRequest = match read_json(req, route, "{\"value\": \"...\"}").await {
            Ok(request) => request,
            Err(refusal) => return refusal,
        };
        let value = match SecretValue::from_string(request.value) {
            Ok(value) => value,
            Err(err) => return secret_error(err.into()),
        };
        let key = decode(key);
        match store.update(&key, value, None, Writer::Operator).await {
            Ok(meta) => json(StatusCode::OK, &self.secret_view(store, key, meta)),
            Err(err) => secret_error(err),
        }
    }

    /// `DELETE /v1/secrets/{key}`: gone for every function and injection at once.
    pub(super) async fn delete_secret(&self, key: &str) -> Response<HttpBody> {
        let store = match self.secret_store() {
            Ok(store) => store,
            Err(response) => return response,
        };
        let key = decode(key);
        // Read before the delete forgets who used it.
        let usage = self.usage(store, &key);
        match store.delete(&key).await {
            Ok(meta) => json(StatusCode::OK, &secret_view(key, meta, usage)),
            Err(err) => secret_error(err),
        }
    }
}

/// Who uses a secret, as the list and the delete's answer show it.
struct Usage {
    injected_by: Vec<String>,
    functions: Vec<String>,
}

fn secret_view(key: String, meta: Meta, usage: Usage) -> SecretView {
    SecretView {
        injected_by: usage.injected_by,
        functions: usage.functions,
        created_at: millis(&meta.created_at),
        updated_at: millis(&meta.updated_at),
        version: meta.version,
        last_writer: meta.last_writer,
        default: meta.default,
        key,
    }
}

fn decode(key: &str) -> String {
    percent_encoding::percent_decode_str(key)
        .decode_utf8_lossy()
        .into_owned()
}

fn secret_error(err: SecretError) -> Response<HttpBody> {
    let status = store_status(&err);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(error = %err, "the secret store failed an operator's request");
    }
    let field = match &err {
        SecretError::Invalid(crate::secrets::InvalidSecret::Key(_)) => Some("key"),
        SecretError::Invalid(_) => Some("value"),
        _ => None,
    };
    api_error(status, err.to_string(), field)
}
