//! Logging through `tracing`: to stderr always, and for the daemon also to a daily
//! rotating file (7 kept) in the platform's log directory.
//!
//! No secret can be written: tokens are `Secret`s whose `Debug` is redacted and which
//! have no `Display`. The test suite runs at `RUST_LOG=trace` and scans every log for
//! every token the fake issuer handed out.

use std::path::Path;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Logs on stderr: colour codes only when stderr is a terminal (a daemon's stderr
/// redirected to a file, or read by an MCP client, gets plain text).
fn stderr_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use std::io::IsTerminal;
    fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
}

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// For short CLI commands: warnings and errors on stderr unless `RUST_LOG` says more.
pub fn init_cli() {
    let _ = tracing_subscriber::registry()
        .with(stderr_layer())
        .with(filter("warn"))
        .try_init();
}

/// For the daemon and the app: stderr plus a rotating file in `log_dir`.
pub fn init_daemon(log_dir: &Path) -> anyhow::Result<()> {
    crate::engine::store::create_private_dir(log_dir).map_err(|e| {
        anyhow::anyhow!("cannot create the log directory {}: {e}", log_dir.display())
    })?;
    let file = tracing_appender::rolling::RollingFileAppender::builder()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("tokenwarden")
        .filename_suffix("log")
        .max_log_files(7)
        .build(log_dir)
        .map_err(|e| anyhow::anyhow!("cannot open a log file in {}: {e}", log_dir.display()))?;
    let _ = tracing_subscriber::registry()
        .with(stderr_layer())
        .with(fmt::layer().with_writer(file).with_ansi(false))
        .with(filter("info"))
        .try_init();
    Ok(())
}
