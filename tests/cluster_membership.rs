//! Cluster membership with real `hubbub` processes: three nodes find each other and
//! agree on one view; a killed node is declared down and comes back after a restart;
//! a frozen node (SIGSTOP) is declared down and rejoins after SIGCONT; a node with the
//! wrong cookie and a node with a taken name are refused, and nobody crashes.
//!
//! Each node gets a generated config with free ports, `heartbeat_ms = 100` and
//! `failure_timeout_ms = 600`, and is watched through `GET /cluster` and its log.
//! Every wait polls with a deadline. One test drives the phases in order, so that the
//! timings measured are not disturbed by other clusters on the same machine.

use serde_json::Value;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HEARTBEAT_MS: u64 = 100;
const FAILURE_TIMEOUT_MS: u64 = 600;
/// How long forming a cluster or rejoining may take.
const CONVERGE: Duration = Duration::from_secs(10);
/// How soon a dead or frozen node must be declared down.
const DETECT: Duration = Duration::from_millis(FAILURE_TIMEOUT_MS + 1_000);
/// How long a refused node is watched for, to see it never comes up anywhere.
const WATCH_REFUSED: Duration = Duration::from_millis(FAILURE_TIMEOUT_MS * 3);

/// `n` distinct free ports on 127.0.0.1.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

/// One `hubbub` process and how to reach it.
struct Node {
    name: String,
    http: SocketAddr,
    cluster: SocketAddr,
    cookie: String,
    seeds: Vec<SocketAddr>,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn new(dir: &Path, name: &str, cookie: &str, seeds: &[SocketAddr], label: &str) -> Self {
        let ports = free_ports(2);
        Self {
            name: name.to_owned(),
            http: SocketAddr::from(([127, 0, 0, 1], ports[0])),
            cluster: SocketAddr::from(([127, 0, 0, 1], ports[1])),
            cookie: cookie.to_owned(),
            seeds: seeds.to_vec(),
            config: dir.join(format!("{label}.toml")),
            log: dir.join(format!("{label}.log")),
            child: None,
        }
    }

    /// Writes the config and starts the process; its log goes to `self.log`.
    fn start(&mut self) {
        let seeds: Vec<String> = self.seeds.iter().map(|s| format!("\"{s}\"")).collect();
        let config = format!(
            "[node]\nname = \"{name}\"\nhttp_addr = \"{http}\"\n\n\
             [log]\nlevel = \"info\"\nformat = \"json\"\n\n\
             [cluster]\nenabled = true\nbind = \"{cluster}\"\ncookie = \"{cookie}\"\n\
             seeds = [{seeds}]\nheartbeat_ms = {HEARTBEAT_MS}\n\
             failure_timeout_ms = {FAILURE_TIMEOUT_MS}\n",
            name = self.name,
            http = self.http,
            cluster = self.cluster,
            cookie = self.cookie,
            seeds = seeds.join(", "),
        );
        std::fs::write(&self.config, config).expect("config written");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_hubbub"));
        // Only the generated file configures the node.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HUBBUB_") {
                command.env_remove(key);
            }
        }
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("hubbub starts");
        self.child = Some(child);
    }

    /// Starts the node again on a fresh HTTP port (the old one may linger in
    /// TIME_WAIT); the cluster address stays, as the others dial it.
    fn restart(&mut self) {
        self.http = SocketAddr::from(([127, 0, 0, 1], free_ports(1)[0]));
        self.start();
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Panics if the process has exited.
    fn assert_alive(&mut self) {
        let name = self.name.clone();
        let log = self.log.clone();
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{name} exited with {status}; its log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }

    /// `GET /cluster`, or None while the node does not answer.
    fn status(&self) -> Option<Value> {
        let mut stream = TcpStream::connect_timeout(&self.http, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream
            .write_all(b"GET /cluster HTTP/1.0\r\nHost: test\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.split(' ')
            .nth(1)
            .is_some_and(|code| code == "200")
            .then(|| serde_json::from_str(body).ok())
            .flatten()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Every node of a test; kills them all when dropped, whatever happened.
struct Nodes {
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_ref() {
                let _ = Command::new("kill")
                    .arg("-CONT")
                    .arg(child.id().to_string())
                    .status();
            }
            node.kill();
        }
        if !std::thread::panicking() && std::env::var_os("KEEP_CLUSTER_TEST_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("node configs and logs kept in {}", self.dir.display());
        }
    }
}

/// The state of `peer` in a `/cluster` answer.
fn peer_state<'a>(status: &'a Value, peer: &str) -> Option<&'a str> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == peer)?["state"]
        .as_str()
}

