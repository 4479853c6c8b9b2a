//! A shard's state machine: the rooms whose logs the shard orders.
//!
//! Owns: [`ShardState`] (every room of the shard: its last `seq`, its bounded
//! history and its recent idempotency keys) and how one log entry changes it
//! ([`ShardState::apply`], pure: an entry in, an outcome and the committed messages
//! out); snapshots of that state; and the openraft glue around it
//! ([`ShardStateMachine`], [`ShardSnapshotBuilder`]). It knows nothing of sockets,
//! actors or the network: what was committed leaves through an [`ApplySink`] given at
//! construction, and the node reads rooms through a [`ShardReader`].
//!
//! Determinism: every replica applies the same entries in the same order and must
//! reach the same state, so apply reads no clock and no randomness. Message ids and
//! timestamps come stamped in the command, and the age bound of the history is
//! measured against the newest message's `ts`, not the wall clock. The [`Retention`]
//! must be the same on every node (`rooms.history`): with different values the
//! replicas agree on every `seq` but keep different windows of history.
//!
//! Replays: openraft re-applies `(last_applied, committed]` at start, and an entry at
//! or below `last_applied` is skipped (an empty outcome, nothing delivered), so a
//! message is handed to the sink once per log index.
//!
//! Joining at exactly N: the node reads a room with [`ShardReader::join`] (seq N and
//! the messages up to N, under one lock) and then delivers every [`Committed`] with
//! `seq > N`. Apply updates the state before it hands the batch to the sink, so a
//! committed message is either in what `join` read or reaches the sink after it;
//! the Room actor drops those with `seq <= N` and no message falls in between.
//!
//! Snapshots: [`ShardState`] in postcard behind a one-byte format version. Measured
//! against serde_json by `snapshot_format_figures` (ignored; run it with
//! `cargo nextest run --lib snapshot_format_figures --run-ignored only --no-capture`)
//! for 64 rooms of 100 messages of ~300 bytes, each with an idempotency key, in a
//! debug build on this 2-core machine under load: postcard 2.38 MB, encoded in
//! 87 ms and decoded in 161 ms; serde_json 3.10 MB, 1.12 s and 481 ms. A snapshot
//! travels in `snapshot_max_chunk_size` chunks, and its size is bounded by the
//! history bound (and the number of rooms), not by a frame.

use super::history_budget::{key_cost, message_cost, room_cost, SeqFloors};
use super::log_store::{ShardLogStore, StoredSnapshot};
use super::members::{At, NodeEpoch, RoomEvent, ShardMembers};
use super::types::{
    CommandOutcome, NodeId, Refusal, ShardBatch, ShardCommand, ShardId, ShardNode, ShardOutcome,
    ShardTc, MAX_IDEMPOTENCY_KEY_BYTES,
};
use crate::protocol::{ChatMessage, MessageData, RoomName, UserInfo};
use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The first byte of every snapshot: the version of its encoding.
/// 4: the member lists and the webhook mark; 3: messages carry `data`; 2: the node
/// list; 1 read as well.
/// 5: the seq floors of forgotten rooms;
const SNAPSHOT_FORMAT: u8 = 5;

/// How much of each room a shard keeps. The same on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Messages each room keeps (`rooms.history`); at least 1.
    pub history: usize,
    /// Messages older than this many ms than the room's newest are dropped; 0 keeps
    /// them until `history` pushes them out.
    pub max_age_ms: u64,
    /// Idempotency keys each room remembers besides those of the messages it
    /// holds: a retry of an older publish is ordered again.
    pub idempotency_keys: usize,
    /// The bytes the shard's rooms may hold, as [`super::history_budget`] counts them (the
    /// shard's share of `rooms.history_bytes`); 0: no bound. Past it the shard
    /// forgets its oldest messages first (see [`ShardState::apply_entry`]).
    pub shard_bytes: u64,
}

impl Retention {
    /// Keeps `history` messages per room, with no age bound, and as many keys again.
    pub fn messages(history: usize) -> Self {
        Self {
            history: history.max(1),
            max_age_ms: 0,
            idempotency_keys: history.max(1),
            shard_bytes: 0,
        }
    }
}

/// What a committed message is, for the node to deliver to its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The index of the log entry that carried it (deliveries are keyed by it).
    pub log_index: u64,
    pub room: String,
    pub message: ChatMessage,
}

/// Where committed messages go: the node casts them to its Room actors. Called on
/// the state machine's task once per applied batch, in log order, so it must not
/// block (no awaiting a socket; `cast`/`try_send` only).
pub trait ApplySink: Send + Sync + 'static {
    /// The messages committed by one `apply` call, in log order; never empty.
    fn committed(&self, shard: ShardId, committed: Vec<Committed>);

    /// What one `apply` call committed: its messages and its member lists' events
    /// (raft/members.rs), each in log order, not both empty. By default the messages
    /// go to [`ApplySink::committed`] and the events nowhere.
    fn applied(&self, shard: ShardId, committed: Vec<Committed>, _events: Vec<RoomEvent>) {
        if !committed.is_empty() {
            self.committed(shard, committed);
        }
    }

    /// The state was replaced by a snapshot from the leader: rooms may have jumped
    /// ahead, so their readers should read them again.
    fn snapshot_installed(&self, _shard: ShardId) {}

    /// Rooms of the shard forgot their oldest messages to stay within the shard's
    /// bytes (each [`Trimmed`] once per apply call, after its messages): copies of
    /// their history held elsewhere on the node should forget them too.
    fn trimmed(&self, _shard: ShardId, _trimmed: Vec<Trimmed>) {}
}

impl<F> ApplySink for F
where
    F: Fn(ShardId, Vec<Committed>) + Send + Sync + 'static,
{
    fn committed(&self, shard: ShardId, committed: Vec<Committed>) {
        self(shard, committed)
    }
}

/// A publish answered before: what its retry gets back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Original {
    key: String,
    id: String,
    seq: u64,
    ts: u64,
}

/// The idempotency keys a room remembers, oldest first, with a map to find them.
/// Only the list is serialised; the map is rebuilt from it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "VecDeque<Original>", into = "VecDeque<Original>")]
struct IdempotencyKeys {
    order: VecDeque<Original>,
    by_key: HashMap<String, usize>,
    /// How many were ever pushed out of `order`: positions in `by_key` are absolute.
    dropped: usize,
}

/// Two sets of keys are equal when they remember the same keys in the same order
/// (the map's positions depend on how many were dropped before a restore).
impl PartialEq for IdempotencyKeys {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}

impl Eq for IdempotencyKeys {}

impl From<VecDeque<Original>> for IdempotencyKeys {
    fn from(order: VecDeque<Original>) -> Self {
        let by_key = order
            .iter()
            .enumerate()
            .map(|(at, original)| (original.key.clone(), at))
            .collect();
        Self {
            order,
            by_key,
            dropped: 0,
        }
    }
}

impl From<IdempotencyKeys> for VecDeque<Original> {
    fn from(keys: IdempotencyKeys) -> Self {
        keys.order
    }
}

impl IdempotencyKeys {
    fn get(&self, key: &str) -> Option<&Original> {
        let at = self.by_key.get(key)?;
        self.order.get(at.checked_sub(self.dropped)?)
    }

    /// Remembers `original`, forgetting the oldest past `bound`; returns the bytes
    /// it forgot.
    fn remember(&mut self, original: Original, bound: usize) -> u64 {
        self.by_key
            .insert(original.key.clone(), self.dropped + self.order.len());
        self.order.push_back(original);
        let mut freed = 0;
        while self.order.len() > bound {
            freed += self.forget_oldest();
        }
        freed
    }

    /// Forgets the keys of the messages up to `seq`; returns the bytes it forgot.
    fn forget_through(&mut self, seq: u64) -> u64 {
        let mut freed = 0;
        while self.order.front().is_some_and(|o| o.seq <= seq) {
            freed += self.forget_oldest();
        }
        freed
    }

    fn forget_oldest(&mut self) -> u64 {
        let Some(old) = self.order.pop_front() else {
            return 0;
        };
        self.dropped += 1;
        // A key is only pushed when absent, so this entry is the old one.
        self.by_key.remove(&old.key);
        key_cost(&old.key, &old.id)
    }

    /// The bytes the keys are counted at.
    fn bytes(&self) -> u64 {
        self.order.iter().map(|o| key_cost(&o.key, &o.id)).sum()
    }
}

/// The fields of a publish command, borrowed, with its data parsed.
struct PublishParts<'a> {
    room: &'a String,
    from: &'a UserInfo,
    content: &'a String,
    data: Option<MessageData>,
    id: &'a String,
    ts: u64,
    idempotency_key: &'a Option<String>,
}

