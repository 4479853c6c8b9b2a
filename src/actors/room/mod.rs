//! The Room actor: one per active room on a node.
//!
//! A room's messages are ordered by its **room log** (in a cluster, the Raft group of
//! the room's shard; alone, a one-voter group on this node), reached only through the
//! port ([`super::port::RoomLog`]). Every node with connections in a room runs its own
//! Room actor, and they are all alike: there is no owner.
//!
//! - **Publish.** The room's behaviour sees the content, then the room appends it to
//!   the log in a task of its own and goes on. The publisher's reply comes once the
//!   message is committed (held by a majority of the shard) and, when it can be within
//!   [`ACK_WAIT`], once this room has delivered it here (so the publisher sees its own
//!   message before its reply).
//! - **Delivery.** Committed messages arrive from the port in log order
//!   (`Committed`). The room delivers each once, in `seq` order: the next one is shown
//!   to this node's connections and kept in the ring; one already delivered is
//!   skipped; one past a gap makes the room **catch up** first, reading what it missed
//!   from this node's copy of the log. A message the log no longer holds is reported
//!   to the connections as a `gap` frame, never skipped silently.
//! - **Join.** The room catches up, then answers from its ring: the reply's history
//!   ends at `seq` N, and N is the last message delivered here, so the live stream
//!   that follows starts exactly at N+1.
//! - **Presence.** This node's connections are told to the port (each node is the
//!   authority for its own); other nodes' members come back as `RemotePresence`. The
//!   member list is the sum of both.
//!
//! Parent: the RoomSupervisor. Monitors the Session of every connection joined here,
//! so a session that ends for any reason leaves the room. When no connection is left
//! here, the room stops after `rooms.idle_ttl_secs` (at once if it never held a
//! message): the messages stay in the log, and the next join starts it afresh from
//! there. One idle timer at most is alive per room.
//!
//! In a room with more than `rooms.presence_batch_members` members, joins and leaves
//! are gathered for `rooms.presence_batch_ms` and go out as one `presence_diff`.

pub mod backlog;
mod presence_batch;
mod state;

use super::port::{Append, Appended, Ports, RemoteMember};
use super::room_supervisor::RoomSupervisorMessage;
use super::session::SessionHandle;
use super::NodeContext;
use crate::protocol::{
    encode, ChatMessage, ErrorBody, ErrorCode, Member, MessageData, ReplyData, RoomName,
    ServerFrame, UserInfo,
};
use crate::telemetry::Metrics;
use presence_batch::PresenceBatch;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use state::{MemberChanges, RoomState};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// A pending idle timer: the task that sends `IdleCheck`.
type IdleTimer = ractor::concurrency::JoinHandle<Result<(), ractor::MessagingErr<RoomMessage>>>;

/// A publisher's reply.
type PublishReply = RpcReplyPort<Result<ReplyData, ErrorBody>>;

/// What a publish says: its text and its structured data.
struct Body {
    content: String,
    data: Option<MessageData>,
    /// The connection that gets no `message` frame (`except_sender`).
    except: Option<ActorId>,
    /// The message id to stamp, when the caller chose it: one publish to several
    /// rooms (protocol v1 `publish.rooms`, server API `broadcast`) has one id in
    /// every room. None: the room stamps a fresh UUIDv7.
    id: Option<String>,
}

/// A publish with `except_sender` in flight here: the connection that gets no
/// `message` frame of it, and the message's `seq` once the log has answered.
struct Except {
    session: ActorId,
    seq: Option<u64>,
}

/// How long a committed publish waits to be delivered here before it is answered
/// anyway (it is committed: the answer is true either way).
pub const ACK_WAIT: Duration = Duration::from_secs(1);

