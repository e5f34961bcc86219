//! Listeners, connection limits and graceful shutdown.
//!
//! The accept loop never dies from one connection: accept errors (e.g. out of file
//! descriptors) back off and retry. A semaphore caps client connections; a connection over
//! the cap gets a short `503` and is closed, so overload is visible to clients and metrics
//! instead of piling up in the kernel backlog. On shutdown the loop stops accepting, each
//! connection finishes its in-flight request, and tunnels get the grace period before they
//! are cut.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{access, Proxy};
use crate::egress::revoke::{LiveKind, Registration};
use crate::policy::identity::Caller;
use crate::util::deadline::WriteDeadline;
use crate::util::listener::accept;

/// Limits applied to client connections.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub max_head_bytes: usize,
    /// Places under `max_connections`, shared by every worker's listener.
    pub permits: Arc<Semaphore>,
}

/// The request-head limits each connection applies.
#[derive(Clone, Copy, Debug)]
struct HeadLimits {
    read_timeout: Duration,
    max_bytes: usize,
    /// A write to the client that makes no progress for this long ends the connection.
    write_timeout: Duration,
}

/// Binds `count` listeners to `addr` with `SO_REUSEPORT`, one per worker: the kernel spreads
/// new connections over them, and each worker serves its own without handing any over.
/// Port 0 picks one free port for all of them.
pub fn bind_workers(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// One accepted client connection.
#[derive(Clone)]
pub struct ClientConn {
    pub addr: SocketAddr,
    /// The connection's place under `max_connections`. A CONNECT tunnel keeps a clone, so
    /// the place is held until both the HTTP connection and its tunnel are gone.
    _slot: Arc<OwnedSemaphorePermit>,
    /// Its entry for revocation: a reload that denies its latest target closes it.
    pub registration: Arc<Registration>,
    /// Who sent the request being served (set per request: credentials come with each).
    pub caller: Caller,
}

/// Serves the proxy listener until `shutdown` is cancelled. Returns once no new connections
/// are accepted; in-flight work is tracked by `proxy.tasks`.
pub async fn serve_proxy(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    limits: ConnLimits,
    shutdown: CancellationToken,
) {
    let permits = limits.permits.clone();
    let head = HeadLimits {
        read_timeout: limits.header_read_timeout,
        max_bytes: limits.max_head_bytes,
        write_timeout: proxy.idle_timeout,
    };
    while let Some((stream, client)) = accept(&listener, &shutdown, "proxy").await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            proxy.metrics.rejected_connections.inc();
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let proxy_for_conn = proxy.clone();
        let shutdown = shutdown.clone();
        // A child of the hard stop: when the grace period is over, a keep-alive connection
        // still streaming a response is cut like a tunnel, not left to the runtime's end.
        let registration =
            proxy
                .registry
                .register(LiveKind::Connection, None, proxy.hard_stop.child_token());
        let conn = ClientConn {
            addr: client,
            _slot: Arc::new(permit),
            registration: Arc::new(registration),
            caller: Caller::Anonymous,
        };
        proxy.tasks.spawn(async move {
            proxy_for_conn.metrics.active_connections.inc();
            serve_connection(stream, conn, proxy_for_conn.clone(), head, shutdown).await;
            proxy_for_conn.metrics.active_connections.dec();
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    conn: ClientConn,
    proxy: Arc<Proxy>,
    head: HeadLimits,
    shutdown: CancellationToken,
) {
    let client = conn.addr;
    let revoked = conn.registration.live.cancelled().clone();
    let metrics = proxy.metrics.clone();
    let service = service_fn(move |req| proxy.clone().handle(conn.clone(), req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head.read_timeout)
        .max_buf_size(head.max_bytes)
        .keep_alive(true)
        // A client that stops reading is cut after the idle timeout, not held forever.
        .serve_connection(
            TokioIo::new(WriteDeadline::new(stream, head.write_timeout)),
            service,
        )
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        // Dropping the connection closes the socket, in-flight response or not.
        _ = revoked.cancelled() => return,
    };
    if let Err(err) = result {
        access::unparsable_head(&metrics, client, &err);
        tracing::debug!(%client, error = %err, "client connection ended with an error");
    }
}

/// Tells a client over the connection cap to come back later.
async fn refuse_busy(mut stream: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 too-many-connections: egressd is at proxy.max_connections, retry\r\nx-egress-error: too-many-connections\r\ncontent-type: text/plain\r\ncontent-length: 37\r\nconnection: close\r\n\r\negressd: too many connections, retry\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
    let _ = stream.shutdown().await;
}
