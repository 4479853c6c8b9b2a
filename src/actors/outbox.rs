//! The bounded outbound queue of one connection: the only queue between whoever
//! produces a frame (its Session, its rooms, presence) and the socket.
//!
//! Owns: the frames not yet written and the connection's close reason. A Session actor
//! gets an [`Outbox`] when it starts and keeps it in its state; rooms and presence
//! hold clones and push encoded frames straight into it, so a broadcast costs one
//! push per member and never grows an actor's unbounded mailbox. The transport drains
//! it from the connection's own HTTP task through an [`OutboxReader`]
//! (`transport::outbound` turns what it takes into WebSocket frames): no writer task,
//! no second channel.
//!
//! The queue holds at most `limits.outbound_queue` frames and `limits.outbound_bytes`
//! bytes. A push that finds it full, in frames or in bytes, means the client cannot keep
//! up: the connection is closed with 4009 (slow consumer) at once, instead of buffering
//! without limit. Each frame queued is counted by type in the node's metrics, and each
//! slow consumer closed, by which bound it hit.
//!
//! **What the bytes are.** Each frame counts its payload and its slot in the queue
//! ([`cost`]). An outbox holds its frames from the push until its writer takes them,
//! and then still holds what the writer took last until the writer asks again: the
//! writer hands those bytes to actix-http's write buffer, which asks for more only once
//! it is under its own 32 KiB bound (`transport::outbound`), so they are counted until
//! they are, all but that bound, on the socket. The bound is the bound: a single frame
//! larger than `limits.outbound_bytes` closes its connection even on an empty queue (a
//! reply that large is a bug of its own; replies are cut well under the default).
//!
//! **The node's budget.** Every outbox adds what it holds to the node's
//! [`OutboundBudget`] (`limits.node_outbound_bytes`) and takes it off again as the
//! writer takes frames, a close drops them, or the connection goes. A push that takes
//! the node past its budget closes the connections holding the most first (4009, "node
//! outbound budget"), so one room of slow readers cannot take down the rest.
//!
//! Closing has two speeds. [`Outbox::close_after_queued`] puts the close behind the
//! frames already queued (a `goodbye` then 1012). [`Outbox::close_now`] jumps the
//! queue (slow consumer, heartbeat timeout, oversized frame). Either way the first
//! close reason wins.
//!
//! **Waking the writer.** Pushes come from the actor runtime's threads; the reader is
//! polled on an actix worker, a single-threaded runtime, where every wake from another
//! thread costs a system call (an eventfd write to unpark the worker). A [`Fanout`]
//! (one broadcast to many connections) therefore does not wake each member's task: it
//! hands the wakers to each worker's [`WakeRelay`] and wakes that relay once, and the
//! relay wakes the members from the worker's own thread, where a wake is a push on a
//! local run queue. One system call per worker per broadcast instead of one per member.

use super::outbound_budget::{Holder, OutboundBudget};
use crate::protocol::close;
use crate::telemetry::metrics::{FrameType, SlowConsumer};
use crate::telemetry::Metrics;
use bytestring::ByteString;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What the writer takes from the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    Text(ByteString),
    /// A broadcast's frame, one allocation shared by every member ([`SharedFrame`]).
    Shared(SharedFrame),
    Pong(actix_web::web::Bytes),
    /// The last thing written: a close frame with this code and reason.
    Close(u16, String),
}

/// What one queued item holds: its payload and its slot in the queue. Payloads are
/// shared `Bytes` for a broadcast; each outbox counts them in full all the same (see
/// `outbound_budget`).
pub fn cost(item: &Outbound) -> u64 {
    let payload = match item {
        Outbound::Text(text) => text.len(),
        Outbound::Shared(frame) => frame.text().len(),
        Outbound::Pong(payload) => payload.len(),
        Outbound::Close(_, reason) => reason.len(),
    };
    (payload + std::mem::size_of::<Outbound>()) as u64
}

/// One broadcast frame as every member's outbox holds it: the v1 text, and room for
/// what another protocol makes of it, computed by the first member that needs it and
/// shared by the rest (`socketio::drain` keeps a Socket.IO member's packets here), so
/// a broadcast is translated once however many members take it and however far
/// behind they are. A clone is a reference count.
///
/// The translation lives as long as the frame does (until the last member has written
/// it) and is not counted in any outbox's bytes: every member's outbox counts the
/// text in full, while the text and its one translation (about the text's size again)
/// are held once.
#[derive(Clone)]
pub struct SharedFrame(Arc<SharedInner>);

