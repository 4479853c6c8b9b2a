//! The RoomSupervisor: parent and directory of this node's Room actors.
//!
//! Owns: the map from room name to its running Room actor, and the node-wide cap on
//! it (`limits.max_rooms`). A Session asks it for a room (`Get`), which starts the
//! Room on first use unless `limits.max_rooms` run already (then `room_limit`; rooms
//! already running are still handed out). A Room that has been empty for
//! `rooms.idle_ttl_secs` (at once, if it never held a message) asks to be retired;
//! the supervisor forgets it first and stops it second, so no new join can reach a
//! stopping room (a join already on its way fails and the Session looks the room up
//! again).
//!
//! When a child stops: it is forgotten. When a child fails (a panic in a behaviour):
//! it is forgotten and logged; it is not restarted, because its history and members
//! died with it. The next join starts it afresh, and sessions still holding the failed
//! room get an `internal` reply and drop it.

use super::room::{RoomActor, RoomArgs, RoomMessage};
use super::NodeContext;
use crate::protocol::{ErrorBody, ErrorCode, RoomName};
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
        reply: RpcReplyPort<Result<ActorRef<RoomMessage>, ErrorBody>>,
    },
    /// An idle Room asks to stop.
    Retire { room: RoomName, id: ActorId },
    /// How many rooms are running.
    Count { reply: RpcReplyPort<usize> },
    /// The names of the running rooms, sorted.
    Names { reply: RpcReplyPort<Vec<String>> },
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
    fn forget(&mut self, ctx: &NodeContext, id: &ActorId) -> Option<RoomName> {
        let name = self.names.remove(id)?;
        if self.rooms.get(&name).map(|r| r.get_id()) == Some(*id) {
            self.rooms.remove(&name);
        }
        ctx.room_directory().remove(name.as_str(), *id);
        Some(name)
    }
}

impl RoomSupervisor {
    /// The room's actor, started if it is not running (when `capped`, only below
    /// `limits.max_rooms`).
    async fn get_or_start(
        &self,
        myself: &ActorRef<RoomSupervisorMessage>,
        state: &mut RoomSupervisorState,
        room: RoomName,
        capped: bool,
    ) -> Result<ActorRef<RoomMessage>, ErrorBody> {
        if let Some(actor) = state.rooms.get(&room) {
            return Ok(actor.clone());
        }
        let max = self.ctx.settings.limits.max_rooms;
        if capped && max > 0 && state.rooms.len() >= max {
            self.ctx.metrics.limit_refused("max_rooms");
            tracing::debug!(room = %room, max, "room refused: limits.max_rooms reached");
            return Err(ErrorBody::new(
                ErrorCode::RoomLimit,
                format!("this node runs its most rooms ({max}); join a room already open, or retry later"),
            ));
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
                self.ctx
                    .room_directory()
                    .insert(room.as_str(), actor.clone());
                state.rooms.insert(room, actor.clone());
                Ok(actor)
            }
            Err(e) => {
                tracing::error!(room = %room, error = %e, "could not start room");
                Err(ErrorBody::new(
                    ErrorCode::Internal,
                    "could not start the room",
                ))
            }
        }
    }
}

impl Actor for RoomSupervisor {
    type Msg = RoomSupervisorMessage;
    type State = RoomSupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let _ = myself;
        let state = RoomSupervisorState::default();
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: RoomSupervisorMessage,
        state: &mut RoomSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RoomSupervisorMessage::Get { room, reply } => {
                let answer = self.get_or_start(&myself, state, room, true).await;
                let _ = reply.send(answer);
            }
            RoomSupervisorMessage::Retire { room, id } => {
                if state.rooms.get(&room).map(|r| r.get_id()) == Some(id) {
                    if let Some(actor) = state.rooms.remove(&room) {
                        state.names.remove(&id);
                        self.ctx.room_directory().remove(room.as_str(), id);
                        tracing::debug!(room = %room, "room retired after idle ttl");
                        actor.stop(Some("idle".to_owned()));
                    }
                }
            }
            RoomSupervisorMessage::Count { reply } => {
                let _ = reply.send(state.rooms.len());
            }
            RoomSupervisorMessage::Names { reply } => {
                let mut names: Vec<String> = state.rooms.keys().map(|r| r.to_string()).collect();
                names.sort();
                let _ = reply.send(names);
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
                state.forget(&self.ctx, &cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some(room) = state.forget(&self.ctx, &cell.get_id()) {
                    tracing::error!(room = %room, error = %error, "room failed; the next join starts it again from its log");
                }
            }
            _ => {}
        }
        Ok(())
    }
}
