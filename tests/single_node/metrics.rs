//! `GET /metrics` after known traffic, read with a Prometheus text parser
//! (prometheus-parse) and checked to the exact count.

use crate::scrape::Metrics;
use crate::support::{eventually, Client, TestNode};
use serde_json::{json, Value as Json};

/// One scrape of a node's `/metrics`, parsed.
async fn scrape(node: &TestNode) -> Metrics {
    let (status, body) = node.get("/metrics").await;
    assert_eq!(status, 200, "{body}");
    Metrics::parse(&body)
}

/// Publishes the test makes; below the default per-user message burst.
const PUBLISHES: u64 = 8;
/// Pings the flooder sends at once, past its frame burst.
const PINGS: u64 = 30;

#[tokio::test]
async fn metrics_count_known_traffic_exactly() {
    let node = TestNode::start_adjusted(|s| {
        s.limits.frames_per_second = 1;
        s.limits.frames_burst = 20;
        s.rooms.idle_ttl_secs = 0;
    })
    .await;
    let before = scrape(&node).await;
    assert_eq!(before.value("hubbub_connections", &[]), 0.0);
    assert_eq!(before.value("hubbub_rooms", &[]), 0.0);

    let mut alice = node.connect("alice", "Alice").await;
    let mut bob = node.connect("bob", "Bob").await;
    let mut flooder = node.connect("flooder", "Flooder").await;
    alice.join("lobby").await;
    bob.join("lobby").await;
    alice.expect_type("presence_diff").await;
    for i in 0..PUBLISHES {
        alice.publish("lobby", &format!("message {i}")).await;
    }
    alice.send_text("not json").await;
    let error = alice.expect_type("error").await;
    assert_eq!(error["error"]["code"], "bad_request");
    bob.barrier("lobby").await;
    assert_eq!(bob.seen(|f| f["type"] == "message").len() as u64, PUBLISHES);
    let limited = flood(&mut flooder).await;
    assert!(limited > 0, "the flood was not rate limited");

    let m = scrape(&node).await;
    assert_eq!(m.value("hubbub_connections", &[]), 3.0);
    assert_eq!(m.value("hubbub_rooms", &[]), 1.0);
    let n = PUBLISHES as f64;
    let expected_in = [
        ("join", 2.0),
        ("leave", 0.0),
        ("publish", n),
        ("typing", 0.0),
        ("history", 0.0),
        ("presence", 1.0),
        ("direct", 0.0),
        ("rename", 0.0),
        ("ping", PINGS as f64),
        ("invalid", 1.0),
    ];
    for (kind, count) in expected_in {
        assert_eq!(m.messages("in", kind), count, "frames in of type {kind}");
    }
    let expected_out = [
        ("welcome", 3.0),
        // Two joins, the publishes, bob's presence barrier, the flood's refusals.
        ("reply", 2.0 + n + 1.0 + limited as f64),
        // Each publish reaches both members.
        ("message", 2.0 * n),
        ("typing", 0.0),
        ("presence_diff", 1.0),
        ("direct", 0.0),
        ("renamed", 0.0),
        ("pong", (PINGS - limited) as f64),
        ("error", 1.0),
        ("goodbye", 0.0),
        ("other", 0.0),
    ];
    for (kind, count) in expected_out {
        assert_eq!(m.messages("out", kind), count, "frames out of type {kind}");
    }
    assert_eq!(m.histogram_count("hubbub_publish_duration_seconds"), n);
    assert!(m.value("hubbub_publish_duration_seconds_sum", &[]) > 0.0);
    assert_eq!(m.value("hubbub_rate_limited_total", &[]), limited as f64);
    for reason in ["frames", "bytes", "node_budget"] {
        let series = [("reason", reason)];
        assert_eq!(
            m.value("hubbub_slow_consumer_disconnects_total", &series),
            0.0
        );
    }
    // Not clustered: no peers, no inter-node traffic.
    assert_eq!(m.value("hubbub_cluster_peers", &[("state", "up")]), 0.0);
    assert_eq!(
        m.value(
            "hubbub_cluster_messages_total",
            &[("direction", "out"), ("kind", "raft_append")]
        ),
        0.0
    );
    assert_eq!(
        m.histogram_count("hubbub_cluster_heartbeat_rtt_seconds"),
        0.0
    );
    // The process metrics are there.
    assert!(m.value("process_resident_memory_bytes", &[]) > 0.0);
    assert!(m.value("process_open_fds", &[]) > 0.0);
    assert!(m.value("process_start_time_seconds", &[]) > 0.0);

    // The gauges follow connections and rooms as they go.
    flooder.close().await;
    wait_for(&node, "hubbub_connections", 2.0).await;
    alice.close().await;
    bob.close().await;
    wait_for(&node, "hubbub_connections", 0.0).await;
    // Empty, the room retires at once (idle_ttl_secs = 0).
    wait_for(&node, "hubbub_rooms", 0.0).await;
}

