//! A guard on the raw WebSocket byte stream: refuses a frame by its header when the
//! header announces more than the endpoint's bound (`limits.max_frame_bytes`,
//! `socketio.max_payload_bytes`), and holds each message still arriving against the
//! node's budget (`limits.node_inbound_bytes`,
//! [`InboundBudget`](super::inbound_budget::InboundBudget)).
//!
//! Why this exists: actix-http 3.x checks a frame's size only once the whole payload
//! has arrived (`ws::frame::Parser::parse` waits for `idx + length` bytes before it
//! compares `length` with the limit, and reserves that length as soon as the header is
//! in), so a client announcing a 1 GB frame makes the node buffer up to 1 GB before it
//! is refused. This guard reads each client frame header as the bytes stream past, and
//! fails the stream as soon as a header announces too much; the read loop then closes
//! with 1009. Everything else passes through untouched, and actix-ws still parses the
//! frames. Remove the size check when actix-http refuses oversized frames from their
//! headers.
//!
//! **The budget.** What a connection holds between reads is the message it has begun
//! and not finished: the frame still arriving (at the length its header announced,
//! which actix-http has reserved) plus the fragments before it of a message sent in
//! several frames (actix-ws keeps them until the last). The guard holds that against
//! the node's budget after every read that ends inside a message; a message that
//! arrives within one read holds nothing. When the budget sheds the guard's hold, the
//! guard fails the stream and the read loop closes the connection with 1013.

use super::inbound_budget::Hold;
use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Why a guard failed its stream: shared with the read loop, which closes accordingly.
#[derive(Debug, Default)]
pub struct Tripped(AtomicU8);

/// What [`Tripped`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trip {
    /// A frame header announced more than the bound: close with 1009.
    Oversized,
    /// The node is past `limits.node_inbound_bytes` and this connection's message was
    /// among the oldest: close with 1013.
    Shed,
}

impl Tripped {
    const OVERSIZED: u8 = 1;
    const SHED: u8 = 2;

    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Why the stream failed, if the guard failed it.
    pub fn why(&self) -> Option<Trip> {
        match self.0.load(Ordering::Acquire) {
            Self::OVERSIZED => Some(Trip::Oversized),
            Self::SHED => Some(Trip::Shed),
            _ => None,
        }
    }

    fn set(&self, trip: Trip) {
        let code = match trip {
            Trip::Oversized => Self::OVERSIZED,
            Trip::Shed => Self::SHED,
        };
        self.0.store(code, Ordering::Release);
    }
}

/// Where the guard is in the frame it is reading.
enum Position {
    /// Reading a header: the bytes seen so far.
    Header { bytes: [u8; 14], have: usize },
    /// Skipping a payload: bytes left.
    Payload { left: u64 },
}

/// The frame being read, once its header is complete.
#[derive(Clone, Copy)]
struct Frame {
    /// Its announced payload length.
    length: u64,
    /// A data frame (text, binary, continuation), not a control frame.
    data: bool,
    /// The last frame of its message.
    fin: bool,
}

/// Wraps a request body stream; see the module doc.
pub struct FrameGuard<S> {
    inner: S,
    max_payload: u64,
    position: Position,
    /// The frame whose payload is being read.
    frame: Option<Frame>,
    /// Payload bytes of the finished frames of a message still arriving (it was sent
    /// in several frames and its last has not come).
    fragments: u64,
    /// Messages begun on this stream; which one `hold` holds.
    begun: u64,
    held: Option<u64>,
    hold: Hold,
    tripped: Arc<Tripped>,
}

impl<S> FrameGuard<S> {
    /// Guards `inner`: frames over `max_payload` are refused, messages still arriving
    /// are held with `hold`; `tripped` says why, once the guard failed the stream.
    pub fn new(inner: S, max_payload: usize, hold: Hold, tripped: Arc<Tripped>) -> Self {
        Self {
            inner,
            max_payload: max_payload as u64,
            position: Position::Header {
                bytes: [0; 14],
                have: 0,
            },
            frame: None,
            fragments: 0,
            begun: 0,
            held: None,
            hold,
            tripped,
        }
    }

    /// Follows the frames in `chunk`; false when a header announced too much.
    fn inspect(&mut self, mut chunk: &[u8]) -> bool {
        while !chunk.is_empty() {
            match &mut self.position {
                Position::Payload { left } => {
                    let skip = (*left).min(chunk.len() as u64);
                    *left -= skip;
                    chunk = &chunk[skip as usize..];
                    if *left == 0 {
                        self.frame_done();
                    }
                }
                Position::Header { bytes, have } => {
                    bytes[*have] = chunk[0];
                    *have += 1;
                    chunk = &chunk[1..];
                    let Some(length) = header_payload_length(&bytes[..*have]) else {
                        continue;
                    };
                    if length > self.max_payload {
                        return false;
                    }
                    let opcode = bytes[0] & 0x0f;
                    let frame = Frame {
                        length,
                        data: opcode < 8,
                        fin: bytes[0] & 0x80 != 0,
                    };
                    // A text or binary frame begins a message (a continuation goes on
                    // with one).
                    if frame.data && opcode != 0 {
                        self.begun += 1;
                        self.fragments = 0;
                    }
                    self.frame = Some(frame);
                    if length == 0 {
                        self.frame_done();
                    } else {
                        self.position = Position::Payload { left: length };
                    }
                }
            }
        }
        true
    }

