//! The Presence actor: who is online on this node, and how to reach each connection.
//!
//! Owns: the map from user id to that user's live sessions and display name. Serves
//! direct messages (to every connection of the target user) and renames (a user has
//! one name; the latest connection or rename sets it, and every one of its sessions
//! hears of it). Room presence lives in each Room; this actor answers "is this user
//! online, and where".
//!
//! In a cluster, a direct message is delivered here and sent once to every other node
//! in the view, whose Presence delivers it to the target's connections there; the
//! reply counts every connection reached (or says `user_offline` when none was), and
//! waits at most [`DIRECT_TIMEOUT`] for the others. A rename is announced to every
//! node the same way.
//!
//! Each online user also has a bucket of direct messages it may receive on this node
//! (`limits.directs_per_target_per_second`), shared by all senders, local and from
//! other nodes: many throwaway ids cannot flood one user until it is closed as a slow
//! consumer. A local sender past it is answered `rate_limited`; another node's is
//! told this node reached nobody.
//!
//! Parent: the NodeSupervisor. Monitors every Session, so a session that ends for any
//! reason is forgotten at once; a user is forgotten, bucket and all, with its last
//! session, so the state follows who is online now.

use super::bucket::{self, Bucket};
use super::session::{SessionAnswer, SessionCall, SessionHandle, SessionMessage};
use super::{ask, NodeContext};
use crate::cluster::wire::{Body, UserCall, UserCallResult};
use crate::protocol::{
    encode, now_ms, DirectFrame, ErrorBody, ErrorCode, ReplyData, RoomName, ServerFrame, UserInfo,
};
use governor::Quota;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// The longest a direct message waits for other nodes to say how many connections
/// they reached.
pub const DIRECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest a server API call on a user's connections waits for the other nodes'
/// results; past it the call is answered with what came.
pub const USER_CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest one connection may take to do a server API call (a join asks its room).
const CONNECTION_CALL_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// Presence traffic from another node.
    Remote { from: String, body: Body },
    /// A cluster direct message stops waiting for the nodes that have not answered.
    DirectTimeout { req: u64 },
    /// A server API call on every connection of `user`, on every node.
    UserCall {
        user: String,
        call: UserCall,
        reply: RpcReplyPort<UserCallResult>,
    },
    /// This node's part of the user call `req` is done.
    UserCallLocal { req: u64, result: UserCallResult },
    /// The user call `req` stops waiting for the nodes that have not answered.
    UserCallTimeout { req: u64 },
}

/// The Presence actor; holds only the node context.
pub struct PresenceActor {
    pub(crate) ctx: Arc<NodeContext>,
}

impl PresenceActor {
    fn direct(
        &self,
        myself: &ActorRef<PresenceMessage>,
        state: &mut PresenceState,
        from: UserInfo,
        to: String,
        content: String,
        reply: RpcReplyPort<Result<ReplyData, ErrorBody>>,
    ) {
        if let Err(wait) = state.take_inbound(&to) {
            self.ctx.metrics.limit_refused("directs_per_target");
            let _ = reply.send(Err(crate::actors::churn::refusal(
                &format!("{to} is receiving too many direct messages; retry later"),
                wait,
            )));
            return;
        }
        let frame = DirectFrame {
            id: uuid::Uuid::now_v7().to_string(),
            from,
            content,
            ts: now_ms(),
        };
        let (id, ts) = (frame.id.clone(), frame.ts);
        let bytes = encode(&ServerFrame::Direct(frame));
        let delivered = state.deliver(&to, &bytes);
        let mut pending = PendingDirect {
            to,
            id,
            ts,
            delivered,
            waiting: BTreeSet::new(),
            reply,
        };
        if let Some(cluster) = &self.ctx.cluster {
            let req = cluster.next_req();
            let view = cluster.view();
            for node in view.members.keys().filter(|n| **n != cluster.me) {
                let body = Body::Direct {
                    req,
                    to: pending.to.clone(),
                    frame: bytes.to_string(),
                };
                if cluster.send(node, body) {
                    pending.waiting.insert(node.clone());
                }
            }
            if !pending.waiting.is_empty() {
                state.pending.insert(req, pending);
                myself.send_after(DIRECT_TIMEOUT, move || PresenceMessage::DirectTimeout {
                    req,
                });
                return;
            }
        }
        pending.finish();
    }

