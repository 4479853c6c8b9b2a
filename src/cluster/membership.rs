//! Membership: who is in the cluster and who is up (the view, which the room logs'
//! shard host reads to refuse at once what it cannot order, and presence to drop the
//! entries of nodes that are gone).
//!
//! One actor, child of the ClusterSupervisor; it owns the ractor_cluster `NodeServer`
//! (linked to it, so a failing NodeServer fails Membership and both are restarted)
//! and the task accepting peer connections on the cluster port (stopped with
//! Membership).
//!
//! ```text
//!   ClusterSupervisor
//!     └── Membership ── NodeServer ── NodeSession × peers   (ractor_cluster)
//!           └╌╌ cluster port (task) ╌╌ guarded TCP / TLS streams ──▶ NodeServer
//! ```
//!
//! What it does, because ractor_cluster does not:
//! - **Dialling.** Targets are `cluster.seeds` and every address gossiped in pings,
//!   minus our own. Every heartbeat, each target not already connected is dialled in a
//!   task of its own, with per-target exponential backoff (100 ms doubling to 5 s, reset
//!   once the connection led to an up peer). Nodes find each other in any start order
//!   and after any restart, freeze or partition (nothing in ractor_cluster redials).
//! - **Heartbeats and failure detection.** Every heartbeat, each connected peer whose
//!   Endpoint is known gets a `Ping` (our clock, our view id, the nodes we know); it
//!   answers `Pong`. A peer is *up* (in our view) once its session is ready, its
//!   Endpoint known and a heartbeat heard; it leaves the view when nothing has been
//!   heard from it for `failure_timeout_ms`, and then its NodeSession is stopped (so a
//!   frozen or partitioned peer's connection closes and nothing keeps buffering for
//!   it). A lost connection alone does not take a peer out of the view early: see
//!   "Fencing" below.
//! - **The cluster port.** We accept peers ourselves: at most
//!   `cluster.max_unauthenticated` connections may be waiting to authenticate, each
//!   for at most `failure_timeout_ms`, sending at most
//!   `cluster.max_unauthenticated_bytes` until it has (peer_port.rs says why).
//! - **TLS.** With `[cluster.tls]`, every peer connection is mutual TLS, and we run
//!   the handshakes ourselves, under that deadline (tls.rs says why); a failed one
//!   leaves the peer unreachable, like a refused dial.
//! - **Unique names.** We register with ractor_cluster as `name#incarnation`, so two
//!   processes with one name are two nodes to it, and refuse the newcomer ourselves
//!   (node_server.rs says why). A wrong cookie fails ractor_cluster's challenge; we log
//!   it by name and address.
//! - **Presence.** Every heartbeat ends with the presence port's tick
//!   (presence_sync.rs: digests, and dropping nodes gone from the view); a peer
//!   declared down leaves presence at once.
//! - **The view.** The view is this node plus every up peer, published through
//!   [`Cluster::publish_view`]; its quorum is a majority of the node list the room
//!   logs follow (configured or changed at runtime: raft/host.rs), never guessed from
//!   the names seen. Ordering is Raft's (cluster/raft/): the view only tells who is
//!   reachable.
//!
//! A peer leaves the view on silence only, never at the instant its connection drops
//! (a dropped connection is often one-sided or transient); a peer that reconnects
//! within the timeout with the same incarnation causes no view change at all, and one
//! that comes back with a new incarnation (it restarted) replaces the old one at once.

mod dialer;
mod handshake_guard;
mod node_server;
pub(crate) mod peer_port;
pub(crate) mod tls;

pub use node_server::{DialError, SessionEvent};

use super::wire::{Body, PeerAddr};
use super::{endpoint_group, Cluster, EndpointMessage, View};
use crate::actors::NodeContext;
use dialer::Targets;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeServerMessage, NodeSessionMessage, RactorMessage};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tls::{PeerTls, Warnings};
use tokio::task::JoinHandle;

/// The most gossip entries read from one ping; a cluster is far smaller.
const MAX_GOSSIP_ENTRIES: usize = 1_024;
/// Send times of this many recent pings are kept to time their pongs.
const SENT_PINGS_KEPT: usize = 64;
/// A refused peer's connection is closed this long after it authenticated, so that
/// the peer completes the handshake first and does not mistake the refusal for a
/// failed cookie check (the reason is logged on the refusing side).
const REFUSAL_GRACE: Duration = Duration::from_millis(250);
/// How long a restarted Membership keeps trying to bind the peer port the previous
/// NodeServer may not have released yet.
const BIND_RETRY: Duration = Duration::from_secs(2);

/// Messages to Membership.
#[derive(RactorMessage)]
pub enum MembershipMessage {
    /// A heartbeat (`Ping` / `Pong`) from a peer, routed here by the Endpoint.
    Wire { from: String, inc: u64, body: Body },
    /// The state shown at `GET /cluster`.
    Status(RpcReplyPort<ClusterStatus>),
    /// Every `heartbeat_ms`: timeouts, pings, dials and the view.
    Tick,
    /// A NodeServer session event (forwarded by our subscription).
    Session(SessionEvent, Box<NodeServerSessionInformation>),
    /// A dial task finished: the socket address reached, or why not.
    Dialed {
        target: String,
        result: Result<SocketAddr, DialError>,
    },
    /// This node is shutting down: tell every peer.
    Leave(RpcReplyPort<()>),
}

