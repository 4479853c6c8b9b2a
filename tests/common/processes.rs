//! Real `hubbub` processes for multi-process tests: each node gets a generated
//! config (free ports, `heartbeat_ms = 100`, `failure_timeout_ms = 600`, JSON logs to a
//! file), is watched through `GET /cluster` and its log, and is killed when the test
//! ends whatever happened. Every wait polls with a deadline.
//!
//! Shared by tests/cluster_membership.rs and tests/cluster_tls.rs; each uses part of it.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const HEARTBEAT_MS: u64 = 100;
pub const FAILURE_TIMEOUT_MS: u64 = 600;
/// How long forming a cluster or rejoining may take.
pub const CONVERGE: Duration = Duration::from_secs(10);
/// How long a refused node is watched for, to see it never comes up anywhere.
pub const WATCH_REFUSED: Duration = Duration::from_millis(FAILURE_TIMEOUT_MS * 3);

/// A fresh directory for one test's configs and logs (removed by [`Nodes`] unless the
/// test failed or `KEEP_CLUSTER_TEST_LOGS` is set).
pub fn test_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// `n` distinct free ports on 127.0.0.1.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

/// One `hubbub` process and how to reach it.
pub struct Node {
    pub name: String,
    pub http: SocketAddr,
    pub cluster: SocketAddr,
    pub cookie: String,
    pub seeds: Vec<SocketAddr>,
    /// `cluster.voters`: every node of the cluster by name; only this node unless the
    /// test names them all.
    pub voters: Vec<String>,
    /// `storage.dir` (the room logs), one per process label so a namesake never opens
    /// another's files; kept across restarts.
    pub storage: PathBuf,
    /// TOML appended to the generated config (after `[cluster]`), e.g. `[cluster.tls]`.
    pub extra_config: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Node {
    pub fn new(dir: &Path, name: &str, cookie: &str, seeds: &[SocketAddr], label: &str) -> Self {
        let ports = free_ports(2);
        Self {
            name: name.to_owned(),
            http: SocketAddr::from(([127, 0, 0, 1], ports[0])),
            cluster: SocketAddr::from(([127, 0, 0, 1], ports[1])),
            cookie: cookie.to_owned(),
            seeds: seeds.to_vec(),
            voters: vec![name.to_owned()],
            storage: dir.join(format!("{label}-data")),
            extra_config: String::new(),
            config: dir.join(format!("{label}.toml")),
            log: dir.join(format!("{label}.log")),
            child: None,
        }
    }

    /// Writes the config and starts the process; its log goes to `self.log`.
    pub fn start(&mut self) {
        let seeds: Vec<String> = self.seeds.iter().map(|s| format!("\"{s}\"")).collect();
        let voters: Vec<String> = self.voters.iter().map(|v| format!("{v:?}")).collect();
        let config = format!(
            "[node]\nname = \"{name}\"\nhttp_addr = \"{http}\"\n\n\
             [log]\nlevel = \"info\"\nformat = \"json\"\n\n\
             [storage]\ndir = {storage:?}\n\n\
             [cluster]\nenabled = true\nbind = \"{cluster}\"\ncookie = \"{cookie}\"\n\
             seeds = [{seeds}]\nvoters = [{voters}]\nheartbeat_ms = {HEARTBEAT_MS}\n\
             failure_timeout_ms = {FAILURE_TIMEOUT_MS}\n\n{extra}",
            name = self.name,
            http = self.http,
            cluster = self.cluster,
            cookie = self.cookie,
            seeds = seeds.join(", "),
            voters = voters.join(", "),
            storage = self.storage.display().to_string(),
            extra = self.extra_config,
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
    pub fn restart(&mut self) {
        self.http = SocketAddr::from(([127, 0, 0, 1], free_ports(1)[0]));
        self.start();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Panics if the process has exited.
    pub fn assert_alive(&mut self) {
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
    pub fn status(&self) -> Option<Value> {
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Every node of a test; kills them all when dropped, whatever happened.
pub struct Nodes {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
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
pub fn peer_state<'a>(status: &'a Value, peer: &str) -> Option<&'a str> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == peer)?["state"]
        .as_str()
}

pub fn view_of(status: &Value) -> BTreeSet<String> {
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
pub fn wait_for<T>(
    deadline: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
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

/// Waits until `nodes` all see exactly each other up, with one view id, a quorum, and
/// a leader for every shard of the room logs; returns the statuses.
pub fn converged(nodes: &[&Node], what: &str) -> Vec<Value> {
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
                && status["shards"]
                    .as_array()
                    .is_some_and(|s| s.iter().all(|x| !x["leader"].is_null()));
            if !ok {
                return Err(status.to_string());
            }
        }
        Ok(statuses)
    })
}
