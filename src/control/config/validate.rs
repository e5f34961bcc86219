//! Raw values → validated types: each check pushes its problem and goes on.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::problems::Problems;
use super::raw::{RawConfig, RawDns, RawFunction, RawMtls, RawProxy, RawState};
use super::TokenFile;
use super::{AdminToken, ProxySettings, DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN, MIN_HEAD_BYTES};
use crate::egress::resolve::DnsSettings;
use crate::egress::tls::{load_identity, MtlsEntry, MtlsSpec, MtlsTable, EXPIRY_WARNING};
use crate::egress::tunnel::RelayKind;
use crate::policy::allowlist::{Allowlist, Pattern};
use crate::policy::function::{self as function, Function, Functions};
use crate::policy::host::Host;
use crate::policy::identity::IdentityMode;
use crate::policy::netguard::PrivateAllow;
use crate::policy::Policy;
use crate::proxy::headers::is_pseudonym;
use crate::proxy::sni::SniCheck;
use crate::state::{parse_url, PgSettings, StateSettings};

/// Whether parsing reads secret files.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    Read,
    Skip,
}

pub fn proxy_settings(raw: &RawProxy, secrets: Secrets, p: &mut Problems) -> Option<ProxySettings> {
    let listen = p.addr(&raw.listen, "proxy.listen", DEFAULT_LISTEN);
    let admin_listen = p.addr(
        &raw.admin_listen,
        "proxy.admin_listen",
        DEFAULT_ADMIN_LISTEN,
    );
    let token_file = raw
        .admin_token_file
        .as_ref()
        .filter(|_| secrets == Secrets::Read);
    let admin_token = token_file.and_then(|file| {
        let path = Path::new(file.get_ref());
        match std::fs::read_to_string(path) {
            Ok(token) if !token.trim().is_empty() => Some(AdminToken(token.trim().to_string())),
            Ok(_) => {
                p.at(
                    file,
                    "proxy.admin_token_file",
                    Some(file.get_ref().clone()),
                    "the token file is empty",
                );
                None
            }
            Err(err) => {
                p.at(
                    file,
                    "proxy.admin_token_file",
                    Some(file.get_ref().clone()),
                    format!("cannot read {}: {err}", path.display()),
                );
                None
            }
        }
    });
    if let Some(addr) = admin_listen {
        if !addr.ip().is_loopback() && raw.admin_token_file.is_none() {
            let value = raw
                .admin_listen
                .as_ref()
                .expect("non-default address was configured");
            p.at(
                value,
                "proxy.admin_listen",
                Some(addr.to_string()),
                "a non-loopback admin listener needs proxy.admin_token_file",
            );
        }
    }
    let settings = ProxySettings {
        listen: listen?,
        admin_listen: admin_listen?,
        admin_token,
        // The console edits the config file only for operators on the machine itself unless
        // told otherwise: a remote admin port is more often a scrape target than a console.
        admin_allowlist_edit: raw
            .admin_allowlist_edit
            .unwrap_or_else(|| admin_listen.is_some_and(|a| a.ip().is_loopback())),
        connect_timeout: p.duration(
            &raw.connect_timeout,
            "proxy.connect_timeout",
            Duration::from_secs(10),
        ),
        idle_timeout: p.duration(
            &raw.idle_timeout,
            "proxy.idle_timeout",
            Duration::from_secs(300),
        ),
        header_read_timeout: p.duration(
            &raw.header_read_timeout,
            "proxy.header_read_timeout",
            Duration::from_secs(10),
        ),
        response_header_timeout: p.duration(
            &raw.response_header_timeout,
            "proxy.response_header_timeout",
            Duration::from_secs(60),
        ),
        shutdown_grace: p.duration(
            &raw.shutdown_grace,
            "proxy.shutdown_grace",
            Duration::from_secs(30),
        ),
        drain_delay: p.duration(
            &raw.drain_delay,
            "proxy.drain_delay",
            Duration::from_secs(5),
        ),
        activation_delay: p.duration(
            &raw.activation_delay,
            "proxy.activation_delay",
            Duration::from_secs(300),
        ),
        state_dir: raw
            .state_dir
            .as_ref()
            .map(|d| PathBuf::from(d.get_ref()))
            .unwrap_or_else(|| PathBuf::from("state")),
        max_request_head_bytes: p.positive(
            &raw.max_request_head_bytes,
            "proxy.max_request_head_bytes",
            MIN_HEAD_BYTES,
            64 * 1024,
        ),
        max_connections: p.positive(&raw.max_connections, "proxy.max_connections", 1, 10_000),
        tunnel_relay: tunnel_relay(&raw.tunnel_relay, p),
        connect_sni: connect_sni(&raw.connect_sni, p),
        identity: identity_mode(&raw.identity, p),
        via_name: via_name(&raw.via_name, p),
        workers: p.positive(&raw.workers, "proxy.workers", 1, default_workers()),
        schedule_timeout: p.duration(
            &raw.schedule_timeout,
            "proxy.schedule_timeout",
            Duration::from_secs(30),
        ),
    };
    Some(settings)
}

