//! Attack 10: WebSocket connections that stall their frames. From [`ADDRESSES`]
//! addresses, [`PER_ADDRESS`] connections each open `/ws`, start one text frame as
//! large as `limits.max_frame_bytes` allows, send all of it but its last bytes, and
//! stall until the attack ends. The node must not hold what they sent beyond
//! `limits.node_inbound_bytes`: docs/operations.md, "Memory under abuse".

use crate::support::{
    assert_withstood, loopback, mask, masked_head, paced, AbuseNode, Conversation, Monitor, RawWs,
    PER_ADDRESS,
};
use std::time::{Duration, Instant};

/// Source addresses of the stalled connections: with [`PER_ADDRESS`] each, 9,000
/// connections, under `limits.max_connections` (10,000).
const ADDRESSES: u8 = 100;
/// `limits.max_frame_bytes` at its default: the stalled frame's announced size.
const MAX_FRAME: usize = 65_536;
/// `limits.node_inbound_bytes` at its default.
const BUDGET: u64 = 64 * 1024 * 1024;
/// Bytes of the stalled frame held back.
const HELD_BACK: usize = 10;
/// How long the connections stay stalled after the last one is in.
const ATTACK: Duration = Duration::from_secs(15);
/// Between two connections from one address: all 9,000 in about 18 s.
const PACE: Duration = Duration::from_millis(200);
/// How long the connections may take to open (the handshake rate is 20 a second per
/// address).
const OPENING: Duration = Duration::from_secs(60);

/// One stalled connection: opened, its frame begun. Returns the connection (kept open
/// by the caller) or why it failed.
async fn stall(
    node: std::net::SocketAddr,
    a: u8,
    i: usize,
    until: Instant,
) -> Result<RawWs, String> {
    let query = format!("user=stall-{a}-{i}");
    let mut ws = RawWs::dial_until(node, loopback(150 + a), &query, until)
        .await
        .map_err(|e| format!("{e:?}"))?;
    // The node's `welcome` first: what comes after it is the answer to the stall.
    let welcome = ws.next_text().await.map_err(|e| e.to_string())?;
    if !welcome.as_deref().is_some_and(|w| w.contains("welcome")) {
        return Err(format!("no welcome: {welcome:?}"));
    }
    let mut frame = masked_head(0x1, MAX_FRAME);
    frame.extend(mask(&vec![b'x'; MAX_FRAME - HELD_BACK], 0));
    ws.send_bytes(&frame).await.map_err(|e| e.to_string())?;
    Ok(ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_that_stall_their_frames() {
    let node = AbuseNode::start("ws-stall").await;
    let monitor = Monitor::start(&node);
    let conversation = Conversation::start(&node, "lobby").await;
    let opening_ends = Instant::now() + OPENING;
    // Paced, so that opening 9,000 connections does not starve the node of CPU by
    // itself: what is measured is what they hold once in.
    let addr = node.http;
    let dials = paced(ADDRESSES, PER_ADDRESS, PACE, |a, i| {
        stall(addr, a, i, opening_ends)
    })
    .await;
    let mut held = Vec::new();
    let mut failed = Vec::new();
    for dial in dials {
        match dial {
            Ok(Ok(ws)) => held.push(ws),
            Ok(Err(why)) => failed.push(why),
            Err(e) => failed.push(e.to_string()),
        }
    }
    let opened_in = monitor.elapsed();
    tokio::time::sleep(ATTACK).await;
    // What the node holds of the stalled frames, as it counts them, and how many it
    // shed (closed with 1013).
    let inbound = node.metric("hubbub_inbound_bytes").await;
    let shed_total = node.metric("hubbub_inbound_shed_total").await;
    // Which connections are still open, and the close code of those that are not.
    let checks = held.iter_mut().map(|ws| async move {
        match tokio::time::timeout(Duration::from_millis(500), ws.next_text()).await {
            Ok(Ok(None)) => Some(ws.closed_with),
            Ok(Err(_)) => Some(None),
            // Still open: nothing comes (pings are skipped), or a frame (none is due).
            Err(_) | Ok(Ok(Some(_))) => None,
        }
    });
    let checked = futures_util::future::join_all(checks).await;
    let open = checked.iter().filter(|c| c.is_none()).count();
    let closed_1013 = checked.iter().filter(|c| **c == Some(Some(1013))).count();
    let stalled = held.len();
    drop(held);
    let report = conversation.finish().await;
    let (rss, health) = monitor.finish().await;
    assert_withstood(
        "websocket stalled frames",
        &rss,
        &health,
        &format!(
            "{stalled} connections stalled ({} failed to open), all in after {opened_in:?}; \
             at the end {open} open, {closed_1013} closed with 1013, hubbub_inbound_bytes \
             {inbound:?}, hubbub_inbound_shed_total {shed_total:?}; {}",
            failed.len(),
            report.summary()
        ),
    );
    report.assert_complete("websocket stalled frames");
    let wanted = usize::from(ADDRESSES) * PER_ADDRESS;
    assert!(
        stalled * 10 >= wanted * 9,
        "only {stalled} of {wanted} connections stalled: {:?}",
        &failed[..failed.len().min(5)]
    );
    // The budget held: what the node counts is within it, and it made room by closing
    // the oldest stalled connections with 1013, keeping about what fits.
    let inbound = inbound.expect("hubbub_inbound_bytes in /metrics");
    assert!(
        inbound <= BUDGET as f64,
        "hubbub_inbound_bytes {inbound} is past limits.node_inbound_bytes ({BUDGET})"
    );
    let fits = BUDGET / MAX_FRAME as u64;
    assert!(
        open as u64 <= fits,
        "{open} stalled connections still open; the budget holds {fits} such frames"
    );
    assert_eq!(
        closed_1013 + open,
        stalled,
        "every stalled connection closed was closed with 1013"
    );
    assert!(
        shed_total.is_some_and(|n| n >= closed_1013 as f64),
        "hubbub_inbound_shed_total {shed_total:?} counts each of the {closed_1013} shed"
    );
}
