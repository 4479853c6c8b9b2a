//! A crowd of connected clients joined to rooms, and the publishers among them: what
//! `fanout` and `efficiency` drive.
//!
//! Client `i` joins room `i % rooms` on target `(i / rooms + i % rooms) % targets`, so
//! every room has members on every target and the publishers (clients `0..publishers`)
//! sit on different targets too. Each client has a reader task, which stamps the
//! arrival of every broadcast against the send time carried in its content, and a
//! writer task (see [`crate::conn::Conn::split`]).
//!
//! A run is divided into steps (a ramp has several). A broadcast counts towards the
//! step whose number it carries; one arriving during a later step counts as `late`,
//! never as a delivery of the current one.

use crate::conn::{self, ConnError, SourcePlan, Target};
use crate::stats::{latency_histogram, now_us, us_at, ErrorTally};
use crate::wire::{Incoming, Protocol, Stamp};
use futures_util::stream::{self, SplitStream, StreamExt};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// How the clients are laid out over rooms and targets.
#[derive(Debug, Clone)]
pub struct Layout {
    pub clients: usize,
    pub rooms: usize,
    pub publishers: usize,
    /// Room `r` is named `{room_prefix}{r}`.
    pub room_prefix: String,
    /// User `i` is named `{user_prefix}{i}`.
    pub user_prefix: String,
}

impl Layout {
    /// The room client `i` joins.
    pub fn room_of(&self, i: usize) -> usize {
        i % self.rooms
    }

    /// The target client `i` connects to, among `targets`.
    pub fn target_of(&self, i: usize, targets: usize) -> usize {
        (i / self.rooms + i % self.rooms) % targets
    }

    /// The name of room `r`.
    pub fn room_name(&self, r: usize) -> String {
        format!("{}{r}", self.room_prefix)
    }
}

/// How clients connect: deadlines, parallelism and source addresses.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// Deadline of one connection's connect and handshake, and of one request.
    pub timeout: Duration,
    /// Connections being opened at once.
    pub concurrency: usize,
    pub sources: SourcePlan,
}

/// What one client's reader counts. Reset at the start of every step.
#[derive(Debug)]
struct MemberStats {
    received: AtomicU64,
    late: AtomicU64,
    out_of_order: AtomicU64,
    acks: AtomicU64,
    latency: Mutex<Histogram<u32>>,
    alive: AtomicBool,
}

impl MemberStats {
    fn new() -> Self {
        Self {
            received: AtomicU64::new(0),
            late: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            latency: Mutex::new(latency_histogram()),
            alive: AtomicBool::new(true),
        }
    }
}

struct Member {
    /// The client's number in the layout.
    index: usize,
    room: usize,
    target: usize,
    tx: mpsc::Sender<Message>,
    stats: Arc<MemberStats>,
}

/// What was counted over one step, all clients together.
#[derive(Debug)]
pub struct StepCounts {
    pub received: u64,
    pub late: u64,
    pub out_of_order: u64,
    pub acks: u64,
    pub latency: Histogram<u32>,
}

/// Connected clients, each joined to its room.
pub struct Members {
    layout: Layout,
    protocol: Protocol,
    members: Vec<Member>,
    step: Arc<AtomicU64>,
    closing: Arc<AtomicBool>,
    errors: Arc<ErrorTally>,
}

impl Members {
    /// Connects every client of `layout` and joins it to its room. A client that fails
    /// is counted in `errors` and left out; [`Members::connected`] says how many made it.
    pub async fn connect(
        targets: &[Target],
        layout: Layout,
        options: ConnectOptions,
        errors: Arc<ErrorTally>,
        progress: &ProgressBar,
    ) -> Self {
        let step = Arc::new(AtomicU64::new(0));
        let closing = Arc::new(AtomicBool::new(false));
        let protocol = targets[0].protocol;
        let opened: Vec<Option<Member>> = stream::iter(0..layout.clients)
            .map(|i| {
                let room = layout.room_of(i);
                let target_index = layout.target_of(i, targets.len());
                let target = &targets[target_index];
                let room_name = layout.room_name(room);
                let user = format!("{}{i}", layout.user_prefix);
                let (step, closing, errors) = (step.clone(), closing.clone(), errors.clone());
                async move {
                    let joined = async {
                        let mut conn =
                            conn::open(target, &user, options.sources.source(i), options.timeout)
                                .await?;
                        conn.request(|p, r| p.join(&room_name, r), options.timeout, "join")
                            .await?;
                        Ok::<_, ConnError>(conn)
                    }
                    .await;
                    progress.inc(1);
                    match joined {
                        Ok(conn) => {
                            let (read, tx) = conn.split();
                            let stats = Arc::new(MemberStats::new());
                            tokio::spawn(read_loop(
                                read,
                                protocol,
                                stats.clone(),
                                tx.clone(),
                                step,
                                closing,
                                errors,
                            ));
                            Some(Member {
                                index: i,
                                room,
                                target: target_index,
                                tx,
                                stats,
                            })
                        }
                        Err(e) => {
                            errors.add(e.kind());
                            None
                        }
                    }
                }
            })
            .buffer_unordered(options.concurrency.max(1))
            .collect()
            .await;
        let mut members: Vec<Member> = opened.into_iter().flatten().collect();
        members.sort_by_key(|m| m.index);
        Self {
            layout,
            protocol,
            members,
            step,
            closing,
            errors,
        }
    }

