//! The two dialects the load generator speaks, as text in and text out: hubbub
//! protocol v1 (docs/protocol.md; also spoken by the Node `ws` peer and the Rust floor)
//! and Socket.IO v5 over Engine.IO v4 (../shared/notes/socketio-v5.md).
//!
//! Pure: no I/O, no clocks. [`Protocol`] encodes the few requests the scenarios send
//! and classifies every frame a server sends into an [`Incoming`]. The hot path (a
//! `message` frame, hundreds of thousands per second) is read by scanning for the two
//! fields the scenarios need (`seq`, `content`) instead of building a JSON tree.

use serde::Serialize;

/// Which wire protocol a system under test speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// hubbub protocol v1: JSON objects in text frames.
    Hubbub,
    /// Socket.IO v5 over Engine.IO v4, WebSocket transport only.
    Socketio,
}

/// A frame from the server, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// hubbub `welcome`, or the Engine.IO open packet `0{...}`.
    Welcome,
    /// Socket.IO CONNECT accepted: `40{"sid":...}`.
    Connected,
    /// A request carried out: hubbub `reply` with `ok: true`, Socket.IO ACK
    /// `43<id>[{"ok":true,...}]`.
    Reply { reference: Option<u64> },
    /// A request refused, with the error code (or the ACK's body).
    Refused {
        reference: Option<u64>,
        code: String,
    },
    /// A room broadcast: hubbub `message`, Socket.IO `42["message",{...}]`.
    Message { seq: Option<u64>, content: &'a str },
    /// Engine.IO ping `2`: answer with [`Protocol::pong`].
    Ping,
    /// Something the server refused or ended: hubbub `error`, Socket.IO CONNECT_ERROR,
    /// DISCONNECT or Engine.IO close; the text says which.
    Error(String),
    /// Anything else (presence diffs, pongs, other events): ignored.
    Other,
}

