//! mTLS origination through the real binary: a function sends plain HTTP, egressd opens TLS
//! to an upstream that requires a client certificate. The CA, server and client certificates
//! are generated here; the upstream is a real rustls server that verifies client
//! certificates and echoes the subject it saw.

use std::process::Command;

use crate::support::mtls::*;
use crate::support::*;

/// `curl -i` of `http://payments.test/charge` through `proxy`: status line, headers, body.
async fn charge(proxy: &Egressd) -> String {
    let url = "http://payments.test/charge";
    curl(&["-i", "-x", &proxy.proxy_url(), url], &[]).await.1
}

#[tokio::test]
async fn plain_http_reaches_an_mtls_upstream_with_the_client_certificate() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let port = mtls_upstream(&server_ca, "payments.test", &client_ca).await;
    let files = Files::new();
    write_identity(&files, &client_ca, "egressd payments client", &server_ca);
    let proxy = mtls_proxy(&files, port, "").start();

    let env = [("http_proxy", proxy.proxy_url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for round in 0..2 {
        let (code, body, err) = curl(&["http://payments.test/charge"], &env).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            body, "GET /charge host=payments.test client=CN=egressd payments client\n",
            "round {round}"
        );
    }
    let log = proxy
        .wait_for_log(|l| l["target"] == "http://payments.test/charge")
        .await;
    assert_eq!(log["status"], 200);
}

#[tokio::test]
async fn tls_failures_are_502_with_the_reason() {
    let (server_ca, client_ca, stranger) = (
        Ca::new("server CA"),
        Ca::new("client CA"),
        Ca::new("stranger CA"),
    );
    let port = mtls_upstream(&server_ca, "payments.test", &client_ca).await;
    let wrong_name_port = mtls_upstream(&server_ca, "other.test", &client_ca).await;

    // (name, client identity issuer, CA egressd trusts, upstream port, expected reason part)
    let cases: [(&str, &Ca, &Ca, u16, &str); 3] = [
        (
            "the upstream rejects a client certificate from another CA",
            &stranger,
            &server_ca,
            port,
            "the upstream rejected the handshake",
        ),
        (
            "the upstream's certificate is not signed by the configured ca",
            &client_ca,
            &stranger,
            port,
            "unknown issuer",
        ),
        (
            "the upstream's certificate names another host",
            &client_ca,
            &server_ca,
            wrong_name_port,
            "name mismatch",
        ),
    ];
    for (name, issuer, trusted, port, reason) in cases {
        let files = Files::new();
        write_identity(&files, issuer, "egressd", trusted);
        let proxy = mtls_proxy(&files, port, "").start();
        let body = charge(&proxy).await;
        assert!(body.starts_with("HTTP/1.1 502 tls: "), "{name}: {body}");
        assert_eq!(header(&body, "x-egress-error"), Some("tls"), "{name}");
        assert!(body.contains(reason), "{name}: {body}");
        assert_eq!(
            proxy
                .metric("egressd_upstream_errors_total{kind=\"tls\"}")
                .await,
            1.0,
            "{name}"
        );
    }
}

#[tokio::test]
async fn connect_to_an_mtls_host_is_refused_unless_allowed() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let port = mtls_upstream(&server_ca, "payments.test", &client_ca).await;
    let files = Files::new();
    write_identity(&files, &client_ca, "egressd", &server_ca);

    let proxy = mtls_proxy(&files, port, "").start();
    let connect = format!("CONNECT payments.test:{port} HTTP/1.1\r\n\r\n");
    let response = one_response(proxy.proxy, connect.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 403 mtls-origination-required: "),
        "{response}"
    );
    assert!(
        response.contains("send plain http://payments.test/"),
        "{response}"
    );

    let proxy = mtls_proxy(&files, port, "allow_connect = true\n").start();
    open_tunnel(proxy.proxy, &format!("payments.test:{port}")).await;
}

