//! The cluster port (`cluster.bind`): every incoming peer connection is accepted
//! here, held to the limits of a connection that has not authenticated, and handed to
//! the NodeServer as an external stream.
//!
//! Why we accept peers ourselves, TLS or not: ractor_cluster 0.16's listener has no
//! cap on connections, runs TLS handshakes inside its accept loop with no timeout (one
//! stalled client stops every later connection; tls.rs), gives the cookie challenge no
//! deadline, and applies its one frame limit (16 MiB here) before authentication as
//! after it (handshake_guard.rs). So, for each connection accepted on `cluster.bind`:
//!
//! 1. **Cap.** It takes a slot among `cluster.max_unauthenticated`; with none free it
//!    is closed at once (the dialling node backs off and retries).
//! 2. **Deadline.** From now it has `cluster.failure_timeout_ms` to authenticate: the
//!    TLS handshake (with `[cluster.tls]`, in a task of its own) and then the cookie
//!    challenge.
//! 3. **Budget.** Until it has authenticated it may send at most
//!    `cluster.max_unauthenticated_bytes`; a frame announced past that closes it
//!    before a byte of it is kept.
//!
//! Once ractor_cluster's challenge succeeds the slot is released and only
//! ractor_cluster's own limits apply. The listener ractor_cluster always starts is
//! put on a loopback port nobody dials, behind a TLS acceptor that refuses every
//! handshake (node_server.rs), so there is no way around this file.
//!
//! Each trip is counted in `hubbub_cluster_peer_connections_refused_total{reason}` and
//! logged as a warning at most once a minute per reason (at debug level in between).
//!
//! Must not know: membership, the cookie. Outgoing connections (our dials, to seeds
//! and to addresses gossiped by authenticated peers) do not pass here.

use super::handshake_guard::{Guard, GuardedRead, GuardedWrite, TripReport, Tripped};
use super::tls::{describe, Warnings};
use crate::telemetry::metrics::Metrics;
use ractor::ActorRef;
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream, NodeServerMessage};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// How long to wait before accepting again after `accept` itself failed (out of file
/// descriptors, typically), so that the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Why a connection on the cluster port was closed before it authenticated: the
/// `reason` label of `hubbub_cluster_peer_connections_refused_total`.
pub const REFUSAL_REASONS: [&str; 4] = [
    "too_many_unauthenticated",
    "frame_too_large",
    "handshake_timeout",
    "tls_handshake_failed",
];

/// The limits of the cluster port (from `[cluster]`).
#[derive(Debug, Clone, Copy)]
pub(super) struct PortLimits {
    /// `cluster.max_unauthenticated`.
    pub max_unauthenticated: usize,
    /// `cluster.max_unauthenticated_bytes`.
    pub max_unauthenticated_bytes: u64,
    /// `cluster.failure_timeout_ms`: from accept to authenticated.
    pub handshake_timeout: Duration,
}

/// The task accepting peer connections on `cluster.bind`; stopped (and the port
/// released, and every connection still in its TLS handshake closed) when dropped.
pub(super) struct PeerPort(JoinHandle<()>);

impl Drop for PeerPort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PeerPort {
    /// Accepts on `listener` and hands each connection to `server` as an incoming
    /// session, through our TLS handshake first when `tls` is given.
    pub(super) fn spawn(
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        server: ActorRef<NodeServerMessage>,
        limits: PortLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.peer_refusal_reasons(&REFUSAL_REASONS);
        let port = Arc::new(Port {
            limits,
            slots: Arc::new(Semaphore::new(limits.max_unauthenticated)),
            metrics,
            warnings: Mutex::new(Warnings::default()),
        });
        Self(tokio::spawn(accept_loop(listener, tls, server, port)))
    }
}

/// What every connection of the port shares.
struct Port {
    limits: PortLimits,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// Which refusals were logged as warnings lately.
    warnings: Mutex<Warnings>,
}

impl Port {
    /// Counts a refusal and logs it, as a warning when `cause` was not logged as one
    /// in the last minute.
    fn refused(&self, reason: &'static str, cause: &str, peer: SocketAddr, why: &str) {
        self.metrics.peer_refused(reason);
        let warn = self
            .warnings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first_in_a_while(cause, Instant::now());
        if warn {
            tracing::warn!(
                peer_addr = %peer,
                reason,
                "refused a peer connection from {peer}: {why} (logged at most once a \
                 minute; hubbub_cluster_peer_connections_refused_total counts them all)"
            );
        } else {
            tracing::debug!(peer_addr = %peer, reason, error = %why, "refused a peer connection");
        }
    }
}

