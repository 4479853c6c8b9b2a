//! Chat between clients: publish, history, resume with `since`, presence, typing,
//! direct messages and renames.

use crate::support::{Client, TestNode};
use serde_json::json;

fn seqs(messages: &serde_json::Value) -> Vec<u64> {
    messages
        .as_array()
        .expect("an array of messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

#[tokio::test]
async fn a_message_reaches_every_member_including_the_sender_in_order() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "Alice").await;
    let mut bob = node.connect("bob", "Bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;

    for i in 1..=5 {
        let ack = alice.publish("lobby", &format!("hello {i}")).await;
        assert_eq!(ack["seq"], i);
        assert!(ack["id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    for client in [&mut alice, &mut bob] {
        for i in 1..=5u64 {
            let m = client.expect_type("message").await;
            assert_eq!(m["seq"], i);
            assert_eq!(m["content"], format!("hello {i}"));
            assert_eq!(m["room"], "lobby");
            assert_eq!(m["from"], json!({"id": "alice", "name": "Alice"}));
            assert!(m["ts"].as_u64().unwrap() > 1_700_000_000_000);
        }
    }
}

#[tokio::test]
async fn a_room_only_reaches_its_members() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "Alice").await;
    let mut carol = node.connect("carol", "Carol").await;
    alice.join("lobby").await;
    carol.join("elsewhere").await;
    alice.publish("lobby", "for lobby only").await;
    carol.publish("elsewhere", "marker").await;
    let m = carol.expect_type("message").await;
    assert_eq!(
        m["content"], "marker",
        "carol saw a message of a room she is not in"
    );
}

#[tokio::test]
async fn join_returns_history_and_members() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    for i in 1..=3 {
        alice.publish("lobby", &format!("m{i}")).await;
    }
    let mut bob = node.connect("bob", "Bob").await;
    let data = bob.join("lobby").await;
    assert_eq!(data["room"], "lobby");
    assert_eq!(data["seq"], 3);
    assert_eq!(seqs(&data["history"]), vec![1, 2, 3]);
    assert_eq!(data["gap"], false);
    assert_eq!(
        data["members"],
        json!([
            {"id": "alice", "name": "Alice", "connections": 1},
            {"id": "bob", "name": "Bob", "connections": 1}
        ])
    );
}

#[tokio::test]
async fn history_pages_backwards_oldest_first() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    for i in 1..=10 {
        alice.publish("lobby", &format!("m{i}")).await;
    }
    let page = alice
        .ok(json!({"type": "history", "room": "lobby", "limit": 3}))
        .await;
    assert_eq!(seqs(&page["messages"]), vec![8, 9, 10]);
    let page = alice
        .ok(json!({"type": "history", "room": "lobby", "before": 8, "limit": 3}))
        .await;
    assert_eq!(seqs(&page["messages"]), vec![5, 6, 7]);
    let page = alice
        .ok(json!({"type": "history", "room": "lobby", "before": 3}))
        .await;
    assert_eq!(seqs(&page["messages"]), vec![1, 2]);
}

#[tokio::test]
async fn resume_with_since_gets_exactly_what_was_missed() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    for i in 1..=3 {
        alice.publish("lobby", &format!("m{i}")).await;
    }
    let mut bob = node.connect("bob", "Bob").await;
    bob.join("lobby").await;
    bob.vanish();
    for i in 4..=6 {
        alice.publish("lobby", &format!("m{i}")).await;
    }
    let mut bob = node.connect("bob", "Bob").await;
    let data = bob
        .ok(json!({"type": "join", "room": "lobby", "since": 3}))
        .await;
    assert_eq!(seqs(&data["history"]), vec![4, 5, 6]);
    assert_eq!(data["gap"], false);
    assert_eq!(data["seq"], 6);

    // Up to date: nothing to resend.
    let again = bob
        .ok(json!({"type": "join", "room": "lobby", "since": 6}))
        .await;
    assert_eq!(seqs(&again["history"]), Vec::<u64>::new());
    assert_eq!(again["gap"], false);
}

#[tokio::test]
async fn resume_past_the_history_ring_reports_a_gap() {
    let node = TestNode::start_adjusted(|s| s.rooms.history = 5).await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    for i in 1..=12 {
        alice.publish("lobby", &format!("m{i}")).await;
    }
    let mut bob = node.connect("bob", "Bob").await;
    let data = bob
        .ok(json!({"type": "join", "room": "lobby", "since": 2}))
        .await;
    assert_eq!(data["gap"], true);
    assert_eq!(seqs(&data["history"]), vec![8, 9, 10, 11, 12]);

    // The oldest held message directly follows `since`: no gap.
    let data = bob
        .ok(json!({"type": "join", "room": "lobby", "since": 7}))
        .await;
    assert_eq!(data["gap"], false);
    assert_eq!(seqs(&data["history"]), vec![8, 9, 10, 11, 12]);
}

