//! Socket.IO protocol v5: the packets carried in Engine.IO messages.
//!
//! Pure: no I/O. A packet is `<type>[<attachments>-][<namespace>,][<ack id>][JSON]`:
//! `42["join",{"room":"r1"}]`, `421/chat,["publish",{...}]`, `43/chat,7[{"ok":true}]`.
//! [`decode`] reads one and checks its payload has the shape its type requires, as the
//! reference parser does (an EVENT is a non-empty array whose first element is an
//! event name, an ACK an array, a CONNECT an object or nothing); anything else is a
//! [`PacketError`], never a panic. Encoding writes the header and splices in JSON the
//! caller already has, so a frame encoded once is not parsed again to be re-sent.
//!
//! Must not know: Engine.IO framing, protocol v1, sessions.

use serde_json::Value;
use std::fmt;

/// The namespace a packet without one is for.
pub const DEFAULT_NAMESPACE: &str = "/";

/// The longest namespace name read (a client's word; names are configured).
const MAX_NAMESPACE_BYTES: usize = 128;

/// Ack ids are JavaScript numbers: past 2^53 they are no longer exact.
const MAX_ACK_ID: u64 = (1 << 53) - 1;

/// Attachments one binary packet may announce.
const MAX_ATTACHMENTS: u32 = 64;

/// Event names a server must never emit, and a client cannot send.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// The packet types of protocol v5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

impl PacketType {
    /// The digit on the wire.
    pub fn digit(self) -> char {
        match self {
            Self::Connect => '0',
            Self::Disconnect => '1',
            Self::Event => '2',
            Self::Ack => '3',
            Self::ConnectError => '4',
            Self::BinaryEvent => '5',
            Self::BinaryAck => '6',
        }
    }

    fn from_digit(c: u8) -> Option<Self> {
        Some(match c {
            b'0' => Self::Connect,
            b'1' => Self::Disconnect,
            b'2' => Self::Event,
            b'3' => Self::Ack,
            b'4' => Self::ConnectError,
            b'5' => Self::BinaryEvent,
            b'6' => Self::BinaryAck,
            _ => return None,
        })
    }

    fn is_binary(self) -> bool {
        matches!(self, Self::BinaryEvent | Self::BinaryAck)
    }
}

/// A decoded packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet<'a> {
    pub kind: PacketType,
    /// Binary attachments that follow (BINARY_EVENT and BINARY_ACK only; else 0).
    pub attachments: u32,
    /// `/` when the packet names none.
    pub namespace: &'a str,
    pub ack: Option<u64>,
    pub payload: Option<Value>,
}

impl Packet<'_> {
    /// An EVENT's name and arguments (the payload checked by [`decode`]).
    pub fn event(&self) -> Option<(&str, &[Value])> {
        match (&self.kind, &self.payload) {
            (PacketType::Event | PacketType::BinaryEvent, Some(Value::Array(items))) => {
                match items.split_first() {
                    Some((Value::String(name), args)) => Some((name.as_str(), args)),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// Why a packet could not be read. Socket.IO closes the connection on any of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacketError {
    Empty,
    UnknownType(u8),
    BadAttachments,
    BadNamespace,
    BadAckId,
    NotJson,
    /// The payload is JSON but not what the packet type carries.
    BadPayload(PacketType),
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty Socket.IO packet"),
            Self::UnknownType(c) => write!(f, "unknown Socket.IO packet type {:?}", *c as char),
            Self::BadAttachments => f.write_str("bad attachment count"),
            Self::BadNamespace => f.write_str("bad namespace"),
            Self::BadAckId => f.write_str("bad ack id"),
            Self::NotJson => f.write_str("payload is not JSON"),
            Self::BadPayload(kind) => write!(f, "invalid payload for a {kind:?} packet"),
        }
    }
}

impl std::error::Error for PacketError {}

/// Reads one packet.
pub fn decode(text: &str) -> Result<Packet<'_>, PacketError> {
    let bytes = text.as_bytes();
    let first = *bytes.first().ok_or(PacketError::Empty)?;
    let kind = PacketType::from_digit(first).ok_or(PacketError::UnknownType(first))?;
    let mut at = 1;

    let mut attachments = 0;
    if kind.is_binary() {
        let digits = count_digits(&bytes[at..]);
        if digits == 0 || bytes.get(at + digits) != Some(&b'-') || digits > 4 {
            return Err(PacketError::BadAttachments);
        }
        attachments = text[at..at + digits]
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= MAX_ATTACHMENTS)
            .ok_or(PacketError::BadAttachments)?;
        at += digits + 1;
    }

    let mut namespace = DEFAULT_NAMESPACE;
    if bytes.get(at) == Some(&b'/') {
        let rest = &text[at..];
        let end = rest.find(',').unwrap_or(rest.len());
        if end > MAX_NAMESPACE_BYTES {
            return Err(PacketError::BadNamespace);
        }
        namespace = &rest[..end];
        at += end;
        if bytes.get(at) == Some(&b',') {
            at += 1;
        }
    }

    let digits = count_digits(&bytes[at..]);
    let mut ack = None;
    if digits > 0 {
        let id = text[at..at + digits]
            .parse::<u64>()
            .ok()
            .filter(|id| *id <= MAX_ACK_ID)
            .ok_or(PacketError::BadAckId)?;
        ack = Some(id);
        at += digits;
    }

    let rest = &text[at..];
    let payload = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_str::<Value>(rest).map_err(|_| PacketError::NotJson)?)
    };
    if !payload_fits(kind, payload.as_ref()) {
        return Err(PacketError::BadPayload(kind));
    }
    Ok(Packet {
        kind,
        attachments,
        namespace,
        ack,
        payload,
    })
}

