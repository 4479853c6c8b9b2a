//! The cluster port before authentication, attacked with raw TCP clients: a frame
//! announced past `cluster.max_unauthenticated_bytes` closes the connection unread
//! (the node's peak memory stays flat), connections past `cluster.max_unauthenticated`
//! are refused at once, silent ones are closed at the handshake deadline, each kind
//! is counted and logged once, and real peers still join afterwards.

use crate::scrape::Metrics;
use crate::support::{Cluster, DEADLINE, FAILURE_TIMEOUT_MS};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The default `cluster.max_unauthenticated`.
const MAX_UNAUTHENTICATED: usize = 64;
/// What each attacker announces: ractor_cluster's own limit would let it through.
const ANNOUNCED: u64 = 16 * 1024 * 1024;
/// Connections announcing [`ANNOUNCED`] bytes at once.
const ATTACKERS: usize = 8;
/// How much the node's peak resident memory may grow meanwhile. Buffering the frames
/// would take at least `ATTACKERS × 16 MiB` = 128 MiB.
const PEAK_GROWTH_BOUND_KIB: u64 = 24 * 1024;
/// The handshake deadline of the node under test in the cap test
/// (`cluster.failure_timeout_ms`): long enough to fill the cap and scrape on a
/// loaded machine before it passes.
const DEADLINE_MS: u64 = 5_000;

async fn scrape(cluster: &Cluster, node: &str) -> Metrics {
    let (status, body) = cluster.http(node, "/metrics").await;
    assert_eq!(status, 200, "{node}: {body}");
    Metrics::parse(&body)
}

fn refused(metrics: &Metrics, reason: &str) -> f64 {
    metrics.value(
        "hubbub_cluster_peer_connections_refused_total",
        &[("reason", reason)],
    )
}

