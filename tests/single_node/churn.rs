//! Rooms, churn and lifetimes against a real node: the node-wide room cap
//! (`room_limit`), room creation per connection, rooms that never held a message
//! retiring at once, the per-connection join/leave, rename and direct limits, the
//! bound on direct messages one user receives (a flood from many anonymous ids does not
//! get the victim closed), presence diffs batched in a large room, rooms holding no
//! state for users who left, and token timers ending with their sessions.

use crate::scrape::Metrics;
use crate::support::{eventually, test_settings, Client, TestNode};
use hubbub::config::{AuthMode, Secret};
use hubbub::Behaviours;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Instant;

async fn scrape(node: &TestNode) -> Metrics {
    let (status, body) = node.get("/metrics").await;
    assert_eq!(status, 200, "{body}");
    Metrics::parse(&body)
}

async fn gauge(node: &TestNode, name: &str) -> f64 {
    scrape(node).await.value(name, &[])
}

async fn refusals(node: &TestNode, limit: &str) -> f64 {
    scrape(node)
        .await
        .value("hubbub_limit_refusals_total", &[("limit", limit)])
}

/// Waits until `hubbub_rooms` is `rooms`.
async fn rooms_running(node: &TestNode, rooms: f64) {
    eventually(&format!("{rooms} rooms running"), || async {
        (gauge(node, "hubbub_rooms").await == rooms).then_some(())
    })
    .await;
}

fn join(room: &str) -> Value {
    json!({"type": "join", "room": room})
}

fn leave(room: &str) -> Value {
    json!({"type": "leave", "room": room})
}

/// Asserts a `rate_limited` refusal with a `retry_after_ms`.
fn assert_rate_limited(reply: &Value) {
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
    assert!(
        reply["error"]["retry_after_ms"].as_u64().is_some(),
        "{reply}"
    );
}

#[tokio::test]
async fn the_room_cap_refuses_new_rooms_with_room_limit_and_running_rooms_still_work() {
    let node = TestNode::start_adjusted(|s| s.limits.max_rooms = 2).await;
    let mut alice = node.connect("alice", "Alice").await;
    let mut bob = node.connect("bob", "Bob").await;
    alice.join("one").await;
    alice.join("two").await;

    let refused = bob.request(join("three")).await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["error"]["code"], "room_limit", "{refused}");
    assert_eq!(refusals(&node, "max_rooms").await, 1.0);

    // The running rooms still take joins and messages.
    bob.join("one").await;
    alice.publish("one", "still here").await;
    bob.expect(|f| f["type"] == "message", "the message").await;
    assert_eq!(gauge(&node, "hubbub_rooms").await, 2.0);

    // Once one retires (it never held a message), a new room may start.
    alice.ok(leave("two")).await;
    rooms_running(&node, 1.0).await;
    bob.join("three").await;
}

#[tokio::test]
async fn a_room_that_never_held_a_message_retires_as_soon_as_it_is_empty() {
    // The default idle TTL (300 s) applies to rooms with history only.
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("kept").await;
    alice.publish("kept", "worth keeping").await;
    alice.ok(leave("kept")).await;
    alice.join("passing").await;
    alice.ok(leave("passing")).await;

    // Only "passing" goes: "kept" waits for its TTL with its history.
    rooms_running(&node, 1.0).await;
    let rejoined = alice.join("kept").await;
    assert_eq!(rejoined["history"][0]["content"], "worth keeping");

    // A flood of new names leaves nothing behind.
    for i in 0..30 {
        let room = format!("flood-{i}");
        alice.join(&room).await;
        alice.ok(leave(&room)).await;
    }
    rooms_running(&node, 1.0).await;
}

#[tokio::test]
async fn room_creation_is_limited_per_connection_and_existing_rooms_stay_open() {
    let node = TestNode::start_adjusted(|s| {
        s.limits.room_creations_per_minute = 3;
    })
    .await;
    let mut bob = node.connect("bob", "Bob").await;
    bob.join("lobby").await;
    let mut alice = node.connect("alice", "Alice").await;
    for i in 0..3 {
        alice.join(&format!("new-{i}")).await;
    }
    let refused = alice.request(join("new-3")).await;
    assert_rate_limited(&refused);
    assert_eq!(refusals(&node, "room_creations").await, 1.0);
    // A room that runs already is not a creation.
    alice.join("lobby").await;
    // Another connection has its own allowance.
    bob.join("new-3").await;
}

