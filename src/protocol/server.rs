//! Frames a node sends to a client.
//!
//! A broadcast is encoded once by [`encode`] into a [`ByteString`] whose clones share
//! one buffer, so every member of a room receives the same bytes.

use super::client::Ref;
use super::codes::ErrorBody;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};

/// The protocol version announced in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// A user as other clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub id: String,
    pub name: String,
}

/// A member of a room: one user, however many connections it has joined with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub name: String,
    pub connections: u32,
}

/// A published message, as broadcast and as kept in a room's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub room: String,
    /// Unique across the cluster (a UUIDv7).
    pub id: String,
    /// Position in the room: 1 for the first message, one more for each next.
    pub seq: u64,
    pub from: UserInfo,
    pub content: String,
    /// Milliseconds since the Unix epoch, stamped by the room when it ordered the message.
    pub ts: u64,
}

/// A direct message between users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectFrame {
    pub id: String,
    pub from: UserInfo,
    pub content: String,
    pub ts: u64,
}

/// The `data` of a successful reply; which variant depends on the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReplyData {
    Join {
        room: String,
        seq: u64,
        history: Vec<ChatMessage>,
        members: Vec<Member>,
        gap: bool,
    },
    Leave {
        room: String,
    },
    Publish {
        id: String,
        seq: u64,
        ts: u64,
    },
    History {
        room: String,
        messages: Vec<ChatMessage>,
    },
    Presence {
        room: String,
        members: Vec<Member>,
    },
    Direct {
        id: String,
        ts: u64,
        /// How many connections of the target received it.
        delivered: u32,
    },
    Rename {
        user: UserInfo,
    },
    Empty {},
}

/// Every frame a node sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        session: String,
        user: UserInfo,
        node: String,
        protocol: u32,
        heartbeat_ms: u64,
    },
    Reply {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
        ok: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<ReplyData>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody>,
    },
    Message(ChatMessage),
    Typing {
        room: String,
        user: UserInfo,
    },
    PresenceDiff {
        room: String,
        joins: Vec<Member>,
        leaves: Vec<Member>,
    },
    Direct(DirectFrame),
    Renamed {
        room: String,
        user: UserInfo,
        old_name: String,
    },
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    Error {
        error: ErrorBody,
    },
    Goodbye {
        reason: String,
        reconnect_after_ms: u64,
    },
}

impl ServerFrame {
    /// A successful reply.
    pub fn ok(reference: Option<Ref>, data: ReplyData) -> Self {
        Self::Reply {
            reference,
            ok: true,
            data: Some(data),
            error: None,
        }
    }

    /// A failed reply when the request carried a `ref`, else an `error` frame.
    pub fn failure(reference: Option<Ref>, error: ErrorBody) -> Self {
        match reference {
            Some(reference) => Self::Reply {
                reference: Some(reference),
                ok: false,
                data: None,
                error: Some(error),
            },
            None => Self::Error { error },
        }
    }
}

/// Serialises a frame once; clones of the result share the same bytes.
pub fn encode(frame: &ServerFrame) -> ByteString {
    match serde_json::to_string(frame) {
        Ok(json) => ByteString::from(json),
        // Unreachable for these types (all map keys are strings); never panic on it.
        Err(e) => {
            tracing::error!(error = %e, "could not encode a server frame");
            ByteString::from_static(
                r#"{"type":"error","error":{"code":"internal","message":"encoding failed"}}"#,
            )
        }
    }
}
