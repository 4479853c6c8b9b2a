//! Between Socket.IO and protocol v1: a client's EVENT becomes the [`ClientFrame`] a
//! v1 client would have sent, and a v1 server frame becomes the Socket.IO packets a
//! Socket.IO client expects. Pure: no I/O.
//!
//! Inbound: `42<ack>["publish",{"room":"r1","content":"hi"}]` is the v1 frame
//! `{"type":"publish","ref":<ack>,"room":"r1","content":"hi"}`, decoded and checked
//! by `protocol` exactly as for a v1 client. Outbound: a reply to a request with a
//! ref becomes its ACK, `43<ack>[{"ok":true,"data":{...}}]`; `welcome` becomes the
//! namespace's CONNECT (`40{"sid":...}`) and a `welcome` event; every other frame
//! `{"type":T,...}` becomes the event `42["T",{...}]`.
//!
//! Binary data (`{"_binary":"<base64>"}` in a v1 frame, [`binary`]) goes out as
//! BINARY_EVENT or BINARY_ACK with its attachments after it (`b<base64>` records).
//!
//! Namespaces ([`Namespaces`], from `[socketio] namespaces`) map onto room-name
//! prefixes: in `/chat` the room `r1` is the room `chat:r1` of every other client
//! (v1 clients included), and names in frames going out lose the prefix again. In
//! `/` no prefix applies, and a room name starting with another namespace's prefix
//! is refused, so no namespace reaches another's rooms.
//!
//! Must not know: sessions, transports, Engine.IO framing beyond the `4` of a message.

use super::binary;
use super::packet::{self, PacketType, DEFAULT_NAMESPACE};
use crate::protocol::{decode_client_frame, ClientFrame, ErrorBody, ErrorCode, FrameError, Ref};
use serde_json::{Map, Value};

/// One configured namespace and the room-name prefix it maps onto.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// As on the wire: `/` or `/chat`.
    pub name: String,
    /// `""` for `/`, else the name without its `/` and a `:` (`chat:`).
    pub prefix: String,
}

impl Namespace {
    /// The namespace `name` (`/` or `/` and 1 to 32 of `A-Z a-z 0-9 _ . -`).
    pub fn new(name: &str) -> Result<Self, String> {
        if name == DEFAULT_NAMESPACE {
            return Ok(Self {
                name: name.to_owned(),
                prefix: String::new(),
            });
        }
        let bare = name
            .strip_prefix('/')
            .ok_or_else(|| format!("namespace {name:?} must start with /"))?;
        let valid = bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if bare.is_empty() || bare.len() > 32 || !valid {
            return Err(format!(
                "namespace {name:?} must be / or / then 1 to 32 of A-Z a-z 0-9 _ . -"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            prefix: format!("{bare}:"),
        })
    }

    fn is_default(&self) -> bool {
        self.prefix.is_empty()
    }
}

/// The namespaces clients may connect to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespaces(Vec<Namespace>);

impl Namespaces {
    /// From `[socketio] namespaces`; an error names the first bad one.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        let mut list = Vec::new();
        for name in names {
            let namespace = Namespace::new(name.as_ref())?;
            if !list.contains(&namespace) {
                list.push(namespace);
            }
        }
        Ok(Self(list))
    }

    /// The namespace a CONNECT names, if configured.
    pub fn get(&self, name: &str) -> Option<&Namespace> {
        self.0.iter().find(|ns| ns.name == name)
    }

    /// The room a client of `namespace` names `shown`: with the namespace's prefix,
    /// or as it is in `/`, where None if another namespace owns it.
    pub fn room_in(&self, namespace: &Namespace, shown: &str) -> Option<String> {
        if !namespace.is_default() {
            return Some(format!("{}{shown}", namespace.prefix));
        }
        self.owner_of(shown).is_none().then(|| shown.to_owned())
    }

    /// The namespace (other than `/`) whose rooms `room` would be.
    fn owner_of(&self, room: &str) -> Option<&Namespace> {
        self.0
            .iter()
            .find(|ns| !ns.is_default() && room.starts_with(&ns.prefix))
    }
}

/// The requests whose first argument may be the room's name alone.
const ROOM_ONLY: [&str; 5] = ["join", "leave", "typing", "history", "presence"];

