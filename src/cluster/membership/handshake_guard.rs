//! The guard on an incoming peer connection until it has authenticated: a byte
//! budget, a deadline, and a slot in the cap on such connections.
//!
//! Why this file exists: ractor_cluster 0.16 applies one inbound frame limit
//! (`with_max_inbound_frame_size`, which must fit our largest envelope, 16 MiB) to
//! every frame, authenticated or not, and gives the cookie challenge no deadline. So
//! anyone who can open TCP to the cluster port could make the node buffer a 16 MiB
//! frame, on as many connections as it liked, for as long as it liked. The frames of
//! the challenge are a few hundred bytes. So each stream accepted on the cluster port
//! (peer_port.rs) reaches ractor_cluster wrapped in a [`GuardedStream`]:
//!
//! - **Read half.** Until authentication it follows ractor_cluster's framing (a u64
//!   big-endian length, then the protobuf payload) and fails the stream as soon as a
//!   frame's header announces more than what is left of `max_unauthenticated_bytes`
//!   (all bytes received so far count), before any of that frame is handed on; and it
//!   fails the stream when the handshake deadline passes. ractor_cluster's session
//!   reader then stops, and the session with it, which closes the socket.
//! - **Write half.** It tells when the connection has authenticated by watching what
//!   this node sends: an incoming connection is the server side of ractor_cluster's
//!   challenge, and the server sends `ServerAck` only once the client's digest proved
//!   the cookie (ractor_cluster `node/auth.rs`). The gate opens *before* that frame is
//!   written, so nothing the peer sends after it reads the ack can meet the small
//!   limit. (`node_session_authenticated` would say the same later, through the
//!   NodeServer's mailbox: a peer's first large frame could arrive before it.)
//! - After that, both halves only pass bytes through, the slot is released, and
//!   ractor_cluster's own frame limit applies.
//!
//! Must not know: TLS (it sits inside it), membership. The protobuf tags it matches
//! are ractor_cluster's wire format (`protocol/meta.proto`, `protocol/auth.proto`);
//! the unit tests below spell out the bytes.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bytes of ractor_cluster's frame header: the payload length as a big-endian u64.
const HEADER_BYTES: usize = 8;
/// `NetworkMessage.auth` (field 1, length-delimited): the first byte of an
/// authentication frame's payload.
const TAG_AUTH: u8 = (1 << 3) | 2;
/// `AuthenticationMessage.server_ack` (field 6, length-delimited).
const TAG_SERVER_ACK: u8 = (6 << 3) | 2;
/// Payload bytes needed to recognise a `ServerAck`: the tag, a varint length (at most
/// 10 bytes), the inner tag.
const ACK_PREFIX_BYTES: usize = 12;

/// Why an unauthenticated connection was closed by its guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tripped {
    /// A frame would have taken the bytes received past the budget.
    TooManyBytes { announced: u64, budget: u64 },
    /// The deadline passed before authentication.
    Deadline,
}

/// Told when a guard closes a connection (peer_port.rs counts and logs it).
pub(super) trait TripReport: Send + Sync + 'static {
    fn tripped(&self, peer: SocketAddr, why: Tripped);
}

/// What an unauthenticated connection holds until it authenticates or closes (its
/// slot in the cap); dropped when the gate opens.
pub(super) type Held = Box<dyn Send + Sync>;

/// Shared by the two halves of one connection: whether it has authenticated.
struct Gate {
    open: AtomicBool,
    held: Mutex<Option<Held>>,
}

impl Gate {
    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn open(&self) {
        if !self.open.swap(true, Ordering::AcqRel) {
            drop(
                self.held
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(),
            );
        }
    }
}

/// The limits of one guarded connection.
pub(super) struct Guard {
    pub peer: SocketAddr,
    /// Bytes the peer may send before it has authenticated, frame headers included.
    pub budget: u64,
    /// When the connection is dropped unless authenticated.
    pub deadline: Instant,
    /// Released when the connection authenticates (or closes).
    pub held: Held,
    pub report: Arc<dyn TripReport>,
}

impl Guard {
    /// Wraps the two halves of a stream.
    pub(super) fn wrap<R, W>(self, read: R, write: W) -> (GuardedRead<R>, GuardedWrite<W>) {
        let gate = Arc::new(Gate {
            open: AtomicBool::new(false),
            held: Mutex::new(Some(self.held)),
        });
        let read = GuardedRead {
            inner: read,
            gate: gate.clone(),
            frames: InboundFrames::new(self.budget),
            deadline: Box::pin(tokio::time::sleep_until(self.deadline)),
            tripped: false,
            peer: self.peer,
            report: self.report,
        };
        let write = GuardedWrite {
            inner: write,
            gate,
            frames: OutboundFrames::default(),
        };
        (read, write)
    }
}