/// A held message as a snapshot stores it (format 3): a [`ChatMessage`] with its
/// `data` as JSON text, every field always written (postcard is not
/// self-describing, so the JSON frames' "absent when none" cannot apply here).
#[derive(Serialize, Deserialize)]
struct StoredMessage {
    room: String,
    id: String,
    seq: u64,
    from: UserInfo,
    content: Arc<str>,
    ts: u64,
    data: Option<String>,
}

/// A held message as snapshot formats 1 and 2 stored it (no data).
#[derive(Deserialize)]
struct StoredMessageV2 {
    room: String,
    id: String,
    seq: u64,
    from: UserInfo,
    content: String,
    ts: u64,
}

/// Serialises a room's history as [`StoredMessage`]s.
mod stored_history {
    use super::{ChatMessage, MessageData, StoredMessage};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::VecDeque;

    pub fn serialize<S: Serializer>(
        history: &VecDeque<ChatMessage>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(history.iter().map(|m| StoredMessage {
            room: m.room.clone(),
            id: m.id.clone(),
            seq: m.seq,
            from: m.from.clone(),
            content: m.content.clone(),
            ts: m.ts,
            data: m.data.as_ref().map(|d| d.as_json_text().to_owned()),
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<VecDeque<ChatMessage>, D::Error> {
        let stored = Vec::<StoredMessage>::deserialize(deserializer)?;
        stored
            .into_iter()
            .map(|m| {
                let data = match m.data {
                    None => None,
                    Some(text) => Some(
                        MessageData::from_json_text(&text)
                            .map_err(serde::de::Error::custom)?
                            .ok_or_else(|| serde::de::Error::custom("stored data is null"))?,
                    ),
                };
                Ok(ChatMessage {
                    room: m.room,
                    id: m.id,
                    seq: m.seq,
                    from: m.from,
                    content: m.content,
                    ts: m.ts,
                    data,
                })
            })
            .collect()
    }
}

/// One room's log as snapshot formats 1 and 2 stored it.
#[derive(Deserialize)]
struct RoomLogV2 {
    seq: u64,
    history: VecDeque<StoredMessageV2>,
    keys: IdempotencyKeys,
}

impl From<RoomLogV2> for RoomLog {
    fn from(old: RoomLogV2) -> Self {
        Self {
            seq: old.seq,
            history: old
                .history
                .into_iter()
                .map(|m| ChatMessage {
                    room: m.room,
                    id: m.id,
                    seq: m.seq,
                    from: m.from,
                    content: m.content.into(),
                    ts: m.ts,
                    data: None,
                })
                .collect(),
            keys: old.keys,
            // Recounted with the state that holds it (`ShardState::recount`).
            bytes: 0,
        }
    }
}

/// One room's log as the shard keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomLog {
    /// The last sequence number handed out; 0 before the first message.
    seq: u64,
    /// The newest messages, oldest first, at most `Retention::history`.
    #[serde(with = "stored_history")]
    history: VecDeque<ChatMessage>,
    keys: IdempotencyKeys,
    /// What `history` and `keys` are counted at ([`super::history_budget`]); not stored,
    /// recounted when a snapshot is read.
    #[serde(skip)]
    bytes: u64,
}

impl RoomLog {
    /// A room with no entry yet, whose next message is numbered past `floor`.
    fn starting_at(floor: u64) -> Self {
        Self {
            seq: floor,
            ..Self::default()
        }
    }

    /// Counts `bytes` again from what the room holds.
    fn recount(&mut self) {
        self.bytes = self.history.iter().map(message_cost).sum::<u64>() + self.keys.bytes();
    }

    /// Forgets the oldest held message and the keys up to it; returns its seq and
    /// the bytes freed.
    fn forget_oldest(&mut self) -> Option<(u64, u64)> {
        let message = self.history.pop_front()?;
        let freed = message_cost(&message) + self.keys.forget_through(message.seq);
        self.bytes = self.bytes.saturating_sub(freed);
        Some((message.seq, freed))
    }

    /// The last sequence number handed out.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The messages held, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &ChatMessage> {
        self.history.iter()
    }

    fn publish(
        &mut self,
        message: ChatMessage,
        key: Option<String>,
        retention: &Retention,
    ) -> CommandOutcome {
        if let Some(original) = key.as_deref().and_then(|key| self.keys.get(key)) {
            return CommandOutcome::Duplicate {
                id: original.id.clone(),
                seq: original.seq,
                ts: original.ts,
            };
        }
        self.seq += 1;
        let mut message = message;
        message.seq = self.seq;
        let outcome = CommandOutcome::Published {
            id: message.id.clone(),
            seq: message.seq,
            ts: message.ts,
        };
        let mut added = message_cost(&message);
        let mut freed = 0;
        if let Some(key) = key {
            let bound = retention.history.saturating_add(retention.idempotency_keys);
            added += key_cost(&key, &message.id);
            freed += self.keys.remember(
                Original {
                    key,
                    id: message.id.clone(),
                    seq: message.seq,
                    ts: message.ts,
                },
                bound,
            );
        }
        let newest_ts = message.ts;
        self.history.push_back(message);
        while self.history.len() > retention.history.max(1) {
            freed += self.history.pop_front().as_ref().map_or(0, message_cost);
        }
        if retention.max_age_ms > 0 {
            let oldest_kept = newest_ts.saturating_sub(retention.max_age_ms);
            while self.history.front().is_some_and(|m| m.ts < oldest_kept) {
                freed += self.history.pop_front().as_ref().map_or(0, message_cost);
            }
        }
        self.bytes = (self.bytes + added).saturating_sub(freed);
        outcome
    }
}

/// Everything a shard's log has built: what a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    /// The last log entry applied.
    pub last_applied: Option<LogId<NodeId>>,
    /// The last membership applied.
    pub last_membership: StoredMembership<NodeId, ShardNode>,
    rooms: BTreeMap<String, RoomLog>,
    /// The cluster's node list as last set at runtime (`SetNodes`, shard 0 only);
    /// None: the configured one holds.
    nodes: Option<Vec<String>>,
    /// The rooms' member lists (raft/members.rs).
    members: ShardMembers,
    /// Every webhook event of the shard stamped before this (ms) was delivered, as
    /// a leader last recorded (`WebhookMark`); 0: never recorded.
    webhook_mark: u64,
    /// Where the rooms the shard forgot left their seqs (format 5).
    floors: SeqFloors,
    /// What the rooms hold, as [`super::history_budget`] counts it; not stored, recounted
    /// when a snapshot is read.
    #[serde(skip)]
    held_bytes: u64,
}

/// What applying one entry gave: its outcome, the messages and the member events it
/// committed, and the rooms whose oldest messages it forgot.
#[derive(Debug, Default)]
pub struct Applied {
    pub outcome: ShardOutcome,
    pub committed: Vec<Committed>,
    pub events: Vec<RoomEvent>,
    pub trimmed: Vec<Trimmed>,
}

/// A room whose oldest messages the shard forgot to stay within its bytes: it now
/// holds none below `first_held` (a forgotten room: none at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trimmed {
    pub room: String,
    pub first_held: u64,
    /// How many messages went.
    pub messages: u64,
}

/// A node list a `SetNodes` may carry: some nodes, each a node name, none twice.
pub fn valid_node_list(nodes: &[String]) -> bool {
    let distinct: std::collections::BTreeSet<&String> = nodes.iter().collect();
    !nodes.is_empty()
        && distinct.len() == nodes.len()
        && nodes.iter().all(|n| crate::config::is_node_name(n))
}

/// The snapshot layout of format 1 (before runtime node lists), read on upgrade.
#[derive(Deserialize)]
struct ShardStateV1 {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, ShardNode>,
    rooms: BTreeMap<String, RoomLogV2>,
}

/// A snapshot of format 4: no seq floors.
#[derive(Deserialize)]
struct ShardStateV4 {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, ShardNode>,
    rooms: BTreeMap<String, RoomLog>,
    nodes: Option<Vec<String>>,
    members: ShardMembers,
    webhook_mark: u64,
}

/// A snapshot of format 3: no member lists.
#[derive(Deserialize)]
struct ShardStateV3 {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, ShardNode>,
    rooms: BTreeMap<String, RoomLog>,
    nodes: Option<Vec<String>>,
}

/// A snapshot of format 2: messages without data.
#[derive(Deserialize)]
struct ShardStateV2 {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, ShardNode>,
    rooms: BTreeMap<String, RoomLogV2>,
    nodes: Option<Vec<String>>,
}

/// A join's read of a room: where the client starts and what it gets first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The room's seq when read: deliver committed messages with a greater seq.
    pub seq: u64,
    /// The held messages after `since` (all held ones for a fresh join), oldest first.
    pub messages: Vec<ChatMessage>,
    /// True when some messages after `since` are no longer held.
    pub gap: bool,
}

impl ShardState {
    /// A room's log, if it ever had a message.
    pub fn room(&self, room: &str) -> Option<&RoomLog> {
        self.rooms.get(room)
    }