/// The v1 request an EVENT stands for: the event name is the v1 `type`, the first
/// argument its fields (none: no fields), the ack id its `ref`. Room names get the
/// namespace's prefix. Errors keep the ack id, so they are answered as a failed ack.
pub fn client_frame(
    name: &str,
    args: &[Value],
    ack: Option<u64>,
    namespace: &Namespace,
    namespaces: &Namespaces,
) -> Result<ClientFrame, FrameError> {
    let reference = ack.map(Ref::number);
    let bad = |code, message: &str| FrameError {
        reference: reference.clone(),
        error: ErrorBody::new(code, message),
    };
    let mut fields = match args.first() {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(fields)) => fields.clone(),
        // `socket.emit("join", "lobby", ack)`: the requests that name only a room
        // may name it alone, as Socket.IO applications usually do.
        Some(Value::String(room)) if ROOM_ONLY.contains(&name) => {
            Map::from_iter([("room".to_owned(), Value::String(room.clone()))])
        }
        Some(_) => {
            return Err(bad(
                ErrorCode::BadRequest,
                "an event's first argument must be an object of the request's fields",
            ))
        }
    };
    // An attachment where text belongs (`content: buffer`): say where binary goes.
    if fields
        .get("content")
        .and_then(Value::as_object)
        .is_some_and(|c| c.contains_key(super::binary::KEY))
    {
        return Err(bad(
            ErrorCode::BadRequest,
            "content is text; put binary data in data (docs/socketio.md, Binary attachments)",
        ));
    }
    // `room`, and each of `rooms` (a publish to several rooms): in the namespace.
    let mut named: Vec<&mut String> = Vec::new();
    for (key, value) in fields.iter_mut() {
        match (key.as_str(), value) {
            ("room", Value::String(room)) => named.push(room),
            ("rooms", Value::Array(rooms)) => {
                named.extend(rooms.iter_mut().filter_map(|r| match r {
                    Value::String(room) => Some(room),
                    _ => None,
                }))
            }
            _ => {}
        }
    }
    for room in named {
        if namespace.is_default() {
            if let Some(owner) = namespaces.owner_of(room) {
                let message = format!(
                    "rooms named {}* belong to the namespace {}",
                    owner.prefix, owner.name
                );
                return Err(bad(ErrorCode::Forbidden, &message));
            }
        } else {
            room.insert_str(0, &namespace.prefix);
        }
    }
    fields.insert("type".to_owned(), Value::String(name.to_owned()));
    match ack {
        Some(id) => fields.insert("ref".to_owned(), Value::from(id)),
        None => fields.remove("ref"),
    };
    decode_client_frame(&Value::Object(fields).to_string())
}

