//! What every actor of a node shares: its settings, room behaviours, and the current
//! references to the long-lived actors (which change when a supervisor restarts one).

use super::message_rate::MessageRate;
use super::outbound_budget::OutboundBudget;
use super::port::Ports;
use super::presence::PresenceMessage;
use super::room::backlog::{self, Admit, NodeBacklog, RoomBacklog};
use super::room::RoomMessage;
use super::room_supervisor::RoomSupervisorMessage;
use super::session_supervisor::SessionSupervisorMessage;
use crate::auth::RoomAccess;
use crate::behaviour::Behaviours;
use crate::cluster::membership::MembershipMessage;
use crate::cluster::Cluster;
use crate::config::Settings;
use crate::hooks::Hooks;
use crate::protocol::ChatMessage;
use crate::telemetry::Metrics;
use ractor::ActorRef;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Shared, read-mostly state of one node. Held in an `Arc` by every actor.
pub struct NodeContext {
    pub settings: Settings,
    pub behaviours: Behaviours,
    /// Who may join and publish where (`[[rooms.acl]]`).
    pub access: RoomAccess,
    /// Each user's message bucket (`[rate_limit]`).
    pub message_rate: MessageRate,
    /// The cluster handle; None when `cluster.enabled` is false.
    pub cluster: Option<Arc<Cluster>>,
    /// This node's metrics (its own registry, served at `GET /metrics`).
    pub metrics: Arc<Metrics>,
    /// What every connection's outbox holds, and `limits.node_outbound_bytes`.
    pub outbound: Arc<OutboundBudget>,
    /// The connect and publish hooks and the webhooks (`[hooks]`, `[[webhooks]]`).
    pub hooks: Arc<Hooks>,
    refs: RwLock<Refs>,
    rooms_by_name: RoomDirectory,
}

#[derive(Default, Clone)]
struct Refs {
    presence: Option<ActorRef<PresenceMessage>>,
    rooms: Option<ActorRef<RoomSupervisorMessage>>,
    sessions: Option<ActorRef<SessionSupervisorMessage>>,
    membership: Option<ActorRef<MembershipMessage>>,
    ports: Option<Ports>,
}

impl NodeContext {
    /// A context whose actor references are filled in by the NodeSupervisor.
    pub fn new(
        settings: Settings,
        behaviours: Behaviours,
        cluster: Option<Arc<Cluster>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        // Settings are validated before a node is built, so the rules compile; were
        // they not to, every room with a rule would be closed rather than open.
        let access = RoomAccess::new(&settings.rooms.acl).unwrap_or_else(|problems| {
            tracing::error!(?problems, "rooms.acl does not compile; closing every room");
            RoomAccess::closed()
        });
        let message_rate = MessageRate::new(&settings.rate_limit);
        let outbound = Arc::new(OutboundBudget::new(settings.limits.node_outbound_bytes));
        let hooks = Arc::new(Hooks::new(&settings, &metrics));
        let rooms_by_name = RoomDirectory::new(settings.rooms.delivery_backlog_bytes);
        Self {
            settings,
            behaviours,
            access,
            message_rate,
            cluster,
            metrics,
            outbound,
            hooks,
            refs: RwLock::new(Refs::default()),
            rooms_by_name,
        }
    }

    /// The running Room actors by room name, kept by the RoomSupervisor so that the
    /// cluster Endpoint can reach a room without a detour through it.
    /// The handle is cheap to clone and may be kept (the port's implementations keep
    /// one to call rooms back).
    pub fn room_directory(&self) -> RoomDirectory {
        self.rooms_by_name.clone()
    }

    fn read(&self) -> Refs {
        self.refs.read().map(|r| r.clone()).unwrap_or_default()
    }

    fn write(&self, update: impl FnOnce(&mut Refs)) {
        if let Ok(mut refs) = self.refs.write() {
            update(&mut refs);
        }
    }

    /// The Presence actor, once started.
    pub fn presence(&self) -> Option<ActorRef<PresenceMessage>> {
        self.read().presence
    }

    /// The RoomSupervisor, once started.
    pub fn rooms(&self) -> Option<ActorRef<RoomSupervisorMessage>> {
        self.read().rooms
    }

    /// The SessionSupervisor, once started.
    pub fn sessions(&self) -> Option<ActorRef<SessionSupervisorMessage>> {
        self.read().sessions
    }

    /// The Membership actor, when clustered and started.
    pub fn membership(&self) -> Option<ActorRef<MembershipMessage>> {
        self.read().membership
    }