    /// The node list set at runtime, if one was.
    pub fn nodes(&self) -> Option<&[String]> {
        self.nodes.as_deref()
    }

    /// The rooms with a log, by name.
    pub fn rooms(&self) -> impl Iterator<Item = (&String, &RoomLog)> {
        self.rooms.iter()
    }

    /// The rooms' member lists.
    pub fn members(&self) -> &ShardMembers {
        &self.members
    }

    /// [`ShardState::apply_entry`] without the member events.
    pub fn apply(
        &mut self,
        entry: &Entry<ShardTc>,
        retention: &Retention,
    ) -> (ShardOutcome, Vec<Committed>) {
        let applied = self.apply_entry(entry, retention);
        (applied.outcome, applied.committed)
    }

    /// Applies one log entry: exactly one outcome per entry (openraft requires it),
    /// with one [`CommandOutcome`] per command of a normal entry, and the messages and
    /// member events it committed. An entry at or below `last_applied` changes nothing.
    pub fn apply_entry(&mut self, entry: &Entry<ShardTc>, retention: &Retention) -> Applied {
        if self.last_applied.is_some_and(|last| entry.log_id <= last) {
            return Applied::default();
        }
        self.last_applied = Some(entry.log_id);
        match &entry.payload {
            EntryPayload::Blank => Applied::default(),
            EntryPayload::Membership(membership) => {
                self.last_membership =
                    StoredMembership::new(Some(entry.log_id), membership.clone());
                Applied::default()
            }
            EntryPayload::Normal(ShardBatch(commands)) => {
                let mut applied = Applied {
                    outcome: ShardOutcome(Vec::with_capacity(commands.len())),
                    ..Applied::default()
                };
                for command in commands {
                    let outcome =
                        self.apply_command(entry.log_id.index, command, retention, &mut applied);
                    applied.outcome.0.push(outcome);
                }
                if retention.shard_bytes > 0 && self.held_bytes > retention.shard_bytes {
                    applied.trimmed = self.forget_oldest(retention.shard_bytes);
                }
                applied
            }
        }
    }

    /// What the rooms hold, as [`super::history_budget`] counts it.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// Counts `held_bytes` (and each room's bytes) again from what is held.
    fn recount(&mut self) {
        let mut held = 0;
        for (name, log) in &mut self.rooms {
            log.recount();
            held += room_cost(name) + log.bytes;
        }
        self.held_bytes = held;
    }

    /// Brings what the rooms hold down to 7/8 of `budget` (so a shard under steady
    /// pressure does this once per eighth of its budget, not on every entry):
    /// - first it forgets the rooms that hold no message and have no member (their
    ///   seq goes to their bucket's floor, [`SeqFloors`]);
    /// - then the oldest held messages of the shard by `ts` (ties by room name),
    ///   each with the idempotency keys up to it, forgetting a room that this
    ///   empties and that has no member.
    ///
    /// Pure and deterministic: every replica forgets the same at the same entry.
    fn forget_oldest(&mut self, budget: u64) -> Vec<Trimmed> {
        let target = budget - budget / 8;
        let mut trimmed: BTreeMap<String, Trimmed> = BTreeMap::new();
        let idle: Vec<String> = self
            .rooms
            .iter()
            .filter(|(name, log)| log.history.is_empty() && !self.members.holds(name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in idle {
            self.forget_room(&name, &mut trimmed);
        }
        let mut oldest: BinaryHeap<Reverse<(u64, String)>> = self
            .rooms
            .iter()
            .filter_map(|(name, log)| log.history.front().map(|m| Reverse((m.ts, name.clone()))))
            .collect();
        while self.held_bytes > target {
            let Some(Reverse((_, name))) = oldest.pop() else {
                break;
            };
            let Some(log) = self.rooms.get_mut(&name) else {
                continue;
            };
            let Some((seq, freed)) = log.forget_oldest() else {
                continue;
            };
            self.held_bytes = self.held_bytes.saturating_sub(freed);
            let next = log.history.front().map(|m| m.ts);
            let entry = trimmed.entry(name.clone()).or_insert_with(|| Trimmed {
                room: name.clone(),
                first_held: 0,
                messages: 0,
            });
            entry.first_held = seq + 1;
            entry.messages += 1;
            match next {
                Some(ts) => oldest.push(Reverse((ts, name))),
                None if !self.members.holds(&name) => self.forget_room(&name, &mut trimmed),
                None => {}
            }
        }
        trimmed.into_values().collect()
    }

    /// Forgets `room` (it holds no message): its seq goes to its floor.
    fn forget_room(&mut self, room: &str, trimmed: &mut BTreeMap<String, Trimmed>) {
        let Some(log) = self.rooms.remove(room) else {
            return;
        };
        self.floors.raise(room, log.seq);
        self.held_bytes = self.held_bytes.saturating_sub(room_cost(room) + log.bytes);
        let entry = trimmed.entry(room.to_owned()).or_insert_with(|| Trimmed {
            room: room.to_owned(),
            first_held: 0,
            messages: 0,
        });
        entry.first_held = log.seq + 1;
    }

    /// A room's last message seq (its floor when the shard holds no entry for it).
    fn message_seq(&self, room: &str) -> u64 {
        self.rooms
            .get(room)
            .map_or_else(|| self.floors.of(room), RoomLog::seq)
    }

    fn apply_command(
        &mut self,
        log_index: u64,
        command: &ShardCommand,
        retention: &Retention,
        applied: &mut Applied,
    ) -> CommandOutcome {
        let committed = &mut applied.committed;
        let events = &mut applied.events;
        let noted = |result: Result<bool, super::members::BadMember>| match result {
            Ok(applied) => CommandOutcome::MembersNoted { applied },
            Err(_) => CommandOutcome::Refused {
                reason: Refusal::BadMember,
            },
        };
        match command {
            ShardCommand::Member {
                node,
                epoch,
                room,
                user,
                present,
                ts,
            } => {
                let message_seq = self.message_seq(room);
                noted(self.members.member(
                    node,
                    *epoch,
                    room,
                    user,
                    *present,
                    &At { ts: *ts },
                    message_seq,
                    events,
                ))
            }
            ShardCommand::NodeRejoin { node, epoch, ts } => {
                let (rooms, floors) = (&self.rooms, &self.floors);
                let message_seq = |room: &str| {
                    rooms
                        .get(room)
                        .map_or_else(|| floors.of(room), RoomLog::seq)
                };
                noted(
                    self.members
                        .rejoin(node, *epoch, &At { ts: *ts }, &message_seq, events),
                )
            }
            ShardCommand::WebhookMark { ts } => {
                self.webhook_mark = self.webhook_mark.max(*ts);
                CommandOutcome::Marked
            }
            ShardCommand::NodeGone { node, epoch, ts } => {
                let (rooms, floors) = (&self.rooms, &self.floors);
                let message_seq = |room: &str| {
                    rooms
                        .get(room)
                        .map_or_else(|| floors.of(room), RoomLog::seq)
                };
                noted(
                    self.members
                        .gone(node, *epoch, &At { ts: *ts }, &message_seq, events),
                )
            }
            ShardCommand::SetNodes { nodes } => {
                if !valid_node_list(nodes) {
                    return CommandOutcome::Refused {
                        reason: Refusal::BadNodes,
                    };
                }
                let mut sorted = nodes.clone();
                sorted.sort();
                self.nodes = Some(sorted);
                CommandOutcome::NodesSet
            }
            ShardCommand::Publish {
                room,
                from,
                content,
                id,
                ts,
                idempotency_key,
            } => self.apply_publish(
                log_index,
                PublishParts {
                    room,
                    from,
                    content,
                    data: None,
                    id,
                    ts: *ts,
                    idempotency_key,
                },
                retention,
                committed,
            ),
            ShardCommand::PublishData {
                room,
                from,
                content,
                data,
                id,
                ts,
                idempotency_key,
            } => {
                // Peer input: the data must be one JSON value, as the proposer checked.
                let Ok(Some(data)) = MessageData::from_json_text(data) else {
                    return CommandOutcome::Refused {
                        reason: Refusal::BadData,
                    };
                };
                self.apply_publish(
                    log_index,
                    PublishParts {
                        room,
                        from,
                        content,
                        data: Some(data),
                        id,
                        ts: *ts,
                        idempotency_key,
                    },
                    retention,
                    committed,
                )
            }
        }
    }

    fn apply_publish(
        &mut self,
        log_index: u64,
        publish: PublishParts<'_>,
        retention: &Retention,
        committed: &mut Vec<Committed>,
    ) -> CommandOutcome {
        let PublishParts {
            room,
            from,
            content,
            data,
            id,
            ts,
            idempotency_key,
        } = publish;
        if RoomName::parse(room).is_err() {
            return CommandOutcome::Refused {
                reason: Refusal::BadRoom,
            };
        }
        if idempotency_key
            .as_ref()
            .is_some_and(|key| key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES)
        {
            return CommandOutcome::Refused {
                reason: Refusal::BadIdempotencyKey,
            };
        }
        if !self.rooms.contains_key(room) {
            let log = RoomLog::starting_at(self.floors.of(room));
            self.rooms.insert(room.clone(), log);
            self.held_bytes += room_cost(room);
        }
        let Some(log) = self.rooms.get_mut(room) else {
            return CommandOutcome::Refused {
                reason: Refusal::BadRoom,
            };
        };
        let before = log.bytes;
        let message = ChatMessage {
            room: room.clone(),
            id: id.clone(),
            seq: 0,
            from: from.clone(),
            content: Arc::from(content.as_str()),
            ts,
            data,
        };
        let outcome = log.publish(message, idempotency_key.clone(), retention);
        self.held_bytes = (self.held_bytes + log.bytes).saturating_sub(before);
        if let CommandOutcome::Published { seq, .. } = &outcome {
            if let Some(message) = log.history.back().filter(|m| m.seq == *seq) {
                committed.push(Committed {
                    log_index,
                    room: room.clone(),
                    message: message.clone(),
                });
            }
        }
        outcome
    }

    /// Reads a room for a join: its seq, and the held messages after `since` (every
    /// held one when `since` is None), with `gap` when some of those are gone.
    pub fn join(&self, room: &str, since: Option<u64>) -> Joined {
        let Some(log) = self.rooms.get(room) else {
            // No message held: the room never had one, or the shard forgot it at
            // its floor.
            let seq = self.floors.of(room);
            return Joined {
                seq,
                messages: Vec::new(),
                gap: since.is_some_and(|since| since > 0 && since != seq),
            };
        };
        let Some(since) = since else {
            return Joined {
                seq: log.seq,
                messages: log.history.iter().cloned().collect(),
                gap: false,
            };
        };
        if since > log.seq {
            // The client saw numbers this room never handed out (another cluster's
            // room of the same name): everything held is new to it.
            return Joined {
                seq: log.seq,
                messages: log.history.iter().cloned().collect(),
                gap: true,
            };
        }
        let oldest_held = log.history.front().map_or(log.seq + 1, |m| m.seq);
        Joined {
            seq: log.seq,
            messages: log
                .history
                .iter()
                .filter(|m| m.seq > since)
                .cloned()
                .collect(),
            gap: since < log.seq && oldest_held > since + 1,
        }
    }

    /// Up to `limit` held messages with a seq below `before`, oldest first.
    pub fn history_page(&self, room: &str, before: Option<u64>, limit: usize) -> Vec<ChatMessage> {
        let Some(log) = self.rooms.get(room) else {
            return Vec::new();
        };
        let before = before.unwrap_or(u64::MAX);
        let older: Vec<&ChatMessage> = log.history.iter().filter(|m| m.seq < before).collect();
        let start = older.len().saturating_sub(limit);
        older[start..].iter().map(|m| (*m).clone()).collect()
    }

    /// The state as snapshot bytes.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut bytes = vec![SNAPSHOT_FORMAT];
        bytes.extend(postcard::to_allocvec(self)?);
        Ok(bytes)
    }

    /// A state from snapshot bytes; an error for bytes of another format or
    /// truncated or corrupt ones.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotDecodeError> {
        let mut state = Self::decode_format(bytes)?;
        state.recount();
        Ok(state)
    }

