//! The Room actor: one per active room on a node.
//!
//! Owns the room as this node holds it ([`state::RoomState`]): the connections here,
//! the members, the history ring. It also owns the room's ROLE on this node
//! ([`roles`]):
//!
//! - **Owner**: the one node that orders the room's messages. It assigns sequence
//!   numbers, keeps the authoritative member list (every node's connections), and
//!   sends each message, presence change, typing and rename once to every node that
//!   holds the room. A single node (no cluster) is always the owner.
//! - **Relay**: every other node with connections in the room. It forwards joins,
//!   publishes, typing and renames to the owner, receives each broadcast once and
//!   fans it out to its own connections, and keeps a copy of the history.
//! - **Recovering**: the view made this node the owner; it is collecting what the
//!   others hold before it orders anything (requests wait, bounded).
//! - **Unavailable**: this node is cut off from most of the cluster; requests that
//!   would change the room are refused with `unavailable`.
//!
//! Parent: the RoomSupervisor. Monitors the Session of every connection joined here,
//! so a session that ends for any reason leaves the room. When no connection is left
//! (and, for an owner, no member on any node), the room keeps its history for
//! `rooms.idle_ttl_secs`, then asks its supervisor to retire it; a room that never
//! held a message has nothing to keep and asks at once. One idle timer at most is
//! alive per room: arming it again, or the room stopping, aborts the previous one.
//!
//! What a room keeps per user follows its current members only (connections here,
//! members, the owner's names and counts of other nodes); a member who leaves
//! everywhere leaves no trace but the messages it sent. `hubbub_room_state_entries`
//! counts these entries across the node's rooms.
//!
//! In a room with more than `rooms.presence_batch_members` members, joins and leaves
//! are gathered for `rooms.presence_batch_ms` and go out as one `presence_diff` (and,
//! from an owner, one member list to each relay) instead of one per change.
//!
//! Every handler is synchronous (all sends are casts), so requests deferred during a
//! recovery are replayed in order by the same dispatch function.

mod roles;
mod state;

use super::port::RemoteMember;
use super::room_supervisor::RoomSupervisorMessage;
use super::session::SessionHandle;
use super::NodeContext;
use crate::cluster::wire::Body;
use crate::cluster::{Cluster, View};
use crate::protocol::{ChatMessage, ErrorBody, ErrorCode, ReplyData, RoomName, UserInfo};
use crate::telemetry::Metrics;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use roles::{OwnerBook, PendingJoin, PresenceBatch, Role, Unreplicated};
use state::RoomState;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// A pending idle timer: the task that sends `IdleCheck`.
type IdleTimer = ractor::concurrency::JoinHandle<Result<(), ractor::MessagingErr<RoomMessage>>>;

