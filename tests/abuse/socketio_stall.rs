//! Attack 9: Socket.IO connections that make the node hold what they send. From
//! [`ADDRESSES`] addresses, [`PER_ADDRESS`] Socket.IO WebSockets each connect to `/`,
//! send a BINARY_EVENT announcing [`PARTS`] attachments and parts past what a message
//! can hold (the node counts and drops them), then a second BINARY_EVENT of two
//! attachments, its first part within that bound (the node keeps it until the second
//! comes), then start the second as one binary WebSocket message as large as
//! `socketio.max_payload_bytes` allows, send all of it but its last bytes, and stall
//! until the attack ends. What each connection can make the node hold is bounded by
//! `maxPayload` (a message still arriving) plus the parts of one event it keeps (at
//! most what a message can hold), and both count in `limits.node_inbound_bytes`:
//! docs/operations.md, "Memory under abuse".

use crate::support::{
    assert_withstood, loopback, mask, masked_head, paced, AbuseNode, Conversation, Monitor, RawWs,
    PER_ADDRESS,
};
use std::time::{Duration, Instant};

/// Source addresses of the stalled connections.
const ADDRESSES: u8 = 6;
/// Attachments each BINARY_EVENT announces.
const PARTS: usize = 8;
/// Bytes of each attachment: alone past what a message can hold (12,288 by default).
const PART_BYTES: usize = 13_000;
/// Bytes of the part each connection's second event has the node keep: within what a
/// message can hold.
const KEPT_BYTES: usize = 12_000;
/// `socketio.max_payload_bytes` at its default: the stalled message's announced size.
const MAX_PAYLOAD: usize = 100_000;
/// Bytes of the stalled message held back.
const HELD_BACK: usize = 10;
/// How long the connections stay stalled after the last one is in.
const ATTACK: Duration = Duration::from_secs(15);
/// How long the connections may take to open (the handshake rate is 20 a second per
/// address).
const OPENING: Duration = Duration::from_secs(30);

/// One stalled connection: opened, connected to `/`, its parts sent, its last message
/// begun. Returns the connection (kept open by the caller) or why it failed.
async fn stall(
    node: std::net::SocketAddr,
    a: u8,
    i: usize,
    until: Instant,
) -> Result<RawWs, String> {
    let target = format!("/socket.io/?EIO=4&transport=websocket&user=stall-{a}-{i}");
    let mut ws = RawWs::dial_path_until(node, loopback(120 + a), &target, until)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let open = ws.next_text().await.map_err(|e| e.to_string())?;
    if !open.as_deref().is_some_and(|o| o.starts_with('0')) {
        return Err(format!("no OPEN packet: {open:?}"));
    }
    ws.send("40").await.map_err(|e| e.to_string())?;
    let event = format!(
        r#"45{PARTS}-1["publish",{{"room":"lobby","data":[{}]}}]"#,
        (0..PARTS)
            .map(|n| format!(r#"{{"_placeholder":true,"num":{n}}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    ws.send(&event).await.map_err(|e| e.to_string())?;
    let part = vec![0xabu8; PART_BYTES];
    for _ in 0..PARTS {
        let mut frame = masked_head(0x2, PART_BYTES);
        frame.extend(mask(&part, 0));
        ws.send_bytes(&frame).await.map_err(|e| e.to_string())?;
    }
    // An event whose first part is kept, and whose second never ends.
    let event = r#"452-2["publish",{"room":"lobby","data":[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]}]"#;
    ws.send(event).await.map_err(|e| e.to_string())?;
    let mut frame = masked_head(0x2, KEPT_BYTES);
    frame.extend(mask(&vec![0xcd; KEPT_BYTES], 0));
    ws.send_bytes(&frame).await.map_err(|e| e.to_string())?;
    let mut frame = masked_head(0x2, MAX_PAYLOAD);
    frame.extend(mask(&vec![0x5a; MAX_PAYLOAD - HELD_BACK], 0));
    ws.send_bytes(&frame).await.map_err(|e| e.to_string())?;
    Ok(ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_connections_that_stall_their_messages() {
    let node = AbuseNode::start("socketio-stall").await;
    let monitor = Monitor::start(&node);
    let conversation = Conversation::start(&node, "lobby").await;
    let opening_ends = Instant::now() + OPENING;
    let addr = node.http;
    let dials = paced(ADDRESSES, PER_ADDRESS, Duration::ZERO, |a, i| {
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
    // The attack's length: the connections hold their messages meanwhile.
    tokio::time::sleep(ATTACK).await;
    // What the node holds of the budget now: every stalled message and kept part.
    let inbound = node.metric("hubbub_inbound_bytes").await;
    // Each is still open (its message still held), and its event was refused for its
    // parts (`too_long` in the ack), not kept.
    // All at once: the node's keepalive closes them later (no pong comes).
    let checks = held.iter_mut().map(|ws| async move {
        let mut texts = Vec::new();
        let closed = loop {
            match tokio::time::timeout(Duration::from_millis(500), ws.next_text()).await {
                Ok(Ok(Some(text))) => texts.push(text),
                Ok(Ok(None) | Err(_)) => break true,
                Err(_) => break false,
            }
        };
        let refused = texts
            .iter()
            .any(|t| t.starts_with("431[") && t.contains("too_long"));
        (!closed, refused)
    });
    let checked = futures_util::future::join_all(checks).await;
    let open = checked.iter().filter(|(open, _)| *open).count();
    let refused = checked.iter().filter(|(_, refused)| *refused).count();
    let stalled = held.len();
    drop(held);
    let report = conversation.finish().await;
    let (rss, health) = monitor.finish().await;
    assert_withstood(
        "socket.io stalled messages",
        &rss,
        &health,
        &format!(
            "{stalled} connections stalled ({} failed to open), all open after {opened_in:?}, \
             {open} still open at the end, {refused} events refused for their parts, \
             hubbub_inbound_bytes {inbound:?}; {}",
            failed.len(),
            report.summary()
        ),
    );
    report.assert_complete("socket.io stalled messages");
    // The attack must have been made: nearly every connection in place.
    let wanted = usize::from(ADDRESSES) * PER_ADDRESS;
    assert!(
        stalled * 10 >= wanted * 9,
        "only {stalled} of {wanted} connections stalled: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert_eq!(
        open, stalled,
        "the node closed stalled connections: the attack did not hold"
    );
    assert_eq!(
        refused, stalled,
        "each event's parts past a message's bound are refused"
    );
    // Each connection's stalled message and kept part are in the node's budget.
    let inbound = inbound.expect("hubbub_inbound_bytes in /metrics");
    let held = (stalled * (MAX_PAYLOAD + KEPT_BYTES)) as f64;
    assert!(
        inbound >= held,
        "hubbub_inbound_bytes {inbound} < {held}: what the stalled connections hold is not \
         all counted in limits.node_inbound_bytes"
    );
}
