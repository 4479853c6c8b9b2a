//! What a Socket.IO transport writes for what a connection's outboxes hold (its own
//! Engine.IO packets, each namespace's v1 frames translated on the way by
//! `translate`), and where the connection ends ([`poll_drain`]).
//!
//! **Encoding once.** A broadcast reaches every member's outbox as the same shared
//! bytes; translating it per member would parse and re-encode it once per Socket.IO
//! member. Each thread (an actix worker drains many connections in turn) keeps the
//! frames it translated last with their results ([`TranslationCache`]: the newest
//! [`CACHE_FRAMES`] frames, at most [`CACHE_BYTES`] of them), keyed by the frame's
//! buffer (held, so the address cannot be reused while cached) and the namespace:
//! members drained on one worker share one translation, and its packets are shared
//! bytes too (a clone is a reference count, not a copy). More than one entry because
//! a drain takes several frames at once under load, and the members of one room are
//! drained in turn with other rooms' members between them: with one entry, a batch
//! of two frames missed on every member. Members on other workers translate once per
//! worker; the room still encodes only the v1 frame.
//!
//! Must not know: HTTP, actix.

use super::connection::Shared;
use super::recovery::Recovery;
use super::translate::{self, Namespace};
use crate::actors::{Outbound, OutboxReader, Taken};
use bytestring::ByteString;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::task::{Context, Poll};

/// Frames one drain takes from each outbox.
const MAX_FRAMES_PER_DRAIN: usize = 256;
/// Bytes one drain takes from each outbox (at least one frame).
const MAX_BYTES_PER_DRAIN: u64 = 256 * 1024;

/// What ended a drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// More may come.
    Open,
    /// The connection closes with this code and reason after what was written.
    Close(u16, String),
}

/// Frames a thread's translation cache holds at most.
const CACHE_FRAMES: usize = 64;
/// Bytes of frames (and as much again of their packets) it holds at most; a frame
/// larger than this is translated and not cached.
const CACHE_BYTES: usize = 256 * 1024;

struct Cached {
    frame: ByteString,
    namespace: String,
    packets: Vec<ByteString>,
}

/// The frames one thread translated last, newest at the back.
#[derive(Default)]
struct TranslationCache {
    entries: VecDeque<Cached>,
    bytes: usize,
}

impl TranslationCache {
    /// `frame`'s packets in `namespace` into `out`, if cached.
    fn lookup(&self, frame: &ByteString, namespace: &str, out: &mut Vec<ByteString>) -> bool {
        let found = self.entries.iter().rev().find(|cached| {
            cached.frame.as_bytes().as_ptr() == frame.as_bytes().as_ptr()
                && cached.frame.len() == frame.len()
                && cached.namespace == namespace
        });
        match found {
            Some(cached) => {
                out.extend(cached.packets.iter().cloned());
                true
            }
            None => false,
        }
    }

    fn insert(&mut self, cached: Cached) {
        let size = cached.frame.len();
        if size > CACHE_BYTES {
            return;
        }
        while self.entries.len() >= CACHE_FRAMES || self.bytes + size > CACHE_BYTES {
            let Some(oldest) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= oldest.frame.len();
        }
        self.bytes += size;
        self.entries.push_back(cached);
    }
}

thread_local! {
    static CACHE: RefCell<TranslationCache> = RefCell::new(TranslationCache::default());
}

