//! Frames a node sends to a client.
//!
//! A broadcast is encoded once by [`encode`] into a [`ByteString`] whose clones share
//! one buffer, so every member of a room receives the same bytes.

use super::client::Ref;
use super::codes::ErrorBody;
use super::data::MessageData;
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
    /// A UUIDv7, unique within the room: one publish to several rooms (protocol v1
    /// `publish.rooms`, server API `broadcast`) has the same id in each.
    pub id: String,
    /// Position in the room: 1 for the first message, one more for each next; never
    /// handed out twice (a room the log forgot goes on past its floor).
    pub seq: u64,
    pub from: UserInfo,
    /// The text; `""` when the publish carried only `data`. Shared: the room's log,
    /// the Room's ring and every delivery hold one copy of it.
    pub content: std::sync::Arc<str>,
    /// Milliseconds since the Unix epoch, stamped by the room when it ordered the message.
    pub ts: u64,
    /// Protocol v1 addition: the publish's structured data, written back as the JSON
    /// value it was; absent when it had none. Not serialised by postcard: the room
    /// logs store messages as `cluster::raft::state_machine::StoredMessage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<MessageData>,
}

/// A direct message between users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectFrame {
    pub id: String,
    pub from: UserInfo,
    pub content: String,
    pub ts: u64,
}

/// One room's result in a `publish` with `rooms` (protocol v1 addition): `ok` with
/// the message's `id`, `seq` and `ts` (and `duplicate` on a retry), or not `ok` with
/// the `error` that room answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomPublished {
    pub room: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub duplicate: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl RoomPublished {
    /// A room's answer to its part of the publish.
    pub fn new(room: &str, answer: Result<ReplyData, ErrorBody>) -> Self {
        let mut result = Self {
            room: room.to_owned(),
            ok: false,
            id: None,
            seq: None,
            ts: None,
            duplicate: false,
            error: None,
        };
        match answer {
            Ok(ReplyData::Publish {
                id,
                seq,
                ts,
                duplicate,
            }) => {
                result.ok = true;
                result.id = Some(id);
                result.seq = Some(seq);
                result.ts = Some(ts);
                result.duplicate = duplicate;
            }
            Ok(_) => {
                result.error = Some(ErrorBody::new(
                    super::codes::ErrorCode::Internal,
                    "the room answered a publish with something else",
                ))
            }
            Err(error) => result.error = Some(error),
        }
        result
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The `data` of a successful reply; which variant depends on the request.
///
/// Protocol v1 additions (`more`, `before`, `after`, `members_more`, `members_count`,
/// `count`) appear only when a reply is cut or paged, and `duplicate` only on the
/// answer to a retried publish, so any other reply has exactly the fields it always
/// had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReplyData {
    Join {
        room: String,
        seq: u64,
        history: Vec<ChatMessage>,
        members: Vec<Member>,
        gap: bool,
        /// Held messages in the range `history` covers were left out (by count or
        /// by `limits.max_reply_bytes`); `before` or `after` says where to continue.
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
        /// With `more` on a join without `since`: send as `history`'s `before`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        /// With `more` on a resume (`since`): send as `history`'s `after`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        /// The room has more members than `limits.presence_page`: `members` is the
        /// first page; `presence` with `after` gives the rest.
        #[serde(default, skip_serializing_if = "is_false")]
        members_more: bool,
        /// With `members_more`: how many members the room has.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        members_count: Option<usize>,
    },
    Leave {
        room: String,
    },
    Publish {
        id: String,
        seq: u64,
        ts: u64,
        /// Protocol v1 addition: the `publish` carried an `idempotency_key` the room
        /// had seen, so nothing was published and `id`, `seq` and `ts` are the
        /// original message's. Absent (false) on a first publish.
        #[serde(default, skip_serializing_if = "is_false")]
        duplicate: bool,
    },
    /// Protocol v1 addition: the answer to a `publish` with `rooms`. `id` is the one
    /// id of the message in every room; `results` has one entry per room, in the
    /// order the rooms were named.
    PublishRooms {
        id: String,
        results: Vec<RoomPublished>,
    },
    History {
        room: String,
        messages: Vec<ChatMessage>,
        /// Held messages in the asked range were left out; continue from the cursor.
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
        /// With `more` on a backward page: the next request's `before`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        /// With `more` on a forward page (`after` given): the next request's `after`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
    Presence {
        room: String,
        members: Vec<Member>,
        /// Members after the last one listed were left out; continue with `after`.
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
        /// With `more`: the next request's `after` (the last id listed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// On a paged reply (a room over `limits.presence_page`, or `after` or `limit`
        /// given): how many members the room has.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<usize>,
    },
    /// The answer to `presence` with `count_only`.
    PresenceCount {
        room: String,
        /// Members (users).
        count: usize,
        /// Their connections joined to the room, summed.
        connections: u64,
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

/// One connection as the server API shows it (docs/api.md, `POST /api/user`), and
/// as nodes tell each other (`UserCallResult` in cluster/wire.rs). Not a frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The node the connection is open to.
    pub node: String,
    /// The connection's session id (its `welcome.session`).
    pub session: String,
    /// The rooms it has joined, sorted.
    pub rooms: Vec<String>,
    /// When it was opened, in ms since the Unix epoch.
    pub connected_at: u64,
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
        /// Protocol v1 addition: members still present whose connection count changed
        /// (absolute counts); absent when empty, so a diff without one is as before.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        updates: Vec<Member>,
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
    /// Protocol v1 addition: the application's backend joined this connection to
    /// `room` (server API `subscribe`); its messages after seq `seq` follow.
    Subscribed {
        room: String,
        seq: u64,
    },
    /// Protocol v1 addition: the application's backend took this connection out of
    /// `room` (server API `unsubscribe`); nothing more of it follows.
    Unsubscribed {
        room: String,
    },
    /// Protocol v1 addition: messages of `room` after seq `after` and before seq
    /// `next` are no longer held, and this connection will not see them. The stream
    /// goes on with `next`.
    Gap {
        room: String,
        after: u64,
        next: u64,
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

/// Bytes a reply frame takes around its lists (`type`, `ref`, `ok`, the fixed fields
/// of `data`, the cursors), at most: a `ref` of 128 characters each escaped as `\uXXXX`
/// is 768 of them. A reply's lists get `limits.max_reply_bytes` minus this.
pub const REPLY_ENVELOPE_BYTES: usize = 2048;

/// The most bytes one member takes in a list: a 64-byte id, a name of 64 characters
/// of up to 4 bytes each, a count, the punctuation.
pub const MAX_MEMBER_BYTES: usize = 384;

/// The most bytes one message takes in a list around its `content`: room, id, `seq`,
/// sender (its name up to 256 bytes), `ts`, punctuation.
pub const MESSAGE_OVERHEAD_BYTES: usize = 1024;

/// The most bytes a message whose content has `content_bytes` bytes of UTF-8 takes in
/// a list. Content may hold no control character but `\n` and `\t`, so JSON escaping
/// at most doubles it (`"`, `\`, `\n`, `\t` each become two bytes).
pub fn max_message_list_bytes(content_bytes: usize) -> usize {
    content_bytes
        .saturating_mul(2)
        .saturating_add(MESSAGE_OVERHEAD_BYTES)
}

/// How many bytes `value` takes as JSON, without building the string.
pub fn json_len<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail for these types; an error counts what was written.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
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
