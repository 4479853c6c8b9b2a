//! *(v1 addition)* `publish` with structured `data`: delivered as sent in `message`
//! frames, kept in history (join and history replies), counted with the content
//! against the byte bound, and seen by room behaviours (docs/protocol.md, `publish`).

use crate::support::{test_settings, TestNode};
use hubbub::protocol::{MessageData, RoomName, UserInfo};
use hubbub::{Behaviours, Rejection, RoomBehaviour};
use serde_json::{json, Value};

#[tokio::test]
async fn data_is_delivered_and_kept_as_sent() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "Alice").await;
    let mut bob = node.connect("bob", "Bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;

    let poll = json!({"kind": "poll", "question": "lunch?", "options": ["ramen", "tacos"], "votes": {"ramen": 2}, "open": true, "weight": 0.5, "nothing": null});
    let first = alice
        .ok(json!({"type": "publish", "room": "lobby", "content": "vote!", "data": poll}))
        .await;
    assert_eq!(first["seq"], 1, "{first}");
    // Only data: the message's content is "".
    alice
        .ok(json!({"type": "publish", "room": "lobby", "data": [1, "two", [3]]}))
        .await;
    alice.publish("lobby", "plain").await;

    let got = bob.expect_type("message").await;
    assert_eq!(got["content"], "vote!");
    assert_eq!(got["data"], poll, "{got}");
    let got = bob.expect_type("message").await;
    assert_eq!(got["content"], "", "{got}");
    assert_eq!(got["data"], json!([1, "two", [3]]));
    let got = bob.expect_type("message").await;
    assert!(got.get("data").is_none(), "no data, no field: {got}");

    let history = bob.full_history("lobby").await;
    let datas: Vec<Value> = history.iter().map(|m| m["data"].clone()).collect();
    assert_eq!(
        datas,
        vec![poll.clone(), json!([1, "two", [3]]), Value::Null]
    );

    let mut carol = node.connect("carol", "Carol").await;
    let joined = carol.join("lobby").await;
    assert_eq!(joined["history"][0]["data"], poll, "{joined}");
}

#[tokio::test]
async fn data_counts_against_the_byte_bound_with_the_content() {
    let node = TestNode::start_adjusted(|s| s.limits.max_message_bytes = 40).await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    // `"` + 28 x + `"` is 30 bytes of JSON, and "0123456789" 10 more: 40 in all.
    let fits = "x".repeat(28);
    alice
        .ok(json!({"type": "publish", "room": "lobby", "content": "0123456789", "data": fits}))
        .await;
    let over = "x".repeat(29);
    let code = alice
        .refused(json!({"type": "publish", "room": "lobby", "content": "0123456789", "data": over}))
        .await;
    assert_eq!(code, "too_long");
    let code = alice
        .refused(json!({"type": "publish", "room": "lobby", "data": {"k": "y".repeat(40)}}))
        .await;
    assert_eq!(code, "too_long");
    // Neither content nor data; and a content given beside data keeps the content rules.
    let code = alice
        .refused(json!({"type": "publish", "room": "lobby", "data": null}))
        .await;
    assert_eq!(code, "bad_request");
    let code = alice
        .refused(json!({"type": "publish", "room": "lobby", "content": "  ", "data": 1}))
        .await;
    assert_eq!(code, "bad_request");
    let history = alice.full_history("lobby").await;
    assert_eq!(
        history.len(),
        1,
        "only the first was published: {history:?}"
    );
}

/// Refuses a publish whose data has `"spam": true`; keeps a note of the data seen.
struct NoSpam;

impl RoomBehaviour for NoSpam {
    fn on_publish_with_data(
        &self,
        _room: &RoomName,
        _from: &UserInfo,
        content: String,
        data: Option<&MessageData>,
    ) -> Result<String, Rejection> {
        if data.is_some_and(|d| d.to_value()["spam"] == json!(true)) {
            return Err(Rejection::forbidden("no spam"));
        }
        Ok(content.to_uppercase())
    }
}

#[tokio::test]
async fn a_behaviour_sees_the_data() {
    let behaviours = Behaviours::new().with("guarded:*", NoSpam).unwrap();
    let node = TestNode::start_with(test_settings(), behaviours).await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("guarded:1").await;
    let code = alice
        .refused(json!({"type": "publish", "room": "guarded:1", "content": "buy", "data": {"spam": true}}))
        .await;
    assert_eq!(code, "forbidden");
    alice
        .ok(json!({"type": "publish", "room": "guarded:1", "content": "hi", "data": {"spam": false}}))
        .await;
    let history = alice.full_history("guarded:1").await;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["content"], "HI");
    assert_eq!(
        history[0]["data"],
        json!({"spam": false}),
        "data kept as sent"
    );
}
