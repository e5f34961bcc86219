//! mTLS origination through the real binary: a function sends plain HTTP, egressd opens TLS
//! to an upstream that requires a client certificate. The CA, server and client certificates
//! are generated here; the upstream is a real rustls server that verifies client
//! certificates and echoes the subject it saw.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use rcgen::{date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::*;
use tokio::net::TcpListener;

/// A certificate authority made for one test.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// A leaf certificate and its key (PEM), for `names`, with `cn` as its subject.
    fn issue(&self, cn: &str, names: &[&str]) -> (String, String) {
        self.issue_valid(cn, names, None)
    }

    fn issue_valid(&self, cn: &str, names: &[&str], years: Option<(i32, i32)>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some((from, to)) = years {
            params.not_before = date_time_ymd(from, 1, 1);
            params.not_after = date_time_ymd(to, 1, 1);
        }
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Files in a temp dir, by name.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// A TLS upstream for `name` whose certificate `server_ca` signs, that requires a client
/// certificate signed by `client_ca` and answers with the subject it saw.
async fn mtls_upstream(server_ca: &Ca, name: &str, client_ca: &Ca) -> u16 {
    mtls_upstream_with(server_ca, name, client_ca, false).await
}

/// Like [`mtls_upstream`]; with `close`, every response closes its connection, so the next
/// request needs a new TLS connection (and can resume the session).
async fn mtls_upstream_with(server_ca: &Ca, name: &str, client_ca: &Ca, close: bool) -> u16 {
    let (cert, key) = server_ca.issue(name, &[name]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(client_ca.pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let subject = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first().cloned())
                    .map(|der| {
                        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
                        cert.subject().to_string()
                    })
                    .unwrap_or_default();
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = format!(
                        "{} {} host={} client={}\n",
                        req.method(),
                        req.uri(),
                        req.headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or(""),
                        subject
                    );
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    if close {
                        response.headers_mut().insert(
                            "connection",
                            hyper::header::HeaderValue::from_static("close"),
                        );
                    }
                    async move { Ok::<_, hyper::Error>(response) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    port
}

/// The `[[mtls]]` table for `host` on `port` with these files.
fn mtls_table(host: &str, port: u16, cert: &Path, key: &Path, ca: &Path, extra: &str) -> String {
    format!(
        "[[mtls]]\nhost = {host:?}\nclient_cert = {:?}\nclient_key = {:?}\nca = {:?}\nport = {port}\n{extra}",
        cert.display().to_string(),
        key.display().to_string(),
        ca.display().to_string(),
    )
}

/// egressd allowing `payments.test` for plain HTTP on port 80, originating mTLS to `port`.
fn mtls_proxy(files: &Files, port: u16, extra: &str) -> EgressdBuilder {
    egressd()
        .allow_local("payments.test")
        .ports(&[443, port], &[80])
        .table(&mtls_table(
            "payments.test",
            port,
            &files.path("client.crt"),
            &files.path("client.key"),
            &files.path("server-ca.crt"),
            extra,
        ))
}

/// `curl -i` of `http://payments.test/charge` through `proxy`: status line, headers, body.
async fn charge(proxy: &Egressd) -> String {
    let url = "http://payments.test/charge";
    curl(&["-i", "-x", &proxy.proxy_url(), url], &[]).await.1
}

/// Writes a client identity from `client_ca` and the server CA's certificate.
fn write_identity(files: &Files, client_ca: &Ca, cn: &str, server_ca: &Ca) {
    let (cert, key) = client_ca.issue(cn, &[]);
    files.write("client.crt", &cert);
    files.write("client.key", &key);
    files.write("server-ca.crt", &server_ca.pem);
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

/// Writes `name` the way a careful operator or the kubelet does: a temp file, then a rename.
fn replace(files: &Files, name: &str, text: &str) {
    let tmp = files.write(&format!(".{name}.tmp"), text);
    std::fs::rename(tmp, files.path(name)).unwrap();
}

/// The client subject the upstream reports for a request through `proxy`.
async fn client_seen(proxy: &Egressd) -> String {
    let (code, body, err) = curl(
        &["-x", &proxy.proxy_url(), "http://payments.test/charge"],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    body.trim().rsplit_once("client=").unwrap().1.to_string()
}

#[tokio::test]
async fn a_rotated_client_certificate_is_presented_and_a_broken_one_keeps_the_old() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let port = mtls_upstream(&server_ca, "payments.test", &client_ca).await;
    let files = Files::new();
    write_identity(&files, &client_ca, "first", &server_ca);
    let proxy = mtls_proxy(&files, port, "").start();
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
