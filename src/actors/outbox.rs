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
//! The queue holds at most `limits.outbound_queue` frames. A push that finds it full
//! means the client cannot keep up: the connection is closed with 4009 (slow
//! consumer) at once, instead of buffering without limit. Each frame queued is counted
//! by type in the node's metrics, and each slow consumer closed.
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

use crate::protocol::close;
use crate::telemetry::metrics::FrameType;
use crate::telemetry::Metrics;
use bytestring::ByteString;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What the writer takes from the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    Text(ByteString),
    Pong(actix_web::web::Bytes),
    /// The last thing written: a close frame with this code and reason.
    Close(u16, String),
}

/// Why a push did not queue the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The client fell `limits.outbound_queue` frames behind; it is being closed.
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
}

struct Shared {
    capacity: usize,
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
    /// A queue of `capacity` frames, its frames counted in `metrics`, and the reader
    /// that drains it. `relay` is the [`WakeRelay`] of the thread that polls the reader.
    pub fn new(
        capacity: usize,
        metrics: Arc<Metrics>,
        relay: Option<Arc<WakeRelay>>,
    ) -> (Outbox, OutboxReader) {
        let shared = Arc::new(Shared {
            capacity: capacity.max(1),
            queue: Mutex::new(Queue::default()),
            closed: CancellationToken::new(),
            metrics,
            relay,
            heard_ms: AtomicU64::new(0),
            created: Instant::now(),
        });
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
        if let Some(waker) = self.push_typed(frame, kind)? {
            waker.wake();
        }
        Ok(())
    }

    /// Queues a frame of a known type; the writer's waker if it must be woken.
    fn push_typed(&self, frame: ByteString, kind: FrameType) -> Result<Option<Waker>, PushError> {
        let shared = &*self.shared;
        let mut queue = shared.lock();
        if queue.closing {
            return Err(PushError::Closed);
        }
        if queue.frames.len() >= shared.capacity {
            drop(queue);
            if self.close_with(close::SLOW_CONSUMER, "slow consumer", true) {
                shared.metrics.slow_consumer_disconnect();
            }
            return Err(PushError::SlowConsumer);
        }
        // Counted before the frame is in: once in, the client may have it before this
        // thread runs on, and a scrape then must see it.
        shared.metrics.frame_out(kind);
        queue.frames.push_back(Outbound::Text(frame));
        Ok(queue.waker.take())
    }

    /// Answers a WebSocket ping. A pong that does not fit is dropped: the queue being
    /// full is dealt with by the next text frame.
    pub fn pong(&self, payload: actix_web::web::Bytes) {
        let mut queue = self.shared.lock();
        if queue.closing || queue.frames.len() >= self.shared.capacity {
            return;
        }
        queue.frames.push_back(Outbound::Pong(payload));
        let waker = queue.waker.take();
        drop(queue);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Closes after the frames already queued have been written.
    pub fn close_after_queued(&self, code: u16, reason: &str) {
        self.close_with(code, reason, false);
    }

    /// Closes at once, dropping whatever is still queued.
    pub fn close_now(&self, code: u16, reason: &str) {
        self.close_with(code, reason, true);
    }

    /// Records the close (the first reason wins) and wakes the writer; true if this
    /// reason was the first.
    fn close_with(&self, code: u16, reason: &str, now: bool) -> bool {
        let mut queue = self.shared.lock();
        let first = queue.reason.is_none();
        if first {
            queue.reason = Some((code, reason.to_owned()));
        }
        if !queue.closing {
            queue.closing = true;
            if !now {
                let (code, reason) = queue.reason.clone().unwrap_or_default();
                queue.frames.push_back(Outbound::Close(code, reason));
            }
        }
        if now {
            queue.close_now = true;
            queue.frames.clear();
        }
        let waker = queue.waker.take();
        drop(queue);
        if now {
            self.shared.closed.cancel();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
        first
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
    /// Moves up to `max` queued frames into `into`, stopping after a queued close; or
    /// the close that is due now; or registers the task to be woken by the next push.
    pub fn poll_take(
        &self,
        cx: &mut Context<'_>,
        into: &mut Vec<Outbound>,
        max: usize,
    ) -> Poll<Taken> {
        let mut queue = self.shared.lock();
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
        for _ in 0..max.max(1) {
            let Some(item) = queue.frames.pop_front() else {
                break;
            };
            close_taken = matches!(item, Outbound::Close(..));
            into.push(item);
            if close_taken {
                break;
            }
        }
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
        let mut queue = self.shared.lock();
        queue.closing = true;
        queue.frames = VecDeque::new();
        queue.waker = None;
        drop(queue);
        self.shared.closed.cancel();
    }
}

/// One frame pushed to many outboxes, waking each worker once (see the module docs).
/// The members' writers are woken when the fan-out is dropped.
pub struct Fanout<'a> {
    frame: &'a ByteString,
    kind: FrameType,
    relays: Vec<Arc<WakeRelay>>,
}

impl<'a> Fanout<'a> {
    pub fn new(frame: &'a ByteString) -> Self {
        Fanout {
            frame,
            kind: FrameType::of(frame),
            relays: Vec::new(),
        }
    }

    /// Queues the frame in `outbox`; its writer is woken when the fan-out ends.
    pub fn push(&mut self, outbox: &Outbox) -> Result<(), PushError> {
        let Some(waker) = outbox.push_typed(self.frame.clone(), self.kind)? else {
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

impl Drop for Fanout<'_> {
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
        Outbox::new(capacity, Arc::new(Metrics::new()), None)
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
            .poll_take(&mut cx, &mut frames, 64)
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
            "hubbub_slow_consumer_disconnects_total 1",
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
        let connections: Vec<_> = (0..3)
            .map(|_| Outbox::new(8, metrics.clone(), Some(relay.clone())))
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
