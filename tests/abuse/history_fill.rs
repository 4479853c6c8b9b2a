//! Attack 12: filling the rooms' history with the largest messages. From
//! [`ADDRESSES`] addresses, [`PER_ADDRESS`] connections each join a room of their own
//! and publish messages as large as the default limits allow ([`CONTENT_BYTES`]: four-
//! byte characters, under `max_message_chars` and `max_message_bytes`) as fast as the
//! default rate limit lets them: its burst, then one every [`PUBLISH_EVERY`]. Each
//! room keeps `rooms.history` (100) messages, so by count alone the node would keep
//! every one of them, in its room's log and again in its Room's ring; the node must
//! hold no more than `rooms.history_bytes` of them: docs/operations.md, "Memory under
//! abuse".

use crate::support::{
    assert_withstood, loopback, masked_text, paced, AbuseNode, Conversation, Monitor, RawWs, MIB,
    PER_ADDRESS,
};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Source addresses of the publishing connections: with [`PER_ADDRESS`] each, 720
/// connections and as many rooms.
const ADDRESSES: u8 = 8;
/// Bytes of each message's content: 4,000 characters of four bytes.
const CONTENT_BYTES: usize = 16_000;
/// `rate_limit.burst` at its default: what a connection may publish at once.
const BURST: usize = 10;
/// After the burst, `rate_limit.messages_per_minute` (50) at its default.
const PUBLISH_EVERY: Duration = Duration::from_millis(1_200);
/// How long each connection goes on publishing after its burst.
const ATTACK: Duration = Duration::from_secs(40);
/// Between two connections from one address: `rate_limit.handshakes_per_ip_per_sec`
/// is 20.
const PACE: Duration = Duration::from_millis(60);
/// How long the connections may take to open.
const OPENING: Duration = Duration::from_secs(60);
/// `rooms.history_bytes` at its default.
const BUDGET: f64 = (128 * MIB) as f64;

/// One publishing connection: joins `room`, publishes its burst and then at the
/// rate limit for [`ATTACK`], reading (and dropping) whatever the node sends. Returns
/// how many publishes it sent, or why it could not start.
async fn fill(node: std::net::SocketAddr, a: u8, i: usize) -> Result<u64, String> {
    let ends = Instant::now() + ATTACK;
    let room = format!("fill-{a}-{i}");
    let query = format!("user=fill-{a}-{i}");
    let mut ws = RawWs::dial_until(node, loopback(40 + a), &query, Instant::now() + OPENING)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let joined = ws
        .request(json!({"type": "join", "room": room, "ref": 1}))
        .await
        .map_err(|e| e.to_string())?;
    if joined["ok"] != true {
        return Err(format!("join refused: {joined}"));
    }
    // One frame, built once and sent again and again (a client may reuse its
    // masking key): the load generator spends its CPU on sending, not encoding.
    let content = "𝄞".repeat(CONTENT_BYTES / 4);
    let frame = masked_text(
        json!({"type": "publish", "room": room, "content": content})
            .to_string()
            .as_bytes(),
    );
    let (mut read, mut write) = ws.into_split();
    let drain = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut read, &mut tokio::io::sink()).await;
    });
    let mut sent = BURST as u64;
    let mut ok = write.write_all(&frame.repeat(BURST)).await.is_ok();
    let mut tick = tokio::time::interval_at((Instant::now() + PUBLISH_EVERY).into(), PUBLISH_EVERY);
    while ok && Instant::now() < ends {
        tick.tick().await;
        ok = write.write_all(&frame).await.is_ok();
        sent += 1;
    }
    drain.abort();
    Ok(sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_every_room_with_the_largest_messages() {
    let node = AbuseNode::start("history-fill").await;
    let monitor = Monitor::start(&node);
    let conversation = Conversation::start(&node, "lobby").await;
    let addr = node.http;
    let fillers = paced(ADDRESSES, PER_ADDRESS, PACE, |a, i| fill(addr, a, i)).await;
    let (mut sent, mut failed) = (0u64, Vec::new());
    for filler in fillers {
        match filler {
            Ok(Ok(n)) => sent += n,
            Ok(Err(why)) => failed.push(why),
            Err(e) => failed.push(e.to_string()),
        }
    }
    let published = node
        .metric(r#"hubbub_messages_total{direction="in",type="publish"}"#)
        .await;
    // What the shards hold, once the last publishes are applied (read every second).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = node.metric("hubbub_history_bytes").await;
    let forgotten = node.metric("hubbub_history_forgotten_total").await;
    let report = conversation.finish().await;
    let (rss, health) = monitor.finish().await;
    let wanted = usize::from(ADDRESSES) * PER_ADDRESS;
    assert_withstood(
        "history fill",
        &rss,
        &health,
        &format!(
            "{} of {wanted} connections published {sent} messages of {CONTENT_BYTES} bytes \
             ({:.0} MiB; the node read {published:?} publishes); hubbub_history_bytes \
             {held:?}, hubbub_history_forgotten_total {forgotten:?}; {}",
            wanted - failed.len(),
            (sent as f64 * CONTENT_BYTES as f64) / MIB as f64,
            report.summary()
        ),
    );
    report.assert_complete("history fill");
    assert!(
        failed.len() * 10 <= wanted,
        "{} of {wanted} connections did not start: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // The attack sent well past the bound, so the bound is what held the node: what
    // the shards count is within it, and they forgot the oldest to stay there.
    assert!(
        sent as f64 * CONTENT_BYTES as f64 > 3.0 * BUDGET,
        "only {sent} messages sent: not enough to reach rooms.history_bytes"
    );
    let held = held.expect("hubbub_history_bytes in /metrics");
    assert!(
        held <= BUDGET,
        "hubbub_history_bytes {held} is past rooms.history_bytes ({BUDGET})"
    );
    assert!(
        forgotten.is_some_and(|n| n > 0.0),
        "hubbub_history_forgotten_total {forgotten:?}: nothing was forgotten"
    );
}
