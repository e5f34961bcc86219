//! The `egressd` binary: parses arguments and wires; the work lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use std::time::SystemTime;

use egressd::activation::{unix_ms, ActivationBook};
use egressd::allowlist::Pattern;
use egressd::app::App;
use egressd::config::Config;
use tokio_util::sync::CancellationToken;

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

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config, cli.log_format),
        Command::Check { config } => check(&config),
        Command::Explain { config, target } => explain(&config, &target),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        // The access log has its own `target` field (the request target), so the
        // tracing target is left out of JSON lines.
        LogFormat::Json => builder.json().flatten_event(true).with_target(false).init(),
    }
}

fn load_or_report(path: &std::path::Path) -> Option<Config> {
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

fn run(path: &std::path::Path, format: LogFormat) -> ExitCode {
    init_logging(format);
    let (config, text) = match Config::load_with_text(path) {
        Ok(loaded) => loaded,
        Err(err) => {
            for problem in err.problems() {
                eprintln!("{problem}");
            }
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        let app = App::start(config, text).await?;
        let signals = Signals::install()?;
        tracing::info!(proxy = %app.proxy_addr(), admin = %app.admin_addr(), "egressd listening");
        let shutdown = CancellationToken::new();
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(handle_signals(signals, shutdown.clone(), reload_tx));
        app.run(shutdown, reload_rx).await
    });
    match result {
        Ok(()) => {
            tracing::info!("egressd stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("egressd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Signal streams, installed before egressd reports itself listening so that a signal sent
/// right after never meets the default action.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// SIGTERM/SIGINT start a graceful shutdown; SIGHUP asks for a config reload.
async fn handle_signals(
    mut signals: Signals,
    shutdown: CancellationToken,
    reload: tokio::sync::mpsc::Sender<()>,
) {
    loop {
        tokio::select! {
            _ = signals.term.recv() => tracing::info!("SIGTERM received"),
            _ = signals.int.recv() => tracing::info!("SIGINT received"),
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP received: reloading the config");
                let _ = reload.try_send(());
                continue;
            }
        }
        shutdown.cancel();
        return;
    }
}

fn check(path: &std::path::Path) -> ExitCode {
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
    println!("{}: OK", path.display());
    println!(
        "  proxy      {} (CONNECT ports {:?}, HTTP ports {:?})",
        p.listen,
        policy.connect_ports.ports(),
        policy.http_ports.ports()
    );
    println!(
        "  admin      {} ({})",
        p.admin_listen,
        if p.admin_token.is_some() {
            "bearer token required"
        } else {
            "no token"
        }
    );
    println!(
        "  allowlist  {} entries: {exact} exact, {wildcard} wildcard, {ip} IP",
        policy.allowlist.len()
    );
    let nets: Vec<String> = policy
        .private
        .nets()
        .iter()
        .map(|n| n.to_string())
        .collect();
    println!(
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
    println!(
        "  dns        {} override(s), {servers}",
        config.policy.dns_overrides.len()
    );
    println!(
        "  timeouts   connect {:?}, idle {:?}, header read {:?}",
        p.connect_timeout, p.idle_timeout, p.header_read_timeout
    );
    println!(
        "  reload     new entries active after {:?}; state in {}",
        p.activation_delay,
        p.state_dir.display()
    );
    if policy.allowlist.is_empty() {
        println!("  note: the allowlist is empty, so every request will be denied");
    }
    ExitCode::SUCCESS
}

fn explain(path: &std::path::Path, target: &str) -> ExitCode {
    let Some(mut config) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    let now = SystemTime::now();
    // Against a live instance's state dir, new patterns show as pending until their time.
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
    let explanation = egressd::explain::explain(&config, target, now);
    println!("{explanation}");
    if explanation.is_allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
