//! The node-wide budget for bytes still arriving (`limits.node_inbound_bytes`): the
//! WebSocket frames begun and not finished, and the Socket.IO polling bodies not yet
//! read to their end, of every connection together.
//!
//! Why: each connection's unfinished message is bounded (`limits.max_frame_bytes`,
//! `socketio.max_payload_bytes`), but thousands of connections from many addresses can
//! each start one and stall, and the node would hold all of them: 9,000 `/ws`
//! connections stalling a 64 KiB frame each took a default node past 512 MiB (abuse
//! attack 10, `tests/abuse/ws_stall.rs`). actix-http reserves a frame's announced
//! length as soon as its header is in, so a frame counts here at the size its header
//! announces, not at what has come of it.
//!
//! Owns: the total, and the holds that make it up, in the order they began. Must not
//! know: frames, bodies, connections. A [`Hold`] is what one reader (one connection's
//! frame guard, one POST) holds; it says how much, and learns when it was shed.
//!
//! **The rule.** A hold that takes the total past the budget sheds the oldest holds,
//! its own included if it is the oldest, until the total is back under the budget: a
//! shed hold is woken, its reader fails its stream, and its connection is closed (1013,
//! "try again later"; an HTTP 503 for a POST) and frees what it held. Oldest first,
//! because a stalled message is old and a live one arrives in milliseconds: a client
//! that sends what it starts is not shed while others stall.
//!
//! **Cheap on the hot path.** A message that arrives in one read never takes a hold.
//! Only one that spans reads does, and each read that extends it takes one lock of the
//! budget, bounded work (shedding is a walk from the oldest).

use crate::telemetry::Metrics;
use futures_util::task::AtomicWaker;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;

/// The node's bytes still arriving and its budget. Shared in an `Arc`.
#[derive(Debug)]
pub struct InboundBudget {
    /// `limits.node_inbound_bytes`; 0: no budget (the total is still kept).
    limit: u64,
    /// What the holds hold now, for `/metrics` (written under `holds`' lock).
    total: AtomicU64,
    /// Holds shed since the node started.
    shed: AtomicU64,
    /// `hubbub_inbound_shed_total` counts each shed hold; None in unit tests.
    metrics: Option<Arc<Metrics>>,
    /// The next message's place in the order messages began.
    next_begun: AtomicU64,
    holds: Mutex<Holds>,
}

#[derive(Debug, Default)]
struct Holds {
    total: u64,
    /// Every hold holding bytes, by when its message began: oldest first.
    by_age: BTreeMap<u64, Held>,
}

#[derive(Debug)]
struct Held {
    bytes: u64,
    signal: Arc<Signal>,
}

/// How a hold learns it was shed.
#[derive(Debug, Default)]
struct Signal {
    shed: AtomicBool,
    waker: AtomicWaker,
}

/// The hold was shed: the node is past `limits.node_inbound_bytes` and this was among
/// the oldest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed;

impl InboundBudget {
    /// A budget of `limit` bytes (0: none), counting what it sheds in `metrics`.
    pub fn new(limit: u64, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        Arc::new(Self {
            limit,
            metrics,
            total: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            next_begun: AtomicU64::new(0),
            holds: Mutex::new(Holds::default()),
        })
    }

    /// A hold for one reader, holding nothing yet.
    pub fn hold(self: &Arc<Self>) -> Hold {
        Hold {
            budget: self.clone(),
            began: None,
            signal: Arc::new(Signal::default()),
        }
    }

