//! The egress client: decide, then send or dial — the only way out of egressd.
//!
//! [`EgressClient::decide`] runs the policy decision (allowlist, activation, port rules,
//! literal addresses) and issues a [`Permit`] for that target. [`EgressClient::send`] sends an
//! HTTP request to the permit's target — the request's own URI is rewritten to it, so a caller
//! cannot decide one target and reach another — through a pool whose connector resolves,
//! checks every address and pins the one it dials. [`EgressClient::dial`] does the same for a
//! CONNECT tunnel.
//!
//! A response head whose framing is ambiguous (both `Content-Length` and
//! `Transfer-Encoding`) or that switches protocols unasked is an upstream error, and its
//! connection is poisoned so the pool never hands it out again.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{capture_connection, Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::dial::{Dialer, EgressError};
use super::resolve::Resolve;
use super::snapshot::{Snapshot, SnapshotHandle};
use super::tls::{
    describe_tls_failure, originate, plain_tls_config, HandshakeHook, HandshakeOutcome, MtlsTable,
};
use super::{Cause, ErrorKind};
use crate::policy::allowlist::{Allowlist, Pattern, RuleId};
use crate::policy::host::Host;
use crate::policy::inject::{Injection, Part};
use crate::policy::{Denial, DenyReason, Policy, Protocol, Target};
use crate::secrets::SecretStore;
use crate::util::body::HttpBody;
use crate::util::body::RequestBodyIdle;
use crate::util::time::now_ms;

/// Settings of the egress client, fixed for the life of the process.
#[derive(Clone, Copy, Debug)]
pub struct EgressOptions {
    /// TCP connect to the upstream, all addresses of a name together.
    pub connect_timeout: Duration,
    /// A sent request's upstream must answer (head) within this time.
    pub response_header_timeout: Duration,
}

/// Permission to reach one target, issued by the policy decision and by nothing else.
#[derive(Clone, Debug)]
pub struct Permit {
    target: Target,
    protocol: Protocol,
    /// The policy that allowed it: revocation re-checks against newer ones.
    policy: Arc<Policy>,
    rule: RuleId,
}

impl Permit {
    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// `"pattern" (line N)`, for logs.
    pub fn describe_rule(&self) -> String {
        self.policy.describe_rule(self.rule)
    }
}

/// Why a sent request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Resolving, checking or connecting failed (a private address is a denial).
    #[error(transparent)]
    Egress(EgressError),
    /// The upstream broke the exchange.
    #[error("the upstream failed: {0}")]
    Upstream(String),
    /// No response head within `response_header_timeout`.
    #[error("no response within {0:?} (proxy.response_header_timeout)")]
    Timeout(Duration),
    /// The client's request body stalled (see [`crate::util::body::IdleRequestBody`]).
    #[error("the client sent no request body bytes for {0:?} (proxy.idle_timeout)")]
    ClientIdle(Duration),
    /// An `[[inject]]` rule's secret is not in the store: nothing was sent.
    #[error("the secret {key:?} that [[inject]] line {line} adds to {header} is not in the secret store; an operator creates it on the console's Secrets page")]
    SecretMissing {
        key: String,
        header: String,
        line: u32,
    },
    /// An `[[inject]]` rule's secret cannot be a header value: nothing was sent.
    #[error("the secret {key:?} that [[inject]] line {line} adds to {header} cannot be sent in a header (it holds a line break or another control character)")]
    SecretUnusable {
        key: String,
        header: String,
        line: u32,
    },
}

impl SendError {
    /// A denial (an address the policy refuses), or the `X-Egress-Error` kind.
    pub fn cause(&self) -> Cause<'_> {
        match self {
            SendError::Egress(err) => err.cause(),
            SendError::Upstream(_) => Cause::Error(ErrorKind::Upstream),
            SendError::Timeout(_) => Cause::Error(ErrorKind::UpstreamTimeout),
            SendError::ClientIdle(_) => Cause::Error(ErrorKind::ClientTimeout),
            SendError::SecretMissing { .. } => Cause::Error(ErrorKind::SecretMissing),
            SendError::SecretUnusable { .. } => Cause::Error(ErrorKind::SecretUnusable),
        }
    }
}