/// This node's view of the cluster, as served at `GET /cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub node: String,
    pub incarnation: u64,
    pub advertise: String,
    pub view_id: u64,
    pub view: Vec<String>,
    pub quorum: usize,
    pub has_quorum: bool,
    pub peers: Vec<PeerStatus>,
}

/// One peer as this node sees it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub addr: String,
    /// "up" (in this node's view) or "down".
    pub state: &'static str,
    /// Whether a connection to it is open now (a peer can be connected and still
    /// down: refused, not answering heartbeats yet, or during start-up's hold-off).
    pub connected: bool,
    pub incarnation: u64,
    /// Round trip of the last answered heartbeat, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// How long ago anything was heard from the peer, in milliseconds.
    pub last_heard_ms_ago: Option<u64>,
    /// Whether it follows the same node list as this node (None: not heard yet).
    pub same_node_list: Option<bool>,
}

/// The Membership actor.
pub struct MembershipActor {
    pub(crate) ctx: Arc<NodeContext>,
}

/// One NodeSession, from its `Opened` event to its `Disconnected` one.
struct Session {
    actor: ActorRef<NodeSessionMessage>,
    /// ractor_cluster's number for the session; remote actors reached through it
    /// have ids `Remote { node_id, .. }`.
    node_id: u64,
    is_server: bool,
    /// The TCP peer address (for an incoming session, the peer's ephemeral port).
    peer_addr: String,
    /// `name#inc@host` as the peer announced it (not trusted before authentication).
    claimed_name: Option<String>,
    /// The `host:port` the peer says it listens on.
    connection_string: Option<String>,
    opened_at: u64,
    authenticated: bool,
    ready: bool,
    /// The peer's node name and incarnation, once authenticated.
    identity: Option<(String, u64)>,
    /// The target this (outgoing) session was dialled for.
    target: Option<String>,
    /// Why we stopped it, when we did.
    stopped: Option<&'static str>,
    /// It carried a peer that came up.
    useful: bool,
}

impl Session {
    fn new(info: &NodeServerSessionInformation, now: u64) -> Self {
        Self {
            actor: info.actor.clone(),
            node_id: info.node_id,
            is_server: info.is_server,
            peer_addr: info.peer_addr.clone(),
            claimed_name: None,
            connection_string: None,
            opened_at: now,
            authenticated: false,
            ready: false,
            identity: None,
            target: None,
            stopped: None,
            useful: false,
        }
    }

    /// The best address to name the peer by in a log line.
    fn addr(&self) -> &str {
        self.connection_string
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.peer_addr)
    }

    fn stop(&mut self, why: &'static str) {
        if self.stopped.is_none() {
            self.stopped = Some(why);
            self.actor.stop(Some(format!("hubbub: {why}")));
        }
    }

    /// Refuses the peer: its connection closes after [`REFUSAL_GRACE`]. Until then
    /// nothing is sent to it and what it sends is ignored (we accepted no session of
    /// its incarnation).
    fn refuse(&mut self, why: &'static str) {
        if self.stopped.is_none() {
            self.stopped = Some(why);
            let actor = self.actor.clone();
            tokio::spawn(async move {
                tokio::time::sleep(REFUSAL_GRACE).await;
                actor.stop(Some(format!("hubbub: {why}")));
            });
        }
    }
}

/// What this node knows of another node, by name.
#[derive(Default)]
struct Peer {
    /// The address it advertises (its own gossip, else its connection string, else
    /// what others gossip).
    addr: Option<String>,
    /// The incarnation of the session we accepted (0: never connected).
    inc: u64,
    /// The one session we accept for it.
    session: Option<ActorId>,
    endpoint: Option<ActorRef<EndpointMessage>>,
    connected_at: u64,
    /// In our view.
    up: bool,
    last_heard: Option<u64>,
    rtt_ms: Option<f64>,
    /// The incarnation that announced it was leaving: never up again.
    left: Option<u64>,
    /// The hash of the node list it announced last (0: none yet).
    list_hash: u64,
    /// The hash of another list than ours we warned about.
    warned_list: Option<u64>,
}

/// Membership's state.
pub struct MembershipState {
    cluster: Arc<Cluster>,
    server: ActorRef<NodeServerMessage>,
    /// With `[cluster.tls]`: both ends of every peer connection.
    tls: Option<PeerTls>,
    /// Our listener on `cluster.bind` (dropped to close it).
    peer_port: Option<peer_port::PeerPort>,
    /// Which failed TLS handshakes of our dials were logged as warnings lately.
    handshake_warnings: Warnings,
    /// Our full ractor_cluster name (`name#inc@host`), to recognise ourselves.
    own_cluster_name: String,
    advertise: String,
    /// Our HTTP listener as peers reach it (gossiped; empty with `[http.tls]` and no
    /// `http.tls.peer_ca`).
    http_advertise: String,
    failure_timeout_ms: u64,
    /// The configured node list's size (the view's quorum until the room logs run).
    configured_size: usize,
    sessions: HashMap<ActorId, Session>,
    peers: BTreeMap<String, Peer>,
    targets: Targets,
    /// The view last published.
    view: Arc<View>,
    ticker: Option<JoinHandle<()>>,
    /// When recent pings were sent (their `sent_at`), for round trips finer than the
    /// millisecond clock the pings carry.
    sent: VecDeque<(u64, Instant)>,
}

