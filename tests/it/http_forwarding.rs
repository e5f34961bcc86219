//! Plain-HTTP forwarding through the real binary, driven by curl and raw sockets.

use crate::support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn curl_over_http_proxy_reaches_the_origin_in_origin_form() {
    let origin = origin().await;
    let proxy = api_proxy(&origin).start();
    let url = format!("http://api.test:{}/echo?q=1", origin.port());
    let (code, body, _) = curl(&["-i", &url], &[("http_proxy", &proxy.proxy_url())]).await;
    assert_eq!(code, 0);
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("GET /echo?q=1 HTTP/1.1"),
        "origin sees origin-form: {body}"
    );
    assert!(
        body.contains(&format!("host: api.test:{}", origin.port())),
        "{body}"
    );
    assert!(body.contains("via: 1.1 egressd"), "{body}");
    // Counted once, by decision and reason (refusals are counted in tests/refusals.rs).
    assert_eq!(
        proxy
            .metric(
                "egressd_requests_total{protocol=\"http\",decision=\"allowed\",reason=\"none\"}"
            )
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_host_header_that_agrees_with_the_target_is_accepted() {
    let origin = origin().await;
    let proxy = api_proxy(&origin).start();
    let p = origin.port();
    // Names compare without case; the refusals for a Host header that disagrees are in
    // tests/refusals.rs.
    let request = format!(
        "GET http://API.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\nConnection: close\r\n\r\n"
    );
    let response = raw_exchange(proxy.proxy, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let origin = origin().await;
    // Identity off: Proxy-Authorization is not checked, and still not forwarded (with identity
    // on, the same holds for valid credentials: tests/it/identity.rs).
    let proxy = api_proxy(&origin).proxy("identity = \"off\"").start();
    let p = origin.port();
    let request = format!(
        "GET http://api.test:{p}/hop HTTP/1.1\r\nHost: api.test:{p}\r\nConnection: close, X-Client-Hop\r\nX-Client-Hop: 1\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nKeep-Alive: 300\r\nTE: gzip\r\n\
         Upgrade: websocket\r\nX-End-To-End: yes\r\n\r\n"
    );
    let response = raw_exchange(proxy.proxy, request.as_bytes()).await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let seen = body.to_ascii_lowercase();
    for gone in [
        "x-client-hop",
        "proxy-authorization",
        "proxy-connection",
        "keep-alive",
        "te:",
        "upgrade",
    ] {
        assert!(!seen.contains(gone), "origin saw {gone}: {body}");
    }
    assert!(seen.contains("x-end-to-end: yes"), "{body}");
    assert!(seen.contains("via: 1.1 egressd"), "{body}");
    assert_eq!(
        header(head, "x-private-hop"),
        None,
        "response hop header leaked: {head}"
    );
    assert_eq!(header(head, "keep-alive"), None, "{head}");
    assert_eq!(header(head, "x-end-to-end"), Some("kept"));
    assert_eq!(header(head, "via"), Some("1.1 egressd"));
}

#[tokio::test]
async fn every_request_on_a_keep_alive_connection_is_checked() {
    let origin = origin().await;
    let proxy = api_proxy(&origin).dns("other.test", "127.0.0.1").start();
    let p = origin.port();
    let mut stream = TcpStream::connect(proxy.proxy).await.unwrap();
    for (host, expected) in [("api.test", 200), ("other.test", 403), ("api.test", 200)] {
        let request = http_get(&format!("{host}:{p}"), "/");
        let response = exchange(&mut stream, request.as_bytes()).await;
        assert_eq!(status(&response), expected, "{host}: {response}");
    }
}

#[tokio::test]
async fn hyper_client_through_the_proxy() {
    use http_body_util::{BodyExt, Empty, Full};
    let origin = origin().await;
    let proxy = api_proxy(&origin).start();
    let stream = TcpStream::connect(proxy.proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<bytes::Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let url = format!("http://api.test:{}/body", origin.port());
    // A 1 MiB body streams up; the origin reports how much arrived.
    let req = hyper::Request::post(&url)
        .body(Full::new(bytes::Bytes::from(vec![7u8; 1 << 20])))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"received 1048576 bytes");
    // And 1 MiB streams down on the same connection.
    let req = hyper::Request::get(format!("http://api.test:{}/big", origin.port()))
        .body(Full::default())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes().len(),
        1 << 20
    );
    let _ = Empty::<bytes::Bytes>::new();
}

#[tokio::test]
async fn expect_continue_is_answered_by_the_proxy() {
    let origin = origin().await;
    let proxy = api_proxy(&origin).dns("other.test", "127.0.0.1").start();
    let p = origin.port();
    // Denied: 403 arrives at once, without the client sending the body.
    let mut stream = TcpStream::connect(proxy.proxy).await.unwrap();
    let head = format!("POST http://other.test:{p}/body HTTP/1.1\r\nHost: other.test:{p}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 403"));

    // Allowed: 100 Continue, then the body goes through.
    let mut stream = TcpStream::connect(proxy.proxy).await.unwrap();
    let head = format!("POST http://api.test:{p}/body HTTP/1.1\r\nHost: api.test:{p}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 100"));
    let response = exchange(&mut stream, b"hello").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(body(&response), "received 5 bytes");
}