    /// How many clients are connected and joined.
    pub fn connected(&self) -> usize {
        self.members.len()
    }

    /// True while no client has been disconnected.
    pub fn all_alive(&self) -> bool {
        self.members
            .iter()
            .all(|m| m.stats.alive.load(Ordering::Acquire))
    }

    /// Joined clients per room.
    pub fn per_room(&self) -> Vec<u64> {
        let mut counts = vec![0; self.layout.rooms];
        for m in &self.members {
            counts[m.room] += 1;
        }
        counts
    }

    /// Joined clients per room and target: `[room][target]`.
    pub fn per_room_and_target(&self, targets: usize) -> Vec<Vec<u64>> {
        let mut counts = vec![vec![0; targets]; self.layout.rooms];
        for m in &self.members {
            counts[m.room][m.target] += 1;
        }
        counts
    }

    /// Starts counting for `step`: broadcasts stamped with an earlier step are late.
    pub fn begin_step(&self, step: u64) {
        self.step.store(step, Ordering::Release);
        for m in &self.members {
            m.stats.received.store(0, Ordering::Relaxed);
            m.stats.late.store(0, Ordering::Relaxed);
            m.stats.out_of_order.store(0, Ordering::Relaxed);
            m.stats.acks.store(0, Ordering::Relaxed);
            if let Ok(mut hist) = m.stats.latency.lock() {
                hist.reset();
            }
        }
    }

    /// Broadcasts received so far in this step, all clients together.
    pub fn received(&self) -> u64 {
        self.members
            .iter()
            .map(|m| m.stats.received.load(Ordering::Relaxed))
            .sum()
    }

    /// What every reader counted since [`Members::begin_step`].
    pub fn counts(&self) -> StepCounts {
        let mut latency = latency_histogram();
        let mut counts = StepCounts {
            received: 0,
            late: 0,
            out_of_order: 0,
            acks: 0,
            latency: latency_histogram(),
        };
        for m in &self.members {
            counts.received += m.stats.received.load(Ordering::Relaxed);
            counts.late += m.stats.late.load(Ordering::Relaxed);
            counts.out_of_order += m.stats.out_of_order.load(Ordering::Relaxed);
            counts.acks += m.stats.acks.load(Ordering::Relaxed);
            if let Ok(hist) = m.stats.latency.lock() {
                let _ = latency.add(&*hist);
            }
        }
        counts.latency = latency;
        counts
    }

