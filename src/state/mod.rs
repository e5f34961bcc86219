//! **Shared state.** What several replicas must agree on — schedules and the run ledger (each
//! tick fired once), activation times, allowlist entries added from the console — lives in
//! a backend chosen by `[state]`: the `file` backend (`proxy.state_dir`, one replica, the
//! default) or [`postgres`] (any number of replicas).
//!
//! Above [`crate::schedule`] and below [`crate::control`]: the PostgreSQL schedule store
//! implements [`crate::schedule::store::ScheduleStore`], and control wires it in. Nothing on
//! the request path waits for a backend: decisions read the policy in memory, which the
//! backend only feeds.

pub mod local;
pub mod postgres;

use std::fmt;
use std::path::PathBuf;

/// Where shared state lives (`[state] backend`).
#[derive(Clone, Debug)]
pub enum StateSettings {
    /// `proxy.state_dir` on local disk: one replica.
    File,
    /// A PostgreSQL database shared by every replica.
    Postgres(Box<PgSettings>),
}

impl StateSettings {
    pub fn backend(&self) -> &'static str {
        match self {
            StateSettings::File => "file",
            StateSettings::Postgres(_) => "postgres",
        }
    }
}

/// How to reach the database.
#[derive(Clone)]
pub struct PgSettings {
    /// The parsed URL; `None` only in a config parsed for a reload, which does not read
    /// secret files (`[state]` is read once, at start).
    pub url: Option<tokio_postgres::Config>,
    /// Where the URL came from, for messages and the restart-only check: `state.url` or
    /// `state.url_file <path>` (never the URL itself: it may hold a password).
    pub source: String,
    /// CA certificates (PEM) that sign the database's certificate; the Mozilla roots when
    /// unset. The certificate is always verified when TLS is used.
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio_postgres::Config's Debug hides the password, but the source says enough.
        f.debug_struct("PgSettings")
            .field("source", &self.source)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Checks a PostgreSQL URL as `[state] url` takes it; the error says what to write.
pub fn parse_url(text: &str) -> Result<tokio_postgres::Config, String> {
    let text = text.trim();
    if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
        return Err(
            "expected a URL like \"postgres://egressd@db:5432/egressd\" (postgres:// or postgresql://)"
                .into(),
        );
    }
    let config: tokio_postgres::Config = text
        .parse()
        .map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
    if config.get_hosts().is_empty() {
        return Err("the URL names no host, e.g. \"postgres://egressd@db:5432/egressd\"".into());
    }
    if config.get_user().is_none() {
        return Err("the URL names no user, e.g. \"postgres://egressd@db:5432/egressd\"".into());
    }
    Ok(config)
}

/// Where a URL points, without its password: `user@host:port/dbname`.
pub fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(name)) => name.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "?".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("?"),
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_described_without_the_password() {
        let ok =
            parse_url("postgres://egressd:s3cret@db.internal:6432/egress?sslmode=require").unwrap();
        assert_eq!(describe(&ok), "egressd@db.internal:6432/egress");
        assert_eq!(
            describe(&parse_url("postgresql://egressd@db").unwrap()),
            "egressd@db:5432/egressd"
        );
        // (name, url, words the error must have)
        let cases = [
            (
                "another scheme",
                "mysql://egressd@db/egressd",
                "postgres://",
            ),
            ("a key=value string", "host=db user=egressd", "postgres://"),
            ("no user", "postgres://db:5432/egressd", "no user"),
            (
                "a bad port",
                "postgres://egressd@db:port/egressd",
                "not a valid",
            ),
            (
                "a bad option",
                "postgres://egressd@db/egressd?sslmode=maybe",
                "not a valid",
            ),
        ];
        for (name, url, words) in cases {
            let err = parse_url(url).unwrap_err();
            assert!(err.contains(words), "{name}: {err}");
        }
    }
}
