//! `GET /metrics` of clustered nodes: a broadcast crosses to each other node with
//! members exactly once, whatever the number of members there.

use crate::scrape::Metrics;
use crate::support::{find_room, is_message, owner_of, Client, Cluster};

/// Publishes per round.
const PUBLISHES: u64 = 20;

async fn scrape(cluster: &Cluster, node: &str) -> Metrics {
    let (status, body) = cluster.http(node, "/metrics").await;
    assert_eq!(status, 200, "{node}: {body}");
    Metrics::parse(&body)
}

/// `hubbub_cluster_messages_total{direction, kind}` on every node, in node order.
async fn cluster_messages(cluster: &Cluster, direction: &str, kind: &str) -> Vec<f64> {
    let mut values = Vec::new();
    for node in cluster.names() {
        values.push(
            scrape(cluster, &node)
                .await
                .cluster_messages(direction, kind),
        );
    }
    values
}

fn delta(after: &[f64], before: &[f64]) -> Vec<f64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

#[tokio::test]
async fn a_broadcast_goes_once_to_each_other_node_with_members_whatever_their_number() {
    let cluster = Cluster::start("metrics", 3).await;
    let all = ["a", "b", "c"];
    for name in cluster.names() {
        let m = scrape(&cluster, &name).await;
        assert_eq!(m.value("hubbub_cluster_peers", &[("state", "up")]), 2.0);
        assert_eq!(m.value("hubbub_cluster_peers", &[("state", "down")]), 0.0);
        assert!(m.histogram_count("hubbub_cluster_heartbeat_rtt_seconds") > 0.0);
    }

    let mut per_round = Vec::new();
    for members_per_node in [1, 5] {
        // A room `a` owns, with `members_per_node` connections on every node.
        let room = find_room(&format!("fanout{members_per_node}"), |room| {
            owner_of(room, &all) == "a"
        });
        let mut clients: Vec<Client> = Vec::new();
        for node in all {
            for i in 0..members_per_node {
                let user = format!("{node}{members_per_node}u{i}");
                clients.push(cluster.connect(node, &user).await);
            }
        }
        for client in &mut clients {
            client.join_retry(&room).await;
        }

        let out_before = cluster_messages(&cluster, "out", "room_message").await;
        let in_before = cluster_messages(&cluster, "in", "room_message").await;
        let acks_out_before = cluster_messages(&cluster, "out", "room_ack").await;
        let acks_in_before = cluster_messages(&cluster, "in", "room_ack").await;

        // The publisher is on the owner, `a` (the first client).
        for i in 0..PUBLISHES {
            clients[0]
                .ok(serde_json::json!({"type": "publish", "room": room, "content": format!("m{i}")}))
                .await;
        }
        // Every member everywhere got every message, so every envelope has arrived.
        for client in &mut clients {
            for _ in 0..PUBLISHES {
                client.expect(|f| is_message(f, &room), "a message").await;
            }
        }

        let n = PUBLISHES as f64;
        let out = delta(
            &cluster_messages(&cluster, "out", "room_message").await,
            &out_before,
        );
        let received = delta(
            &cluster_messages(&cluster, "in", "room_message").await,
            &in_before,
        );
        let acks_out = delta(
            &cluster_messages(&cluster, "out", "room_ack").await,
            &acks_out_before,
        );
        let acks_in = delta(
            &cluster_messages(&cluster, "in", "room_ack").await,
            &acks_in_before,
        );
        eprintln!(
            "[metrics] {members_per_node} member(s) per node: room_message out {out:?} in {received:?}, \
             room_ack out {acks_out:?} in {acks_in:?}"
        );
        // The owner sends each message once to each of the two other nodes; relays
        // forward nothing to each other.
        assert_eq!(out, [2.0 * n, 0.0, 0.0], "room_message sent, by node");
        assert_eq!(received, [0.0, n, n], "room_message received, by node");
        // One relay (the designated one) confirms each message; the other does not.
        assert_eq!(acks_in, [n, 0.0, 0.0], "room_ack received, by node");
        let mut relay_acks = acks_out[1..].to_vec();
        relay_acks.sort_by(f64::total_cmp);
        assert_eq!(acks_out[0], 0.0);
        assert_eq!(relay_acks, [0.0, n], "room_ack sent by the relays");
        per_round.push(out[0]);

        let owner = scrape(&cluster, "a").await;
        assert!(owner.histogram_count("hubbub_publish_duration_seconds") >= n);
        for client in clients {
            client.close().await;
        }
    }
    assert_eq!(
        per_round[0], per_round[1],
        "inter-node messages per broadcast do not depend on the number of members"
    );
}
