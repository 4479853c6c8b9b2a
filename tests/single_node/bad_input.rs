//! Bad input from a client: every malformed or refused frame gets an error with the
//! right code (a reply when the frame carried a readable `ref`, else an `error`
//! frame), the offending connection stays open, and the other clients carry on.

use crate::support::{Client, TestNode};
use hubbub::Settings;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A node with an offending client (`mallory`) and a bystander (`bob`).
struct Scene {
    node: TestNode,
    mallory: Client,
    bob: Client,
}

impl Scene {
    async fn start() -> Self {
        Self::start_adjusted(|_| {}).await
    }

    async fn start_adjusted(adjust: impl FnOnce(&mut Settings)) -> Self {
        let node = TestNode::start_adjusted(adjust).await;
        let mallory = node.connect("mallory", "Mallory").await;
        let bob = node.connect("bob", "Bob").await;
        Self { node, mallory, bob }
    }

    /// Both connections still work, and so does the node around them: each sends the
    /// other a direct message (presence is alive and both sessions are registered),
    /// and each receives the other's.
    async fn still_talking(&mut self) {
        let ack = self
            .mallory
            .ok(json!({"type": "direct", "to": "bob", "content": "still here"}))
            .await;
        assert_eq!(ack["delivered"], 1, "{ack}");
        let ack = self
            .bob
            .ok(json!({"type": "direct", "to": "mallory", "content": "me too"}))
            .await;
        assert_eq!(ack["delivered"], 1, "{ack}");
        let got = self.bob.expect_type("direct").await;
        assert_eq!(got["content"], "still here");
        let got = self.mallory.expect_type("direct").await;
        assert_eq!(got["content"], "me too");
    }
}

/// Sends `text`, which must be answered by an `error` frame next; returns its code.
async fn error_frame(c: &mut Client, text: &str) -> String {
    c.send_text(text).await;
    let answer = c.next_frame().await;
    assert_eq!(answer["type"], "error", "{text:?} was answered by {answer}");
    assert!(
        answer.get("ref").is_none(),
        "an error frame has no ref: {answer}"
    );
    error_code(&answer)
}

/// Sends `text`, which carries `reference`, and returns the error code of the failed
/// reply echoing it, which must be the next frame.
async fn failed_reply(c: &mut Client, text: &str, reference: Value) -> String {
    c.send_text(text).await;
    let answer = c.next_frame().await;
    assert_eq!(answer["type"], "reply", "{text:?} was answered by {answer}");
    assert_eq!(answer["ref"], reference, "{answer}");
    assert_eq!(answer["ok"], false, "{answer}");
    error_code(&answer)
}

