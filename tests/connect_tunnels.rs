//! CONNECT tunnels through the real binary: curl with HTTPS_PROXY against a TLS origin,
//! half-closes, idle timeouts, logs and metrics, graceful shutdown.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn https_proxy_to_a_tls_origin_and_a_denied_host() {
    let (addr, pem) = tls_origin("secure.test").await;
    let proxy = egressd()
        .dns("secure.test", "127.0.0.1")
        .dns("denied.test", "127.0.0.1")
        .allow("secure.test")
        .ports(&[addr.port()], &[])
        .start();
    let ca = proxy.dir().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let env = [("HTTPS_PROXY", proxy.proxy_url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
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
    let origin = origin().await;
    let proxy = egressd()
        .dns("api.test", "127.0.0.1")
        .allow("api.test")
        .ports(&[origin.port()], &[])
        .start();
    let url = format!("http://api.test:{}/echo", origin.port());
    let (code, body, err) = curl(&["-p", "-x", &proxy.proxy_url(), &url], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(body.starts_with("GET /echo HTTP/1.1"), "{body}");
    // Without -p the same URL is forwarded as plain HTTP, where the port is not open.
    let (_, body, _) = curl(&["-i", "-x", &proxy.proxy_url(), &url], &[]).await;
    assert_eq!(
        header(&body, "x-egress-denied"),
        Some("port-not-allowed"),
        "{body}"
    );
}

#[tokio::test]
async fn tunnels_pass_half_close_both_ways() {
    let echo = echo_server().await;
    let proxy = egressd()
        .dns("echo.test", "127.0.0.1")
        .allow("echo.test")
        .ports(&[echo.port()], &[])
        .start();
    let mut stream = open_tunnel(proxy.proxy, &format!("echo.test:{}", echo.port())).await;
    stream.write_all(b"ping").await.unwrap();
    // The echo server answers only after it sees EOF, so this proves the half-close arrived.
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
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
    let echo = echo_server().await;
    let proxy = egressd()
        .dns("echo.test", "127.0.0.1")
        .allow("echo.test")
        .ports(&[echo.port()], &[])
        .proxy("idle_timeout = \"1s\"")
        .start();
    let mut stream = open_tunnel(proxy.proxy, &format!("echo.test:{}", echo.port())).await;
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "idle tunnel was not closed");
    let log = proxy.wait_for_log(|v| v["method"] == "CONNECT").await;
    assert_eq!(log["tunnel_end"], "idle-timeout");
}

#[tokio::test]
async fn admin_endpoints_report_state() {
    let echo = echo_server().await;
    let proxy = egressd()
        .dns("echo.test", "127.0.0.1")
        .allow("echo.test")
        .allow("*.example.org")
        .ports(&[echo.port()], &[])
        .start();
    assert_eq!(proxy.admin_get("/healthz").await, (200, "ok\n".to_string()));

    let mut stream = open_tunnel(proxy.proxy, &format!("echo.test:{}", echo.port())).await;
    stream.write_all(b"x").await.unwrap();
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = proxy.admin_get("/metrics").await.1;
        if metrics.contains("egressd_active_tunnels 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metrics.contains("egressd_active_tunnels 1"), "{metrics}");
    assert!(
        metrics.contains(
            "egressd_requests_total{protocol=\"connect\",decision=\"allowed\",reason=\"none\"} 1"
        ),
        "{metrics}"
    );
    drop(stream);
    proxy.wait_for_log(|v| v["method"] == "CONNECT").await;
    let (_, metrics) = proxy.admin_get("/metrics").await;
    assert!(metrics.contains("egressd_active_tunnels 0"), "{metrics}");
    assert!(
        metrics.contains(
            "egressd_request_duration_seconds_bucket{le=\"+Inf\",protocol=\"connect\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("egressd_relayed_bytes_total{direction=\"up\"} 1"),
        "{metrics}"
    );

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
    let mut proxy = egressd()
        .dns("api.test", "127.0.0.1")
        .allow("api.test")
        .ports(&[443], &[origin.port()])
        .start();
    let url = format!("http://api.test:{}/slow", origin.port());
    let proxy_url = proxy.proxy_url();
    let slow = tokio::spawn(async move { curl(&["-i", "-x", &proxy_url, &url], &[]).await });
    // Wait until the request is in flight, then ask egressd to stop.
    for _ in 0..100 {
        let (_, metrics) = proxy.admin_get("/metrics").await;
        if metrics.contains("egressd_active_connections 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.signal("TERM");
    let (_, body, _) = slow.await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.ends_with("slow done"), "{body}");
    assert_eq!(proxy.wait_exit(), Some(0));
    // And the listener is gone.
    assert!(TcpStream::connect(proxy.proxy).await.is_err());
}

/// egressd allowing `api.test` (mapped to `origin`) with the origin's port open for plain
/// HTTP only, as for Node's proxy agent, which tunnels `http://` URLs through CONNECT.
fn http_only(origin: &Origin) -> EgressdBuilder {
    egressd()
        .dns("api.test", "127.0.0.1")
        .dns("other.test", "127.0.0.1")
        .allow("api.test")
        .ports(&[443], &[origin.port()])
}

#[tokio::test]
async fn connect_to_an_http_port_is_served_as_http() {
    let origin = origin().await;
    let proxy = http_only(&origin).start();
    let p = origin.port();
    let mut tunnel = open_tunnel(proxy.proxy, &format!("api.test:{p}")).await;
    // Two requests on the tunnel: both forwarded with the usual header hygiene.
    for path in ["/echo?n=1", "/echo?n=2"] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: api.test:{p}\r\nProxy-Authorization: Basic x\r\n\r\n"
        );
        tunnel.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut tunnel).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
        let mut body = vec![0; len];
        tunnel.read_exact(&mut body).await.unwrap();
        let body = String::from_utf8(body).unwrap();
        assert!(body.starts_with(&format!("GET {path} HTTP/1.1")), "{body}");
        assert!(body.contains("via: 1.1 egressd"), "{body}");
        assert!(!body.contains("proxy-authorization"), "{body}");
    }
    // Each request inside is logged and counted on its own.
    let (_, metrics) = proxy.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "egressd_requests_total{protocol=\"http\",decision=\"allowed\",reason=\"none\"}"
        ),
        2.0
    );
    proxy
        .wait_for_log(|l| l["target"] == format!("http://api.test:{p}/echo?n=2"))
        .await;
}

