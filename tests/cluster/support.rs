//! The cluster suite's view of the multi-process harness (tests/common/hubbub_node.rs,
//! which writes each node's config and runs its process): a [`Cluster`] of real
//! `hubbub` processes on free ports, and WebSocket clients that speak protocol v1 (the
//! shared [`Client`] of tests/common/ws_client.rs).
//!
//! A test plans a [`Cluster`] (nodes `a`, `b`, `c`, ... sharing one cookie, each
//! listing every node's cluster address as a seed and every planned node as a voter,
//! with the harness's test tuning), changes any node's [`NodeConfig`] it likes
//! ([`Cluster::config`]), starts it, and drives it through [`Client`]s connected to
//! whichever node it likes. Faults are real signals: [`Cluster::kill9`],
//! [`Cluster::sigstop`], [`Cluster::sigcont`], [`Cluster::sigterm`]. The `Cluster`
//! kills every process it started when it is dropped, panic or not; after a failure
//! (or with `KEEP_CLUSTER_TEST_LOGS` set) it prints the tail of every node's log and
//! keeps the test's directory for inspection.
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

use crate::hubbub_node::{end_test, free_addrs, test_dir, wait_agreed, NodeProcess};
pub use crate::hubbub_node::{
    peer_state, try_http, view_names, wait_for, NodeConfig, DEADLINE, DETECTION_BOUND,
    FAILURE_TIMEOUT_MS, HEARTBEAT_MS,
};
pub use crate::ws_client::Client;
use crate::ws_client::Dial;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// The cookie every node of a test cluster shares.
pub const COOKIE: &str = "test-cookie";
/// Lines of each node's log printed after a failure.
const LOG_TAIL_LINES: usize = 80;