    /// Starts a server API call on every connection of `user`: this node's are
    /// called from a task (a connection's answer may wait on its room, and Presence
    /// must not wait), every other node in the view gets a `UserCall`; the reply sums
    /// what came within [`USER_CALL_TIMEOUT`].
    fn user_call(
        &self,
        myself: &ActorRef<PresenceMessage>,
        state: &mut PresenceState,
        user: String,
        call: UserCall,
        reply: RpcReplyPort<UserCallResult>,
    ) {
        let req = match &self.ctx.cluster {
            Some(cluster) => cluster.next_req(),
            None => {
                state.next_call += 1;
                state.next_call
            }
        };
        let mut pending = PendingCall {
            local_done: false,
            waiting: BTreeSet::new(),
            result: UserCallResult::default(),
            reply,
        };
        if let Some(cluster) = &self.ctx.cluster {
            let view = cluster.view();
            for node in view.members.keys().filter(|n| **n != cluster.me) {
                let body = Body::UserCall {
                    req,
                    user: user.clone(),
                    call: call.clone(),
                };
                if cluster.send(node, body) {
                    pending.waiting.insert(node.clone());
                }
            }
        }
        state.pending_calls.insert(req, pending);
        let sessions = state.sessions_of(&user);
        let me = myself.clone();
        tokio::spawn(async move {
            let result = call_connections(sessions, call).await;
            let _ = me.cast(PresenceMessage::UserCallLocal { req, result });
        });
        myself.send_after(USER_CALL_TIMEOUT, move || {
            PresenceMessage::UserCallTimeout { req }
        });
    }

    fn remote(&self, state: &mut PresenceState, from: String, body: Body) {
        match body {
            Body::Direct { req, to, frame } => {
                let delivered = if state.take_inbound(&to).is_ok() {
                    state.deliver(&to, &bytestring::ByteString::from(frame))
                } else {
                    self.ctx.metrics.limit_refused("directs_per_target");
                    0
                };
                if let Some(cluster) = &self.ctx.cluster {
                    cluster.send(&from, Body::DirectResult { req, delivered });
                }
            }
            Body::DirectResult { req, delivered } => {
                let done = match state.pending.get_mut(&req) {
                    Some(pending) => {
                        if pending.waiting.remove(&from) {
                            pending.delivered += delivered;
                        }
                        pending.waiting.is_empty()
                    }
                    None => false,
                };
                if done {
                    if let Some(pending) = state.pending.remove(&req) {
                        pending.finish();
                    }
                }
            }
            Body::UserRenamed { user } => {
                if let Some(online) = state.users.get_mut(&user.id) {
                    if online.name != user.name {
                        rename(online, user.name);
                    }
                }
            }
            Body::UserCall { req, user, call } => {
                let sessions = state.sessions_of(&user);
                if let Some(cluster) = self.ctx.cluster.clone() {
                    tokio::spawn(async move {
                        let result = call_connections(sessions, call).await;
                        cluster.send(&from, Body::UserCallResult { req, result });
                    });
                }
            }
            Body::UserCallResult { req, result } => {
                let done = match state.pending_calls.get_mut(&req) {
                    Some(pending) => {
                        if pending.waiting.remove(&from) {
                            pending.result.merge(result);
                        }
                        pending.done()
                    }
                    None => false,
                };
                if done {
                    state.finish_call(req);
                }
            }
            other => tracing::debug!(kind = other.kind(), "unexpected presence traffic dropped"),
        }
    }
}

struct OnlineUser {
    name: String,
    /// Its connections here. A list, not a map: a user has a few connections, and a
    /// map's first allocation (four slots) is most of what Presence holds per
    /// connection; removing one scans the user's list.
    sessions: Vec<SessionHandle>,
    /// Direct messages it may still receive now (`directs_per_target_per_second`).
    inbound: Option<Bucket>,
}

/// Who is online.
#[derive(Default)]
pub struct PresenceState {
    /// Direct messages per second one user may receive here; None: no limit.
    inbound_rate: Option<NonZeroU32>,
    users: HashMap<String, OnlineUser>,
    user_of: HashMap<ActorId, String>,
    /// Direct messages waiting for other nodes' counts.
    pending: HashMap<u64, PendingDirect>,
    /// Server API user calls waiting for this node's connections and other nodes.
    pending_calls: HashMap<u64, PendingCall>,
    /// Numbers the user calls of a node that is not clustered.
    next_call: u64,
}

/// A user call waiting for its parts: this node's (`local_done`) and other nodes'.
struct PendingCall {
    local_done: bool,
    waiting: BTreeSet<String>,
    result: UserCallResult,
    reply: RpcReplyPort<UserCallResult>,
}

impl PendingCall {
    fn done(&self) -> bool {
        self.local_done && self.waiting.is_empty()
    }
}

struct PendingDirect {
    to: String,
    id: String,
    ts: u64,
    delivered: u32,
    waiting: BTreeSet<String>,
    reply: RpcReplyPort<Result<ReplyData, ErrorBody>>,
}

impl PendingDirect {
    fn finish(self) {
        let answer = if self.delivered == 0 {
            Err(offline(&self.to))
        } else {
            Ok(ReplyData::Direct {
                id: self.id,
                ts: self.ts,
                delivered: self.delivered,
            })
        };
        let _ = self.reply.send(answer);
    }
}