    /// Bytes held now by every hold.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Holds shed since the node started.
    pub fn shed_count(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Holds> {
        // A panic under this lock leaves the map whole (no step of ours can panic
        // half-way): go on with it.
        self.holds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What one reader holds of the budget; holds nothing once dropped.
#[derive(Debug)]
pub struct Hold {
    budget: Arc<InboundBudget>,
    /// When the message it holds began, in the budget's order; None while it holds
    /// nothing.
    began: Option<u64>,
    signal: Arc<Signal>,
}

impl Hold {
    /// Holds `bytes` from now on (what it held before is replaced), for a message that
    /// began with the first call since the last [`release`](Self::release). `cx`'s
    /// waker is woken if the hold is shed later. Err if it is shed, now or before.
    pub fn set(&mut self, bytes: u64, cx: &Context<'_>) -> Result<(), Shed> {
        if self.is_shed() {
            return Err(Shed);
        }
        self.signal.waker.register(cx.waker());
        self.hold_bytes(bytes)
    }

    /// A hold of the same reader, holding nothing yet: shedding either sheds both
    /// (and wakes whatever the first registered with [`set`](Self::set)). For a
    /// complete message that waits, once read, for its connection's Session.
    pub fn sibling(&self) -> Hold {
        Hold {
            budget: self.budget.clone(),
            began: None,
            signal: self.signal.clone(),
        }
    }

    /// [`set`](Self::set) without a waker: a shed is seen by [`is_shed`](Self::is_shed)
    /// and wakes the sibling that registered one.
    pub fn set_waiting(&mut self, bytes: u64) -> Result<(), Shed> {
        if self.is_shed() {
            return Err(Shed);
        }
        self.hold_bytes(bytes)
    }

    fn hold_bytes(&mut self, bytes: u64) -> Result<(), Shed> {
        let budget = self.budget.clone();
        let mut holds = budget.lock();
        let key = *self
            .began
            .get_or_insert_with(|| budget.next_begun.fetch_add(1, Ordering::Relaxed));
        let before = match holds.by_age.get_mut(&key) {
            Some(held) => std::mem::replace(&mut held.bytes, bytes),
            None => {
                holds.by_age.insert(
                    key,
                    Held {
                        bytes,
                        signal: self.signal.clone(),
                    },
                );
                0
            }
        };
        holds.total = holds.total - before + bytes;
        if budget.limit != 0 && holds.total > budget.limit {
            shed_oldest(&budget, &mut holds);
        }
        budget.total.store(holds.total, Ordering::Relaxed);
        drop(holds);
        if self.is_shed() {
            self.began = None;
            return Err(Shed);
        }
        Ok(())
    }

    /// Holds nothing (the message it held arrived whole, or its reader ended).
    pub fn release(&mut self) {
        let Some(began) = self.began.take() else {
            return;
        };
        let mut holds = self.budget.lock();
        if let Some(held) = holds.by_age.remove(&began) {
            holds.total -= held.bytes;
        }
        self.budget.total.store(holds.total, Ordering::Relaxed);
    }

    /// `waker` is woken when this hold, or a sibling, is shed: for a reader that is
    /// not polled while its bytes wait (a Socket.IO event's attachments, parked until
    /// the rest of them come), so that the shed still ends its connection.
    pub fn wake_on_shed(&self, waker: &std::task::Waker) {
        self.signal.waker.register(waker);
    }

    /// It was shed: its reader must fail and let its connection go.
    pub fn is_shed(&self) -> bool {
        self.signal.shed.load(Ordering::Acquire)
    }
}

impl crate::actors::FrameHold for Hold {
    fn is_shed(&self) -> bool {
        Hold::is_shed(self)
    }

    fn resize(&mut self, bytes: u64) -> bool {
        self.set_waiting(bytes).is_ok()
    }
}

/// A connection's holds for the frames waiting for its Session: siblings of this
/// one (see [`Hold::sibling`]).
impl crate::actors::FrameHolds for Hold {
    fn hold(&self, bytes: u64) -> Option<Box<dyn crate::actors::FrameHold>> {
        let mut hold = self.sibling();
        hold.set_waiting(bytes).ok()?;
        Some(Box::new(hold))
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.release();
    }
}

/// Sheds the oldest holds until `holds` is within the budget.
fn shed_oldest(budget: &InboundBudget, holds: &mut Holds) {
    while holds.total > budget.limit {
        let Some((_, held)) = holds.by_age.pop_first() else {
            break;
        };
        holds.total -= held.bytes;
        held.signal.shed.store(true, Ordering::Release);
        held.signal.waker.wake();
        budget.shed.fetch_add(1, Ordering::Relaxed);
        if let Some(metrics) = &budget.metrics {
            metrics.inbound_shed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn holds_add_up_and_release() {
        let budget = InboundBudget::new(1000, None);
        let (_, w) = waker();
        let cx = Context::from_waker(&w);
        let mut a = budget.hold();
        let mut b = budget.hold();
        a.set(300, &cx).unwrap();
        b.set(200, &cx).unwrap();
        assert_eq!(budget.total(), 500);
        a.set(400, &cx).unwrap();
        assert_eq!(
            budget.total(),
            600,
            "a hold's bytes are replaced, not added"
        );
        a.release();
        assert_eq!(budget.total(), 200);
        drop(b);
        assert_eq!(budget.total(), 0);
        assert_eq!(budget.shed_count(), 0);
    }

    #[test]
    fn past_the_budget_the_oldest_are_shed_and_woken() {
        let budget = InboundBudget::new(1000, None);
        let (old_woken, old_waker) = waker();
        let (_, w) = waker();
        let cx = Context::from_waker(&w);
        let mut oldest = budget.hold();
        oldest.set(400, &Context::from_waker(&old_waker)).unwrap();
        let mut middle = budget.hold();
        middle.set(400, &cx).unwrap();
        let mut newest = budget.hold();
        // 1,200 > 1,000: the oldest goes, and that is enough.
        newest.set(400, &cx).unwrap();
        assert!(oldest.is_shed());
        assert_eq!(
            old_woken.0.load(Ordering::SeqCst),
            1,
            "the shed hold's reader is woken"
        );
        assert!(!middle.is_shed() && !newest.is_shed());
        assert_eq!(budget.total(), 800);
        assert_eq!(budget.shed_count(), 1);
        // A shed hold holds nothing and stays shed.
        assert_eq!(oldest.set(10, &cx), Err(Shed));
        drop(oldest);
        assert_eq!(
            budget.total(),
            800,
            "dropping a shed hold releases nothing twice"
        );
    }

    #[test]
    fn a_hold_that_is_itself_the_oldest_is_shed_by_its_own_growth() {
        let budget = InboundBudget::new(1000, None);
        let (_, w) = waker();
        let cx = Context::from_waker(&w);
        let mut stalled = budget.hold();
        stalled.set(100, &cx).unwrap();
        let mut live = budget.hold();
        live.set(100, &cx).unwrap();
        // The oldest grows past the budget: it is the one shed, not the newer.
        assert_eq!(stalled.set(950, &cx), Err(Shed));
        assert!(!live.is_shed());
        assert_eq!(budget.total(), 100);
    }

    #[test]
    fn a_shed_sibling_wakes_what_waits_on_the_first() {
        let budget = InboundBudget::new(1000, None);
        let (woken, on_shed) = waker();
        let (_, w) = waker();
        let cx = Context::from_waker(&w);
        // A connection's holds: nothing polls them, but a shed must reach it.
        let connection = budget.hold();
        connection.wake_on_shed(&on_shed);
        let mut parked = connection.sibling();
        parked.set_waiting(600).unwrap();
        let mut other = budget.hold();
        other.set(500, &cx).unwrap();
        assert!(parked.is_shed() && connection.is_shed());
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(
            !crate::actors::FrameHold::resize(&mut parked, 10),
            "a shed hold cannot grow again"
        );
        assert_eq!(budget.total(), 500);
    }

    #[test]
    fn a_released_hold_begins_again_as_the_newest() {
        let budget = InboundBudget::new(1000, None);
        let (_, w) = waker();
        let cx = Context::from_waker(&w);
        let mut first = budget.hold();
        first.set(100, &cx).unwrap();
        let mut second = budget.hold();
        second.set(100, &cx).unwrap();
        // `first`'s message arrived whole; its next one is younger than `second`'s.
        first.release();
        first.set(500, &cx).unwrap();
        assert_eq!(second.set(600, &cx), Err(Shed), "the older message is shed");
        assert!(!first.is_shed());
        assert_eq!(budget.total(), 500);
    }

    #[test]
    fn no_budget_keeps_the_total_and_sheds_nothing() {
        let budget = InboundBudget::new(0, None);
        let (_, w) = waker();
        let cx = Context::from_waker(&w);
        let mut holds: Vec<Hold> = (0..10).map(|_| budget.hold()).collect();
        for h in &mut holds {
            h.set(1 << 30, &cx).unwrap();
        }
        assert_eq!(budget.total(), 10 << 30);
        assert_eq!(budget.shed_count(), 0);
    }
}
