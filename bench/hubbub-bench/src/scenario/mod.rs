//! The scenarios and what they share: the options every scenario takes ([`Common`]),
//! the run's context (targets, error tally, progress bars), and the [`Report`] each
//! one ends with.

pub mod ack;
pub mod churn;
pub mod efficiency;
pub mod fanout;
pub mod idle;

use crate::conn::Target;
use crate::stats::ErrorTally;
use crate::wire::Protocol;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Options every scenario takes.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Common {
    /// WebSocket URL of a node (ws://HOST:PORT[/PATH], loopback only); repeat or
    /// separate with commas to spread clients over several nodes.
    #[arg(
        long = "url",
        global = true,
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080"
    )]
    pub urls: Vec<String>,
    /// The protocol the system under test speaks.
    #[arg(long, global = true, value_enum, default_value_t = Protocol::Hubbub)]
    pub protocol: Protocol,
    /// A name for the system under test, carried into the result.
    #[arg(long, global = true)]
    pub label: Option<String>,
    /// Write the result as JSON to this file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Source addresses to spread connections over (127.0.0.1 up to 127.0.0.N);
    /// 0 chooses: one per 16000 connections.
    #[arg(long, global = true, default_value_t = 0)]
    pub source_ips: u8,
    /// Connections being opened at once.
    #[arg(long, global = true, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Milliseconds one connect-and-handshake, or one request, may take.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub timeout_ms: u64,
}

impl Common {
    /// `--timeout-ms` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// What a scenario runs with.
pub(crate) struct Context {
    pub targets: Vec<Target>,
    pub errors: Arc<ErrorTally>,
    /// Distinguishes this run's rooms and users from an earlier run's on the same
    /// server.
    pub run_id: u32,
    quiet: bool,
}

impl Context {
    pub fn new(common: &Common) -> Result<Self, String> {
        if common.urls.is_empty() {
            return Err("at least one --url is needed".to_owned());
        }
        let targets = common
            .urls
            .iter()
            .map(|url| Target::parse(url, common.protocol))
            .collect::<Result<Vec<_>, _>>()?;
        let run_id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| (d.as_millis() % 1_000_000) as u32)
            .unwrap_or(0);
        Ok(Self {
            targets,
            errors: Arc::new(ErrorTally::default()),
            run_id,
            quiet: common.quiet,
        })
    }

    /// A progress bar of `len` steps (hidden with `--quiet` or off a terminal).
    pub fn bar(&self, len: u64, message: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(len), self.draw_target());
        bar.set_style(
            ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} {per_sec} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(message.to_owned());
        bar
    }

    /// A spinner with a message (hidden with `--quiet` or off a terminal).
    pub fn spinner(&self, message: &str) -> ProgressBar {
        let spinner = ProgressBar::with_draw_target(None, self.draw_target());
        spinner.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        spinner.set_message(message.to_owned());
        spinner.enable_steady_tick(Duration::from_millis(200));
        spinner
    }

    fn draw_target(&self) -> ProgressDrawTarget {
        if self.quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        }
    }
}

/// The end of a run: what was run against what, and the scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub label: String,
    pub protocol: Protocol,
    pub urls: Vec<String>,
    pub started_unix_ms: u64,
    pub elapsed_s: f64,
    /// Every error counted during the run, all kinds together (each scenario's result
    /// breaks them down).
    pub errors_total: u64,
    pub params: serde_json::Value,
    pub result: serde_json::Value,
    /// The human summary, as printed.
    #[serde(skip)]
    pub summary: String,
}

/// When a run started, for the report.
pub(crate) struct Started {
    unix_ms: u64,
    at: Instant,
}

impl Started {
    pub fn now() -> Self {
        Self {
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            at: Instant::now(),
        }
    }

    pub fn report(
        self,
        scenario: &'static str,
        common: &Common,
        ctx: &Context,
        params: impl Serialize,
        result: impl Serialize,
        summary: String,
    ) -> Report {
        let label = common
            .label
            .clone()
            .unwrap_or_else(|| common.urls.join(","));
        Report {
            scenario,
            summary: format!("[{label}] {summary}"),
            label,
            protocol: common.protocol,
            urls: common.urls.clone(),
            started_unix_ms: self.unix_ms,
            elapsed_s: self.at.elapsed().as_secs_f64(),
            errors_total: ctx.errors.total(),
            params: serde_json::to_value(params).unwrap_or_default(),
            result: serde_json::to_value(result).unwrap_or_default(),
        }
    }
}