pub fn dns_settings(raw: &RawDns, p: &mut Problems) -> (DnsSettings, HashMap<Box<str>, IpAddr>) {
    let mut overrides = HashMap::new();
    for (name, value) in &raw.overrides {
        let key = format!("dns.overrides.\"{name}\"");
        let host = match Host::parse(name) {
            Ok(Host::Domain(d)) => d,
            Ok(Host::Ip(_)) => {
                p.at(
                    value,
                    &key,
                    None,
                    "an override maps a name, not an IP literal",
                );
                continue;
            }
            Err(err) => {
                p.at(value, &key, None, err.to_string());
                continue;
            }
        };
        match value.get_ref().parse::<IpAddr>() {
            Ok(ip) => {
                overrides.insert(host, ip);
            }
            Err(_) => p.at(
                value,
                &key,
                Some(value.get_ref().clone()),
                "expected an IP address, e.g. \"127.0.0.1\"",
            ),
        }
    }
    let mut servers = Vec::new();
    for (i, value) in raw.servers.iter().enumerate() {
        let text = value.get_ref();
        let parsed = text
            .parse::<SocketAddr>()
            .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
        match parsed {
            Ok(addr) => servers.push(addr),
            Err(_) => p.at(
                value,
                &format!("dns.servers[{i}]"),
                Some(text.clone()),
                "expected an IP address, optionally with a port",
            ),
        }
    }
    let timeout = p.duration(&raw.timeout, "dns.timeout", Duration::from_secs(5));
    (DnsSettings { servers, timeout }, overrides)
}

pub fn policy(
    raw: &RawConfig,
    dns_overrides: HashMap<Box<str>, IpAddr>,
    p: &mut Problems,
) -> Policy {
    let domains = match &raw.allowlist.domains {
        Some(domains) => domains.as_slice(),
        None => {
            p.push(
                None,
                "allowlist.domains",
                None,
                "missing; list the allowed hosts, or write `domains = []` to deny everything"
                    .into(),
            );
            &[]
        }
    };
    let mut patterns = Vec::with_capacity(domains.len());
    for (i, entry) in domains.iter().enumerate() {
        match Pattern::parse(entry.get_ref()) {
            Ok(pattern) => {
                let line = p.line_of(entry.span().start) as u32;
                patterns.push((pattern, line));
            }
            Err(err) => p.at(
                entry,
                &format!("allowlist.domains[{i}]"),
                Some(entry.get_ref().clone()),
                err.to_string(),
            ),
        }
    }
    let mut nets = Vec::new();
    for (i, value) in raw.proxy.allow_private_cidrs.iter().enumerate() {
        match value.get_ref().parse::<IpNet>() {
            Ok(net) if net.trunc() == net => nets.push(net),
            Ok(net) => p.at(
                value,
                &format!("proxy.allow_private_cidrs[{i}]"),
                Some(value.get_ref().clone()),
                format!("host bits are set; write \"{}\"", net.trunc()),
            ),
            Err(_) => p.at(
                value,
                &format!("proxy.allow_private_cidrs[{i}]"),
                Some(value.get_ref().clone()),
                "expected a CIDR, e.g. \"10.0.0.0/8\"",
            ),
        }
    }
    Policy {
        allowlist: Allowlist::with_lines(patterns),
        connect_ports: p.ports(&raw.proxy.connect_ports, "proxy.connect_ports", 443),
        http_ports: p.ports(&raw.proxy.http_ports, "proxy.http_ports", 80),
        private: PrivateAllow::new(nets),
        dns_overrides,
        // Filled from the `[[mtls]]`, `[[inject]]` and `[[functions]]` tables once read.
        origination: Default::default(),
        injections: Default::default(),
        functions: Default::default(),
    }
}

