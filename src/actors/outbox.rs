//! The bounded outbound queue of one connection, and the writer task that drains it.
//!
//! Owns: the write half of a WebSocket (`actix_ws::Session`). A Session actor creates
//! an [`Outbox`] when it starts and keeps it in its state; rooms and presence hold
//! clones and push encoded frames straight into it, so a broadcast costs one
//! `try_send` per member and never grows an actor's unbounded mailbox.
//!
//! The queue holds at most `limits.outbound_queue` frames. A push that finds it full
//! means the client cannot keep up: the connection is closed with 4009 (slow
//! consumer) at once, instead of buffering without limit. Each frame queued is counted
//! by type in the node's metrics, and each slow consumer closed.
//!
//! Closing has two speeds. [`Outbox::close_after_queued`] puts the close behind the
//! frames already queued (a `goodbye` then 1012). [`Outbox::close_now`] jumps the
//! queue (slow consumer, heartbeat timeout, oversized frame). Either way the first
//! close reason wins, and the writer task ends once the close frame is out or the
//! close grace has passed.

use crate::protocol::close;
use crate::telemetry::metrics::FrameType;
use crate::telemetry::Metrics;
use actix_ws::CloseReason;
use bytestring::ByteString;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long the writer keeps trying to hand a close frame to a client that does not
/// read, before it drops the connection without one.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

enum Outbound {
    Text(ByteString),
    Pong(actix_web::web::Bytes),
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

struct Shared {
    /// Cancelled when the connection must close now or has closed.
    closing: CancellationToken,
    /// The first close reason given; later ones are ignored.
    reason: Mutex<Option<(u16, String)>>,
    /// Counts every frame queued (by type) and a slow consumer's disconnect.
    metrics: Arc<Metrics>,
}

/// A handle to one connection's outbound queue. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outbound>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("closing", &self.shared.closing.is_cancelled())
            .finish()
    }
}

impl Outbox {
    /// Queues a text frame for the client.
    pub fn push(&self, frame: ByteString) -> Result<(), PushError> {
        if self.shared.closing.is_cancelled() {
            return Err(PushError::Closed);
        }
        let metrics = &self.shared.metrics;
        // Counted once it has a place in the queue, but before it is in: once in, the
        // client may have it before this thread runs on, and a scrape then must see it.
        match self.tx.try_reserve() {
            Ok(place) => {
                metrics.frame_out(FrameType::of(&frame));
                place.send(Outbound::Text(frame));
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                if self.record_reason(close::SLOW_CONSUMER, "slow consumer") {
                    metrics.slow_consumer_disconnect();
                }
                self.shared.closing.cancel();
                Err(PushError::SlowConsumer)
            }
            Err(mpsc::error::TrySendError::Closed(())) => Err(PushError::Closed),
        }
    }

    /// Answers a WebSocket ping. A pong that does not fit is dropped: the queue being
    /// full is dealt with by the next text frame.
    pub fn pong(&self, payload: actix_web::web::Bytes) {
        let _ = self.tx.try_send(Outbound::Pong(payload));
    }

    /// Closes after the frames already queued have been written.
    pub fn close_after_queued(&self, code: u16, reason: &str) {
        self.record_reason(code, reason);
        if self
            .tx
            .try_send(Outbound::Close(code, reason.to_owned()))
            .is_err()
        {
            self.close_now(code, reason);
        }
    }

    /// Closes at once, dropping whatever is still queued.
    pub fn close_now(&self, code: u16, reason: &str) {
        self.record_reason(code, reason);
        self.shared.closing.cancel();
    }

    /// Keeps the first close reason given; true if this was it.
    fn record_reason(&self, code: u16, reason: &str) -> bool {
        let Ok(mut slot) = self.shared.reason.lock() else {
            return false;
        };
        let first = slot.is_none();
        slot.get_or_insert_with(|| (code, reason.to_owned()));
        first
    }

