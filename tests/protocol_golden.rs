//! Golden tests of wire protocol v1: the exact JSON of every frame.
//!
//! Pure: the library's protocol module only, no node and no network. Each server frame
//! is encoded and compared with a literal twice, as a JSON value (what it means) and as
//! a string (what clients see, field order included). Each client frame is decoded
//! from a literal, and every way decoding can fail is pinned to its error code.
//! docs/protocol.md describes the same frames; fields may be added, never renamed, so
//! a change that breaks a literal here breaks clients.

use hubbub::protocol::{
    close, decode_client_frame, encode, validate_display_name, validate_idempotency_key,
    validate_user_id, ChatMessage, ClientFrame, DirectFrame, ErrorBody, ErrorCode, FrameError,
    Member, MessageData, Ref, ReplyData, Request, RoomName, RoomPublished, ServerFrame, UserInfo,
    MAX_HISTORY_LIMIT, MAX_IDEMPOTENCY_KEY_BYTES, MAX_NAME_CHARS, MAX_PUBLISH_ROOMS,
    PROTOCOL_VERSION,
};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------
// Fixtures and helpers
// ---------------------------------------------------------------------------------

const MESSAGE_ID: &str = "01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f";
const DIRECT_ID: &str = "01912f4e-7b3b-7000-8000-000000000001";
const TS: u64 = 1_722_500_000_000;

fn user(id: &str, name: &str) -> UserInfo {
    UserInfo {
        id: id.to_owned(),
        name: name.to_owned(),
    }
}

fn member(id: &str, name: &str, connections: u32) -> Member {
    Member {
        id: id.to_owned(),
        name: name.to_owned(),
        connections,
    }
}

fn chat_message(seq: u64, content: &str) -> ChatMessage {
    ChatMessage {
        room: "lobby".to_owned(),
        id: MESSAGE_ID.to_owned(),
        seq,
        from: user("alice", "Alice"),
        content: content.into(),
        ts: TS,
        data: None,
    }
}

fn room(name: &str) -> RoomName {
    RoomName::parse(name).expect("a valid room name")
}

