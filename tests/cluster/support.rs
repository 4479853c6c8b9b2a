//! The multi-process harness: real `hubbub` processes, one generated config file each,
//! ports chosen free, every process's output captured to a file, and WebSocket
//! clients that speak protocol v1.
//!
//! A test builds a [`Cluster`] (nodes `a`, `b`, `c`, ... sharing one cookie, each
//! listing every node's cluster address as a seed), starts it, and drives it through
//! [`Client`]s connected to whichever node it likes. Faults are real signals:
//! [`Cluster::kill9`], [`Cluster::sigstop`], [`Cluster::sigcont`]. The `Cluster` kills
//! every process it started when it is dropped, panic or not; after a failure it prints
//! the tail of every node's log and keeps the test's directory for inspection.
//!
//! Cluster tests run one at a time, whichever runner starts them: in-process through
//! [`SERIAL`] (`cargo test` runs tests on parallel threads), across processes through
//! the `cluster` test group in `.config/nextest.toml`. Each test runs three or four
//! nodes with 100 ms heartbeats and a 600 ms failure timeout; several such clusters
//! side by side on a 2-core machine starve each other's heartbeats into false failure
//! detections, which would make the timing assertions measure the machine.
//!
//! Waits are polls with a deadline ([`DEADLINE`]), never fixed sleeps; the only sleeps
//! are the pauses between polls and between retries of a refused request.

use futures_util::{SinkExt, StreamExt};
use hubbub::cluster::View;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest any single wait lasts: generous, for a loaded 2-core CI machine.
pub const DEADLINE: Duration = Duration::from_secs(15);
/// `cluster.heartbeat_ms` of every test node.
pub const HEARTBEAT_MS: u64 = 100;
/// `cluster.failure_timeout_ms` of every test node.
pub const FAILURE_TIMEOUT_MS: u64 = 600;
/// The bound: a dead or frozen node is declared down, and its users leave
/// presence everywhere, within `failure_timeout_ms` plus one second.
pub const DETECTION_BOUND: Duration = Duration::from_millis(FAILURE_TIMEOUT_MS + 1_000);
/// The cookie every node of a test cluster shares.
pub const COOKIE: &str = "test-cookie";
/// How long one `/cluster` or `/readyz` request may take before the poll moves on
/// (a stopped process accepts the TCP connection but never answers).
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of each node's log printed after a failure.
const LOG_TAIL_LINES: usize = 80;

/// Held by a running cluster test: one at a time in this process (see module doc).
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One node of a test cluster: its generated config and, while running, its process.
struct Node {
    /// `node.name` in its config (the key it is planned under, unless a test wants
    /// two processes with one name).
    name: String,
    http: SocketAddr,
    bind: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// How many times the process was started (restarts append to the same log).
    starts: u32,
    /// Settings a test overrides for this node, as HUBBUB_SECTION__KEY variables.
    env: Vec<(String, String)>,
}

/// An extra node a test plans itself (see [`Cluster::plan_extra`]).
#[derive(Clone)]
pub struct NodeSpec {
    /// What the test calls it (its key in the harness, its config and log file names).
    pub key: String,
    /// Its `node.name`: usually `key`; another node's name to test a duplicate.
    pub name: String,
    pub cookie: String,
    /// `cluster.seeds`; empty means every planned node's cluster address.
    pub seeds: Vec<String>,
}

/// Real `hubbub` processes forming (or failing to form) one cluster.
pub struct Cluster {
    label: String,
    dir: PathBuf,
    nodes: BTreeMap<String, Node>,
    /// Last: released only after every process is gone.
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// The name of the `i`th node: `a`, `b`, `c`, ...
pub fn node_name(i: usize) -> String {
    char::from(b'a' + i as u8).to_string()
}

impl Cluster {
    /// Plans `n` nodes named `a`, `b`, ... with the shared cookie, each seeded with
    /// every node's cluster address (its own included); starts none of them.
    pub async fn plan(label: &str, n: usize) -> Self {
        let serial = SERIAL.lock().await;
        let names: Vec<String> = (0..n).map(node_name).collect();
        let dir = test_dir(label);
        let mut cluster = Self {
            label: label.to_owned(),
            dir,
            nodes: BTreeMap::new(),
            _serial: serial,
        };
        // Hold every listener until all ports are chosen, so that they are distinct.
        let listeners: Vec<(TcpListener, TcpListener)> =
            names.iter().map(|_| (free_port(), free_port())).collect();
        let addrs: Vec<(SocketAddr, SocketAddr)> = listeners
            .iter()
            .map(|(h, c)| {
                (
                    h.local_addr().expect("local addr"),
                    c.local_addr().expect("local addr"),
                )
            })
            .collect();
        drop(listeners);
        let seeds: Vec<String> = addrs.iter().map(|(_, c)| c.to_string()).collect();
        for (name, (http, bind)) in names.iter().zip(addrs) {
            let spec = NodeSpec {
                key: name.clone(),
                name: name.clone(),
                cookie: COOKIE.to_owned(),
                seeds: seeds.clone(),
            };
            cluster.add_planned(spec, http, bind);
        }
        cluster
    }

