//! `GET /cluster`: this node, every peer with its state and heartbeat round trip, the
//! rooms running here, and each shard of the room logs with its voters and leader.

use crate::support::{
    find_room, owner_of, view_names, Cluster, DEADLINE, FAILURE_TIMEOUT_MS, HEARTBEAT_MS,
};
use serde_json::Value;
use std::time::Instant;

/// The names in a `/cluster` answer's `rooms` (the rooms running on that node), sorted.
fn rooms_here(status: &Value) -> Vec<String> {
    let mut rooms: Vec<String> = status["rooms"]
        .as_array()
        .map(|rooms| {
            rooms
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    rooms.sort();
    rooms
}

/// Each shard's leader in a `/cluster` answer, in shard order.
fn leaders(status: &Value) -> Vec<Option<String>> {
    status["shards"]
        .as_array()
        .map(|shards| {
            shards
                .iter()
                .map(|s| s["leader"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn cluster_status_shows_peers_rooms_and_shards() {
    let cluster = Cluster::start("status", 3).await;
    let all = ["a", "b", "c"];
    let names = cluster.names();

    let mut incarnations = Vec::new();
    for name in &names {
        incarnations.push(cluster.cluster_status(name).await["incarnation"].clone());
    }
    for name in &names {
        let status = cluster.cluster_status(name).await;
        assert_eq!(status["node"], name.as_str(), "{status}");
        assert_eq!(
            status["advertise"],
            cluster.bind_addr(name).to_string(),
            "{status}"
        );
        assert_eq!(view_names(&status), all.into_iter().collect(), "{status}");
        assert_eq!(status["quorum"], 2, "{status}");
        let peers = status["peers"].as_array().expect("peers");
        assert_eq!(peers.len(), 2, "{name}: {status}");
        for (peer, incarnation) in names.iter().zip(&incarnations) {
            if peer == name {
                continue;
            }
            let entry = peers
                .iter()
                .find(|p| p["name"] == peer.as_str())
                .unwrap_or_else(|| panic!("{name} does not list {peer}: {status}"));
            assert_eq!(entry["state"], "up", "{name}: {entry}");
            assert_eq!(entry["addr"], cluster.bind_addr(peer).to_string());
            assert_eq!(&entry["incarnation"], incarnation, "{name}: {entry}");
            let rtt = entry["rtt_ms"].as_f64().expect("rtt_ms is a number");
            assert!((0.0..1_000.0).contains(&rtt), "{name}: {entry}");
            let heard = entry["last_heard_ms_ago"]
                .as_u64()
                .expect("last_heard_ms_ago");
            assert!(
                heard < FAILURE_TIMEOUT_MS,
                "{name} heard from {peer} {heard} ms ago (heartbeats every {HEARTBEAT_MS} ms)"
            );
        }
    }

    // Every shard lists its three voters and a leader among them, the same on every
    // node.
    for name in &names {
        let status = cluster.cluster_status(name).await;
        let shards = status["shards"].as_array().expect("shards");
        assert!(!shards.is_empty(), "{status}");
        for (i, shard) in shards.iter().enumerate() {
            assert_eq!(shard["shard"], i, "{shard}");
            let mut voters: Vec<&str> = shard["voters"]
                .as_array()
                .expect("voters")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            voters.sort();
            assert_eq!(voters, all, "{name}: {shard}");
        }
    }
    let started = Instant::now();
    loop {
        let mut seen = Vec::new();
        for name in &names {
            seen.push(leaders(&cluster.cluster_status(name).await));
        }
        let agreed = seen.windows(2).all(|w| w[0] == w[1])
            && seen[0]
                .iter()
                .all(|l| l.as_deref().is_some_and(|l| all.contains(&l)));
        if agreed {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the shards' leaders as a, b, c see them: {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The rooms in use show up on every node with members in them, and only there.
    let rooms: Vec<String> = all
        .iter()
        .map(|node| find_room("owned", |room| owner_of(room, &all) == *node))
        .collect();
    let mut clients = Vec::new();
    for node in ["a", "b"] {
        let mut client = cluster.connect(node, &format!("user-{node}")).await;
        for room in &rooms {
            client.join_retry(room).await;
        }
        clients.push(client);
    }
    let mut expected = rooms.clone();
    expected.sort();
    let started = Instant::now();
    loop {
        let mut here = Vec::new();
        for name in &names {
            here.push(rooms_here(&cluster.cluster_status(name).await));
        }
        if here == [expected.clone(), expected.clone(), Vec::new()] {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "rooms running on a, b, c: {here:?}, expected {expected:?} on a and b"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A node that cannot form a majority is not ready: a load balancer should send new
/// clients elsewhere. Once its peers are up, it is.
#[tokio::test]
async fn readyz_follows_quorum() {
    let mut cluster = Cluster::plan("readyz", 3).await;
    cluster.start_node("a").await;
    let (status, body) = cluster.http("a", "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no quorum"), "{body}");
    cluster.start_node("b").await;
    cluster
        .wait_converged(&["a".to_owned(), "b".to_owned()])
        .await;
    // Ready once every shard of the room logs has elected a leader among a and b.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (status, body) = cluster.http("a", "/readyz").await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready with 2 of 3: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Leaders spread as placed, however far apart the nodes start: each shard is led by
/// the first of its placed voters that was up when a majority of them was. With a and
/// b up and c never started, that is the first of a and b in each shard's placed
/// order, so both lead some shards. (Before, bootstrapping started an election on
/// whichever node saw the majority first, and it led every shard.)
#[tokio::test]
async fn shards_are_led_by_their_first_placed_voter_that_is_up() {
    let mut cluster = Cluster::plan("leaders", 3).await;
    cluster.start_node("a").await;
    cluster.start_node("b").await;
    let up = ["a".to_owned(), "b".to_owned()];
    cluster.wait_converged(&up).await;
    let started = Instant::now();
    let status = loop {
        let on_a = cluster.cluster_status("a").await;
        let on_b = cluster.cluster_status("b").await;
        let seen = leaders(&on_a);
        if seen == leaders(&on_b) && !seen.is_empty() && seen.iter().all(Option::is_some) {
            break on_a;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "leaders as a sees them: {seen:?}, as b does: {:?}",
            leaders(&on_b)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let mut led = std::collections::BTreeMap::<String, usize>::new();
    for shard in status["shards"].as_array().expect("shards") {
        let placed: Vec<&str> = shard["placed"]
            .as_array()
            .expect("placed")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let expected = placed
            .iter()
            .find(|n| up.iter().any(|u| u == *n))
            .expect("a or b is placed in every shard");
        let leader = shard["leader"].as_str().unwrap_or_default();
        assert_eq!(leader, *expected, "{shard}");
        *led.entry(leader.to_owned()).or_default() += 1;
    }
    assert_eq!(led.len(), 2, "both a and b lead shards: {led:?}");
}
