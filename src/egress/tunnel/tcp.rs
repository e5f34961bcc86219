//! The TCP relay: two hand-polled directions moving bytes by splice(2) or through a burst
//! buffer, holding neither while the tunnel is idle.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{watch, Activity, RelayKind, TunnelEnd, TunnelStats};

/// Bytes moved per burst; taken when a burst starts, given back when it ends.
const BURST_BUFFER: usize = 64 * 1024;
/// Spare burst buffers kept per worker thread.
const SPARE_PER_THREAD: usize = 8;
/// Bytes a direction copies before a splice relay switches it to splice(2). A tunnel's
/// first flights (a TLS handshake, a small request and its answer) are a few KiB: through a
/// pipe each read is two splices and a pipe loan, where a copy is one read and one write.
/// Only a direction that carries bulk pays the pipe, and gains from it.
const COPY_BEFORE_SPLICE: u64 = 64 * 1024;

thread_local! {
    /// Buffers of finished bursts on this thread, for the next burst. Reusing a few hot
    /// buffers, instead of a fresh 64 KiB allocation per burst, keeps ten thousand tunnels
    /// from scattering freed chunks across the heap (which RSS never gives back).
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A burst buffer that returns to its thread's spares when dropped.
struct BurstBuffer(Vec<u8>);

impl BurstBuffer {
    fn take() -> Self {
        // Capacity only: nothing is zeroed.
        let spare = SPARE.with(|s| s.borrow_mut().pop());
        BurstBuffer(spare.unwrap_or_else(|| Vec::with_capacity(BURST_BUFFER)))
    }
}

impl std::ops::Deref for BurstBuffer {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for BurstBuffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for BurstBuffer {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        let _ = SPARE.try_with(|s| {
            let mut spare = s.borrow_mut();
            if spare.len() < SPARE_PER_THREAD {
                spare.push(buf);
            }
        });
    }
}

/// Relays between two TCP sockets. `early` holds bytes the client sent right behind its
/// CONNECT head (often a TLS ClientHello), already read by the HTTP parser. It is dropped
/// once forwarded: it pins hyper's whole 8 KiB read buffer.
pub async fn relay_tcp(
    client: TcpStream,
    early: bytes::Bytes,
    upstream: TcpStream,
    kind: RelayKind,
    idle: Duration,
    cancel: CancellationToken,
) -> TunnelStats {
    let start = Instant::now();
    let activity = Activity::default();
    if !early.is_empty() {
        if write_all(&upstream, &early).await.is_err() {
            return TunnelStats {
                up: 0,
                down: 0,
                end: TunnelEnd::Error,
            };
        }
        activity.up.fetch_add(early.len() as u64, Ordering::Relaxed);
    }
    drop(early);
    let mut up = Direction::new(kind);
    let mut down = Direction::new(kind);
    let both = std::future::poll_fn(|cx| {
        let up = up.poll(&client, &upstream, &activity.up, &activity, start, cx)?;
        let down = down.poll(&upstream, &client, &activity.down, &activity, start, cx)?;
        match (up, down) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok::<_, io::Error>(())),
            _ => Poll::Pending,
        }
    });
    let end = watch(both, &activity, start, idle, &cancel).await;
    TunnelStats {
        up: activity.up.load(Ordering::Relaxed),
        down: activity.down.load(Ordering::Relaxed),
        end,
    }
}

/// Bytes taken from one side and not yet written to the other.
enum InFlight {
    /// Nothing held: an idle direction holds no buffer and no pipe.
    Nothing,
    /// A borrowed pipe, and the bytes it holds (splice).
    #[cfg(target_os = "linux")]
    Pipe(crate::egress::splice::Loaned),
    /// `buf[pos..]` still to write (copy).
    Buf { buf: BurstBuffer, pos: usize },
}

/// One direction of a TCP relay, polled by hand rather than as an `async fn`: an idle
/// tunnel's state is then two of these and the watch timer, not nested futures (a
/// `readable()` future per side and a write future per direction, several KiB in all).
struct Direction {
    kind: RelayKind,
    held: InFlight,
    done: bool,
    /// Bytes moved so far, up to [`COPY_BEFORE_SPLICE`].
    moved: u64,
}