impl Actor for MembershipActor {
    type Msg = MembershipMessage;
    type State = MembershipState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<MembershipState, ActorProcessingErr> {
        let cluster = self
            .ctx
            .cluster
            .clone()
            .ok_or("membership started without a cluster")?;
        let settings = &self.ctx.settings.cluster;
        let me = cluster.me.clone();
        let advertise = settings.advertise_addr();
        // The cluster's nodes as configured (`cluster.voters` or `[[nodes]]`), never
        // guessed from seeds.
        let configured_size = self.ctx.settings.cluster_nodes().len().max(1);
        let view = View::solo(&me, cluster.incarnation, configured_size);
        cluster.publish_view(view.clone());
        // Read again on every start, so that a restarted Membership picks up
        // replaced certificates.
        let tls = match &settings.tls {
            Some(files) => {
                let (tls, warnings) = PeerTls::load(files, &advertise).map_err(|e| {
                    tracing::error!(error = %e, "cannot set up TLS between nodes");
                    e
                })?;
                for warning in warnings {
                    tracing::warn!("{warning}");
                }
                Some(tls)
            }
            None => None,
        };
        let node_server::PeerListener { server, port } =
            start_node_server(&self.ctx, &cluster, &myself, tls.as_ref()).await?;
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "hubbub.membership".to_owned(),
                subscription: Box::new(node_server::EventForwarder(myself.clone())),
            })
            .map_err(|_| "the node server stopped at once")?;
        let now = cluster.now_ms();
        let ticker = myself.send_interval(Duration::from_millis(settings.heartbeat_ms), || {
            MembershipMessage::Tick
        });
        tracing::info!(
            node = %me,
            advertise = %advertise,
            bind = %settings.bind,
            tls = tls.is_some(),
            seeds = ?settings.seeds,
            heartbeat_ms = settings.heartbeat_ms,
            failure_timeout_ms = settings.failure_timeout_ms,
            "cluster membership started"
        );
        Ok(MembershipState {
            own_cluster_name: format!(
                "{}@{}",
                node_server::cluster_name(&me, cluster.incarnation),
                node_server::host_of(&advertise)
            ),
            targets: Targets::new(&advertise, &settings.seeds, now),
            http_advertise: http_advertise(&self.ctx.settings, &advertise),
            advertise,
            failure_timeout_ms: settings.failure_timeout_ms,
            configured_size,
            sessions: HashMap::new(),
            peers: BTreeMap::new(),
            view: Arc::new(view),
            ticker: Some(ticker),
            sent: VecDeque::new(),
            server,
            tls,
            peer_port: Some(port),
            handshake_warnings: Warnings::default(),
            cluster,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(ticker) = state.ticker.take() {
            ticker.abort();
        }
        let cluster = &state.cluster;
        for name in state.peers.keys() {
            cluster.set_endpoint(name, None);
        }
        cluster.publish_view(View::solo(
            &cluster.me,
            cluster.incarnation,
            state.cluster_size(),
        ));
        // Closes every peer connection and the listeners (a restarted Membership binds
        // the same port).
        state.peer_port = None;
        let _ = state
            .server
            .stop_and_wait(Some("membership stopped".to_owned()), Some(BIND_RETRY))
            .await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: MembershipMessage,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            MembershipMessage::Wire { from, inc, body } => state.on_wire(&from, inc, body),
            MembershipMessage::Status(reply) => {
                let _ = reply.send(state.status());
            }
            MembershipMessage::Tick => state.on_tick(&myself),
            MembershipMessage::Session(event, info) => state.on_session(event, &info),
            MembershipMessage::Dialed { target, result } => state.on_dialed(target, result),
            MembershipMessage::Leave(reply) => {
                state.leave();
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        // The NodeServer is our only child: without it there is no cluster, so fail
        // and let the ClusterSupervisor start us (and a new NodeServer) again.
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason)
                if cell.get_id() == state.server.get_id() =>
            {
                Err(format!("the node server stopped: {reason:?}").into())
            }
            SupervisionEvent::ActorFailed(cell, error)
                if cell.get_id() == state.server.get_id() =>
            {
                Err(format!("the node server failed: {error}").into())
            }
            _ => Ok(()),
        }
    }
}

/// Starts the NodeServer (and with TLS our listener), retrying for a moment while a
/// previous one (of a Membership being restarted) still holds the port.
async fn start_node_server(
    ctx: &NodeContext,
    cluster: &Cluster,
    myself: &ActorRef<MembershipMessage>,
    tls: Option<&PeerTls>,
) -> Result<node_server::PeerListener, ActorProcessingErr> {
    let settings = &ctx.settings.cluster;
    let deadline = tokio::time::Instant::now() + BIND_RETRY;
    loop {
        match node_server::start(
            settings,
            &cluster.me,
            cluster.incarnation,
            myself.get_cell(),
            tls,
            cluster.metrics.clone(),
        )
        .await
        {
            Ok(started) => return Ok(started),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "retrying to start the node server");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the cluster node server");
                return Err(e.into());
            }
        }
    }
}

