//! The abuse harness: one real `hubbub` process with default limits (only its ports,
//! its log, and where an attack needs them the cluster or JWT settings are written),
//! what watches it during an attack, and the clients that attack it.
//!
//! - [`AbuseNode`]: the process, its generated config and log; killed when dropped.
//! - [`Monitor`]: samples the node's resident memory (`VmRSS` in `/proc/<pid>/status`)
//!   every [`RSS_EVERY`] and polls `/healthz` every [`HEALTHZ_EVERY`] with a short
//!   timeout, for the whole attack. Past [`RSS_BOUND`] it kills the node at once, so
//!   that an attack the node does not withstand fails the test instead of pushing a
//!   shared machine into swap or the OOM killer.
//! - [`Conversation`]: the well-behaved member of the attacked room. Publishers at a
//!   modest rate, under every default limit, and a reader whose `message` seqs must be
//!   complete, in order and prompt.
//! - [`RawWs`]: a WebSocket client written on a bare TCP socket, bound to a chosen
//!   loopback source address (Linux routes all of 127.0.0.0/8 to `lo`), so that the
//!   default per-address limits are kept rather than raised: it can stop reading its
//!   socket (a non-reading client), or hand its socket to a [`Member`] that reads and
//!   throws away everything, so thousands of idle members cost the test little.
//!
//! Every wait is bounded; attacks run for a stated time and stop by themselves.

use crate::hubbub_node::{end_test, free_addrs, test_dir, wait_for, NodeConfig, NodeProcess};
pub use crate::hubbub_node::{http_get, DEADLINE};
pub use crate::ws_client::Client;
use crate::ws_client::Dial;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// The resident memory a node with default limits must stay under whatever the
/// attack (docs/operations.md, "Memory under abuse").
pub const RSS_BOUND: u64 = 512 * MIB;
pub const MIB: u64 = 1024 * 1024;
/// How often the node's resident memory is read.
pub const RSS_EVERY: Duration = Duration::from_millis(50);
/// How often `/healthz` is asked during an attack.
pub const HEALTHZ_EVERY: Duration = Duration::from_millis(250);
/// How long one `/healthz` may take: a node that cannot answer its liveness probe
/// within this is one a supervisor (Kubernetes: `timeoutSeconds`) restarts.
pub const HEALTHZ_TIMEOUT: Duration = Duration::from_secs(2);
/// The well-behaved conversation: one publish every this often, rotating over
/// [`PUBLISHERS`] users (each then publishes 37.5 a minute, under the default 50).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(400);
pub const PUBLISHERS: usize = 4;
/// From sending a publish to the reader holding the message: longer is starvation.
pub const DELIVERY_BOUND: Duration = Duration::from_secs(5);
/// Open connections an attack puts on one source address: under the default
/// `rate_limit.connections_per_ip` (100).
pub const PER_ADDRESS: usize = 90;

/// Held by a running attack: one at a time in this process (`cargo test` runs tests
/// on parallel threads; nextest runs them one at a time through the `abuse` group).
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `each(a, i)` for the `i`th of `per_address` connections from each of
/// `addresses` source addresses, each address's `i`th `pace × i` after the call, all
/// addresses at once; returns what each returned, in order (Err: its task panicked).
/// `each` makes its future at once and the future runs when due, so what it must
/// measure from its own start it reads inside.
pub async fn paced<T, F, Fut>(
    addresses: u8,
    per_address: usize,
    pace: Duration,
    each: F,
) -> Vec<Result<T, String>>
where
    F: Fn(u8, usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..addresses {
        for i in 0..per_address {
            let due = started + pace * i as u32;
            let run = each(a, i);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(due.into()).await;
                run.await
            }));
        }
    }
    let mut done = Vec::with_capacity(tasks.len());
    for task in tasks {
        done.push(task.await.map_err(|e| e.to_string()));
    }
    done
}

/// The `i`th loopback source address: 127.0.0.`i` (1 is the ordinary 127.0.0.1).
pub fn loopback(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))
}

/// One `hubbub` process with default limits.
pub struct AbuseNode {
    pub label: String,
    pub http: SocketAddr,
    /// The cluster port, when the attack needs the cluster enabled.
    pub cluster: Option<SocketAddr>,
    dir: PathBuf,
    process: NodeProcess,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// A cluster cookie long enough for any check: 48 characters.
pub const COOKIE: &str = "abuse-suite-cookie-0123456789abcdef0123456789ab";
/// Lines of the node's log printed after a failure.
const LOG_TAIL_LINES: usize = 40;

impl AbuseNode {
    /// Starts a node whose config sets only its name, its ports, its storage and its
    /// log; waits until it is ready.
    pub async fn start(label: &str) -> Self {
        Self::start_with(label, false, |_| {}).await
    }

