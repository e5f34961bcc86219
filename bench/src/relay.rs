//! The plain TCP relay: the ceiling for any proxy. It forwards bytes with no parsing, so for
//! HTTP scenarios the client talks to it as if it were the origin.
//!
//! A direction holds a buffer only while its socket has data: it waits for readability with
//! no buffer, borrows 64 KiB, reads and writes until the socket would block, and frees it.
//! So an idle relayed connection costs two sockets and a task, which makes the relay the
//! floor for idle-tunnel memory as well as the ceiling for throughput.

use std::io;
use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

const BUF_LEN: usize = 64 * 1024;

/// Accepts on `listener` and relays each connection to `target`, until dropped.
pub async fn serve(listener: TcpListener, target: SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(async move {
                    if let Ok(upstream) = TcpStream::connect(target).await {
                        let _ = relay(client, upstream).await;
                    }
                });
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
}

/// Relays both ways; each direction passes EOF on as a half-close.
pub async fn relay(a: TcpStream, b: TcpStream) -> io::Result<()> {
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    let (a_read, a_write) = a.into_split();
    let (b_read, b_write) = b.into_split();
    let (up, down) = tokio::join!(pump(a_read, b_write), pump(b_read, a_write));
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