    fn decode_format(bytes: &[u8]) -> Result<Self, SnapshotDecodeError> {
        match bytes.split_first() {
            Some((&SNAPSHOT_FORMAT, body)) => {
                postcard::from_bytes(body).map_err(SnapshotDecodeError::Corrupt)
            }
            Some((4, body)) => {
                let old: ShardStateV4 =
                    postcard::from_bytes(body).map_err(SnapshotDecodeError::Corrupt)?;
                Ok(Self {
                    last_applied: old.last_applied,
                    last_membership: old.last_membership,
                    rooms: old.rooms,
                    nodes: old.nodes,
                    members: old.members,
                    webhook_mark: old.webhook_mark,
                    ..Self::default()
                })
            }
            Some((3, body)) => {
                let old: ShardStateV3 =
                    postcard::from_bytes(body).map_err(SnapshotDecodeError::Corrupt)?;
                Ok(Self {
                    last_applied: old.last_applied,
                    last_membership: old.last_membership,
                    rooms: old.rooms,
                    nodes: old.nodes,
                    ..Self::default()
                })
            }
            Some((2, body)) => {
                let old: ShardStateV2 =
                    postcard::from_bytes(body).map_err(SnapshotDecodeError::Corrupt)?;
                Ok(Self {
                    last_applied: old.last_applied,
                    last_membership: old.last_membership,
                    rooms: old.rooms.into_iter().map(|(k, v)| (k, v.into())).collect(),
                    nodes: old.nodes,
                    ..Self::default()
                })
            }
            Some((1, body)) => {
                let old: ShardStateV1 =
                    postcard::from_bytes(body).map_err(SnapshotDecodeError::Corrupt)?;
                Ok(Self {
                    last_applied: old.last_applied,
                    last_membership: old.last_membership,
                    rooms: old.rooms.into_iter().map(|(k, v)| (k, v.into())).collect(),
                    nodes: None,
                    ..Self::default()
                })
            }
            Some((&other, _)) => Err(SnapshotDecodeError::Format(other)),
            None => Err(SnapshotDecodeError::Empty),
        }
    }
}

/// Why snapshot bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotDecodeError {
    #[error("the snapshot is empty")]
    Empty,
    #[error("snapshot format {0} is not one this build reads (it reads {SNAPSHOT_FORMAT})")]
    Format(u8),
    #[error("the snapshot is corrupt: {0}")]
    Corrupt(postcard::Error),
}

/// Read access to a shard's rooms for the node, shared with its state machine.
/// Each call holds the lock only while it copies what it returns.
#[derive(Debug, Clone, Default)]
pub struct ShardReader {
    state: Arc<RwLock<ShardState>>,
    /// Messages forgotten for the bytes bound, counted as they apply.
    forgotten: Arc<AtomicU64>,
}

impl ShardReader {
    fn read(&self) -> RwLockReadGuard<'_, ShardState> {
        // A writer that panicked left a whole state behind (apply mutates a room
        // only after every check), so reading past the poison is sound.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, ShardState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A room's last seq (0 if it never had a message; its floor if the shard
    /// forgot it).
    pub fn seq(&self, room: &str) -> u64 {
        self.read().message_seq(room)
    }

    /// What the shard's rooms hold, as [`super::history_budget`] counts it.
    pub fn held_bytes(&self) -> u64 {
        self.read().held_bytes
    }

    /// How many messages this node's copy of the shard forgot to stay within
    /// `Retention::shard_bytes` since the node started.
    pub fn forgotten(&self) -> u64 {
        self.forgotten.load(Ordering::Relaxed)
    }

    /// See [`ShardState::join`].
    pub fn join(&self, room: &str, since: Option<u64>) -> Joined {
        self.read().join(room, since)
    }

    /// See [`ShardState::history_page`].
    pub fn history_page(&self, room: &str, before: Option<u64>, limit: usize) -> Vec<ChatMessage> {
        self.read().history_page(room, before, limit)
    }

    /// The held messages of every room stamped at or after `since_ms` (each room's
    /// oldest first): what a new leader sends as `publish` webhook events again.
    pub fn recent(&self, since_ms: u64) -> Vec<ChatMessage> {
        let state = self.read();
        state
            .rooms()
            .flat_map(|(_, log)| log.history().filter(|m| m.ts >= since_ms).cloned())
            .collect()
    }

    /// The last log entry applied.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.read().last_applied
    }

    /// The webhook mark a leader last recorded (None: never).
    pub fn webhook_mark(&self) -> Option<u64> {
        Some(self.read().webhook_mark).filter(|&mark| mark > 0)
    }

    /// The epoch `node`'s member entries count in here (None: it never rejoined).
    pub fn member_epoch(&self, node: &str) -> Option<NodeEpoch> {
        self.read().members.epoch(node)
    }

    /// The nodes whose member entries count now, with their epochs.
    pub fn member_nodes(&self) -> Vec<(String, u64)> {
        self.read().members.live_nodes()
    }

    /// The latest member events stamped at or after `since_ms`, oldest first: what a
    /// new leader sends again.
    pub fn recent_room_events(&self, since_ms: u64) -> Vec<RoomEvent> {
        self.read().members.recent(since_ms)
    }

    /// The node list set at runtime, if one was (shard 0).
    pub fn nodes(&self) -> Option<Vec<String>> {
        self.read().nodes().map(<[String]>::to_vec)
    }
}

/// A shard's openraft state machine: [`ShardState`] in memory behind a
/// [`ShardReader`], its last snapshot persisted in the node's log database.
pub struct ShardStateMachine {
    shard: ShardId,
    reader: ShardReader,
    retention: Retention,
    sink: Arc<dyn ApplySink>,
    snapshots: Arc<SnapshotSlot>,
}