    /// Plans and starts `n` nodes in name order, then waits until they agree on one
    /// view with all of them.
    pub async fn start(label: &str, n: usize) -> Self {
        let mut cluster = Self::plan(label, n).await;
        let names = cluster.names();
        for name in &names {
            cluster.start_node(name).await;
        }
        let took = cluster.wait_converged(&names).await;
        eprintln!("[{label}] {n} nodes converged {took:?} after the last start");
        cluster
    }

    /// Plans one more node (not started).
    pub fn plan_extra(&mut self, mut spec: NodeSpec) {
        if spec.seeds.is_empty() {
            spec.seeds = self.nodes.values().map(|n| n.bind.to_string()).collect();
        }
        let (http, bind) = (free_port(), free_port());
        let addrs = (
            http.local_addr().expect("local addr"),
            bind.local_addr().expect("local addr"),
        );
        drop((http, bind));
        self.add_planned(spec, addrs.0, addrs.1);
    }

    fn add_planned(&mut self, spec: NodeSpec, http: SocketAddr, bind: SocketAddr) {
        let config = self.dir.join(format!("{}.toml", spec.key));
        let seeds = spec
            .seeds
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "[node]\n\
             name = \"{name}\"\n\
             http_addr = \"{http}\"\n\
             \n\
             [cluster]\n\
             enabled = true\n\
             bind = \"{bind}\"\n\
             cookie = \"{cookie}\"\n\
             seeds = [{seeds}]\n\
             heartbeat_ms = {HEARTBEAT_MS}\n\
             failure_timeout_ms = {FAILURE_TIMEOUT_MS}\n\
             \n\
             [rooms]\n\
             history = 10000\n\
             \n\
             [limits]\n\
             frames_per_second = 0\n\
             \n\
             [rate_limit]\n\
             messages_per_minute = 0\n\
             handshakes_per_ip_per_sec = 0\n\
             \n\
             [log]\n\
             level = \"info\"\n\
             format = \"json\"\n",
            name = spec.name,
            cookie = spec.cookie,
        );
        std::fs::write(&config, text).expect("write node config");
        let log = self.dir.join(format!("{}.log", spec.key));
        self.nodes.insert(
            spec.key,
            Node {
                name: spec.name,
                http,
                bind,
                config,
                log,
                child: None,
                starts: 0,
                env: Vec::new(),
            },
        );
    }

