//! Recent denials (`GET /v1/denials`): every kind of refusal recorded under the entry that
//! would fix it, or under its reason; the record bounded under a flood.

use base64::Engine as _;

use crate::sni::client_hello;
use crate::support::*;

const TOKEN: &str = "fn-a-token-0123456789abcdef";

async fn denials(proxy: &Egressd, query: &str) -> Vec<serde_json::Value> {
    let (status, body) = proxy.admin_get(&format!("/v1/denials{query}")).await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    view["denials"].as_array().unwrap().clone()
}

fn row<'a>(rows: &'a [serde_json::Value], entry: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["entry"] == entry)
        .unwrap_or_else(|| panic!("no row for {entry}: {rows:#?}"))
}

#[tokio::test]
async fn each_refusal_is_recorded_under_what_would_fix_it() {
    use tokio::io::AsyncWriteExt;
    let web = redirecting_origin().await;
    let echo = echo_server().await.port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fn-a.token"), TOKEN).unwrap();
    let mut builder = egressd()
        .ports(&[echo], &[web])
        .proxy("activation_delay = \"1h\"")
        .table("[[functions]]\nname = \"fn-a\"\nstate = \"productive\"\nurl = \"http://fn-a.test/\"\ntoken_file = \"fn-a.token\"\n")
        .allow("example.test")
        .allow("a.test");
    for name in [
        "example.test",
        "www.example.test",
        "a.test",
        "b.test",
        "pending.test",
        "sni.test",
    ] {
        builder = builder.dns(name, "127.0.0.1");
    }
    let proxy = builder.start_in(dir.path());
    let (code, added) = proxy
        .admin_json("POST", "/v1/allowlist", r#"{"domain": "pending.test"}"#)
        .await;
    assert_eq!(code, 201, "{added}");
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("fn-a:{TOKEN}"));
    let get = |host: &str, port: u16, path: &str, auth: bool| {
        let auth = if auth {
            format!("Proxy-Authorization: Basic {credentials}\r\n")
        } else {
            String::new()
        };
        format!("GET http://{host}:{port}{path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}Connection: close\r\n\r\n")
    };
    // (what, request, the status it gets)
    let requests = [
        (
            "a subdomain of an exact entry",
            get("www.example.test", web, "/", true),
            403,
        ),
        (
            "an entry still pending",
            get("pending.test", web, "/", false),
            403,
        ),
        (
            "a redirect to a host on no entry",
            get("a.test", web, "/start", true),
            302,
        ),
        ("a port that is not open", get("a.test", 1, "/", false), 403),
    ];
    for (what, request, want) in &requests {
        let raw = raw_exchange(proxy.proxy, request.as_bytes()).await;
        assert_eq!(status(&raw), *want, "{what}: {raw}");
    }
    // A tunnel to an allowed host whose ClientHello names another.
    let mut tunnel = open_tunnel(proxy.proxy, &format!("a.test:{echo}")).await;
    tunnel
        .write_all(&client_hello("sni.test", 0))
        .await
        .unwrap();
    let _ = read_to_close(&mut tunnel, "the fronted tunnel").await;

    let rows = eventually("every refusal recorded", || async {
        let rows = denials(&proxy, "").await;
        (rows.len() >= 5).then_some(rows)
    })
    .await;
    let www = row(&rows, "www.example.test");
    assert_eq!(
        (&www["state"], &www["addable"]),
        (&"missing".into(), &true.into())
    );
    assert_eq!(www["reasons"], serde_json::json!(["not-allowlisted"]));
    assert_eq!(www["functions"], serde_json::json!(["fn-a"]));
    let hint = www["hint"].as_str().unwrap();
    assert!(
        hint.contains("\"example.test\" is allowlisted but does not cover subdomains"),
        "{hint}"
    );
    let pending = row(&rows, "pending.test");
    assert_eq!(
        (&pending["state"], &pending["addable"]),
        (&"pending".into(), &false.into())
    );
    assert_eq!(
        pending["reasons"],
        serde_json::json!(["pending-activation"])
    );
    assert!(pending["active_at"].is_string(), "{pending}");
    let redirect = row(&rows, "b.test");
    assert_eq!(redirect["reasons"], serde_json::json!(["redirect-denied"]));
    assert_eq!(
        redirect["redirected_from"],
        serde_json::json!([format!("http://a.test:{web}/start")])
    );
    assert!(
        redirect["hint"]
            .as_str()
            .unwrap()
            .contains("a redirect from"),
        "{redirect}"
    );
    let sni = row(&rows, "sni.test");
    assert_eq!(sni["reasons"], serde_json::json!(["sni-not-allowlisted"]));
    let port = rows
        .iter()
        .find(|r| r["reasons"] == serde_json::json!(["port-not-allowed"]))
        .expect("a port row");
    assert_eq!(
        (&port["entry"], &port["state"]),
        (&serde_json::Value::Null, &"none".into())
    );
    assert_eq!(port["examples"], serde_json::json!(["a.test:1"]));
    assert!(port["hint"].as_str().unwrap().contains("proxy.http_ports"));

    // `since` keeps the rows seen at or after it.
    let latest = rows[0]["last_seen"].as_str().unwrap();
    assert!(denials(&proxy, &format!("?since={latest}")).await.len() < rows.len());
    assert!(denials(&proxy, "?since=4102444800000").await.is_empty());
    let (code, _) = proxy.admin_get("/v1/denials?since=yesterday").await;
    assert_eq!(code, 400);
    let metrics = proxy.metrics().await;
    for reason in [
        "not-allowlisted",
        "pending-activation",
        "redirect-denied",
        "sni-not-allowlisted",
        "port-not-allowed",
    ] {
        assert!(
            metric(
                &metrics,
                &format!("egressd_denials_recorded_total{{reason=\"{reason}\"}}")
            ) >= 1.0,
            "{reason}"
        );
    }
}