/// The read half: enforces the budget and the deadline until the gate opens.
pub(super) struct GuardedRead<R> {
    inner: R,
    gate: Arc<Gate>,
    frames: InboundFrames,
    deadline: Pin<Box<Sleep>>,
    tripped: bool,
    peer: SocketAddr,
    report: Arc<dyn TripReport>,
}

impl<R> GuardedRead<R> {
    fn trip(&mut self, why: Tripped) -> io::Error {
        self.tripped = true;
        self.report.tripped(self.peer, why);
        match why {
            Tripped::TooManyBytes { announced, budget } => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame of {announced} bytes before authentication (budget {budget})"),
            ),
            Tripped::Deadline => {
                io::Error::new(io::ErrorKind::TimedOut, "not authenticated in time")
            }
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for GuardedRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.gate.is_open() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.tripped {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed before authentication",
            )));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(this.trip(Tripped::Deadline)));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        // Opened while we waited: what arrived was sent after the peer read our ack.
        if this.gate.is_open() {
            return Poll::Ready(Ok(()));
        }
        if let Err(why) = this.frames.receive(&buf.filled()[before..]) {
            buf.set_filled(before);
            return Poll::Ready(Err(this.trip(why)));
        }
        Poll::Ready(Ok(()))
    }
}

/// The write half: opens the gate when this node acknowledges the peer's digest.
pub(super) struct GuardedWrite<W> {
    inner: W,
    gate: Arc<Gate>,
    frames: OutboundFrames,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for GuardedWrite<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.gate.is_open() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        // Look ahead on a copy: the gate must be open before the ack can leave, and
        // the write may take only part of `buf`.
        if this.frames.clone().send(buf) {
            this.gate.open();
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.frames.send(&buf[..written.min(buf.len())]);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where the next byte of a framed stream falls.
#[derive(Debug, Clone, Default)]
struct Framing {
    header: [u8; HEADER_BYTES],
    header_len: usize,
    /// Payload bytes of the current frame still to come (0: in a header).
    payload_left: u64,
}

impl Framing {
    /// Splits off the next piece of `bytes`: header bytes complete a header (and
    /// `Some(length)` is returned when one is complete); payload bytes are returned
    /// as the payload piece.
    fn next<'a>(&mut self, bytes: &mut &'a [u8]) -> Piece<'a> {
        if self.payload_left == 0 {
            let take = (HEADER_BYTES - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            *bytes = &bytes[take..];
            if self.header_len < HEADER_BYTES {
                return Piece::Header(None);
            }
            self.header_len = 0;
            let length = u64::from_be_bytes(self.header);
            self.payload_left = length;
            return Piece::Header(Some(length));
        }
        let take = usize::try_from(self.payload_left)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let (piece, rest) = bytes.split_at(take);
        *bytes = rest;
        self.payload_left -= take as u64;
        Piece::Payload(piece)
    }
}

enum Piece<'a> {
    Header(Option<u64>),
    Payload(&'a [u8]),
}

/// The frames received before authentication, against the budget.
#[derive(Debug)]
struct InboundFrames {
    framing: Framing,
    received: u64,
    budget: u64,
}

impl InboundFrames {
    fn new(budget: u64) -> Self {
        Self {
            framing: Framing::default(),
            received: 0,
            budget,
        }
    }

    /// Accounts for `bytes` just read; an error when they, or a frame they announce,
    /// go past the budget.
    fn receive(&mut self, mut bytes: &[u8]) -> Result<(), Tripped> {
        while !bytes.is_empty() {
            let len_before = bytes.len();
            let piece = self.framing.next(&mut bytes);
            self.received += (len_before - bytes.len()) as u64;
            let announced = match piece {
                Piece::Header(Some(length)) => length,
                _ => 0,
            };
            if self.received.saturating_add(announced) > self.budget {
                return Err(Tripped::TooManyBytes {
                    announced,
                    budget: self.budget,
                });
            }
        }
        Ok(())
    }
}

/// The frames this node sends before authentication, watched for its `ServerAck`.
#[derive(Debug, Clone, Default)]
struct OutboundFrames {
    framing: Framing,
    prefix: [u8; ACK_PREFIX_BYTES],
    prefix_len: usize,
}

impl OutboundFrames {
    /// Follows `bytes` being sent; true once a `ServerAck` frame is among them.
    fn send(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match self.framing.next(&mut bytes) {
                Piece::Header(Some(_)) => self.prefix_len = 0,
                Piece::Header(None) => {}
                Piece::Payload(piece) => {
                    let take = (ACK_PREFIX_BYTES - self.prefix_len).min(piece.len());
                    self.prefix[self.prefix_len..self.prefix_len + take]
                        .copy_from_slice(&piece[..take]);
                    self.prefix_len += take;
                    if is_server_ack(&self.prefix[..self.prefix_len]) {
                        return true;
                    }
                }
            }
        }
        false
    }
}

