//! Tracing output: JSON lines or pretty text, filtered by `log.level`.

use crate::config::{LogFormat, LogSettings};
use std::io::IsTerminal;
use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(log: &LogSettings) -> Result<(), String> {
    let filter = EnvFilter::try_new(&log.level).map_err(|e| format!("log.level: {e}"))?;
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    installed.map_err(|e| e.to_string())
}
