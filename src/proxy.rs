//! The request path: parse the target, decide, dial, relay.
//!
//! Each client request walks the same steps in order — request parsing → policy decision →
//! resolve and pin (in [`Dialer`]) → connect → relay — and leaves at the first that refuses,
//! with exactly one status code, one `X-Egress-*` header and one metric label. CONNECT dials
//! before answering 200, so a client never sees a tunnel that goes nowhere. Forwarded requests
//! go through a pooled hyper client whose connector is the same [`Dialer`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::ext::ReasonPhrase;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activation::unix_ms;
use crate::allowlist::RuleId;
use crate::config::ProxySettings;
use crate::connect::{Dialer, EgressConnector, EgressError, PolicyHandle};
use crate::headers::{self, MaxForwards};
use crate::metrics::Metrics;
use crate::policy::{Denial, DenyReason, Policy, Protocol, Target, TargetError};
use crate::revoke::{Peer, Registration, Registry};
use crate::server::ClientConn;
use crate::tunnel::{self, TunnelEnd};

/// Errors a body may end with: hyper's, or egressd's own (an upstream body gone idle).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body type of every response egressd sends and every request it forwards.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Shared state of the proxy listener.
pub struct Proxy {
    pub policy: PolicyHandle,
    pub dialer: Arc<Dialer>,
    /// Pooled upstream connections for forwarded requests, keyed by scheme, host and port.
    /// Replaced (dropping the pool) when a reload changes what addresses may be dialled: a
    /// pooled connection was checked against the rules of the day it was dialled.
    client: ArcSwap<UpstreamClient>,
    pub metrics: Arc<Metrics>,
    /// A tunnel, or a forwarded response body, with no bytes for this long is cut.
    pub idle_timeout: Duration,
    /// How long a forwarded request waits for the upstream's response head.
    pub response_header_timeout: Duration,
    /// Tunnels outlive the request that opened them; graceful shutdown waits for them here.
    pub tasks: TaskTracker,
    /// Cancelled when the grace period is over: open tunnels are cut.
    pub hard_stop: CancellationToken,
    /// Open tunnels and connections, re-checked after every reload.
    pub registry: Arc<Registry>,
}

impl Proxy {
    pub fn new(
        policy: PolicyHandle,
        dialer: Arc<Dialer>,
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
        settings: &ProxySettings,
    ) -> Self {
        let client = ArcSwap::from_pointee(upstream_client(&dialer, &policy));
        Proxy {
            policy,
            dialer,
            client,
            metrics,
            idle_timeout: settings.idle_timeout,
            response_header_timeout: settings.response_header_timeout,
            tasks: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            registry,
        }
    }

    /// Drops pooled upstream connections; new requests dial afresh under the current policy.
    pub fn reset_upstream_pool(&self) {
        self.client
            .store(Arc::new(upstream_client(&self.dialer, &self.policy)));
    }

    /// Entry point for every request on a client connection.
    pub async fn handle(
        self: Arc<Self>,
        conn: ClientConn,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let response = if req.method() == Method::CONNECT {
            self.connect(conn, req).await
        } else {
            self.forward(conn, req).await
        };
        Ok(response)
    }