    /// [`AbuseNode::start`] with what an attack needs set in the config on top (e.g.
    /// `[auth]`).
    pub async fn start_configured(label: &str, configure: impl FnOnce(&mut NodeConfig)) -> Self {
        Self::start_with(label, false, configure).await
    }

    /// [`AbuseNode::start`] with the cluster enabled on a loopback port: a one-node
    /// cluster seeded with itself, with a 48-character cookie.
    pub async fn start_clustered(label: &str) -> Self {
        Self::start_with(label, true, |_| {}).await
    }

    async fn start_with(
        label: &str,
        clustered: bool,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> Self {
        let serial = SERIAL.lock().await;
        let addrs = free_addrs(2);
        let http = addrs[0];
        let cluster = clustered.then_some(addrs[1]);
        let dir = test_dir("abuse", label);
        let mut config = NodeConfig::new("abuse", http, &dir.join("data"));
        config.log_level("warn,ractor_cluster=error");
        if let Some(bind) = cluster {
            config.cluster(bind, COOKIE, &[bind], &["abuse"]);
        }
        configure(&mut config);
        let mut process = NodeProcess::new(config, &dir, "node");
        process.spawn();
        let mut node = Self {
            label: label.to_owned(),
            http,
            cluster,
            dir,
            process,
            _serial: serial,
        };
        node.process.wait_answering("/readyz").await;
        if clustered {
            // Publishing needs every shard of the room logs to have its leader.
            let what = format!("[{label}] the room logs to have their leaders");
            wait_for(DEADLINE, &what, async || {
                let status = node.process.status().await.ok_or("no answer")?;
                let led = status["shards"]
                    .as_array()
                    .is_some_and(|s| s.iter().all(|x| !x["leader"].is_null()));
                led.then_some(()).ok_or(status.to_string())
            })
            .await;
        }
        node
    }

    pub fn pid(&self) -> u32 {
        self.process.try_pid().unwrap_or(0)
    }

    /// The node's resident memory in bytes; None once the process is gone.
    pub fn rss(&self) -> Option<u64> {
        rss_of(self.pid())
    }

    /// One sample of `GET /metrics` (`name` with no labels, or with exactly the label
    /// text given, e.g. `hubbub_rooms` or `hubbub_messages_total{direction="in",...}`).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (status, body) = http_get(self.http, "/metrics", DEADLINE).await?;
        (status == 200).then_some(())?;
        body.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (key, value) = line.rsplit_once(' ')?;
                (key == name).then(|| value.parse().ok()).flatten()
            })
    }

    /// Waits (bounded) until the gauge `name` reads `want` or less; its last value.
    pub async fn metric_settles(&self, name: &str, want: f64) -> f64 {
        let started = Instant::now();
        loop {
            let value = self.metric(name).await;
            if value.is_some_and(|v| v <= want) || started.elapsed() > DEADLINE {
                return value.unwrap_or(f64::NAN);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for AbuseNode {
    fn drop(&mut self) {
        end_test(
            &self.label,
            &self.dir,
            [&mut self.process],
            false,
            LOG_TAIL_LINES,
        );
    }
}

/// `VmRSS` of a process, in bytes.
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Well-behaved clients reach the node over plain WS from 127.0.0.1.
impl Dial for SocketAddr {
    fn ws_url(&self, query: &str) -> String {
        format!("ws://{self}/ws?{query}")
    }

    fn deadline(&self) -> Duration {
        DEADLINE
    }
}

/// What the [`Monitor`] saw of the node's memory.
#[derive(Default)]
pub struct RssLog {
    /// (time since the monitor started, bytes).
    pub samples: Vec<(Duration, u64)>,
    /// When and at what size the node passed the bound (and was killed).
    pub breach: Option<(Duration, u64)>,
}

impl RssLog {
    pub fn peak(&self) -> u64 {
        self.samples.iter().map(|s| s.1).max().unwrap_or(0)
    }

    pub fn first(&self) -> u64 {
        self.samples.first().map_or(0, |s| s.1)
    }

    /// The median of the samples taken in `[from, to)`.
    pub fn median_between(&self, from: Duration, to: Duration) -> Option<u64> {
        let mut window: Vec<u64> = (self.samples.iter())
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|s| s.1)
            .collect();
        window.sort_unstable();
        window.get(window.len() / 2).copied()
    }
}

/// What the [`Monitor`] saw of `/healthz`.
#[derive(Default)]
pub struct HealthLog {
    pub polls: u32,
    /// Polls that got no 200 within [`HEALTHZ_TIMEOUT`]: (when, what).
    pub failures: Vec<(Duration, String)>,
    pub slowest: Duration,
}

/// Watches a node's memory and liveness for the length of an attack.
pub struct Monitor {
    started: Instant,
    stop: Arc<AtomicBool>,
    rss: std::thread::JoinHandle<RssLog>,
    health: JoinHandle<HealthLog>,
}

impl Monitor {
    /// Starts sampling now; the node is killed as soon as it passes [`RSS_BOUND`].
    pub fn start(node: &AbuseNode) -> Self {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let pid = node.pid();
        let rss = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut log = RssLog::default();
                while !stop.load(Ordering::Relaxed) {
                    let Some(bytes) = rss_of(pid) else { break };
                    log.samples.push((started.elapsed(), bytes));
                    if bytes > RSS_BOUND && log.breach.is_none() {
                        log.breach = Some((started.elapsed(), bytes));
                        // Protect the machine: the attack has already succeeded.
                        let _ = Command::new("kill")
                            .arg("-KILL")
                            .arg(pid.to_string())
                            .status();
                        break;
                    }
                    std::thread::sleep(RSS_EVERY);
                }
                log
            })
        };
        let health = {
            let stop = stop.clone();
            let addr = node.http;
            tokio::spawn(async move {
                let mut log = HealthLog::default();
                let mut tick = tokio::time::interval(HEALTHZ_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let asked = Instant::now();
                    let answer = http_get(addr, "/healthz", HEALTHZ_TIMEOUT).await;
                    log.polls += 1;
                    log.slowest = log.slowest.max(asked.elapsed());
                    match answer {
                        Some((200, _)) => {}
                        Some((status, _)) => log
                            .failures
                            .push((started.elapsed(), format!("HTTP {status}"))),
                        None => log.failures.push((
                            started.elapsed(),
                            format!("no answer within {HEALTHZ_TIMEOUT:?}"),
                        )),
                    }
                }
                log
            })
        };
        Self {
            started,
            stop,
            rss,
            health,
        }
    }

    /// Time since the monitor started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The monitor's own clock: sample times in [`RssLog`] are measured from this.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// For an attack that could not go on (its setup failed): reports what the node
    /// did (a breach of the bound first), then panics with `error`.
    pub async fn fail(self, attack: &str, error: String) -> ! {
        let (rss, health) = self.finish().await;
        assert_withstood(attack, &rss, &health, &error);
        panic!("{attack}: {error}");
    }

    /// Stops watching; what was seen.
    pub async fn finish(self) -> (RssLog, HealthLog) {
        self.stop.store(true, Ordering::Relaxed);
        let health = self.health.await.expect("health poller");
        let rss = tokio::task::spawn_blocking(move || self.rss.join())
            .await
            .expect("join")
            .expect("rss sampler");
        (rss, health)
    }
}