/// This node's HTTP listener as peers reach it: `node.http_addr`, its host replaced
/// by `cluster.advertise`'s when it listens on every address (`0.0.0.0`, `::`);
/// nothing with `[http.tls]` but no `http.tls.peer_ca` (no Socket.IO relay between
/// HTTPS listeners then: transport/socketio_forward.rs).
fn http_advertise(settings: &crate::config::Settings, advertise: &str) -> String {
    let http = settings.node.http_addr;
    if settings
        .http
        .tls
        .as_ref()
        .is_some_and(|tls| tls.peer_ca.is_none())
    {
        String::new()
    } else if http.ip().is_unspecified() {
        format!("{}:{}", node_server::host_of(advertise), http.port())
    } else {
        http.to_string()
    }
}

/// Whether `addr` looks like a `host:port` worth dialling.
fn dialable(addr: &str) -> bool {
    addr.len() <= 300
        && addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        })
}

impl MembershipState {
    fn now(&self) -> u64 {
        self.cluster.now_ms()
    }

    fn me(&self) -> &str {
        &self.cluster.me
    }

    /// The cluster's size for the view's quorum: the node list the room logs follow
    /// (configured, or changed at runtime), never guessed from the names seen.
    fn cluster_size(&self) -> usize {
        self.cluster
            .shard_host()
            .map_or(self.configured_size, |host| host.placement().names().len())
    }

    // ---- ractor_cluster session events ----

    fn on_session(&mut self, event: SessionEvent, info: &NodeServerSessionInformation) {
        tracing::debug!(
            ?event,
            session = %info.actor.get_id(),
            node_id = info.node_id,
            is_server = info.is_server,
            peer_addr = %info.peer_addr,
            peer_name = ?info.peer_name.as_ref().map(|n| &n.name),
            connection_string = ?info.peer_name.as_ref().map(|n| &n.connection_string),
            "node session event"
        );
        match event {
            SessionEvent::Opened => {
                self.session_entry(info);
            }
            SessionEvent::Authenticated => self.on_authenticated(info),
            SessionEvent::Ready => self.on_ready(info),
            SessionEvent::Disconnected => self.on_disconnected(info),
        }
        self.refresh();
    }

    /// The session of `info`, created on its first event (events are never lost, but
    /// a connection accepted before we subscribed has no `Opened`).
    fn session_entry(&mut self, info: &NodeServerSessionInformation) -> &mut Session {
        let now = self.now();
        let id = info.actor.get_id();
        let is_new = !self.sessions.contains_key(&id);
        let session = self
            .sessions
            .entry(id)
            .or_insert_with(|| Session::new(info, now));
        if let Some(name) = &info.peer_name {
            session.claimed_name = Some(name.name.clone());
            session.connection_string = Some(name.connection_string.clone());
        }
        if is_new && !info.is_server {
            session.target = self.targets.bind(&info.peer_addr, id);
        }
        session
    }

    fn on_authenticated(&mut self, info: &NodeServerSessionInformation) {
        let id = info.actor.get_id();
        let now = self.now();
        let own_cluster_name = self.own_cluster_name.clone();
        let me = self.me().to_owned();
        let session = self.session_entry(info);
        session.authenticated = true;
        let addr = session.addr().to_owned();
        let Some(claimed) = session.claimed_name.clone() else {
            session.stop("authenticated without a name");
            return;
        };
        if claimed == own_cluster_name {
            // ractor_cluster stops connections to oneself too; make sure.
            session.stop("connection to self");
            return;
        }
        let Some((name, inc)) = node_server::parse_cluster_name(&claimed) else {
            session.refuse("not a hubbub node");
            tracing::error!(
                peer = %claimed,
                addr = %addr,
                "refused the peer at {addr}: {claimed:?} is not a hubbub node name"
            );
            return;
        };
        session.identity = Some((name.clone(), inc));
        let target = session.target.clone();
        if let Some(target) = target.and_then(|t| self.targets.get_mut(&t)) {
            target.reached = Some(name.clone());
        }
        if name == me {
            if let Some(session) = self.sessions.get_mut(&id) {
                session.refuse("name taken");
            }
            tracing::error!(
                peer = %name,
                addr = %addr,
                own_addr = %self.advertise,
                "refused the node at {addr}: it is also named {name:?}, like this node \
                 ({}); node names must be unique",
                self.advertise
            );
            return;
        }
        let peer = self.peers.entry(name.clone()).or_default();
        let existing = peer.session.filter(|existing| *existing != id);
        if let Some(existing) = existing.and_then(|e| self.sessions.get(&e)) {
            if existing.identity.as_ref().map(|(_, i)| *i) == Some(inc) {
                // ractor_cluster's duplicate-connection election replaced one
                // connection with this node by another; the old one is stopping.
                tracing::debug!(peer = %name, "a new connection replaces the old one");
                self.cluster.accept_sender(&name, inc);
                peer.session = Some(id);
                peer.endpoint = None;
                peer.connected_at = now;
                self.cluster.set_endpoint(&name, None);
                return;
            }
            let existing_addr = peer
                .addr
                .clone()
                .unwrap_or_else(|| existing.addr().to_owned());
            if let Some(session) = self.sessions.get_mut(&id) {
                session.refuse("name taken");
            }
            tracing::error!(
                peer = %name,
                addr = %addr,
                taken_by = %existing_addr,
                "refused the node at {addr}: the name {name:?} is taken by the node at \
                 {existing_addr}, which is connected; node names must be unique"
            );
            return;
        }
        if peer.inc != inc {
            if peer.inc != 0 {
                tracing::info!(peer = %name, addr = %addr, "peer restarted (new incarnation)");
            }
            // A new life: the old one leaves the view, nothing heard counts.
            *peer = Peer {
                addr: peer.addr.take(),
                inc,
                ..Peer::default()
            };
        }
        self.cluster.accept_sender(&name, inc);
        peer.session = Some(id);
        peer.connected_at = now;
        if let Some(cs) = info.peer_name.as_ref().map(|n| &n.connection_string) {
            if peer.addr.is_none() && dialable(cs) {
                peer.addr = Some(cs.clone());
            }
        }
        tracing::info!(peer = %name, addr = %addr, "connected to peer");
    }