#[tokio::test]
async fn a_request_for_another_host_inside_an_http_tunnel_is_denied() {
    let origin = origin().await;
    let proxy = http_only(&origin).start();
    let p = origin.port();
    for (name, request) in [
        (
            "Host names another host",
            format!("GET /echo HTTP/1.1\r\nHost: other.test:{p}\r\n\r\n"),
        ),
        (
            "absolute-form names another host",
            format!("GET http://other.test:{p}/echo HTTP/1.1\r\nHost: api.test:{p}\r\n\r\n"),
        ),
        (
            "Host names another port",
            "GET /echo HTTP/1.1\r\nHost: api.test\r\n\r\n".to_string(),
        ),
    ] {
        let mut tunnel = open_tunnel(proxy.proxy, &format!("api.test:{p}")).await;
        tunnel.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut tunnel).await;
        assert!(
            head.starts_with("HTTP/1.1 403 tunnel-host-mismatch: "),
            "{name}: {head}"
        );
        assert_eq!(
            header(&head, "x-egress-denied"),
            Some("tunnel-host-mismatch")
        );
    }
}

#[tokio::test]
async fn an_http_tunnel_that_does_not_speak_http_is_closed() {
    let origin = origin().await;
    let proxy = http_only(&origin).start();
    let mut tunnel = open_tunnel(proxy.proxy, &format!("api.test:{}", origin.port())).await;
    tunnel
        .write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, tunnel.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap();
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
    let proxy = http_only(&origin).start();
    let url = format!("http://api.test:{}/echo", origin.port());
    let (code, body, err) = curl(&["-p", "-x", &proxy.proxy_url(), &url], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(body.starts_with("GET /echo HTTP/1.1"), "{body}");
    assert!(
        body.contains("via: 1.1 egressd"),
        "forwarded, not relayed: {body}"
    );
    // A port open for neither is still refused.
    let (_, _, err) = curl(
        &["-v", "-p", "-x", &proxy.proxy_url(), "http://api.test:8/"],
        &[],
    )
    .await;
    assert!(err.contains("< HTTP/1.1 403 port-not-allowed: "), "{err}");
}
