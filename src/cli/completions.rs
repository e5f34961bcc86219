//! `egressd completions SHELL` and `egressd man`: shell completions and man pages generated
//! from the argument parser itself, so they cannot drift from the commands.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

pub use clap_complete::Shell;

/// Writes the completion script for `shell` to stdout.
pub fn completions(mut command: clap::Command, shell: Shell) -> ExitCode {
    let name = command.get_name().to_string();
    clap_complete::generate(shell, &mut command, name, &mut std::io::stdout().lock());
    ExitCode::SUCCESS
}

/// Writes the top-level man page to stdout or, with `dir`, one page per command
/// (`egressd.1`, `egressd-run.1`, ...) into `dir`.
pub fn man(command: clap::Command, dir: Option<&Path>) -> ExitCode {
    let written = match dir {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(command, dir))
            .map_err(|err| format!("{}: {err}", dir.display())),
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .and_then(|()| std::io::stdout().lock().write_all(&page))
                .map_err(|err| err.to_string())
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("egressd man: {err}");
            ExitCode::FAILURE
        }
    }
}