    /// The port to the room logs and other nodes' presence, once the NodeSupervisor
    /// has started them (before any room).
    pub fn ports(&self) -> Option<Ports> {
        self.read().ports
    }

    pub(crate) fn set_ports(&self, ports: Option<Ports>) {
        self.write(|r| r.ports = ports);
    }

    pub(crate) fn set_membership(&self, actor: Option<ActorRef<MembershipMessage>>) {
        self.write(|r| r.membership = actor);
    }

    pub(crate) fn set_presence(&self, actor: Option<ActorRef<PresenceMessage>>) {
        self.write(|r| r.presence = actor);
    }

    pub(crate) fn set_rooms(&self, actor: Option<ActorRef<RoomSupervisorMessage>>) {
        self.write(|r| r.rooms = actor);
    }

    pub(crate) fn set_sessions(&self, actor: Option<ActorRef<SessionSupervisorMessage>>) {
        self.write(|r| r.sessions = actor);
    }
}

/// Read and (for the RoomSupervisor) write access to the running rooms by name, and
/// the way committed messages reach them (bounded in bytes: room/backlog.rs).
#[derive(Clone)]
pub struct RoomDirectory(Arc<Directory>);

struct Directory {
    rooms: RwLock<HashMap<String, Running>>,
    backlog: NodeBacklog,
}

#[derive(Clone)]
struct Running {
    actor: ActorRef<RoomMessage>,
    backlog: Arc<RoomBacklog>,
}

/// A directory with the default delivery backlog (for tests that need no node).
impl Default for RoomDirectory {
    fn default() -> Self {
        Self::new(crate::config::RoomSettings::default().delivery_backlog_bytes)
    }
}

impl RoomDirectory {
    /// No room yet; committed messages queued to the rooms' actors up to
    /// `backlog_bytes` (`rooms.delivery_backlog_bytes`).
    pub fn new(backlog_bytes: u64) -> Self {
        Self(Arc::new(Directory {
            rooms: RwLock::new(HashMap::new()),
            backlog: NodeBacklog::new(backlog_bytes),
        }))
    }

    /// The room's actor, if it runs on this node.
    pub fn get(&self, room: &str) -> Option<ActorRef<RoomMessage>> {
        self.running(room).map(|running| running.actor)
    }

    fn running(&self, room: &str) -> Option<Running> {
        self.0
            .rooms
            .read()
            .ok()
            .and_then(|rooms| rooms.get(room).cloned())
    }

    /// Hands messages committed in `room`'s log, in log order, to its actor if it
    /// runs here: queued while the delivery backlog has room for them, else the room
    /// is told it is behind and reads them from the log (room/backlog.rs).
    pub fn deliver(&self, room: &str, messages: Vec<ChatMessage>, metrics: &Metrics) {
        let Some(running) = self.running(room) else {
            return;
        };
        let bytes = messages.iter().map(backlog::cost).sum();
        match self.0.backlog.admit(&running.backlog, bytes) {
            Admit::Queue(queued) => {
                let _ = running.actor.cast(RoomMessage::Committed(messages, queued));
            }
            Admit::Behind => {
                metrics.delivery_behind();
                let _ = running.actor.cast(RoomMessage::Behind(running.backlog));
            }
            Admit::Skip => {}
        }
    }

    /// What the rooms' mailboxes hold of committed messages (room/backlog.rs).
    pub fn backlog_bytes(&self) -> u64 {
        self.0.backlog.total()
    }

    /// How many rooms run on this node.
    pub fn len(&self) -> usize {
        self.0.rooms.read().map(|rooms| rooms.len()).unwrap_or(0)
    }

    /// Whether no room runs on this node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names of the running rooms.
    pub fn names(&self) -> Vec<String> {
        self.0
            .rooms
            .read()
            .map(|rooms| rooms.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn insert(&self, room: &str, actor: ActorRef<RoomMessage>) {
        if let Ok(mut rooms) = self.0.rooms.write() {
            let backlog = Arc::new(RoomBacklog::default());
            rooms.insert(room.to_owned(), Running { actor, backlog });
        }
    }

    pub(crate) fn remove(&self, room: &str, id: ractor::ActorId) {
        if let Ok(mut rooms) = self.0.rooms.write() {
            if rooms.get(room).map(|r| r.actor.get_id()) == Some(id) {
                rooms.remove(room);
            }
        }
    }
}
