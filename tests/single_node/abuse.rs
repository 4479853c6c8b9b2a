//! Abuse limits against a real node: the per-user message rate (shared by the user's
//! connections, `rate_limited` with `retry_after_ms`, recovery, connection kept),
//! open connections per client address and handshakes per second (HTTP 429), and the
//! `Origin` check (HTTP 403).

use crate::support::{eventually, Client, Refusal, TestNode, DEADLINE};
use serde_json::{json, Value};
use std::time::Duration;

/// Sends `frame` until it is not `rate_limited`, waiting the `retry_after_ms` each
/// refusal names; returns the reply that got through.
async fn retry_until_allowed(client: &mut Client, frame: Value) -> Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let reply = client.request(frame.clone()).await;
        if reply["ok"] == true || reply["error"]["code"] != "rate_limited" {
            return reply;
        }
        assert!(tokio::time::Instant::now() < deadline, "still limited");
        let wait = reply["error"]["retry_after_ms"]
            .as_u64()
            .expect("retry_after_ms");
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

fn publish(room: &str, content: &str) -> Value {
    json!({"type": "publish", "room": room, "content": content})
}

#[tokio::test]
async fn a_user_over_its_message_rate_is_told_when_to_retry_and_recovers() {
    // 60 a minute is one a second; a burst of 3.
    let node = TestNode::start_adjusted(|s| {
        s.rate_limit.messages_per_minute = 60;
        s.rate_limit.burst = 3;
    })
    .await;
    let mut phone = node.connect("alice", "Alice").await;
    let mut laptop = node.connect("alice", "Alice").await;
    let mut bob = node.connect("bob", "Bob").await;
    for client in [&mut phone, &mut laptop, &mut bob] {
        client.join("lobby").await;
    }

    // The user's connections share one bucket of 3.
    phone.publish("lobby", "one").await;
    laptop.publish("lobby", "two").await;
    phone.publish("lobby", "three").await;
    let limited = laptop.request(publish("lobby", "four")).await;
    assert_eq!(limited["ok"], false, "{limited}");
    assert_eq!(limited["error"]["code"], "rate_limited", "{limited}");
    let retry = limited["error"]["retry_after_ms"]
        .as_u64()
        .expect("retry_after_ms");
    assert!((1..=1_000).contains(&retry), "{limited}");
    // Direct messages count too.
    let direct = phone
        .request(json!({"type": "direct", "to": "bob", "content": "psst"}))
        .await;
    assert_eq!(direct["error"]["code"], "rate_limited", "{direct}");

    // Other users are not affected, and the limited connections stay open.
    bob.publish("lobby", "bob is fine").await;
    phone.send(json!({"type": "ping"})).await;
    phone.expect_type("pong").await;

    let recovered = retry_until_allowed(&mut laptop, publish("lobby", "four, later")).await;
    assert_eq!(recovered["ok"], true, "{recovered}");
    let contents: Vec<Value> = {
        bob.barrier("lobby").await;
        bob.seen(|f| f["type"] == "message")
            .iter()
            .map(|f| f["content"].clone())
            .collect()
    };
    assert_eq!(
        contents,
        [
            json!("one"),
            json!("two"),
            json!("three"),
            json!("bob is fine"),
            json!("four, later")
        ],
        "the refused message was not published"
    );
}

#[tokio::test]
async fn message_rate_zero_turns_the_limit_off() {
    let node = TestNode::start_adjusted(|s| {
        s.rate_limit.messages_per_minute = 0;
        s.rate_limit.burst = 0;
    })
    .await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    for i in 0..30 {
        alice.publish("lobby", &format!("m{i}")).await;
    }
}

/// The refusal of an upgrade that must fail with `status`.
async fn refusal(node: &TestNode, query: &str, headers: &[(&str, &str)], status: u16) -> Refusal {
    match Client::try_connect_with(node, query, headers).await {
        Ok(client) => panic!("upgrade accepted as {}", client.welcome),
        Err(refusal) => {
            assert_eq!(refusal.status, status, "{refusal:?}");
            refusal
        }
    }
}

#[tokio::test]
async fn connections_per_ip_are_capped_and_freed_on_close() {
    let node = TestNode::start_adjusted(|s| s.rate_limit.connections_per_ip = 2).await;
    let first = node.connect("a", "A").await;
    let _second = node.connect("b", "B").await;
    let refused = refusal(&node, "user=c", &[], 429).await;
    assert_eq!(refused.body["error"]["code"], "rate_limited", "{refused:?}");
    assert_eq!(
        refused.body["error"]["reason"], "connections_per_ip",
        "{refused:?}"
    );

    first.close().await;
    let third = eventually("a slot to free up", || async {
        Client::try_connect(&node, "user=c").await.ok()
    })
    .await;
    assert_eq!(third.user_id(), "c");
}

#[tokio::test]
async fn too_many_handshakes_per_second_get_429() {
    let node = TestNode::start_adjusted(|s| s.rate_limit.handshakes_per_ip_per_sec = 2).await;
    let mut connected = Vec::new();
    let mut refused = None;
    // Two a second: well within ten quick attempts one is refused.
    for i in 0..10 {
        match Client::try_connect(&node, &format!("user=u{i}")).await {
            Ok(client) => connected.push(client),
            Err(refusal) => {
                refused = Some(refusal);
                break;
            }
        }
    }
    let refused = refused.expect("a handshake over the rate is refused");
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.body["error"]["reason"], "handshakes_per_ip");
    let retry = refused.body["error"]["retry_after_ms"]
        .as_u64()
        .expect("retry_after_ms");
    assert!((1..=500).contains(&retry), "{refused:?}");
    assert!(connected.len() >= 2, "the first two got through");

    // After the wait it names, a handshake gets through again.
    tokio::time::sleep(Duration::from_millis(retry)).await;
    let late = eventually("the handshake bucket to refill", || async {
        Client::try_connect(&node, "user=late").await.ok()
    })
    .await;
    assert_eq!(late.user_id(), "late");
}

#[tokio::test]
async fn origins_outside_the_list_get_403() {
    let node = TestNode::start_adjusted(|s| {
        s.http.allowed_origins = vec!["https://chat.example.com".to_owned()];
    })
    .await;
    let refused = refusal(
        &node,
        "user=mallory",
        &[("Origin", "https://evil.example")],
        403,
    )
    .await;
    assert_eq!(refused.body["error"]["code"], "forbidden", "{refused:?}");
    assert_eq!(refused.body["error"]["reason"], "origin_not_allowed");

    let allowed = Client::try_connect_with(
        &node,
        "user=alice",
        &[("Origin", "https://chat.example.com")],
    )
    .await
    .expect("a listed origin connects");
    assert_eq!(allowed.user_id(), "alice");
    // Not a browser: no Origin header at all.
    let tool = Client::try_connect(&node, "user=tool")
        .await
        .expect("no origin connects");
    assert_eq!(tool.user_id(), "tool");
}

#[tokio::test]
async fn any_origin_is_allowed_by_default() {
    let node = TestNode::start().await;
    let client =
        Client::try_connect_with(&node, "user=a", &[("Origin", "https://anywhere.example")])
            .await
            .expect("default allows any origin");
    assert_eq!(client.user_id(), "a");
}