    async fn connect(
        self: Arc<Self>,
        conn: ClientConn,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let mut record = AccessRecord::new(
            self.metrics.clone(),
            Protocol::Connect,
            conn.addr,
            &Method::CONNECT,
            // A copy, not a clone: hyper's Uri shares the connection's 8 KiB read buffer,
            // which a tunnel's record would otherwise pin for the tunnel's whole life.
            req.uri().to_string().parse().unwrap_or_default(),
        );
        let target = match connect_target(req.uri()) {
            Ok(target) => target,
            Err(Refusal::BadRequest(msg)) => return record.bad_request(msg),
            Err(Refusal::Denied(denial)) => return record.denied(denial),
        };
        record.normalised = Some(target.clone());
        let policy = self.policy.load_full();
        let mode = match tunnel_mode(&policy, &target, now_ms()) {
            Ok((mode, rule)) => {
                record.rule = Some((policy.clone(), rule));
                mode
            }
            Err(denial) => return record.denied(denial),
        };
        if mode == TunnelMode::Http {
            record.allowed(StatusCode::OK);
            conn.registration.live.set_peer(&target, Protocol::Http);
            self.recheck_if_reloaded(&policy, &conn.registration);
            let proxy = self.clone();
            self.tasks
                .spawn(proxy.serve_http_tunnel(conn, target, req, record));
            return Response::new(empty());
        }
        let (upstream, addr) = match self.dialer.dial(&target, &policy).await {
            Ok(dialled) => dialled,
            Err(err) => return record.egress_error(err),
        };
        record.allowed(StatusCode::OK);
        let metrics = self.metrics.clone();
        let idle = self.idle_timeout;
        let peer = Peer {
            target,
            protocol: Protocol::Connect,
            addr: Some(addr),
        };
        let registration = self.register(&policy, "tunnel", peer, self.hard_stop.child_token());
        let cancel = registration.live.cancelled().clone();
        self.tasks.spawn(async move {
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    tracing::debug!(error = %err, "client went away before the tunnel opened");
                    return;
                }
            };
            metrics.active_tunnels.inc();
            // A plain TCP client (the usual case) gets the buffer-free socket relay.
            let stats = match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => {
                    let client = parts.io.into_inner();
                    // Boxed: the task then holds only the branch it runs, not the larger
                    // of the two relay futures.
                    Box::pin(tunnel::relay_tcp(
                        client,
                        parts.read_buf,
                        upstream,
                        idle,
                        cancel,
                    ))
                    .await
                }
                Err(upgraded) => {
                    tracing::debug!("tunnel client is not a TCP socket; using the generic relay");
                    Box::pin(tunnel::relay(
                        TokioIo::new(upgraded),
                        upstream,
                        idle,
                        cancel,
                    ))
                    .await
                }
            };
            metrics.active_tunnels.dec();
            drop(conn);
            record.tunnel_closed(stats, registration.live.was_revoked());
        });
        Response::new(empty())
    }

    /// Serves a CONNECT to an `http_ports` port as HTTP: each request inside the tunnel is
    /// forwarded like an absolute-form one (policy, header hygiene, pool, access log,
    /// revocation), so tunnelling plain HTTP — as Node's proxy agent does — gains nothing
    /// over sending it in the open.
    async fn serve_http_tunnel(
        self: Arc<Self>,
        conn: ClientConn,
        target: Target,
        req: Request<Incoming>,
        record: AccessRecord,
    ) {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(error = %err, "client went away before the tunnel opened");
                return;
            }
        };
        let revoked = conn.registration.live.cancelled().clone();
        let hard_stop = self.hard_stop.clone();
        let client = conn.addr;
        let target = Arc::new(target);
        let service = service_fn(move |req| {
            let proxy = self.clone();
            let conn = conn.clone();
            let target = target.clone();
            async move { Ok::<_, Infallible>(proxy.forward_in_tunnel(conn, &target, req).await) }
        });
        let served = http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .serve_connection(upgraded, service);
        tokio::select! {
            result = served => {
                if let Err(err) = result {
                    tracing::info!(%client, error = %err, "closed an HTTP CONNECT tunnel: the client does not speak HTTP/1.x in it");
                }
            }
            _ = revoked.cancelled() => {}
            _ = hard_stop.cancelled() => {}
        }
        drop(record);
    }

    /// One request inside an HTTP tunnel: it must name the tunnel's authority, then it takes
    /// the forwarding path.
    async fn forward_in_tunnel(
        &self,
        conn: ClientConn,
        tunnel: &Target,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            let record = AccessRecord::new(
                self.metrics.clone(),
                Protocol::Http,
                conn.addr,
                req.method(),
                req.uri().clone(),
            );
            return record.bad_request("CONNECT inside an HTTP tunnel is not supported".into());
        }
        if let Err(message) = tunnel_request_target(&req, tunnel) {
            let mut record = AccessRecord::new(
                self.metrics.clone(),
                Protocol::Http,
                conn.addr,
                req.method(),
                req.uri().clone(),
            );
            record.normalised = Some(tunnel.clone());
            return record.denied(Denial::new(DenyReason::TunnelHostMismatch, message));
        }
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        match format!("http://{}{path}", authority_text(tunnel)).parse() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(err) => {
                let record = AccessRecord::new(
                    self.metrics.clone(),
                    Protocol::Http,
                    conn.addr,
                    req.method(),
                    req.uri().clone(),
                );
                return record.bad_request(format!("cannot rebuild the request target: {err}"));
            }
        }
        self.forward(conn, req).await
    }

    /// Registers a tunnel for revocation. A reload that landed after `decided_under` was
    /// loaded did not see this tunnel, so it is checked against the current policy here.
    fn register(
        &self,
        decided_under: &Arc<Policy>,
        kind: &'static str,
        peer: Peer,
        cancel: CancellationToken,
    ) -> Registration {
        let registration = self.registry.register(kind, Some(peer), cancel);
        self.recheck_if_reloaded(decided_under, &registration);
        registration
    }

    /// A reload that swapped the policy after `decided_under` was loaded scanned the registry
    /// before this entry's peer was recorded, so the entry is checked here instead.
    fn recheck_if_reloaded(&self, decided_under: &Arc<Policy>, registration: &Registration) {
        let current = self.policy.load();
        if !Arc::ptr_eq(&current, decided_under) {
            self.registry.recheck(registration, &current, now_ms(), |kind, target| {
                self.metrics.revoked(kind);
                tracing::warn!(kind, target = %target, "revoked: a reload during setup no longer allows it");
            });
        }
    }

    async fn forward(&self, conn: ClientConn, req: Request<Incoming>) -> Response<ProxyBody> {
        let mut record = AccessRecord::new(
            self.metrics.clone(),
            Protocol::Http,
            conn.addr,
            req.method(),
            req.uri().clone(),
        );
        if headers::has_our_via(req.headers()) {
            return record.loop_detected();
        }
        let target = match forward_target(&req) {
            Ok(target) => target,
            Err(Refusal::BadRequest(msg)) => return record.bad_request(msg),
            Err(Refusal::Denied(denial)) => return record.denied(denial),
        };
        record.normalised = Some(target.clone());
        let policy = self.policy.load_full();
        match policy.decide(&target, Protocol::Http, now_ms()) {
            Ok(rule) => record.rule = Some((policy.clone(), rule)),
            Err(denial) => return record.denied(denial),
        }
        conn.registration.live.set_peer(&target, Protocol::Http);
        self.recheck_if_reloaded(&policy, &conn.registration);
        let (mut parts, body) = req.into_parts();
        match headers::max_forwards(&parts.method, &parts.headers) {
            MaxForwards::Absent => {}
            MaxForwards::Invalid => {
                return record.bad_request("Max-Forwards must be a non-negative integer".into())
            }
            MaxForwards::AnswerHere => {
                record.allowed(StatusCode::OK);
                return answer_max_forwards(&parts);
            }
            MaxForwards::Forward(n) => {
                parts
                    .headers
                    .insert(header::MAX_FORWARDS, HeaderValue::from(n));
            }
        }
        let upstream_req = match upstream_request(parts, &target, body, record.relayed.clone()) {
            Ok(req) => req,
            Err(msg) => return record.bad_request(msg),
        };
        let client = self.client.load_full();
        let response =
            tokio::time::timeout(self.response_header_timeout, client.request(upstream_req));
        match response.await {
            Ok(Ok(response)) => {
                record.allowed(response.status());
                downstream_response(response, record, self.idle_timeout)
            }
            Ok(Err(err)) => match find_egress_error(&err) {
                Some(egress) => record.egress_error_ref(egress),
                None => record.upstream_failed(&err),
            },
            Err(_) => record.upstream_timeout(self.response_header_timeout),
        }
    }
}

