//! What every actor of a node shares: its settings, room behaviours, and the current
//! references to the long-lived actors (which change when a supervisor restarts one).

use super::presence::PresenceMessage;
use super::room_supervisor::RoomSupervisorMessage;
use super::session_supervisor::SessionSupervisorMessage;
use crate::behaviour::Behaviours;
use crate::config::Settings;
use ractor::ActorRef;
use std::sync::RwLock;

/// Shared, read-mostly state of one node. Held in an `Arc` by every actor.
pub struct NodeContext {
    pub settings: Settings,
    pub behaviours: Behaviours,
    refs: RwLock<Refs>,
}

#[derive(Default, Clone)]
struct Refs {
    presence: Option<ActorRef<PresenceMessage>>,
    rooms: Option<ActorRef<RoomSupervisorMessage>>,
    sessions: Option<ActorRef<SessionSupervisorMessage>>,
}

impl NodeContext {
    /// A context whose actor references are filled in by the NodeSupervisor.
    pub fn new(settings: Settings, behaviours: Behaviours) -> Self {
        Self {
            settings,
            behaviours,
            refs: RwLock::new(Refs::default()),
        }
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
