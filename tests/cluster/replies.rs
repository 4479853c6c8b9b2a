//! Bounded replies across nodes: a join on a relay is answered by the room's owner
//! (`JoinData`) within the owner's `limits.max_reply_bytes` and `limits.presence_page`,
//! and the relay, handed a first page of members, still knows every member.

use crate::support::{is_message, owner_of, Client, Cluster};
use serde_json::{json, Value};

const REPLY_BYTES: usize = 20_000;
const MESSAGE_BYTES: usize = 4_000;
const PAGE: usize = 10;

fn seqs(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .expect("a list of messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("a seq"))
        .collect()
}

/// A request answered within the bound (the node encodes compactly with serde_json;
/// re-encoding the parsed reply gives the same length).
async fn bounded(client: &mut Client, frame: Value) -> Value {
    let (data, _) = client.ok_retry(frame).await;
    let size = data.to_string().len();
    assert!(size <= REPLY_BYTES, "reply data of {size} bytes");
    data
}

#[tokio::test]
async fn a_join_on_a_relay_is_bounded_by_the_owner_and_pages_to_everything() {
    let mut cluster = Cluster::plan("replies", 2).await;
    let names = cluster.names();
    for name in &names {
        cluster
            .config(name)
            .set("limits", "max_reply_bytes", REPLY_BYTES)
            .set("limits", "max_message_bytes", MESSAGE_BYTES)
            .set("limits", "presence_page", PAGE)
            .set("rate_limit", "handshakes_per_ip_per_sec", 0);
        cluster.start_node(name).await;
    }
    cluster.wait_converged(&names).await;
    let room = crate::support::find_room("big", |r| owner_of(r, &["a", "b"]) == "a");

    // Twelve members on the owner; one of them fills the room with big messages.
    let mut owners_clients = Vec::new();
    for i in 0..12 {
        let mut client = cluster.connect("a", &format!("user-{i:02}")).await;
        client.join_retry(&room).await;
        owners_clients.push(client);
    }
    // A member on the relay, so that the join below comes once the relay's copy of
    // the log has applied every message (it trails the owner by a heartbeat).
    let mut watcher = cluster.connect("b", "watcher").await;
    watcher.join_retry(&room).await;
    const COUNT: u64 = 30;
    let content = "\"\\\n\t".repeat(MESSAGE_BYTES / 4 - 1);
    for _ in 1..=COUNT {
        owners_clients[0].publish_retry(&room, &content).await;
    }
    watcher
        .expect(
            |f| is_message(f, &room) && f["seq"] == COUNT,
            "the last message on the relay",
        )
        .await;
    watcher.ok(json!({"type": "leave", "room": room})).await;

    // On the relay: the owner's answer is cut for size and lists the first page.
    let mut zed = cluster.connect("b", "zed").await;
    let join = bounded(&mut zed, json!({"type": "join", "room": room})).await;
    assert_eq!(join["seq"], COUNT, "{join}");
    assert_eq!(join["more"], true, "{join}");
    assert_eq!(join["members_more"], true);
    assert_eq!(join["members_count"], 13);
    assert_eq!(join["members"].as_array().map(Vec::len), Some(PAGE));
    let mut all = seqs(&join["history"]);
    assert_eq!(all.last(), Some(&COUNT));
    let mut before = join["before"].as_u64();
    while let Some(cursor) = before {
        let page = bounded(
            &mut zed,
            json!({"type": "history", "room": room, "before": cursor, "limit": 1000}),
        )
        .await;
        let mut older = seqs(&page["messages"]);
        older.append(&mut all);
        all = older;
        before = (page["more"] == true).then(|| page["before"].as_u64().expect("a cursor"));
    }
    assert_eq!(all, (1..=COUNT).collect::<Vec<_>>());

    // A resume through the relay: oldest missed first, then forwards to the end.
    let resume = bounded(&mut zed, json!({"type": "join", "room": room, "since": 3})).await;
    let mut missed = seqs(&resume["history"]);
    assert_eq!(missed.first(), Some(&4), "{resume}");
    let mut after = (resume["more"] == true).then(|| resume["after"].as_u64().expect("after"));
    while let Some(cursor) = after {
        let page = bounded(
            &mut zed,
            json!({"type": "history", "room": room, "after": cursor, "before": COUNT + 1}),
        )
        .await;
        missed.extend(seqs(&page["messages"]));
        after = (page["more"] == true).then(|| page["after"].as_u64().expect("a cursor"));
    }
    assert_eq!(missed, (4..=COUNT).collect::<Vec<_>>());

    // The relay kept the whole member list, not the page its join reply carried.
    let counts = bounded(
        &mut zed,
        json!({"type": "presence", "room": room, "count_only": true}),
    )
    .await;
    assert_eq!(counts["count"], 13, "{counts}");
    assert_eq!(counts["connections"], 13, "{counts}");
}
