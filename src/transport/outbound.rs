//! The write half of a WebSocket: the upgraded response's body, read straight from the
//! connection's [`Outbox`](crate::actors::Outbox).
//!
//! actix-http polls this body on the connection's own task (on its actix worker)
//! whenever it can write; the body takes what the outbox holds, up to
//! [`MAX_FRAMES_PER_WRITE`] frames and [`MAX_BYTES_PER_WRITE`] bytes at a time (at
//! least one frame), and encodes them as WebSocket frames, with a ping every
//! `heartbeat.interval_ms`. A close frame ends the body, and with it the connection.
//! So between a room and the socket there is one queue and one task, the HTTP
//! connection's own.
//!
//! **Memory.** The body keeps no buffer between polls: what it encodes it returns, and
//! actix-http copies that into its write buffer and drops it. actix-http polls the body
//! again only while that write buffer holds less than its `h1_write_buffer_size`
//! (32 KiB by default): its own backpressure. So when the body is polled, what it
//! returned last is on the socket but for at most 32 KiB, and the outbox counts the
//! frames it took against the connection's `limits.outbound_bytes` and the node's
//! budget until that next poll (`actors::outbox`). Per connection the write side then
//! holds at most `limits.outbound_bytes` of frames, plus actix-http's 32 KiB, plus
//! what the kernel's socket buffer takes.

//!
//! The read half stays with actix-ws (its `MessageStream`, in `websocket.rs`).

use crate::actors::{Outbound, OutboxReader, Taken, WakeRelay};
use actix_http::ws::{CloseCode, CloseReason, OpCode, Parser};
use actix_web::body::{BodySize, MessageBody};
use actix_web::web::{Bytes, BytesMut};
use std::cell::RefCell;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

/// Frames taken from the outbox for one write. actix-http polls again while its write
/// buffer has room, so this bounds one poll, not a write.
const MAX_FRAMES_PER_WRITE: usize = 64;

/// Bytes taken from the outbox for one write (past it, no further frame; one frame may
/// be larger): what one poll adds to actix-http's write buffer, beyond its own 32 KiB.
const MAX_BYTES_PER_WRITE: u64 = 64 * 1024;

/// RFC 6455: a control frame carries at most 125 bytes; a close frame's reason at most
/// 123 after its code.
const MAX_CLOSE_REASON_BYTES: usize = 123;

/// The response body of an upgraded connection.
pub struct OutboundBody {
    reader: OutboxReader,
    ping: Interval,
    /// The close frame is written: the body has ended.
    done: bool,
}

impl OutboundBody {
    /// `ping_every` is `heartbeat.interval_ms`.
    pub fn new(reader: OutboxReader, ping_every: Duration) -> Self {
        let mut ping = interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        OutboundBody {
            reader,
            ping,
            done: false,
        }
    }
}

impl MessageBody for OutboundBody {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut buf = BytesMut::new();
        // Local, not kept between polls: an idle connection holds no buffer.
        let mut taken = Vec::new();
        let polled =
            this.reader
                .poll_take(cx, &mut taken, MAX_FRAMES_PER_WRITE, MAX_BYTES_PER_WRITE);
        match polled {
            Poll::Ready(Taken::CloseNow(code, reason)) => {
                write_close(&mut buf, code, reason);
                this.done = true;
            }
            Poll::Ready(Taken::Frames) => {
                let size: usize = taken.iter().map(encoded_len).sum();
                buf.reserve(size);
                for item in taken {
                    match item {
                        Outbound::Text(text) => Parser::write_message(
                            &mut buf,
                            text.as_bytes(),
                            OpCode::Text,
                            true,
                            false,
                        ),
                        Outbound::Shared(frame) => Parser::write_message(
                            &mut buf,
                            frame.text().as_bytes(),
                            OpCode::Text,
                            true,
                            false,
                        ),
                        Outbound::Pong(payload) => {
                            Parser::write_message(&mut buf, payload, OpCode::Pong, true, false)
                        }
                        Outbound::Close(code, reason) => {
                            write_close(&mut buf, code, reason);
                            this.done = true;
                        }
                    }
                }
            }
            Poll::Pending => {}
        }
        if !this.done && this.ping.poll_tick(cx).is_ready() {
            Parser::write_message(&mut buf, b"", OpCode::Ping, true, false);
        }
        if buf.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(Some(Ok(buf.freeze())))
        }
    }
}

/// Bytes a frame takes on the wire (header at most 10 bytes, unmasked).
fn encoded_len(item: &Outbound) -> usize {
    10 + match item {
        Outbound::Text(text) => text.len(),
        Outbound::Shared(frame) => frame.text().len(),
        Outbound::Pong(payload) => payload.len(),
        Outbound::Close(_, reason) => 2 + reason.len(),
    }
}

fn write_close(buf: &mut BytesMut, code: u16, mut reason: String) {
    if reason.len() > MAX_CLOSE_REASON_BYTES {
        let mut end = MAX_CLOSE_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    let reason = CloseReason {
        code: CloseCode::from(code),
        description: (!reason.is_empty()).then_some(reason),
    };
    Parser::write_close(buf, Some(reason), false);
}

thread_local! {
    static RELAY: RefCell<Option<Arc<WakeRelay>>> = const { RefCell::new(None) };
}

/// The [`WakeRelay`] of the current actix worker, started on first use (and again if
/// the worker's runtime was replaced). Call from the worker's own thread.
pub fn worker_relay() -> Arc<WakeRelay> {
    RELAY.with(|slot| {
        let mut slot = slot.borrow_mut();
        if let Some(relay) = slot.as_ref().filter(|relay| relay.is_running()) {
            return relay.clone();
        }
        let (relay, task) = WakeRelay::start();
        actix_web::rt::spawn(task);
        *slot = Some(relay.clone());
        relay
    })
}
