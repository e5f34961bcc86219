//! CONNECT: decide, dial before answering `200` (a client never sees a tunnel that goes
//! nowhere), then relay bytes — or, for a port open to plain HTTP only, serve the tunnel as
//! HTTP.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::access::AccessRecord;
use super::request::{check_tunnel_request, connect_target, Refusal};
use super::server::ClientConn;
use super::Proxy;
use crate::egress::revoke::Peer;
use crate::egress::{http_uri, tunnel, EgressClient, Permit};
use crate::policy::{Denial, DenyReason, Protocol, Target};
use crate::util::body::{empty, HttpBody};

/// How a granted CONNECT is served.
enum Tunnel {
    /// To a `connect_ports` port: opaque bytes, relayed as they come.
    Bytes(Permit),
    /// To an `http_ports` port (Node's proxy agent tunnels `http://` URLs): the requests in
    /// it are read and forwarded one by one.
    Http(Permit),
}

/// Decides a CONNECT: a `connect_ports` port gets a byte tunnel; failing that, an
/// `http_ports` port gets an HTTP tunnel under the plain-HTTP rules. A port open to neither
/// is refused with the CONNECT rule's explanation.
fn decide_tunnel(egress: &EgressClient, target: &Target) -> Result<Tunnel, Denial> {
    match egress.decide(target, Protocol::Connect) {
        Ok(permit) => Ok(Tunnel::Bytes(permit)),
        Err(denial) if denial.reason == DenyReason::PortNotAllowed => {
            match egress.decide(target, Protocol::Http) {
                Ok(permit) => Ok(Tunnel::Http(permit)),
                Err(http) if http.reason == DenyReason::PortNotAllowed => Err(denial),
                Err(http) => Err(http),
            }
        }
        Err(denial) => Err(denial),
    }
}

impl Proxy {
    pub(super) async fn connect(
        self: Arc<Self>,
        conn: ClientConn,
        req: Request<Incoming>,
    ) -> Response<HttpBody> {
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
        record.set_target(&target);
        let permit = match decide_tunnel(&self.egress, &target) {
            Ok(Tunnel::Bytes(permit)) => permit,
            Ok(Tunnel::Http(permit)) => {
                record.set_permit(&permit);
                record.allowed(StatusCode::OK);
                conn.registration.live.set_peer(&target, Protocol::Http);
                self.recheck_if_reloaded(&permit, &conn.registration);
                let proxy = self.clone();
                self.tasks
                    .spawn(proxy.serve_http_tunnel(conn, target, req, record));
                return Response::new(empty());
            }
            Err(denial) => return record.denied(denial),
        };
        record.set_permit(&permit);
        let (upstream, addr) = match self.egress.dial(&permit).await {
            Ok(dialled) => dialled,
            Err(err) => return record.egress_error(&err),
        };
        record.allowed(StatusCode::OK);
        let metrics = self.metrics.clone();
        let idle = self.idle_timeout;
        let relay = self.relay;
        let peer = Peer {
            target,
            protocol: Protocol::Connect,
            addr: Some(addr),
        };
        let registration = self.register(&permit, peer, self.hard_stop.child_token());
        drop(permit);
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
                        relay,
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
    /// revocation), so tunnelling plain HTTP gains nothing over sending it in the open.
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
    /// the forwarding path as an absolute-form request.
    async fn forward_in_tunnel(
        &self,
        conn: ClientConn,
        tunnel: &Target,
        mut req: Request<Incoming>,
    ) -> Response<HttpBody> {
        let refusal = if req.method() == Method::CONNECT {
            Some(Refusal::BadRequest(
                "CONNECT inside an HTTP tunnel is not supported".into(),
            ))
        } else {
            check_tunnel_request(&req, tunnel).err().map(|message| {
                Refusal::Denied(Denial::new(DenyReason::TunnelHostMismatch, message))
            })
        };
        if let Some(refusal) = refusal {
            let mut record = self.record(Protocol::Http, &conn, &req);
            record.set_target(tunnel);
            return match refusal {
                Refusal::BadRequest(msg) => record.bad_request(msg),
                Refusal::Denied(denial) => record.denied(denial),
            };
        }
        *req.uri_mut() = http_uri(tunnel, req.uri());
        self.forward(conn, req).await
    }
}
