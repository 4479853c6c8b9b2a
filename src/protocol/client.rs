//! Decoding of client frames.
//!
//! Every way a frame can be wrong maps to an [`ErrorCode`]; decoding never panics and
//! keeps the frame's `ref` whenever it can be read, so the error can still be a reply.
//! Unknown fields are ignored, so clients may send fields a newer node understands.

use super::codes::{ErrorBody, ErrorCode};
use super::data::MessageData;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// Longest `ref` string a client may send; longer ones are a `bad_request`.
const MAX_REF_CHARS: usize = 128;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest user id, in characters.
pub const MAX_USER_ID_CHARS: usize = 64;
/// Largest `limit` a history request may ask for; larger values are clamped.
pub const MAX_HISTORY_LIMIT: u32 = 1000;
/// Longest `idempotency_key` a `publish` may carry, in bytes of UTF-8. Each room
/// remembers a bounded number of keys, so this bounds their memory in bytes; the
/// room logs (`cluster::raft`) check the same bound again on apply.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// Most rooms one `publish` may name in `rooms` (protocol v1 addition). Each room is
/// one message against the user's message rate, and the reply holds one result per
/// room, so the count bounds both.
pub const MAX_PUBLISH_ROOMS: usize = 16;

/// The `ref` a client attaches to a frame: a string or a number, echoed in the reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Ref(Value);

impl Ref {
    /// A numeric `ref` (a Socket.IO ack id).
    pub fn number(n: u64) -> Self {
        Self(Value::from(n))
    }
}

/// A room name, checked against `[A-Za-z0-9_.:-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomName(String);

impl RoomName {
    /// Checks a room name; the error says what is wrong with it.
    pub fn parse(name: &str) -> Result<Self, ErrorBody> {
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if name.is_empty() || name.len() > 64 || !valid_chars {
            return Err(ErrorBody::new(
                ErrorCode::InvalidRoom,
                "room names are 1 to 64 characters of A-Z a-z 0-9 _ . : -",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a client asks for. Content lengths are checked by the session, which knows the
/// node's limits; everything else about the frame's shape is checked here.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Join {
        room: RoomName,
        since: Option<u64>,
    },
    Leave {
        room: RoomName,
    },
    Publish {
        room: RoomName,
        /// The text; `""` when the frame carried only `data` (no `content`).
        content: String,
        /// Protocol v1 addition: structured data, any JSON value but `null`, beside or
        /// instead of `content`. Its size is checked by the session with the content's.
        data: Option<MessageData>,
        /// Protocol v1 addition: the room sends the `message` frame to every joined
        /// connection but this one (the sender's other connections get it).
        except_sender: bool,
        /// Protocol v1 addition: the client's key for retries. A second `publish`
        /// with the same key in the same room is answered with the first one's `id`,
        /// `seq` and `ts` and publishes nothing. Checked by
        /// [`validate_idempotency_key`].
        idempotency_key: Option<String>,
    },
    /// Protocol v1 addition: a `publish` with `rooms` instead of `room`, one message
    /// to each room (distinct, in the order named; a room named twice counts once),
    /// all with one `id`, each with its room's own `seq`.
    PublishRooms {
        rooms: Vec<RoomName>,
        content: String,
        data: Option<MessageData>,
        except_sender: bool,
        /// One key for every room: each room remembers it for itself.
        idempotency_key: Option<String>,
    },
    Typing {
        room: RoomName,
    },
    History {
        room: RoomName,
        before: Option<u64>,
        /// Protocol v1 addition: page forwards, oldest first, from after this `seq`.
        after: Option<u64>,
        limit: Option<u32>,
    },
    Presence {
        room: RoomName,
        /// Protocol v1 addition: only members whose id sorts after this one.
        after: Option<String>,
        /// Protocol v1 addition: at most this many members (clamped to the page size).
        limit: Option<u32>,
        /// Protocol v1 addition: only the counts, no member list.
        count_only: bool,
    },
    Direct {
        to: String,
        content: String,
    },
    Rename {
        name: String,
    },
    Ping,
}

impl Request {
    /// The frame's `type`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Join { .. } => "join",
            Self::Leave { .. } => "leave",
            Self::Publish { .. } | Self::PublishRooms { .. } => "publish",
            Self::Typing { .. } => "typing",
            Self::History { .. } => "history",
            Self::Presence { .. } => "presence",
            Self::Direct { .. } => "direct",
            Self::Rename { .. } => "rename",
            Self::Ping => "ping",
        }
    }
}

/// A decoded client frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFrame {
    pub reference: Option<Ref>,
    pub request: Request,
}

