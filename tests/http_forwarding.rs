//! Plain-HTTP forwarding through the real binary, driven by curl and raw sockets.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// egressd allowing plain HTTP to `api.test`, mapped to `origin`.
fn api_proxy(origin: &Origin) -> EgressdBuilder {
    egressd()
        .dns("api.test", "127.0.0.1")
        .allow("api.test")
        .ports(&[443], &[origin.port()])
}

#[tokio::test]
async fn curl_allowed_and_denied_over_http_proxy() {
    let origin = origin().await;
    let proxy = api_proxy(&origin).dns("other.test", "127.0.0.1").start();
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

    let denied = format!("http://other.test:{}/", origin.port());
    let (_, body, _) = curl(&["-i", "-x", &proxy.proxy_url(), &denied], &[]).await;
    assert!(body.starts_with("HTTP/1.1 403"), "{body}");
    assert_eq!(header(&body, "x-egress-denied"), Some("not-allowlisted"));
    assert!(
        body.contains("\"other.test\" is not on the allowlist; add \"other.test\""),
        "{body}"
    );
    // Each request is counted once, by decision and reason.
    let (_, metrics) = proxy.admin_get("/metrics").await;
    for line in [
        "egressd_requests_total{protocol=\"http\",decision=\"allowed\",reason=\"none\"} 1",
        "egressd_requests_total{protocol=\"http\",decision=\"denied\",reason=\"not-allowlisted\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from {metrics}");
    }
}

#[tokio::test]
async fn subdomain_pitfall_is_explained_in_the_denial() {
    let origin = origin().await;
    let proxy = egressd()
        .dns("www.example.test", "127.0.0.1")
        .allow("example.test")
        .ports(&[443], &[origin.port()])
        .start();
    let url = format!("http://www.example.test:{}/", origin.port());
    let (_, body, _) = curl(&["-i", "-x", &proxy.proxy_url(), &url], &[]).await;
    assert_eq!(header(&body, "x-egress-denied"), Some("not-allowlisted"));
    assert!(
        body.contains("\"example.test\" is allowlisted but does not cover subdomains; add \"www.example.test\" or \"*.example.test\""),
        "{body}"
    );
}

#[tokio::test]
async fn private_destinations_are_denied_even_when_allowlisted() {
    let origin = origin().await;
    let proxy = egressd()
        .strict_private()
        .dns("api.test", "127.0.0.1")
        .dns("metadata.test", "169.254.169.254")
        .allow("api.test")
        .allow("metadata.test")
        .allow("127.0.0.1")
        .ports(&[443], &[origin.port(), 80])
        .start();
    for url in [
        format!("http://api.test:{}/", origin.port()),
        "http://metadata.test/latest/meta-data/".to_string(),
        format!("http://127.0.0.1:{}/", origin.port()),
    ] {
        let (_, body, _) = curl(&["-i", "-x", &proxy.proxy_url(), &url], &[]).await;
        assert!(body.starts_with("HTTP/1.1 403"), "{url}: {body}");
        assert_eq!(
            header(&body, "x-egress-denied"),
            Some("private-destination"),
            "{url}"
        );
    }
}

