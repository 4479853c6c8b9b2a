//! The connect hook: allow (naming the user and rooms to join), deny with 401 and
//! 403, time out under both failure policies; what the backend is told.

use crate::backend::{Backend, Reply};
use crate::scrape::Metrics;
use crate::support::TestNode;
use crate::ws_client::Client;
use hubbub::config::FailurePolicy;
use serde_json::json;
use std::time::{Duration, Instant};

async fn node_with_hook(backend: &Backend, adjust: impl FnOnce(&mut hubbub::Settings)) -> TestNode {
    let url = backend.url("/connect");
    TestNode::start_adjusted(|s| {
        s.hooks.connect_url = url;
        s.hooks.pass_headers = vec!["Cookie".into(), "X-Tenant".into()];
        adjust(s);
    })
    .await
}

#[tokio::test]
async fn an_allow_names_the_user_and_joins_its_rooms() {
    let backend = Backend::start().await;
    backend.respond(|r| {
        let cookie = r.json()["headers"]["cookie"].as_str().unwrap_or("").to_owned();
        if cookie == "session=abc" {
            Reply::ok(json!({"action": "allow", "user_id": "u-42", "name": "Ann", "rooms": ["lobby", "team.7", "bad room!"]}))
        } else {
            Reply::ok(json!({"action": "deny", "status": 401, "reason": "log in first"}))
        }
    });
    let node = node_with_hook(&backend, |_| {}).await;
    // Someone already in the lobby sees Ann arrive.
    let mut bob = Client::try_connect_with(&node, "", &[("cookie", "session=abc")])
        .await
        .expect("allowed");
    assert_eq!(bob.welcome["user"], json!({"id": "u-42", "name": "Ann"}));
    // The rooms were joined as if the client had sent `join`: a reply without ref
    // each, with the join's data; the bad room name was skipped.
    for room in ["lobby", "team.7"] {
        let joined = bob
            .expect(|f| f["type"] == "reply" && f["data"]["room"] == room, room)
            .await;
        assert_eq!(joined["ok"], true, "{joined}");
        assert!(joined.get("ref").is_none_or(|r| r.is_null()), "{joined}");
    }
    let presence = bob.presence("lobby").await;
    assert_eq!(presence.get("u-42"), Some(&1), "{presence:?}");

    // What the backend was told: the listed headers only, the query, the address.
    let asked = backend.requests("/connect");
    let body = asked[0].json();
    assert_eq!(body["headers"], json!({"cookie": "session=abc"}), "{body}");
    assert_eq!(body["remote_addr"], "127.0.0.1", "{body}");
    assert_eq!(body["query"], "", "{body}");
    assert!(
        body["user"].is_null(),
        "anonymous mode verifies nobody: {body}"
    );
    assert_eq!(body["node"], "test-node");
}

#[tokio::test]
async fn a_deny_is_the_status_and_reason_the_backend_gave() {
    let backend = Backend::start().await;
    backend.respond(|r| {
        let query = r.json()["query"].as_str().unwrap_or("").to_owned();
        if query.contains("banned") {
            Reply::ok(json!({"action": "deny", "status": 403, "reason": "you are banned"}))
        } else {
            Reply::ok(json!({"action": "deny", "status": 401, "reason": "log in first"}))
        }
    });
    let node = node_with_hook(&backend, |_| {}).await;
    let refused = node
        .try_connect("user=mallory&banned=1")
        .await
        .err()
        .expect("denied");
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.body["error"]["code"], "forbidden",
        "{}",
        refused.body
    );
    assert_eq!(refused.body["error"]["message"], "you are banned");
    let refused = node
        .try_connect("user=someone")
        .await
        .err()
        .expect("denied");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.body["error"]["code"], "unauthorized");
    assert_eq!(refused.body["error"]["reason"], "connect_hook");
    assert_eq!(refused.body["error"]["message"], "log in first");
    let (_, metrics) = node.get("/metrics").await;
    let metrics = Metrics::parse(&metrics);
    assert_eq!(
        metrics.value(
            "hubbub_hook_calls_total",
            &[("hook", "connect"), ("outcome", "deny")]
        ),
        2.0
    );
}

async fn slow_backend_under(policy: FailurePolicy) -> (TestNode, Backend) {
    let backend = Backend::start().await;
    backend.respond(|_| {
        Reply::ok(json!({"action": "deny", "status": 403})).after(Duration::from_secs(3))
    });
    let node = node_with_hook(&backend, |s| {
        s.hooks.connect_timeout_ms = 200;
        s.hooks.connect_failure = policy;
    })
    .await;
    (node, backend)
}

#[tokio::test]
async fn a_timeout_fails_closed_with_503() {
    let (node, _backend) = slow_backend_under(FailurePolicy::FailClosed).await;
    let started = Instant::now();
    let refused = node.try_connect("user=alice").await.err().expect("refused");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(refused.status, 503);
    assert_eq!(refused.body["error"]["code"], "unavailable");
    assert_eq!(refused.body["error"]["reason"], "connect_hook");
}

#[tokio::test]
async fn a_timeout_fails_open_with_the_query_identity() {
    let (node, _backend) = slow_backend_under(FailurePolicy::FailOpen).await;
    let started = Instant::now();
    let alice = node
        .try_connect("user=alice&name=Alice")
        .await
        .expect("let in");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        alice.welcome["user"],
        json!({"id": "alice", "name": "Alice"})
    );
}

#[tokio::test]
async fn with_jwt_the_token_is_checked_first_and_its_identity_wins() {
    use crate::support::test_settings;
    let backend = Backend::start().await;
    backend.respond(|_| {
        Reply::ok(json!({"action": "allow", "user_id": "someone-else", "rooms": ["vip"]}))
    });
    let secret = "a-test-secret-that-is-long-enough-for-hs256!";
    let mut settings = test_settings();
    settings.auth.mode = hubbub::config::AuthMode::Jwt;
    settings.auth.secret = hubbub::config::Secret::new(secret);
    settings.hooks.connect_url = backend.url("/connect");
    let node = TestNode::start_with(settings, hubbub::Behaviours::new()).await;
    // A bad token never reaches the backend.
    let refused = node
        .try_connect("token=not-a-jwt")
        .await
        .err()
        .expect("401");
    assert_eq!(refused.status, 401);
    assert!(backend.requests("/connect").is_empty());
    let token = hs256(
        secret,
        &json!({"sub": "carol", "name": "Carol", "exp": 4_000_000_000u64}),
    );
    let mut carol = node
        .try_connect(&format!("token={token}"))
        .await
        .expect("allowed");
    assert_eq!(
        carol.welcome["user"]["id"], "carol",
        "the token's identity wins"
    );
    let joined = carol
        .expect(
            |f| f["type"] == "reply" && f["data"]["room"] == "vip",
            "vip",
        )
        .await;
    assert_eq!(joined["ok"], true);
    let asked = backend.requests("/connect")[0].json();
    assert_eq!(
        asked["user"],
        json!({"id": "carol", "name": "Carol"}),
        "{asked}"
    );
}

/// An HS256 JWT.
fn hs256(secret: &str, claims: &serde_json::Value) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a test token")
}

#[tokio::test]
async fn an_allow_with_an_invalid_user_id_is_a_failure() {
    let backend = Backend::start().await;
    backend.respond(|_| Reply::ok(json!({"action": "allow", "user_id": "not a valid id!"})));
    let node = node_with_hook(&backend, |s| {
        s.hooks.connect_failure = FailurePolicy::FailClosed
    })
    .await;
    let refused = node.try_connect("user=alice").await.err().expect("refused");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"]["reason"], "connect_hook");
}