type UpstreamClient = Client<EgressConnector, ProxyBody>;

fn upstream_client(dialer: &Arc<Dialer>, policy: &PolicyHandle) -> UpstreamClient {
    let connector = EgressConnector::new(dialer.clone(), policy.clone());
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .set_host(false)
        .build(connector)
}

/// How a granted CONNECT is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TunnelMode {
    /// To a `connect_ports` port: opaque bytes, relayed as they come.
    Bytes,
    /// To an `http_ports` port (Node's proxy agent tunnels `http://` URLs): the requests in
    /// it are read and forwarded one by one.
    Http,
}

/// Decides a CONNECT: a `connect_ports` port gets a byte tunnel; failing that, an
/// `http_ports` port gets an HTTP tunnel under the plain-HTTP rules.
fn tunnel_mode(
    policy: &Policy,
    target: &Target,
    now_ms: u64,
) -> Result<(TunnelMode, RuleId), Denial> {
    match policy.decide(target, Protocol::Connect, now_ms) {
        Ok(rule) => Ok((TunnelMode::Bytes, rule)),
        Err(denial)
            if denial.reason == DenyReason::PortNotAllowed
                && policy.http_ports.contains(target.port) =>
        {
            let rule = policy.decide(target, Protocol::Http, now_ms)?;
            Ok((TunnelMode::Http, rule))
        }
        Err(denial) => Err(denial),
    }
}