/// Requests a recovering owner holds before it refuses more with `unavailable`.
const MAX_DEFERRED: usize = 4096;

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
        /// The client's key for retries (protocol v1 `publish.idempotency_key`).
        idempotency_key: Option<String>,
        reply: RpcReplyPort<Result<ReplyData, ErrorBody>>,
    },
    Typing {
        session: ActorId,
    },
    History {
        session: ActorId,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u32>,
        reply: RpcReplyPort<Result<ReplyData, ErrorBody>>,
    },
    Presence {
        after: Option<String>,
        limit: Option<u32>,
        count_only: bool,
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
    /// The joins and leaves gathered since the batch began go out now.
    PresenceTick,
    /// Room traffic from another node, routed here by the cluster Endpoint.
    Remote {
        from: String,
        body: Body,
    },
    /// Membership published a new view.
    ViewChanged(Arc<View>),
    /// Ask the nodes that were not ready again (during a recovery for `view`).
    RecoveryRetry {
        view: u64,
    },
    /// This node is leaving the cluster: hand the room to its next owner.
    HandOff(RpcReplyPort<()>),
    /// Messages committed in the room's log, in log order (from the port).
    Committed(Vec<ChatMessage>),
    /// This node's copy of the room's log jumped: catch up with a read.
    Reread,
    /// Other nodes' members changed (absolute counts; from the port).
    RemotePresence(Vec<RemoteMember>),
    /// A member on another node is typing.
    RemoteTyping(UserInfo),
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

/// Everything a Room keeps.
pub struct Room {
    state: RoomState,
    supervisor: ActorRef<RoomSupervisorMessage>,
    cluster: Option<Arc<Cluster>>,
    view: Option<Arc<View>>,
    role: Role,
    /// The highest ownership epoch accepted (as owner: the current one).
    epoch: u64,
    book: OwnerBook,
    pending_joins: HashMap<u64, PendingJoin>,
    pending_publishes: HashMap<u64, RpcReplyPort<Result<ReplyData, ErrorBody>>>,
    deferred: VecDeque<RoomMessage>,
    /// Ordered messages waiting for the designated relay's confirmation.
    unreplicated: VecDeque<Unreplicated>,
    idle_ttl: Duration,
    /// The pending idle timer, aborted when another is armed or the room stops.
    idle_timer: Option<IdleTimer>,
    /// Set once the room asked its supervisor to retire it.
    retiring: bool,
    /// Joins and leaves waiting for the next `PresenceTick` (large rooms only).
    presence_batch: PresenceBatch,
    metrics: Arc<Metrics>,
    /// This room's share of `hubbub_room_state_entries` as last reported.
    entries_reported: i64,
}

impl Actor for RoomActor {
    type Msg = RoomMessage;
    type State = Room;
    type Arguments = RoomArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RoomArgs,
    ) -> Result<Room, ActorProcessingErr> {
        let settings = &self.ctx.settings;
        tracing::debug!(room = %args.name, "room started");
        let mut room = Room {
            state: RoomState::new(
                args.name.clone(),
                self.ctx.behaviours.for_room(&args.name),
                settings.rooms.history,
            )
            .bounded_by(state::ReplyBounds::new(
                &settings.limits,
                self.ctx.metrics.clone(),
            )),
            supervisor: args.supervisor,
            cluster: self.ctx.cluster.clone(),
            view: None,
            role: Role::Owner,
            epoch: 1,
            book: OwnerBook::default(),
            pending_joins: HashMap::new(),
            pending_publishes: HashMap::new(),
            deferred: VecDeque::new(),
            unreplicated: VecDeque::new(),
            idle_ttl: Duration::from_secs(settings.rooms.idle_ttl_secs),
            idle_timer: None,
            retiring: false,
            presence_batch: PresenceBatch::new(
                settings.rooms.presence_batch_members,
                Duration::from_millis(settings.rooms.presence_batch_ms),
            ),
            metrics: self.ctx.metrics.clone(),
            entries_reported: 0,
        };
        if let Some(cluster) = room.cluster.clone() {
            room.epoch = 0;
            room.on_view(&myself, cluster.view());
        }
        Ok(room)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: RoomMessage,
        room: &mut Room,
    ) -> Result<(), ActorProcessingErr> {
        // At debug level, whatever is logged while the room handles a message (its
        // behaviour's hooks included) carries the room's name.
        let _in_room = tracing::debug_span!("room", room = %room.state.name).entered();
        room.dispatch(&myself, message);
        room.report_entries();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        room: &mut Room,
    ) -> Result<(), ActorProcessingErr> {
        // Only monitored Sessions send us events: however one ended, it has left.
        if let SupervisionEvent::ActorTerminated(cell, ..)
        | SupervisionEvent::ActorFailed(cell, _) = event
        {
            room.leave(&myself, &cell.get_id());
            room.report_entries();
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        room: &mut Room,
    ) -> Result<(), ActorProcessingErr> {
        room.fail_pending("the room stopped");
        if let Some(timer) = room.idle_timer.take() {
            timer.abort();
        }
        room.metrics.room_state_entries(-room.entries_reported);
        room.entries_reported = 0;
        let _ = myself;
        Ok(())
    }
}

impl Room {
    /// Handles one message. Synchronous, so deferred messages replay through it.
    fn dispatch(&mut self, myself: &ActorRef<RoomMessage>, message: RoomMessage) {
        if self.cluster.as_ref().is_some_and(|c| c.is_leaving()) {
            if let RoomMessage::Join { .. } | RoomMessage::Publish { .. } = &message {
                refuse(
                    message,
                    unavailable("this node is shutting down; reconnect"),
                );
                return;
            }
        }
        if self.retiring {
            // The supervisor forgets this room before it stops it; a join that reached
            // it in between is dropped unanswered, so the session looks the room up
            // again and finds (or starts) the next one, instead of joining a room that
            // is about to stop.
            if let RoomMessage::Join { .. } = message {
                return;
            }
        }
        match message {
            RoomMessage::Join { request, reply } => self.join(myself, request, reply),
            RoomMessage::Leave { session, reply } => {
                self.leave(myself, &session);
                let _ = reply.send(());
            }
            RoomMessage::Publish {
                session,
                from,
                content,
                idempotency_key: _,
                reply,
            } => self.publish(myself, &session, from, content, reply),
            RoomMessage::Typing { session } => self.typing(&session),
            RoomMessage::History {
                session,
                before,
                after,
                limit,
                reply,
            } => {
                let answer = if self.state.connections.contains_key(&session) {
                    Ok(self.state.history_page(before, after, limit))
                } else {
                    Err(self.not_joined())
                };
                let _ = reply.send(answer);
            }
            RoomMessage::Presence {
                after,
                limit,
                count_only,
                reply,
            } => {
                let page = self
                    .state
                    .presence_page(after.as_deref(), limit, count_only);
                let _ = reply.send(page);
            }
            RoomMessage::Rename { user_id, name } => self.rename(UserInfo { id: user_id, name }),
            RoomMessage::IdleCheck { generation } => self.idle_check(myself, generation),
            RoomMessage::PresenceTick => self.flush_presence(),
            RoomMessage::Remote { from, body } => self.remote(myself, from, body),
            RoomMessage::ViewChanged(view) => self.on_view(myself, view),
            RoomMessage::RecoveryRetry { view } => self.retry_recovery(myself, view),
            RoomMessage::HandOff(reply) => {
                self.hand_off();
                let _ = reply.send(());
            }
            // Wired with the Raft room logs (issue #9, in progress).
            RoomMessage::Committed(_)
            | RoomMessage::Reread
            | RoomMessage::RemotePresence(_)
            | RoomMessage::RemoteTyping(_) => {}
        }
    }

    fn not_joined(&self) -> ErrorBody {
        ErrorBody::new(
            ErrorCode::NotJoined,
            format!("join {} first", self.state.name),
        )
    }

    /// Holds a request until a recovery ends; refuses it when too many wait.
    fn defer(&mut self, message: RoomMessage) {
        if self.deferred.len() < MAX_DEFERRED {
            self.deferred.push_back(message);
        } else {
            refuse(
                message,
                unavailable("the room is moving to another node; retry"),
            );
        }
    }

    /// When the room has just emptied, keep its history for `idle_ttl`, then retire;
    /// a room that never held a message retires at once (it has nothing to keep, and
    /// a flood of joins and leaves of new names must not leave rooms behind).
    fn arm_idle_timer(&mut self, myself: &ActorRef<RoomMessage>) {
        if !self.state.connections.is_empty() || self.book.has_remote_members() {
            return;
        }
        self.state.idle_generation += 1;
        let generation = self.state.idle_generation;
        if let Some(previous) = self.idle_timer.take() {
            previous.abort();
        }
        // A room started for a join (or by a peer) waits the idle TTL until a first
        // connection came and went: retiring at once would bounce the join on its way.
        let never_used =
            self.state.had_connection && self.state.seq == 0 && self.unreplicated.is_empty();
        if self.idle_ttl.is_zero() || never_used {
            let _ = myself.cast(RoomMessage::IdleCheck { generation });
        } else {
            self.idle_timer = Some(
                myself.send_after(self.idle_ttl, move || RoomMessage::IdleCheck { generation }),
            );
        }
    }

    fn idle_check(&mut self, myself: &ActorRef<RoomMessage>, generation: u64) {
        if generation != self.state.idle_generation
            || !self.state.connections.is_empty()
            || self.book.has_remote_members()
        {
            return;
        }
        if let (Role::Relay { owner }, Some(cluster)) = (&self.role, &self.cluster) {
            cluster.send(
                owner,
                Body::RoomUnsubscribe {
                    room: self.state.name.to_string(),
                },
            );
        }
        self.retiring = true;
        let _ = self.supervisor.cast(RoomSupervisorMessage::Retire {
            room: self.state.name.clone(),
            id: myself.get_id(),
        });
    }
}

impl Room {
    /// Brings this room's share of `hubbub_room_state_entries` up to date.
    fn report_entries(&mut self) {
        let held = self.state.connections.len()
            + self.state.local.len()
            + self.state.members.len()
            + self.book.entries()
            + self.presence_batch.len();
        let held = i64::try_from(held).unwrap_or(i64::MAX);
        if held != self.entries_reported {
            self.metrics
                .room_state_entries(held - self.entries_reported);
            self.entries_reported = held;
        }
    }
}

/// An `unavailable` error with a reason.
fn unavailable(message: &str) -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, message)
}

/// Answers a request that will not be carried out.
fn refuse(message: RoomMessage, error: ErrorBody) {
    match message {
        RoomMessage::Join { reply, .. }
        | RoomMessage::Publish { reply, .. }
        | RoomMessage::History { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        RoomMessage::Leave { reply, .. } => {
            let _ = reply.send(());
        }
        _ => {}
    }
}
