//! Forwarding plain HTTP: an absolute-form request (or one inside an HTTP tunnel) is parsed,
//! decided, rewritten for the upstream and sent through the egress client; the response comes
//! back with egressd's own version and framing, hop-by-hop headers removed.
//!
//! A WebSocket handshake (`Connection: upgrade` + `Upgrade: websocket`) keeps its upgrade
//! headers on the way up; if the upstream answers `101`, the two upgraded connections are
//! spliced like a CONNECT tunnel (counted, logged, revocable). No byte is tunneled before
//! that `101`. Any other upgrade (`h2c`) is stripped and the request served as HTTP/1.1.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::access::{AccessRecord, LoggedBody, Relayed};
use super::headers::{self, MaxForwards};
use super::request::{forward_target, Refusal};
use super::server::ClientConn;
use super::Proxy;
use crate::egress::revoke::Peer;
use crate::egress::{tunnel, Permit, SendError};
use crate::policy::url::{resolve_location, target_of};
use crate::policy::Protocol;
use crate::util::body::{empty, full, BoxError, HttpBody, IdleRequestBody};
use crate::util::time::now_ms;

impl Proxy {
    pub(super) async fn forward(
        &self,
        conn: ClientConn,
        req: Request<Incoming>,
    ) -> Response<HttpBody> {
        let mut record = self.record(Protocol::Http, &conn, &req);
        if self.via.is_ours(req.headers()) {
            return record.loop_detected();
        }
        let target = match forward_target(&req) {
            Ok(target) => target,
            Err(Refusal::BadRequest(msg)) => return record.bad_request(msg),
            Err(Refusal::Denied(denial)) => return record.denied(denial),
        };
        record.set_target(&target);
        let permit = match self.egress.decide(&target, Protocol::Http) {
            Ok(permit) => permit,
            Err(denial) => return record.denied(denial),
        };
        record.set_permit(&permit);
        conn.registration.live.set_peer(&target, Protocol::Http);
        self.recheck_if_reloaded(&permit, &conn.registration);
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
        // Taken before the request is rewritten, so the client's side of an upgrade stays here.
        let client_upgrade = headers::is_websocket_upgrade(&parts.headers)
            .then(|| parts.extensions.remove::<OnUpgrade>())
            .flatten();
        let upstream_req = upstream_request(
            parts,
            body,
            record.relayed(),
            &self.via,
            self.idle_timeout,
            client_upgrade.is_some(),
        );
        let function = conn.caller.function();
        match self.egress.send_as(&permit, upstream_req, function).await {
            Ok(response) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                match client_upgrade {
                    Some(client) => self.splice_upgrade(conn, permit, record, client, response),
                    // The egress client lets a 101 through only to a request that asked.
                    None => record.send_error(&SendError::Upstream(
                        "it switched protocols (101) unasked".into(),
                    )),
                }
            }
            Ok(response) => {
                record.allowed(response.status());
                if response.status().is_redirection() {
                    record.set_redirect(denied_redirect(&permit, &record, &response));
                }
                downstream_response(response, record, self.idle_timeout)
            }
            Err(err) => record.send_error(&err),
        }
    }
}

/// Rewrites the client's request for the upstream: hop-by-hop headers removed (but for a
/// WebSocket handshake's `Connection: upgrade` and `Upgrade: websocket`), `Via` added,
/// HTTP/1.1 whatever the client spoke (RFC 9110 §6.2), the body counted as it goes up. The
/// egress client points it at the permit's target.
fn upstream_request(
    mut parts: http::request::Parts,
    body: Incoming,
    relayed: Arc<Relayed>,
    via: &headers::Via,
    idle: Duration,
    websocket: bool,
) -> Request<HttpBody> {
    let trailers = headers::wants_trailers(&parts.headers);
    headers::strip_hop_by_hop(&mut parts.headers);
    if trailers {
        headers::ask_for_trailers(&mut parts.headers);
    }
    if websocket {
        headers::set_websocket_upgrade(&mut parts.headers);
    }
    // egressd answers `Expect: 100-continue` itself: hyper sends the 100 when the body is
    // first read, which happens only after the upstream connection is up.
    parts.headers.remove(header::EXPECT);
    via.add(&mut parts.headers);
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
    // A body still to come may stall: cut it after `idle` rather than hold the upstream.
    let body = if body.is_end_stream() {
        body
    } else {
        IdleRequestBody::new(body, idle).boxed()
    };
    Request::from_parts(parts, body)
}