type Pool = Client<Connector, HttpBody>;

pub struct EgressClient {
    /// The policy and client identities in force, shared by every egress client.
    snapshot: SnapshotHandle,
    dialer: Arc<Dialer>,
    /// Pooled upstream connections, keyed by host and port. Replaced (dropping the pool) when
    /// a reload changes what addresses may be dialled: a pooled connection was checked
    /// against the rules of the day it was dialled.
    pool: ArcSwap<Pool>,
    options: EgressOptions,
    /// Told of every mTLS handshake.
    on_handshake: Option<HandshakeHook>,
    /// Where `[[inject]]` values come from.
    secrets: Option<Arc<SecretStore>>,
}

impl EgressClient {
    /// `own_addrs` are egressd's listeners, which no request may reach.
    pub fn new(
        snapshot: SnapshotHandle,
        resolver: Arc<dyn Resolve>,
        own_addrs: Vec<SocketAddr>,
        options: EgressOptions,
    ) -> Self {
        let dialer = Arc::new(Dialer::new(resolver, own_addrs, options.connect_timeout));
        let pool = ArcSwap::from_pointee(pool(&dialer, &snapshot, options, None));
        EgressClient {
            snapshot,
            dialer,
            pool,
            options,
            on_handshake: None,
            secrets: None,
        }
    }

    /// Fills `[[inject]]` headers from `store`.
    pub fn with_secrets(mut self, store: Option<Arc<SecretStore>>) -> Self {
        self.secrets = store;
        self
    }

    /// Reports every mTLS handshake to `hook` (for the metrics).
    pub fn with_handshake_hook(mut self, hook: HandshakeHook) -> Self {
        self.on_handshake = Some(hook);
        self.reset_pool();
        self
    }

    /// The `[[mtls]]` identities in force.
    pub fn identities(&self) -> Arc<MtlsTable> {
        self.snapshot.load().identities.clone()
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.snapshot.load().policy.clone()
    }

    /// The policy decision for `target`, as the current policy makes it now: the only
    /// place a [`Permit`] comes from.
    pub fn decide(&self, target: &Target, protocol: Protocol) -> Result<Permit, Denial> {
        let policy = self.policy();
        let rule = policy.decide(target, protocol, now_ms())?;
        Ok(Permit {
            target: target.clone(),
            protocol,
            policy,
            rule,
        })
    }

    /// Connects to the permit's target for a tunnel: resolve, check every address, dial the
    /// checked one. Returns the stream and the address it is connected to.
    pub async fn dial(&self, permit: &Permit) -> Result<(TcpStream, SocketAddr), EgressError> {
        self.dialer.dial(&permit.target, &permit.policy).await
    }

    /// Sends `request` to the permit's target over a pooled connection and waits for the
    /// response head. The request's URI becomes `http://target/path` — or
    /// `https://host:port/path` when an `[[mtls]]` entry covers the host, so that the
    /// connection is TLS with the entry's client certificate — and its `Host` names the
    /// target, whatever they said before.
    ///
    /// Sent by egressd itself or an anonymous caller: `[[inject]]` rules limited to some
    /// functions do not apply. See [`EgressClient::send_as`].
    pub async fn send(
        &self,
        permit: &Permit,
        request: Request<HttpBody>,
    ) -> Result<Response<Incoming>, SendError> {
        self.send_as(permit, request, None).await
    }

