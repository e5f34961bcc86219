//! `egressd explain`: the decision for a target, against a live state dir when there is one.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use super::load_or_report;
use crate::control::explain::identity_note;
use crate::policy::activation::ActivationBook;
use crate::policy::identity::Identities;
use crate::util::time::unix_ms;

/// Exit 0 when allowed, 1 when denied; with `proxy.identity`, a note on what credentials
/// (those of `function`, or none) change.
pub fn explain(path: &Path, target: &str, function: Option<&str>) -> ExitCode {
    let Some(config) = load_live(path) else {
        return ExitCode::FAILURE;
    };
    let explanation = crate::control::explain::explain(&config, target, SystemTime::now());
    say!("{explanation}");
    // The token files were read and checked with the config: each loads.
    let identities = Identities::new(
        config.proxy.identity,
        config
            .token_files
            .iter()
            .filter_map(|f| Some((f.function.clone(), f.read().ok()?)))
            .collect(),
    );
    let note = identity_note(&identities, function);
    if let Some(note) = &note {
        say!("{note}");
    }
    if explanation.is_allowed() && !identities.refuses(function) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The config at `path` with the activation times of a live instance's state dir, so that
/// new patterns show as pending until their time, as egressd itself would decide.
pub(super) fn load_live(path: &Path) -> Option<crate::control::config::Config> {
    let mut config = load_or_report(path)?;
    let now = SystemTime::now();
    match ActivationBook::peek(&config.proxy.state_dir) {
        Ok(Some(book)) => {
            let unknown = unix_ms(now) + config.proxy.activation_delay.as_millis() as u64;
            book.apply(&mut config.policy.allowlist, unknown);
        }
        Ok(None) => {}
        Err(err) => {
            eprintln!("note: {err}; like egressd itself, treating every pattern as pending");
            let pending = unix_ms(now) + config.proxy.activation_delay.as_millis() as u64;
            for id in 0..config.policy.allowlist.len() as u32 {
                config.policy.allowlist.set_active_at(id, pending);
            }
        }
    }
    Some(config)
}
