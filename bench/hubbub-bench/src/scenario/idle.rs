//! `idle`: open N connections, hold them, and measure what they cost the server in
//! resident memory.
//!
//! The server's RSS is read before the first connection and again while all are held
//! (the highest of the samples taken over `--hold` seconds, after `--settle`), from
//! `/proc/<pid>/status` of every `--pid` (summed), or else from
//! `process_resident_memory_bytes` on each URL's `/metrics`. Per connection is the
//! growth divided by the connections that were open. Every connection answers the
//! server's pings while held, so none is closed for silence.

use super::{Common, Context};
use crate::conn::{self, SourcePlan};
use crate::probe;
use crate::stats::{latency_histogram, now_us, tally_line, tally_since, LatencySummary};
use crate::wire::{Incoming, Protocol};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Options of `idle`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct IdleArgs {
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Seconds to hold them all open, sampling the server's memory.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Seconds to wait after the last connection before sampling.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Process id of the server (repeat for several processes: their RSS is summed).
    /// Without it, `/metrics` of each URL is asked.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
}

/// The result of `idle`.
#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    pub requested: usize,
    pub connected: usize,
    pub failed: usize,
    /// Connections the server closed while they were held.
    pub dropped_while_held: u64,
    pub source_ips: u8,
    pub connect_latency: LatencySummary,
    pub connect_s: f64,
    pub errors: BTreeMap<String, u64>,
    /// Where the memory figures come from: "proc" or "metrics"; None when neither was
    /// available.
    pub rss_source: Option<String>,
    pub rss_before_bytes: Option<u64>,
    pub rss_held_bytes: Option<u64>,
    pub rss_per_connection_bytes: Option<f64>,
}

pub(crate) async fn run(
    common: &Common,
    ctx: &Context,
    args: &IdleArgs,
) -> Result<(IdleResult, String), String> {
    let rss_source = if !args.pids.is_empty() {
        Some("proc")
    } else if sample_rss(ctx, args).await.is_some() {
        Some("metrics")
    } else {
        None
    };
    let rss_before = sample_rss(ctx, args).await;
    let sources = SourcePlan::new(common.source_ips, args.connections);
    let timeout = common.timeout();
    let errors_before = ctx.errors.snapshot();
    let closing = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicU64::new(0));
    let bar = ctx.bar(args.connections as u64, "connecting");
    let started = std::time::Instant::now();
    let opened: Vec<Option<(u64, tokio::sync::mpsc::Sender<Message>)>> =
        stream::iter(0..args.connections)
            .map(|i| {
                let target = &ctx.targets[i % ctx.targets.len()];
                let user = format!("i{}u{i}", ctx.run_id);
                let (closing, dropped, errors, bar) = (
                    closing.clone(),
                    dropped.clone(),
                    ctx.errors.clone(),
                    bar.clone(),
                );
                async move {
                    let t0 = now_us();
                    let result = conn::open(target, &user, sources.source(i), timeout).await;
                    bar.inc(1);
                    match result {
                        Ok(conn) => {
                            let took = now_us() - t0;
                            let protocol = conn.protocol;
                            let (read, tx) = conn.split();
                            tokio::spawn(hold(read, protocol, tx.clone(), closing, dropped));
                            Some((took, tx))
                        }
                        Err(e) => {
                            errors.add(e.kind());
                            None
                        }
                    }
                }
            })
            .buffer_unordered(common.connect_concurrency.max(1))
            .collect()
            .await;
    let connect_s = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let mut latency = latency_histogram();
    let mut held = Vec::new();
    for (took, tx) in opened.into_iter().flatten() {
        latency.saturating_record(took.max(1));
        held.push(tx);
    }
    let spinner = ctx.spinner(&format!("holding {} connections", held.len()));
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let mut rss_held: Option<u64> = None;
    let samples = ((args.hold / 0.5).ceil() as u64).max(1);
    for _ in 0..samples {
        if let Some(rss) = sample_rss(ctx, args).await {
            rss_held = Some(rss_held.map_or(rss, |r| r.max(rss)));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    spinner.finish_and_clear();
    closing.store(true, Ordering::Release);
    let connected = held.len();
    drop(held);
    // Let the writers send their close frames before the runtime goes away.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_connection = match (rss_before, rss_held) {
        (Some(before), Some(after)) if connected > 0 => {
            Some((after as f64 - before as f64) / connected as f64)
        }
        _ => None,
    };
    let result = IdleResult {
        requested: args.connections,
        connected,
        failed: args.connections - connected,
        dropped_while_held: dropped.load(Ordering::Relaxed),
        source_ips: sources.ips(),
        connect_latency: LatencySummary::of(&latency),
        connect_s,
        errors: tally_since(&errors_before, &ctx.errors.snapshot()),
        rss_source: rss_source.map(str::to_owned),
        rss_before_bytes: rss_before,
        rss_held_bytes: rss_held,
        rss_per_connection_bytes: per_connection,
    };
    let summary = summary(&result);
    Ok((result, summary))
}

/// The server's RSS now: summed over `--pid`s, else over each URL's `/metrics`.
async fn sample_rss(ctx: &Context, args: &IdleArgs) -> Option<u64> {
    if !args.pids.is_empty() {
        return args
            .pids
            .iter()
            .map(|&pid| probe::rss_bytes(pid))
            .sum::<Option<u64>>();
    }
    let mut total = 0;
    for target in &ctx.targets {
        total += probe::rss_from_metrics(target.addr, &target.host).await?;
    }
    Some(total)
}

/// Keeps one connection open: answers Engine.IO pings (tungstenite answers WebSocket
/// pings by itself) and notes a close by the server.
async fn hold(
    mut read: futures_util::stream::SplitStream<conn::Ws>,
    protocol: Protocol,
    tx: tokio::sync::mpsc::Sender<Message>,
    closing: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
) {
    while let Some(frame) = read.next().await {
        match frame {
            Ok(Message::Text(text)) => {
                if protocol.decode(&text) == Incoming::Ping {
                    let _ = tx.try_send(Message::text(protocol.pong()));
                }
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if !closing.load(Ordering::Acquire) {
        dropped.fetch_add(1, Ordering::Relaxed);
    }
}

fn summary(r: &IdleResult) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "idle: {}/{} connections open in {:.1} s (from {} source address{}), {} failed, {} dropped while held",
        r.connected,
        r.requested,
        r.connect_s,
        r.source_ips,
        if r.source_ips == 1 { "" } else { "es" },
        r.failed,
        r.dropped_while_held
    );
    let _ = writeln!(out, "  connect {}", r.connect_latency.line());
    match (
        r.rss_before_bytes,
        r.rss_held_bytes,
        r.rss_per_connection_bytes,
    ) {
        (Some(before), Some(after), Some(per)) => {
            let _ = writeln!(
                out,
                "  server RSS ({}): {:.1} MiB before, {:.1} MiB held: {:.1} KiB per connection",
                r.rss_source.as_deref().unwrap_or("?"),
                mib(before),
                mib(after),
                per / 1024.0
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "  server RSS: not available (give --pid, or serve process metrics on /metrics)"
            );
        }
    }
    let _ = writeln!(out, "  errors: {}", tally_line(&r.errors));
    out
}
