//! Load clients: raw HTTP/1.1 and tunnel protocol over tokio `TcpStream`s (or, for the mTLS
//! reference path, TLS streams a caller's dial function opens), one task per connection on
//! the harness's single-threaded runtime, so the client costs one core at most.
//!
//! Every run has a [`Window`]: workers start at once, but only operations that finish inside
//! the measured part of the window count (the warm-up fills pools and caches). Workers stop
//! starting operations when the window ends; a run that hangs past a grace period is cut.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::http1::{head_len, Head};
use crate::upstream::{UpstreamAddrs, ECHO_CLOSE, HOLD, SOURCE};

/// How long a run may overrun its window before its workers are cut.
const GRACE: Duration = Duration::from_secs(5);
/// How long one idle tunnel may take to open; a proxy out of descriptors leaves connections
/// unaccepted in its backlog rather than refusing them.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);

/// How the load client reaches the upstream on one path.
#[derive(Debug, Clone)]
pub enum Route {
    /// Straight to the upstream.
    Direct,
    /// Through the harness relay: one relay port per upstream port.
    Relay { http: SocketAddr, tcp: SocketAddr },
    /// Through a forward proxy, naming the upstream as `host` (a name the proxy maps to
    /// 127.0.0.1, or 127.0.0.1 itself).
    Proxy { addr: SocketAddr, host: String },
}

impl Route {
    pub fn http_target(&self, upstream: UpstreamAddrs) -> HttpTarget {
        let port = upstream.http.port();
        let (addr, request_target, host) = match self {
            Route::Direct => (upstream.http, "/".to_string(), crate::UPSTREAM_HOST),
            Route::Relay { http, .. } => (*http, "/".to_string(), crate::UPSTREAM_HOST),
            Route::Proxy { addr, host } => (*addr, format!("http://{host}:{port}/"), host.as_str()),
        };
        let request = |extra: &str| {
            format!("GET {request_target} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n")
                .into_bytes()
        };
        HttpTarget {
            addr,
            keep_alive: request(""),
            close: request("Connection: close\r\n"),
        }
    }

    pub fn tunnel_target(&self, upstream: UpstreamAddrs) -> TunnelTarget {
        match self {
            Route::Direct => TunnelTarget {
                addr: upstream.tcp,
                connect: None,
            },
            Route::Relay { tcp, .. } => TunnelTarget {
                addr: *tcp,
                connect: None,
            },
            Route::Proxy { addr, host } => {
                let authority = format!("{host}:{}", upstream.tcp.port());
                TunnelTarget {
                    addr: *addr,
                    connect: Some(
                        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n")
                            .into_bytes(),
                    ),
                }
            }
        }
    }
}

/// Where to send HTTP requests and the bytes of each.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub addr: SocketAddr,
    pub keep_alive: Vec<u8>,
    /// The same request with `Connection: close`.
    pub close: Vec<u8>,
}

/// Where to open byte streams to the upstream's TCP service.
#[derive(Debug, Clone)]
pub struct TunnelTarget {
    pub addr: SocketAddr,
    /// The CONNECT request to send first, through a proxy.
    pub connect: Option<Vec<u8>>,
}

/// The measured part of a run.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub from: Instant,
    pub until: Instant,
}

impl Window {
    pub fn after_warmup(warmup: Duration, measure: Duration) -> Window {
        let from = Instant::now() + warmup;
        Window {
            from,
            until: from + measure,
        }
    }

    pub fn seconds(&self) -> f64 {
        (self.until - self.from).as_secs_f64()
    }

    /// Whether an operation finishing `at` counts.
    pub fn counts(&self, at: Instant) -> bool {
        at >= self.from && at < self.until
    }

    fn open(&self) -> bool {
        Instant::now() < self.until
    }
}

/// Drives a smoke check through ever longer windows until it sees an operation or an error:
/// on a busy machine (CI beside a build) a first TLS handshake of a debug binary can take
/// longer than the 100 ms that suffice on a quiet one, and nothing done is no failure.
pub async fn smoke<F, Fut>(mut drive: F) -> Tally
where
    F: FnMut(Window) -> Fut,
    Fut: std::future::Future<Output = Tally>,
{
    let mut tally = Tally::default();
    for measure in [100, 1000, 5000].map(Duration::from_millis) {
        tally = drive(Window::after_warmup(Duration::ZERO, measure)).await;
        if tally.ops > 0 || tally.errors > 0 {
            break;
        }
    }
    tally
}