struct SharedInner {
    text: ByteString,
    translation: std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

impl SharedFrame {
    pub fn new(text: ByteString) -> Self {
        SharedFrame(Arc::new(SharedInner {
            text,
            translation: std::sync::OnceLock::new(),
        }))
    }

    /// The frame as protocol v1 sends it.
    pub fn text(&self) -> &ByteString {
        &self.0.text
    }

    /// The frame's translation of type `T`, made by `make` if none was made yet; None
    /// if one of another type was made first (each frame keeps one translation).
    pub fn translation<T: std::any::Any + Send + Sync>(
        &self,
        make: impl FnOnce(&ByteString) -> T,
    ) -> Option<&T> {
        self.0
            .translation
            .get_or_init(|| Box::new(make(&self.0.text)))
            .downcast_ref()
    }
}

impl PartialEq for SharedFrame {
    fn eq(&self, other: &Self) -> bool {
        self.0.text == other.0.text
    }
}

impl Eq for SharedFrame {}

impl std::fmt::Debug for SharedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedFrame").field(&self.0.text).finish()
    }
}

/// How much one outbox may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxBounds {
    /// `limits.outbound_queue`: frames queued.
    pub frames: usize,
    /// `limits.outbound_bytes`: bytes held ([`cost`]); 0 for no bound in bytes.
    pub bytes: u64,
}

/// The close reasons of a slow consumer (all 4009), by the bound it hit.
const SLOW_FRAMES_REASON: &str = "slow consumer";
const SLOW_BYTES_REASON: &str = "slow consumer: outbound bytes";
const NODE_BUDGET_REASON: &str = "node outbound budget";

/// Why a push did not queue the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The client fell `limits.outbound_queue` frames or `limits.outbound_bytes` bytes
    /// behind, or the node went past `limits.node_outbound_bytes` and this connection
    /// held the most; it is being closed.
    SlowConsumer,
    /// The connection is already closing or closed.
    Closed,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Outbound>,
    /// The writer, when it found the queue empty.
    waker: Option<Waker>,
    /// A close is queued (after the frames before it) or due now: no more pushes.
    closing: bool,
    /// Drop whatever is queued and write the close frame next.
    close_now: bool,
    /// The first close reason given; later ones are ignored.
    reason: Option<(u16, String)>,
    /// What this outbox holds ([`cost`]): the frames queued and `in_writer`. Also in
    /// the node's total.
    bytes: u64,
    /// The part of `bytes` the writer took on its last call (see the module docs).
    in_writer: u64,
}

struct Shared {
    capacity: usize,
    /// `limits.outbound_bytes`; 0: no bound in bytes.
    max_bytes: u64,
    /// The node's total and budget; this outbox's id in its registry.
    budget: Arc<OutboundBudget>,
    id: u64,
    queue: Mutex<Queue>,
    /// Cancelled when the connection must close now or has closed; what the read
    /// loop and [`Outbox::closed`] wait on.
    closed: CancellationToken,
    /// Counts every frame queued (by type) and a slow consumer's disconnect.
    metrics: Arc<Metrics>,
    /// The relay of the worker that drains this queue (see the module docs).
    relay: Option<Arc<WakeRelay>>,
    /// When the client was last heard from, in milliseconds since `created`.
    heard_ms: AtomicU64,
    created: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The lock is never held across anything that panics; a poisoned queue is
        // still a consistent one.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `item` and counts it, here and in the node's total; true if that took
    /// the node past its budget (shed once the lock is released).
    fn enqueue(&self, queue: &mut Queue, item: Outbound) -> bool {
        let cost = cost(&item);
        queue.frames.push_back(item);
        queue.bytes += cost;
        self.budget.add(cost)
    }

    /// The bound a push of `cost` more bytes would break, if any.
    fn bound_hit(&self, queue: &Queue, cost: u64) -> Option<SlowConsumer> {
        if queue.frames.len() >= self.capacity {
            Some(SlowConsumer::Frames)
        } else if self.max_bytes > 0 && queue.bytes + cost > self.max_bytes {
            Some(SlowConsumer::Bytes)
        } else {
            None
        }
    }

