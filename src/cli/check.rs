//! `egressd check`: validate a config and summarise it.

use std::path::Path;
use std::process::ExitCode;

use super::load_or_report;
use crate::policy::allowlist::Pattern;
use crate::state::postgres::{schema, Database};
use crate::state::{PgSettings, StateSettings};

/// Exit 0 with a summary, or 1 listing every problem.
pub fn check(path: &Path) -> ExitCode {
    let Some(config) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    let p = &config.proxy;
    let policy = &config.policy;
    let (mut exact, mut wildcard, mut ip) = (0, 0, 0);
    for pattern in policy.allowlist.patterns() {
        match pattern {
            Pattern::Exact(_) => exact += 1,
            Pattern::Wildcard(_) => wildcard += 1,
            Pattern::Ip(_) => ip += 1,
        }
    }
    say!("{}: OK", path.display());
    say!(
        "  proxy      {} (CONNECT ports {:?}, HTTP ports {:?})",
        p.listen,
        policy.connect_ports.ports(),
        policy.http_ports.ports()
    );
    say!(
        "  admin      {} ({})",
        p.admin_listen,
        if p.admin_token.is_some() {
            "bearer token required"
        } else {
            "no token"
        }
    );
    say!(
        "  allowlist  {} entries: {exact} exact, {wildcard} wildcard, {ip} IP",
        policy.allowlist.len()
    );
    let nets: Vec<String> = policy
        .private
        .nets()
        .iter()
        .map(|n| n.to_string())
        .collect();
    say!(
        "  private    denied{}",
        if nets.is_empty() {
            String::new()
        } else {
            format!(" except {}", nets.join(", "))
        }
    );
    let servers = if config.dns.servers.is_empty() {
        "system resolver".to_string()
    } else {
        format!("servers {:?}", config.dns.servers)
    };
    say!(
        "  dns        {} override(s), {servers}",
        config.policy.dns_overrides.len()
    );
    say!(
        "  timeouts   connect {:?}, idle {:?}, header read {:?}",
        p.connect_timeout,
        p.idle_timeout,
        p.header_read_timeout
    );
    say!(
        "  reload     new entries active after {:?}; state in {}",
        p.activation_delay,
        p.state_dir.display()
    );
    let state_ok = match &config.state {
        StateSettings::File => {
            say!(
                "  state      file backend in {} (one replica)",
                p.state_dir.display()
            );
            true
        }
        StateSettings::Postgres(pg) => check_database(pg),
    };
    for entry in config.mtls.entries() {
        let cert = &entry.identity.certificate;
        say!(
            "  mtls       {} -> port {} as \"{}\" (until {}){}",
            entry.spec.pattern,
            entry.spec.port,
            cert.subject,
            humantime::format_rfc3339_seconds(cert.not_after),
            if entry.spec.allow_connect {
                "; CONNECT tunnelled"
            } else {
                "; CONNECT refused"
            }
        );
    }
    if let Some(secrets) = &config.secrets {
        say!(
            "  secrets    key {} (check {}); functions reach http://{}/v1/secrets/KEY",
            secrets.key_file.display(),
            secrets.key.as_ref().map_or("?", |k| k.check()),
            secrets.host
        );
    }
    for rule in policy.injections.rules() {
        let tls = match policy.origination.lookup_pattern(&rule.pattern) {
            Some(port) => format!("TLS to port {port}"),
            None => "plain HTTP".into(),
        };
        say!(
            "  inject     {} {} from {} for {}; {tls}{}",
            rule.pattern,
            rule.header,
            rule.template.keys().collect::<Vec<_>>().join(", "),
            rule.functions
                .as_ref()
                .map_or("every function".into(), |f| f.join(", ")),
            if rule.allow_connect {
                "; CONNECT tunnelled"
            } else {
                "; CONNECT refused"
            }
        );
    }
    if policy.allowlist.is_empty() {
        say!("  note: the allowlist is empty, so every request will be denied");
    }
    for warning in &config.warnings {
        say!("warning: {warning}");
    }
    match state_ok {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

/// Connects to the shared database and reads its schema version; writes nothing.
fn check_database(pg: &PgSettings) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the database check");
    let latest = schema::latest();
    match runtime.block_on(Database::probe(pg)) {
        Ok((target, found)) => {
            let schema = match found {
                0 => format!("no schema yet; egressd run applies version {latest}"),
                v if v < latest => {
                    format!("schema version {v}; egressd run migrates it to {latest}")
                }
                v => format!("schema version {v} (current)"),
            };
            say!("  state      postgres {target} ({}): {schema}", pg.source);
            true
        }
        Err(err) => {
            eprintln!("error: [state] postgres ({}): {err}", pg.source);
            false
        }
    }
}
