//! `[secrets]` and `[[inject]]`: the secret store's key file and API host, and the headers
//! egressd adds from it. The key file is read at start (and by `check`), never on reload: a
//! store sealed with one key cannot change key under a running process.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Spanned;

use super::problems::Problems;
use super::raw::{RawInject, RawSecrets};
use super::validate::{allowlist_covers, tls_port, Secrets};
use crate::egress::tls::{MtlsTable, TlsOrigin, TlsOrigins};
use crate::policy::allowlist::Pattern;
use crate::policy::host::Host;
use crate::policy::inject::{Injection, Injections, Template};
use crate::policy::origination::Origination;
use crate::policy::Policy;
use crate::secrets::{MasterKey, SecretKey};

/// The name functions reach the store by, unless `[secrets] host` says otherwise.
pub const DEFAULT_SECRETS_HOST: &str = "secrets.egressd.internal";

/// `[secrets]`, validated.
#[derive(Clone, Debug)]
pub struct SecretsSettings {
    pub key_file: PathBuf,
    /// The key, read at start; `None` in a config parsed for a reload.
    pub key: Option<Arc<MasterKey>>,
    /// The host functions send the store's API to (never resolved or forwarded).
    pub host: Host,
}

/// Headers bigger than a template could sensibly need; the secrets fill the rest.
const HOP_BY_HOP_OR_FRAMING: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "via",
];

pub fn secrets_settings(
    raw: &Option<Spanned<RawSecrets>>,
    path: &Path,
    secrets: Secrets,
    p: &mut Problems,
) -> Option<SecretsSettings> {
    let table = raw.as_ref()?;
    let raw = table.get_ref();
    let Some(key_file) = &raw.key_file else {
        p.at(
            table,
            "secrets.key_file",
            None,
            "missing: the 32-byte key that encrypts the secrets (egressd secrets new-key FILE makes one)",
        );
        return None;
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let key_path = base.join(key_file.get_ref());
    let key = match secrets {
        Secrets::Skip => None,
        Secrets::Read => match MasterKey::read(&key_path) {
            Ok(key) => {
                warn_if_readable_by_others(&key_path);
                Some(Arc::new(key))
            }
            Err(err) => {
                p.at(
                    key_file,
                    "secrets.key_file",
                    Some(key_file.get_ref().clone()),
                    err.to_string(),
                );
                return None;
            }
        },
    };
    let host_text = raw
        .host
        .as_ref()
        .map_or(DEFAULT_SECRETS_HOST, |h| h.get_ref().as_str());
    let host = match Host::parse(host_text) {
        Ok(host @ Host::Domain(_)) => host,
        _ => {
            let spanned = raw.host.as_ref().expect("the default is a domain name");
            p.at(
                spanned,
                "secrets.host",
                Some(host_text.to_string()),
                "a host name, e.g. \"secrets.egressd.internal\"",
            );
            return None;
        }
    };
    Some(SecretsSettings {
        key_file: key_path,
        key,
        host,
    })
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "secrets.key_file can be read by others than its owner; chmod 600 it");
        }
    }
}

/// What `[[inject]]` adds to the config: the policy rules, the hosts egressd opens TLS to
/// for them, and those hosts as origination rules.
#[derive(Default)]
pub struct InjectConfig {
    pub injections: Injections,
    pub origins: TlsOrigins,
    pub originations: Vec<Origination>,
}