#[tokio::test]
async fn joins_and_leaves_over_the_rate_are_refused_and_the_connection_stays() {
    // One a second, three at once (max_rooms_per_session).
    let node = TestNode::start_adjusted(|s| {
        s.limits.joins_per_second = 1;
        s.limits.max_rooms_per_session = 3;
    })
    .await;
    let mut alice = node.connect("alice", "Alice").await;
    let mut bob = node.connect("bob", "Bob").await;
    bob.join("lobby").await;
    alice.join("lobby").await;
    alice.ok(leave("lobby")).await;
    alice.join("lobby").await;
    let refused = alice.request(leave("lobby")).await;
    assert_rate_limited(&refused);
    assert_eq!(refusals(&node, "joins").await, 1.0);
    // The refused leave changed nothing: alice is still a member, still connected.
    assert!(bob.presence("lobby").await.contains_key("alice"));
    alice.ping().await;
    let wait = refused["error"]["retry_after_ms"].as_u64().unwrap_or(1000);
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    alice.ok(leave("lobby")).await;
}

#[tokio::test]
async fn renames_over_the_rate_are_refused_and_the_name_stays() {
    // 60 a minute, five at once.
    let node = TestNode::start_adjusted(|s| s.limits.renames_per_minute = 60).await;
    let mut alice = node.connect("alice", "Alice").await;
    for i in 0..5 {
        let data = alice
            .ok(json!({"type": "rename", "name": format!("Alice {i}")}))
            .await;
        assert_eq!(data["user"]["name"], format!("Alice {i}"));
    }
    let refused = alice
        .request(json!({"type": "rename", "name": "Mallory"}))
        .await;
    assert_rate_limited(&refused);
    assert_eq!(refusals(&node, "renames").await, 1.0);
    let mut bob = node.connect("bob", "Bob").await;
    bob.join("lobby").await;
    alice.join("lobby").await;
    let members = bob.ok(json!({"type": "presence", "room": "lobby"})).await;
    let names: Vec<&Value> = (members["members"].as_array().into_iter().flatten())
        .map(|m| &m["name"])
        .collect();
    assert!(names.contains(&&json!("Alice 4")), "{members}");
}

#[tokio::test]
async fn directs_over_the_connection_rate_are_refused() {
    let node = TestNode::start_adjusted(|s| s.limits.directs_per_second = 2).await;
    let mut alice = node.connect("alice", "Alice").await;
    let _bob = node.connect("bob", "Bob").await;
    let direct = json!({"type": "direct", "to": "bob", "content": "hi"});
    alice.ok(direct.clone()).await;
    alice.ok(direct.clone()).await;
    assert_rate_limited(&alice.request(direct).await);
    assert_eq!(refusals(&node, "directs").await, 1.0);
}

