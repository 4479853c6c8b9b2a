//! Every call of the server API on one node: what it does to real WebSocket members,
//! and the documented error for bad input.

use crate::http::Api;
use crate::support::{test_settings, Client, TestNode};
use crate::{api_settings, KEY, OTHER_KEY};
use hubbub::Behaviours;
use serde_json::{json, Value};

async fn node() -> (TestNode, Api) {
    let node = TestNode::start_with(api_settings(), Behaviours::new()).await;
    let api = Api::new(node.addr, KEY);
    (node, api)
}

fn is_message(frame: &Value, room: &str, content: &str) -> bool {
    frame["type"] == "message" && frame["room"] == room && frame["content"] == content
}

#[tokio::test]
async fn without_keys_the_api_is_off_and_every_path_is_404() {
    let node = TestNode::start_with(test_settings(), Behaviours::new()).await;
    let api = Api::new(node.addr, KEY);
    for path in [
        "/api/publish",
        "/api/rooms",
        "/api/openapi.yaml",
        "/api/nope",
    ] {
        let answer = api
            .post(path, &json!({"room": "lobby", "content": "x"}))
            .await;
        assert_eq!(answer.status, 404, "{path}: {answer:?}");
    }
    let answer = api.call("GET", "/api/openapi.yaml").await;
    assert_eq!(answer.status, 404, "{answer:?}");
}

#[tokio::test]
async fn a_call_needs_one_of_the_keys() {
    let (_node, api) = node().await;
    let body = json!({"room": "lobby", "content": "hello"});
    let none = api
        .with_key(None)
        .refused("/api/publish", body.clone(), 401, "unauthorized")
        .await;
    assert!(none["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Bearer"));
    let answer = api
        .with_key(Some("wrong-key-0123456789"))
        .post("/api/publish", &body)
        .await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (401, "unauthorized")
    );
    assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    // A key that is a prefix of a real one is wrong too.
    let prefix = &KEY[..KEY.len() - 1];
    api.with_key(Some(prefix))
        .refused("/api/publish", body.clone(), 401, "unauthorized")
        .await;
    // 401 comes before the body is looked at.
    let answer = api
        .with_key(None)
        .post_raw("/api/publish", b"{not json")
        .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    // Both keys of a rotation work.
    api.ok("/api/publish", body.clone()).await;
    api.with_key(Some(OTHER_KEY)).ok("/api/publish", body).await;
    // Counted by call and status, and the refusals by limit.
    let (_, metrics) = _node.get("/metrics").await;
    for line in [
        r#"hubbub_api_calls_total{call="publish",status="401"} 4"#,
        r#"hubbub_api_calls_total{call="publish",status="200"} 2"#,
        r#"hubbub_limit_refusals_total{limit="api_key"} 4"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }
    // The document is served to anyone who can reach the API.
    let doc = api.with_key(None).call("GET", "/api/openapi.yaml").await;
    assert_eq!(doc.status, 200);
    assert!(doc.body.starts_with("openapi: 3."), "{}", doc.body);
}