fn view_of(status: &Value) -> BTreeSet<String> {
    status["view"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `check` every 20 ms until it gives Some, or panics after `deadline` with
/// `what` and the last thing seen.
fn wait_for<T>(deadline: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if start.elapsed() > deadline => {
                panic!("timed out after {deadline:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Waits until `nodes` all see exactly each other up, with one view id, quorum and a
/// valid lease; returns the statuses.
fn converged(nodes: &[&Node], what: &str) -> Vec<Value> {
    let names: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
    wait_for(CONVERGE, what, || {
        let statuses: Vec<Value> = nodes
            .iter()
            .map(|n| n.status().ok_or(format!("{} does not answer", n.name)))
            .collect::<Result<_, _>>()?;
        let first = statuses[0]["view_id"].clone();
        for status in &statuses {
            let ok = view_of(status) == names
                && status["view_id"] == first
                && status["has_quorum"] == true
                && status["lease_valid"] == true;
            if !ok {
                return Err(status.to_string());
            }
        }
        Ok(statuses)
    })
}

fn incarnation(status: &Value) -> u64 {
    status["incarnation"].as_u64().expect("incarnation")
}

/// Waits until every node in `watchers` sees `peer` down while keeping a quorum;
/// returns how long that took from `since`.
fn detected_down(watchers: &[&Node], peer: &str, since: Instant) -> Duration {
    wait_for(DETECT, &format!("{peer} to be declared down"), || {
        for node in watchers {
            let status = node
                .status()
                .ok_or(format!("{} does not answer", node.name))?;
            if peer_state(&status, peer) != Some("down") || status["has_quorum"] != true {
                return Err(status.to_string());
            }
        }
        Ok(since.elapsed())
    })
}

#[test]
fn membership_forms_detects_failures_and_refuses_impostors() {
    let dir = std::env::temp_dir().join(format!(
        "hubbub-membership-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cluster_ports = free_ports(3);
    let seeds: Vec<SocketAddr> = cluster_ports
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    let mut nodes = Nodes {
        dir: dir.clone(),
        nodes: Vec::new(),
    };
    for (i, seed) in seeds.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let mut node = Node::new(&dir, &name, "test-cookie", &seeds, &name);
        node.cluster = *seed;
        nodes.nodes.push(node);
    }
    // Reverse order: start order must not matter.
    let started = Instant::now();
    for node in nodes.nodes.iter_mut().rev() {
        node.start();
    }
    let all: Vec<&Node> = nodes.nodes.iter().collect();
    let statuses = converged(&all, "three nodes to form one view");
    println!("formed: {:?}", started.elapsed());
    for status in &statuses {
        for peer in status["peers"].as_array().expect("peers") {
            assert_eq!(peer["state"], "up", "{status}");
            assert!(peer["rtt_ms"].is_number(), "{status}");
        }
    }

    // ---- kill -9 of n3: declared down in time, the others keep quorum ----
    nodes.nodes[2].kill();
    let killed = Instant::now();
    let took = detected_down(&[&nodes.nodes[0], &nodes.nodes[1]], "n3", killed);
    println!("kill -9 detected by both others in {took:?}");
    assert!(took <= DETECT);
    converged(
        &[&nodes.nodes[0], &nodes.nodes[1]],
        "n1 and n2 to agree without n3",
    );

    // ---- restart of n3: back up everywhere, with a new incarnation ----
    let old_incarnation = incarnation(&statuses[2]);
    nodes.nodes[2].restart();
    let restarted = Instant::now();
    let all: Vec<&Node> = nodes.nodes.iter().collect();
    let statuses = converged(&all, "the restarted n3 to rejoin");
    println!("restarted n3 rejoined in {:?}", restarted.elapsed());
    assert_ne!(incarnation(&statuses[2]), old_incarnation);

    // ---- SIGSTOP of n2: declared down in time; after SIGCONT it rejoins ----
    let frozen_incarnation = incarnation(&statuses[1]);
    nodes.nodes[1].signal("STOP");
    let stopped = Instant::now();
    let took = detected_down(&[&nodes.nodes[0], &nodes.nodes[2]], "n2", stopped);
    println!("SIGSTOP detected by both others in {took:?}");
    converged(
        &[&nodes.nodes[0], &nodes.nodes[2]],
        "n1 and n3 to agree without n2",
    );
    nodes.nodes[1].signal("CONT");
    let resumed = Instant::now();
    let all: Vec<&Node> = nodes.nodes.iter().collect();
    let statuses = converged(&all, "n2 to rejoin after SIGCONT");
    println!("n2 rejoined {:?} after SIGCONT", resumed.elapsed());
    assert_eq!(
        incarnation(&statuses[1]),
        frozen_incarnation,
        "same process"
    );
    let view_before_impostors = statuses[0]["view_id"].clone();

    // ---- a node with the wrong cookie: refused, logged, never up ----
    let mut intruder = Node::new(&dir, "intruder", "wrong-cookie", &seeds, "intruder");
    intruder.start();
    nodes.nodes.push(intruder);
    wait_for(CONVERGE, "the wrong cookie to be logged", || {
        let refusals = nodes.nodes[..3]
            .iter()
            .filter(|n| n.log_text().contains("failed the cookie check"))
            .count();
        (refusals == 3)
            .then_some(())
            .ok_or(format!("{refusals} of 3 logged it"))
    });

    // ---- a second node named n1: refused, logged, the first n1 stays ----
    let mut namesake = Node::new(&dir, "n1", "test-cookie", &seeds, "n1-namesake");
    namesake.start();
    nodes.nodes.push(namesake);
    wait_for(CONVERGE, "the taken name to be logged", || {
        let original = nodes.nodes[0].log_text().contains("it is also named");
        let others = nodes.nodes[1..3]
            .iter()
            .filter(|n| n.log_text().contains("is taken by the node at"))
            .count();
        (original && others == 2).then_some(()).ok_or(format!(
            "n1 logged it: {original}; {others} of 2 others did"
        ))
    });

    // Watch both impostors for a while: never up anywhere, the view never moves.
    let watch_until = Instant::now() + WATCH_REFUSED;
    while Instant::now() < watch_until {
        for node in &nodes.nodes[..3] {
            let status = node.status().expect("a member answers");
            assert_eq!(status["view_id"], view_before_impostors, "{status}");
            assert_ne!(peer_state(&status, "intruder"), Some("up"), "{status}");
        }
        for impostor in &nodes.nodes[3..] {
            if let Some(status) = impostor.status() {
                assert_eq!(view_of(&status).len(), 1, "{status}");
                assert_eq!(status["has_quorum"], false, "{status}");
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let namesake_log = nodes.nodes[4].log_text();
    assert!(namesake_log.contains("it is also named"), "{namesake_log}");
    assert!(
        !namesake_log.contains("failed the cookie check"),
        "a refusal is not a cookie failure: {namesake_log}"
    );
    let all: Vec<&Node> = nodes.nodes[..3].iter().collect();
    let statuses = converged(&all, "the three to still agree");
    assert_eq!(statuses[0]["view_id"], view_before_impostors);
    for node in &mut nodes.nodes {
        node.assert_alive();
    }
    println!("total: {:?}", started.elapsed());
}
