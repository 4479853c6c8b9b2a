//! A peer holding the cookie cannot act as another node: "mallory", a real
//! ractor_cluster node in this test process, connects to b and a with the cookie and
//! sends frames in a's name (a leaving, a ghost member of a room) and a key offer in
//! b's name. Each node drops what does not carry the sender key it issued to the node
//! named (`hubbub_cluster_frames_dropped_total`), and nothing mallory said happens.

use crate::scrape::Metrics;
use crate::support::{is_message, Cluster, COOKIE, DEADLINE, FAILURE_TIMEOUT_MS};
use hubbub::cluster::wire::{self, Body, Envelope};
use hubbub::cluster::EndpointMessage;
use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::NodeServer;
use serde_json::Value;
use std::time::{Duration, Instant};

const ROOM: &str = "plaza";

/// An incarnation in a ractor_cluster name, as hubbub nodes write it.
fn cluster_name(name: &str, inc: u64) -> String {
    format!("{name}#{inc:016x}")
}

async fn dropped(cluster: &Cluster, node: &str, reason: &str) -> f64 {
    let (status, body) = cluster.http(node, "/metrics").await;
    assert_eq!(status, 200, "{node}: {body}");
    Metrics::parse(&body).value("hubbub_cluster_frames_dropped_total", &[("reason", reason)])
}

fn incarnation_of(status: &Value, peer: &str) -> u64 {
    status["peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["name"] == peer))
        .and_then(|p| p["incarnation"].as_u64())
        .unwrap_or_else(|| panic!("no incarnation of {peer} in {status}"))
}

/// The Endpoint of `node` as mallory's process sees it, once its session synced.
async fn endpoint_of(node: &str) -> ActorRef<EndpointMessage> {
    let group = format!("hubbub.node.{node}");
    let started = Instant::now();
    loop {
        if let Some(cell) = ractor::pg::get_members(&group).into_iter().next() {
            return ActorRef::from(cell);
        }
        assert!(
            started.elapsed() < DEADLINE,
            "mallory never saw {node}'s Endpoint"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A frame as a node would seal it, with a key mallory does not have.
fn forged(from: &str, inc: u64, body: Body) -> EndpointMessage {
    let envelope = wire::encode(&Envelope {
        from: from.to_owned(),
        inc,
        body,
    });
    EndpointMessage::Frame(wire::seal("0123456789abcdef0123456789abcdef", &[&envelope]))
}

#[tokio::test]
async fn frames_in_another_nodes_name_are_dropped() {
    let cluster = Cluster::start("impersonation", 3).await;
    let mut on_b = cluster.connect("b", "bob").await;
    on_b.join_retry(ROOM).await;
    let mut on_a = cluster.connect("a", "alice").await;
    on_a.join_retry(ROOM).await;
    let status_b = cluster.cluster_status("b").await;
    let a_inc = incarnation_of(&status_b, "a");
    let b_inc = incarnation_of(&cluster.cluster_status("a").await, "b");
    let bad_key_before = dropped(&cluster, "b", "bad_key").await;
    let offers_before = dropped(&cluster, "a", "bad_key").await;

    // Mallory: the cookie, a name of its own, a session with b and one with a.
    let server = NodeServer::new(
        0,
        COOKIE.to_owned(),
        cluster_name("mallory", 0x6d61),
        "127.0.0.1".to_owned(),
        None,
        Some(NodeConnectionMode::Isolated),
    );
    let (server, server_handle) = Actor::spawn(None, server, ())
        .await
        .expect("mallory starts");
    for node in ["b", "a"] {
        ractor_cluster::client_connect(&server, cluster.bind_addr(node))
            .await
            .expect("mallory reaches the cluster port");
    }
    let b = endpoint_of("b").await;
    let a = endpoint_of("a").await;

    // In a's name, to b: a is leaving, and a ghost is in the room.
    b.cast(forged("a", a_inc, Body::Leaving {})).expect("cast");
    let ghost = serde_json::from_value(serde_json::json!({
        "t": "presence_delta",
        "room": ROOM,
        "entry": {"user": "ghost", "name": "Ghost", "connections": 1}
    }))
    .expect("a presence delta");
    b.cast(forged("a", a_inc, ghost)).expect("cast");
    // In b's name, to a: a key offer for a's frames to b (taken, a's frames to b would
    // carry mallory's key and b would drop them all).
    a.cast(EndpointMessage::Frame(wire::seal(
        "",
        &[&wire::encode(&Envelope {
            from: "b".into(),
            inc: b_inc,
            body: Body::SenderKey {
                key: "ffffffffffffffffffffffffffffffff".into(),
            },
        })],
    )))
    .expect("cast");

    // b counts both forgeries as dropped.
    let started = Instant::now();
    while dropped(&cluster, "b", "bad_key").await < bad_key_before + 2.0 {
        assert!(
            started.elapsed() < DEADLINE,
            "b never dropped the frames sent in a's name:\n{}",
            cluster.log_tail("b")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        cluster.log("b").contains("does not carry the sender key"),
        "b logs why: {}",
        cluster.log_tail("b")
    );
    server.stop(None);
    let _ = server_handle.await;

    // For longer than the failure timeout: a stays up in b's view and a's view of b,
    // and the ghost never shows in the room on b.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(2 * FAILURE_TIMEOUT_MS) {
        for (observer, peer) in [("b", "a"), ("a", "b")] {
            let status = cluster.cluster_status(observer).await;
            let up = status["peers"]
                .as_array()
                .and_then(|peers| peers.iter().find(|p| p["name"] == peer))
                .is_some_and(|p| p["state"] == "up");
            assert!(up, "{observer} still has {peer} up: {status}");
        }
        let members = on_b.presence(ROOM).await;
        assert!(!members.contains_key("ghost"), "no ghost on b: {members:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a's frames to b still pass: a publish on a reaches bob on b.
    let sent = on_a.publish_retry(ROOM, "still me").await;
    let got = on_b
        .expect(
            |f| is_message(f, ROOM) && f["content"] == "still me",
            "alice's message",
        )
        .await;
    assert_eq!(got["seq"], sent["seq"]);
    assert_eq!(
        dropped(&cluster, "a", "bad_key").await,
        offers_before,
        "a dropped nothing: the forged offer was simply not taken"
    );
}
