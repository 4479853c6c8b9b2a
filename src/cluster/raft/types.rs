//! The Raft type configuration of a shard and the application's commands.
//!
//! Owns: [`ShardTc`] (what openraft is instantiated with), the node identity carried
//! in memberships ([`ShardNode`]), the commands a shard's log carries
//! ([`ShardCommand`], proposed as one [`ShardBatch`]) and what applying them answers
//! ([`ShardOutcome`]). Pure serde types: no I/O, no actors.
//!
//! Everything a command's apply needs is inside the command: the proposer stamps the
//! message id (a UUIDv7) and the time before proposing, so every replica that applies
//! the same entry computes the same state, whenever it applies it.

use crate::protocol::UserInfo;
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// A cluster node's id: the same in every shard's Raft group.
pub type NodeId = u64;

/// The number of a shard, `0..cluster.shards`.
pub type ShardId = u32;

openraft::declare_raft_types!(
    /// The openraft type configuration of every shard's Raft group.
    pub ShardTc:
        D = ShardBatch,
        R = ShardOutcome,
        NodeId = NodeId,
        Node = ShardNode,
        Entry = openraft::Entry<ShardTc>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A member of a shard's Raft group as its membership records it: the node's name
/// (`node.name`), which is how the transport finds its Endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardNode {
    /// The node's `node.name`.
    pub name: String,
}

impl ShardNode {
    /// The member called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

/// One command of a shard's log. Applied in log order on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardCommand {
    /// A chat message for `room`; it gets the room's next `seq` when applied, unless
    /// its idempotency key was seen (then the original is answered).
    Publish {
        room: String,
        from: UserInfo,
        content: String,
        /// The message id (a UUIDv7), stamped by the proposer.
        id: String,
        /// Milliseconds since the Unix epoch, stamped by the proposer.
        ts: u64,
        /// The publisher's key for retries: a second publish with the same key in the
        /// same room answers the first one's id, seq and ts.
        idempotency_key: Option<String>,
    },
    /// The cluster's node list from now on (proposed to shard 0, and read from shard
    /// 0 only: every node follows shard 0, so every node applies it). Each shard's leader then moves its group to
    /// the voters the new list places there (raft/host.rs, `reconcile`).
    SetNodes { nodes: Vec<String> },
    /// A [`ShardCommand::Publish`] with structured data (protocol v1 `publish.data`):
    /// `data` is its compact JSON text (postcard cannot carry a `serde_json::Value`).
    /// A variant of its own, last, so that the entries logged before it existed
    /// still decode, and a publish without data is logged as before.
    PublishData {
        room: String,
        from: UserInfo,
        content: String,
        data: String,
        id: String,
        ts: u64,
        idempotency_key: Option<String>,
    },
    /// `node` now holds (`present`) or no longer holds a connection of `user` in
    /// `room`: the room-wide member list the `join`, `leave`, `room_created` and
    /// `room_emptied` webhook events are derived from (raft/members.rs). Counts only
    /// while `epoch` is the node's current one there.
    Member {
        node: String,
        epoch: u64,
        room: String,
        user: UserInfo,
        present: bool,
        ts: u64,
    },
    /// `node` starts over in this shard's member lists with `epoch` (greater than any
    /// before): its earlier entries are dropped, and it sends its members again. At
    /// its start, and after the shard's leader declared it gone.
    NodeRejoin { node: String, epoch: u64, ts: u64 },
    /// The shard's leader saw `node` declared down: its entries made in `epoch` are
    /// dropped (its members leave), unless it has rejoined since.
    NodeGone { node: String, epoch: u64, ts: u64 },
    /// The shard's leader had every webhook event of the shard stamped before `ts`
    /// delivered (room_log.rs): a new leader sends again from there, not from a
    /// fixed window.
    WebhookMark { ts: u64 },
}

impl ShardCommand {
    /// About how many bytes the command takes encoded (its strings plus a margin), for
    /// bounding a batch in bytes.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Self::Publish {
                room,
                from,
                content,
                id,
                idempotency_key,
                ..
            } => {
                room.len()
                    + from.id.len()
                    + from.name.len()
                    + content.len()
                    + id.len()
                    + idempotency_key.as_ref().map_or(0, String::len)
                    + 32
            }
            Self::PublishData {
                room,
                from,
                content,
                data,
                id,
                idempotency_key,
                ..
            } => {
                room.len()
                    + from.id.len()
                    + from.name.len()
                    + content.len()
                    + data.len()
                    + id.len()
                    + idempotency_key.as_ref().map_or(0, String::len)
                    + 40
            }
            Self::SetNodes { nodes } => nodes.iter().map(|n| n.len() + 8).sum::<usize>() + 16,
            Self::Member {
                node, room, user, ..
            } => node.len() + room.len() + user.id.len() + user.name.len() + 32,
            Self::NodeRejoin { node, .. } | Self::NodeGone { node, .. } => node.len() + 24,
            Self::WebhookMark { .. } => 16,
        }
    }
}

/// The application data of one log entry: the commands the proposer gathered while
/// its previous write was in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardBatch(pub Vec<ShardCommand>);

/// What applying one log entry answers: one outcome per command of its batch, in
/// order (none for a blank or membership entry, or for an entry applied before).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOutcome(pub Vec<CommandOutcome>);

/// What became of one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// Ordered: the message is the room's `seq`-th.
    Published { id: String, seq: u64, ts: u64 },
    /// Its idempotency key was seen in this room: these are the ORIGINAL message's
    /// id, seq and ts, and nothing new was added.
    Duplicate { id: String, seq: u64, ts: u64 },
    /// Not applied; nothing changed.
    Refused { reason: Refusal },
    /// The node list is now the one proposed.
    NodesSet,
    /// A member-list command (`Member`, `NodeRejoin`, `NodeGone`) was applied
    /// (`applied`), or left nothing changed because its epoch is not the node's
    /// current one.
    MembersNoted { applied: bool },
    /// The webhook mark is at least the one proposed.
    Marked,
}

/// Why a command was refused. The proposer checks these before proposing; apply
/// checks again because a log entry is also peer input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Not a room name a client could join ([`crate::protocol::RoomName::parse`]).
    BadRoom,
    /// The idempotency key is empty or longer than [`MAX_IDEMPOTENCY_KEY_BYTES`].
    BadIdempotencyKey,
    /// A node list that cannot be placed (empty, a name twice, not a node name).
    BadNodes,
    /// `PublishData`'s `data` is not one JSON value other than null.
    BadData,
    /// A member-list command naming no node, or a user id or name out of bounds.
    BadMember,
}

/// Longest idempotency key a command may carry, in bytes: the client protocol's
/// bound (`publish.idempotency_key`), checked again on apply because a log entry is
/// peer input too.
pub use crate::protocol::MAX_IDEMPOTENCY_KEY_BYTES;
