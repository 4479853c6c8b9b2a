//! The Room actor: one per active room.
//!
//! Owns: the room's membership (connections, and the users they belong to), its
//! sequence number, its history ring, typing relay and room presence. It orders every
//! message: the sequence number is assigned here and nowhere else. Each broadcast is
//! encoded once and the same bytes are pushed into every member's outbox.
//!
//! Parent: the RoomSupervisor. Monitors the Session of every joined connection, so a
//! session that ends for any reason leaves the room. When the last connection leaves,
//! the room keeps its history for `rooms.idle_ttl_secs`, then asks its supervisor to
//! retire it.

use super::outbox::Outbox;
use super::room_supervisor::RoomSupervisorMessage;
use super::session::SessionHandle;
use super::NodeContext;
use crate::behaviour::RoomBehaviour;
use crate::protocol::{
    encode, now_ms, ChatMessage, MAX_HISTORY_LIMIT, ErrorBody, ErrorCode, Member, ReplyData, RoomName, ServerFrame,
    UserInfo,
};
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use ractor_cluster::RactorMessage;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Messages a `history` request returns when it gives no `limit`.
const DEFAULT_HISTORY_LIMIT: u32 = 50;

/// A connection asking to join.
pub struct JoinRequest {
    pub session: SessionHandle,
    /// The last sequence number the client has seen, to resume from.
    pub since: Option<u64>,
}

/// Messages to a Room.
#[derive(RactorMessage)]
pub enum RoomMessage {
    Join {
        request: JoinRequest,
        reply: RpcReplyPort<Result<ReplyData, ErrorBody>>,
    },
    Leave {
        session: ActorId,
        reply: RpcReplyPort<()>,
    },
    Publish {
        session: ActorId,
        from: UserInfo,
        content: String,
        reply: RpcReplyPort<Result<ReplyData, ErrorBody>>,
    },
    Typing {
        session: ActorId,
    },
    History {
        session: ActorId,
        before: Option<u64>,
        limit: Option<u32>,
        reply: RpcReplyPort<Result<ReplyData, ErrorBody>>,
    },
    Presence {
        reply: RpcReplyPort<ReplyData>,
    },
    /// A member's display name changed.
    Rename {
        user_id: String,
        name: String,
    },
    /// The idle timer armed when the room emptied has fired.
    IdleCheck {
        generation: u64,
    },
}

/// Arguments to start a Room.
pub struct RoomArgs {
    pub name: RoomName,
    pub supervisor: ActorRef<RoomSupervisorMessage>,
}

/// The Room actor; holds only the node context.
pub struct RoomActor {
    pub(crate) ctx: Arc<NodeContext>,
}

struct Connection {
    user_id: String,
    outbox: Outbox,
    cell: ActorCell,
}

struct MemberEntry {
    name: String,
    connections: u32,
}

/// What changes in a room.
pub struct RoomState {
    name: RoomName,
    supervisor: ActorRef<RoomSupervisorMessage>,
    behaviour: Arc<dyn RoomBehaviour>,
    connections: HashMap<ActorId, Connection>,
    /// Users, in id order so member lists come out stable.
    members: BTreeMap<String, MemberEntry>,
    seq: u64,
    history: VecDeque<ChatMessage>,
    history_cap: usize,
    /// Bumped whenever the room empties or fills, so a stale idle timer does nothing.
    idle_generation: u64,
}