/// Takes what the connection's outboxes hold, its own (`engine`, Engine.IO packets)
/// and each namespace's (v1 frames, translated), into `out`; ready once `out` holds
/// something or an outbox closed, else every outbox will wake the task. Only the
/// holder of `engine` drains (a GET, or the WebSocket after the upgrade).
pub fn poll_drain(
    cx: &mut Context<'_>,
    engine: &OutboxReader,
    shared: &Shared,
    out: &mut Vec<ByteString>,
) -> Poll<End> {
    loop {
        let mut taken_any = false;
        let mut taken = Vec::new();
        match engine.poll_take(cx, &mut taken, MAX_FRAMES_PER_DRAIN, MAX_BYTES_PER_DRAIN) {
            Poll::Ready(Taken::CloseNow(code, reason)) => {
                return Poll::Ready(End::Close(code, reason))
            }
            Poll::Ready(Taken::Frames) => {
                taken_any = true;
                if let End::Close(code, reason) = drain(taken, None, out) {
                    return Poll::Ready(End::Close(code, reason));
                }
            }
            Poll::Pending => {}
        }
        for ns in shared.namespaces().iter_mut() {
            let mut taken = Vec::new();
            let polled =
                ns.reader
                    .poll_take(cx, &mut taken, MAX_FRAMES_PER_DRAIN, MAX_BYTES_PER_DRAIN);
            match polled {
                // A namespace's Session ended (slow consumer, token expiry,
                // shutdown): the connection ends with it.
                Poll::Ready(Taken::CloseNow(code, reason)) => {
                    return Poll::Ready(End::Close(code, reason))
                }
                Poll::Ready(Taken::Frames) => {
                    taken_any = true;
                    let end = drain_namespace(taken, &ns.namespace, &mut ns.recovery, out);
                    if let End::Close(code, reason) = end {
                        return Poll::Ready(End::Close(code, reason));
                    }
                }
                Poll::Pending => {}
            }
        }
        if !out.is_empty() {
            return Poll::Ready(End::Open);
        }
        // What was taken wrote nothing (a reply no ack asked for, a wake-up): look
        // again, so that every outbox is left holding this task's waker.
        if !taken_any {
            return Poll::Pending;
        }
    }
}

/// Appends the packets for what one namespace's outbox held to `out`, through its
/// connection state recovery (offsets, a held CONNECT answer).
fn drain_namespace(
    items: Vec<Outbound>,
    namespace: &Namespace,
    recovery: &mut Recovery,
    out: &mut Vec<ByteString>,
) -> End {
    for item in items {
        match item {
            Outbound::Text(text) if text.starts_with('{') => recovery.frame(&text, namespace, out),
            Outbound::Text(text) if text.is_empty() => {}
            Outbound::Text(text) => out.push(text),
            Outbound::Pong(_) => {}
            Outbound::Close(code, reason) => return End::Close(code, reason),
        }
    }
    End::Open
}

/// Appends the Engine.IO packets for `items` to `out`.
pub fn drain(
    items: Vec<Outbound>,
    namespace: Option<&Namespace>,
    out: &mut Vec<ByteString>,
) -> End {
    for item in items {
        match item {
            Outbound::Text(text) if text.starts_with('{') => {
                if let Some(namespace) = namespace {
                    translated(&text, namespace, out);
                }
            }
            // An empty text only wakes the drain (a namespace just connected).
            Outbound::Text(text) if text.is_empty() => {}
            Outbound::Text(text) => out.push(text),
            // WebSocket pongs are v1's; Engine.IO has its own.
            Outbound::Pong(_) => {}
            Outbound::Close(code, reason) => return End::Close(code, reason),
        }
    }
    End::Open
}

