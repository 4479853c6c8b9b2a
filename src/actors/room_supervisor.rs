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
//! In a cluster it also receives room traffic from peers for rooms not running here
//! (starting the room when the traffic may create it, answering a recovery with
//! "nothing held" otherwise), and forwards every new view to every room.
//!
//! When a child stops: it is forgotten. When a child fails (a panic in a behaviour):
//! it is forgotten and logged; it is not restarted, because its history and members
//! died with it. The next join starts it afresh, and sessions still holding the failed
//! room get an `internal` reply and drop it.

use super::room::{RoomActor, RoomArgs, RoomMessage};
use super::NodeContext;
use crate::cluster::wire::Body;
use crate::cluster::View;
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
    /// The running rooms this node owns in its current view.
    Owned { reply: RpcReplyPort<Vec<String>> },
    /// Room traffic from a peer for a room whose actor was not found.
    Remote {
        room: String,
        from: String,
        body: Body,
    },
    /// Membership published a new view.
    ViewChanged(Arc<View>),
    /// This node is leaving the cluster: every room hands itself over; answers once
    /// all have sent their handoff (so it goes out before the node says it left).
    HandOff { reply: RpcReplyPort<usize> },
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
    view: Option<Arc<View>>,
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

    /// Peer traffic for a room that is not running here.
    async fn remote(
        &self,
        myself: &ActorRef<RoomSupervisorMessage>,
        state: &mut RoomSupervisorState,
        room: String,
        from: String,
        body: Body,
    ) {
        let Ok(name) = RoomName::parse(&room) else {
            tracing::warn!(%from, "dropped room traffic with an invalid room name");
            return;
        };
        let creates = match &body {
            Body::RoomHandoff { .. }
            | Body::RoomJoin { .. }
            | Body::RoomPublish { .. }
            | Body::RoomTyping { .. }
            | Body::RoomRename { .. } => true,
            Body::RoomMember { connections, .. } => *connections > 0,
            Body::RecoverRequest { view, .. } if !state.rooms.contains_key(&name) => {
                // Nothing held here for this room.
                let ready = state.view.as_ref().is_some_and(|v| v.id == *view);
                if let Some(cluster) = &self.ctx.cluster {
                    cluster.send(
                        &from,
                        Body::RecoverState {
                            room,
                            view: *view,
                            ready,
                            replica: None,
                        },
                    );
                }
                return;
            }
            _ => state.rooms.contains_key(&name),
        };
        if !creates {
            return;
        }
        // A leaving node's handoff carries history that exists nowhere else: it is
        // taken in even past the cap.
        let capped = !matches!(body, Body::RoomHandoff { .. });
        match self.get_or_start(myself, state, name, capped).await {
            Ok(actor) => {
                let _ = actor.cast(RoomMessage::Remote { from, body });
            }
            Err(refused) => self.refuse_remote(room, from, body, refused),
        }
    }
}

impl RoomSupervisor {
    /// Answers a peer's join or publish for a room that could not start here (over
    /// `limits.max_rooms`), so its client hears why instead of waiting; other traffic
    /// for such a room is dropped.
    fn refuse_remote(&self, room: String, from: String, body: Body, refused: ErrorBody) {
        let Some(cluster) = &self.ctx.cluster else {
            return;
        };
        match body {
            Body::RoomJoin { req, .. } => {
                cluster.send(
                    &from,
                    Body::RoomJoined {
                        room,
                        req,
                        epoch: 0,
                        seq: 0,
                        result: Err(refused),
                        ring: None,
                    },
                );
            }
            Body::RoomPublish { req, .. } => {
                cluster.send(
                    &from,
                    Body::RoomPublished {
                        room,
                        req,
                        result: Err(refused),
                    },
                );
            }
            _ => {}
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
        let mut state = RoomSupervisorState::default();
        if let Some(cluster) = &self.ctx.cluster {
            state.view = Some(cluster.view());
            // Forward every view change until this supervisor stops.
            let mut views = cluster.subscribe();
            tokio::spawn(async move {
                while views.changed().await.is_ok() {
                    let view = views.borrow_and_update().clone();
                    if myself
                        .cast(RoomSupervisorMessage::ViewChanged(view))
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
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
            RoomSupervisorMessage::Owned { reply } => {
                let me = self.ctx.cluster.as_ref().map(|c| c.me.clone());
                let mut owned: Vec<String> = state
                    .rooms
                    .keys()
                    .filter(|room| match (&state.view, &me) {
                        (Some(view), Some(me)) => view.owner_of(room.as_str()) == Some(me.as_str()),
                        _ => true,
                    })
                    .map(|room| room.to_string())
                    .collect();
                owned.sort();
                let _ = reply.send(owned);
            }
            RoomSupervisorMessage::Remote { room, from, body } => {
                self.remote(&myself, state, room, from, body).await;
            }
            RoomSupervisorMessage::HandOff { reply } => {
                let rooms: Vec<ActorRef<RoomMessage>> = state.rooms.values().cloned().collect();
                let handed = futures_util::future::join_all(
                    rooms
                        .iter()
                        .map(|room| crate::actors::ask(room, RoomMessage::HandOff)),
                )
                .await
                .into_iter()
                .filter(Result::is_ok)
                .count();
                let _ = reply.send(handed);
            }
            RoomSupervisorMessage::ViewChanged(view) => {
                state.view = Some(view.clone());
                for room in state.rooms.values() {
                    let _ = room.cast(RoomMessage::ViewChanged(view.clone()));
                }
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
                    tracing::error!(room = %room, error = %error, "room failed; it starts afresh on the next join");
                }
            }
            _ => {}
        }
        Ok(())
    }
}