    /// Records the close (the first reason wins) and wakes the writer; true if this
    /// reason was the first.
    fn close(&self, code: u16, reason: &str, now: bool) -> bool {
        let mut queue = self.lock();
        let first = queue.reason.is_none();
        if first {
            queue.reason = Some((code, reason.to_owned()));
        }
        if !queue.closing {
            queue.closing = true;
            if !now {
                let (code, reason) = queue.reason.clone().unwrap_or_default();
                // A close frame is never refused; it is tiny and ends the queue.
                self.enqueue(&mut queue, Outbound::Close(code, reason));
            }
        }
        if now {
            queue.close_now = true;
            // What the writer took stays counted until it asks again.
            let dropped = queue.bytes - queue.in_writer;
            queue.bytes = queue.in_writer;
            queue.frames = VecDeque::new();
            self.budget.release(dropped);
        }
        let waker = queue.waker.take();
        drop(queue);
        if now {
            self.closed.cancel();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
        first
    }

    /// Closes as a slow consumer (4009); counted once, under the bound it hit. True if
    /// this was the first close reason.
    fn close_slow(&self, hit: SlowConsumer) -> bool {
        let reason = match hit {
            SlowConsumer::Frames => SLOW_FRAMES_REASON,
            SlowConsumer::Bytes => SLOW_BYTES_REASON,
            SlowConsumer::NodeBudget => NODE_BUDGET_REASON,
        };
        let first = self.close(close::SLOW_CONSUMER, reason, true);
        if first {
            self.metrics.slow_consumer_disconnect(hit);
        }
        first
    }
}

impl Holder for Shared {
    fn held(&self) -> u64 {
        self.lock().bytes
    }

    fn shed(&self) -> bool {
        self.close_slow(SlowConsumer::NodeBudget)
    }
}

/// A handle to one connection's outbound queue. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("closed", &self.shared.closed.is_cancelled())
            .finish()
    }
}

impl Outbox {
    /// A queue within `bounds`, its bytes also counted in the node's `budget` and its
    /// frames in `metrics`, and the reader that drains it. `relay` is the
    /// [`WakeRelay`] of the thread that polls the reader.
    pub fn new(
        bounds: OutboxBounds,
        budget: Arc<OutboundBudget>,
        metrics: Arc<Metrics>,
        relay: Option<Arc<WakeRelay>>,
    ) -> (Outbox, OutboxReader) {
        let id = budget.next_id();
        let shared = Arc::new(Shared {
            capacity: bounds.frames.max(1),
            max_bytes: bounds.bytes,
            budget,
            id,
            queue: Mutex::new(Queue::default()),
            closed: CancellationToken::new(),
            metrics,
            relay,
            heard_ms: AtomicU64::new(0),
            created: Instant::now(),
        });
        let holder: Weak<dyn Holder> = Arc::downgrade(&shared) as Weak<dyn Holder>;
        shared.budget.register(id, holder);
        (
            Outbox {
                shared: shared.clone(),
            },
            OutboxReader { shared },
        )
    }

    /// Queues a text frame for the client.
    pub fn push(&self, frame: ByteString) -> Result<(), PushError> {
        let kind = FrameType::of(&frame);
        if let Some(waker) = self.push_typed(Outbound::Text(frame), kind)? {
            waker.wake();
        }
        Ok(())
    }

    /// Queues a frame of a known type; the writer's waker if it must be woken.
    fn push_typed(&self, item: Outbound, kind: FrameType) -> Result<Option<Waker>, PushError> {
        let shared = &*self.shared;
        let mut queue = shared.lock();
        if queue.closing {
            return Err(PushError::Closed);
        }
        if let Some(hit) = shared.bound_hit(&queue, cost(&item)) {
            drop(queue);
            shared.close_slow(hit);
            return Err(PushError::SlowConsumer);
        }
        // Counted before the frame is in: once in, the client may have it before this
        // thread runs on, and a scrape then must see it.
        shared.metrics.frame_out(kind);
        let over_budget = shared.enqueue(&mut queue, item);
        let waker = queue.waker.take();
        drop(queue);
        if over_budget {
            shared.budget.shed();
            if shared.closed.is_cancelled() {
                // This connection held the most: the frame went with the rest.
                return Err(PushError::SlowConsumer);
            }
        }
        Ok(waker)
    }