impl Direction {
    fn new(kind: RelayKind) -> Self {
        Direction {
            kind,
            held: InFlight::Nothing,
            done: false,
            moved: 0,
        }
    }

    /// Whether the next read goes into a pipe: a splice relay past its first flights.
    fn splices(&self) -> bool {
        cfg!(target_os = "linux")
            && self.kind == RelayKind::Splice
            && self.moved >= COPY_BEFORE_SPLICE
    }

    /// Moves `from` → `to` until EOF, then half-closes `to`; `Ready(Ok)` once done.
    fn poll(
        &mut self,
        from: &TcpStream,
        to: &TcpStream,
        counter: &AtomicU64,
        activity: &Activity,
        start: Instant,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.poll_flush(to, cx))?;
            if from.poll_read_ready(cx).is_pending() {
                // Nothing to read: give the (empty) pipe or buffer back while waiting.
                self.held = InFlight::Nothing;
                return Poll::Pending;
            }
            match self.read(from) {
                Ok(0) => {
                    // Pass the half-close on; the other direction keeps flowing.
                    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
                    self.held = InFlight::Nothing;
                    self.done = true;
                    return Poll::Ready(Ok(()));
                }
                Ok(n) => {
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    activity.touch(start);
                    self.moved = (self.moved + n as u64).min(COPY_BEFORE_SPLICE);
                }
                // The readiness was stale; `try_io` cleared it, so the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Reads what `from` has into the held pipe or buffer (taking one if needed), which is
    /// empty: every read is written out before the next.
    fn read(&mut self, from: &TcpStream) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        if self.splices() {
            if !matches!(self.held, InFlight::Pipe(_)) {
                self.held = InFlight::Pipe(crate::egress::splice::Loaned::take()?);
            }
            let InFlight::Pipe(pipe) = &mut self.held else {
                unreachable!("a pipe was just put in place")
            };
            return pipe.fill(from);
        }
        let mut buf = match std::mem::replace(&mut self.held, InFlight::Nothing) {
            InFlight::Buf { buf, .. } => buf,
            _ => BurstBuffer::take(),
        };
        buf.clear();
        let n = from.try_read_buf(&mut *buf);
        self.held = InFlight::Buf { buf, pos: 0 };
        n
    }