/// The upstream's response as egressd sends it on: its own HTTP version (an HTTP/1.0
/// upstream's close-delimited body then goes out chunked, so a keep-alive client is not left
/// guessing), hop-by-hop headers removed, a body that logs the exchange when it ends and is
/// cut when the upstream stops sending for `idle`.
fn downstream_response(
    response: Response<Incoming>,
    record: AccessRecord,
    idle: Duration,
) -> Response<HttpBody> {
    let (mut parts, body) = response.into_parts();
    parts.version = http::Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers);
    let body = LoggedBody::new(body.map_err(BoxError::from).boxed(), record, idle);
    Response::from_parts(parts, body.boxed())
}

impl Proxy {
    /// The upstream accepted a WebSocket handshake: relays its `101` to the client, then
    /// splices the two upgraded connections like a CONNECT tunnel — counted in
    /// `active_tunnels`, logged when it ends, cut on revocation and at the hard stop.
    fn splice_upgrade(
        &self,
        conn: ClientConn,
        permit: Permit,
        mut record: AccessRecord,
        client: OnUpgrade,
        mut response: Response<Incoming>,
    ) -> Response<HttpBody> {
        record.allowed(StatusCode::SWITCHING_PROTOCOLS);
        let upstream = hyper::upgrade::on(&mut response);
        let peer = Peer {
            target: permit.target().clone(),
            protocol: Protocol::Http,
            addr: None,
            sni: None,
        };
        let registration = self.register(&permit, peer, self.hard_stop.child_token());
        drop(permit);
        let cancel = registration.live.cancelled().clone();
        let metrics = self.metrics.clone();
        let idle = self.idle_timeout;
        self.tasks.spawn(async move {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(both) => both,
                Err(err) => {
                    tracing::debug!(error = %err, "a WebSocket upgrade ended before it opened");
                    return;
                }
            };
            metrics.active_tunnels.inc();
            let stats =
                tunnel::relay(TokioIo::new(client), TokioIo::new(upstream), idle, cancel).await;
            metrics.active_tunnels.dec();
            drop(conn);
            record.tunnel_closed(stats, registration.live.was_revoked());
        });
        let (mut parts, _) = response.into_parts();
        parts.version = http::Version::HTTP_11;
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::set_websocket_upgrade(&mut parts.headers);
        // Via is added with every response in Proxy::handle.
        Response::from_parts(parts, empty())
    }
}

/// Answers an OPTIONS or TRACE whose `Max-Forwards` reached zero at this hop.
fn answer_max_forwards(parts: &http::request::Parts) -> Response<HttpBody> {
    let response = if parts.method == Method::TRACE {
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
    response
}

/// When `response` redirects to a URL the allowlist would deny, what the access log says of
/// it: the URL, the denial and the entry to add. The client would hit that denial next.
fn denied_redirect<B>(
    permit: &Permit,
    record: &AccessRecord,
    response: &Response<B>,
) -> Option<Box<str>> {
    let location = response.headers().get(header::LOCATION)?.to_str().ok()?;
    let next = resolve_location(&record.logged_url(), location);
    let (target, protocol) = target_of(&next).ok()?;
    let denial = permit.policy().decide(&target, protocol, now_ms()).err()?;
    record.note_denied_redirect(&denial, &next.to_string());
    Some(
        format!(
            "{next} would be denied ({}): {}",
            denial.reason.code(),
            denial.message
        )
        .into(),
    )
}