/// Asserts the two properties every attack must keep: memory under [`RSS_BOUND`] and
/// `/healthz` answered on every poll. Prints and records the figures.
pub fn assert_withstood(attack: &str, rss: &RssLog, health: &HealthLog, extra: &str) {
    let figures = format!(
        "{attack}: peak RSS {:.1} MiB (first sample {:.1} MiB, {} samples); /healthz {} polls, \
         {} failed, slowest {:?}; {extra}",
        rss.peak() as f64 / MIB as f64,
        rss.first() as f64 / MIB as f64,
        rss.samples.len(),
        health.polls,
        health.failures.len(),
        health.slowest,
    );
    record_figures(&figures);
    if let Some((at, bytes)) = rss.breach {
        panic!(
            "{attack}: the node's resident memory passed {} MiB ({:.1} MiB at {at:?}); \
             it was killed\n{figures}",
            RSS_BOUND / MIB,
            bytes as f64 / MIB as f64
        );
    }
    assert!(
        !rss.samples.is_empty(),
        "{attack}: no memory sample was taken"
    );
    assert!(
        health.polls >= 2,
        "{attack}: /healthz was hardly polled\n{figures}"
    );
    assert!(
        health.failures.is_empty(),
        "{attack}: /healthz failed during the attack: {:?}\n{figures}",
        &health.failures[..health.failures.len().min(10)]
    );
}

