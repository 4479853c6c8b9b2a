//! Webhook delivery from one node: every event signed (the signature verified here
//! as a backend would), retried after a 500, deduplicated by `delivery_id`, ordered
//! by the per-room sequence, nothing lost while the backend is down within the
//! queue's bound, and the overflow past it counted.

use crate::backend::{Backend, Recorded, Reply};
use crate::scrape::Metrics;
use crate::support::TestNode;
use hubbub::config::{Secret, WebhookEvent, WebhookSettings};
use hubbub::hooks::signing;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &str = "whsec-test-0123456789";

fn webhook(backend: &Backend, events: &[WebhookEvent]) -> WebhookSettings {
    WebhookSettings {
        name: "backend".into(),
        url: backend.url("/events"),
        events: events.to_vec(),
        secret: Secret::new(SECRET),
        retry_initial_ms: 50,
        retry_max_ms: 200,
        ..WebhookSettings::default()
    }
}

/// Every event the requests carried, in the order they were POSTed (a batch is an
/// array, oldest first), after checking each request's signature.
fn events(requests: &[Recorded]) -> Vec<Value> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut all = Vec::new();
    for request in requests {
        let header = request
            .headers
            .get("x-hubbub-signature")
            .expect("every delivery is signed");
        assert_eq!(
            signing::verify(SECRET.as_bytes(), header, &request.body, now, 300),
            Ok(()),
            "the signature verifies: {header}"
        );
        match request.json() {
            Value::Array(batch) => all.extend(batch),
            one => all.push(one),
        }
    }
    all
}

/// The events of the requests the backend took (answered 2xx).
fn accepted(requests: &[Recorded]) -> Vec<Value> {
    let taken: Vec<Recorded> = requests.iter().filter(|r| r.accepted()).cloned().collect();
    events(&taken)
}

/// The events with distinct delivery ids, first delivery of each, in order.
fn deduplicated(events: Vec<Value>) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    events
        .into_iter()
        .filter(|e| seen.insert(e["delivery_id"].as_str().unwrap().to_owned()))
        .collect()
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn one_publish_to_two_rooms_is_two_events_a_backend_keeps_apart() {
    let backend = Backend::start().await;
    let hook = webhook(&backend, &[WebhookEvent::Publish]);
    let node = TestNode::start_adjusted(|s| s.webhooks = vec![hook]).await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("north").await;
    alice.join("south").await;
    let sent = alice
        .ok(json!({"type": "publish", "rooms": ["north", "south"], "content": "both"}))
        .await;
    let id = sent["id"].as_str().expect("one id").to_owned();
    let requests = backend
        .wait_for("/events", "both rooms' publish events", |seen| {
            deduplicated(events(seen)).len() >= 2
        })
        .await;
    // Deduplicated by delivery id, as a backend does: both rooms' events stay.
    let delivered = deduplicated(events(&requests));
    let rooms: BTreeSet<&str> = delivered
        .iter()
        .map(|e| e["room"].as_str().unwrap())
        .collect();
    assert_eq!(rooms, BTreeSet::from(["north", "south"]), "{delivered:?}");
    for event in &delivered {
        assert_eq!(event["message"]["id"], id.as_str(), "one id in both rooms");
        assert_eq!(
            event["delivery_id"],
            format!("{id}@{}", event["room"].as_str().unwrap())
        );
    }
}

