//! `ack`: publish-to-acknowledgement latency at fixed rates.
//!
//! `--publishers` clients connect round robin over the URLs (publisher `i` to URL
//! `i % urls`), each joins room `i % --rooms`, and together they publish at each rate
//! of `--rate` (messages per second, all publishers together) for `--duration`
//! seconds. For every publish the time from handing it to the connection (just before
//! it is written) to receiving its reply (`{"type":"reply","ok":true,...}` matched by
//! `ref`; a Socket.IO ACK) is recorded. hubbub replies only once the message is
//! committed by a majority of its shard's voters (durable, fsynced as
//! `storage.fsync` says), so on a cluster this is the cost of Raft across nodes.
//!
//! The schedule is fixed in advance and does not wait for replies (an open loop), so
//! a slow reply never delays the next publish; how late the load generator itself sent
//! is reported as `send_lag` (actual send minus due time).
//!
//! After each step the scenario waits until every publish of the step is answered, or
//! until `--timeout-ms` after the step's last publish. A publish without a reply by
//! then is counted as a `timeout`, an error, never as a latency; a refusal (`ok:
//! false`) is counted by its code. `failed` is every publish of the step that was due
//! and not acknowledged. With several URLs, the latency is also split by whether the
//! publisher's node led its room's shard (from `GET /cluster`) or forwarded the
//! publish to the leader.

use super::{Common, Context};
use crate::conn::{self, ConnError, SourcePlan, Target};
use crate::stats::{
    latency_histogram, now_us, tally_line, tally_since, ErrorTally, LatencySummary,
};
use crate::wire::{Incoming, Protocol, Stamp};
use futures_util::stream::{self, SplitStream, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// The error kind a publish without a reply in time is counted under.
pub const TIMEOUT_KIND: &str = "timeout: no reply to a publish";

/// Options of `ack`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct AckArgs {
    /// Publishers, spread round robin over the URLs.
    #[arg(long, default_value_t = 12)]
    pub publishers: usize,
    /// Rooms; publisher `i` joins and publishes to room `i % rooms`.
    #[arg(long, default_value_t = 12)]
    pub rooms: usize,
    /// Messages per second, all publishers together; one step per value (comma
    /// separated), in the order given.
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    pub rate: Vec<f64>,
    /// Seconds each step publishes for.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of publishing at the first rate before anything is counted.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds of quiet between steps.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Bytes of content per message.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
}

/// One step: one rate held for `--duration`.
#[derive(Debug, Clone, Serialize)]
pub struct AckStep {
    pub step: u64,
    pub rate: f64,
    pub publishing_s: f64,
    /// Publishes due in the step.
    pub offered: u64,
    /// Publishes handed to a connection.
    pub sent: u64,
    /// Publishes answered with `ok: true` in time.
    pub acked: u64,
    /// Publishes answered with `ok: false`.
    pub refused: u64,
    /// Publishes with no answer by `--timeout-ms` after the step's last publish (or
    /// whose connection closed first).
    pub timeouts: u64,
    /// Due and not acknowledged: offered − acked.
    pub failed: u64,
    /// Every error counted during the step, by kind (timeouts included).
    pub errors: BTreeMap<String, u64>,
    pub acks_per_s: f64,
    /// Send to reply, acknowledged publishes only.
    pub latency: LatencySummary,
    /// The same, for publishers whose node led their room's shard (several URLs only).
    pub latency_at_leader: Option<LatencySummary>,
    /// The same, for publishers whose node forwarded to the leader (several URLs only).
    pub latency_forwarded: Option<LatencySummary>,
    /// How late the load generator sent, against the schedule.
    pub send_lag: LatencySummary,
}

/// The result of `ack`.
#[derive(Debug, Clone, Serialize)]
pub struct AckResult {
    pub nodes: usize,
    pub publishers: usize,
    pub connected: usize,
    /// Connected publishers per URL, in `--url` order.
    pub publishers_per_node: Vec<u64>,
    /// Publishers whose node led their room's shard at the start; None when that
    /// could not be told (one URL, or no `GET /cluster`).
    pub publishers_at_leader: Option<usize>,
    pub connect_errors: BTreeMap<String, u64>,
    /// `--timeout-ms`: how long after a step's last publish a reply may come.
    pub reply_timeout_ms: u64,
    pub steps: Vec<AckStep>,
}

