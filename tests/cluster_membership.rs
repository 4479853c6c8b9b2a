//! Cluster membership with real `hubbub` processes: three nodes find each other and
//! agree on one view; a killed node is declared down and comes back after a restart;
//! a frozen node (SIGSTOP) is declared down and rejoins after SIGCONT; a node with the
//! wrong cookie and a node with a taken name are refused, and nobody crashes.
//!
//! Each node gets a generated config with free ports, `heartbeat_ms = 100` and
//! `failure_timeout_ms = 600`, and is watched through `GET /cluster` and its log
//! (tests/common/processes.rs). Every wait polls with a deadline. One test drives the
//! phases in order, so that the timings measured are not disturbed by other clusters
//! on the same machine.

mod common;

use common::processes::{
    converged, free_ports, peer_state, test_dir, view_of, wait_for, Node, Nodes, CONVERGE,
    FAILURE_TIMEOUT_MS, WATCH_REFUSED,
};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How soon a dead or frozen node must be declared down.
const DETECT: Duration = Duration::from_millis(FAILURE_TIMEOUT_MS + 1_000);

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
    let dir = test_dir("hubbub-membership");
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
        node.voters = vec!["n1".into(), "n2".into(), "n3".into()];
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
    // It believes it is one of four: alone it has no majority.
    intruder.voters = ["n1", "n2", "n3", "intruder"].map(String::from).to_vec();
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
    namesake.voters = ["n1", "n2", "n3"].map(String::from).to_vec();
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