    fn on_ready(&mut self, info: &NodeServerSessionInformation) {
        let id = info.actor.get_id();
        let session = self.session_entry(info);
        session.ready = true;
        let Some((name, _)) = session.identity.clone() else {
            return;
        };
        if self.peers.get(&name).and_then(|p| p.session) == Some(id) {
            self.find_endpoint(&name);
            // The first ping now rather than on the next tick.
            self.send_ping(&name);
        }
    }

    fn on_disconnected(&mut self, info: &NodeServerSessionInformation) {
        let id = info.actor.get_id();
        self.session_entry(info);
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        let now = self.now();
        if let Some(target) = &session.target {
            self.targets.session_closed(target, id, session.useful, now);
        }
        if !session.authenticated {
            self.closed_before_authentication(&session);
            return;
        }
        let Some((name, _)) = &session.identity else {
            return;
        };
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        if peer.session != Some(id) {
            return;
        }
        peer.session = None;
        peer.endpoint = None;
        self.cluster.set_endpoint(name, None);
        if peer.up {
            tracing::warn!(
                peer = %name,
                addr = %session.addr(),
                "lost the connection to peer; it stays in the view until {} ms after it \
                 was last heard from, unless it reconnects",
                self.failure_timeout_ms
            );
        } else {
            tracing::debug!(peer = %name, "connection to a peer that was not up closed");
        }
    }

    /// Says why a session that never authenticated ended. ractor_cluster gives no
    /// reason; what it did tells: a session knows the peer's claimed name only once
    /// the handshake reached the cookie challenge, and a second connection with the
    /// same peer loses the duplicate-connection election without failing it.
    fn closed_before_authentication(&mut self, session: &Session) {
        if let Some(why) = session.stopped {
            tracing::debug!(addr = %session.addr(), why, "closed a connection we stopped");
            return;
        }
        let Some(claimed) = &session.claimed_name else {
            tracing::debug!(addr = %session.peer_addr, "a connection closed before the handshake");
            return;
        };
        if *claimed == self.own_cluster_name {
            if let Some(target) = session
                .target
                .as_ref()
                .and_then(|t| self.targets.get_mut(t))
            {
                target.is_self = true;
            }
            tracing::debug!(addr = %session.peer_addr, "dialled this node itself; not again");
            return;
        }
        let duplicate = self
            .sessions
            .values()
            .any(|other| other.claimed_name.as_ref() == Some(claimed) && other.stopped.is_none());
        if duplicate {
            tracing::debug!(peer = %claimed, "a duplicate connection was closed");
            return;
        }
        let addr = session.addr();
        let peer =
            node_server::parse_cluster_name(claimed).map_or(claimed.clone(), |(name, _)| name);
        tracing::error!(
            peer = %peer,
            addr = %addr,
            "peer at {addr} failed the cookie check (its cluster.cookie differs from this \
             node's); connection refused"
        );
    }

    // ---- dialling ----

    fn on_dialed(&mut self, target: String, result: Result<SocketAddr, DialError>) {
        let now = self.now();
        match result {
            Ok(sock) => {
                let sock = sock.to_string();
                // The session's Opened event may have come first.
                let session = self
                    .sessions
                    .iter_mut()
                    .find(|(_, s)| !s.is_server && s.target.is_none() && s.peer_addr == sock)
                    .map(|(id, s)| {
                        s.target = Some(target.clone());
                        *id
                    });
                self.targets.dial_connected(&target, sock, session, now);
            }
            Err(DialError::Handshake(why)) => {
                // Not a peer that is down: a misconfiguration, worth a warning (but
                // not one per retry).
                let key = format!("{target} {why}");
                if self
                    .handshake_warnings
                    .first_in_a_while(&key, Instant::now())
                {
                    tracing::warn!(
                        addr = %target,
                        error = %why,
                        "cannot connect to the peer at {target}: TLS handshake failed: {why}"
                    );
                } else {
                    tracing::debug!(addr = %target, error = %why, "TLS handshake failed");
                }
                self.targets.dial_failed(&target, now);
            }
            Err(error) => {
                tracing::debug!(target = %target, error = %error, "dial failed");
                self.targets.dial_failed(&target, now);
            }
        }
    }