/// A publish waiting for its reply.
struct Pending {
    sent_us: u64,
    step: u64,
}

/// What one publisher's reader counts for the current step.
struct Tally {
    acked: u64,
    refused: u64,
    latency: Histogram<u32>,
}

/// One publisher's state, shared by its sender and its reader.
struct Shared {
    pending: Mutex<HashMap<u64, Pending>>,
    tally: Mutex<Tally>,
    alive: AtomicBool,
}

struct Publisher {
    index: usize,
    room: String,
    target: usize,
    /// Its node led its room's shard, when known.
    at_leader: Option<bool>,
    tx: mpsc::Sender<Message>,
    shared: Arc<Shared>,
    /// The next `ref`, unique over the run.
    next_ref: Arc<AtomicU64>,
}

pub(crate) async fn run(
    common: &Common,
    ctx: &Context,
    args: &AckArgs,
) -> Result<(AckResult, String), String> {
    if args.publishers == 0 || args.rooms == 0 {
        return Err("ack needs at least one publisher and one room".to_owned());
    }
    if args.rate.is_empty() || args.rate.iter().any(|r| !r.is_finite() || *r <= 0.0) {
        return Err("ack needs positive --rate values".to_owned());
    }
    let before_connect = ctx.errors.snapshot();
    let bar = ctx.bar(args.publishers as u64, "connecting");
    let mut publishers = connect(common, ctx, args, &bar).await;
    bar.finish_and_clear();
    let connect_errors = tally_since(&before_connect, &ctx.errors.snapshot());
    if publishers.is_empty() {
        return Err(format!(
            "no publisher could connect and join: {}",
            tally_line(&connect_errors)
        ));
    }
    if ctx.targets.len() > 1 {
        for p in &mut publishers {
            p.at_leader = super::efficiency::find_owner(ctx, &p.room)
                .await
                .map(|owner| owner == p.target);
        }
    }
    let mut per_node = vec![0u64; ctx.targets.len()];
    for p in &publishers {
        per_node[p.target] += 1;
    }
    let publishers_at_leader = publishers
        .iter()
        .map(|p| p.at_leader)
        .collect::<Option<Vec<bool>>>()
        .filter(|_| ctx.targets.len() > 1)
        .map(|known| known.iter().filter(|at| **at).count());
    let timeout = common.timeout();
    if args.warmup > 0.0 {
        let warm = ctx.spinner("warming up");
        run_step(
            ctx,
            &publishers,
            args,
            0,
            args.rate[0],
            args.warmup,
            timeout,
        )
        .await;
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        warm.finish_and_clear();
    }
    let mut steps = Vec::new();
    for (k, &rate) in args.rate.iter().enumerate() {
        if k > 0 {
            tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        }
        let spinner = ctx.spinner(&format!("step {}: {rate:.0} msg/s", k + 1));
        let step = run_step(
            ctx,
            &publishers,
            args,
            k as u64 + 1,
            rate,
            args.duration,
            timeout,
        )
        .await;
        spinner.finish_and_clear();
        steps.push(step);
    }
    let result = AckResult {
        nodes: ctx.targets.len(),
        publishers: args.publishers,
        connected: publishers.len(),
        publishers_per_node: per_node,
        publishers_at_leader,
        connect_errors,
        reply_timeout_ms: common.timeout_ms,
        steps,
    };
    for p in &publishers {
        p.shared.alive.store(false, Ordering::Release);
    }
    drop(publishers);
    // Give the writers a moment to send their close frames.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let summary = summary(args, &result);
    Ok((result, summary))
}

