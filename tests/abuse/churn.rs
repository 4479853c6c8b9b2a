//! Attack 3: join/leave churn in a room of [`MEMBERS`] idle members. Every first join
//! and last leave of a user is a `presence_diff` to every member; [`CHURNERS`]
//! connections each join and leave the room [`CYCLES_PER_SEC`] times a second.
//!
//! The default `rate_limit.connections_per_ip` is 100, so the members come from many
//! loopback addresses (127.0.0.100 on, 90 each) rather than with the limit raised;
//! `limits.max_connections` (10,000) holds them all.

use crate::support::{
    assert_withstood, crowd, loopback, masked_text, AbuseNode, Conversation, Monitor, RawWs,
};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Idle members of the churned room.
const MEMBERS: usize = 5_000;
/// Connections joining and leaving, each its own user, from one address.
const CHURNERS: usize = 20;
/// Join + leave cycles per second of each churner (two frames each: 10 frames a
/// second, under the default `limits.frames_per_second`).
const CYCLES_PER_SEC: u64 = 5;
/// How long the churn lasts.
const ATTACK: Duration = Duration::from_secs(20);

const ROOM: &str = "town-square";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_leave_churn_in_a_five_thousand_member_room() {
    let node = AbuseNode::start("churn").await;
    // Watched from the start: filling the room is N joins of N² diffs.
    let monitor = Monitor::start(&node);
    let filled = Instant::now();
    let members = match crowd(
        node.http,
        "resident",
        MEMBERS,
        100,
        |_| vec![ROOM.to_owned()],
        None,
    )
    .await
    {
        Ok(members) => members,
        Err(e) => monitor.fail("churn", e).await,
    };
    let fill_took = filled.elapsed();
    let conversation = Conversation::start(&node, ROOM).await;
    let ends = Instant::now() + ATTACK;
    let mut churners = Vec::new();
    for c in 0..CHURNERS {
        let addr = node.http;
        churners.push(tokio::spawn(async move {
            let mut cycles = 0u64;
            let query = format!("user=churner-{c}");
            let Ok(ws) = RawWs::dial_until(addr, loopback(99), &query, ends).await else {
                return 0;
            };
            let (mut read, mut write) = ws.into_split();
            let drain = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut read, &mut tokio::io::sink()).await;
            });
            let mut frames =
                masked_text(json!({"type": "join", "room": ROOM}).to_string().as_bytes());
            frames.extend(masked_text(
                json!({"type": "leave", "room": ROOM})
                    .to_string()
                    .as_bytes(),
            ));
            let mut tick = tokio::time::interval(Duration::from_millis(1_000 / CYCLES_PER_SEC));
            while Instant::now() < ends && !drain.is_finished() {
                tick.tick().await;
                match tokio::time::timeout_at(ends.into(), write.write_all(&frames)).await {
                    Ok(Ok(())) => cycles += 1,
                    _ => break,
                }
            }
            drain.abort();
            cycles
        }));
    }
    let mut cycles = 0;
    for churner in churners {
        cycles += churner.await.expect("churner");
    }
    let report = conversation.finish().await;
    let (rss, health) = monitor.finish().await;
    let still_members = members.iter().filter(|m| !m.ended()).count();
    assert_withstood(
        "churn",
        &rss,
        &health,
        &format!(
            "{MEMBERS} members joined in {fill_took:?}, {cycles} join/leave cycles, \
             {still_members} members still connected; {}",
            report.summary()
        ),
    );
    report.assert_complete("churn");
}