impl Protocol {
    /// The path and query of the WebSocket endpoint, for a URL given without one.
    pub fn default_path(self) -> &'static str {
        match self {
            Self::Hubbub => "/ws",
            Self::Socketio => "/socket.io/?EIO=4&transport=websocket",
        }
    }

    /// The query parameter naming the user, appended to the path (hubbub only; a
    /// Socket.IO connection has no user).
    pub fn user_query(self, user: &str) -> Option<String> {
        match self {
            Self::Hubbub => Some(format!("user={user}")),
            Self::Socketio => None,
        }
    }

    /// What the client sends once the transport is open, before it may send
    /// requests: Socket.IO's CONNECT to the main namespace.
    pub fn connect_frame(self) -> Option<&'static str> {
        match self {
            Self::Hubbub => None,
            Self::Socketio => Some("40"),
        }
    }

    /// What the client sends before closing the WebSocket.
    pub fn disconnect_frame(self) -> Option<&'static str> {
        match self {
            Self::Hubbub => None,
            Self::Socketio => Some("41"),
        }
    }

    /// The answer to an Engine.IO ping.
    pub fn pong(self) -> &'static str {
        "3"
    }

    /// Whether `message` frames carry one sequence per room that every receiver sees
    /// in order (hubbub and both v1 peers; Socket.IO has no such field across
    /// processes).
    pub fn ordered(self) -> bool {
        self == Self::Hubbub
    }

    /// Joins `room`; the answer carries `reference`.
    pub fn join(self, room: &str, reference: u64) -> String {
        let room = json_string(room);
        match self {
            Self::Hubbub => format!(r#"{{"type":"join","room":{room},"ref":{reference}}}"#),
            Self::Socketio => format!(r#"42{reference}["join",{room}]"#),
        }
    }

    /// Leaves `room`; the answer carries `reference`.
    pub fn leave(self, room: &str, reference: u64) -> String {
        let room = json_string(room);
        match self {
            Self::Hubbub => format!(r#"{{"type":"leave","room":{room},"ref":{reference}}}"#),
            Self::Socketio => format!(r#"42{reference}["leave",{room}]"#),
        }
    }

    /// Publishes `content` to `room`; the answer carries `reference`.
    pub fn publish(self, room: &str, content: &str, reference: u64) -> String {
        let room = json_string(room);
        let content = json_string(content);
        match self {
            Self::Hubbub => format!(
                r#"{{"type":"publish","room":{room},"content":{content},"ref":{reference}}}"#
            ),
            Self::Socketio => {
                format!(r#"42{reference}["publish",{{"room":{room},"content":{content}}}]"#)
            }
        }
    }

    /// Classifies one text frame from the server.
    pub fn decode(self, text: &str) -> Incoming<'_> {
        match self {
            Self::Hubbub => decode_hubbub(text),
            Self::Socketio => decode_socketio(text),
        }
    }
}

fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

fn decode_hubbub(text: &str) -> Incoming<'_> {
    // hubbub, the Node `ws` peer and the Rust floor all put `type` first.
    if text.starts_with(r#"{"type":"message""#) {
        return message_fields(text);
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return Incoming::Error("unparsable frame".to_owned());
    };
    match value.get("type").and_then(|t| t.as_str()) {
        Some("welcome") => Incoming::Welcome,
        Some("reply") => {
            let reference = value.get("ref").and_then(|r| r.as_u64());
            if value.get("ok").and_then(|ok| ok.as_bool()) == Some(true) {
                Incoming::Reply { reference }
            } else {
                Incoming::Refused {
                    reference,
                    code: value["error"]["code"]
                        .as_str()
                        .unwrap_or("no code")
                        .to_owned(),
                }
            }
        }
        Some("message") => message_fields(text),
        Some("error") => Incoming::Error(format!(
            "error frame: {}",
            value["error"]["code"].as_str().unwrap_or("no code")
        )),
        _ => Incoming::Other,
    }
}

fn decode_socketio(text: &str) -> Incoming<'_> {
    let Some(engine) = text.as_bytes().first() else {
        return Incoming::Error("empty frame".to_owned());
    };
    match engine {
        b'0' => Incoming::Welcome,
        b'1' => Incoming::Error("engine.io close".to_owned()),
        b'2' => Incoming::Ping,
        b'3' => Incoming::Other,
        b'4' => decode_socketio_packet(&text[1..]),
        _ => Incoming::Error("unparsable frame".to_owned()),
    }
}

/// A Socket.IO packet (the part after Engine.IO's `4`), main namespace only.
fn decode_socketio_packet(packet: &str) -> Incoming<'_> {
    let Some(kind) = packet.as_bytes().first() else {
        return Incoming::Error("empty packet".to_owned());
    };
    let rest = &packet[1..];
    match kind {
        b'0' if rest.contains("\"sid\"") => Incoming::Connected,
        b'0' => Incoming::Error("connect reply without sid".to_owned()),
        b'1' => Incoming::Error("disconnected by the server".to_owned()),
        b'4' => Incoming::Error("connect_error".to_owned()),
        b'3' => {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let reference = rest[..digits].parse().ok();
            let body = &rest[digits..];
            if body.contains(r#""ok":true"#) {
                Incoming::Reply { reference }
            } else {
                Incoming::Refused {
                    reference,
                    code: body.chars().take(60).collect(),
                }
            }
        }
        b'2' if rest.starts_with(r#"["message","#) => message_fields(rest),
        b'2' => Incoming::Other,
        _ => Incoming::Error("unparsable packet".to_owned()),
    }
}

/// Reads `seq` and `content` from a broadcast, wherever they sit in the object. The
/// scenarios generate every room name, user name and content, so the first occurrence
/// of each key is the broadcast's own.
fn message_fields(text: &str) -> Incoming<'_> {
    let seq = text.find(r#""seq":"#).and_then(|at| {
        let digits = &text[at + 6..];
        let end = digits
            .bytes()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(digits.len());
        digits[..end].parse().ok()
    });
    let content = text.find(r#""content":""#).and_then(|at| {
        let start = at + 11;
        let bytes = text.as_bytes();
        let mut end = start;
        while end < bytes.len() {
            match bytes[end] {
                b'\\' => end += 2,
                b'"' => return Some(&text[start..end]),
                _ => end += 1,
            }
        }
        None
    });
    match content {
        Some(content) => Incoming::Message { seq, content },
        None => Incoming::Error("message without content".to_owned()),
    }
}

/// What every published message carries in its content, so that any receiver can
/// tell which step of a run sent it and when: `"<step> <sent_us> <publisher> <n> "`
/// followed by padding up to the chosen size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The run's step (a ramp has several; the rest have one).
    pub step: u64,
    /// When the message was due to be sent, in microseconds since the bench started.
    pub sent_us: u64,
    /// Which publisher sent it.
    pub publisher: u64,
    /// The publisher's count of it, from 0.
    pub n: u64,
}

impl Stamp {
    /// The content to publish: the stamp, then `x` up to `size` bytes.
    pub fn content(&self, size: usize) -> String {
        let mut text = format!(
            "{} {} {} {} ",
            self.step, self.sent_us, self.publisher, self.n
        );
        if text.len() < size {
            text.extend(std::iter::repeat_n('x', size - text.len()));
        }
        text
    }

