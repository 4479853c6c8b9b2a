//! The RoomSupervisor: parent and directory of this node's Room actors.
//!
//! Owns: the map from room name to its running Room actor. A Session asks it for a
//! room (`Get`), which starts the Room on first use. A Room that has been empty for
//! `rooms.idle_ttl_secs` asks to be retired; the supervisor forgets it first and stops
//! it second, so no new join can reach a stopping room (a join already on its way
//! fails and the Session looks the room up again).
//!
//! When a child stops: it is forgotten. When a child fails (a panic in a behaviour):
//! it is forgotten and logged; it is not restarted, because its history and members
//! died with it. The next join starts it afresh, and sessions still holding the failed
//! room get an `internal` reply and drop it.

use super::room::{RoomActor, RoomArgs, RoomMessage};
use super::NodeContext;
use crate::protocol::RoomName;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use std::collections::HashMap;
use std::sync::Arc;

/// Messages to the RoomSupervisor.
#[derive(RactorMessage)]
pub enum RoomSupervisorMessage {
    /// The Room actor for `room`, started if it is not running.
    Get {
        room: RoomName,
        reply: RpcReplyPort<Result<ActorRef<RoomMessage>, String>>,
    },
    /// An idle Room asks to stop.
    Retire { room: RoomName, id: ActorId },
    /// How many rooms are running.
    Count { reply: RpcReplyPort<usize> },
}

/// The RoomSupervisor actor.
pub struct RoomSupervisor {
    pub(crate) ctx: Arc<NodeContext>,
}

/// Running rooms.
#[derive(Default)]
pub struct RoomSupervisorState {
    rooms: HashMap<RoomName, ActorRef<RoomMessage>>,
    names: HashMap<ActorId, RoomName>,
}

impl RoomSupervisorState {
    fn forget(&mut self, id: &ActorId) -> Option<RoomName> {
        let name = self.names.remove(id)?;
        if self.rooms.get(&name).map(|r| r.get_id()) == Some(*id) {
            self.rooms.remove(&name);
        }
        Some(name)
    }
}

impl Actor for RoomSupervisor {
    type Msg = RoomSupervisorMessage;
    type State = RoomSupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(RoomSupervisorState::default())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: RoomSupervisorMessage,
        state: &mut RoomSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RoomSupervisorMessage::Get { room, reply } => {
                if let Some(actor) = state.rooms.get(&room) {
                    let _ = reply.send(Ok(actor.clone()));
                    return Ok(());
                }
                let args = RoomArgs {
                    name: room.clone(),
                    supervisor: myself.clone(),
                };
                let handler = RoomActor {
                    ctx: self.ctx.clone(),
                };
                match Actor::spawn_linked(None, handler, args, myself.get_cell()).await {
                    Ok((actor, _)) => {
                        state.names.insert(actor.get_id(), room.clone());
                        state.rooms.insert(room, actor.clone());
                        let _ = reply.send(Ok(actor));
                    }
                    Err(e) => {
                        tracing::error!(room = %room, error = %e, "could not start room");
                        let _ = reply.send(Err("could not start the room".to_owned()));
                    }
                }
            }
            RoomSupervisorMessage::Retire { room, id } => {
                if state.rooms.get(&room).map(|r| r.get_id()) == Some(id) {
                    if let Some(actor) = state.rooms.remove(&room) {
                        state.names.remove(&id);
                        tracing::debug!(room = %room, "room retired after idle ttl");
                        actor.stop(Some("idle".to_owned()));
                    }
                }
            }
            RoomSupervisorMessage::Count { reply } => {
                let _ = reply.send(state.rooms.len());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut RoomSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, ..) => {
                state.forget(&cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some(room) = state.forget(&cell.get_id()) {
                    tracing::error!(room = %room, error = %error, "room failed; it starts afresh on the next join");
                }
            }
            _ => {}
        }
        Ok(())
    }
}
