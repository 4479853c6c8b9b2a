//! `churn`: connections that come and go. At `--rate` cycles per second for
//! `--duration` seconds, each cycle connects, joins a room, leaves it and disconnects,
//! waiting for each answer.
//!
//! At most `--max-inflight` cycles run at once; a cycle due while that many are still
//! running is not started and is counted as `skipped` (the system is behind). Reported:
//! cycles completed per second, connect and whole-cycle latency, and errors by stage.

use super::{Common, Context};
use crate::conn::{self, ConnError, SourcePlan};
use crate::stats::{latency_histogram, now_us, tally_line, tally_since, LatencySummary};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Options of `churn`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ChurnArgs {
    /// Cycles (connect, join, leave, disconnect) started per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds to start cycles for.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Rooms the cycles join, round robin.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Cycles running at once, at most.
    #[arg(long, default_value_t = 256)]
    pub max_inflight: usize,
}

/// The result of `churn`.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnResult {
    pub offered: u64,
    pub started: u64,
    pub completed: u64,
    /// Cycles not started because `--max-inflight` were still running.
    pub skipped: u64,
    pub failed: u64,
    /// From the first cycle's start to the last one's end.
    pub elapsed_s: f64,
    pub cycles_per_s: f64,
    pub source_ips: u8,
    /// Connect and handshake (hubbub `welcome`; Socket.IO open and CONNECT).
    pub connect_latency: LatencySummary,
    /// `join` to its answer.
    pub join_latency: LatencySummary,
    /// `leave` to its answer.
    pub leave_latency: LatencySummary,
    /// From sending a close frame to receiving the server's.
    pub close_latency: LatencySummary,
    /// The whole cycle.
    pub cycle_latency: LatencySummary,
    pub errors: BTreeMap<String, u64>,
}

/// One histogram per stage of a cycle, then the whole cycle.
struct Latencies([hdrhistogram::Histogram<u32>; 5]);

pub(crate) async fn run(
    common: &Common,
    ctx: &Context,
    args: &ChurnArgs,
) -> Result<(ChurnResult, String), String> {
    if args.rate <= 0.0 || args.rooms == 0 {
        return Err("churn needs a positive --rate and at least one room".to_owned());
    }
    let offered = (args.rate * args.duration).round() as u64;
    let sources = SourcePlan::new(common.source_ips, offered as usize);
    let errors_before = ctx.errors.snapshot();
    let latencies = Arc::new(Mutex::new(Latencies(std::array::from_fn(|_| {
        latency_histogram()
    }))));
    let completed = Arc::new(AtomicU64::new(0));
    let bar = ctx.bar(offered, "churning");
    let every = Duration::from_secs_f64(1.0 / args.rate);
    let start = Instant::now();
    let mut running = JoinSet::new();
    let (mut started, mut skipped) = (0u64, 0u64);
    for i in 0..offered {
        tokio::time::sleep_until((start + every.mul_f64(i as f64)).into()).await;
        while running.try_join_next().is_some() {}
        if running.len() >= args.max_inflight {
            skipped += 1;
            bar.inc(1);
            continue;
        }
        started += 1;
        let target = ctx.targets[i as usize % ctx.targets.len()].clone();
        let room = format!("churn-{}-{}", ctx.run_id, i as usize % args.rooms);
        let user = format!("c{}u{i}", ctx.run_id);
        let source = sources.source(i as usize);
        let timeout = common.timeout();
        let (errors, latencies, completed, bar) = (
            ctx.errors.clone(),
            latencies.clone(),
            completed.clone(),
            bar.clone(),
        );
        running.spawn(async move {
            // When each stage ended: connect, join, leave, close.
            let mut marks = [0u64; 5];
            marks[0] = now_us();
            let cycle = async {
                let mut conn = conn::open(&target, &user, source, timeout).await?;
                marks[1] = now_us();
                conn.request(|p, r| p.join(&room, r), timeout, "join")
                    .await?;
                marks[2] = now_us();
                conn.request(|p, r| p.leave(&room, r), timeout, "leave")
                    .await?;
                marks[3] = now_us();
                conn.close(timeout).await?;
                marks[4] = now_us();
                Ok::<_, ConnError>(())
            }
            .await;
            bar.inc(1);
            match cycle {
                Ok(()) => {
                    completed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut l) = latencies.lock() {
                        for stage in 0..4 {
                            l.0[stage].saturating_record((marks[stage + 1] - marks[stage]).max(1));
                        }
                        l.0[4].saturating_record((marks[4] - marks[0]).max(1));
                    }
                }
                Err(e) => errors.add(e.kind()),
            }
        });
    }
    while running.join_next().await.is_some() {}
    let elapsed_s = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let completed = completed.load(Ordering::Relaxed);
    let [connect_latency, join_latency, leave_latency, close_latency, cycle_latency] = latencies
        .lock()
        .map(|l| l.0.each_ref().map(LatencySummary::of))
        .unwrap_or_default();
    let result = ChurnResult {
        offered,
        started,
        completed,
        skipped,
        failed: started - completed,
        elapsed_s,
        cycles_per_s: completed as f64 / elapsed_s.max(1e-9),
        source_ips: sources.ips(),
        connect_latency,
        join_latency,
        leave_latency,
        close_latency,
        cycle_latency,
        errors: tally_since(&errors_before, &ctx.errors.snapshot()),
    };
    let summary = summary(args, &result);
    Ok((result, summary))
}

fn summary(args: &ChurnArgs, r: &ChurnResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "churn: {:.0} cycles/s offered for {} s: {} completed ({:.1}/s over {:.1} s), {} failed, {} skipped (over {} in flight)",
        args.rate, args.duration, r.completed, r.cycles_per_s, r.elapsed_s, r.failed, r.skipped, args.max_inflight
    );
    let _ = writeln!(out, "  connect {}", r.connect_latency.line());
    let _ = writeln!(out, "  join    {}", r.join_latency.line());
    let _ = writeln!(out, "  leave   {}", r.leave_latency.line());
    let _ = writeln!(out, "  close   {}", r.close_latency.line());
    let _ = writeln!(out, "  cycle   {}", r.cycle_latency.line());
    let _ = writeln!(out, "  errors: {}", tally_line(&r.errors));
    out
}
