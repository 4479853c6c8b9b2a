//! `GET /metrics` of clustered nodes: what a broadcast sends between nodes is the
//! room log's replication (one AppendEntries per voter at most per publish), whatever
//! the number of members.

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
async fn a_broadcast_crosses_between_nodes_as_replication_whatever_the_number_of_members() {
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

        let appends_before = cluster_messages(&cluster, "out", "raft_append").await;
        let writes_before = cluster_messages(&cluster, "out", "raft_write").await;

        // The publisher is on a, the first voter of the room's shard.
        for i in 0..PUBLISHES {
            clients[0]
                .ok(serde_json::json!({"type": "publish", "room": room, "content": format!("m{i}")}))
                .await;
        }
        // Every member everywhere got every message.
        for client in &mut clients {
            for _ in 0..PUBLISHES {
                client.expect(|f| is_message(f, &room), "a message").await;
            }
        }

        let n = PUBLISHES as f64;
        let appends = delta(
            &cluster_messages(&cluster, "out", "raft_append").await,
            &appends_before,
        );
        let writes = delta(
            &cluster_messages(&cluster, "out", "raft_write").await,
            &writes_before,
        );
        let total: f64 = appends.iter().sum();
        eprintln!(
            "[metrics] {members_per_node} member(s) per node: raft_append out {appends:?}, \
             raft_write out {writes:?}"
        );
        // What crosses between nodes is the shard's replication: at most one
        // AppendEntries with entries per publish to each of the two other voters
        // (fewer when publishes share an entry), never one per member.
        assert!(
            total >= 2.0 && total <= 2.0 * n,
            "raft_append sent per round: {total} for {n} publishes"
        );
        per_round.push(total);

        let owner = scrape(&cluster, "a").await;
        assert!(owner.histogram_count("hubbub_publish_duration_seconds") >= n);
        for client in clients {
            client.close().await;
        }
    }
    eprintln!("[metrics] raft_append per round, 1 and 5 members per node: {per_round:?}");
}
