//! Committed messages on their way to the Room actors of this node, bounded in bytes
//! (`rooms.delivery_backlog_bytes`).
//!
//! Why: the log applies a shard's entries without waiting for the rooms, and hands
//! each Room its messages as a mailbox message. A Room slower than its log (a room
//! of very many members under a flood) would let its mailbox grow without bound,
//! holding what the log has long forgotten.
//!
//! **The rule.** A batch of messages goes to its Room's mailbox only while what is
//! queued there and the node's total stay within their bounds (the node's bound, and
//! an eighth of it per room, so that one lagging room cannot push every other into
//! the slower path). Past either, the batch is not queued: the Room is sent one
//! `Behind` instead (once, until it has acted on it), and catches up from this node's
//! copy of the log by seq, as it does after any gap. Nothing is skipped silently: a
//! message the log forgot meanwhile reaches the connections as a `gap` frame.
//!
//! The node's total is read and then added, not in one atomic step: shards applying
//! at the same moment can take it past its bound by one batch each.
//!
//! Owns: the counts and the decision. Must not know: actors, the log.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::protocol::ChatMessage;

/// What a message is counted as on its way: its strings and about the struct's size.
pub fn cost(message: &ChatMessage) -> u64 {
    const FIXED: usize = 160;
    let data = message.data.as_ref().map_or(0, |data| data.len());
    (FIXED
        + message.room.len()
        + message.id.len()
        + message.from.id.len()
        + message.from.name.len()
        + message.content.len()
        + data) as u64
}

/// The node's bound and what all its rooms' mailboxes hold.
#[derive(Debug)]
pub struct NodeBacklog {
    bound: u64,
    total: Arc<AtomicU64>,
}

/// What one Room's mailbox holds, and whether it was told it is behind.
#[derive(Debug, Default)]
pub struct RoomBacklog {
    bytes: AtomicU64,
    behind: AtomicBool,
}

/// What [`NodeBacklog::admit`] decided for one batch.
#[derive(Debug)]
pub enum Admit {
    /// Queue the batch; the guard gives its bytes back when the Room drops it.
    Queue(Queued),
    /// Do not queue it; send the Room `Behind`: it was not told yet.
    Behind,
    /// Do not queue it; the Room was told and has not caught up yet.
    Skip,
}

/// A queued batch's bytes, given back when dropped (handled, or dropped with the
/// mailbox of a Room that stopped).
#[derive(Debug)]
pub struct Queued {
    room: Arc<RoomBacklog>,
    total: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.room.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        self.total.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl NodeBacklog {
    /// A node's backlog of `bound` bytes (`rooms.delivery_backlog_bytes`).
    pub fn new(bound: u64) -> Self {
        Self {
            bound,
            total: Arc::new(AtomicU64::new(0)),
        }
    }

    /// What every room's mailbox holds now.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Acquire)
    }

    /// Decides for a batch of `bytes` to `room`. The Room that is sent `Behind`
    /// calls [`RoomBacklog::catching_up`] before it reads the log.
    pub fn admit(&self, room: &Arc<RoomBacklog>, bytes: u64) -> Admit {
        let room_bound = self.bound / 8;
        let queued = room.bytes.load(Ordering::Acquire);
        let total = self.total.load(Ordering::Acquire);
        // A Room told it is behind gets nothing queued until it has caught up: what
        // it is sent meanwhile would come after messages it has not read yet.
        let fits = !room.behind.load(Ordering::Acquire)
            && queued.saturating_add(bytes) <= room_bound
            && total.saturating_add(bytes) <= self.bound;
        if fits {
            room.bytes.fetch_add(bytes, Ordering::AcqRel);
            self.total.fetch_add(bytes, Ordering::AcqRel);
            return Admit::Queue(Queued {
                room: room.clone(),
                total: self.total.clone(),
                bytes,
            });
        }
        if room.behind.swap(true, Ordering::AcqRel) {
            Admit::Skip
        } else {
            Admit::Behind
        }
    }
}

impl RoomBacklog {
    /// The Room acts on `Behind`: from now on batches may be queued again, and one
    /// not queued sends `Behind` again. Called before the Room reads the log, so that
    /// whatever was not queued before is in what it reads (the log applies an entry
    /// before it hands the entry's messages on).
    pub fn catching_up(&self) {
        self.behind.store(false, Ordering::Release);
    }

    /// What this Room's mailbox holds now.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_within_the_bounds_are_queued_and_give_their_bytes_back() {
        let node = NodeBacklog::new(8_000);
        let room = Arc::new(RoomBacklog::default());
        let Admit::Queue(first) = node.admit(&room, 600) else {
            panic!("within the bounds")
        };
        let Admit::Queue(second) = node.admit(&room, 400) else {
            panic!("within the bounds")
        };
        assert_eq!((room.bytes(), node.total()), (1_000, 1_000));
        drop(first);
        assert_eq!((room.bytes(), node.total()), (400, 400));
        drop(second);
        assert_eq!((room.bytes(), node.total()), (0, 0));
    }

    #[test]
    fn past_a_rooms_bound_it_is_told_once_and_queued_again_after_catching_up() {
        // A room may hold an eighth of the node's bound: 1,000 here.
        let node = NodeBacklog::new(8_000);
        let room = Arc::new(RoomBacklog::default());
        let Admit::Queue(held) = node.admit(&room, 900) else {
            panic!("within the bounds")
        };
        assert!(matches!(node.admit(&room, 200), Admit::Behind));
        // Told once; even a batch that would fit is not queued until it caught up.
        assert!(matches!(node.admit(&room, 200), Admit::Skip));
        drop(held);
        assert!(matches!(node.admit(&room, 10), Admit::Skip));
        room.catching_up();
        assert!(matches!(node.admit(&room, 200), Admit::Queue(_)));
        assert_eq!(node.total(), 0, "the guard was dropped at once");
    }

    #[test]
    fn past_the_nodes_bound_every_room_is_told() {
        let node = NodeBacklog::new(1_600);
        let rooms: Vec<_> = (0..9).map(|_| Arc::new(RoomBacklog::default())).collect();
        let held: Vec<_> = rooms[..8]
            .iter()
            .map(|room| match node.admit(room, 200) {
                Admit::Queue(queued) => queued,
                other => panic!("within the bounds: {other:?}"),
            })
            .collect();
        assert_eq!(node.total(), 1_600);
        // The ninth room holds nothing, but the node is full.
        assert!(matches!(node.admit(&rooms[8], 1), Admit::Behind));
        drop(held);
        rooms[8].catching_up();
        assert!(matches!(node.admit(&rooms[8], 1), Admit::Queue(_)));
    }

    #[test]
    fn a_bound_of_one_byte_sends_everything_through_catch_up() {
        let node = NodeBacklog::new(1);
        let room = Arc::new(RoomBacklog::default());
        assert!(matches!(node.admit(&room, 1), Admit::Behind));
        room.catching_up();
        assert!(matches!(node.admit(&room, 1), Admit::Behind));
    }
}