/// A frame that could not be decoded, with the `ref` if it could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub reference: Option<Ref>,
    pub error: ErrorBody,
}

#[derive(Deserialize)]
struct RoomFields {
    room: String,
}

#[derive(Deserialize)]
struct JoinFields {
    room: String,
    since: Option<u64>,
}

#[derive(Deserialize)]
struct PublishFields {
    /// One room, or `rooms` (exactly one of the two).
    #[serde(default)]
    room: Option<String>,
    /// Several rooms; null is the same as absent.
    #[serde(default)]
    rooms: Option<Vec<String>>,
    /// May be absent when `data` is given.
    #[serde(default)]
    content: Option<String>,
    /// Any JSON value; null is the same as absent.
    #[serde(default)]
    data: Value,
    /// Null is the same as absent (false).
    #[serde(default)]
    except_sender: Option<bool>,
    /// Read as any JSON value so that a key of the wrong type gets the same clear
    /// message as a key out of bounds; null is the same as absent.
    #[serde(default)]
    idempotency_key: Value,
}

#[derive(Deserialize)]
struct HistoryFields {
    room: String,
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
struct PresenceFields {
    room: String,
    after: Option<String>,
    limit: Option<u32>,
    #[serde(default)]
    count_only: bool,
}

#[derive(Deserialize)]
struct DirectFields {
    to: String,
    content: String,
}

#[derive(Deserialize)]
struct RenameFields {
    name: String,
}

/// Decodes one text frame.
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let bad = |reference: Option<Ref>, message: String| FrameError {
        reference,
        error: ErrorBody::new(ErrorCode::BadRequest, message),
    };
    let value: Value = serde_json::from_str(text).map_err(|e| bad(None, not_json(&e)))?;
    let Value::Object(object) = &value else {
        return Err(bad(None, "frame must be a JSON object".to_owned()));
    };
    let reference = match object.get("ref") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= MAX_REF_CHARS => {
            Some(Ref(Value::String(s.clone())))
        }
        Some(n @ Value::Number(_)) => Some(Ref(n.clone())),
        Some(_) => {
            return Err(bad(
                None,
                format!("`ref` must be a number or a string of at most {MAX_REF_CHARS} characters"),
            ))
        }
    };
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return Err(bad(reference, "`type` must be a string".to_owned())),
        None => return Err(bad(reference, "frame has no `type`".to_owned())),
    };
    let request = decode_request(kind, &value).map_err(|error| FrameError {
        reference: reference.clone(),
        error,
    })?;
    Ok(ClientFrame { reference, request })
}

/// Why a frame is not JSON. serde_json refuses a `\uD800`-`\uDFFF` escape that is not
/// half of a surrogate pair (it stands for no character): a lone one is a "lone leading
/// surrogate", a leading one without a `\u` after it an "unexpected end of hex
/// escape" (serde_json raises that only there). The message then says so plainly.
fn not_json(e: &serde_json::Error) -> String {
    let detail = e.to_string();
    if detail.contains("surrogate") || detail.contains("end of hex escape") {
        format!(
            "frame is not valid JSON: {detail}; strings must be Unicode text, and a \\uD800-\\uDFFF \
             escape is only valid as half of a surrogate pair"
        )
    } else {
        format!("frame is not valid JSON: {detail}")
    }
}

