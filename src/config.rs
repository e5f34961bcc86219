//! Configuration: TOML file → [`RawConfig`] (serde, unknown keys refused) → [`Config`].
//!
//! The raw types keep every value's byte span so that each problem can be reported as
//! `file:line: key "value": what to write instead`. Validation collects all problems rather
//! than stopping at the first, so one `egressd check` run shows everything to fix. A syntax
//! error stops parsing, so it is reported alone.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::allowlist::{Allowlist, Pattern};
use crate::host::Host;
use crate::netguard::PrivateAllow;
use crate::policy::{Policy, PortSet};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    proxy: RawProxy,
    dns: RawDns,
    allowlist: RawAllowlist,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawProxy {
    listen: Option<Spanned<String>>,
    admin_listen: Option<Spanned<String>>,
    admin_token_file: Option<Spanned<String>>,
    connect_ports: Option<Vec<Spanned<i64>>>,
    http_ports: Option<Vec<Spanned<i64>>>,
    allow_private_cidrs: Vec<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    header_read_timeout: Option<Spanned<String>>,
    response_header_timeout: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    activation_delay: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    max_request_head_bytes: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDns {
    overrides: BTreeMap<String, Spanned<String>>,
    servers: Vec<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawAllowlist {
    /// Required: a file cut short before this key must not read as "allow nothing".
    domains: Option<Vec<Spanned<String>>>,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    pub proxy: ProxySettings,
    pub dns: DnsSettings,
    pub policy: Policy,
}

/// Listener and limit settings, fixed for the life of the process.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<AdminToken>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Slowloris guard: the whole request head must arrive within this time.
    pub header_read_timeout: Duration,
    /// A forwarded request's upstream must send its response head within this time.
    pub response_header_timeout: Duration,
    pub shutdown_grace: Duration,
    /// How long a newly added allowlist pattern waits before it allows anything.
    pub activation_delay: Duration,
    /// Where activation state survives restarts.
    pub state_dir: PathBuf,
    /// Largest request head accepted; larger ones get 431.
    pub max_request_head_bytes: usize,
    /// Client connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
}

/// Resolver settings (the static overrides are part of [`Policy`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsSettings {
    /// Name servers to ask; empty means the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    pub timeout: Duration,
}

/// The bearer token for state-changing admin endpoints. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn matches(&self, presented: &str) -> bool {
        // Constant-time over the token length: no early exit on the first differing byte.
        let a = self.0.as_bytes();
        let b = presented.as_bytes();
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(****)")
    }
}

/// One thing wrong with a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
    pub value: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if !self.key.is_empty() {
            write!(f, "{}", self.key)?;
            if let Some(value) = &self.value {
                write!(f, " {value:?}")?;
            }
            write!(f, ": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(problems) => problems.iter().map(|p| p.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }
}

const DEFAULT_LISTEN: &str = "127.0.0.1:3128";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// hyper's read buffer cannot be smaller than this.
const MIN_HEAD_BYTES: i64 = 8192;

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_text(path).map(|(config, _)| config)
    }

    /// Like [`Config::load`], also returning the text that was validated.
    pub fn load_with_text(path: &Path) -> Result<(Config, String), ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &src).map(|config| (config, src))
    }

    /// Validates config text; `path` is used for messages and relative paths.
    pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigError> {
        Self::parse_with(path, src, Secrets::Read)
    }

    /// Validates config text for a reload: restart-only secrets (the admin token) are not
    /// read, so a rotated or unreadable token file cannot block allowlist changes.
    pub fn parse_for_reload(path: &Path, src: &str) -> Result<Config, ConfigError> {
        Self::parse_with(path, src, Secrets::Skip)
    }

    fn parse_with(path: &Path, src: &str, secrets: Secrets) -> Result<Config, ConfigError> {
        let mut problems = Problems::new(path, src);
        if src.trim().is_empty() {
            // Most often a file caught between truncate and write.
            problems.push(None, "", None, "the file is empty".into());
            return Err(ConfigError::Invalid(problems.list));
        }
        let raw: RawConfig = match toml::from_str(src) {
            Ok(raw) => raw,
            Err(err) => {
                let line = err.span().map(|s| problems.line_of(s.start));
                problems.push(line, "", None, err.message().trim().to_string());
                return Err(ConfigError::Invalid(problems.list));
            }
        };
        let proxy = proxy_settings(&raw.proxy, secrets, &mut problems);
        let (dns, overrides) = dns_settings(&raw.dns, &mut problems);
        let policy = policy(&raw, overrides, &mut problems);
        match (proxy, problems.list.is_empty()) {
            (Some(proxy), true) => Ok(Config {
                path: path.to_path_buf(),
                proxy,
                dns,
                policy,
            }),
            _ => Err(ConfigError::Invalid(problems.list)),
        }
    }
}

