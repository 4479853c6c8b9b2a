//! Glue to ractor_cluster: starting the NodeServer, naming nodes, forwarding its
//! session events to Membership, and dialling an address.
//!
//! The listener on `cluster.bind` is ours (peer_port.rs says why), and with
//! `[cluster.tls]` so are the handshakes in both directions (tls.rs). The NodeServer's
//! own listener, which it always starts, is put on a free loopback port behind a TLS
//! acceptor that refuses every handshake, where nobody dials it; and the port its
//! handshake advertises is set back to ours with `PortChanged`.
//!
//! ractor_cluster knows a node by `<name>@<host>`. We register as
//! `<name>#<incarnation as 16 hex digits>@<host>`, so that two processes claiming the
//! same `node.name` are two different nodes to ractor_cluster: its duplicate-connection
//! election (which may keep either connection, and would let a newcomer evict the
//! node already holding the name) never mixes them up, and Membership refuses the
//! newcomer itself. `#` cannot appear in a configured node name.

use super::peer_port::{PeerPort, PortLimits};
use super::tls::{refusing_acceptor, PeerTls};
use super::MembershipMessage;
use crate::cluster::wire::MAX_ENVELOPE_BYTES;
use crate::config::ClusterSettings;
use crate::telemetry::metrics::Metrics;
use ractor::{Actor, ActorCell, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{
    IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Extra room above the largest envelope for ractor_cluster's own framing.
const FRAME_OVERHEAD: u64 = 64 * 1024;

/// The name this node registers with ractor_cluster (before `@host`).
pub(super) fn cluster_name(name: &str, incarnation: u64) -> String {
    format!("{name}#{incarnation:016x}")
}

/// Our node name and incarnation from a ractor_cluster peer name
/// (`<name>#<hex>@<host>`); None for a name no hubbub node would use.
pub(super) fn parse_cluster_name(full: &str) -> Option<(String, u64)> {
    let (node, _host) = full.split_once('@')?;
    let (name, incarnation) = node.rsplit_once('#')?;
    if name.is_empty() || incarnation.len() != 16 {
        return None;
    }
    let incarnation = u64::from_str_radix(incarnation, 16).ok()?;
    Some((name.to_owned(), incarnation))
}

/// The host part of `host:port` (`[v6]:port` keeps its brackets).
pub(super) fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

/// A running NodeServer and the cluster port feeding it.
pub(super) struct PeerListener {
    pub server: ActorRef<NodeServerMessage>,
    /// Our listener on `cluster.bind`; dropping it closes the port.
    pub port: PeerPort,
}

/// Starts the NodeServer, linked to `parent`, and our listener on `cluster.bind`
/// (peer_port.rs), which hands it every incoming connection: plain TCP, or TLS when
/// `tls` is given.
pub(super) async fn start(
    cluster: &ClusterSettings,
    name: &str,
    incarnation: u64,
    parent: ActorCell,
    tls: Option<&PeerTls>,
    metrics: Arc<Metrics>,
) -> Result<PeerListener, String> {
    let advertise = cluster.advertise_addr();
    let host = host_of(&advertise).to_owned();
    // Never format a `NodeServer`: its Debug output contains the cookie.
    let cookie = cluster.cookie.expose().to_owned();
    let node_name = cluster_name(name, incarnation);
    let frame_limit = MAX_ENVELOPE_BYTES as u64 + FRAME_OVERHEAD;
    let listen_error =
        |e: &dyn std::fmt::Display| format!("cannot listen for peers on {}: {e}", cluster.bind);
    let listener = TcpListener::bind(cluster.bind)
        .await
        .map_err(|e| listen_error(&e))?;
    let port = listener.local_addr().map_err(|e| listen_error(&e))?.port();
    // ractor_cluster's own listener cannot be turned off: it goes on a free loopback
    // port, behind an acceptor that fails every handshake, so that nobody reaches a
    // NodeSession except through our port and its limits.
    let server = NodeServer::new(
        0,
        cookie,
        node_name,
        host,
        Some(IncomingEncryptionMode::Tls(refusing_acceptor()?)),
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(loopback_like(cluster.bind.ip()))
    .with_max_inbound_frame_size(frame_limit);
    let (server, _) = Actor::spawn_linked(None, server, (), parent)
        .await
        .map_err(|e| format!("cannot start the node server: {e}"))?;
    // Its listener reported its loopback port while starting; this message is queued
    // after that one, so peers are told our port.
    server
        .cast(NodeServerMessage::PortChanged { port })
        .map_err(|_| "the node server stopped at once".to_owned())?;
    let limits = PortLimits {
        max_unauthenticated: cluster.max_unauthenticated,
        max_unauthenticated_bytes: cluster.max_unauthenticated_bytes,
        handshake_timeout: Duration::from_millis(cluster.failure_timeout_ms),
    };
    let port = PeerPort::spawn(
        listener,
        tls.map(PeerTls::acceptor),
        server.clone(),
        limits,
        metrics,
    );
    Ok(PeerListener { server, port })
}

/// The loopback address of `ip`'s family.
fn loopback_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// Which ractor_cluster session event happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// TCP is up; nothing is known of the peer yet.
    Opened,
    /// The cookie challenge succeeded and this connection won ractor_cluster's
    /// duplicate-connection election; `peer_name` is set.
    Authenticated,
    /// Both sides have exchanged their actors and process groups.
    Ready,
    /// The session ended, at any stage.
    Disconnected,
}

/// Forwards every session event to Membership as a cast (the subscription callbacks
/// run inside the NodeServer and must not block).
pub(super) struct EventForwarder(pub ActorRef<MembershipMessage>);

impl EventForwarder {
    fn forward(&self, event: SessionEvent, info: NodeServerSessionInformation) {
        let _ = self
            .0
            .cast(MembershipMessage::Session(event, Box::new(info)));
    }
}

impl NodeEventSubscription for EventForwarder {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        self.forward(SessionEvent::Opened, ses);
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        self.forward(SessionEvent::Disconnected, ses);
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        self.forward(SessionEvent::Authenticated, ses);
    }

    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        self.forward(SessionEvent::Ready, ses);
    }
}

