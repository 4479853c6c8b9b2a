//! Authentication and room access against a real node: the JWT matrix (HS256, RS256,
//! ES256; expired, not yet valid, wrong signature, issuer or audience, `alg: none`,
//! algorithm confusion, missing, malformed; query and Bearer forms), a token expiring
//! while connected (close 4001), and `[[rooms.acl]]` for joins and publishes.

use crate::support::{test_settings, Client, TestNode, DEADLINE};
use base64::Engine;
use hubbub::config::{AclEntry, AuthMode, JwtAlgorithm, Secret};
use hubbub::{Behaviours, Settings};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "hubbub-test-secret-that-is-long-enough-for-hs256";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "hubbub-tests";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims that pass every check of [`jwt_settings`], for `sub`.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600, "iss": ISSUER, "aud": AUDIENCE})
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(alg), claims, key).expect("sign a test token")
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

/// An unsigned token, `alg: none`, as an attacker would make it.
fn unsigned(alg: &str, claims: &Value) -> String {
    let part = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        part(json!({"alg": alg, "typ": "JWT"})),
        part(claims.clone())
    )
}

/// jwt mode with the HS256 secret, issuer and audience, no leeway.
fn jwt_settings() -> Settings {
    let mut settings = test_settings();
    settings.auth.mode = AuthMode::Jwt;
    settings.auth.secret = Secret::new(SECRET);
    settings.auth.issuer = ISSUER.to_owned();
    settings.auth.audience = AUDIENCE.to_owned();
    settings.auth.leeway_secs = 0;
    settings
}

async fn jwt_node(adjust: impl FnOnce(&mut Settings)) -> TestNode {
    let mut settings = jwt_settings();
    adjust(&mut settings);
    TestNode::start_with(settings, Behaviours::new()).await
}

/// Connects with `token` in the query and reads the welcome.
async fn connect_with_token(node: &TestNode, token: &str) -> Client {
    match Client::try_connect(node, &format!("token={token}")).await {
        Ok(client) => client,
        Err(refusal) => panic!("token refused: {refusal:?}"),
    }
}

/// The 401 reason of an upgrade that must be refused.
async fn reason_refused(node: &TestNode, query: &str, headers: &[(&str, &str)]) -> String {
    let refusal = match Client::try_connect_with(node, query, headers).await {
        Ok(client) => panic!("upgrade accepted as {}", client.welcome),
        Err(refusal) => refusal,
    };
    assert_eq!(refusal.status, 401, "{refusal:?}");
    let error = &refusal.body["error"];
    assert_eq!(error["code"], "unauthorized", "{refusal:?}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{refusal:?}"
    );
    error["reason"].as_str().unwrap_or_default().to_owned()
}

/// A PEM file under the temp dir, removed on drop.
struct TempPem(PathBuf);

impl TempPem {
    fn new(text: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "hubbub-auth-test-{}-{}.pem",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).expect("write key file");
        Self(path)
    }
}

