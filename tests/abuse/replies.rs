//! Attack 1: clients that ask for the largest replies and never read them. A room is
//! filled with [`FILL_MESSAGES`] messages of the largest content the node accepts and
//! holds [`CROWD`] members; then [`ATTACKERS`] anonymous connections from one address
//! ask, in turn, for `history` (limit 1000), a fresh `join` (its history and member
//! list) and `presence`, and never read their sockets. One that the node closes comes
//! back (as an attacker would) until the attack ends.

use crate::support::{
    assert_withstood, crowd, largest_content, loopback, AbuseNode, Client, Conversation, Monitor,
    RawWs,
};
use serde_json::json;
use std::time::{Duration, Instant};

/// Messages in the attacked room (the default `rooms.history` keeps 100).
const FILL_MESSAGES: usize = 100;
/// Idle members of the attacked room, so that `presence` and `join` list many.
const CROWD: usize = 1_000;
/// Non-reading connections, all from one address.
const ATTACKERS: usize = 20;
/// Requests per second each attacker sends (under the default
/// `limits.frames_per_second` of 50, so every one is carried out).
const REQUESTS_PER_SEC: u64 = 40;
/// How long the attack lasts.
const ATTACK: Duration = Duration::from_secs(15);

const ROOM: &str = "big-replies";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_reading_clients_asking_for_the_largest_replies() {
    let node = AbuseNode::start("replies").await;
    let monitor = Monitor::start(&node);

    // Fill the room: the default message rate lets a user publish a burst of 10.
    // Each filler joins with `since` the last seq, so that its join reply does not
    // carry the history filled so far (over 1 MiB of it: more than one connection
    // may have queued, issue #13).
    let mut filler = Client::connect(node.http, "user=filler-0").await;
    filler.join(ROOM).await;
    let (content, mut seq) = largest_content(&mut filler, ROOM).await;
    filler.close().await;
    let mut published = 1;
    for f in 1.. {
        if published >= FILL_MESSAGES {
            break;
        }
        let mut filler = Client::connect(node.http, &format!("user=filler-{f}")).await;
        filler
            .ok(json!({"type": "join", "room": ROOM, "since": seq}))
            .await;
        for _ in 0..10.min(FILL_MESSAGES - published) {
            seq = filler.publish(ROOM, &content).await["seq"]
                .as_u64()
                .expect("seq");
            published += 1;
        }
        filler.close().await;
    }
    // Members joined with `since` the last seq: their join replies carry no history.
    let crowd = crowd(
        node.http,
        "crowd",
        CROWD,
        10,
        |_| vec![ROOM.to_owned()],
        Some(seq),
    )
    .await;
    let _crowd = match crowd {
        Ok(members) => members,
        Err(e) => monitor.fail("replies", e).await,
    };
    let conversation = Conversation::start_after(&node, ROOM, seq).await;
    let ends = Instant::now() + ATTACK;
    let mut attackers = Vec::new();
    for a in 0..ATTACKERS {
        let addr = node.http;
        attackers.push(tokio::spawn(async move {
            let requests = [
                json!({"type": "history", "room": ROOM, "limit": 1000}).to_string(),
                json!({"type": "join", "room": ROOM}).to_string(),
                json!({"type": "presence", "room": ROOM}).to_string(),
            ];
            let mut sent = 0u64;
            let mut connections = 0u64;
            let mut n = 0u64;
            while Instant::now() < ends {
                let query = format!("user=hog-{a}-{connections}");
                let Ok(mut ws) = RawWs::dial_until(addr, loopback(50), &query, ends).await else {
                    break;
                };
                connections += 1;
                let mut tick =
                    tokio::time::interval(Duration::from_millis(1_000 / REQUESTS_PER_SEC));
                // A join first (its reply: the room's history and members); a send
                // the node does not take (it stops reading a client whose requests
                // pile up) waits at most until the attack ends.
                // Never read: the replies pile up at the node, or it closes us.
                while Instant::now() < ends {
                    tick.tick().await;
                    let request = &requests[((n + 1) % 3) as usize];
                    n += 1;
                    match tokio::time::timeout_at(ends.into(), ws.send(request)).await {
                        Ok(Ok(())) => sent += 1,
                        Ok(Err(_)) => break,
                        Err(_) => break,
                    }
                }
            }
            (sent, connections)
        }));
    }
    let mut sent = 0;
    let mut connections = 0;
    for attacker in attackers {
        let (s, c) = attacker.await.expect("attacker");
        sent += s;
        connections += c;
    }
    let report = conversation.finish().await;
    let (rss, health) = monitor.finish().await;
    assert_withstood(
        "replies",
        &rss,
        &health,
        &format!(
            "{sent} requests over {connections} attacker connections, content {} chars; {}",
            content.chars().count(),
            report.summary()
        ),
    );
    report.assert_complete("replies");
}
