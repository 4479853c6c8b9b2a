//! Attack 7: reconnect churn with a long-lived token. The node runs in JWT mode
//! (HS256, a secret in its config); a client with a 24-hour token connects, joins
//! the conversation's room and disconnects [`RECONNECTS_PER_SEC`] times a second for
//! [`ATTACK`]. Every session must end with its connection, its token-expiry timer
//! included: once the connections are gone the node's memory must come back to
//! where it was before the churn, and `hubbub_session_timers` (where the node has
//! it) to zero. Memory alone is a weak witness here: 400 sleeping sessions are a few
//! MiB, within what the allocator keeps; the gauge counts them exactly.

use crate::hubbub_node::toml_str;
use crate::support::{
    assert_withstood, loopback, record_figures, AbuseNode, Conversation, Monitor, RawWs, MIB,
};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use std::time::{Duration, Instant};

/// Reconnects per second, over [`ADDRESSES`] source addresses (the default
/// `rate_limit.handshakes_per_ip_per_sec` is 20).
const RECONNECTS_PER_SEC: u64 = 20;
const ADDRESSES: u8 = 4;
/// How long the churn lasts.
const ATTACK: Duration = Duration::from_secs(20);
/// The tokens' lifetime.
const TOKEN_LIFETIME_SECS: u64 = 24 * 60 * 60;
/// Resident memory the node may keep after the churn, over what it held before: what
/// allocator caches and grown tables hold, far less than the sessions would if they
/// all stayed alive.
const RETAINED: u64 = 16 * MIB;

/// The gauge of token-expiry timers alive on the node.
const SESSION_TIMERS: &str = "hubbub_session_timers";

const SECRET: &str = "abuse-suite-hs256-secret-0123456789abcdef0123456789";

fn token(sub: &str) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + TOKEN_LIFETIME_SECS;
    encode(
        &Header::default(),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign a test token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_churn_with_a_long_lived_token() {
    let node = AbuseNode::start_configured("reconnect", |config| {
        config
            .set("auth", "mode", toml_str("jwt"))
            .set("auth", "secret", toml_str(SECRET));
    })
    .await;
    let monitor = Monitor::start(&node);
    // The conversation's clients use anonymous-style queries: give them tokens.
    let conversation = Conversation::start_with_tokens(&node, "lobby", token).await;
    let baseline = node.rss().expect("rss");
    let ends = Instant::now() + ATTACK;
    let mut churners = Vec::new();
    for a in 0..ADDRESSES {
        let addr = node.http;
        churners.push(tokio::spawn(async move {
            let query = format!("token={}", token(&format!("churner-{a}")));
            let mut tick = tokio::time::interval(Duration::from_millis(
                1_000 * u64::from(ADDRESSES) / RECONNECTS_PER_SEC,
            ));
            let mut cycles = 0u64;
            while Instant::now() < ends {
                tick.tick().await;
                let Ok(mut ws) = RawWs::dial_until(addr, loopback(90 + a), &query, ends).await
                else {
                    break;
                };
                let cycle = async {
                    ws.next_of("welcome").await?;
                    ws.request(json!({"type": "join", "room": "lobby"})).await
                };
                if let Ok(Ok(reply)) = tokio::time::timeout_at(ends.into(), cycle).await {
                    if reply["ok"] == true {
                        cycles += 1;
                    }
                }
                drop(ws);
            }
            cycles
        }));
    }
    let mut cycles = 0;
    for churner in churners {
        cycles += churner.await.expect("churner");
    }
    let report = conversation.finish().await;
    // Every connection of the test is closed now.
    let connections_after = node.metric_settles("hubbub_connections", 0.0).await;
    // Memory comes back as the sessions end: poll for it, bounded.
    let settled = Instant::now();
    let mut after = node.rss().unwrap_or(u64::MAX);
    while after > baseline + RETAINED && settled.elapsed() < crate::support::DEADLINE {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = node.rss().unwrap_or(u64::MAX);
    }
    // The node's count of live token-expiry timers, if it keeps one.
    let timers_during = node.metric(SESSION_TIMERS).await;
    let timers_after = match timers_during {
        Some(_) => Some(node.metric_settles(SESSION_TIMERS, 0.0).await),
        None => None,
    };
    let (rss, health) = monitor.finish().await;
    let figures = format!(
        "{cycles} reconnects with a {TOKEN_LIFETIME_SECS} s token; RSS {:.1} MiB before the \
         churn, {:.1} MiB after (hubbub_connections {connections_after}, \
         {SESSION_TIMERS} {timers_after:?}); {}",
        baseline as f64 / MIB as f64,
        after as f64 / MIB as f64,
        report.summary()
    );
    assert_withstood("reconnect", &rss, &health, &figures);
    report.assert_complete("reconnect");
    assert!(
        cycles >= RECONNECTS_PER_SEC * ATTACK.as_secs() / 2,
        "reconnect: only {cycles} reconnects got through"
    );
    assert!(
        after <= baseline + RETAINED,
        "reconnect: the node kept {:.1} MiB after the churn ended (allowed {} MiB)",
        (after - baseline) as f64 / MIB as f64,
        RETAINED / MIB
    );
    if let Some(timers) = timers_after {
        assert_eq!(
            timers, 0.0,
            "reconnect: token-expiry timers outlived their connections\n{figures}"
        );
    }
    record_figures(&format!(
        "reconnect: retained {:.1} MiB",
        after.saturating_sub(baseline) as f64 / MIB as f64
    ));
}
