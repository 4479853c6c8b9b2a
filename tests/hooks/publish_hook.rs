//! The publish hook: accept, reject, rewrite, time out under both failure policies,
//! the breaker opening; and that a slow hook holds up only its publisher.

use crate::backend::{Backend, Reply};
use crate::scrape::Metrics;
use crate::support::TestNode;
use hubbub::config::FailurePolicy;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn node_with_hook(backend: &Backend, adjust: impl FnOnce(&mut hubbub::Settings)) -> TestNode {
    let url = backend.url("/publish");
    TestNode::start_adjusted(|s| {
        s.hooks.publish_url = url;
        adjust(s);
    })
    .await
}

async fn metrics(node: &TestNode) -> Metrics {
    let (status, body) = node.get("/metrics").await;
    assert_eq!(status, 200);
    Metrics::parse(&body)
}

#[tokio::test]
async fn the_hook_sees_each_publish_and_accepts_rejects_or_rewrites_it() {
    let backend = Backend::start().await;
    backend.respond(|r| {
        let content = r.json()["content"].as_str().unwrap_or("").to_owned();
        if content.contains("spam") {
            Reply::ok(json!({"action": "reject", "code": "forbidden", "message": "no spam here"}))
        } else if content.contains("darn") {
            Reply::ok(json!({"action": "rewrite", "content": content.replace("darn", "d**n")}))
        } else {
            Reply::ok(json!({"action": "accept"}))
        }
    });
    let node = node_with_hook(&backend, |_| {}).await;
    let mut alice = node.connect("alice", "Alice").await;
    let mut bob = node.connect("bob", "Bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;

    let accepted = alice.publish("lobby", "hello").await;
    assert_eq!(accepted["seq"], 1, "{accepted}");
    let code = alice
        .refused(json!({"type": "publish", "room": "lobby", "content": "buy spam"}))
        .await;
    assert_eq!(code, "forbidden");
    let rewritten = alice.publish("lobby", "oh darn").await;
    assert_eq!(
        rewritten["seq"], 2,
        "the rejected one took no seq: {rewritten}"
    );

    // Bob saw the accepted and the rewritten message, never the rejected one.
    let history = bob.full_history("lobby").await;
    let contents: Vec<&str> = history
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["hello", "oh d**n"]);

    let asked = backend.requests("/publish");
    assert_eq!(asked.len(), 3);
    let first = asked[0].json();
    assert_eq!(first["room"], "lobby");
    assert_eq!(first["content"], "hello");
    assert_eq!(first["user"], json!({"id": "alice", "name": "Alice"}));
    assert_eq!(first["node"], "test-node");

    let m = metrics(&node).await;
    for (outcome, n) in [("accept", 1.0), ("reject", 1.0), ("rewrite", 1.0)] {
        assert_eq!(
            m.value(
                "hubbub_hook_calls_total",
                &[("hook", "publish"), ("outcome", outcome)]
            ),
            n,
            "{outcome}"
        );
    }
}

#[tokio::test]
async fn the_reject_message_reaches_the_client() {
    let backend = Backend::start().await;
    backend.respond(|_| {
        Reply::ok(json!({"action": "reject", "code": "too_long", "message": "keep it short"}))
    });
    let node = node_with_hook(&backend, |_| {}).await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    let reply = alice
        .request(json!({"type": "publish", "room": "lobby", "content": "a story"}))
        .await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "too_long", "{reply}");
    assert_eq!(reply["error"]["message"], "keep it short", "{reply}");
}

#[tokio::test]
async fn only_rooms_matching_publish_rooms_go_to_the_hook() {
    let backend = Backend::start().await;
    backend.respond(|_| Reply::ok(json!({"action": "reject", "message": "moderated"})));
    let node = node_with_hook(&backend, |s| s.hooks.publish_rooms = vec!["mod-*".into()]).await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    alice.join("mod-news").await;
    alice.publish("lobby", "free").await;
    let code = alice
        .refused(json!({"type": "publish", "room": "mod-news", "content": "checked"}))
        .await;
    assert_eq!(code, "forbidden");
    assert_eq!(backend.requests("/publish").len(), 1);
}

async fn timeout_under(policy: FailurePolicy) -> Value {
    let backend = Backend::start().await;
    backend.respond(|_| Reply::ok(json!({"action": "accept"})).after(Duration::from_secs(3)));
    let node = node_with_hook(&backend, |s| {
        s.hooks.publish_timeout_ms = 200;
        s.hooks.publish_failure = policy;
    })
    .await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    let started = Instant::now();
    let reply = alice
        .request(json!({"type": "publish", "room": "lobby", "content": "hi"}))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the timeout, not the backend, decided: {:?}",
        started.elapsed()
    );
    assert_eq!(backend.requests("/publish").len(), 1);
    let m = metrics(&node).await;
    assert_eq!(
        m.value(
            "hubbub_hook_calls_total",
            &[("hook", "publish"), ("outcome", "timeout")]
        ),
        1.0
    );
    reply
}