#[tokio::test]
async fn publish_reaches_members_as_their_message_frame_ordered_stored_and_idempotent() {
    let (node, api) = node().await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    let mine = alice.publish("lobby", "from a client").await;

    let published = api
        .ok(
            "/api/publish",
            json!({"room": "lobby", "content": "system notice"}),
        )
        .await;
    assert_eq!(published["room"], "lobby");
    assert_eq!(
        published["seq"],
        mine["seq"].as_u64().unwrap() + 1,
        "{published}"
    );
    assert!(published["id"].as_str().is_some_and(|id| !id.is_empty()));
    let frame = alice
        .expect(
            |f| is_message(f, "lobby", "system notice"),
            "the system message",
        )
        .await;
    assert_eq!(frame["from"], json!({"id": "system", "name": "system"}));
    assert_eq!(frame["seq"], published["seq"]);
    assert_eq!(frame["id"], published["id"]);

    // A given sender, and a retry with the same key answered with the original.
    let body = json!({
        "room": "lobby", "content": "as a bot", "idempotency_key": "k-1",
        "from": {"user_id": "bot-7", "name": "Helper"},
    });
    let first = api.ok("/api/publish", body.clone()).await;
    let again = api.ok("/api/publish", body).await;
    assert_eq!(
        (again["id"].clone(), again["seq"].clone()),
        (first["id"].clone(), first["seq"].clone())
    );
    assert_eq!(
        (first["duplicate"].clone(), again["duplicate"].clone()),
        (json!(false), json!(true))
    );
    let frame = alice
        .expect(|f| is_message(f, "lobby", "as a bot"), "the bot's message")
        .await;
    assert_eq!(frame["from"], json!({"id": "bot-7", "name": "Helper"}));
    alice.discard_pending();
    // Only once: the next message is the next seq.
    let next = api
        .ok("/api/publish", json!({"room": "lobby", "content": "after"}))
        .await;
    assert_eq!(next["seq"], first["seq"].as_u64().unwrap() + 1);
    let frame = alice.next_frame().await;
    assert!(
        is_message(&frame, "lobby", "after"),
        "the duplicate was delivered again: {frame}"
    );

    // Stored: the room's history, for clients and for the API.
    let history = api.ok("/api/history", json!({"room": "lobby"})).await;
    let contents: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        ["from a client", "system notice", "as a bot", "after"]
    );
    let client_history = alice.ok(json!({"type": "history", "room": "lobby"})).await;
    assert_eq!(client_history["messages"], history["messages"]);
    // Paged as for clients.
    let page = api
        .ok("/api/history", json!({"room": "lobby", "limit": 2}))
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
    assert_eq!(page["more"], true);
    let older = api
        .ok(
            "/api/history",
            json!({"room": "lobby", "before": page["before"]}),
        )
        .await;
    assert_eq!(older["messages"].as_array().unwrap().len(), 2);
    assert_eq!(older["messages"][0]["content"], "from a client");
}

#[tokio::test]
async fn a_publish_to_a_room_nobody_is_in_is_kept_for_those_who_join() {
    let (node, api) = node().await;
    let published = api
        .ok(
            "/api/publish",
            json!({"room": "empty.room", "content": "first"}),
        )
        .await;
    assert_eq!(published["seq"], 1);
    let mut bob = node.connect("bob", "Bob").await;
    let joined = bob.join("empty.room").await;
    assert_eq!(joined["history"][0]["content"], "first", "{joined}");
}

/// *(v1 addition)* `data` on the API's publish and broadcast: delivered to members and
/// kept in history as sent; counted with the content against the byte bound.
#[tokio::test]
async fn publish_and_broadcast_carry_data() {
    let (node, api) = node().await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("d1").await;
    alice.join("d2").await;
    let data = json!({"order": 42, "items": ["tea", {"sugar": 2}]});
    api.ok("/api/publish", json!({"room": "d1", "data": data}))
        .await;
    let got = alice.expect(|f| f["type"] == "message", "d1 message").await;
    assert_eq!(
        (got["content"].clone(), got["data"].clone()),
        (json!(""), data.clone())
    );
    api.ok(
        "/api/broadcast",
        json!({"rooms": ["d1", "d2"], "content": "both", "data": [true]}),
    )
    .await;
    for room in ["d1", "d2"] {
        let got = alice.expect(|f| is_message(f, room, "both"), room).await;
        assert_eq!(got["data"], json!([true]), "{got}");
    }
    let history = alice.full_history("d1").await;
    assert_eq!(history[0]["data"], data, "{history:?}");
    api.refused("/api/publish", json!({"room": "d1"}), 400, "bad_request")
        .await;
    api.refused(
        "/api/publish",
        json!({"room": "d1", "data": "x".repeat(20_000)}),
        400,
        "too_long",
    )
    .await;
}

