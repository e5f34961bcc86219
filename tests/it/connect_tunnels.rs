//! CONNECT tunnels through the real binary: curl with HTTPS_PROXY against a TLS origin,
//! half-closes, idle timeouts, logs and metrics, graceful shutdown. Refused CONNECTs are in
//! tests/refusals.rs.

use crate::support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn https_proxy_to_a_tls_origin_and_a_denied_host() {
    for relay in RELAYS {
        https_proxy_to_a_tls_origin_and_a_denied_host_with(relay).await;
    }
}

async fn https_proxy_to_a_tls_origin_and_a_denied_host_with(relay: &str) {
    let (addr, pem) = tls_origin("secure.test").await;
    let proxy = tunnel_proxy("secure.test", addr.port())
        .relay(relay)
        .dns("denied.test", "127.0.0.1")
        .start();
    let ca = proxy.dir().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let proxy_url = proxy.proxy_url();
    let env = [("HTTPS_PROXY", proxy_url.as_str())];
    let url = format!("https://secure.test:{}/echo", addr.port());
    let (code, body, err) = curl(&["--cacert", ca.to_str().unwrap(), &url], &env).await;
    assert_eq!(code, 0, "{err}");
    assert!(body.starts_with("GET /echo HTTP/1.1"), "{body}");

    let denied = format!("https://denied.test:{}/", addr.port());
    let (code, _, err) = curl(&["--cacert", ca.to_str().unwrap(), &denied], &env).await;
    assert_ne!(code, 0);
    assert!(err.contains("403"), "curl reports the proxy's 403: {err}");

    let log = proxy
        .wait_for_log(|v| v["method"] == "CONNECT" && v["decision"] == "allowed")
        .await;
    assert_eq!(log["target"], format!("secure.test:{}", addr.port()));
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    let line = config
        .lines()
        .position(|l| l.contains("\"secure.test\"]"))
        .unwrap()
        + 1;
    assert_eq!(log["rule"], format!("\"secure.test\" (line {line})"));
    assert_eq!(log["status"], 200);
    assert!(
        log["bytes_up"].as_u64().unwrap() > 0 && log["bytes_down"].as_u64().unwrap() > 0,
        "{log}"
    );
    let denied_log = proxy
        .wait_for_log(|v| v["method"] == "CONNECT" && v["decision"] == "denied")
        .await;
    assert_eq!(denied_log["reason"], "not-allowlisted");
    assert_eq!(denied_log["status"], 403);
}

#[tokio::test]
async fn curl_proxytunnel_to_plain_http() {
    for relay in RELAYS {
        curl_proxytunnel_to_plain_http_with(relay).await;
    }
}

