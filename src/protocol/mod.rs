//! Wire protocol v1: the JSON frames between a client and a node.
//!
//! Pure: serde types, decoding and encoding, no I/O and no actors. `client` decodes
//! what a client sends into a [`ClientFrame`] or a [`FrameError`] carrying an error
//! code; `server` holds every frame a node sends; `codes` names the error codes and the
//! WebSocket close codes. docs/protocol.md documents each frame and
//! tests/protocol_golden.rs pins its exact JSON: fields may be added, never renamed.

mod client;
mod codes;
mod data;
mod server;

pub use client::{
    decode_client_frame, validate_display_name, validate_idempotency_key, validate_user_id,
    ClientFrame, FrameError, Ref, Request, RoomName, MAX_HISTORY_LIMIT, MAX_IDEMPOTENCY_KEY_BYTES,
    MAX_NAME_CHARS, MAX_PUBLISH_ROOMS,
};
pub use codes::{close, ErrorBody, ErrorCode};
pub use data::MessageData;
pub use server::{
    encode, json_len, max_message_list_bytes, ChatMessage, ConnectionInfo, DirectFrame, Member,
    ReplyData, RoomPublished, ServerFrame, UserInfo, MAX_MEMBER_BYTES, MESSAGE_OVERHEAD_BYTES,
    PROTOCOL_VERSION, REPLY_ENVELOPE_BYTES,
};

/// Milliseconds since the Unix epoch, the unit of every `ts` field.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
