//! The commands of the `egressd` binary, one module each; `main.rs` only parses arguments
//! and calls them. Each returns the process exit code.

/// Prints a line to stdout; a closed pipe (`egressd schedules list | head -1`) ends the
/// output quietly instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod admin_api;
mod check;
mod completions;
mod cron;
mod explain;
mod health;
mod run;
mod schedules;
mod secrets;
mod trace;

pub use check::check;
pub use completions::{completions, man, Shell};
pub use cron::cron;
pub use explain::explain;
pub use health::health;
pub use run::{run, LogFormat};
pub use schedules::{schedules, Action};
pub use secrets::{new_key as secrets_new_key, rekey as secrets_rekey};
pub use trace::trace;

use std::path::Path;

use crate::control::config::Config;

/// Loads a config, printing every problem to stderr when it is invalid.
fn load_or_report(path: &Path) -> Option<Config> {
    match Config::load(path) {
        Ok(config) => Some(config),
        Err(err) => {
            for problem in err.problems() {
                eprintln!("{problem}");
            }
            None
        }
    }
}