async fn curl_proxytunnel_to_plain_http_with(relay: &str) {
    let origin = origin().await;
    let proxy = tunnel_proxy("api.test", origin.port()).relay(relay).start();
    let url = format!("http://api.test:{}/echo", origin.port());
    let (code, body, err) = curl(&["-p", "-x", &proxy.proxy_url(), &url], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(body.starts_with("GET /echo HTTP/1.1"), "{body}");
    assert!(
        !body.contains("via: 1.1 egressd"),
        "relayed, not forwarded: {body}"
    );
}

#[tokio::test]
async fn tunnels_pass_half_close_both_ways() {
    for relay in RELAYS {
        tunnels_pass_half_close_both_ways_with(relay).await;
    }
}

async fn tunnels_pass_half_close_both_ways_with(relay: &str) {
    let echo = echo_server().await;
    let proxy = tunnel_proxy("echo.test", echo.port()).relay(relay).start();
    let mut stream = open_tunnel(proxy.proxy, &format!("echo.test:{}", echo.port())).await;
    stream.write_all(b"ping").await.unwrap();
    // The echo server answers only after it sees EOF, so this proves the half-close arrived.
    stream.shutdown().await.unwrap();
    let back = read_to_close(&mut stream, "the tunnel").await.unwrap();
    assert_eq!(back, b"echo:ping");
    let log = proxy.wait_for_log(|v| v["method"] == "CONNECT").await;
    assert_eq!(
        (log["bytes_up"].as_u64(), log["bytes_down"].as_u64()),
        (Some(4), Some(9))
    );
    assert_eq!(log["tunnel_end"], "closed");
}

#[tokio::test]
async fn idle_tunnels_are_closed() {
    for relay in RELAYS {
        idle_tunnels_are_closed_with(relay).await;
    }
}

async fn idle_tunnels_are_closed_with(relay: &str) {
    let echo = echo_server().await;
    let proxy = tunnel_proxy("echo.test", echo.port())
        .relay(relay)
        .proxy("idle_timeout = \"1s\"")
        .start();
    let mut stream = open_tunnel(proxy.proxy, &format!("echo.test:{}", echo.port())).await;
    let _ = read_to_close(&mut stream, "the idle tunnel").await;
    let log = proxy.wait_for_log(|v| v["method"] == "CONNECT").await;
    assert_eq!(log["tunnel_end"], "idle-timeout");
}

#[tokio::test]
async fn admin_endpoints_report_state() {
    let echo = echo_server().await;
    let proxy = tunnel_proxy("echo.test", echo.port())
        .allow("*.example.org")
        .start();
    assert_eq!(proxy.admin_get("/healthz").await, (200, "ok\n".to_string()));

    let mut stream = open_tunnel(proxy.proxy, &format!("echo.test:{}", echo.port())).await;
    stream.write_all(b"x").await.unwrap();
    let metrics = eventually("the tunnel to count as active", || async {
        let metrics = proxy.metrics().await;
        (metric(&metrics, "egressd_active_tunnels") == 1.0).then_some(metrics)
    })
    .await;
    assert_eq!(
        metric(
            &metrics,
            "egressd_requests_total{protocol=\"connect\",decision=\"allowed\",reason=\"none\"}"
        ),
        1.0
    );
    drop(stream);
    proxy.wait_for_log(|v| v["method"] == "CONNECT").await;
    let metrics = proxy.metrics().await;
    for (series, value) in [
        ("egressd_active_tunnels", 0.0),
        (
            "egressd_request_duration_seconds_bucket{le=\"+Inf\",protocol=\"connect\"}",
            1.0,
        ),
        ("egressd_relayed_bytes_total{direction=\"up\"}", 1.0),
    ] {
        assert_eq!(metric(&metrics, series), value, "{series}");
    }

    let (status, body) = proxy.admin_get("/v1/allowlist").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1]["pattern"], "*.example.org");
    assert_eq!(entries[1]["state"], "active");
    assert_eq!(proxy.admin_get("/nope").await.0, 404);
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let origin = origin().await;
    let mut proxy = api_proxy(&origin).start();
    let url = format!("http://api.test:{}/slow", origin.port());
    let proxy_url = proxy.proxy_url();
    let slow = tokio::spawn(async move { curl(&["-i", "-x", &proxy_url, &url], &[]).await });
    // Wait until the request is in flight, then ask egressd to stop.
    eventually("the request to be in flight", || async {
        (proxy.metric("egressd_active_connections").await == 1.0).then_some(())
    })
    .await;
    proxy.signal("TERM");
    let (_, body, _) = slow.await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.ends_with("slow done"), "{body}");
    assert_eq!(proxy.wait_exit().await, Some(0));
    // And the listener is gone.
    assert!(TcpStream::connect(proxy.proxy).await.is_err());
}

/// A rolling update: from SIGTERM on, readiness fails while liveness holds, the listener
/// still accepts for `drain_delay`, and every answer closes its keep-alive connection so the
/// client reconnects elsewhere; then the listener stops and egressd exits.
#[tokio::test]
async fn sigterm_fails_readiness_and_closes_keep_alive_during_the_drain_delay() {
    let origin = origin().await;
    let mut proxy = api_proxy(&origin).drain_delay("3s").start();
    assert_eq!(proxy.admin_get("/readyz").await, (200, "ready\n".into()));
    let request = http_get(&format!("api.test:{}", origin.port()), "/");
    let mut keep_alive = TcpStream::connect(proxy.proxy).await.unwrap();
    let before = exchange(&mut keep_alive, request.as_bytes()).await;
    assert_eq!(status(&before), 200, "{before}");
    assert_eq!(
        header(&before, "connection"),
        None,
        "kept alive before: {before}"
    );

    proxy.signal("TERM");
    eventually("readiness to fail", || async {
        (proxy.admin_get("/readyz").await == (503, "draining\n".into())).then_some(())
    })
    .await;
    assert_eq!(proxy.admin_get("/healthz").await.0, 200, "still alive");
    // The open keep-alive connection gets its answer, told to close, and is closed.
    let during = exchange(&mut keep_alive, request.as_bytes()).await;
    assert_eq!(status(&during), 200, "{during}");
    assert_eq!(header(&during, "connection"), Some("close"), "{during}");
    let _ = read_to_close(&mut keep_alive, "the drained keep-alive connection").await;
    // A new client is still served during the drain, and told to close too.
    let mut late = TcpStream::connect(proxy.proxy).await.unwrap();
    let answer = exchange(&mut late, request.as_bytes()).await;
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(header(&answer, "connection"), Some("close"), "{answer}");

    assert_eq!(proxy.wait_exit().await, Some(0));
    assert!(
        TcpStream::connect(proxy.proxy).await.is_err(),
        "the listener is gone"
    );
}

