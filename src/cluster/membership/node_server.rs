//! Glue to ractor_cluster: starting the NodeServer, naming nodes, forwarding its
//! session events to Membership, and dialling an address.
//!
//! ractor_cluster knows a node by `<name>@<host>`. We register as
//! `<name>#<incarnation as 16 hex digits>@<host>`, so that two processes claiming the
//! same `node.name` are two different nodes to ractor_cluster: its duplicate-connection
//! election (which may keep either connection, and would let a newcomer evict the
//! node already holding the name) never mixes them up, and Membership refuses the
//! newcomer itself. `#` cannot appear in a configured node name.

use super::MembershipMessage;
use crate::cluster::wire::MAX_ENVELOPE_BYTES;
use crate::config::ClusterSettings;
use ractor::{Actor, ActorCell, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};
use std::net::SocketAddr;
use std::time::Duration;

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

/// Starts the NodeServer, linked to `parent`, listening on `cluster.bind`.
pub(super) async fn start(
    cluster: &ClusterSettings,
    name: &str,
    incarnation: u64,
    parent: ActorCell,
) -> Result<ActorRef<NodeServerMessage>, String> {
    if cluster.tls.is_some() {
        return Err(
            "cluster.tls is not supported yet: remove [cluster.tls] to run the \
                    cluster over plain TCP"
                .to_owned(),
        );
    }
    let advertise = cluster.advertise_addr();
    let server = NodeServer::new(
        cluster.bind.port(),
        cluster.cookie.expose().to_owned(),
        cluster_name(name, incarnation),
        host_of(&advertise).to_owned(),
        None,
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(cluster.bind.ip())
    .with_max_inbound_frame_size(MAX_ENVELOPE_BYTES as u64 + FRAME_OVERHEAD);
    // Never format `server`: its Debug output contains the cookie.
    let (server, _) = Actor::spawn_linked(None, server, (), parent)
        .await
        .map_err(|e| format!("cannot listen for peers on {}: {e}", cluster.bind))?;
    Ok(server)
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

/// Dials `target` (`host:port`): resolves it and opens TCP to the first address that
/// answers within `timeout`, handing the stream to the NodeServer, which runs the
/// handshake. Returns the socket address reached: it is the `peer_addr` of the
/// session that follows.
pub(super) async fn dial(
    server: &ActorRef<NodeServerMessage>,
    target: &str,
    timeout: Duration,
) -> Result<SocketAddr, String> {
    let addrs = tokio::time::timeout(timeout, tokio::net::lookup_host(target))
        .await
        .map_err(|_| "name lookup timed out".to_owned())?
        .map_err(|e| format!("name lookup failed: {e}"))?;
    let mut last_error = "the name has no address".to_owned();
    for addr in addrs {
        match tokio::time::timeout(timeout, ractor_cluster::client_connect(server, addr)).await {
            Ok(Ok(())) => return Ok(addr),
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = "connect timed out".to_owned(),
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