/// Appends a line of figures to `<target tmpdir>/abuse-figures.txt` and stderr.
pub fn record_figures(line: &str) {
    eprintln!("{line}");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("abuse-figures.txt");
    if let Ok(mut file) = File::options().create(true).append(true).open(path) {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let _ = writeln!(file, "{stamp} {line}");
    }
}

/// The well-behaved member of an attacked room: [`PUBLISHERS`] users publishing in
/// turn every [`PUBLISH_EVERY`], and a reader that keeps every `message` of the room.
pub struct Conversation {
    started: Instant,
    reader_id: String,
    stop_publishing: Arc<AtomicBool>,
    stop_reading: Arc<AtomicBool>,
    publisher: JoinHandle<Published>,
    reader: JoinHandle<Read>,
    heard: Arc<Mutex<Read>>,
}

/// What the publishers did.
#[derive(Default)]
struct Published {
    /// seq → when the publish was sent.
    sent: BTreeMap<u64, Instant>,
    /// Publishes refused or unanswered: what happened.
    failures: Vec<String>,
    slowest_ack: Duration,
}

/// What the reader read.
#[derive(Default, Clone)]
struct Read {
    /// The room's `seq` in the reader's join reply.
    joined_at: u64,
    /// (seq, when read) of every `message` of the room, in arrival order.
    messages: Vec<(u64, Instant)>,
    directs: u64,
    other_frames: u64,
    /// The connection ended under the reader.
    ended: bool,
}

/// What a [`Conversation`] saw, to assert on.
pub struct ConversationReport {
    pub published: usize,
    pub received: usize,
    pub directs: u64,
    pub slowest_delivery: Duration,
    pub slowest_ack: Duration,
    problems: Vec<String>,
}

impl ConversationReport {
    /// One line of figures.
    pub fn summary(&self) -> String {
        format!(
            "conversation: {} published, {} received, slowest ack {:?}, slowest delivery {:?}",
            self.published, self.received, self.slowest_ack, self.slowest_delivery
        )
    }

    /// Panics unless every message was received, in order, in time.
    pub fn assert_complete(&self, attack: &str) {
        assert!(
            self.problems.is_empty(),
            "{attack}: the well-behaved member did not keep receiving: {}\n{}",
            self.problems.join("; "),
            self.summary()
        );
    }
}

impl Conversation {
    /// Connects the reader and the publishers (from 127.0.0.1), joins them to `room`
    /// and starts publishing.
    pub async fn start(node: &AbuseNode, room: &str) -> Self {
        Self::start_as(node, room, None, |user| format!("user={user}")).await
    }

    /// [`Conversation::start`] in a room already at `seq`: the clients join with
    /// `since` it, as clients that have read the room before do, so that their join
    /// replies carry no history.
    pub async fn start_after(node: &AbuseNode, room: &str, seq: u64) -> Self {
        Self::start_as(node, room, Some(seq), |user| format!("user={user}")).await
    }

    /// [`Conversation::start`] on a node in JWT mode: `token(user)` signs a token.
    pub async fn start_with_tokens(
        node: &AbuseNode,
        room: &str,
        token: impl Fn(&str) -> String,
    ) -> Self {
        Self::start_as(node, room, None, |user| format!("token={}", token(user))).await
    }

