//! Configuration: TOML file → [`raw`] (serde, unknown keys refused) → validated [`Config`].
//!
//! The raw types keep every value's byte span so that each problem can be reported as
//! `file:line: key "value": what to write instead` ([`problems`]). Validation ([`validate`])
//! collects all problems rather than stopping at the first, so one `egressd check` run shows
//! everything to fix. A syntax error stops parsing, so it is reported alone. The validated
//! types belong to the layers that use them (the [`Policy`], the resolver's
//! [`DnsSettings`]); [`ProxySettings`] holds what is fixed for the life of the process.

mod problems;
mod raw;
mod secrets;
mod validate;

pub use secrets::{SecretsSettings, DEFAULT_SECRETS_HOST};

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use problems::Problem;
use problems::Problems;
use raw::RawConfig;
use validate::Secrets;

use crate::egress::resolve::DnsSettings;
use crate::egress::tls::{MtlsTable, TlsOrigins};
use crate::egress::tunnel::RelayKind;
use crate::policy::identity::{parse_token_file, IdentityMode, TokenDigest};
use crate::policy::Policy;
use crate::proxy::sni::SniCheck;
use crate::state::StateSettings;

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    pub proxy: ProxySettings,
    pub dns: DnsSettings,
    pub policy: Policy,
    /// `[[mtls]]` entries with their identities loaded and checked.
    pub mtls: MtlsTable,
    /// Where shared state lives (`[state]`), read at start only.
    pub state: StateSettings,
    /// The secret store (`[secrets]`); `None` when the config has none.
    pub secrets: Option<SecretsSettings>,
    /// Hosts egressd opens TLS to for `[[inject]]` rules.
    pub origins: TlsOrigins,
    /// Each `[[functions]]` entry's `token_file`, for `proxy.identity`.
    pub token_files: Vec<TokenFile>,
    /// Things that are valid but probably not what was meant (a client certificate about to
    /// expire, an `[[mtls]]` host no allowlist entry covers); printed by `check`, logged by
    /// `run` and on reload.
    pub warnings: Vec<String>,
}

/// Listener and limit settings, fixed for the life of the process.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<AdminToken>,
    /// Whether the admin API (the console) may edit `allowlist.domains` in the config file.
    pub admin_allowlist_edit: bool,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Slowloris guard: the whole request head must arrive within this time.
    pub header_read_timeout: Duration,
    /// A forwarded request's upstream must send its response head within this time.
    pub response_header_timeout: Duration,
    pub shutdown_grace: Duration,
    /// On SIGTERM, how long readiness fails while the listeners still accept, before
    /// `shutdown_grace` starts: time for a load balancer to stop sending new connections.
    pub drain_delay: Duration,
    /// How long a newly added allowlist pattern waits before it allows anything.
    pub activation_delay: Duration,
    /// Where activation state survives restarts.
    pub state_dir: PathBuf,
    /// Largest request head accepted; larger ones get 431.
    pub max_request_head_bytes: usize,
    /// Client connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// How CONNECT tunnels move bytes: splice(2) (default) or a user-space copy.
    pub tunnel_relay: RelayKind,
    /// Whether a tunnel's TLS ClientHello must name an allowed host (`connect_sni`).
    pub connect_sni: SniCheck,
    /// Whether requests must, may or need not carry a function's credentials.
    pub identity: IdentityMode,
    /// This instance's `Via` pseudonym, for loop detection (`via_name`, default: host name).
    pub via_name: String,
    /// Proxy worker threads, each with its own listener (`SO_REUSEPORT`), runtime and
    /// upstream pool, so a request never changes threads.
    pub workers: usize,
    /// The deadline of one scheduled invocation.
    pub schedule_timeout: Duration,
}

