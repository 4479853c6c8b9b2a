//! The multi-process harness every suite that runs real `hubbub` processes shares
//! (tests/cluster, tests/abuse and tests/fault include this file with `#[path]`):
//!
//! - [`NodeConfig`]: one node's config file, every setting a test gives it (name,
//!   ports, seeds, voters, storage, cookie, TLS, log level, any override), written
//!   afresh at each start;
//! - [`NodeProcess`]: the process started from it, its output appended to a log file
//!   and a clean environment; started, signalled (`kill -9`, `SIGSTOP`, `SIGCONT`,
//!   `SIGTERM`), restarted, asked over plain HTTP, and killed when dropped;
//! - [`wait_for`]: every wait is a poll with a deadline, never a fixed sleep;
//! - [`agreed`]: what "the nodes formed one cluster" means in `/cluster` answers.
//!
//! A suite wraps these in its own cluster type (names, addresses, namespaces); what a
//! node is and how it runs is said only here.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt::Display;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The longest any single wait lasts: generous, for a loaded 2-core CI machine.
pub const DEADLINE: Duration = Duration::from_secs(15);
/// `cluster.heartbeat_ms` of every node with the [`NodeConfig::test_tuning`].
pub const HEARTBEAT_MS: u64 = 100;
/// `cluster.failure_timeout_ms` of every node with the [`NodeConfig::test_tuning`].
pub const FAILURE_TIMEOUT_MS: u64 = 600;
/// The bound: a dead, frozen or cut-off node is declared down, and its users
/// leave presence everywhere, within `failure_timeout_ms` plus one second.
pub const DETECTION_BOUND: Duration = Duration::from_millis(FAILURE_TIMEOUT_MS + 1_000);
/// `rooms.history` with the [`NodeConfig::test_tuning`]: no test publishes this many
/// to one room.
pub const HISTORY: usize = 10_000;
/// How long one HTTP request may take before a poll moves on (a stopped process
/// accepts the TCP connection but never answers).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause between two polls of [`wait_for`].
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// One node's config file: `[node]`, `[log]` and `[storage]` always, the rest as the
/// test sets it. Settings are kept per table, so that an override of a setting the
/// harness wrote replaces it (TOML allows a table once).
#[derive(Clone)]
pub struct NodeConfig {
    /// `node.name`.
    pub name: String,
    /// `node.http_addr`: the HTTP and WebSocket address.
    pub http: SocketAddr,
    /// `cluster.bind`, when the cluster is enabled: also what the node advertises.
    pub bind: Option<SocketAddr>,
    /// `admin.addr`, when the test gave the node an admin listener: `/cluster` and
    /// `/metrics` are served there, not on `http`.
    pub admin: Option<SocketAddr>,
    /// (table, [(key, TOML value)]), in the order first set.
    tables: Vec<(String, Vec<(String, String)>)>,
    /// The test chose `log.level`: a `HUBBUB_LOG__LEVEL` around the tests does not
    /// change it.
    log_level_chosen: bool,
}

impl NodeConfig {
    /// A node on its own: its name, HTTP address, JSON logs at `info`, and its room
    /// logs under `<storage>/<name>/` (a restart with the same directory finds them).
    pub fn new(name: &str, http: SocketAddr, storage: &Path) -> Self {
        let mut config = Self {
            name: name.to_owned(),
            http,
            bind: None,
            admin: None,
            tables: Vec::new(),
            log_level_chosen: false,
        };
        config
            .set("node", "name", toml_str(name))
            .set("node", "http_addr", toml_str(http))
            .set("log", "level", toml_str("info"))
            .set("log", "format", toml_str("json"))
            .set("storage", "dir", toml_str(storage.display()));
        config
    }

    /// Enables the cluster on `bind` with `cookie`, `seeds` (cluster addresses) and
    /// `voters` (the names of every node of the cluster, this one included).
    pub fn cluster(
        &mut self,
        bind: SocketAddr,
        cookie: &str,
        seeds: &[impl Display],
        voters: &[impl Display],
    ) -> &mut Self {
        self.bind = Some(bind);
        self.set("cluster", "enabled", true)
            .set("cluster", "bind", toml_str(bind))
            .set("cluster", "cookie", toml_str(cookie))
            .seeds(seeds)
            .voters(voters)
    }

    /// `cluster.seeds`.
    pub fn seeds(&mut self, seeds: &[impl Display]) -> &mut Self {
        self.set("cluster", "seeds", toml_list(seeds))
    }

    /// `cluster.voters`.
    pub fn voters(&mut self, voters: &[impl Display]) -> &mut Self {
        self.set("cluster", "voters", toml_list(voters))
    }