/// Where a shard's last snapshot is kept, shared by the state machine (installs)
/// and its builders (which openraft runs on tasks of their own, so a build begun
/// before an install may finish after it).
struct SnapshotSlot {
    store: ShardLogStore,
    built: AtomicU64,
    /// The log id of the snapshot stored; saves are serialised by this lock.
    saved: tokio::sync::Mutex<Option<LogId<NodeId>>>,
}

impl SnapshotSlot {
    /// Stores `snapshot` unless the one stored is newer: a restart must never go back
    /// to a snapshot older than the log's purge point.
    async fn save(&self, snapshot: StoredSnapshot) -> Result<(), StorageError<NodeId>> {
        let mut saved = self.saved.lock().await;
        if *saved > snapshot.meta.last_log_id {
            return Ok(());
        }
        let last_log_id = snapshot.meta.last_log_id;
        self.store.save_snapshot(snapshot).await?;
        *saved = last_log_id;
        Ok(())
    }
}

impl ShardStateMachine {
    /// The state machine of `shard`, restored from the last snapshot `store` holds
    /// (openraft then re-applies the committed entries after it). Corrupt snapshot
    /// bytes are a StorageError.
    pub async fn open(
        shard: ShardId,
        retention: Retention,
        sink: Arc<dyn ApplySink>,
        store: ShardLogStore,
    ) -> Result<Self, StorageError<NodeId>> {
        let reader = ShardReader::default();
        let mut saved = None;
        if let Some(stored) = store.read_snapshot().await? {
            let state = decode_snapshot(&stored.meta, &stored.data)?;
            saved = stored.meta.last_log_id;
            *reader.write() = state;
        }
        Ok(Self {
            shard,
            reader,
            retention,
            sink,
            snapshots: Arc::new(SnapshotSlot {
                store,
                built: AtomicU64::new(0),
                saved: tokio::sync::Mutex::new(saved),
            }),
        })
    }

    /// Read access to the rooms, for the node.
    pub fn reader(&self) -> ShardReader {
        self.reader.clone()
    }
}

// openraft's own error type, which every caller returns as is.
#[allow(clippy::result_large_err)]
fn decode_snapshot(
    meta: &SnapshotMeta<NodeId, ShardNode>,
    data: &[u8],
) -> Result<ShardState, StorageError<NodeId>> {
    let state = ShardState::decode(data)
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
    if state.last_applied != meta.last_log_id {
        let e = SnapshotMismatch {
            meta: meta.last_log_id,
            state: state.last_applied,
        };
        return Err(StorageIOError::read_snapshot(Some(meta.signature()), &e).into());
    }
    Ok(state)
}

/// A snapshot whose bytes do not hold the state its metadata names.
#[derive(Debug, thiserror::Error)]
#[error("the snapshot's metadata is at {meta:?} but its state at {state:?}")]
struct SnapshotMismatch {
    meta: Option<LogId<NodeId>>,
    state: Option<LogId<NodeId>>,
}