/// What a run's workers did inside the window.
#[derive(Debug, Default)]
pub struct Tally {
    /// Completed requests or tunnels.
    pub ops: u64,
    /// Payload bytes received (bulk runs).
    pub bytes: u64,
    pub errors: u64,
    /// Client connections opened (more than the worker count means the peer closed some).
    pub connects: u64,
    /// Duration of each counted operation.
    pub latencies_ns: Vec<u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ops += other.ops;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.connects += other.connects;
        self.latencies_ns.extend(other.latencies_ns);
    }

    fn finished(&mut self, window: &Window, started: Instant) {
        let now = Instant::now();
        if window.counts(now) {
            self.ops += 1;
            self.latencies_ns.push((now - started).as_nanos() as u64);
        }
    }

    async fn failed(&mut self, window: &Window) {
        if window.counts(Instant::now()) {
            self.errors += 1;
        }
        // A refusing peer must not turn the worker into a busy loop.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs `workers` copies of `work` and adds up their tallies; workers still running past the
/// grace period are cut and counted as errors.
async fn run_workers<F, Fut>(workers: usize, window: Window, work: F) -> Tally
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Tally> + Send + 'static,
{
    let mut set = JoinSet::new();
    for _ in 0..workers {
        set.spawn(work());
    }
    let mut total = Tally::default();
    let deadline = window.until + GRACE;
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(tally))) => total.merge(tally),
            Ok(Some(Err(_))) => total.errors += 1,
            Ok(None) => break,
            Err(_) => {
                total.errors += set.len() as u64;
                set.abort_all();
                break;
            }
        }
    }
    total
}

/// Opens a TCP connection with Nagle off, as every load client does.
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads one response into `buf`; the whole message, nothing after it. A status other than
/// 200 is an error.
async fn read_response<S>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<Head>
where
    S: AsyncRead + Unpin,
{
    let head = read_message(stream, buf).await?;
    if head.status != 200 {
        return Err(protocol_error(format!("status {}", head.status)));
    }
    Ok(head)
}

