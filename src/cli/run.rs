//! `egressd run`: logging, the runtime, signals, then [`App`] until shutdown.

use std::path::Path;
use std::process::ExitCode;

use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::control::config::Config;
use crate::metrics::Metrics;
use crate::util::logwriter::{self, LineFormat, LogFlush, LogWriter};

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr through the [`LogWriter`], off the request path; lines it had to drop are
/// counted in `dropped`. Log lines are written until the returned guard is dropped.
fn init_logging(format: LogFormat, dropped: Counter) -> LogFlush {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, flush) = LogWriter::start(std::io::stderr(), logwriter::DEFAULT_LIMIT, dropped);
    if !ansi {
        let format = match format {
            LogFormat::Text => LineFormat::Text,
            LogFormat::Json => LineFormat::Json,
        };
        logwriter::send_lines_directly(writer.clone(), format);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        // The access log has its own `target` field (the request target), so the
        // tracing target is left out of JSON lines.
        LogFormat::Json => builder.json().flatten_event(true).with_target(false).init(),
    }
    flush
}

/// Serves the config at `path` until SIGTERM or SIGINT.
pub fn run(path: &Path, format: LogFormat) -> ExitCode {
    let dropped = Counter::default();
    // Dropped last, after the final "egressd stopped" line: every line is written.
    let _flush = init_logging(format, dropped.clone());
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
        let app = App::start(config, text, Metrics::with_log_dropped(dropped)).await?;
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