/// Collects problems with line numbers computed from spans.
struct Problems {
    file: String,
    /// Byte offset at which each line starts, so a span's line is a binary search — a
    /// 100k-entry allowlist asks for 100k of them.
    line_starts: Vec<usize>,
    list: Vec<Problem>,
}

impl Problems {
    fn new(path: &Path, src: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(
                src.bytes()
                    .enumerate()
                    .filter(|(_, b)| *b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        Problems {
            file: path.display().to_string(),
            line_starts,
            list: Vec::new(),
        }
    }

    /// 1-based line of a byte offset.
    fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|start| *start <= offset)
    }

    fn push(&mut self, line: Option<usize>, key: &str, value: Option<String>, message: String) {
        self.list.push(Problem {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            value,
            message,
        });
    }

    fn at<T>(
        &mut self,
        spanned: &Spanned<T>,
        key: &str,
        value: Option<String>,
        message: impl Into<String>,
    ) {
        let line = Some(self.line_of(spanned.span().start));
        self.push(line, key, value, message.into());
    }

    fn addr(
        &mut self,
        raw: &Option<Spanned<String>>,
        key: &str,
        default: &str,
    ) -> Option<SocketAddr> {
        let Some(value) = raw else {
            return Some(default.parse().expect("default address"));
        };
        match value.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.at(
                    value,
                    key,
                    Some(value.get_ref().clone()),
                    "expected an IP address and port, e.g. \"127.0.0.1:3128\"",
                );
                None
            }
        }
    }

    fn duration(
        &mut self,
        raw: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(value) = raw else { return default };
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) => d,
            Err(err) => {
                self.at(
                    value,
                    key,
                    Some(value.get_ref().clone()),
                    format!("{err}; write e.g. \"10s\", \"5m\" or \"1h 30m\""),
                );
                default
            }
        }
    }

    fn positive(
        &mut self,
        raw: &Option<Spanned<i64>>,
        key: &str,
        min: i64,
        default: usize,
    ) -> usize {
        let Some(value) = raw else { return default };
        let n = *value.get_ref();
        if n < min {
            self.at(
                value,
                key,
                Some(n.to_string()),
                format!("must be at least {min}"),
            );
            return default;
        }
        n as usize
    }

    fn ports(&mut self, raw: &Option<Vec<Spanned<i64>>>, key: &str, default: u16) -> PortSet {
        let Some(values) = raw else {
            return PortSet::new(vec![default]);
        };
        let mut ports = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            match u16::try_from(*value.get_ref()) {
                Ok(p) if p > 0 => ports.push(p),
                _ => self.at(
                    value,
                    &format!("{key}[{i}]"),
                    Some(value.get_ref().to_string()),
                    "a port is a number from 1 to 65535",
                ),
            }
        }
        PortSet::new(ports)
    }
}

/// Whether parsing reads secret files.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Secrets {
    Read,
    Skip,
}

fn proxy_settings(raw: &RawProxy, secrets: Secrets, p: &mut Problems) -> Option<ProxySettings> {
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
    };
    Some(settings)
}