fn tunnel_relay(raw: &Option<toml::Spanned<String>>, p: &mut Problems) -> RelayKind {
    let Some(value) = raw else {
        return RelayKind::default();
    };
    match value.get_ref().as_str() {
        "splice" => RelayKind::Splice,
        "copy" => RelayKind::Copy,
        other => {
            p.at(
                value,
                "proxy.tunnel_relay",
                Some(other.to_string()),
                "expected \"splice\" (zero-copy, the default) or \"copy\"",
            );
            RelayKind::default()
        }
    }
}

fn identity_mode(raw: &Option<toml::Spanned<String>>, p: &mut Problems) -> IdentityMode {
    let Some(value) = raw else {
        return IdentityMode::default();
    };
    IdentityMode::parse(value.get_ref()).unwrap_or_else(|| {
        p.at(
            value,
            "proxy.identity",
            Some(value.get_ref().clone()),
            "expected \"off\", \"optional\" (credentials in the proxy URL are checked when sent, the default) or \"required\" (every request needs a function's credentials)",
        );
        IdentityMode::default()
    })
}

fn connect_sni(raw: &Option<toml::Spanned<String>>, p: &mut Problems) -> SniCheck {
    let Some(value) = raw else {
        return SniCheck::default();
    };
    match value.get_ref().as_str() {
        "allowlisted" => SniCheck::Allowlisted,
        "match" => SniCheck::Match,
        "off" => SniCheck::Off,
        other => {
            p.at(
                value,
                "proxy.connect_sni",
                Some(other.to_string()),
                "expected \"allowlisted\" (a tunnel's TLS SNI must be allowed too, the default), \"match\" (it must name the CONNECT host) or \"off\"",
            );
            SniCheck::default()
        }
    }
}

/// The `Via` pseudonym: as configured, else the host name, else "egressd".
fn via_name(raw: &Option<toml::Spanned<String>>, p: &mut Problems) -> String {
    if let Some(value) = raw {
        if !is_pseudonym(value.get_ref()) {
            p.at(
                value,
                "proxy.via_name",
                Some(value.get_ref().clone()),
                "expected a token of at most 64 characters (letters, digits and -._~!#$%&'*+^`|), e.g. \"egressd-gw-1\"",
            );
        }
        return value.get_ref().clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| is_pseudonym(h))
        .unwrap_or_else(|| "egressd".into())
}