    /// Writes out what is held; `Ready(Ok)` once nothing is left to write.
    fn poll_flush(&mut self, to: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let written = match &mut self.held {
                InFlight::Nothing => return Poll::Ready(Ok(())),
                #[cfg(target_os = "linux")]
                InFlight::Pipe(pipe) if pipe.held() == 0 => return Poll::Ready(Ok(())),
                #[cfg(target_os = "linux")]
                InFlight::Pipe(pipe) => {
                    ready!(to.poll_write_ready(cx))?;
                    pipe.drain(to).map(|_| ())
                }
                InFlight::Buf { buf, pos } if *pos == buf.len() => return Poll::Ready(Ok(())),
                InFlight::Buf { buf, pos } => {
                    ready!(to.poll_write_ready(cx))?;
                    to.try_write(&buf[*pos..]).map(|m| *pos += m)
                }
            };
            match written {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // A pipe still holding bytes is closed when dropped, never pooled.
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = TcpStream::connect(listener.local_addr().unwrap());
        let (a, b) = tokio::join!(connect, listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    const KINDS: [RelayKind; 2] = [RelayKind::Splice, RelayKind::Copy];

    #[tokio::test]
    async fn tcp_relay_forwards_early_bytes_bulk_and_half_close() {
        for kind in KINDS {
            tcp_relay_forwards(kind).await;
        }
    }

    async fn tcp_relay_forwards(kind: RelayKind) {
        let (client, mut client_peer) = tcp_pair().await;
        let (upstream, mut upstream_peer) = tcp_pair().await;
        let task = tokio::spawn(async move {
            relay_tcp(
                client,
                bytes::Bytes::from_static(b"early:"),
                upstream,
                kind,
                Duration::from_secs(60),
                CancellationToken::new(),
            )
            .await
        });
        let bulk: Vec<u8> = (0..3 * BURST_BUFFER + 5).map(|i| (i % 251) as u8).collect();
        // Written while the upstream reads: more than the socket buffers hold.
        let writer = async {
            client_peer.write_all(&bulk).await.unwrap();
            client_peer.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let reader = upstream_peer.read_to_end(&mut got);
        let (_, read) = tokio::join!(writer, reader);
        read.unwrap();
        assert_eq!(&got[..6], b"early:", "{kind:?}");
        assert!(got[6..] == bulk[..], "{kind:?}: every byte, in order");
        upstream_peer.write_all(b"reply").await.unwrap();
        upstream_peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        client_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"reply");
        let stats = task.await.unwrap();
        assert_eq!(
            (stats.up, stats.down, stats.end),
            (6 + bulk.len() as u64, 5, TunnelEnd::Closed),
            "{kind:?}"
        );
    }

    #[tokio::test]
    async fn a_tunnel_cut_mid_transfer_leaks_no_byte_into_the_next() {
        // Tunnel 1: the upstream never reads, so a pipe ends up holding bytes it cannot
        // deliver; then the tunnel is cut.
        let (client, mut client_peer) = tcp_pair().await;
        let (upstream, _deaf_upstream) = tcp_pair().await;
        let cancel = CancellationToken::new();
        let first = tokio::spawn(relay_tcp(
            client,
            bytes::Bytes::new(),
            upstream,
            RelayKind::Splice,
            Duration::from_secs(60),
            cancel.clone(),
        ));
        let flood = vec![0u8; 64 * 1024];
        let stalled = async {
            loop {
                client_peer.write_all(&flood).await.unwrap();
            }
        };
        // Writes stop succeeding once every buffer on the way, the pipe's included, is full.
        let _ = tokio::time::timeout(Duration::from_millis(500), stalled).await;
        cancel.cancel();
        assert_eq!(first.await.unwrap().end, TunnelEnd::Cancelled);

        // Tunnel 2, on the same thread (so the same pipe pool): only its own bytes arrive.
        let (client, mut client_peer) = tcp_pair().await;
        let (upstream, mut upstream_peer) = tcp_pair().await;
        let second = tokio::spawn(relay_tcp(
            client,
            bytes::Bytes::new(),
            upstream,
            RelayKind::Splice,
            Duration::from_secs(60),
            CancellationToken::new(),
        ));
        // Past the copied first flight, so its last bytes go through a pooled pipe.
        let mut sent = vec![b'a'; COPY_BEFORE_SPLICE as usize];
        sent.extend_from_slice(b"end");
        let writer = async {
            client_peer.write_all(&sent).await.unwrap();
            client_peer.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let (_, read) = tokio::join!(writer, upstream_peer.read_to_end(&mut got));
        read.unwrap();
        assert!(got == sent, "only tunnel 2's bytes, {} of them", got.len());
        drop(upstream_peer);
        second.await.unwrap();
    }

    #[tokio::test]
    async fn tcp_relay_stops_on_cancel() {
        for kind in KINDS {
            let (client, _client_peer) = tcp_pair().await;
            let (upstream, _upstream_peer) = tcp_pair().await;
            let cancel = CancellationToken::new();
            cancel.cancel();
            let stats = relay_tcp(
                client,
                bytes::Bytes::new(),
                upstream,
                kind,
                Duration::from_secs(60),
                cancel,
            )
            .await;
            assert_eq!(stats.end, TunnelEnd::Cancelled, "{kind:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tcp_tunnels_are_cut() {
        for kind in KINDS {
            let (client, _client_peer) = tcp_pair().await;
            let (upstream, _upstream_peer) = tcp_pair().await;
            let stats = relay_tcp(
                client,
                bytes::Bytes::new(),
                upstream,
                kind,
                Duration::from_secs(5),
                CancellationToken::new(),
            )
            .await;
            assert_eq!(stats.end, TunnelEnd::Idle, "{kind:?}");
        }
    }
}
