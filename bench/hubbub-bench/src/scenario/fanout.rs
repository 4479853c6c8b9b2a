//! `fanout`: C clients over R rooms, P publishers at an aggregate rate X for T seconds.
//!
//! Every member of a room (the publisher included) receives every message published
//! to it, so one step expects `sum over rooms of sent × members` deliveries. Reported
//! per step: deliveries per second, end-to-end latency (due send time to arrival),
//! lost (expected − received after a drain), messages from earlier steps arriving late,
//! out-of-order sequence numbers and errors by kind.
//!
//! `--ramp` repeats steps, multiplying the rate by `--ramp-factor` while a step holds
//! (p99 within `--p99-bound-ms`, nothing lost, no error), then narrows down between the
//! highest rate that held and the lowest that did not until they are within
//! `--precision`. The result is the highest rate that held.

use super::{Common, Context};
use crate::conn::SourcePlan;
use crate::members::{ConnectOptions, Layout, Members};
use crate::probe::{self, ProcessUse};
use crate::stats::{tally_line, tally_since, LatencySummary};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// Options of `fanout`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct FanoutArgs {
    /// Clients, spread over the rooms and the URLs.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Publishers (the first P clients; each publishes to its own room). Default: one
    /// per room.
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Messages per second, all publishers together (the first rate of a ramp).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds each step publishes for.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Bytes of content per message.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Raise the rate until a step does not hold; report the highest rate that held.
    #[arg(long)]
    pub ramp: bool,
    /// A step holds when its p99 latency is at most this many milliseconds (and
    /// nothing was lost and nothing failed).
    #[arg(long, default_value_t = 50.0)]
    pub p99_bound_ms: f64,
    /// How much a ramp multiplies the rate after a step that held.
    #[arg(long, default_value_t = 2.0)]
    pub ramp_factor: f64,
    /// A ramp stops narrowing once the rate that failed is within this fraction above
    /// the rate that held.
    #[arg(long, default_value_t = 0.15)]
    pub precision: f64,
    /// A ramp never goes above this rate.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub max_rate: f64,
    /// A ramp runs at most this many steps.
    #[arg(long, default_value_t = 16)]
    pub max_steps: u32,
    /// Seconds of publishing at the first rate before anything is counted.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds to wait after a step for deliveries still on their way.
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
    /// Seconds of quiet between steps.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Process id of the server (repeat for several): each step then reports the CPU
    /// time and write system calls it cost the server, per delivery.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
}

/// What a step cost a set of processes: in all, and per delivery.
#[derive(Debug, Clone, Serialize)]
pub struct StepCost {
    pub cpu_s: f64,
    pub write_calls: u64,
    pub read_calls: u64,
    /// CPU microseconds per delivery.
    pub cpu_us_per_delivery: f64,
    /// write(2)-like system calls per delivery (below 1 when writes are batched).
    /// `/proc/<pid>/io` counts write and writev but not send(2), which Rust's
    /// `TcpStream` uses: compare this between systems with care.
    pub writes_per_delivery: f64,
}

impl StepCost {
    fn of(used: ProcessUse, deliveries: u64) -> Self {
        let per = deliveries.max(1) as f64;
        Self {
            cpu_s: used.cpu_s,
            write_calls: used.write_calls,
            read_calls: used.read_calls,
            cpu_us_per_delivery: used.cpu_s * 1e6 / per,
            writes_per_delivery: used.write_calls as f64 / per,
        }
    }
}

/// One step: a rate held for a while.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub step: u64,
    pub rate: f64,
    pub publishing_s: f64,
    pub sent: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    /// Deliveries beyond the expected count (duplicates).
    pub extra: u64,
    /// Deliveries of earlier steps' messages that arrived during this one.
    pub late: u64,
    pub out_of_order: u64,
    /// Publishes the server acknowledged.
    pub acks: u64,
    pub errors: BTreeMap<String, u64>,
    pub deliveries_per_s: f64,
    pub latency: LatencySummary,
    /// What the step cost the server (with `--pid`), from publishing to the drain's end.
    pub server: Option<StepCost>,
    /// What it cost this load generator.
    pub client: Option<StepCost>,
    /// The clients were reconnected before this step (some had been disconnected).
    pub reconnected: bool,
    pub held: bool,
}