impl TripReport for Port {
    fn tripped(&self, peer: SocketAddr, why: Tripped) {
        match why {
            Tripped::TooManyBytes { announced, budget } => self.refused(
                "frame_too_large",
                "frame_too_large",
                peer,
                &format!(
                    "it sent a frame of {announced} bytes before authenticating, past the \
                     {budget} bytes allowed until then (cluster.max_unauthenticated_bytes)"
                ),
            ),
            Tripped::Deadline => self.refused(
                "handshake_timeout",
                "handshake_timeout",
                peer,
                &format!(
                    "not authenticated within {} ms (cluster.failure_timeout_ms)",
                    self.limits.handshake_timeout.as_millis()
                ),
            ),
        }
    }
}

/// A connection's slot among `cluster.max_unauthenticated`, counted in
/// `hubbub_cluster_unauthenticated_connections` while held.
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Self {
        metrics.peer_unauthenticated_opened();
        Self {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.peer_unauthenticated_ended();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    server: ActorRef<NodeServerMessage>,
    port: Arc<Port>,
) {
    // Aborting this task drops the set, which aborts the handshakes too. Each holds a
    // slot, so there are at most `max_unauthenticated` of them.
    let mut handshakes: JoinSet<()> = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept peer connections");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let Ok(permit) = port.slots.clone().try_acquire_owned() else {
                    drop(tcp);
                    port.refused(
                        "too_many_unauthenticated",
                        "too_many_unauthenticated",
                        peer,
                        &format!(
                            "{} connections are already waiting to authenticate \
                             (cluster.max_unauthenticated)",
                            port.limits.max_unauthenticated
                        ),
                    );
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let connection = Accepted {
                    peer,
                    local: tcp.local_addr().ok(),
                    slot: Slot::new(permit, port.metrics.clone()),
                    deadline: tokio::time::Instant::now() + port.limits.handshake_timeout,
                };
                match &tls {
                    None => connection.hand_over(tcp, &server, &port),
                    Some(acceptor) => {
                        handshakes.spawn(tls_handshake(
                            tcp,
                            connection,
                            acceptor.clone(),
                            server.clone(),
                            port.clone(),
                        ));
                    }
                }
            }
        }
    }
}

/// A connection just accepted, holding its slot.
struct Accepted {
    peer: SocketAddr,
    local: Option<SocketAddr>,
    slot: Slot,
    deadline: tokio::time::Instant,
}

impl Accepted {
    /// Gives the connection's `stream` (TCP, or TLS over it) to the NodeServer,
    /// guarded until it authenticates.
    fn hand_over<S>(self, stream: S, server: &ActorRef<NodeServerMessage>, port: &Arc<Port>)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let guarded = Box::new(GuardedStream {
            stream,
            guard: Guard {
                peer: self.peer,
                budget: port.limits.max_unauthenticated_bytes,
                deadline: self.deadline,
                held: Box::new(self.slot),
                report: port.clone(),
            },
            local: self.local,
        });
        // Fails only while the NodeServer stops; the connection just closes.
        let _ = server.cast(NodeServerMessage::ConnectionOpenedExternal {
            stream: guarded,
            is_server: true,
        });
    }
}

/// The TLS handshake of one incoming connection, within its deadline; then the
/// NodeServer takes it.
async fn tls_handshake(
    tcp: TcpStream,
    connection: Accepted,
    acceptor: TlsAcceptor,
    server: ActorRef<NodeServerMessage>,
    port: Arc<Port>,
) {
    let peer = connection.peer;
    match tokio::time::timeout_at(connection.deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            connection.hand_over(tokio_rustls::TlsStream::from(tls), &server, &port);
        }
        Ok(Err(e)) => {
            let why = describe(&e);
            port.refused(
                "tls_handshake_failed",
                &format!("{} {why}", peer.ip()),
                peer,
                &format!("TLS handshake failed: {why}"),
            );
        }
        Err(_) => {
            port.refused(
                "handshake_timeout",
                "tls handshake_timeout",
                peer,
                &format!(
                    "TLS handshake failed: no handshake within {} ms",
                    port.limits.handshake_timeout.as_millis()
                ),
            );
        }
    }
}

/// An incoming connection (plain TCP or TLS) with its guard, as the NodeServer
/// receives it.
struct GuardedStream<S> {
    stream: S,
    guard: Guard,
    local: Option<SocketAddr>,
}

impl<S> ClusterBidiStream for GuardedStream<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (read, write) = tokio::io::split(self.stream);
        let (read, write): (GuardedRead<_>, GuardedWrite<_>) = self.guard.wrap(read, write);
        (Box::new(read), Box::new(write))
    }

    /// The session's `peer_addr`: the socket address, as for a connection
    /// ractor_cluster accepts itself.
    fn peer_label(&self) -> Option<String> {
        Some(self.guard.peer.to_string())
    }

    fn local_label(&self) -> Option<String> {
        self.local.map(|a| a.to_string())
    }
}
