//! What a shard's rooms cost in memory, as the shard counts it against its share of
//! `rooms.history_bytes`, and the seq floors that let a shard forget a room.
//!
//! Owns: the cost of a held message, of a remembered idempotency key and of a room's
//! entry ([`message_cost`], [`key_cost`], [`room_cost`]), and [`SeqFloors`]. The
//! eviction itself is [`super::state_machine::ShardState`]'s: it runs as an entry
//! applies, so every replica evicts the same messages at the same log index.
//!
//! The costs are estimates made of the bytes a message's strings hold plus a fixed
//! overhead for the struct, its slot and the allocator, measured against the
//! resident memory of a node holding them (docs/operations.md, "History"). They
//! read only the message, never a capacity or an address, so they are the same on
//! every node.

use crate::protocol::ChatMessage;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// What a held message costs beyond its strings: the struct in its ring slot and
/// the headers of its five to six allocations.
pub const MESSAGE_OVERHEAD: u64 = 192;

/// What a remembered idempotency key costs beyond its strings: its list entry, its
/// map entry and their allocations.
pub const KEY_OVERHEAD: u64 = 128;

/// What a room's entry costs beyond its name: the map node, the empty ring, the
/// key list and map.
pub const ROOM_OVERHEAD: u64 = 256;

/// How many floors a shard keeps: a forgotten room's next seq starts past the
/// highest seq any forgotten room of its bucket reached.
pub const FLOOR_BUCKETS: usize = 256;

/// The bytes a held message is counted at.
pub fn message_cost(message: &ChatMessage) -> u64 {
    let strings = message.room.len()
        + message.id.len()
        + message.from.id.len()
        + message.from.name.len()
        + message.content.len()
        + message.data.as_ref().map_or(0, |d| d.as_json_text().len());
    strings as u64 + MESSAGE_OVERHEAD
}

/// The bytes a remembered idempotency key is counted at (the key is held twice:
/// in the list and as the map's key).
pub fn key_cost(key: &str, id: &str) -> u64 {
    (2 * key.len() + id.len()) as u64 + KEY_OVERHEAD
}

/// The bytes a room's entry is counted at, without its messages and keys.
pub fn room_cost(name: &str) -> u64 {
    name.len() as u64 + ROOM_OVERHEAD
}

/// For each of [`FLOOR_BUCKETS`] buckets of room names, the highest seq a room of
/// the bucket had when the shard forgot it. A room the shard holds no entry for
/// numbers its next message one past its bucket's floor, so a room that returns
/// never hands out a seq it handed out before. Empty until a room is forgotten.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqFloors(Vec<u64>);

impl SeqFloors {
    /// The seq a room without an entry stands at.
    pub fn of(&self, room: &str) -> u64 {
        self.0.get(bucket(room)).copied().unwrap_or(0)
    }

    /// `room` is forgotten at `seq`.
    pub fn raise(&mut self, room: &str, seq: u64) {
        // A snapshot from a peer may hold any length; every index below is in range.
        self.0.resize(FLOOR_BUCKETS, 0);
        let floor = &mut self.0[bucket(room)];
        *floor = (*floor).max(seq);
    }
}

fn bucket(room: &str) -> usize {
    (xxh3_64(room.as_bytes()) % FLOOR_BUCKETS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::UserInfo;

    #[test]
    fn a_message_costs_its_strings_and_the_overhead() {
        let message = ChatMessage {
            room: "lobby".into(),
            id: "0190".into(),
            seq: 7,
            from: UserInfo {
                id: "u1".into(),
                name: "Ann".into(),
            },
            content: "hello".into(),
            ts: 1,
            data: None,
        };
        assert_eq!(
            message_cost(&message),
            (5 + 4 + 2 + 3 + 5) + MESSAGE_OVERHEAD
        );
        assert_eq!(key_cost("k", "0190"), 2 + 4 + KEY_OVERHEAD);
        assert_eq!(room_cost("lobby"), 5 + ROOM_OVERHEAD);
    }

    #[test]
    fn floors_only_rise_and_start_at_zero() {
        let mut floors = SeqFloors::default();
        assert_eq!(floors.of("a"), 0);
        floors.raise("a", 40);
        floors.raise("a", 12);
        assert_eq!(floors.of("a"), 40);
        // A snapshot's floors of another length still index safely.
        let mut odd = SeqFloors(vec![3]);
        odd.raise("b", 5);
        assert_eq!(odd.of("b"), 5);
    }
}
