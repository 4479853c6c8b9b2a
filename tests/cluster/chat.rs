//! Chat across nodes: one order per room, whichever node a client is on.

use crate::support::{is_message, owner_of, Client, Cluster};
use futures_util::future::join_all;
use serde_json::Value;
use std::collections::BTreeSet;

/// Messages each client publishes to each room.
const PER_CLIENT: usize = 5;

#[tokio::test]
async fn chat_across_nodes_gives_every_client_the_same_order() {
    let cluster = Cluster::start("chat", 3).await;
    let all = ["a", "b", "c"];
    // Two rooms ordered by different nodes at the same time.
    let first = "lobby".to_owned();
    let second = crate::support::find_room("side", |room| {
        owner_of(room, &all) != owner_of(&first, &all)
    });
    eprintln!(
        "[chat] {first} is owned by {}, {second} by {}",
        owner_of(&first, &all),
        owner_of(&second, &all)
    );
    let rooms = [first.as_str(), second.as_str()];

    // Two clients on each node, both in both rooms.
    let mut clients: Vec<Client> = Vec::new();
    for node in all {
        for i in 0..2 {
            clients.push(cluster.connect(node, &format!("{node}{i}")).await);
        }
    }
    for client in &mut clients {
        for room in rooms {
            client.join_retry(room).await;
        }
    }

    // Everybody publishes at once, each client its messages in order.
    let acks: Vec<Vec<(String, String, u64)>> = join_all(clients.iter_mut().map(|client| {
        let user = client.user_id();
        async move {
            let mut acks = Vec::new();
            for k in 0..PER_CLIENT {
                for room in rooms {
                    let content = format!("{user}/{room}/{k}");
                    let ack = client.publish_retry(room, &content).await;
                    let seq = ack["seq"].as_u64().expect("ack has a seq");
                    acks.push((room.to_owned(), content, seq));
                }
            }
            acks
        }
    }))
    .await;

    let total = clients.len() * PER_CLIENT;
    for room in rooms {
        // What each client saw of the room, in arrival order.
        let mut seen: Vec<Vec<(u64, String, String)>> = Vec::new();
        for client in &mut clients {
            let mut messages = Vec::new();
            for _ in 0..total {
                let frame = client
                    .expect(|f| is_message(f, room), &format!("a message in {room}"))
                    .await;
                messages.push(triple(&frame));
            }
            seen.push(messages);
        }
        let reference = &seen[0];
        let seqs: Vec<u64> = reference.iter().map(|m| m.0).collect();
        assert_eq!(
            seqs,
            (1..=total as u64).collect::<Vec<_>>(),
            "{room}: seq must run from 1 with no gap"
        );
        for (i, messages) in seen.iter().enumerate() {
            assert_eq!(
                messages,
                reference,
                "{room}: client {} saw another order than client {}",
                clients[i].user_id(),
                clients[0].user_id()
            );
        }
        // Every message is there exactly once, at the seq its publisher was told.
        let contents: BTreeSet<&str> = reference.iter().map(|m| m.2.as_str()).collect();
        assert_eq!(contents.len(), total, "{room}: a message appears twice");
        for (room_acked, content, seq) in acks.iter().flatten() {
            if room_acked == room {
                let at = reference.iter().find(|m| &m.2 == content);
                assert_eq!(
                    at.map(|m| m.0),
                    Some(*seq),
                    "{room}: {content} acked with seq {seq}"
                );
            }
        }
        // Each publisher's own messages keep its order.
        for client in &clients {
            let user = client.user_id();
            let own: Vec<&String> = reference
                .iter()
                .filter(|m| m.2.starts_with(&format!("{user}/")))
                .map(|m| &m.2)
                .collect();
            let mut sorted = own.clone();
            sorted.sort();
            assert_eq!(own, sorted, "{room}: {user}'s messages were reordered");
        }
        // And the room's history says the same, on a node that does not own it.
        let reader = clients
            .iter_mut()
            .find(|c| c.welcome["node"] != owner_of(room, &all).as_str())
            .expect("a client on a relay");
        let history: Vec<(u64, String, String)> =
            reader.full_history(room).await.iter().map(triple).collect();
        assert_eq!(
            &history, reference,
            "{room}: history differs from what was seen"
        );
    }
}

/// A message's (seq, id, content).
fn triple(frame: &Value) -> (u64, String, String) {
    (
        frame["seq"].as_u64().expect("seq"),
        frame["id"].as_str().expect("id").to_owned(),
        frame["content"].as_str().expect("content").to_owned(),
    )
}

/// One connection's publishes keep their order however many are in flight, on the
/// shard's leader and on a node that forwards them to it.
#[tokio::test]
async fn publishes_in_flight_keep_the_order_they_were_sent_in() {
    let cluster = Cluster::start("pipelined", 3).await;
    let all = ["a", "b", "c"];
    let room = "pipeline";
    let leader = owner_of(room, &all);
    let follower = all
        .iter()
        .find(|n| **n != leader)
        .expect("a follower")
        .to_string();
    for node in [leader.as_str(), follower.as_str()] {
        let mut client = cluster.connect(node, &format!("p-{node}")).await;
        client.join_retry(room).await;
        // A first publish that waits, so the shard has its leader and the room runs.
        client.publish_retry(room, "warm up").await;
        let mut refs = Vec::new();
        for i in 0..40 {
            refs.push(
                client
                    .send_request(serde_json::json!({
                        "type": "publish", "room": room, "content": format!("{node} {i}")
                    }))
                    .await,
            );
        }
        let mut seqs = Vec::new();
        for reference in &refs {
            let reply = client.reply_to(reference).await;
            assert_eq!(reply["ok"], true, "{node}: {reply}");
            seqs.push(reply["data"]["seq"].as_u64().expect("a seq"));
        }
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "on {node}, 40 publishes in flight were ordered as {seqs:?}"
        );
    }
}
