//! Three (or more) real `hubbub` processes, each in its own network namespace (see
//! `netns`), and recording clients in the root namespace.
//!
//! [`FaultCluster`] starts the nodes (`ip netns exec NS hubbub serve`, HTTP on
//! `<node address>:4000`, cluster on `:4001`, seeds = the other nodes), injects the
//! faults (the network ones through [`Net`], `kill -9`, `SIGSTOP`/`SIGCONT`, restart),
//! and kills every process it started when dropped, before the namespaces go. After a
//! failure it prints the tail of every node's log and keeps the test's directory.
//!
//! [`Member`] is a client as a task: it reads every frame the node sends and records,
//! in arrival order, what the checker needs (join replies, live messages, acks, leaves,
//! the connection's end) into the run's shared log; the scenario sends it commands.

use crate::checker::{Entry, Event, Seen};
use crate::hubbub_node::{end_test, test_dir, wait_agreed, NodeConfig, NodeProcess};
pub use crate::hubbub_node::{DEADLINE, DETECTION_BOUND};
use crate::netns::{node_addr, Net};
use crate::ws_client::{members, Client, Dial};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const HTTP_PORT: u16 = 4000;
const CLUSTER_PORT: u16 = 4001;
/// Long enough for the cookie rule off loopback (the nodes listen on 198.18.x.y).
const COOKIE: &str = "fault-suite-cookie-0123456789abcdef";
/// Lines of each node's log printed after a failure.
const LOG_TAIL_LINES: usize = 60;

/// Held by a running fault test: one at a time in this process (nextest runs one per
/// process anyway, in the `fault` group).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A node's address as a WebSocket client dials it.
#[derive(Clone, Copy)]
pub struct NodeAddr(pub SocketAddr);

impl Dial for NodeAddr {
    fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.0)
    }

    fn retryable(&self) -> &'static [&'static str] {
        &["unavailable", "internal"]
    }

    fn deadline(&self) -> Duration {
        DEADLINE
    }
}

pub fn node_name(i: usize) -> String {
    char::from(b'a' + i as u8).to_string()
}

pub struct FaultCluster {
    pub label: String,
    dir: PathBuf,
    procs: Vec<NodeProcess>,
    /// Dropped after the processes (field order).
    pub net: Net,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl FaultCluster {
    /// Makes the namespaces and starts `n` nodes; waits until they form one view.
    pub async fn start(label: &str, n: usize) -> Self {
        let serial = SERIAL.lock().await;
        let net = Net::create(n);
        let dir = test_dir("fault", label);
        let voters: Vec<String> = (0..n).map(node_name).collect();
        let storage = dir.join("data");
        let mut procs = Vec::new();
        for (i, name) in voters.iter().enumerate() {
            let http = SocketAddr::from((node_addr(i), HTTP_PORT));
            let bind = SocketAddr::from((node_addr(i), CLUSTER_PORT));
            let seeds: Vec<SocketAddr> = (0..n)
                .filter(|j| *j != i)
                .map(|j| SocketAddr::from((node_addr(j), CLUSTER_PORT)))
                .collect();
            let mut config = NodeConfig::new(name, http, &storage);
            config.cluster(bind, COOKIE, &seeds, &voters).test_tuning();
            let ns = net.namespace(i);
            procs.push(
                NodeProcess::new(config, &dir, name).run_through(&["ip", "netns", "exec", ns]),
            );
        }
        let mut cluster = Self {
            label: label.to_owned(),
            dir,
            procs,
            net,
            _serial: serial,
        };
        for i in 0..n {
            cluster.start_node(i).await;
        }
        let all: Vec<usize> = (0..n).collect();
        let took = cluster.wait_converged(&all).await;
        eprintln!("[{label}] {n} nodes in namespaces converged in {took:?}");
        cluster
    }

    pub fn node_count(&self) -> usize {
        self.procs.len()
    }

    pub fn name(&self, i: usize) -> String {
        self.procs[i].config.name.clone()
    }

    pub fn http(&self, i: usize) -> NodeAddr {
        NodeAddr(self.procs[i].http())
    }

    /// Starts node `i`'s process in its namespace; waits until `/healthz` answers.
    pub async fn start_node(&mut self, i: usize) {
        self.procs[i].start().await;
    }

    pub fn kill9(&mut self, i: usize) {
        self.procs[i].kill9();
    }

    pub fn sigstop(&mut self, i: usize) {
        self.procs[i].signal("-STOP");
    }

    pub fn sigcont(&mut self, i: usize) {
        self.procs[i].signal("-CONT");
    }

    /// kill -9 (if running), then start again with the same config (same name and
    /// addresses, a new incarnation). No scenario of today's suite restarts one node
    /// alone; the Raft work's follower scenarios will.
    #[allow(dead_code)]
    pub async fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.start_node(i).await;
    }

