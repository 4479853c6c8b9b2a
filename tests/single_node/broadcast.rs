//! *(v1 addition)* Broadcast variants of `publish` (docs/protocol.md, `publish`):
//! `except_sender` (every connection but the sender's gets the `message` frame) and
//! `rooms` (one message to several rooms: one `id`, each room its own `seq`, a result
//! per room).

use crate::support::{test_settings, Client, TestNode};
use hubbub::protocol::{RoomName, UserInfo};
use hubbub::{Behaviours, Rejection, RoomBehaviour};
use serde_json::{json, Value};

fn is_message(frame: &Value, room: &str, content: &str) -> bool {
    frame["type"] == "message" && frame["room"] == room && frame["content"] == content
}

/// The sender's connection is answered (id, seq) but gets no `message` frame; the
/// same user's other connection and other users do. History and joins still have it.
#[tokio::test]
async fn except_sender_skips_only_the_sending_connection() {
    let node = TestNode::start().await;
    let mut tab1 = node.connect("alice", "Alice").await;
    let mut tab2 = node.connect("alice", "Alice").await;
    let mut bob = node.connect("bob", "Bob").await;
    for client in [&mut tab1, &mut tab2, &mut bob] {
        client.join("lobby").await;
    }

    let ack = tab1
        .ok(json!({"type": "publish", "room": "lobby", "content": "not to me", "except_sender": true}))
        .await;
    assert_eq!(ack["seq"], 1, "{ack}");
    let id = ack["id"].as_str().expect("an id").to_owned();
    for client in [&mut tab2, &mut bob] {
        let m = client
            .expect(|f| is_message(f, "lobby", "not to me"), "the message")
            .await;
        assert_eq!(m["id"], id.as_str());
        assert_eq!(m["seq"], 1);
    }
    // The room sends a message frame before it answers its publish: the next message
    // frame tab1 sees is bob's (seq 2), not its own.
    bob.publish("lobby", "to everyone").await;
    let next = tab1.expect_type("message").await;
    assert_eq!(next["seq"], 2, "tab1 got its own message: {next}");
    assert!(tab1.seen(|f| f["type"] == "message").is_empty());

    // It is in history, and a connection resuming with `since` gets it.
    let history = tab1.full_history("lobby").await;
    assert_eq!(history[0]["id"], id.as_str(), "{history:?}");
    let mut tab3 = node.connect("alice", "Alice").await;
    let resumed = tab3
        .ok(json!({"type": "join", "room": "lobby", "since": 0}))
        .await;
    assert_eq!(resumed["history"][0]["id"], id.as_str(), "{resumed}");

    // Without the flag (or with false) the sender gets its message as before.
    tab1.ok(
        json!({"type": "publish", "room": "lobby", "content": "mine too", "except_sender": false}),
    )
    .await;
    tab1.expect(|f| is_message(f, "lobby", "mine too"), "own message")
        .await;
}

/// Refuses every publish in the rooms it runs in.
struct Closed;

impl RoomBehaviour for Closed {
    fn on_publish(
        &self,
        _room: &RoomName,
        _from: &UserInfo,
        _content: String,
    ) -> Result<String, Rejection> {
        Err(Rejection::forbidden("this room is read-only"))
    }
}

async fn seq_of(client: &mut Client, room: &str) -> u64 {
    let history = client.full_history(room).await;
    history
        .last()
        .map_or(0, |m| m["seq"].as_u64().expect("seq"))
}