/// The result of `fanout`.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    pub connected: usize,
    pub members_per_room: Vec<u64>,
    pub publishers: usize,
    pub connect_errors: BTreeMap<String, u64>,
    pub steps: Vec<StepResult>,
    /// Ramp only: the highest rate that held, None when none did.
    pub max_rate_held: Option<f64>,
    /// Ramp only: the step at that rate.
    pub best: Option<StepResult>,
    /// Ramp only: why it stopped.
    pub stop_reason: Option<String>,
}

pub(crate) async fn run(
    common: &Common,
    ctx: &Context,
    args: &FanoutArgs,
) -> Result<(FanoutResult, String), String> {
    if args.clients == 0 || args.rooms == 0 {
        return Err("fanout needs at least one client and one room".to_owned());
    }
    let publishers = args.publishers.unwrap_or(args.rooms).min(args.clients);
    let layout = Layout {
        clients: args.clients,
        rooms: args.rooms,
        publishers,
        room_prefix: format!("fan-{}-", ctx.run_id),
        user_prefix: format!("f{}u", ctx.run_id),
    };
    let options = ConnectOptions {
        timeout: common.timeout(),
        concurrency: common.connect_concurrency,
        sources: SourcePlan::new(common.source_ips, args.clients),
    };
    let connect = |attempt: u32| {
        let layout = Layout {
            user_prefix: format!("{}r{attempt}-", layout.user_prefix),
            ..layout.clone()
        };
        let bar = ctx.bar(args.clients as u64, "connecting");
        let errors = ctx.errors.clone();
        async move {
            let members = Members::connect(&ctx.targets, layout, options, errors, &bar).await;
            bar.finish_and_clear();
            members
        }
    };
    let before_connect = ctx.errors.snapshot();
    let mut members = connect(0).await;
    let connect_errors = tally_since(&before_connect, &ctx.errors.snapshot());
    if members.connected() == 0 {
        return Err(format!(
            "no client could connect and join: {}",
            tally_line(&connect_errors)
        ));
    }
    let mut result = FanoutResult {
        connected: members.connected(),
        members_per_room: members.per_room(),
        publishers,
        connect_errors,
        steps: Vec::new(),
        max_rate_held: None,
        best: None,
        stop_reason: None,
    };
    warm_up(ctx, &members, args).await;
    let mut rate = args.rate;
    let mut held_best: Option<f64> = None;
    let mut failed_lowest: Option<f64> = None;
    let mut reconnects = 0;
    for step in 1..=u64::from(args.max_steps.max(1)) {
        let mut reconnected = false;
        if !members.all_alive() {
            // A server that closed clients was overloaded: let it finish closing the
            // old connections and announcing their leaves before the new ones join,
            // and warm the new ones up, so the next step starts from a quiet server.
            members.close().await;
            tokio::time::sleep(Duration::from_secs_f64(args.settle * 3.0)).await;
            reconnects += 1;
            members = connect(reconnects).await;
            warm_up(ctx, &members, args).await;
            reconnected = true;
        }
        let outcome = run_step(ctx, &members, args, step, rate, reconnected).await;
        let held = outcome.held;
        result.steps.push(outcome.clone());
        if !args.ramp {
            break;
        }
        if held {
            if held_best.is_none_or(|best| rate > best) {
                held_best = Some(rate);
                result.best = Some(outcome);
            }
        } else {
            failed_lowest = Some(failed_lowest.map_or(rate, |low: f64| low.min(rate)));
        }
        let next = match (held_best, failed_lowest) {
            (_, None) => rate * args.ramp_factor,
            (None, Some(low)) => low / args.ramp_factor,
            (Some(good), Some(bad)) => {
                if bad <= good * (1.0 + args.precision) {
                    result.stop_reason = Some(format!(
                        "narrowed down: {good:.0}/s held, {bad:.0}/s did not"
                    ));
                    break;
                }
                (good * bad).sqrt()
            }
        };
        if next > args.max_rate {
            result.stop_reason = Some(format!("reached --max-rate {}", args.max_rate));
            break;
        }
        if next < 1.0 {
            result.stop_reason = Some("no rate held, down to 1 message/s".to_owned());
            break;
        }
        rate = next;
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    }
    if args.ramp {
        result.max_rate_held = held_best;
        if result.stop_reason.is_none() {
            result.stop_reason = Some(format!("--max-steps {} reached", args.max_steps));
        }
    }
    members.close().await;
    let summary = summary(args, &result);
    Ok((result, summary))
}

/// Publishes at the first rate for `--warmup` seconds, counting nothing, then settles.
async fn warm_up(ctx: &Context, members: &Members, args: &FanoutArgs) {
    if args.warmup <= 0.0 {
        return;
    }
    let warm = ctx.spinner("warming up");
    members.begin_step(0);
    members
        .publish(
            0,
            args.rate,
            Duration::from_secs_f64(args.warmup),
            args.size,
        )
        .await;
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    warm.finish_and_clear();
}

