//! The accept loop's one step, shared by every listener: an accept error (out of file
//! descriptors, say) backs off and retries instead of ending the loop.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long an accept error pauses the loop: long enough for descriptors to be freed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The next connection, or `None` once `shutdown` is cancelled.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    what: &'static str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => return Some(pair),
                Err(err) => {
                    tracing::warn!(listener = what, error = %err, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = shutdown.cancelled() => return None,
        }
    }
}
