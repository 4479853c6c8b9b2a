//! The multi-process harness: real `hubbub` processes, one generated config file each,
//! ports chosen free, every process's output captured to a file, and WebSocket
//! clients that speak protocol v1 (the shared [`Client`] of tests/common/ws_client.rs).
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

pub use crate::ws_client::Client;
use crate::ws_client::Dial;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::time::timeout;

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
    /// Its admin listener (`[admin] addr`), when a test gave it one: `/cluster` and
    /// `/metrics` are served there then.
    admin: Option<SocketAddr>,
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
    /// The names of the nodes planned by [`Cluster::plan`]: the cluster's voters.
    base: Vec<String>,
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
            base: names.clone(),
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
        // Every node of the cluster is listed: the planned ones, and an extra node itself.
        let mut voters: Vec<String> = self.base.clone();
        if !voters.contains(&spec.name) {
            voters.push(spec.name.clone());
        }
        let voters = voters
            .iter()
            .map(|v| format!("\"{v}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let data = self.dir.join(format!("{}-data", spec.key));
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
             voters = [{voters}]\n\
             heartbeat_ms = {HEARTBEAT_MS}\n\
             failure_timeout_ms = {FAILURE_TIMEOUT_MS}\n\
             \n\
             [storage]\n\
             dir = \"{data}\"\n\
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
            data = data.display(),
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
                admin: None,
            },
        );
    }

    /// Replaces a planned node's `cluster.seeds` (before it starts).
    pub fn set_seeds(&mut self, name: &str, seeds: &[String]) {
        let config = &self.nodes[name].config;
        let text = std::fs::read_to_string(config).expect("read node config");
        let listed = seeds
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let text: Vec<String> = text
            .lines()
            .map(|line| {
                if line.starts_with("seeds = ") {
                    format!("seeds = [{listed}]")
                } else {
                    line.to_owned()
                }
            })
            .collect();
        std::fs::write(config, text.join("\n") + "\n").expect("write node config");
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

    /// Gives a planned node an admin listener on a free port (before it starts);
    /// returns its address. The harness reads `/cluster` and `/metrics` there from then.
    pub fn add_admin(&mut self, name: &str) -> SocketAddr {
        let addr = free_port().local_addr().expect("local addr");
        self.set_env(name, "HUBBUB_ADMIN__ADDR", &addr.to_string());
        self.node_mut(name).admin = Some(addr);
        addr
    }

    /// Where a node serves `/cluster` and `/metrics`: its admin listener, if it has one.
    fn operator_addr(&self, name: &str) -> SocketAddr {
        self.node(name).admin.unwrap_or(self.node(name).http)
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
        let addr = match path {
            "/cluster" | "/metrics" => self.operator_addr(name),
            _ => self.http_addr(name),
        };
        try_http(addr, path)
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
        match try_http(self.operator_addr(name), "/cluster").await? {
            (200, body) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// The leader of `shard` as `observer` reports it in `/cluster` (None: no answer, or
    /// no leader known).
    pub async fn leader_seen_by(&self, observer: &str, shard: usize) -> Option<String> {
        let status = self.try_cluster_status(observer).await?;
        status["shards"][shard]["leader"]
            .as_str()
            .map(str::to_owned)
    }

    /// Polls `/cluster` on every node of `names` until all report the same view, whose
    /// members are exactly `names`, with a quorum, and every shard of the room logs has
    /// a leader among them. Returns how long
    /// that took; panics after [`DEADLINE`] with what each node last said.
    pub async fn wait_converged(&self, names: &[String]) -> Duration {
        self.wait_agreed(names, true).await
    }

    /// As [`Cluster::wait_converged`], but only the membership view: whether the room
    /// logs' shards have elected leaders among `names` yet is not waited for.
    pub async fn wait_view(&self, names: &[String]) -> Duration {
        self.wait_agreed(names, false).await
    }

    async fn wait_agreed(&self, names: &[String], leaders: bool) -> Duration {
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
                        && (!leaders
                            || s["shards"].as_array().is_some_and(|shards| {
                                shards
                                    .iter()
                                    .all(|x| x["leader"].as_str().is_some_and(|l| want.contains(l)))
                            }))
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

    /// The node's log so far, up to its last complete line: a running node may be
    /// in the middle of writing the next one.
    pub fn log(&self, name: &str) -> String {
        let mut log = std::fs::read_to_string(&self.node(name).log).unwrap_or_default();
        log.truncate(log.rfind('\n').map_or(0, |end| end + 1));
        log
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

/// The placement of a test cluster of the nodes `all` (16 shards, 3 replicas: the
/// defaults the test configs keep).
fn placement(all: &[&str]) -> hubbub::cluster::shards::Placement {
    let all: Vec<String> = all.iter().map(|n| n.to_string()).collect();
    hubbub::cluster::shards::Placement::new(&all, 16, 3).expect("placement")
}

/// The voters of `room`'s shard in rank order, in a cluster of the nodes `all` with
/// `replicas` voters per shard.
pub fn voters_of(room: &str, all: &[&str], replicas: usize) -> Vec<String> {
    let all: Vec<String> = all.iter().map(|n| n.to_string()).collect();
    let placement = hubbub::cluster::shards::Placement::new(&all, 16, replicas).expect("placement");
    placement
        .voters(placement.shard_of(room))
        .into_iter()
        .filter_map(|id| placement.name_of(id).map(str::to_owned))
        .collect()
}

/// The shard of `room` in a cluster of the nodes `all`.
pub fn shard_of(room: &str, all: &[&str]) -> usize {
    placement(all).shard_of(room) as usize
}

/// The node expected to lead `room`'s shard in a cluster of the nodes `all` with all
/// of them up: the shard's first voter (cluster/shards.rs), which campaigns first.
pub fn owner_of(room: &str, all: &[&str]) -> String {
    next_owner(room, all, all)
}

/// The node expected to lead `room`'s shard once only `up` (of the cluster of `all`)
/// are up: the first of its voters in rank order that is up (voters campaign in rank
/// order). An expectation, not a rule: an election decides, so a test that must know
/// reads `/cluster`.
pub fn next_owner(room: &str, all: &[&str], up: &[&str]) -> String {
    let placement = placement(all);
    let shard = placement.shard_of(room);
    placement
        .voters(shard)
        .into_iter()
        .filter_map(|id| placement.name_of(id))
        .find(|name| up.contains(name))
        .unwrap_or(up[0])
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

/// Clients of a node at this HTTP address: plain WS, each wait bounded by
/// [`DEADLINE`], requests retried on a [`RETRYABLE`] code.
impl Dial for SocketAddr {
    fn ws_url(&self, query: &str) -> String {
        format!("ws://{self}/ws?{query}")
    }

    fn deadline(&self) -> Duration {
        DEADLINE
    }

    fn retryable(&self) -> &'static [&'static str] {
        RETRYABLE
    }
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