async fn run_step(
    ctx: &Context,
    members: &Members,
    args: &FanoutArgs,
    step: u64,
    rate: f64,
    reconnected: bool,
) -> StepResult {
    let spinner = ctx.spinner(&format!("step {step}: {rate:.0} msg/s"));
    let errors_before = ctx.errors.snapshot();
    members.begin_step(step);
    let server_before = probe::process_use(&args.pids);
    let client_before = probe::process_use(&[std::process::id()]);
    let started = Instant::now();
    let sent_per_room = members
        .publish(
            step,
            rate,
            Duration::from_secs_f64(args.duration),
            args.size,
        )
        .await;
    let publishing_s = started.elapsed().as_secs_f64();
    let per_room = members.per_room();
    let expected: u64 = sent_per_room
        .iter()
        .zip(&per_room)
        .map(|(sent, members)| sent * members)
        .sum();
    spinner.set_message(format!("step {step}: {rate:.0} msg/s, draining"));
    members
        .drain(expected, Duration::from_secs_f64(args.drain_timeout))
        .await;
    let counts = members.counts();
    let cost = |before: Option<ProcessUse>, pids: &[u32]| {
        let after = probe::process_use(pids)?;
        Some(StepCost::of(after.since(&before?), counts.received))
    };
    let server = if args.pids.is_empty() {
        None
    } else {
        cost(server_before, &args.pids)
    };
    let client = cost(client_before, &[std::process::id()]);
    spinner.finish_and_clear();
    let errors = tally_since(&errors_before, &ctx.errors.snapshot());
    let latency = LatencySummary::of(&counts.latency);
    let lost = expected.saturating_sub(counts.received);
    let held = lost == 0
        && errors.is_empty()
        && counts.out_of_order == 0
        && latency.p99_ms <= args.p99_bound_ms;
    StepResult {
        step,
        rate,
        publishing_s,
        sent: sent_per_room.iter().sum(),
        expected,
        received: counts.received,
        lost,
        extra: counts.received.saturating_sub(expected),
        late: counts.late,
        out_of_order: counts.out_of_order,
        acks: counts.acks,
        errors,
        deliveries_per_s: counts.received as f64 / publishing_s.max(1e-9),
        latency,
        server,
        client,
        reconnected,
        held,
    }
}

fn summary(args: &FanoutArgs, result: &FanoutResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fanout: {} of {} clients connected, {} rooms ({} members each, at least), {} publishers",
        result.connected,
        args.clients,
        args.rooms,
        result.members_per_room.iter().min().copied().unwrap_or(0),
        result.publishers
    );
    if !result.connect_errors.is_empty() {
        let _ = writeln!(
            out,
            "  connect errors: {}",
            tally_line(&result.connect_errors)
        );
    }
    for s in &result.steps {
        let _ = writeln!(
            out,
            "  step {:>2} {:>9.0} msg/s: sent {}, delivered {}/{} ({:.0}/s), lost {}, late {}, out of order {}, {}; errors: {}{}{}",
            s.step,
            s.rate,
            s.sent,
            s.received,
            s.expected,
            s.deliveries_per_s,
            s.lost,
            s.late,
            s.out_of_order,
            s.latency.line(),
            tally_line(&s.errors),
            match (&s.server, &s.client) {
                (Some(server), Some(client)) => format!(
                    "; CPU per delivery: server {:.1} µs, load generator {:.1} µs",
                    server.cpu_us_per_delivery, client.cpu_us_per_delivery
                ),
                _ => String::new(),
            },
            if args.ramp {
                if s.held { "  [held]" } else { "  [did not hold]" }
            } else {
                ""
            }
        );
    }
    if args.ramp {
        match (&result.max_rate_held, &result.best) {
            (Some(rate), Some(best)) => {
                let _ = writeln!(
                    out,
                    "  highest rate that held (p99 <= {} ms, no loss, no error): {rate:.0} msg/s = {:.0} deliveries/s, {}",
                    args.p99_bound_ms,
                    best.deliveries_per_s,
                    best.latency.line()
                );
            }
            _ => {
                let _ = writeln!(out, "  no rate held");
            }
        }
        if let Some(reason) = &result.stop_reason {
            let _ = writeln!(out, "  ramp stopped: {reason}");
        }
    }
    out
}