    /// Started and not killed since.
    pub fn is_running(&self, i: usize) -> bool {
        self.procs[i].try_pid().is_some()
    }

    pub fn is_stopped(&self, i: usize) -> bool {
        self.procs[i].is_stopped()
    }

    /// Node `i`'s `/cluster` status (None while it does not answer).
    pub async fn status(&self, i: usize) -> Option<Value> {
        self.procs[i].status().await
    }

    /// Polls `/cluster` of `nodes` until each sees exactly them (one view), with a
    /// quorum, and every shard of the room logs has a leader among them.
    pub async fn wait_converged(&self, nodes: &[usize]) -> Duration {
        let started = Instant::now();
        let procs: Vec<&NodeProcess> = nodes.iter().map(|i| &self.procs[*i]).collect();
        let what = format!("[{}] nodes {nodes:?} to converge", self.label);
        wait_agreed(&procs, true, DEADLINE * 2, &what).await;
        started.elapsed()
    }
}

impl Drop for FaultCluster {
    fn drop(&mut self) {
        let keep = std::env::var_os("KEEP_FAULT_TEST_LOGS").is_some();
        end_test(
            &self.label,
            &self.dir,
            &mut self.procs,
            keep,
            LOG_TAIL_LINES,
        );
    }
}

/// The log every member of a run writes to.
pub type Log = Arc<Mutex<Vec<Seen>>>;

enum Cmd {
    Join {
        room: String,
        since: Option<u64>,
        done: oneshot::Sender<Value>,
    },
    Leave {
        room: String,
        done: oneshot::Sender<Value>,
    },
    Publish {
        room: String,
        content: String,
    },
    Presence {
        room: String,
        done: oneshot::Sender<Result<BTreeMap<String, u64>, String>>,
    },
    /// Answers once every request sent so far is answered (or the connection ended).
    Drain {
        done: oneshot::Sender<()>,
    },
    /// Records `End` for every room joined, then keeps running.
    End {
        done: oneshot::Sender<()>,
    },
    /// Closes the connection; answers once `Disconnected` is recorded.
    Close {
        done: oneshot::Sender<()>,
    },
}

enum Waiting {
    Join(String, Option<u64>, oneshot::Sender<Value>),
    Leave(String, oneshot::Sender<Value>),
    Publish(String),
    Presence(oneshot::Sender<Result<BTreeMap<String, u64>, String>>),
}

/// Counts a member's publishing outcomes.
#[derive(Default, Debug, Clone, Copy)]
pub struct Outcomes {
    pub acked: u64,
    pub refused: u64,
}

/// Publishes through a [`Member`] from another task.
#[derive(Clone)]
pub struct Publisher(mpsc::UnboundedSender<Cmd>);

impl Publisher {
    pub fn publish(&self, room: &str, content: String) {
        let _ = self.0.send(Cmd::Publish {
            room: room.to_owned(),
            content,
        });
    }
}

/// A recording client connected to one node.
pub struct Member {
    pub label: String,
    pub user: String,
    pub node: usize,
    tx: mpsc::UnboundedSender<Cmd>,
    pub outcomes: Arc<Mutex<Outcomes>>,
    /// Rooms joined, as the member last knew (none once disconnected).
    pub rooms: Arc<Mutex<BTreeSet<String>>>,
    /// Rooms the member joined and did not leave, kept across disconnections: what a
    /// reconnect joins again.
    wanted: Arc<Mutex<BTreeSet<String>>>,
    /// The last seq this member saw per room (for `since`).
    pub last_seq: Arc<Mutex<BTreeMap<String, u64>>>,
    pub alive: Arc<std::sync::atomic::AtomicBool>,
}

impl Member {
    /// Connects `user` (label = user) to node `node` and starts recording.
    pub async fn connect(cluster: &FaultCluster, node: usize, user: &str, log: &Log) -> Self {
        let client = Client::connect(cluster.http(node), &format!("user={user}&name={user}")).await;
        Self::spawn(
            client,
            user,
            node,
            log,
            Default::default(),
            Default::default(),
            Default::default(),
        )
    }

    /// Connects again as the same user (same label), to `node`, keeping what it saw,
    /// and joins its rooms again, each with `since` its last seq.
    pub async fn reconnect(&mut self, cluster: &FaultCluster, node: usize, log: &Log) {
        self.reopen(cluster, node, log).await;
        let rooms: Vec<String> = self.wanted.lock().expect("lock").iter().cloned().collect();
        for room in rooms {
            let since = self.last_seq.lock().expect("lock").get(&room).copied();
            self.join_since(&room, since).await;
        }
    }

    /// The rooms this member joined and did not leave.
    pub fn wanted(&self) -> Vec<String> {
        self.wanted.lock().expect("lock").iter().cloned().collect()
    }