#[tokio::test]
async fn max_forwards_on_options_and_trace() {
    let origin = origin().await;
    let proxy = api_proxy(&origin).start();
    let p = origin.port();
    let options = format!("OPTIONS http://api.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n");
    let response = raw_exchange(proxy.proxy, options.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        header(&response, "allow").unwrap().contains("GET"),
        "{response}"
    );
    assert!(
        !response.contains("OPTIONS /"),
        "answered by the proxy, not the origin: {response}"
    );

    let trace = format!("TRACE http://api.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\nMax-Forwards: 2\r\nConnection: close\r\n\r\n");
    let response = raw_exchange(proxy.proxy, trace.as_bytes()).await;
    assert!(
        response.contains("TRACE / HTTP/1.1"),
        "forwarded to the origin: {response}"
    );
    assert!(
        response.contains("max-forwards: 1"),
        "decremented: {response}"
    );
}

#[tokio::test]
async fn oversized_heads_get_431() {
    let origin = origin().await;
    let proxy = api_proxy(&origin)
        .proxy("max_request_head_bytes = 8192")
        .start();
    let p = origin.port();
    let request = format!(
        "GET http://api.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let response = raw_exchange(proxy.proxy, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
}

#[tokio::test]
async fn slow_header_clients_are_disconnected() {
    let proxy = egressd()
        .allow("api.test")
        .proxy("header_read_timeout = \"1s\"")
        .start();
    let mut stream = TcpStream::connect(proxy.proxy).await.unwrap();
    stream
        .write_all(b"GET http://api.test/ HTTP/1.1\r\nHost: api")
        .await
        .unwrap();
    // The proxy must close the connection on its own; we never finish the head.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "connection still open after the header read timeout"
    );
    assert!(!String::from_utf8_lossy(&buf).contains(" 200 "));
}