#[tokio::test]
async fn presence_follows_joins_leaves_and_vanishing_clients() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;

    let mut bob = node.connect("bob", "Bob").await;
    bob.join("lobby").await;
    let diff = alice.expect_type("presence_diff").await;
    assert_eq!(
        diff["joins"],
        json!([{"id": "bob", "name": "Bob", "connections": 1}])
    );
    assert_eq!(diff["leaves"], json!([]));

    bob.ok(json!({"type": "leave", "room": "lobby"})).await;
    let diff = alice.expect_type("presence_diff").await;
    assert_eq!(diff["leaves"][0]["id"], "bob");

    // A client that disappears without a close frame leaves too.
    let mut carol = node.connect("carol", "Carol").await;
    carol.join("lobby").await;
    alice
        .expect(
            |f| f["type"] == "presence_diff" && f["joins"][0]["id"] == "carol",
            "carol joins",
        )
        .await;
    carol.vanish();
    let diff = alice
        .expect(
            |f| f["type"] == "presence_diff" && f["leaves"][0]["id"] == "carol",
            "carol leaves",
        )
        .await;
    assert_eq!(diff["room"], "lobby");
    let members = alice.ok(json!({"type": "presence", "room": "lobby"})).await;
    assert_eq!(
        members["members"],
        json!([{"id": "alice", "name": "Alice", "connections": 1}])
    );
}

#[tokio::test]
async fn two_connections_of_one_user_are_one_member() {
    let node = TestNode::start().await;
    let mut watcher = node.connect("watcher", "Watcher").await;
    watcher.join("lobby").await;

    let mut tab1 = node.connect("dana", "Dana").await;
    let mut tab2 = node.connect("dana", "Dana").await;
    tab1.join("lobby").await;
    watcher.expect_type("presence_diff").await;
    let data = tab2.join("lobby").await;
    // The second tab is no join, but the others hear of the new count (v1 addition).
    let diff = watcher
        .expect(
            |f| f["type"] == "presence_diff" && f["updates"][0]["id"] == "dana",
            "dana's count going up",
        )
        .await;
    assert_eq!(diff["updates"][0]["connections"], 2, "{diff}");
    assert_eq!(diff["joins"], json!([]), "{diff}");
    let dana = data["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "dana")
        .cloned()
        .unwrap();
    assert_eq!(dana["connections"], 2);

    // Closing one tab is not a leave, but the count goes down (v1 addition: `updates`);
    // closing the last one is a leave.
    tab1.close().await;
    let diff = watcher
        .expect(
            |f| f["type"] == "presence_diff" && f["updates"][0]["id"] == "dana",
            "dana's count going down",
        )
        .await;
    assert_eq!(diff["updates"][0]["connections"], 1, "{diff}");
    assert_eq!(diff["leaves"], json!([]), "{diff}");
    // Presence learns of the closed tab through its monitor; poll until it has.
    let deadline = tokio::time::Instant::now() + crate::support::DEADLINE;
    let members = loop {
        let data = watcher
            .ok(json!({"type": "presence", "room": "lobby"}))
            .await;
        let dana = data["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == "dana")
            .cloned();
        if dana.is_some_and(|d| d["connections"] == 1) {
            break data;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dana never went down to one connection"
        );
        tokio::task::yield_now().await;
    };
    assert_eq!(members["members"].as_array().unwrap().len(), 2);
    assert!(watcher.seen(|f| f["type"] == "presence_diff").is_empty());
    tab2.vanish();
    let diff = watcher.expect_type("presence_diff").await;
    assert_eq!(diff["leaves"][0]["id"], "dana");

    // Both tabs of a user receive messages.
    let mut t1 = node.connect("erin", "Erin").await;
    let mut t2 = node.connect("erin", "Erin").await;
    t1.join("lobby").await;
    t2.join("lobby").await;
    watcher.publish("lobby", "to both tabs").await;
    assert_eq!(t1.expect_type("message").await["content"], "to both tabs");
    assert_eq!(t2.expect_type("message").await["content"], "to both tabs");
}

#[tokio::test]
async fn typing_reaches_the_others_only() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "Alice").await;
    let mut alice_tab = node.connect("alice", "Alice").await;
    let mut bob = node.connect("bob", "Bob").await;
    for c in [&mut alice, &mut alice_tab, &mut bob] {
        c.join("lobby").await;
    }
    alice.send(json!({"type": "typing", "room": "lobby"})).await;
    let typing = bob.expect_type("typing").await;
    assert_eq!(
        typing,
        json!({"type": "typing", "room": "lobby", "user": {"id": "alice", "name": "Alice"}})
    );
    alice.barrier("lobby").await;
    alice_tab.barrier("lobby").await;
    assert!(alice.seen(|f| f["type"] == "typing").is_empty());
    assert!(alice_tab.seen(|f| f["type"] == "typing").is_empty());
}