/// Sends [`PINGS`] pings at once and reads every answer; returns how many were
/// refused as rate limited.
async fn flood(client: &mut Client) -> u64 {
    for i in 0..PINGS {
        client.send(json!({"type": "ping", "ref": i})).await;
    }
    let mut limited = 0;
    for i in 0..PINGS {
        let answer: Json = client.expect(|f| f["ref"] == i, "a ping's answer").await;
        if answer["type"] != "pong" {
            assert_eq!(answer["error"]["code"], "rate_limited", "{answer}");
            limited += 1;
        }
    }
    limited
}

/// Polls `/metrics` until the unlabelled gauge `name` reads `expected`.
async fn wait_for(node: &TestNode, name: &str, expected: f64) {
    eventually(&format!("{name} = {expected}"), || async {
        (scrape(node).await.value(name, &[]) == expected).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_slow_consumer_is_counted_once() {
    const QUEUE: usize = 8;
    let node = TestNode::start_adjusted(|s| {
        s.limits.outbound_queue = QUEUE;
        s.limits.frames_per_second = 0;
    })
    .await;
    let mut publisher = node.connect("publisher", "Publisher").await;
    let mut slow = node.connect("slow", "Slow").await;
    publisher.join("firehose").await;
    slow.join("firehose").await;
    // `slow` reads nothing from here on. Publish until the node drops it: first the
    // loopback TCP buffers fill, then its queue. At most WINDOW publishes are in
    // flight, so the publisher's own queue (a message and a reply each) never fills.
    const WINDOW: u64 = 3;
    const _: () = assert!(2 * WINDOW as usize + 1 < QUEUE);
    let content = "x".repeat(4_000);
    let is_slow_leaving = |f: &Json| f["type"] == "presence_diff" && f["leaves"][0]["id"] == "slow";
    let (mut sent, mut acked) = (0u64, 0u64);
    while publisher.seen(is_slow_leaving).is_empty() {
        assert!(sent < 20_000, "the slow client was not dropped");
        while sent < acked + WINDOW {
            let frame =
                json!({"type": "publish", "room": "firehose", "content": content, "ref": sent});
            publisher.send(frame).await;
            sent += 1;
        }
        let reply = publisher
            .expect(|f| f["type"] == "reply" && f["ref"] == acked, "a reply")
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        acked += 1;
        publisher.discard_pending_where(|f| f["type"] == "message");
    }
    assert_eq!(slow.expect_close().await, Some(4009));
    // More pushes reach the closing connection on the way; still one disconnect.
    publisher.publish("firehose", "after").await;

    let m = scrape(&node).await;
    let by = |reason| {
        m.value(
            "hubbub_slow_consumer_disconnects_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(
        (by("frames"), by("bytes"), by("node_budget")),
        (1.0, 0.0, 0.0)
    );
    assert_eq!(m.value("hubbub_rate_limited_total", &[]), 0.0);
    wait_for(&node, "hubbub_connections", 1.0).await;
}

#[tokio::test]
async fn a_durable_node_times_its_log_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_owned();
    let node = TestNode::start_adjusted(move |s| {
        s.storage.engine = hubbub::config::StorageEngine::Durable;
        s.storage.dir = path;
    })
    .await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    for i in 0..PUBLISHES {
        alice.publish("lobby", &format!("message {i}")).await;
    }
    let m = scrape(&node).await;
    // Each publish was acknowledged after the commit that carried it, and a commit is
    // timed before the writes it carried are answered.
    let commits = m.histogram_count("hubbub_storage_commit_duration_seconds");
    assert!(commits >= 1.0, "no commit timed");
    assert!(
        m.value("hubbub_storage_commit_duration_seconds_sum", &[]) > 0.0,
        "commits took no time"
    );
    assert!(m.histogram_count("hubbub_storage_queued_seconds") >= 1.0);
    assert!(m.histogram_count("hubbub_storage_queued_seconds") <= commits);
}
