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

use super::session::{SessionHandle, SessionMessage};
use super::NodeContext;
use crate::cluster::wire::Body;
use crate::protocol::{
    encode, now_ms, DirectFrame, ErrorBody, ErrorCode, ReplyData, ServerFrame, UserInfo,
};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// The longest a direct message waits for other nodes to say how many connections
/// they reached.
pub const DIRECT_TIMEOUT: Duration = Duration::from_secs(2);

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
            other => tracing::debug!(kind = other.kind(), "unexpected presence traffic dropped"),
        }
    }
}

struct OnlineUser {
    name: String,
    sessions: HashMap<ActorId, SessionHandle>,
    /// Direct messages it may still receive now (`directs_per_target_per_second`).
    inbound: Option<DefaultDirectRateLimiter>,
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
                    sessions: HashMap::new(),
                    inbound: inbound_rate.map(|rate| RateLimiter::direct(Quota::per_second(rate))),
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
    /// Takes one direct message from `user`'s inbound bucket; how long to wait when it
    /// is empty. A user not online here has no bucket (nothing is delivered here).
    fn take_inbound(&self, user: &str) -> Result<(), Duration> {
        let Some(bucket) = self.users.get(user).and_then(|u| u.inbound.as_ref()) else {
            return Ok(());
        };
        bucket
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Pushes an encoded frame to every connection of `user` here; how many took it.
    fn deliver(&self, user: &str, frame: &bytestring::ByteString) -> u32 {
        self.users.get(user).map_or(0, |target| {
            target
                .sessions
                .values()
                .filter(|s| s.outbox.push(frame.clone()).is_ok())
                .count() as u32
        })
    }
}
