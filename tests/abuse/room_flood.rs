//! Attack 2: the room-name flood. [`FLOODERS`] connections from one address each join
//! and leave a new room name [`CYCLES_PER_SEC`] times a second for [`ATTACK`]: every
//! join names a room that never existed, and every leave leaves it empty.

use crate::support::{assert_withstood, loopback, AbuseNode, Conversation, Monitor, RawWs};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Connections flooding, all from one address (under `connections_per_ip`, 100).
const FLOODERS: usize = 50;
/// New room names each flooder joins and leaves a second: a join and a leave are two
/// frames, so this is the default `limits.frames_per_second` (50) exactly.
const CYCLES_PER_SEC: u64 = 25;
/// How long the flood lasts.
const ATTACK: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_name_flood() {
    let node = AbuseNode::start("room-flood").await;
    let monitor = Monitor::start(&node);
    let conversation = Conversation::start(&node, "lobby").await;
    let ends = Instant::now() + ATTACK;
    let mut flooders = Vec::new();
    for f in 0..FLOODERS {
        let addr = node.http;
        flooders.push(tokio::spawn(async move {
            let mut rooms = 0u64;
            let mut connections = 0u64;
            while Instant::now() < ends {
                let query = format!("user=flood-{f}-{connections}");
                let Ok(ws) = RawWs::dial_until(addr, loopback(60), &query, ends).await else {
                    break;
                };
                connections += 1;
                // Replies are read and thrown away, so this is a reading client.
                let (mut read, mut write) = ws.into_split();
                let drain = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut read, &mut tokio::io::sink()).await;
                });
                let mut tick = tokio::time::interval(Duration::from_millis(1_000 / CYCLES_PER_SEC));
                while Instant::now() < ends && !drain.is_finished() {
                    tick.tick().await;
                    let room = format!("flood-{f}-{rooms}");
                    rooms += 1;
                    let mut frames = crate::support::masked_text(
                        json!({"type": "join", "room": room}).to_string().as_bytes(),
                    );
                    frames.extend(crate::support::masked_text(
                        json!({"type": "leave", "room": room})
                            .to_string()
                            .as_bytes(),
                    ));
                    match tokio::time::timeout_at(ends.into(), write.write_all(&frames)).await {
                        Ok(Ok(())) => {}
                        _ => break,
                    }
                }
                drain.abort();
            }
            rooms
        }));
    }
    let mut rooms = 0;
    for flooder in flooders {
        rooms += flooder.await.expect("flooder");
    }
    let report = conversation.finish().await;
    let rooms_left = node.metric("hubbub_rooms").await.unwrap_or(f64::NAN);
    let joins = node
        .metric(r#"hubbub_messages_total{direction="in",type="join"}"#)
        .await
        .unwrap_or(f64::NAN);
    let (rss, health) = monitor.finish().await;
    assert_withstood(
        "room-flood",
        &rss,
        &health,
        &format!(
            "{rooms} room names sent, {joins} joins read by the node; hubbub_rooms \
             {rooms_left} after; {}",
            report.summary()
        ),
    );
    report.assert_complete("room-flood");
}