/// `Ref` has no public constructor; a client's ref is only ever read from a frame, so
/// the tests read one the same way.
fn reference(json_ref: &str) -> Option<Ref> {
    let text = format!(r#"{{"type":"ping","ref":{json_ref}}}"#);
    let frame = decode_client_frame(&text).expect("a ping with a valid ref decodes");
    assert!(frame.reference.is_some(), "{json_ref} is a ref");
    frame.reference
}

/// Encodes `frame` and checks it against `expected`, as JSON and byte for byte.
#[track_caller]
fn pin(frame: &ServerFrame, expected: &str) {
    let encoded = encode(frame);
    let text: &str = &encoded;
    let got: Value = serde_json::from_str(text).expect("encode gives JSON");
    let want: Value = serde_json::from_str(expected).expect("the literal is JSON");
    assert_eq!(got, want, "frame content differs");
    assert_eq!(text, expected, "frame text (field order) differs");
}

#[track_caller]
fn decoded(text: &str) -> ClientFrame {
    match decode_client_frame(text) {
        Ok(frame) => frame,
        Err(e) => panic!("{text} should decode, got {e:?}"),
    }
}

#[track_caller]
fn request(text: &str) -> Request {
    decoded(text).request
}

#[track_caller]
fn refused(text: &str) -> FrameError {
    match decode_client_frame(text) {
        Ok(frame) => panic!("{text} should be refused, got {frame:?}"),
        Err(e) => e,
    }
}

/// The frame is refused with `code`, and the `ref` it kept serialises to `kept_ref`
/// (`Value::Null` when none was kept).
#[track_caller]
fn refused_with(text: &str, code: ErrorCode, kept_ref: Value) {
    let e = refused(text);
    assert_eq!(e.error.code, code, "code for {text}: {e:?}");
    assert_eq!(e.error.retry_after_ms, None);
    assert!(!e.error.message.is_empty(), "a message for {text}");
    assert_eq!(ref_json(&e.reference), kept_ref, "ref kept for {text}");
}

fn ref_json(reference: &Option<Ref>) -> Value {
    serde_json::to_value(reference).expect("a ref serialises")
}

// ---------------------------------------------------------------------------------
// Server frames
// ---------------------------------------------------------------------------------

#[test]
fn welcome() {
    pin(
        &ServerFrame::Welcome {
            session: "9f1c2d3e4b5a69788796a5b4c3d2e1f0".to_owned(),
            user: user("alice", "Alice"),
            node: "node-a".to_owned(),
            protocol: PROTOCOL_VERSION,
            heartbeat_ms: 25000,
        },
        r#"{"type":"welcome","session":"9f1c2d3e4b5a69788796a5b4c3d2e1f0","user":{"id":"alice","name":"Alice"},"node":"node-a","protocol":1,"heartbeat_ms":25000}"#,
    );
}

#[test]
fn reply_join() {
    pin(
        &ServerFrame::ok(
            reference("1"),
            ReplyData::Join {
                room: "lobby".to_owned(),
                seq: 3,
                history: vec![chat_message(3, "hello")],
                members: vec![member("alice", "Alice", 2), member("bob", "Bob", 1)],
                gap: false,
                more: false,
                before: None,
                after: None,
                members_more: false,
                members_count: None,
            },
        ),
        r#"{"type":"reply","ref":1,"ok":true,"data":{"room":"lobby","seq":3,"history":[{"room":"lobby","id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","seq":3,"from":{"id":"alice","name":"Alice"},"content":"hello","ts":1722500000000}],"members":[{"id":"alice","name":"Alice","connections":2},{"id":"bob","name":"Bob","connections":1}],"gap":false}}"#,
    );
}

#[test]
fn reply_join_of_a_fresh_room_with_a_gap() {
    pin(
        &ServerFrame::ok(
            reference("\"j-1\""),
            ReplyData::Join {
                room: "lobby".to_owned(),
                seq: 0,
                history: vec![],
                members: vec![member("alice", "Alice", 1)],
                gap: true,
                more: false,
                before: None,
                after: None,
                members_more: false,
                members_count: None,
            },
        ),
        r#"{"type":"reply","ref":"j-1","ok":true,"data":{"room":"lobby","seq":0,"history":[],"members":[{"id":"alice","name":"Alice","connections":1}],"gap":true}}"#,
    );
}

#[test]
fn reply_leave() {
    pin(
        &ServerFrame::ok(
            reference("2"),
            ReplyData::Leave {
                room: "lobby".to_owned(),
            },
        ),
        r#"{"type":"reply","ref":2,"ok":true,"data":{"room":"lobby"}}"#,
    );
}

#[test]
fn reply_publish() {
    pin(
        &ServerFrame::ok(
            reference("3"),
            ReplyData::Publish {
                id: MESSAGE_ID.to_owned(),
                seq: 4,
                ts: TS,
                duplicate: false,
            },
        ),
        r#"{"type":"reply","ref":3,"ok":true,"data":{"id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","seq":4,"ts":1722500000000}}"#,
    );
}

/// *(v1 addition)* A publish whose `idempotency_key` the room had seen: the original
/// message's id, seq and ts, with `duplicate: true` last. A first publish has no
/// `duplicate` field at all (above).
#[test]
fn reply_publish_of_a_retry() {
    pin(
        &ServerFrame::ok(
            reference("4"),
            ReplyData::Publish {
                id: MESSAGE_ID.to_owned(),
                seq: 4,
                ts: TS,
                duplicate: true,
            },
        ),
        r#"{"type":"reply","ref":4,"ok":true,"data":{"id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","seq":4,"ts":1722500000000,"duplicate":true}}"#,
    );
}

/// *(v1 addition)* The answer to a `publish` with `rooms`: the one `id`, then a result
/// per room in the order named: `ok` with that room's `id`, `seq` and `ts`, or not
/// `ok` with that room's `error`. The reply itself is `ok` either way.
#[test]
fn reply_publish_to_several_rooms() {
    let results = vec![
        RoomPublished::new(
            "lobby",
            Ok(ReplyData::Publish {
                id: MESSAGE_ID.to_owned(),
                seq: 4,
                ts: TS,
                duplicate: false,
            }),
        ),
        RoomPublished::new(
            "news",
            Ok(ReplyData::Publish {
                id: MESSAGE_ID.to_owned(),
                seq: 9,
                ts: TS,
                duplicate: true,
            }),
        ),
        RoomPublished::new(
            "quiet",
            Err(ErrorBody::new(ErrorCode::Forbidden, "the room refused it")),
        ),
    ];
    pin(
        &ServerFrame::ok(
            reference("5"),
            ReplyData::PublishRooms {
                id: MESSAGE_ID.to_owned(),
                results,
            },
        ),
        r#"{"type":"reply","ref":5,"ok":true,"data":{"id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","results":[{"room":"lobby","ok":true,"id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","seq":4,"ts":1722500000000},{"room":"news","ok":true,"id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","seq":9,"ts":1722500000000,"duplicate":true},{"room":"quiet","ok":false,"error":{"code":"forbidden","message":"the room refused it"}}]}}"#,
    );
}

#[test]
fn reply_history() {
    pin(
        &ServerFrame::ok(
            reference("4"),
            ReplyData::History {
                room: "lobby".to_owned(),
                messages: vec![chat_message(1, "first"), chat_message(2, "second")],
                more: false,
                before: None,
                after: None,
            },
        ),
        r#"{"type":"reply","ref":4,"ok":true,"data":{"room":"lobby","messages":[{"room":"lobby","id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","seq":1,"from":{"id":"alice","name":"Alice"},"content":"first","ts":1722500000000},{"room":"lobby","id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","seq":2,"from":{"id":"alice","name":"Alice"},"content":"second","ts":1722500000000}]}}"#,
    );
}

#[test]
fn reply_presence() {
    pin(
        &ServerFrame::ok(
            reference("5"),
            ReplyData::Presence {
                room: "lobby".to_owned(),
                members: vec![member("alice", "Alice", 1), member("bob", "Bob", 3)],
                more: false,
                after: None,
                count: None,
            },
        ),
        r#"{"type":"reply","ref":5,"ok":true,"data":{"room":"lobby","members":[{"id":"alice","name":"Alice","connections":1},{"id":"bob","name":"Bob","connections":3}]}}"#,
    );
}

/// v1 addition: a join reply cut for size on a resume, in a room over the page size.
#[test]
fn reply_join_cut_with_members_paged() {
    pin(
        &ServerFrame::ok(
            reference("1"),
            ReplyData::Join {
                room: "lobby".to_owned(),
                seq: 90,
                history: vec![chat_message(41, "hello")],
                members: vec![member("alice", "Alice", 2)],
                gap: false,
                more: true,
                before: None,
                after: Some(41),
                members_more: true,
                members_count: Some(250),
            },
        ),
        r#"{"type":"reply","ref":1,"ok":true,"data":{"room":"lobby","seq":90,"history":[{"room":"lobby","id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","seq":41,"from":{"id":"alice","name":"Alice"},"content":"hello","ts":1722500000000}],"members":[{"id":"alice","name":"Alice","connections":2}],"gap":false,"more":true,"after":41,"members_more":true,"members_count":250}}"#,
    );
}

/// v1 addition: a fresh join whose older history was left out says where to page back.
#[test]
fn reply_join_cut_without_since_gives_before() {
    pin(
        &ServerFrame::ok(
            None,
            ReplyData::Join {
                room: "lobby".to_owned(),
                seq: 9,
                history: vec![chat_message(9, "last")],
                members: vec![member("alice", "Alice", 1)],
                gap: false,
                more: true,
                before: Some(9),
                after: None,
                members_more: false,
                members_count: None,
            },
        ),
        r#"{"type":"reply","ok":true,"data":{"room":"lobby","seq":9,"history":[{"room":"lobby","id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","seq":9,"from":{"id":"alice","name":"Alice"},"content":"last","ts":1722500000000}],"members":[{"id":"alice","name":"Alice","connections":1}],"gap":false,"more":true,"before":9}}"#,
    );
}

/// v1 addition: history pages cut backwards (`before`) and forwards (`after`).
#[test]
fn reply_history_cut_backwards_and_forwards() {
    pin(
        &ServerFrame::ok(
            reference("4"),
            ReplyData::History {
                room: "lobby".to_owned(),
                messages: vec![chat_message(7, "big")],
                more: true,
                before: Some(7),
                after: None,
            },
        ),
        r#"{"type":"reply","ref":4,"ok":true,"data":{"room":"lobby","messages":[{"room":"lobby","id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","seq":7,"from":{"id":"alice","name":"Alice"},"content":"big","ts":1722500000000}],"more":true,"before":7}}"#,
    );
    pin(
        &ServerFrame::ok(
            reference("4"),
            ReplyData::History {
                room: "lobby".to_owned(),
                messages: vec![chat_message(42, "next")],
                more: true,
                before: None,
                after: Some(42),
            },
        ),
        r#"{"type":"reply","ref":4,"ok":true,"data":{"room":"lobby","messages":[{"room":"lobby","id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","seq":42,"from":{"id":"alice","name":"Alice"},"content":"next","ts":1722500000000}],"more":true,"after":42}}"#,
    );
}

/// v1 addition: a presence page of a large room, its last page, and the count-only form.
#[test]
fn reply_presence_paged_and_count_only() {
    pin(
        &ServerFrame::ok(
            reference("5"),
            ReplyData::Presence {
                room: "lobby".to_owned(),
                members: vec![member("alice", "Alice", 1), member("bob", "Bob", 3)],
                more: true,
                after: Some("bob".to_owned()),
                count: Some(250),
            },
        ),
        r#"{"type":"reply","ref":5,"ok":true,"data":{"room":"lobby","members":[{"id":"alice","name":"Alice","connections":1},{"id":"bob","name":"Bob","connections":3}],"more":true,"after":"bob","count":250}}"#,
    );
    pin(
        &ServerFrame::ok(
            reference("5"),
            ReplyData::Presence {
                room: "lobby".to_owned(),
                members: vec![member("zoe", "Zoe", 1)],
                more: false,
                after: None,
                count: Some(250),
            },
        ),
        r#"{"type":"reply","ref":5,"ok":true,"data":{"room":"lobby","members":[{"id":"zoe","name":"Zoe","connections":1}],"count":250}}"#,
    );
    pin(
        &ServerFrame::ok(
            reference("5"),
            ReplyData::PresenceCount {
                room: "lobby".to_owned(),
                count: 250,
                connections: 312,
            },
        ),
        r#"{"type":"reply","ref":5,"ok":true,"data":{"room":"lobby","count":250,"connections":312}}"#,
    );
}

#[test]
fn reply_direct() {
    pin(
        &ServerFrame::ok(
            reference("6"),
            ReplyData::Direct {
                id: DIRECT_ID.to_owned(),
                ts: TS,
                delivered: 2,
            },
        ),
        r#"{"type":"reply","ref":6,"ok":true,"data":{"id":"01912f4e-7b3b-7000-8000-000000000001","ts":1722500000000,"delivered":2}}"#,
    );
}

#[test]
fn reply_rename() {
    pin(
        &ServerFrame::ok(
            reference("7"),
            ReplyData::Rename {
                user: user("alice", "Alicia"),
            },
        ),
        r#"{"type":"reply","ref":7,"ok":true,"data":{"user":{"id":"alice","name":"Alicia"}}}"#,
    );
}

#[test]
fn reply_empty_for_typing() {
    pin(
        &ServerFrame::ok(reference("\"t-1\""), ReplyData::Empty {}),
        r#"{"type":"reply","ref":"t-1","ok":true,"data":{}}"#,
    );
}

#[test]
fn a_successful_reply_without_ref_has_no_ref_field() {
    pin(
        &ServerFrame::ok(
            None,
            ReplyData::Leave {
                room: "lobby".to_owned(),
            },
        ),
        r#"{"type":"reply","ok":true,"data":{"room":"lobby"}}"#,
    );
}

#[test]
fn a_failure_with_ref_is_a_reply() {
    pin(
        &ServerFrame::failure(
            reference("\"r-9\""),
            ErrorBody::new(ErrorCode::NotJoined, "join lobby first"),
        ),
        r#"{"type":"reply","ref":"r-9","ok":false,"error":{"code":"not_joined","message":"join lobby first"}}"#,
    );
}

#[test]
fn a_failure_without_ref_is_an_error_frame() {
    pin(
        &ServerFrame::failure(
            None,
            ErrorBody::new(ErrorCode::BadRequest, "frame must be a JSON object"),
        ),
        r#"{"type":"error","error":{"code":"bad_request","message":"frame must be a JSON object"}}"#,
    );
}

#[test]
fn rate_limited_carries_retry_after_ms() {
    pin(
        &ServerFrame::failure(reference("8"), ErrorBody::rate_limited(120)),
        r#"{"type":"reply","ref":8,"ok":false,"error":{"code":"rate_limited","message":"too many frames; slow down","retry_after_ms":120}}"#,
    );
    pin(
        &ServerFrame::failure(None, ErrorBody::rate_limited(20)),
        r#"{"type":"error","error":{"code":"rate_limited","message":"too many frames; slow down","retry_after_ms":20}}"#,
    );
}

#[test]
fn message() {
    pin(
        &ServerFrame::Message(chat_message(4, "hello")),
        r#"{"type":"message","room":"lobby","id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","seq":4,"from":{"id":"alice","name":"Alice"},"content":"hello","ts":1722500000000}"#,
    );
}

/// *(v1 addition)* `data`: written back as the JSON value it was (not as a string),
/// after `ts`; absent when the message has none (every frame above).
#[test]
fn message_with_data() {
    let data = MessageData::from_value(
        &json!({"kind": "poll", "options": ["a", "b"], "open": true, "n": 2}),
    );
    pin(
        &ServerFrame::Message(ChatMessage {
            data,
            ..chat_message(6, "vote")
        }),
        r#"{"type":"message","room":"lobby","id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","seq":6,"from":{"id":"alice","name":"Alice"},"content":"vote","ts":1722500000000,"data":{"kind":"poll","n":2,"open":true,"options":["a","b"]}}"#,
    );
    // Only data: the content is "" (a v1 client that reads `content` gets a string).
    pin(
        &ServerFrame::Message(ChatMessage {
            data: MessageData::from_value(&json!([1, "two", null])),
            ..chat_message(7, "")
        }),
        r#"{"type":"message","room":"lobby","id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","seq":7,"from":{"id":"alice","name":"Alice"},"content":"","ts":1722500000000,"data":[1,"two",null]}"#,
    );
}

/// A history (and join) reply carries each message's data as the message frame does.
#[test]
fn reply_history_with_data() {
    pin(
        &ServerFrame::ok(
            reference("5"),
            ReplyData::History {
                room: "lobby".to_owned(),
                messages: vec![ChatMessage {
                    data: MessageData::from_value(&json!("just a string")),
                    ..chat_message(1, "")
                }],
                more: false,
                before: None,
                after: None,
            },
        ),
        r#"{"type":"reply","ref":5,"ok":true,"data":{"room":"lobby","messages":[{"room":"lobby","id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","seq":1,"from":{"id":"alice","name":"Alice"},"content":"","ts":1722500000000,"data":"just a string"}]}}"#,
    );
}

#[test]
fn content_is_escaped_as_json_and_non_ascii_is_sent_as_utf8() {
    pin(
        &ServerFrame::Message(chat_message(5, "say \"hi\"\n\t✓ ünïcode \u{1}")),
        r#"{"type":"message","room":"lobby","id":"01912f4e-7b3a-7c21-9d4e-5a6b7c8d9e0f","seq":5,"from":{"id":"alice","name":"Alice"},"content":"say \"hi\"\n\t✓ ünïcode \u0001","ts":1722500000000}"#,
    );
}

#[test]
fn typing() {
    pin(
        &ServerFrame::Typing {
            room: "lobby".to_owned(),
            user: user("alice", "Alice"),
        },
        r#"{"type":"typing","room":"lobby","user":{"id":"alice","name":"Alice"}}"#,
    );
}

#[test]
fn presence_diff_join_and_leave() {
    pin(
        &ServerFrame::PresenceDiff {
            room: "lobby".to_owned(),
            joins: vec![member("bob", "Bob", 1)],
            leaves: vec![],
            updates: vec![],
        },
        r#"{"type":"presence_diff","room":"lobby","joins":[{"id":"bob","name":"Bob","connections":1}],"leaves":[]}"#,
    );
    pin(
        &ServerFrame::PresenceDiff {
            room: "lobby".to_owned(),
            joins: vec![],
            leaves: vec![member("bob", "Bob", 0)],
            updates: vec![],
        },
        r#"{"type":"presence_diff","room":"lobby","joins":[],"leaves":[{"id":"bob","name":"Bob","connections":0}]}"#,
    );
}

#[test]
fn presence_diff_reports_a_changed_connection_count() {
    // Protocol v1 addition: a member's second connection closed; still present.
    pin(
        &ServerFrame::PresenceDiff {
            room: "lobby".to_owned(),
            joins: vec![],
            leaves: vec![],
            updates: vec![member("alice", "Alice", 1)],
        },
        r#"{"type":"presence_diff","room":"lobby","joins":[],"leaves":[],"updates":[{"id":"alice","name":"Alice","connections":1}]}"#,
    );
}

#[test]
fn presence_diff_batched_in_a_large_room() {
    pin(
        &ServerFrame::PresenceDiff {
            room: "stadium".to_owned(),
            joins: vec![member("carol", "Carol", 1), member("dan", "Dan", 1)],
            leaves: vec![member("erin", "Erin", 0)],
            updates: vec![],
        },
        r#"{"type":"presence_diff","room":"stadium","joins":[{"id":"carol","name":"Carol","connections":1},{"id":"dan","name":"Dan","connections":1}],"leaves":[{"id":"erin","name":"Erin","connections":0}]}"#,
    );
}

#[test]
fn direct() {
    pin(
        &ServerFrame::Direct(DirectFrame {
            id: DIRECT_ID.to_owned(),
            from: user("alice", "Alice"),
            content: "psst".to_owned(),
            ts: TS,
        }),
        r#"{"type":"direct","id":"01912f4e-7b3b-7000-8000-000000000001","from":{"id":"alice","name":"Alice"},"content":"psst","ts":1722500000000}"#,
    );
}

#[test]
fn renamed() {
    pin(
        &ServerFrame::Renamed {
            room: "lobby".to_owned(),
            user: user("alice", "Alicia"),
            old_name: "Alice".to_owned(),
        },
        r#"{"type":"renamed","room":"lobby","user":{"id":"alice","name":"Alicia"},"old_name":"Alice"}"#,
    );
}

#[test]
fn pong_with_and_without_ref() {
    pin(
        &ServerFrame::Pong {
            reference: reference("7"),
        },
        r#"{"type":"pong","ref":7}"#,
    );
    pin(
        &ServerFrame::Pong {
            reference: reference("\"p-1\""),
        },
        r#"{"type":"pong","ref":"p-1"}"#,
    );
    pin(&ServerFrame::Pong { reference: None }, r#"{"type":"pong"}"#);
}

#[test]
fn goodbye() {
    pin(
        &ServerFrame::Goodbye {
            reason: "shutdown".to_owned(),
            reconnect_after_ms: 1500,
        },
        r#"{"type":"goodbye","reason":"shutdown","reconnect_after_ms":1500}"#,
    );
}

#[test]
fn gap() {
    pin(
        &ServerFrame::Gap {
            room: "lobby".to_owned(),
            after: 41,
            next: 97,
        },
        r#"{"type":"gap","room":"lobby","after":41,"next":97}"#,
    );
}

#[test]
fn subscribed_and_unsubscribed() {
    pin(
        &ServerFrame::Subscribed {
            room: "lobby".to_owned(),
            seq: 41,
        },
        r#"{"type":"subscribed","room":"lobby","seq":41}"#,
    );
    pin(
        &ServerFrame::Unsubscribed {
            room: "lobby".to_owned(),
        },
        r#"{"type":"unsubscribed","room":"lobby"}"#,
    );
}

#[test]
fn refs_are_echoed_as_sent() {
    // Integers (negative and up to u64::MAX) and strings come back verbatim.
    for (sent, echoed) in [
        ("0", r#"{"type":"pong","ref":0}"#),
        ("-42", r#"{"type":"pong","ref":-42}"#),
        (
            "18446744073709551615",
            r#"{"type":"pong","ref":18446744073709551615}"#,
        ),
        ("1.5", r#"{"type":"pong","ref":1.5}"#),
        (r#""""#, r#"{"type":"pong","ref":""}"#),
        (r#""ünï \"q\"""#, r#"{"type":"pong","ref":"ünï \"q\""}"#),
    ] {
        pin(
            &ServerFrame::Pong {
                reference: reference(sent),
            },
            echoed,
        );
    }
    // Other number spellings keep their value, not their spelling.
    let encoded = encode(&ServerFrame::Pong {
        reference: reference("1e3"),
    });
    let value: Value = serde_json::from_str(&encoded).unwrap();
    assert_eq!(value["ref"].as_f64(), Some(1000.0));
}

#[test]
fn a_frame_that_fails_to_decode_is_answered_with_its_ref_when_it_had_one() {
    // What the Session sends for a frame decode_client_frame refused.
    let answer = |text: &str| {
        let e = refused(text);
        encode(&ServerFrame::failure(e.reference, e.error)).to_string()
    };
    assert_eq!(
        answer(r#"{"type":"join","room":"no spaces","ref":"j1"}"#),
        r#"{"type":"reply","ref":"j1","ok":false,"error":{"code":"invalid_room","message":"room names are 1 to 64 characters of A-Z a-z 0-9 _ . : -"}}"#
    );
    assert_eq!(
        answer(r#"{"type":"join","room":"no spaces"}"#),
        r#"{"type":"error","error":{"code":"invalid_room","message":"room names are 1 to 64 characters of A-Z a-z 0-9 _ . : -"}}"#
    );
    assert_eq!(
        answer(r#"{"type":"subscribe","ref":3}"#),
        r#"{"type":"reply","ref":3,"ok":false,"error":{"code":"unknown_type","message":"unknown frame type `subscribe`"}}"#
    );
    // A `ref` that is itself invalid cannot be echoed.
    assert!(answer(r#"{"type":"ping","ref":true}"#)
        .starts_with(r#"{"type":"error","error":{"code":"bad_request","#));
}

// ---------------------------------------------------------------------------------
// Client frames: decoding
// ---------------------------------------------------------------------------------

#[test]
fn join_with_and_without_since() {
    assert_eq!(
        request(r#"{"type":"join","room":"lobby"}"#),
        Request::Join {
            room: room("lobby"),
            since: None,
        }
    );
    assert_eq!(
        request(r#"{"type":"join","room":"lobby","since":42}"#),
        Request::Join {
            room: room("lobby"),
            since: Some(42),
        }
    );
    assert_eq!(
        request(r#"{"type":"join","room":"lobby","since":null}"#),
        Request::Join {
            room: room("lobby"),
            since: None,
        }
    );
    assert_eq!(
        request(r#"{"type":"join","room":"lobby","since":0}"#),
        Request::Join {
            room: room("lobby"),
            since: Some(0),
        }
    );
}

#[test]
fn leave() {
    assert_eq!(
        request(r#"{"type":"leave","room":"lobby"}"#),
        Request::Leave {
            room: room("lobby")
        }
    );
}

#[test]
fn publish() {
    assert_eq!(
        request(r#"{"type":"publish","room":"lobby","content":"hello \"you\" ✓"}"#),
        Request::Publish {
            room: room("lobby"),
            content: "hello \"you\" ✓".to_owned(),
            data: None,
            except_sender: false,
            idempotency_key: None,
        }
    );
    // Content length and emptiness are the Session's to check (it knows the limits):
    // decoding keeps content exactly as sent, untrimmed.
    assert_eq!(
        request(r#"{"type":"publish","room":"lobby","content":"  "}"#),
        Request::Publish {
            room: room("lobby"),
            content: "  ".to_owned(),
            data: None,
            except_sender: false,
            idempotency_key: None,
        }
    );
}

/// *(v1 addition)* `data`: any JSON value but null, beside or instead of `content`
/// (then the content is ""); null is the same as absent; neither is a `bad_request`.
/// Its size is the session's to check, with the content's.
#[test]
fn publish_with_data() {
    assert_eq!(
        request(
            r#"{"type":"publish","room":"lobby","content":"hi","data":{"b":[1,2.5,"x"],"a":null}}"#
        ),
        Request::Publish {
            room: room("lobby"),
            content: "hi".to_owned(),
            data: MessageData::from_value(&json!({"a": null, "b": [1, 2.5, "x"]})),
            except_sender: false,
            idempotency_key: None,
        }
    );
    for data in [json!(0), json!(false), json!("s"), json!([]), json!({})] {
        let text = json!({"type": "publish", "room": "lobby", "data": data}).to_string();
        let Request::Publish {
            content, data: got, ..
        } = request(&text)
        else {
            panic!("{text} is a publish");
        };
        assert_eq!(content, "", "{text}");
        assert_eq!(got.map(|d| d.to_value()), Some(data), "{text}");
    }
    assert_eq!(
        request(r#"{"type":"publish","room":"lobby","content":"hi","data":null}"#),
        Request::Publish {
            room: room("lobby"),
            content: "hi".to_owned(),
            data: None,
            except_sender: false,
            idempotency_key: None,
        }
    );
    refused_with(
        r#"{"type":"publish","room":"lobby","ref":1}"#,
        ErrorCode::BadRequest,
        json!(1),
    );
    refused_with(
        r#"{"type":"publish","room":"lobby","data":null,"ref":2}"#,
        ErrorCode::BadRequest,
        json!(2),
    );
    refused_with(
        r#"{"type":"publish","room":"lobby","content":7,"data":1,"ref":3}"#,
        ErrorCode::BadRequest,
        json!(3),
    );
}

/// *(v1 addition)* `except_sender`: a boolean, false when absent or null; anything
/// else is a `bad_request` that keeps the `ref`.
#[test]
fn publish_except_sender() {
    assert_eq!(
        request(r#"{"type":"publish","room":"lobby","content":"hi","except_sender":true}"#),
        Request::Publish {
            room: room("lobby"),
            content: "hi".to_owned(),
            data: None,
            except_sender: true,
            idempotency_key: None,
        }
    );
    for flag in ["false", "null"] {
        let text =
            format!(r#"{{"type":"publish","room":"lobby","content":"hi","except_sender":{flag}}}"#);
        let Request::Publish { except_sender, .. } = request(&text) else {
            panic!("{text} is a publish");
        };
        assert!(!except_sender, "{text}");
    }
    refused_with(
        r#"{"type":"publish","room":"lobby","content":"hi","except_sender":"yes","ref":9}"#,
        ErrorCode::BadRequest,
        json!(9),
    );
}

/// *(v1 addition)* `rooms` instead of `room`: 1 to 16 valid names, a name given twice
/// counts once (first place kept); `room` and `rooms` together, or neither, is a
/// `bad_request`; a bad name in the list is `invalid_room`, as for `room`.
#[test]
fn publish_to_several_rooms() {
    assert_eq!(
        request(
            r#"{"type":"publish","rooms":["b","a","b"],"content":"hi","data":1,"except_sender":true,"idempotency_key":"k"}"#
        ),
        Request::PublishRooms {
            rooms: vec![room("b"), room("a")],
            content: "hi".to_owned(),
            data: MessageData::from_value(&json!(1)),
            except_sender: true,
            idempotency_key: Some("k".to_owned()),
        }
    );
    assert_eq!(MAX_PUBLISH_ROOMS, 16, "docs/protocol.md states 16");
    let most: Vec<String> = (0..MAX_PUBLISH_ROOMS).map(|i| format!("r{i}")).collect();
    let text = json!({"type": "publish", "rooms": most, "content": "hi"}).to_string();
    assert!(matches!(request(&text), Request::PublishRooms { rooms, .. } if rooms.len() == 16));
    let too_many: Vec<String> = (0..=MAX_PUBLISH_ROOMS).map(|i| format!("r{i}")).collect();
    let text = json!({"type": "publish", "rooms": too_many, "content": "hi", "ref": 1}).to_string();
    refused_with(&text, ErrorCode::BadRequest, json!(1));
    for (text, code) in [
        (
            r#"{"type":"publish","rooms":[],"content":"hi","ref":2}"#,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"type":"publish","room":"a","rooms":["b"],"content":"hi","ref":2}"#,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"type":"publish","content":"hi","ref":2}"#,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"type":"publish","rooms":"a","content":"hi","ref":2}"#,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"type":"publish","rooms":["a",7],"content":"hi","ref":2}"#,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"type":"publish","rooms":["a"],"ref":2}"#,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"type":"publish","rooms":["a","no spaces"],"content":"hi","ref":2}"#,
            ErrorCode::InvalidRoom,
        ),
    ] {
        refused_with(text, code, json!(2));
    }
}

/// *(v1 addition)* `idempotency_key`: kept exactly as sent (untrimmed, any Unicode),
/// up to [`MAX_IDEMPOTENCY_KEY_BYTES`] bytes of UTF-8; null is the same as absent.
#[test]
fn publish_with_an_idempotency_key() {
    let frame = decoded(
        r#"{"type":"publish","room":"lobby","content":"hi","idempotency_key":"0191-retry-1","ref":7}"#,
    );
    assert_eq!(
        frame.request,
        Request::Publish {
            room: room("lobby"),
            content: "hi".to_owned(),
            data: None,
            except_sender: false,
            idempotency_key: Some("0191-retry-1".to_owned()),
        }
    );
    assert_eq!(ref_json(&frame.reference), json!(7));
    assert_eq!(
        request(r#"{"type":"publish","room":"lobby","content":"hi","idempotency_key":null}"#),
        Request::Publish {
            room: room("lobby"),
            content: "hi".to_owned(),
            data: None,
            except_sender: false,
            idempotency_key: None,
        }
    );
    let longest = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES);
    // 42 three-byte characters: 126 bytes, under the bound in bytes.
    let wide = "✓".repeat(42);
    for key in [longest.as_str(), wide.as_str(), " spaced key ", "x"] {
        let text =
            json!({"type": "publish", "room": "lobby", "content": "hi", "idempotency_key": key})
                .to_string();
        assert_eq!(
            request(&text),
            Request::Publish {
                room: room("lobby"),
                content: "hi".to_owned(),
                data: None,
                except_sender: false,
                idempotency_key: Some(key.to_owned()),
            },
            "{key:?}"
        );
    }
    assert_eq!(
        MAX_IDEMPOTENCY_KEY_BYTES, 128,
        "docs/protocol.md states 128"
    );
}

/// *(v1 addition)* A key that is empty, over 128 bytes (counted in UTF-8, so 43
/// three-byte characters are too many), holds a control character (C0, DEL, C1) or is
/// not a string is a `bad_request` that keeps the `ref` and names the field.
#[test]
fn a_bad_idempotency_key_is_bad_request() {
    let too_long = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1);
    let too_wide = "✓".repeat(43);
    for key in [
        json!(""),
        json!(too_long),
        json!(too_wide),
        json!("a\nb"),
        json!("tab\there"),
        json!("nul\u{0}"),
        json!("del\u{7f}"),
        json!("c1\u{85}"),
        json!(5),
        json!(true),
        json!(["k"]),
        json!({"k": 1}),
    ] {
        let text = json!({"type": "publish", "room": "lobby", "content": "hi", "idempotency_key": key, "ref": "p"})
            .to_string();
        let e = refused(&text);
        assert_eq!(e.error.code, ErrorCode::BadRequest, "{text}");
        assert_eq!(ref_json(&e.reference), json!("p"), "{text}");
        assert_eq!(
            e.error.message,
            "`idempotency_key` must be a string of 1 to 128 bytes with no control characters",
            "{text}"
        );
    }
    assert!(validate_idempotency_key("ok").is_ok());
    assert!(validate_idempotency_key("").is_err());
}

#[test]
fn typing_request() {
    assert_eq!(
        request(r#"{"type":"typing","room":"lobby"}"#),
        Request::Typing {
            room: room("lobby")
        }
    );
}

#[test]
fn history_with_optional_fields_present_and_absent() {
    assert_eq!(
        request(r#"{"type":"history","room":"lobby"}"#),
        Request::History {
            room: room("lobby"),
            before: None,
            after: None,
            limit: None,
        }
    );
    assert_eq!(
        request(r#"{"type":"history","room":"lobby","before":120,"limit":20}"#),
        Request::History {
            room: room("lobby"),
            before: Some(120),
            after: None,
            limit: Some(20),
        }
    );
    assert_eq!(
        request(r#"{"type":"history","room":"lobby","limit":5000}"#),
        Request::History {
            room: room("lobby"),
            before: None,
            after: None,
            limit: Some(5000),
        },
        "a limit above the maximum decodes; the room clamps it"
    );
    assert_eq!(MAX_HISTORY_LIMIT, 1000);
}

#[test]
fn presence_request() {
    assert_eq!(
        request(r#"{"type":"presence","room":"lobby"}"#),
        Request::Presence {
            room: room("lobby"),
            after: None,
            limit: None,
            count_only: false,
        }
    );
}

/// v1 addition: `history` pages forwards with `after`, alone or with `before`.
#[test]
fn history_with_after() {
    assert_eq!(
        request(r#"{"type":"history","room":"lobby","after":41,"before":91,"limit":10}"#),
        Request::History {
            room: room("lobby"),
            before: Some(91),
            after: Some(41),
            limit: Some(10),
        }
    );
    refused_with(
        r#"{"type":"history","room":"lobby","after":-1,"ref":3}"#,
        ErrorCode::BadRequest,
        json!(3),
    );
}

/// v1 addition: `presence` takes `after`, `limit` and `count_only`.
#[test]
fn presence_request_paged_and_count_only() {
    assert_eq!(
        request(r#"{"type":"presence","room":"lobby","after":"bob","limit":50}"#),
        Request::Presence {
            room: room("lobby"),
            after: Some("bob".to_owned()),
            limit: Some(50),
            count_only: false,
        }
    );
    assert_eq!(
        request(r#"{"type":"presence","room":"lobby","count_only":true}"#),
        Request::Presence {
            room: room("lobby"),
            after: None,
            limit: None,
            count_only: true,
        }
    );
    for bad in [
        r#"{"type":"presence","room":"lobby","after":"no spaces","ref":5}"#,
        r#"{"type":"presence","room":"lobby","after":7,"ref":5}"#,
        r#"{"type":"presence","room":"lobby","count_only":"yes","ref":5}"#,
    ] {
        refused_with(bad, ErrorCode::BadRequest, json!(5));
    }
}

/// serde_json refuses a lone surrogate escape: the frame is a `bad_request` whose
/// message says why (no `ref`: the frame did not parse).
#[test]
fn a_lone_surrogate_is_bad_request_with_a_clear_message() {
    for text in [
        r#"{"type":"publish","room":"lobby","content":"a\ud800b","ref":1}"#,
        r#"{"type":"publish","room":"lobby","content":"\ud800","ref":1}"#,
        r#"{"type":"publish","room":"lobby","content":"\udc00","ref":1}"#,
        r#"{"type":"rename","name":"\ud83d\u0041","ref":1}"#,
    ] {
        let error = refused(text);
        assert_eq!(error.error.code, ErrorCode::BadRequest, "{text}");
        assert_eq!(error.reference, None, "{text}");
        assert!(
            error.error.message.contains("surrogate pair"),
            "{text}: {}",
            error.error.message
        );
    }
    // A pair is one character and decodes.
    assert_eq!(
        request(r#"{"type":"publish","room":"lobby","content":"\ud83d\ude00"}"#),
        Request::Publish {
            room: room("lobby"),
            content: "\u{1F600}".to_owned(),
            data: None,
            except_sender: false,
            idempotency_key: None,
        }
    );
}

#[test]
fn direct_request() {
    assert_eq!(
        request(r#"{"type":"direct","to":"bob@example.org","content":"psst"}"#),
        Request::Direct {
            to: "bob@example.org".to_owned(),
            content: "psst".to_owned(),
        }
    );
}

#[test]
fn rename_trims_the_name() {
    assert_eq!(
        request(r#"{"type":"rename","name":"  Alicia Q. "}"#),
        Request::Rename {
            name: "Alicia Q.".to_owned()
        }
    );
}

#[test]
fn ping() {
    assert_eq!(request(r#"{"type":"ping"}"#), Request::Ping);
}

#[test]
fn ref_is_a_number_or_a_string_and_null_means_none() {
    let frame = decoded(r#"{"type":"ping","ref":7}"#);
    assert_eq!(frame.request, Request::Ping);
    assert_eq!(ref_json(&frame.reference), json!(7));

    let frame = decoded(r#"{"ref":"abc-1","type":"join","room":"lobby"}"#);
    assert_eq!(
        frame.request,
        Request::Join {
            room: room("lobby"),
            since: None,
        }
    );
    assert_eq!(ref_json(&frame.reference), json!("abc-1"));

    assert_eq!(decoded(r#"{"type":"ping"}"#).reference, None);
    assert_eq!(decoded(r#"{"type":"ping","ref":null}"#).reference, None);

    // At most 128 characters (not bytes).
    let longest = "é".repeat(128);
    let frame = decoded(&format!(r#"{{"type":"ping","ref":"{longest}"}}"#));
    assert_eq!(ref_json(&frame.reference), json!(longest));
}

#[test]
fn unknown_fields_are_ignored() {
    let frame = decoded(
        r#"{"type":"publish","room":"lobby","content":"hi","ref":1,"v":2,"extra":{"a":[1]}}"#,
    );
    assert_eq!(
        frame.request,
        Request::Publish {
            room: room("lobby"),
            content: "hi".to_owned(),
            data: None,
            except_sender: false,
            idempotency_key: None,
        }
    );
    assert_eq!(ref_json(&frame.reference), json!(1));
}

#[test]
fn room_names_at_the_edges() {
    let longest = "a".repeat(64);
    assert_eq!(
        request(&format!(r#"{{"type":"join","room":"{longest}"}}"#)),
        Request::Join {
            room: room(&longest),
            since: None,
        }
    );
    assert_eq!(
        request(r#"{"type":"join","room":"A-z_0.9:x"}"#),
        Request::Join {
            room: room("A-z_0.9:x"),
            since: None,
        }
    );
}

// ---------------------------------------------------------------------------------
// Client frames: every way decoding fails
// ---------------------------------------------------------------------------------

#[test]
fn not_json_or_not_an_object_is_bad_request() {
    for text in [
        "",
        "hello",
        "{",
        r#"{"type":"ping",}"#,
        "[]",
        r#"["ping"]"#,
        r#""ping""#,
        "42",
        "null",
        "true",
    ] {
        refused_with(text, ErrorCode::BadRequest, Value::Null);
    }
}

#[test]
fn a_missing_or_non_string_type_is_bad_request_and_keeps_the_ref() {
    refused_with("{}", ErrorCode::BadRequest, Value::Null);
    refused_with(r#"{"ref":1}"#, ErrorCode::BadRequest, json!(1));
    refused_with(
        r#"{"type":null,"ref":"a"}"#,
        ErrorCode::BadRequest,
        json!("a"),
    );
    refused_with(r#"{"type":7,"ref":"a"}"#, ErrorCode::BadRequest, json!("a"));
    refused_with(r#"{"type":["ping"]}"#, ErrorCode::BadRequest, Value::Null);
}

#[test]
fn a_bad_ref_is_bad_request_and_is_not_kept() {
    let too_long = "x".repeat(129);
    for text in [
        r#"{"type":"ping","ref":true}"#.to_owned(),
        r#"{"type":"ping","ref":{"id":1}}"#.to_owned(),
        r#"{"type":"ping","ref":[1]}"#.to_owned(),
        format!(r#"{{"type":"ping","ref":"{too_long}"}}"#),
        // The ref is checked before anything else.
        r#"{"ref":false}"#.to_owned(),
        r#"{"type":"nonsense","ref":false}"#.to_owned(),
    ] {
        refused_with(&text, ErrorCode::BadRequest, Value::Null);
    }
}

#[test]
fn missing_fields_are_bad_request() {
    for text in [
        r#"{"type":"join","ref":1}"#,
        r#"{"type":"leave","ref":1}"#,
        r#"{"type":"publish","room":"lobby","ref":1}"#,
        r#"{"type":"publish","content":"hi","ref":1}"#,
        r#"{"type":"typing","ref":1}"#,
        r#"{"type":"history","ref":1}"#,
        r#"{"type":"presence","ref":1}"#,
        r#"{"type":"direct","content":"hi","ref":1}"#,
        r#"{"type":"direct","to":"bob","ref":1}"#,
        r#"{"type":"rename","ref":1}"#,
    ] {
        refused_with(text, ErrorCode::BadRequest, json!(1));
    }
}

#[test]
fn mistyped_fields_are_bad_request() {
    for text in [
        r#"{"type":"join","room":5,"ref":"m"}"#,
        r#"{"type":"join","room":null,"ref":"m"}"#,
        r#"{"type":"join","room":"lobby","since":-1,"ref":"m"}"#,
        r#"{"type":"join","room":"lobby","since":"3","ref":"m"}"#,
        r#"{"type":"join","room":"lobby","since":1.5,"ref":"m"}"#,
        r#"{"type":"leave","room":["lobby"],"ref":"m"}"#,
        r#"{"type":"publish","room":"lobby","content":5,"ref":"m"}"#,
        r#"{"type":"publish","room":"lobby","content":null,"ref":"m"}"#,
        r#"{"type":"typing","room":true,"ref":"m"}"#,
        r#"{"type":"history","room":"lobby","before":"9","ref":"m"}"#,
        r#"{"type":"history","room":"lobby","limit":-1,"ref":"m"}"#,
        r#"{"type":"history","room":"lobby","limit":4294967296,"ref":"m"}"#,
        r#"{"type":"presence","room":{},"ref":"m"}"#,
        r#"{"type":"direct","to":7,"content":"hi","ref":"m"}"#,
        r#"{"type":"direct","to":"bob","content":["hi"],"ref":"m"}"#,
        r#"{"type":"rename","name":5,"ref":"m"}"#,
    ] {
        refused_with(text, ErrorCode::BadRequest, json!("m"));
    }
}

#[test]
fn an_unknown_type_is_unknown_type_and_keeps_the_ref() {
    refused_with(
        r#"{"type":"subscribe","ref":3}"#,
        ErrorCode::UnknownType,
        json!(3),
    );
    refused_with(r#"{"type":""}"#, ErrorCode::UnknownType, Value::Null);
    // Types are case-sensitive.
    refused_with(r#"{"type":"PING"}"#, ErrorCode::UnknownType, Value::Null);
    // The message quotes at most 32 characters of the type.
    let e = refused(&format!(r#"{{"type":"{}"}}"#, "x".repeat(500)));
    assert_eq!(e.error.code, ErrorCode::UnknownType);
    assert_eq!(
        e.error.message,
        format!("unknown frame type `{}`", "x".repeat(32))
    );
}

#[test]
fn a_bad_room_name_is_invalid_room_for_every_room_request() {
    let too_long = "a".repeat(65);
    for bad in [
        "",
        "has space",
        "a/b",
        "é",
        "lobby!",
        "#general",
        too_long.as_str(),
    ] {
        for template in [
            r#"{"type":"join","room":ROOM,"ref":"r"}"#,
            r#"{"type":"leave","room":ROOM,"ref":"r"}"#,
            r#"{"type":"publish","room":ROOM,"content":"hi","ref":"r"}"#,
            r#"{"type":"typing","room":ROOM,"ref":"r"}"#,
            r#"{"type":"history","room":ROOM,"ref":"r"}"#,
            r#"{"type":"presence","room":ROOM,"ref":"r"}"#,
        ] {
            let text = template.replace("ROOM", &json!(bad).to_string());
            refused_with(&text, ErrorCode::InvalidRoom, json!("r"));
        }
    }
}

#[test]
fn a_bad_direct_target_is_bad_request() {
    let too_long = "u".repeat(65);
    for to in ["", "bob smith", "bob/1", "bøb", too_long.as_str()] {
        let text = format!(
            r#"{{"type":"direct","to":{},"content":"hi","ref":2}}"#,
            json!(to)
        );
        refused_with(&text, ErrorCode::BadRequest, json!(2));
    }
}

#[test]
fn rename_names_that_are_empty_control_or_too_long() {
    for name in ["", "   ", "a\nb", "tab\there", "bell\u{7}"] {
        let text = format!(r#"{{"type":"rename","name":{},"ref":4}}"#, json!(name));
        refused_with(&text, ErrorCode::BadRequest, json!(4));
    }
    let too_long = "n".repeat(MAX_NAME_CHARS + 1);
    refused_with(
        &format!(r#"{{"type":"rename","name":"{too_long}","ref":4}}"#),
        ErrorCode::TooLong,
        json!(4),
    );
    // 64 characters, counted after trimming and in characters, not bytes.
    let longest = "é".repeat(MAX_NAME_CHARS);
    assert_eq!(
        request(&format!(r#"{{"type":"rename","name":"  {longest}  "}}"#)),
        Request::Rename { name: longest }
    );
}

// ---------------------------------------------------------------------------------
// Codes and constants
// ---------------------------------------------------------------------------------

#[test]
fn error_codes_serialise_to_their_documented_names() {
    let documented = [
        (ErrorCode::BadRequest, "bad_request"),
        (ErrorCode::UnknownType, "unknown_type"),
        (ErrorCode::InvalidRoom, "invalid_room"),
        (ErrorCode::TooLong, "too_long"),
        (ErrorCode::NotJoined, "not_joined"),
        (ErrorCode::TooManyRooms, "too_many_rooms"),
        (ErrorCode::UserOffline, "user_offline"),
        (ErrorCode::Forbidden, "forbidden"),
        (ErrorCode::RateLimited, "rate_limited"),
        (ErrorCode::Internal, "internal"),
        (ErrorCode::Unavailable, "unavailable"),
        (ErrorCode::RoomLimit, "room_limit"),
        (ErrorCode::Unauthorized, "unauthorized"),
        (ErrorCode::NotFound, "not_found"),
        (ErrorCode::TooLarge, "too_large"),
    ];
    for (code, name) in documented {
        assert_eq!(serde_json::to_value(code).unwrap(), json!(name));
        assert_eq!(code.as_str(), name);
        assert_eq!(
            encode(&ServerFrame::failure(None, ErrorBody::new(code, "m"))).to_string(),
            format!(r#"{{"type":"error","error":{{"code":"{name}","message":"m"}}}}"#)
        );
    }
}

#[test]
fn close_codes_have_their_documented_values() {
    assert_eq!(close::NORMAL, 1000);
    assert_eq!(close::PROTOCOL_ERROR, 1002);
    assert_eq!(close::MESSAGE_TOO_BIG, 1009);
    assert_eq!(close::INTERNAL_ERROR, 1011);
    assert_eq!(close::SERVICE_RESTART, 1012);
    assert_eq!(close::TOKEN_EXPIRED, 4001);
    assert_eq!(close::HEARTBEAT_TIMEOUT, 4008);
    assert_eq!(close::SLOW_CONSUMER, 4009);
    assert_eq!(close::DISCONNECTED, 4010);
}

#[test]
fn protocol_version_and_limits() {
    assert_eq!(PROTOCOL_VERSION, 1);
    assert_eq!(MAX_NAME_CHARS, 64);
    assert_eq!(MAX_HISTORY_LIMIT, 1000);
}

#[test]
fn upgrade_query_validation() {
    // `?user=`: 1 to 64 characters of A-Z a-z 0-9 _ . : @ -
    for ok in ["alice", "a", "Bob_1.x:y@z-w", &"u".repeat(64)] {
        assert_eq!(validate_user_id(ok).as_deref(), Ok(ok));
    }
    for bad in ["", "a b", "ünï", "a/b", "a+b", &"u".repeat(65)] {
        assert_eq!(
            validate_user_id(bad).map_err(|e| e.code),
            Err(ErrorCode::BadRequest),
            "{bad:?}"
        );
    }
    // `?name=`: trimmed, then 1 to 64 characters with no control characters.
    assert_eq!(
        validate_display_name("  Alice A. ").as_deref(),
        Ok("Alice A.")
    );
    for bad in ["", "  ", "a\u{0}b", "line\r\nbreak"] {
        assert_eq!(
            validate_display_name(bad).map_err(|e| e.code),
            Err(ErrorCode::BadRequest),
            "{bad:?}"
        );
    }
    assert_eq!(
        validate_display_name(&"n".repeat(65)).map_err(|e| e.code),
        Err(ErrorCode::TooLong)
    );
}
