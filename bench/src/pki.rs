//! The certificates of the mTLS scenarios, made fresh at every run with rcgen (ECDSA P-256):
//! a server CA signing the TLS upstream's certificate, and a client CA signing the identity
//! that egressd, or the harness client on the direct path, presents. They are written as PEM
//! files because egressd and the upstream child process read them from disk; both sides'
//! rustls configs are built here from those files, with the ring provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tempfile::TempDir;

/// The CA that signs the upstream's certificate: egressd's `ca`.
pub const SERVER_CA: &str = "server-ca.crt";
pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";
/// The CA the upstream verifies client certificates against.
pub const CLIENT_CA: &str = "client-ca.crt";
pub const CLIENT_CERT: &str = "client.crt";
pub const CLIENT_KEY: &str = "client.key";

/// A directory holding one run's certificates and keys, removed on drop.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    /// Makes both CAs, a server certificate for `names` and a client certificate.
    pub fn generate(names: &[&str]) -> anyhow::Result<Pki> {
        let dir = tempfile::tempdir()?;
        let write = |name: &str, pem: &str| {
            std::fs::write(dir.path().join(name), pem).with_context(|| format!("writing {name}"))
        };
        let (server_ca, server_ca_pem) = ca("egressd-bench server CA")?;
        let (client_ca, client_ca_pem) = ca("egressd-bench client CA")?;
        let (server, server_key) = leaf(&server_ca, "egressd-bench upstream", names)?;
        let (client, client_key) = leaf(&client_ca, "egressd-bench client", &[])?;
        write(SERVER_CA, &server_ca_pem)?;
        write(SERVER_CERT, &server)?;
        write(SERVER_KEY, &server_key)?;
        write(CLIENT_CA, &client_ca_pem)?;
        write(CLIENT_CERT, &client)?;
        write(CLIENT_KEY, &client_key)?;
        Ok(Pki { dir })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A self-signed CA: what signs with it, and its certificate as PEM.
fn ca(name: &str) -> anyhow::Result<(CertifiedIssuer<'static, KeyPair>, String)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let pem = issuer.pem();
    Ok((issuer, pem))
}

/// A certificate for `names` (none for a client) and its key, as PEM.
fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    names: &[&str],
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading {}", path.display()))
}

fn roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

fn key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).with_context(|| format!("reading {}", path.display()))
}

/// The upstream's config: it requires a client certificate the client CA signed. With
/// `resumption`, rustls's defaults (a 256-entry session cache, two TLS 1.3 tickets per
/// handshake); without, it keeps no sessions and sends no tickets, so every handshake is full.
pub fn server_config(dir: &Path, resumption: bool) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&dir.join(CLIENT_CA))?),
        provider.clone(),
    )
    .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&dir.join(SERVER_CERT))?, key(&dir.join(SERVER_KEY))?)?;
    if !resumption {
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// The direct path's client config: the same identity and trust egressd is given, and
/// rustls's default client session cache, as egressd has.
pub fn client_config(dir: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&dir.join(SERVER_CA))?)
        .with_client_auth_cert(certs(&dir.join(CLIENT_CERT))?, key(&dir.join(CLIENT_KEY))?)?;
    Ok(Arc::new(config))
}