impl RaftStateMachine<ShardTc> for ShardStateMachine {
    type SnapshotBuilder = ShardSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, ShardNode>), StorageError<NodeId>>
    {
        let state = self.reader.read();
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ShardOutcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<ShardTc>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        let mut committed = Vec::new();
        let mut events = Vec::new();
        let mut trimmed = Vec::new();
        {
            let mut state = self.reader.write();
            for entry in entries {
                let mut applied = state.apply_entry(&entry, &self.retention);
                outcomes.push(applied.outcome);
                committed.append(&mut applied.committed);
                events.append(&mut applied.events);
                trimmed.append(&mut applied.trimmed);
            }
        }
        // After the lock is released and before the next batch: in log order.
        if !committed.is_empty() || !events.is_empty() {
            self.sink.applied(self.shard, committed, events);
        }
        if !trimmed.is_empty() {
            let messages: u64 = trimmed.iter().map(|t| t.messages).sum();
            self.reader.forgotten.fetch_add(messages, Ordering::Relaxed);
            self.sink.trimmed(self.shard, trimmed);
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        ShardSnapshotBuilder {
            shard: self.shard,
            reader: self.reader.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ShardNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let state = decode_snapshot(meta, &data)?;
        // Persisted first: a crash after this line restarts from the new snapshot.
        self.snapshots
            .save(StoredSnapshot {
                meta: meta.clone(),
                data,
            })
            .await?;
        *self.reader.write() = state;
        self.sink.snapshot_installed(self.shard);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<ShardTc>>, StorageError<NodeId>> {
        Ok(self
            .snapshots
            .store
            .read_snapshot()
            .await?
            .map(|stored| Snapshot {
                meta: stored.meta,
                snapshot: Box::new(Cursor::new(stored.data)),
            }))
    }
}

/// Builds a snapshot of a shard's state and persists it as the shard's last.
pub struct ShardSnapshotBuilder {
    shard: ShardId,
    reader: ShardReader,
    snapshots: Arc<SnapshotSlot>,
}

impl RaftSnapshotBuilder<ShardTc> for ShardSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<ShardTc>, StorageError<NodeId>> {
        let (data, last_log_id, last_membership) = {
            let state = self.reader.read();
            let data = state
                .encode()
                .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
            (data, state.last_applied, state.last_membership.clone())
        };
        let built = self.snapshots.built.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match last_log_id {
            Some(id) => format!("shard{}-{}-{}-{built}", self.shard, id.leader_id, id.index),
            None => format!("shard{}-none-{built}", self.shard),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        self.snapshots
            .save(StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            })
            .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::UserInfo;
    use openraft::{CommittedLeaderId, Membership};
    use std::collections::BTreeSet;

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn publish(room: &str, id: &str, ts: u64, key: Option<&str>) -> ShardCommand {
        ShardCommand::Publish {
            room: room.to_owned(),
            from: UserInfo {
                id: "u1".to_owned(),
                name: "Ada".to_owned(),
            },
            content: format!("content of {id}"),
            id: id.to_owned(),
            ts,
            idempotency_key: key.map(str::to_owned),
        }
    }

    fn normal(index: u64, commands: Vec<ShardCommand>) -> Entry<ShardTc> {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(ShardBatch(commands)),
        }
    }

    fn blank(index: u64) -> Entry<ShardTc> {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Blank,
        }
    }

    fn membership(index: u64) -> Entry<ShardTc> {
        let voters = BTreeSet::from([1, 2, 3]);
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Membership(Membership::new(vec![voters], None)),
        }
    }

    fn seqs(state: &ShardState, room: &str) -> Vec<u64> {
        state
            .room(room)
            .map(|log| log.history().map(|m| m.seq).collect())
            .unwrap_or_default()
    }

    #[test]
    fn each_room_numbers_its_messages_from_one() {
        let mut state = ShardState::default();
        let retention = Retention::messages(10);
        let (outcome, committed) = state.apply(
            &normal(
                1,
                vec![
                    publish("a", "m1", 10, None),
                    publish("b", "m2", 11, None),
                    publish("a", "m3", 12, None),
                ],
            ),
            &retention,
        );
        assert_eq!(
            outcome.0,
            vec![
                CommandOutcome::Published {
                    id: "m1".into(),
                    seq: 1,
                    ts: 10
                },
                CommandOutcome::Published {
                    id: "m2".into(),
                    seq: 1,
                    ts: 11
                },
                CommandOutcome::Published {
                    id: "m3".into(),
                    seq: 2,
                    ts: 12
                },
            ]
        );
        let delivered: Vec<(u64, &str, u64)> = committed
            .iter()
            .map(|c| (c.log_index, c.room.as_str(), c.message.seq))
            .collect();
        assert_eq!(delivered, vec![(1, "a", 1), (1, "b", 1), (1, "a", 2)]);
        assert_eq!(&*committed[2].message.content, "content of m3");
        state.apply(&normal(2, vec![publish("a", "m4", 13, None)]), &retention);
        assert_eq!(seqs(&state, "a"), vec![1, 2, 3]);
        assert_eq!(state.room("b").map(RoomLog::seq), Some(1));
        assert_eq!(state.last_applied, Some(log_id(2)));
    }

    #[test]
    fn a_repeated_idempotency_key_answers_the_original() {
        let mut state = ShardState::default();
        let retention = Retention::messages(10);
        state.apply(
            &normal(1, vec![publish("a", "m1", 10, Some("k1"))]),
            &retention,
        );
        state.apply(&normal(2, vec![publish("a", "m2", 20, None)]), &retention);
        let (outcome, committed) = state.apply(
            &normal(
                3,
                vec![
                    publish("a", "retry", 30, Some("k1")),
                    // The same key in another room is another message.
                    publish("b", "m3", 31, Some("k1")),
                ],
            ),
            &retention,
        );
        assert_eq!(
            outcome.0,
            vec![
                CommandOutcome::Duplicate {
                    id: "m1".into(),
                    seq: 1,
                    ts: 10
                },
                CommandOutcome::Published {
                    id: "m3".into(),
                    seq: 1,
                    ts: 31
                },
            ]
        );
        assert_eq!(committed.len(), 1, "a duplicate is not delivered again");
        assert_eq!(seqs(&state, "a"), vec![1, 2]);
    }

    #[test]
    fn idempotency_keys_are_bounded_per_room() {
        let mut state = ShardState::default();
        let retention = Retention {
            history: 2,
            max_age_ms: 0,
            idempotency_keys: 1,
            shard_bytes: 0,
        };
        for i in 1..=4 {
            let key = format!("k{i}");
            state.apply(
                &normal(i, vec![publish("a", &format!("m{i}"), i, Some(&key))]),
                &retention,
            );
        }
        let keys = &state.room("a").map(|log| log.keys.order.len());
        assert_eq!(*keys, Some(3), "history 2 + 1 more key");
        // k2 is still remembered; k1 was forgotten, so its retry is a new message.
        let (outcome, _) = state.apply(
            &normal(
                5,
                vec![
                    publish("a", "x", 6, Some("k2")),
                    publish("a", "again", 5, Some("k1")),
                ],
            ),
            &retention,
        );
        assert_eq!(
            outcome.0,
            vec![
                CommandOutcome::Duplicate {
                    id: "m2".into(),
                    seq: 2,
                    ts: 2
                },
                CommandOutcome::Published {
                    id: "again".into(),
                    seq: 5,
                    ts: 5
                },
            ]
        );
    }

    #[test]
    fn history_keeps_the_newest_messages() {
        let mut state = ShardState::default();
        let retention = Retention::messages(3);
        for i in 1..=5 {
            state.apply(
                &normal(i, vec![publish("a", &format!("m{i}"), i, None)]),
                &retention,
            );
        }
        assert_eq!(seqs(&state, "a"), vec![3, 4, 5]);
        assert_eq!(state.room("a").map(RoomLog::seq), Some(5));
    }

    #[test]
    fn history_drops_messages_older_than_the_age_bound() {
        let mut state = ShardState::default();
        let retention = Retention {
            history: 100,
            max_age_ms: 1_000,
            idempotency_keys: 0,
            shard_bytes: 0,
        };
        state.apply(
            &normal(1, vec![publish("a", "m1", 10_000, None)]),
            &retention,
        );
        state.apply(
            &normal(2, vec![publish("a", "m2", 10_500, None)]),
            &retention,
        );
        state.apply(
            &normal(3, vec![publish("a", "m3", 11_000, None)]),
            &retention,
        );
        assert_eq!(seqs(&state, "a"), vec![1, 2, 3], "exactly 1 s old is kept");
        state.apply(
            &normal(4, vec![publish("a", "m4", 11_600, None)]),
            &retention,
        );
        assert_eq!(seqs(&state, "a"), vec![3, 4]);
        assert_eq!(
            state.room("a").map(RoomLog::seq),
            Some(4),
            "seq is unaffected"
        );
    }

    #[test]
    fn every_entry_gets_exactly_one_outcome() {
        let mut state = ShardState::default();
        let retention = Retention::messages(10);
        let (outcome, committed) = state.apply(&blank(1), &retention);
        assert_eq!((outcome, committed), (ShardOutcome::default(), Vec::new()));
        let (outcome, committed) = state.apply(&membership(2), &retention);
        assert_eq!((outcome, committed), (ShardOutcome::default(), Vec::new()));
        assert_eq!(state.last_membership.log_id(), &Some(log_id(2)));
        assert_eq!(state.last_applied, Some(log_id(2)));
        let (outcome, _) = state.apply(&normal(3, Vec::new()), &retention);
        assert_eq!(outcome, ShardOutcome::default());
        assert_eq!(state.last_applied, Some(log_id(3)));
    }

    #[tokio::test]
    async fn the_state_machine_answers_once_per_entry() {
        let db = super::super::log_store::LogDb::memory();
        let (sink, delivered) = recording_sink();
        let mut sm = ShardStateMachine::open(7, Retention::messages(10), sink, db.shard(7))
            .await
            .expect("open");
        let outcomes = sm
            .apply(vec![
                blank(1),
                membership(2),
                normal(3, vec![publish("a", "m1", 1, None)]),
            ])
            .await
            .expect("apply");
        assert_eq!(outcomes.len(), 3);
        assert_eq!(outcomes[2].0.len(), 1);
        let delivered = delivered.lock().expect("lock").clone();
        assert_eq!(delivered.len(), 1);
        assert_eq!(delivered[0].0, 7);
        assert_eq!(delivered[0].1[0].message.seq, 1);
    }

    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_one() {
        let db = super::super::log_store::LogDb::memory();
        let (sink, _) = recording_sink();
        let mut sm = ShardStateMachine::open(1, Retention::messages(10), sink, db.shard(1))
            .await
            .expect("open");
        sm.apply((1..=3).map(|i| normal(i, vec![publish("a", &format!("m{i}"), i, None)])))
            .await
            .expect("apply");
        // A build that read the state at 3 and finishes after a newer install.
        let mut late_builder = sm.get_snapshot_builder().await;
        let old = late_builder.build_snapshot().await.expect("build");
        let mut newer = ShardState::default();
        for i in 1..=9 {
            newer.apply(
                &normal(i, vec![publish("a", &format!("n{i}"), i, None)]),
                &Retention::messages(10),
            );
        }
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(9)),
            last_membership: StoredMembership::default(),
            snapshot_id: "from-the-leader".to_owned(),
        };
        let data = newer.encode().expect("encode");
        sm.install_snapshot(&meta, Box::new(Cursor::new(data)))
            .await
            .expect("install");
        sm.snapshots
            .save(StoredSnapshot {
                meta: old.meta,
                data: old.snapshot.into_inner(),
            })
            .await
            .expect("save");
        let current = sm
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("some");
        assert_eq!(current.meta.last_log_id, Some(log_id(9)));
        assert_eq!(sm.reader().seq("a"), 9);
    }

    #[test]
    fn entries_at_or_below_last_applied_are_skipped() {
        let mut state = ShardState::default();
        let retention = Retention::messages(10);
        state.apply(&normal(1, vec![publish("a", "m1", 1, None)]), &retention);
        state.apply(&normal(2, vec![publish("a", "m2", 2, None)]), &retention);
        for index in [1, 2] {
            let (outcome, committed) = state.apply(
                &normal(index, vec![publish("a", "again", 9, None)]),
                &retention,
            );
            assert_eq!(outcome, ShardOutcome::default());
            assert!(committed.is_empty());
        }
        assert_eq!(seqs(&state, "a"), vec![1, 2]);
        assert_eq!(state.last_applied, Some(log_id(2)));
    }

    #[test]
    fn bad_commands_are_refused_and_change_nothing() {
        let mut state = ShardState::default();
        let retention = Retention::messages(10);
        let long_key = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1);
        let (outcome, committed) = state.apply(
            &normal(
                1,
                vec![
                    publish("", "m1", 1, None),
                    publish("no spaces", "m2", 1, None),
                    publish("a", "m3", 1, Some(&long_key)),
                    publish("a", "m4", 1, Some("")),
                ],
            ),
            &retention,
        );
        let refused = |reason| CommandOutcome::Refused { reason };
        assert_eq!(
            outcome.0,
            vec![
                refused(Refusal::BadRoom),
                refused(Refusal::BadRoom),
                refused(Refusal::BadIdempotencyKey),
                refused(Refusal::BadIdempotencyKey),
            ]
        );
        assert!(committed.is_empty());
        assert_eq!(state.rooms().count(), 0);
    }

    #[test]
    fn a_join_reads_seq_and_history_that_meet_the_stream() {
        let mut state = ShardState::default();
        let retention = Retention::messages(3);
        for i in 1..=5 {
            state.apply(
                &normal(i, vec![publish("a", &format!("m{i}"), i, None)]),
                &retention,
            );
        }
        let fresh = state.join("a", None);
        assert_eq!((fresh.seq, fresh.gap), (5, false));
        assert_eq!(
            fresh.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let resumed = state.join("a", Some(3));
        assert_eq!(
            resumed.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert!(!resumed.gap);
        let behind = state.join("a", Some(1));
        assert!(behind.gap, "message 2 is gone");
        assert!(state.join("a", Some(5)).messages.is_empty());
        assert!(
            state.join("a", Some(9)).gap,
            "numbers this room never handed out"
        );
        assert_eq!(state.join("nowhere", None).seq, 0);
        let page = state.history_page("a", Some(5), 1);
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4]);
    }

    fn publish_data(room: &str, id: &str, ts: u64, data: &str) -> ShardCommand {
        ShardCommand::PublishData {
            room: room.to_owned(),
            from: UserInfo {
                id: "u1".to_owned(),
                name: "Ada".to_owned(),
            },
            content: String::new(),
            data: data.to_owned(),
            id: id.to_owned(),
            ts,
            idempotency_key: None,
        }
    }

    #[test]
    fn data_is_applied_held_and_kept_by_a_snapshot() {
        let mut state = ShardState::default();
        let retention = Retention::messages(10);
        let (outcome, committed) = state.apply(
            &normal(1, vec![publish_data("a", "m1", 1, r#"{"x":[1,"y"]}"#)]),
            &retention,
        );
        assert!(matches!(
            outcome.0[..],
            [CommandOutcome::Published { seq: 1, .. }]
        ));
        let data = committed[0].message.data.clone().expect("data delivered");
        assert_eq!(data.as_json_text(), r#"{"x":[1,"y"]}"#);
        state.apply(&normal(2, vec![publish("a", "m2", 2, None)]), &retention);
        let restored = ShardState::decode(&state.encode().expect("encode")).expect("decode");
        assert_eq!(restored, state);
        let held: Vec<_> = restored.join("a", None).messages;
        assert_eq!(held[0].data, Some(data));
        assert_eq!(held[1].data, None);
        // A log entry is peer input: data that is not JSON (or is null) is refused.
        for (index, bad) in (3..).zip(["{", "null", ""]) {
            let (outcome, committed) = state.apply(
                &normal(index, vec![publish_data("a", "m3", 3, bad)]),
                &retention,
            );
            assert_eq!(
                outcome.0,
                vec![CommandOutcome::Refused {
                    reason: Refusal::BadData
                }],
                "{bad:?}"
            );
            assert!(committed.is_empty());
        }
    }

    fn member(node: &str, epoch: u64, room: &str, user: &str, present: bool) -> ShardCommand {
        ShardCommand::Member {
            node: node.to_owned(),
            epoch,
            room: room.to_owned(),
            user: UserInfo {
                id: user.to_owned(),
                name: user.to_uppercase(),
            },
            present,
            ts: 50,
        }
    }

    /// The member commands change the lists in log order, their events carry the
    /// room's message seq, a snapshot keeps the lists, and a format 3 snapshot (no
    /// lists) is read with none.
    #[test]
    fn member_lists_follow_the_log_and_survive_a_snapshot() {
        let retention = Retention::messages(10);
        let mut state = ShardState::default();
        let rejoin = ShardCommand::NodeRejoin {
            node: "a".to_owned(),
            epoch: 7,
            ts: 40,
        };
        let applied = state.apply_entry(
            &normal(
                1,
                vec![
                    rejoin,
                    publish("r", "m1", 45, None),
                    member("a", 7, "r", "al", true),
                    member("a", 6, "r", "bo", true),
                    member("a", 7, "bad room", "al", true),
                ],
            ),
            &retention,
        );
        assert_eq!(
            applied.outcome.0[2..],
            [
                CommandOutcome::MembersNoted { applied: true },
                CommandOutcome::MembersNoted { applied: false },
                CommandOutcome::Refused {
                    reason: Refusal::BadMember
                },
            ]
        );
        assert_eq!(applied.committed.len(), 1);
        let kinds: Vec<(&str, u64, u64)> = applied
            .events
            .iter()
            .map(|e| (e.kind.as_str(), e.seq, e.message_seq))
            .collect();
        assert_eq!(kinds, [("room_created", 1, 1), ("join", 2, 1)]);
        // Replayed: nothing again.
        let again = state.apply_entry(
            &normal(1, vec![member("a", 7, "r", "cy", true)]),
            &retention,
        );
        assert!(again.events.is_empty());

        let restored = ShardState::decode(&state.encode().expect("encode")).expect("decode");
        assert_eq!(restored, state);
        assert_eq!(restored.members().users("r").len(), 1);
        let mut restored = restored;
        let gone = restored.apply_entry(
            &normal(
                2,
                vec![ShardCommand::NodeGone {
                    node: "a".to_owned(),
                    epoch: 7,
                    ts: 60,
                }],
            ),
            &retention,
        );
        let kinds: Vec<&str> = gone.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["leave", "room_emptied"]);
        // The webhook mark only moves forward, and a snapshot keeps it.
        let marks = vec![
            ShardCommand::WebhookMark { ts: 500 },
            ShardCommand::WebhookMark { ts: 300 },
        ];
        let marked = restored.apply_entry(&normal(3, marks), &retention);
        assert_eq!(
            marked.outcome.0,
            [CommandOutcome::Marked, CommandOutcome::Marked]
        );
        assert_eq!(restored.webhook_mark, 500);
        let decoded = ShardState::decode(&restored.encode().expect("encode")).expect("decode");
        assert_eq!(decoded.webhook_mark, 500);

        #[derive(Serialize)]
        struct V3<'a> {
            last_applied: Option<LogId<NodeId>>,
            last_membership: StoredMembership<NodeId, ShardNode>,
            rooms: &'a BTreeMap<String, RoomLog>,
            nodes: Option<Vec<String>>,
        }
        let mut bytes = vec![3];
        bytes.extend(
            postcard::to_allocvec(&V3 {
                last_applied: state.last_applied,
                last_membership: state.last_membership.clone(),
                rooms: &state.rooms,
                nodes: None,
            })
            .expect("encode"),
        );
        let old = ShardState::decode(&bytes).expect("a format 3 snapshot decodes");
        assert_eq!(old.rooms, state.rooms);
        assert_eq!(old.members(), &ShardMembers::default());
    }

    /// A snapshot written before messages had data (format 2) is still read.
    #[test]
    fn a_format_2_snapshot_is_read() {
        #[derive(Serialize)]
        struct OldMessage {
            room: String,
            id: String,
            seq: u64,
            from: UserInfo,
            content: String,
            ts: u64,
        }
        #[derive(Serialize)]
        struct OldLog {
            seq: u64,
            history: Vec<OldMessage>,
            keys: Vec<Original>,
        }
        #[derive(Serialize)]
        struct OldState {
            last_applied: Option<LogId<NodeId>>,
            last_membership: StoredMembership<NodeId, ShardNode>,
            rooms: BTreeMap<String, OldLog>,
            nodes: Option<Vec<String>>,
        }
        let from = UserInfo {
            id: "u1".to_owned(),
            name: "Ada".to_owned(),
        };
        let old = OldState {
            last_applied: Some(log_id(4)),
            last_membership: StoredMembership::default(),
            rooms: BTreeMap::from([(
                "a".to_owned(),
                OldLog {
                    seq: 1,
                    history: vec![OldMessage {
                        room: "a".to_owned(),
                        id: "m1".to_owned(),
                        seq: 1,
                        from: from.clone(),
                        content: "old".to_owned(),
                        ts: 9,
                    }],
                    keys: vec![Original {
                        key: "k".to_owned(),
                        id: "m1".to_owned(),
                        seq: 1,
                        ts: 9,
                    }],
                },
            )]),
            nodes: Some(vec!["n1".to_owned()]),
        };
        let mut bytes = vec![2];
        bytes.extend(postcard::to_allocvec(&old).expect("encode"));
        let state = ShardState::decode(&bytes).expect("a format 2 snapshot decodes");
        let held = state.join("a", None).messages;
        assert_eq!(held.len(), 1);
        assert_eq!((&*held[0].content, held[0].data.clone()), ("old", None));
        assert_eq!(state.last_applied, Some(log_id(4)));
    }

    #[test]
    fn a_snapshot_round_trips_the_whole_state() {
        let mut state = ShardState::default();
        let retention = Retention::messages(3);
        state.apply(&membership(1), &retention);
        for i in 2..=6 {
            let key = format!("k{i}");
            state.apply(
                &normal(i, vec![publish("a", &format!("m{i}"), i, Some(&key))]),
                &retention,
            );
        }
        state.apply(&normal(7, vec![publish("b", "mb", 7, None)]), &retention);
        let bytes = state.encode().expect("encode");
        let mut restored = ShardState::decode(&bytes).expect("decode");
        assert_eq!(restored, state);
        // Keys survive too: a retry after the restore still answers the original.
        let (outcome, _) = restored.apply(
            &normal(8, vec![publish("a", "retry", 8, Some("k6"))]),
            &retention,
        );
        assert_eq!(
            outcome.0,
            vec![CommandOutcome::Duplicate {
                id: "m6".into(),
                seq: 5,
                ts: 6
            }]
        );
    }

    #[test]
    fn corrupt_snapshot_bytes_are_an_error() {
        let mut state = ShardState::default();
        state.apply(
            &normal(1, vec![publish("a", "m1", 1, None)]),
            &Retention::messages(3),
        );
        let bytes = state.encode().expect("encode");
        assert!(matches!(
            ShardState::decode(&[]),
            Err(SnapshotDecodeError::Empty)
        ));
        assert!(matches!(
            ShardState::decode(&[9, 1, 2]),
            Err(SnapshotDecodeError::Format(9))
        ));
        let truncated = &bytes[..bytes.len() / 2];
        assert!(matches!(
            ShardState::decode(truncated),
            Err(SnapshotDecodeError::Corrupt(_))
        ));
        let mut garbage = bytes.clone();
        for b in garbage.iter_mut().skip(1) {
            *b = 0xff;
        }
        assert!(ShardState::decode(&garbage).is_err());
    }

    type Delivered = Arc<std::sync::Mutex<Vec<(ShardId, Vec<Committed>)>>>;

    fn recording_sink() -> (Arc<dyn ApplySink>, Delivered) {
        let delivered: Delivered = Arc::default();
        let record = delivered.clone();
        let sink = move |shard: ShardId, committed: Vec<Committed>| {
            record.lock().expect("lock").push((shard, committed));
        };
        (Arc::new(sink), delivered)
    }

    /// Sizes and speeds of the two candidate snapshot encodings for a full shard.
    #[test]
    #[ignore]
    fn snapshot_format_figures() {
        let mut state = ShardState::default();
        let retention = Retention::messages(100);
        let mut index = 0;
        for room in 0..64 {
            for i in 0..100 {
                index += 1;
                let content = format!("{i:04} {}", "lorem ipsum dolor sit amet ".repeat(9));
                let command = ShardCommand::Publish {
                    room: format!("room-{room}"),
                    from: UserInfo {
                        id: format!("user-{i}"),
                        name: "Some One".to_owned(),
                    },
                    content,
                    id: uuid::Uuid::now_v7().to_string(),
                    ts: 1_700_000_000_000 + index,
                    idempotency_key: Some(format!("key-{index}")),
                };
                state.apply(&normal(index, vec![command]), &retention);
            }
        }
        let rounds = 20;
        let started = std::time::Instant::now();
        let mut postcard_bytes = Vec::new();
        for _ in 0..rounds {
            postcard_bytes = state.encode().expect("encode");
        }
        let postcard_encode = started.elapsed() / rounds;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            ShardState::decode(&postcard_bytes).expect("decode");
        }
        let postcard_decode = started.elapsed() / rounds;
        let started = std::time::Instant::now();
        let mut json_bytes = Vec::new();
        for _ in 0..rounds {
            json_bytes = serde_json::to_vec(&state).expect("encode");
        }
        let json_encode = started.elapsed() / rounds;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            serde_json::from_slice::<ShardState>(&json_bytes).expect("decode");
        }
        let json_decode = started.elapsed() / rounds;
        println!(
            "6400 messages: postcard {} bytes, encode {postcard_encode:?}, decode {postcard_decode:?}; \
             serde_json {} bytes, encode {json_encode:?}, decode {json_decode:?}",
            postcard_bytes.len(),
            json_bytes.len()
        );
    }

    /// What the rooms hold, counted from scratch.
    fn recounted(state: &ShardState) -> u64 {
        let mut copy = state.clone();
        copy.recount();
        copy.held_bytes
    }

    /// Past its bytes a shard forgets its oldest messages first, whichever room
    /// holds them, down to 7/8 of the bound, at the same entry on every replica;
    /// its count always matches what it holds.
    #[test]
    fn a_shard_forgets_its_oldest_messages_past_its_bytes() {
        let retention = Retention {
            shard_bytes: 5_000,
            ..Retention::messages(100)
        };
        let mut state = ShardState::default();
        let mut replica = ShardState::default();
        let mut trims = Vec::new();
        for i in 1..=60u64 {
            let room = ["a", "b", "c"][(i % 3) as usize];
            let entry = normal(i, vec![publish(room, &format!("m{i}"), 1_000 + i, None)]);
            let applied = state.apply_entry(&entry, &retention);
            replica.apply_entry(&entry, &retention);
            assert!(state.held_bytes() <= 5_000, "{} at {i}", state.held_bytes());
            assert_eq!(state.held_bytes(), recounted(&state), "at {i}");
            trims.extend(applied.trimmed);
        }
        assert_eq!(state, replica, "replicas forget alike");
        assert!(!trims.is_empty(), "the bound was reached");
        // What is held is the newest of the shard: every held message is newer than
        // every forgotten one.
        let held: Vec<u64> = state
            .rooms()
            .flat_map(|(_, log)| log.history().map(|m| m.ts))
            .collect();
        let oldest_held = *held.iter().min().expect("some held");
        assert_eq!(held.len() as u64, 1_060 - oldest_held + 1);
        // Each trim says where its room's history now starts, and numbers go on.
        for trim in &trims {
            let log = state.room(&trim.room).expect("rooms with messages stay");
            let front = log.history().next().map_or(log.seq() + 1, |m| m.seq);
            assert!(front >= trim.first_held, "{trim:?}");
        }
        assert_eq!(state.room("a").map(RoomLog::seq), Some(20));
        let restored = ShardState::decode(&state.encode().expect("encode")).expect("decode");
        assert_eq!(restored, state);
        // Without a bound nothing is forgotten.
        let mut unbounded = ShardState::default();
        for i in 1..=60u64 {
            let entry = normal(i, vec![publish("a", &format!("m{i}"), i, None)]);
            unbounded.apply_entry(&entry, &Retention::messages(100));
        }
        assert_eq!(seqs(&unbounded, "a").len(), 60);
    }

    /// A room left with no message and no member is forgotten, and when it returns it
    /// numbers on past the seq it had; a room with a member keeps its entry.
    #[test]
    fn a_forgotten_room_numbers_on_past_its_floor() {
        let retention = Retention {
            shard_bytes: 4_000,
            ..Retention::messages(100)
        };
        let mut state = ShardState::default();
        let rejoin = ShardCommand::NodeRejoin {
            node: "n".to_owned(),
            epoch: 1,
            ts: 1,
        };
        let first = vec![
            rejoin,
            publish("idle", "i1", 2, Some("k1")),
            publish("idle", "i2", 3, None),
            publish("idle", "i3", 4, None),
            publish("kept", "k1", 5, None),
            member("n", 1, "kept", "al", true),
        ];
        state.apply_entry(&normal(1, first), &retention);
        let mut forgotten = BTreeMap::new();
        for i in 2..=40u64 {
            let entry = normal(i, vec![publish("busy", &format!("b{i}"), 100 + i, None)]);
            for trim in state.apply_entry(&entry, &retention).trimmed {
                forgotten.insert(trim.room.clone(), trim);
            }
        }
        assert!(state.room("idle").is_none(), "forgotten");
        assert_eq!(forgotten["idle"].first_held, 4);
        assert_eq!(forgotten["idle"].messages, 3);
        assert_eq!(seqs(&state, "kept"), Vec::<u64>::new());
        assert_eq!(
            state.room("kept").map(RoomLog::seq),
            Some(1),
            "kept: a member"
        );
        assert_eq!(state.held_bytes(), recounted(&state));
        // A join of the forgotten room starts at its floor: a client that saw 3 has
        // missed nothing; one that saw 1 is told of a gap.
        let joined = state.join("idle", Some(3));
        assert_eq!((joined.seq, joined.gap), (3, false));
        assert!(state.join("idle", Some(1)).gap);
        assert!(!state.join("idle", None).gap);
        // The floors survive a snapshot, and the room numbers on from them.
        let mut restored = ShardState::decode(&state.encode().expect("encode")).expect("decode");
        assert_eq!(restored, state);
        let (outcome, committed) = restored.apply(
            &normal(41, vec![publish("idle", "i4", 500, None)]),
            &retention,
        );
        assert!(
            matches!(outcome.0[0], CommandOutcome::Published { seq: 4, .. }),
            "{outcome:?}"
        );
        assert_eq!(committed[0].message.seq, 4);
    }

    /// A format 4 snapshot (no floors) is read with none.
    #[test]
    fn a_format_4_snapshot_is_read() {
        let mut state = ShardState::default();
        state.apply(
            &normal(1, vec![publish("r", "m1", 10, Some("key"))]),
            &Retention::messages(10),
        );
        #[derive(Serialize)]
        struct V4<'a> {
            last_applied: Option<LogId<NodeId>>,
            last_membership: StoredMembership<NodeId, ShardNode>,
            rooms: &'a BTreeMap<String, RoomLog>,
            nodes: Option<Vec<String>>,
            members: &'a ShardMembers,
            webhook_mark: u64,
        }
        let mut bytes = vec![4];
        bytes.extend(
            postcard::to_allocvec(&V4 {
                last_applied: state.last_applied,
                last_membership: state.last_membership.clone(),
                rooms: &state.rooms,
                nodes: None,
                members: &state.members,
                webhook_mark: 0,
            })
            .expect("encode"),
        );
        let old = ShardState::decode(&bytes).expect("a format 4 snapshot decodes");
        assert_eq!(old, state);
        assert_eq!(old.held_bytes(), state.held_bytes());
    }
}
