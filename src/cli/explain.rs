//! `egressd explain`: the decision for a target, against a live state dir when there is one.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use super::load_or_report;
use crate::policy::activation::ActivationBook;
use crate::util::time::unix_ms;

/// Exit 0 when allowed, 1 when denied.
pub fn explain(path: &Path, target: &str) -> ExitCode {
    let Some(config) = load_live(path) else {
        return ExitCode::FAILURE;
    };
    let explanation = crate::control::explain::explain(&config, target, SystemTime::now());
    say!("{explanation}");
    if explanation.is_allowed() {
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