    /// Answers a WebSocket ping. A pong that does not fit is dropped: the queue being
    /// full is dealt with by the next text frame.
    pub fn pong(&self, payload: actix_web::web::Bytes) {
        let shared = &*self.shared;
        let item = Outbound::Pong(payload);
        let mut queue = shared.lock();
        if queue.closing || shared.bound_hit(&queue, cost(&item)).is_some() {
            return;
        }
        let over_budget = shared.enqueue(&mut queue, item);
        let waker = queue.waker.take();
        drop(queue);
        if over_budget {
            shared.budget.shed();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Bytes this outbox holds now (see the module docs).
    pub fn held(&self) -> u64 {
        self.shared.held()
    }

    /// Closes after the frames already queued have been written.
    pub fn close_after_queued(&self, code: u16, reason: &str) {
        self.close_with(code, reason, false);
    }

    /// Closes at once, dropping whatever is still queued.
    pub fn close_now(&self, code: u16, reason: &str) {
        self.close_with(code, reason, true);
    }

    fn close_with(&self, code: u16, reason: &str, now: bool) -> bool {
        self.shared.close(code, reason, now)
    }

    /// When the client was last heard from ([`Outbox::heard`]; at first, when the
    /// outbox was made).
    pub fn last_heard(&self) -> Instant {
        let shared = &*self.shared;
        shared.created + Duration::from_millis(shared.heard_ms.load(Ordering::Relaxed))
    }

    /// Records that the client was heard from (any frame, pongs included). A store,
    /// no timer: the read loop checks it when its silence deadline comes.
    pub fn heard(&self) {
        let shared = &*self.shared;
        let now = shared.created.elapsed().as_millis();
        shared
            .heard_ms
            .store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// True once the connection is closing now, its close frame is written, or it is
    /// gone.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Resolves when the connection must close now, its close frame is written, or it
    /// is gone.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await
    }

    /// A guard that closes the connection with 1011 (unless a reason was already
    /// given) when dropped: whatever ends a Session actor, its socket closes.
    pub fn close_on_drop(&self) -> CloseOnDrop {
        CloseOnDrop(self.clone())
    }
}

/// Closes its connection when dropped; held in a Session actor's state.
pub struct CloseOnDrop(Outbox);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0
            .close_now(close::INTERNAL_ERROR, "session ended unexpectedly");
    }
}

/// What [`OutboxReader::poll_take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Frames were moved out (the last of them may be a queued [`Outbound::Close`]).
    Frames,
    /// Close now, with this code and reason; nothing more will be taken.
    CloseNow(u16, String),
}

/// The writing end of an [`Outbox`], polled by the connection's HTTP task. Dropping it
/// (the connection is gone) closes the outbox: later pushes fail with `Closed`.
pub struct OutboxReader {
    shared: Arc<Shared>,
}

impl OutboxReader {
    /// Moves up to `max_frames` queued frames into `into`, and no more once they come
    /// to `max_bytes` (at least one frame, however large), stopping after a queued
    /// close; or the close that is due now; or registers the task to be woken by the
    /// next push.
    ///
    /// What one call moves out stays counted against the outbox until the next call:
    /// the caller must call again only once it has written them, all but a bounded
    /// buffer of its own (see the module docs).
    pub fn poll_take(
        &self,
        cx: &mut Context<'_>,
        into: &mut Vec<Outbound>,
        max_frames: usize,
        max_bytes: u64,
    ) -> Poll<Taken> {
        let shared = &*self.shared;
        let mut queue = shared.lock();
        let written = std::mem::take(&mut queue.in_writer);
        queue.bytes -= written;
        shared.budget.release(written);
        if queue.close_now {
            let (code, reason) = queue
                .reason
                .clone()
                .unwrap_or((close::NORMAL, String::new()));
            return Poll::Ready(Taken::CloseNow(code, reason));
        }
        if queue.frames.is_empty() {
            // A drained queue holds no buffer: an idle connection's memory is what the
            // benchmark's idle target counts, and a burst must not stay allocated.
            if queue.frames.capacity() > 0 {
                queue.frames = VecDeque::new();
            }
            match &mut queue.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        let mut close_taken = false;
        let mut taken_bytes = 0;
        for _ in 0..max_frames.max(1) {
            if taken_bytes >= max_bytes && taken_bytes > 0 {
                break;
            }
            let Some(item) = queue.frames.pop_front() else {
                break;
            };
            taken_bytes += cost(&item);
            close_taken = matches!(item, Outbound::Close(..));
            into.push(item);
            if close_taken {
                break;
            }
        }
        // Moved from the queue to the writer: still held, so `bytes` stays as it is.
        queue.in_writer = taken_bytes;
        drop(queue);
        if close_taken {
            // The close frame is on its way: the read loop can stop.
            self.shared.closed.cancel();
        }
        Poll::Ready(Taken::Frames)
    }
}

impl Drop for OutboxReader {
    fn drop(&mut self) {
        let shared = &*self.shared;
        let mut queue = shared.lock();
        queue.closing = true;
        queue.frames = VecDeque::new();
        queue.waker = None;
        let held = std::mem::take(&mut queue.bytes);
        queue.in_writer = 0;
        drop(queue);
        shared.budget.release(held);
        shared.budget.deregister(shared.id);
        shared.closed.cancel();
    }
}

/// One frame pushed to many outboxes, waking each worker once (see the module docs).
/// The members' writers are woken when the fan-out is dropped.
pub struct Fanout {
    frame: SharedFrame,
    kind: FrameType,
    relays: Vec<Arc<WakeRelay>>,
}

impl Fanout {
    pub fn new(frame: &ByteString) -> Self {
        Fanout {
            frame: SharedFrame::new(frame.clone()),
            kind: FrameType::of(frame),
            relays: Vec::new(),
        }
    }