/// A request inside an HTTP tunnel may only talk to the tunnel's authority: its `Host` (and
/// its authority, if sent in absolute form) must name it.
fn tunnel_request_target(req: &Request<Incoming>, tunnel: &Target) -> Result<(), String> {
    let uri = req.uri();
    if let Some(authority) = uri.authority() {
        let named = Target::parse_authority_or(authority.as_str(), 80).ok();
        if uri.scheme_str() != Some("http") || named.as_ref() != Some(tunnel) {
            return Err(format!(
                "the request names \"{uri}\" inside a tunnel to \"{tunnel}\"; a tunnel carries requests to its own host only"
            ));
        }
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let Some(value) = hosts.next() else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let named = parse_host_header(text);
    if hosts.next().is_some() || named.as_ref() != Some(tunnel) {
        return Err(format!(
            "the Host header names \"{text}\" inside a tunnel to \"{tunnel}\"; a tunnel carries requests to its own host only"
        ));
    }
    Ok(())
}

/// `host` or `host:port`, as written in an `http://` URL (port 80 left out).
fn authority_text(target: &Target) -> String {
    if target.port == 80 {
        target.host.to_string()
    } else {
        target.to_string()
    }
}

/// Why a request is refused before the policy sees it.
enum Refusal {
    /// The request itself is malformed: 400.
    BadRequest(String),
    /// The target is well-formed but unusable (e.g. `127.1`): 403 `invalid-target`.
    Denied(Denial),
}

fn target_refusal(err: TargetError) -> Refusal {
    match err {
        TargetError::Host(_) => Refusal::Denied(Denial::invalid_target(&err)),
        other => Refusal::BadRequest(other.to_string()),
    }
}

/// CONNECT takes authority-form `host:port` only.
fn connect_target(uri: &Uri) -> Result<Target, Refusal> {
    let authority = match (uri.scheme(), uri.authority(), uri.path_and_query()) {
        (None, Some(authority), None) => authority,
        _ => {
            return Err(Refusal::BadRequest(format!(
                "CONNECT needs authority-form host:port, not {uri:?}"
            )))
        }
    };
    Target::parse_authority(authority.as_str()).map_err(target_refusal)
}

/// Forwarded requests take absolute-form `http://` targets whose `Host` header, if any, agrees.
fn forward_target(req: &Request<Incoming>) -> Result<Target, Refusal> {
    let uri = req.uri();
    match uri.scheme_str() {
        Some("http") => {}
        None => {
            return Err(Refusal::BadRequest(
                "egressd is a forward proxy: send absolute-form requests (set HTTP_PROXY), or CONNECT for https".into(),
            ))
        }
        Some(other) => {
            return Err(Refusal::BadRequest(format!(
                "scheme \"{other}\" cannot be forwarded; only http:// requests are forwarded, use CONNECT (HTTPS_PROXY) for https"
            )))
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| Refusal::BadRequest("the request target has no host".into()))?;
    if authority.as_str().contains('@') {
        return Err(Refusal::BadRequest(
            "user information in the URL is not allowed".into(),
        ));
    }
    let target = Target::parse_authority_or(authority.as_str(), 80).map_err(target_refusal)?;
    check_host_header(req, &target)?;
    Ok(target)
}

fn check_host_header(req: &Request<Incoming>, target: &Target) -> Result<(), Refusal> {
    let mut values = req.headers().get_all(header::HOST).iter();
    let Some(value) = values.next() else {
        return Ok(());
    };
    if values.next().is_some() {
        return Err(Refusal::BadRequest("more than one Host header".into()));
    }
    let text = value
        .to_str()
        .map_err(|_| Refusal::BadRequest("the Host header is not ASCII".into()))?;
    let named = parse_host_header(text);
    if named.as_ref() != Some(target) {
        return Err(Refusal::BadRequest(format!(
            "the Host header names \"{text}\" but the request target names \"{target}\""
        )));
    }
    Ok(())
}

fn parse_host_header(text: &str) -> Option<Target> {
    Target::parse_authority_or(text, 80).ok()
}

/// Rewrites the client's request for the upstream: normalised absolute URI (the pool key;
/// hyper sends origin-form on the wire), `Host` from the target, hop-by-hop headers removed.
fn upstream_request(
    mut parts: http::request::Parts,
    target: &Target,
    body: Incoming,
    relayed: Arc<Relayed>,
) -> Result<Request<ProxyBody>, String> {
    let host_header = authority_text(target);
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = format!("http://{}{path}", target)
        .parse()
        .map_err(|e| format!("cannot rebuild the request target: {e}"))?;
    headers::strip_hop_by_hop(&mut parts.headers);
    // egressd answers `Expect: 100-continue` itself: hyper sends the 100 when the body is
    // first read, which happens only after the upstream connection is up.
    parts.headers.remove(header::EXPECT);
    parts.headers.insert(
        header::HOST,
        HeaderValue::from_str(&host_header).map_err(|e| format!("bad host: {e}"))?,
    );
    headers::add_via(&mut parts.headers);
    // egressd speaks HTTP/1.1 to the upstream whatever the client spoke (RFC 9110 §6.2).
    parts.version = http::Version::HTTP_11;
    let body = body
        .map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                relayed.up.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            frame
        })
        .map_err(BoxError::from)
        .boxed();
    Ok(Request::from_parts(parts, body))
}