    /// Connects again as the same user (same label), to `node`, keeping what it saw,
    /// and joins nothing yet.
    pub async fn reopen(&mut self, cluster: &FaultCluster, node: usize, log: &Log) {
        let client = Client::connect(
            cluster.http(node),
            &format!("user={}&name={}", self.user, self.user),
        )
        .await;
        self.close().await;
        let seqs = self.last_seq.lock().expect("lock").clone();
        *self = Self::spawn(
            client,
            &self.user.clone(),
            node,
            log,
            seqs,
            self.outcomes.clone(),
            self.wanted.clone(),
        );
    }

    fn spawn(
        client: Client,
        user: &str,
        node: usize,
        log: &Log,
        seqs: BTreeMap<String, u64>,
        outcomes: Arc<Mutex<Outcomes>>,
        wanted: Arc<Mutex<BTreeSet<String>>>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let member = Self {
            label: user.to_owned(),
            user: user.to_owned(),
            node,
            tx,
            outcomes,
            rooms: Default::default(),
            wanted,
            last_seq: Arc::new(Mutex::new(seqs)),
            alive: Arc::new(true.into()),
        };
        let task = Task {
            client,
            label: member.label.clone(),
            log: log.clone(),
            waiting: BTreeMap::new(),
            drains: Vec::new(),
            closing: None,
            outcomes: member.outcomes.clone(),
            rooms: member.rooms.clone(),
            wanted: member.wanted.clone(),
            last_seq: member.last_seq.clone(),
            alive: member.alive.clone(),
        };
        tokio::spawn(task.run(rx));
        member
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Joins, retrying while the node answers `unavailable`; the last reply.
    pub async fn join_since(&self, room: &str, since: Option<u64>) -> Value {
        let started = Instant::now();
        loop {
            let (done, rx) = oneshot::channel();
            let _ = self.tx.send(Cmd::Join {
                room: room.to_owned(),
                since,
                done,
            });
            let reply = rx.await.unwrap_or(Value::Null);
            let retry =
                reply["error"]["code"] == "unavailable" || reply["error"]["code"] == "internal";
            if !retry || started.elapsed() > DEADLINE {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends one join (no retry) and returns where its reply will come.
    pub fn send_join(&self, room: &str, since: Option<u64>) -> oneshot::Receiver<Value> {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Cmd::Join {
            room: room.to_owned(),
            since,
            done,
        });
        rx
    }

    pub async fn join(&self, room: &str) -> Value {
        let reply = self.join_since(room, None).await;
        assert_eq!(
            reply["ok"], true,
            "{} could not join {room}: {reply}",
            self.label
        );
        reply
    }

    pub async fn leave(&self, room: &str) -> Value {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Cmd::Leave {
            room: room.to_owned(),
            done,
        });
        rx.await.unwrap_or(Value::Null)
    }

    /// A handle that publishes through this member (for a pacing task).
    pub fn publisher(&self) -> Publisher {
        Publisher(self.tx.clone())
    }

    /// The node's presence of `room` through this member, or why there is none.
    pub async fn presence(&self, room: &str) -> Result<BTreeMap<String, u64>, String> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Presence {
                room: room.to_owned(),
                done,
            })
            .map_err(|_| "connection gone".to_owned())?;
        match tokio::time::timeout(Duration::from_secs(3), rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("connection ended".to_owned()),
            Err(_) => Err("no answer within 3 s".to_owned()),
        }
    }

    /// Waits (bounded) until every request sent so far is answered.
    pub async fn drain(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Cmd::Drain { done }).is_ok() {
            let _ = tokio::time::timeout(DEADLINE, rx).await;
        }
    }

    /// Closes the connection (if open) and waits until its end is recorded.
    pub async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close { done }).is_ok() {
            let _ = tokio::time::timeout(DEADLINE, rx).await;
        }
    }

    /// Records that the run ends with this member joined to its rooms.
    pub async fn end(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Cmd::End { done }).is_ok() {
            let _ = tokio::time::timeout(DEADLINE, rx).await;
        }
    }
}

struct Task {
    client: Client,
    label: String,
    log: Log,
    waiting: BTreeMap<String, Waiting>,
    drains: Vec<oneshot::Sender<()>>,
    closing: Option<oneshot::Sender<()>>,
    outcomes: Arc<Mutex<Outcomes>>,
    rooms: Arc<Mutex<BTreeSet<String>>>,
    wanted: Arc<Mutex<BTreeSet<String>>>,
    last_seq: Arc<Mutex<BTreeMap<String, u64>>>,
    alive: Arc<std::sync::atomic::AtomicBool>,
}