/// Whether a frame payload starting with `prefix` is `auth { server_ack { .. } }`.
fn is_server_ack(prefix: &[u8]) -> bool {
    let Some((&TAG_AUTH, rest)) = prefix.split_first() else {
        return false;
    };
    // Skip the varint length of the AuthenticationMessage.
    let Some(end) = rest.iter().position(|byte| byte & 0x80 == 0) else {
        return false;
    };
    rest.get(end + 1) == Some(&TAG_SERVER_ACK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A frame: the big-endian length, then the payload.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut bytes = (payload.len() as u64).to_be_bytes().to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }

    /// `NetworkMessage { auth: AuthenticationMessage { <field>: <inner> } }` as prost
    /// writes it: tag 1, length, then the inner field's tag, length and bytes.
    fn auth_frame(inner_tag: u8, inner: &[u8]) -> Vec<u8> {
        let mut auth = vec![inner_tag, inner.len() as u8];
        auth.extend_from_slice(inner);
        let mut payload = vec![TAG_AUTH, auth.len() as u8];
        payload.extend_from_slice(&auth);
        frame(&payload)
    }

    /// `ChallengeAck { digest }` (field 1, bytes): what the server sends last.
    fn server_ack() -> Vec<u8> {
        let mut ack = vec![(1 << 3) | 2, 32];
        ack.extend_from_slice(&[7; 32]);
        auth_frame(TAG_SERVER_ACK, &ack)
    }

    /// `ServerChallenge` (field 4): sent before the ack, must not open the gate.
    fn server_challenge() -> Vec<u8> {
        auth_frame((4 << 3) | 2, b"\x0a\x05n#0@h\x18\x2a")
    }

    #[derive(Default)]
    struct Trips(Mutex<Vec<Tripped>>);

    impl TripReport for Trips {
        fn tripped(&self, _peer: SocketAddr, why: Tripped) {
            self.0.lock().expect("not poisoned").push(why);
        }
    }

    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn guard(budget: u64, deadline: Duration) -> (Guard, Arc<Trips>, Arc<AtomicUsize>) {
        let trips = Arc::new(Trips::default());
        let released = Arc::new(AtomicUsize::new(0));
        let guard = Guard {
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            budget,
            deadline: Instant::now() + deadline,
            held: Box::new(Counted(released.clone())),
            report: trips.clone(),
        };
        (guard, trips, released)
    }

    #[test]
    fn the_ack_is_recognised_whole_or_in_pieces() {
        let ack = server_ack();
        assert!(OutboundFrames::default().send(&ack));
        let mut frames = OutboundFrames::default();
        assert!(!frames.send(&server_challenge()));
        for (i, byte) in ack.iter().enumerate() {
            let seen = frames.send(std::slice::from_ref(byte));
            // Header (8) + auth tag + length + inner tag: recognised at its 11th byte.
            assert_eq!(seen, i == HEADER_BYTES + 2, "byte {i}");
            if seen {
                break;
            }
        }
        // The other frames of the challenge, and any non-auth frame, are not acks.
        for (tag, inner) in [
            ((1 << 3) | 2, &b"\x0a\x01n"[..]),
            ((2 << 3) | 2, &b"\x08\x00"[..]),
            ((5 << 3) | 2, &b"\x08\x01"[..]),
        ] {
            assert!(!OutboundFrames::default().send(&auth_frame(tag, inner)));
        }
        assert!(!OutboundFrames::default().send(&frame(&[(2 << 3) | 2, 2, 0x32, 0])));
        // A payload that merely contains the ack's bytes later on is not one.
        let mut tricky = vec![(3 << 3) | 2, 3, TAG_AUTH, 1, TAG_SERVER_ACK];
        tricky.extend_from_slice(&[0; 8]);
        assert!(!OutboundFrames::default().send(&frame(&tricky)));
    }

    #[test]
    fn inbound_bytes_are_counted_against_the_budget_at_each_header() {
        let mut frames = InboundFrames::new(100);
        assert_eq!(frames.receive(&frame(&[1; 40])), Ok(()));
        assert_eq!(frames.received, 48);
        // 48 received, a header (56) announcing 44 bytes: exactly 100.
        assert_eq!(frames.receive(&(44_u64).to_be_bytes()), Ok(()));
        assert_eq!(frames.receive(&[2; 44]), Ok(()));
        // One more header is past the budget whatever it announces.
        assert_eq!(
            frames.receive(&[0]),
            Err(Tripped::TooManyBytes {
                announced: 0,
                budget: 100
            })
        );
        let mut frames = InboundFrames::new(65_536);
        assert_eq!(
            frames.receive(&(16_u64 << 20).to_be_bytes()),
            Err(Tripped::TooManyBytes {
                announced: 16 << 20,
                budget: 65_536
            })
        );
        // A header split across reads is judged when it is complete.
        let mut frames = InboundFrames::new(65_536);
        let header = u64::MAX.to_be_bytes();
        assert_eq!(frames.receive(&header[..5]), Ok(()));
        assert!(frames.receive(&header[5..]).is_err());
    }

    #[tokio::test]
    async fn an_oversized_frame_fails_the_read_before_its_payload() {
        let (guard, trips, released) = guard(65_536, Duration::from_secs(60));
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let (read, write) = tokio::io::split(ours);
        let (mut read, _write) = guard.wrap(read, write);
        theirs.write_all(&frame(b"small")).await.expect("written");
        theirs
            .write_all(&(16_u64 << 20).to_be_bytes())
            .await
            .expect("written");
        theirs.write_all(&[9; 4096]).await.expect("written");
        let mut first = [0; 13];
        read.read_exact(&mut first).await.expect("the small frame");
        assert_eq!(&first[8..], b"small");
        let mut header = [0; 8];
        let error = read.read_exact(&mut header).await.expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            *trips.0.lock().expect("not poisoned"),
            [Tripped::TooManyBytes {
                announced: 16 << 20,
                budget: 65_536
            }]
        );
        assert!(read.read(&mut header).await.is_err(), "stays failed");
        assert_eq!(
            released.load(Ordering::SeqCst),
            0,
            "still held until dropped"
        );
        drop(read);
        drop(_write);
        assert_eq!(released.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn sending_the_ack_lifts_the_limits_and_releases_the_slot() {
        // A deadline already passed: only the ack keeps the connection.
        let (guard, trips, released) = guard(1_024, Duration::ZERO);
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let (read, write) = tokio::io::split(ours);
        let (mut read, mut write) = guard.wrap(read, write);
        write.write_all(&server_challenge()).await.expect("sent");
        assert_eq!(released.load(Ordering::SeqCst), 0);
        write.write_all(&server_ack()).await.expect("sent");
        assert_eq!(released.load(Ordering::SeqCst), 1, "released with the ack");
        // Past the budget and past the deadline: both lifted.
        let big = frame(&vec![5; 100_000]);
        let writer = tokio::spawn(async move {
            theirs.write_all(&big).await.expect("written");
            theirs
        });
        let mut got = vec![0; 100_008];
        read.read_exact(&mut got)
            .await
            .expect("passes after the ack");
        assert!(got[8..].iter().all(|b| *b == 5));
        writer.await.expect("writer");
        assert!(trips.0.lock().expect("not poisoned").is_empty());
    }

    #[tokio::test]
    async fn a_trickling_connection_fails_at_the_deadline_too() {
        // The deadline runs from accept, not from the last byte: sending a byte now
        // and then (well within the budget) does not keep the connection.
        let (guard, trips, _released) = guard(65_536, Duration::from_millis(100));
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let (read, write) = tokio::io::split(ours);
        let (mut read, _write) = guard.wrap(read, write);
        let trickle = tokio::spawn(async move {
            for _ in 0..1_000 {
                if theirs.write_all(&[0]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let mut byte = [0; 1];
        let error = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Err(e) = read.read(&mut byte).await {
                    return e;
                }
            }
        })
        .await
        .expect("the deadline ends the reads");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(*trips.0.lock().expect("not poisoned"), [Tripped::Deadline]);
        trickle.abort();
    }

    #[tokio::test]
    async fn a_silent_connection_fails_at_the_deadline() {
        let (guard, trips, _released) = guard(65_536, Duration::from_millis(50));
        let (ours, _theirs) = tokio::io::duplex(1024);
        let (read, write) = tokio::io::split(ours);
        let (mut read, _write) = guard.wrap(read, write);
        let started = std::time::Instant::now();
        let mut byte = [0; 1];
        let error = tokio::time::timeout(Duration::from_secs(10), read.read(&mut byte))
            .await
            .expect("the deadline ends the read")
            .expect_err("timed out");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(*trips.0.lock().expect("not poisoned"), [Tripped::Deadline]);
    }
}