async fn connect(
    common: &Common,
    ctx: &Context,
    args: &AckArgs,
    bar: &indicatif::ProgressBar,
) -> Vec<Publisher> {
    let sources = SourcePlan::new(common.source_ips, args.publishers);
    let timeout = common.timeout();
    let opened: Vec<Option<Publisher>> = stream::iter(0..args.publishers)
        .map(|i| {
            let target_index = i % ctx.targets.len();
            let target: &Target = &ctx.targets[target_index];
            let room = format!("ack-{}-{}", ctx.run_id, i % args.rooms);
            let user = format!("a{}u{i}", ctx.run_id);
            let errors = ctx.errors.clone();
            async move {
                let joined = async {
                    let mut conn = conn::open(target, &user, sources.source(i), timeout).await?;
                    conn.request(|p, r| p.join(&room, r), timeout, "join")
                        .await?;
                    Ok::<_, ConnError>(conn)
                }
                .await;
                bar.inc(1);
                match joined {
                    Ok(conn) => {
                        let protocol = conn.protocol;
                        let (read, tx) = conn.split();
                        let shared = Arc::new(Shared {
                            pending: Mutex::new(HashMap::new()),
                            tally: Mutex::new(Tally {
                                acked: 0,
                                refused: 0,
                                latency: latency_histogram(),
                            }),
                            alive: AtomicBool::new(true),
                        });
                        tokio::spawn(read_loop(
                            read,
                            protocol,
                            shared.clone(),
                            tx.downgrade(),
                            errors,
                        ));
                        Some(Publisher {
                            index: i,
                            room,
                            target: target_index,
                            at_leader: None,
                            tx,
                            shared,
                            // Requests before the split used small refs; start above.
                            next_ref: Arc::new(AtomicU64::new(1_000)),
                        })
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
    let mut publishers: Vec<Publisher> = opened.into_iter().flatten().collect();
    publishers.sort_by_key(|p| p.index);
    publishers
}

/// Publishes at `rate` for `duration`, waits for the replies, and counts.
async fn run_step(
    ctx: &Context,
    publishers: &[Publisher],
    args: &AckArgs,
    step: u64,
    rate: f64,
    duration: f64,
    timeout: Duration,
) -> AckStep {
    let errors_before = ctx.errors.snapshot();
    for p in publishers {
        if let Ok(mut t) = p.shared.tally.lock() {
            t.acked = 0;
            t.refused = 0;
            t.latency.reset();
        }
    }
    let each = rate / publishers.len() as f64;
    let total = (each * duration).round() as u64;
    let every = 1.0 / each;
    let start = Instant::now() + Duration::from_millis(5);
    let tasks: Vec<_> = publishers
        .iter()
        .enumerate()
        .map(|(k, p)| {
            // Spread the publishers' first sends over one interval.
            let first = start + Duration::from_secs_f64(k as f64 / publishers.len() as f64 * every);
            let job = SendJob {
                protocol: ctx.targets[p.target].protocol,
                room: p.room.clone(),
                step,
                publisher: p.index as u64,
                size: args.size,
                tx: p.tx.clone(),
                shared: p.shared.clone(),
                next_ref: p.next_ref.clone(),
                errors: ctx.errors.clone(),
            };
            tokio::spawn(job.run(first, every, total))
        })
        .collect();
    let mut sent = 0;
    let mut lag = latency_histogram();
    for task in tasks {
        if let Ok((n, hist)) = task.await {
            sent += n;
            let _ = lag.add(&hist);
        }
    }
    let publishing_s = start.elapsed().as_secs_f64();
    // Wait (bounded) for the replies of this step.
    let until = Instant::now() + timeout;
    while Instant::now() < until && publishers.iter().any(|p| waiting(p, step)) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut timeouts = 0;
    for p in publishers {
        if let Ok(mut pending) = p.shared.pending.lock() {
            let before = pending.len();
            pending.retain(|_, entry| entry.step != step);
            timeouts += (before - pending.len()) as u64;
        }
    }
    for _ in 0..timeouts {
        ctx.errors.add(TIMEOUT_KIND);
    }
    let mut all = latency_histogram();
    let mut at_leader = latency_histogram();
    let mut forwarded = latency_histogram();
    let (mut acked, mut refused) = (0, 0);
    for p in publishers {
        if let Ok(t) = p.shared.tally.lock() {
            acked += t.acked;
            refused += t.refused;
            let _ = all.add(&t.latency);
            match p.at_leader {
                Some(true) => {
                    let _ = at_leader.add(&t.latency);
                }
                Some(false) => {
                    let _ = forwarded.add(&t.latency);
                }
                None => {}
            }
        }
    }
    let split = ctx.targets.len() > 1 && publishers.iter().all(|p| p.at_leader.is_some());
    let offered = total * publishers.len() as u64;
    AckStep {
        step,
        rate,
        publishing_s,
        offered,
        sent,
        acked,
        refused,
        timeouts,
        failed: offered.saturating_sub(acked),
        errors: tally_since(&errors_before, &ctx.errors.snapshot()),
        acks_per_s: acked as f64 / publishing_s.max(1e-9),
        latency: LatencySummary::of(&all),
        latency_at_leader: split.then(|| LatencySummary::of(&at_leader)),
        latency_forwarded: split.then(|| LatencySummary::of(&forwarded)),
        send_lag: LatencySummary::of(&lag),
    }
}

/// Whether a publisher still waits for a reply to a publish of `step` (a closed
/// connection waits for nothing).
fn waiting(p: &Publisher, step: u64) -> bool {
    p.shared.alive.load(Ordering::Acquire)
        && p.shared
            .pending
            .lock()
            .map(|pending| pending.values().any(|e| e.step == step))
            .unwrap_or(false)
}

struct SendJob {
    protocol: Protocol,
    room: String,
    step: u64,
    publisher: u64,
    size: usize,
    tx: mpsc::Sender<Message>,
    shared: Arc<Shared>,
    next_ref: Arc<AtomicU64>,
    errors: Arc<ErrorTally>,
}

impl SendJob {
    /// Sends `total` publishes `every` seconds apart from `first`; returns how many
    /// went out and how late each was against its due time.
    async fn run(self, first: Instant, every: f64, total: u64) -> (u64, Histogram<u32>) {
        let mut lag = latency_histogram();
        let mut n = 0;
        while n < total {
            let due = first + Duration::from_secs_f64(n as f64 * every);
            tokio::time::sleep_until(due.into()).await;
            let reference = self.next_ref.fetch_add(1, Ordering::Relaxed);
            let sent_us = now_us();
            lag.saturating_record(
                Instant::now()
                    .saturating_duration_since(due)
                    .as_micros()
                    .max(1) as u64,
            );
            let stamp = Stamp {
                step: self.step,
                sent_us,
                publisher: self.publisher,
                n,
            };
            let frame = self
                .protocol
                .publish(&self.room, &stamp.content(self.size), reference);
            // Pending before it is sent, so that the reply cannot come first.
            if let Ok(mut pending) = self.shared.pending.lock() {
                pending.insert(
                    reference,
                    Pending {
                        sent_us,
                        step: self.step,
                    },
                );
            }
            if self.tx.send(Message::text(frame)).await.is_err() {
                if let Ok(mut pending) = self.shared.pending.lock() {
                    pending.remove(&reference);
                }
                self.errors.add("publish: connection gone");
                return (n, lag);
            }
            n += 1;
        }
        (n, lag)
    }
}

async fn read_loop(
    mut read: SplitStream<conn::Ws>,
    protocol: Protocol,
    shared: Arc<Shared>,
    // Weak, so that dropping the publisher closes the connection.
    tx: mpsc::WeakSender<Message>,
    errors: Arc<ErrorTally>,
) {
    let answered = |reference: Option<u64>| {
        let entry = reference.and_then(|r| shared.pending.lock().ok()?.remove(&r));
        if entry.is_none() {
            errors.add("reply to no pending publish (late or unknown ref)");
        }
        entry
    };
    while let Some(frame) = read.next().await {
        let text = match frame {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                if shared.alive.load(Ordering::Acquire) {
                    errors.add(format!("read: {e}"));
                }
                break;
            }
        };
        match protocol.decode(&text) {
            Incoming::Reply { reference } => {
                let arrived = now_us();
                if let Some(entry) = answered(reference) {
                    if let Ok(mut t) = shared.tally.lock() {
                        t.acked += 1;
                        t.latency
                            .saturating_record(arrived.saturating_sub(entry.sent_us).max(1));
                    }
                }
            }
            Incoming::Refused { reference, code } => {
                errors.add(format!("refused: {code}"));
                if answered(reference).is_some() {
                    if let Ok(mut t) = shared.tally.lock() {
                        t.refused += 1;
                    }
                }
            }
            Incoming::Ping => {
                if let Some(tx) = tx.upgrade() {
                    let _ = tx.try_send(Message::text(protocol.pong()));
                }
            }
            Incoming::Error(what) => errors.add(what),
            // Its room's broadcasts (its own publishes included) are not what is
            // measured here.
            Incoming::Message { .. }
            | Incoming::Welcome
            | Incoming::Connected
            | Incoming::Other => {}
        }
    }
    if shared.alive.swap(false, Ordering::AcqRel) {
        errors.add("disconnected by the server");
    }
}

fn summary(args: &AckArgs, r: &AckResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ack: {} of {} publishers connected over {} node(s) {:?}, {} rooms{}; a publish without a reply {} ms after the step is a timeout",
        r.connected,
        r.publishers,
        r.nodes,
        r.publishers_per_node,
        args.rooms,
        r.publishers_at_leader
            .map_or(String::new(), |n| format!(", {n} at their shard's leader")),
        r.reply_timeout_ms
    );
    if !r.connect_errors.is_empty() {
        let _ = writeln!(out, "  connect errors: {}", tally_line(&r.connect_errors));
    }
    for s in &r.steps {
        let _ = writeln!(
            out,
            "  step {} {:>6.0} msg/s for {:.1} s: sent {}/{}, acked {} ({:.0}/s), refused {}, timeouts {}, failed {}",
            s.step, s.rate, s.publishing_s, s.sent, s.offered, s.acked, s.acks_per_s, s.refused, s.timeouts, s.failed
        );
        let _ = writeln!(out, "    publish to ack {}", s.latency.line());
        if let (Some(at), Some(fw)) = (&s.latency_at_leader, &s.latency_forwarded) {
            let _ = writeln!(
                out,
                "    at the leader ({}) p50 {:.2} ms, p99 {:.2} ms; forwarded ({}) p50 {:.2} ms, p99 {:.2} ms",
                at.count, at.p50_ms, at.p99_ms, fw.count, fw.p50_ms, fw.p99_ms
            );
        }
        let _ = writeln!(
            out,
            "    send lag p99 {:.2} ms, max {:.2} ms; errors: {}",
            s.send_lag.p99_ms,
            s.send_lag.max_ms,
            tally_line(&s.errors)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use futures_util::SinkExt;

    /// A hubbub-shaped server that welcomes, answers joins, and never answers a
    /// publish: every publish must come out as a timeout, none as a latency.
    async fn silent_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    let welcome = r#"{"type":"welcome","session":"s","user":{"id":"u","name":"u"},"node":"n","protocol":1,"heartbeat_ms":25000}"#;
                    if ws.send(Message::text(welcome)).await.is_err() {
                        return;
                    }
                    while let Some(Ok(Message::Text(text))) = ws.next().await {
                        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                        if value["type"] == "join" {
                            let reply = format!(
                                r#"{{"type":"reply","ref":{},"ok":true,"data":{{}}}}"#,
                                value["ref"]
                            );
                            if ws.send(Message::text(reply)).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        url
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_without_a_reply_is_a_timeout_not_a_latency() {
        let url = silent_server().await;
        let cli = crate::Cli::try_parse_from([
            "hubbub-bench",
            "--quiet",
            "--timeout-ms",
            "300",
            "--url",
            &url,
            "ack",
            "--publishers",
            "2",
            "--rooms",
            "1",
            "--rate",
            "20",
            "--duration",
            "0.5",
            "--warmup",
            "0",
        ])
        .unwrap();
        let crate::Scenario::Ack(args) = &cli.scenario else {
            panic!("not ack");
        };
        let ctx = Context::new(&cli.common).unwrap();
        let started = Instant::now();
        let (result, summary) = run(&cli.common, &ctx, args).await.unwrap();
        let step = &result.steps[0];
        assert_eq!(step.offered, 10, "{summary}");
        assert_eq!(step.sent, 10, "{summary}");
        assert_eq!(step.acked, 0, "{summary}");
        assert_eq!(step.timeouts, 10, "{summary}");
        assert_eq!(step.failed, 10, "{summary}");
        assert_eq!(step.latency.count, 0, "{summary}");
        assert_eq!(step.errors.get(TIMEOUT_KIND), Some(&10), "{summary}");
        // It waited for the replies, then gave up: about the timeout, not forever.
        assert!(started.elapsed() < Duration::from_secs(5), "{summary}");
    }
}
