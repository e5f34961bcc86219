//! The plain TCP relays: the ceiling for any proxy. They forward bytes with no parsing, so
//! for HTTP scenarios the client talks to them as if they were the origin.
//!
//! Two ways to move the bytes, each a reference for one way a proxy can do it:
//! - [`RelayKind::Copy`]: read into a user-space buffer, write it out. A direction holds a
//!   buffer only while its socket has data: it waits for readability with no buffer, borrows
//!   64 KiB, reads and writes until the socket would block, and frees it.
//! - [`RelayKind::Splice`]: splice(2) socket → pipe → socket ([`splice`]), the bytes never
//!   entering user space; a direction likewise holds a pipe only while data flows.
//!
//! So an idle relayed connection costs two sockets and a task either way, which makes the
//! relays the floor for idle-tunnel memory as well as the ceiling for throughput.

use std::io;
use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

#[cfg(target_os = "linux")]
mod splice;

const BUF_LEN: usize = 64 * 1024;

/// How a relay moves bytes between its two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayKind {
    /// read(2)/write(2) through a buffer.
    Copy,
    /// splice(2) through a pipe (Linux only).
    Splice,
}

/// Accepts on `listener` and relays each connection to `target`, until dropped.
pub async fn serve(listener: TcpListener, target: SocketAddr, kind: RelayKind) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(async move {
                    if let Ok(upstream) = TcpStream::connect(target).await {
                        let _ = relay(client, upstream, kind).await;
                    }
                });
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
}

/// Relays both ways; each direction passes EOF on as a half-close.
pub async fn relay(a: TcpStream, b: TcpStream, kind: RelayKind) -> io::Result<()> {
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    let (a_read, a_write) = a.into_split();
    let (b_read, b_write) = b.into_split();
    let (up, down) = match kind {
        RelayKind::Copy => tokio::join!(pump(a_read, b_write), pump(b_read, a_write)),
        #[cfg(target_os = "linux")]
        RelayKind::Splice => {
            tokio::join!(splice::pump(a_read, b_write), splice::pump(b_read, a_write))
        }
        #[cfg(not(target_os = "linux"))]
        RelayKind::Splice => return Err(io::Error::other("the splice relay needs Linux")),
    };
    up.and(down)
}

async fn pump(from: OwnedReadHalf, mut to: OwnedWriteHalf) -> io::Result<()> {
    loop {
        from.readable().await?;
        // Uninitialised capacity: zeroing 64 KiB per wake-up would cost more than the read.
        let mut buf = Vec::with_capacity(BUF_LEN);
        loop {
            match from.try_read_buf(&mut buf) {
                Ok(0) => return to.shutdown().await,
                Ok(_) => {
                    to.write_all(&buf).await?;
                    buf.clear();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::LOOPBACK;

    /// Sends `len` patterned bytes through a relay of `kind` to an echo origin, half-closes,
    /// and reads the echo to EOF: it ends only if each half-close is passed on.
    async fn round_trip(kind: RelayKind, len: usize) {
        let origin = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let target = origin.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = origin.accept().await.unwrap();
            let (mut read, mut write) = stream.split();
            tokio::io::copy(&mut read, &mut write).await.unwrap();
            write.shutdown().await.unwrap();
        });
        let front = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let addr = front.local_addr().unwrap();
        let relay = tokio::spawn(serve(front, target, kind));

        let (mut read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            write.write_all(&sent).await.unwrap();
            write.shutdown().await.unwrap();
        });
        let mut echoed = Vec::new();
        read.read_to_end(&mut echoed).await.unwrap();
        writer.await.unwrap();
        relay.abort();
        assert_eq!(echoed.len(), data.len());
        assert!(echoed == data, "bytes changed on the way");
    }

    #[tokio::test]
    async fn copy_relay_carries_bytes_both_ways_and_passes_half_close() {
        round_trip(RelayKind::Copy, 4 << 20).await;
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn splice_relay_carries_bytes_both_ways_and_passes_half_close() {
        round_trip(RelayKind::Splice, 4 << 20).await;
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn splice_relay_reuses_pooled_pipes_without_stale_bytes() {
        // One thread: the second and third connections borrow the first one's pipes.
        for len in [1, 300_000, 7] {
            round_trip(RelayKind::Splice, len).await;
        }
    }
}