/// `[[inject]]` entries: a pattern, a header that is not hop-by-hop or framing, a template
/// naming valid secret keys, known functions; TLS to `port` (443) with `ca` unless
/// `tls = false` or an `[[mtls]]` entry for the same pattern originates it already.
pub fn injections(
    raw: &[Spanned<RawInject>],
    path: &Path,
    policy: &Policy,
    mtls: &MtlsTable,
    secrets_on: bool,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> InjectConfig {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut rules: Vec<Injection> = Vec::new();
    let mut origins: Vec<TlsOrigin> = Vec::new();
    let mut originations = Vec::new();
    for (i, table) in raw.iter().enumerate() {
        let entry = table.get_ref();
        let line = p.line_of(table.span().start) as u32;
        let key = |field: &str| format!("inject[{i}].{field}");
        if !secrets_on {
            p.at(
                table,
                &key("value"),
                None,
                "[[inject]] takes its values from the secret store: add [secrets] with key_file",
            );
            continue;
        }
        let pattern = match Pattern::parse(entry.host.get_ref()) {
            Ok(pattern) => pattern,
            Err(err) => {
                p.at(
                    &entry.host,
                    &key("host"),
                    Some(entry.host.get_ref().clone()),
                    err.to_string(),
                );
                continue;
            }
        };
        let header = entry.header.get_ref().trim().to_ascii_lowercase();
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            p.at(
                &entry.header,
                &key("header"),
                Some(entry.header.get_ref().clone()),
                "not a valid header name",
            );
            continue;
        }
        if HOP_BY_HOP_OR_FRAMING.contains(&header.as_str()) {
            p.at(
                &entry.header,
                &key("header"),
                Some(entry.header.get_ref().clone()),
                "egressd sets this header itself (hop-by-hop or framing); inject an end-to-end header such as Authorization",
            );
            continue;
        }
        let template = match Template::parse(entry.value.get_ref()) {
            Ok(template) => template,
            Err(err) => {
                // Never echo the value: it may hold a credential typed in by mistake.
                p.at(&entry.value, &key("value"), None, err.to_string());
                continue;
            }
        };
        if let Some(err) = template.keys().find_map(|k| SecretKey::parse(k).err()) {
            p.at(&entry.value, &key("value"), None, err.to_string());
            continue;
        }
        let functions = match &entry.functions {
            None => None,
            Some(names) => {
                for name in names {
                    if policy.functions.get(name.get_ref()).is_none() {
                        warnings.push(format!(
                            "{}:{}: {}: no [[functions]] entry is named {:?}, so the rule never applies to it",
                            path.display(),
                            p.line_of(name.span().start),
                            key("functions"),
                            name.get_ref()
                        ));
                    }
                }
                Some(
                    names
                        .iter()
                        .map(|n| n.get_ref().clone())
                        .collect::<Vec<_>>(),
                )
            }
        };
        if let Some(first) = rules.iter().find(|r| {
            r.pattern == pattern && r.header == header && overlap(&r.functions, &functions)
        }) {
            p.at(
                &entry.header,
                &key("header"),
                Some(entry.header.get_ref().clone()),
                format!(
                    "the [[inject]] entry on line {} sets it for the same host and functions already; keep one, or give each its own functions",
                    first.line
                ),
            );
            continue;
        }
        let tls_fields_set = entry.tls.is_some() || entry.port.is_some() || entry.ca.is_some();
        let mtls_covers = mtls.entries().iter().any(|e| e.spec.pattern == pattern);
        if mtls_covers && tls_fields_set {
            p.at(
                table,
                &key("tls"),
                None,
                "the [[mtls]] entry for this host opens TLS (with its client certificate) already: leave out tls, port and ca here",
            );
            continue;
        }
        let tls = !mtls_covers && entry.tls.unwrap_or(true);
        if tls && !origins.iter().any(|o| o.pattern == pattern) {
            let Some(port) = tls_port(&entry.port, &key("port"), p) else {
                continue;
            };
            let ca = entry.ca.as_ref().map(|ca| base.join(ca.get_ref()));
            match TlsOrigin::load(pattern.clone(), port, ca) {
                Ok(origin) => {
                    originations.push(Origination {
                        pattern: pattern.clone(),
                        port,
                        // The injection rule refuses CONNECT itself, with its own reason.
                        allow_connect: true,
                        line,
                    });
                    origins.push(origin);
                }
                Err(err) => {
                    let ca = entry.ca.as_ref().expect("only a ca file fails to load");
                    p.at(ca, &key("ca"), Some(ca.get_ref().clone()), err.to_string());
                    continue;
                }
            }
        } else if !tls && !mtls_covers {
            warnings.push(format!(
                "{}:{line}: {}: tls = false: the injected {header} crosses the network unencrypted to {}",
                path.display(),
                key("tls"),
                pattern
            ));
        }
        if !allowlist_covers(&policy.allowlist, &pattern) {
            warnings.push(format!(
                "{}:{line}: {}: no allowlist entry covers {:?}, so nothing is sent there; add it to allowlist.domains",
                path.display(),
                key("host"),
                pattern.to_string(),
            ));
        }
        rules.push(Injection {
            pattern,
            header,
            template,
            functions,
            allow_connect: entry.allow_connect.unwrap_or(false),
            line,
        });
    }
    InjectConfig {
        injections: Injections::new(rules),
        origins: TlsOrigins::new(origins),
        originations,
    }
}

/// Whether two function filters can both apply to one request.
fn overlap(a: &Option<Vec<String>>, b: &Option<Vec<String>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|name| b.contains(name)),
        _ => true,
    }
}