    /// Queues the frame in `outbox`; its writer is woken when the fan-out ends.
    pub fn push(&mut self, outbox: &Outbox) -> Result<(), PushError> {
        let item = Outbound::Shared(self.frame.clone());
        let Some(waker) = outbox.push_typed(item, self.kind)? else {
            return Ok(());
        };
        match &outbox.shared.relay {
            Some(relay) => {
                relay.add(waker);
                if !self.relays.iter().any(|known| Arc::ptr_eq(known, relay)) {
                    self.relays.push(relay.clone());
                }
            }
            None => waker.wake(),
        }
        Ok(())
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        for relay in self.relays.drain(..) {
            relay.kick();
        }
    }
}

/// Wakes, from its own thread, the writers that fan-outs on other threads found
/// waiting: one task per actix worker ([`WakeRelay::run`]).
///
/// It holds at most one waker per connection of its worker at a time (a writer's
/// waker is taken out of its queue when handed over, and put back only when the
/// writer next waits), so it is bounded by the worker's connections.
#[derive(Default)]
pub struct WakeRelay {
    pending: Mutex<Vec<Waker>>,
    task: Mutex<Option<Waker>>,
    /// The relay task has been woken and has not run since.
    scheduled: AtomicBool,
    /// Cleared when the relay task ends (its runtime shut down): the worker needs a
    /// new relay then.
    running: AtomicBool,
}

impl WakeRelay {
    /// A relay and the task to spawn on the thread it serves.
    pub fn start() -> (Arc<WakeRelay>, impl Future<Output = ()>) {
        let relay = Arc::new(WakeRelay::default());
        relay.running.store(true, Ordering::Release);
        let task = RelayTask(relay.clone());
        (relay, task)
    }

    /// False once its task has ended.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    fn add(&self, waker: Waker) {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(waker);
    }

    fn kick(&self) {
        if self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let task = self
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        match task {
            Some(task) => task.wake(),
            // Not polled yet (or gone): wake the writers from here instead.
            None => self.wake_pending(),
        }
    }

    fn wake_pending(&self) {
        let wakers = std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for waker in wakers {
            waker.wake();
        }
    }
}

struct RelayTask(Arc<WakeRelay>);

impl Future for RelayTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let relay = &self.0;
        {
            let mut task = relay
                .task
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match &mut *task {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
        }
        // Cleared before the wakers are taken: a fan-out that adds one after this
        // point finds the relay unscheduled and wakes it again.
        relay.scheduled.store(false, Ordering::Release);
        relay.wake_pending();
        Poll::Pending
    }
}