/// Appends to `out` the Engine.IO message packets (`4...`) that carry the v1 server
/// frame `frame` to a Socket.IO client in `namespace`; nothing for a reply that
/// answers no ack.
pub fn server_frame(frame: &str, namespace: &Namespace, out: &mut Vec<String>) {
    let Some(rest) = frame.strip_prefix(r#"{"type":""#) else {
        return;
    };
    let Some((kind, rest)) = rest.split_once('"') else {
        return;
    };
    match kind {
        "reply" | "pong" | "welcome" => {
            let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(frame) else {
                return;
            };
            fields.remove("type");
            if !namespace.is_default() {
                strip_rooms(&mut fields, &namespace.prefix);
            }
            if kind == "welcome" {
                let sid = fields.get("session").cloned().unwrap_or(Value::Null);
                let connect = serde_json::json!({ "sid": sid }).to_string();
                out.push(message(PacketType::Connect, namespace, None, &connect));
                let event = format!(r#"["welcome",{}]"#, Value::Object(fields));
                out.push(message(PacketType::Event, namespace, None, &event));
                return;
            }
            let Some(id) = fields.remove("ref").and_then(|r| r.as_u64()) else {
                return;
            };
            if kind == "pong" {
                fields.insert("ok".to_owned(), Value::Bool(true));
            }
            let ack = Value::Array(vec![Value::Object(fields)]);
            with_attachments(PacketType::Ack, namespace, Some(id), ack, frame, out);
        }
        _ if namespace.is_default() && !binary::may_hold(frame) => {
            // `{"type":"T"` then `,"field":...}` or `}`: the fields are spliced as
            // they are, not parsed again.
            let fields = match rest.strip_prefix(',') {
                Some(fields) => fields,
                None if rest == "}" => "}",
                None => return,
            };
            let mut text = String::with_capacity(frame.len() + 16);
            text.push('4');
            text.push_str(&packet::header(PacketType::Event, &namespace.name, None));
            text.push_str("[\"");
            text.push_str(kind);
            text.push_str("\",{");
            text.push_str(fields);
            text.push(']');
            out.push(text);
        }
        _ => {
            let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(frame) else {
                return;
            };
            fields.remove("type");
            strip_rooms(&mut fields, &namespace.prefix);
            let event = Value::Array(vec![Value::String(kind.to_owned()), Value::Object(fields)]);
            with_attachments(PacketType::Event, namespace, None, event, frame, out);
        }
    }
}

/// Appends the packets of an EVENT (`kind` Event) or ACK (`kind` Ack) whose
/// arguments are `args`: one message packet, or, when `args` hold binary data (the v1
/// `frame` they came from says whether they may), the BINARY_EVENT or BINARY_ACK
/// with placeholders and then one `b<base64>` record per attachment.
fn with_attachments(
    kind: PacketType,
    namespace: &Namespace,
    ack: Option<u64>,
    mut args: Value,
    frame: &str,
    out: &mut Vec<String>,
) {
    let mut parts = Vec::new();
    if binary::may_hold(frame) {
        binary::extract(&mut args, &mut parts);
    }
    if parts.is_empty() {
        out.push(message(kind, namespace, ack, &args.to_string()));
        return;
    }
    let kind = match kind {
        PacketType::Ack => PacketType::BinaryAck,
        _ => PacketType::BinaryEvent,
    };
    let header = packet::header(kind, &namespace.name, ack);
    let mut text = String::with_capacity(header.len() + 8);
    text.push('4');
    text.push(kind.digit());
    text.push_str(&parts.len().to_string());
    text.push('-');
    // The header after its type digit: namespace and ack id.
    text.push_str(header.get(1..).unwrap_or_default());
    text.push_str(&args.to_string());
    out.push(text);
    out.extend(parts);
}

/// The packets of the event `["message", message]` replayed to a recovered
/// connection: as [`server_frame`] makes a live one.
pub fn message_event(message: Value, namespace: &Namespace, out: &mut Vec<String>) {
    let event = Value::Array(vec![Value::String("message".to_owned()), message]);
    let text = event.to_string();
    with_attachments(PacketType::Event, namespace, None, event, &text, out);
}

fn message(kind: PacketType, namespace: &Namespace, ack: Option<u64>, json: &str) -> String {
    let mut text = String::from("4");
    text.push_str(&packet::encode(kind, &namespace.name, ack, json));
    text
}

/// Takes `prefix` off every `room` field, however deep (a message in a history list).
fn strip_rooms(fields: &mut Map<String, Value>, prefix: &str) {
    for (key, value) in fields.iter_mut() {
        match value {
            Value::String(room) if key == "room" => {
                if let Some(bare) = room.strip_prefix(prefix) {
                    *room = bare.to_owned();
                }
            }
            Value::Object(inner) => strip_rooms(inner, prefix),
            Value::Array(items) => {
                for item in items {
                    if let Value::Object(inner) = item {
                        strip_rooms(inner, prefix);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Request;
    use serde_json::json;

    fn spaces() -> Namespaces {
        Namespaces::new(&["/", "/chat"]).unwrap()
    }

    #[test]
    fn namespace_names_are_checked() {
        assert!(Namespace::new("chat").is_err());
        assert!(Namespace::new("/").unwrap().prefix.is_empty());
        assert_eq!(Namespace::new("/a-b").unwrap().prefix, "a-b:");
        assert!(Namespace::new("/a,b").is_err());
        assert!(Namespace::new("/").is_ok());
        assert!(Namespace::new("//").is_err());
    }

    #[test]
    fn an_event_in_a_namespace_names_the_prefixed_room() {
        let all = spaces();
        let chat = all.get("/chat").unwrap();
        let frame = client_frame("join", &[json!({"room":"r1"})], Some(3), chat, &all).unwrap();
        assert_eq!(
            frame.request,
            Request::Join {
                room: crate::protocol::RoomName::parse("chat:r1").unwrap(),
                since: None
            }
        );
        let root = all.get("/").unwrap();
        let refused =
            client_frame("join", &[json!({"room":"chat:r1"})], Some(4), root, &all).unwrap_err();
        assert_eq!(refused.error.code, ErrorCode::Forbidden);
        assert!(refused.reference.is_some());
        let bad = client_frame("publish", &[json!("r1")], None, root, &all).unwrap_err();
        assert_eq!(
            (bad.error.code, bad.reference),
            (ErrorCode::BadRequest, None)
        );
        // A publish to several rooms: each of them in the namespace.
        let fields = json!({"rooms": ["r1", "r2"], "content": "hi"});
        let several = client_frame("publish", &[fields], Some(5), chat, &all).unwrap();
        let Request::PublishRooms { rooms, .. } = several.request else {
            panic!("not a publish to several rooms: {:?}", several.request);
        };
        let names: Vec<&str> = rooms.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, ["chat:r1", "chat:r2"]);
        let fields = json!({"rooms": ["lobby", "chat:r1"], "content": "hi"});
        let foreign = client_frame("publish", &[fields], Some(6), root, &all).unwrap_err();
        assert_eq!(foreign.error.code, ErrorCode::Forbidden);
        let alone = client_frame("join", &[json!("r1")], Some(1), chat, &all).unwrap();
        assert_eq!(
            alone.request,
            Request::Join {
                room: crate::protocol::RoomName::parse("chat:r1").unwrap(),
                since: None
            }
        );
    }

    #[test]
    fn binary_content_is_refused_with_where_binary_goes() {
        let all = spaces();
        let fields = json!({"room": "r1", "content": {"_binary": "AQI="}});
        let refused =
            client_frame("publish", &[fields], Some(2), all.get("/").unwrap(), &all).unwrap_err();
        assert_eq!(refused.error.code, ErrorCode::BadRequest);
        assert!(refused.error.message.contains("put binary data in data"));
        assert!(refused.reference.is_some(), "answered as the failed ack");
    }

    #[test]
    fn binary_data_goes_out_as_attachments() {
        let all = spaces();
        let frame = r#"{"type":"message","room":"r1","id":"x","seq":1,"from":{"id":"a","name":"A"},"content":"","data":{"file":{"_binary":"AQID"}},"ts":5}"#;
        let mut out = Vec::new();
        server_frame(frame, all.get("/").unwrap(), &mut out);
        assert_eq!(
            out,
            [
                r#"451-["message",{"content":"","data":{"file":{"_placeholder":true,"num":0}},"from":{"id":"a","name":"A"},"id":"x","room":"r1","seq":1,"ts":5}]"#,
                "bAQID"
            ]
        );
        // In a namespace, and in a reply (a history) as a BINARY_ACK with its id.
        let reply = r#"{"type":"reply","ref":7,"ok":true,"data":{"messages":[{"room":"chat:r1","data":{"_binary":"/w=="}}]}}"#;
        let mut out = Vec::new();
        server_frame(reply, all.get("/chat").unwrap(), &mut out);
        assert_eq!(
            out,
            [
                r#"461-/chat,7[{"data":{"messages":[{"data":{"_placeholder":true,"num":0},"room":"r1"}]},"ok":true}]"#,
                "b/w=="
            ]
        );
        // Not base64: data like any other.
        let text = r#"{"type":"message","room":"r1","data":{"_binary":"??"}}"#;
        let mut out = Vec::new();
        server_frame(text, all.get("/").unwrap(), &mut out);
        assert_eq!(
            out,
            [r#"42["message",{"data":{"_binary":"??"},"room":"r1"}]"#]
        );
    }

    #[test]
    fn frames_going_out_lose_the_prefix() {
        let all = spaces();
        let mut out = Vec::new();
        let frame = r#"{"type":"message","room":"chat:r1","id":"x","seq":1,"from":{"id":"a","name":"A"},"content":"hi","ts":5}"#;
        server_frame(frame, all.get("/chat").unwrap(), &mut out);
        assert_eq!(
            out,
            [
                r#"42/chat,["message",{"content":"hi","from":{"id":"a","name":"A"},"id":"x","room":"r1","seq":1,"ts":5}]"#
            ]
        );
    }
}
