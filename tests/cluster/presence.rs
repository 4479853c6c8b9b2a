//! Presence and direct messages across nodes: a user with connections on two nodes is
//! one member, announced once; a direct message reaches all its connections.

use crate::support::{is_diff, Client, Cluster, DEADLINE};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Instant;

const ROOM: &str = "plaza";

/// Polls `client`'s presence in [`ROOM`] until `user` has `connections` (0: absent);
/// returns the member list then.
async fn wait_for_count(
    client: &mut Client,
    user: &str,
    connections: u64,
) -> BTreeMap<String, u64> {
    let started = Instant::now();
    loop {
        let members = client.presence(ROOM).await;
        if members.get(user).copied().unwrap_or(0) == connections {
            return members;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "node {} never showed {user} with {connections} connections: {members:?}",
            client.welcome["node"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn presence_and_direct_messages_span_nodes() {
    let cluster = Cluster::start("presence", 3).await;
    // A watcher on c and an observer on a are in the room before u arrives.
    let mut watcher = cluster.connect("c", "w").await;
    watcher.join_retry(ROOM).await;
    let mut observer = cluster.connect("a", "x").await;
    observer.join_retry(ROOM).await;

    // u connects once on a and once on b.
    let mut u_on_a = cluster.connect("a", "u").await;
    u_on_a.join_retry(ROOM).await;
    let mut u_on_b = cluster.connect("b", "u").await;
    let joined = u_on_b.join_retry(ROOM).await;
    assert!(
        joined["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["id"] == "u")),
        "u's second join reply lists u: {joined}"
    );

    // Every node: u is one member with two connections.
    let expected: BTreeMap<String, u64> = [("u", 2), ("w", 1), ("x", 1)]
        .into_iter()
        .map(|(id, n)| (id.to_owned(), n))
        .collect();
    for client in [&mut observer, &mut u_on_b, &mut watcher] {
        let members = wait_for_count(client, "u", 2).await;
        assert_eq!(members, expected, "on node {}", client.welcome["node"]);
    }
    // The watcher's presence reply came after every presence_diff its node had for it.
    let joins = watcher.seen(|f| is_diff(f, ROOM, "joins", "u"));
    assert_eq!(
        joins.len(),
        1,
        "w must see u join once, not per connection: {joins:?}"
    );
    let join_entry = joins[0]["joins"]
        .as_array()
        .and_then(|list| list.iter().find(|m| m["id"] == "u"))
        .cloned()
        .expect("u in joins");
    eprintln!("[presence] the watcher's join diff for u: {join_entry}");

    // A direct message from c reaches u on a and on b.
    let sent = watcher
        .ok(json!({"type": "direct", "to": "u", "content": "psst"}))
        .await;
    assert_eq!(sent["delivered"], 2, "direct to u: {sent}");
    for client in [&mut u_on_a, &mut u_on_b] {
        let direct = client.expect_type("direct").await;
        assert_eq!(direct["content"], "psst");
        assert_eq!(direct["from"]["id"], "w");
        assert_eq!(direct["id"], sent["id"]);
    }
    let offline = watcher
        .refused(json!({"type": "direct", "to": "nobody-here", "content": "hello?"}))
        .await;
    assert_eq!(offline, "user_offline");

    // Typing on c reaches the other users on every node, not the typist.
    watcher.send(json!({"type": "typing", "room": ROOM})).await;
    for client in [&mut u_on_a, &mut u_on_b, &mut observer] {
        let typing = client.expect_type("typing").await;
        assert_eq!(typing["user"]["id"], "w");
    }

    // u renames itself on a: one renamed frame per connection in the room, wherever
    // it is, and the new name in every node's member list.
    let renamed = u_on_a
        .ok(json!({"type": "rename", "name": "You Two"}))
        .await;
    assert_eq!(renamed["user"]["name"], "You Two");
    for client in [&mut observer, &mut u_on_b, &mut watcher] {
        let started = Instant::now();
        loop {
            let data = client.ok(json!({"type": "presence", "room": ROOM})).await;
            let name = data["members"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["id"] == "u"))
                .map(|m| m["name"].clone());
            if name == Some(json!("You Two")) {
                break;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "node {} still shows {name:?}",
                client.welcome["node"]
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    // A message through the room afterwards, so a second renamed frame would be here.
    watcher.publish_retry(ROOM, "nice name").await;
    for client in [&mut u_on_a, &mut u_on_b, &mut observer, &mut watcher] {
        client
            .expect(
                |f| f["type"] == "message" && f["content"] == "nice name",
                "the message",
            )
            .await;
        let renamed = client.seen(|f| f["type"] == "renamed" && f["room"] == ROOM);
        assert_eq!(
            renamed.len(),
            1,
            "one renamed frame on {}: {renamed:?}",
            client.welcome["node"]
        );
        assert_eq!(renamed[0]["user"]["name"], "You Two");
        assert_eq!(renamed[0]["old_name"], "u");
    }

    // u closes its connection on a: one connection left, everywhere, and no leave.
    u_on_a.close().await;
    for client in [&mut observer, &mut u_on_b, &mut watcher] {
        wait_for_count(client, "u", 1).await;
    }
    let leaves = watcher.seen(|f| is_diff(f, ROOM, "leaves", "u"));
    assert!(leaves.is_empty(), "u still has a connection: {leaves:?}");
    let leaves = observer.seen(|f| is_diff(f, ROOM, "leaves", "u"));
    assert!(leaves.is_empty(), "u still has a connection: {leaves:?}");

    // ... and then on b: now u leaves, seen on a and on c.
    u_on_b.close().await;
    watcher
        .expect(|f| is_diff(f, ROOM, "leaves", "u"), "u leaving, on c")
        .await;
    observer
        .expect(|f| is_diff(f, ROOM, "leaves", "u"), "u leaving, on a")
        .await;
    for client in [&mut observer, &mut watcher] {
        let members = wait_for_count(client, "u", 0).await;
        assert_eq!(members.len(), 2, "w and x remain: {members:?}");
    }
    let offline = watcher
        .refused(json!({"type": "direct", "to": "u", "content": "gone?"}))
        .await;
    assert_eq!(offline, "user_offline");
}
