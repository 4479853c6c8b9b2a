//! What every multi-process suite does to run one `hubbub` process: write its config
//! (the cluster test settings: 100 ms heartbeats, a 600 ms failure timeout, rate limits
//! off, a history large enough that a test never evicts), start it with its output
//! appended to a log file and a clean environment, signal it, and ask it over plain
//! HTTP. tests/fault uses it; tests/cluster/support.rs and tests/common/processes.rs
//! still carry their own copies of the same steps and are to be folded onto this one.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// `cluster.heartbeat_ms` of every test node.
pub const HEARTBEAT_MS: u64 = 100;
/// `cluster.failure_timeout_ms` of every test node.
pub const FAILURE_TIMEOUT_MS: u64 = 600;
/// `rooms.history` of every test node: no test publishes this many to one room.
pub const HISTORY: usize = 10_000;
/// How long one HTTP request may take before a poll moves on (a stopped process
/// accepts the TCP connection but never answers).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// One node's settings, as the config file says them.
pub struct NodeConfig<'a> {
    pub name: &'a str,
    pub http: SocketAddr,
    pub bind: SocketAddr,
    pub cookie: &'a str,
    pub seeds: &'a [SocketAddr],
    /// `cluster.voters`: the names of every node of the cluster (this one included).
    pub voters: &'a [String],
    /// `storage.dir`: where the node keeps its room logs (under `<dir>/<name>/`); a
    /// restart with the same directory finds them again.
    pub storage: &'a Path,
    /// TOML appended at the end (whole sections).
    pub extra: &'a str,
}

/// The config file text of a test node.
pub fn config_text(node: &NodeConfig<'_>) -> String {
    let seeds = node
        .seeds
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let voters = node
        .voters
        .iter()
        .map(|v| format!("{v:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[node]\nname = \"{name}\"\nhttp_addr = \"{http}\"\n\n\
         [cluster]\nenabled = true\nbind = \"{bind}\"\ncookie = \"{cookie}\"\n\
         seeds = [{seeds}]\nvoters = [{voters}]\nheartbeat_ms = {HEARTBEAT_MS}\n\
         failure_timeout_ms = {FAILURE_TIMEOUT_MS}\n\n\
         [storage]\ndir = {storage:?}\n\n\
         [rooms]\nhistory = {HISTORY}\n\n\
         [limits]\nframes_per_second = 0\n\n\
         [rate_limit]\nmessages_per_minute = 0\nhandshakes_per_ip_per_sec = 0\n\n\
         [log]\nlevel = \"info\"\nformat = \"json\"\n\n{extra}",
        name = node.name,
        http = node.http,
        bind = node.bind,
        cookie = node.cookie,
        storage = node.storage.display().to_string(),
        extra = node.extra,
    )
}

/// Starts `hubbub serve --config CONFIG`, run through `prefix` when it is not empty
/// (e.g. `ip netns exec NS`, which execs, so the child's pid is hubbub's). Its output
/// is appended to `log`, after a line saying which start this is. Only the config
/// file configures it: every `HUBBUB_*` variable but the log level is removed.
pub fn spawn(prefix: &[&str], config: &Path, log: &Path, start: u32) -> Child {
    let mut log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open node log");
    if start > 1 {
        let _ = writeln!(log_file, "---- harness: start #{start} ----");
    }
    let bin = env!("CARGO_BIN_EXE_hubbub");
    let mut command = match prefix.split_first() {
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
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("clone log handle"))
        .stderr(log_file);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("HUBBUB_") && key != "HUBBUB_LOG__LEVEL" {
            command.env_remove(key);
        }
    }
    command.spawn().expect("spawn hubbub")
}

/// Sends a signal (`-STOP`, `-CONT`, `-9`) with the `kill` command.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The last `lines` lines of a log file.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
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