    /// The multi-process tests' timing and limits: [`HEARTBEAT_MS`] heartbeats, a
    /// [`FAILURE_TIMEOUT_MS`] failure timeout, a [`HISTORY`] no test evicts from, and
    /// the per-connection and per-address rate limits off (tests publish fast, and
    /// every client comes from 127.0.0.1).
    pub fn test_tuning(&mut self) -> &mut Self {
        self.set("cluster", "heartbeat_ms", HEARTBEAT_MS)
            .set("cluster", "failure_timeout_ms", FAILURE_TIMEOUT_MS)
            .set("rooms", "history", HISTORY)
            .set("limits", "frames_per_second", 0)
            .set("rate_limit", "messages_per_minute", 0)
            .set("rate_limit", "handshakes_per_ip_per_sec", 0)
    }

    /// An admin listener on `addr` (`admin.addr`).
    pub fn admin(&mut self, addr: SocketAddr) -> &mut Self {
        self.admin = Some(addr);
        self.set("admin", "addr", toml_str(addr))
    }

    /// `[cluster.tls]`: this node's certificate and key, and the CA it trusts.
    pub fn tls(&mut self, cert: &Path, key: &Path, ca: &Path) -> &mut Self {
        self.set("cluster.tls", "cert", toml_str(cert.display()))
            .set("cluster.tls", "key", toml_str(key.display()))
            .set("cluster.tls", "ca", toml_str(ca.display()))
    }

    /// `log.level` (an `EnvFilter` directive, e.g. `trace` or `warn,ractor_cluster=error`).
    pub fn log_level(&mut self, level: &str) -> &mut Self {
        self.log_level_chosen = true;
        self.set("log", "level", toml_str(level))
    }

    /// Sets `table.key` to `value`, written as it is: a number, a boolean, or TOML
    /// text (quote strings with [`toml_str`]). Replaces what was set before.
    pub fn set(&mut self, table: &str, key: &str, value: impl Display) -> &mut Self {
        let value = value.to_string();
        let entries = match self.tables.iter().position(|(t, _)| t == table) {
            Some(i) => &mut self.tables[i].1,
            None => {
                self.tables.push((table.to_owned(), Vec::new()));
                &mut self.tables.last_mut().expect("just pushed").1
            }
        };
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => entries.push((key.to_owned(), value)),
        }
        self
    }

    /// The config file's text.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for (table, entries) in &self.tables {
            text.push_str(&format!("[{table}]\n"));
            for (key, value) in entries {
                text.push_str(&format!("{key} = {value}\n"));
            }
            text.push('\n');
        }
        text
    }
}

/// A TOML basic string of `value` (Rust's escapes are TOML's for what tests write:
/// names, addresses, paths, secrets).
pub fn toml_str(value: impl Display) -> String {
    format!("{:?}", value.to_string())
}

/// A TOML array of strings.
pub fn toml_list(values: &[impl Display]) -> String {
    let items: Vec<String> = values.iter().map(toml_str).collect();
    format!("[{}]", items.join(", "))
}

/// One `hubbub serve` process, started from its [`NodeConfig`]. Its config file and
/// log are `<key>.toml` and `<key>.log` in the test's directory; each start rewrites
/// the file from `config` and appends to the log. Dropping it kills the process.
pub struct NodeProcess {
    /// What the next start writes and runs.
    pub config: NodeConfig,
    config_file: PathBuf,
    log: PathBuf,
    /// A command the process is run through (e.g. `ip netns exec NS`), which execs
    /// hubbub, so that the child's pid is hubbub's.
    prefix: Vec<String>,
    child: Option<Child>,
    /// How many times the process was started.
    starts: u32,
    /// Stopped with `SIGSTOP` and not continued since.
    stopped: bool,
}

impl NodeProcess {
    /// A node not started yet.
    pub fn new(config: NodeConfig, dir: &Path, key: &str) -> Self {
        Self {
            config,
            config_file: dir.join(format!("{key}.toml")),
            log: dir.join(format!("{key}.log")),
            prefix: Vec::new(),
            child: None,
            starts: 0,
            stopped: false,
        }
    }

