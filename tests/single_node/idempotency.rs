//! *(v1 addition)* `publish` with an `idempotency_key`: a retry is answered with the
//! original message and publishes nothing (docs/protocol.md, `publish`).

use crate::support::TestNode;
use serde_json::{json, Value};

fn contents(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["content"].as_str().expect("content"))
        .collect()
}

#[tokio::test]
async fn a_retried_publish_answers_the_original_and_publishes_once() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "Alice").await;
    let mut bob = node.connect("bob", "Bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;

    let keyed = json!({"type": "publish", "room": "lobby", "content": "hello", "idempotency_key": "alice-0001"});
    let first = alice.ok(keyed.clone()).await;
    assert_eq!(first["seq"], 1, "{first}");
    assert!(
        first.get("duplicate").is_none(),
        "a first publish has no `duplicate`: {first}"
    );
    let retry = alice.ok(keyed).await;
    assert_eq!(retry["id"], first["id"], "{retry}");
    assert_eq!(retry["seq"], first["seq"], "{retry}");
    assert_eq!(retry["ts"], first["ts"], "{retry}");
    assert_eq!(retry["duplicate"], true, "{retry}");

    // The retry took no seq: the next message is the second.
    let next = alice.publish("lobby", "after").await;
    assert_eq!(next["seq"], 2, "{next}");

    // Every member, the publisher included, got each message once.
    for client in [&mut alice, &mut bob] {
        client.barrier("lobby").await;
        let frames = client.take_seen(|f| f["type"] == "message");
        assert_eq!(contents(&frames), vec!["hello", "after"], "{frames:?}");
        assert_eq!(frames[0]["id"], first["id"]);
    }
    let history = bob.full_history("lobby").await;
    assert_eq!(contents(&history), vec!["hello", "after"], "{history:?}");
}

#[tokio::test]
async fn an_idempotency_key_is_per_room() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    alice.join("other").await;
    let in_lobby = alice
        .ok(json!({"type": "publish", "room": "lobby", "content": "a", "idempotency_key": "k"}))
        .await;
    let in_other = alice
        .ok(json!({"type": "publish", "room": "other", "content": "b", "idempotency_key": "k"}))
        .await;
    assert!(in_other.get("duplicate").is_none(), "{in_other}");
    assert_ne!(in_other["id"], in_lobby["id"]);
    assert_eq!(in_other["seq"], 1);
    let history = alice.full_history("other").await;
    assert_eq!(contents(&history), vec!["b"]);
}

#[tokio::test]
async fn a_bad_idempotency_key_publishes_nothing() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    let reply = alice
        .request(json!({"type": "publish", "room": "lobby", "content": "x", "idempotency_key": "k".repeat(129)}))
        .await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "bad_request", "{reply}");
    assert!(alice.full_history("lobby").await.is_empty());
    // The connection stays usable.
    let ack = alice.publish("lobby", "fine").await;
    assert_eq!(ack["seq"], 1);
}
