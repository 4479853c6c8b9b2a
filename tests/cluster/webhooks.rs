//! Webhooks from a three-node cluster (docs/webhooks.md, "What is guaranteed"): each
//! `publish` and each `join` event is sent by the leader of the room's shard alone,
//! numbered by the room's log; when the leader is killed with events still queued
//! (the backend was down), the new leader sends them again and what follows, and
//! nothing is lost (the backend deduplicates by `delivery_id`); the members the dead
//! node held leave, sent by the new leader.

use crate::backend::{Backend, Recorded, Reply};
use crate::hubbub_node::{toml_list, toml_str};
use crate::support::{find_room, owner_of, shard_of, Client, Cluster, DEADLINE};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const SECRET: &str = "whsec-cluster-test-0123456789";

/// The events of the requests the backend took, in arrival order.
fn accepted(requests: &[Recorded]) -> Vec<Value> {
    let mut all = Vec::new();
    for request in requests.iter().filter(|r| r.accepted()) {
        match request.json() {
            Value::Array(batch) => all.extend(batch),
            one => all.push(one),
        }
    }
    all
}

/// How many times each delivery id of `kind` was delivered.
fn deliveries(events: &[Value], kind: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for event in events.iter().filter(|e| e["event"] == kind) {
        *counts
            .entry(event["delivery_id"].as_str().unwrap_or("").to_owned())
            .or_insert(0) += 1;
    }
    counts
}

async fn see_all(client: &mut Client, room: &str, n: usize) {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let history = client.full_history(room).await;
        if history.len() >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "saw {} of {n}",
            history.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_event_is_sent_by_one_node_and_a_failover_loses_none() {
    let backend = Backend::start().await;
    let mut cluster = Cluster::plan("webhooks", 3).await;
    let all = ["a", "b", "c"];
    for name in cluster.names() {
        cluster
            .config(&name)
            .set("[webhooks]", "name", toml_str("backend"))
            .set("[webhooks]", "url", toml_str(backend.url("/events")))
            .set(
                "[webhooks]",
                "events",
                toml_list(&["publish", "join", "leave", "connect"]),
            )
            .set("[webhooks]", "secret", toml_str(SECRET))
            .set("[webhooks]", "retry_initial_ms", 50)
            .set("[webhooks]", "retry_max_ms", 200);
    }
    let names = cluster.names();
    for name in &names {
        cluster.start_node(name).await;
    }
    cluster.wait_converged(&names).await;
    // A room whose shard `a` is expected to lead; read who does.
    let room = find_room("hooked", |r| owner_of(r, &all) == "a");
    let shard = shard_of(&room, &all);
    let leader = cluster.leader_seen_by("b", shard).await.expect("a leader");

    let mut bob = cluster.connect("b", "bob").await;
    let mut carol = cluster.connect("c", "carol").await;
    bob.join_retry(&room).await;
    carol.join_retry(&room).await;
    for i in 0..5 {
        bob.publish_retry(&room, &format!("b{i}")).await;
        carol.publish_retry(&room, &format!("c{i}")).await;
    }
    // Every node has applied all ten (the clients of b and c see them)...
    see_all(&mut bob, &room, 10).await;
    see_all(&mut carol, &room, 10).await;
    // ...so anything a follower wrongly queued for them is queued before these
    // connects, which each node delivers after it.
    let _b2 = cluster.connect("b", "barrier-b").await;
    let _c2 = cluster.connect("c", "barrier-c").await;
    let _a2 = cluster.connect("a", "barrier-a").await;
    let requests = backend
        .wait_for("/events", "ten publishes and the barriers", |seen| {
            let events = accepted(seen);
            deliveries(&events, "publish").len() >= 10
                && ["barrier-a", "barrier-b", "barrier-c"].iter().all(|u| {
                    events
                        .iter()
                        .any(|e| e["event"] == "connect" && e["user"]["id"] == *u)
                })
        })
        .await;
    let events = accepted(&requests);
    let publishes = deliveries(&events, "publish");
    assert_eq!(publishes.len(), 10);
    assert!(
        publishes.values().all(|n| *n == 1),
        "each publish event once: {publishes:?}"
    );
    for event in events.iter().filter(|e| e["event"] == "publish") {
        assert_eq!(
            event["node"],
            leader.as_str(),
            "sent by the shard's leader: {event}"
        );
    }
    let joins = deliveries(&events, "join");
    assert_eq!(joins.len(), 2, "bob's and carol's joins: {events:?}");
    assert!(joins.values().all(|n| *n == 1), "each join once: {joins:?}");
    let mut numbers = Vec::new();
    for user in ["bob", "carol"] {
        let join: Vec<&Value> = events
            .iter()
            .filter(|e| e["event"] == "join" && e["user"]["id"] == user)
            .collect();
        assert_eq!(join.len(), 1, "{user}'s join once: {join:?}");
        assert_eq!(join[0]["node"], leader.as_str(), "from the shard's leader");
        numbers.push((join[0]["life"].clone(), join[0]["seq"].as_u64().unwrap()));
    }
    // One life of the room; its room_created was 1 (not asked for), the joins 2 and 3.
    numbers.sort_by_key(|(_, seq)| *seq);
    assert_eq!(numbers[0].0, numbers[1].0, "{numbers:?}");
    assert_eq!((numbers[0].1, numbers[1].1), (2, 3), "{numbers:?}");

    // A member on the leader's node, who dies with it.
    let mut dave = cluster.connect(&leader, "dave").await;
    dave.join_retry(&room).await;
    backend
        .wait_for("/events", "dave's join", |seen| {
            accepted(seen)
                .iter()
                .any(|e| e["event"] == "join" && e["user"]["id"] == "dave")
        })
        .await;

    // The backend goes down; two more messages wait in the leader's queue, which
    // the leader takes with it when it dies. The new leader sends them again.
    let down = Arc::new(AtomicBool::new(true));
    let is_down = down.clone();
    backend.respond(move |_| {
        if is_down.load(Ordering::SeqCst) {
            Reply::status(503)
        } else {
            Reply::ok(json!({}))
        }
    });
    let before = backend.requests("/events").len();
    bob.publish_retry(&room, "queued-0").await;
    carol.publish_retry(&room, "queued-1").await;
    backend
        .wait_for(
            "/events",
            "the leader trying while the backend is down",
            |seen| {
                seen[before..]
                    .iter()
                    .any(|r| r.status == 503 && r.body.windows(8).any(|w| w == b"queued-0"))
            },
        )
        .await;
    cluster.kill9(&leader);
    down.store(false, Ordering::SeqCst);
    let mut survivors: Vec<Client> = Vec::new();
    for name in all.iter().filter(|n| **n != leader) {
        let mut client = cluster.connect(name, &format!("after-{name}")).await;
        client.join_retry(&room).await;
        survivors.push(client);
    }
    for i in 0..3 {
        for client in survivors.iter_mut() {
            client.publish_retry(&room, &format!("after{i}")).await;
        }
    }
    let expected = 12 + 3 * survivors.len();
    let dave_left = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["event"] == "leave" && e["user"]["id"] == "dave")
            .cloned()
            .collect()
    };
    let requests = backend
        .wait_for(
            "/events",
            "every publish after the failover, and dave's leave",
            |seen| {
                let events = accepted(seen);
                deliveries(&events, "publish").len() >= expected && !dave_left(&events).is_empty()
            },
        )
        .await;
    let events = accepted(&requests);
    let left = dave_left(&events);
    assert_ne!(
        left[0]["node"],
        leader.as_str(),
        "dave's node is dead: the new leader sends his leave: {left:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "join" && e["user"]["id"] == "dave"),
        "and his join was sent: {events:?}"
    );
    let seqs: std::collections::BTreeSet<u64> = events
        .iter()
        .filter(|e| e["event"] == "publish")
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    // A retried publish may have been ordered twice (its ack was lost): more seqs
    // than publishes is fine, a hole is not.
    let last = *seqs.last().unwrap();
    assert!(last >= expected as u64, "{seqs:?}");
    assert_eq!(
        seqs,
        (1..=last).collect(),
        "every message of the room, none lost"
    );
}