impl Drop for TempPem {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A fresh key pair: (signing key, public key PEM).
fn key_pair(alg: &'static rcgen::SignatureAlgorithm, rsa: bool) -> (EncodingKey, String) {
    let pair = rcgen::KeyPair::generate_for(alg).expect("generate a key");
    let private = pair.serialize_pem();
    let signing = if rsa {
        EncodingKey::from_rsa_pem(private.as_bytes())
    } else {
        EncodingKey::from_ec_pem(private.as_bytes())
    }
    .expect("signing key");
    (signing, pair.public_key_pem())
}

#[tokio::test]
async fn the_jwt_matrix_against_hs256() {
    let node = jwt_node(|_| {}).await;

    // Valid, in the query: the token decides who the client is.
    let mut named = claims("alice");
    named["name"] = json!("Alice A");
    let alice = connect_with_token(&node, &hs256(&named)).await;
    assert_eq!(
        alice.welcome["user"],
        json!({"id": "alice", "name": "Alice A"})
    );

    // Valid, as a Bearer header; without a name claim the name is the id.
    let bearer = format!("Bearer {}", hs256(&claims("bob")));
    let bob = Client::try_connect_with(&node, "", &[("Authorization", &bearer)])
        .await
        .expect("bearer token accepted");
    assert_eq!(bob.welcome["user"], json!({"id": "bob", "name": "bob"}));

    // ?user= and ?name= cannot override the token.
    let carol = connect_with_token(
        &node,
        &format!("{}&user=mallory&name=Mallory", hs256(&claims("carol"))),
    )
    .await;
    assert_eq!(carol.welcome["user"]["id"], "carol");
    assert_eq!(carol.welcome["user"]["name"], "carol");

    let with = |key: &str, value: Value| {
        let mut c = claims("mallory");
        c[key] = value;
        c
    };
    let wrong_secret = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-that-is-also-long-enough!!"),
        &claims("mallory"),
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("no token", String::new(), "missing_token"),
        ("empty token", "token=".to_owned(), "missing_token"),
        (
            "anonymous-style query",
            "user=mallory".to_owned(),
            "missing_token",
        ),
        ("not a JWT", "token=not-a-jwt".to_owned(), "malformed"),
        (
            "expired",
            format!("token={}", hs256(&with("exp", json!(now() - 5)))),
            "expired",
        ),
        (
            "nbf in the future",
            format!("token={}", hs256(&with("nbf", json!(now() + 300)))),
            "not_yet_valid",
        ),
        (
            "signed with another secret",
            format!("token={wrong_secret}"),
            "bad_signature",
        ),
        (
            "wrong audience",
            format!("token={}", hs256(&with("aud", json!("someone-else")))),
            "wrong_audience",
        ),
        (
            "wrong issuer",
            format!(
                "token={}",
                hs256(&with("iss", json!("https://evil.example")))
            ),
            "wrong_issuer",
        ),
        (
            "alg none",
            format!("token={}", unsigned("none", &claims("mallory"))),
            "alg_not_allowed",
        ),
        (
            "HS512 when HS256 is configured",
            format!(
                "token={}",
                sign(
                    Algorithm::HS512,
                    &EncodingKey::from_secret(SECRET.as_bytes()),
                    &claims("mallory")
                )
            ),
            "alg_not_allowed",
        ),
        (
            "a sub that is no user id",
            format!("token={}", hs256(&with("sub", json!("mal lory")))),
            "invalid_claims",
        ),
    ];
    for (what, query, expected) in cases {
        assert_eq!(reason_refused(&node, &query, &[]).await, expected, "{what}");
    }

    // The Bearer form is refused for the same reasons.
    let expired = format!("Bearer {}", hs256(&with("exp", json!(now() - 5))));
    assert_eq!(
        reason_refused(&node, "", &[("Authorization", &expired)]).await,
        "expired"
    );
    assert_eq!(
        reason_refused(&node, "", &[("Authorization", "Basic YWxpY2U6cHc=")]).await,
        "malformed"
    );
    // The header wins over the query, so a good query token does not rescue it.
    let good = hs256(&claims("dave"));
    assert_eq!(
        reason_refused(
            &node,
            &format!("token={good}"),
            &[("Authorization", &expired)]
        )
        .await,
        "expired"
    );

    // Connected clients were not disturbed.
    for mut client in [alice, bob, carol] {
        client.send(json!({"type": "ping"})).await;
        client.expect_type("pong").await;
    }
}

#[tokio::test]
async fn a_refusal_is_plain_http_with_a_bearer_challenge_and_never_echoes_the_token() {
    let node = jwt_node(|_| {}).await;
    let token = hs256(&claims("mallory")).replace('.', "x.") + "x";
    let mut stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        node.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = vec![0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, stream.read(&mut raw))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer error=\"invalid_token\""),
        "{text}"
    );
    assert!(!text.contains(&token[..20]), "{text}");
}

#[tokio::test]
async fn rs256_tokens_verify_and_an_hs256_token_made_with_the_public_key_is_refused() {
    let (signing, public) = key_pair(&rcgen::PKCS_RSA_SHA256, true);
    let key_file = TempPem::new(&public);
    let node = jwt_node(|s| {
        s.auth.secret = Secret::default();
        s.auth.public_key_path = key_file.0.clone();
    })
    .await;

    let alice =
        connect_with_token(&node, &sign(Algorithm::RS256, &signing, &claims("alice"))).await;
    assert_eq!(alice.welcome["user"]["id"], "alice");

    // Algorithm confusion: the public key (which anyone may have) used as an HMAC
    // secret.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(public.as_bytes()),
        &claims("mallory"),
    );
    assert_eq!(
        reason_refused(&node, &format!("token={confused}"), &[]).await,
        "alg_not_allowed"
    );
    let (other, _) = key_pair(&rcgen::PKCS_RSA_SHA256, true);
    let forged = sign(Algorithm::RS256, &other, &claims("mallory"));
    assert_eq!(
        reason_refused(&node, &format!("token={forged}"), &[]).await,
        "bad_signature"
    );
    // An RSA key accepts RS256 only unless told otherwise.
    let ps256 = sign(Algorithm::PS256, &signing, &claims("mallory"));
    assert_eq!(
        reason_refused(&node, &format!("token={ps256}"), &[]).await,
        "alg_not_allowed"
    );
    let unsigned = unsigned("none", &claims("mallory"));
    assert_eq!(
        reason_refused(&node, &format!("token={unsigned}"), &[]).await,
        "alg_not_allowed"
    );
}