fn count_digits(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| b.is_ascii_digit()).count()
}

/// What the reference parser accepts for each type.
fn payload_fits(kind: PacketType, payload: Option<&Value>) -> bool {
    match kind {
        PacketType::Connect => matches!(payload, None | Some(Value::Object(_))),
        PacketType::Disconnect => payload.is_none(),
        PacketType::ConnectError => matches!(payload, Some(Value::Object(_) | Value::String(_))),
        PacketType::Event | PacketType::BinaryEvent => match payload {
            Some(Value::Array(items)) => match items.first() {
                Some(Value::String(name)) => !RESERVED_EVENTS.contains(&name.as_str()),
                Some(Value::Number(_)) => true,
                _ => false,
            },
            _ => false,
        },
        PacketType::Ack | PacketType::BinaryAck => matches!(payload, Some(Value::Array(_))),
    }
}

/// The header of a packet: type, namespace (left out for `/`) and ack id.
pub fn header(kind: PacketType, namespace: &str, ack: Option<u64>) -> String {
    let mut out = String::with_capacity(namespace.len() + 24);
    out.push(kind.digit());
    if namespace != DEFAULT_NAMESPACE {
        out.push_str(namespace);
        out.push(',');
    }
    if let Some(id) = ack {
        out.push_str(&id.to_string());
    }
    out
}

/// A packet with `json` (already encoded) as its payload.
pub fn encode(kind: PacketType, namespace: &str, ack: Option<u64>, json: &str) -> String {
    let mut out = header(kind, namespace, ack);
    out.push_str(json);
    out
}

/// `CONNECT_ERROR` with `{"message": message}` and `data` when given.
pub fn connect_error(namespace: &str, message: &str, data: Option<Value>) -> String {
    let mut body = serde_json::json!({ "message": message });
    if let Some(data) = data {
        body["data"] = data;
    }
    encode(PacketType::ConnectError, namespace, None, &body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn headers_read_in_order() {
        let p = decode(r#"51-/chat,12["bin",{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!(
            (p.kind, p.attachments, p.namespace, p.ack),
            (PacketType::BinaryEvent, 1, "/chat", Some(12))
        );
        let p = decode("1/chat,").unwrap();
        assert_eq!(
            (p.kind, p.namespace, p.payload),
            (PacketType::Disconnect, "/chat", None)
        );
        let p = decode("0/chat").unwrap();
        assert_eq!(p.namespace, "/chat");
        let p = decode(r#"0{"token":"t"}"#).unwrap();
        assert_eq!(p.payload, Some(json!({"token":"t"})));
    }

    #[test]
    fn payloads_must_fit_their_type() {
        for bad in [
            r#"2{"a":1}"#,
            "2[]",
            r#"2["connect"]"#,
            "2[{}]",
            "3{}",
            "1{}",
            "0[1]",
            "4",
            "2[",
            "7",
            "",
            "x",
            r#"5["a"]"#,
            r#"599-["a"]"#,
            "299999999999999999[\"a\"]",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} must not decode");
        }
    }
}