#[tokio::test]
async fn broadcast_publishes_to_every_room_with_a_result_each() {
    let (node, api) = node().await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("r1").await;
    alice.join("r2").await;
    let answer = api
        .ok(
            "/api/broadcast",
            json!({"rooms": ["r1", "r2", "r3", "r1"], "content": "to all"}),
        )
        .await;
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{answer}");
    // One message: one id in every room, each room its own seq.
    let id = answer["id"]
        .as_str()
        .expect("the broadcast's id")
        .to_owned();
    for (result, room) in results.iter().zip(["r1", "r2", "r3"]) {
        assert_eq!(result["room"], room);
        assert_eq!(result["ok"], true, "{result}");
        assert_eq!(result["seq"], 1);
        assert_eq!(result["id"], id.as_str(), "{answer}");
    }
    for room in ["r1", "r2"] {
        let message = alice.expect(|f| is_message(f, room, "to all"), room).await;
        assert_eq!(message["id"], id.as_str(), "{message}");
    }
    api.refused(
        "/api/broadcast",
        json!({"rooms": [], "content": "x"}),
        400,
        "bad_request",
    )
    .await;
    api.refused(
        "/api/broadcast",
        json!({"rooms": ["ok", "not ok"], "content": "x"}),
        400,
        "invalid_room",
    )
    .await;
    let many: Vec<String> = (0..101).map(|i| format!("room{i}")).collect();
    api.refused(
        "/api/broadcast",
        json!({"rooms": many, "content": "x"}),
        400,
        "bad_request",
    )
    .await;
}

#[tokio::test]
async fn direct_reaches_every_connection_of_the_user() {
    let (node, api) = node().await;
    let mut one = node.connect("carol", "Carol").await;
    let mut two = node.connect("carol", "Carol").await;
    let sent = api
        .ok("/api/direct", json!({"to": "carol", "content": "psst"}))
        .await;
    assert_eq!(sent["delivered"], 2, "{sent}");
    for client in [&mut one, &mut two] {
        let frame = client.expect_type("direct").await;
        assert_eq!(frame["content"], "psst");
        assert_eq!(frame["from"]["id"], "system");
        assert_eq!(frame["id"], sent["id"]);
    }
    api.refused(
        "/api/direct",
        json!({"to": "nobody", "content": "hi"}),
        404,
        "user_offline",
    )
    .await;
    api.refused(
        "/api/direct",
        json!({"to": "bad id!", "content": "hi"}),
        400,
        "bad_request",
    )
    .await;
}

#[tokio::test]
async fn disconnect_closes_every_connection_with_the_code_and_reason() {
    let (node, api) = node().await;
    let mut one = node.connect("dave", "Dave").await;
    let mut two = node.connect("dave", "Dave").await;
    let mut other = node.connect("erin", "Erin").await;
    let answer = api
        .ok(
            "/api/disconnect",
            json!({"user_id": "dave", "code": 4403, "reason": "banned"}),
        )
        .await;
    assert_eq!(answer["disconnected"], 2, "{answer}");
    assert_eq!(one.expect_close().await, Some(4403));
    assert_eq!(two.expect_close().await, Some(4403));
    other.ping().await;
    // The default code; then nobody is left.
    let answer = api.ok("/api/disconnect", json!({"user_id": "erin"})).await;
    assert_eq!(answer["disconnected"], 1);
    assert_eq!(other.expect_close().await, Some(4010));
    crate::support::eventually("dave and erin gone", || async {
        let answer = api.post("/api/user", &json!({"user_id": "dave"})).await;
        (answer.status == 404).then_some(())
    })
    .await;
    api.refused(
        "/api/disconnect",
        json!({"user_id": "dave"}),
        404,
        "user_offline",
    )
    .await;
    api.refused(
        "/api/disconnect",
        json!({"user_id": "dave", "code": 1011}),
        400,
        "bad_request",
    )
    .await;
    let long = "x".repeat(124);
    api.refused(
        "/api/disconnect",
        json!({"user_id": "dave", "reason": long}),
        400,
        "bad_request",
    )
    .await;
}