    /// [`EgressClient::send`] on behalf of `function`: the `[[inject]]` rules of the
    /// permit's policy that apply to it set their headers (replacing the caller's) first,
    /// or nothing is sent when a secret they name is missing.
    pub async fn send_as(
        &self,
        permit: &Permit,
        mut request: Request<HttpBody>,
        function: Option<&str>,
    ) -> Result<Response<Incoming>, SendError> {
        self.inject(permit, request.headers_mut(), function)?;
        // An https:// permit (a scheduled invocation) is TLS to its own port; a plain-HTTP one
        // is TLS only where the policy that issued the permit originates it (an [[mtls]]
        // entry), to the entry's port.
        let tls_port = match permit.protocol {
            Protocol::Connect => Some(permit.target.port),
            Protocol::Http => permit
                .policy
                .origination
                .lookup(&permit.target.host)
                .map(|rule| rule.port),
        };
        aim(&mut request, &permit.target, tls_port);
        let asked_upgrade = request.headers().contains_key(header::UPGRADE);
        let connection = capture_connection(&mut request);
        let pool = self.pool.load_full();
        let timeout = self.options.response_header_timeout;
        let response = match tokio::time::timeout(timeout, pool.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => return Err(send_error(&err, &permit.target)),
            Err(_) => return Err(SendError::Timeout(timeout)),
        };
        if let Some(why) = misframed(&response, asked_upgrade) {
            // The connection may hold the rest of a message framed the other way: it must
            // not carry another request.
            if let Some(connected) = connection.connection_metadata().as_ref() {
                connected.poison();
            }
            return Err(SendError::Upstream(why.into()));
        }
        Ok(response)
    }

    /// Sets the headers of the `[[inject]]` rules for the permit's host that apply to
    /// `function`, each replacing what the caller sent under that name.
    fn inject(
        &self,
        permit: &Permit,
        headers: &mut http::HeaderMap,
        function: Option<&str>,
    ) -> Result<(), SendError> {
        let rules = permit.policy.injections.lookup(&permit.target.host);
        for rule in rules.iter().filter(|r| r.applies_to(function)) {
            let value = render(rule, self.secrets.as_deref())?;
            let name = http::HeaderName::from_bytes(rule.header.as_bytes())
                .expect("config validation checks header names");
            headers.remove(&name);
            headers.insert(name, value);
        }
        Ok(())
    }

    /// A client for the redirect audit, which deliberately sets the allowlist aside for one
    /// hop's host — finding out what that hop would need is the point — under `policy`'s
    /// private-range, port and origination rules, with this client's resolver, own
    /// addresses and client identities. Its own pool: nothing it dials is reused for
    /// proxied traffic.
    pub fn for_audit(&self, policy: &Policy, host: &Host) -> EgressClient {
        let mut audit = policy.clone();
        // The audit learns where a URL leads; it sends no one's credentials.
        audit.injections = Default::default();
        audit.allowlist = Allowlist::new([match host {
            Host::Domain(name) => Pattern::Exact(name.clone()),
            Host::Ip(ip) => Pattern::Ip(*ip),
        }]);
        let snapshot: SnapshotHandle = Arc::new(ArcSwap::from_pointee(Snapshot {
            policy: Arc::new(audit),
            identities: self.identities(),
            origins: self.snapshot.load().origins.clone(),
        }));
        let pool = ArcSwap::from_pointee(pool(&self.dialer, &snapshot, self.options, None));
        EgressClient {
            snapshot,
            dialer: self.dialer.clone(),
            pool,
            options: self.options,
            on_handshake: None,
            secrets: None,
        }
    }

    /// Drops pooled upstream connections; new requests dial afresh under the current policy.
    pub fn reset_pool(&self) {
        self.pool.store(Arc::new(pool(
            &self.dialer,
            &self.snapshot,
            self.options,
            self.on_handshake.clone(),
        )));
    }
}