#[tokio::test]
async fn a_timeout_fails_open_by_publishing_unchanged() {
    let reply = timeout_under(FailurePolicy::FailOpen).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["data"]["seq"], 1, "{reply}");
}

#[tokio::test]
async fn a_timeout_fails_closed_by_refusing_unavailable() {
    let reply = timeout_under(FailurePolicy::FailClosed).await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
}

#[tokio::test]
async fn the_breaker_opens_after_failures_in_a_row_and_closes_after_a_trial() {
    let backend = Backend::start().await;
    backend.respond(|_| Reply::status(500));
    let node = node_with_hook(&backend, |s| {
        s.hooks.breaker_failures = 3;
        s.hooks.breaker_cooldown_ms = 500;
        s.hooks.publish_failure = FailurePolicy::FailClosed;
    })
    .await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    let publish = json!({"type": "publish", "room": "lobby", "content": "hi"});
    for _ in 0..5 {
        assert_eq!(alice.refused(publish.clone()).await, "unavailable");
    }
    // Three calls failed; the other two were refused by the open breaker.
    assert_eq!(backend.requests("/publish").len(), 3);
    let m = metrics(&node).await;
    assert_eq!(
        m.value(
            "hubbub_hook_calls_total",
            &[("hook", "publish"), ("outcome", "breaker_open")]
        ),
        2.0
    );
    assert_eq!(
        m.value("hubbub_hook_breaker_opened_total", &[("hook", "publish")]),
        1.0
    );

    // The backend recovers; after the cool-down one trial goes through and closes it.
    backend.respond(|_| Reply::ok(json!({})));
    let until = Instant::now() + crate::support::DEADLINE;
    loop {
        let reply = alice.request(publish.clone()).await;
        if reply["ok"] == true {
            break;
        }
        assert!(Instant::now() < until, "the breaker never closed: {reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(backend.requests("/publish").len(), 4);
    alice.publish("lobby", "again").await;
    assert_eq!(backend.requests("/publish").len(), 5);
}

#[tokio::test]
async fn a_slow_hook_holds_up_its_publisher_only() {
    let backend = Backend::start().await;
    backend.respond(|r| {
        if r.json()["user"]["id"] == "slow" {
            Reply::ok(json!({})).after(Duration::from_millis(1_500))
        } else {
            Reply::ok(json!({}))
        }
    });
    let node = node_with_hook(&backend, |s| s.hooks.publish_timeout_ms = 5_000).await;
    let mut slow = node.connect("slow", "Slow").await;
    let mut quick = node.connect("quick", "Quick").await;
    slow.join("lobby").await;
    quick.join("lobby").await;
    let reference = slow
        .send_request(json!({"type": "publish", "room": "lobby", "content": "wait for me"}))
        .await;
    backend
        .wait_for("/publish", "the slow publish", |seen| !seen.is_empty())
        .await;
    let started = Instant::now();
    let fast = quick.publish("lobby", "meanwhile").await;
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "the quick publisher waited for the slow one's hook: {:?}",
        started.elapsed()
    );
    assert_eq!(fast["seq"], 1, "{fast}");
    let reply = slow.reply_to(&reference).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["data"]["seq"], 2, "{reply}");
}

#[tokio::test]
async fn an_unusable_answer_is_a_failure_not_a_verdict() {
    let backend = Backend::start().await;
    // Over hooks.max_response_bytes, then not JSON, then an unknown action, then 404:
    // each is a failure, and fail_closed refuses.
    let answers = std::sync::Arc::new(std::sync::Mutex::new(vec![
        Reply::ok(json!({"action": "accept", "pad": "x".repeat(2_000)})),
        Reply {
            status: 200,
            body: "not json".into(),
            delay: Duration::ZERO,
        },
        Reply::ok(json!({"action": "explode"})),
        Reply::status(404),
    ]));
    let left = answers.clone();
    backend.respond(move |_| left.lock().unwrap().remove(0));
    let node = node_with_hook(&backend, |s| {
        s.hooks.max_response_bytes = 1_024;
        s.hooks.publish_failure = FailurePolicy::FailClosed;
        s.hooks.breaker_failures = 0;
    })
    .await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    for _ in 0..4 {
        let code = alice
            .refused(json!({"type": "publish", "room": "lobby", "content": "hi"}))
            .await;
        assert_eq!(code, "unavailable");
    }
    let m = metrics(&node).await;
    assert_eq!(
        m.value(
            "hubbub_hook_calls_total",
            &[("hook", "publish"), ("outcome", "error")]
        ),
        4.0
    );
    // A rewrite the content rules refuse is refused like the client's own content.
    backend.respond(|_| Reply::ok(json!({"action": "rewrite", "content": "  "})));
    let code = alice
        .refused(json!({"type": "publish", "room": "lobby", "content": "hi"}))
        .await;
    assert_eq!(code, "bad_request");
}
