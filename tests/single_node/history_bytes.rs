//! `rooms.history_bytes`: past the node's bytes for history, the oldest messages go
//! first, whichever room holds them, in the room's log and in the running Room's
//! ring alike; a resume from before them gets `gap`, and numbers go on
//! (docs/operations.md, "History"; docs/protocol.md, `join`).

use crate::support::{eventually, TestNode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_messages_go_first_when_history_passes_its_bytes() {
    let node = TestNode::start_adjusted(|settings| {
        // One shard holds the whole budget, the least allowed: about 240 messages
        // of 4,000 bytes.
        settings.cluster.shards = 1;
        settings.rooms.history_bytes = 1024 * 1024;
        settings.limits.frames_per_second = 0;
    })
    .await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("old").await;
    let content = "x".repeat(4_000);
    for _ in 0..20 {
        alice.publish("old", &content).await;
    }
    // Then 60 messages in each of 6 rooms, all newer: about 1.5 MiB in all, each
    // room within its `rooms.history` (100). The 20 of "old" are the oldest.
    for r in 0..6 {
        let room = format!("busy-{r}");
        alice.join(&room).await;
        for _ in 0..60 {
            alice.publish(&room, &content).await;
        }
    }

    // The running room's ring forgot them too: its history is empty, and a resume
    // from before them is told of the gap. The room keeps its member, so its
    // numbers go on.
    let history = alice
        .ok(json!({"type": "history", "room": "old", "limit": 100}))
        .await;
    let seqs = |reply: &serde_json::Value, field: &str| -> Vec<u64> {
        reply[field]
            .as_array()
            .expect("messages")
            .iter()
            .filter_map(|m| m["seq"].as_u64())
            .collect()
    };
    assert_eq!(
        seqs(&history, "messages"),
        Vec::<u64>::new(),
        "the ring of \"old\""
    );
    let mut bob = node.connect("bob", "Bob").await;
    let joined = bob
        .ok(json!({"type": "join", "room": "old", "since": 5}))
        .await;
    assert_eq!(
        (joined["seq"].as_u64(), joined["gap"].as_bool()),
        (Some(20), Some(true)),
        "joining \"old\" from 5"
    );
    let next = alice.publish("old", "after").await;
    assert_eq!(next["seq"], 21, "{next}");

    // The newest room holds all of its messages; the oldest of the busy ones lost
    // its first (a resume from its start begins, oldest first, past 1).
    let newest = bob
        .ok(json!({"type": "join", "room": "busy-5", "since": 0}))
        .await;
    assert_eq!(newest["gap"], false, "busy-5 is whole");
    assert_eq!(seqs(&newest, "history").first(), Some(&1), "busy-5 from 1");
    let oldest = bob
        .ok(json!({"type": "join", "room": "busy-0", "since": 0}))
        .await;
    assert_eq!(oldest["gap"], true, "busy-0 lost its first");
    let from = seqs(&oldest, "history").first().copied().unwrap_or(61);
    assert!(from > 1, "busy-0 resumes from {from}");

    // What the node counts is within the bound, and it says what it forgot.
    eventually("the history metrics", || async {
        let (_, text) = node.get("/metrics").await;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        };
        let held = value("hubbub_history_bytes ")?;
        let forgotten = value("hubbub_history_forgotten_total ")?;
        (held > 0.0 && held <= 1024.0 * 1024.0 && forgotten >= 21.0).then_some(())
    })
    .await;
}