/// How long a join whose `since` is past this node's copy of the room's log waits for
/// the copy to get there (it lags the leader by a heartbeat, or more just after a
/// restart), before it is answered from what the copy holds.
pub const JOIN_WAIT: Duration = Duration::from_secs(2);
/// Joins one room keeps waiting at once; past it a join is answered at once.
const MAX_WAITING_JOINS: usize = 1_024;

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
        /// Protocol v1 `publish.data`, checked by the session.
        data: Option<MessageData>,
        /// Protocol v1 `publish.except_sender`: `session` gets no `message` frame.
        except_sender: bool,
        /// The client's key for retries (protocol v1 `publish.idempotency_key`).
        idempotency_key: Option<String>,
        /// The id the session chose (a publish to several rooms); None: a fresh one.
        id: Option<String>,
        reply: RpcReplyPort<Result<ReplyData, ErrorBody>>,
    },
    /// A publish from the server API (docs/api.md): no connection of the sender need
    /// be joined; otherwise the path of a client's publish (behaviour, then the log).
    ServerPublish {
        from: UserInfo,
        content: String,
        data: Option<MessageData>,
        idempotency_key: Option<String>,
        /// The id the call chose (`broadcast`: one id in every room); None: a fresh one.
        id: Option<String>,
        reply: RpcReplyPort<Result<ReplyData, ErrorBody>>,
    },
    Typing {
        session: ActorId,
    },
    History {
        /// The connection asking, which must be joined; None for the server API.
        session: Option<ActorId>,
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
    /// A publish's append finished (from the room's own append task).
    Appended {
        /// The id the Room stamped on the message it sent.
        sent: String,
        result: Result<Appended, ErrorBody>,
        reply: PublishReply,
    },
    /// Publishes committed up to `seq` and still waiting for delivery here are
    /// answered now.
    AckDue {
        seq: u64,
    },
    /// Messages committed in the room's log, in log order (from the port), and what
    /// they count in the node's delivery backlog until handled (backlog.rs).
    Committed(Vec<ChatMessage>, backlog::Queued),
    /// Committed messages were not queued here, the delivery backlog being full
    /// (backlog.rs): catch up from the log.
    Behind(Arc<backlog::RoomBacklog>),
    /// This node's copy of the room's log jumped: catch up with a read.
    Reread,
    /// The room's log forgot its messages below `first_held` to stay within
    /// `rooms.history_bytes`: the ring forgets them too.
    Trimmed {
        first_held: u64,
    },
    /// A join waiting for this node's copy of the log may have waited long enough.
    JoinDue,
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
    ports: Ports,
    /// Other nodes' members: node → user id → (name, connections > 0).
    remote: BTreeMap<String, BTreeMap<String, (String, u32)>>,
    /// The first join read the other nodes' members afresh (see `join`).
    remote_read: bool,
    /// Publishes committed past what was delivered here, by seq.
    acks: BTreeMap<u64, Vec<(Appended, PublishReply)>>,
    /// Messages published here with `except_sender`, by id, and the connection that
    /// sent each: it gets no `message` frame of it. An entry lives until its message
    /// is delivered here or passed by a gap, or its append fails or was a retry: at
    /// most one per publish in flight, and a session has a bounded number of those.
    except: HashMap<String, Except>,
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
    /// Joins resuming past what this node's copy of the log holds, waiting for it
    /// (until [`JOIN_WAIT`]): answering them now would take their `since` for another
    /// room's numbers and send everything again.
    waiting_joins: Vec<WaitingJoin>,
}

struct WaitingJoin {
    request: JoinRequest,
    reply: RpcReplyPort<Result<ReplyData, ErrorBody>>,
    until: std::time::Instant,
}