    /// The conversation with `query(user)` as each client's query string.
    async fn start_as(
        node: &AbuseNode,
        room: &str,
        since: Option<u64>,
        query: impl Fn(&str) -> String,
    ) -> Self {
        let addr = node.http;
        let mut join = json!({"type": "join", "room": room});
        if let Some(since) = since {
            join["since"] = json!(since);
        }
        let reader_id = format!("reader-{room}");
        let mut reader = Client::connect(addr, &query(&reader_id)).await;
        let joined = reader.ok(join.clone()).await;
        let joined_at = joined["seq"].as_u64().expect("join reply has seq");
        let mut publishers = Vec::new();
        for i in 0..PUBLISHERS {
            let mut publisher = Client::connect(addr, &query(&format!("publisher-{i}"))).await;
            publisher.ok(join.clone()).await;
            publisher.discard_pending();
            publishers.push(publisher);
        }
        let stop_publishing = Arc::new(AtomicBool::new(false));
        let stop_reading = Arc::new(AtomicBool::new(false));
        let heard = Arc::new(Mutex::new(Read {
            joined_at,
            ..Read::default()
        }));
        let reader = {
            let heard = heard.clone();
            let room = room.to_owned();
            let stop = stop_reading.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let next =
                        timeout(Duration::from_millis(200), reader.next_frame_or_end()).await;
                    let Ok(frame) = next else { continue };
                    let mut heard = heard.lock().expect("reader log");
                    match frame {
                        None => {
                            heard.ended = true;
                            break;
                        }
                        Some(f) if f["type"] == "message" && f["room"] == json!(room) => {
                            let seq = f["seq"].as_u64().unwrap_or(0);
                            heard.messages.push((seq, Instant::now()));
                        }
                        Some(f) if f["type"] == "direct" => heard.directs += 1,
                        Some(_) => heard.other_frames += 1,
                    }
                }
                let heard = heard.lock().expect("reader log").clone();
                drop(reader);
                heard
            })
        };
        let publisher = {
            let room = room.to_owned();
            let stop = stop_publishing.clone();
            tokio::spawn(async move {
                let mut published = Published::default();
                let mut tick = tokio::time::interval(PUBLISH_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let publisher = &mut publishers[n % PUBLISHERS];
                    n += 1;
                    let sent = Instant::now();
                    let frame =
                        json!({"type": "publish", "room": room, "content": format!("m{n}")});
                    let reply = timeout(DEADLINE, publisher.try_request(frame)).await;
                    publisher.discard_pending();
                    published.slowest_ack = published.slowest_ack.max(sent.elapsed());
                    match reply {
                        Ok(Some(r)) if r["ok"] == true => {
                            let seq = r["data"]["seq"].as_u64().unwrap_or(0);
                            published.sent.insert(seq, sent);
                        }
                        Ok(Some(r)) => published.failures.push(format!("publish refused: {r}")),
                        Ok(None) => {
                            published.failures.push(format!(
                                "a publisher's connection ended, or its reply took over {DEADLINE:?}"
                            ));
                            break;
                        }
                        Err(_) => published
                            .failures
                            .push(format!("no publish reply within {DEADLINE:?}")),
                    }
                }
                published
            })
        };
        Self {
            started: Instant::now(),
            reader_id,
            stop_publishing,
            stop_reading,
            publisher,
            reader,
            heard,
        }
    }

    /// The reader's user id (a direct-message target).
    pub fn reader_id(&self) -> &str {
        &self.reader_id
    }

    /// Stops publishing, waits (bounded) for the reader to catch up, and reports.
    pub async fn finish(self) -> ConversationReport {
        self.stop_publishing.store(true, Ordering::Relaxed);
        let published = self.publisher.await.expect("publisher task");
        let last = published.sent.keys().next_back().copied();
        let waited = Instant::now();
        // The publisher has stopped: the reader still reads until it has the last.
        while waited.elapsed() < DEADLINE {
            let caught_up = {
                let heard = self.heard.lock().expect("reader log");
                heard.ended || last.is_none_or(|l| heard.messages.iter().any(|m| m.0 >= l))
            };
            if caught_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop_reading.store(true, Ordering::Relaxed);
        // The reader task stops within 200 ms.
        let heard = self.reader.await.expect("reader task");
        let mut problems = published.failures.clone();
        if heard.ended {
            problems.push("the reader's connection was closed".into());
        }
        let mut slowest_delivery = Duration::ZERO;
        for (expected, (seq, at)) in (heard.joined_at + 1..).zip(&heard.messages) {
            if *seq != expected {
                problems.push(format!("message seq {seq} where {expected} was next"));
                break;
            }
            if let Some(sent) = published.sent.get(seq) {
                slowest_delivery = slowest_delivery.max(at.saturating_duration_since(*sent));
            }
        }
        let missing: Vec<u64> = (published.sent.keys())
            .filter(|s| !heard.messages.iter().any(|m| m.0 == **s))
            .copied()
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{} published messages never arrived (seqs {:?}...)",
                missing.len(),
                &missing[..missing.len().min(5)]
            ));
        }
        if slowest_delivery > DELIVERY_BOUND {
            problems.push(format!(
                "a message took {slowest_delivery:?} to arrive (bound {DELIVERY_BOUND:?})"
            ));
        }
        if published.slowest_ack > DELIVERY_BOUND {
            problems.push(format!(
                "a publish took {:?} to be acknowledged (bound {DELIVERY_BOUND:?})",
                published.slowest_ack
            ));
        }
        // A publisher that the node keeps waiting publishes less than its rate. How much
        // less depends on the machine as much as on the node (publishers wait for each
        // ack, and a loaded 2-core CI machine is slow), so the bound is a floor that a
        // starved room misses, not a share of the rate: each ack is bounded above.
        let due = (self.started.elapsed().as_millis() / PUBLISH_EVERY.as_millis()) as usize;
        if published.sent.len() < (due / 5).max(5) {
            problems.push(format!(
                "only {} of about {due} messages were published",
                published.sent.len()
            ));
        }
        ConversationReport {
            published: published.sent.len(),
            received: heard.messages.len(),
            directs: heard.directs,
            slowest_delivery,
            slowest_ack: published.slowest_ack,
            problems,
        }
    }
}