    /// True once the connection is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closing.is_cancelled()
    }

    /// Resolves when the connection starts closing.
    pub async fn closed(&self) {
        self.shared.closing.cancelled().await
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

/// Creates a connection's outbox and spawns its writer task on the current runtime.
/// Frames pushed into it are counted in `metrics`.
pub fn spawn_writer(
    ws: actix_ws::Session,
    capacity: usize,
    ping_every: Duration,
    metrics: Arc<Metrics>,
) -> Outbox {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let shared = Arc::new(Shared {
        closing: CancellationToken::new(),
        reason: Mutex::new(None),
        metrics,
    });
    tokio::spawn(write_loop(ws, rx, shared.clone(), ping_every));
    Outbox { tx, shared }
}

async fn write_loop(
    mut ws: actix_ws::Session,
    mut rx: mpsc::Receiver<Outbound>,
    shared: Arc<Shared>,
    ping_every: Duration,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let closing = shared.closing.clone();
    let close_with = loop {
        // Each write also watches `closing`, so a client that stopped reading cannot
        // hold the writer inside a send while its close is due.
        let written = tokio::select! {
            biased;
            _ = closing.cancelled() => break None,
            item = rx.recv() => match item {
                Some(Outbound::Text(text)) => send(&closing, ws.text(text)).await,
                Some(Outbound::Pong(payload)) => send(&closing, ws.pong(&payload)).await,
                Some(Outbound::Close(code, reason)) => break Some((code, reason)),
                None => break None,
            },
            _ = ping.tick() => send(&closing, ws.ping(b"")).await,
        };
        if !written {
            break None;
        }
    };
    let (code, reason) = match close_with {
        Some(given) => given,
        None => shared
            .reason
            .lock()
            .ok()
            .and_then(|slot| slot.clone())
            .unwrap_or((close::NORMAL, String::new())),
    };
    closing.cancel();
    let reason = CloseReason {
        code: code.into(),
        description: (!reason.is_empty()).then_some(reason),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(Some(reason))).await;
}

/// Runs one write; false when the connection is gone or closing.
async fn send(
    closing: &CancellationToken,
    write: impl std::future::Future<Output = Result<(), actix_ws::Closed>>,
) -> bool {
    tokio::select! {
        biased;
        _ = closing.cancelled() => false,
        result = write => result.is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detached(capacity: usize) -> (Outbox, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(capacity);
        let shared = Arc::new(Shared {
            closing: CancellationToken::new(),
            reason: Mutex::new(None),
            metrics: Arc::new(Metrics::new()),
        });
        (Outbox { tx, shared }, rx)
    }

    #[test]
    fn a_full_queue_closes_as_slow_consumer() {
        let (outbox, _rx) = detached(2);
        assert_eq!(outbox.push("a".into()), Ok(()));
        assert_eq!(outbox.push("b".into()), Ok(()));
        assert_eq!(outbox.push("c".into()), Err(PushError::SlowConsumer));
        assert!(outbox.is_closed());
        assert_eq!(outbox.push("d".into()), Err(PushError::Closed));
        let reason = outbox.shared.reason.lock().unwrap().clone();
        assert_eq!(
            reason,
            Some((close::SLOW_CONSUMER, "slow consumer".to_owned()))
        );
    }

    #[test]
    fn frames_queued_are_counted_and_a_slow_consumer_once() {
        let (outbox, _rx) = detached(1);
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
        let (outbox, _rx) = detached(2);
        outbox.close_after_queued(close::SERVICE_RESTART, "shutdown");
        drop(outbox.close_on_drop());
        let reason = outbox.shared.reason.lock().unwrap().clone();
        assert_eq!(reason.map(|r| r.0), Some(close::SERVICE_RESTART));
    }

    #[test]
    fn the_first_close_reason_wins() {
        let (outbox, _rx) = detached(2);
        outbox.close_now(close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
        drop(outbox.close_on_drop());
        let reason = outbox.shared.reason.lock().unwrap().clone();
        assert_eq!(reason.map(|r| r.0), Some(close::HEARTBEAT_TIMEOUT));
    }
}