fn error_code(frame: &Value) -> String {
    let error = &frame["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error says what is wrong: {frame}"
    );
    error["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn text_that_is_not_a_json_object_gets_an_error_frame() {
    let mut scene = Scene::start().await;
    for text in [
        "hello",
        "",
        "{\"type\": \"ping\"",
        "{'type': 'ping'}",
        "[]",
        "[{\"type\": \"ping\", \"ref\": 1}]",
        "42",
        "-1.5",
        "\"ping\"",
        "null",
        "true",
    ] {
        let code = error_frame(&mut scene.mallory, text).await;
        assert_eq!(code, "bad_request", "for {text:?}");
    }
    scene.still_talking().await;
}

#[tokio::test]
async fn a_frame_without_a_usable_type_is_refused() {
    let mut scene = Scene::start().await;
    let m = &mut scene.mallory;

    // No ref: an error frame.
    assert_eq!(error_frame(m, r#"{"room": "lobby"}"#).await, "bad_request");
    assert_eq!(error_frame(m, r#"{"type": 1}"#).await, "bad_request");
    assert_eq!(error_frame(m, r#"{"type": "shout"}"#).await, "unknown_type");

    // A readable ref: a failed reply echoing it.
    for (frame, code) in [
        (json!({"ref": "a"}), "bad_request"),
        (json!({"ref": "a", "type": null}), "bad_request"),
        (json!({"ref": "a", "type": 7}), "bad_request"),
        (json!({"ref": "a", "type": ["ping"]}), "bad_request"),
        (json!({"ref": "a", "type": {"name": "ping"}}), "bad_request"),
        (json!({"ref": "a", "type": "shout"}), "unknown_type"),
        (json!({"ref": "a", "type": "PING"}), "unknown_type"),
        (json!({"ref": "a", "type": ""}), "unknown_type"),
    ] {
        let got = failed_reply(m, &frame.to_string(), json!("a")).await;
        assert_eq!(got, code, "for {frame}");
    }

    // The message names the unknown type, but does not echo an arbitrarily long one.
    let long = "x".repeat(10_000);
    m.send(json!({"type": long, "ref": 1})).await;
    let reply = m.next_frame().await;
    assert_eq!(reply["error"]["code"], "unknown_type");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("xxxx"), "{message}");
    assert!(message.len() < 200, "the whole type was echoed back");

    scene.still_talking().await;
}

#[tokio::test]
async fn missing_and_mistyped_fields_are_bad_requests() {
    let mut scene = Scene::start().await;
    let m = &mut scene.mallory;
    m.join("lobby").await;
    for frame in [
        json!({"type": "join"}),
        json!({"type": "join", "room": 5}),
        json!({"type": "join", "room": null}),
        json!({"type": "join", "room": ["lobby"]}),
        json!({"type": "join", "room": "lobby", "since": "3"}),
        json!({"type": "join", "room": "lobby", "since": -1}),
        json!({"type": "join", "room": "lobby", "since": 1.5}),
        json!({"type": "leave"}),
        json!({"type": "leave", "room": 5}),
        json!({"type": "publish", "room": "lobby"}),
        json!({"type": "publish", "content": "where to?"}),
        json!({"type": "publish", "room": "lobby", "content": 5}),
        json!({"type": "publish", "room": "lobby", "content": null}),
        json!({"type": "publish", "room": 5, "content": "hi"}),
        json!({"type": "typing", "room": true}),
        json!({"type": "history", "room": "lobby", "limit": -1}),
        json!({"type": "history", "room": "lobby", "limit": "10"}),
        json!({"type": "history", "room": "lobby", "before": "5"}),
        json!({"type": "history", "room": "lobby", "limit": 5_000_000_000u64}),
        json!({"type": "presence"}),
        json!({"type": "direct", "content": "to whom?"}),
        json!({"type": "direct", "to": "bob"}),
        json!({"type": "direct", "to": 5, "content": "hi"}),
        json!({"type": "rename"}),
        json!({"type": "rename", "name": 5}),
    ] {
        assert_eq!(m.refused(frame.clone()).await, "bad_request", "for {frame}");
    }
    // Without a ref the same mistakes are error frames.
    assert_eq!(
        error_frame(m, r#"{"type": "publish", "room": "lobby"}"#).await,
        "bad_request"
    );
    // Nothing half-decoded reached the room.
    let history = m.ok(json!({"type": "history", "room": "lobby"})).await;
    assert_eq!(history["messages"], json!([]));
    scene.still_talking().await;
}

#[tokio::test]
async fn a_ref_is_echoed_as_sent_and_an_unusable_ref_is_an_error_frame() {
    let mut scene = Scene::start().await;
    let m = &mut scene.mallory;

    // Echoed with its JSON type: a number stays a number, a string stays a string.
    for reference in [
        json!(7),
        json!("7"),
        json!(0),
        json!(-3),
        json!(1.5),
        json!(u64::MAX),
        json!(""),
        json!("x".repeat(128)),
    ] {
        m.send(json!({"type": "ping", "ref": reference})).await;
        let pong = m.next_frame().await;
        assert_eq!(pong, json!({"type": "pong", "ref": reference}));
    }
    // A failed reply echoes it too.
    let code = failed_reply(
        m,
        r#"{"type": "leave", "room": "nowhere", "ref": 42}"#,
        json!(42),
    )
    .await;
    assert_eq!(code, "not_joined");
    let code = failed_reply(
        m,
        r#"{"type": "leave", "room": "nowhere", "ref": "42"}"#,
        json!("42"),
    )
    .await;
    assert_eq!(code, "not_joined");
    // A null ref is no ref.
    m.send(json!({"type": "ping", "ref": null})).await;
    assert_eq!(m.next_frame().await, json!({"type": "pong"}));

    // A ref that cannot be echoed: the frame is refused with an error frame, unanswered.
    for reference in [
        json!({"id": 1}),
        json!([1]),
        json!(true),
        json!("x".repeat(129)),
    ] {
        let text = json!({"type": "ping", "ref": reference}).to_string();
        assert_eq!(
            error_frame(m, &text).await,
            "bad_request",
            "for {reference}"
        );
    }
    scene.still_talking().await;
}

#[tokio::test]
async fn binary_frames_get_an_error_frame() {
    let mut scene = Scene::start().await;
    let m = &mut scene.mallory;
    // Even a frame whose bytes are a valid request is refused: the protocol is text.
    let ping = json!({"type": "ping", "ref": 1}).to_string();
    for payload in [ping.into_bytes(), vec![], vec![0xff, 0x00, 0x13]] {
        m.send_raw(Message::Binary(payload.into())).await;
        let answer = m.next_frame().await;
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(error_code(&answer), "bad_request");
    }
    scene.still_talking().await;
}

#[tokio::test]

async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let mut scene = Scene::start().await;
    let frame = Frame::message(vec![0xff, 0xfe, b'{'], OpCode::Data(Data::Text), true);
    scene.mallory.send_raw(Message::Frame(frame)).await;
    // RFC 6455 8.1: invalid UTF-8 in a text frame fails the connection with 1007; it is
    // the client's mistake, not an internal error (1011).
    assert_eq!(scene.mallory.expect_close().await, Some(1007));
    scene.bob.ok(json!({"type": "rename", "name": "Bob"})).await;
}

#[tokio::test]
async fn room_names_outside_the_allowed_set_are_invalid_rooms() {
    let mut scene = Scene::start().await;
    let m = &mut scene.mallory;
    let too_long = "a".repeat(65);
    let bad_names = [
        "",
        too_long.as_str(),
        "two words",
        " lobby",
        "lobby\n",
        "a/b",
        "../lobby",
        "a+b",
        "café",
        "🦀",
        "lobby\u{0}",
    ];
    for name in bad_names {
        let code = m.refused(json!({"type": "join", "room": name})).await;
        assert_eq!(code, "invalid_room", "join {name:?}");
    }
    // Every request naming a room checks the name before anything else.
    for frame in [
        json!({"type": "leave", "room": "a/b"}),
        json!({"type": "publish", "room": "a/b", "content": "hi"}),
        json!({"type": "typing", "room": "a/b"}),
        json!({"type": "history", "room": "a/b"}),
        json!({"type": "presence", "room": "a/b"}),
    ] {
        assert_eq!(m.refused(frame.clone()).await, "invalid_room", "{frame}");
    }

    // The edges of the allowed set are fine.
    let longest = "b".repeat(64);
    let data = m.join(&longest).await;
    assert_eq!(data["room"], longest);
    let data = m.join("A-z_0.9:x").await;
    assert_eq!(data["room"], "A-z_0.9:x");
    bob_meets_mallory_in(&mut scene, &longest).await;
    scene.still_talking().await;
}

/// Bob joins `room`, where mallory already is, and hears her publish.
async fn bob_meets_mallory_in(scene: &mut Scene, room: &str) {
    let data = scene.bob.join(room).await;
    let ids: Vec<&str> = data["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["bob", "mallory"]);
    scene.mallory.publish(room, "hello").await;
    let m = scene.bob.expect_type("message").await;
    assert_eq!(
        (m["room"].as_str(), m["content"].as_str()),
        (Some(room), Some("hello"))
    );
}

#[tokio::test]
async fn content_must_be_non_empty_and_within_the_character_limit() {
    let mut scene = Scene::start_adjusted(|s| s.limits.max_message_chars = 10).await;
    scene.mallory.join("lobby").await;
    scene.bob.join("lobby").await;
    let m = &mut scene.mallory;

    for (content, code) in [
        ("", "bad_request"),
        ("   ", "bad_request"),
        ("\n\t \r", "bad_request"),
        ("abcdefghijk", "too_long"),
        // 11 characters in 22 bytes, 11 in 44 bytes.
        ("ééééééééééé", "too_long"),
        ("🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀", "too_long"),
    ] {
        let publish = json!({"type": "publish", "room": "lobby", "content": content});
        assert_eq!(m.refused(publish).await, code, "publish {content:?}");
        let direct = json!({"type": "direct", "to": "bob", "content": content});
        assert_eq!(m.refused(direct).await, code, "direct {content:?}");
    }
    // Exactly the limit, counted in characters: 10 bytes, 20 bytes, 40 bytes.
    let fits = ["abcdefghij", "éééééééééé", "🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀"];
    for content in fits {
        m.publish("lobby", content).await;
    }
    let ack = m
        .ok(json!({"type": "direct", "to": "bob", "content": fits[2]}))
        .await;
    assert_eq!(ack["delivered"], 1);

    // Bob got exactly what fitted, intact, and nothing that was refused.
    for content in fits {
        let message = scene.bob.expect_type("message").await;
        assert_eq!(message["content"], content);
    }
    assert_eq!(scene.bob.expect_type("direct").await["content"], fits[2]);
    scene.bob.barrier("lobby").await;
    assert!(scene
        .bob
        .seen(|f| f["type"] == "message" || f["type"] == "direct")
        .is_empty());
    scene.still_talking().await;
}

#[tokio::test]
async fn room_requests_need_the_room_joined_first() {
    let mut scene = Scene::start().await;
    scene.bob.join("elsewhere").await;
    let m = &mut scene.mallory;
    let not_joined = [
        json!({"type": "publish", "room": "elsewhere", "content": "sneaky"}),
        json!({"type": "typing", "room": "elsewhere"}),
        json!({"type": "history", "room": "elsewhere"}),
        json!({"type": "presence", "room": "elsewhere"}),
        json!({"type": "leave", "room": "elsewhere"}),
    ];
    for frame in &not_joined {
        assert_eq!(m.refused(frame.clone()).await, "not_joined", "{frame}");
    }
    // Typing without a ref is fire-and-forget when it works, but a refusal is still
    // reported, as an error frame.
    let code = error_frame(m, r#"{"type": "typing", "room": "elsewhere"}"#).await;
    assert_eq!(code, "not_joined");

    // Leaving makes it not joined again.
    m.join("lobby").await;
    m.ok(json!({"type": "leave", "room": "lobby"})).await;
    let publish = json!({"type": "publish", "room": "lobby", "content": "hi"});
    assert_eq!(m.refused(publish).await, "not_joined");
    let leave = json!({"type": "leave", "room": "lobby"});
    assert_eq!(m.refused(leave).await, "not_joined");

    // None of it reached the room mallory was not in.
    scene.bob.barrier("elsewhere").await;
    let leaked = scene
        .bob
        .seen(|f| f["type"] == "message" || f["type"] == "typing");
    assert!(leaked.is_empty(), "{leaked:?}");
    let members = scene
        .bob
        .ok(json!({"type": "presence", "room": "elsewhere"}))
        .await;
    assert_eq!(
        members["members"],
        json!([{"id": "bob", "name": "Bob", "connections": 1}])
    );
    scene.still_talking().await;
}

#[tokio::test]
async fn a_connection_may_join_only_so_many_rooms() {
    let mut scene = Scene::start_adjusted(|s| s.limits.max_rooms_per_session = 2).await;
    scene.bob.join("c").await;
    let m = &mut scene.mallory;
    m.join("a").await;
    m.join("b").await;
    let join_c = json!({"type": "join", "room": "c"});
    assert_eq!(m.refused(join_c.clone()).await, "too_many_rooms");
    // Joining a room it is already in does not count against the limit.
    m.join("a").await;
    m.join("b").await;
    // The refused join left no trace in the room.
    let members = scene.bob.ok(json!({"type": "presence", "room": "c"})).await;
    assert_eq!(members["members"].as_array().map(Vec::len), Some(1));

    // Leaving one makes room for another.
    m.ok(json!({"type": "leave", "room": "b"})).await;
    let data = m.join("c").await;
    assert_eq!(data["members"].as_array().map(Vec::len), Some(2));
    let join_b = json!({"type": "join", "room": "b"});
    assert_eq!(m.refused(join_b).await, "too_many_rooms");
    scene.still_talking().await;

    // The limit is per connection: another connection of the same user has its own.
    let mut tab = scene.node.connect("mallory", "Mallory").await;
    tab.join("b").await;
    tab.join("d").await;
}

#[tokio::test]
async fn direct_targets_and_names_are_checked() {
    let mut scene = Scene::start().await;
    let m = &mut scene.mallory;
    let too_long_id = "u".repeat(65);
    for to in ["", "two words", "a/b", "bøb", too_long_id.as_str()] {
        let direct = json!({"type": "direct", "to": to, "content": "hi"});
        assert_eq!(m.refused(direct).await, "bad_request", "to {to:?}");
    }
    let direct = json!({"type": "direct", "to": "nobody", "content": "hi"});
    assert_eq!(m.refused(direct).await, "user_offline");
    // A valid id of exactly 64 characters is merely offline.
    let direct = json!({"type": "direct", "to": "u".repeat(64), "content": "hi"});
    assert_eq!(m.refused(direct).await, "user_offline");

    let too_long_name = "n".repeat(65);
    for (name, code) in [
        ("", "bad_request"),
        ("   ", "bad_request"),
        ("bell\u{7}", "bad_request"),
        ("new\nline", "bad_request"),
        (too_long_name.as_str(), "too_long"),
    ] {
        let rename = json!({"type": "rename", "name": name});
        assert_eq!(m.refused(rename).await, code, "rename to {name:?}");
    }
    // The name is unchanged by the refused renames; 64 characters (after trimming) fit.
    let longest = "é".repeat(64);
    let data = m
        .ok(json!({"type": "rename", "name": format!("  {longest}  ")}))
        .await;
    assert_eq!(data["user"], json!({"id": "mallory", "name": longest}));
    scene.still_talking().await;
}

#[tokio::test]
async fn an_upgrade_with_a_bad_query_is_refused_with_400() {
    let mut scene = Scene::start().await;
    let long = "x".repeat(65);
    for (query, code) in [
        ("user=a%20b".to_owned(), "bad_request"),
        ("user=".to_owned(), "bad_request"),
        ("user=a/b".to_owned(), "bad_request"),
        ("user=%C3%A9".to_owned(), "bad_request"),
        (format!("user={long}"), "bad_request"),
        ("user=alice&name=".to_owned(), "bad_request"),
        ("user=alice&name=%07".to_owned(), "bad_request"),
        (format!("user=alice&name={long}"), "too_long"),
    ] {
        let refusal = match scene.node.try_connect(&query).await {
            Ok(_) => panic!("an upgrade with {query:?} was accepted"),
            Err(refusal) => refusal,
        };
        assert_eq!(refusal.status, 400, "{query}: {refusal:?}");
        assert_eq!(refusal.body["error"]["code"], code, "{query}: {refusal:?}");
        assert!(
            refusal.body["error"]["message"].as_str().is_some(),
            "{refusal:?}"
        );
    }
    // Refusals hold no connection slot and harm nobody.
    let alice = Client::connect(&scene.node, "user=alice&name=Alice%20A").await;
    assert_eq!(
        alice.welcome["user"],
        json!({"id": "alice", "name": "Alice A"})
    );
    scene.still_talking().await;
}
