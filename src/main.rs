//! The `egressd` binary: parses arguments; the commands live in [`egressd::cli`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => cli::run(&config, cli.log_format),
        Command::Check { config } => cli::check(&config),
        Command::Explain { config, target } => cli::explain(&config, &target),
        Command::Cron {
            expression,
            count,
            after,
        } => cli::cron(&expression, count, after.as_deref()),
    }
}
