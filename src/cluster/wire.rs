//! Every message that crosses nodes, in one place.
//!
//! A message is an [`Envelope`] (sender's node name and incarnation) around a
//! [`Body`], encoded once ([`encode`]: postcard, with every body but the Raft ones as
//! JSON inside) and sealed into a frame per receiver ([`seal`]): a first byte `0xB7`,
//! the wire version, the sender key the receiver issued to the sender
//! (sender_keys.rs), then the envelopes, each after its length. The frame is the
//! `Vec<u8>` payload of the one cluster-visible actor message
//! (`EndpointMessage::Frame`). Decoding returns a `Result`: malformed or unexpected
//! traffic is logged and dropped by the receiver and never panics an actor (ractor's
//! own `BytesConvertable` decoding would).
//!
//! Versioning: [`WIRE_VERSION`] is bumped when a change is not backwards compatible.
//! A new body variant or an optional field (`#[serde(default)]`) in a JSON body is
//! compatible (an older node drops a body it does not know); the Raft bodies are
//! positional in postcard, so any change to them is a bump, as is renaming anything.
//! A node drops frames of another version and logs it; frames of version 3 and older
//! were JSON and are told by their first byte.

use super::tracker::{Entry, KeyRange};
use crate::protocol::{ConnectionInfo, ErrorBody, UserInfo};
use serde::{Deserialize, Serialize};

/// The version of this wire format.
pub const WIRE_VERSION: u16 = 4;

/// The largest envelope a node accepts, in bytes.
pub const MAX_ENVELOPE_BYTES: usize = 16 * 1024 * 1024;

/// One message between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender's node name (a claim until its frame's key is checked).
    pub from: String,
    /// The sender's incarnation: random per process start, so a restarted node is
    /// told apart from its previous life.
    pub inc: u64,
    pub body: Body,
}

/// A node as gossiped in heartbeats: name, incarnation and the address peers dial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddr {
    pub name: String,
    pub inc: u64,
    pub addr: String,
    /// Its HTTP listener as peers reach it, for the Socket.IO relay
    /// (transport/socketio_forward.rs); only a node's own entry carries it. Empty:
    /// none offered (HTTPS, or an older node).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub http: String,
}

/// Which openraft call a [`RaftCall`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcKind {
    /// AppendEntries carrying log entries.
    AppendEntries,
    /// AppendEntries without entries (a heartbeat, or a commit index moving on);
    /// served as AppendEntries, apart only so metrics can tell replication from
    /// keeping leadership.
    Heartbeat,
    Vote,
    InstallSnapshot,
    /// A batch of commands forwarded to the shard's leader (`Raft::client_write`).
    ClientWrite,
}

/// One Raft RPC between the members of a shard's group. `from` and `target` are Raft
/// node ids (cluster/shards.rs); `payload` is the openraft request, postcard-encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftCall {
    pub shard: u32,
    pub from: u64,
    pub target: u64,
    pub corr: u64,
    pub kind: RpcKind,
    pub payload: Bytes,
}

/// The answer to a [`RaftCall`]: openraft's result, postcard-encoded, or why the call
/// was refused (wrong target, shard not served here, bad bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftAnswer {
    pub corr: u64,
    pub result: Result<Bytes, String>,
}

/// Bytes inside an envelope: base64 text in JSON (a JSON array of numbers would be
/// three to four times larger), raw bytes in a binary encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        if serializer.is_human_readable() {
            serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use base64::Engine;
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map(Bytes)
                .map_err(serde::de::Error::custom)
        } else {
            deserializer.deserialize_byte_buf(BytesVisitor)
        }
    }
}

/// Raw bytes in a binary format, in one copy (a `Vec<u8>` would be read byte by byte).
struct BytesVisitor;

impl<'de> serde::de::Visitor<'de> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes(v.to_vec()))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes(v))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(Bytes(bytes))
    }
}