/// Why a [`RawWs`] did not open.
#[derive(Debug)]
pub enum DialError {
    /// The node answered the upgrade with this HTTP status (429, 503, ...).
    Refused(u16),
    /// No connection, or no answer in time.
    Failed(String),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(status) => write!(f, "upgrade refused with HTTP {status}"),
            Self::Failed(why) => write!(f, "{why}"),
        }
    }
}

/// A WebSocket client on a bare TCP socket from a chosen source address.
pub struct RawWs {
    stream: TcpStream,
    /// Bytes read past the last frame parsed.
    buf: Vec<u8>,
    /// The code of the node's close frame, once one arrived.
    pub closed_with: Option<u16>,
}

/// The masking key of every frame a [`RawWs`] sends (any key will do).
const MASK: [u8; 4] = [0x5a, 0x13, 0xc7, 0x2e];

/// A masked client text frame.
pub fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x81];
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= 0xffff {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

/// The head of a masked client frame of `opcode` announcing `len` payload bytes; its
/// payload must follow masked with [`mask`].
pub fn masked_head(opcode: u8, len: usize) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode, 0x80 | 127];
    frame.extend_from_slice(&(len as u64).to_be_bytes());
    frame.extend_from_slice(&MASK);
    frame
}

/// `payload` masked as the bytes of a frame's payload starting at `offset`.
pub fn mask(payload: &[u8], offset: usize) -> Vec<u8> {
    payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ MASK[(offset + i) % 4])
        .collect()
}

/// A TCP connection to `to` from `from` (port chosen by the kernel).
pub async fn tcp_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(from, 0))?;
    timeout(DEADLINE, socket.connect(to))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
}

impl RawWs {
    /// Opens `/ws?{query}` from `from`, with extra request headers.
    pub async fn dial(node: SocketAddr, from: IpAddr, query: &str) -> Result<Self, DialError> {
        Self::dial_path(node, from, &format!("/ws?{query}")).await
    }