impl Drop for RelayTask {
    fn drop(&mut self) {
        let relay = &self.0;
        relay.running.store(false, Ordering::Release);
        *relay
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        relay.wake_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    fn detached(capacity: usize) -> (Outbox, OutboxReader) {
        bounded(capacity, 0, &Arc::new(OutboundBudget::new(0)))
    }

    /// An outbox of `frames` and `bytes` (0: none) under `budget`.
    fn bounded(frames: usize, bytes: u64, budget: &Arc<OutboundBudget>) -> (Outbox, OutboxReader) {
        let bounds = OutboxBounds { frames, bytes };
        Outbox::new(bounds, budget.clone(), Arc::new(Metrics::new()), None)
    }

    fn reason(outbox: &Outbox) -> Option<(u16, String)> {
        outbox.shared.lock().reason.clone()
    }

    struct Counter(AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        (counter.clone(), Waker::from(counter))
    }

    fn take(reader: &OutboxReader, waker: &Waker) -> Poll<(Taken, Vec<Outbound>)> {
        let mut cx = Context::from_waker(waker);
        let mut frames = Vec::new();
        reader
            .poll_take(&mut cx, &mut frames, 64, u64::MAX)
            .map(|taken| (taken, frames))
    }

    #[test]
    fn a_full_queue_closes_as_slow_consumer() {
        let (outbox, _reader) = detached(2);
        assert_eq!(outbox.push("a".into()), Ok(()));
        assert_eq!(outbox.push("b".into()), Ok(()));
        assert_eq!(outbox.push("c".into()), Err(PushError::SlowConsumer));
        assert!(outbox.is_closed());
        assert_eq!(outbox.push("d".into()), Err(PushError::Closed));
        assert_eq!(
            reason(&outbox),
            Some((close::SLOW_CONSUMER, "slow consumer".to_owned()))
        );
    }

    #[test]
    fn frames_queued_are_counted_and_a_slow_consumer_once() {
        let (outbox, _reader) = detached(1);
        assert_eq!(outbox.push(r#"{"type":"message"}"#.into()), Ok(()));
        assert_eq!(
            outbox.push(r#"{"type":"message"}"#.into()),
            Err(PushError::SlowConsumer)
        );
        assert_eq!(
            outbox.push(r#"{"type":"pong"}"#.into()),
            Err(PushError::Closed)
        );
        let text = outbox.shared.metrics.encode().unwrap();
        for line in [
            r#"hubbub_messages_total{direction="out",type="message"} 1"#,
            r#"hubbub_messages_total{direction="out",type="pong"} 0"#,
            r#"hubbub_slow_consumer_disconnects_total{reason="frames"} 1"#,
            r#"hubbub_slow_consumer_disconnects_total{reason="bytes"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn a_queued_close_keeps_its_reason_when_the_session_drops() {
        let (outbox, _reader) = detached(2);
        outbox.close_after_queued(close::SERVICE_RESTART, "shutdown");
        drop(outbox.close_on_drop());
        assert_eq!(reason(&outbox).map(|r| r.0), Some(close::SERVICE_RESTART));
    }

    #[test]
    fn the_first_close_reason_wins() {
        let (outbox, _reader) = detached(2);
        outbox.close_now(close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
        drop(outbox.close_on_drop());
        assert_eq!(reason(&outbox).map(|r| r.0), Some(close::HEARTBEAT_TIMEOUT));
    }

    #[test]
    fn the_reader_takes_frames_in_order_then_a_queued_close_and_nothing_after() {
        let (outbox, reader) = detached(8);
        let (woken, waker) = counting_waker();
        assert!(take(&reader, &waker).is_pending());
        outbox.push("a".into()).unwrap();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "a push wakes the reader");
        outbox.push("b".into()).unwrap();
        outbox.close_after_queued(close::SERVICE_RESTART, "bye");
        assert_eq!(outbox.push("c".into()), Err(PushError::Closed));
        let Poll::Ready((Taken::Frames, frames)) = take(&reader, &waker) else {
            panic!("frames are ready");
        };
        assert_eq!(
            frames,
            vec![
                Outbound::Text("a".into()),
                Outbound::Text("b".into()),
                Outbound::Close(close::SERVICE_RESTART, "bye".into()),
            ]
        );
    }

    #[test]
    fn close_now_drops_what_is_queued_and_wakes_the_reader() {
        let (outbox, reader) = detached(8);
        let (woken, waker) = counting_waker();
        outbox.push("a".into()).unwrap();
        let _ = take(&reader, &waker);
        assert!(take(&reader, &waker).is_pending());
        outbox.push("b".into()).unwrap();
        outbox.close_now(close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
        assert!(woken.0.load(Ordering::SeqCst) >= 1);
        assert!(matches!(
            take(&reader, &waker),
            Poll::Ready((Taken::CloseNow(close::HEARTBEAT_TIMEOUT, _), frames)) if frames.is_empty()
        ));
    }

    #[test]
    fn dropping_the_reader_closes_the_outbox() {
        let (outbox, reader) = detached(8);
        drop(reader);
        assert!(outbox.is_closed());
        assert_eq!(outbox.push("a".into()), Err(PushError::Closed));
    }

    /// What a text frame of `len` bytes counts for.
    fn text_cost(len: usize) -> u64 {
        cost(&Outbound::Text("x".repeat(len).into()))
    }

    #[test]
    fn a_push_past_outbound_bytes_closes_as_slow_consumer() {
        let frame = "x".repeat(1_000);
        let bound = 3 * text_cost(1_000);
        let budget = Arc::new(OutboundBudget::new(0));
        let (outbox, _reader) = bounded(100, bound, &budget);
        for _ in 0..3 {
            assert_eq!(outbox.push(frame.as_str().into()), Ok(()));
        }
        assert_eq!(outbox.held(), bound, "exactly the bound is held");
        assert_eq!(
            outbox.push("x".into()),
            Err(PushError::SlowConsumer),
            "one byte past it is not"
        );
        assert!(outbox.is_closed());
        assert_eq!(
            reason(&outbox),
            Some((close::SLOW_CONSUMER, SLOW_BYTES_REASON.to_owned()))
        );
        let text = outbox.shared.metrics.encode().unwrap();
        for line in [
            r#"hubbub_slow_consumer_disconnects_total{reason="bytes"} 1"#,
            r#"hubbub_slow_consumer_disconnects_total{reason="frames"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // Closing now dropped the frames, and their bytes with them.
        assert_eq!((outbox.held(), budget.total()), (0, 0));
    }

    #[test]
    fn a_single_frame_over_outbound_bytes_closes_even_an_empty_queue() {
        let budget = Arc::new(OutboundBudget::new(0));
        let (outbox, _reader) = bounded(100, text_cost(4_096) - 1, &budget);
        assert_eq!(
            outbox.push("x".repeat(4_096).into()),
            Err(PushError::SlowConsumer)
        );
        assert_eq!(reason(&outbox).map(|r| r.0), Some(close::SLOW_CONSUMER));
        assert_eq!(budget.total(), 0);
    }

    #[test]
    fn without_a_bound_in_bytes_only_the_frame_count_holds() {
        let (outbox, _reader) = detached(2);
        assert_eq!(outbox.push("x".repeat(2_000_000).into()), Ok(()));
        assert_eq!(outbox.push("x".repeat(2_000_000).into()), Ok(()));
        assert_eq!(outbox.push("x".into()), Err(PushError::SlowConsumer));
    }

    #[test]
    fn what_the_writer_took_is_counted_until_it_asks_again() {
        let budget = Arc::new(OutboundBudget::new(0));
        let (outbox, reader) = bounded(100, 10 * text_cost(100), &budget);
        let (_, waker) = counting_waker();
        for _ in 0..3 {
            outbox.push("x".repeat(100).into()).unwrap();
        }
        outbox.pong(actix_web::web::Bytes::from_static(b"ping"));
        let held = 3 * text_cost(100) + cost(&Outbound::Pong("ping".into()));
        assert_eq!((outbox.held(), budget.total()), (held, held));
        assert!(take(&reader, &waker).is_ready());
        assert_eq!(
            (outbox.held(), budget.total()),
            (held, held),
            "taken, not yet written"
        );
        // Taken frames still count against the bound.
        for _ in 0..6 {
            outbox.push("x".repeat(100).into()).unwrap();
        }
        assert_eq!(
            outbox.push("x".repeat(100).into()),
            Err(PushError::SlowConsumer)
        );

        let budget = Arc::new(OutboundBudget::new(0));
        let (outbox, reader) = bounded(100, 0, &budget);
        outbox.push("x".repeat(100).into()).unwrap();
        assert!(take(&reader, &waker).is_ready());
        assert!(take(&reader, &waker).is_pending());
        assert_eq!(
            (outbox.held(), budget.total()),
            (0, 0),
            "asked again: written"
        );
    }

    #[test]
    fn the_writer_takes_a_bounded_number_of_bytes_but_at_least_one_frame() {
        let (outbox, reader) = detached(100);
        let (_, waker) = counting_waker();
        for _ in 0..5 {
            outbox.push("x".repeat(1_000).into()).unwrap();
        }
        let mut cx = Context::from_waker(&waker);
        let mut frames = Vec::new();
        let two = 2 * text_cost(1_000);
        assert!(reader.poll_take(&mut cx, &mut frames, 64, two).is_ready());
        assert_eq!(frames.len(), 2);
        frames.clear();
        assert!(reader.poll_take(&mut cx, &mut frames, 64, 1).is_ready());
        assert_eq!(frames.len(), 1, "one frame however large");
        assert_eq!(outbox.held(), 3 * text_cost(1_000));
    }

    #[test]
    fn a_closed_connection_holds_nothing() {
        let budget = Arc::new(OutboundBudget::new(0));
        let (_, waker) = counting_waker();
        let (outbox, reader) = bounded(100, 0, &budget);
        outbox.push("x".repeat(500).into()).unwrap();
        assert!(take(&reader, &waker).is_ready());
        outbox.push("x".repeat(700).into()).unwrap();
        outbox.close_now(close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
        assert_eq!(budget.total(), text_cost(500), "the writer's part is left");
        assert!(matches!(
            take(&reader, &waker),
            Poll::Ready((Taken::CloseNow(..), _))
        ));
        assert_eq!(budget.total(), 0);

        let (outbox, reader) = bounded(100, 0, &budget);
        outbox.push("x".repeat(500).into()).unwrap();
        assert!(take(&reader, &waker).is_ready());
        outbox.push("x".repeat(700).into()).unwrap();
        outbox.close_after_queued(close::SERVICE_RESTART, "shutdown");
        assert!(budget.total() > text_cost(500) + text_cost(700));
        drop(reader);
        assert_eq!((outbox.held(), budget.total()), (0, 0));
        assert_eq!(outbox.push("x".into()), Err(PushError::Closed));
        assert_eq!(budget.total(), 0);
    }

    #[test]
    fn past_the_node_budget_the_biggest_holders_are_closed_first() {
        let unit = text_cost(1_000);
        let budget = Arc::new(OutboundBudget::new(10 * unit));
        let outboxes: Vec<_> = (0..4).map(|_| bounded(100, 0, &budget)).collect();
        // Held: 1, 4, 2 and 3 frames: 10 in all, exactly the budget.
        for (held, (outbox, _)) in [1, 4, 2, 3].into_iter().zip(&outboxes) {
            for _ in 0..held {
                outbox.push("x".repeat(1_000).into()).unwrap();
            }
        }
        assert!(outboxes.iter().all(|(outbox, _)| !outbox.is_closed()));
        assert_eq!(budget.total(), 10 * unit);

        // One more frame to the smallest: 11 > 10, and closing the one holding 4
        // brings the node to 7. Nobody else is closed, the pusher included.
        assert_eq!(outboxes[0].0.push("x".repeat(1_000).into()), Ok(()));
        let closed: Vec<bool> = outboxes.iter().map(|(o, _)| o.is_closed()).collect();
        assert_eq!(closed, [false, true, false, false]);
        assert_eq!(
            reason(&outboxes[1].0),
            Some((close::SLOW_CONSUMER, NODE_BUDGET_REASON.to_owned()))
        );
        assert_eq!(budget.total(), 7 * unit);
        let text = outboxes[1].0.shared.metrics.encode().unwrap();
        let line = r#"hubbub_slow_consumer_disconnects_total{reason="node_budget"} 1"#;
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");

        // The pusher itself may be the biggest: its push then fails as a slow consumer.
        for _ in 0..3 {
            assert_eq!(outboxes[3].0.push("x".repeat(1_000).into()), Ok(()));
        }
        assert_eq!(budget.total(), 10 * unit);
        assert_eq!(
            outboxes[3].0.push("x".repeat(1_000).into()),
            Err(PushError::SlowConsumer)
        );
        assert_eq!(
            outboxes[3].0.push("x".into()),
            Err(PushError::Closed),
            "closed by the budget"
        );
        assert!(!outboxes[0].0.is_closed() && !outboxes[2].0.is_closed());

        // Every connection gone: the node holds nothing.
        drop(outboxes);
        assert_eq!(budget.total(), 0);
    }

    #[test]
    fn a_fanout_wakes_writers_through_their_relay_once_it_ends() {
        let (relay, task) = WakeRelay::start();
        let mut task = Box::pin(task);
        let (relay_woken, relay_waker) = counting_waker();
        assert!(task
            .as_mut()
            .poll(&mut Context::from_waker(&relay_waker))
            .is_pending());
        let metrics = Arc::new(Metrics::new());
        let budget = Arc::new(OutboundBudget::new(0));
        let bounds = OutboxBounds {
            frames: 8,
            bytes: 0,
        };
        let connections: Vec<_> = (0..3)
            .map(|_| Outbox::new(bounds, budget.clone(), metrics.clone(), Some(relay.clone())))
            .collect();
        let writers: Vec<_> = connections
            .iter()
            .map(|(_, reader)| {
                let (woken, waker) = counting_waker();
                assert!(take(reader, &waker).is_pending());
                woken
            })
            .collect();
        let frame: ByteString = r#"{"type":"message"}"#.into();
        {
            let mut fanout = Fanout::new(&frame);
            for (outbox, _) in &connections {
                fanout.push(outbox).unwrap();
            }
            assert_eq!(
                relay_woken.0.load(Ordering::SeqCst),
                0,
                "not before the end"
            );
        }
        assert_eq!(
            relay_woken.0.load(Ordering::SeqCst),
            1,
            "one wake per relay"
        );
        assert!(writers.iter().all(|w| w.0.load(Ordering::SeqCst) == 0));
        assert!(task
            .as_mut()
            .poll(&mut Context::from_waker(&relay_waker))
            .is_pending());
        assert!(writers.iter().all(|w| w.0.load(Ordering::SeqCst) == 1));
        let text = metrics.encode().unwrap();
        let line = r#"hubbub_messages_total{direction="out",type="message"} 3"#;
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        drop(task);
        assert!(!relay.is_running());
    }
}