/// The header value of `rule`, its placeholders filled from `store`; marked sensitive.
fn render(rule: &Injection, store: Option<&SecretStore>) -> Result<HeaderValue, SendError> {
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(64));
    for part in rule.template.parts() {
        match part {
            Part::Text(text) => bytes.extend_from_slice(text.as_bytes()),
            Part::Secret(key) => {
                let value =
                    store
                        .and_then(|s| s.value(key))
                        .ok_or_else(|| SendError::SecretMissing {
                            key: key.clone(),
                            header: rule.header.clone(),
                            line: rule.line,
                        })?;
                bytes.extend_from_slice(value.expose());
            }
        }
    }
    let mut value = HeaderValue::from_bytes(&bytes).map_err(|_| {
        let key = rule.template.keys().next().unwrap_or_default().to_string();
        SendError::SecretUnusable {
            key,
            header: rule.header.clone(),
            line: rule.line,
        }
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// `host` or `host:port`, as written in an `http://` URL (port 80 left out).
pub fn authority_text(target: &Target) -> String {
    if target.port == 80 {
        target.host.to_string()
    } else {
        target.to_string()
    }
}

/// `http://target/path?query`, the path and query taken from `uri`.
pub fn http_uri(target: &Target, uri: &Uri) -> Uri {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    format!("http://{}{path}", authority_text(target))
        .parse()
        .expect("a validated target and a parsed path make a valid URI")
}

/// Points `request` at `target`: the URI (the pool key; hyper sends origin-form on the wire)
/// and `Host` name the target as a client would. With `tls_port`, the URI is
/// `https://host:tls_port/…`, which the connector opens with mTLS.
fn aim(request: &mut Request<HttpBody>, target: &Target, tls_port: Option<u16>) {
    *request.uri_mut() = match tls_port {
        None => http_uri(target, request.uri()),
        Some(port) => {
            let path = request
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            format!("https://{}:{port}{path}", target.host)
                .parse()
                .expect("a validated target and a parsed path make a valid URI")
        }
    };
    let host = HeaderValue::from_str(&authority_text(target))
        .expect("a validated target is a valid header value");
    request.headers_mut().insert(header::HOST, host);
}

/// Why a response head cannot be relayed, when it cannot: both `Content-Length` and
/// `Transfer-Encoding` (RFC 9112 section 6.3: which one a recipient believes is how responses
/// are smuggled; hyper would pick chunked, egressd refuses to pick), or a `101` to a request
/// that asked for no upgrade (what follows it is not HTTP).
fn misframed<B>(response: &Response<B>, asked_upgrade: bool) -> Option<&'static str> {
    let headers = response.headers();
    if headers.contains_key(header::CONTENT_LENGTH)
        && headers.contains_key(header::TRANSFER_ENCODING)
    {
        return Some(
            "its response has both Content-Length and Transfer-Encoding (RFC 9112 section 6.3)",
        );
    }
    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS && !asked_upgrade {
        return Some("it switched protocols (101) for a request that asked for no upgrade");
    }
    None
}

fn send_error(err: &hyper_util::client::legacy::Error, target: &Target) -> SendError {
    // The upstream may refuse our certificate only after the handshake (TLS 1.3): the alert
    // then surfaces in the exchange.
    if let Some(message) = describe_tls_failure(err) {
        return SendError::Egress(EgressError::Tls {
            target: target.to_string(),
            message,
        });
    }
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(egress) = e.downcast_ref::<EgressError>() {
            return SendError::Egress(egress.clone_for_report());
        }
        if let Some(RequestBodyIdle(idle)) = e.downcast_ref::<RequestBodyIdle>() {
            return SendError::ClientIdle(*idle);
        }
        current = e.source();
    }
    let detail = std::error::Error::source(err)
        .map(|s| s.to_string())
        .unwrap_or_else(|| err.to_string());
    SendError::Upstream(detail)
}

/// The most an upstream's response head may take (hyper's read buffer: its default, spelt
/// out so the limit is visible): a larger head is a `502 upstream`, its connection closed.
/// Body reads use the same buffer, so lowering it would also shrink their chunks.
const MAX_RESPONSE_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// The most header fields an upstream's response may have (hyper's default, spelt out).
const MAX_RESPONSE_HEADERS: usize = 100;