#[tokio::test]
async fn a_direct_flood_from_many_anonymous_ids_leaves_the_victim_connected() {
    // Large directs and a short queue: without the bound per target, the flood below
    // (about 30 MB at a victim that reads nothing) fills the loopback buffers and the
    // queue, and the victim is closed with 4009.
    const PER_TARGET: u64 = 2;
    const SENDERS: usize = 20;
    const ROUNDS: usize = 30;
    let node = TestNode::start_adjusted(|s| {
        s.limits.max_frame_bytes = 256 * 1024;
        s.limits.max_message_chars = 50_000;
        s.limits.max_message_bytes = 50_000;
        s.limits.outbound_queue = 8;
        s.limits.frames_per_second = 0;
        s.limits.directs_per_second = 0;
        s.limits.directs_per_target_per_second = PER_TARGET as u32;
        s.rate_limit.handshakes_per_ip_per_sec = 0;
    })
    .await;
    let mut victim = node.connect("victim", "Victim").await;
    // From here on the victim reads nothing until the flood is over.
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(node.connect(&format!("throwaway-{i}"), "X").await);
    }
    let content = "x".repeat(50_000);
    let started = Instant::now();
    let (mut delivered, mut limited) = (0u64, 0u64);
    for _ in 0..ROUNDS {
        let mut refs = Vec::new();
        for sender in &mut senders {
            let direct = json!({"type": "direct", "to": "victim", "content": content});
            refs.push(sender.send_request(direct).await);
        }
        for (sender, reference) in senders.iter_mut().zip(refs) {
            let reply = sender.reply_to(&reference).await;
            match reply["ok"].as_bool() {
                Some(true) => delivered += 1,
                _ => {
                    assert_rate_limited(&reply);
                    limited += 1;
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // At most a bucket at once and the rate since (one more for rounding).
    let allowed = PER_TARGET as f64 * (1.0 + elapsed) + 1.0;
    assert!(
        delivered > 0 && (delivered as f64) <= allowed,
        "{delivered} delivered in {elapsed:.1}s, at most {allowed:.0} allowed"
    );
    assert_eq!(delivered + limited, (SENDERS * ROUNDS) as u64);
    assert_eq!(refusals(&node, "directs_per_target").await, limited as f64);

    // The victim is still connected and gets exactly what was accepted.
    victim.ping().await;
    let received = victim.seen(|f| f["type"] == "direct").len() as u64;
    assert_eq!(received, delivered);
    let metrics = scrape(&node).await;
    let slow: f64 = ["frames", "bytes", "node_budget"]
        .iter()
        .map(|reason| {
            metrics.value(
                "hubbub_slow_consumer_disconnects_total",
                &[("reason", reason)],
            )
        })
        .sum();
    assert_eq!(slow, 0.0);
}

#[tokio::test]
async fn a_large_room_batches_joins_into_one_presence_diff() {
    // Every room batches; a batch lasts long enough to gather every join below.
    let node = TestNode::start_adjusted(|s| {
        s.rooms.presence_batch_members = 0;
        s.rooms.presence_batch_ms = 2_000;
        s.rate_limit.handshakes_per_ip_per_sec = 0;
    })
    .await;
    let mut watcher = node.connect("watcher", "Watcher").await;
    watcher.join("stadium").await;
    let mut fans = Vec::new();
    for i in 0..10 {
        fans.push(node.connect(&format!("fan-{i}"), "Fan").await);
    }
    let mut refs = Vec::new();
    for fan in &mut fans {
        refs.push(fan.send_request(join("stadium")).await);
    }
    for (fan, reference) in fans.iter_mut().zip(refs) {
        assert_eq!(fan.reply_to(&reference).await["ok"], true);
    }
    let expected: BTreeSet<String> = (0..10).map(|i| format!("fan-{i}")).collect();
    let mut joined = BTreeSet::new();
    let mut frames = 0;
    // The watcher's own join may come back in a batch of its own.
    while !expected.is_subset(&joined) {
        let diff = watcher.expect_type("presence_diff").await;
        frames += 1;
        for member in diff["joins"].as_array().into_iter().flatten() {
            joined.insert(member["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert!(frames < 10, "{frames} presence_diff frames for 10 joins");
    assert!(joined.is_subset(
        &expected
            .iter()
            .cloned()
            .chain(["watcher".to_owned()])
            .collect()
    ));
    assert!(
        scrape(&node)
            .await
            .value("hubbub_presence_batches_total", &[])
            >= 1.0
    );
}

#[tokio::test]
async fn a_long_lived_room_holds_no_state_for_users_who_came_and_went() {
    let node = TestNode::start_adjusted(|s| s.rate_limit.handshakes_per_ip_per_sec = 0).await;
    let mut anchor = node.connect("anchor", "Anchor").await;
    anchor.join("lobby").await;
    anchor.publish("lobby", "the room stays in use").await;
    let baseline = gauge(&node, "hubbub_room_state_entries").await;
    assert!(baseline > 0.0, "the anchor's own entries are counted");

    for i in 0..60 {
        let mut visitor = node.connect(&format!("visitor-{i}"), "Visitor").await;
        visitor.join("lobby").await;
        if i % 3 == 0 {
            visitor.ok(leave("lobby")).await;
        }
        if i % 2 == 0 {
            visitor.close().await;
        } else {
            visitor.vanish();
        }
    }
    eventually("the visitors' entries to be gone", || async {
        (gauge(&node, "hubbub_room_state_entries").await == baseline).then_some(())
    })
    .await;
    assert_eq!(anchor.presence("lobby").await.len(), 1);
}

const SECRET: &str = "hubbub-test-secret-that-is-long-enough-for-hs256";

#[tokio::test]
async fn a_token_timer_ends_with_its_session() {
    let mut settings = test_settings();
    settings.auth.mode = AuthMode::Jwt;
    settings.auth.secret = Secret::new(SECRET);
    settings.rate_limit.handshakes_per_ip_per_sec = 0;
    let node = TestNode::start_with(settings, Behaviours::new()).await;
    // A day-long token, as a client that reconnects often would hold.
    let claims = json!({"sub": "alice", "exp": jsonwebtoken::get_current_timestamp() + 86_400});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    let query = format!("token={token}");

    let kept = Client::connect(&node, &query).await;
    for i in 0..40 {
        let client = Client::connect(&node, &query).await;
        if i % 2 == 0 {
            client.close().await;
        } else {
            client.vanish();
        }
    }
    eventually("one timer for the one open session", || async {
        (gauge(&node, "hubbub_session_timers").await == 1.0).then_some(())
    })
    .await;
    kept.close().await;
    eventually("no timer left", || async {
        (gauge(&node, "hubbub_session_timers").await == 0.0).then_some(())
    })
    .await;
}
