//! *(v1 addition)* structured `data` across nodes: a message published with data on
//! one node reaches a member on another with its data, and a node killed and started
//! again (its room log read back, from its disk or from the leader) still holds it,
//! with its data, in history.

use crate::support::{is_message, Cluster};
use serde_json::json;

#[tokio::test]
async fn data_crosses_nodes_and_survives_a_restart() {
    let mut cluster = Cluster::start("data", 3).await;
    let mut alice = cluster.connect("a", "alice").await;
    let mut bob = cluster.connect("b", "bob").await;
    alice.join_retry("lobby").await;
    bob.join_retry("lobby").await;

    let data = json!({"kind": "location", "lat": 48.85, "lon": 2.35, "tags": ["paris", null, {"deep": [1]}]});
    let (ack, _) = alice
        .ok_retry(json!({"type": "publish", "room": "lobby", "content": "here", "data": data}))
        .await;
    let seq = ack["seq"].as_u64().expect("a seq");
    let got = bob
        .expect(
            |f| is_message(f, "lobby") && f["seq"] == seq,
            "alice's message on b",
        )
        .await;
    assert_eq!(got["data"], data, "{got}");
    assert_eq!(got["content"], "here");
    drop(bob);

    cluster.restart("b").await;
    cluster.wait_converged(&cluster.names()).await;
    let mut bob = cluster.connect("b", "bob").await;
    bob.join_retry("lobby").await;
    // The restarted node applies its log again (or installs a snapshot) before it
    // holds the message: poll its history, bounded.
    let started = std::time::Instant::now();
    let held = loop {
        let history = bob.full_history("lobby").await;
        if let Some(held) = history.into_iter().find(|m| m["seq"] == seq) {
            break held;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "seq {seq} never came back into b's history after its restart"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(held["data"], data, "{held}");
}