/// One publish to several rooms: one id everywhere, each room's own seq, a result per
/// room in the order named (a repeat counts once); a room's refusal is that room's
/// result and the others are published.
#[tokio::test]
async fn one_publish_to_several_rooms_has_one_id_and_a_seq_per_room() {
    let behaviours = Behaviours::new().with("closed:*", Closed).unwrap();
    let node = TestNode::start_with(test_settings(), behaviours).await;
    let mut alice = node.connect("alice", "Alice").await;
    let mut bob = node.connect("bob", "Bob").await;
    for room in ["a", "b", "closed:1"] {
        alice.join(room).await;
    }
    bob.join("a").await;
    bob.join("b").await;
    // "b" is ahead by two messages, so the seqs differ.
    alice.publish("b", "one").await;
    alice.publish("b", "two").await;

    let data = alice
        .ok(json!({"type": "publish", "rooms": ["a", "b", "a", "closed:1"], "content": "everywhere", "data": {"k": 1}}))
        .await;
    let id = data["id"].as_str().expect("one id").to_owned();
    let results = data["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "{data}");
    assert_eq!(
        results[0],
        json!({"room": "a", "ok": true, "id": id, "seq": 1, "ts": results[0]["ts"]})
    );
    assert_eq!(
        results[1],
        json!({"room": "b", "ok": true, "id": id, "seq": 3, "ts": results[1]["ts"]})
    );
    assert_eq!(results[2]["room"], "closed:1");
    assert_eq!(results[2]["ok"], false);
    assert_eq!(results[2]["error"]["code"], "forbidden", "{data}");

    for (room, seq) in [("a", 1), ("b", 3)] {
        for client in [&mut alice, &mut bob] {
            let m = client
                .expect(|f| is_message(f, room, "everywhere"), room)
                .await;
            assert_eq!(m["id"], id.as_str());
            assert_eq!(m["seq"], seq);
            assert_eq!(m["data"], json!({"k": 1}));
        }
    }
    assert_eq!(seq_of(&mut alice, "closed:1").await, 0);

    // With except_sender too: bob gets both, alice neither.
    let data = alice
        .ok(json!({"type": "publish", "rooms": ["a", "b"], "content": "quietly", "except_sender": true}))
        .await;
    let id = data["id"].as_str().expect("one id").to_owned();
    for (room, seq) in [("a", 2), ("b", 4)] {
        let m = bob.expect(|f| is_message(f, room, "quietly"), room).await;
        assert_eq!(
            (m["id"].as_str(), m["seq"].as_u64()),
            (Some(id.as_str()), Some(seq))
        );
    }
    bob.publish("a", "marker").await;
    alice
        .expect(|f| is_message(f, "a", "marker"), "bob's marker")
        .await;
    assert!(
        alice.seen(|f| f["content"] == "quietly").is_empty(),
        "the sender got its own message"
    );
}

/// Checks before anything is published refuse the whole request: a room not joined,
/// the content rules; nothing is published in any room.
#[tokio::test]
async fn a_room_not_joined_refuses_the_whole_publish() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("a").await;
    let code = alice
        .refused(json!({"type": "publish", "rooms": ["a", "elsewhere"], "content": "x"}))
        .await;
    assert_eq!(code, "not_joined");
    let code = alice
        .refused(json!({"type": "publish", "rooms": ["a"], "content": "  "}))
        .await;
    assert_eq!(code, "bad_request");
    assert_eq!(seq_of(&mut alice, "a").await, 0, "nothing was published");
}

/// Each room is one message against the user's rate: all are taken, or none.
#[tokio::test]
async fn a_publish_to_several_rooms_counts_one_message_per_room() {
    let node = TestNode::start_adjusted(|s| {
        s.rate_limit.messages_per_minute = 60;
        s.rate_limit.burst = 5;
    })
    .await;
    let mut alice = node.connect("alice", "Alice").await;
    for room in ["a", "b", "c"] {
        alice.join(room).await;
    }
    alice
        .ok(json!({"type": "publish", "rooms": ["a", "b", "c"], "content": "1"}))
        .await;
    let reply = alice
        .request(json!({"type": "publish", "rooms": ["a", "b", "c"], "content": "2"}))
        .await;
    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
    assert!(reply["error"]["retry_after_ms"].as_u64().is_some());
    for room in ["a", "b", "c"] {
        assert_eq!(seq_of(&mut alice, room).await, 1, "{room}");
    }
}

/// Publishes to several rooms sent back to back, more messages than a session keeps
/// in flight (64; each room counts one): every one is answered, in the order sent,
/// and each room's seqs follow that order.
#[tokio::test]
async fn many_publishes_to_several_rooms_in_flight_are_all_answered_in_order() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "Alice").await;
    let rooms: Vec<String> = (0..16).map(|i| format!("many-{i}")).collect();
    for room in &rooms {
        alice.join(room).await;
    }
    let mut refs = Vec::new();
    for i in 0..8 {
        let frame = json!({"type": "publish", "rooms": rooms, "content": format!("m{i}")});
        refs.push(alice.send_request(frame).await);
    }
    for (i, reference) in refs.iter().enumerate() {
        let reply = alice.reply_to(reference).await;
        assert_eq!(reply["ok"], true, "{reply}");
        let results = reply["data"]["results"].as_array().expect("results");
        assert_eq!(results.len(), 16);
        for result in results {
            assert_eq!(result["ok"], true, "{result}");
            assert_eq!(result["seq"], i as u64 + 1, "{reply}");
        }
    }
}
