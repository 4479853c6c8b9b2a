//! Attack 4: a rename storm across many rooms. [`RENAMERS`] connections are each
//! joined to the same [`ROOMS`] rooms (the default `limits.max_rooms_per_session`) and
//! rename themselves [`RENAMES_PER_SEC`] times a second: every rename is a `renamed`
//! frame in every room the user is in, to every member.

use crate::support::{
    assert_withstood, crowd, loopback, masked_text, AbuseNode, Conversation, Monitor, RawWs,
};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Rooms each renamer is in.
const ROOMS: usize = 100;
/// Renaming connections, each its own user, from one address.
const RENAMERS: usize = 10;
/// Idle members per room besides the renamers (each in one room).
const MEMBERS_PER_ROOM: usize = 2;
/// Renames per second of each renamer (under the default `frames_per_second`, 50).
const RENAMES_PER_SEC: u64 = 20;
/// How long the storm lasts.
const ATTACK: Duration = Duration::from_secs(15);

fn room(i: usize) -> String {
    format!("storm-{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_storm_across_many_rooms() {
    let node = AbuseNode::start("rename-storm").await;
    let monitor = Monitor::start(&node);
    let members = crowd(
        node.http,
        "onlooker",
        ROOMS * MEMBERS_PER_ROOM,
        71,
        |i| vec![room(i % ROOMS)],
        None,
    )
    .await;
    let _members = match members {
        Ok(members) => members,
        Err(e) => monitor.fail("rename-storm", e).await,
    };
    let renamers = crowd(
        node.http,
        "renamer",
        RENAMERS,
        70,
        |_| (0..ROOMS).map(room).collect(),
        None,
    )
    .await;
    let renamers = match renamers {
        Ok(renamers) => renamers,
        Err(e) => monitor.fail("rename-storm", e).await,
    };
    // The renamers' idle connections are only a way in: each renamer renames on a
    // second connection of its user, which the rename reaches in every room.
    let conversation = Conversation::start(&node, &room(0)).await;
    let ends = Instant::now() + ATTACK;
    let mut storms = Vec::new();
    for r in 0..RENAMERS {
        let addr = node.http;
        storms.push(tokio::spawn(async move {
            let query = format!("user=renamer-{r}");
            let Ok(ws) = RawWs::dial_until(addr, loopback(69), &query, ends).await else {
                return 0;
            };
            let (mut read, mut write) = ws.into_split();
            let drain = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut read, &mut tokio::io::sink()).await;
            });
            let mut renames = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1_000 / RENAMES_PER_SEC));
            while Instant::now() < ends && !drain.is_finished() {
                tick.tick().await;
                let frame = json!({"type": "rename", "name": format!("Renamer {r} #{renames}")});
                let frame = masked_text(frame.to_string().as_bytes());
                match tokio::time::timeout_at(ends.into(), write.write_all(&frame)).await {
                    Ok(Ok(())) => renames += 1,
                    _ => break,
                }
            }
            drain.abort();
            renames
        }));
    }
    let mut renames = 0;
    for storm in storms {
        renames += storm.await.expect("renamer");
    }
    let report = conversation.finish().await;
    let (rss, health) = monitor.finish().await;
    let renamers_left = renamers.iter().filter(|m| !m.ended()).count();
    assert_withstood(
        "rename-storm",
        &rss,
        &health,
        &format!(
            "{renames} renames by {RENAMERS} users in {ROOMS} rooms each, \
             {renamers_left} renamer members still connected; {}",
            report.summary()
        ),
    );
    report.assert_complete("rename-storm");
}