fn dns_settings(raw: &RawDns, p: &mut Problems) -> (DnsSettings, HashMap<Box<str>, IpAddr>) {
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

fn policy(raw: &RawConfig, dns_overrides: HashMap<Box<str>, IpAddr>, p: &mut Problems) -> Policy {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("cfg.toml"), src)
    }

    fn problems(src: &str) -> Vec<String> {
        parse(src).unwrap_err().problems()
    }

    #[test]
    fn empty_or_truncated_files_are_refused() {
        assert_eq!(
            problems(""),
            vec!["cfg.toml: the file is empty".to_string()]
        );
        let list = problems("[proxy]\nlisten = \"127.0.0.1:1\"\n");
        assert!(list[0].contains("allowlist.domains: missing"), "{list:?}");
    }

    #[test]
    fn minimal_file_gives_strict_defaults() {
        let c = parse("[allowlist]\ndomains = []\n").unwrap();
        assert_eq!(c.proxy.activation_delay, Duration::from_secs(300));
        assert_eq!(c.proxy.listen, "127.0.0.1:3128".parse().unwrap());
        assert!(c.policy.allowlist.is_empty());
        assert!(c.policy.connect_ports.contains(443));
        assert!(!c.policy.connect_ports.contains(80));
    }

    #[test]
    fn every_invalid_pattern_is_listed_with_line_and_index() {
        let src = "[allowlist]\ndomains = [\n  \"ok.example.com\",\n  \"*\",\n  \"*.*.example.com\",\n]\n";
        let list = problems(src);
        assert_eq!(
            list,
            vec![
                "cfg.toml:4: allowlist.domains[1] \"*\": a bare \"*\" would allow every host; list the domains instead, e.g. \"*.example.com\"".to_string(),
                "cfg.toml:5: allowlist.domains[2] \"*.*.example.com\": only one leading wildcard is allowed; use \"*.example.com\"".to_string(),
            ]
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let list = problems(
            "[proxy]\nlisten = \"127.0.0.1:1\"\nconect_ports = [443]\n[allowlist]\ndomains = []\n",
        );
        assert_eq!(list.len(), 1);
        assert!(list[0].starts_with("cfg.toml:3: "), "{list:?}");
        assert!(list[0].contains("conect_ports"), "{list:?}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let list = problems("[proxy]\nlisten = \"127.0.0.1:1\n");
        assert!(list[0].starts_with("cfg.toml:2"), "{list:?}");
    }

    #[test]
    fn values_are_checked() {
        let src = "[proxy]\nconnect_ports = [443, 70000]\nconnect_timeout = \"ten\"\nallow_private_cidrs = [\"10.0.0.1/8\"]\nmax_request_head_bytes = 100\n[dns]\noverrides = { \"api.test\" = \"nope\" }\n[allowlist]\ndomains = []\n";
        let list = problems(src).join("\n");
        assert!(
            list.contains("cfg.toml:2: proxy.connect_ports[1] \"70000\""),
            "{list}"
        );
        assert!(
            list.contains("cfg.toml:3: proxy.connect_timeout \"ten\""),
            "{list}"
        );
        assert!(list.contains("write \"10.0.0.0/8\""), "{list}");
        assert!(
            list.contains("proxy.max_request_head_bytes \"100\": must be at least 8192"),
            "{list}"
        );
        assert!(
            list.contains("dns.overrides.\"api.test\" \"nope\""),
            "{list}"
        );
    }

    #[test]
    fn public_admin_listener_needs_a_token() {
        let list =
            problems("[proxy]\nadmin_listen = \"0.0.0.0:9901\"\n[allowlist]\ndomains = []\n");
        assert!(list[0].contains("needs proxy.admin_token_file"), "{list:?}");
    }

    #[test]
    fn admin_token_is_masked() {
        let token = AdminToken("s3cret".into());
        assert_eq!(format!("{token:?}"), "AdminToken(****)");
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cres"));
    }
}
