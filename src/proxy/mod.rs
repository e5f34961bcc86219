//! **The client-facing side.** The listener with its limits and shutdown ([`server`]),
//! request parsing ([`request`]), the CONNECT and forwarding handlers, header rules
//! ([`headers`]) and the access record ([`access`]).
//!
//! Each client request walks the same steps in order — parse → decide (the egress client
//! issues a [`Permit`]) → resolve, check and pin → connect → relay — and leaves at the first
//! that refuses, with exactly one status code, one `X-Egress-*` header and one metric label.
//! Imports from [`crate::egress`], [`crate::policy`], [`crate::metrics`] and [`crate::util`].

pub mod access;
mod access_line;
mod connect;
mod forward;
pub mod headers;
mod identity;
pub mod request;
pub mod secrets;
pub mod server;
pub mod sni;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::egress::revoke::{LiveKind, Peer, Registration, Registry};
use crate::egress::tunnel::RelayKind;
use crate::egress::{EgressClient, Permit};
use crate::metrics::Metrics;
use crate::policy::identity::IdentityHandle;
use crate::policy::Protocol;
use crate::util::body::HttpBody;
use crate::util::drain::Draining;
use crate::util::time::now_ms;
use access::AccessRecord;
pub use identity::FailureThrottle;
use server::ClientConn;
use sni::SniCheck;

/// Whether `response` hands its connection over to a tunnel (a CONNECT's 2xx, a 101): then
/// the connection is no longer HTTP, and nothing about keep-alive applies.
fn becomes_a_tunnel<B>(response: &Response<B>, connect: bool) -> bool {
    (connect && response.status().is_success())
        || response.status() == http::StatusCode::SWITCHING_PROTOCOLS
}

/// Shared state of the proxy listener.
pub struct Proxy {
    /// The one way out: decisions, dials and the upstream pool.
    pub egress: Arc<EgressClient>,
    pub metrics: Arc<Metrics>,
    /// A tunnel, or a forwarded response body, with no bytes for this long is cut.
    pub idle_timeout: Duration,
    /// How byte tunnels between two TCP sockets move their bytes.
    pub relay: RelayKind,
    /// Tunnels outlive the request that opened them; graceful shutdown waits for them here.
    pub tasks: TaskTracker,
    /// Cancelled when the grace period is over: open tunnels are cut.
    pub hard_stop: CancellationToken,
    /// Open tunnels and connections, re-checked after every reload.
    pub registry: Arc<Registry>,
    /// Whether a tunnel's TLS ClientHello must name an allowed host.
    pub sni: SniCheck,
    /// A ClientHello begun must arrive whole within this time.
    pub hello_timeout: Duration,
    /// This instance's `Via` entry, added to every response and forwarded request.
    pub via: headers::Via,
    /// Set at SIGTERM: answers then close their keep-alive connections.
    pub draining: Draining,
    /// The function credentials in force (`proxy.identity`, the token files).
    pub identity: IdentityHandle,
    /// Bad credentials per client address, shared by every worker.
    failures: Arc<FailureThrottle>,
    /// The secret store's API, answered here (`[secrets]`).
    secrets: Option<secrets::SecretsApi>,
}

impl Proxy {
    pub fn new(
        egress: Arc<EgressClient>,
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
        idle_timeout: Duration,
        relay: RelayKind,
    ) -> Self {
        Proxy {
            egress,
            metrics,
            idle_timeout,
            relay,
            tasks: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            registry,
            sni: SniCheck::default(),
            hello_timeout: Duration::from_secs(10),
            via: headers::Via::default(),
            draining: Draining::default(),
            identity: IdentityHandle::default(),
            failures: Arc::default(),
            secrets: None,
        }
    }

    /// Answers the secret store's API for functions (`[secrets] host`).
    pub fn with_secrets(mut self, api: Option<secrets::SecretsApi>) -> Self {
        self.secrets = api;
        self
    }