/// The upstream's response as egressd sends it on: its own HTTP version (an HTTP/1.0
/// upstream's close-delimited body then goes out chunked, so a keep-alive client is not left
/// guessing), hop-by-hop headers removed, a body that logs the exchange when it ends and is
/// cut when the upstream stops sending for `idle`.
fn downstream_response(
    response: Response<Incoming>,
    record: AccessRecord,
    idle: Duration,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    parts.version = http::Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::add_via(&mut parts.headers);
    Response::from_parts(
        parts,
        LoggedBody {
            inner: body.map_err(BoxError::from).boxed(),
            record,
            idle,
            timer: None,
            armed: false,
        }
        .boxed(),
    )
}

/// Answers an OPTIONS or TRACE whose `Max-Forwards` reached zero at this hop.
fn answer_max_forwards(parts: &http::request::Parts) -> Response<ProxyBody> {
    let mut response = if parts.method == Method::TRACE {
        let mut echo = format!("{} {} {:?}\r\n", parts.method, parts.uri, parts.version);
        for (name, value) in &parts.headers {
            // Credentials are not reflected (cross-site tracing).
            if name != header::AUTHORIZATION
                && name != header::PROXY_AUTHORIZATION
                && name != header::COOKIE
            {
                echo.push_str(&format!(
                    "{}: {}\r\n",
                    name,
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
        }
        let mut r = Response::new(full(echo));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("message/http"),
        );
        r
    } else {
        let mut r = Response::new(empty());
        r.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static(
                "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, CONNECT",
            ),
        );
        r
    };
    headers::add_via(response.headers_mut());
    response
}

fn find_egress_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a EgressError> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(egress) = e.downcast_ref::<EgressError>() {
            return Some(egress);
        }
        current = e.source();
    }
    None
}

