//! The `egressd` binary: parses arguments; the commands live in [`egressd::cli`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use egressd::cli::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "egressd",
    version,
    about = "Egress forward proxy with a strict domain allowlist"
)]
struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy and the admin listener.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and summarise it.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show the decision for a target: host, host:port or URL.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        target: String,
        /// The function whose credentials the request carries (with proxy.identity).
        #[arg(long)]
        function: Option<String>,
    },
    /// Follow a URL's redirect chain (as curl -L) and show each hop's verdict and the
    /// entries to add; exit 0 when the whole chain is allowed.
    Trace {
        #[arg(long, short)]
        config: PathBuf,
        url: String,
    },
    /// Manage scheduled invocations through a running egressd's admin API.
    Schedules {
        /// The admin listener, e.g. http://127.0.0.1:9901.
        #[arg(long, default_value = "http://127.0.0.1:9901", global = true)]
        admin: String,
        /// A file holding the admin bearer token.
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        action: SchedulesCommand,
    },
    /// Print the next runs of a cron expression (UTC, and local time), or what is wrong.
    Cron {
        /// Five fields (minute hour day-of-month month day-of-week) or @hourly, @daily, ...
        expression: String,
        /// How many runs to print.
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// Start after this RFC 3339 time instead of now.
        #[arg(long)]
        after: Option<String>,
    },
    /// Exit 0 when a running egressd's /healthz answers ok (for container health checks).
    Health {
        /// The admin listener, e.g. http://127.0.0.1:9901.
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// Give up (exit 1) after this long, e.g. 3s.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// The key that encrypts the secret store: make one, or re-encrypt the store under a new
    /// one. (Secrets are created by operators on the console.)
    Secrets {
        #[command(subcommand)]
        action: SecretsCommand,
    },
    /// Print a shell completion script, e.g. `egressd completions bash`.
    Completions { shell: cli::Shell },
    /// Print the man page, or write one page per command into a directory.
    Man {
        /// Write egressd.1, egressd-run.1, ... into this directory instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Write a new random 32-byte key (64 hex digits) to FILE, readable by its owner only.
    NewKey { file: PathBuf },
    /// Re-encrypt every secret under the key in --new-key-file (stop egressd first with the
    /// file backend), then point [secrets] key_file at it and restart.
    Rekey {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        new_key_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum SchedulesCommand {
    /// Every schedule with its next and last run.
    List,
    /// Schedule a productive function.
    Create {
        function: String,
        /// Five fields, UTC, e.g. "*/5 * * * *".
        cron: String,
        /// Passed to the function verbatim (at most 8000 characters).
        #[arg(long, default_value = "")]
        payload: String,
    },
    /// Delete a schedule.
    Delete { id: String },
    /// Invoke a schedule now, recorded like a scheduled run.
    Run { id: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => cli::run(&config, cli.log_format),
        Command::Check { config } => cli::check(&config),
        Command::Explain {
            config,
            target,
            function,
        } => cli::explain(&config, &target, function.as_deref()),
        Command::Trace { config, url } => cli::trace(&config, &url),
        Command::Schedules {
            admin,
            token_file,
            action,
        } => {
            let action = match action {
                SchedulesCommand::List => cli::Action::List,
                SchedulesCommand::Create {
                    function,
                    cron,
                    payload,
                } => cli::Action::Create {
                    function,
                    cron,
                    payload,
                },
                SchedulesCommand::Delete { id } => cli::Action::Delete(id),
                SchedulesCommand::Run { id } => cli::Action::Run(id),
            };
            cli::schedules(&admin, token_file.as_deref(), action)
        }
        Command::Cron {
            expression,
            count,
            after,
        } => cli::cron(&expression, count, after.as_deref()),
        Command::Health { admin, timeout } => cli::health(&admin, timeout),
        Command::Secrets { action } => match action {
            SecretsCommand::NewKey { file } => cli::secrets_new_key(&file),
            SecretsCommand::Rekey {
                config,
                new_key_file,
            } => cli::secrets_rekey(&config, &new_key_file),
        },
        Command::Completions { shell } => cli::completions(Cli::command(), shell),
        Command::Man { dir } => cli::man(Cli::command(), dir.as_deref()),
    }
}
