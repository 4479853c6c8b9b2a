//! The Presence actor: who is online on this node, and how to reach each connection.
//!
//! Owns: the map from user id to that user's live sessions and display name. Serves
//! direct messages (to every connection of the target user) and renames (a user has
//! one name; the latest connection or rename sets it, and every one of its sessions
//! hears of it). Room presence lives in each Room; this actor answers "is this user
//! online, and where".
//!
//! Parent: the NodeSupervisor. Monitors every Session, so a session that ends for any
//! reason is forgotten at once.

use super::session::{SessionHandle, SessionMessage};
use super::NodeContext;
use crate::protocol::{
    encode, now_ms, DirectFrame, ErrorBody, ErrorCode, ReplyData, ServerFrame, UserInfo,
};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use std::collections::HashMap;
use std::sync::Arc;

/// Messages to Presence.
#[derive(RactorMessage)]
pub enum PresenceMessage {
    /// A session started (or re-registers after Presence restarted).
    Register(SessionHandle),
    /// Deliver a direct message to every connection of `to`.
    Direct {
        from: UserInfo,
        to: String,
        content: String,
        reply: RpcReplyPort<Result<ReplyData, ErrorBody>>,
    },
    /// Change a user's display name; answers with the user as now known.
    Rename {
        user_id: String,
        name: String,
        reply: RpcReplyPort<UserInfo>,
    },
    /// How many connections a user has on this node.
    Connections {
        user_id: String,
        reply: RpcReplyPort<u32>,
    },
    /// The user's current display name, if it is online.
    NameOf {
        user_id: String,
        reply: RpcReplyPort<Option<String>>,
    },
}

/// The Presence actor; holds only the node context.
pub struct PresenceActor {
    #[allow(dead_code)]
    pub(crate) ctx: Arc<NodeContext>,
}

struct OnlineUser {
    name: String,
    sessions: HashMap<ActorId, SessionHandle>,
}

/// Who is online.
#[derive(Default)]
pub struct PresenceState {
    users: HashMap<String, OnlineUser>,
    user_of: HashMap<ActorId, String>,
}

impl Actor for PresenceActor {
    type Msg = PresenceMessage;
    type State = PresenceState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<PresenceState, ActorProcessingErr> {
        Ok(PresenceState::default())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: PresenceMessage,
        state: &mut PresenceState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PresenceMessage::Register(session) => {
                let id = session.actor.get_id();
                if state.user_of.contains_key(&id) {
                    return Ok(());
                }
                myself.get_cell().monitor(session.actor.get_cell());
                let user_id = session.user.id.clone();
                let name = session.user.name.clone();
                state.user_of.insert(id, user_id.clone());
                let user = state.users.entry(user_id).or_insert_with(|| OnlineUser {
                    name: name.clone(),
                    sessions: HashMap::new(),
                });
                user.sessions.insert(id, session);
                if user.name != name {
                    rename(user, name);
                }
            }
            PresenceMessage::Direct {
                from,
                to,
                content,
                reply,
            } => {
                let _ = reply.send(state.direct(from, &to, content));
            }
            PresenceMessage::Rename {
                user_id,
                name,
                reply,
            } => {
                if let Some(user) = state.users.get_mut(&user_id) {
                    rename(user, name.clone());
                }
                let _ = reply.send(UserInfo { id: user_id, name });
            }
            PresenceMessage::NameOf { user_id, reply } => {
                let _ = reply.send(state.users.get(&user_id).map(|u| u.name.clone()));
            }
            PresenceMessage::Connections { user_id, reply } => {
                let count = state
                    .users
                    .get(&user_id)
                    .map_or(0, |u| u.sessions.len() as u32);
                let _ = reply.send(count);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut PresenceState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorTerminated(cell, ..)
        | SupervisionEvent::ActorFailed(cell, _) = event
        {
            let id = cell.get_id();
            if let Some(user_id) = state.user_of.remove(&id) {
                if let Some(user) = state.users.get_mut(&user_id) {
                    user.sessions.remove(&id);
                    if user.sessions.is_empty() {
                        state.users.remove(&user_id);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Sets the user's name and tells each of its sessions, which tell their rooms.
fn rename(user: &mut OnlineUser, name: String) {
    user.name = name.clone();
    for session in user.sessions.values() {
        let _ = session
            .actor
            .cast(SessionMessage::NameChanged(name.clone()));
    }
}

impl PresenceState {
    fn direct(&self, from: UserInfo, to: &str, content: String) -> Result<ReplyData, ErrorBody> {
        let Some(target) = self.users.get(to) else {
            return Err(ErrorBody::new(
                ErrorCode::UserOffline,
                format!("{to} is not connected"),
            ));
        };
        let frame = DirectFrame {
            id: uuid::Uuid::now_v7().to_string(),
            from,
            content,
            ts: now_ms(),
        };
        let (id, ts) = (frame.id.clone(), frame.ts);
        let bytes = encode(&ServerFrame::Direct(frame));
        let delivered = target
            .sessions
            .values()
            .filter(|s| s.outbox.push(bytes.clone()).is_ok())
            .count() as u32;
        if delivered == 0 {
            return Err(ErrorBody::new(
                ErrorCode::UserOffline,
                format!("{to} is not connected"),
            ));
        }
        Ok(ReplyData::Direct { id, ts, delivered })
    }
}
