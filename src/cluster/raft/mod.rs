//! Raft for the room logs (issue #9): rooms hash onto shards, and each shard is one
//! openraft group (one `openraft::Raft<ShardTc>` per shard in the process). This
//! module holds the storage half; the network, shard placement and the wiring into
//! the Room actors come on top of it.
//!
//! - [`types`]: the type configuration [`ShardTc`], the node identity in
//!   memberships, the commands a shard's log carries and what applying them answers.
//! - [`state_machine`]: the rooms of a shard (seq, bounded history, idempotency
//!   keys), applied by a pure core, snapshotted, and wrapped for openraft; committed
//!   messages leave through an [`ApplySink`], and the node reads rooms through a
//!   [`ShardReader`].
//! - [`history_budget`]: what the rooms' history costs against `rooms.history_bytes`,
//!   and the seq floors of rooms the shard forgot.
//! - [`members`]: the shard's room-wide member lists (part of its state), where the
//!   membership webhook events come from, numbered alike on every replica.
//! - [`host`]: every shard's Raft on this node: bootstrap, learners, and the
//!   proposers (batching, forwarding to the leader, retry until a deadline).
//! - [`local_link`]: the in-process network (several nodes in one process) that the
//!   in-process test tier runs on.
//! - [`network`]: openraft's RPCs over the cluster's one Endpoint (no second port).
//! - [`log_store`]: the node's one log database ([`LogDb`]: `memory` or durable redb,
//!   with the `storage.fsync` policy) and each shard's Raft log, vote, committed
//!   index and last snapshot in it ([`ShardLogStore`]).
//! - [`log_tail`]: each shard's newest entries in memory, so the reads that follow an
//!   append (apply, replication) skip the disk thread.
//!
//! The node starts it through cluster/room_log.rs (the actors' port).

pub mod history_budget;
pub mod host;
pub mod local_link;
pub mod log_store;
pub mod log_tail;
pub mod members;
pub mod network;
pub mod state_machine;
pub mod types;

pub use log_store::{LogDb, ShardLogStore};
pub use state_machine::{ApplySink, Committed, Retention, ShardReader, ShardStateMachine};
pub use types::{
    CommandOutcome, ShardBatch, ShardCommand, ShardId, ShardNode, ShardOutcome, ShardTc,
};