/// One proxy worker per CPU the process may use.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `[[mtls]]` entries: patterns as in the allowlist, paths relative to the config file, every
/// certificate and key loaded and checked now.
pub fn mtls(
    raw: &[toml::Spanned<RawMtls>],
    config_path: &Path,
    policy: &Policy,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> MtlsTable {
    let base = config_path.parent().unwrap_or(Path::new("."));
    let now = std::time::SystemTime::now();
    let mut entries: Vec<MtlsEntry> = Vec::new();
    for (i, table) in raw.iter().enumerate() {
        let entry = table.get_ref();
        let line = p.line_of(table.span().start) as u32;
        let key = |field: &str| format!("mtls[{i}].{field}");
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
        if let Some(first) = entries.iter().find(|e| e.spec.pattern == pattern) {
            p.at(
                &entry.host,
                &key("host"),
                Some(entry.host.get_ref().clone()),
                format!(
                    "the [[mtls]] entry on line {} already covers it; keep one",
                    first.spec.line
                ),
            );
            continue;
        }
        let Some(port) = tls_port(&entry.port, &key("port"), p) else {
            continue;
        };
        let spec = MtlsSpec {
            pattern,
            line,
            port,
            allow_connect: entry.allow_connect.unwrap_or(false),
            client_cert: base.join(entry.client_cert.get_ref()),
            client_key: base.join(entry.client_key.get_ref()),
            ca: entry.ca.as_ref().map(|ca| base.join(ca.get_ref())),
        };
        let identity = match load_identity(&spec, now) {
            Ok(identity) => identity,
            Err(err) => {
                let field = if err.path() == spec.client_key {
                    (&entry.client_key, "client_key")
                } else if Some(err.path()) == spec.ca.as_deref() {
                    (entry.ca.as_ref().expect("a ca path was configured"), "ca")
                } else {
                    (&entry.client_cert, "client_cert")
                };
                p.at(
                    field.0,
                    &key(field.1),
                    Some(field.0.get_ref().clone()),
                    format!("{err} (the [[mtls]] entry on line {line})"),
                );
                continue;
            }
        };
        let left = identity
            .certificate
            .not_after
            .duration_since(now)
            .unwrap_or_default();
        if left < EXPIRY_WARNING {
            warnings.push(format!(
                "{}:{line}: mtls[{i}].client_cert {:?}: expires in {} days ({})",
                config_path.display(),
                entry.client_cert.get_ref(),
                left.as_secs() / 86_400,
                humantime::format_rfc3339_seconds(identity.certificate.not_after),
            ));
        }
        if !allowlist_covers(&policy.allowlist, &spec.pattern) {
            warnings.push(format!(
                "{}:{line}: mtls[{i}].host {:?}: no allowlist entry covers it, so the entry allows nothing; add {:?} to allowlist.domains",
                config_path.display(),
                entry.host.get_ref(),
                spec.pattern.to_string(),
            ));
        }
        entries.push(MtlsEntry {
            spec,
            identity: std::sync::Arc::new(identity),
        });
    }
    MtlsTable::new(entries)
}

/// Whether some allowlist entry allows the hosts `pattern` names (a wildcard: a made-up
/// subdomain of it).
/// A TLS upstream port, 443 when not set; `None` (the problem recorded under `key`) when
/// it is not a port.
pub(super) fn tls_port(
    raw: &Option<toml::Spanned<i64>>,
    key: &str,
    p: &mut Problems,
) -> Option<u16> {
    let Some(port) = raw else {
        return Some(443);
    };
    match u16::try_from(*port.get_ref()) {
        Ok(n) if n > 0 => Some(n),
        _ => {
            p.at(
                port,
                key,
                Some(port.get_ref().to_string()),
                "a port is a number from 1 to 65535",
            );
            None
        }
    }
}

pub(super) fn allowlist_covers(allowlist: &Allowlist, pattern: &Pattern) -> bool {
    let host = match pattern {
        Pattern::Exact(name) => Host::parse(name),
        Pattern::Wildcard(suffix) => Host::parse(&format!("egressd-probe.{suffix}")),
        Pattern::Ip(ip) => Ok(Host::Ip(*ip)),
    };
    host.is_ok_and(|host| allowlist.find(&host).is_some())
}

/// `[[functions]]`: names unique and well-formed, a known state, an http(s) URL; each
/// `token_file` relative to the config's directory, read and checked when `secrets` says so
/// (at start and by `check`; a reload leaves the files to the identity keeper, which keeps a
/// function's old tokens when its new file is bad).
pub fn functions(
    raw: &[toml::Spanned<RawFunction>],
    path: &Path,
    secrets: Secrets,
    p: &mut Problems,
) -> (Functions, Vec<TokenFile>) {
    let mut functions: Vec<Function> = Vec::new();
    let mut token_files = Vec::new();
    for (i, table) in raw.iter().enumerate() {
        let entry = table.get_ref();
        let key = |field: &str| format!("functions[{i}].{field}");
        let name = function::parse_name(entry.name.get_ref());
        let state = function::parse_state(entry.state.get_ref());
        let url = function::parse_url(entry.url.get_ref());
        for (value, field, err) in [
            (&entry.name, "name", name.as_ref().err()),
            (&entry.state, "state", state.as_ref().err()),
            (&entry.url, "url", url.as_ref().err()),
        ] {
            if let Some(err) = err {
                p.at(
                    value,
                    &key(field),
                    Some(value.get_ref().clone()),
                    err.to_string(),
                );
            }
        }
        let (Ok(name), Ok(state), Ok(url)) = (name, state, url) else {
            continue;
        };
        if functions.iter().any(|f| f.name == name) {
            p.at(
                &entry.name,
                &key("name"),
                Some(name),
                "another [[functions]] entry has this name; names are unique",
            );
            continue;
        }
        if let Some(file) = &entry.token_file {
            let token_file = TokenFile {
                function: name.clone(),
                path: relative_to(path, file.get_ref()),
            };
            if secrets == Secrets::Read {
                if let Err(err) = token_file.read() {
                    p.at(file, &key("token_file"), Some(file.get_ref().clone()), err);
                }
            }
            // An undeployed function's token opens nothing; it stays checked by `check`.
            if state == function::DeployState::Productive {
                token_files.push(token_file);
            }
        }
        functions.push(Function { name, state, url });
    }
    (Functions::new(functions), token_files)
}

/// `[state]`: the backend, and for postgres where the URL comes from. `url_file` is a secret
/// read only at start (`secrets`); a password written into `url` is taken, with a warning.
pub fn state_settings(
    raw: &RawState,
    path: &Path,
    secrets: Secrets,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> StateSettings {
    let backend = raw.backend.as_ref();
    match backend.map(|b| b.get_ref().as_str()) {
        None | Some("file") => {
            for (key, value) in [("state.url", &raw.url), ("state.url_file", &raw.url_file)] {
                if let Some(value) = value {
                    p.at(value, key, None, "only the postgres backend reads it; set state.backend = \"postgres\" or remove it");
                }
            }
            StateSettings::File
        }
        Some("postgres") => {
            let ca_file = raw.ca_file.as_ref().map(|f| relative_to(path, f.get_ref()));
            let (url, source) = match (&raw.url, &raw.url_file) {
                (Some(url), None) => {
                    let parsed = parse_url(url.get_ref());
                    if let Ok(config) = &parsed {
                        if config.get_password().is_some() {
                            warnings.push(format!(
                                "{}: state.url holds a password; put the URL in a file and name it with state.url_file",
                                path.display()
                            ));
                        }
                    }
                    let parsed = parsed.map_err(|e| p.at(url, "state.url", None, e)).ok();
                    (parsed, "state.url".to_string())
                }
                (None, Some(file)) => {
                    let file_path = relative_to(path, file.get_ref());
                    let source = format!("state.url_file {}", file_path.display());
                    if secrets == Secrets::Skip {
                        (None, source)
                    } else {
                        let read = std::fs::read_to_string(&file_path)
                            .map_err(|e| format!("cannot read {}: {e}", file_path.display()))
                            .and_then(|text| {
                                parse_url(&text)
                                    .map_err(|e| format!("{}: {e}", file_path.display()))
                            });
                        let value = Some(file.get_ref().clone());
                        (
                            read.map_err(|e| p.at(file, "state.url_file", value, e))
                                .ok(),
                            source,
                        )
                    }
                }
                (Some(url), Some(_)) => {
                    p.at(
                        url,
                        "state.url",
                        None,
                        "set state.url or state.url_file, not both",
                    );
                    (None, String::new())
                }
                (None, None) => {
                    p.at(
                        backend.expect("matched postgres"),
                        "state.backend",
                        Some("postgres".into()),
                        "the postgres backend needs state.url_file (or state.url), e.g. url_file = \"/run/secrets/egressd-db-url\"",
                    );
                    (None, String::new())
                }
            };
            StateSettings::Postgres(Box::new(PgSettings {
                url,
                source,
                ca_file,
            }))
        }
        Some(other) => {
            p.at(
                backend.expect("matched some"),
                "state.backend",
                Some(other.to_string()),
                "expected \"file\" (one replica, proxy.state_dir) or \"postgres\" (several replicas)",
            );
            StateSettings::File
        }
    }
}

/// A path from the config, relative to the config file's directory.
fn relative_to(config: &Path, value: &str) -> PathBuf {
    let value = Path::new(value);
    match config.parent() {
        Some(dir) if value.is_relative() => dir.join(value),
        _ => value.to_path_buf(),
    }
}
