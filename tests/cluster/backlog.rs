//! `rooms.delivery_backlog_bytes` on a node that only relays a room: its Room actor
//! gets the room's messages from the log's apply alone (no publish of its own makes
//! it read the log), so with the least bound (1 byte) every batch takes the way the
//! bound sends it: not queued, the room told it is behind, and read from the log.

use crate::scrape::Metrics;
use crate::support::{is_message, Cluster};
use serde_json::json;

/// Publishes each of the two publishers fires without waiting.
const EACH: usize = 100;

#[tokio::test]
async fn a_room_past_its_delivery_backlog_reads_the_log_and_misses_nothing() {
    let mut cluster = Cluster::plan("backlog", 2).await;
    for name in cluster.names() {
        cluster
            .config(&name)
            .set("limits", "frames_per_second", 0)
            .set("rate_limit", "messages_per_minute", 0)
            // The log holds every message of the test: a room behind reads them all.
            .set("rooms", "history", 1_000);
    }
    cluster
        .config("b")
        .set("rooms", "delivery_backlog_bytes", 1);
    for name in cluster.names() {
        cluster.start_node(&name).await;
    }
    cluster.wait_converged(&cluster.names()).await;

    let room = "backlog-room";
    let mut members = Vec::new();
    for i in 0..3 {
        let mut member = cluster.connect("b", &format!("member-{i}")).await;
        member.join_retry(room).await;
        members.push(member);
    }
    let mut publishers = Vec::new();
    for i in 0..2 {
        let mut publisher = cluster.connect("a", &format!("pub-{i}")).await;
        publisher.join_retry(room).await;
        publishers.push(publisher);
    }
    // Every node's shard has a leader before the flood (a refusal would be retried
    // with another seq order, and the test wants them all at once).
    publishers[0].publish_retry(room, "warm up").await;

    let mut refs = Vec::new();
    for n in 0..EACH {
        for (i, publisher) in publishers.iter_mut().enumerate() {
            let content = format!("{i}-{n}");
            let reference = publisher
                .send_request(json!({"type": "publish", "room": room, "content": content}))
                .await;
            refs.push((i, reference));
        }
    }
    for (i, reference) in refs {
        let reply = publishers[i].reply_to(&reference).await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
    // The warm-up was seq 1; the flood is 2 ..= 201, each once, in order, no gap.
    let last = (2 * EACH + 1) as u64;
    for member in &mut members {
        let mut seqs = Vec::new();
        while seqs.last() != Some(&last) {
            let frame = member
                .expect(
                    |f| is_message(f, room) || f["type"] == "gap",
                    "every message",
                )
                .await;
            assert_eq!(frame["type"], "message", "no gap may come: {frame}");
            seqs.push(frame["seq"].as_u64().expect("a seq"));
        }
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
    }
    let (status, body) = cluster.http("b", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let behind = Metrics::parse(&body).value("hubbub_delivery_behind_total", &[]);
    assert!(
        behind >= 1.0,
        "b's room was never told to catch up: {behind}"
    );
}