/// Runs `egressd check` on a config with one `[[mtls]]` entry; returns (exit code, output).
fn check(files: &Files, table: &str) -> (i32, String) {
    let config = format!(
        "[proxy]\nstate_dir = {:?}\n{table}\n[allowlist]\ndomains = [\"payments.test\"]\n",
        files.path("state").display().to_string()
    );
    let path = files.write("egressd.toml", &config);
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_names_the_file_and_line_of_every_bad_certificate() {
    let (ca, other) = (Ca::new("client CA"), Ca::new("other CA"));
    let files = Files::new();
    let (cert, key) = ca.issue("egressd", &[]);
    let (_, other_key) = other.issue("someone", &[]);
    let (expired, expired_key) = ca.issue_valid("old", &[], Some((2000, 2001)));
    let (future, future_key) = ca.issue_valid("new", &[], Some((2090, 2091)));
    files.write("good.crt", &cert);
    files.write("good.key", &key);
    files.write("other.key", &other_key);
    files.write("expired.crt", &expired);
    files.write("expired.key", &expired_key);
    files.write("future.crt", &future);
    files.write("future.key", &future_key);
    files.write("ca.crt", &ca.pem);
    files.write("garbage.pem", "not PEM at all\n");
    files.write("empty-ca.crt", &key);

    // (name, cert, key, ca, expected key and message part)
    let cases = [
        (
            "missing certificate file",
            "missing.crt",
            "good.key",
            "ca.crt",
            "mtls[0].client_cert \"missing.crt\"",
        ),
        (
            "certificate file without a certificate",
            "garbage.pem",
            "good.key",
            "ca.crt",
            "no CERTIFICATE PEM block",
        ),
        (
            "key file without a key",
            "good.crt",
            "garbage.pem",
            "ca.crt",
            "no PRIVATE KEY PEM block",
        ),
        (
            "key of another certificate",
            "good.crt",
            "other.key",
            "ca.crt",
            "the key does not match the certificate",
        ),
        (
            "expired certificate",
            "expired.crt",
            "expired.key",
            "ca.crt",
            "the certificate expired at 2001-01-01",
        ),
        (
            "not yet valid certificate",
            "future.crt",
            "future.key",
            "ca.crt",
            "not valid before 2090-01-01",
        ),
        (
            "CA file without a certificate",
            "good.crt",
            "good.key",
            "empty-ca.crt",
            "mtls[0].ca \"empty-ca.crt\"",
        ),
    ];
    for (name, cert, key, ca_file, expected) in cases {
        let table = format!(
            "[[mtls]]\nhost = \"payments.test\"\nclient_cert = {cert:?}\nclient_key = {key:?}\nca = {ca_file:?}\n"
        );
        let (code, out) = check(&files, &table);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(
            out.contains("(the [[mtls]] entry on line 3)"),
            "{name}: the entry's line: {out}"
        );
        assert!(out.contains(expected), "{name}: {out}");
    }

    let table = "[[mtls]]\nhost = \"payments.test\"\nclient_cert = \"good.crt\"\nclient_key = \"good.key\"\nca = \"ca.crt\"\n";
    let (code, out) = check(&files, table);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("mtls       payments.test -> port 443 as \"CN=egressd\""),
        "{out}"
    );
}

#[test]
fn check_warns_about_an_uncovered_host_and_a_certificate_about_to_expire() {
    let ca = Ca::new("client CA");
    let files = Files::new();
    let (cert, key) = ca.issue("egressd", &[]);
    files.write("good.crt", &cert);
    files.write("good.key", &key);
    let table = "[[mtls]]\nhost = \"*.zero-trust.test\"\nclient_cert = \"good.crt\"\nclient_key = \"good.key\"\n";
    let (code, out) = check(&files, table);
    assert_eq!(code, 0, "warnings do not fail the check: {out}");
    assert!(
        out.contains("warning: ")
            && out.contains("mtls[0].host \"*.zero-trust.test\": no allowlist entry covers it"),
        "{out}"
    );
}