fn offline(user: &str) -> ErrorBody {
    ErrorBody::new(ErrorCode::UserOffline, format!("{user} is not connected"))
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
        Ok(PresenceState {
            inbound_rate: NonZeroU32::new(self.ctx.settings.limits.directs_per_target_per_second),
            ..PresenceState::default()
        })
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
                let inbound_rate = state.inbound_rate;
                let user = state.users.entry(user_id).or_insert_with(|| OnlineUser {
                    name: name.clone(),
                    sessions: Vec::with_capacity(1),
                    inbound: inbound_rate.map(|rate| bucket::bucket(Quota::per_second(rate))),
                });
                user.sessions.push(session);
                if user.name != name {
                    rename(user, name);
                }
            }
            PresenceMessage::Direct {
                from,
                to,
                content,
                reply,
            } => self.direct(&myself, state, from, to, content, reply),
            PresenceMessage::Rename {
                user_id,
                name,
                reply,
            } => {
                if let Some(user) = state.users.get_mut(&user_id) {
                    rename(user, name.clone());
                }
                let user = UserInfo { id: user_id, name };
                if let Some(cluster) = &self.ctx.cluster {
                    let view = cluster.view();
                    let others = view.members.keys().filter(|n| **n != cluster.me);
                    cluster.send_to_all(others, Body::UserRenamed { user: user.clone() });
                }
                let _ = reply.send(user);
            }
            PresenceMessage::Remote { from, body } => self.remote(state, from, body),
            PresenceMessage::DirectTimeout { req } => {
                if let Some(pending) = state.pending.remove(&req) {
                    pending.finish();
                }
            }
            PresenceMessage::UserCall { user, call, reply } => {
                self.user_call(&myself, state, user, call, reply)
            }
            PresenceMessage::UserCallLocal { req, result } => {
                let done = match state.pending_calls.get_mut(&req) {
                    Some(pending) => {
                        pending.local_done = true;
                        pending.result.merge(result);
                        pending.done()
                    }
                    None => false,
                };
                if done {
                    state.finish_call(req);
                }
            }
            PresenceMessage::UserCallTimeout { req } => state.finish_call(req),
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
                    user.sessions.retain(|s| s.actor.get_id() != id);
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
    for session in &user.sessions {
        let _ = session
            .actor
            .cast(SessionMessage::NameChanged(name.clone()));
    }
}

/// Does a user call on these connections (of one user, on this node).
async fn call_connections(sessions: Vec<SessionHandle>, call: UserCall) -> UserCallResult {
    let mut result = UserCallResult::default();
    let session_call = match call {
        UserCall::Disconnect { code, reason } => {
            // Checked by the API on the node called; bounded here too, as a close
            // frame holds at most 123 bytes of reason.
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            let reason = &reason[..end];
            for session in &sessions {
                session.outbox.close_now(code, reason);
            }
            result.affected = sessions.len() as u32;
            return result;
        }
        UserCall::Join { room } => match RoomName::parse(&room) {
            Ok(room) => SessionCall::Join(room),
            Err(refused) => {
                result.refused = Some(refused);
                return result;
            }
        },
        UserCall::Leave { room } => match RoomName::parse(&room) {
            Ok(room) => SessionCall::Leave(room),
            Err(refused) => {
                result.refused = Some(refused);
                return result;
            }
        },
        UserCall::Connections => SessionCall::Info,
    };
    let asks = sessions.iter().map(|session| {
        let call = session_call.clone();
        let actor = session.actor.clone();
        async move {
            let asked = ask(&actor, |reply| SessionMessage::Server { call, reply });
            tokio::time::timeout(CONNECTION_CALL_TIMEOUT, asked).await
        }
    });
    for answer in futures_util::future::join_all(asks).await {
        match answer {
            Ok(Ok(SessionAnswer::Done(Ok(())))) => result.affected += 1,
            Ok(Ok(SessionAnswer::Done(Err(refused)))) => {
                if result.refused.is_none() {
                    result.refused = Some(refused);
                }
            }
            Ok(Ok(SessionAnswer::Info(info))) => {
                result.affected += 1;
                result.connections.push(info);
            }
            // A connection that ended meanwhile is simply not counted.
            Ok(Err(_)) | Err(_) => {}
        }
    }
    result
}

impl PresenceState {
    /// The live sessions of `user` on this node.
    fn sessions_of(&self, user: &str) -> Vec<SessionHandle> {
        self.users
            .get(user)
            .map(|u| u.sessions.clone())
            .unwrap_or_default()
    }

    /// Answers the user call `req` with what it has gathered.
    fn finish_call(&mut self, req: u64) {
        if let Some(pending) = self.pending_calls.remove(&req) {
            let _ = pending.reply.send(pending.result);
        }
    }

    /// Takes one direct message from `user`'s inbound bucket; how long to wait when it
    /// is empty. A user not online here has no bucket (nothing is delivered here).
    fn take_inbound(&self, user: &str) -> Result<(), Duration> {
        let Some(bucket) = self.users.get(user).and_then(|u| u.inbound.as_ref()) else {
            return Ok(());
        };
        bucket::take(bucket)
    }

    /// Pushes an encoded frame to every connection of `user` here; how many took it.
    fn deliver(&self, user: &str, frame: &bytestring::ByteString) -> u32 {
        self.users.get(user).map_or(0, |target| {
            target
                .sessions
                .iter()
                .filter(|s| s.outbox.push(frame.clone()).is_ok())
                .count() as u32
        })
    }
}