    /// Has the publishers send `rate` messages per second in all for `duration`, each
    /// to its own room, and returns how many were sent to each room. Sends are paced
    /// by a schedule fixed in advance, and each message carries the time it was due,
    /// so a sender falling behind shows as latency rather than hiding it.
    pub async fn publish(&self, step: u64, rate: f64, duration: Duration, size: usize) -> Vec<u64> {
        let publishers: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| m.index < self.layout.publishers)
            .collect();
        let mut sent = vec![0; self.layout.rooms];
        if publishers.is_empty() || rate <= 0.0 {
            return sent;
        }
        let each = rate / publishers.len() as f64;
        let total = (each * duration.as_secs_f64()).round() as u64;
        let start = Instant::now() + Duration::from_millis(5);
        let tasks: Vec<_> = publishers
            .iter()
            .enumerate()
            .map(|(k, m)| {
                // Spread the publishers' first sends over one interval.
                let offset = Duration::from_secs_f64(k as f64 / publishers.len() as f64 / each);
                let schedule = Schedule {
                    start: start + offset,
                    every: 1.0 / each,
                    total,
                };
                let job = PublishJob {
                    protocol: self.protocol,
                    room: self.layout.room_name(m.room),
                    step,
                    publisher: m.index as u64,
                    size,
                    tx: m.tx.clone(),
                    errors: self.errors.clone(),
                };
                (m.room, tokio::spawn(job.run(schedule)))
            })
            .collect();
        for (room, task) in tasks {
            sent[room] += task.await.unwrap_or(0);
        }
        sent
    }

    /// Waits until `expected` broadcasts of this step have arrived, or `deadline`
    /// passes.
    pub async fn drain(&self, expected: u64, deadline: Duration) {
        let until = Instant::now() + deadline;
        while self.received() < expected && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Closes every connection (protocol goodbye, then a WebSocket close).
    pub async fn close(self) {
        self.closing.store(true, Ordering::Release);
        drop(self.members);
        // Give the writers a moment to send their close frames.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// When a publisher's messages are due: `total` of them, `every` seconds apart.
struct Schedule {
    start: Instant,
    every: f64,
    total: u64,
}

impl Schedule {
    fn due(&self, n: u64) -> Instant {
        self.start + Duration::from_secs_f64(n as f64 * self.every)
    }
}

struct PublishJob {
    protocol: Protocol,
    room: String,
    step: u64,
    publisher: u64,
    size: usize,
    tx: mpsc::Sender<Message>,
    errors: Arc<ErrorTally>,
}

impl PublishJob {
    /// Sends on schedule; returns how many messages went out.
    async fn run(self, schedule: Schedule) -> u64 {
        let start_us = us_at(schedule.start);
        let mut n = 0;
        while n < schedule.total {
            tokio::time::sleep_until(schedule.due(n).into()).await;
            let now = Instant::now();
            while n < schedule.total && schedule.due(n) <= now {
                let due_us = start_us + (n as f64 * schedule.every * 1e6) as u64;
                let stamp = Stamp {
                    step: self.step,
                    sent_us: due_us,
                    publisher: self.publisher,
                    n,
                };
                let frame = self
                    .protocol
                    .publish(&self.room, &stamp.content(self.size), 1_000 + n);
                if self.tx.send(Message::text(frame)).await.is_err() {
                    self.errors.add("publish: connection gone");
                    return n;
                }
                n += 1;
            }
        }
        n
    }
}

async fn read_loop(
    mut read: SplitStream<conn::Ws>,
    protocol: Protocol,
    stats: Arc<MemberStats>,
    tx: mpsc::Sender<Message>,
    step: Arc<AtomicU64>,
    closing: Arc<AtomicBool>,
    errors: Arc<ErrorTally>,
) {
    let mut last_seq: Option<u64> = None;
    while let Some(frame) = read.next().await {
        let text = match frame {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                if !closing.load(Ordering::Acquire) {
                    errors.add(format!("read: {e}"));
                }
                break;
            }
        };
        match protocol.decode(&text) {
            Incoming::Message { seq, content } => {
                let arrived = now_us();
                let Some(stamp) = Stamp::parse(content) else {
                    errors.add("message with a foreign content");
                    continue;
                };
                if protocol.ordered() {
                    if let Some(seq) = seq {
                        if last_seq.is_some_and(|last| seq <= last) {
                            stats.out_of_order.fetch_add(1, Ordering::Relaxed);
                        }
                        last_seq = Some(seq);
                    }
                }
                if stamp.step == step.load(Ordering::Acquire) {
                    if let Ok(mut hist) = stats.latency.lock() {
                        hist.saturating_record(arrived.saturating_sub(stamp.sent_us).max(1));
                    }
                    stats.received.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.late.fetch_add(1, Ordering::Relaxed);
                }
            }
            Incoming::Reply { .. } => {
                stats.acks.fetch_add(1, Ordering::Relaxed);
            }
            Incoming::Refused { code, .. } => errors.add(format!("refused: {code}")),
            Incoming::Ping => {
                let _ = tx.try_send(Message::text(protocol.pong()));
            }
            Incoming::Error(what) => errors.add(what),
            Incoming::Welcome | Incoming::Connected | Incoming::Other => {}
        }
    }
    stats.alive.store(false, Ordering::Release);
    if !closing.load(Ordering::Acquire) {
        errors.add("disconnected by the server");
    }
}