/// A frozen node's members leave (sent by the shard's leader once the node is
/// declared down) and join again when it wakes up, each event once, numbered on in
/// the room's one life.
#[tokio::test]
async fn a_frozen_nodes_members_leave_and_join_again_when_it_wakes() {
    let backend = Backend::start().await;
    let mut cluster = Cluster::plan("webhooks-frozen", 3).await;
    let all = ["a", "b", "c"];
    for name in cluster.names() {
        cluster
            .config(&name)
            .set("[webhooks]", "name", toml_str("backend"))
            .set("[webhooks]", "url", toml_str(backend.url("/events")))
            .set("[webhooks]", "events", toml_list(&["join", "leave"]))
            .set("[webhooks]", "secret", toml_str(SECRET))
            .set("[webhooks]", "retry_initial_ms", 50)
            .set("[webhooks]", "retry_max_ms", 200);
    }
    let names = cluster.names();
    for name in &names {
        cluster.start_node(name).await;
    }
    cluster.wait_converged(&names).await;
    // A room whose shard `a` leads, with members on a and on c; c is frozen.
    let room = find_room("frozen", |r| owner_of(r, &all) == "a");
    let mut ann = cluster.connect("a", "ann").await;
    let mut erin = cluster.connect("c", "erin").await;
    ann.join_retry(&room).await;
    // A join's reply does not wait for its membership entry (a user's first join on a
    // node is written to the log after it), so erin joins only once ann's join event
    // is out: the numbering below is then ann 2, erin 3, not a race between nodes.
    backend
        .wait_for("/events", "ann's join", |seen| {
            accepted(seen)
                .iter()
                .any(|e| e["event"] == "join" && e["user"]["id"] == "ann")
        })
        .await;
    erin.join_retry(&room).await;
    let erins = |seen: &[Recorded], kind: &str| -> Vec<Value> {
        accepted(seen)
            .into_iter()
            .filter(|e| e["event"] == kind && e["user"]["id"] == "erin")
            .collect()
    };
    backend
        .wait_for("/events", "erin's join", |seen| {
            !erins(seen, "join").is_empty()
        })
        .await;
    cluster.sigstop("c");
    let requests = backend
        .wait_for("/events", "erin's leave", |seen| {
            !erins(seen, "leave").is_empty()
        })
        .await;
    let left = erins(&requests, "leave");
    assert_ne!(
        left[0]["node"], "c",
        "the frozen node sends nothing: {left:?}"
    );
    cluster.sigcont("c");
    let requests = backend
        .wait_for("/events", "erin's second join", |seen| {
            deliveries(&erins(seen, "join"), "join").len() >= 2
        })
        .await;
    let events = accepted(&requests);
    let mut numbered: Vec<(String, String, u64)> = events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default().to_owned(),
                e["user"]["id"].as_str().unwrap_or_default().to_owned(),
                e["seq"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    numbered.sort_by_key(|(_, _, seq)| *seq);
    numbered.dedup();
    // room_created (1) is not asked for; ann 2, erin 3, erin leaves 4, joins 5.
    assert_eq!(
        numbered,
        [
            ("join".to_owned(), "ann".to_owned(), 2),
            ("join".to_owned(), "erin".to_owned(), 3),
            ("leave".to_owned(), "erin".to_owned(), 4),
            ("join".to_owned(), "erin".to_owned(), 5),
        ],
        "{events:?}"
    );
    assert!(
        events.iter().all(|e| e["life"] == events[0]["life"]),
        "one life of the room: {events:?}"
    );
    // Ann, on a node that never stopped, never left.
    assert!(events
        .iter()
        .all(|e| !(e["event"] == "leave" && e["user"]["id"] == "ann")));
}

/// A backend down for longer than the replay window when the leader dies loses
/// nothing: the old leader recorded in the room's log how far its events were
/// delivered, and the new leader sends again from there, not from the window.
#[tokio::test]
async fn a_new_leader_resends_from_the_recorded_mark_past_the_replay_window() {
    let backend = Backend::start().await;
    let mut cluster = Cluster::plan("webhooks-mark", 3).await;
    let all = ["a", "b", "c"];
    for name in cluster.names() {
        cluster
            .config(&name)
            .set("hooks", "webhook_replay_secs", 1)
            .set("[webhooks]", "name", toml_str("backend"))
            .set("[webhooks]", "url", toml_str(backend.url("/events")))
            .set("[webhooks]", "events", toml_list(&["publish"]))
            .set("[webhooks]", "secret", toml_str(SECRET))
            .set("[webhooks]", "retry_initial_ms", 50)
            .set("[webhooks]", "retry_max_ms", 200);
    }
    let names = cluster.names();
    for name in &names {
        cluster.start_node(name).await;
    }
    cluster.wait_converged(&names).await;
    let room = find_room("marked", |r| owner_of(r, &all) == "a");
    let shard = shard_of(&room, &all);
    let leader = cluster.leader_seen_by("b", shard).await.expect("a leader");
    let writer = all
        .iter()
        .copied()
        .find(|n| *n != leader)
        .expect("a follower");
    let mut bob = cluster.connect(writer, "bob").await;
    bob.join_retry(&room).await;
    for i in 0..3 {
        bob.publish_retry(&room, &format!("early{i}")).await;
    }
    backend
        .wait_for("/events", "the early publishes", |seen| {
            deliveries(&accepted(seen), "publish").len() >= 3
        })
        .await;
    // Down: three more wait at the leader, for longer than the replay window.
    let down = Arc::new(AtomicBool::new(true));
    let is_down = down.clone();
    backend.respond(move |_| {
        if is_down.load(Ordering::SeqCst) {
            Reply::status(503)
        } else {
            Reply::ok(json!({}))
        }
    });
    for i in 0..3 {
        bob.publish_retry(&room, &format!("queued{i}")).await;
    }
    let before = backend.requests("/events").len();
    backend
        .wait_for("/events", "the leader retrying the queued ones", |seen| {
            seen[before..].iter().filter(|r| r.status == 503).count() >= 3
        })
        .await;
    // Past the window: 1 s, and the margin for clocks (room_log.rs, 5 s) besides.
    tokio::time::sleep(std::time::Duration::from_millis(6_500)).await;
    cluster.kill9(&leader);
    down.store(false, Ordering::SeqCst);
    // The new leader resends the queued ones (and what it sends next).
    bob.publish_retry(&room, "after").await;
    let requests = backend
        .wait_for("/events", "every publish, the queued ones too", |seen| {
            deliveries(&accepted(seen), "publish").len() >= 7
        })
        .await;
    let events = accepted(&requests);
    let contents: std::collections::BTreeSet<String> = events
        .iter()
        .filter(|e| e["event"] == "publish")
        .map(|e| {
            e["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    for i in 0..3 {
        assert!(contents.contains(&format!("queued{i}")), "{contents:?}");
    }
}
