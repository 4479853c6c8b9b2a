//! docs/api.yaml against what a live node really answers: for every operation of the
//! document, real calls (good and bad) whose status must be one the operation
//! documents and whose body must match the declared schema; every operation must
//! have answered 200 at least once; the document's operations must be exactly the
//! ones the server mounts (`hubbub::api::CALLS`), and what it does not list is 404.

use crate::http::{Answer, Api};
use crate::support::TestNode;
use crate::{api_settings, KEY};
use hubbub::behaviour::AnnounceOnly;
use hubbub::Behaviours;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const DOCUMENT: &str = include_str!("../../docs/api.yaml");

fn document() -> Value {
    serde_norway::from_str(DOCUMENT).expect("docs/api.yaml is YAML")
}

/// Follows a `$ref` into the document's components (`#/components/...`).
fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("local refs only");
            doc.pointer(pointer)
                .unwrap_or_else(|| panic!("{reference} is not in the document"))
        }
        None => node,
    }
}

/// A validator for `schema`, with the document's components beside it so that its
/// `$ref`s resolve.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    jsonschema::validator_for(&root).expect("the schema compiles")
}

/// Checks one answer against the operation's documented responses.
fn check(doc: &Value, method: &str, path: &str, answer: &Answer) {
    let operation = &doc["paths"][path][method];
    assert!(
        operation.is_object(),
        "{method} {path} is not in docs/api.yaml"
    );
    let status = answer.status.to_string();
    let response = operation["responses"].get(&status).unwrap_or_else(|| {
        panic!(
            "{method} {path} answered {status}, which docs/api.yaml does not document: {answer:?}"
        )
    });
    let response = resolve(doc, response);
    let Some(content) = response.get("content") else {
        return;
    };
    if let Some(json) = content.get("application/json") {
        let body: Value = serde_json::from_str(&answer.body).unwrap_or_else(|e| {
            panic!("{method} {path} {status}: the body is not JSON ({e}): {answer:?}")
        });
        let validator = validator(doc, &json["schema"]);
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: the body does not match docs/api.yaml: {errors:?}\n{body}"
        );
    } else if content.get("application/yaml").is_some() {
        let _: Value = serde_norway::from_str(&answer.body).expect("the YAML answer parses");
    }
}

/// Checks that a request body the server takes is one the document declares.
fn check_request(doc: &Value, path: &str, body: &Value) {
    let schema =
        &doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"];
    let validator = validator(doc, schema);
    let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{path}: {body} is refused by the document's request schema: {errors:?}"
    );
}

