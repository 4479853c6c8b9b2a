//! Looking at the server from outside: its resident memory (`/proc/<pid>/status`, or
//! `process_resident_memory_bytes` from `/metrics`), its Prometheus counters, and
//! hubbub's `GET /cluster`.
//!
//! HTTP here is a plain HTTP/1.1 GET with `Connection: close` over a loopback TCP
//! stream: the bench needs three endpoints, not an HTTP client library.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long one HTTP request to the server may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Resident memory of a process in bytes, from `VmRSS` in `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What a process (or several, added up) has used so far: CPU time, and read and
/// write system calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ProcessUse {
    /// User plus system CPU time, in seconds.
    pub cpu_s: f64,
    /// Read-like system calls (`syscr` in `/proc/<pid>/io`).
    pub read_calls: u64,
    /// Write-like system calls (`syscw`): write(2), writev(2); not send(2).
    pub write_calls: u64,
}

impl ProcessUse {
    /// What was used between `earlier` and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            cpu_s: self.cpu_s - earlier.cpu_s,
            read_calls: self.read_calls.saturating_sub(earlier.read_calls),
            write_calls: self.write_calls.saturating_sub(earlier.write_calls),
        }
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// CPU time and system calls of `pids`, added up; None when any cannot be read.
pub fn process_use(pids: &[u32]) -> Option<ProcessUse> {
    let mut total = ProcessUse::default();
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
        let one = parse_process_use(&stat, &io)?;
        total.cpu_s += one.cpu_s;
        total.read_calls += one.read_calls;
        total.write_calls += one.write_calls;
    }
    Some(total)
}

fn parse_process_use(stat: &str, io: &str) -> Option<ProcessUse> {
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after it.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(ProcessUse {
        cpu_s: ticks as f64 / TICKS_PER_S,
        read_calls: field("syscr:")?,
        write_calls: field("syscw:")?,
    })
}

/// A plain `GET` to a loopback server: (status, body), or None on no answer.
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status: u16 = text.split_whitespace().nth(1)?.parse().ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
        });
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Some((status, body))
    };
    timeout(HTTP_TIMEOUT, exchange).await.ok().flatten()
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// One Prometheus sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format (comments skipped; label values without
/// escaped quotes, which is all hubbub writes).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.trim().parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            Some(Sample {
                name: name.trim().to_owned(),
                labels,
                value,
            })
        })
        .collect()
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((
                key.trim().to_owned(),
                value.trim().trim_matches('"').to_owned(),
            ))
        })
        .collect()
}

/// `GET /metrics` from a server, parsed; None when it does not answer 200.
pub async fn metrics(addr: SocketAddr, host: &str) -> Option<Vec<Sample>> {
    match http_get(addr, host, "/metrics").await? {
        (200, body) => Some(parse_prometheus(&body)),
        _ => None,
    }
}

/// Resident memory from `/metrics` (`process_resident_memory_bytes`).
pub async fn rss_from_metrics(addr: SocketAddr, host: &str) -> Option<u64> {
    metrics(addr, host)
        .await?
        .iter()
        .find(|s| s.name == "process_resident_memory_bytes")
        .map(|s| s.value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\thubbub\nVmPeak:\t  100 kB\nVmRSS:\t   2048 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        let own = rss_bytes(std::process::id()).expect("own RSS");
        assert!(own > 0);
    }

    #[test]
    fn process_use_is_read_from_stat_and_io() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0";
        let io = "rchar: 1\nwchar: 2\nsyscr: 30\nsyscw: 40\nread_bytes: 0\n";
        let used = parse_process_use(stat, io).unwrap();
        assert_eq!(used.cpu_s, 3.0);
        assert_eq!((used.read_calls, used.write_calls), (30, 40));
        let own = process_use(&[std::process::id()]).expect("own use");
        assert!(own.read_calls > 0 || own.cpu_s >= 0.0);
    }

    #[test]
    fn prometheus_text_is_parsed() {
        let text = "# HELP x y\n# TYPE hubbub_cluster_messages_total counter\n\
                    hubbub_cluster_messages_total{direction=\"out\",kind=\"room_message\"} 42\n\
                    process_resident_memory_bytes 1.5e6\n";
        let samples = parse_prometheus(text);
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].name, "hubbub_cluster_messages_total");
        assert_eq!(samples[0].labels["kind"], "room_message");
        assert_eq!(samples[0].labels["direction"], "out");
        assert_eq!(samples[0].value, 42.0);
        assert_eq!(samples[1].value, 1_500_000.0);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
