//! Hostile input (issue 14): request targets that parsers disagree on, upstreams that break
//! HTTP framing, and upgrades. Each case states the exact answer the client gets and what
//! reached the upstream: a recording upstream shows that nothing did where egressd refused,
//! and that the right host did where it allowed.

use std::sync::{Arc, Mutex};

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What one upstream connection received: its accept number and each request head.
#[derive(Clone, Debug)]
struct Seen {
    conn: usize,
    head: String,
}

/// A raw TCP upstream that answers every request on a connection with `reply(path)`, then
/// closes the connection when `reply` says so. It records each request head with the number
/// of the connection it came on.
struct Upstream {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    async fn start(reply: fn(&str) -> (Vec<u8>, bool)) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            let mut accepted = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted += 1;
                let (conn, log) = (accepted, log.clone());
                tokio::spawn(async move {
                    loop {
                        let Some(head) = read_request_head(&mut stream).await else {
                            return;
                        };
                        let path = head.split(' ').nth(1).unwrap_or("").to_string();
                        log.lock().unwrap().push(Seen { conn, head });
                        let (bytes, close) = reply(&path);
                        if stream.write_all(&bytes).await.is_err() || close {
                            let _ = stream.shutdown().await;
                            return;
                        }
                    }
                });
            }
        });
        Upstream { port, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn read_request_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

fn ok_reply(_: &str) -> (Vec<u8>, bool) {
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        false,
    )
}

// ---------------------------------------------------------------------------------------
// URL parser differentials
// ---------------------------------------------------------------------------------------

