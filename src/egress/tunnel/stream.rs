//! The generic relay, for byte streams that are not TCP sockets (TLS, an upgraded HTTP
//! connection): `copy_bidirectional` with counting wrappers.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{watch, Activity, TunnelStats};

/// Relays between `client` and `upstream`, any byte streams.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    idle: Duration,
    cancel: CancellationToken,
) -> TunnelStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let activity = Arc::new(Activity::default());
    let mut client = Tracked {
        inner: client,
        activity: activity.clone(),
        start,
        up: true,
    };
    let mut upstream = Tracked {
        inner: upstream,
        activity: activity.clone(),
        start,
        up: false,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    let end = watch(copy, &activity, start, idle, &cancel).await;
    TunnelStats {
        up: activity.up.load(Ordering::Relaxed),
        down: activity.down.load(Ordering::Relaxed),
        end,
    }
}

/// Counts bytes read from one side and stamps activity.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    start: Instant,
    /// Reads from this side travel up (client side) or down (upstream side).
    up: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            let counter = if self.up {
                &self.activity.up
            } else {
                &self.activity.down
            };
            counter.fetch_add(n, Ordering::Relaxed);
            let elapsed = self.start.elapsed().as_millis() as u64;
            self.activity.last_ms.store(elapsed, Ordering::Relaxed);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::tunnel::TunnelEnd;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_and_passes_half_close() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let task = tokio::spawn(relay(
            client,
            upstream,
            Duration::from_secs(60),
            CancellationToken::new(),
        ));
        client_peer.write_all(b"hello").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got, b"hello",
            "upstream sees the data, then EOF from the half-close"
        );
        upstream_peer.write_all(b"world!").await.unwrap();
        upstream_peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        client_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world!");
        let stats = task.await.unwrap();
        assert_eq!((stats.up, stats.down, stats.end), (5, 6, TunnelEnd::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tunnels_are_cut() {
        let (client, _client_peer) = tokio::io::duplex(64);
        let (upstream, _upstream_peer) = tokio::io::duplex(64);
        let stats = relay(
            client,
            upstream,
            Duration::from_secs(5),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(stats.end, TunnelEnd::Idle);
    }
}