    fn frame_done(&mut self) {
        if let Some(frame) = self.frame.take().filter(|f| f.data) {
            self.fragments = if frame.fin {
                0
            } else {
                self.fragments + frame.length
            };
        }
        self.position = Position::Header {
            bytes: [0; 14],
            have: 0,
        };
    }

    /// Bytes of the message still arriving: its finished fragments and, at the size
    /// its header announced, the frame being read.
    fn unfinished(&self) -> u64 {
        let reading = match (&self.position, self.frame) {
            (Position::Payload { .. }, Some(frame)) if frame.data => frame.length,
            _ => 0,
        };
        self.fragments + reading
    }

    /// Holds what is unfinished after a read; false if the hold was shed.
    fn hold_unfinished(&mut self, cx: &Context<'_>) -> bool {
        let unfinished = self.unfinished();
        if unfinished == 0 {
            self.hold.release();
            self.held = None;
            return true;
        }
        if self.held != Some(self.begun) {
            // Another message than the one held: it begins its own place in the order.
            self.hold.release();
            self.held = Some(self.begun);
        }
        self.hold.set(unfinished, cx).is_ok()
    }
}

/// `body` behind a [`FrameGuard`]: the payload actix-ws reads.
pub fn guarded(
    body: actix_web::dev::Payload,
    max_payload: usize,
    hold: Hold,
    tripped: Arc<Tripped>,
) -> actix_web::dev::Payload {
    actix_web::dev::Payload::Stream {
        payload: Box::pin(FrameGuard::new(body, max_payload, hold, tripped)),
    }
}