#[tokio::test]
async fn a_rotated_client_certificate_is_presented_and_a_broken_one_keeps_the_old() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let port = mtls_upstream(&server_ca, "payments.test", &client_ca).await;
    let files = Files::new();
    write_identity(&files, &client_ca, "first", &server_ca);
    // One worker: each worker pools its own upstream connections, and the rotation must be
    // seen through the very pool that holds a connection made with the old identity.
    let proxy = mtls_proxy(&files, port, "").proxy("workers = 1").start();
    assert_eq!(client_seen(&proxy).await, "CN=first");

    // A valid replacement: new connections present it (the pooled one is dropped).
    let (cert, key) = client_ca.issue("second", &[]);
    replace(&files, "client.key", &key);
    replace(&files, "client.crt", &cert);
    eventually("the rotated certificate to be presented", || async {
        (client_seen(&proxy).await == "CN=second").then_some(())
    })
    .await;

    // A broken replacement: the old identity keeps serving, the error shows in /v1/mtls.
    replace(
        &files,
        "client.crt",
        "-----BEGIN CERTIFICATE-----\ngarbage\n",
    );
    let view = eventually("the broken file to show in /v1/mtls", || async {
        let (_, body) = proxy.admin_get("/v1/mtls").await;
        let view: serde_json::Value = serde_json::from_str(&body).unwrap();
        (!view["entries"][0]["last_error"].is_null()).then_some(view)
    })
    .await;
    let error = view["entries"][0]["last_error"]["message"]
        .as_str()
        .unwrap();
    assert!(error.contains("client.crt"), "{error}");
    assert_eq!(client_seen(&proxy).await, "CN=second");

    // Fixed: the error clears.
    let (cert, key) = client_ca.issue("third", &[]);
    replace(&files, "client.key", &key);
    replace(&files, "client.crt", &cert);
    eventually("the fixed certificate to be presented", || async {
        (client_seen(&proxy).await == "CN=third").then_some(())
    })
    .await;
    let (_, body) = proxy.admin_get("/v1/mtls").await;
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(view["entries"][0]["last_error"].is_null(), "{view}");
}

#[tokio::test]
async fn the_admin_view_and_metrics_describe_identities_and_handshakes() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let port = mtls_upstream_with(&server_ca, "payments.test", &client_ca, true).await;
    let files = Files::new();
    write_identity(&files, &client_ca, "egressd payments client", &server_ca);
    let proxy = mtls_proxy(&files, port, "").start();
    // Each response closes its connection: the second request resumes the TLS session.
    for _ in 0..2 {
        assert_eq!(client_seen(&proxy).await, "CN=egressd payments client");
    }

    let (status, body) = proxy.admin_get("/v1/mtls").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("PRIVATE KEY"), "never key material: {body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entry = &view["entries"][0];
    assert_eq!(entry["host"], "payments.test");
    assert_eq!(entry["port"], port);
    assert_eq!(entry["subject"], "CN=egressd payments client");
    assert_eq!(entry["issuer"], "CN=client CA");
    assert_eq!(entry["sha256"].as_str().unwrap().len(), 64, "{entry}");
    assert!(
        entry["not_after"].as_str().unwrap().ends_with('Z'),
        "{entry}"
    );

    let series = |outcome: &str| {
        format!("egressd_mtls_handshakes_total{{entry=\"payments.test\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(proxy.metric(&series("full")).await, 1.0);
    assert_eq!(proxy.metric(&series("resumed")).await, 1.0);
    let expiry = proxy
        .metric("egressd_mtls_client_cert_expiry_seconds{entry=\"payments.test\"}")
        .await;
    assert!(expiry > 86_400.0, "{expiry}");
}

#[tokio::test]
async fn a_handshake_that_never_finishes_is_a_502_within_the_connect_timeout() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let silent = silent_origin().await;
    let files = Files::new();
    write_identity(&files, &client_ca, "egressd", &server_ca);
    let proxy = mtls_proxy(&files, silent.port(), "")
        .proxy("connect_timeout = \"1s\"")
        .start();
    let body = charge(&proxy).await;
    assert!(body.starts_with("HTTP/1.1 502 tls: "), "{body}");
    assert!(
        body.contains("the TLS handshake did not finish within 1s"),
        "{body}"
    );
    assert_eq!(
        proxy
            .metric("egressd_mtls_handshakes_total{entry=\"payments.test\",outcome=\"failed\"}")
            .await,
        1.0
    );
}