fn now_ms() -> u64 {
    unix_ms(std::time::SystemTime::now())
}

pub fn empty() -> ProxyBody {
    full(Bytes::new())
}

pub fn full(text: impl Into<Bytes>) -> ProxyBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The longest reason phrase egressd writes; a longer explanation is cut (the body keeps all
/// of it).
const MAX_REASON_PHRASE: usize = 200;

/// `code: detail` as an HTTP reason phrase: one line of printable ASCII, bounded. Clients
/// drop the body of a failed CONNECT and show only the status line, so this is where the
/// reason reaches the program.
pub fn reason_phrase(code: &str, detail: &str) -> ReasonPhrase {
    let mut text = String::with_capacity(MAX_REASON_PHRASE);
    for c in code.chars().chain(": ".chars()).chain(detail.chars()) {
        if text.len() >= MAX_REASON_PHRASE {
            text.truncate(MAX_REASON_PHRASE - 3);
            text.push_str("...");
            break;
        }
        text.push(match c {
            ' '..='~' => c,
            '\t' | '\r' | '\n' => ' ',
            _ => '?',
        });
    }
    ReasonPhrase::try_from(text.into_bytes()).expect("printable ASCII is a valid reason phrase")
}

/// A response egressd makes up itself: text body, `X-Egress-*` header, the reason in the
/// status line too.
fn text_response(
    status: StatusCode,
    header: (&'static str, &'static str),
    text: String,
) -> Response<ProxyBody> {
    let phrase = reason_phrase(header.1, &text);
    let mut response = Response::new(full(text + "\n"));
    *response.status_mut() = status;
    response.extensions_mut().insert(phrase);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header.0, HeaderValue::from_static(header.1));
    headers::add_via(headers);
    response
}

/// One access-log line and the request metrics, emitted when the exchange is over: at once for
/// refusals, at the end of the response body for forwarded requests, at tunnel close for
/// CONNECT.
struct AccessRecord {
    metrics: Arc<Metrics>,
    protocol: Protocol,
    client: SocketAddr,
    method: Method,
    /// The request target as received (a refcounted clone, formatted only when logged).
    raw_target: Uri,
    /// The target as the decision saw it (lower case, no trailing dot, explicit port), once
    /// parsed. Logged as `target`; `raw_target` keeps what the client typed.
    normalised: Option<Target>,
    start: Instant,
    decision: &'static str,
    reason: &'static str,
    /// The rule that allowed it, described only when logged.
    rule: Option<(Arc<Policy>, RuleId)>,
    status: u16,
    relayed: Arc<Relayed>,
    tunnel_end: Option<TunnelEnd>,
}

/// Bytes carried by one exchange, shared with the body wrappers that count them.
#[derive(Default)]
struct Relayed {
    up: AtomicU64,
    down: AtomicU64,
}