#[tokio::test]
async fn every_event_of_a_connection_is_delivered_signed_in_order() {
    let backend = Backend::start().await;
    let hook = webhook(&backend, &WebhookEvent::ALL);
    let node = TestNode::start_adjusted(|s| s.webhooks = vec![hook]).await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    alice.publish("lobby", "one").await;
    alice.publish("lobby", "two").await;
    alice.ok(json!({"type": "leave", "room": "lobby"})).await;
    alice.close().await;

    let requests = backend
        .wait_for("/events", "a disconnect and room_emptied", |seen| {
            let seen = events(seen);
            ["disconnect", "room_emptied"]
                .iter()
                .all(|kind| seen.iter().any(|e| e["event"] == *kind))
        })
        .await;
    let delivered = deduplicated(events(&requests));
    let of = |wanted: &[&str]| -> Vec<&Value> {
        delivered
            .iter()
            .filter(|e| wanted.contains(&e["event"].as_str().unwrap_or_default()))
            .collect()
    };
    // Three streams, each in its order: the connection's own events (the node's
    // sequence), the room's member list and its messages (both numbered by the
    // room's log).
    let connection = of(&["connect", "disconnect"]);
    assert_eq!(
        connection.iter().map(|e| &e["event"]).collect::<Vec<_>>(),
        ["connect", "disconnect"],
        "{delivered:?}"
    );
    assert!(connection[0]["seq"].as_u64() < connection[1]["seq"].as_u64());
    let members = of(&["room_created", "join", "leave", "room_emptied"]);
    let listed: Vec<(&str, u64, u64)> = members
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap(),
                e["life"].as_u64().unwrap(),
                e["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("room_created", 1, 1),
            ("join", 1, 2),
            ("leave", 1, 3),
            ("room_emptied", 1, 4)
        ],
        "{delivered:?}"
    );
    for event in &members {
        assert_eq!(event["room"], "lobby");
        assert_eq!(event["node"], "test-node", "sent by the shard's leader");
        assert_eq!(
            event["delivery_id"],
            format!(
                "{}:1.{}@lobby",
                event["event"].as_str().unwrap(),
                event["seq"]
            )
        );
    }
    // The join came before the first message, the leave after the second.
    assert_eq!(members[1]["message_seq"], 0);
    assert_eq!(members[2]["message_seq"], 2);
    let publishes = of(&["publish"]);
    assert_eq!(publishes.len(), 2, "{delivered:?}");
    for (i, event) in publishes.iter().enumerate() {
        assert_eq!(event["seq"], i as u64 + 1);
        assert_eq!(event["room"], "lobby");
        assert_eq!(event["node"], "test-node");
        assert_eq!(event["message"]["content"], ["one", "two"][i]);
        assert_eq!(event["message"]["from"]["id"], "alice");
        let id = event["message"]["id"].as_str().unwrap();
        assert_eq!(event["delivery_id"], format!("{id}@lobby"));
    }
    let connect = connection[0];
    assert_eq!(connect["user"], json!({"id": "alice", "name": "Alice"}));
    assert!(connect["session"].is_string());
    assert!(connect["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    let joined = delivered.iter().find(|e| e["event"] == "join").unwrap();
    assert_eq!(joined["room"], "lobby");
    assert_eq!(joined["user"]["id"], "alice");

    let (_, text) = node.get("/metrics").await;
    let metrics = Metrics::parse(&text);
    assert_eq!(
        metrics.value("hubbub_webhook_delivered_total", &[("endpoint", "backend")]),
        delivered.len() as f64
    );
}

#[tokio::test]
async fn an_endpoint_gets_only_the_events_it_asked_for() {
    let backend = Backend::start().await;
    let hook = webhook(&backend, &[WebhookEvent::Publish]);
    let node = TestNode::start_adjusted(|s| s.webhooks = vec![hook]).await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    alice.publish("lobby", "only this").await;
    // Anything else (wrongly) queued before the second publish is delivered before it.
    alice.publish("lobby", "and this").await;
    let requests = backend
        .wait_for("/events", "both publishes", |seen| events(seen).len() >= 2)
        .await;
    assert_eq!(kinds(&events(&requests)), ["publish", "publish"]);
}

#[tokio::test]
async fn a_500_is_retried_until_delivered_and_the_retry_has_the_same_delivery_id() {
    let backend = Backend::start().await;
    let failures = Arc::new(AtomicUsize::new(2));
    let left = failures.clone();
    backend.respond(move |_| {
        if left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            Reply::status(500)
        } else {
            Reply::ok(json!({}))
        }
    });
    let hook = webhook(&backend, &[WebhookEvent::Publish]);
    let node = TestNode::start_adjusted(|s| s.webhooks = vec![hook]).await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    alice.publish("lobby", "persist").await;
    let requests = backend
        .wait_for("/events", "three attempts", |seen| seen.len() >= 3)
        .await;
    let attempts = events(&requests);
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert!(
        attempts
            .iter()
            .all(|e| e["delivery_id"] == attempts[0]["delivery_id"]),
        "a retry is the same event: {attempts:?}"
    );
    assert_eq!(deduplicated(attempts).len(), 1);
    let (_, text) = node.get("/metrics").await;
    let metrics = Metrics::parse(&text);
    assert_eq!(
        metrics.value("hubbub_webhook_retried_total", &[("endpoint", "backend")]),
        2.0
    );
    assert_eq!(
        metrics.value("hubbub_webhook_delivered_total", &[("endpoint", "backend")]),
        1.0
    );
}