/// Held by a running cluster test: one at a time in this process (see module doc).
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    dir: std::path::PathBuf,
    nodes: BTreeMap<String, NodeProcess>,
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
        let mut cluster = Self {
            label: label.to_owned(),
            base: names.clone(),
            dir: test_dir("cluster", label),
            nodes: BTreeMap::new(),
            _serial: serial,
        };
        let addrs = free_addrs(2 * n);
        let (https, binds) = addrs.split_at(n);
        let seeds: Vec<String> = binds.iter().map(SocketAddr::to_string).collect();
        for (i, name) in names.iter().enumerate() {
            let spec = NodeSpec {
                key: name.clone(),
                name: name.clone(),
                cookie: COOKIE.to_owned(),
                seeds: seeds.clone(),
            };
            cluster.add_planned(spec, https[i], binds[i]);
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
            spec.seeds = self
                .nodes
                .values()
                .map(|n| n.config.bind.expect("clustered").to_string())
                .collect();
        }
        let addrs = free_addrs(2);
        self.add_planned(spec, addrs[0], addrs[1]);
    }

    fn add_planned(&mut self, spec: NodeSpec, http: SocketAddr, bind: SocketAddr) {
        // Every node of the cluster is listed: the planned ones, and an extra node itself.
        let mut voters: Vec<String> = self.base.clone();
        if !voters.contains(&spec.name) {
            voters.push(spec.name.clone());
        }
        let data = self.dir.join(format!("{}-data", spec.key));
        let mut config = NodeConfig::new(&spec.name, http, &data);
        config
            .cluster(bind, &spec.cookie, &spec.seeds, &voters)
            .test_tuning();
        let node = NodeProcess::new(config, &self.dir, &spec.key);
        self.nodes.insert(spec.key, node);
    }

    /// A planned node's config, to change before its next start.
    pub fn config(&mut self, name: &str) -> &mut NodeConfig {
        &mut self.node_mut(name).config
    }

    /// The test's directory (configs, logs, room logs; files a test makes, such as
    /// certificates, belong here too).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every planned node's name, in order.
    pub fn names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    fn node(&self, name: &str) -> &NodeProcess {
        self.nodes
            .get(name)
            .unwrap_or_else(|| panic!("no node {name} in this cluster"))
    }

    fn node_mut(&mut self, name: &str) -> &mut NodeProcess {
        self.nodes
            .get_mut(name)
            .unwrap_or_else(|| panic!("no node {name} in this cluster"))
    }

    /// A node's HTTP (and WebSocket) address.
    pub fn http_addr(&self, name: &str) -> SocketAddr {
        self.node(name).http()
    }

    /// Gives a planned node an admin listener on a free port (before it starts);
    /// returns its address. The harness reads `/cluster` and `/metrics` there from then.
    pub fn add_admin(&mut self, name: &str) -> SocketAddr {
        let addr = free_addrs(1)[0];
        self.config(name).admin(addr);
        addr
    }

    /// A node's cluster address (`cluster.bind`, which is also what it advertises).
    pub fn bind_addr(&self, name: &str) -> SocketAddr {
        self.node(name).config.bind.expect("clustered")
    }

    /// Starts a planned (or killed) node's process and waits until `/healthz` answers
    /// 200. Output goes to `<name>.log` in the test's directory, appended on restarts.
    pub async fn start_node(&mut self, name: &str) {
        self.node_mut(name).start().await;
    }

    /// Starts a node's process without waiting for it to serve (a node expected to
    /// refuse to start).
    pub fn spawn_node(&mut self, name: &str) {
        self.node_mut(name).spawn();
    }

    /// The process id of a running node.
    pub fn pid(&self, name: &str) -> u32 {
        self.node(name).pid()
    }

    /// True when the node's process was started and has not ended.
    pub fn is_running(&mut self, name: &str) -> bool {
        self.node_mut(name).is_running()
    }

    /// `kill -TERM`: the node drains and exits on its own.
    pub fn sigterm(&mut self, name: &str) {
        self.node_mut(name).signal("-TERM");
    }

    /// Waits (bounded by `within`) for a node's process to exit; its exit status.
    pub async fn wait_exit(&mut self, name: &str, within: Duration) -> std::process::ExitStatus {
        self.node_mut(name).wait_exit(within).await
    }

    /// `kill -9`: the process ends at once, without a word to anyone.
    pub fn kill9(&mut self, name: &str) {
        assert!(self.node_mut(name).kill9(), "node {name} is not running");
    }

    /// `kill -STOP`: the process freezes; its sockets stay open.
    pub fn sigstop(&mut self, name: &str) {
        self.node_mut(name).signal("-STOP");
    }

    /// `kill -CONT`: a stopped process carries on.
    pub fn sigcont(&mut self, name: &str) {
        self.node_mut(name).signal("-CONT");
    }

    /// Kills a node (if it runs) and starts it again with the same config: same name
    /// and ports, a new incarnation.
    pub async fn restart(&mut self, name: &str) {
        self.node_mut(name).kill9();
        self.start_node(name).await;
    }

    /// A plain HTTP GET to a node: (status, body). Panics when it gets no answer.
    pub async fn http(&self, name: &str, path: &str) -> (u16, String) {
        self.node(name)
            .get(path)
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
        self.node(name).status().await
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
    /// a leader among them. Returns how long that took; panics after [`DEADLINE`] with
    /// what each node last said.
    pub async fn wait_converged(&self, names: &[String]) -> Duration {
        let started = Instant::now();
        self.wait_agreed(names, true, DEADLINE, "the nodes to converge")
            .await;
        started.elapsed()
    }

    /// [`Cluster::wait_converged`] within `deadline` (`what` names the wait in a
    /// failure); the `/cluster` answers of `names`, in that order.
    pub async fn converged_within(
        &self,
        names: &[&str],
        deadline: Duration,
        what: &str,
    ) -> Vec<Value> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        self.wait_agreed(&names, true, deadline, what).await
    }

    /// As [`Cluster::wait_converged`], but only the membership view: whether the room
    /// logs' shards have elected leaders among `names` yet is not waited for.
    pub async fn wait_view(&self, names: &[String]) -> Duration {
        let started = Instant::now();
        self.wait_agreed(names, false, DEADLINE, "the nodes to agree on one view")
            .await;
        started.elapsed()
    }

    async fn wait_agreed(
        &self,
        names: &[String],
        leaders: bool,
        deadline: Duration,
        what: &str,
    ) -> Vec<Value> {
        let nodes: Vec<&NodeProcess> = names.iter().map(|n| self.node(n)).collect();
        let what = format!("[{}] {what} ({names:?})", self.label);
        wait_agreed(&nodes, leaders, deadline, &what).await
    }

    /// Polls `observer`'s `/cluster` until it reports `peer` as down (listed with
    /// state "down", and no longer in its view). Returns the time since `since`.
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
            self.node(name).config.name,
            "welcome from the wrong node"
        );
        client
    }

    /// The last lines of a node's log.
    pub fn log_tail(&self, name: &str) -> String {
        self.node(name).log_tail(LOG_TAIL_LINES)
    }

    /// The node's log so far, up to its last complete line: a running node may be
    /// in the middle of writing the next one.
    pub fn log(&self, name: &str) -> String {
        self.node(name).log()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let keep = std::env::var_os("KEEP_CLUSTER_TEST_LOGS").is_some();
        end_test(
            &self.label,
            &self.dir,
            self.nodes.values_mut(),
            keep,
            LOG_TAIL_LINES,
        );
    }
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