#[tokio::test]
async fn es256_tokens_verify_and_the_algorithm_list_is_respected() {
    let (signing, public) = key_pair(&rcgen::PKCS_ECDSA_P256_SHA256, false);
    let key_file = TempPem::new(&public);
    let node = jwt_node(|s| {
        s.auth.secret = Secret::default();
        s.auth.public_key_path = key_file.0.clone();
        s.auth.algorithms = vec![JwtAlgorithm::ES256];
    })
    .await;
    let bearer = format!(
        "Bearer {}",
        sign(Algorithm::ES256, &signing, &claims("erin"))
    );
    let erin = Client::try_connect_with(&node, "", &[("authorization", &bearer)])
        .await
        .expect("ES256 token accepted");
    assert_eq!(erin.welcome["user"]["id"], "erin");

    let hs = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(public.as_bytes()),
        &claims("mallory"),
    );
    assert_eq!(
        reason_refused(&node, &format!("token={hs}"), &[]).await,
        "alg_not_allowed"
    );
    let (other, _) = key_pair(&rcgen::PKCS_ECDSA_P256_SHA256, false);
    let forged = sign(Algorithm::ES256, &other, &claims("mallory"));
    assert_eq!(
        reason_refused(&node, &format!("token={forged}"), &[]).await,
        "bad_signature"
    );
}

#[tokio::test]
async fn a_session_whose_token_expires_is_closed_with_4001() {
    let node = jwt_node(|_| {}).await;
    let mut watcher = connect_with_token(&node, &hs256(&claims("watcher"))).await;
    watcher.join("lobby").await;

    let mut short = claims("brief");
    short["exp"] = json!(now() + 2);
    let mut brief = connect_with_token(&node, &hs256(&short)).await;
    brief.join("lobby").await;

    assert_eq!(brief.expect_close().await, Some(4001));
    watcher
        .expect(
            |f| f["type"] == "presence_diff" && f["leaves"][0]["id"] == "brief",
            "brief leaving the lobby",
        )
        .await;
    // The same token cannot come back.
    assert_eq!(
        reason_refused(&node, &format!("token={}", hs256(&short)), &[]).await,
        "expired"
    );
    watcher.publish("lobby", "still here").await;
}

/// `[[rooms.acl]]` entries written as in a config file.
fn acl(text: &str) -> Vec<AclEntry> {
    let settings: Settings = toml::from_str(text).expect("acl parses");
    settings.rooms.acl
}

/// A token for `sub` with `roles` and a `rooms` claim.
fn token_with(sub: &str, roles: &[&str], rooms: &[&str]) -> String {
    let mut c = claims(sub);
    if !roles.is_empty() {
        c["roles"] = json!(roles);
    }
    if !rooms.is_empty() {
        c["rooms"] = json!(rooms);
    }
    hs256(&c)
}