impl AccessRecord {
    fn new(
        metrics: Arc<Metrics>,
        protocol: Protocol,
        client: SocketAddr,
        method: &Method,
        raw_target: Uri,
    ) -> Self {
        AccessRecord {
            metrics,
            protocol,
            client,
            method: method.clone(),
            raw_target,
            normalised: None,
            start: Instant::now(),
            decision: "error",
            reason: "",
            rule: None,
            status: 0,
            relayed: Arc::default(),
            tunnel_end: None,
        }
    }

    /// Records the outcome once, counting it at once (a tunnel's log line waits for its end,
    /// its request counter does not).
    fn settle(&mut self, decision: &'static str, reason: &'static str, status: u16) {
        self.decision = decision;
        self.reason = reason;
        self.status = status;
        self.metrics.request(self.protocol, decision, reason);
    }

    fn allowed(&mut self, status: StatusCode) {
        self.settle("allowed", "", status.as_u16());
    }

    fn tunnel_closed(&mut self, stats: tunnel::TunnelStats, revoked: bool) {
        self.relayed.up.store(stats.up, Ordering::Relaxed);
        self.relayed.down.store(stats.down, Ordering::Relaxed);
        self.tunnel_end = Some(if revoked {
            TunnelEnd::Revoked
        } else {
            stats.end
        });
    }

    /// Settles a refusal and answers it with egressd's own text response, counting its body
    /// as the bytes sent down.
    fn refuse(
        mut self,
        decision: &'static str,
        status: StatusCode,
        header: (&'static str, &'static str),
        text: String,
    ) -> Response<ProxyBody> {
        self.settle(decision, header.1, status.as_u16());
        let response = text_response(status, header, text);
        if let Some(len) = response.body().size_hint().exact() {
            self.relayed.down.store(len, Ordering::Relaxed);
        }
        response
    }

    /// The request already passed through egressd: forwarding it again would loop.
    fn loop_detected(self) -> Response<ProxyBody> {
        self.refuse(
            "error",
            StatusCode::LOOP_DETECTED,
            ("x-egress-error", "loop"),
            "egressd: this request has already passed through egressd (Via); refusing to loop"
                .into(),
        )
    }

    fn bad_request(self, message: String) -> Response<ProxyBody> {
        self.refuse(
            "error",
            StatusCode::BAD_REQUEST,
            ("x-egress-error", "bad-request"),
            message,
        )
    }

    fn denied(self, denial: Denial) -> Response<ProxyBody> {
        let text = format!(
            "egressd denied {} {}: {}",
            self.method, self.raw_target, denial.message
        );
        let phrase = reason_phrase(denial.reason.code(), &denial.message);
        let mut response = self.refuse(
            "denied",
            StatusCode::FORBIDDEN,
            ("x-egress-denied", denial.reason.code()),
            text,
        );
        // The status line carries the reason and the fix, not the echo of the request.
        response.extensions_mut().insert(phrase);
        response
    }

    fn egress_error(self, err: EgressError) -> Response<ProxyBody> {
        self.egress_error_ref(&err)
    }

    fn egress_error_ref(self, err: &EgressError) -> Response<ProxyBody> {
        if let EgressError::Denied(denial) = err {
            return self.denied(denial.clone());
        }
        let kind = err.kind();
        self.metrics.upstream_error(kind);
        let status = match err {
            EgressError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        };
        let text = format!("egressd could not reach {}: {err}", self.raw_target);
        self.refuse("error", status, ("x-egress-error", kind), text)
    }

    fn upstream_failed(self, err: &hyper_util::client::legacy::Error) -> Response<ProxyBody> {
        self.metrics.upstream_error("upstream");
        let detail = std::error::Error::source(err)
            .map(|s| s.to_string())
            .unwrap_or_else(|| err.to_string());
        self.refuse(
            "error",
            StatusCode::BAD_GATEWAY,
            ("x-egress-error", "upstream"),
            format!("egressd: the upstream failed: {detail}"),
        )
    }

