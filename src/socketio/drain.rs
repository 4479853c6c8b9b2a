//! What a Socket.IO transport writes for what a connection's outboxes hold (its own
//! Engine.IO packets, each namespace's v1 frames translated on the way by
//! `translate`), and where the connection ends ([`poll_drain`]).
//!
//! **Translating once.** A broadcast reaches every member's outbox as one
//! [`SharedFrame`]; the first Socket.IO member to take it translates it and keeps the
//! packets in the frame itself ([`Translation`], shared bytes: a clone is a reference
//! count), and every other member, on any worker and however far behind, takes them
//! from there. Frames meant for one connection (replies, `welcome`, direct messages)
//! are translated as they are taken.
//!
//! Must not know: HTTP, actix.

use super::connection::Shared;
use super::recovery::Recovery;
use super::translate::{self, Namespace};
use crate::actors::{Outbound, OutboxReader, Taken};
use bytestring::ByteString;
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
                if let End::Close(code, reason) = drain(taken, out) {
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
            Outbound::Shared(frame) => recovery.shared(&frame, namespace, out),
            Outbound::Text(text) if text.is_empty() => {}
            Outbound::Text(text) => out.push(text),
            Outbound::Pong(_) => {}
            Outbound::Close(code, reason) => return End::Close(code, reason),
        }
    }
    End::Open
}

/// Appends the Engine.IO packets the connection's own outbox holds to `out` (it holds
/// no v1 frames: those are each namespace's).
pub fn drain(items: Vec<Outbound>, out: &mut Vec<ByteString>) -> End {
    for item in items {
        match item {
            Outbound::Text(text) if text.starts_with('{') => {}
            Outbound::Shared(_) => {}
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

/// The packets `frame` becomes in `namespace`, into `out`.
pub(crate) fn translated(frame: &str, namespace: &Namespace, out: &mut Vec<ByteString>) {
    let mut encoded = Vec::new();
    translate::server_frame(frame, namespace, &mut encoded);
    out.extend(encoded.into_iter().map(ByteString::from));
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
}
