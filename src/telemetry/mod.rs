//! Telemetry: logs and metrics.
//!
//! - Logs ([`init`]): tracing output to stderr, filtered by `log.level`, as JSON lines
//!   ([`json_lines`]: `timestamp`, `level`, `node` on every line, then the event's and
//!   its spans' fields flat) or as pretty text for people.
//! - Metrics ([`metrics`]): one Prometheus registry per node, served at `GET /metrics`.
//!
//! Must not know: actors, HTTP. Secrets (the cluster cookie, client tokens) never reach
//! a log line: settings wrap them in a type whose `Debug` and `Display` hide them, and
//! nothing logs a request's query string.

pub mod hook_metrics;
pub mod json_lines;
pub mod metrics;
mod process;

pub use metrics::Metrics;

use crate::config::{LogFormat, LogSettings};
use json_lines::JsonLines;
use std::io::IsTerminal;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber for the node called `node`. Call once, early in
/// `main`; records of the `log` crate (actix) come through it too.
pub fn init(log: &LogSettings, node: &str) -> Result<(), String> {
    let mut filter = EnvFilter::try_new(&log.level).map_err(|e| format!("log.level: {e}"))?;
    if !log.level.contains("openraft") {
        // openraft logs every unanswered RPC to a down peer at WARN and ERROR, many
        // times a second: what matters of it (a shard without a leader, a storage
        // failure) hubbub reports itself (/readyz, /cluster, its own lines). Name
        // `openraft=LEVEL` in `log.level` to see it.
        filter = filter.add_directive(
            "openraft=off"
                .parse()
                .map_err(|e| format!("log filter: {e}"))?,
        );
    }
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = match log.format {
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines::new(node))
            .try_init(),
        LogFormat::Pretty => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    installed.map_err(|e| e.to_string())
}