#[tokio::test]
async fn unresponsive_upstream_is_504() {
    // A listener whose accept queue is full drops further SYNs, so a connect hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let proxy = egressd()
        .allow_local("api.test")
        .ports(&[addr.port()], &[addr.port()])
        .proxy("connect_timeout = \"1s\"")
        .start();
    let connect = format!("CONNECT api.test:{} HTTP/1.1\r\n\r\n", addr.port());
    let response = one_response(proxy.proxy, connect.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 504"), "{response}");
    assert_eq!(header(&response, "x-egress-error"), Some("connect-timeout"));
    drop(listener);
}

#[tokio::test]
async fn over_the_connection_limit_new_clients_get_503_and_existing_ones_carry_on() {
    let origin = origin().await;
    let echo = echo_server().await;
    let proxy = egressd()
        .allow_local("api.test")
        .ports(&[echo.port()], &[origin.port()])
        .proxy("max_connections = 2")
        .start();
    // The two permits: a keep-alive client that has made one request, and an open tunnel.
    let request = http_get(&format!("api.test:{}", origin.port()), "/");
    let mut keep_alive = TcpStream::connect(proxy.proxy).await.unwrap();
    let response = exchange(&mut keep_alive, request.as_bytes()).await;
    assert_eq!(status(&response), 200, "{response}");
    let mut tunnel = open_tunnel(proxy.proxy, &format!("api.test:{}", echo.port())).await;
    eventually("the tunnel to hold the second permit", || async {
        (proxy.metric("egressd_active_tunnels").await == 1.0).then_some(())
    })
    .await;

    let busy = raw_exchange(proxy.proxy, request.as_bytes()).await;
    assert!(
        busy.starts_with("HTTP/1.1 503 too-many-connections: "),
        "{busy}"
    );
    assert_eq!(
        header(&busy, "x-egress-error"),
        Some("too-many-connections"),
        "{busy}"
    );
    assert_eq!(
        proxy.metric("egressd_rejected_connections_total").await,
        1.0
    );

    // Both holders still work.
    let response = exchange(&mut keep_alive, request.as_bytes()).await;
    assert_eq!(status(&response), 200, "{response}");
    tunnel.write_all(b"still here").await.unwrap();
    tunnel.shutdown().await.unwrap();
    let echoed = read_to_close(&mut tunnel, "the tunnel").await.unwrap();
    assert_eq!(echoed, b"echo:still here");
    // A permit freed is a permit for the next client.
    drop(tunnel);
    eventually("a new client to be served once a holder left", || async {
        let response = one_response(proxy.proxy, request.as_bytes()).await;
        (status(&response) == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn reason_phrases_are_one_bounded_line_of_ascii() {
    // A denial naming a 190-character host twice is longer than a reason phrase may be.
    let proxy = egressd().allow("api.test").start();
    let label = "a".repeat(60);
    let long = format!("http://{label}.{label}.{label}.api.test/");
    let request = format!(
        "GET {long} HTTP/1.1\r\nHost: {}\r\n\r\n",
        &long[7..long.len() - 1]
    );
    let response = one_response(proxy.proxy, request.as_bytes()).await;
    let status_line = response.lines().next().unwrap();
    assert!(
        status_line.starts_with("HTTP/1.1 403 not-allowlisted: "),
        "{status_line}"
    );
    assert!(
        status_line.len() <= "HTTP/1.1 403 ".len() + 200,
        "{status_line}"
    );
    assert!(
        status_line.ends_with("..."),
        "cut, and says so: {status_line}"
    );
    assert!(status_line.bytes().all(|b| (b' '..=b'~').contains(&b)));
}

#[tokio::test]
async fn curl_and_python_show_the_reason_of_a_denied_https_request() {
    let proxy = egressd().dns("other.test", "127.0.0.1").start();
    let proxy_url = proxy.proxy_url();
    let env = [("https_proxy", proxy_url.as_str())];
    let reason = "403 not-allowlisted: \"other.test\" is not on the allowlist; add \"other.test\"";

    let (code, _, err) = curl(&["-v", "https://other.test/"], &env).await;
    assert_ne!(code, 0);
    assert!(err.contains(&format!("< HTTP/1.1 {reason}")), "{err}");

    let script = r#"
import urllib.request
try:
    urllib.request.urlopen("https://other.test/", timeout=5)
except Exception as e:
    print(e)
"#;
    let (_, out, err) = python(script, &env).await;
    assert!(
        out.contains(&format!("Tunnel connection failed: {reason}")),
        "python urllib shows: {out} {err}"
    );
}

#[tokio::test]
async fn python_sees_the_reason_of_a_denied_plain_http_request() {
    let proxy = egressd().dns("other.test", "127.0.0.1").start();
    let script = r#"
import urllib.request, urllib.error
try:
    urllib.request.urlopen("http://other.test/", timeout=5)
except urllib.error.HTTPError as e:
    print(e.code, e.reason, e.headers["x-egress-denied"])
"#;
    let (_, out, err) = python(script, &[("http_proxy", &proxy.proxy_url())]).await;
    assert_eq!(
        out.trim(),
        "403 not-allowlisted: \"other.test\" is not on the allowlist; add \"other.test\" not-allowlisted",
        "{err}"
    );
}

#[tokio::test]
async fn an_http10_upstream_is_answered_as_http11_and_framed() {
    let upstream = raw_origin(
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from 1.0",
        Then::Close,
    )
    .await;
    let p = upstream.port();
    let proxy = http_proxy("old.test", p).start();
    let mut stream = TcpStream::connect(proxy.proxy).await.unwrap();
    for round in 0..2 {
        let request = http_get(&format!("old.test:{p}"), "/");
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n"),
            "round {round}: {head}"
        );
        assert_eq!(
            header(&head, "transfer-encoding"),
            Some("chunked"),
            "{head}"
        );
        let body = read_until(&mut stream, b"0\r\n\r\n").await;
        assert!(body.contains("hello from 1.0"), "{body}");
    }
}

#[tokio::test]
async fn the_access_log_has_the_normalised_target_and_the_bytes_sent() {
    let proxy = egressd().dns("other.test", "127.0.0.1").start();
    let request = "GET http://OTHER.TEST./x HTTP/1.1\r\nHost: OTHER.TEST.\r\n\r\n";
    let response = one_response(proxy.proxy, request.as_bytes()).await;
    let body_len: u64 = header(&response, "content-length")
        .unwrap()
        .parse()
        .unwrap();
    assert!(body_len > 50, "{response}");
    let line = proxy
        .wait_for_log(|l| l["raw_target"] == "http://OTHER.TEST./x")
        .await;
    assert_eq!(line["target"], "http://other.test/x", "{line}");
    assert_eq!(line["bytes_down"], body_len, "{line}");
    assert_eq!(line["reason"], "not-allowlisted");

    let connect = "CONNECT Other.Test.:443 HTTP/1.1\r\n\r\n";
    one_response(proxy.proxy, connect.as_bytes()).await;
    let line = proxy
        .wait_for_log(|l| l["raw_target"] == "Other.Test.:443")
        .await;
    assert_eq!(line["target"], "other.test:443", "{line}");
}

/// The access log is written off the request path, in batches: every line still arrives,
/// in order, and stopping loses none of them, up to the last line before the exit.
#[tokio::test]
async fn every_access_line_is_written_even_when_egressd_stops_right_after() {
    let origin = origin().await;
    let mut proxy = api_proxy(&origin).start();
    let requests = 300;
    let urls: Vec<String> = (0..requests)
        .map(|n| format!("http://api.test:{}/echo?n={n}", origin.port()))
        .collect();
    let mut args = vec![
        "-x".to_string(),
        proxy.proxy_url(),
        "-o".into(),
        "/dev/null".into(),
    ];
    for url in &urls {
        args.push(url.clone());
        args.push("-o".into());
        args.push("/dev/null".into());
    }
    args.truncate(args.len() - 2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = curl(&args, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        proxy
            .metric(
                "egressd_requests_total{protocol=\"http\",decision=\"allowed\",reason=\"none\"}"
            )
            .await,
        requests as f64
    );
    assert_eq!(proxy.metric("egressd_access_log_dropped_total").await, 0.0);
    proxy.terminate().await;
    let targets = eventually("every access line, after the exit", || async {
        let targets: Vec<String> = proxy
            .access_logs()
            .iter()
            .filter_map(|l| l["raw_target"].as_str().map(str::to_string))
            .collect();
        (targets.len() >= requests).then_some(targets)
    })
    .await;
    assert_eq!(targets, urls, "one line per request, in order");
    // Logged just before the process exits: only the flush at exit writes it.
    proxy
        .wait_for_line(|l| l["message"] == "egressd stopped")
        .await;
}

/// `RUST_LOG=warn` silences the access log: for requests and tunnels, and for heads hyper
/// could not parse, whose lines are written by another path.
#[tokio::test]
async fn rust_log_warn_silences_every_access_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = egressd()
        .dns("other.test", "127.0.0.1")
        .write_config(dir.path());
    let mut child = tokio::process::Command::new(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        // Its own start line still comes, to learn the address from.
        .env("RUST_LOG", "warn,egressd::cli=info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let started = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("egressd listening") {
                return line;
            }
        }
        panic!("egressd exited before listening");
    })
    .await
    .expect("egressd to start");
    let started: serde_json::Value = serde_json::from_str(&started).unwrap();
    let proxy: std::net::SocketAddr = started["proxy"].as_str().unwrap().parse().unwrap();
    let denied = one_response(
        proxy,
        b"GET http://other.test/ HTTP/1.1\r\nHost: other.test\r\n\r\n",
    )
    .await;
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    let unparsable = one_response(proxy, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").await;
    assert!(unparsable.starts_with("HTTP/1.1 400"), "{unparsable}");
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-s", "TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        rest.push(line);
    }
    assert!(
        rest.iter().all(|l| !l.contains("\"decision\"")),
        "no access line: {rest:#?}"
    );
    assert!(
        rest.iter().any(|l| l.contains("egressd stopped")),
        "the stream is whole: {rest:#?}"
    );
}

#[tokio::test]
async fn a_silent_upstream_gets_504_after_the_response_header_timeout() {
    let silent = silent_origin().await;
    let p = silent.port();
    let proxy = http_proxy("silent.test", p)
        .proxy("response_header_timeout = \"1s\"")
        .start();
    let url = format!("http://silent.test:{p}/");
    let (_, body, _) = curl(&["-i", "-x", &proxy.proxy_url(), &url], &[]).await;
    assert!(
        body.starts_with("HTTP/1.1 504 upstream-timeout: "),
        "{body}"
    );
    assert_eq!(header(&body, "x-egress-error"), Some("upstream-timeout"));
    assert_eq!(
        proxy
            .metric("egressd_upstream_errors_total{kind=\"upstream-timeout\"}")
            .await,
        1.0
    );
    // The connection slot is given back.
    proxy
        .wait_for_log(|l| l["reason"] == "upstream-timeout" && l["status"] == 504)
        .await;
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_body_is_cut_after_the_idle_timeout() {
    let stalling = raw_origin(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it",
        Then::Stall,
    )
    .await;
    let p = stalling.port();
    let proxy = http_proxy("stall.test", p)
        .proxy("idle_timeout = \"1s\"")
        .start();
    let url = format!("http://stall.test:{p}/");
    let (code, body, err) = curl(&["-x", &proxy.proxy_url(), &url], &[]).await;
    assert_eq!(code, 18, "curl: partial transfer: {err}");
    assert_eq!(body, "only part of it");
    let line = proxy
        .wait_for_log(|l| l["reason"] == "upstream-timeout")
        .await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_down"], 15);
}

/// An upstream that answers every request with a chunked body and a trailer field, and
/// reports the request head it saw in the body.
async fn trailer_upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let head = read_head(&mut stream).await.to_ascii_lowercase();
                let te = if head.contains("te: trailers") {
                    "asked"
                } else {
                    "not-asked"
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n{:x}\r\n{te}\r\n0\r\nx-checksum: abc123\r\n\r\n",
                    te.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn trailers_reach_a_client_that_accepts_them() {
    let port = trailer_upstream().await;
    let proxy = http_proxy("api.test", port).start();
    let request = format!(
        "GET http://api.test:{port}/ HTTP/1.1\r\nHost: api.test:{port}\r\nTE: trailers\r\nConnection: TE, close\r\n\r\n"
    );
    let response = raw_exchange(proxy.proxy, request.as_bytes()).await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert_eq!(header(head, "trailer"), Some("x-checksum"), "{head}");
    assert!(
        body.contains("asked\r\n"),
        "egressd asked the upstream for trailers: {body}"
    );
    assert!(
        body.ends_with("0\r\nx-checksum: abc123\r\n\r\n"),
        "the trailer follows the last chunk: {body:?}"
    );
}

#[tokio::test]
async fn chained_instances_are_told_apart_by_their_via_pseudonym() {
    let origin = origin().await;
    let p = origin.port();
    let proxy = api_proxy(&origin).via_name("gw-1").start();
    let send = |via: &str| {
        format!("GET http://api.test:{p}/echo HTTP/1.1\r\nHost: api.test:{p}\r\nVia: {via}\r\nConnection: close\r\n\r\n")
    };
    // Through a sidecar egressd first: not a loop.
    let response = raw_exchange(proxy.proxy, send("1.1 sidecar-7").as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let seen = body(&response).to_ascii_lowercase();
    assert!(seen.contains("via: 1.1 sidecar-7"), "{seen}");
    assert!(seen.contains("via: 1.1 gw-1"), "{seen}");
    assert!(response.contains("via: 1.1 gw-1\r\n"), "{response}");
    // Through this very instance already: a loop.
    let response = raw_exchange(proxy.proxy, send("1.1 sidecar-7, 1.1 gw-1").as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 508 loop:"), "{response}");
}