    /// Opens the WebSocket at `target` (path and query: `/socket.io/?EIO=4&...`).
    pub async fn dial_path(
        node: SocketAddr,
        from: IpAddr,
        target: &str,
    ) -> Result<Self, DialError> {
        let failed = |e: std::io::Error| DialError::Failed(e.to_string());
        let mut stream = tcp_from(from, node).await.map_err(failed)?;
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {node}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(failed)?;
        let mut buf = Vec::with_capacity(1024);
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > 16 * 1024 {
                return Err(DialError::Failed("an endless response head".into()));
            }
            let mut chunk = [0u8; 4096];
            let read = timeout(DEADLINE, stream.read(&mut chunk))
                .await
                .map_err(|_| DialError::Failed("no upgrade answer in time".into()))?
                .map_err(failed)?;
            if read == 0 {
                return Err(DialError::Failed("closed before answering".into()));
            }
            buf.extend_from_slice(&chunk[..read]);
        };
        let status: u16 = String::from_utf8_lossy(&buf[..head_end])
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status != 101 {
            return Err(DialError::Refused(status));
        }
        buf.drain(..head_end);
        Ok(Self {
            stream,
            buf,
            closed_with: None,
        })
    }

    /// [`RawWs::dial`] until it opens or `until` passes: a refusal (429 for the
    /// handshake rate, 503) or a failed connect is tried again 50 ms later. The error
    /// is the last one.
    pub async fn dial_until(
        node: SocketAddr,
        from: IpAddr,
        query: &str,
        until: Instant,
    ) -> Result<Self, DialError> {
        Self::dial_path_until(node, from, &format!("/ws?{query}"), until).await
    }

    /// [`RawWs::dial_until`] for the WebSocket at `target` (path and query).
    pub async fn dial_path_until(
        node: SocketAddr,
        from: IpAddr,
        target: &str,
        until: Instant,
    ) -> Result<Self, DialError> {
        loop {
            match Self::dial_path(node, from, target).await {
                Ok(ws) => return Ok(ws),
                Err(_) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends frames already encoded (with [`masked_text`]).
    pub async fn send_bytes(&mut self, frames: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(frames).await
    }

    /// Sends one text frame.
    pub async fn send(&mut self, text: &str) -> std::io::Result<()> {
        self.stream.write_all(&masked_text(text.as_bytes())).await
    }

    /// The next text frame from the node; None when it closed.
    pub async fn next_text(&mut self) -> std::io::Result<Option<String>> {
        let mut message = Vec::new();
        loop {
            let (header, fin, opcode, len) = loop {
                if let Some(parsed) = parse_header(&self.buf) {
                    break parsed;
                }
                if !self.fill().await? {
                    return Ok(None);
                }
            };
            while self.buf.len() < header + len {
                if !self.fill().await? {
                    return Ok(None);
                }
            }
            let payload: Vec<u8> = self.buf.drain(..header + len).skip(header).collect();
            match opcode {
                0x8 => {
                    self.closed_with =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Ok(None);
                }
                0x9 | 0xA => continue,
                _ => message.extend_from_slice(&payload),
            }
            if fin {
                return Ok(Some(String::from_utf8_lossy(&message).into_owned()));
            }
        }
    }

    /// Reads more bytes into `buf`; false at the end of the stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let read = timeout(DEADLINE, self.stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("nothing from the node in time"))??;
        self.buf.extend_from_slice(&chunk[..read]);
        Ok(read > 0)
    }

    /// The next JSON frame of `kind` (others are skipped); None when the node closed.
    pub async fn next_of(&mut self, kind: &str) -> std::io::Result<Option<Value>> {
        loop {
            let Some(text) = self.next_text().await? else {
                return Ok(None);
            };
            let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if frame["type"] == kind {
                return Ok(Some(frame));
            }
        }
    }

    /// The next answer to a request: a `reply`, or an `error` frame (how a failed
    /// request without a `ref` is answered). None when the node closed.
    pub async fn next_answer(&mut self) -> std::io::Result<Option<Value>> {
        loop {
            let Some(text) = self.next_text().await? else {
                return Ok(None);
            };
            let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if frame["type"] == "reply" || frame["type"] == "error" {
                return Ok(Some(frame));
            }
        }
    }

    /// Sends a request (without a `ref`) and returns its answer ([`RawWs::next_answer`];
    /// send one request at a time). A refusal is `{"ok": false}` or an `error` frame.
    pub async fn request(&mut self, frame: Value) -> std::io::Result<Value> {
        self.send(&frame.to_string()).await?;
        let closed = |ws: &Self| {
            std::io::Error::other(format!(
                "closed before the reply (code {:?})",
                ws.closed_with
            ))
        };
        self.next_answer().await?.ok_or_else(|| closed(self))
    }

    /// The two halves of the socket (bytes already read and not parsed are dropped).
    pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.stream.into_split()
    }

    /// Turns this client into an idle [`Member`]: everything the node sends is read
    /// and thrown away, and an application ping goes out every 20 s, well within the
    /// default `heartbeat.timeout_ms` (60 s).
    pub fn idle(self) -> Member {
        let (read, write) = self.into_split();
        Member::new(read, write, Duration::from_secs(20))
    }
}

/// Parses a server frame header: (header length, fin, opcode, payload length).
fn parse_header(buf: &[u8]) -> Option<(usize, bool, u8, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    let (header, len) = match b1 & 0x7f {
        126 => (4, u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (10, u64::from_be_bytes(bytes) as usize)
        }
        n => (2, n as usize),
    };
    Some((header, fin, opcode, len))
}

/// A connection that reads everything and says nothing but a periodic ping: a room
/// member the test does not look at. Its tasks end when it is dropped.
pub struct Member {
    reader: JoinHandle<()>,
    keepalive: JoinHandle<()>,
    ended: Arc<AtomicBool>,
}

impl Member {
    fn new(mut read: OwnedReadHalf, mut write: OwnedWriteHalf, every: Duration) -> Self {
        let ended = Arc::new(AtomicBool::new(false));
        let reader = {
            let ended = ended.clone();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut read, &mut tokio::io::sink()).await;
                ended.store(true, Ordering::Relaxed);
            })
        };
        let keepalive = tokio::spawn(async move {
            let ping = masked_text(br#"{"type":"ping"}"#);
            loop {
                tokio::time::sleep(every).await;
                if write.write_all(&ping).await.is_err() {
                    break;
                }
            }
        });
        Self {
            reader,
            keepalive,
            ended,
        }
    }

    /// True once the node closed the connection.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.reader.abort();
        self.keepalive.abort();
    }
}

