//! Changing the cluster's node list at runtime with `POST /cluster/nodes` on the admin
//! listener: a node added (started with `cluster.join`) becomes a voter of the shards
//! the new list places on it and serves the history from before it existed; a node
//! removed leaves every shard; the rest go on taking messages.

use crate::support::{is_message, Cluster, NodeSpec, COOKIE, DEADLINE};
use hubbub::cluster::shards::Placement;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROOM: &str = "roster";

/// One HTTP/1.1 exchange on a raw socket: (status, JSON body).
async fn exchange(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let run = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let status: u16 = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_owned();
        Some((
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        ))
    };
    tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no answer to {method} {path} from {addr}"))
}

/// Every shard's voters (sorted) as `status` reports them.
fn voters(status: &Value) -> Vec<Vec<String>> {
    status["shards"]
        .as_array()
        .map(|shards| {
            shards
                .iter()
                .map(|shard| {
                    let mut names: Vec<String> = shard["voters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect();
                    names.sort();
                    names
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What `nodes` places on each shard (16 shards, 3 replicas), sorted per shard.
fn placed(nodes: &[&str]) -> Vec<Vec<String>> {
    let names: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    let placement = Placement::new(&names, 16, 3).expect("placement");
    (0..placement.shards())
        .map(|shard| {
            let mut names: Vec<String> = placement
                .voters(shard)
                .into_iter()
                .filter_map(|id| placement.name_of(id).map(str::to_owned))
                .collect();
            names.sort();
            names
        })
        .collect()
}

/// Polls until every node of `observers` reports `nodes` as the node list and the
/// shards' voters `nodes` places.
async fn wait_for_list(cluster: &Cluster, observers: &[&str], nodes: &[&str]) {
    let want = placed(nodes);
    let list: Vec<&str> = nodes.to_vec();
    let started = Instant::now();
    loop {
        let mut last = BTreeMap::new();
        for observer in observers {
            let status = cluster
                .try_cluster_status(observer)
                .await
                .unwrap_or(Value::Null);
            let agrees = status["nodes"] == json!(list) && voters(&status) == want;
            last.insert(*observer, (agrees, status));
        }
        if last.values().all(|(agrees, _)| *agrees) {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE * 2,
            "the shards never moved to {nodes:?}: {:#?}",
            last.iter()
                .map(|(n, (_, s))| (n, s["nodes"].clone(), voters(s)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_node_is_added_and_another_removed_through_the_admin_listener() {
    let mut cluster = Cluster::plan("nodes", 3).await;
    let mut admin = BTreeMap::new();
    for name in ["a", "b", "c"] {
        admin.insert(name, cluster.add_admin(name));
    }
    for name in ["a", "b", "c"] {
        cluster.start_node(name).await;
    }
    cluster.wait_converged(&cluster.names()).await;
    let status = cluster.cluster_status("a").await;
    assert_eq!(status["nodes"], json!(["a", "b", "c"]), "{status}");
    assert_eq!(status["nodes_source"], "config");
    // The public listener does not take changes.
    let (code, body) = exchange(cluster.http_addr("a"), "POST", "/cluster/nodes", "{}").await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["error"], "admin_only", "{body}");

    let mut alice = cluster.connect("a", "alice").await;
    alice.join_retry(ROOM).await;
    for i in 0..5 {
        alice.publish_retry(ROOM, &format!("before d {i}")).await;
    }

    // d joins a running cluster: it bootstraps nothing and is not ready until added.
    cluster.plan_extra(NodeSpec {
        key: "d".into(),
        name: "d".into(),
        cookie: COOKIE.into(),
        seeds: Vec::new(),
    });
    admin.insert("d", cluster.add_admin("d"));
    cluster.config("d").set("cluster", "join", true);
    cluster.start_node("d").await;
    let four: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
    cluster.wait_view(&four).await;
    let (code, ready) = exchange(cluster.http_addr("d"), "GET", "/readyz", "").await;
    assert_eq!(code, 503, "a node nobody added is not ready: {ready}");

    // Bad requests are refused with a reason, and change nothing.
    for bad in [
        "not json",
        r#"{"add": ["d"], "nodes": ["a"]}"#,
        r#"{"remove": ["zed"]}"#,
        r#"{"nodes": []}"#,
        r#"{"nodes": ["a", "b c"]}"#,
    ] {
        let (code, body) = exchange(admin["a"], "POST", "/cluster/nodes", bad).await;
        assert_eq!(code, 400, "{bad}: {body}");
        assert_eq!(body["error"], "bad_request", "{bad}: {body}");
    }

    let (code, body) = exchange(admin["b"], "POST", "/cluster/nodes", r#"{"add": ["d"]}"#).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["nodes"], json!(four), "{body}");
    wait_for_list(&cluster, &["a", "b", "c", "d"], &["a", "b", "c", "d"]).await;
    let (_, listed) = exchange(admin["c"], "GET", "/cluster/nodes", "").await;
    assert_eq!(listed["source"], "runtime", "{listed}");
    assert_eq!(listed["configured"], json!(["a", "b", "c"]), "{listed}");
    let started = Instant::now();
    while exchange(cluster.http_addr("d"), "GET", "/readyz", "")
        .await
        .0
        != 200
    {
        assert!(
            started.elapsed() < DEADLINE,
            "d never became ready once added"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // d serves the room's history from before it existed, and takes messages.
    let mut dora = cluster.connect("d", "dora").await;
    let joined = dora.join_retry(ROOM).await;
    let contents: Vec<&str> = joined["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(
        contents,
        (0..5).map(|i| format!("before d {i}")).collect::<Vec<_>>(),
        "{joined}"
    );
    let sent = dora.publish_retry(ROOM, "from d").await;
    let got = alice
        .expect(
            |f| is_message(f, ROOM) && f["content"] == "from d",
            "d's message",
        )
        .await;
    assert_eq!(got["seq"], sent["seq"]);

    // c is removed (asked of d), then killed: no shard waits for it.
    let (code, body) = exchange(admin["d"], "POST", "/cluster/nodes", r#"{"remove": ["c"]}"#).await;
    assert_eq!(code, 200, "{body}");
    wait_for_list(&cluster, &["a", "b", "d"], &["a", "b", "d"]).await;
    cluster.kill9("c");
    for (i, node) in ["a", "b", "d"].iter().enumerate() {
        let mut client = cluster.connect(node, &format!("u{i}")).await;
        client.join_retry(ROOM).await;
        client
            .publish_retry(ROOM, &format!("after c, from {node}"))
            .await;
    }
    // A repeat of the same change changes nothing.
    let (code, body) = exchange(
        admin["a"],
        "POST",
        "/cluster/nodes",
        r#"{"nodes": ["a", "b", "d"]}"#,
    )
    .await;
    assert_eq!(
        (code, body["changed"].clone()),
        (200, json!(false)),
        "{body}"
    );
}

#[tokio::test]
async fn a_node_with_another_node_list_is_told_and_forms_no_shard_of_its_own() {
    let mut cluster = Cluster::plan("node-lists", 3).await;
    // c believes in a fourth node: its placement differs from a's and b's.
    cluster.config("c").voters(&["a", "b", "c", "d"]);
    for name in ["a", "b", "c"] {
        cluster.start_node(name).await;
    }
    cluster.wait_converged(&cluster.names()).await;
    let started = Instant::now();
    loop {
        let status = cluster.cluster_status("a").await;
        let c = status["peers"]
            .as_array()
            .and_then(|peers| peers.iter().find(|p| p["name"] == "c"))
            .cloned()
            .unwrap_or(Value::Null);
        if c["same_node_list"] == json!(false) {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "a never told c's list apart: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cluster
            .log("a")
            .contains("follows another node list than this node"),
        "a says so: {}",
        cluster.log_tail("a")
    );
    // Every shard, on every node, is the group a and b formed: no d anywhere.
    let three = placed(&["a", "b", "c"]);
    for name in ["a", "b", "c"] {
        let status = cluster.cluster_status(name).await;
        assert_eq!(voters(&status), three, "{name}: {status}");
    }
    let mut client = cluster.connect("c", "carol").await;
    client.join_retry(ROOM).await;
    client.publish_retry(ROOM, "still one cluster").await;
}
