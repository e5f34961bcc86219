//! `egressd secrets`: the key that seals the secret store. Secrets themselves are created
//! by operators on the console (or the admin API), never from this command line.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use super::load_or_report;
use crate::secrets::file::FileBackend;
use crate::secrets::seal::new_key_text;
use crate::secrets::{MasterKey, SecretBackend, SecretStore};
use crate::state::postgres::secrets::PgSecretBackend;
use crate::state::postgres::Database;
use crate::state::StateSettings;

/// Writes a new random key to `path` (owner-only), refusing to replace a file.
pub fn new_key(path: &Path) -> ExitCode {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let written = file.and_then(|mut f| {
        f.write_all(new_key_text().as_bytes())?;
        f.sync_all()
    });
    match written {
        Ok(()) => {
            say!(
                "wrote a new 32-byte key to {} (mode 600); set [secrets] key_file to it",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!(
                "{} exists; egressd never replaces a key file (its secrets would no longer open)",
                path.display()
            );
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("cannot write {}: {err}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// Re-encrypts every secret of the config's store under the key in `new_key_file`.
pub fn rekey(config_path: &Path, new_key_file: &Path) -> ExitCode {
    let Some(config) = load_or_report(config_path) else {
        return ExitCode::FAILURE;
    };
    let Some(settings) = &config.secrets else {
        eprintln!(
            "{}: has no [secrets]; nothing to re-encrypt",
            config_path.display()
        );
        return ExitCode::FAILURE;
    };
    let old = settings
        .key
        .clone()
        .expect("a start-up config reads the key");
    let new = match MasterKey::read(new_key_file) {
        Ok(key) => key,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    if new.check() == old.check() {
        eprintln!(
            "{} is the key the store is sealed with already",
            new_key_file.display()
        );
        return ExitCode::FAILURE;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime starts");
    let done = runtime.block_on(async {
        let backend: Arc<dyn SecretBackend> = match &config.state {
            StateSettings::File => Arc::new(FileBackend::new(&config.proxy.state_dir)),
            StateSettings::Postgres(pg) => {
                let db = Database::open(pg, "rekey")
                    .await
                    .map_err(|e| e.to_string())?;
                Arc::new(PgSecretBackend::new(db))
            }
        };
        let store = SecretStore::open(old, backend)
            .await
            .map_err(|e| e.to_string())?;
        let count = store.rekey(&new).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((count, store.describe()))
    });
    match done {
        Ok((count, store)) => {
            say!(
                "re-encrypted {count} secrets in {store} under {} (key check {}); set [secrets] key_file to it and restart egressd (every replica)",
                new_key_file.display(),
                new.check()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("nothing was changed: {err}");
            ExitCode::FAILURE
        }
    }
}
