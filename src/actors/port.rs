//! The port between the actors and the cluster: the only way a Room reaches the
//! room logs and the presence of other nodes.
//!
//! `actors/` defines these traits and never imports `cluster/`; `cluster/` implements
//! them (the Raft shard host for [`RoomLog`], the presence tracker for
//! [`PresencePort`]) and calls the Room actors back with the messages listed below.
//! The in-process test tier implements them too (several nodes in one process).
//!
//! What the implementations send back to a Room (through the room directory of
//! [`super::NodeContext`]):
//! - committed messages of the room, in log order, through
//!   [`super::RoomDirectory::deliver`]: `RoomMessage::Committed` while the node's
//!   delivery backlog has room for them, else one `RoomMessage::Behind`
//!   (room/backlog.rs). A Room delivers each once, in `seq` order; on a gap (a
//!   message whose seq is not the next one) or `Behind` it catches up with
//!   [`RoomLog::read`] first.
//! - `RoomMessage::Reread`: this node's copy of the log jumped (a snapshot was
//!   installed); the Room catches up with [`RoomLog::read`].
//! - `RoomMessage::RemotePresence(changes)`: other nodes' members changed (absolute
//!   connection counts per node; 0 means gone from that node).
//! - `RoomMessage::RemoteTyping(user)`: a member on another node is typing.

use crate::protocol::{ChatMessage, ErrorBody, MessageData, UserInfo};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed future, as the port's async calls return.
pub type PortFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A message to order in a room's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    pub room: String,
    /// The message id (a UUIDv7), stamped by the Room so that it knows its own
    /// message when the log delivers it (a `publish` with `except_sender`).
    pub id: String,
    pub from: UserInfo,
    /// The content as the room's behaviour left it.
    pub content: String,
    /// The publish's structured data (protocol v1 `publish.data`), as sent.
    pub data: Option<MessageData>,
    /// The client's key for retries (protocol v1 `publish.idempotency_key`): a second
    /// append with the same key in the same room answers the first one's id and seq.
    pub idempotency_key: Option<String>,
}

/// A committed append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub id: String,
    pub seq: u64,
    pub ts: u64,
    /// True when the key was seen: these are the original message's id, seq and ts.
    pub duplicate: bool,
}

/// The committed messages of a room as this node holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRead {
    /// The room's last committed seq applied on this node (0: no message yet).
    pub seq: u64,
    /// The held messages after the point asked for, oldest first.
    pub messages: Vec<ChatMessage>,
    /// True when some messages after that point are no longer held.
    pub gap: bool,
}

/// The room logs: ordering, and this node's copy of what is committed.
pub trait RoomLog: Send + Sync + 'static {
    /// Orders `append` in its room's log; resolves once it is committed (held by a
    /// majority of the room's shard), or with `unavailable` after a bounded wait.
    fn append(&self, append: Append) -> PortFuture<Result<Appended, ErrorBody>>;

    /// The room's committed messages applied on this node after seq `after` (every
    /// held one when None), and its seq. Never blocks on the network.
    fn read(&self, room: &str, after: Option<u64>) -> LogRead;

    /// Why rooms cannot be ordered from this node right now (some shard has no known
    /// leader, or this node reaches no majority of its voters), for readiness; None
    /// when they can.
    fn unready(&self) -> Option<String> {
        None
    }

    /// Why `room` cannot be ordered from this node right now (its shard has no leader,
    /// or this node reaches no majority of its voters), for a join to refuse with
    /// `unavailable`; None when it can.
    fn unavailable(&self, _room: &str) -> Option<String> {
        None
    }

    /// Whether this node's copy of `room`'s log can trail what is committed (it does
    /// not lead the room's shard): a join resuming past the copy waits for it then.
    fn may_trail(&self, _room: &str) -> bool {
        false
    }

    /// Stops the logs (the node is stopping): nothing is appended afterwards.
    fn shutdown(&self) -> PortFuture<()> {
        Box::pin(async {})
    }
}

/// One member on another node, as a change or as a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMember {
    pub node: String,
    pub user: UserInfo,
    /// The user's connections to the room on `node` (0: gone from there).
    pub connections: u32,
}

/// Presence across nodes: each node is the authority for its own connections.
pub trait PresencePort: Send + Sync + 'static {
    /// This node's connections of `user` in `room` changed to `connections` (also
    /// called with the new name after a rename).
    fn local(&self, room: &str, user: &UserInfo, connections: u32);

    /// Every other node's members of `room` as this node last heard.
    fn remote(&self, room: &str) -> Vec<RemoteMember>;

    /// A member here is typing in `room`: tell the nodes that hold members of it.
    fn typing(&self, room: &str, user: &UserInfo);

    /// Every room that other nodes hold members of, as this node last heard (the
    /// server API's room list); none for a node alone.
    fn remote_rooms(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Presence of a node alone: nobody else to tell, nobody else to hear.
pub struct SoloPresence;

impl PresencePort for SoloPresence {
    fn local(&self, _room: &str, _user: &UserInfo, _connections: u32) {}

    fn remote(&self, _room: &str) -> Vec<RemoteMember> {
        Vec::new()
    }

    fn typing(&self, _room: &str, _user: &UserInfo) {}
}

/// Both halves of the port, as the node context holds them.
#[derive(Clone)]
pub struct Ports {
    pub log: Arc<dyn RoomLog>,
    pub presence: Arc<dyn PresencePort>,
}