async fn join_code(client: &mut Client, room: &str) -> String {
    let reply = client.request(json!({"type": "join", "room": room})).await;
    if reply["ok"] == true {
        "ok".to_owned()
    } else {
        reply["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

#[tokio::test]
async fn joins_follow_the_most_specific_acl_entry() {
    let node = jwt_node(|s| {
        s.rooms.acl = acl(r#"
            [[rooms.acl]]
            pattern = "team:*"
            join = "claim"

            [[rooms.acl]]
            pattern = "staff:*"
            join = ["staff", "admin"]

            [[rooms.acl]]
            pattern = "staff:lobby"
            join = "public"

            [[rooms.acl]]
            pattern = "s*"
            join = ["admin"]

            [[rooms.acl]]
            pattern = "open:*"
            join = "public"
        "#);
    })
    .await;
    let mut red = connect_with_token(&node, &token_with("red", &[], &["team:red:*"])).await;
    let mut sam = connect_with_token(&node, &token_with("sam", &["staff"], &[])).await;
    let mut bob = connect_with_token(&node, &token_with("bob", &[], &[])).await;

    let expectations = [
        // public, by entry or for want of one
        ("bob", "open:x", "ok"),
        ("bob", "unlisted", "ok"),
        // claim
        ("bob", "team:red:1", "forbidden"),
        ("sam", "team:red:1", "forbidden"),
        ("red", "team:red:1", "ok"),
        ("red", "team:blue:1", "forbidden"),
        // role
        ("sam", "staff:ops", "ok"),
        ("bob", "staff:ops", "forbidden"),
        ("red", "staff:ops", "forbidden"),
        // an exact name beats staff:*
        ("bob", "staff:lobby", "ok"),
        // staff:* (prefix 6) beats s* (prefix 1) for staff rooms, s* has the rest
        ("sam", "sales", "forbidden"),
    ];
    for (who, room, expected) in expectations {
        let client = match who {
            "red" => &mut red,
            "sam" => &mut sam,
            _ => &mut bob,
        };
        assert_eq!(
            join_code(client, room).await,
            expected,
            "{who} joining {room}"
        );
    }
    let reply = bob
        .request(json!({"type": "join", "room": "staff:ops"}))
        .await;
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("staff, admin")),
        "{reply}"
    );
    // A refused join leaves no trace: bob is not a member.
    let members = sam
        .ok(json!({"type": "presence", "room": "staff:ops"}))
        .await;
    assert_eq!(members["members"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn only_the_listed_roles_publish_in_an_announce_room() {
    let node = jwt_node(|s| {
        s.rooms.acl = acl(r#"
            [[rooms.acl]]
            pattern = "announce:*"
            publish = ["editor"]

            [[rooms.acl]]
            pattern = "announce:chatter"
        "#);
    })
    .await;
    let mut editor = connect_with_token(&node, &token_with("ed", &["editor"], &[])).await;
    let mut reader = connect_with_token(&node, &token_with("rita", &["reader"], &[])).await;
    for client in [&mut editor, &mut reader] {
        client.join("announce:news").await;
        client.join("announce:chatter").await;
    }

    let refused = reader
        .request(json!({"type": "publish", "room": "announce:news", "content": "hi"}))
        .await;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("editor")),
        "{refused}"
    );

    editor.publish("announce:news", "extra, extra").await;
    let message = reader
        .expect(
            |f| f["type"] == "message" && f["room"] == "announce:news",
            "the announcement",
        )
        .await;
    assert_eq!(message["content"], "extra, extra");
    assert_eq!(
        message["seq"], 1,
        "the refused publish took no sequence number"
    );

    // The exact entry makes one announce room a chat (publish defaults to members).
    reader.publish("announce:chatter", "I can talk here").await;
    editor
        .expect(
            |f| f["type"] == "message" && f["content"] == "I can talk here",
            "the reader's message",
        )
        .await;
}

#[tokio::test]
async fn anonymous_users_have_no_roles_or_claims() {
    let mut settings = test_settings();
    settings.rooms.acl = acl(r#"
        [[rooms.acl]]
        pattern = "team:*"
        join = "claim"

        [[rooms.acl]]
        pattern = "staff:*"
        join = ["staff"]

        [[rooms.acl]]
        pattern = "announce:*"
        publish = ["editor"]
    "#);
    let node = TestNode::start_with(settings, Behaviours::new()).await;
    // An anonymous node ignores tokens: claiming roles in one gains nothing.
    let mut anon = Client::connect(
        &node,
        &format!(
            "user=anon&token={}",
            token_with("anon", &["staff", "editor"], &["*"])
        ),
    )
    .await;
    assert_eq!(join_code(&mut anon, "team:red").await, "forbidden");
    assert_eq!(join_code(&mut anon, "staff:ops").await, "forbidden");
    assert_eq!(join_code(&mut anon, "lobby").await, "ok");
    anon.publish("lobby", "public rooms work").await;
    anon.join("announce:news").await;
    assert_eq!(
        anon.refused(json!({"type": "publish", "room": "announce:news", "content": "hi"}))
            .await,
        "forbidden"
    );
}

/// Refused upgrades are counted by reason in `hubbub_auth_failures_total`, and every
/// reason is exposed at 0 before the first failure.
#[tokio::test]
async fn refusals_are_counted_by_reason_in_metrics() {
    let node = jwt_node(|_| {}).await;
    let scrape = |node: &TestNode| {
        let addr = node.addr;
        async move {
            let (status, body) = crate::support::http_get(addr, "/metrics", &[]).await;
            assert_eq!(status, 200);
            crate::scrape::Metrics::parse(&body)
        }
    };
    let before = scrape(&node).await;
    assert_eq!(
        before.value("hubbub_auth_failures_total", &[("reason", "expired")]),
        0.0
    );
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 3600);
    let token = hs256(&expired);
    assert_eq!(
        reason_refused(&node, &format!("token={token}"), &[]).await,
        "expired"
    );
    assert_eq!(reason_refused(&node, "", &[]).await, "missing_token");
    assert_eq!(reason_refused(&node, "", &[]).await, "missing_token");
    let after = scrape(&node).await;
    assert_eq!(
        after.value("hubbub_auth_failures_total", &[("reason", "expired")]),
        1.0
    );
    assert_eq!(
        after.value("hubbub_auth_failures_total", &[("reason", "missing_token")]),
        2.0
    );
    assert_eq!(
        after.value("hubbub_auth_failures_total", &[("reason", "bad_signature")]),
        0.0
    );
}