impl Config {
    /// Every setting egressd reads only at start, by config key, with its value; a reload
    /// that changes one is warned about. Both structs are destructured in full, so a new
    /// setting cannot be added without deciding here whether a reload applies it.
    pub fn restart_only(&self) -> Vec<(&'static str, String)> {
        let ProxySettings {
            listen,
            admin_listen,
            // Not read on reload at all (an unreadable token file must not block one).
            admin_token: _,
            admin_allowlist_edit,
            connect_timeout,
            idle_timeout,
            header_read_timeout,
            response_header_timeout,
            shutdown_grace,
            drain_delay,
            // Applied on reload: entries added by it wait out the longer of old and new.
            activation_delay: _,
            state_dir,
            max_request_head_bytes,
            max_connections,
            tunnel_relay,
            connect_sni,
            // Applied on reload, like the token files.
            identity: _,
            via_name,
            workers,
            schedule_timeout,
        } = &self.proxy;
        let DnsSettings { servers, timeout } = &self.dns;
        vec![
            ("proxy.listen", format!("{listen}")),
            ("proxy.admin_listen", format!("{admin_listen}")),
            (
                "proxy.admin_allowlist_edit",
                format!("{admin_allowlist_edit}"),
            ),
            ("proxy.connect_timeout", format!("{connect_timeout:?}")),
            ("proxy.idle_timeout", format!("{idle_timeout:?}")),
            (
                "proxy.header_read_timeout",
                format!("{header_read_timeout:?}"),
            ),
            (
                "proxy.response_header_timeout",
                format!("{response_header_timeout:?}"),
            ),
            ("proxy.shutdown_grace", format!("{shutdown_grace:?}")),
            ("proxy.drain_delay", format!("{drain_delay:?}")),
            ("proxy.state_dir", format!("{}", state_dir.display())),
            (
                "proxy.max_request_head_bytes",
                format!("{max_request_head_bytes}"),
            ),
            ("proxy.max_connections", format!("{max_connections}")),
            ("proxy.tunnel_relay", tunnel_relay.as_str().to_string()),
            ("proxy.connect_sni", connect_sni.as_str().to_string()),
            ("proxy.via_name", via_name.clone()),
            ("proxy.workers", format!("{workers}")),
            ("proxy.schedule_timeout", format!("{schedule_timeout:?}")),
            ("state.backend", self.state.backend().to_string()),
            (
                "state.url",
                match &self.state {
                    StateSettings::File => String::new(),
                    StateSettings::Postgres(pg) => pg.source.clone(),
                },
            ),
            ("dns.servers", format!("{servers:?}")),
            ("dns.timeout", format!("{timeout:?}")),
            (
                "secrets.key_file",
                self.secrets
                    .as_ref()
                    .map_or(String::new(), |s| s.key_file.display().to_string()),
            ),
            (
                "secrets.host",
                self.secrets
                    .as_ref()
                    .map_or(String::new(), |s| s.host.to_string()),
            ),
        ]
    }
}

/// What is probably not meant about identity: `required` with no function able to meet it.
fn identity_warnings(mode: IdentityMode, token_files: &[TokenFile], warnings: &mut Vec<String>) {
    if mode == IdentityMode::Required && token_files.is_empty() {
        warnings.push(
            "proxy.identity is \"required\" but no [[functions]] entry has a token_file: every request will get 407".into(),
        );
    }
}

/// One function's `token_file`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenFile {
    pub function: String,
    pub path: PathBuf,
}

impl TokenFile {
    /// The digests the file holds, or why it cannot be used (naming the file).
    pub fn read(&self) -> Result<Vec<TokenDigest>, String> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|err| format!("cannot read {}: {err}", self.path.display()))?;
        parse_token_file(&text).map_err(|err| format!("{}: {err}", self.path.display()))
    }
}

/// The bearer token for state-changing admin endpoints. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub(super) String);