/// Reads one response of any status into `buf`; the whole message, nothing after it.
pub(crate) async fn read_message<S>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<Head>
where
    S: AsyncRead + Unpin,
{
    buf.clear();
    let head_end = loop {
        if let Some(len) = head_len(buf) {
            break len;
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    };
    let mut head = Head::parse(&buf[..head_end]);
    if head.chunked {
        return Err(protocol_error("chunked response"));
    }
    match head.content_length {
        Some(len) => {
            while buf.len() < head_end + len {
                if stream.read_buf(buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            if buf.len() > head_end + len {
                return Err(protocol_error("bytes after the response"));
            }
        }
        None => {
            while stream.read_buf(buf).await? > 0 {}
            head.close = true;
        }
    }
    Ok(head)
}

/// Waits for the peer's close, so that it, not the client, holds the TIME_WAIT.
async fn read_to_eof<S>(stream: &mut S) -> io::Result<()>
where
    S: AsyncRead + Unpin,
{
    let mut scratch = [0u8; 64];
    while stream.read(&mut scratch).await? > 0 {}
    Ok(())
}

/// `conns` persistent connections, each sending one request at a time. A connection the peer
/// closes is reopened (counted in [`Tally::connects`]); like any HTTP client, a request that
/// finds a reused connection already closed is retried once on a new one, its latency
/// counted from the first attempt.
pub async fn http_keep_alive(target: Arc<HttpTarget>, conns: usize, window: Window) -> Tally {
    let addr = target.addr;
    keep_alive_over(target, conns, window, move || connect(addr)).await
}

/// [`http_keep_alive`] over connections `dial` opens instead of plain TCP to `target.addr`
/// (TLS, for instance). A connection the peer closes after every response makes each request
/// pay for a new one.
pub async fn keep_alive_over<D, F, S>(
    target: Arc<HttpTarget>,
    conns: usize,
    window: Window,
    dial: D,
) -> Tally
where
    D: Fn() -> F + Clone + Send + 'static,
    F: std::future::Future<Output = io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    run_workers(conns, window, || {
        let (target, dial) = (target.clone(), dial.clone());
        async move {
            let mut tally = Tally::default();
            let mut buf = Vec::with_capacity(4096);
            // The connection, and whether it has already carried a response.
            let mut conn: Option<(S, bool)> = None;
            let mut first_attempt: Option<Instant> = None;
            while window.open() {
                let (stream, reused) = match conn.as_mut() {
                    Some((stream, reused)) => (stream, *reused),
                    None => match dial().await {
                        Ok(stream) => {
                            tally.connects += 1;
                            let (stream, _) = conn.insert((stream, false));
                            (stream, false)
                        }
                        Err(_) => {
                            tally.failed(&window).await;
                            continue;
                        }
                    },
                };
                let started = *first_attempt.get_or_insert_with(Instant::now);
                buf.clear();
                let result = match stream.write_all(&target.keep_alive).await {
                    Ok(()) => read_response(stream, &mut buf).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(head) => {
                        tally.finished(&window, started);
                        first_attempt = None;
                        conn = if head.close {
                            None
                        } else {
                            conn.map(|(stream, _)| (stream, true))
                        };
                    }
                    // The peer closed the idle connection before reading our request.
                    Err(_) if reused && buf.is_empty() => conn = None,
                    Err(_) => {
                        conn = None;
                        first_attempt = None;
                        tally.failed(&window).await;
                    }
                }
            }
            tally
        }
    })
    .await
}

/// `conns` workers, each opening a connection per request (`Connection: close`).
pub async fn http_close(target: Arc<HttpTarget>, conns: usize, window: Window) -> Tally {
    repeat(conns, window, move || {
        let target = target.clone();
        async move {
            let mut stream = connect(target.addr).await?;
            stream.write_all(&target.close).await?;
            read_response(&mut stream, &mut Vec::with_capacity(512)).await?;
            read_to_eof(&mut stream).await
        }
    })
    .await
}

/// `workers` workers, each calling `op` (one connection per call) until the window closes.
async fn repeat<F, Fut>(workers: usize, window: Window, op: F) -> Tally
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = io::Result<()>> + Send,
{
    run_workers(workers, window, || {
        let op = op.clone();
        async move {
            let mut tally = Tally::default();
            while window.open() {
                let started = Instant::now();
                let result = op().await;
                tally.connects += 1;
                match result {
                    Ok(()) => tally.finished(&window, started),
                    Err(_) => tally.failed(&window).await,
                }
            }
            tally
        }
    })
    .await
}

/// Opens a byte stream to the upstream's TCP service (through CONNECT when proxied) and sends
/// `command`; for commands that answer, waits for the echoed byte.
pub async fn open_tunnel(target: &TunnelTarget, command: u8) -> io::Result<TcpStream> {
    let mut stream = connect(target.addr).await?;
    if let Some(request) = &target.connect {
        stream.write_all(request).await?;
        let mut buf = Vec::with_capacity(256);
        let head_end = loop {
            if let Some(len) = head_len(&buf) {
                break len;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let head = Head::parse(&buf[..head_end]);
        if head.status != 200 || buf.len() != head_end {
            return Err(protocol_error(format!("CONNECT answered {}", head.status)));
        }
    }
    stream.write_all(&[command]).await?;
    if command != SOURCE {
        let echoed = stream.read_u8().await?;
        if echoed != command {
            return Err(protocol_error("wrong echo"));
        }
    }
    Ok(stream)
}

/// `streams` tunnels, each downloading from the upstream's byte source as fast as it can.
pub async fn bulk_download(target: Arc<TunnelTarget>, streams: usize, window: Window) -> Tally {
    run_workers(streams, window, || {
        let target = target.clone();
        async move {
            let mut tally = Tally::default();
            let mut stream = match open_tunnel(&target, SOURCE).await {
                Ok(stream) => stream,
                Err(_) => {
                    tally.errors += 1;
                    return tally;
                }
            };
            tally.connects += 1;
            let mut buf = vec![0u8; 256 * 1024];
            while window.open() {
                match stream.read(&mut buf).await {
                    Ok(n) if n > 0 => {
                        if window.counts(Instant::now()) {
                            tally.bytes += n as u64;
                        }
                    }
                    _ => {
                        tally.errors += 1;
                        break;
                    }
                }
            }
            tally
        }
    })
    .await
}

/// `concurrency` workers, each opening a tunnel, exchanging one byte each way, and closing.
pub async fn new_tunnels(target: Arc<TunnelTarget>, concurrency: usize, window: Window) -> Tally {
    repeat(concurrency, window, move || {
        let target = target.clone();
        async move {
            let mut stream = open_tunnel(&target, ECHO_CLOSE).await?;
            read_to_eof(&mut stream).await
        }
    })
    .await
}

/// Opens up to `count` idle tunnels (each has carried one byte each way), `concurrency` at a
/// time, giving up at `deadline` or when the path keeps refusing. Returns the open ones and
/// the number of failures.
pub async fn open_idle(
    target: Arc<TunnelTarget>,
    count: usize,
    concurrency: usize,
    deadline: Instant,
) -> (Vec<TcpStream>, u64) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        let (target, next) = (target.clone(), next.clone());
        set.spawn(async move {
            let mut held = Vec::new();
            let mut failures = 0u64;
            let mut failures_in_a_row = 0;
            while next.fetch_add(1, Ordering::Relaxed) < count && Instant::now() < deadline {
                let give_up = deadline.min(Instant::now() + OPEN_TIMEOUT);
                match tokio::time::timeout_at(give_up, open_tunnel(&target, HOLD)).await {
                    Ok(Ok(stream)) => {
                        held.push(stream);
                        failures_in_a_row = 0;
                    }
                    _ => {
                        failures += 1;
                        failures_in_a_row += 1;
                        if failures_in_a_row >= 3 {
                            break;
                        }
                    }
                }
            }
            (held, failures)
        });
    }
    let mut all = Vec::with_capacity(count);
    let mut failures = 0;
    while let Some(joined) = set.join_next().await {
        if let Ok((held, failed)) = joined {
            all.extend(held);
            failures += failed;
        }
    }
    (all, failures)
}

/// Releases idle tunnels: each asks the upstream to close first, then waits for the EOF.
pub async fn close_idle(streams: Vec<TcpStream>) {
    let mut set = JoinSet::new();
    for mut stream in streams {
        set.spawn(async move {
            let release = async {
                stream.write_all(b"q").await?;
                read_to_eof(&mut stream).await
            };
            let _ = tokio::time::timeout(GRACE, release).await;
        });
    }
    while set.join_next().await.is_some() {}
}