    fn dial_due(&mut self, myself: &ActorRef<MembershipMessage>) {
        let now = self.now();
        let peers = &self.peers;
        let connected = |name: &str| peers.get(name).is_some_and(|p| p.session.is_some());
        let due = self.targets.due(now, |addr, target| {
            target.reached.as_deref().is_some_and(connected)
                || peers
                    .values()
                    .any(|p| p.session.is_some() && p.addr.as_deref() == Some(addr))
        });
        let timeout = Duration::from_millis(self.failure_timeout_ms);
        for target in due {
            tracing::debug!(target = %target, "dialling");
            let server = self.server.clone();
            let tls = self.tls.clone();
            let myself = myself.clone();
            tokio::spawn(async move {
                let result = node_server::dial(&server, &target, tls.as_ref(), timeout).await;
                let _ = myself.cast(MembershipMessage::Dialed { target, result });
            });
        }
    }

    // ---- heartbeats ----

    fn on_wire(&mut self, from: &str, inc: u64, body: Body) {
        let now = self.now();
        let view_id = self.view.id;
        let Some(peer) = self.peers.get_mut(from) else {
            tracing::debug!(peer = %from, kind = body.kind(), "heartbeat from an unknown node");
            return;
        };
        if peer.inc != inc || peer.session.is_none() {
            // Not the life of this node we are connected to (a refused namesake, or
            // a message still in flight from before a restart).
            tracing::debug!(peer = %from, kind = body.kind(), "heartbeat from another incarnation");
            return;
        }
        match body {
            Body::Ping {
                sent_at,
                view: _,
                peers: gossip,
                nodes,
            } => {
                peer.last_heard = Some(now);
                if peer.endpoint.is_none() {
                    self.find_endpoint(from);
                }
                self.cluster.send(
                    from,
                    Body::Pong {
                        echo: sent_at,
                        view: view_id,
                    },
                );
                self.learn(from, inc, gossip);
                self.check_node_lists(from, nodes);
            }
            Body::Pong { echo, view: _ } => {
                if echo > now {
                    tracing::debug!(peer = %from, "pong echoing a time still to come; dropped");
                    return;
                }
                peer.last_heard = Some(now);
                let precise = self
                    .sent
                    .iter()
                    .find(|(sent_at, _)| *sent_at == echo)
                    .map(|(_, at)| at.elapsed().as_secs_f64() * 1_000.0);
                let rtt_ms = precise.unwrap_or((now - echo) as f64);
                peer.rtt_ms = Some(rtt_ms);
                self.cluster
                    .metrics
                    .heartbeat_rtt(Duration::from_secs_f64(rtt_ms.max(0.0) / 1_000.0));
            }
            Body::Leaving {} => {
                // It stopped ordering before it said so: safe to drop it at once.
                peer.left = Some(inc);
                tracing::info!(peer = %from, "peer is leaving the cluster");
                self.declare_down(from, "left the cluster", 0);
            }
            other => {
                tracing::warn!(peer = %from, kind = other.kind(), "unexpected cluster message for membership; dropped");
                return;
            }
        }
        self.refresh();
    }

