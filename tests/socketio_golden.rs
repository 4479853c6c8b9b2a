//! Golden tests of the Socket.IO endpoint's codecs: Engine.IO v4 packets and polling
//! payloads, Socket.IO v5 packets, and the translation between Socket.IO and protocol
//! v1, pinned to the exact text on the wire.
//!
//! Pure: the library's `socketio` and `protocol` modules only, no node and no network.
//! The Socket.IO literals are frames observed between socket.io 4.8 and its official
//! clients (../shared/notes/socketio-v5.md); a change that breaks one breaks clients.

use bytestring::ByteString;
use hubbub::actors::{Outbound, SharedFrame};
use hubbub::protocol::{
    encode, ChatMessage, DirectFrame, ErrorBody, ErrorCode, Member, MessageData, Ref, ReplyData,
    Request, RoomName, ServerFrame, UserInfo,
};
use hubbub::socketio::binary;
use hubbub::socketio::drain::{drain, End};
use hubbub::socketio::engine::{
    self, decode_packet, decode_payload, encode_binary, encode_open, encode_payload, Handshake,
    HttpError, Packet as EnginePacket,
};
use hubbub::socketio::packet::{self, PacketError, PacketType};
use hubbub::socketio::recovery::Recovery;
use hubbub::socketio::translate::{client_frame, server_frame};
use hubbub::socketio::Namespaces;
use serde_json::{json, Value};

fn spaces() -> Namespaces {
    Namespaces::new(&["/", "/chat"]).unwrap()
}

fn alice() -> UserInfo {
    UserInfo {
        id: "alice".into(),
        name: "Alice".into(),
    }
}

fn message(room: &str) -> ServerFrame {
    ServerFrame::Message(ChatMessage {
        room: room.into(),
        id: "m1".into(),
        seq: 7,
        from: alice(),
        content: "hi".into(),
        data: None,
        ts: 5,
    })
}

/// The Engine.IO packets a v1 frame becomes in `namespace`.
fn out(frame: &ServerFrame, namespace: &str) -> Vec<String> {
    let all = spaces();
    let mut packets = Vec::new();
    server_frame(&encode(frame), all.get(namespace).unwrap(), &mut packets);
    packets
}

// ---------------------------------------------------------------------------------
// Engine.IO v4
// ---------------------------------------------------------------------------------

#[test]
fn the_open_packet_is_exact() {
    let open = encode_open(&Handshake {
        sid: "abc".into(),
        upgrades: vec!["websocket"],
        ping_interval: 25_000,
        ping_timeout: 20_000,
        max_payload: 1_000_000,
    });
    assert_eq!(
        open,
        r#"0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
    );
}

