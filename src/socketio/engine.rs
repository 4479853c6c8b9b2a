//! Engine.IO protocol v4: the packets and the HTTP long-polling payloads.
//!
//! Pure: text in, packets out, and back; no I/O. A packet is one character of type
//! then its data (`4hello` is a message, `2probe` a ping with data). Over WebSocket
//! one frame carries one packet (a binary frame is a binary message); over polling a
//! payload joins packets with the record separator `\x1e` and a binary message
//! travels as `b<base64>`. Malformed input is an [`EngineError`], never a panic.
//!
//! Must not know: Socket.IO (what a message carries), sessions, HTTP.

use base64::Engine as _;
use serde::Serialize;
use std::fmt;

/// The version this server speaks: the `EIO` query parameter must be this.
pub const PROTOCOL: &str = "4";

/// Separates the packets of one polling payload.
pub const RECORD_SEPARATOR: char = '\x1e';

/// An Engine.IO packet received from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `1`: the client closes the connection.
    Close,
    /// `2`, or `2probe` during an upgrade.
    Ping(&'a str),
    /// `3`, or `3probe`.
    Pong(&'a str),
    /// `4<text>`: a message (for us, one Socket.IO packet).
    Message(&'a str),
    /// A binary message: a WebSocket binary frame, or `b<base64>` in a payload.
    Binary(Vec<u8>),
    /// `5`: the client finished upgrading to WebSocket.
    Upgrade,
    /// `6`: nothing.
    Noop,
}

/// Why a packet could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// The text was empty.
    Empty,
    /// The first character is no packet type a client may send (`0` is the server's).
    UnknownType(char),
    /// `b` followed by something that is not base64.
    BadBase64,
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty Engine.IO packet"),
            Self::UnknownType(c) => write!(f, "unknown Engine.IO packet type {c:?}"),
            Self::BadBase64 => f.write_str("binary packet is not base64"),
        }
    }
}

impl std::error::Error for EngineError {}

/// Reads one text packet (a WebSocket text frame, or one record of a payload).
pub fn decode_packet(text: &str) -> Result<Packet<'_>, EngineError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(EngineError::Empty)?;
    let data = chars.as_str();
    Ok(match kind {
        '1' => Packet::Close,
        '2' => Packet::Ping(data),
        '3' => Packet::Pong(data),
        '4' => Packet::Message(data),
        '5' => Packet::Upgrade,
        '6' => Packet::Noop,
        'b' => Packet::Binary(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| EngineError::BadBase64)?,
        ),
        other => return Err(EngineError::UnknownType(other)),
    })
}

/// Reads a polling payload: every packet, or the first error.
pub fn decode_payload(payload: &str) -> Result<Vec<Packet<'_>>, EngineError> {
    payload.split(RECORD_SEPARATOR).map(decode_packet).collect()
}

/// Joins packets (each already encoded) into one polling payload.
pub fn encode_payload<S: AsRef<str>>(packets: &[S]) -> String {
    let size = packets.iter().map(|p| p.as_ref().len() + 1).sum();
    let mut out = String::with_capacity(size);
    for (i, packet) in packets.iter().enumerate() {
        if i > 0 {
            out.push(RECORD_SEPARATOR);
        }
        out.push_str(packet.as_ref());
    }
    out
}

/// A binary message as a polling record: `b<base64>`.
pub fn encode_binary(data: &[u8]) -> String {
    let mut out = String::from("b");
    base64::engine::general_purpose::STANDARD.encode_string(data, &mut out);
    out
}

/// `4<text>`: a message packet.
pub fn encode_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 1);
    out.push('4');
    out.push_str(text);
    out
}

/// The open packet's data: what the server tells a client when the connection opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake {
    pub sid: String,
    /// `["websocket"]` on a polling connection, `[]` on a WebSocket.
    pub upgrades: Vec<&'static str>,
    pub ping_interval: u64,
    pub ping_timeout: u64,
    pub max_payload: u64,
}

/// `0{...}`: the open packet.
pub fn encode_open(handshake: &Handshake) -> String {
    // Serialising a struct of strings and integers cannot fail.
    let json = serde_json::to_string(handshake).unwrap_or_default();
    format!("0{json}")
}

/// The errors Engine.IO answers a bad HTTP request with (HTTP 400, or 403 for
/// `Forbidden`), with their standard codes and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// 0: `transport` is missing or not `polling` / `websocket`.
    TransportUnknown,
    /// 1: `sid` names no session here.
    UnknownSid,
    /// 2: a handshake (no `sid`) by POST, or a method other than GET and POST.
    BadHandshakeMethod,
    /// 3: anything else wrong (a second concurrent GET, a POST while one is read).
    BadRequest,
    /// 4: refused (origin, limits).
    Forbidden,
    /// 5: `EIO` is not 4.
    UnsupportedProtocolVersion,
}