#[tokio::test]
async fn a_row_goes_once_its_entry_is_active_and_nothing_was_refused_since() {
    let origin = origin().await;
    let proxy = egressd()
        .dns("late.test", "127.0.0.1")
        .ports(&[], &[origin.port()])
        .proxy("activation_delay = \"1s\"")
        .start();
    let get = http_get(&format!("late.test:{}", origin.port()), "/")
        .replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    assert_eq!(
        status(&raw_exchange(proxy.proxy, get.as_bytes()).await),
        403
    );
    assert_eq!(
        row(&denials(&proxy, "").await, "late.test")["state"],
        "missing"
    );
    let (code, added) = proxy
        .admin_json("POST", "/v1/allowlist", r#"{"domain": "late.test"}"#)
        .await;
    assert_eq!(code, 201, "{added}");
    assert_eq!(
        row(&denials(&proxy, "").await, "late.test")["state"],
        "pending"
    );
    eventually("the row to go once late.test is active", || async {
        let rows = denials(&proxy, "").await;
        rows.iter().all(|r| r["entry"] != "late.test").then_some(())
    })
    .await;
    assert_eq!(
        status(&raw_exchange(proxy.proxy, get.as_bytes()).await),
        200
    );
}

/// 100,000 refusals to as many hosts: the record keeps at most its bound of rows, and the
/// process's memory stays near where it was after the first thousand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_to_random_hosts_stays_within_the_bound() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = egressd().start();
    let pid = proxy.child.id();
    let rss_kib = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap()
    };
    /// Sends `n` refused requests for distinct hosts on one keep-alive connection, a batch
    /// at a time, reading the answers.
    async fn flood(proxy: std::net::SocketAddr, worker: usize, n: usize) {
        let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        for batch in 0..n / 100 {
            let mut requests = String::new();
            for i in 0..100 {
                let host = format!("h{worker}-{batch}-{i}.flood.test");
                requests.push_str(&format!(
                    "GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n"
                ));
            }
            stream.write_all(requests.as_bytes()).await.unwrap();
            let mut answers = 0;
            while answers < 100 {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the proxy closed the connection");
                answers += buf[..n]
                    .windows(12)
                    .filter(|w| w == b"HTTP/1.1 403")
                    .count();
            }
        }
    }
    let flood_all = |per_worker: usize| {
        let addr = proxy.proxy;
        async move {
            let mut workers = tokio::task::JoinSet::new();
            for w in 0..8 {
                workers.spawn(flood(addr, w, per_worker));
            }
            while let Some(done) = workers.join_next().await {
                done.unwrap();
            }
        }
    };
    // A first thousand fills the record: the baseline has it.
    flood_all(200).await;
    let before = rss_kib();
    flood_all(12_500).await;
    let after = rss_kib();
    let rows = denials(&proxy, "").await;
    println!(
        "RSS after 1,600 refusals {before} KiB, after 101,600 {after} KiB; {} rows",
        rows.len()
    );
    assert!(rows.len() <= 1_000, "{} rows", rows.len());
    assert!(
        rows.len() >= 900,
        "the newest are kept: {} rows",
        rows.len()
    );
    // The record is bounded at about half a mebibyte; anything like 100,000 rows would be
    // tens of MiB.
    assert!(
        after.saturating_sub(before) < 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    let total = metric(
        &proxy.metrics().await,
        "egressd_denials_recorded_total{reason=\"not-allowlisted\"}",
    );
    assert_eq!(total, 101_600.0);
}