/// Every message body. Room messages name their room; `req` numbers pair a request
/// with its answer and are unique per sending node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Body {
    // ---- membership (membership.rs) ----
    /// The key the receiver's frames to the sender must carry from now on (sent
    /// through the receiver's own session; sender_keys.rs). The one body taken without
    /// a key.
    SenderKey { key: String },
    /// Heartbeat. `sent_at` is the sender's monotonic clock in ms, echoed in the
    /// pong; `view` is the id of the sender's current view; `peers` gossips the nodes
    /// the sender knows so every node can dial every other (full mesh).
    Ping {
        sent_at: u64,
        view: u64,
        peers: Vec<PeerAddr>,
        /// A hash of the node list the sender follows (`shards::list_hash`; 0: none
        /// yet), so nodes whose lists differ are told apart (raft/host.rs).
        #[serde(default)]
        nodes: u64,
    },
    /// Answer to a ping.
    Pong { echo: u64, view: u64 },
    /// The sender is shutting down and has stopped ordering: take it out of the view
    /// now rather than after the failure timeout.
    Leaving {},

    // ---- Raft (cluster/raft/network.rs) ----
    /// A Raft RPC of one shard's group, for node `target`.
    RaftCall(RaftCall),
    /// The answer to a `RaftCall`, paired by `corr`.
    RaftAnswer(RaftAnswer),

    // ---- presence (presence.rs) ----
    /// Deliver an encoded `direct` frame to every connection of `to` on the receiver.
    Direct { req: u64, to: String, frame: String },
    /// How many connections received a `Direct`.
    DirectResult { req: u64, delivered: u32 },
    /// A user's display name changed on the sending node.
    UserRenamed { user: UserInfo },

    // ---- presence without an owner (presence_sync.rs, tracker.rs) ----
    /// The sender's connections of one user in `room` are now `entry.connections`
    /// (absolute, so a repeat is harmless; 0: gone from there).
    PresenceDelta { room: String, entry: Entry },
    /// One chunk of the sender's digest: every room in `range` it holds members of,
    /// with the hash of its entries there. `reply` asks the receiver to send its own
    /// digest back (the sender just saw it join its view).
    PresenceDigest {
        #[serde(default)]
        range: KeyRange,
        rooms: Vec<(String, u64)>,
        #[serde(default)]
        reply: bool,
    },
    /// Send me your state of these rooms (their hashes differed from my copy).
    PresenceAsk { rooms: Vec<String> },
    /// One chunk of the sender's state of `room`: its users in `range` (user ids).
    PresenceState {
        room: String,
        #[serde(default)]
        range: KeyRange,
        entries: Vec<Entry>,
    },
    /// A user on the sending node is typing in `room`; sent to the nodes that hold
    /// members of it.
    PresenceTyping { room: String, user: UserInfo },

    // ---- the server API (api/, actors/presence.rs) ----
    /// Do `call` on every connection of `user` on the receiver, and answer with a
    /// `UserCallResult` of the same `req`.
    UserCall {
        req: u64,
        user: String,
        call: UserCall,
    },
    /// What a `UserCall` did on the sending node.
    UserCallResult { req: u64, result: UserCallResult },
}

/// What the server API asks of one user's connections on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UserCall {
    /// Close each connection with `code` and `reason`.
    Disconnect { code: u16, reason: String },
    /// Join each connection to `room` (the backend's `subscribe`).
    Join { room: String },
    /// Take each connection out of `room`.
    Leave { room: String },
    /// Describe each connection.
    Connections,
}

/// What a [`UserCall`] did on one node (or, summed, on all of them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCallResult {
    /// Connections the call was done on.
    pub affected: u32,
    /// For `Connections`: each connection of the user there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<ConnectionInfo>,
    /// The first refusal met (a connection in too many rooms, one not in the room).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<ErrorBody>,
}

impl UserCallResult {
    /// Adds another node's (or connection's) result to this one.
    pub fn merge(&mut self, other: UserCallResult) {
        self.affected += other.affected;
        self.connections.extend(other.connections);
        if self.refused.is_none() {
            self.refused = other.refused;
        }
    }
}

impl Body {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ping { .. } => "ping",
            Self::Pong { .. } => "pong",
            Self::Leaving {} => "leaving",
            Self::SenderKey { .. } => "sender_key",
            Self::RaftCall(call) => match call.kind {
                RpcKind::AppendEntries => "raft_append",
                RpcKind::Heartbeat => "raft_heartbeat",
                RpcKind::Vote => "raft_vote",
                RpcKind::InstallSnapshot => "raft_snapshot",
                RpcKind::ClientWrite => "raft_write",
            },
            Self::RaftAnswer(_) => "raft_answer",
            Self::Direct { .. } => "direct",
            Self::DirectResult { .. } => "direct_result",
            Self::UserRenamed { .. } => "user_renamed",
            Self::PresenceDelta { .. } => "presence_delta",
            Self::PresenceDigest { .. } => "presence_digest",
            Self::PresenceAsk { .. } => "presence_ask",
            Self::PresenceState { .. } => "presence_state",
            Self::PresenceTyping { .. } => "presence_typing",
            Self::UserCall { .. } => "user_call",
            Self::UserCallResult { .. } => "user_call_result",
        }
    }
}

