//! The request path: parse the target, decide, dial, relay.
//!
//! Each client request walks the same steps in order — request parsing → policy decision →
//! resolve and pin (in [`Dialer`]) → connect → relay — and leaves at the first that refuses,
//! with exactly one status code, one `X-Egress-*` header and one metric label. CONNECT dials
//! before answering 200, so a client never sees a tunnel that goes nowhere. Forwarded requests
//! go through a pooled hyper client whose connector is the same [`Dialer`].

use std::convert::Infallible;
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
use crate::policy::{Denial, Policy, Protocol, Target, TargetError};
use crate::revoke::{Peer, Registration, Registry};
use crate::server::ClientConn;
use crate::tunnel::{self, TunnelEnd};

/// Body type of every response egressd sends and every request it forwards.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Shared state of the proxy listener.
pub struct Proxy {
    pub policy: PolicyHandle,
    pub dialer: Arc<Dialer>,
    /// Pooled upstream connections for forwarded requests, keyed by scheme, host and port.
    /// Replaced (dropping the pool) when a reload changes what addresses may be dialled: a
    /// pooled connection was checked against the rules of the day it was dialled.
    client: ArcSwap<UpstreamClient>,
    pub metrics: Arc<Metrics>,
    pub idle_timeout: Duration,
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

    async fn connect(&self, conn: ClientConn, req: Request<Incoming>) -> Response<ProxyBody> {
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
        let policy = self.policy.load_full();
        match policy.decide(&target, Protocol::Connect, now_ms()) {
            Ok(rule) => record.rule = Some((policy.clone(), rule)),
            Err(denial) => return record.denied(denial),
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
        match client.request(upstream_req).await {
            Ok(response) => {
                record.allowed(response.status());
                downstream_response(response, record)
            }
            Err(err) => match find_egress_error(&err) {
                Some(egress) => record.egress_error_ref(egress),
                None => record.upstream_failed(&err),
            },
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
    let host_header = if target.port == 80 {
        target.host.to_string()
    } else {
        target.to_string()
    };
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
    let body = body
        .map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                relayed.up.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            frame
        })
        .boxed();
    Ok(Request::from_parts(parts, body))
}

fn downstream_response(response: Response<Incoming>, record: AccessRecord) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::add_via(&mut parts.headers);
    Response::from_parts(
        parts,
        LoggedBody {
            inner: body.boxed(),
            record,
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
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

pub fn full(text: impl Into<Bytes>) -> ProxyBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

fn text_response(
    status: StatusCode,
    header: (&'static str, &'static str),
    text: String,
) -> Response<ProxyBody> {
    let mut response = Response::new(full(text + "\n"));
    *response.status_mut() = status;
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
    target: Uri,
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
        target: Uri,
    ) -> Self {
        AccessRecord {
            metrics,
            protocol,
            client,
            method: method.clone(),
            target,
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

    /// The request already passed through egressd: forwarding it again would loop.
    fn loop_detected(mut self) -> Response<ProxyBody> {
        self.settle("error", "loop", 508);
        text_response(
            StatusCode::LOOP_DETECTED,
            ("x-egress-error", "loop"),
            "egressd: this request has already passed through egressd (Via); refusing to loop"
                .into(),
        )
    }

    fn bad_request(mut self, message: String) -> Response<ProxyBody> {
        self.settle("error", "bad-request", 400);
        text_response(
            StatusCode::BAD_REQUEST,
            ("x-egress-error", "bad-request"),
            message,
        )
    }

    fn denied(mut self, denial: Denial) -> Response<ProxyBody> {
        self.settle("denied", denial.reason.code(), 403);
        let mut response = Response::new(full(format!(
            "egressd denied {} {}: {}\n",
            self.method, self.target, denial.message
        )));
        *response.status_mut() = StatusCode::FORBIDDEN;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            "x-egress-denied",
            HeaderValue::from_static(denial.reason.code()),
        );
        headers::add_via(headers);
        response
    }

    fn egress_error(self, err: EgressError) -> Response<ProxyBody> {
        self.egress_error_ref(&err)
    }

    fn egress_error_ref(mut self, err: &EgressError) -> Response<ProxyBody> {
        if let EgressError::Denied(denial) = err {
            return self.denied(denial.clone());
        }
        let kind = err.kind();
        self.metrics.upstream_error(kind);
        let status = match err {
            EgressError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        };
        self.settle("error", kind, status.as_u16());
        text_response(
            status,
            ("x-egress-error", kind),
            format!("egressd could not reach {}: {err}", self.target),
        )
    }

    fn upstream_failed(mut self, err: &hyper_util::client::legacy::Error) -> Response<ProxyBody> {
        self.metrics.upstream_error("upstream");
        self.settle("error", "upstream", 502);
        let detail = std::error::Error::source(err)
            .map(|s| s.to_string())
            .unwrap_or_else(|| err.to_string());
        text_response(
            StatusCode::BAD_GATEWAY,
            ("x-egress-error", "upstream"),
            format!("egressd: the upstream failed: {detail}"),
        )
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
            target = %self.target,
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

/// A response body that counts bytes down and logs the exchange when it is done or dropped.
struct LoggedBody {
    inner: ProxyBody,
    record: AccessRecord,
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.record
                    .relayed
                    .down
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
