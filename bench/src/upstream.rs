//! The origin every path ends at: a keep-alive HTTP/1.1 server with a fixed small response,
//! and a TCP service whose first byte from the client picks what it does. The mTLS scenarios
//! have their own upstream process serving the same HTTP over TLS that requires a client
//! certificate ([`serve_tls`]).
//!
//! The upstream always closes first (after `Connection: close`, after an echo), so TIME_WAIT
//! lands on the listening side and repeated runs do not use up the client's ephemeral ports.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::http1::{head_len, Head};

/// First byte on the TCP service: send zeros until the client goes away (bulk download).
pub const SOURCE: u8 = b'd';
/// First byte: read and discard until EOF (bulk upload).
pub const SINK: u8 = b'u';
/// First byte: echo it, then close (one byte each way, for new-tunnel rate).
pub const ECHO_CLOSE: u8 = b'e';
/// First byte: echo it, then hold the connection until the client sends anything or closes
/// (idle tunnels).
pub const HOLD: u8 = b'h';

/// Length of the HTTP response body.
pub const BODY_LEN: usize = 128;

/// Where the upstream listens.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamAddrs {
    pub http: SocketAddr,
    pub tcp: SocketAddr,
}

impl UpstreamAddrs {
    /// The one-line form the upstream process prints on stdout.
    pub fn to_line(self) -> String {
        format!("http={} tcp={}", self.http, self.tcp)
    }

    pub fn from_line(line: &str) -> anyhow::Result<UpstreamAddrs> {
        let mut http = None;
        let mut tcp = None;
        for part in line.split_whitespace() {
            match part.split_once('=') {
                Some(("http", addr)) => http = Some(addr.parse()?),
                Some(("tcp", addr)) => tcp = Some(addr.parse()?),
                _ => {}
            }
        }
        match (http, tcp) {
            (Some(http), Some(tcp)) => Ok(UpstreamAddrs { http, tcp }),
            _ => anyhow::bail!("upstream printed {line:?}, expected \"http=ADDR tcp=ADDR\""),
        }
    }
}

/// Where the mTLS upstream listens: one listener per way of answering.
#[derive(Debug, Clone, Copy)]
pub struct TlsUpstreamAddrs {
    /// Keep-alive, sessions resumable.
    pub keep_alive: SocketAddr,
    /// `Connection: close` on every response, sessions resumable.
    pub close: SocketAddr,
    /// `Connection: close` on every response, no session resumption.
    pub close_full: SocketAddr,
}

impl TlsUpstreamAddrs {
    /// The one-line form the mTLS upstream process prints on stdout.
    pub fn to_line(self) -> String {
        format!(
            "keep_alive={} close={} close_full={}",
            self.keep_alive, self.close, self.close_full
        )
    }

    pub fn from_line(line: &str) -> anyhow::Result<TlsUpstreamAddrs> {
        let mut addrs = [None; 3];
        for part in line.split_whitespace() {
            let slot = match part.split_once('=') {
                Some(("keep_alive", addr)) => (0, addr),
                Some(("close", addr)) => (1, addr),
                Some(("close_full", addr)) => (2, addr),
                _ => continue,
            };
            addrs[slot.0] = Some(slot.1.parse()?);
        }
        match addrs {
            [Some(keep_alive), Some(close), Some(close_full)] => Ok(TlsUpstreamAddrs {
                keep_alive,
                close,
                close_full,
            }),
            _ => anyhow::bail!(
                "mtls upstream printed {line:?}, expected \"keep_alive=ADDR close=ADDR close_full=ADDR\""
            ),
        }
    }
}

/// Serves both listeners until the task is dropped.
pub async fn serve(http: TcpListener, tcp: TcpListener) {
    tokio::join!(
        accept_loop(http, |stream| serve_http(stream, false)),
        accept_loop(tcp, serve_tcp)
    );
}

/// Serves HTTP over TLS with `config` (which decides on client certificates and
/// resumption); with `close`, every response carries `Connection: close` and the connection
/// ends after it, so each request needs a new TLS connection.
pub async fn serve_tls(listener: TcpListener, config: Arc<ServerConfig>, close: bool) {
    let acceptor = TlsAcceptor::from(config);
    accept_loop(listener, move |stream| {
        let accept = acceptor.accept(stream);
        async move { serve_http(accept.await?, close).await }
    })
    .await
}

async fn accept_loop<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = io::Result<()>> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(handler(stream));
            }
            // Out of fds during the idle-tunnel scenario: back off rather than spin.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
}

fn response(close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {BODY_LEN}\r\n{connection}\r\n"
    )
    .into_bytes();
    out.resize(out.len() + BODY_LEN, b'x');
    out
}

/// Answers requests until the client closes; with `always_close`, only the first.
async fn serve_http<S>(mut stream: S, always_close: bool) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let keep_alive = response(false);
    let closing = response(true);
    let mut buf = Vec::with_capacity(4096);
    loop {
        // Answer every complete request already buffered (pipelining costs nothing here).
        while let Some(len) = head_len(&buf) {
            let head = Head::parse(&buf[..len]);
            let body = head.content_length.unwrap_or(0);
            if buf.len() < len + body {
                break;
            }
            buf.drain(..len + body);
            if head.close || always_close {
                stream.write_all(&closing).await?;
                return stream.shutdown().await;
            }
            stream.write_all(&keep_alive).await?;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

async fn serve_tcp(mut stream: TcpStream) -> io::Result<()> {
    let command = stream.read_u8().await?;
    match command {
        SOURCE => {
            let chunk = vec![0u8; 256 * 1024];
            loop {
                stream.write_all(&chunk).await?;
            }
        }
        SINK => {
            let mut chunk = vec![0u8; 256 * 1024];
            while stream.read(&mut chunk).await? > 0 {}
            Ok(())
        }
        ECHO_CLOSE => {
            stream.write_all(&[command]).await?;
            stream.shutdown().await
        }
        HOLD => {
            stream.write_all(&[command]).await?;
            let mut byte = [0u8; 1];
            let _ = stream.read(&mut byte).await?;
            stream.shutdown().await
        }
        _ => Ok(()),
    }
}