    /// Runs the process through `prefix` (a command that execs what follows it).
    pub fn run_through(mut self, prefix: &[&str]) -> Self {
        self.prefix = prefix.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    /// The node's HTTP (and WebSocket) address.
    pub fn http(&self) -> SocketAddr {
        self.config.http
    }

    /// Writes the config and starts the process, without waiting for it to serve.
    /// After the first start a line in the log says which start this is. Only the
    /// config file configures it: every `HUBBUB_*` variable is removed but
    /// `HUBBUB_LOG__LEVEL`, kept to raise the level when debugging a failure unless
    /// the test chose the level itself.
    pub fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "node {} is already running",
            self.config.name
        );
        self.starts += 1;
        std::fs::write(&self.config_file, self.config.text()).expect("write node config");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open node log");
        if self.starts > 1 {
            let _ = writeln!(
                log,
                "---- harness: start #{} of node {} ----",
                self.starts, self.config.name
            );
        }
        let bin = env!("CARGO_BIN_EXE_hubbub");
        let mut command = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            let raises_level = key == "HUBBUB_LOG__LEVEL" && !self.config.log_level_chosen;
            if key.starts_with("HUBBUB_") && !raises_level {
                command.env_remove(key);
            }
        }
        self.child = Some(command.spawn().expect("spawn hubbub"));
        self.stopped = false;
    }

    /// [`NodeProcess::spawn`], then waits until `/healthz` answers 200.
    pub async fn start(&mut self) {
        self.spawn();
        self.wait_answering("/healthz").await;
    }

    /// Polls `GET path` until it answers 200; panics, with the log's tail, if the
    /// process exits first or [`DEADLINE`] passes.
    pub async fn wait_answering(&mut self, path: &str) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                panic!(
                    "node {} exited during start with {status}\n{}",
                    self.config.name,
                    self.log_tail(60)
                );
            }
            if let Some((200, _)) = self.get(path).await {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "node {} did not answer {path} with 200 within {DEADLINE:?}\n{}",
                self.config.name,
                self.log_tail(60)
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// The process id; panics when the node does not run.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .unwrap_or_else(|| panic!("node {} is not running", self.config.name))
            .id()
    }

    /// The process id while it was started and not killed.
    pub fn try_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How the process ended, once it has (it stays the node's child until killed).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().expect("try_wait")
    }

    /// True when the process was started and has not ended.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exit_status().is_none()
    }

    /// True while the process is stopped by `SIGSTOP`.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// How many times the process was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// `kill -9` (SIGKILL ends a stopped process too) and reaps it; false when it
    /// was not running.
    pub fn kill9(&mut self) -> bool {
        self.stopped = false;
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = child.kill();
        let _ = child.wait();
        true
    }

    /// Sends `sig` (`-STOP`, `-CONT`, `-TERM`) with the `kill` command (no libc in the
    /// tests' dependencies); panics unless it was delivered.
    pub fn signal(&mut self, sig: &str) {
        let pid = self.pid();
        let status = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid} failed: {status}");
        match sig {
            "-STOP" => self.stopped = true,
            "-CONT" => self.stopped = false,
            _ => {}
        }
    }

    /// Waits (bounded by `within`) for the process to exit on its own; its exit
    /// status. The node is not running afterwards.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let name = self.config.name.clone();
        let status = wait_for(within, &format!("node {name} to exit"), async || {
            self.exit_status().ok_or_else(|| "still running".to_owned())
        })
        .await;
        self.child = None;
        status
    }

    /// A plain HTTP GET to the node (`/cluster`, `/metrics` and the health checks to
    /// its admin listener when it has one, which is plain HTTP also when the node
    /// serves HTTPS); None without a whole answer in time.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let addr = match (path, self.config.admin) {
            ("/cluster" | "/metrics" | "/healthz" | "/readyz", Some(admin)) => admin,
            _ => self.http(),
        };
        try_http(addr, path).await
    }

    /// `GET /cluster`, parsed; None when it does not answer 200 with JSON in time.
    pub async fn status(&self) -> Option<Value> {
        match self.get("/cluster").await? {
            (200, body) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// Where the log is.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far, up to its last complete line: a running node may be in the
    /// middle of writing the next one.
    pub fn log(&self) -> String {
        let mut log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.truncate(log.rfind('\n').map_or(0, |end| end + 1));
        log
    }

    /// The last `lines` lines of the log, under a line naming the node and the file.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "---- last {} lines of node {}'s log ({}) ----\n{}",
            all.len() - from,
            self.config.name,
            self.log.display(),
            all[from..].join("\n")
        )
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A fresh directory for one test's configs, logs and data:
/// `<cargo's target tmpdir>/<suite>/<label>-<pid>-<n>`.
pub fn test_dir(suite: &str, label: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(suite)
        .join(format!(
            "{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// Ends a test's processes: kills every one (SIGKILL ends stopped ones too). Then,
/// when the test failed or `keep` is set, prints the last `tail` lines of each log and
/// keeps the directory; otherwise removes it.
pub fn end_test<'a>(
    label: &str,
    dir: &Path,
    nodes: impl IntoIterator<Item = &'a mut NodeProcess>,
    keep: bool,
    tail: usize,
) {
    let nodes: Vec<&mut NodeProcess> = nodes.into_iter().collect();
    let keep = keep || std::thread::panicking();
    for node in nodes {
        node.kill9();
        if keep {
            eprintln!("{}", node.log_tail(tail));
        }
    }
    if keep {
        eprintln!("[{label}] node configs and logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Where [`free_addrs`] hands out ports: below Linux's ephemeral range (32768 and up
/// by default), so no `bind(0)` or outgoing connection of any test can take a port
/// between its choice and the node's bind, as happened when these came from `bind(0)`.
const PICKED_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// `n` distinct free addresses on 127.0.0.1 for nodes to bind (cluster and HTTP
/// listeners whose ports other nodes must know in advance). Test processes run side by
/// side, so the ports are handed out in turn across processes from [`PICKED_PORTS`],
/// under a lock file with the last one given; each is checked free by binding it, and
/// a port in use is skipped. The range turns over after 12,000 ports, long after a
/// test has ended with the ones it was given.
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    use std::io::{Read, Seek, Write};
    let path = std::env::temp_dir().join("hubbub-test-ports");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .expect("open the test port counter");
    file.lock().expect("lock the test port counter");
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let span = PICKED_PORTS.end - PICKED_PORTS.start;
    let mut next: u16 = text.trim().parse().unwrap_or(0) % span;
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..span {
        if listeners.len() == n {
            break;
        }
        let port = PICKED_PORTS.start + next;
        next = (next + 1) % span;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(listener);
        }
    }
    assert_eq!(listeners.len(), n, "no {n} free ports in {PICKED_PORTS:?}");
    file.set_len(0).expect("truncate the test port counter");
    file.rewind().expect("rewind the test port counter");
    write!(file, "{next}").expect("write the test port counter");
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr"))
        .collect()
}

/// Polls `check` every [`POLL_EVERY`] until it gives `Ok`, or panics after
/// `deadline` with `what` and the last thing it said.
pub async fn wait_for<T>(
    deadline: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if started.elapsed() > deadline => {
                panic!("timed out after {deadline:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}

/// The member names of a `/cluster` answer's view.
pub fn view_names(status: &Value) -> BTreeSet<&str> {
    status["view"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The state of `peer` in a `/cluster` answer.
pub fn peer_state<'a>(status: &'a Value, peer: &str) -> Option<&'a str> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == peer)?["state"]
        .as_str()
}

/// True when the `/cluster` answers of the nodes `want` (one each, None where a node
/// did not answer) all report one view (one `view_id`) whose members are exactly
/// `want`, with a quorum, every peer among `want` measured (a heartbeat has made the
/// round trip, so `rtt_ms` is a number), and, with `leaders`, every shard of the room
/// logs led by one of them.
pub fn agreed(statuses: &[Option<Value>], want: &BTreeSet<&str>, leaders: bool) -> bool {
    let Some(Some(first)) = statuses.first() else {
        return false;
    };
    statuses.iter().all(|status| {
        status.as_ref().is_some_and(|s| {
            view_names(s) == *want
                && s["has_quorum"] == true
                && s["view_id"] == first["view_id"]
                && s["peers"].as_array().is_some_and(|peers| {
                    peers
                        .iter()
                        .filter(|p| p["name"].as_str().is_some_and(|n| want.contains(n)))
                        .all(|p| p["rtt_ms"].is_number())
                })
                && (!leaders
                    || s["shards"].as_array().is_some_and(|shards| {
                        shards
                            .iter()
                            .all(|x| x["leader"].as_str().is_some_and(|l| want.contains(l)))
                    }))
        })
    })
}

/// Polls `/cluster` of `nodes` until their answers are [`agreed`] (on a view of
/// exactly their names); panics after `deadline` with `what` and what each node said
/// last. Returns the answers, in the order of `nodes`.
pub async fn wait_agreed(
    nodes: &[&NodeProcess],
    leaders: bool,
    deadline: Duration,
    what: &str,
) -> Vec<Value> {
    let want: BTreeSet<&str> = nodes.iter().map(|n| n.config.name.as_str()).collect();
    wait_for(deadline, what, async || {
        let mut statuses = Vec::new();
        for node in nodes {
            statuses.push(node.status().await);
        }
        if agreed(&statuses, &want, leaders) {
            return Ok(statuses.into_iter().flatten().collect());
        }
        let shown: Vec<String> = nodes
            .iter()
            .zip(&statuses)
            .map(|(n, s)| {
                let said = s.as_ref().map_or("no answer".to_owned(), Value::to_string);
                format!("  {}: {said}", n.config.name)
            })
            .collect();
        Err(format!("last /cluster:\n{}", shown.join("\n")))
    })
    .await
}

/// A minimal HTTP/1.1 GET over a raw socket; None when there is no complete answer
/// within [`HTTP_TIMEOUT`].
pub async fn try_http(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_get(addr, path, HTTP_TIMEOUT).await
}

/// [`try_http`] with its own time limit.
pub async fn http_get(addr: SocketAddr, path: &str, within: Duration) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    };
    timeout(within, exchange).await.ok().flatten()
}