/// `count` idle members, each its own anonymous user `{prefix}-{i}`, joined to the
/// rooms `rooms(i)` names (with `since` set to skip history when `since` is given),
/// [`PER_ADDRESS`] to a source address from 127.0.0.`first_address` on. An error
/// names the first member that could not connect or join within [`DEADLINE`].
pub async fn crowd(
    node: SocketAddr,
    prefix: &str,
    count: usize,
    first_address: u8,
    rooms: impl Fn(usize) -> Vec<String> + Clone + Send + 'static,
    since: Option<u64>,
) -> Result<Vec<Member>, String> {
    let mut tasks = tokio::task::JoinSet::new();
    for (a, start) in (0..count).step_by(PER_ADDRESS).enumerate() {
        let from = loopback(first_address + a as u8);
        let prefix = prefix.to_owned();
        let rooms = rooms.clone();
        tasks.spawn(async move {
            let mut members = Vec::new();
            for i in start..(start + PER_ADDRESS).min(count) {
                // A member the node closes while the room fills (a loaded node can
                // fall behind its own fan-out) is connected again, twice at most.
                let mut tries = 0;
                let member = loop {
                    tries += 1;
                    match join_member(node, from, &format!("{prefix}-{i}"), &rooms(i), since).await
                    {
                        Ok(member) => break member,
                        Err(e) if tries >= 3 => return Err(e),
                        Err(_) => {}
                    }
                };
                members.push(member);
            }
            Ok(members)
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(done) = tasks.join_next().await {
        all.extend(done.map_err(|e| e.to_string())??);
    }
    Ok(all)
}

/// One idle member: connected as `user` from `from` and joined to `rooms`.
async fn join_member(
    node: SocketAddr,
    from: IpAddr,
    user: &str,
    rooms: &[String],
    since: Option<u64>,
) -> Result<Member, String> {
    let until = Instant::now() + DEADLINE;
    let mut ws = RawWs::dial_until(node, from, &format!("user={user}"), until)
        .await
        .map_err(|e| format!("member {user} could not connect: {e}"))?;
    let welcome = ws.next_of("welcome").await;
    if !matches!(welcome, Ok(Some(_))) {
        return Err(format!("member {user}: no welcome ({welcome:?})"));
    }
    for room in rooms {
        let mut frame = json!({"type": "join", "room": room});
        if let Some(since) = since {
            frame["since"] = json!(since);
        }
        ws.send(&frame.to_string())
            .await
            .map_err(|e| format!("member {user} joins {room}: {e}"))?;
        // Read by its head, not parsed: a join reply in a big room lists every
        // member, and thousands of them parsed would measure the test, not the node.
        loop {
            match ws.next_text().await {
                Ok(Some(text)) if text.starts_with(r#"{"type":"reply""#) => {
                    let head = &text[..text.len().min(64)];
                    if head.contains(r#""ok":true"#) {
                        break;
                    }
                    return Err(format!("member {user} joins {room}: {head}"));
                }
                Ok(Some(text)) if text.starts_with(r#"{"type":"error""#) => {
                    return Err(format!("member {user} joins {room}: {text}"));
                }
                Ok(Some(_)) => {}
                other => {
                    return Err(format!(
                        "member {user} joins {room}: {other:?} (close code {:?})",
                        ws.closed_with
                    ))
                }
            }
        }
    }
    Ok(ws.idle())
}

/// The largest `content` the node accepts, as it reaches clients: 5,000 (the default
/// `limits.max_message_chars`) four-byte characters if allowed (20,000 bytes), else
/// 5,000 `"` (which JSON escapes to 10,000 bytes), else the longest accepted half.
/// Control characters would escape larger but are refused (issue #13). Returns the
/// content and the seq of the message published with it.
pub async fn largest_content(client: &mut Client, room: &str) -> (String, u64) {
    let candidates = [
        "😀".repeat(5_000),
        "\"".repeat(5_000),
        "\\".repeat(2_500),
        "\"".repeat(1_000),
    ];
    for content in candidates {
        let reply = client
            .request(json!({"type": "publish", "room": room, "content": content}))
            .await;
        if reply["ok"] == true {
            return (content, reply["data"]["seq"].as_u64().unwrap_or(0));
        }
    }
    panic!("the node refused every large content");
}