fn entries(list: &Value) -> Vec<Entry> {
    list.as_array()
        .map(|l| {
            l.iter()
                .filter_map(|m| Some((m["seq"].as_u64()?, m["id"].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

impl Task {
    fn record(&self, event: Event) {
        self.log.lock().expect("lock").push(Seen {
            client: self.label.clone(),
            event,
        });
    }

    fn saw(&self, room: &str, seq: u64) {
        self.last_seq
            .lock()
            .expect("lock")
            .insert(room.to_owned(), seq);
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    if !self.command(cmd).await {
                        break;
                    }
                }
                frame = self.client.next_frame_or_end() => {
                    let Some(frame) = frame else { break };
                    self.frame(frame);
                }
            }
        }
        self.alive
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.record(Event::Disconnected);
        self.rooms.lock().expect("lock").clear();
        if let Some(done) = self.closing.take() {
            let _ = done.send(());
        }
        // Every request still waiting gets its channel dropped: the callers see the end.
    }

    /// Sends a command's request; false when the connection is gone.
    async fn command(&mut self, cmd: Cmd) -> bool {
        let (frame, waiting) = match cmd {
            Cmd::Join { room, since, done } => {
                self.record(Event::JoinSent { room: room.clone() });
                let mut frame = json!({"type": "join", "room": room});
                if let Some(s) = since {
                    frame["since"] = json!(s);
                }
                (frame, Waiting::Join(room, since, done))
            }
            Cmd::Leave { room, done } => (
                json!({"type": "leave", "room": room}),
                Waiting::Leave(room, done),
            ),
            Cmd::Publish { room, content } => (
                json!({"type": "publish", "room": room, "content": content}),
                Waiting::Publish(room),
            ),
            Cmd::Presence { room, done } => (
                json!({"type": "presence", "room": room}),
                Waiting::Presence(done),
            ),
            Cmd::Drain { done } => {
                self.drains.push(done);
                self.drained();
                return true;
            }
            Cmd::Close { done } => {
                self.closing = Some(done);
                return false;
            }
            Cmd::End { done } => {
                let rooms: Vec<String> = self.rooms.lock().expect("lock").iter().cloned().collect();
                for room in rooms {
                    self.record(Event::End { room });
                }
                let _ = done.send(());
                return true;
            }
        };
        match self.client.try_send_request(frame).await {
            Some(reference) => {
                self.waiting.insert(reference, waiting);
                true
            }
            None => false,
        }
    }

    fn drained(&mut self) {
        if self.waiting.is_empty() {
            for done in self.drains.drain(..) {
                let _ = done.send(());
            }
        }
    }

    fn frame(&mut self, frame: Value) {
        match frame["type"].as_str() {
            Some("message") => {
                let (Some(room), Some(seq), Some(id)) = (
                    frame["room"].as_str(),
                    frame["seq"].as_u64(),
                    frame["id"].as_str(),
                ) else {
                    return;
                };
                self.record(Event::Message {
                    room: room.into(),
                    seq,
                    id: id.into(),
                });
                self.saw(room, seq);
            }
            Some("gap") => {
                if let Some(room) = frame["room"].as_str() {
                    self.record(Event::Gap { room: room.into() });
                }
            }
            Some("reply") => {
                let Some(waiting) = frame["ref"].as_str().and_then(|r| self.waiting.remove(r))
                else {
                    return;
                };
                let ok = frame["ok"] == true;
                let data = &frame["data"];
                match waiting {
                    Waiting::Join(room, since, done) => {
                        if ok {
                            let seq = data["seq"].as_u64().unwrap_or_default();
                            self.record(Event::Joined {
                                room: room.clone(),
                                since,
                                seq,
                                history: entries(&data["history"]),
                                gap: data["gap"] == true,
                            });
                            self.saw(&room, seq);
                            self.wanted.lock().expect("lock").insert(room.clone());
                            self.rooms.lock().expect("lock").insert(room);
                        }
                        let _ = done.send(frame.clone());
                    }
                    Waiting::Leave(room, done) => {
                        if ok {
                            self.record(Event::Left { room: room.clone() });
                            self.wanted.lock().expect("lock").remove(&room);
                            self.rooms.lock().expect("lock").remove(&room);
                        }
                        let _ = done.send(frame.clone());
                    }
                    Waiting::Publish(room) => {
                        if let (true, Some(seq), Some(id)) =
                            (ok, data["seq"].as_u64(), data["id"].as_str())
                        {
                            self.record(Event::Ack {
                                room,
                                seq,
                                id: id.into(),
                            });
                            self.outcomes.lock().expect("lock").acked += 1;
                        } else {
                            self.outcomes.lock().expect("lock").refused += 1;
                        }
                    }
                    Waiting::Presence(done) => {
                        let _ = done.send(if ok {
                            Ok(members(&data["members"]))
                        } else {
                            Err(frame["error"].to_string())
                        });
                    }
                }
                self.drained();
            }
            _ => {}
        }
    }
}
