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
use super::sni::{read_first_flight, FlightError, SniCheck};
use super::Proxy;
use crate::egress::revoke::{Live, Peer};
use crate::egress::tunnel::TunnelEnd;
use crate::egress::{http_uri, tunnel, EgressClient, Permit};
use crate::policy::host::Host;
use crate::policy::{Denial, DenyReason, Protocol, Target};
use crate::util::body::{empty, HttpBody};
use crate::util::deadline::WriteDeadline;

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
        record.set_caller(&conn.caller);
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
        let proxy = self.clone();
        let peer = Peer {
            target: target.clone(),
            protocol: Protocol::Connect,
            addr: Some(addr),
            sni: None,
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
            let stats = match upgraded.downcast::<TokioIo<WriteDeadline<TcpStream>>>() {
                Ok(parts) => {
                    // The relay has its own idle timeout; it takes the bare socket.
                    let mut client = parts.io.into_inner().into_inner();
                    // Boxed: the check's state is freed once it is done, instead of
                    // staying in every tunnel's task for the tunnel's whole life.
                    let check = Box::pin(proxy.check_first_flight(
                        &mut client,
                        parts.read_buf,
                        &upstream,
                        &target,
                        &registration.live,
                    ));
                    let early = match check.await {
                        Ok(early) => early,
                        Err((denial, end)) => {
                            metrics.active_tunnels.dec();
                            tracing::warn!(target = %target, reason = denial.reason.code(), "tunnel closed before any byte went upstream: {}", denial.message);
                            record.first_flight_refused(&denial, end);
                            return;
                        }
                    };
                    // Boxed: the task then holds only the branch it runs, not the larger
                    // of the two relay futures.
                    Box::pin(tunnel::relay_tcp(
                        client,
                        early,
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

    /// Reads a byte tunnel's first flight and checks the SNI of its TLS ClientHello, if it
    /// starts with one; returns the bytes read, to go upstream first. On refusal, the denial
    /// and how the tunnel ended; nothing has gone upstream.
    async fn check_first_flight(
        &self,
        client: &mut TcpStream,
        early: bytes::Bytes,
        upstream: &TcpStream,
        target: &Target,
        live: &Live,
    ) -> Result<bytes::Bytes, (Denial, TunnelEnd)> {
        if self.sni == SniCheck::Off {
            return Ok(early);
        }
        let flight = read_first_flight(
            client,
            early,
            upstream,
            self.idle_timeout,
            self.hello_timeout,
            live.cancelled(),
        )
        .await;
        let unreadable = |why: String| Denial::new(DenyReason::SniUnreadable, why);
        let flight = match flight {
            Ok(flight) => flight,
            Err(FlightError::Malformed(why)) => {
                return Err((
                    unreadable(format!("the tunnel's first bytes start a TLS handshake egressd cannot read ({why}), so its host name cannot be checked")),
                    TunnelEnd::Closed,
                ))
            }
            Err(FlightError::Timeout) => {
                return Err((
                    unreadable(format!("the TLS ClientHello did not arrive whole within {:?}", self.hello_timeout)),
                    TunnelEnd::Idle,
                ))
            }
            Err(FlightError::Idle) => {
                return Err((
                    Denial::new(DenyReason::SniUnreadable, "no bytes either way".to_string()),
                    TunnelEnd::Idle,
                ))
            }
            Err(FlightError::Closed) => {
                return Err((
                    unreadable("the client closed before its ClientHello ended".into()),
                    TunnelEnd::Closed,
                ))
            }
        };
        if let Some(sni) = &flight.sni {
            self.check_sni(target, sni, live)?;
        }
        Ok(flight.early)
    }

    /// Whether `sni` may be asked for in a tunnel to `target`. An allowed other host is
    /// recorded on the tunnel's registration, so removing it later cuts the tunnel.
    fn check_sni(
        &self,
        target: &Target,
        sni: &str,
        live: &Live,
    ) -> Result<(), (Denial, TunnelEnd)> {
        let named = match Host::parse(sni) {
            Ok(host) => host,
            Err(err) => {
                return Err((
                    Denial::new(
                        DenyReason::SniUnreadable,
                        format!(
                            "the TLS ClientHello names {sni:?}, which is not a host name: {err}"
                        ),
                    ),
                    TunnelEnd::Closed,
                ))
            }
        };
        if named == target.host {
            return Ok(());
        }
        let refused = |reason, message| Err((Denial::new(reason, message), TunnelEnd::Closed));
        match self.sni {
            SniCheck::Off => Ok(()),
            SniCheck::Match => refused(
                DenyReason::SniMismatch,
                format!("the TLS ClientHello names \"{named}\" but the tunnel is to \"{}\"; proxy.connect_sni = \"match\" requires the same host", target.host),
            ),
            SniCheck::Allowlisted => {
                let asked = Target {
                    host: named.clone(),
                    port: target.port,
                };
                // Recorded before the decision: a reload between the two then sees the
                // host and cuts the tunnel, rather than missing it.
                live.set_sni(asked.clone());
                match self.egress.decide(&asked, Protocol::Connect) {
                    Ok(_) => Ok(()),
                    Err(denial) => {
                        let mut sni = Denial::new(
                            DenyReason::SniNotAllowlisted,
                            format!("the TLS ClientHello names \"{named}\", which is not allowed ({}): {}", denial.reason.code(), denial.message),
                        );
                        sni.fix = denial.fix;
                        Err((sni, TunnelEnd::Closed))
                    }
                }
            }
        }
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
            async move {
                let response = proxy.forward_in_tunnel(conn, &target, req).await;
                Ok::<_, Infallible>(proxy.with_our_via(response, false))
            }
        });
        let served = http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .serve_connection(upgraded, service)
            .with_upgrades();
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
