//! hubbub-bench: the load generator behind `bench/run.sh` and docs/performance.md.
//!
//! It drives a system under test (hubbub, or one of the peers in `bench/peers/`) over
//! real WebSockets on loopback and reports what happened, counting every error. The
//! map of the crate:
//!
//! - [`wire`]: the two dialects spoken (hubbub protocol v1, Socket.IO v5); pure.
//! - [`conn`]: one connection: target URLs, source addresses, handshake, requests,
//!   the reader/writer split.
//! - [`members`]: clients joined to rooms and the publishers among them, counted per
//!   step (used by `fanout` and `efficiency`).
//! - [`scenario`]: `fanout`, `idle`, `churn`, `efficiency`, `ack`, each ending in a
//!   [`Report`] (JSON and a human summary).
//! - [`probe`]: the server seen from outside: RSS, `/metrics`, `/cluster`.
//! - [`stats`]: the clock, latency histograms, the error tally.
//!
//! Everything is bounded: scenarios run for the time and counts given, every wait has
//! a deadline, and only loopback addresses are accepted as targets.

pub mod conn;
pub mod members;
pub mod probe;
pub mod scenario;
pub mod stats;
pub mod wire;

use clap::{Parser, Subcommand};
pub use scenario::{Common, Report};

/// `hubbub-bench [OPTIONS] <SCENARIO> [SCENARIO OPTIONS]`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "hubbub-bench",
    version,
    about = "Load generator for hubbub and its peers (loopback only)",
    long_about = "Load generator for hubbub and its peers: fan-out rate and latency, idle \
                  connections' memory, connection churn, inter-node messages per \
                  broadcast in a cluster, and publish-to-acknowledgement latency. \
                  Speaks hubbub protocol v1 and Socket.IO v5. Targets must be loopback \
                  addresses."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The scenarios.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// Clients in rooms, publishers at a rate: deliveries/s, latency, loss (--ramp
    /// finds the highest rate that holds).
    Fanout(scenario::fanout::FanoutArgs),
    /// Open and hold N connections: the server's resident memory per connection.
    Idle(scenario::idle::IdleArgs),
    /// Connect, join, leave, disconnect at a rate: cycles per second and latency.
    Churn(scenario::churn::ChurnArgs),
    /// Inter-node messages per broadcast in a hubbub cluster, from
    /// hubbub_cluster_messages_total.
    Efficiency(scenario::efficiency::EfficiencyArgs),
    /// Publishers at fixed rates: the time from each publish to its reply (the
    /// acknowledgement, sent once the message is committed), and every publish that
    /// got none.
    Ack(scenario::ack::AckArgs),
}

/// Runs a scenario and returns its report; writes the JSON result when `--json` was
/// given. Errors are for runs that could not start or measure anything (a bad URL, no
/// client could connect); errors during a run are counted in the report.
pub async fn run(cli: Cli) -> Result<Report, String> {
    let ctx = scenario::Context::new(&cli.common)?;
    let started = scenario::Started::now();
    let common = &cli.common;
    let report = match &cli.scenario {
        Scenario::Fanout(args) => {
            let (result, summary) = scenario::fanout::run(common, &ctx, args).await?;
            started.report("fanout", common, &ctx, args, result, summary)
        }
        Scenario::Idle(args) => {
            let (result, summary) = scenario::idle::run(common, &ctx, args).await?;
            started.report("idle", common, &ctx, args, result, summary)
        }
        Scenario::Churn(args) => {
            let (result, summary) = scenario::churn::run(common, &ctx, args).await?;
            started.report("churn", common, &ctx, args, result, summary)
        }
        Scenario::Efficiency(args) => {
            let (result, summary) = scenario::efficiency::run(common, &ctx, args).await?;
            started.report("efficiency", common, &ctx, args, result, summary)
        }
        Scenario::Ack(args) => {
            let (result, summary) = scenario::ack::run(common, &ctx, args).await?;
            started.report("ack", common, &ctx, args, result, summary)
        }
    };
    if let Some(path) = &common.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| format!("could not encode the result: {e}"))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("could not write {}: {e}", path.display()))?;
    }
    Ok(report)
}