#[tokio::test]
async fn a_backend_down_for_a_while_gets_everything_in_room_order_in_batches() {
    let backend = Backend::start().await;
    let down = Arc::new(AtomicBool::new(true));
    let is_down = down.clone();
    backend.respond(move |_| {
        if is_down.load(Ordering::SeqCst) {
            Reply::status(503)
        } else {
            Reply::ok(json!({}))
        }
    });
    let hook = webhook(&backend, &[WebhookEvent::Publish]);
    let node = TestNode::start_adjusted(|s| s.webhooks = vec![hook]).await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    const N: u64 = 50;
    for i in 1..=N {
        alice.publish("lobby", &format!("m{i}")).await;
    }
    // Down long enough to be retried a few times.
    backend
        .wait_for("/events", "retries while down", |seen| seen.len() >= 3)
        .await;
    down.store(false, Ordering::SeqCst);
    let requests = backend
        .wait_for("/events", "every message", |seen| {
            deduplicated(accepted(seen)).len() as u64 >= N
        })
        .await;
    let delivered: Vec<Value> = deduplicated(accepted(&requests));
    let seqs: Vec<u64> = delivered
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=N).collect::<Vec<_>>(),
        "in the room's order, none lost"
    );
    assert!(
        requests.iter().any(|r| r.json().is_array()),
        "what piled up went out batched"
    );
}

#[tokio::test]
async fn past_the_queue_bound_events_are_dropped_and_counted() {
    let backend = Backend::start().await;
    let down = Arc::new(AtomicBool::new(true));
    let is_down = down.clone();
    backend.respond(move |_| {
        if is_down.load(Ordering::SeqCst) {
            Reply::status(503)
        } else {
            Reply::ok(json!({}))
        }
    });
    let mut hook = webhook(&backend, &[WebhookEvent::Publish]);
    hook.queue_events = 5;
    let node = TestNode::start_adjusted(|s| s.webhooks = vec![hook]).await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    for i in 1..=20 {
        alice.publish("lobby", &format!("m{i}")).await;
    }
    let scrape = || async {
        let (_, text) = node.get("/metrics").await;
        Metrics::parse(&text)
    };
    let until = std::time::Instant::now() + crate::support::DEADLINE;
    loop {
        let m = scrape().await;
        let dropped = m.value(
            "hubbub_webhook_dropped_total",
            &[("endpoint", "backend"), ("reason", "overflow")],
        );
        if dropped >= 15.0 {
            assert_eq!(dropped, 15.0, "five fit");
            break;
        }
        assert!(std::time::Instant::now() < until, "dropped {dropped}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    down.store(false, Ordering::SeqCst);
    let requests = backend
        .wait_for("/events", "the five that fitted", |seen| {
            deduplicated(accepted(seen)).len() >= 5
        })
        .await;
    let seqs: Vec<u64> = deduplicated(accepted(&requests))
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_draining_node_sends_its_connections_disconnects_before_it_stops() {
    let backend = Backend::start().await;
    // A slow endpoint, one event per POST: the second disconnect goes out only once
    // the first is answered.
    backend.respond(|_| Reply::ok(json!({})).after(Duration::from_millis(1_200)));
    let mut hook = webhook(&backend, &[WebhookEvent::Disconnect]);
    hook.batch_max = 1;
    let mut node = TestNode::start_adjusted(|s| {
        s.webhooks = vec![hook];
        s.shutdown.batch_interval_ms = 0;
        s.shutdown.reconnect_spread_ms = 0;
    })
    .await;
    let alice = node.connect("alice", "Alice").await;
    let bob = node.connect("bob", "Bob").await;
    node.shut_down().await.expect("the node stops");
    // Nothing is waited for: the node delivered them before it stopped.
    let gone: BTreeSet<String> = accepted(&backend.requests("/events"))
        .iter()
        .map(|e| e["user"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(gone, BTreeSet::from(["alice".to_owned(), "bob".to_owned()]));
    drop((alice, bob));
}