/// The packets `frame` becomes in `namespace`, from the thread's cache when the same
/// frame was translated there lately.
pub(crate) fn translated(frame: &ByteString, namespace: &Namespace, out: &mut Vec<ByteString>) {
    if CACHE.with(|cache| cache.borrow().lookup(frame, &namespace.name, out)) {
        return;
    }
    let mut encoded = Vec::new();
    translate::server_frame(frame, namespace, &mut encoded);
    let packets: Vec<ByteString> = encoded.into_iter().map(ByteString::from).collect();
    out.extend(packets.iter().cloned());
    CACHE.with(|cache| {
        cache.borrow_mut().insert(Cached {
            frame: frame.clone(),
            namespace: namespace.name.clone(),
            packets,
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::{OutboundBudget, Outbox, OutboxBounds};
    use crate::socketio::connection::NamespaceReader;
    use crate::telemetry::Metrics;
    use std::sync::Arc;
    use std::task::Waker;

    fn outbox() -> (Outbox, OutboxReader) {
        let bounds = OutboxBounds {
            frames: 16,
            bytes: 0,
        };
        Outbox::new(
            bounds,
            Arc::new(OutboundBudget::new(0)),
            Arc::new(Metrics::new()),
            None,
        )
    }

    fn drained(engine: &OutboxReader, shared: &Shared) -> Poll<(End, Vec<ByteString>)> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        poll_drain(&mut cx, engine, shared, &mut out).map(|end| (end, out))
    }

    #[test]
    fn one_drain_reads_every_namespace_and_ends_with_any() {
        let (engine_box, engine) = outbox();
        let shared = Shared::new("sid".into(), engine_box.clone());
        assert!(drained(&engine, &shared).is_pending());
        let (chat_box, chat) = outbox();
        shared.namespaces().push(NamespaceReader {
            namespace: Namespace::new("/chat").unwrap(),
            reader: chat,
            recovery: Recovery::fresh(),
        });
        // A wake-up alone writes nothing: still pending.
        engine_box.push(ByteString::new()).unwrap();
        assert!(drained(&engine, &shared).is_pending());
        chat_box
            .push(r#"{"type":"typing","room":"chat:r","user":{"id":"a","name":"A"}}"#.into())
            .unwrap();
        engine_box.push("2".into()).unwrap();
        let Poll::Ready((End::Open, out)) = drained(&engine, &shared) else {
            panic!("ready");
        };
        assert_eq!(
            out,
            [
                "2",
                r#"42/chat,["typing",{"room":"r","user":{"id":"a","name":"A"}}]"#
            ]
        );
        // A reply no ack asked for writes nothing, and the drain waits on.
        chat_box
            .push(r#"{"type":"reply","ok":true,"data":{}}"#.into())
            .unwrap();
        assert!(drained(&engine, &shared).is_pending());
        chat_box.close_now(4009, "slow consumer");
        assert!(matches!(
            drained(&engine, &shared),
            Poll::Ready((End::Close(4009, _), _))
        ));
    }

    fn entry(frame: &ByteString) -> Cached {
        Cached {
            frame: frame.clone(),
            namespace: "/".into(),
            packets: vec![ByteString::from("p")],
        }
    }

    #[test]
    fn the_cache_finds_each_of_a_batch_and_keeps_the_newest_within_its_bounds() {
        let mut cache = TranslationCache::default();
        let frames: Vec<ByteString> = (0..CACHE_FRAMES + 2)
            .map(|i| ByteString::from(format!("{{\"n\":{i}}}")))
            .collect();
        for frame in &frames {
            cache.insert(entry(frame));
        }
        let mut out = Vec::new();
        // The two oldest were evicted by count; every newer one is found.
        assert!(!cache.lookup(&frames[0], "/", &mut out));
        assert!(!cache.lookup(&frames[1], "/", &mut out));
        for frame in &frames[2..] {
            assert!(cache.lookup(frame, "/", &mut out));
        }
        assert_eq!(out.len(), CACHE_FRAMES);
        // Equal text in another buffer is another frame; another namespace too.
        let copy = ByteString::from(frames[5].to_string());
        assert!(!cache.lookup(&copy, "/", &mut out));
        assert!(!cache.lookup(&frames[5], "/chat", &mut out));
        // Bounded in bytes: a large frame evicts what it must, one too large is not kept.
        let big = ByteString::from("x".repeat(CACHE_BYTES / 2 + 1));
        cache.insert(entry(&big));
        assert!(cache.bytes <= CACHE_BYTES);
        assert!(cache.lookup(&big, "/", &mut out));
        let huge = ByteString::from("x".repeat(CACHE_BYTES + 1));
        cache.insert(entry(&huge));
        assert!(!cache.lookup(&huge, "/", &mut out));
        assert!(cache.bytes <= CACHE_BYTES);
    }
}
