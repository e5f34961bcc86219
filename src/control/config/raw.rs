//! The file as serde reads it: every key optional, unknown keys refused, each value with its
//! byte span so that a problem can name its line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub proxy: RawProxy,
    pub dns: RawDns,
    pub mtls: Vec<Spanned<RawMtls>>,
    pub functions: Vec<Spanned<RawFunction>>,
    pub allowlist: RawAllowlist,
    pub state: RawState,
    pub secrets: Option<Spanned<RawSecrets>>,
    pub inject: Vec<Spanned<RawInject>>,
}

/// `[secrets]`: the secret store.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecrets {
    pub key_file: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
}

/// One `[[inject]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInject {
    pub host: Spanned<String>,
    pub header: Spanned<String>,
    pub value: Spanned<String>,
    pub functions: Option<Vec<Spanned<String>>>,
    pub allow_connect: Option<bool>,
    pub tls: Option<bool>,
    pub port: Option<Spanned<i64>>,
    pub ca: Option<Spanned<String>>,
}

/// `[state]`: where shared state lives.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawState {
    pub backend: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub url_file: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
}

/// One `[[functions]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFunction {
    pub name: Spanned<String>,
    pub state: Spanned<String>,
    pub url: Spanned<String>,
    /// The function's token(s) for `proxy.identity`.
    pub token_file: Option<Spanned<String>>,
}

/// One `[[mtls]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMtls {
    pub host: Spanned<String>,
    pub client_cert: Spanned<String>,
    pub client_key: Spanned<String>,
    pub ca: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub allow_connect: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    pub listen: Option<Spanned<String>>,
    pub admin_listen: Option<Spanned<String>>,
    pub admin_token_file: Option<Spanned<String>>,
    pub admin_allowlist_edit: Option<bool>,
    pub connect_ports: Option<Vec<Spanned<i64>>>,
    pub http_ports: Option<Vec<Spanned<i64>>>,
    pub allow_private_cidrs: Vec<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub response_header_timeout: Option<Spanned<String>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub drain_delay: Option<Spanned<String>>,
    pub activation_delay: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    pub max_request_head_bytes: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub tunnel_relay: Option<Spanned<String>>,
    pub connect_sni: Option<Spanned<String>>,
    pub via_name: Option<Spanned<String>>,
    pub workers: Option<Spanned<i64>>,
    pub schedule_timeout: Option<Spanned<String>>,
    pub identity: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawDns {
    pub overrides: BTreeMap<String, Spanned<String>>,
    pub servers: Vec<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawAllowlist {
    /// Required: a file cut short before this key must not read as "allow nothing".
    pub domains: Option<Vec<Spanned<String>>>,
}