    /// Shares the identities in force, and the failure table, with the other workers.
    pub fn with_identity(
        mut self,
        identity: IdentityHandle,
        failures: Arc<FailureThrottle>,
    ) -> Self {
        self.identity = identity;
        self.failures = failures;
        self
    }

    /// Sets the `Via` pseudonym (`proxy.via_name`).
    pub fn with_via(mut self, via: headers::Via) -> Self {
        self.via = via;
        self
    }

    /// Adds this hop's `Via` to a response egressd sends the client, except the `200` that
    /// opens a byte tunnel (nothing follows it but the tunnel).
    fn with_our_via(&self, mut response: Response<HttpBody>, connect: bool) -> Response<HttpBody> {
        if !(connect && response.status().is_success()) {
            self.via.add(response.headers_mut());
        }
        response
    }

    /// Sets how tunnels check the SNI of a TLS ClientHello, and how long a hello may take.
    pub fn with_sni(mut self, sni: SniCheck, hello_timeout: Duration) -> Self {
        self.sni = sni;
        self.hello_timeout = hello_timeout;
        self
    }

    /// Entry point for every request on a client connection.
    pub async fn handle(
        self: Arc<Self>,
        mut conn: ClientConn,
        req: Request<Incoming>,
    ) -> Result<Response<HttpBody>, Infallible> {
        let connect = req.method() == Method::CONNECT;
        if let Some(api) = self.secrets.as_ref().filter(|api| api.addresses(&req)) {
            let response = self.clone().serve_secrets(api, conn, req).await;
            return Ok(self.with_our_via(response, connect));
        }
        let response = match self.caller(&req) {
            Ok(caller) => {
                conn.caller = caller;
                self.clone().route(conn, req, connect).await
            }
            Err(refusal) => self.refuse_credentials(&conn, &req, refusal).await,
        };
        let mut response = self.with_our_via(response, connect);
        if self.draining.is_draining() && !becomes_a_tunnel(&response, connect) {
            // The client reconnects for its next request, to a replica that is not leaving.
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        Ok(response)
    }

    /// A request whose sender is known: a tunnel, or a forwarded request.
    async fn route(
        self: Arc<Self>,
        conn: ClientConn,
        req: Request<Incoming>,
        connect: bool,
    ) -> Response<HttpBody> {
        if connect {
            self.clone().connect(conn, req).await
        } else {
            self.forward(conn, req).await
        }
    }

    /// Shares `draining` with the rest of the process (set at SIGTERM).
    pub fn with_draining(mut self, draining: Draining) -> Self {
        self.draining = draining;
        self
    }

    /// The access record of a request on `conn`.
    fn record<B>(&self, protocol: Protocol, conn: &ClientConn, req: &Request<B>) -> AccessRecord {
        let mut record = AccessRecord::new(
            self.metrics.clone(),
            protocol,
            conn.addr,
            req.method(),
            req.uri().clone(),
        );
        record.set_caller(&conn.caller);
        record
    }

    /// Registers a tunnel for revocation, re-checked if a reload came in since its permit.
    fn register(&self, permit: &Permit, peer: Peer, cancel: CancellationToken) -> Registration {
        let registration = self.registry.register(LiveKind::Tunnel, Some(peer), cancel);
        self.recheck_if_reloaded(permit, &registration);
        registration
    }

    /// A reload that swapped the policy after `permit` was issued scanned the registry before
    /// this entry's peer was recorded, so the entry is checked here instead.
    fn recheck_if_reloaded(&self, permit: &Permit, registration: &Registration) {
        let current = self.egress.policy();
        if !Arc::ptr_eq(&current, permit.policy()) {
            self.registry.recheck(registration, &current, now_ms(), |kind, target| {
                self.metrics.revoked(kind);
                tracing::warn!(kind = kind.as_str(), target = %target, "revoked: a reload during setup no longer allows it");
            });
        }
    }
}