/// The payload length once `header` holds a complete frame header, else None.
fn header_payload_length(header: &[u8]) -> Option<u64> {
    if header.len() < 2 {
        return None;
    }
    let masked = header[1] & 0x80 != 0;
    let short = u64::from(header[1] & 0x7f);
    let extra = match short {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let total = 2 + extra + if masked { 4 } else { 0 };
    if header.len() < total {
        return None;
    }
    Some(match extra {
        2 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        8 => {
            let mut len = [0u8; 8];
            len.copy_from_slice(&header[2..10]);
            u64::from_be_bytes(len)
        }
        _ => short,
    })
}

impl<S> Stream for FrameGuard<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.tripped.why().is_some() {
            return Poll::Ready(None);
        }
        if this.hold.is_shed() {
            this.tripped.set(Trip::Shed);
            return Poll::Ready(Some(Err(PayloadError::Overflow)));
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if !this.inspect(&chunk) {
                    this.tripped.set(Trip::Oversized);
                    return Poll::Ready(Some(Err(PayloadError::Overflow)));
                }
                if !this.hold_unfinished(cx) {
                    this.tripped.set(Trip::Shed);
                    return Poll::Ready(Some(Err(PayloadError::Overflow)));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::inbound_budget::InboundBudget;

    fn frame_header(len: u64) -> Vec<u8> {
        header(0x81, len)
    }

    /// A masked client frame header: `first` is FIN and the opcode.
    fn header(first: u8, len: u64) -> Vec<u8> {
        let mut header = vec![first];
        if len < 126 {
            header.push(0x80 | len as u8);
        } else if len <= u64::from(u16::MAX) {
            header.push(0x80 | 126);
            header.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            header.push(0x80 | 127);
            header.extend_from_slice(&len.to_be_bytes());
        }
        header.extend_from_slice(&[1, 2, 3, 4]);
        header
    }

    fn guard(max: usize) -> FrameGuard<()> {
        FrameGuard::new((), max, InboundBudget::new(0, None).hold(), Tripped::new())
    }

    fn chunks(
        parts: Vec<Vec<u8>>,
    ) -> futures_util::stream::Iter<std::vec::IntoIter<Result<Bytes, PayloadError>>> {
        futures_util::stream::iter(
            parts
                .into_iter()
                .map(|p| Ok(Bytes::from(p)))
                .collect::<Vec<_>>(),
        )
    }

    /// Polls `guard` once with a waker that does nothing.
    fn poll_once<S>(guard: &mut FrameGuard<S>) -> Poll<Option<Result<Bytes, PayloadError>>>
    where
        S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
    {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(guard).poll_next(&mut cx)
    }

    #[test]
    fn a_frame_still_arriving_is_held_at_its_announced_length_until_it_ends() {
        let budget = InboundBudget::new(0, None);
        let mut head = frame_header(1000);
        head.extend([b'x'; 10]);
        let parts = vec![head, vec![b'x'; 500], vec![b'x'; 490], frame_header(5)];
        let mut g = FrameGuard::new(chunks(parts), 1000, budget.hold(), Tripped::new());
        assert!(matches!(poll_once(&mut g), Poll::Ready(Some(Ok(_)))));
        assert_eq!(
            budget.total(),
            1000,
            "the announced length, not the 10 bytes come"
        );
        assert!(matches!(poll_once(&mut g), Poll::Ready(Some(Ok(_)))));
        assert_eq!(budget.total(), 1000);
        assert!(matches!(poll_once(&mut g), Poll::Ready(Some(Ok(_)))));
        assert_eq!(budget.total(), 0, "a finished frame holds nothing");
        // A header alone (the next frame's payload not begun) holds nothing.
        assert!(matches!(poll_once(&mut g), Poll::Ready(Some(Ok(_)))));
        assert_eq!(budget.total(), 5);
    }

    #[test]
    fn a_message_in_fragments_is_held_until_its_last_frame() {
        let budget = InboundBudget::new(0, None);
        let mut first = header(0x01, 300); // text, not FIN
        first.extend([b'x'; 300]);
        let mut ping = header(0x89, 4); // a control frame between fragments
        ping.extend([0; 4]);
        let mut middle = header(0x00, 200); // continuation, not FIN
        middle.extend([b'x'; 200]);
        let mut last = header(0x80, 100); // continuation, FIN
        last.extend([b'x'; 100]);
        let parts = vec![first, ping, middle, last];
        let mut g = FrameGuard::new(chunks(parts), 1000, budget.hold(), Tripped::new());
        let _ = poll_once(&mut g);
        assert_eq!(budget.total(), 300);
        let _ = poll_once(&mut g);
        assert_eq!(
            budget.total(),
            300,
            "control frames are not part of the message"
        );
        let _ = poll_once(&mut g);
        assert_eq!(budget.total(), 500);
        let _ = poll_once(&mut g);
        assert_eq!(budget.total(), 0);
    }

    #[test]
    fn a_shed_guard_fails_its_stream_and_says_why() {
        let budget = InboundBudget::new(1500, None);
        let tripped = Tripped::new();
        let mut stalled = FrameGuard::new(
            chunks(vec![frame_header(1000)]),
            1000,
            budget.hold(),
            tripped.clone(),
        );
        let _ = poll_once(&mut stalled);
        assert_eq!(budget.total(), 1000);
        // A younger connection's frame takes the node past 1,500: the stalled one goes.
        let mut live = FrameGuard::new(
            chunks(vec![frame_header(1000)]),
            1000,
            budget.hold(),
            Tripped::new(),
        );
        assert!(matches!(poll_once(&mut live), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(
            poll_once(&mut stalled),
            Poll::Ready(Some(Err(PayloadError::Overflow)))
        ));
        assert_eq!(tripped.why(), Some(Trip::Shed));
        assert!(matches!(poll_once(&mut stalled), Poll::Ready(None)));
        assert_eq!(budget.total(), 1000);
    }

    #[test]
    fn an_oversized_header_says_so() {
        let tripped = Tripped::new();
        let mut g = FrameGuard::new(
            chunks(vec![frame_header(1001)]),
            1000,
            InboundBudget::new(0, None).hold(),
            tripped.clone(),
        );
        assert!(matches!(
            poll_once(&mut g),
            Poll::Ready(Some(Err(PayloadError::Overflow)))
        ));
        assert_eq!(tripped.why(), Some(Trip::Oversized));
    }

    #[test]
    fn frames_within_the_limit_pass_even_split_anywhere() {
        let mut stream = Vec::new();
        for len in [0u64, 5, 125, 126, 1000] {
            stream.extend(frame_header(len));
            stream.extend(std::iter::repeat_n(b'x', len as usize));
        }
        for split in [1, 2, 3, 7, 100] {
            let mut g = guard(1000);
            assert!(stream.chunks(split).all(|c| g.inspect(c)), "split {split}");
        }
    }

    #[test]
    fn a_header_announcing_too_much_is_refused_before_its_payload() {
        let mut g = guard(1000);
        assert!(g.inspect(&frame_header(10)));
        assert!(g.inspect(&[b'x'; 10]));
        assert!(!g.inspect(&frame_header(1001)));
        let mut g = guard(1 << 20);
        assert!(!g.inspect(&frame_header(1 << 40)));
    }
}
