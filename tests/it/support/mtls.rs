//! mTLS fixtures: certificate authorities made per test, client identity files, and a TLS
//! upstream that requires a client certificate and reports the subject it saw.

use std::path::{Path, PathBuf};
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
use tokio::net::TcpListener;

use super::{curl, egressd, Egressd, EgressdBuilder};

/// A certificate authority made for one test.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// A leaf certificate and its key (PEM), for `names`, with `cn` as its subject.
    pub fn issue(&self, cn: &str, names: &[&str]) -> (String, String) {
        self.issue_valid(cn, names, None)
    }

    pub fn issue_valid(
        &self,
        cn: &str,
        names: &[&str],
        years: Option<(i32, i32)>,
    ) -> (String, String) {
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
pub struct Files(tempfile::TempDir);

impl Files {
    pub fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        self.0.path()
    }
}

/// A TLS upstream for `name` whose certificate `server_ca` signs, that requires a client
/// certificate signed by `client_ca` and answers with the subject it saw.
pub async fn mtls_upstream(server_ca: &Ca, name: &str, client_ca: &Ca) -> u16 {
    mtls_upstream_with(server_ca, name, client_ca, false).await
}

/// Like [`mtls_upstream`]; with `close`, every response closes its connection, so the next
/// request needs a new TLS connection (and can resume the session).
pub async fn mtls_upstream_with(server_ca: &Ca, name: &str, client_ca: &Ca, close: bool) -> u16 {
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
pub fn mtls_table(
    host: &str,
    port: u16,
    cert: &Path,
    key: &Path,
    ca: &Path,
    extra: &str,
) -> String {
    format!(
        "[[mtls]]\nhost = {host:?}\nclient_cert = {:?}\nclient_key = {:?}\nca = {:?}\nport = {port}\n{extra}",
        cert.display().to_string(),
        key.display().to_string(),
        ca.display().to_string(),
    )
}

/// egressd allowing `payments.test` for plain HTTP on port 80, originating mTLS to `port`.
pub fn mtls_proxy(files: &Files, port: u16, extra: &str) -> EgressdBuilder {
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

/// Writes a client identity from `client_ca` and the server CA's certificate.
pub fn write_identity(files: &Files, client_ca: &Ca, cn: &str, server_ca: &Ca) {
    let (cert, key) = client_ca.issue(cn, &[]);
    files.write("client.crt", &cert);
    files.write("client.key", &key);
    files.write("server-ca.crt", &server_ca.pem);
}

/// Writes `name` the way a careful operator or the kubelet does: a temp file, then a rename.
pub fn replace(files: &Files, name: &str, text: &str) {
    let tmp = files.write(&format!(".{name}.tmp"), text);
    std::fs::rename(tmp, files.path(name)).unwrap();
}

/// The client subject the upstream reports for a request through `proxy`.
pub async fn client_seen(proxy: &Egressd) -> String {
    let (code, body, err) = curl(
        &["-x", &proxy.proxy_url(), "http://payments.test/charge"],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    body.trim().rsplit_once("client=").unwrap().1.to_string()
}
