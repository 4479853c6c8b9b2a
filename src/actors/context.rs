//! What every actor of a node shares: its settings, room behaviours, and the current
//! references to the long-lived actors (which change when a supervisor restarts one).

use super::message_rate::MessageRate;
use super::outbound_budget::OutboundBudget;
use super::port::Ports;
use super::presence::PresenceMessage;
use super::room::RoomMessage;
use super::room_supervisor::RoomSupervisorMessage;
use super::session_supervisor::SessionSupervisorMessage;
use crate::auth::RoomAccess;
use crate::behaviour::Behaviours;
use crate::cluster::membership::MembershipMessage;
use crate::cluster::Cluster;
use crate::config::Settings;
use crate::hooks::Hooks;
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
            rooms_by_name: RoomDirectory::default(),
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

/// Read and (for the RoomSupervisor) write access to the running rooms by name.
#[derive(Clone, Default)]
pub struct RoomDirectory(Arc<RwLock<HashMap<String, ActorRef<RoomMessage>>>>);

impl RoomDirectory {
    /// The room's actor, if it runs on this node.
    pub fn get(&self, room: &str) -> Option<ActorRef<RoomMessage>> {
        self.0
            .read()
            .ok()
            .and_then(|rooms| rooms.get(room).cloned())
    }

    /// How many rooms run on this node.
    pub fn len(&self) -> usize {
        self.0.read().map(|rooms| rooms.len()).unwrap_or(0)
    }

    /// Whether no room runs on this node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names of the running rooms.
    pub fn names(&self) -> Vec<String> {
        self.0
            .read()
            .map(|rooms| rooms.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn insert(&self, room: &str, actor: ActorRef<RoomMessage>) {
        if let Ok(mut rooms) = self.0.write() {
            rooms.insert(room.to_owned(), actor);
        }
    }

    pub(crate) fn remove(&self, room: &str, id: ractor::ActorId) {
        if let Ok(mut rooms) = self.0.write() {
            if rooms.get(room).map(|r| r.get_id()) == Some(id) {
                rooms.remove(room);
            }
        }
    }
}