fn unauthenticated(metrics: &Metrics) -> f64 {
    metrics.value("hubbub_cluster_unauthenticated_connections", &[])
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`: the peak).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// Announces a frame of [`ANNOUNCED`] bytes and then sends it, until the node closes
/// the connection; returns how many payload bytes were written by then (all of them
/// if it never closed).
async fn send_oversized_frame(addr: SocketAddr) -> u64 {
    let mut socket = TcpStream::connect(addr).await.expect("TCP to the node");
    socket
        .write_all(&ANNOUNCED.to_be_bytes())
        .await
        .expect("the header is written");
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut written = 0;
    while written < ANNOUNCED {
        match tokio::time::timeout(DEADLINE, socket.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len() as u64,
            Ok(Err(_)) => break,
            Err(_) => panic!("the node neither read nor closed the connection in {DEADLINE:?}"),
        }
    }
    written
}

/// Waits until the node closes `socket` (EOF or reset); panics after `within`.
async fn closed_within(socket: &mut TcpStream, within: Duration) {
    let mut byte = [0_u8; 1];
    match tokio::time::timeout(within, socket.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(_)) => panic!("the node sent bytes to a client that sent none"),
        Err(_) => panic!("the connection was not closed within {within:?}"),
    }
}

/// Lines of `node`'s log containing `text`.
fn logged(cluster: &Cluster, node: &str, text: &str) -> usize {
    cluster
        .log(node)
        .lines()
        .filter(|line| line.contains(text))
        .count()
}

/// Polls `node`'s metrics until `check` holds for them; panics after [`DEADLINE`].
async fn wait_metrics(cluster: &Cluster, node: &str, what: &str, check: impl Fn(&Metrics) -> bool) {
    let started = Instant::now();
    loop {
        let metrics = scrape(cluster, node).await;
        if check(&metrics) {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{node}: {what} within {DEADLINE:?}; last seen: {} unauthenticated, refused for \
             handshake_timeout {}, too_many_unauthenticated {}, frame_too_large {}\n{}",
            unauthenticated(&metrics),
            refused(&metrics, "handshake_timeout"),
            refused(&metrics, "too_many_unauthenticated"),
            refused(&metrics, "frame_too_large"),
            cluster.log_tail(node)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_frame_past_the_budget_before_authenticating_closes_the_connection_unread() {
    let cluster = Cluster::start("peerframe", 2).await;
    let pid = cluster.pid("a");
    let addr = cluster.bind_addr("a");
    let before = scrape(&cluster, "a").await;
    assert_eq!(refused(&before, "frame_too_large"), 0.0);
    assert_eq!(
        unauthenticated(&before),
        0.0,
        "b's connection authenticated"
    );
    let view_before = cluster.cluster_status("a").await["view_id"].clone();
    let peak_before = proc_status_kib(pid, "VmHWM");

    let started = Instant::now();
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|_| tokio::spawn(send_oversized_frame(addr)))
        .collect();
    for attacker in attackers {
        let written = attacker.await.expect("attacker");
        assert!(
            written < ANNOUNCED,
            "the node read the whole {ANNOUNCED}-byte frame before authentication"
        );
    }
    let peak_after = proc_status_kib(pid, "VmHWM");
    println!(
        "{ATTACKERS} connections announcing {ANNOUNCED} bytes closed in {:?}; peak RSS \
         {peak_before} KiB -> {peak_after} KiB (now {} KiB)",
        started.elapsed(),
        proc_status_kib(pid, "VmRSS")
    );
    assert!(
        peak_after - peak_before < PEAK_GROWTH_BOUND_KIB,
        "the node's peak memory grew from {peak_before} KiB to {peak_after} KiB"
    );

    wait_metrics(&cluster, "a", "every oversized frame counted", |m| {
        refused(m, "frame_too_large") == ATTACKERS as f64 && unauthenticated(m) == 0.0
    })
    .await;
    // Logged once, not once per connection.
    assert_eq!(
        logged(&cluster, "a", "cluster.max_unauthenticated_bytes"),
        1,
        "{}",
        cluster.log_tail("a")
    );
    // The real peers were never disturbed, nor held to the limits: watched past the
    // handshake deadline, their connection stays and none was closed by it.
    let watch_until = Instant::now() + Duration::from_millis(FAILURE_TIMEOUT_MS * 2);
    while Instant::now() < watch_until {
        let status = cluster.cluster_status("a").await;
        assert_eq!(status["view_id"], view_before, "{status}");
        assert_eq!(status["peers"][0]["state"], "up", "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node in ["a", "b"] {
        let metrics = scrape(&cluster, node).await;
        for reason in ["handshake_timeout", "too_many_unauthenticated"] {
            assert_eq!(refused(&metrics, reason), 0.0, "{node}: {reason}");
        }
    }
}

#[tokio::test]
async fn past_the_cap_peers_are_refused_at_once_and_silent_ones_closed_at_the_deadline() {
    // Three configured nodes; c starts last, seeded with a alone.
    let mut cluster = Cluster::plan("peercap", 3).await;
    cluster
        .config("a")
        .set("cluster", "failure_timeout_ms", DEADLINE_MS);
    let addr = cluster.bind_addr("a");
    cluster.config("c").seeds(&[addr]);
    let names = ["a".to_owned(), "b".to_owned()];
    for name in &names {
        cluster.start_node(name).await;
    }
    cluster.wait_converged(&names).await;
    let deadline = Duration::from_millis(DEADLINE_MS);

    // Fill the cap with connections that never send a byte.
    let mut silent = Vec::new();
    for _ in 0..MAX_UNAUTHENTICATED {
        let socket = TcpStream::connect(addr).await.expect("TCP to the node");
        silent.push((Instant::now(), socket));
    }
    wait_metrics(&cluster, "a", "the cap to fill", |m| {
        unauthenticated(m) == MAX_UNAUTHENTICATED as f64
    })
    .await;

    // Past it, each new connection is closed at once, long before the deadline.
    const EXTRA: usize = 3;
    for _ in 0..EXTRA {
        let opened = Instant::now();
        let mut socket = TcpStream::connect(addr).await.expect("TCP to the node");
        closed_within(&mut socket, deadline / 2).await;
        println!("refused past the cap in {:?}", opened.elapsed());
    }
    let metrics = scrape(&cluster, "a").await;
    assert_eq!(refused(&metrics, "too_many_unauthenticated"), EXTRA as f64);
    assert_eq!(refused(&metrics, "handshake_timeout"), 0.0);
    assert_eq!(unauthenticated(&metrics), MAX_UNAUTHENTICATED as f64);

    // The silent ones are closed at the deadline, not before.
    for (opened, socket) in &mut silent {
        closed_within(socket, deadline + DEADLINE).await;
        let lived = opened.elapsed();
        assert!(
            lived >= deadline - Duration::from_millis(50),
            "closed after {lived:?}, before the {deadline:?} deadline"
        );
    }
    wait_metrics(&cluster, "a", "every silent connection counted", |m| {
        refused(m, "handshake_timeout") == MAX_UNAUTHENTICATED as f64 && unauthenticated(m) == 0.0
    })
    .await;
    for (why, text) in [
        ("the cap", "(cluster.max_unauthenticated)"),
        ("the deadline", "not authenticated within"),
    ] {
        assert_eq!(
            logged(&cluster, "a", text),
            1,
            "{why} is logged once: {}",
            cluster.log_tail("a")
        );
    }

    // A real node still joins through a: its connection authenticates and stays
    // past the deadline.
    cluster.start_node("c").await;
    let all = cluster.names();
    cluster.wait_converged(&all).await;
    let view = cluster.cluster_status("a").await["view_id"].clone();
    // Watched past the deadline: authenticated connections are not closed by it.
    let watch_until = Instant::now() + deadline + Duration::from_millis(500);
    while Instant::now() < watch_until {
        let status = cluster.cluster_status("a").await;
        assert_eq!(status["view_id"], view, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = scrape(&cluster, "a").await;
    assert_eq!(unauthenticated(&metrics), 0.0);
    assert_eq!(
        refused(&metrics, "handshake_timeout"),
        MAX_UNAUTHENTICATED as f64,
        "a real peer was closed at the deadline"
    );
}