#[test]
fn two_entries_for_the_same_host_are_an_error() {
    let ca = Ca::new("client CA");
    let files = Files::new();
    let (cert, key) = ca.issue("egressd", &[]);
    files.write("good.crt", &cert);
    files.write("good.key", &key);
    let entry = "[[mtls]]\nhost = \"payments.test\"\nclient_cert = \"good.crt\"\nclient_key = \"good.key\"\n";
    let (code, out) = check(&files, &format!("{entry}{entry}"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "mtls[1].host \"payments.test\": the [[mtls]] entry on line 3 already covers it"
        ),
        "{out}"
    );
}

/// One verdict everywhere: for each target, the proxy, `egressd explain`, the admin API's
/// explain (the console's "Check a URL"), the redirect audit and a scheduled invocation give
/// the same answer — the `[[mtls]]` CONNECT rule included, which once lived in one caller only.
#[tokio::test]
async fn every_caller_gives_the_same_verdict() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let port = mtls_upstream(&server_ca, "payments.test", &client_ca).await;
    let files = Files::new();
    write_identity(&files, &client_ca, "egressd payments client", &server_ca);
    let open = mtls_table(
        "open.test",
        port,
        &files.path("client.crt"),
        &files.path("client.key"),
        &files.path("server-ca.crt"),
        "allow_connect = true\n",
    );
    // (name, URL, the denial code, or None when allowed)
    let cases: [(&str, String, Option<&str>); 5] = [
        (
            "https to an [[mtls]] host: a tunnel would carry no client certificate",
            format!("https://payments.test:{port}/charge"),
            Some("mtls-origination-required"),
        ),
        (
            "plain http to an [[mtls]] host: egressd originates mTLS",
            "http://payments.test/charge".into(),
            None,
        ),
        (
            "https to an [[mtls]] host whose entry allows CONNECT",
            format!("https://open.test:{port}/"),
            None,
        ),
        (
            "a host on no list",
            "https://nope.test/".into(),
            Some("not-allowlisted"),
        ),
        (
            "an [[mtls]] host's https on a closed port",
            "https://payments.test:8443/".into(),
            Some("port-not-allowed"),
        ),
    ];
    let functions: String = cases
        .iter()
        .enumerate()
        .map(|(i, (_, url, _))| {
            format!("[[functions]]\nname = \"f{i}\"\nstate = \"productive\"\nurl = \"{url}\"\n")
        })
        .collect();
    let proxy = mtls_proxy(&files, port, "")
        .allow_local("open.test")
        .dns("nope.test", "127.0.0.1")
        .table(&open)
        .table(&functions)
        .start();

    let mut disagreements = Vec::new();
    for (i, (name, url, want)) in cases.iter().enumerate() {
        let want = want.map(str::to_string);
        let mut verdicts: Vec<(&str, Option<String>)> = Vec::new();

        // The proxy, as a function's client reaches it.
        let answer = if let Some(rest) = url.strip_prefix("https://") {
            let authority = rest.split('/').next().unwrap();
            let authority = if authority.contains(':') {
                authority.to_string()
            } else {
                format!("{authority}:443")
            };
            one_response(
                proxy.proxy,
                format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes(),
            )
            .await
        } else {
            let host = url.trim_start_matches("http://").split('/').next().unwrap();
            one_response(
                proxy.proxy,
                format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
        };
        verdicts.push((
            "proxy",
            header(&answer, "x-egress-denied").map(str::to_string),
        ));

        // `egressd explain` on the same file.
        let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
            .args(["explain", "--config"])
            .arg(&proxy.config_path)
            .arg(url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let code = text
            .strip_prefix("denied (")
            .and_then(|rest| rest.split_once(')'))
            .map(|(code, _)| code.to_string());
        assert_eq!(out.status.success(), code.is_none(), "{name}: {text}");
        verdicts.push(("egressd explain", code));

        // The admin API's explain: the console's "Check a URL".
        let (_, body) = proxy
            .admin_get(&format!("/v1/explain?url={}", url.replace(':', "%3A")))
            .await;
        let view: serde_json::Value = serde_json::from_str(&body).unwrap();
        verdicts.push(("GET /v1/explain", view["code"].as_str().map(str::to_string)));

        // The redirect audit's first hop.
        let (_, body) = proxy
            .admin_json("POST", "/v1/trace", &format!("{{\"url\": \"{url}\"}}"))
            .await;
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        let hop = &report["hops"][0];
        verdicts.push(("POST /v1/trace", hop["code"].as_str().map(str::to_string)));
        if url == "http://payments.test/charge" {
            // The audit's hop goes out as the proxy's would: mTLS to the entry's port.
            assert_eq!(hop["status"], 200, "{name}: {report}");
        }

        // A scheduled invocation of a function at that URL.
        let (status, body) = proxy
            .admin_json(
                "POST",
                "/v1/schedules",
                &format!("{{\"function\": \"f{i}\", \"cron\": \"@yearly\"}}"),
            )
            .await;
        assert_eq!(status, 201, "{name}: {body}");
        let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (_, body) = proxy
            .admin_json("POST", &format!("/v1/schedules/{id}/run"), "")
            .await;
        let run: serde_json::Value = serde_json::from_str(&body).unwrap();
        let status = run["last_status"].as_str().unwrap_or("").to_string();
        let denied = status.contains('-').then_some(status);
        verdicts.push(("scheduled invocation", denied));
        proxy
            .admin_json("DELETE", &format!("/v1/schedules/{id}"), "")
            .await;

        for (caller, got) in verdicts {
            if got != want {
                disagreements.push(format!("{name}: {caller} says {got:?}, want {want:?}"));
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}

/// A reload that adds an `[[mtls]]` entry cuts the open CONNECT tunnels to its host: they
/// carry TLS without the client certificate the new entry says to present.
#[tokio::test]
async fn a_reload_that_adds_an_mtls_entry_cuts_tunnels_to_its_host() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let port = mtls_upstream(&server_ca, "payments.test", &client_ca).await;
    let files = Files::new();
    write_identity(&files, &client_ca, "egressd", &server_ca);
    // The tunnel carries no TLS here, so the first-flight check is off.
    let without = egressd()
        .allow_local("payments.test")
        .ports(&[443, port], &[80])
        .proxy("connect_sni = \"off\"");
    let with = mtls_proxy(&files, port, "").proxy("connect_sni = \"off\"");
    let proxy = without.start();
    let mut tunnel = open_tunnel(proxy.proxy, &format!("payments.test:{port}")).await;

    let state = proxy.config_path.parent().unwrap().join("state");
    write_file(&proxy.config_path, &with.config_text(&state), Write::Rename);
    let _ = read_to_close(&mut tunnel, "the tunnel to the new [[mtls]] host").await;
    let log = proxy.wait_for_log(|v| v["method"] == "CONNECT").await;
    assert_eq!(log["tunnel_end"], "revoked", "{log}");
    let response = one_response(
        proxy.proxy,
        format!("CONNECT payments.test:{port} HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 403 mtls-origination-required"),
        "{response}"
    );
}