#[tokio::test]
async fn subscribe_and_unsubscribe_move_the_users_connections() {
    let (node, api) = node().await;
    let mut frank = node.connect("frank", "Frank").await;
    let mut watcher = node.connect("gina", "Gina").await;
    watcher.join("news").await;
    let answer = api
        .ok(
            "/api/subscribe",
            json!({"user_id": "frank", "room": "news"}),
        )
        .await;
    assert_eq!(answer["connections"], 1, "{answer}");
    let frame = frank.expect_type("subscribed").await;
    assert_eq!(frame["room"], "news");
    watcher
        .expect(
            |f| f["type"] == "presence_diff" && f["joins"][0]["id"] == "frank",
            "frank's join",
        )
        .await;
    // Subscribed: messages follow, and the client may publish there.
    api.ok("/api/publish", json!({"room": "news", "content": "extra"}))
        .await;
    frank
        .expect(|f| is_message(f, "news", "extra"), "the message")
        .await;
    frank.publish("news", "thanks").await;
    // Subscribing again changes nothing.
    api.ok(
        "/api/subscribe",
        json!({"user_id": "frank", "room": "news"}),
    )
    .await;
    let answer = api
        .ok(
            "/api/unsubscribe",
            json!({"user_id": "frank", "room": "news"}),
        )
        .await;
    assert_eq!(answer["connections"], 1);
    frank.expect_type("unsubscribed").await;
    let refused = frank
        .refused(json!({"type": "publish", "room": "news", "content": "x"}))
        .await;
    assert_eq!(refused, "not_joined");
    api.refused(
        "/api/unsubscribe",
        json!({"user_id": "frank", "room": "news"}),
        409,
        "not_joined",
    )
    .await;
    api.refused(
        "/api/subscribe",
        json!({"user_id": "nobody", "room": "news"}),
        404,
        "user_offline",
    )
    .await;
    api.refused(
        "/api/subscribe",
        json!({"user_id": "frank", "room": "bad room"}),
        400,
        "invalid_room",
    )
    .await;
}

#[tokio::test]
async fn subscribe_past_the_connections_room_limit_is_a_conflict() {
    let mut settings = api_settings();
    settings.limits.max_rooms_per_session = 1;
    let node = TestNode::start_with(settings, Behaviours::new()).await;
    let api = Api::new(node.addr, KEY);
    let mut hank = node.connect("hank", "Hank").await;
    hank.join("one").await;
    api.refused(
        "/api/subscribe",
        json!({"user_id": "hank", "room": "two"}),
        409,
        "too_many_rooms",
    )
    .await;
}