    /// Tells every peer this node is leaving.
    fn leave(&mut self) {
        let peers: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, peer)| peer.up)
            .map(|(name, _)| name.clone())
            .collect();
        tracing::info!(peers = peers.len(), "leaving the cluster");
        self.cluster.send_to_all(&peers, Body::Leaving {});
    }

    /// Takes in the nodes a peer gossiped: its own address, and addresses to dial.
    fn learn(&mut self, from: &str, from_inc: u64, gossip: Vec<PeerAddr>) {
        let now = self.now();
        for entry in gossip.into_iter().take(MAX_GOSSIP_ENTRIES) {
            if entry.name == self.cluster.me || !dialable(&entry.addr) {
                continue;
            }
            if entry.name == from {
                if entry.inc == from_inc {
                    if let Some(peer) = self.peers.get_mut(from) {
                        peer.addr = Some(entry.addr.clone());
                    }
                    // Only a node's word for its own HTTP address is taken.
                    if dialable(&entry.http) || entry.http.is_empty() {
                        self.cluster.set_http_addr(from, &entry.http);
                    }
                }
            } else {
                let peer = self.peers.entry(entry.name).or_default();
                if peer.session.is_none() {
                    peer.addr = Some(entry.addr.clone());
                }
            }
            self.targets.learn(&entry.addr, now);
        }
    }

    /// Looks up a peer's Endpoint among the remote members of its process group,
    /// through the session we accepted for it.
    fn find_endpoint(&mut self, name: &str) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        let Some(node_id) = peer
            .session
            .and_then(|id| self.sessions.get(&id))
            .filter(|s| s.ready)
            .map(|s| s.node_id)
        else {
            return;
        };
        let found = ractor::pg::get_members(&endpoint_group(name))
            .into_iter()
            .find(
                |cell| matches!(cell.get_id(), ActorId::Remote { node_id: n, .. } if n == node_id),
            )
            .map(ActorRef::<EndpointMessage>::from);
        let changed = match (&peer.endpoint, &found) {
            (Some(old), Some(new)) => old.get_id() != new.get_id(),
            (None, None) => false,
            _ => true,
        };
        if changed {
            let reached = found.is_some();
            peer.endpoint = found.clone();
            self.cluster.set_endpoint(name, found);
            if reached {
                self.offer_key(name);
            }
        }
    }

    /// Sends `name` the key its frames to us must carry, through its own session
    /// (the Endpoint found through it), unless it has shown it holds it.
    fn offer_key(&self, name: &str) {
        if let Some(key) = self.cluster.key_to_offer(name) {
            self.cluster.send(name, Body::SenderKey { key });
        }
    }

    /// The nodes we gossip: ourselves and every peer up in our view.
    fn gossip(&self) -> Vec<PeerAddr> {
        let mut gossip = vec![PeerAddr {
            name: self.cluster.me.clone(),
            inc: self.cluster.incarnation,
            addr: self.advertise.clone(),
            http: self.http_advertise.clone(),
        }];
        for (name, peer) in &self.peers {
            if let (true, Some(addr)) = (peer.up, &peer.addr) {
                gossip.push(PeerAddr {
                    name: name.clone(),
                    inc: peer.inc,
                    addr: addr.clone(),
                    http: String::new(),
                });
            }
        }
        gossip
    }

    /// A ping sent now; its send time is kept to time the pong.
    fn ping_body(&mut self) -> Body {
        let sent_at = self.now();
        if self.sent.back().is_none_or(|(last, _)| *last != sent_at) {
            if self.sent.len() == SENT_PINGS_KEPT {
                self.sent.pop_front();
            }
            self.sent.push_back((sent_at, Instant::now()));
        }
        Body::Ping {
            sent_at,
            view: self.view.id,
            peers: self.gossip(),
            nodes: self.own_list_hash(),
        }
    }

    /// The hash of the node list this node follows (0 before its room logs run, and
    /// while it joins and has no list from the cluster yet).
    fn own_list_hash(&self) -> u64 {
        self.cluster
            .shard_host()
            .and_then(|host| host.announced_placement())
            .map_or(0, |placement| super::shards::list_hash(&placement))
    }

    /// Tells the shard host whether every peer up follows the same node list as this
    /// node; a peer whose list differs is logged once per list it announces.
    fn check_node_lists(&mut self, from: &str, theirs: u64) {
        let mine = self.own_list_hash();
        let Some(peer) = self.peers.get_mut(from) else {
            return;
        };
        if theirs != 0 && mine != 0 && theirs != mine && peer.warned_list != Some(theirs) {
            tracing::warn!(
                peer = %from,
                "peer {from} follows another node list than this node (or other shards or \
                 replicas): shards are not moved to either until they agree; compare \
                 GET /cluster/nodes on both, and the configs' [[nodes]] or cluster.voters"
            );
        }
        peer.warned_list = (theirs != mine).then_some(theirs);
        peer.list_hash = theirs;
        let up = || self.peers.iter().filter(|(_, p)| p.up);
        let all = up().all(|(_, p)| p.list_hash == 0 || mine == 0 || p.list_hash == mine);
        let agreeing = up()
            .filter(|(_, p)| mine != 0 && p.list_hash == mine)
            .map(|(name, _)| super::shards::node_id(name))
            .collect();
        if let Some(host) = self.cluster.shard_host() {
            host.set_list_agreement(agreeing, all);
        }
    }

    fn send_ping(&mut self, name: &str) {
        if self.peers.get(name).is_some_and(|p| p.endpoint.is_some()) {
            let ping = self.ping_body();
            self.cluster.send(name, ping);
        }
    }

    fn on_tick(&mut self, myself: &ActorRef<MembershipMessage>) {
        let now = self.now();
        let timeout = self.failure_timeout_ms;
        // Handshakes that never finish (a frozen peer's kernel still accepts TCP) on
        // the sessions this node dialled. An incoming one has the cluster port's guard
        // (membership/peer_port.rs), which closes it at the same deadline and counts
        // it in hubbub_cluster_peer_connections_refused_total; stopping it here too
        // raced the guard, and a session stopped here was not counted. Twice the
        // timeout is left as a backstop should the guard not be polled.
        for session in self.sessions.values_mut() {
            let limit = if session.is_server {
                timeout.saturating_mul(2)
            } else {
                timeout
            };
            if !session.authenticated && now.saturating_sub(session.opened_at) > limit {
                session.stop("handshake timed out");
            }
        }
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for name in &names {
            let Some(peer) = self.peers.get(name) else {
                continue;
            };
            let heard = peer.last_heard.unwrap_or(0);
            if peer.up && now.saturating_sub(heard) > timeout {
                let reason = if peer.session.is_some() {
                    "heartbeat timeout"
                } else {
                    "connection lost"
                };
                self.declare_down(name, reason, now - heard);
            } else if !peer.up
                && peer.session.is_some()
                && now.saturating_sub(heard.max(peer.connected_at)) > timeout
            {
                // Connected but never (or no longer) answering: close and redial.
                tracing::debug!(peer = %name, "connected peer is silent; closing its connection");
                self.stop_peer_session(name, "silent since connecting");
            }
            if self.peers.get(name).is_some_and(|p| p.session.is_some()) {
                self.find_endpoint(name);
            }
        }
        self.refresh();
        let ping = self.ping_body();
        let ping = self.cluster.encode(ping);
        for (name, peer) in &self.peers {
            if peer.endpoint.is_some() {
                self.offer_key(name);
                self.cluster.send_encoded(name, &ping);
            }
        }
        self.dial_due(myself);
        if let Some(presence) = self.cluster.presence_port() {
            presence.tick();
        }
        let peers = &self.peers;
        self.targets.expire(now, |addr| {
            peers
                .values()
                .any(|p| p.up && p.addr.as_deref() == Some(addr))
        });
    }

    /// Takes a peer out of the view and closes its connection; its users leave
    /// presence here at once.
    fn declare_down(&mut self, name: &str, reason: &'static str, silent_ms: u64) {
        self.stop_peer_session(name, reason);
        if let Some(presence) = self.cluster.presence_port() {
            presence.node_down(name);
        }
        if let Some(peer) = self.peers.get_mut(name) {
            peer.up = false;
            tracing::warn!(
                peer = %name,
                addr = peer.addr.as_deref().unwrap_or(""),
                reason,
                silent_ms,
                "peer is down"
            );
        }
    }

    fn stop_peer_session(&mut self, name: &str, why: &'static str) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        if let Some(session) = peer
            .session
            .take()
            .and_then(|id| self.sessions.get_mut(&id))
        {
            session.stop(why);
        }
        peer.endpoint = None;
        self.cluster.set_endpoint(name, None);
    }

    // ---- the view ----

    /// Brings peers up, and publishes the view if it changed.
    fn refresh(&mut self) {
        let now = self.now();
        let timeout = self.failure_timeout_ms;
        for (name, peer) in &mut self.peers {
            if peer.up {
                continue;
            }
            let Some(session) = peer.session.and_then(|id| self.sessions.get_mut(&id)) else {
                continue;
            };
            let heard = peer
                .last_heard
                .is_some_and(|t| t >= peer.connected_at && now.saturating_sub(t) <= timeout);
            let left = peer.left == Some(peer.inc);
            if session.ready && peer.endpoint.is_some() && heard && !left {
                peer.up = true;
                session.useful = true;
                if let Some(target) = &session.target {
                    self.targets.succeeded(target, now);
                }
                tracing::info!(peer = %name, addr = peer.addr.as_deref().unwrap_or(""), "peer is up");
            }
        }
        let me = &self.cluster.me;
        let mut members = BTreeMap::from([(me.clone(), self.cluster.incarnation)]);
        for (name, peer) in &self.peers {
            if peer.up {
                members.insert(name.clone(), peer.inc);
            }
        }
        let view = View::new(members, self.cluster_size());
        if view.id != self.view.id || view.quorum != self.view.quorum {
            tracing::info!(
                view_id = view.id,
                members = ?view.members.keys().collect::<Vec<_>>(),
                quorum = view.quorum,
                has_quorum = view.has_quorum(),
                "view changed"
            );
            self.cluster.publish_view(view.clone());
            self.view = Arc::new(view);
        }
        let up = (self.peers.keys())
            .filter(|name| self.view.members.contains_key(*name))
            .count();
        self.cluster.metrics.set_peers(up, self.peers.len() - up);
    }

    fn status(&self) -> ClusterStatus {
        let now = self.now();
        ClusterStatus {
            node: self.cluster.me.clone(),
            incarnation: self.cluster.incarnation,
            advertise: self.advertise.clone(),
            view_id: self.view.id,
            view: self.view.members.keys().cloned().collect(),
            quorum: self.view.quorum,
            has_quorum: self.view.has_quorum(),
            peers: self
                .peers
                .iter()
                .map(|(name, peer)| PeerStatus {
                    name: name.clone(),
                    addr: peer.addr.clone().unwrap_or_default(),
                    state: if self.view.members.contains_key(name) {
                        "up"
                    } else {
                        "down"
                    },
                    connected: peer.session.is_some(),
                    incarnation: peer.inc,
                    rtt_ms: peer.rtt_ms.map(|ms| (ms * 1_000.0).round() / 1_000.0),
                    last_heard_ms_ago: peer.last_heard.map(|t| now.saturating_sub(t)),
                    same_node_list: (peer.list_hash != 0)
                        .then(|| peer.list_hash == self.own_list_hash()),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_address_gossiped_is_one_peers_reach() {
        let mut settings = crate::config::Settings::default();
        settings.node.http_addr = "10.0.0.1:8081".parse().unwrap();
        assert_eq!(http_advertise(&settings, "node-a:4370"), "10.0.0.1:8081");
        settings.node.http_addr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(http_advertise(&settings, "node-a:4370"), "node-a:8080");
        settings.node.http_addr = "[::]:8080".parse().unwrap();
        assert_eq!(
            http_advertise(&settings, "[fd00::1]:4370"),
            "[fd00::1]:8080"
        );
        settings.http.tls = Some(crate::config::HttpTls {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            peer_ca: None,
            peer_name: None,
        });
        assert_eq!(http_advertise(&settings, "node-a:4370"), "");
        // HTTPS listeners that relay to each other (http.tls.peer_ca) say where they are.
        if let Some(tls) = settings.http.tls.as_mut() {
            tls.peer_ca = Some("ca.pem".into());
        }
        assert_eq!(http_advertise(&settings, "node-a:4370"), "node-a:8080");
    }

    #[test]
    fn only_host_and_port_addresses_are_dialled() {
        assert!(dialable("127.0.0.1:4370"));
        assert!(dialable("[::1]:4370"));
        assert!(dialable("node-a.internal:4370"));
        for bad in ["", "host", ":4370", "host:0", "host:99999", "host:x"] {
            assert!(!dialable(bad), "{bad:?}");
        }
    }
}