impl Actor for RoomActor {
    type Msg = RoomMessage;
    type State = Room;
    type Arguments = RoomArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RoomArgs,
    ) -> Result<Room, ActorProcessingErr> {
        let settings = &self.ctx.settings;
        tracing::debug!(room = %args.name, "room started");
        let ports = self
            .ctx
            .ports()
            .ok_or("the room logs are not started on this node")?;
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
            ports,
            remote: BTreeMap::new(),
            remote_read: false,
            acks: BTreeMap::new(),
            except: HashMap::new(),
            idle_ttl: Duration::from_secs(settings.rooms.idle_ttl_secs),
            idle_timer: None,
            retiring: false,
            presence_batch: PresenceBatch::new(
                settings.rooms.presence_batch_members,
                Duration::from_millis(settings.rooms.presence_batch_ms),
            ),
            metrics: self.ctx.metrics.clone(),
            entries_reported: 0,
            waiting_joins: Vec::new(),
        };
        // Start where this node's copy of the log is; no connection is here yet, so
        // nothing is pushed.
        let read = room.ports.log.read(room.state.name.as_str(), None);
        room.state.replace_history(read.seq, read.messages);
        room.state.pushed = room.state.seq;
        for member in room.ports.presence.remote(room.state.name.as_str()) {
            room.set_remote(member);
        }
        room.state.replace_members(room.aggregate());
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
        _myself: ActorRef<Self::Msg>,
        room: &mut Room,
    ) -> Result<(), ActorProcessingErr> {
        // Committed publishes still waiting are committed: answer them.
        room.release_acks(u64::MAX);
        if let Some(timer) = room.idle_timer.take() {
            timer.abort();
        }
        // This node's connections are gone from the room for the other nodes too.
        for (id, local) in std::mem::take(&mut room.state.local) {
            let user = UserInfo {
                id,
                name: local.name,
            };
            room.ports
                .presence
                .local(room.state.name.as_str(), &user, 0);
        }
        room.metrics.room_state_entries(-room.entries_reported);
        room.entries_reported = 0;
        Ok(())
    }
}

