//! TLS origination with a client certificate (mTLS), as Istio's `DestinationRule` with mode
//! `MUTUAL` does: the function sends plain HTTP, egressd opens TLS to the upstream and
//! presents the configured certificate, so function code never holds the key.
//!
//! An [`MtlsTable`] maps hosts (same patterns and matching as the allowlist: the exact entry
//! wins, then the longest wildcard) to an [`MtlsEntry`]: the upstream port and the
//! [`Identity`] — a rustls client config with the certificate, the key, the roots that verify
//! the upstream, and a session cache so reconnections resume. Identities are loaded and
//! checked (readable, PEM of the right kind, key matching the certificate, inside its
//! validity) when the config is, and `egressd check` reports each failure with its file.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::policy::allowlist::{Allowlist, Pattern};
use crate::policy::host::Host;
use crate::policy::origination::{Origination, Originations};

/// How an mTLS handshake went: the `outcome` label of `egressd_mtls_handshakes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// A full handshake.
    Full,
    /// A resumed TLS session: no certificate exchange, fewer round trips.
    Resumed,
    Failed,
}

impl HandshakeOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeOutcome::Full => "full",
            HandshakeOutcome::Resumed => "resumed",
            HandshakeOutcome::Failed => "failed",
        }
    }
}

/// Told of every mTLS handshake, with the entry's pattern (metrics live above this layer).
pub type HandshakeHook = Arc<dyn Fn(&Pattern, HandshakeOutcome) + Send + Sync>;

/// A client certificate expiring within this time is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// One `[[mtls]]` entry as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtlsSpec {
    pub pattern: Pattern,
    /// The config line of the entry.
    pub line: u32,
    /// The upstream's TLS port.
    pub port: u16,
    /// Whether a CONNECT to the host is tunnelled (end-to-end TLS, no client certificate
    /// from egressd) instead of refused.
    pub allow_connect: bool,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Roots that verify the upstream; the Mozilla roots when absent.
    pub ca: Option<PathBuf>,
}

/// What the admin view and the logs show of a client certificate. Never key material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub sha256: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// A loaded client identity.
pub struct Identity {
    pub config: Arc<ClientConfig>,
    pub certificate: CertSummary,
    pub loaded_at: SystemTime,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

/// Why an identity could not be loaded; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: no {what} PEM block found", path.display())]
    NoPem { path: PathBuf, what: &'static str },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}: the key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: the certificate expired at {}", path.display(), humantime::format_rfc3339_seconds(*not_after))]
    Expired {
        path: PathBuf,
        not_after: SystemTime,
    },
    #[error("{}: the certificate is not valid before {}", path.display(), humantime::format_rfc3339_seconds(*not_before))]
    NotYetValid {
        path: PathBuf,
        not_before: SystemTime,
    },
}

impl IdentityError {
    /// The file at fault.
    pub fn path(&self) -> &Path {
        match self {
            IdentityError::Read { path, .. }
            | IdentityError::NoPem { path, .. }
            | IdentityError::Invalid { path, .. }
            | IdentityError::Expired { path, .. }
            | IdentityError::NotYetValid { path, .. } => path,
            IdentityError::KeyMismatch { key, .. } => key,
        }
    }
}

fn pem_error(path: &Path, what: &'static str, err: pem::Error) -> IdentityError {
    match err {
        pem::Error::NoItemsFound => IdentityError::NoPem {
            path: path.to_path_buf(),
            what,
        },
        pem::Error::Io(source) => IdentityError::Read {
            path: path.to_path_buf(),
            source,
        },
        other => IdentityError::Invalid {
            path: path.to_path_buf(),
            message: format!("not valid PEM: {other}"),
        },
    }
}

fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, what, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, what, e))?;
    if certs.is_empty() {
        return Err(IdentityError::NoPem {
            path: path.to_path_buf(),
            what,
        });
    }
    Ok(certs)
}

fn summarise(path: &Path, der: &CertificateDer<'_>) -> Result<CertSummary, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::Invalid {
            path: path.to_path_buf(),
            message: format!("not a valid X.509 certificate: {e}"),
        })?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sha256: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        not_before: at(cert.validity().not_before.timestamp()),
        not_after: at(cert.validity().not_after.timestamp()),
    })
}

