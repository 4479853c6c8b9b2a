//! What the real binary writes to stderr: JSON lines that name their node, at every
//! level down to trace, with no secret in them.

use crate::support::{Client, Cluster, COOKIE};
use serde_json::{json, Value};

/// A token a client sends in its query string; it must never be logged.
const TOKEN: &str = "tok-9f8e7d6c5b4a-never-log-me";

#[tokio::test]
async fn trace_logs_are_json_lines_with_the_node_and_no_secret() {
    let mut cluster = Cluster::plan("logs", 2).await;
    let names = cluster.names();
    for name in &names {
        cluster.config(name).log_level("trace");
    }
    for name in &names {
        cluster.start_node(name).await;
    }
    cluster.wait_converged(&names).await;

    // Traffic on both nodes, one client presenting a token in its query string.
    let query = format!("user=alice&name=Alice&token={TOKEN}");
    let mut alice = Client::connect(cluster.http_addr("a"), &query).await;
    let mut bob = cluster.connect("b", "bob").await;
    alice.join_retry("lobby").await;
    bob.join_retry("lobby").await;
    alice
        .ok(json!({"type": "publish", "room": "lobby", "content": "hello"}))
        .await;
    bob.ok(json!({"type": "publish", "room": "lobby", "content": "hi"}))
        .await;
    let _ = cluster.http("a", "/metrics").await;
    let _ = cluster.http("b", "/cluster").await;
    alice.close().await;
    bob.close().await;

    for name in &names {
        let log = cluster.log(name);
        assert!(!log.contains(COOKIE), "node {name} logged the cookie");
        assert!(!log.contains(TOKEN), "node {name} logged a client's token");
        let mut lines = 0;
        let mut targets = std::collections::BTreeSet::new();
        let mut with_session = 0;
        let mut with_room = 0;
        for line in log.lines() {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("node {name}: not a JSON line ({e}): {line}"));
            let timestamp = value["timestamp"].as_str().unwrap_or_default();
            assert!(
                timestamp.len() >= 20 && timestamp.ends_with('Z'),
                "node {name}: {line}"
            );
            assert!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                    .contains(&value["level"].as_str().unwrap_or_default()),
                "node {name}: {line}"
            );
            assert_eq!(value["node"], name.as_str(), "node {name}: {line}");
            let target = value["target"].as_str().unwrap_or_default();
            targets.insert(target.split("::").next().unwrap_or_default().to_owned());
            if value["session"].is_string() && value["user"].is_string() {
                with_session += 1;
            }
            if value["room"] == "lobby" {
                with_room += 1;
            }
            lines += 1;
        }
        eprintln!("[logs] node {name}: {lines} lines from {targets:?}");
        // Our lines and the libraries' (ractor_cluster through tracing, actix through
        // the `log` bridge) all carry the node.
        for crate_name in ["hubbub", "ractor_cluster", "actix_server"] {
            assert!(
                targets.contains(crate_name),
                "node {name}: no line from {crate_name}"
            );
        }
        assert!(
            with_session > 0,
            "node {name}: no line names a session and user"
        );
        assert!(with_room > 0, "node {name}: no line names the room");
    }
}