#[tokio::test]
async fn direct_messages_reach_every_connection_of_the_target() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "Alice").await;
    let mut bob1 = node.connect("bob", "Bob").await;
    let mut bob2 = node.connect("bob", "Bob").await;
    let ack = alice
        .ok(json!({"type": "direct", "to": "bob", "content": "psst"}))
        .await;
    assert_eq!(ack["delivered"], 2);
    for bob in [&mut bob1, &mut bob2] {
        let d = bob.expect_type("direct").await;
        assert_eq!(d["content"], "psst");
        assert_eq!(d["from"], json!({"id": "alice", "name": "Alice"}));
        assert_eq!(d["id"], ack["id"]);
        assert_eq!(d["ts"], ack["ts"]);
    }
    let code = alice
        .refused(json!({"type": "direct", "to": "nobody", "content": "hello?"}))
        .await;
    assert_eq!(code, "user_offline");
}

#[tokio::test]
async fn rename_is_announced_in_the_users_rooms_once() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "Alice").await;
    let mut alice_tab = node.connect("alice", "Alice").await;
    let mut bob = node.connect("bob", "Bob").await;
    for c in [&mut alice, &mut alice_tab, &mut bob] {
        c.join("lobby").await;
    }
    let data = alice.ok(json!({"type": "rename", "name": "Alicia"})).await;
    assert_eq!(data["user"], json!({"id": "alice", "name": "Alicia"}));
    let renamed = bob.expect_type("renamed").await;
    assert_eq!(
        renamed,
        json!({"type": "renamed", "room": "lobby", "user": {"id": "alice", "name": "Alicia"}, "old_name": "Alice"})
    );
    bob.barrier("lobby").await;
    assert!(
        bob.seen(|f| f["type"] == "renamed").is_empty(),
        "announced twice"
    );
    // The other tab speaks under the new name too.
    alice_tab.publish("lobby", "still me").await;
    let m = bob.expect_type("message").await;
    assert_eq!(m["from"]["name"], "Alicia");
}

#[tokio::test]
async fn ping_gets_pong_and_health_endpoints_answer() {
    let node = TestNode::start().await;
    let mut c = node.connect("alice", "Alice").await;
    assert_eq!(c.welcome["protocol"], 1);
    assert_eq!(c.welcome["node"], "test-node");
    c.send(json!({"type": "ping", "ref": 7})).await;
    assert_eq!(
        c.expect_type("pong").await,
        json!({"type": "pong", "ref": 7})
    );
    let (status, body) = node.get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = node.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = node.get("/").await;
    assert_eq!(status, 200);
    assert!(body.contains("<html"));
    assert!(
        body.contains("from '/hubbub.js'"),
        "the page imports the library"
    );
    // The client library, served as the file in clients/js.
    let (status, body) = node.get("/hubbub.js").await;
    assert_eq!(status, 200);
    assert_eq!(body, include_str!("../../clients/js/hubbub.js"));
}

#[tokio::test]
async fn a_guest_gets_a_generated_id() {
    let node = TestNode::start().await;
    let guest = Client::connect(&node, "").await;
    let id = guest.user_id();
    assert!(id.starts_with("guest-"), "{id}");
}

#[tokio::test]
async fn shutdown_says_goodbye_then_closes_with_1012() {
    let mut node = TestNode::start().await;
    let mut a = node.connect("a", "A").await;
    let mut b = node.connect("b", "B").await;
    a.join("lobby").await;
    b.join("lobby").await;
    let addr = node.addr;
    let stopping = tokio::spawn(async move { node.shut_down().await });
    for client in [&mut a, &mut b] {
        let code = client.expect_close().await;
        let goodbye = client.expect_type("goodbye").await;
        assert_eq!(goodbye["reason"], "shutdown");
        assert!(goodbye["reconnect_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms < 2_000));
        assert_eq!(code, Some(1012));
    }
    stopping.await.unwrap().expect("a clean stop");
    // Stopped means stopped: nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_connection_without_a_name_takes_the_users_current_name() {
    let node = TestNode::start().await;
    let mut first = node.connect("alice", "Alice").await;
    first.join("lobby").await;
    let second = Client::connect(&node, "user=alice").await;
    assert_eq!(
        second.welcome["user"],
        json!({"id": "alice", "name": "Alice"})
    );
    first.barrier("lobby").await;
    assert!(
        first.seen(|f| f["type"] == "renamed").is_empty(),
        "a nameless tab renamed the user"
    );
}
