//! Every message that crosses nodes, in one place.
//!
//! A message is an [`Envelope`] (sender's node name and incarnation) around a
//! [`Body`], serialised as JSON, and sealed into a frame with the wire version and the
//! sender key the receiver issued to the sender (sender_keys.rs):
//! `{"v":3,"key":"…","env":{…}}`. The frame is the `Vec<u8>` payload of the one
//! cluster-visible actor message (`EndpointMessage::Frame`). An envelope is encoded
//! once and sealed per receiver. Decoding returns a `Result`: malformed or unexpected
//! traffic is logged and dropped by the receiver and never panics an actor (ractor's
//! own `BytesConvertable` decoding would).
//!
//! Versioning: [`WIRE_VERSION`] is bumped when a change is not backwards compatible.
//! Adding a variant or an optional field (`#[serde(default)]`) is compatible; renaming
//! one is not. A node drops envelopes of another version and logs it.

use super::tracker::{Entry, KeyRange};
use crate::protocol::{ConnectionInfo, ErrorBody, UserInfo};
use serde::{Deserialize, Serialize};

/// The version of this wire format.
pub const WIRE_VERSION: u16 = 3;

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
            Vec::<u8>::deserialize(deserializer).map(Bytes)
        }
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

/// Serialises an envelope (once; [`seal`] makes a frame of it per receiver).
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    // Serialising these types cannot fail (string keys only); never panic on it.
    serde_json::to_vec(envelope).unwrap_or_default()
}

/// The frame for one receiver: the wire version, the sender key that receiver issued
/// us (empty for a `SenderKey` offer), and the encoded envelope.
pub fn seal(key: &str, envelope: &[u8]) -> Vec<u8> {
    // A key is hex digits (sender_keys.rs): nothing in it needs escaping.
    let mut frame = Vec::with_capacity(envelope.len() + key.len() + 32);
    frame.extend_from_slice(format!("{{\"v\":{WIRE_VERSION},\"key\":\"").as_bytes());
    frame.extend(key.bytes().filter(u8::is_ascii_hexdigit));
    frame.extend_from_slice(b"\",\"env\":");
    frame.extend_from_slice(envelope);
    frame.push(b'}');
    frame
}

/// A decoded frame: the key it carries and its envelope.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Frame {
    pub key: String,
    #[serde(rename = "env")]
    pub envelope: Envelope,
}

/// Decodes and checks a frame (size, version, shape; not yet its key).
pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    #[derive(Deserialize)]
    struct VersionOnly {
        v: u16,
    }
    let version: VersionOnly =
        serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if version.v != WIRE_VERSION {
        return Err(WireError::Version(version.v));
    }
    serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))
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
        seal(KEY, &encode(envelope))
    }

    fn frame(envelope: Envelope) -> Frame {
        Frame {
            key: KEY.into(),
            envelope,
        }
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
        let text = String::from_utf8(sealed(&sent)).unwrap();
        assert!(
            text.contains(r#""t":"user_call_result","req":3,"result":{"affected":1,"connections":[{"node":"a""#),
            "{text}"
        );
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
        // An older node's answer without the optional fields still decodes.
        let bare = br#"{"v":3,"key":"","env":{"from":"a","inc":1,"body":{"t":"user_call_result","req":1,"result":{"affected":0}}}}"#;
        assert!(decode(bare).is_ok());
    }

    #[test]
    fn raft_bodies_round_trip_with_their_bytes_as_base64() {
        let call = Body::RaftCall(RaftCall {
            shard: 3,
            from: 11,
            target: 12,
            corr: 99,
            kind: RpcKind::AppendEntries,
            payload: Bytes(vec![0, 1, 2, 255]),
        });
        let bytes = sealed(&envelope(call.clone()));
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"AAEC/w==\""), "{text}");
        assert_eq!(decode(&bytes).map(|f| f.envelope.body), Ok(call));
        for result in [
            Ok(Bytes(vec![7; 40])),
            Err("shard 3 does not run here".into()),
        ] {
            let answer = envelope(Body::RaftAnswer(RaftAnswer { corr: 5, result }));
            assert_eq!(decode(&sealed(&answer)), Ok(frame(answer)));
        }
        let bad = text.replace("AAEC/w==", "not base64!");
        assert!(matches!(
            decode(bad.as_bytes()),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn a_frame_carries_its_key_beside_the_envelope() {
        let sent = envelope(Body::Pong { echo: 1, view: 2 });
        let text = String::from_utf8(sealed(&sent)).unwrap();
        assert!(
            text.starts_with(&format!("{{\"v\":3,\"key\":\"{KEY}\",\"env\":{{")),
            "{text}"
        );
        // A key offer is sealed with no key; nothing but hex digits is ever written.
        let offer = seal("", &encode(&sent));
        assert_eq!(decode(&offer).map(|f| f.key), Ok(String::new()));
        let odd = seal("\"}, \"x", &encode(&sent));
        assert_eq!(decode(&odd).map(|f| f.key), Ok(String::new()));
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        assert!(matches!(decode(b"\xff\x00"), Err(WireError::Malformed(_))));
        assert!(matches!(decode(b"{}"), Err(WireError::Malformed(_))));
        assert!(matches!(
            decode(br#"{"v":3,"key":"","env":{"from":"a","inc":1,"body":{"t":"nope"}}}"#),
            Err(WireError::Malformed(_))
        ));
        // The previous wire version (no key, `v` in the envelope) is told by its version.
        assert_eq!(
            decode(br#"{"v":2,"from":"a","inc":1,"body":{"t":"pong","echo":1,"view":1}}"#),
            Err(WireError::Version(2))
        );
    }
}