fn decode_request(kind: &str, value: &Value) -> Result<Request, ErrorBody> {
    Ok(match kind {
        "join" => {
            let f: JoinFields = fields(kind, value)?;
            Request::Join {
                room: RoomName::parse(&f.room)?,
                since: f.since,
            }
        }
        "leave" => Request::Leave {
            room: room_of(kind, value)?,
        },
        "publish" => {
            let f: PublishFields = fields(kind, value)?;
            let data = MessageData::from_value(&f.data);
            if f.content.is_none() && data.is_none() {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    "bad `publish` frame: it needs `content`, `data` or both",
                ));
            }
            let content = f.content.unwrap_or_default();
            let except_sender = f.except_sender.unwrap_or(false);
            let idempotency_key = match &f.idempotency_key {
                Value::Null => None,
                Value::String(key) => Some(validate_idempotency_key(key)?),
                _ => return Err(bad_idempotency_key()),
            };
            match (f.room, f.rooms) {
                (Some(room), None) => Request::Publish {
                    room: RoomName::parse(&room)?,
                    content,
                    data,
                    except_sender,
                    idempotency_key,
                },
                (None, Some(rooms)) => Request::PublishRooms {
                    rooms: publish_rooms(&rooms)?,
                    content,
                    data,
                    except_sender,
                    idempotency_key,
                },
                _ => {
                    return Err(ErrorBody::new(
                        ErrorCode::BadRequest,
                        "bad `publish` frame: it needs `room` or `rooms` (not both)",
                    ))
                }
            }
        }
        "typing" => Request::Typing {
            room: room_of(kind, value)?,
        },
        "history" => {
            let f: HistoryFields = fields(kind, value)?;
            Request::History {
                room: RoomName::parse(&f.room)?,
                before: f.before,
                after: f.after,
                limit: f.limit,
            }
        }
        "presence" => {
            let f: PresenceFields = fields(kind, value)?;
            Request::Presence {
                room: RoomName::parse(&f.room)?,
                // A cursor is a user id a reply handed out; anything else is a mistake.
                after: f.after.as_deref().map(validate_user_id).transpose()?,
                limit: f.limit,
                count_only: f.count_only,
            }
        }
        "direct" => {
            let f: DirectFields = fields(kind, value)?;
            Request::Direct {
                to: validate_user_id(&f.to)?,
                content: f.content,
            }
        }
        "rename" => {
            let f: RenameFields = fields(kind, value)?;
            Request::Rename {
                name: validate_display_name(&f.name)?,
            }
        }
        "ping" => Request::Ping,
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(ErrorBody::new(
                ErrorCode::UnknownType,
                format!("unknown frame type `{shown}`"),
            ));
        }
    })
}

/// The rooms of a `publish` with `rooms`: 1 to [`MAX_PUBLISH_ROOMS`] valid names;
/// a name given twice counts once (the first place it appears is kept).
fn publish_rooms(names: &[String]) -> Result<Vec<RoomName>, ErrorBody> {
    if names.is_empty() || names.len() > MAX_PUBLISH_ROOMS {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("bad `publish` frame: `rooms` names 1 to {MAX_PUBLISH_ROOMS} rooms"),
        ));
    }
    let mut rooms: Vec<RoomName> = Vec::with_capacity(names.len());
    for name in names {
        let room = RoomName::parse(name)?;
        if !rooms.contains(&room) {
            rooms.push(room);
        }
    }
    Ok(rooms)
}

fn fields<T: for<'de> Deserialize<'de>>(kind: &str, value: &Value) -> Result<T, ErrorBody> {
    T::deserialize(value)
        .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, format!("bad `{kind}` frame: {e}")))
}

fn room_of(kind: &str, value: &Value) -> Result<RoomName, ErrorBody> {
    let f: RoomFields = fields(kind, value)?;
    RoomName::parse(&f.room)
}

/// Checks a user id (`?user=` or a direct message's `to`): 1 to 64 characters of
/// `A-Z a-z 0-9 _ . : @ -`.
pub fn validate_user_id(id: &str) -> Result<String, ErrorBody> {
    let valid_chars = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'));
    if id.is_empty() || id.len() > MAX_USER_ID_CHARS || !valid_chars {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            "user ids are 1 to 64 characters of A-Z a-z 0-9 _ . : @ -",
        ));
    }
    Ok(id.to_owned())
}

/// Checks a `publish`'s `idempotency_key`: 1 to [`MAX_IDEMPOTENCY_KEY_BYTES`] bytes of
/// UTF-8 with no control character (C0, DEL or C1). Kept exactly as sent, untrimmed:
/// two keys are the same key only when they are the same bytes.
pub fn validate_idempotency_key(key: &str) -> Result<String, ErrorBody> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES || key.chars().any(char::is_control)
    {
        return Err(bad_idempotency_key());
    }
    Ok(key.to_owned())
}

fn bad_idempotency_key() -> ErrorBody {
    ErrorBody::new(
        ErrorCode::BadRequest,
        format!(
            "`idempotency_key` must be a string of 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes with no \
             control characters"
        ),
    )
}

/// Checks and trims a display name: 1 to 64 characters, no control characters.
pub fn validate_display_name(name: &str) -> Result<String, ErrorBody> {
    let name = name.trim();
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            "a name must be non-empty and have no control characters",
        ));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ErrorBody::new(
            ErrorCode::TooLong,
            format!("a name is at most {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(name.to_owned())
}