#[tokio::test]
async fn non_canonical_ip_literals_are_invalid_targets() {
    let origin = origin().await;
    let proxy = egressd()
        .allow("127.0.0.1")
        .ports(&[443], &[origin.port()])
        .start();
    for host in ["127.1", "2130706433", "0x7f.1", "0177.0.0.1"] {
        let request = format!(
            "GET http://{host}:{}/ HTTP/1.1\r\nConnection: close\r\n\r\n",
            origin.port()
        );
        let response = raw_exchange(proxy.proxy, request.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 403"), "{host}: {response}");
        assert_eq!(
            header(&response, "x-egress-denied"),
            Some("invalid-target"),
            "{host}"
        );
        let connect = format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n");
        let response = one_response(proxy.proxy, connect.as_bytes()).await;
        assert_eq!(
            header(&response, "x-egress-denied"),
            Some("invalid-target"),
            "CONNECT {host}: {response}"
        );
    }
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let origin = origin().await;
    let proxy = api_proxy(&origin).start();
    let p = origin.port();
    let cases = [
        ("origin-form", "GET / HTTP/1.1\r\nHost: api.test\r\n\r\n".to_string()),
        ("https scheme", format!("GET https://api.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\n\r\n")),
        ("host mismatch", format!("GET http://api.test:{p}/ HTTP/1.1\r\nHost: evil.test\r\n\r\n")),
        ("port mismatch", format!("GET http://api.test:{p}/ HTTP/1.1\r\nHost: api.test\r\n\r\n")),
        ("two hosts", format!("GET http://api.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\nHost: api.test:{p}\r\n\r\n")),
        ("userinfo", format!("GET http://user:pw@api.test:{p}/ HTTP/1.1\r\n\r\n")),
        ("CONNECT without port", "CONNECT api.test HTTP/1.1\r\nHost: api.test\r\n\r\n".to_string()),
        ("CONNECT userinfo", "CONNECT user@api.test:443 HTTP/1.1\r\n\r\n".to_string()),
        ("CONNECT absolute", "CONNECT http://api.test:443/ HTTP/1.1\r\n\r\n".to_string()),
    ];
    for (name, request) in cases {
        let response = raw_exchange(
            proxy.proxy,
            request
                .replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 400"), "{name}: {response}");
    }
    // A Host header that agrees with the target (default port spelled out or not) is fine.
    let ok = format!(
        "GET http://API.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\nConnection: close\r\n\r\n"
    );
    assert!(raw_exchange(proxy.proxy, ok.as_bytes())
        .await
        .starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let origin = origin().await;
    let proxy = api_proxy(&origin).start();
    let p = origin.port();
    let request = format!(
        "GET http://api.test:{p}/hop HTTP/1.1\r\nHost: api.test:{p}\r\nConnection: close, X-Client-Hop\r\nX-Client-Hop: 1\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nKeep-Alive: 300\r\nTE: trailers\r\n\
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
    for (host, expected) in [
        ("api.test", "200"),
        ("other.test", "403"),
        ("api.test", "200"),
    ] {
        let request = format!("GET http://{host}:{p}/ HTTP/1.1\r\nHost: {host}:{p}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {expected}")),
            "{host}: {head}"
        );
        let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
        let mut body = vec![0; len];
        stream.read_exact(&mut body).await.unwrap();
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
    stream.write_all(b"hello").await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = vec![0; header(&head, "content-length").unwrap().parse().unwrap()];
    stream.read_exact(&mut body).await.unwrap();
    assert_eq!(body, b"received 5 bytes");
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
async fn refused_upstream_is_502() {
    let port = closed_port();
    let proxy = egressd()
        .dns("api.test", "127.0.0.1")
        .allow("api.test")
        .ports(&[port], &[port])
        .start();
    let url = format!("http://api.test:{port}/");
    let (_, body, _) = curl(&["-i", "-x", &proxy.proxy_url(), &url], &[]).await;
    assert!(body.starts_with("HTTP/1.1 502"), "{body}");
    assert_eq!(header(&body, "x-egress-error"), Some("connect-refused"));
    let connect = format!("CONNECT api.test:{port} HTTP/1.1\r\n\r\n");
    let response = one_response(proxy.proxy, connect.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 502"), "{response}");
    assert_eq!(header(&response, "x-egress-error"), Some("connect-refused"));
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
        .dns("api.test", "127.0.0.1")
        .allow("api.test")
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
async fn dns_failure_is_502() {
    // A name server port with nothing behind it: the lookup fails, nothing leaves loopback.
    let dead_dns = closed_port();
    let proxy = egressd()
        .allow("nowhere.test")
        .ports(&[443], &[80])
        .dns_line(&format!("servers = [\"127.0.0.1:{dead_dns}\"]"))
        .dns_line("timeout = \"1s\"")
        .start();
    let (_, body, _) = curl(
        &["-i", "-x", &proxy.proxy_url(), "http://nowhere.test/"],
        &[],
    )
    .await;
    assert!(body.starts_with("HTTP/1.1 502"), "{body}");
    assert_eq!(header(&body, "x-egress-error"), Some("dns"));
}

#[tokio::test]
async fn requests_to_the_proxy_itself_are_denied() {
    let port = closed_port();
    let proxy = egressd()
        .proxy(&format!("listen = \"127.0.0.1:{port}\""))
        .allow("127.0.0.1")
        .dns("self.test", "127.0.0.1")
        .allow("self.test")
        .ports(&[port], &[port])
        .start();
    assert_eq!(proxy.proxy.port(), port);
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://self.test:{port}/"),
    ] {
        let (_, body, _) = curl(&["-i", "-x", &proxy.proxy_url(), &url], &[]).await;
        assert_eq!(
            header(&body, "x-egress-denied"),
            Some("private-destination"),
            "{url}: {body}"
        );
        assert!(body.contains("egressd's own listener"), "{body}");
    }
}

#[tokio::test]
async fn connection_limit_answers_503() {
    let proxy = egressd()
        .allow("api.test")
        .proxy("max_connections = 1")
        .start();
    let _holder = TcpStream::connect(proxy.proxy).await.unwrap();
    // Give the accept loop a moment to take the first connection's permit, bounded.
    let mut last = String::new();
    for _ in 0..50 {
        last = raw_exchange(proxy.proxy, b"GET http://api.test/ HTTP/1.1\r\n\r\n").await;
        if last.starts_with("HTTP/1.1 503") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(last.starts_with("HTTP/1.1 503"), "{last}");
    let (_, metrics) = proxy.admin_get("/metrics").await;
    assert!(
        metrics.contains("egressd_rejected_connections_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn invalid_ports_and_loops_are_refused() {
    let origin = origin().await;
    let proxy = egressd()
        .dns("api.test", "127.0.0.1")
        .allow("api.test")
        .ports(&[443], &[80, origin.port()])
        .start();
    for target in ["http://api.test:99999/", "http://api.test:80x/"] {
        let request = format!("GET {target} HTTP/1.1\r\nConnection: close\r\n\r\n");
        let response = raw_exchange(proxy.proxy, request.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{target}: {response}");
    }
    let p = origin.port();
    let looped = format!("GET http://api.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\nVia: 1.1 egressd\r\nConnection: close\r\n\r\n");
    let response = raw_exchange(proxy.proxy, looped.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 508"), "{response}");
    assert_eq!(header(&response, "x-egress-error"), Some("loop"));
}

/// (name, request, status line egressd must send) — the reason and its fix travel in the
/// reason phrase, which is all most clients show of a failed CONNECT.
const STATUS_LINE_CASES: &[(&str, &str, &str)] = &[
    (
        "denied plain HTTP names the entry to add",
        "GET http://other.test/ HTTP/1.1\r\nHost: other.test\r\n\r\n",
        "HTTP/1.1 403 not-allowlisted: \"other.test\" is not on the allowlist; add \"other.test\"\r\n",
    ),
    (
        "denied CONNECT names the entry to add",
        "CONNECT other.test:443 HTTP/1.1\r\nHost: other.test:443\r\n\r\n",
        "HTTP/1.1 403 not-allowlisted: \"other.test\" is not on the allowlist; add \"other.test\"\r\n",
    ),
    (
        "subdomain pitfall on CONNECT",
        "CONNECT www.api.test:443 HTTP/1.1\r\n\r\n",
        "HTTP/1.1 403 not-allowlisted: \"api.test\" is allowlisted but does not cover subdomains; add \"www.api.test\" or \"*.api.test\"\r\n",
    ),
    (
        "closed port on CONNECT",
        "CONNECT api.test:25 HTTP/1.1\r\n\r\n",
        "HTTP/1.1 403 port-not-allowed: port 25 is not open for connect requests (allowed: [443]); add it to proxy.connect_ports\r\n",
    ),
    (
        "origin-form request",
        "GET / HTTP/1.1\r\nHost: api.test\r\n\r\n",
        "HTTP/1.1 400 bad-request: egressd is a forward proxy: send absolute-form requests (set HTTP_PROXY), or CONNECT for https\r\n",
    ),
    (
        "request loop",
        "GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\nVia: 1.1 egressd\r\n\r\n",
        "HTTP/1.1 508 loop: egressd: this request has already passed through egressd (Via); refusing to loop\r\n",
    ),
];

#[tokio::test]
async fn every_refusal_carries_its_reason_in_the_status_line() {
    let proxy = egressd()
        .dns("other.test", "127.0.0.1")
        .allow("api.test")
        .start();
    for (name, request, status_line) in STATUS_LINE_CASES {
        let response = one_response(proxy.proxy, request.as_bytes()).await;
        assert!(
            response.starts_with(status_line),
            "{name}: expected {status_line:?}, got {response}"
        );
        let code = status_line.split(' ').nth(2).unwrap().trim_end_matches(':');
        let header_value = header(&response, "x-egress-denied")
            .or_else(|| header(&response, "x-egress-error"))
            .unwrap_or("");
        assert_eq!(
            header_value, code,
            "{name}: the header still names the reason"
        );
    }
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
    let env = [("https_proxy", proxy.proxy_url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
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

/// Reads a chunked body up to its last chunk.
async fn read_chunked(stream: &mut TcpStream) -> String {
    let mut body = Vec::new();
    let mut buf = [0u8; 1024];
    while !body.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("body in time")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-body: {:?}",
            String::from_utf8_lossy(&body)
        );
        body.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn an_http10_upstream_is_answered_as_http11_and_framed() {
    let upstream = raw_origin(
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from 1.0",
        Then::Close,
    )
    .await;
    let p = upstream.port();
    let proxy = egressd()
        .dns("old.test", "127.0.0.1")
        .allow("old.test")
        .ports(&[443], &[p])
        .start();
    let mut stream = TcpStream::connect(proxy.proxy).await.unwrap();
    for round in 0..2 {
        let request = format!("GET http://old.test:{p}/ HTTP/1.1\r\nHost: old.test:{p}\r\n\r\n");
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
        let body = read_chunked(&mut stream).await;
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

#[tokio::test]
async fn a_silent_upstream_gets_504_after_the_response_header_timeout() {
    let silent = silent_origin().await;
    let p = silent.port();
    let proxy = egressd()
        .dns("silent.test", "127.0.0.1")
        .allow("silent.test")
        .ports(&[443], &[p])
        .proxy("response_header_timeout = \"1s\"")
        .start();
    let url = format!("http://silent.test:{p}/");
    let (_, body, _) = curl(&["-i", "-x", &proxy.proxy_url(), &url], &[]).await;
    assert!(
        body.starts_with("HTTP/1.1 504 upstream-timeout: "),
        "{body}"
    );
    assert_eq!(header(&body, "x-egress-error"), Some("upstream-timeout"));
    let (_, metrics) = proxy.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "egressd_upstream_errors_total{kind=\"upstream-timeout\"}"
        ),
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
    let proxy = egressd()
        .dns("stall.test", "127.0.0.1")
        .allow("stall.test")
        .ports(&[443], &[p])
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