    fn upstream_timeout(self, waited: Duration) -> Response<ProxyBody> {
        self.metrics.upstream_error("upstream-timeout");
        let text = format!(
            "egressd: {} sent no response within {waited:?} (proxy.response_header_timeout)",
            self.raw_target
        );
        self.refuse(
            "error",
            StatusCode::GATEWAY_TIMEOUT,
            ("x-egress-error", "upstream-timeout"),
            text,
        )
    }

    /// The target as logged: the normalised form the decision used, when there was one.
    fn logged_target(&self) -> String {
        let Some(target) = &self.normalised else {
            return self.raw_target.to_string();
        };
        match self.protocol {
            Protocol::Connect => target.to_string(),
            Protocol::Http => {
                let path = self
                    .raw_target
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                format!("http://{}{path}", authority_text(target))
            }
        }
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let up = self.relayed.up.load(Ordering::Relaxed);
        let down = self.relayed.down.load(Ordering::Relaxed);
        let elapsed = self.start.elapsed();
        self.metrics.relayed(up, down);
        self.metrics
            .observe_duration(self.protocol, elapsed.as_secs_f64());
        if !tracing::enabled!(target: "egressd::access", tracing::Level::INFO) {
            return;
        }
        let rule = self
            .rule
            .as_ref()
            .map(|(policy, id)| policy.describe_rule(*id))
            .unwrap_or_default();
        tracing::info!(
            target: "egressd::access",
            client = %self.client,
            method = %self.method,
            target = %self.logged_target(),
            raw_target = %self.raw_target,
            decision = self.decision,
            reason = self.reason,
            rule,
            status = self.status,
            bytes_up = up,
            bytes_down = down,
            duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            tunnel_end = self.tunnel_end.map(TunnelEnd::as_str).unwrap_or(""),
        );
    }
}

/// The upstream stopped sending a response body for longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?}; response cut")]
struct BodyIdle(Duration);

/// A response body that counts bytes down, logs the exchange when it is done or dropped, and
/// ends with an error (a cut body, for the client) when the upstream goes quiet for `idle`.
struct LoggedBody {
    inner: ProxyBody,
    record: AccessRecord,
    idle: Duration,
    /// The idle timer, made on the first wait and re-armed (not re-made) for later ones.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether `timer` is running for the current wait.
    armed: bool,
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(polled) => {
                this.armed = false;
                if let Some(Ok(frame)) = &polled {
                    if let Some(data) = frame.data_ref() {
                        this.record
                            .relayed
                            .down
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                }
                Poll::Ready(polled)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if !this.armed {
                    timer.as_mut().reset(tokio::time::Instant::now() + idle);
                    this.armed = true;
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.armed = false;
                this.record.reason = "upstream-timeout";
                this.record.metrics.upstream_error("upstream-timeout");
                tracing::warn!(target = %this.record.logged_target(), ?idle, "upstream response body went idle; cut");
                Poll::Ready(Some(Err(Box::new(BodyIdle(idle)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_phrases_are_printable_ascii_and_bounded() {
        let cases: &[(&str, &str, &str)] = &[
            ("plain", "not-allowlisted", "add \"a.test\""),
            (
                "control characters become spaces",
                "bad-request",
                "a\r\nb\tc",
            ),
            ("non-ASCII becomes ?", "bad-request", "caf\u{e9}"),
        ];
        let expected = [
            "not-allowlisted: add \"a.test\"",
            "bad-request: a  b c",
            "bad-request: caf?",
        ];
        for ((name, code, detail), want) in cases.iter().zip(expected) {
            assert_eq!(
                reason_phrase(code, detail).as_bytes(),
                want.as_bytes(),
                "{name}"
            );
        }
        let long = reason_phrase("x", &"y".repeat(500));
        assert_eq!(long.as_bytes().len(), MAX_REASON_PHRASE);
        assert!(long.as_bytes().ends_with(b"..."));
    }
}