#[tokio::test]
async fn presence_is_paged_and_counted_and_rooms_and_users_are_listed() {
    let (node, api) = node().await;
    let mut clients: Vec<Client> = Vec::new();
    for user in ["u1", "u2", "u3"] {
        let mut client = node.connect(user, user).await;
        client.join("hall").await;
        clients.push(client);
    }
    let mut again = node.connect("u1", "u1").await;
    again.join("hall").await;
    again.join("side").await;

    let first = api
        .ok("/api/presence", json!({"room": "hall", "limit": 2}))
        .await;
    assert_eq!(first["count"], 3, "{first}");
    assert_eq!(first["more"], true);
    let ids: Vec<&str> = first["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["u1", "u2"]);
    assert_eq!(first["members"][0]["connections"], 2);
    let rest = api
        .ok(
            "/api/presence",
            json!({"room": "hall", "after": first["after"], "limit": 2}),
        )
        .await;
    assert_eq!(rest["members"][0]["id"], "u3", "{rest}");
    assert_eq!(rest["more"], false);
    let all = api.ok("/api/presence", json!({"room": "hall"})).await;
    assert_eq!(all["members"].as_array().unwrap().len(), 3);
    assert_eq!(all["count"], 3);

    let count = api.ok("/api/presence_count", json!({"room": "hall"})).await;
    assert_eq!(
        (count["count"].clone(), count["connections"].clone()),
        (json!(3), json!(4)),
        "{count}"
    );

    let rooms = api.ok("/api/rooms", json!({})).await;
    assert_eq!(
        rooms["rooms"],
        json!([
            {"room": "hall", "members": 3, "connections": 4},
            {"room": "side", "members": 1, "connections": 1},
        ]),
        "{rooms}"
    );
    let page = api.ok("/api/rooms", json!({"limit": 1})).await;
    assert_eq!(
        (page["more"].clone(), page["after"].clone()),
        (json!(true), json!("hall")),
        "{page}"
    );
    let page = api.ok("/api/rooms", json!({"after": "hall"})).await;
    assert_eq!(page["rooms"][0]["room"], "side");
    // An empty body is {} for calls whose fields are all optional.
    let answer = api.post_raw("/api/rooms", b"").await;
    assert_eq!(answer.status, 200, "{answer:?}");

    let user = api.ok("/api/user", json!({"user_id": "u1"})).await;
    let connections = user["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 2, "{user}");
    assert_eq!(connections[0]["node"], "test-node");
    assert_eq!(connections[0]["rooms"], json!(["hall"]));
    assert_eq!(connections[1]["rooms"], json!(["hall", "side"]));
    assert_eq!(connections[1]["session"], again.welcome["session"]);
    let since = connections[0]["connected_at"].as_u64().unwrap();
    assert!(since > 1_700_000_000_000 && since <= connections[1]["connected_at"].as_u64().unwrap());
    api.refused(
        "/api/user",
        json!({"user_id": "ghost"}),
        404,
        "user_offline",
    )
    .await;
}

#[tokio::test]
async fn unknown_rooms_and_paths_are_404() {
    let (_node, api) = node().await;
    for path in ["/api/presence", "/api/presence_count", "/api/history"] {
        api.refused(path, json!({"room": "never.used"}), 404, "not_found")
            .await;
    }
    api.refused("/api/nothing", json!({}), 404, "not_found")
        .await;
    // A known path with another method.
    assert_eq!(api.call("GET", "/api/publish").await.status, 405);
}

#[tokio::test]
async fn bad_input_gets_the_documented_error_and_nothing_breaks() {
    let (node, api) = node().await;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/api/publish", b"{not json".to_vec(), 400, "bad_request"),
        ("/api/publish", b"[1, 2]".to_vec(), 400, "bad_request"),
        (
            "/api/publish",
            b"{\"room\": \"lobby\"}".to_vec(),
            400,
            "bad_request",
        ),
        (
            "/api/publish",
            br#"{"room": "lobby", "content": "x", "colour": "red"}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "/api/publish",
            br#"{"room": 7, "content": "x"}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "/api/publish",
            br#"{"room": "no spaces", "content": "x"}"#.to_vec(),
            400,
            "invalid_room",
        ),
        (
            "/api/publish",
            br#"{"room": "", "content": "x"}"#.to_vec(),
            400,
            "invalid_room",
        ),
        (
            "/api/publish",
            format!(r#"{{"room": "{}", "content": "x"}}"#, "r".repeat(65)).into_bytes(),
            400,
            "invalid_room",
        ),
        (
            "/api/publish",
            br#"{"room": "lobby", "content": "   "}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "/api/publish",
            br#"{"room": "lobby", "content": "bell\u0007"}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "/api/publish",
            format!(r#"{{"room": "lobby", "content": "{}"}}"#, "x".repeat(5001)).into_bytes(),
            400,
            "too_long",
        ),
        (
            "/api/publish",
            br#"{"room": "lobby", "content": "x", "from": {"user_id": "sp ace"}}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "/api/publish",
            br#"{"room": "lobby", "content": "x", "idempotency_key": ""}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "/api/history",
            br#"{"room": "lobby", "limit": -1}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "/api/presence",
            br#"{"room": "lobby", "after": "no good"}"#.to_vec(),
            400,
            "bad_request",
        ),
        ("/api/user", b"{}".to_vec(), 400, "bad_request"),
        (
            "/api/publish",
            "\u{feff}{}".as_bytes().to_vec(),
            400,
            "bad_request",
        ),
        ("/api/publish", vec![0xff, 0xfe, 0x00], 400, "bad_request"),
    ];
    for (path, body, status, code) in cases {
        let answer = api.post_raw(path, &body).await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (status, code),
            "{path} {:?}: {answer:?}",
            String::from_utf8_lossy(&body)
        );
        assert!(answer.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // Larger than api.max_body_bytes (64 KiB): declared, and streamed without a length.
    let big = format!(
        r#"{{"room": "lobby", "content": "{}"}}"#,
        "x".repeat(70_000)
    );
    let answer = api.post_raw("/api/publish", big.as_bytes()).await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (413, "too_large"),
        "{answer:?}"
    );
    let answer = api.post_chunked("/api/publish", big.as_bytes()).await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (413, "too_large"),
        "{answer:?}"
    );
    // The node still serves.
    let mut client = node.connect("ivy", "Ivy").await;
    client.join("lobby").await;
    api.ok(
        "/api/publish",
        json!({"room": "lobby", "content": "still here"}),
    )
    .await;
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not() {
    let mut settings = api_settings();
    settings.api.requests_per_second = 1;
    settings.api.burst = 3;
    let node = TestNode::start_with(settings, Behaviours::new()).await;
    let api = Api::new(node.addr, KEY);
    for _ in 0..3 {
        api.ok("/api/rooms", json!({})).await;
    }
    let answer = api.post("/api/rooms", &json!({})).await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (429, "rate_limited"),
        "{answer:?}"
    );
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert!(answer.json()["error"]["retry_after_ms"]
        .as_u64()
        .is_some_and(|ms| (1..=1000).contains(&ms)));
    api.with_key(Some(OTHER_KEY))
        .ok("/api/rooms", json!({}))
        .await;
    // A wrong key is refused as unknown, not counted against a real one.
    api.with_key(Some("wrong-key-0123456789"))
        .refused("/api/rooms", json!({}), 401, "unauthorized")
        .await;
}

#[tokio::test]
async fn with_an_admin_listener_the_api_is_there_and_not_on_the_public_port() {
    let mut settings = api_settings();
    settings.admin.addr = "127.0.0.1:0".to_owned();
    let app = hubbub::Application::build_with(settings, Behaviours::new()).expect("node builds");
    let (public, admin) = (app.local_addr(), app.admin_addr().expect("admin listener"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    let body = json!({"room": "lobby", "content": "hi"});
    let answer = Api::new(public, KEY).post("/api/publish", &body).await;
    assert_eq!(answer.status, 404, "{answer:?}");
    Api::new(admin, KEY).ok("/api/publish", body).await;
    let _ = stop.send(());
    let _ = running.await;
}

#[tokio::test]
async fn a_server_publish_goes_through_the_rooms_behaviour_like_a_clients() {
    let behaviours = Behaviours::new()
        .with("kids:*", hubbub::behaviour::WordFilter::new(["darn"]))
        .unwrap()
        .with("news:*", hubbub::behaviour::AnnounceOnly::new(["editor"]))
        .unwrap();
    let node = TestNode::start_with(api_settings(), behaviours).await;
    let api = Api::new(node.addr, KEY);
    let mut kid = node.connect("kid", "Kid").await;
    kid.join("kids:club").await;
    api.ok(
        "/api/publish",
        json!({"room": "kids:club", "content": "oh DARN it"}),
    )
    .await;
    assert_eq!(kid.expect_type("message").await["content"], "oh **** it");
    // Refused by the behaviour: 403, and nothing ordered.
    api.refused(
        "/api/publish",
        json!({"room": "news:today", "content": "x"}),
        403,
        "forbidden",
    )
    .await;
    let editor = json!({"room": "news:today", "content": "extra", "from": {"user_id": "editor"}});
    let published = api.ok("/api/publish", editor).await;
    assert_eq!(published["seq"], 1);
}
