//! The node-wide budget for outbound memory (`limits.node_outbound_bytes`): one total
//! of the bytes every connection's outbox holds, and the rule for when it is past the
//! budget.
//!
//! Owns: the node's total of outbound bytes (an atomic, also what the
//! `hubbub_outbound_bytes` gauge shows) and a registry of the live outboxes, by weak
//! reference. Must not know: what an outbox is. It sees each one as a [`Holder`], which
//! can say how many bytes it holds and be closed; `outbox.rs` implements it. Made once
//! per node, in the `NodeContext`, and handed to every `Outbox` when its connection
//! opens.
//!
//! **Cheap on the hot path.** A push adds its bytes to the total (one relaxed atomic
//! add, under the outbox's own lock) and compares the result with the budget. Only a
//! push that takes the total past the budget does more: it scans the registry, closes
//! the connections holding the most bytes first (4009, "node outbound budget") until
//! what they held brings the total back under the budget, and returns. One scan runs at
//! a time; a push that finds one running leaves the work to it. A scan reads each live
//! outbox once (its size under its own lock) and sorts them: bounded by the open
//! connections, `limits.max_connections`.
//!
//! **What it counts.** Each outbox counts every frame it holds at its full size, so a
//! broadcast queued to many slow members counts once per member, although its bytes
//! are shared. The total is therefore an upper bound of the memory really held: the
//! budget never lets the node hold more, and it can trip early only when many members
//! of one room are behind on the same broadcasts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Weak};

/// Registry shards: connections open and close on every worker at once, so each one
/// locks one shard of sixteen, not the whole registry.
const SHARDS: usize = 16;

/// What the budget needs from an outbox.
pub(crate) trait Holder: Send + Sync {
    /// Bytes it holds now (queued, and taken by its writer but not yet written).
    fn held(&self) -> u64;
    /// Closes its connection at once (4009) because the node is past its budget,
    /// releasing what it holds; false if it was already closing for another reason.
    fn shed(&self) -> bool;
}

/// The node's outbound bytes and its budget. Shared in an `Arc`.
pub struct OutboundBudget {
    /// `limits.node_outbound_bytes`; 0: no budget (the total is still kept).
    limit: u64,
    total: AtomicU64,
    next_id: AtomicU64,
    shards: [Mutex<HashMap<u64, Weak<dyn Holder>>>; SHARDS],
    /// A scan is running (see the module docs).
    shedding: AtomicBool,
}

impl std::fmt::Debug for OutboundBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundBudget")
            .field("limit", &self.limit)
            .field("total", &self.total())
            .finish_non_exhaustive()
    }
}

impl OutboundBudget {
    /// A budget of `limit` bytes for all outboxes together; 0 for none.
    pub fn new(limit: u64) -> Self {
        OutboundBudget {
            limit,
            total: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            shedding: AtomicBool::new(false),
        }
    }

    /// Bytes held by all outboxes of the node now.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// `limits.node_outbound_bytes` (0: none).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// An id for a new outbox, to [`register`](Self::register) it under.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes `holder` one of those a scan may close. Only with a budget: without one
    /// nothing is ever scanned, and opening a connection costs no lock here.
    pub(crate) fn register(&self, id: u64, holder: Weak<dyn Holder>) {
        if self.limit > 0 {
            self.shard(id).insert(id, holder);
        }
    }

    /// Forgets the outbox `id` (its connection is gone).
    pub(crate) fn deregister(&self, id: u64) {
        if self.limit > 0 {
            self.shard(id).remove(&id);
        }
    }

    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Weak<dyn Holder>>> {
        // usize is at least 32 bits wherever this builds; the remainder fits.
        let index = (id % SHARDS as u64) as usize;
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds `bytes` to the total; true if that took it past the budget, and the caller
    /// must call [`shed`](Self::shed) once it holds no outbox's lock.
    pub(crate) fn add(&self, bytes: u64) -> bool {
        let total = self.total.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.limit > 0 && total > self.limit
    }

    /// Takes `bytes` that an outbox no longer holds off the total.
    pub(crate) fn release(&self, bytes: u64) {
        if bytes > 0 {
            self.total.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Closes the outboxes holding the most, biggest first, until what they held brings
    /// the total under the budget; the number closed. Call with no outbox lock held.
    pub(crate) fn shed(&self) -> usize {
        if self.limit == 0 || self.shedding.swap(true, Ordering::Acquire) {
            return 0;
        }
        let closed = self.shed_biggest();
        self.shedding.store(false, Ordering::Release);
        closed
    }

    fn shed_biggest(&self) -> usize {
        let mut total = self.total();
        if total <= self.limit {
            return 0;
        }
        // Strong references are taken out of the shards first, so no shard stays
        // locked while an outbox is.
        let mut live = Vec::new();
        for index in 0..SHARDS {
            let shard = self.shards[index]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            live.extend(shard.values().filter_map(Weak::upgrade));
        }
        let mut sized: Vec<_> = live
            .into_iter()
            .map(|holder| (holder.held(), holder))
            .filter(|(held, _)| *held > 0)
            .collect();
        sized.sort_unstable_by_key(|(held, _)| std::cmp::Reverse(*held));
        let mut closed = 0;
        for (held, holder) in sized {
            if total <= self.limit {
                break;
            }
            if holder.shed() {
                closed += 1;
            }
            total = total.saturating_sub(held);
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Fake {
        held: AtomicU64,
        shed: AtomicBool,
    }

    impl Holder for Fake {
        fn held(&self) -> u64 {
            self.held.load(Ordering::SeqCst)
        }
        fn shed(&self) -> bool {
            !self.shed.swap(true, Ordering::SeqCst)
        }
    }

    fn holders(budget: &OutboundBudget, sizes: &[u64]) -> Vec<Arc<Fake>> {
        sizes
            .iter()
            .map(|&size| {
                let fake = Arc::new(Fake {
                    held: AtomicU64::new(size),
                    shed: AtomicBool::new(false),
                });
                let weak: Weak<dyn Holder> = Arc::downgrade(&fake) as Weak<dyn Holder>;
                budget.register(budget.next_id(), weak);
                budget.add(size);
                fake
            })
            .collect()
    }

    #[test]
    fn without_a_budget_nothing_is_shed_and_the_total_is_still_kept() {
        let budget = OutboundBudget::new(0);
        let fakes = holders(&budget, &[100, 200]);
        assert!(!budget.add(1_000_000));
        assert_eq!(budget.shed(), 0);
        assert_eq!(budget.total(), 1_000_300);
        assert!(fakes.iter().all(|f| !f.shed.load(Ordering::SeqCst)));
    }

    #[test]
    fn only_the_biggest_are_shed_until_the_total_is_under_the_budget() {
        let budget = OutboundBudget::new(1_000);
        let fakes = holders(&budget, &[300, 500, 100, 400]);
        // 1,300 in all: closing the 500 alone brings it to 800.
        assert_eq!(budget.shed(), 1);
        let shed: Vec<bool> = fakes
            .iter()
            .map(|f| f.shed.load(Ordering::SeqCst))
            .collect();
        assert_eq!(shed, [false, true, false, false]);
    }

    #[test]
    fn a_gone_outbox_is_skipped() {
        let budget = OutboundBudget::new(100);
        let mut fakes = holders(&budget, &[1_000, 50]);
        drop(fakes.remove(0));
        // The biggest is gone (its bytes were never released here): the next one is
        // closed, and nothing panics.
        assert_eq!(budget.shed(), 1);
        assert!(fakes[0].shed.load(Ordering::SeqCst));
    }
}