/// Where a request must end up.
#[derive(Debug)]
enum Reaches {
    /// Nowhere: no upstream connection sees it.
    Nothing,
    /// The upstream, as this origin-form request line with `Host: allowed.test:PORT`.
    Allowed(&'static str),
}

/// (name, raw request with `{P}` for the upstream port, how the answer starts, where it goes)
const DIFFERENTIALS: &[(&str, &str, &str, Reaches)] = &[
    // The authority: what one parser takes for the host another takes for userinfo, a path
    // or a fragment.
    ("backslash before @ (WHATWG reads the host after @)",
     "GET http://allowed.test:{P}\\@evil.test:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("backslash as a path separator",
     "GET http://evil.test:{P}\\.allowed.test/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("userinfo naming the allowed host",
     "GET http://allowed.test:{P}@evil.test:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 bad-request: user information in the URL is not allowed\r\n", Reaches::Nothing),
    ("fragment hiding the allowed host: the host is before the #",
     "GET http://evil.test:{P}#@allowed.test:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 403 not-allowlisted: \"evil.test\" is not on the allowlist; add \"evil.test\"\r\n", Reaches::Nothing),
    ("query hiding the allowed host: the host is before the ?",
     "GET http://evil.test:{P}?@allowed.test:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 403 not-allowlisted: \"evil.test\" is not on the allowlist; add \"evil.test\"\r\n", Reaches::Nothing),
    ("fragment after the allowed host is dropped",
     "GET http://allowed.test:{P}#@evil.test:{P}/x HTTP/1.1\r\nConnection: close\r\n\r\n",
     "HTTP/1.1 200 OK\r\n", Reaches::Allowed("GET / HTTP/1.1")),
    ("query after the allowed host goes to the allowed host",
     "GET http://allowed.test:{P}?@evil.test:{P}/ HTTP/1.1\r\nConnection: close\r\n\r\n",
     "HTTP/1.1 200 OK\r\n", Reaches::Allowed("GET /?@evil.test:{P}/ HTTP/1.1")),
    ("percent-encoded dot in the host",
     "GET http://allowed.test%2eevil.test:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("percent-encoded @ in the host",
     "GET http://allowed.test%40evil.test:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("percent-encoded @ after the port",
     "GET http://allowed.test:{P}%40evil.test/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("NUL in the host",
     "GET http://allowed.test\0.evil.test:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("non-ASCII bytes in the host",
     "GET http://allowed.test\u{e9}:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("empty host",
     "GET http://:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 403 invalid-target: empty host\r\n", Reaches::Nothing),
    ("three slashes", "GET http:///allowed.test:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("two ports", "GET http://allowed.test:{P}:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("IPv6 zone id", "GET http://[fe80::1%25eth0]:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 403 invalid-target: \"[fe80::1%25eth0]\" is not a valid IPv6 address\r\n", Reaches::Nothing),
    ("IPv6 zone id on loopback", "GET http://[::1%25lo]:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 403 invalid-target: \"[::1%25lo]\" is not a valid IPv6 address\r\n", Reaches::Nothing),
    // The scheme is case-insensitive (RFC 3986 section 3.1): accepted as http.
    ("upper-case scheme",
     "GET HTTP://allowed.test:{P}/up HTTP/1.1\r\nConnection: close\r\n\r\n",
     "HTTP/1.1 200 OK\r\n", Reaches::Allowed("GET /up HTTP/1.1")),
    ("mixed-case scheme and host",
     "GET HtTp://ALLOWED.Test:{P}/mixed HTTP/1.1\r\nConnection: close\r\n\r\n",
     "HTTP/1.1 200 OK\r\n", Reaches::Allowed("GET /mixed HTTP/1.1")),
    // The request line.
    ("tab between method and target", "GET\thttp://allowed.test:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("tab between target and version", "GET http://allowed.test:{P}/\tHTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("tab inside the host", "GET http://allowed.test\t.evil.test:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("two spaces after the method", "GET  http://allowed.test:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("trailing space after the version", "GET http://allowed.test:{P}/ HTTP/1.1 \r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("vertical tab in the host", "GET http://allowed.test\x0b:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("bare CR ending the request line", "GET http://allowed.test:{P}/ HTTP/1.1\rHost: evil.test\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("HTTP/0.9-style line (no version)", "GET http://allowed.test:{P}/\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("HTTP/2.0 in an HTTP/1 request line", "GET http://allowed.test:{P}/ HTTP/2.0\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("lower-case version", "GET http://allowed.test:{P}/ http/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("obs-fold continuing a header into Host", "GET http://allowed.test:{P}/ HTTP/1.1\r\nX: y\r\n Host: evil.test\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("space before the colon of Host", "GET http://allowed.test:{P}/ HTTP/1.1\r\nHost : evil.test\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("Host header with a backslash-@",
     "GET http://allowed.test:{P}/ HTTP/1.1\r\nHost: allowed.test:{P}\\@evil.test\r\n\r\n",
     "HTTP/1.1 400 bad-request: the Host header names \"allowed.test:{P}\\@evil.test\" but the request target names \"allowed.test:{P}\"\r\n", Reaches::Nothing),
    // Bare LF line ends in a request are accepted (RFC 9112 section 2.2) and re-framed.
    ("bare LF line ends",
     "GET http://allowed.test:{P}/lf HTTP/1.1\nHost: allowed.test:{P}\nConnection: close\n\n",
     "HTTP/1.1 200 OK\r\n", Reaches::Allowed("GET /lf HTTP/1.1")),
    // CONNECT authorities with the same tricks.
    ("CONNECT with backslash-@", "CONNECT allowed.test:{P}\\@evil.test:{P} HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("CONNECT with userinfo", "CONNECT allowed.test:{P}@evil.test:{P} HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 bad-request: user information in the target is not allowed\r\n", Reaches::Nothing),
    ("CONNECT with a fragment", "CONNECT evil.test:{P}#@allowed.test:{P} HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("CONNECT with a path", "CONNECT allowed.test:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("CONNECT with a query", "CONNECT allowed.test:{P}?x HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("CONNECT with a percent-encoded dot", "CONNECT allowed.test%2eevil.test:{P} HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("CONNECT to an IPv6 zone id", "CONNECT [fe80::1%25eth0]:{P} HTTP/1.1\r\n\r\n",
     "HTTP/1.1 403 invalid-target: \"[fe80::1%25eth0]\" is not a valid IPv6 address\r\n", Reaches::Nothing),
    ("CONNECT with a tab", "CONNECT\tallowed.test:{P} HTTP/1.1\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    ("CONNECT without a version", "CONNECT allowed.test:{P}\r\n\r\n",
     "HTTP/1.1 400 Bad Request\r\n", Reaches::Nothing),
    // Unspecified addresses reach the local host on Linux.
    ("0.0.0.0 literal (allowlisted)", "GET http://0.0.0.0:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 403 private-destination: 0.0.0.0 is in the this-network 0.0.0.0/8 range; ", Reaches::Nothing),
    ("0.0.0.0 with a trailing dot", "GET http://0.0.0.0.:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 403 private-destination: 0.0.0.0 is in the this-network 0.0.0.0/8 range; ", Reaches::Nothing),
    ("[::] literal (allowlisted)", "GET http://[::]:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 403 private-destination: :: is in the unspecified :: range; ", Reaches::Nothing),
    ("[::] spelt out in full", "GET http://[0:0:0:0:0:0:0:0]:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 403 private-destination: :: is in the unspecified :: range; ", Reaches::Nothing),
    ("a name overridden to 0.0.0.0", "GET http://zero.test:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 403 private-destination: 0.0.0.0 is in the this-network 0.0.0.0/8 range; ", Reaches::Nothing),
    ("a name overridden to ::", "GET http://zero6.test:{P}/ HTTP/1.1\r\n\r\n",
     "HTTP/1.1 403 private-destination: :: is in the unspecified :: range; ", Reaches::Nothing),
    ("CONNECT to 0.0.0.0", "CONNECT 0.0.0.0:{P} HTTP/1.1\r\n\r\n",
     "HTTP/1.1 403 private-destination: 0.0.0.0 is in the this-network 0.0.0.0/8 range; ", Reaches::Nothing),
    ("CONNECT to [::]", "CONNECT [::]:{P} HTTP/1.1\r\n\r\n",
     "HTTP/1.1 403 private-destination: :: is in the unspecified :: range; ", Reaches::Nothing),
    ("CONNECT to a name overridden to 0.0.0.0", "CONNECT zero.test:{P} HTTP/1.1\r\n\r\n",
     "HTTP/1.1 403 private-destination: 0.0.0.0 is in the this-network 0.0.0.0/8 range; ", Reaches::Nothing),
    ("CONNECT to a name overridden to ::", "CONNECT zero6.test:{P} HTTP/1.1\r\n\r\n",
     "HTTP/1.1 403 private-destination: :: is in the unspecified :: range; ", Reaches::Nothing),
];

/// Sends one [`DIFFERENTIALS`] case; returns what went wrong, empty when nothing did.
async fn differential(
    proxy: &Egressd,
    upstream: &Upstream,
    request: &str,
    answer: &str,
    reaches: &Reaches,
) -> Vec<String> {
    let p = upstream.port.to_string();
    let (request, answer) = (request.replace("{P}", &p), answer.replace("{P}", &p));
    let before = upstream.seen().len();
    let response = one_response(proxy.proxy, request.as_bytes()).await;
    let mut wrong = Vec::new();
    if !response.starts_with(&answer) {
        wrong.push(format!("expected {answer:?}, got {response:?}"));
    }
    let seen = upstream.seen();
    let reached = &seen[before..];
    match reaches {
        Reaches::Nothing if !reached.is_empty() => wrong.push(format!("reached {reached:?}")),
        Reaches::Nothing => {}
        Reaches::Allowed(line) => match reached {
            [one] => {
                let line = line.replace("{P}", &p);
                let host = format!("allowed.test:{p}");
                if !one.head.starts_with(&format!("{line}\r\n"))
                    || header(&one.head, "host") != Some(host.as_str())
                {
                    wrong.push(format!(
                        "expected {line:?} with Host: {host}, the upstream got {:?}",
                        one.head
                    ));
                }
            }
            _ => wrong.push(format!(
                "expected one request upstream, it got {}: {reached:?}",
                reached.len()
            )),
        },
    }
    wrong
}

#[tokio::test]
async fn parser_differentials_reach_the_host_egressd_checked_or_nothing() {
    let upstream = Upstream::start(ok_reply).await;
    let p = upstream.port;
    let proxy = egressd()
        .allow_local("allowed.test")
        .dns("evil.test", "127.0.0.1")
        .dns("zero.test", "0.0.0.0")
        .dns("zero6.test", "::")
        .allow("zero.test")
        .allow("zero6.test")
        .allow("0.0.0.0")
        .allow("::")
        .ports(&[p], &[p])
        .start();
    let mut failures = Vec::new();
    for (name, request, answer, reaches) in DIFFERENTIALS {
        let wrong = differential(&proxy, &upstream, request, answer, reaches).await;
        if !wrong.is_empty() {
            failures.push(format!("{name}: {}", wrong.join("; ")));
        }
    }
    assert_no_failures(&failures, DIFFERENTIALS.len());
    // hyper answers an unparsable head itself, with a bare 400; each still has its
    // access-log line, naming hyper's reason, and is counted.
    let unparsable = DIFFERENTIALS
        .iter()
        .filter(|(_, _, answer, _)| *answer == "HTTP/1.1 400 Bad Request\r\n")
        .count();
    let lines = eventually("a log line for every unparsable head", || async {
        let lines: Vec<_> = proxy
            .access_logs()
            .into_iter()
            .filter(|l| l["method"] == "" && l["status"] == 400)
            .collect();
        (lines.len() == unparsable).then_some(lines)
    })
    .await;
    for line in &lines {
        assert_eq!(line["reason"], "bad-request", "{line}");
        assert!(
            line["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{line}"
        );
    }
    let counted = proxy
        .metric(
            "egressd_requests_total{protocol=\"http\",decision=\"error\",reason=\"bad-request\"}",
        )
        .await;
    assert!(counted >= unparsable as f64, "{counted} < {unparsable}");

    // An upper-case CONNECT authority is the same host: the tunnel opens to it.
    let before = upstream.seen().len();
    let mut tunnel = open_tunnel(proxy.proxy, &format!("ALLOWED.TEST:{p}")).await;
    let response = exchange(
        &mut tunnel,
        format!("GET /in-tunnel HTTP/1.1\r\nHost: allowed.test:{p}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(upstream.seen().len(), before + 1);
}

// ---------------------------------------------------------------------------------------
// Upstream misbehaviour
// ---------------------------------------------------------------------------------------

/// Raw replies by path; `/ok` is a well-formed answer on a keep-alive connection.
fn misbehaving(path: &str) -> (Vec<u8>, bool) {
    let reply: &[u8] = match path {
        "/both-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "/bad-chunk-size" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        "/chunk-overrun" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
        "/short-body" => return (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-this".to_vec(), true),
        "/unasked-101" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nRAW-BYTES-AFTER-101",
        "/bare-lf" => b"HTTP/1.1 200 OK\nContent-Length: 2\nX-Bare: lf\n\nok",
        "/bare-cr" => b"HTTP/1.1 200 OK\rContent-Length: 2\r\r\nok",
        "/two-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
        "/obs-fold" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n  folded\r\n\r\nok",
        "/chunked-http10" => b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "/no-status-line" => b"just bytes, no head\r\n\r\n",
        "/huge-head" => {
            let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..120 {
                head.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(4000)).as_bytes());
            }
            head.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
            return (head, false);
        }
        "/many-headers" => {
            let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..101 {
                head.extend_from_slice(format!("X-H-{i}: v\r\n").as_bytes());
            }
            head.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
            return (head, false);
        }
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    };
    (reply.to_vec(), false)
}

/// What the client sees of a misbehaving upstream.
#[derive(Debug)]
enum Seen502 {
    /// `502` whose status line starts `502 upstream: egressd: the upstream failed: <this>`.
    BadGateway(&'static str),
    /// curl exits with this code: the response was cut and the client can tell.
    Cut(i32),
    /// A well-formed, re-framed `200` with this body.
    Reframed(&'static str),
}

/// (name, path, what the client sees, whether the upstream connection must be discarded)
const MISBEHAVIOUR: &[(&str, &str, Seen502, bool)] = &[
    (
        "both Content-Length and Transfer-Encoding",
        "/both-lengths",
        Seen502::BadGateway(
            "its response has both Content-Length and Transfer-Encoding (RFC 9112 section 6.3)",
        ),
        true,
    ),
    (
        "invalid chunk size: the head was not sent yet, so the reply is empty",
        "/bad-chunk-size",
        Seen502::Cut(52),
        true,
    ),
    (
        "a chunk longer than its size: cut mid-body",
        "/chunk-overrun",
        Seen502::Cut(18),
        true,
    ),
    (
        "Content-Length longer than the body, then close",
        "/short-body",
        Seen502::Cut(18),
        true,
    ),
    (
        "101 to a request that asked for no upgrade",
        "/unasked-101",
        Seen502::BadGateway("it switched protocols (101) for a request that asked for no upgrade"),
        true,
    ),
    (
        "header lines ending in bare LF are accepted and re-framed",
        "/bare-lf",
        Seen502::Reframed("ok"),
        false,
    ),
    (
        "header lines ending in bare CR",
        "/bare-cr",
        Seen502::BadGateway("invalid HTTP status-code parsed"),
        true,
    ),
    (
        "two different Content-Lengths",
        "/two-lengths",
        Seen502::BadGateway("invalid content-length parsed"),
        true,
    ),
    (
        "obs-fold in a response header",
        "/obs-fold",
        Seen502::BadGateway("invalid HTTP header parsed"),
        true,
    ),
    (
        "chunked from an HTTP/1.0 upstream",
        "/chunked-http10",
        Seen502::BadGateway("unexpected transfer-encoding parsed"),
        true,
    ),
    (
        "no status line",
        "/no-status-line",
        Seen502::BadGateway("invalid HTTP version parsed"),
        true,
    ),
    (
        "a response head over the size limit",
        "/huge-head",
        Seen502::BadGateway("message head is too large"),
        true,
    ),
    (
        "more than 100 header fields",
        "/many-headers",
        Seen502::BadGateway("message head is too large"),
        true,
    ),
];

#[tokio::test]
async fn misbehaving_upstreams_get_a_502_or_a_cut_response_and_their_connection_dropped() {
    let upstream = Upstream::start(misbehaving).await;
    let p = upstream.port;
    // One worker: each worker pools its own upstream connections, and with two the next
    // request could land on the other worker and pass without proving the discard.
    let proxy = http_proxy("bad.test", p).proxy("workers = 1").start();
    let via = proxy.proxy_url();
    let mut failures = Vec::new();
    for (name, path, want, discarded) in MISBEHAVIOUR {
        let wrong = misbehaviour(&via, &upstream, path, want, *discarded).await;
        if !wrong.is_empty() {
            failures.push(format!("{name}: {}", wrong.join("; ")));
        }
    }
    assert_no_failures(&failures, MISBEHAVIOUR.len());
}

/// Runs one [`MISBEHAVIOUR`] case through the proxy at `via` (which knows the upstream as
/// `bad.test`); returns what went wrong, empty when nothing did.
async fn misbehaviour(
    via: &str,
    upstream: &Upstream,
    path: &str,
    want: &Seen502,
    discarded: bool,
) -> Vec<String> {
    let url = |path: &str| format!("http://bad.test:{}{path}", upstream.port);
    let mut wrong = Vec::new();
    let (code, out, err) = curl(&["-i", "-x", via, &url(path)], &[]).await;
    match want {
        Seen502::BadGateway(why) => {
            let line = format!("HTTP/1.1 502 upstream: egressd: the upstream failed: {why}\r\n");
            if code != 0 {
                wrong.push(format!("curl exited {code}: {err}"));
            }
            if !out.starts_with(&line) {
                wrong.push(format!("expected {line:?}, got {out:?}"));
            }
            if header(&out, "x-egress-error") != Some("upstream") {
                wrong.push(format!(
                    "x-egress-error: {:?}",
                    header(&out, "x-egress-error")
                ));
            }
            if out.contains("RAW-BYTES") {
                wrong.push(format!("relayed raw: {out:?}"));
            }
        }
        Seen502::Cut(exit) => {
            if code != *exit {
                wrong.push(format!("curl exited {code}, not {exit}: {out:?} {err}"));
            }
        }
        Seen502::Reframed(text) => {
            if code != 0 {
                wrong.push(format!("curl exited {code}: {err}"));
            }
            match out.split_once("\r\n\r\n") {
                // Every line of the head egressd sent ends in CRLF.
                Some((head, body))
                    if out.starts_with("HTTP/1.1 200 OK\r\n")
                        && !head.replace("\r\n", "").contains('\n')
                        && body == *text => {}
                _ => wrong.push(format!(
                    "expected a CRLF-framed 200 with body {text:?}, got {out:?}"
                )),
            }
        }
    }
    // The next request must not ride the connection that misbehaved.
    let (code, out, err) = curl(&["-x", via, &url("/ok")], &[]).await;
    if (code, out.as_str()) != (0, "ok") {
        wrong.push(format!("the next request got {code} {out:?}: {err}"));
        return wrong;
    }
    let seen = upstream.seen();
    let conn_of = |path: &str| {
        seen.iter()
            .rev()
            .find(|s| s.head.contains(&format!(" {path} ")))
            .map(|s| s.conn)
    };
    // A well-framed response's connection is reused, which shows the probe can tell.
    match (conn_of(path), conn_of("/ok")) {
        (Some(bad), Some(ok)) if (bad != ok) != discarded => wrong.push(format!(
            "the connection was {}",
            if discarded { "reused" } else { "discarded" }
        )),
        (Some(_), Some(_)) => {}
        _ => wrong.push(format!("the upstream did not see both requests: {seen:?}")),
    }
    wrong
}

// ---------------------------------------------------------------------------------------
// Upgrades
// ---------------------------------------------------------------------------------------

/// `Sec-WebSocket-Accept` for a key (RFC 6455 section 4.2.2).
fn websocket_accept(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    base64(digest.as_ref())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A WebSocket echo upstream: answers a handshake on `/chat` with `101`, then echoes each
/// text frame back (unmasked, as a server sends). `/refuse` answers a handshake with `403`.
/// Records every request head.
async fn websocket_echo() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Some(head) = read_request_head(&mut stream).await else {
                    return;
                };
                log.lock().unwrap().push(head.clone());
                if !head.starts_with("GET /chat ") {
                    let _ = stream
                        .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
                        .await;
                    return;
                }
                let key = header(&head, "sec-websocket-key").unwrap_or("");
                let reply = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    websocket_accept(key)
                );
                stream.write_all(reply.as_bytes()).await.unwrap();
                loop {
                    let mut frame = [0u8; 2];
                    if stream.read_exact(&mut frame).await.is_err() {
                        return;
                    }
                    let len = (frame[1] & 0x7f) as usize;
                    let mut mask = [0u8; 4];
                    stream.read_exact(&mut mask).await.unwrap();
                    let mut payload = vec![0u8; len];
                    stream.read_exact(&mut payload).await.unwrap();
                    for (i, b) in payload.iter_mut().enumerate() {
                        *b ^= mask[i % 4];
                    }
                    let mut echo = vec![frame[0], len as u8];
                    echo.extend_from_slice(&payload);
                    stream.write_all(&echo).await.unwrap();
                }
            });
        }
    });
    (port, heads)
}

/// A WebSocket handshake through the proxy for `path`.
fn handshake(p: u16, path: &str, key: &str) -> String {
    format!(
        "GET http://ws.test:{p}{path} HTTP/1.1\r\nHost: ws.test:{p}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[test]
fn websocket_accept_matches_rfc_6455() {
    assert_eq!(
        websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[tokio::test]
async fn a_websocket_echo_works_through_plain_http_forwarding() {
    let (p, heads) = websocket_echo().await;
    let proxy = http_proxy("ws.test", p).start();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let mut client = TcpStream::connect(proxy.proxy).await.unwrap();
    client
        .write_all(handshake(p, "/chat", key).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert_eq!(header(&head, "upgrade"), Some("websocket"), "{head}");
    assert_eq!(header(&head, "connection"), Some("upgrade"), "{head}");
    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    let up = heads.lock().unwrap()[0].clone();
    assert!(up.starts_with("GET /chat HTTP/1.1\r\n"), "{up}");
    assert_eq!(header(&up, "upgrade"), Some("websocket"), "{up}");
    assert_eq!(header(&up, "connection"), Some("upgrade"), "{up}");
    assert_eq!(header(&up, "sec-websocket-key"), Some(key), "{up}");

    // One masked text frame, "hello", and its echo.
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | 5];
    frame.extend_from_slice(&mask);
    frame.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    client.write_all(&frame).await.unwrap();
    let mut echo = [0u8; 7];
    tokio::time::timeout(PATIENCE, client.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"\x81\x05hello");
    eventually("the upgrade counted as a tunnel", || async {
        (proxy.metric("egressd_active_tunnels").await == 1.0).then_some(())
    })
    .await;

    drop(client);
    let line = proxy
        .wait_for_log(|l| l["target"] == format!("http://ws.test:{p}/chat"))
        .await;
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["decision"], "allowed", "{line}");
    assert_eq!(line["tunnel_end"], "closed", "{line}");
    assert_eq!(line["bytes_up"], 11, "{line}");
    assert_eq!(line["bytes_down"], 7, "{line}");
    eventually("the tunnel gauge back to zero", || async {
        (proxy.metric("egressd_active_tunnels").await == 0.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_refused_websocket_handshake_is_an_ordinary_response() {
    let (p, _) = websocket_echo().await;
    let proxy = http_proxy("ws.test", p).start();
    let mut client = TcpStream::connect(proxy.proxy).await.unwrap();
    let response = exchange(
        &mut client,
        handshake(p, "/refuse", "AAAAAAAAAAAAAAAAAAAAAA==").as_bytes(),
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{response}"
    );
    assert_eq!(body(&response), "no");
    // Nothing was tunneled: the connection still speaks HTTP.
    let again = exchange(
        &mut client,
        handshake(p, "/refuse", "AAAAAAAAAAAAAAAAAAAAAA==").as_bytes(),
    )
    .await;
    assert!(again.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{again}");
}

#[tokio::test]
async fn an_h2c_upgrade_is_stripped_and_served_as_http_1_1() {
    let origin = origin().await;
    let p = origin.port();
    let proxy = api_proxy(&origin).start();
    let response = one_response(
        proxy.proxy,
        format!(
            "GET http://api.test:{p}/echo HTTP/1.1\r\nHost: api.test:{p}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    let seen = body(&response).to_ascii_lowercase();
    assert!(seen.starts_with("get /echo http/1.1"), "{seen}");
    for stripped in ["upgrade:", "http2-settings:", "connection:"] {
        assert!(
            !seen.contains(stripped),
            "{stripped} reached the upstream: {seen}"
        );
    }
}