impl Actor for RoomActor {
    type Msg = RoomMessage;
    type State = RoomState;
    type Arguments = RoomArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RoomArgs,
    ) -> Result<RoomState, ActorProcessingErr> {
        let history_cap = self.ctx.settings.rooms.history;
        tracing::debug!(room = %args.name, "room started");
        Ok(RoomState {
            behaviour: self.ctx.behaviours.for_room(&args.name),
            name: args.name,
            supervisor: args.supervisor,
            connections: HashMap::new(),
            members: BTreeMap::new(),
            seq: 0,
            history: VecDeque::with_capacity(history_cap.min(1024)),
            history_cap,
            idle_generation: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: RoomMessage,
        state: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RoomMessage::Join { request, reply } => {
                let answer = state.join(&myself, request);
                let _ = reply.send(answer);
            }
            RoomMessage::Leave { session, reply } => {
                if let Some(conn) = state.remove_connection(&session) {
                    myself.get_cell().unmonitor(conn.cell);
                }
                self.arm_idle_timer(&myself, state);
                let _ = reply.send(());
            }
            RoomMessage::Publish {
                session,
                from,
                content,
                reply,
            } => {
                let _ = reply.send(state.publish(&session, from, content));
            }
            RoomMessage::Typing { session } => state.typing(&session),
            RoomMessage::History {
                session,
                before,
                limit,
                reply,
            } => {
                let answer = if state.connections.contains_key(&session) {
                    Ok(state.history_page(before, limit))
                } else {
                    Err(ErrorBody::new(
                        ErrorCode::NotJoined,
                        format!("join {} first", state.name),
                    ))
                };
                let _ = reply.send(answer);
            }
            RoomMessage::Presence { reply } => {
                let _ = reply.send(ReplyData::Presence {
                    room: state.name.to_string(),
                    members: state.member_list(),
                });
            }
            RoomMessage::Rename { user_id, name } => state.rename(&user_id, name),
            RoomMessage::IdleCheck { generation } => {
                if generation == state.idle_generation && state.connections.is_empty() {
                    let _ = state.supervisor.cast(RoomSupervisorMessage::Retire {
                        room: state.name.clone(),
                        id: myself.get_id(),
                    });
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        // Only monitored Sessions send us events: however one ended, it has left.
        if let SupervisionEvent::ActorTerminated(cell, ..)
        | SupervisionEvent::ActorFailed(cell, _) = event
        {
            if state.remove_connection(&cell.get_id()).is_some() {
                self.arm_idle_timer(&myself, state);
            }
        }
        Ok(())
    }
}

impl RoomActor {
    /// When the room has just emptied, keep its history for `idle_ttl_secs`, then retire.
    fn arm_idle_timer(&self, myself: &ActorRef<RoomMessage>, state: &mut RoomState) {
        if !state.connections.is_empty() {
            return;
        }
        state.idle_generation += 1;
        let generation = state.idle_generation;
        let ttl = Duration::from_secs(self.ctx.settings.rooms.idle_ttl_secs);
        if ttl.is_zero() {
            let _ = myself.cast(RoomMessage::IdleCheck { generation });
        } else {
            myself.send_after(ttl, move || RoomMessage::IdleCheck { generation });
        }
    }
}

impl RoomState {
    fn join(
        &mut self,
        myself: &ActorRef<RoomMessage>,
        request: JoinRequest,
    ) -> Result<ReplyData, ErrorBody> {
        let JoinRequest { session, since } = request;
        let id = session.actor.get_id();
        if !self.connections.contains_key(&id) {
            // A re-join of a connection already in the room only refreshes its data.
            self.behaviour
                .authorize_join(&self.name, &session.user)
                .map_err(ErrorBody::from)?;
            myself.get_cell().monitor(session.actor.get_cell());
            self.idle_generation += 1;
            self.connections.insert(
                id,
                Connection {
                    user_id: session.user.id.clone(),
                    outbox: session.outbox.clone(),
                    cell: session.actor.get_cell(),
                },
            );
            let entry = self
                .members
                .entry(session.user.id.clone())
                .or_insert(MemberEntry {
                    name: session.user.name.clone(),
                    connections: 0,
                });
            entry.connections += 1;
            if entry.connections == 1 {
                let member = Member {
                    id: session.user.id.clone(),
                    name: entry.name.clone(),
                    connections: 1,
                };
                self.behaviour.on_join(&self.name, &member);
                let diff = ServerFrame::PresenceDiff {
                    room: self.name.to_string(),
                    joins: vec![member],
                    leaves: vec![],
                };
                self.broadcast_except(&encode(&diff), Some(&id));
            }
        }
        let (history, gap) = self.resume_from(since);
        Ok(ReplyData::Join {
            room: self.name.to_string(),
            seq: self.seq,
            history,
            members: self.member_list(),
            gap,
        })
    }

    /// The messages a joining client gets, and whether some it asked for are gone.
    /// At most [`MAX_HISTORY_LIMIT`] (the newest) come in a join reply; a resume that
    /// this cuts short reports a gap, and older messages are a `history` request away.
    fn resume_from(&self, since: Option<u64>) -> (Vec<ChatMessage>, bool) {
        let (messages, gap) = self.resume_all(since);
        let cap = MAX_HISTORY_LIMIT as usize;
        if messages.len() <= cap {
            return (messages, gap);
        }
        let cut = messages.len() - cap;
        (messages[cut..].to_vec(), gap || since.is_some())
    }

    fn resume_all(&self, since: Option<u64>) -> (Vec<ChatMessage>, bool) {
        let Some(since) = since else {
            return (self.history.iter().cloned().collect(), false);
        };
        if since > self.seq {
            // The client saw sequence numbers this room never handed out: the room
            // was retired and started afresh. Everything it holds is new to the client.
            return (self.history.iter().cloned().collect(), true);
        }
        let oldest_held = self.history.front().map_or(self.seq + 1, |m| m.seq);
        let gap = since < self.seq && oldest_held > since + 1;
        let missed = self
            .history
            .iter()
            .filter(|m| m.seq > since)
            .cloned()
            .collect();
        (missed, gap)
    }

    fn publish(
        &mut self,
        session: &ActorId,
        from: UserInfo,
        content: String,
    ) -> Result<ReplyData, ErrorBody> {
        if !self.connections.contains_key(session) {
            return Err(ErrorBody::new(
                ErrorCode::NotJoined,
                format!("join {} first", self.name),
            ));
        }
        let content = self
            .behaviour
            .on_publish(&self.name, &from, content)
            .map_err(ErrorBody::from)?;
        self.seq += 1;
        let message = ChatMessage {
            room: self.name.to_string(),
            id: uuid::Uuid::now_v7().to_string(),
            seq: self.seq,
            from,
            content,
            ts: now_ms(),
        };
        let reply = ReplyData::Publish {
            id: message.id.clone(),
            seq: message.seq,
            ts: message.ts,
        };
        let frame = ServerFrame::Message(message);
        self.broadcast_except(&encode(&frame), None);
        if let ServerFrame::Message(message) = frame {
            if self.history.len() >= self.history_cap {
                self.history.pop_front();
            }
            self.history.push_back(message);
        }
        Ok(reply)
    }

    fn typing(&self, session: &ActorId) {
        let Some(conn) = self.connections.get(session) else {
            return;
        };
        let Some(entry) = self.members.get(&conn.user_id) else {
            return;
        };
        let frame = encode(&ServerFrame::Typing {
            room: self.name.to_string(),
            user: UserInfo {
                id: conn.user_id.clone(),
                name: entry.name.clone(),
            },
        });
        // "To the others": none of the typing user's own connections.
        for other in self.connections.values() {
            if other.user_id != conn.user_id {
                let _ = other.outbox.push(frame.clone());
            }
        }
    }

    fn history_page(&self, before: Option<u64>, limit: Option<u32>) -> ReplyData {
        let limit = limit
            .unwrap_or(DEFAULT_HISTORY_LIMIT)
            .clamp(1, MAX_HISTORY_LIMIT) as usize;
        let before = before.unwrap_or(u64::MAX);
        let older: Vec<&ChatMessage> = self.history.iter().filter(|m| m.seq < before).collect();
        let start = older.len().saturating_sub(limit);
        ReplyData::History {
            room: self.name.to_string(),
            messages: older[start..].iter().map(|m| (*m).clone()).collect(),
        }
    }

    fn rename(&mut self, user_id: &str, name: String) {
        let Some(entry) = self.members.get_mut(user_id) else {
            return;
        };
        // Every connection of the user forwards the rename; announce it once.
        if entry.name == name {
            return;
        }
        let old_name = std::mem::replace(&mut entry.name, name.clone());
        let frame = encode(&ServerFrame::Renamed {
            room: self.name.to_string(),
            user: UserInfo {
                id: user_id.to_owned(),
                name,
            },
            old_name,
        });
        self.broadcast_except(&frame, None);
    }

    /// Forgets a connection; announces the user's leave if it was its last one.
    fn remove_connection(&mut self, session: &ActorId) -> Option<Connection> {
        let conn = self.connections.remove(session)?;
        if let Some(entry) = self.members.get_mut(&conn.user_id) {
            entry.connections = entry.connections.saturating_sub(1);
            if entry.connections == 0 {
                let name = self
                    .members
                    .remove(&conn.user_id)
                    .map(|e| e.name)
                    .unwrap_or_default();
                let member = Member {
                    id: conn.user_id.clone(),
                    name,
                    connections: 0,
                };
                self.behaviour.on_leave(&self.name, &member);
                let diff = ServerFrame::PresenceDiff {
                    room: self.name.to_string(),
                    joins: vec![],
                    leaves: vec![member],
                };
                self.broadcast_except(&encode(&diff), None);
            }
        }
        Some(conn)
    }

    fn member_list(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(id, entry)| Member {
                id: id.clone(),
                name: entry.name.clone(),
                connections: entry.connections,
            })
            .collect()
    }

    /// Pushes the same encoded bytes to every connection but `except`. A member whose
    /// queue is full is closed as a slow consumer by its outbox; its Session then ends
    /// and the monitor removes it from the room.
    fn broadcast_except(&self, frame: &bytestring::ByteString, except: Option<&ActorId>) {
        for (id, conn) in &self.connections {
            if Some(id) != except {
                let _ = conn.outbox.push(frame.clone());
            }
        }
    }
}
