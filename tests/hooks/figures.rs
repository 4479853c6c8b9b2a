//! Figures, not checks (ignored by default; run with
//! `cargo nextest run --test hooks --run-ignored only -E 'test(/figures/)' --no-capture`):
//! what the publish hook adds to a publish's round trip against a local backend, and
//! how fast one webhook endpoint drains a backlog.

use crate::backend::Backend;
use crate::support::TestNode;
use hubbub::config::{Secret, WebhookEvent, WebhookSettings};
use serde_json::Value;
use std::time::{Duration, Instant};

async fn publish_round_trips(node: &TestNode, n: usize) -> Duration {
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    let started = Instant::now();
    for i in 0..n {
        alice.publish("lobby", &format!("m{i}")).await;
    }
    started.elapsed() / n as u32
}

#[tokio::test]
#[ignore]
async fn figures_publish_hook_cost_and_webhook_drain_rate() {
    const N: usize = 300;
    let plain = TestNode::start_adjusted(|s| s.limits.frames_per_second = 0).await;
    let without = publish_round_trips(&plain, N).await;
    let backend = Backend::start().await;
    let url = backend.url("/publish");
    let hooked = TestNode::start_adjusted(|s| {
        s.hooks.publish_url = url;
        s.limits.frames_per_second = 0;
    })
    .await;
    let with = publish_round_trips(&hooked, N).await;
    eprintln!("publish round trip, {N} in a row: {without:?} without a hook, {with:?} with a local publish hook");

    let sink = Backend::start().await;
    let hook = WebhookSettings {
        name: "sink".into(),
        url: sink.url("/events"),
        events: vec![WebhookEvent::Publish],
        secret: Secret::new("figures-secret"),
        ..WebhookSettings::default()
    };
    let node = TestNode::start_adjusted(|s| {
        s.webhooks = vec![hook];
        s.limits.frames_per_second = 0;
    })
    .await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    const M: usize = 2_000;
    let started = Instant::now();
    for i in 0..M {
        alice
            .send(
                serde_json::json!({"type": "publish", "room": "lobby", "content": format!("m{i}")}),
            )
            .await;
    }
    let requests = sink
        .wait_longer("/events", "every event", Duration::from_secs(60), |seen| {
            seen.iter()
                .map(|r| match r.json() {
                    Value::Array(a) => a.len(),
                    _ => 1,
                })
                .sum::<usize>()
                >= M
        })
        .await;
    let took = started.elapsed();
    eprintln!(
        "webhook: {M} publish events delivered in {took:?} ({:.0} events/s) in {} POSTs",
        M as f64 / took.as_secs_f64(),
        requests.len()
    );
}