#[test]
fn client_packets_decode() {
    assert_eq!(decode_packet("1"), Ok(EnginePacket::Close));
    assert_eq!(decode_packet("2probe"), Ok(EnginePacket::Ping("probe")));
    assert_eq!(decode_packet("3"), Ok(EnginePacket::Pong("")));
    assert_eq!(
        decode_packet(r#"42["a"]"#),
        Ok(EnginePacket::Message(r#"2["a"]"#))
    );
    assert_eq!(decode_packet("5"), Ok(EnginePacket::Upgrade));
    assert_eq!(decode_packet("6"), Ok(EnginePacket::Noop));
    assert_eq!(
        decode_packet("bAAEC"),
        Ok(EnginePacket::Binary(vec![0, 1, 2]))
    );
    assert!(decode_packet("0").is_err(), "open is the server's");
    assert!(decode_packet("").is_err());
    assert!(decode_packet("b%%").is_err());
}

#[test]
fn polling_payloads_use_the_record_separator() {
    assert_eq!(
        encode_payload(&["2", r#"42["message",{}]"#, &encode_binary(b"hi")]),
        "2\u{1e}42[\"message\",{}]\u{1e}baGk="
    );
    assert_eq!(
        decode_payload("40\u{1e}3\u{1e}6"),
        Ok(vec![
            EnginePacket::Message("0"),
            EnginePacket::Pong(""),
            EnginePacket::Noop
        ])
    );
    assert!(decode_payload("40\u{1e}").is_err(), "an empty record");
}

#[test]
fn http_errors_are_engine_io_s() {
    let bodies: Vec<(u8, String)> = [
        HttpError::TransportUnknown,
        HttpError::UnknownSid,
        HttpError::BadHandshakeMethod,
        HttpError::BadRequest,
        HttpError::Forbidden,
        HttpError::UnsupportedProtocolVersion,
    ]
    .into_iter()
    .map(|e| (e.code(), e.body()))
    .collect();
    assert_eq!(
        bodies,
        [
            (0, r#"{"code":0,"message":"Transport unknown"}"#.to_owned()),
            (1, r#"{"code":1,"message":"Session ID unknown"}"#.to_owned()),
            (
                2,
                r#"{"code":2,"message":"Bad handshake method"}"#.to_owned()
            ),
            (3, r#"{"code":3,"message":"Bad request"}"#.to_owned()),
            (4, r#"{"code":4,"message":"Forbidden"}"#.to_owned()),
            (
                5,
                r#"{"code":5,"message":"Unsupported protocol version"}"#.to_owned()
            ),
        ]
    );
    assert_eq!(engine::PROTOCOL, "4");
}

// ---------------------------------------------------------------------------------
// Socket.IO v5
// ---------------------------------------------------------------------------------

#[test]
fn observed_client_packets_decode() {
    let connect = packet::decode(r#"0{"token":"secret"}"#).unwrap();
    assert_eq!(
        (connect.kind, connect.namespace, connect.payload),
        (PacketType::Connect, "/", Some(json!({"token":"secret"})))
    );
    let bare = packet::decode("0").unwrap();
    assert_eq!((bare.kind, bare.payload), (PacketType::Connect, None));
    let chat = packet::decode(r#"0/chat,{"token":"t"}"#).unwrap();
    assert_eq!(chat.namespace, "/chat");
    let event = packet::decode(r#"21["join-room","r1"]"#).unwrap();
    assert_eq!((event.kind, event.ack), (PacketType::Event, Some(1)));
    assert_eq!(event.event(), Some(("join-room", &[Value::from("r1")][..])));
    let in_ns = packet::decode(r#"2/chat,17["publish",{"room":"r"}]"#).unwrap();
    assert_eq!((in_ns.namespace, in_ns.ack), ("/chat", Some(17)));
    let ack = packet::decode(r#"31[{"ok":true}]"#).unwrap();
    assert_eq!((ack.kind, ack.ack), (PacketType::Ack, Some(1)));
    let disconnect = packet::decode("1/chat,").unwrap();
    assert_eq!(
        (disconnect.kind, disconnect.namespace),
        (PacketType::Disconnect, "/chat")
    );
    let binary = packet::decode(r#"51-9["bin",{"_placeholder":true,"num":0}]"#).unwrap();
    assert_eq!(
        (binary.kind, binary.attachments, binary.ack),
        (PacketType::BinaryEvent, 1, Some(9))
    );
    let binary_ack = packet::decode(r#"62-/chat,3[{"_placeholder":true,"num":0}]"#).unwrap();
    assert_eq!(
        (
            binary_ack.kind,
            binary_ack.attachments,
            binary_ack.namespace
        ),
        (PacketType::BinaryAck, 2, "/chat")
    );
}

#[test]
fn malformed_packets_are_errors_not_panics() {
    let cases: &[(&str, PacketError)] = &[
        ("", PacketError::Empty),
        ("9", PacketError::UnknownType(b'9')),
        (
            r#"2{"room":"r"}"#,
            PacketError::BadPayload(PacketType::Event),
        ),
        ("2[]", PacketError::BadPayload(PacketType::Event)),
        (
            r#"2["disconnect"]"#,
            PacketError::BadPayload(PacketType::Event),
        ),
        ("2", PacketError::BadPayload(PacketType::Event)),
        ("3{}", PacketError::BadPayload(PacketType::Ack)),
        ("1{}", PacketError::BadPayload(PacketType::Disconnect)),
        ("0[]", PacketError::BadPayload(PacketType::Connect)),
        ("2[", PacketError::NotJson),
        ("2x", PacketError::NotJson),
        (r#"5["a"]"#, PacketError::BadAttachments),
        (r#"5x-["a"]"#, PacketError::BadAttachments),
        (r#"29007199254740992["a"]"#, PacketError::BadAckId),
    ];
    for (text, error) in cases {
        assert_eq!(packet::decode(text).as_ref().err(), Some(error), "{text:?}");
    }
    // Any prefix of a good packet, cut anywhere, decodes or fails; it never panics.
    let good = r#"51-/chat,12["bin",{"_placeholder":true,"num":0}]"#;
    for end in 0..=good.len() {
        let _ = packet::decode(&good[..end]);
    }
}

#[test]
fn server_packets_encode() {
    assert_eq!(
        packet::encode(PacketType::Connect, "/", None, r#"{"sid":"s"}"#),
        r#"0{"sid":"s"}"#
    );
    assert_eq!(
        packet::encode(PacketType::Ack, "/chat", Some(3), "[1]"),
        "3/chat,3[1]"
    );
    assert_eq!(
        packet::connect_error("/x", "Invalid namespace", None),
        r#"4/x,{"message":"Invalid namespace"}"#
    );
    assert_eq!(
        packet::connect_error("/", "bad", Some(json!({"reason":"expired"}))),
        r#"4{"data":{"reason":"expired"},"message":"bad"}"#
    );
}

// ---------------------------------------------------------------------------------
// v1 <-> Socket.IO
// ---------------------------------------------------------------------------------

#[test]
fn broadcast_frames_become_events_byte_for_byte() {
    assert_eq!(
        out(&message("r1"), "/"),
        [
            r#"42["message",{"room":"r1","id":"m1","seq":7,"from":{"id":"alice","name":"Alice"},"content":"hi","ts":5}]"#
        ]
    );
    let typing = ServerFrame::Typing {
        room: "r1".into(),
        user: alice(),
    };
    assert_eq!(
        out(&typing, "/"),
        [r#"42["typing",{"room":"r1","user":{"id":"alice","name":"Alice"}}]"#]
    );
    let diff = ServerFrame::PresenceDiff {
        room: "r1".into(),
        joins: vec![Member {
            id: "alice".into(),
            name: "Alice".into(),
            connections: 1,
        }],
        leaves: vec![],
        updates: vec![],
    };
    assert_eq!(
        out(&diff, "/"),
        [
            r#"42["presence_diff",{"room":"r1","joins":[{"id":"alice","name":"Alice","connections":1}],"leaves":[]}]"#
        ]
    );
    let direct = ServerFrame::Direct(DirectFrame {
        id: "d1".into(),
        from: alice(),
        content: "psst".into(),
        ts: 9,
    });
    assert_eq!(
        out(&direct, "/"),
        [
            r#"42["direct",{"id":"d1","from":{"id":"alice","name":"Alice"},"content":"psst","ts":9}]"#
        ]
    );
    let goodbye = ServerFrame::Goodbye {
        reason: "shutdown".into(),
        reconnect_after_ms: 100,
    };
    assert_eq!(
        out(&goodbye, "/"),
        [r#"42["goodbye",{"reason":"shutdown","reconnect_after_ms":100}]"#]
    );
}

#[test]
fn in_a_namespace_frames_lose_the_room_prefix() {
    assert_eq!(
        out(&message("chat:r1"), "/chat"),
        [
            r#"42/chat,["message",{"content":"hi","from":{"id":"alice","name":"Alice"},"id":"m1","room":"r1","seq":7,"ts":5}]"#
        ]
    );
    let history = ServerFrame::ok(
        Some(Ref::number(4)),
        ReplyData::History {
            room: "chat:r1".into(),
            messages: vec![match message("chat:r1") {
                ServerFrame::Message(m) => m,
                _ => unreachable!(),
            }],
            more: false,
            before: None,
            after: None,
        },
    );
    let packets = out(&history, "/chat");
    assert_eq!(packets.len(), 1);
    let (head, json) = packets[0].split_at("43/chat,4".len());
    assert_eq!(head, "43/chat,4");
    let ack: Value = serde_json::from_str(json).unwrap();
    assert_eq!(ack[0]["data"]["room"], "r1");
    assert_eq!(ack[0]["data"]["messages"][0]["room"], "r1");
}

#[test]
fn replies_become_acks_and_welcome_the_connect() {
    let ok = ServerFrame::ok(Some(Ref::number(3)), ReplyData::Leave { room: "r1".into() });
    assert_eq!(out(&ok, "/"), [r#"433[{"data":{"room":"r1"},"ok":true}]"#]);
    let failed = ServerFrame::failure(
        Some(Ref::number(0)),
        ErrorBody::new(ErrorCode::NotJoined, "join first"),
    );
    assert_eq!(
        out(&failed, "/chat"),
        [r#"43/chat,0[{"error":{"code":"not_joined","message":"join first"},"ok":false}]"#]
    );
    let unasked = ServerFrame::ok(None, ReplyData::Leave { room: "r1".into() });
    assert!(out(&unasked, "/").is_empty(), "no ack id, no ack");
    let pong = ServerFrame::Pong {
        reference: Some(Ref::number(8)),
    };
    assert_eq!(out(&pong, "/"), [r#"438[{"ok":true}]"#]);
    let welcome = ServerFrame::Welcome {
        session: "s1".into(),
        user: alice(),
        node: "n1".into(),
        protocol: 1,
        heartbeat_ms: 25_000,
    };
    assert_eq!(
        out(&welcome, "/chat"),
        [
            r#"40/chat,{"sid":"s1"}"#,
            r#"42/chat,["welcome",{"heartbeat_ms":25000,"node":"n1","protocol":1,"session":"s1","user":{"id":"alice","name":"Alice"}}]"#,
        ]
    );
}

#[test]
fn events_become_v1_requests() {
    let all = spaces();
    let root = all.get("/").unwrap();
    let chat = all.get("/chat").unwrap();
    let frame = client_frame(
        "publish",
        &[json!({"room":"r1","content":"hi","ref":"ignored"})],
        Some(12),
        chat,
        &all,
    )
    .unwrap();
    assert_eq!(frame.reference, Some(Ref::number(12)));
    assert_eq!(
        frame.request,
        Request::Publish {
            room: RoomName::parse("chat:r1").unwrap(),
            content: "hi".into(),
            data: None,
            except_sender: false,
            idempotency_key: None,
        }
    );
    let ping = client_frame("ping", &[], None, root, &all).unwrap();
    assert_eq!((ping.reference, ping.request), (None, Request::Ping));
    let unknown = client_frame("shout", &[json!({})], Some(1), root, &all).unwrap_err();
    assert_eq!(unknown.error.code, ErrorCode::UnknownType);
    let foreign =
        client_frame("join", &[json!({"room":"chat:x"})], Some(2), root, &all).unwrap_err();
    assert_eq!(
        (foreign.error.code, foreign.reference),
        (ErrorCode::Forbidden, Some(Ref::number(2)))
    );
}

#[test]
fn a_broadcast_is_translated_once_and_shared() {
    let all = spaces();
    let root = all.get("/").unwrap();
    let frame = SharedFrame::new(encode(&message("r1")));
    let mut first = Vec::new();
    let mut second = Vec::new();
    Recovery::off().shared(&frame, root, &mut first);
    Recovery::off().shared(&frame, root, &mut second);
    assert_eq!(first, second);
    assert_eq!(
        first[0].as_bytes().as_ptr(),
        second[0].as_bytes().as_ptr(),
        "the second member gets the first one's bytes"
    );
    let other = SharedFrame::new(ByteString::from(frame.text().to_string()));
    let mut third = Vec::new();
    Recovery::off().shared(&other, root, &mut third);
    assert_eq!(third, first);
    assert_ne!(
        third[0].as_bytes().as_ptr(),
        first[0].as_bytes().as_ptr(),
        "another broadcast, translated anew"
    );

    let mut packets = Vec::new();
    let end = drain(
        vec![
            Outbound::Text("2".into()),
            Outbound::Close(1012, "restart".into()),
            Outbound::Text("never".into()),
        ],
        &mut packets,
    );
    assert_eq!(packets, ["2"]);
    assert_eq!(end, End::Close(1012, "restart".into()));
}

// ---------------------------------------------------------------------------------
// Binary attachments
// ---------------------------------------------------------------------------------

#[test]
fn an_observed_binary_event_becomes_a_publish_with_base64_data() {
    // socket.io-client 4.8: `socket.emit("publish", {room, data: Buffer.from([1, 2, 3])}, ack)`.
    let packet =
        packet::decode(r#"51-9["publish",{"room":"r1","data":{"_placeholder":true,"num":0}}]"#)
            .expect("a BINARY_EVENT");
    assert_eq!(
        (packet.kind, packet.attachments, packet.ack),
        (PacketType::BinaryEvent, 1, Some(9))
    );
    let (name, args) = packet.event().expect("an event");
    let mut args = Value::Array(args.to_vec());
    binary::fill(&mut args, &[vec![1, 2, 3]]).expect("its one part");
    let Value::Array(args) = args else {
        unreachable!()
    };
    let all = spaces();
    let frame = client_frame(name, &args, packet.ack, all.get("/").unwrap(), &all).expect("v1");
    let Request::Publish { data, .. } = &frame.request else {
        panic!("not a publish: {:?}", frame.request);
    };
    assert_eq!(
        data.as_ref().map(|d| d.as_json_text()),
        Some(r#"{"_binary":"AQID"}"#)
    );
}

#[test]
fn binary_data_goes_out_as_a_binary_event_and_its_attachment() {
    let mut with_data = message("r1");
    if let ServerFrame::Message(m) = &mut with_data {
        m.data = MessageData::from_value(&json!({"file": {"_binary": "AQID"}, "n": 1}));
    }
    assert_eq!(
        out(&with_data, "/"),
        [
            r#"451-["message",{"content":"hi","data":{"file":{"_placeholder":true,"num":0},"n":1},"from":{"id":"alice","name":"Alice"},"id":"m1","room":"r1","seq":7,"ts":5}]"#,
            "bAQID",
        ]
    );
    // With connection state recovery, the offset is the event's last argument; the
    // attachment follows untouched.
    let all = spaces();
    let frame = SharedFrame::new(encode(&with_data));
    let mut packets = Vec::new();
    Recovery::fresh().shared(&frame, all.get("/").unwrap(), &mut packets);
    assert_eq!(packets.len(), 2);
    assert!(packets[0].ends_with(r#","r1=7"]"#), "{}", packets[0]);
    assert_eq!(packets[1], "bAQID");
    assert_eq!(binary::record_bytes(&packets[1]), Some(vec![1, 2, 3]));
}