impl HttpError {
    /// The standard `code`.
    pub fn code(self) -> u8 {
        match self {
            Self::TransportUnknown => 0,
            Self::UnknownSid => 1,
            Self::BadHandshakeMethod => 2,
            Self::BadRequest => 3,
            Self::Forbidden => 4,
            Self::UnsupportedProtocolVersion => 5,
        }
    }

    /// The standard `message`.
    pub fn message(self) -> &'static str {
        match self {
            Self::TransportUnknown => "Transport unknown",
            Self::UnknownSid => "Session ID unknown",
            Self::BadHandshakeMethod => "Bad handshake method",
            Self::BadRequest => "Bad request",
            Self::Forbidden => "Forbidden",
            Self::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    /// The JSON body, `{"code":N,"message":"..."}`.
    pub fn body(self) -> String {
        format!(
            r#"{{"code":{},"message":"{}"}}"#,
            self.code(),
            self.message()
        )
    }
}

/// Which transport a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    WebSocket,
}

/// The query parameters Engine.IO reads: `EIO`, `transport` and `sid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineQuery {
    pub transport: Transport,
    pub sid: Option<String>,
}

/// Checks `EIO` and `transport` (clients order parameters as they like, and add
/// others such as `t`), in the order Engine.IO does: version first.
pub fn check_query(
    params: &std::collections::HashMap<String, String>,
) -> Result<EngineQuery, HttpError> {
    if params.get("EIO").map(String::as_str) != Some(PROTOCOL) {
        return Err(HttpError::UnsupportedProtocolVersion);
    }
    let transport = match params.get("transport").map(String::as_str) {
        Some("polling") => Transport::Polling,
        Some("websocket") => Transport::WebSocket,
        _ => return Err(HttpError::TransportUnknown),
    };
    let sid = params.get("sid").filter(|sid| !sid.is_empty()).cloned();
    Ok(EngineQuery { transport, sid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_packet_type_decodes() {
        assert_eq!(decode_packet("1"), Ok(Packet::Close));
        assert_eq!(decode_packet("2"), Ok(Packet::Ping("")));
        assert_eq!(decode_packet("2probe"), Ok(Packet::Ping("probe")));
        assert_eq!(decode_packet("3probe"), Ok(Packet::Pong("probe")));
        assert_eq!(decode_packet("4é"), Ok(Packet::Message("é")));
        assert_eq!(decode_packet("5"), Ok(Packet::Upgrade));
        assert_eq!(decode_packet("6"), Ok(Packet::Noop));
        assert_eq!(decode_packet("bAQID"), Ok(Packet::Binary(vec![1, 2, 3])));
    }

    #[test]
    fn bad_packets_are_errors() {
        assert_eq!(decode_packet(""), Err(EngineError::Empty));
        assert_eq!(decode_packet("0{}"), Err(EngineError::UnknownType('0')));
        assert_eq!(decode_packet("7"), Err(EngineError::UnknownType('7')));
        assert_eq!(decode_packet("é"), Err(EngineError::UnknownType('é')));
        assert_eq!(decode_packet("b!!"), Err(EngineError::BadBase64));
        assert_eq!(
            decode_payload("4a\x1e9"),
            Err(EngineError::UnknownType('9'))
        );
        assert_eq!(decode_payload("4a\x1e"), Err(EngineError::Empty));
    }

    #[test]
    fn payloads_split_and_join_on_the_record_separator() {
        assert_eq!(
            decode_payload("4hello\x1e2\x1ebAQ=="),
            Ok(vec![
                Packet::Message("hello"),
                Packet::Ping(""),
                Packet::Binary(vec![1])
            ])
        );
        assert_eq!(
            encode_payload(&["2", "4x", &encode_binary(&[1])]),
            "2\x1e4x\x1ebAQ=="
        );
        assert_eq!(encode_payload::<&str>(&[]), "");
    }

    #[test]
    fn the_query_is_checked_version_first() {
        let q = |pairs: &[(&str, &str)]| {
            check_query(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(
            q(&[("EIO", "3"), ("transport", "polling")]),
            Err(HttpError::UnsupportedProtocolVersion)
        );
        assert_eq!(
            q(&[("transport", "x")]),
            Err(HttpError::UnsupportedProtocolVersion)
        );
        assert_eq!(
            q(&[("EIO", "4"), ("transport", "flash")]),
            Err(HttpError::TransportUnknown)
        );
        assert_eq!(
            q(&[
                ("EIO", "4"),
                ("transport", "polling"),
                ("sid", "abc"),
                ("t", "x")
            ]),
            Ok(EngineQuery {
                transport: Transport::Polling,
                sid: Some("abc".into())
            })
        );
        assert_eq!(
            q(&[("transport", "websocket"), ("EIO", "4")]),
            Ok(EngineQuery {
                transport: Transport::WebSocket,
                sid: None
            })
        );
    }
}
