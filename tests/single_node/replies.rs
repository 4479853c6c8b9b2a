//! Replies bounded in bytes and member lists paged (protocol v1 additions), and the
//! content rules: a room of big messages answers `join` and `history` within
//! `limits.max_reply_bytes`, and `more` with its cursor lets a client fetch every
//! message exactly once, in order; `presence` of a big room pages and counts;
//! control characters and over-long content are refused with their codes.

use crate::scrape::Metrics;
use crate::support::{Client, TestNode};
use hubbub::Settings;
use serde_json::{json, Value};

/// Small bounds so that a few dozen messages already need several pages.
const REPLY_BYTES: usize = 20_000;
const MESSAGE_BYTES: usize = 4_000;
const PAGE: usize = 10;

fn small_bounds(settings: &mut Settings) {
    settings.limits.max_reply_bytes = REPLY_BYTES;
    settings.limits.max_message_bytes = MESSAGE_BYTES;
    settings.limits.presence_page = PAGE;
    settings.rooms.history = 500;
}

/// The reply's size as sent: the node encodes compactly with serde_json, and
/// re-encoding the parsed value gives the same length (same fields, same escapes).
fn frame_bytes(reply: &Value) -> usize {
    reply.to_string().len()
}

fn seqs(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .expect("a list of messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("a seq"))
        .collect()
}

/// A content of about MESSAGE_BYTES bytes that JSON escapes heavily (quotes, `\n`,
/// `\t` and backslashes double), so the replies' bytes, not the content's, are what
/// the bound has to hold.
fn big_content(seq: u64) -> String {
    let mut content = format!("message {seq}:");
    while content.len() < MESSAGE_BYTES - 4 {
        content.push_str("\"\\\n\t");
    }
    content
}

async fn request_ok(client: &mut Client, frame: Value) -> Value {
    let reply = client.request(frame.clone()).await;
    assert_eq!(reply["ok"], true, "{frame} failed: {reply}");
    assert!(
        frame_bytes(&reply) <= REPLY_BYTES,
        "a reply of {} bytes is over limits.max_reply_bytes = {REPLY_BYTES}",
        frame_bytes(&reply)
    );
    reply["data"].clone()
}

async fn scrape(node: &TestNode) -> Metrics {
    let (status, body) = node.get("/metrics").await;
    assert_eq!(status, 200);
    Metrics::parse(&body)
}

#[tokio::test]
async fn history_and_join_replies_stay_under_the_byte_bound_and_page_to_every_message_once() {
    let node = TestNode::start_adjusted(small_bounds).await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("big").await;
    const COUNT: u64 = 60;
    for seq in 1..=COUNT {
        alice.publish("big", &big_content(seq)).await;
    }
    alice.discard_pending();

    // A fresh join gets the newest that fit, and pages back to the first message.
    let mut bob = node.connect("bob", "Bob").await;
    let join = request_ok(&mut bob, json!({"type": "join", "room": "big"})).await;
    let mut all = seqs(&join["history"]);
    assert_eq!(all.last(), Some(&COUNT), "{join}");
    assert!(all.len() < COUNT as usize, "the join reply was not cut");
    assert_eq!(join["more"], true);
    assert_eq!(join["before"].as_u64(), all.first().copied());
    assert!(join.get("after").is_none());
    let mut before = join["before"].as_u64();
    let mut pages = 0;
    while let Some(cursor) = before {
        let page = request_ok(
            &mut bob,
            json!({"type": "history", "room": "big", "before": cursor, "limit": 1000}),
        )
        .await;
        let mut older = seqs(&page["messages"]);
        assert!(!older.is_empty(), "{page}");
        older.append(&mut all);
        all = older;
        pages += 1;
        before = match page["more"] == true {
            true => Some(page["before"].as_u64().expect("a cursor with more")),
            false => None,
        };
    }
    assert!(pages >= 2, "only {pages} history pages");
    assert_eq!(all, (1..=COUNT).collect::<Vec<_>>());

    // A resume gets the OLDEST missed messages first; `after` and `before` = seq + 1
    // fetch exactly the rest, while a message published meanwhile arrives live.
    let mut carol = node.connect("carol", "Carol").await;
    let resume = request_ok(
        &mut carol,
        json!({"type": "join", "room": "big", "since": 5}),
    )
    .await;
    let seq = resume["seq"].as_u64().expect("seq");
    assert_eq!(seq, COUNT);
    let mut missed = seqs(&resume["history"]);
    assert_eq!(missed.first(), Some(&6), "{resume}");
    assert_eq!(resume["more"], true);
    assert_eq!(resume["after"].as_u64(), missed.last().copied());
    assert!(resume.get("before").is_none());
    alice.publish("big", "live while carol catches up").await;
    let mut after = resume["after"].as_u64();
    while let Some(cursor) = after {
        let page = request_ok(
            &mut carol,
            json!({"type": "history", "room": "big", "after": cursor, "before": seq + 1}),
        )
        .await;
        missed.extend(seqs(&page["messages"]));
        after = match page["more"] == true {
            true => Some(page["after"].as_u64().expect("a cursor with more")),
            false => None,
        };
    }
    assert_eq!(missed, (6..=COUNT).collect::<Vec<_>>());
    let live = carol.expect_type("message").await;
    assert_eq!(live["seq"], COUNT + 1, "{live}");

    let m = scrape(&node).await;
    assert!(m.value("hubbub_replies_cut_total", &[("reply", "join")]) >= 2.0);
    assert!(m.value("hubbub_replies_cut_total", &[("reply", "history")]) >= 1.0);
}

#[tokio::test]
async fn presence_of_a_big_room_is_paged_by_id_and_has_a_count_only_form() {
    let node = TestNode::start_adjusted(|s| {
        small_bounds(s);
        // 27 connections from one address, at once.
        s.rate_limit.handshakes_per_ip_per_sec = 0;
    })
    .await;
    const USERS: usize = 25;
    let mut clients = Vec::new();
    for i in 0..USERS {
        let mut client = node.connect(&format!("user-{i:02}"), "U").await;
        client.join("crowd").await;
        clients.push(client);
    }
    // One user with a second connection: one member, two connections.
    let mut second = node.connect("user-00", "U").await;
    second.join("crowd").await;

    // The join reply lists the first page only, and says how many there are.
    let mut zed = node.connect("zed", "Zed").await;
    let join = request_ok(&mut zed, json!({"type": "join", "room": "crowd"})).await;
    assert_eq!(
        join["members"].as_array().map(Vec::len),
        Some(PAGE),
        "{join}"
    );
    assert_eq!(join["members_more"], true);
    assert_eq!(join["members_count"], USERS + 1);

    let mut ids: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut frame = json!({"type": "presence", "room": "crowd"});
        if let Some(after) = &after {
            frame["after"] = json!(after);
        }
        let page = request_ok(&mut zed, frame).await;
        let members = page["members"].as_array().expect("members");
        assert!(members.len() <= PAGE, "{page}");
        assert_eq!(page["count"], USERS + 1);
        ids.extend(members.iter().map(|m| m["id"].as_str().unwrap().to_owned()));
        if page["more"] != true {
            assert!(page.get("after").is_none());
            break;
        }
        after = Some(page["after"].as_str().expect("a cursor").to_owned());
        assert_eq!(after.as_deref(), ids.last().map(String::as_str));
    }
    let mut want: Vec<String> = (0..USERS).map(|i| format!("user-{i:02}")).collect();
    want.push("zed".to_owned());
    assert_eq!(ids, want, "every member once, in id order");

    let limited = request_ok(
        &mut zed,
        json!({"type": "presence", "room": "crowd", "after": "user-20", "limit": 3}),
    )
    .await;
    let limited_ids: Vec<&str> = limited["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(limited_ids, ["user-21", "user-22", "user-23"]);
    assert_eq!(limited["after"], "user-23");

    let counts = request_ok(
        &mut zed,
        json!({"type": "presence", "room": "crowd", "count_only": true}),
    )
    .await;
    assert_eq!(
        counts,
        json!({"room": "crowd", "count": USERS + 1, "connections": USERS + 2})
    );

    // A small room keeps the reply it always had: the list and nothing else.
    let mut yan = node.connect("yan", "Yan").await;
    yan.join("small").await;
    zed.join("small").await;
    let small = request_ok(&mut zed, json!({"type": "presence", "room": "small"})).await;
    assert_eq!(
        small,
        json!({"room": "small", "members": [
            {"id": "yan", "name": "Yan", "connections": 1},
            {"id": "zed", "name": "Zed", "connections": 1},
        ]})
    );
    let joined = request_ok(&mut yan, json!({"type": "join", "room": "small"})).await;
    assert!(joined.get("members_more").is_none() && joined.get("more").is_none());

    let m = scrape(&node).await;
    assert!(m.value("hubbub_replies_cut_total", &[("reply", "presence")]) >= 2.0);
    assert!(m.value("hubbub_replies_cut_total", &[("reply", "join_members")]) >= 1.0);
}

#[tokio::test]
async fn control_characters_and_content_over_the_byte_bound_are_refused() {
    let node = TestNode::start_adjusted(small_bounds).await;
    let mut alice = node.connect("alice", "Alice").await;
    let mut bob = node.connect("bob", "Bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;

    for bad in [
        "bell\u{7}",
        "nul\u{0}",
        "cr\r\nlf",
        "del\u{7f}",
        "c1\u{85}",
        "\u{9b}31m",
    ] {
        let code = alice
            .refused(json!({"type": "publish", "room": "lobby", "content": bad}))
            .await;
        assert_eq!(code, "bad_request", "publish {bad:?}");
        let code = alice
            .refused(json!({"type": "direct", "to": "bob", "content": bad}))
            .await;
        assert_eq!(code, "bad_request", "direct {bad:?}");
    }
    // Names refuse every control character, `\n` and `\t` too.
    for bad in ["two\nlines", "tab\there", "esc\u{1b}"] {
        let code = alice.refused(json!({"type": "rename", "name": bad})).await;
        assert_eq!(code, "bad_request", "rename {bad:?}");
    }
    // `\n` and `\t` are content.
    let ok = alice.publish("lobby", "line one\nline\ttwo").await;
    let seen = bob.expect_type("message").await;
    assert_eq!(seen["content"], "line one\nline\ttwo");
    assert_eq!(seen["seq"], ok["seq"]);

    // The byte bound: 2-byte characters, few enough for max_message_chars (5000).
    let at_bound = "é".repeat(MESSAGE_BYTES / 2);
    alice.publish("lobby", &at_bound).await;
    let over = format!("{at_bound}x");
    let code = alice
        .refused(json!({"type": "publish", "room": "lobby", "content": over}))
        .await;
    assert_eq!(code, "too_long");
    let code = alice
        .refused(json!({"type": "direct", "to": "bob", "content": over}))
        .await;
    assert_eq!(code, "too_long");

    // A lone surrogate escape is not JSON: an error frame, and the connection carries on.
    alice
        .send_text(r#"{"type":"publish","room":"lobby","content":"a\ud800b","ref":"s"}"#)
        .await;
    let error = alice.expect_type("error").await;
    assert_eq!(error["error"]["code"], "bad_request", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("surrogate")),
        "{error}"
    );
    alice.ping().await;

    // Nothing refused reached the room.
    bob.barrier("lobby").await;
    let contents: Vec<Value> = bob
        .take_seen(|f| f["type"] == "message")
        .into_iter()
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(contents, [json!(at_bound)]);

    let m = scrape(&node).await;
    let refused = |reason| m.value("hubbub_content_refused_total", &[("reason", reason)]);
    assert_eq!(refused("control_character"), 12.0);
    assert_eq!(refused("bytes"), 2.0);
}

#[tokio::test]
async fn max_message_bytes_0_leaves_only_the_character_bound() {
    let node = TestNode::start_adjusted(|s| {
        s.limits.max_message_bytes = 0;
        s.limits.max_message_chars = 100;
    })
    .await;
    let mut alice = node.connect("alice", "Alice").await;
    alice.join("lobby").await;
    // 100 characters of 4 bytes each: 400 bytes, within the character bound.
    alice.publish("lobby", &"😀".repeat(100)).await;
    let code = alice
        .refused(json!({"type": "publish", "room": "lobby", "content": "😀".repeat(101)}))
        .await;
    assert_eq!(code, "too_long");
}