/// Why a dial did not produce a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialError {
    /// No TCP connection (refused, unreachable, timed out, no such name).
    Unreachable(String),
    /// TCP was up but the TLS handshake failed: a misconfiguration somewhere.
    Handshake(String),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(why) => f.write_str(why),
            Self::Handshake(why) => write!(f, "TLS handshake failed: {why}"),
        }
    }
}

/// Dials `target` (`host:port`): resolves it and connects to the first address that
/// answers within `timeout` (TCP, then the TLS handshake when `tls` is given), handing
/// the stream to the NodeServer, which runs its own handshake. Returns the socket
/// address reached: it is the `peer_addr` of the session that follows.
pub(super) async fn dial(
    server: &ActorRef<NodeServerMessage>,
    target: &str,
    tls: Option<&PeerTls>,
    timeout: Duration,
) -> Result<SocketAddr, DialError> {
    let addrs = tokio::time::timeout(timeout, tokio::net::lookup_host(target))
        .await
        .map_err(|_| DialError::Unreachable("name lookup timed out".to_owned()))?
        .map_err(|e| DialError::Unreachable(format!("name lookup failed: {e}")))?;
    let mut last_error = DialError::Unreachable("the name has no address".to_owned());
    for addr in addrs {
        let connected = match tls {
            None => tokio::time::timeout(timeout, ractor_cluster::client_connect(server, addr))
                .await
                .map(|r| r.map_err(|e| DialError::Unreachable(e.to_string()))),
            Some(tls) => {
                tokio::time::timeout(timeout, async {
                    let stream = tls.connect(target, addr).await?;
                    ractor_cluster::client_connect_external(server, stream)
                        .await
                        .map_err(|e| DialError::Unreachable(e.to_string()))
                })
                .await
            }
        };
        match connected {
            Ok(Ok(())) => return Ok(addr),
            Ok(Err(e)) => last_error = e,
            Err(_) if tls.is_some() => {
                last_error =
                    DialError::Unreachable("connect and TLS handshake timed out".to_owned())
            }
            Err(_) => last_error = DialError::Unreachable("connect timed out".to_owned()),
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_round_trip_and_reject_foreign_names() {
        let full = format!("{}@10.0.0.1", cluster_name("node-1.eu", 0xabc));
        assert_eq!(full, "node-1.eu#0000000000000abc@10.0.0.1");
        assert_eq!(parse_cluster_name(&full), Some(("node-1.eu".into(), 0xabc)));
        for foreign in [
            "node-1@host",
            "#0000000000000abc@host",
            "a#abc@host",
            "a#zzzzzzzzzzzzzzzz@host",
            "a#0000000000000abc",
            "",
        ] {
            assert_eq!(parse_cluster_name(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn host_of_keeps_ipv6_brackets() {
        assert_eq!(host_of("10.0.0.1:4370"), "10.0.0.1");
        assert_eq!(host_of("[::1]:4370"), "[::1]");
        assert_eq!(host_of("node-a.internal:4370"), "node-a.internal");
    }
}
