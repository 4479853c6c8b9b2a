//! Error codes carried in replies and `error` frames, and WebSocket close codes.
//!
//! Codes are part of the contract: clients switch on them. New codes may be added;
//! existing ones keep their spelling and meaning.

use serde::{Deserialize, Serialize};

/// Why a request failed. Serialised in snake_case (`"not_joined"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON, not an object, or a field is missing or has the wrong type.
    BadRequest,
    /// `type` names no request this protocol version knows.
    UnknownType,
    /// The room name is outside `[A-Za-z0-9_.:-]{1,64}`.
    InvalidRoom,
    /// Content or a name is longer than the node allows.
    TooLong,
    /// The request needs the session to have joined the room first.
    NotJoined,
    /// The session is already in `limits.max_rooms_per_session` rooms.
    TooManyRooms,
    /// A direct message's target has no connection anywhere.
    UserOffline,
    /// The room's behaviour (or access rules) refused the request.
    Forbidden,
    /// The connection sends faster than allowed; `retry_after_ms` says when to retry.
    RateLimited,
    /// Something failed inside the node; the request may be retried.
    Internal,
    /// The room cannot take this request right now (its owner is moving to another
    /// node, or this node is cut off from most of the cluster); retry shortly.
    Unavailable,
    /// The join would start a room and this node already runs `limits.max_rooms`;
    /// rooms already running can still be joined. Retry later or elsewhere.
    RoomLimit,
    /// Server API only (docs/api.md): the call carries no `Authorization: Bearer` key,
    /// or one that is not among `[api] keys`.
    Unauthorized,
    /// Server API only: the room, user or path the call names is unknown (a room with
    /// no member anywhere and no message in its log; a path the API does not serve).
    NotFound,
    /// Server API only: the request body is larger than `api.max_body_bytes`.
    TooLarge,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownType => "unknown_type",
            Self::InvalidRoom => "invalid_room",
            Self::TooLong => "too_long",
            Self::NotJoined => "not_joined",
            Self::TooManyRooms => "too_many_rooms",
            Self::UserOffline => "user_offline",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::RoomLimit => "room_limit",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::TooLarge => "too_large",
        }
    }
}

/// The `error` object of a failed reply or an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorBody {
    /// An error with a code and a human-readable message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// A `rate_limited` error telling the client when it may send again.
    pub fn rate_limited(retry_after_ms: u64) -> Self {
        Self {
            code: ErrorCode::RateLimited,
            message: "too many frames; slow down".to_owned(),
            retry_after_ms: Some(retry_after_ms),
        }
    }
}

/// WebSocket close codes the node uses. 1000–1015 are RFC 6455's; 4000–4999 are ours.
pub mod close {
    /// RFC 6455: normal closure.
    pub const NORMAL: u16 = 1000;
    /// RFC 6455: the client broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// RFC 6455: a text frame was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// RFC 6455: the frame was larger than `limits.max_frame_bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// RFC 6455: the node failed unexpectedly.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// RFC 6455: the node is restarting or draining; reconnect (to any node).
    pub const SERVICE_RESTART: u16 = 1012;
    /// RFC 6455: try again later. The node holds as much of messages still arriving as
    /// `limits.node_inbound_bytes` lets it, and this connection's was among the oldest.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The session's token expired (reserved for authentication).
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The client sent nothing, not even a pong, for `heartbeat.timeout_ms`.
    pub const HEARTBEAT_TIMEOUT: u16 = 4008;
    /// The client did not read fast enough: `limits.outbound_queue` frames were waiting.
    pub const SLOW_CONSUMER: u16 = 4009;
    /// The application's backend disconnected the user (server API `disconnect`
    /// without a code of its own; it may give any code 4000–4999, or 1000).
    pub const DISCONNECTED: u16 = 4010;
}
