//! A guard on the raw WebSocket byte stream: refuses a frame by its header when the
//! header announces more than `limits.max_frame_bytes`.
//!
//! Why this exists: actix-http 3.x checks a frame's size only once the whole payload
//! has arrived (`ws::frame::Parser::parse` waits for `idx + length` bytes before it
//! compares `length` with the limit), so a client announcing a 1 GB frame makes the
//! node buffer up to 1 GB before it is refused. This guard reads each client frame
//! header as the bytes stream past, and fails the stream as soon as a header announces
//! too much; the read loop then closes with 1009. Everything else passes through
//! untouched, and actix-ws still parses the frames. Remove it when actix-http refuses
//! oversized frames from their headers.

use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Where the guard is in the frame it is reading.
enum Position {
    /// Reading a header: the bytes seen so far.
    Header { bytes: [u8; 14], have: usize },
    /// Skipping a payload: bytes left.
    Payload { left: u64 },
}

/// Wraps a request body stream; see the module doc.
pub struct FrameGuard<S> {
    inner: S,
    max_payload: u64,
    position: Position,
    tripped: Arc<AtomicBool>,
}

impl<S> FrameGuard<S> {
    /// Guards `inner`; `tripped` turns true when a frame was refused.
    pub fn new(inner: S, max_payload: usize, tripped: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            max_payload: max_payload as u64,
            position: Position::Header {
                bytes: [0; 14],
                have: 0,
            },
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
                        self.position = Position::Header {
                            bytes: [0; 14],
                            have: 0,
                        };
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
                    self.position = if length == 0 {
                        Position::Header {
                            bytes: [0; 14],
                            have: 0,
                        }
                    } else {
                        Position::Payload { left: length }
                    };
                }
            }
        }
        true
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
        if this.tripped.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if this.inspect(&chunk) {
                    Poll::Ready(Some(Ok(chunk)))
                } else {
                    this.tripped.store(true, Ordering::Release);
                    Poll::Ready(Some(Err(PayloadError::Overflow)))
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_header(len: u64) -> Vec<u8> {
        let mut header = vec![0x81];
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
        FrameGuard::new((), max, Arc::new(AtomicBool::new(false)))
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