/// Why an envelope was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("envelope of {0} bytes is over the {MAX_ENVELOPE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("wire version {0} is not {WIRE_VERSION}")]
    Version(u16),
}

/// The first byte of a frame of this format. A frame of wire version 3 or older is
/// JSON and begins with `{`: told apart by this byte, and refused by its version.
const FRAME_MAGIC: u8 = 0xB7;

/// An envelope as it travels: Raft bodies (nearly all traffic, and what carries bytes)
/// in postcard, every other body as its JSON inside (they carry protocol types whose
/// optional fields only a self-describing format can skip; they are rare).
#[derive(Serialize)]
struct PackedRef<'a> {
    from: &'a str,
    inc: u64,
    body: PackedBodyRef<'a>,
}

#[derive(Serialize)]
enum PackedBodyRef<'a> {
    RaftCall(&'a RaftCall),
    RaftAnswer(&'a RaftAnswer),
    Json(Bytes),
}

#[derive(Deserialize)]
struct Packed {
    from: String,
    inc: u64,
    body: PackedBody,
}

#[derive(Deserialize)]
enum PackedBody {
    RaftCall(RaftCall),
    RaftAnswer(RaftAnswer),
    Json(Bytes),
}

/// Serialises an envelope (once; [`seal`] makes a frame of it per receiver).
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    let body = match &envelope.body {
        Body::RaftCall(call) => PackedBodyRef::RaftCall(call),
        Body::RaftAnswer(answer) => PackedBodyRef::RaftAnswer(answer),
        // Serialising these types cannot fail (string keys only).
        other => PackedBodyRef::Json(Bytes(serde_json::to_vec(other).unwrap_or_default())),
    };
    let packed = PackedRef {
        from: &envelope.from,
        inc: envelope.inc,
        body,
    };
    // Nor can postcard fail on them (no maps with non-string keys, no unknown
    // lengths); never panic on it.
    postcard::to_stdvec(&packed).unwrap_or_default()
}

/// The frame for one receiver: the format's first byte, the wire version, the sender
/// key that receiver issued us (empty for a `SenderKey` offer; only its hex digits are
/// kept) and the encoded envelopes, each after its length. The frame is what
/// ractor_cluster carries. The format lets several envelopes share a frame; nodes send one per
/// frame (batching them was measured and not kept: docs/cluster.md, "The cluster wire").
pub fn seal(key: &str, envelopes: &[&[u8]]) -> Vec<u8> {
    let key: Vec<u8> = key
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .take(255)
        .collect();
    let body: usize = envelopes.iter().map(|e| e.len() + 5).sum();
    let mut frame = Vec::with_capacity(4 + key.len() + body);
    frame.push(FRAME_MAGIC);
    frame.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    frame.push(key.len() as u8);
    frame.extend_from_slice(&key);
    for envelope in envelopes {
        let mut len = envelope.len() as u64;
        // The length as a LEB128 varint (postcard's own).
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                frame.push(byte);
                break;
            }
            frame.push(byte | 0x80);
        }
        frame.extend_from_slice(envelope);
    }
    frame
}

/// A decoded frame: the key it carries and its envelopes, in the order sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub key: String,
    pub envelopes: Vec<Envelope>,
}

/// Decodes and checks a frame (size, version, shape; not yet its key).
pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let malformed = |why: &str| WireError::Malformed(why.to_owned());
    match bytes.first() {
        Some(&FRAME_MAGIC) => {}
        // Wire version 3 and older: JSON with the version first.
        Some(b'{') => {
            #[derive(Deserialize)]
            struct VersionOnly {
                v: u16,
            }
            let old: VersionOnly =
                serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
            return Err(WireError::Version(old.v));
        }
        _ => return Err(malformed("not a cluster frame")),
    }
    let version = bytes
        .get(1..3)
        .map(|v| u16::from_le_bytes([v[0], v[1]]))
        .ok_or_else(|| malformed("frame ends in its header"))?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let key_len = *bytes
        .get(3)
        .ok_or_else(|| malformed("frame ends in its header"))? as usize;
    let key = bytes
        .get(4..4 + key_len)
        .ok_or_else(|| malformed("frame ends in its key"))?;
    if !key.iter().all(u8::is_ascii_hexdigit) {
        return Err(malformed("the key is not hex"));
    }
    let key = String::from_utf8_lossy(key).into_owned();
    let mut rest = &bytes[4 + key_len..];
    let mut envelopes = Vec::new();
    while !rest.is_empty() {
        let (len, after) = varint(rest).ok_or_else(|| malformed("bad envelope length"))?;
        if len > after.len() {
            return Err(malformed("frame ends in an envelope"));
        }
        let (envelope, next) = after.split_at(len);
        envelopes.push(unpack(envelope)?);
        rest = next;
    }
    if envelopes.is_empty() {
        return Err(malformed("frame without an envelope"));
    }
    Ok(Frame { key, envelopes })
}