impl AdminToken {
    pub fn matches(&self, presented: &str) -> bool {
        // Constant-time over the token length (`subtle`: a hand-folded XOR may be turned
        // back into an early exit by the optimiser). The length itself is not secret.
        use subtle::ConstantTimeEq;
        bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(****)")
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

pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:3128";
pub(super) const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// hyper's read buffer cannot be smaller than this.
pub(super) const MIN_HEAD_BYTES: i64 = 8192;

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
        let proxy = validate::proxy_settings(&raw.proxy, secrets, &mut problems);
        let (dns, overrides) = validate::dns_settings(&raw.dns, &mut problems);
        let mut policy = validate::policy(&raw, overrides, &mut problems);
        let mut warnings = Vec::new();
        let mtls = validate::mtls(&raw.mtls, path, &policy, &mut problems, &mut warnings);
        let (functions, token_files) =
            validate::functions(&raw.functions, path, secrets, &mut problems);
        policy.functions = functions;
        let secrets_settings =
            secrets::secrets_settings(&raw.secrets, path, secrets, &mut problems);
        let inject = secrets::injections(
            &raw.inject,
            path,
            &policy,
            &mtls,
            raw.secrets.is_some(),
            &mut problems,
            &mut warnings,
        );
        let mut originations = mtls.originations().rules().to_vec();
        originations.extend(inject.originations);
        policy.origination = crate::policy::origination::Originations::new(originations);
        policy.injections = inject.injections;
        if let Some(proxy) = &proxy {
            identity_warnings(proxy.identity, &token_files, &mut warnings);
        }
        let state =
            validate::state_settings(&raw.state, path, secrets, &mut problems, &mut warnings);
        match (proxy, problems.list.is_empty()) {
            (Some(proxy), true) => Ok(Config {
                path: path.to_path_buf(),
                proxy,
                dns,
                policy,
                mtls,
                state,
                secrets: secrets_settings,
                origins: inject.origins,
                token_files,
                warnings,
            }),
            _ => Err(ConfigError::Invalid(problems.list)),
        }
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
    fn secrets_and_injection_rules_are_checked_with_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secrets.key"), "ab".repeat(32)).unwrap();
        std::fs::write(dir.path().join("short.key"), "ab".repeat(8)).unwrap();
        let config = dir.path().join("egressd.toml");
        let secrets = "[secrets]\nkey_file = \"secrets.key\"\n";
        let inject = |body: &str| format!("[[inject]]\nhost = \"api.test\"\n{body}\n");
        let allow = "[allowlist]\ndomains = [\"api.test\"]\n";
        // (name, config text, the problem's words; empty: valid)
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "a rule",
                format!(
                    "{secrets}{}{allow}",
                    inject("header = \"Authorization\"\nvalue = \"Bearer {secret:t}\"")
                ),
                "",
            ),
            (
                "a rule without a store",
                format!(
                    "{}{allow}",
                    inject("header = \"Authorization\"\nvalue = \"Bearer {secret:t}\"")
                ),
                "inject[0].value: [[inject]] takes its values from the secret store",
            ),
            (
                "a key file that is not a key",
                format!("[secrets]\nkey_file = \"short.key\"\n{allow}"),
                "secrets.key_file \"short.key\"",
            ),
            (
                "a missing key file",
                format!("[secrets]\nkey_file = \"gone.key\"\n{allow}"),
                "cannot read",
            ),
            (
                "no key file",
                format!("[secrets]\n{allow}"),
                "secrets.key_file: missing",
            ),
            (
                "a framing header",
                format!(
                    "{secrets}{}{allow}",
                    inject("header = \"Content-Length\"\nvalue = \"{secret:t}\"")
                ),
                "inject[0].header \"Content-Length\"",
            ),
            (
                "a value naming no secret",
                format!(
                    "{secrets}{}{allow}",
                    inject("header = \"X-Key\"\nvalue = \"static\"")
                ),
                "names no secret",
            ),
            (
                "an invalid secret key",
                format!(
                    "{secrets}{}{allow}",
                    inject("header = \"X-Key\"\nvalue = \"{secret:a/b}\"")
                ),
                "a secret key is 1 to 128 characters",
            ),
            (
                "one header set twice for the same functions",
                format!(
                    "{secrets}{}{}{allow}",
                    inject("header = \"X-Key\"\nvalue = \"{secret:a}\""),
                    inject("header = \"x-key\"\nvalue = \"{secret:b}\"")
                ),
                "sets it for the same host and functions already",
            ),
            (
                "an unknown field",
                format!(
                    "{secrets}{}{allow}",
                    inject("header = \"X-Key\"\nvalue = \"{secret:a}\"\nsecret = \"x\"")
                ),
                "unknown field",
            ),
        ];
        for (name, text, words) in cases {
            let got = Config::parse(&config, &text);
            match (words, got) {
                ("", Ok(c)) => {
                    assert_eq!(c.policy.injections.rules().count(), 1, "{name}");
                    assert!(c.secrets.unwrap().key.is_some(), "{name}");
                }
                ("", Err(err)) => panic!("{name}: {err}"),
                (words, Ok(_)) => panic!("{name}: accepted, wanted {words:?}"),
                (words, Err(err)) => {
                    let text = err.to_string();
                    assert!(text.contains(words), "{name}: {text}");
                    assert!(!text.contains("abababab"), "{name} shows the key: {text}");
                }
            }
        }
        // A problem names the file and the line of the key at fault.
        let text = format!(
            "{secrets}{allow}{}",
            inject("header = \"Host\"\nvalue = \"{secret:a}\"")
        );
        let err = Config::parse(&config, &text).unwrap_err().to_string();
        assert!(err.contains(&format!("{}:7:", config.display())), "{err}");
    }

    #[test]
    fn admin_token_is_masked() {
        let token = AdminToken("s3cret".into());
        assert_eq!(format!("{token:?}"), "AdminToken(****)");
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cres"));
    }
}