    /// Reads the stamp back from a received content.
    pub fn parse(content: &str) -> Option<Self> {
        let mut fields = content.split(' ').map(|f| f.parse::<u64>());
        Some(Self {
            step: fields.next()?.ok()?,
            sent_us: fields.next()?.ok()?,
            publisher: fields.next()?.ok()?,
            n: fields.next()?.ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hubbub_requests_are_protocol_v1() {
        let p = Protocol::Hubbub;
        assert_eq!(p.join("r1", 7), r#"{"type":"join","room":"r1","ref":7}"#);
        assert_eq!(p.leave("r1", 8), r#"{"type":"leave","room":"r1","ref":8}"#);
        assert_eq!(
            p.publish("r1", "hi", 9),
            r#"{"type":"publish","room":"r1","content":"hi","ref":9}"#
        );
    }

    #[test]
    fn socketio_requests_are_events_with_acks() {
        let p = Protocol::Socketio;
        assert_eq!(p.join("r1", 7), r#"427["join","r1"]"#);
        assert_eq!(p.leave("r1", 8), r#"428["leave","r1"]"#);
        assert_eq!(
            p.publish("r1", "hi", 9),
            r#"429["publish",{"room":"r1","content":"hi"}]"#
        );
        assert_eq!(p.connect_frame(), Some("40"));
    }

    #[test]
    fn hubbub_frames_are_classified() {
        let p = Protocol::Hubbub;
        let welcome = r#"{"type":"welcome","session":"9f","user":{"id":"a","name":"A"},"node":"n","protocol":1,"heartbeat_ms":25000}"#;
        assert_eq!(p.decode(welcome), Incoming::Welcome);
        let message = r#"{"type":"message","room":"lobby","id":"0191","seq":4,"from":{"id":"alice","name":"Alice"},"content":"1 2 3 4 xx","ts":1722500000000}"#;
        assert_eq!(
            p.decode(message),
            Incoming::Message {
                seq: Some(4),
                content: "1 2 3 4 xx"
            }
        );
        assert_eq!(
            p.decode(r#"{"type":"reply","ref":3,"ok":true,"data":{"seq":4}}"#),
            Incoming::Reply { reference: Some(3) }
        );
        assert_eq!(
            p.decode(r#"{"type":"reply","ref":3,"ok":false,"error":{"code":"rate_limited"}}"#),
            Incoming::Refused {
                reference: Some(3),
                code: "rate_limited".to_owned()
            }
        );
        assert_eq!(
            p.decode(r#"{"type":"error","error":{"code":"bad_request","message":"x"}}"#),
            Incoming::Error("error frame: bad_request".to_owned())
        );
        assert_eq!(
            p.decode(r#"{"type":"presence_diff","room":"r","joins":[],"leaves":[]}"#),
            Incoming::Other
        );
        assert!(matches!(p.decode("not json"), Incoming::Error(_)));
    }

    #[test]
    fn socketio_frames_are_classified() {
        let p = Protocol::Socketio;
        assert_eq!(
            p.decode(r#"0{"sid":"x","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#),
            Incoming::Welcome
        );
        assert_eq!(p.decode(r#"40{"sid":"y"}"#), Incoming::Connected);
        assert_eq!(p.decode("2"), Incoming::Ping);
        assert_eq!(
            p.decode(r#"4312[{"ok":true,"seq":3}]"#),
            Incoming::Reply {
                reference: Some(12)
            }
        );
        assert_eq!(
            p.decode(r#"4313[{"ok":false}]"#),
            Incoming::Refused {
                reference: Some(13),
                code: r#"[{"ok":false}]"#.to_owned()
            }
        );
        assert_eq!(
            p.decode(r#"42["message",{"room":"r","id":"i","seq":3,"from":{"id":"u","name":"u"},"content":"1 2 3 4 ","ts":5}]"#),
            Incoming::Message {
                seq: Some(3),
                content: "1 2 3 4 "
            }
        );
        assert_eq!(p.decode(r#"42["other",{}]"#), Incoming::Other);
        assert!(matches!(
            p.decode(r#"44{"message":"no"}"#),
            Incoming::Error(_)
        ));
        assert!(matches!(p.decode("41"), Incoming::Error(_)));
    }

    #[test]
    fn escaped_quotes_do_not_end_a_content() {
        assert_eq!(
            message_fields(r#"{"type":"message","content":"a \"b\" c","seq":1}"#),
            Incoming::Message {
                seq: Some(1),
                content: r#"a \"b\" c"#
            }
        );
    }

    #[test]
    fn a_stamp_survives_the_round_trip_and_pads_to_size() {
        let stamp = Stamp {
            step: 3,
            sent_us: 123_456,
            publisher: 2,
            n: 99,
        };
        let content = stamp.content(64);
        assert_eq!(content.len(), 64);
        assert_eq!(Stamp::parse(&content), Some(stamp));
        assert_eq!(Stamp::parse("hello"), None);
    }
}