    /// Every planned node's name, in order.
    pub fn names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes
            .get(name)
            .unwrap_or_else(|| panic!("no node {name} in this cluster"))
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .get_mut(name)
            .unwrap_or_else(|| panic!("no node {name} in this cluster"))
    }

    /// A node's HTTP (and WebSocket) address.
    pub fn http_addr(&self, name: &str) -> SocketAddr {
        self.node(name).http
    }

    /// A node's cluster address (`cluster.bind`, which is also what it advertises).
    pub fn bind_addr(&self, name: &str) -> SocketAddr {
        self.node(name).bind
    }

    /// Starts a planned (or killed) node's process and waits until `/healthz` answers
    /// 200. Output goes to `<name>.log` in the test's directory, appended on restarts.
    pub async fn start_node(&mut self, name: &str) {
        let label = self.label.clone();
        let node = self.node_mut(name);
        assert!(node.child.is_none(), "node {name} is already running");
        node.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open node log");
        if node.starts > 1 {
            let _ = writeln!(
                log,
                "---- harness: start #{} of node {name} ----",
                node.starts
            );
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_hubbub"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        // The generated file is the whole configuration: a HUBBUB_* variable in the
        // environment the tests run in (a cookie, a config path) must not change it.
        // Only the log level may be raised from outside, to debug a failure.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("HUBBUB_") && key != "HUBBUB_LOG__LEVEL" {
                command.env_remove(key);
            }
        }
        for (key, value) in &node.env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn hubbub");
        node.child = Some(child);
        let addr = node.http;
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit_status(name) {
                panic!(
                    "[{label}] node {name} exited during start with {status}\n{}",
                    self.log_tail(name)
                );
            }
            // Up (serving HTTP); readiness needs a quorum, which a lone node lacks.
            if let Some((200, _)) = try_http(addr, "/healthz").await {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "[{label}] node {name} not serving within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id of a running node.
    pub fn pid(&self, name: &str) -> u32 {
        self.node(name)
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("node {name} is not running"))
            .id()
    }

    /// The exit status of a node whose process has ended; None while it runs (or
    /// was never started).
    pub fn exit_status(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let child = self.node_mut(name).child.as_mut()?;
        child.try_wait().expect("try_wait")
    }

    /// True when the node's process was started and has not ended.
    pub fn is_running(&mut self, name: &str) -> bool {
        self.node(name).child.is_some() && self.exit_status(name).is_none()
    }

    /// Overrides a setting of a node from its next start on (`HUBBUB_SECTION__KEY`).
    pub fn set_env(&mut self, name: &str, key: &str, value: &str) {
        self.node_mut(name)
            .env
            .push((key.to_owned(), value.to_owned()));
    }

    /// `kill -TERM`: the node drains and exits on its own.
    pub fn sigterm(&mut self, name: &str) {
        signal(self.pid(name), "-TERM");
    }

    /// Waits (bounded by `within`) for a node's process to exit; its exit status.
    pub async fn wait_exit(&mut self, name: &str, within: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit_status(name) {
                self.node_mut(name).child = None;
                return status;
            }
            assert!(
                started.elapsed() < within,
                "node {name} did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9`: the process ends at once, without a word to anyone.
    pub fn kill9(&mut self, name: &str) {
        let mut child = self
            .node_mut(name)
            .child
            .take()
            .unwrap_or_else(|| panic!("node {name} is not running"));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// `kill -STOP`: the process freezes; its sockets stay open.
    pub fn sigstop(&mut self, name: &str) {
        signal(self.pid(name), "-STOP");
    }

    /// `kill -CONT`: a stopped process carries on.
    pub fn sigcont(&mut self, name: &str) {
        signal(self.pid(name), "-CONT");
    }

    /// Kills a node (if it runs) and starts it again with the same config: same name
    /// and ports, a new incarnation.
    pub async fn restart(&mut self, name: &str) {
        if self.node(name).child.is_some() {
            self.kill9(name);
        }
        self.start_node(name).await;
    }

    /// A plain HTTP GET to a node: (status, body). Panics when it gets no answer.
    pub async fn http(&self, name: &str, path: &str) -> (u16, String) {
        try_http(self.http_addr(name), path)
            .await
            .unwrap_or_else(|| panic!("node {name} did not answer GET {path}"))
    }

    /// `GET /cluster` of a node, parsed. Panics when it does not answer 200 with JSON.
    pub async fn cluster_status(&self, name: &str) -> Value {
        self.try_cluster_status(name)
            .await
            .unwrap_or_else(|| panic!("node {name} did not answer GET /cluster with JSON"))
    }

    /// `GET /cluster` of a node; None when it does not answer in time, or not 200.
    pub async fn try_cluster_status(&self, name: &str) -> Option<Value> {
        match try_http(self.http_addr(name), "/cluster").await? {
            (200, body) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// Polls `/cluster` on every node of `names` until all report the same view, whose
    /// members are exactly `names`, with a quorum and a valid lease. Returns how long
    /// that took; panics after [`DEADLINE`] with what each node last said.
    pub async fn wait_converged(&self, names: &[String]) -> Duration {
        let started = Instant::now();
        let want: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        loop {
            let mut statuses = Vec::new();
            for name in names {
                statuses.push(self.try_cluster_status(name).await);
            }
            let converged = statuses.iter().all(|status| {
                status.as_ref().is_some_and(|s| {
                    view_names(s) == want
                        && s["has_quorum"] == true
                        && s["lease_valid"] == true
                        && s["view_id"]
                            == statuses[0]
                                .as_ref()
                                .map_or(Value::Null, |f| f["view_id"].clone())
                })
            });
            if converged {
                return started.elapsed();
            }
            if started.elapsed() > DEADLINE {
                let shown: Vec<String> = names
                    .iter()
                    .zip(&statuses)
                    .map(|(n, s)| {
                        format!(
                            "  {n}: {}",
                            s.as_ref().map_or("no answer".to_owned(), Value::to_string)
                        )
                    })
                    .collect();
                panic!(
                    "[{}] nodes {names:?} did not converge within {DEADLINE:?}; last /cluster:\n{}",
                    self.label,
                    shown.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `observer`'s `/cluster` until it reports `peer` as down (listed with
    /// state "down", or no longer in its view). Returns the time since `since`.
    pub async fn wait_peer_down(&self, observer: &str, peer: &str, since: Instant) -> Duration {
        loop {
            if let Some(status) = self.try_cluster_status(observer).await {
                let listed_down = status["peers"].as_array().is_some_and(|peers| {
                    peers
                        .iter()
                        .any(|p| p["name"] == peer && p["state"] == "down")
                });
                if listed_down && !view_names(&status).contains(peer) {
                    return since.elapsed();
                }
            }
            assert!(
                since.elapsed() < DEADLINE,
                "[{}] {observer} did not declare {peer} down within {DEADLINE:?}: {:?}",
                self.label,
                self.try_cluster_status(observer).await
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Connects a WebSocket client to node `name` as `user` and reads its welcome.
    pub async fn connect(&self, name: &str, user: &str) -> Client {
        let client =
            Client::connect(self.http_addr(name), &format!("user={user}&name={user}")).await;
        assert_eq!(
            client.welcome["node"],
            self.node(name).name,
            "welcome from the wrong node"
        );
        client
    }

    /// The last lines of a node's log.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(&self.node(name).log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "---- last {} lines of node {name}'s log ({}) ----\n{}",
            lines.len() - from,
            self.node(name).log.display(),
            lines[from..].join("\n")
        )
    }

    /// A node's whole log.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(&self.node(name).log).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        // SIGKILL ends stopped processes too.
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if failed {
            for name in self.nodes.keys() {
                eprintln!("{}", self.log_tail(name));
            }
            eprintln!(
                "[{}] node configs and logs kept in {}",
                self.label,
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
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

/// The node that owns `room` when exactly `nodes` are up: computed with the same
/// rendezvous hashing the nodes use (ownership depends on names only).
pub fn owner_of(room: &str, nodes: &[&str]) -> String {
    let members = nodes.iter().map(|n| (n.to_string(), 0)).collect();
    View::new(members, nodes.len())
        .owner_of(room)
        .expect("a view with members has an owner")
        .to_owned()
}

/// The first room named `<prefix>-<i>` that `pick` accepts (pick by [`owner_of`]).
pub fn find_room(prefix: &str, pick: impl Fn(&str) -> bool) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|room| pick(room))
        .expect("some room name fits")
}

/// A fresh directory for one test's configs and logs, under cargo's target tmpdir.
fn test_dir(label: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("cluster")
        .join(format!(
            "{label}-{}-{stamp}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// A listener on a free loopback port; drop it to free the port for a node. (Linux
/// hands out even ports to `bind(0)` and odd ones to `connect()` first, so a client
/// socket is unlikely to take the port before the node binds it.)
fn free_port() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port")
}

/// Sends a signal with the `kill` command (no libc in the tests' dependencies).
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A minimal HTTP/1.1 GET over a raw socket; None when there is no complete answer
/// within [`HTTP_TIMEOUT`].
pub async fn try_http(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
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
    timeout(HTTP_TIMEOUT, exchange).await.ok().flatten()
}

/// Error codes after which a request may be sent again: the room is moving between
/// nodes, this node has no quorum, or a part of the node did not answer in time.
pub const RETRYABLE: &[&str] = &["unavailable", "internal"];

/// A WebSocket client speaking protocol v1 (as in the single-node suite).
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
    /// Frames read while waiting for something else, oldest first.
    pending: VecDeque<Value>,
    next_ref: u64,
}

impl Client {
    /// Connects like [`Client::connect`]; None when the node refuses or is gone.
    pub async fn try_connect(addr: SocketAddr, query: &str) -> Option<Self> {
        let url = format!("ws://{addr}/ws?{query}");
        let (ws, _) = timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .ok()?
            .ok()?;
        let mut client = Self {
            ws,
            welcome: Value::Null,
            pending: VecDeque::new(),
            next_ref: 0,
        };
        let welcome = timeout(DEADLINE, client.read_frame()).await.ok()??;
        (welcome["type"] == "welcome").then_some(())?;
        client.welcome = welcome;
        Some(client)
    }

    /// Connects to `addr` with a raw query string and reads the welcome frame.
    pub async fn connect(addr: SocketAddr, query: &str) -> Self {
        let url = format!("ws://{addr}/ws?{query}");
        let (ws, _) = timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("websocket upgrade");
        let mut client = Self {
            ws,
            welcome: Value::Null,
            pending: VecDeque::new(),
            next_ref: 0,
        };
        client.welcome = client.expect_type("welcome").await;
        client
    }

    pub fn user_id(&self) -> String {
        self.welcome["user"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Sends a JSON frame as is.
    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send");
    }

    /// Sends a frame with a fresh `ref` and returns that ref (read the reply later
    /// with [`Client::reply_to`]).
    pub async fn send_request(&mut self, mut frame: Value) -> String {
        self.next_ref += 1;
        let reference = format!("r{}", self.next_ref);
        frame["ref"] = json!(reference);
        self.send(frame).await;
        reference
    }

    /// The reply echoing `reference`.
    pub async fn reply_to(&mut self, reference: &str) -> Value {
        self.expect(
            |f| f["type"] == "reply" && f["ref"] == json!(reference),
            &format!("reply to {reference}"),
        )
        .await
    }

    /// Sends a frame with a fresh `ref` and returns the reply that echoes it.
    pub async fn request(&mut self, frame: Value) -> Value {
        let reference = self.send_request(frame).await;
        self.reply_to(&reference).await
    }

    /// Sends an application ping and waits for its pong; false when the connection
    /// ended instead.
    pub async fn ping_or_end(&mut self) -> bool {
        let reference = self.send_request(json!({"type": "ping"})).await;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.read_frame())
                .await
                .unwrap_or_else(|_| panic!("no pong to {reference} and no close"));
            match frame {
                Some(f) if f["type"] == "pong" && f["ref"] == json!(reference) => return true,
                Some(f) => self.pending.push_back(f),
                None => return false,
            }
        }
    }

    /// Sends an application ping; panics unless its pong comes back.
    pub async fn ping(&mut self) {
        assert!(self.ping_or_end().await, "the connection ended");
    }

    /// A request that must succeed; returns its `data`.
    pub async fn ok(&mut self, frame: Value) -> Value {
        let reply = self.request(frame.clone()).await;
        assert_eq!(reply["ok"], true, "request {frame} failed: {reply}");
        reply["data"].clone()
    }

    /// A request that must fail; returns its error code.
    pub async fn refused(&mut self, frame: Value) -> String {
        let reply = self.request(frame.clone()).await;
        assert_eq!(reply["ok"], false, "request {frame} should fail: {reply}");
        reply["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// A request sent again while it fails with a [`RETRYABLE`] code, until it
    /// succeeds (its `data`) or [`DEADLINE`] passes. Any other failure panics.
    /// Returns the data and how many times the request was refused first.
    pub async fn ok_retry(&mut self, frame: Value) -> (Value, u32) {
        let started = Instant::now();
        let mut refusals = 0;
        loop {
            let reply = self.request(frame.clone()).await;
            if reply["ok"] == true {
                return (reply["data"].clone(), refusals);
            }
            let code = reply["error"]["code"].as_str().unwrap_or_default();
            assert!(
                RETRYABLE.contains(&code),
                "request {frame} failed with a code that is not retryable: {reply}"
            );
            assert!(
                started.elapsed() < DEADLINE,
                "request {frame} still refused after {DEADLINE:?} ({refusals} tries): {reply}"
            );
            refusals += 1;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Joins, retrying while the room is `unavailable` (moving, or no quorum).
    pub async fn join_retry(&mut self, room: &str) -> Value {
        self.ok_retry(json!({"type": "join", "room": room})).await.0
    }

    pub async fn publish(&mut self, room: &str, content: &str) -> Value {
        self.ok(json!({"type": "publish", "room": room, "content": content}))
            .await
    }

    /// Publishes, retrying while the room is `unavailable`. A retried publish may
    /// have been ordered already (its ack was lost), so the message can appear twice.
    pub async fn publish_retry(&mut self, room: &str, content: &str) -> Value {
        self.ok_retry(json!({"type": "publish", "room": room, "content": content}))
            .await
            .0
    }

    /// The room's members as this node knows them: user id → connections.
    pub async fn presence(&mut self, room: &str) -> BTreeMap<String, u64> {
        let data = self.ok(json!({"type": "presence", "room": room})).await;
        members(&data["members"])
    }

    /// Every message the room holds, oldest first, paging back with `history`.
    pub async fn full_history(&mut self, room: &str) -> Vec<Value> {
        let mut messages: Vec<Value> = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let mut frame = json!({"type": "history", "room": room, "limit": 1000});
            if let Some(before) = before {
                frame["before"] = json!(before);
            }
            let data = self.ok_retry(frame).await.0;
            let page = data["messages"].as_array().cloned().unwrap_or_default();
            let Some(first) = page.first() else { break };
            before = first["seq"].as_u64();
            let mut older = page;
            older.append(&mut messages);
            messages = older;
            if before.is_none_or(|b| b <= 1) {
                break;
            }
        }
        messages
    }

    /// Forgets every frame read and not yet consumed; returns how many there were.
    pub fn discard_pending(&mut self) -> usize {
        let discarded = self.pending.len();
        self.pending.clear();
        discarded
    }

    /// Frames read so far and not yet consumed that match `pred`.
    pub fn seen(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.pending.iter().filter(|f| pred(f)).cloned().collect()
    }

    /// Removes and returns the frames read so far that match `pred`, oldest first.
    pub fn take_seen(&mut self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut taken = Vec::new();
        self.pending.retain(|f| {
            if pred(f) {
                taken.push(f.clone());
                false
            } else {
                true
            }
        });
        taken
    }

    /// The next frame matching `pred` (earlier non-matching frames stay pending).
    pub async fn expect(&mut self, pred: impl Fn(&Value) -> bool, what: &str) -> Value {
        self.expect_within(DEADLINE, pred, what).await
    }

    /// [`Client::expect`] with its own deadline.
    pub async fn expect_within(
        &mut self,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
        what: &str,
    ) -> Value {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).expect("index is valid");
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.read_frame())
                .await
                .unwrap_or_else(|_| {
                    panic!("timed out waiting for {what}; pending: {:?}", self.pending)
                });
            match frame {
                Some(frame) if pred(&frame) => return frame,
                Some(frame) => self.pending.push_back(frame),
                None => panic!("connection closed while waiting for {what}"),
            }
        }
    }

    /// The next frame of `type`.
    pub async fn expect_type(&mut self, kind: &str) -> Value {
        self.expect(|f| f["type"] == kind, kind).await
    }

    /// The next frame, or None when the connection ended (the frame is consumed, not
    /// kept pending). Pending frames come first.
    pub async fn next_frame_or_end(&mut self) -> Option<Value> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(frame);
        }
        self.read_frame().await
    }

    /// Reads one JSON frame; None when the connection ended.
    async fn read_frame(&mut self) -> Option<Value> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).expect("server sends JSON"))
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Sends a request and waits for its reply; None when the connection ends first
    /// (a node draining or dying), so a test can reconnect elsewhere.
    pub async fn try_request(&mut self, mut frame: Value) -> Option<Value> {
        self.next_ref += 1;
        let reference = format!("r{}", self.next_ref);
        frame["ref"] = json!(reference);
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .ok()?;
        if let Some(i) = self
            .pending
            .iter()
            .position(|f| f["type"] == "reply" && f["ref"] == json!(reference))
        {
            return self.pending.remove(i);
        }
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.read_frame())
                .await
                .ok()??;
            if frame["type"] == "reply" && frame["ref"] == json!(reference) {
                return Some(frame);
            }
            self.pending.push_back(frame);
        }
    }

    /// Reads until the node closes; the close code (None: closed without a close
    /// frame). Text frames read on the way stay pending.
    pub async fn expect_close(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("the node should close the connection in time");
            match next {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(Message::Text(text))) => {
                    if let Ok(v) = serde_json::from_str(&text) {
                        self.pending.push_back(v);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Closes politely with a close frame.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}

/// A `members` array as user id → connections.
pub fn members(list: &Value) -> BTreeMap<String, u64> {
    list.as_array()
        .map(|members| {
            members
                .iter()
                .filter_map(|m| Some((m["id"].as_str()?.to_owned(), m["connections"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// True for a `presence_diff` of `room` with `user` among its `key` ("joins" or
/// "leaves").
pub fn is_diff(frame: &Value, room: &str, key: &str, user: &str) -> bool {
    frame["type"] == "presence_diff"
        && frame["room"] == room
        && frame[key]
            .as_array()
            .is_some_and(|list| list.iter().any(|m| m["id"] == user))
}

/// True for a `message` frame of `room`.
pub fn is_message(frame: &Value, room: &str) -> bool {
    frame["type"] == "message" && frame["room"] == room
}