#[test]
fn the_document_lists_exactly_the_calls_the_server_mounts() {
    let doc = document();
    assert!(doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.0")));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = hubbub::api::CALLS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);
    // What is served is the document itself.
    assert_eq!(hubbub::api::OPENAPI, DOCUMENT);
}

#[tokio::test]
async fn every_answer_of_a_live_node_matches_the_document() {
    let doc = document();
    let behaviours = Behaviours::new()
        .with("news:*", AnnounceOnly::new(["editor"]))
        .unwrap();
    let mut settings = api_settings();
    settings.limits.max_rooms_per_session = 3;
    let node = TestNode::start_with(settings, behaviours).await;
    let api = Api::new(node.addr, KEY);
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    let _bob = node.connect("bob", "Bob").await;
    let mut full = node.connect("full", "Full").await;
    for room in ["f1", "f2", "f3"] {
        full.join(room).await;
    }

    let big = json!({"room": "lobby", "content": "x".repeat(70_000)});
    // (path, body, status wanted): good calls first, then bad ones.
    let calls: Vec<(&str, Value, u16)> = vec![
        (
            "/api/publish",
            json!({"room": "lobby", "content": "hi"}),
            200,
        ),
        (
            "/api/publish",
            json!({"room": "lobby", "content": "hi", "idempotency_key": "k", "from": {"user_id": "bot", "name": "Bot"}}),
            200,
        ),
        (
            "/api/publish",
            json!({"room": "lobby", "content": "hi", "idempotency_key": "k", "from": {"user_id": "bot", "name": "Bot"}}),
            200,
        ),
        (
            "/api/publish",
            json!({"room": "lobby", "data": {"kind": "poll", "options": [1, 2]}}),
            200,
        ),
        (
            "/api/publish",
            json!({"room": "lobby", "content": "hi", "data": "x".repeat(20_000)}),
            400,
        ),
        (
            "/api/publish",
            json!({"room": "bad room", "content": "hi"}),
            400,
        ),
        (
            "/api/publish",
            json!({"room": "lobby", "content": "x".repeat(5001)}),
            400,
        ),
        (
            "/api/publish",
            json!({"room": "news:today", "content": "not an editor"}),
            403,
        ),
        ("/api/publish", big.clone(), 413),
        (
            "/api/broadcast",
            json!({"rooms": ["lobby", "news:today", "other"], "content": "all"}),
            200,
        ),
        (
            "/api/broadcast",
            json!({"rooms": [], "content": "all"}),
            400,
        ),
        (
            "/api/direct",
            json!({"to": "alice", "content": "psst"}),
            200,
        ),
        (
            "/api/direct",
            json!({"to": "nobody", "content": "psst"}),
            404,
        ),
        ("/api/direct", json!({"to": "alice"}), 400),
        (
            "/api/subscribe",
            json!({"user_id": "alice", "room": "side"}),
            200,
        ),
        (
            "/api/subscribe",
            json!({"user_id": "full", "room": "f4"}),
            409,
        ),
        (
            "/api/subscribe",
            json!({"user_id": "nobody", "room": "side"}),
            404,
        ),
        (
            "/api/unsubscribe",
            json!({"user_id": "alice", "room": "side"}),
            200,
        ),
        (
            "/api/unsubscribe",
            json!({"user_id": "alice", "room": "side"}),
            409,
        ),
        (
            "/api/unsubscribe",
            json!({"user_id": "alice", "room": "bad room"}),
            400,
        ),
        ("/api/presence", json!({"room": "lobby"}), 200),
        ("/api/presence", json!({"room": "lobby", "limit": 1}), 200),
        ("/api/presence", json!({"room": "never.used"}), 404),
        (
            "/api/presence",
            json!({"room": "lobby", "limit": "one"}),
            400,
        ),
        ("/api/presence_count", json!({"room": "lobby"}), 200),
        ("/api/presence_count", json!({"room": "never.used"}), 404),
        ("/api/history", json!({"room": "lobby"}), 200),
        ("/api/history", json!({"room": "lobby", "limit": 1}), 200),
        ("/api/history", json!({"room": "never.used"}), 404),
        ("/api/history", json!({"room": "lobby", "before": "x"}), 400),
        ("/api/rooms", json!({}), 200),
        ("/api/rooms", json!({"limit": 1}), 200),
        ("/api/rooms", json!({"limit": -1}), 400),
        ("/api/user", json!({"user_id": "alice"}), 200),
        ("/api/user", json!({"user_id": "nobody"}), 404),
        ("/api/user", json!({"user": "alice"}), 400),
        (
            "/api/disconnect",
            json!({"user_id": "bob", "code": 4000, "reason": "bye"}),
            200,
        ),
        ("/api/disconnect", json!({"user_id": "nobody"}), 404),
        (
            "/api/disconnect",
            json!({"user_id": "alice", "code": 3000}),
            400,
        ),
    ];
    let mut answered_ok = BTreeSet::new();
    for (path, body, want) in &calls {
        let answer = api.post(path, body).await;
        assert_eq!(answer.status, *want, "{path} {body}: {answer:?}");
        check(&doc, "post", path, &answer);
        if answer.status == 200 {
            check_request(&doc, path, body);
            answered_ok.insert(format!("post {path}"));
        }
        // Every call refuses a missing key the documented way.
        let unauthorized = api.with_key(None).post(path, body).await;
        assert_eq!(unauthorized.status, 401);
        check(&doc, "post", path, &unauthorized);
    }
    let yaml = api.call("GET", "/api/openapi.yaml").await;
    assert_eq!(yaml.status, 200);
    check(&doc, "get", "/api/openapi.yaml", &yaml);
    answered_ok.insert("get /api/openapi.yaml".to_owned());
    let every: BTreeSet<String> = hubbub::api::CALLS
        .iter()
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert_eq!(
        answered_ok, every,
        "every operation answers 200 at least once"
    );

    // What the document does not list is not served.
    for path in [
        "/api/",
        "/api/publish/extra",
        "/api/admin",
        "/api/openapi.json",
    ] {
        let answer = api.post(path, &json!({})).await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (404, "not_found"),
            "{path}"
        );
    }

    // 429, from a node whose key may call once.
    let mut settings = api_settings();
    settings.api.requests_per_second = 1;
    settings.api.burst = 1;
    let limited = TestNode::start_with(settings, Behaviours::new()).await;
    let api = Api::new(limited.addr, KEY);
    for path in hubbub::api::CALLS
        .iter()
        .filter(|(m, _)| *m == "post")
        .map(|(_, p)| *p)
    {
        let answer = api.post(path, &json!({})).await;
        if answer.status == 429 {
            check(&doc, "post", path, &answer);
            assert!(answer.header("retry-after").is_some());
        }
    }
    let answer = api.post("/api/rooms", &json!({})).await;
    assert_eq!(answer.status, 429, "{answer:?}");
}