#[tokio::test]
async fn connect_to_an_http_port_is_served_as_http() {
    let origin = origin().await;
    // The origin's port is open for plain HTTP only, as for Node's proxy agent, which tunnels
    // `http://` URLs through CONNECT.
    let proxy = api_proxy(&origin).start();
    let p = origin.port();
    let mut tunnel = open_tunnel(proxy.proxy, &format!("api.test:{p}")).await;
    // Two requests on the tunnel: both forwarded with the usual header hygiene.
    for path in ["/echo?n=1", "/echo?n=2"] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: api.test:{p}\r\nProxy-Authorization: Basic x\r\n\r\n"
        );
        let response = exchange(&mut tunnel, request.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let body = body(&response);
        assert!(body.starts_with(&format!("GET {path} HTTP/1.1")), "{body}");
        assert!(body.contains("via: 1.1 egressd"), "{body}");
        assert!(!body.contains("proxy-authorization"), "{body}");
    }
    // Each request inside is logged and counted on its own.
    assert_eq!(
        proxy
            .metric(
                "egressd_requests_total{protocol=\"http\",decision=\"allowed\",reason=\"none\"}"
            )
            .await,
        2.0
    );
    proxy
        .wait_for_log(|l| l["target"] == format!("http://api.test:{p}/echo?n=2"))
        .await;
}

#[tokio::test]
async fn an_http_tunnel_that_does_not_speak_http_is_closed() {
    let origin = origin().await;
    let proxy = api_proxy(&origin).start();
    let mut tunnel = open_tunnel(proxy.proxy, &format!("api.test:{}", origin.port())).await;
    tunnel
        .write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
        .await
        .unwrap();
    let rest = read_to_close(&mut tunnel, "the tunnel").await.unwrap();
    assert!(!String::from_utf8_lossy(&rest).contains("200"), "{rest:?}");
    proxy
        .wait_for_line(|l| {
            l["fields"]["message"]
                .as_str()
                .or(l["message"].as_str())
                .is_some_and(|m| m.contains("does not speak HTTP/1.x"))
        })
        .await;
}

#[tokio::test]
async fn curl_proxytunnel_reaches_an_http_port() {
    let origin = origin().await;
    let proxy = api_proxy(&origin).start();
    let url = format!("http://api.test:{}/echo", origin.port());
    let (code, body, err) = curl(&["-p", "-x", &proxy.proxy_url(), &url], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(body.starts_with("GET /echo HTTP/1.1"), "{body}");
    assert!(
        body.contains("via: 1.1 egressd"),
        "forwarded, not relayed: {body}"
    );
}

#[tokio::test]
async fn a_response_still_streaming_at_the_end_of_the_grace_period_is_cut() {
    // An upstream that sends a one-byte chunk every 200 ms and never ends.
    let port = endless_upstream(
        b"1\r\nx\r\n".to_vec(),
        std::time::Duration::from_millis(200),
    )
    .await;
    let mut proxy = http_proxy("api.test", port)
        .proxy("shutdown_grace = \"1s\"")
        .start();
    let url = format!("http://api.test:{port}/stream");
    let proxy_url = proxy.proxy_url();
    let stream = tokio::spawn(async move { curl(&["-x", &proxy_url, &url], &[]).await });
    eventually("the response to be streaming", || async {
        (proxy.metric("egressd_active_connections").await == 1.0).then_some(())
    })
    .await;
    proxy.signal("TERM");
    // The grace period passes, the stream is cut, egressd exits cleanly.
    assert_eq!(proxy.wait_exit().await, Some(0));
    let (code, body, _) = stream.await.unwrap();
    assert_eq!(code, 18, "curl saw the transfer cut short: {body:?}");
    assert!(body.starts_with('x'), "{body:?}");
    // Read from egressd's stderr by a thread of the test's: possibly after the exit.
    proxy
        .wait_for_line(|l| l["message"] == "grace period over; cutting what is left")
        .await;
}