/// A LEB128 varint at the start of `bytes` (at most 64 bits) and what follows it.
fn varint(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut value: u64 = 0;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((usize::try_from(value).ok()?, &bytes[i + 1..]));
        }
    }
    None
}

fn unpack(bytes: &[u8]) -> Result<Envelope, WireError> {
    let packed: Packed =
        postcard::from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    let body = match packed.body {
        PackedBody::RaftCall(call) => Body::RaftCall(call),
        PackedBody::RaftAnswer(answer) => Body::RaftAnswer(answer),
        PackedBody::Json(json) => {
            serde_json::from_slice(&json.0).map_err(|e| WireError::Malformed(e.to_string()))?
        }
    };
    Ok(Envelope {
        from: packed.from,
        inc: packed.inc,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(body: Body) -> Envelope {
        Envelope {
            from: "a".into(),
            inc: 7,
            body,
        }
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn sealed(envelope: &Envelope) -> Vec<u8> {
        seal(KEY, &[&encode(envelope)])
    }

    fn frame(envelope: Envelope) -> Frame {
        Frame {
            key: KEY.into(),
            envelopes: vec![envelope],
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn round_trips() {
        let bodies = vec![
            Body::Ping {
                sent_at: 1,
                view: 2,
                peers: vec![PeerAddr {
                    name: "b".into(),
                    inc: 3,
                    addr: "127.0.0.1:4372".into(),
                    http: "127.0.0.1:8082".into(),
                }],
                nodes: 9,
            },
            Body::Direct {
                req: 4,
                to: "bob".into(),
                frame: "{}".into(),
            },
            Body::UserRenamed {
                user: UserInfo {
                    id: "bob".into(),
                    name: "Bob".into(),
                },
            },
        ];
        for body in bodies {
            let sent = envelope(body);
            assert_eq!(decode(&sealed(&sent)), Ok(frame(sent)));
        }
    }

    #[test]
    fn user_calls_round_trip_and_merge() {
        let calls = [
            UserCall::Disconnect {
                code: 4010,
                reason: "banned".into(),
            },
            UserCall::Join {
                room: "lobby".into(),
            },
            UserCall::Leave {
                room: "lobby".into(),
            },
            UserCall::Connections,
        ];
        for call in calls {
            let sent = envelope(Body::UserCall {
                req: 3,
                user: "bob".into(),
                call,
            });
            assert_eq!(decode(&sealed(&sent)), Ok(frame(sent)));
        }
        let here = UserCallResult {
            affected: 1,
            connections: vec![ConnectionInfo {
                node: "a".into(),
                session: "s1".into(),
                rooms: vec!["lobby".into()],
                connected_at: 5,
            }],
            refused: None,
        };
        let sent = envelope(Body::UserCallResult {
            req: 3,
            result: here.clone(),
        });
        // Bodies other than Raft's travel as JSON inside the frame.
        assert!(contains(
            &sealed(&sent),
            br#"{"t":"user_call_result","req":3,"result":{"affected":1,"connections":[{"node":"a""#
        ));
        assert_eq!(decode(&sealed(&sent)), Ok(frame(sent)));
        // The first refusal stays; counts and connections add up.
        let mut total = UserCallResult::default();
        total.merge(here.clone());
        total.merge(UserCallResult {
            affected: 0,
            connections: Vec::new(),
            refused: Some(ErrorBody::new(
                crate::protocol::ErrorCode::TooManyRooms,
                "full",
            )),
        });
        total.merge(UserCallResult {
            affected: 2,
            connections: Vec::new(),
            refused: Some(ErrorBody::new(crate::protocol::ErrorCode::NotJoined, "no")),
        });
        assert_eq!(total.affected, 3);
        assert_eq!(total.connections, here.connections);
        assert_eq!(
            total.refused.map(|e| e.code),
            Some(crate::protocol::ErrorCode::TooManyRooms)
        );
        // An answer without the optional fields still decodes.
        let bare = br#"{"t":"user_call_result","req":1,"result":{"affected":0}}"#;
        let packed = postcard::to_stdvec(&PackedRef {
            from: "a",
            inc: 1,
            body: PackedBodyRef::Json(Bytes(bare.to_vec())),
        })
        .unwrap();
        assert!(decode(&seal("", &[&packed])).is_ok());
    }

    #[test]
    fn raft_bodies_travel_as_raw_bytes() {
        let payload: Vec<u8> = (0..=255).collect();
        let call = Body::RaftCall(RaftCall {
            shard: 3,
            from: 11,
            target: 12,
            corr: 99,
            kind: RpcKind::AppendEntries,
            payload: Bytes(payload.clone()),
        });
        let bytes = sealed(&envelope(call.clone()));
        assert!(contains(&bytes, &payload), "the payload as is, not base64");
        assert!(bytes.len() < payload.len() + 64, "{} bytes", bytes.len());
        assert_eq!(
            decode(&bytes).map(|f| f.envelopes),
            Ok(vec![envelope(call)])
        );
        for result in [
            Ok(Bytes(vec![7; 40])),
            Err("shard 3 does not run here".into()),
        ] {
            let answer = envelope(Body::RaftAnswer(RaftAnswer { corr: 5, result }));
            assert_eq!(decode(&sealed(&answer)), Ok(frame(answer)));
        }
    }

    #[test]
    fn a_frame_carries_its_key_and_several_envelopes_in_order() {
        let first = envelope(Body::Pong { echo: 1, view: 2 });
        let second = envelope(Body::RaftAnswer(RaftAnswer {
            corr: 9,
            result: Ok(Bytes(vec![1; 300])),
        }));
        let third = envelope(Body::Leaving {});
        let (a, b, c) = (encode(&first), encode(&second), encode(&third));
        let bytes = seal(KEY, &[&a, &b, &c]);
        assert_eq!(bytes[0], FRAME_MAGIC);
        assert_eq!(&bytes[1..3], &WIRE_VERSION.to_le_bytes());
        assert_eq!(bytes[3] as usize, KEY.len());
        assert_eq!(&bytes[4..4 + KEY.len()], KEY.as_bytes());
        assert_eq!(
            decode(&bytes),
            Ok(Frame {
                key: KEY.into(),
                envelopes: vec![first.clone(), second, third],
            })
        );
        // A key offer is sealed with no key; nothing but hex digits is ever written.
        let offer = seal("", &[&a]);
        assert_eq!(decode(&offer).map(|f| f.key), Ok(String::new()));
        let odd = seal("\"}, \"x", &[&a]);
        assert_eq!(decode(&odd).map(|f| f.key), Ok(String::new()));
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let good = sealed(&envelope(Body::RaftAnswer(RaftAnswer {
            corr: 1,
            result: Ok(Bytes(vec![5; 20])),
        })));
        assert!(decode(&good).is_ok());
        for bad in [
            &b""[..],
            b"\xff\x00",
            &[FRAME_MAGIC],
            &[FRAME_MAGIC, 4],
            &[FRAME_MAGIC, 4, 0],
            &[FRAME_MAGIC, 4, 0, 5, b'a'],
            &[FRAME_MAGIC, 4, 0, 0],
            &[FRAME_MAGIC, 4, 0, 1, b'z', 0],
            &[
                FRAME_MAGIC,
                4,
                0,
                0,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0x01,
            ],
            &[FRAME_MAGIC, 4, 0, 0, 40, 1, 2],
        ] {
            assert!(
                matches!(decode(bad), Err(WireError::Malformed(_))),
                "{bad:?}"
            );
        }
        // Every truncation of a good frame is an error, and so is every single flipped
        // byte that makes it undecodable (none panics).
        for end in 0..good.len() {
            assert!(decode(&good[..end]).is_err(), "cut at {end}");
        }
        for at in 0..good.len() {
            let mut flipped = good.clone();
            flipped[at] ^= 0xff;
            let _ = decode(&flipped);
        }
        // A JSON body that is not one of ours.
        let packed = postcard::to_stdvec(&PackedRef {
            from: "a",
            inc: 1,
            body: PackedBodyRef::Json(Bytes(br#"{"t":"nope"}"#.to_vec())),
        })
        .unwrap();
        assert!(matches!(
            decode(&seal("", &[&packed])),
            Err(WireError::Malformed(_))
        ));
        // Older wire versions (JSON, `v` first) and a future one are told by version.
        assert_eq!(
            decode(br#"{"v":3,"key":"","env":{"from":"a","inc":1,"body":{"t":"pong","echo":1,"view":1}}}"#),
            Err(WireError::Version(3))
        );
        assert_eq!(
            decode(br#"{"v":2,"from":"a","inc":1,"body":{"t":"pong","echo":1,"view":1}}"#),
            Err(WireError::Version(2))
        );
        let mut future = good.clone();
        future[1..3].copy_from_slice(&5u16.to_le_bytes());
        assert_eq!(decode(&future), Err(WireError::Version(5)));
    }
}