/// Loads and checks the certificate, key and roots of `spec`, valid at `now`.
pub fn load_identity(spec: &MtlsSpec, now: SystemTime) -> Result<Identity, IdentityError> {
    let certs = read_certs(&spec.client_cert, "CERTIFICATE")?;
    let certificate = summarise(&spec.client_cert, &certs[0])?;
    if now > certificate.not_after {
        return Err(IdentityError::Expired {
            path: spec.client_cert.clone(),
            not_after: certificate.not_after,
        });
    }
    if now < certificate.not_before {
        return Err(IdentityError::NotYetValid {
            path: spec.client_cert.clone(),
            not_before: certificate.not_before,
        });
    }
    let key = PrivateKeyDer::from_pem_file(&spec.client_key)
        .map_err(|e| pem_error(&spec.client_key, "PRIVATE KEY", e))?;
    let mut roots = RootCertStore::empty();
    match &spec.ca {
        Some(ca) => {
            for cert in read_certs(ca, "CERTIFICATE")? {
                roots.add(cert).map_err(|e| IdentityError::Invalid {
                    path: ca.clone(),
                    message: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|err| match err {
            rustls::Error::InconsistentKeys(_) => IdentityError::KeyMismatch {
                cert: spec.client_cert.clone(),
                key: spec.client_key.clone(),
            },
            rustls::Error::InvalidCertificate(err) => IdentityError::Invalid {
                path: spec.client_cert.clone(),
                message: format!(
                    "not a usable client certificate: {err:?} (an X.509 v3 certificate is needed; openssl x509 -req makes one with -extfile)"
                ),
            },
            other => IdentityError::Invalid {
                path: spec.client_key.clone(),
                message: format!("not a usable private key: {other}"),
            },
        })?;
    Ok(Identity {
        config: Arc::new(config),
        certificate,
        loaded_at: now,
    })
}

/// One `[[mtls]]` entry with its loaded identity.
#[derive(Clone, Debug)]
pub struct MtlsEntry {
    pub spec: MtlsSpec,
    pub identity: Arc<Identity>,
}

/// The `[[mtls]]` entries, indexed by host.
#[derive(Clone, Debug, Default)]
pub struct MtlsTable {
    /// Entry `i` is rule `i` of the index.
    index: Allowlist,
    entries: Vec<MtlsEntry>,
}

impl MtlsTable {
    /// `entries` must not repeat a pattern (config validation refuses that).
    pub fn new(entries: Vec<MtlsEntry>) -> Self {
        let index = Allowlist::new(entries.iter().map(|e| e.spec.pattern.clone()));
        debug_assert_eq!(index.len(), entries.len(), "patterns are unique");
        MtlsTable { index, entries }
    }

    /// The entry for `host`: the exact one, else the longest matching wildcard.
    pub fn lookup(&self, host: &Host) -> Option<&MtlsEntry> {
        self.index.find(host).map(|id| &self.entries[id as usize])
    }

    /// Whether both tables have the same entries with the same certificates.
    pub fn same_as(&self, other: &MtlsTable) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| a.spec == b.spec && a.identity.certificate == b.identity.certificate)
    }

    pub fn entries(&self) -> &[MtlsEntry] {
        &self.entries
    }

    /// This table, with the identity of every entry that `rotated` has under the same spec.
    pub fn with_identities_of(&self, rotated: &MtlsTable) -> MtlsTable {
        MtlsTable::new(
            self.entries
                .iter()
                .map(|entry| {
                    rotated
                        .entries
                        .iter()
                        .find(|r| r.spec == entry.spec)
                        .unwrap_or(entry)
                        .clone()
                })
                .collect(),
        )
    }

    /// The entries as policy rules: where egressd originates TLS, and whether CONNECT may
    /// tunnel instead.
    pub fn originations(&self) -> Originations {
        Originations::new(
            self.entries
                .iter()
                .map(|e| Origination {
                    pattern: e.spec.pattern.clone(),
                    port: e.spec.port,
                    allow_connect: e.spec.allow_connect,
                    line: e.spec.line,
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Where egressd originates TLS without a client certificate: the hosts of `[[inject]]`
/// rules, so an injected credential crosses the network inside TLS although the function
/// sent plain HTTP. Same patterns and matching as the allowlist.
#[derive(Clone, Debug, Default)]
pub struct TlsOrigins {
    index: Allowlist,
    entries: Vec<TlsOrigin>,
}

/// One host egressd opens TLS to, and the roots that verify it.
#[derive(Clone)]
pub struct TlsOrigin {
    pub pattern: Pattern,
    pub port: u16,
    /// Roots that verify the upstream; the Mozilla roots when absent.
    pub ca: Option<PathBuf>,
    pub config: Arc<ClientConfig>,
}

impl fmt::Debug for TlsOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOrigin")
            .field("pattern", &self.pattern)
            .field("port", &self.port)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl TlsOrigin {
    /// Loads the roots (`ca`, or the Mozilla roots).
    pub fn load(
        pattern: Pattern,
        port: u16,
        ca: Option<PathBuf>,
    ) -> Result<TlsOrigin, IdentityError> {
        let config = match &ca {
            None => plain_tls_config(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(path, "CERTIFICATE")? {
                    roots.add(cert).map_err(|e| IdentityError::Invalid {
                        path: path.clone(),
                        message: format!("not a usable CA certificate: {e}"),
                    })?;
                }
                server_verified(roots)
            }
        };
        Ok(TlsOrigin {
            pattern,
            port,
            ca,
            config,
        })
    }
}

impl TlsOrigins {
    /// `entries` must not repeat a pattern (config validation refuses that).
    pub fn new(entries: Vec<TlsOrigin>) -> Self {
        let index = Allowlist::new(entries.iter().map(|e| e.pattern.clone()));
        TlsOrigins { index, entries }
    }

    pub fn lookup(&self, host: &Host) -> Option<&TlsOrigin> {
        self.index.find(host).map(|id| &self.entries[id as usize])
    }

    pub fn entries(&self) -> &[TlsOrigin] {
        &self.entries
    }

    /// Whether both open TLS to the same hosts and ports with the same roots.
    pub fn same_as(&self, other: &TlsOrigins) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| a.pattern == b.pattern && a.port == b.port && a.ca == b.ca)
    }
}

/// TLS without a client certificate, verified against the Mozilla roots: for `https://`
/// requests egressd sends itself (scheduled invocations) to hosts without an `[[mtls]]` entry.
pub fn plain_tls_config() -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    server_verified(roots)
}

/// TLS 1.3 or 1.2 with the ring provider, no client certificate, the server verified
/// against `roots`.
fn server_verified(roots: RootCertStore) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Opens TLS over `stream` to `host` with `config` (an identity's, or [`plain_tls_config`]).
pub async fn originate(
    config: &Arc<ClientConfig>,
    host: &Host,
    stream: TcpStream,
) -> io::Result<TlsStream<TcpStream>> {
    let name = match host {
        Host::Domain(name) => ServerName::try_from(name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
    };
    TlsConnector::from(config.clone())
        .connect(name, stream)
        .await
}

/// A TLS failure in words an operator acts on, from anywhere in an error's source chain;
/// `None` when the chain holds no TLS error.
pub fn describe_tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(describe(tls));
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(describe(tls));
            }
        }
        current = e.source();
    }
    None
}

fn describe(err: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match err {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "the upstream's certificate has an unknown issuer (not signed by the configured ca)"
                .into()
        }
        rustls::Error::InvalidCertificate(C::NotValidForName)
        | rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => {
            "the upstream's certificate does not name the host (name mismatch)".into()
        }
        rustls::Error::InvalidCertificate(C::Expired)
        | rustls::Error::InvalidCertificate(C::ExpiredContext { .. }) => {
            "the upstream's certificate has expired".into()
        }
        rustls::Error::AlertReceived(alert) => format!(
            "the upstream rejected the handshake (alert {alert:?}): it may not accept egressd's client certificate"
        ),
        other => format!("TLS failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry for `pattern` whose identity is a bare client config (no certificate needed
    /// to test matching).
    fn entry(pattern: &str, port: u16) -> MtlsEntry {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        MtlsEntry {
            spec: MtlsSpec {
                pattern: Pattern::parse(pattern).unwrap(),
                line: 1,
                port,
                allow_connect: false,
                client_cert: PathBuf::new(),
                client_key: PathBuf::new(),
                ca: None,
            },
            identity: Arc::new(Identity {
                config: Arc::new(config),
                certificate: CertSummary {
                    subject: String::new(),
                    issuer: String::new(),
                    sha256: String::new(),
                    not_before: UNIX_EPOCH,
                    not_after: UNIX_EPOCH,
                },
                loaded_at: UNIX_EPOCH,
            }),
        }
    }

    #[test]
    fn the_exact_entry_wins_then_the_longest_wildcard() {
        let table = MtlsTable::new(vec![
            entry("*.zero-trust.test", 1),
            entry("*.eu.zero-trust.test", 2),
            entry("payments.eu.zero-trust.test", 3),
        ]);
        let port = |host: &str| {
            table
                .lookup(&Host::parse(host).unwrap())
                .map(|e| e.spec.port)
        };
        // (host, the entry's port, or None)
        let cases = [
            ("payments.eu.zero-trust.test", Some(3)),
            ("billing.eu.zero-trust.test", Some(2)),
            ("billing.us.zero-trust.test", Some(1)),
            ("zero-trust.test", None),
            ("elsewhere.test", None),
        ];
        for (host, expected) in cases {
            assert_eq!(port(host), expected, "{host}");
        }
    }
}
