//! *(v1 addition)* Broadcast variants of `publish` across three nodes: `except_sender`
//! from a node that does not lead the room's shard (the sender's connection skips its
//! message, the same user's connection on another node and other users get it), and
//! one publish to two rooms led by other nodes (one id, each room its own seq, on
//! every node, and in history).

use crate::support::{find_room, is_message, owner_of, Cluster};
use crate::ws_client::Client;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A `publish` with `rooms` and an `idempotency_key`, sent again (same key: the rooms
/// that had it answer `duplicate`) while a room's result is a retryable failure, until
/// every room's result is `ok`. Returns the reply data of the first publish whose
/// every result was ok.
async fn publish_rooms_until_all_ok(client: &mut Client, frame: Value) -> Value {
    let started = Instant::now();
    loop {
        let (data, _) = client.ok_retry(frame.clone()).await;
        let results = data["results"].as_array().expect("results").clone();
        if results.iter().all(|r| r["ok"] == true) {
            return data;
        }
        for failed in results.iter().filter(|r| r["ok"] != true) {
            let code = failed["error"]["code"].as_str().unwrap_or_default();
            assert!(
                ["unavailable", "internal"].contains(&code),
                "a room refused for good: {data}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "rooms still failing after 30 s: {data}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn except_sender_and_several_rooms_across_nodes() {
    let cluster = Cluster::start("broadcast", 3).await;
    let all = ["a", "b", "c"];
    let one = "bcast-one";
    let leader_one = owner_of(one, &all);
    // The sender's node leads neither room: its publishes are ordered elsewhere.
    let sender_node = all
        .iter()
        .find(|n| **n != leader_one)
        .expect("a node that does not lead")
        .to_string();
    let two = find_room("bcast-two", |r| owner_of(r, &all) != sender_node);
    let other_tab_node = leader_one.clone();
    let bob_node = all
        .iter()
        .find(|n| **n != sender_node && **n != other_tab_node)
        .expect("a third node")
        .to_string();

    let mut tab1 = cluster.connect(&sender_node, "alice").await;
    let mut tab2 = cluster.connect(&other_tab_node, "alice").await;
    let mut bob = cluster.connect(&bob_node, "bob").await;
    for client in [&mut tab1, &mut tab2, &mut bob] {
        client.join_retry(one).await;
        client.join_retry(&two).await;
    }
    // Both rooms' shards have a leader and the rooms run on every node: a publish to
    // both then meets no election (a retry after a partial failure would give the
    // rooms different ids, and the test wants one).
    bob.publish_retry(&two, "warm up").await;

    // except_sender, from a node that does not lead the room's shard.
    let (ack, _) = tab1
        .ok_retry(json!({"type": "publish", "room": one, "content": "not to me", "except_sender": true, "idempotency_key": "bcast-1"}))
        .await;
    let seq = ack["seq"].as_u64().expect("a seq");
    let id = ack["id"].as_str().expect("an id").to_owned();
    for client in [&mut tab2, &mut bob] {
        let m = client
            .expect(
                |f| is_message(f, one) && f["seq"] == seq,
                "the message on another node",
            )
            .await;
        assert_eq!(m["id"], id.as_str(), "{m}");
        assert_eq!(m["content"], "not to me");
    }
    let (marker, _) = bob
        .ok_retry(json!({"type": "publish", "room": one, "content": "marker", "idempotency_key": "bcast-2"}))
        .await;
    let next = tab1
        .expect(|f| is_message(f, one), "the next message of room one")
        .await;
    assert_eq!(
        next["seq"], marker["seq"],
        "the sender got its own message: {next}"
    );
    let history = tab1.full_history(one).await;
    assert!(
        history.iter().any(|m| m["id"] == id.as_str()),
        "it is in history on the sender's node: {history:?}"
    );

    // One publish to both rooms from bob's node: one id, each room its own seq.
    let data = publish_rooms_until_all_ok(
        &mut bob,
        json!({"type": "publish", "rooms": [one, two], "content": "both", "idempotency_key": "bcast-3"}),
    )
    .await;
    let id = data["id"].as_str().expect("one id").to_owned();
    let results = data["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{data}");
    let seqs: Vec<u64> = results
        .iter()
        .map(|r| {
            assert_eq!(r["id"], id.as_str(), "{data}");
            r["seq"].as_u64().expect("seq")
        })
        .collect();
    for client in [&mut tab1, &mut tab2, &mut bob] {
        for (room, seq) in [(one, seqs[0]), (two.as_str(), seqs[1])] {
            let m = client
                .expect(
                    |f| is_message(f, room) && f["content"] == "both",
                    "the message of both rooms",
                )
                .await;
            assert_eq!(
                (m["id"].as_str(), m["seq"].as_u64()),
                (Some(id.as_str()), Some(seq))
            );
        }
    }

    // Both at once, from the sender's node: tab2 and bob get it in each room, tab1
    // in neither.
    let data = publish_rooms_until_all_ok(
        &mut tab1,
        json!({"type": "publish", "rooms": [one, two], "content": "quietly", "except_sender": true, "idempotency_key": "bcast-4"}),
    )
    .await;
    let id = data["id"].as_str().expect("one id").to_owned();
    for client in [&mut tab2, &mut bob] {
        for room in [one, two.as_str()] {
            let m = client
                .expect(
                    |f| is_message(f, room) && f["content"] == "quietly",
                    "the quiet message",
                )
                .await;
            assert_eq!(m["id"], id.as_str());
        }
    }
    let (marker, _) = bob
        .ok_retry(json!({"type": "publish", "room": two, "content": "marker 2", "idempotency_key": "bcast-5"}))
        .await;
    tab1.expect(
        |f| is_message(f, &two) && f["seq"] == marker["seq"],
        "bob's second marker",
    )
    .await;
    tab1.barrier(one).await;
    assert!(
        tab1.seen(|f| f["content"] == "quietly").is_empty(),
        "the sender got its own message"
    );
}