impl Room {
    /// Handles one message.
    fn dispatch(&mut self, myself: &ActorRef<RoomMessage>, message: RoomMessage) {
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
            RoomMessage::Join { request, reply } => {
                self.join(myself, request, reply, false);
                self.answer_waiting_joins(myself);
            }
            RoomMessage::Leave { session, reply } => {
                self.leave(myself, &session);
                let _ = reply.send(());
            }
            RoomMessage::Publish {
                session,
                from,
                content,
                data,
                except_sender,
                idempotency_key,
                id,
                reply,
            } => self.publish(
                myself,
                &session,
                from,
                Body {
                    content,
                    data,
                    except: except_sender.then_some(session),
                    id,
                },
                idempotency_key,
                reply,
            ),
            RoomMessage::ServerPublish {
                from,
                content,
                data,
                idempotency_key,
                id,
                reply,
            } => {
                let body = Body {
                    content,
                    data,
                    except: None,
                    id,
                };
                self.append(myself, from, body, idempotency_key, reply);
                // A room started for the server API alone retires like any empty room.
                self.arm_idle_timer(myself);
            }
            RoomMessage::Typing { session } => self.typing(&session),
            RoomMessage::History {
                session,
                before,
                after,
                limit,
                reply,
            } => {
                let joined = session
                    .as_ref()
                    .is_none_or(|s| self.state.connections.contains_key(s));
                let answer = if joined {
                    self.catch_up();
                    Ok(self.state.history_page(before, after, limit))
                } else {
                    Err(self.not_joined())
                };
                let _ = reply.send(answer);
                if session.is_none() {
                    self.arm_idle_timer(myself);
                }
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
                // Asked by the server API of a room with no connection here.
                self.arm_idle_timer(myself);
            }
            RoomMessage::Rename { user_id, name } => self.rename(UserInfo { id: user_id, name }),
            RoomMessage::IdleCheck { generation } => self.idle_check(myself, generation),
            RoomMessage::PresenceTick => self.flush_presence(),
            RoomMessage::Appended {
                sent,
                result,
                reply,
            } => self.appended(myself, &sent, result, reply),
            RoomMessage::AckDue { seq } => self.release_acks(seq),
            RoomMessage::Committed(messages, _queued) => {
                for message in messages {
                    self.committed(message);
                }
                self.answer_waiting_joins(myself);
            }
            RoomMessage::Behind(backlog) => {
                // First, so that what is not queued from now on sends `Behind` again,
                // and what was not queued before is in the read.
                backlog.catching_up();
                self.catch_up();
                self.answer_waiting_joins(myself);
            }
            RoomMessage::Reread => {
                // The log was replaced by a snapshot: what it no longer holds (it may
                // have forgotten some, rooms.history_bytes) goes from the ring too.
                let held = self.ports.log.read(self.state.name.as_str(), None);
                self.state
                    .forget_before(held.messages.first().map_or(held.seq + 1, |m| m.seq));
                self.catch_up();
                self.answer_waiting_joins(myself);
            }
            RoomMessage::Trimmed { first_held } => self.state.forget_before(first_held),
            RoomMessage::JoinDue => self.answer_waiting_joins(myself),
            RoomMessage::RemotePresence(changes) => self.remote_presence(myself, changes),
            RoomMessage::RemoteTyping(user) => self.state.push_typing(&user),
        }
    }

    fn room(&self) -> String {
        self.state.name.to_string()
    }

    fn not_joined(&self) -> ErrorBody {
        ErrorBody::new(
            ErrorCode::NotJoined,
            format!("join {} first", self.state.name),
        )
    }

    // ------------------------------------------------------------------ delivery

    /// One committed message from the log, in log order.
    fn committed(&mut self, message: ChatMessage) {
        if message.seq <= self.state.seq {
            return;
        }
        if message.seq == self.state.seq + 1 {
            self.deliver(message);
        } else {
            // Something before it did not reach this room (it started, or the log
            // jumped, in between): read it from the log first. The read includes
            // `message`, which the log applied before it was sent here.
            self.catch_up();
            if message.seq == self.state.seq + 1 {
                self.deliver(message);
            }
        }
    }

    /// Delivers whatever this node's copy of the log holds past what was delivered
    /// here; tells the connections when some of it is no longer held.
    fn catch_up(&mut self) {
        let read = self
            .ports
            .log
            .read(self.state.name.as_str(), Some(self.state.seq));
        if read.seq <= self.state.seq {
            return;
        }
        let first_held = read.messages.first().map_or(read.seq + 1, |m| m.seq);
        if read.gap || first_held > self.state.seq + 1 {
            let last_missing = first_held - 1;
            tracing::warn!(
                room = %self.state.name,
                from = self.state.seq + 1,
                to = last_missing,
                "messages were no longer in the log when this node caught up; connections are told"
            );
            self.metrics.delivery_gap();
            let frame = ServerFrame::Gap {
                room: self.room(),
                after: self.state.seq,
                next: last_missing + 1,
            };
            self.state.broadcast(&encode(&frame), None);
            self.state.seq = last_missing;
            self.state.pushed = last_missing;
            // `except_sender` entries of messages the gap passed will never be
            // delivered here.
            self.except
                .retain(|_, e| e.seq.is_none_or(|seq| seq > last_missing));
        }
        for message in read.messages {
            if message.seq == self.state.seq + 1 {
                self.deliver(message);
            }
        }
        if self.state.seq < read.seq {
            // Nothing held reaches that far (cannot happen with a sane log).
            self.state.seq = read.seq;
            self.state.pushed = read.seq;
        }
        let seq = self.state.seq;
        self.release_acks(seq);
    }

    /// Shows the next message to this node's connections and keeps it in the ring.
    fn deliver(&mut self, message: ChatMessage) {
        let seq = message.seq;
        let except = self.except.remove(&message.id).map(|e| e.session);
        self.state.push_message(&message, except.as_ref());
        self.state.remember(message);
        self.release_acks(seq);
    }

    /// Answers the publishes committed up to `seq`.
    fn release_acks(&mut self, seq: u64) {
        while let Some(entry) = self.acks.first_entry() {
            if *entry.key() > seq {
                break;
            }
            for (appended, reply) in entry.remove() {
                // Answered, delivered here or not (`ACK_WAIT`): an `except_sender`
                // entry stays until its message is delivered or passed by a gap.
                let _ = reply.send(Ok(publish_reply(appended)));
            }
        }
    }

    // ------------------------------------------------------------ local requests

    /// Answers the waiting joins this node's copy of the log has reached, and those
    /// that waited [`JOIN_WAIT`].
    fn answer_waiting_joins(&mut self, myself: &ActorRef<RoomMessage>) {
        if self.waiting_joins.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        let seq = self.state.seq;
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting_joins)
            .into_iter()
            .partition(|w| w.request.since.is_none_or(|since| since <= seq) || w.until <= now);
        self.waiting_joins = waiting;
        for w in due {
            self.join(myself, w.request, w.reply, true);
        }
    }

    fn join(
        &mut self,
        myself: &ActorRef<RoomMessage>,
        request: JoinRequest,
        reply: RpcReplyPort<Result<ReplyData, ErrorBody>>,
        waited: bool,
    ) {
        // Deliver what the log committed before this join to the members already
        // here, and only to them: the joining connection gets it in its history.
        self.catch_up();
        // A client resuming from a seq this node's copy has not reached yet saw it on
        // another node: wait for the copy (bounded) rather than answer as if the
        // numbers were another room's.
        let ahead = request.since.is_some_and(|since| since > self.state.seq);
        if ahead
            && !waited
            && self.waiting_joins.len() < MAX_WAITING_JOINS
            && self.ports.log.may_trail(self.state.name.as_str())
        {
            self.waiting_joins.push(WaitingJoin {
                request,
                reply,
                until: std::time::Instant::now() + JOIN_WAIT,
            });
            myself.send_after(JOIN_WAIT, || RoomMessage::JoinDue);
            return;
        }
        let id = request.session.actor.get_id();
        if !self.state.connections.contains_key(&id) {
            // A join that could not meet the live stream (nothing can be ordered from
            // here now) is refused, so the client retries rather than waits in silence.
            if let Some(reason) = self.ports.log.unavailable(self.state.name.as_str()) {
                let _ = reply.send(Err(ErrorBody::new(
                    ErrorCode::Unavailable,
                    format!("{reason}; retry"),
                )));
                self.arm_idle_timer(myself);
                return;
            }
            let user = &request.session.user;
            if let Err(refused) = self.state.behaviour.authorize_join(&self.state.name, user) {
                let _ = reply.send(Err(refused.into()));
                // A room started for this join alone must not stay behind.
                self.arm_idle_timer(myself);
                return;
            }
            myself.get_cell().monitor(request.session.actor.get_cell());
            let connections = self.state.add_connection(
                id,
                user,
                request.session.outbox.clone(),
                request.session.actor.get_cell(),
                true,
            );
            self.ports
                .presence
                .local(self.state.name.as_str(), user, connections);
            let mut touched = BTreeSet::from([user.id.clone()]);
            // On the first join, read the other nodes' members afresh: a change that
            // came while this room was starting (before the directory knew it) is not
            // lost for it. Later changes reach it as RemotePresence.
            if !self.remote_read {
                self.remote_read = true;
                touched.extend(self.remote_ids());
                self.remote.clear();
                for member in self.ports.presence.remote(self.state.name.as_str()) {
                    self.set_remote(member);
                }
                touched.extend(self.remote_ids());
            }
            self.members_changed(myself, Some(&id), true, touched, &BTreeMap::new());
        }
        let data = self.state.join_data(request.since);
        let _ = reply.send(Ok(data.into_reply(self.room())));
    }

    /// A connection leaves (asked to, or its session ended).
    pub(super) fn leave(&mut self, myself: &ActorRef<RoomMessage>, session: &ActorId) {
        let Some((conn, user, left)) = self.state.remove_connection(session) else {
            return;
        };
        myself.get_cell().unmonitor(conn.cell);
        self.ports
            .presence
            .local(self.state.name.as_str(), &user, left);
        self.members_changed(
            myself,
            None,
            true,
            BTreeSet::from([user.id.clone()]),
            &BTreeMap::new(),
        );
        self.arm_idle_timer(myself);
    }

    fn publish(
        &mut self,
        myself: &ActorRef<RoomMessage>,
        session: &ActorId,
        from: UserInfo,
        body: Body,
        idempotency_key: Option<String>,
        reply: PublishReply,
    ) {
        if !self
            .state
            .connections
            .get(session)
            .is_some_and(|c| c.active)
        {
            let _ = reply.send(Err(self.not_joined()));
            return;
        }
        self.append(myself, from, body, idempotency_key, reply);
    }

    /// The behaviour sees the content (and the data, read-only), then the log orders
    /// it (client and server API publishes alike).
    fn append(
        &mut self,
        myself: &ActorRef<RoomMessage>,
        from: UserInfo,
        body: Body,
        idempotency_key: Option<String>,
        reply: PublishReply,
    ) {
        let Body {
            content,
            data,
            except,
            id,
        } = body;
        let content = match self.state.behaviour.on_publish_with_data(
            &self.state.name,
            &from,
            content,
            data.as_ref(),
        ) {
            Ok(content) => content,
            Err(refused) => {
                let _ = reply.send(Err(refused.into()));
                return;
            }
        };
        let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        if let Some(session) = except {
            // Removed by `deliver`, `appended` or a gap in `catch_up`.
            self.except
                .insert(id.clone(), Except { session, seq: None });
        }
        let sent = id.clone();
        let append = self.ports.log.append(Append {
            id,
            room: self.room(),
            from,
            content,
            data,
            idempotency_key,
        });
        let room = myself.clone();
        tokio::spawn(async move {
            let result = append.await;
            if let Err(ractor::MessagingErr::SendErr(RoomMessage::Appended {
                result, reply, ..
            })) = room.cast(RoomMessage::Appended {
                sent,
                result,
                reply,
            }) {
                // The room stopped meanwhile: the answer is still the answer.
                let _ = reply.send(result.map(publish_reply));
            }
        });
    }

    /// A publish's append finished: answer now if it was delivered here, else once it
    /// is (bounded by [`ACK_WAIT`]).
    fn appended(
        &mut self,
        myself: &ActorRef<RoomMessage>,
        sent: &str,
        result: Result<Appended, ErrorBody>,
        reply: PublishReply,
    ) {
        let appended = match result {
            Ok(appended) => appended,
            Err(error) => {
                // Nothing of this id will be delivered.
                self.except.remove(sent);
                let _ = reply.send(Err(error));
                return;
            }
        };
        if appended.duplicate {
            // A retry: nothing new is delivered (the original was, or will be).
            self.except.remove(sent);
        }
        if appended.seq > self.state.seq {
            self.catch_up();
        }
        if appended.seq <= self.state.seq {
            // Delivered here already (or passed by a gap): its entry is done with.
            self.except.remove(sent);
            let _ = reply.send(Ok(publish_reply(appended)));
            return;
        }
        if let Some(except) = self.except.get_mut(sent) {
            // Known now, so a gap that passes it can drop the entry (`catch_up`).
            except.seq = Some(appended.seq);
        }
        let seq = appended.seq;
        self.acks.entry(seq).or_default().push((appended, reply));
        myself.send_after(ACK_WAIT, move || RoomMessage::AckDue { seq });
    }

    fn typing(&mut self, session: &ActorId) {
        let Some(conn) = self.state.connections.get(session).filter(|c| c.active) else {
            return;
        };
        let Some(local) = self.state.local.get(&conn.user_id) else {
            return;
        };
        let user = UserInfo {
            id: conn.user_id.clone(),
            name: local.name.clone(),
        };
        self.state.push_typing(&user);
        self.ports.presence.typing(self.state.name.as_str(), &user);
    }

    /// A user of this node renamed itself: its connections here and the other nodes
    /// learn the new name.
    fn rename(&mut self, user: UserInfo) {
        let Some(connections) = self.state.local.get(&user.id).map(|l| l.connections) else {
            return;
        };
        if let Some(old_name) = self.state.rename(&user) {
            self.state.push_renamed(&user, old_name);
        }
        self.ports
            .presence
            .local(self.state.name.as_str(), &user, connections);
    }

    // ------------------------------------------------------------------- presence

    fn set_remote(&mut self, member: RemoteMember) {
        let users = self.remote.entry(member.node).or_default();
        if member.connections == 0 {
            users.remove(&member.user.id);
        } else {
            users.insert(member.user.id, (member.user.name, member.connections));
        }
        self.remote.retain(|_, users| !users.is_empty());
    }

    fn remote_presence(&mut self, myself: &ActorRef<RoomMessage>, changes: Vec<RemoteMember>) {
        let touched: BTreeSet<String> = changes.iter().map(|c| c.user.id.clone()).collect();
        // The names these changes carry: the newest heard for those users. Another
        // node's copy may still hold the old name until its own change comes.
        let names: BTreeMap<String, String> = changes
            .iter()
            .filter(|c| c.connections > 0)
            .map(|c| (c.user.id.clone(), c.user.name.clone()))
            .collect();
        for (id, name) in &names {
            let renamed = self
                .state
                .members
                .get(id)
                .filter(|m| m.name != *name && !self.state.local.contains_key(id))
                .map(|m| m.name.clone());
            if let Some(old_name) = renamed {
                let user = UserInfo {
                    id: id.clone(),
                    name: name.clone(),
                };
                self.state.push_renamed(&user, old_name);
            }
        }
        for change in changes {
            self.set_remote(change);
        }
        self.members_changed(myself, None, false, touched, &names);
    }

    /// Every user id the other nodes' copies hold.
    fn remote_ids(&self) -> BTreeSet<String> {
        self.remote
            .values()
            .flat_map(|users| users.keys().cloned())
            .collect()
    }

    /// The room-wide entry of user `id`: this node's connections plus every other
    /// node's (the local name first); None when the user has none anywhere.
    fn member_of(&self, id: &str) -> Option<Member> {
        let mut member = self.state.local.get(id).map(|local| Member {
            id: id.to_owned(),
            name: local.name.clone(),
            connections: local.connections,
        });
        for users in self.remote.values() {
            if let Some((name, connections)) = users.get(id) {
                match &mut member {
                    Some(m) => m.connections += connections,
                    None => {
                        member = Some(Member {
                            id: id.to_owned(),
                            name: name.clone(),
                            connections: *connections,
                        })
                    }
                }
            }
        }
        member
    }

    /// The room-wide member list: this node's connections plus every other node's.
    fn aggregate(&self) -> Vec<Member> {
        let mut members: BTreeMap<&str, Member> = BTreeMap::new();
        for (id, local) in &self.state.local {
            members.insert(
                id,
                Member {
                    id: id.clone(),
                    name: local.name.clone(),
                    connections: local.connections,
                },
            );
        }
        for users in self.remote.values() {
            for (id, (name, connections)) in users {
                members
                    .entry(id)
                    .and_modify(|m| m.connections += connections)
                    .or_insert_with(|| Member {
                        id: id.clone(),
                        name: name.clone(),
                        connections: *connections,
                    });
            }
        }
        members.into_values().collect()
    }

    /// Recomputes the member list's entries of `touched` and tells this node's
    /// connections (but `except`)
    /// who joined and who left. `local` when a change here caused it: the behaviour's
    /// `on_join`/`on_leave` run on the node where the user's connections changed.
    fn members_changed(
        &mut self,
        myself: &ActorRef<RoomMessage>,
        except: Option<&ActorId>,
        local: bool,
        touched: BTreeSet<String>,
        names: &BTreeMap<String, String>,
    ) {
        // Only the users whose connections changed: a join in a room of thousands
        // does not rebuild the whole list.
        let (mut joins, mut leaves, mut updates) = (Vec::new(), Vec::new(), Vec::new());
        for id in touched {
            match (self.state.members.remove(&id), self.member_of(&id)) {
                (None, Some(now)) => {
                    joins.push(now.clone());
                    self.state.members.insert(id, now);
                }
                (Some(before), None) => leaves.push(Member {
                    connections: 0,
                    ..before
                }),
                (Some(before), Some(mut now)) => {
                    // A user with no connection here keeps the name last heard, or the
                    // new one a change brought, whichever node's copy is listed first.
                    if !self.state.local.contains_key(&id) {
                        now.name = names.get(&id).cloned().unwrap_or(before.name);
                    }
                    // Another connection of a member came or went: the others' counts
                    // would go stale without a frame (protocol v1 addition, `updates`).
                    if now.connections != before.connections {
                        updates.push(now.clone());
                    }
                    self.state.members.insert(id, now);
                }
                (None, None) => {}
            }
        }
        if local {
            for member in &joins {
                self.state.behaviour.on_join(&self.state.name, member);
            }
            for member in &leaves {
                self.state.behaviour.on_leave(&self.state.name, member);
            }
        }
        let changes = MemberChanges {
            joins,
            leaves,
            updates,
        };
        if changes.is_empty() {
            return;
        }
        if self.presence_batch.applies(self.state.members.len()) {
            self.presence_batch.fold(changes);
            if !self.presence_batch.armed {
                self.presence_batch.armed = true;
                myself.send_after(self.presence_batch.every, || RoomMessage::PresenceTick);
            }
            return;
        }
        self.state.push_presence_diff(changes, except);
    }

    /// The batch's time is up: one `presence_diff` to this node's connections.
    fn flush_presence(&mut self) {
        let changes = self.presence_batch.take();
        if !changes.is_empty() {
            self.metrics.presence_batch();
        }
        self.state.push_presence_diff(changes, None);
    }

    // ---------------------------------------------------------------- lifetime

    /// When the room has just emptied here, retire it after `idle_ttl`; a room that
    /// never held a message retires at once (a flood of joins and leaves of new names
    /// must not leave rooms behind). Its messages stay in the log either way.
    fn arm_idle_timer(&mut self, myself: &ActorRef<RoomMessage>) {
        if !self.state.connections.is_empty() {
            return;
        }
        self.state.idle_generation += 1;
        let generation = self.state.idle_generation;
        if let Some(previous) = self.idle_timer.take() {
            previous.abort();
        }
        // A room started for a join waits the idle TTL until a first connection came
        // and went: retiring at once would bounce the join on its way.
        let never_used = self.state.had_connection && self.state.seq == 0 && self.acks.is_empty();
        if self.idle_ttl.is_zero() || never_used {
            let _ = myself.cast(RoomMessage::IdleCheck { generation });
        } else {
            self.idle_timer = Some(
                myself.send_after(self.idle_ttl, move || RoomMessage::IdleCheck { generation }),
            );
        }
    }

    fn idle_check(&mut self, myself: &ActorRef<RoomMessage>, generation: u64) {
        if generation != self.state.idle_generation || !self.state.connections.is_empty() {
            return;
        }
        self.retiring = true;
        let _ = self.supervisor.cast(RoomSupervisorMessage::Retire {
            room: self.state.name.clone(),
            id: myself.get_id(),
        });
    }

    /// Brings this room's share of `hubbub_room_state_entries` up to date.
    fn report_entries(&mut self) {
        let held = self.state.connections.len()
            + self.state.local.len()
            + self.state.members.len()
            + self.remote.values().map(BTreeMap::len).sum::<usize>()
            + self.presence_batch.len();
        let held = i64::try_from(held).unwrap_or(i64::MAX);
        if held != self.entries_reported {
            self.metrics
                .room_state_entries(held - self.entries_reported);
            self.entries_reported = held;
        }
    }
}

/// The reply to a committed publish.
fn publish_reply(appended: Appended) -> ReplyData {
    ReplyData::Publish {
        id: appended.id,
        seq: appended.seq,
        ts: appended.ts,
        duplicate: appended.duplicate,
    }
}