fn pool(
    dialer: &Arc<Dialer>,
    snapshot: &SnapshotHandle,
    options: EgressOptions,
    on_handshake: Option<HandshakeHook>,
) -> Pool {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .set_host(false)
        .http1_max_buf_size(MAX_RESPONSE_HEAD_BYTES)
        .http1_max_headers(MAX_RESPONSE_HEADERS)
        .build(Connector {
            dialer: dialer.clone(),
            snapshot: snapshot.clone(),
            handshake_timeout: options.connect_timeout,
            on_handshake,
            plain_tls: plain_tls_config(),
        })
}

/// The pool's connector: each new connection is dialled through [`Dialer`] under the policy
/// current at that moment. Only [`EgressClient::send`] hands it URIs: `http://` ones, and
/// `https://` ones for hosts with an `[[mtls]]` entry, which it opens with the entry's
/// client certificate.
#[derive(Clone)]
struct Connector {
    dialer: Arc<Dialer>,
    snapshot: SnapshotHandle,
    /// The TLS handshake must finish within this (`connect_timeout`).
    handshake_timeout: Duration,
    on_handshake: Option<HandshakeHook>,
    /// For `https://` without an `[[mtls]]` entry.
    plain_tls: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Upstream>;
    type Error = EgressError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialer = self.dialer.clone();
        let snapshot = self.snapshot.load_full();
        let (policy, mtls) = (snapshot.policy.clone(), snapshot.identities.clone());
        let origins = snapshot.origins.clone();
        let handshake_timeout = self.handshake_timeout;
        let on_handshake = self.on_handshake.clone();
        let plain_tls = self.plain_tls.clone();
        Box::pin(async move {
            let target = target_of(&uri)?;
            let (stream, _) = dialer.dial(&target, &policy).await?;
            if uri.scheme_str() != Some("https") {
                return Ok(TokioIo::new(Upstream::Plain(stream)));
            }
            let tls_error = |message: String| EgressError::Tls {
                target: target.to_string(),
                message,
            };
            // The entry's identity where mTLS applies; the [[inject]] rule's roots where
            // egressd opens TLS for an injected header; plain TLS for an https:// invocation.
            let entry = mtls.lookup(&target.host);
            let config = match (entry, origins.lookup(&target.host)) {
                (Some(entry), _) => entry.identity.config.clone(),
                (None, Some(origin)) => origin.config.clone(),
                (None, None) => plain_tls.clone(),
            };
            let handshake = originate(&config, &target.host, stream);
            let report = |outcome| {
                if let (Some(hook), Some(entry)) = (&on_handshake, entry) {
                    hook(&entry.spec.pattern, outcome);
                }
            };
            let tls = tokio::time::timeout(handshake_timeout, handshake)
                .await
                .map_err(|_| {
                    format!("the TLS handshake did not finish within {handshake_timeout:?}")
                })
                .and_then(|done| {
                    done.map_err(|err| {
                        describe_tls_failure(&err).unwrap_or_else(|| err.to_string())
                    })
                });
            let tls = match tls {
                Ok(tls) => tls,
                Err(message) => {
                    report(HandshakeOutcome::Failed);
                    return Err(tls_error(message));
                }
            };
            report(match tls.get_ref().1.handshake_kind() {
                Some(rustls::HandshakeKind::Resumed) => HandshakeOutcome::Resumed,
                _ => HandshakeOutcome::Full,
            });
            Ok(TokioIo::new(Upstream::Tls(Box::new(tls))))
        })
    }
}

/// A pooled upstream connection: plain TCP, or TLS that egressd originated.
enum Upstream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

fn target_of(uri: &Uri) -> Result<Target, EgressError> {
    let invalid = |msg: String| EgressError::Denied(Denial::new(DenyReason::InvalidTarget, msg));
    // A default port only for http://: another scheme reaching here without a port must not
    // quietly become a plain-HTTP connection.
    let default_port = (uri.scheme_str() == Some("http")).then_some(80);
    let (Some(host), Some(port)) = (uri.host(), uri.port_u16().or(default_port)) else {
        return Err(invalid(format!("{uri} names no host and port")));
    };
    let host = Host::parse(host).map_err(|e| invalid(e.to_string()))?;
    Ok(Target { host, port })
}
