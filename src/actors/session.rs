//! The Session actor: one per WebSocket connection.
//!
//! Owns: the connection's identity (its user and [`Grants`]), the rooms it has joined,
//! its frame rate limiter and its [`Outbox`] (the write half). It enforces room access
//! (`[[rooms.acl]]`), the per-user message rate and the per-connection churn limits
//! ([`ChurnLimits`]) before it asks a room anything, and closes the connection with
//! 4001 when its token expires. The token-expiry timer is the session's own: it ends
//! with the session however the session ends, so a long token reconnected often
//! leaves no sleeping task behind (`hubbub_session_timers`). The transport's read loop
//! decodes each client frame and casts it here with an [`InflightPermit`]; the Session
//! answers every request through the outbox, in the order the frames arrived
//! ([`Answers`]). Publishes are pipelined: each is handed to its room at once and
//! answered when committed (up to [`MAX_PUBLISHES_IN_FLIGHT`]), so a client that
//! sends many does not wait one commit per message, and a request behind them is
//! handled meanwhile (its answer still goes out after theirs).
//!
//! Parent: the SessionSupervisor. Watched (monitored) by Presence and by every Room it
//! joins, which is how they learn that it ended. When this actor ends for any reason
//! its state is dropped, and with it a guard that closes the socket.
//!
//! Client mistakes become replies with a code; no handler returns `Err` for them.

use super::bucket::{self, Bucket};
use super::churn::ChurnLimits;
use super::outbox::{CloseOnDrop, Outbox};
use super::port::PortFuture;
use super::presence::PresenceMessage;
use super::room::{JoinRequest, RoomMessage};
use super::room_supervisor::RoomSupervisorMessage;
use super::{ask, AskError, NodeContext};
use crate::auth::Grants;
use crate::hooks::publish::{PublishCheck, Verdict};
use crate::hooks::Connected;
use crate::protocol::{
    close, encode, now_ms, ClientFrame, ConnectionInfo, ErrorBody, ErrorCode, FrameError,
    MessageData, Ref, ReplyData, Request, RoomName, RoomPublished, ServerFrame, UserInfo,
    PROTOCOL_VERSION,
};
use crate::telemetry::Metrics;
use bytestring::ByteString;
use governor::Quota;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

/// The least time between two typing events this session forwards to one room.
const TYPING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Publishes one session may have handed to rooms and not yet had answered (a
/// publish to several rooms counts one per room); past it
/// the session waits for each publish's answer before reading the next frame.
const MAX_PUBLISHES_IN_FLIGHT: usize = 64;

/// How many times a join looks the room up again when the room it found had just
/// stopped (an idle room retiring at that moment).
const JOIN_ATTEMPTS: usize = 3;

/// Held while a frame waits in the Session's mailbox. The read loop takes one before
/// it forwards a frame and stops reading while none is free, so a flooding client is
/// slowed by TCP instead of growing the mailbox; and the frame's bytes count in the
/// node's inbound budget (`limits.node_inbound_bytes`) until the Session takes it.
#[derive(Debug)]
pub struct InflightPermit {
    _slot: OwnedSemaphorePermit,
    hold: Option<Box<dyn FrameHold>>,
}

impl InflightPermit {
    /// A frame's place in its connection's queue, and what it holds of the budget.
    pub fn new(slot: OwnedSemaphorePermit, hold: Option<Box<dyn FrameHold>>) -> Self {
        Self { _slot: slot, hold }
    }

    /// The node shed this frame's connection to stay within its inbound budget.
    fn is_shed(&self) -> bool {
        self.hold.as_ref().is_some_and(|hold| hold.is_shed())
    }
}

/// What a waiting frame holds of the node's inbound budget (the transport's), given
/// back when dropped.
pub trait FrameHold: std::fmt::Debug + Send + Sync + 'static {
    /// The budget shed the frame's connection: the frame is not to be handled.
    fn is_shed(&self) -> bool;
    /// Holds `bytes` from now on instead (a message still being put together grew);
    /// false when the budget has shed this connection.
    fn resize(&mut self, bytes: u64) -> bool;
}

/// Where a connection's read loop takes the holds of the frames it hands its
/// Session (the transport's inbound budget, one per connection).
pub trait FrameHolds: Send + Sync + 'static {
    /// A hold of `bytes` for a frame about to wait; None when the budget has shed
    /// this connection (close it with 1013).
    fn hold(&self, bytes: u64) -> Option<Box<dyn FrameHold>>;
}

/// What a Room or Presence keeps of a session: how to watch it and how to reach it.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    pub actor: ActorRef<SessionMessage>,
    pub outbox: Outbox,
    pub user: UserInfo,
}

/// Messages to a Session.
#[derive(RactorMessage)]
pub enum SessionMessage {
    /// A frame from the client, decoded (or not) by the read loop.
    Inbound(Result<ClientFrame, FrameError>, InflightPermit),
    /// The user's display name changed (a rename on any of its connections).
    NameChanged(String),
    /// Presence restarted: register again.
    Reregister,
    /// The connection's token has expired: close with 4001.
    TokenExpired,
    /// The node is going away: send `goodbye`, then close with 1012 once it is out.
    Goodbye {
        reason: String,
        reconnect_after_ms: u64,
    },
    /// A pipelined publish was answered by its room (or not in time).
    Published(PublishAnswer),
    /// A pipelined publish to several rooms was answered by all of them (or not in
    /// time).
    PublishedRooms(RoomsAnswer),
    /// A server API call on this connection (docs/api.md), through Presence.
    Server {
        call: SessionCall,
        reply: RpcReplyPort<SessionAnswer>,
    },
    /// Join these rooms, as if the client had asked (sent to itself at start).
    JoinInitial(Vec<RoomName>),
}

/// What the server API asks of one connection.
#[derive(Debug, Clone)]
pub enum SessionCall {
    /// Join the room as the backend asks (`subscribe`): not checked against
    /// `[[rooms.acl]]` or the churn limits, only `limits.max_rooms_per_session`.
    Join(RoomName),
    /// Leave the room (`unsubscribe`).
    Leave(RoomName),
    /// Where the connection is and what it has joined.
    Info,
}

/// A connection's answer to a [`SessionCall`].
#[derive(Debug)]
pub enum SessionAnswer {
    Done(Result<(), ErrorBody>),
    Info(ConnectionInfo),
}

/// The answer to one pipelined publish, for its slot in [`Answers`].
pub struct PublishAnswer {
    slot: u64,
    room: RoomName,
    reference: Option<Ref>,
    received: Instant,
    answer: Result<Result<ReplyData, ErrorBody>, AskError>,
}

/// The answer to one pipelined publish to several rooms, for its slot in [`Answers`].
pub struct RoomsAnswer {
    slot: u64,
    reference: Option<Ref>,
    received: Instant,
    outcome: RoomsOutcome,
}

/// What the rooms of a publish to several rooms answered: the one id it was given,
/// and each room's answer in the order the rooms were named.
pub struct RoomsOutcome {
    id: String,
    answers: Vec<(RoomName, RoomAnswer)>,
}

/// One room's answer to a publish, or why none came.
type RoomAnswer = Result<Result<ReplyData, ErrorBody>, AskError>;

/// The session's answers in the order their requests arrived: an answer whose
/// request came after a publish still waiting for its commit waits behind it.
#[derive(Default)]
struct Answers {
    next_slot: u64,
    /// Slots in arrival order; None until answered.
    queue: std::collections::VecDeque<(u64, Option<ByteString>)>,
    /// Publishes handed to rooms and not answered yet.
    in_flight: usize,
}

impl Answers {
    /// Sends `frame` now, or after the answers still owed before it.
    fn send(&mut self, outbox: &Outbox, frame: ByteString) {
        if self.queue.is_empty() {
            let _ = outbox.push(frame);
        } else {
            let slot = self.reserve();
            self.fill(outbox, slot, frame);
        }
    }

    /// A place for an answer to come later.
    fn reserve(&mut self) -> u64 {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.queue.push_back((slot, None));
        slot
    }

    /// `slot`'s answer came: send it, and every answer after it that was waiting.
    fn fill(&mut self, outbox: &Outbox, slot: u64, frame: ByteString) {
        if let Some(entry) = self.queue.iter_mut().find(|(s, _)| *s == slot) {
            entry.1 = Some(frame);
        }
        while let Some((_, Some(_))) = self.queue.front() {
            if let Some((_, Some(frame))) = self.queue.pop_front() {
                let _ = outbox.push(frame);
            }
        }
    }
}

/// Arguments to start a Session.
pub struct SessionArgs {
    pub id: String,
    pub user: UserInfo,
    /// False when the client gave no name: it then takes the name the user already
    /// has on its other connections, if any.
    pub name_given: bool,
    /// Roles, room claims and token expiry (empty for anonymous clients).
    pub grants: Grants,
    pub outbox: Outbox,
    /// Rooms joined at once, as if the client had sent `join` for each (the connect
    /// hook's `rooms`); each answered with a reply without `ref`.
    pub initial_rooms: Vec<RoomName>,
}

/// The Session actor; holds only the node context.
pub struct SessionActor {
    pub(crate) ctx: Arc<NodeContext>,
}

/// What changes during a session.
pub struct SessionState {
    id: String,
    /// When the connection was opened (ms since the epoch), for the server API.
    connected_at: u64,
    user: UserInfo,
    outbox: Outbox,
    rooms: HashMap<RoomName, ActorRef<RoomMessage>>,
    /// When a typing event last went to each room.
    last_typing: HashMap<RoomName, std::time::Instant>,
    grants: Grants,
    limiter: Option<Bucket>,
    churn: ChurnLimits,
    answers: Answers,
    /// Closes the connection when the token expires; aborted when the state drops.
    _token_timer: Option<TokenTimer>,
    /// Sends the `disconnect` webhook event when the state drops (when one is wanted;
    /// boxed: one pointer per connection when not).
    _connected: Option<Box<Connected>>,
    _close_on_drop: CloseOnDrop,
}

/// The task that tells a session its token expired. Dropping it (the session ended)
/// aborts the task; `hubbub_session_timers` counts those alive, from spawn until the
/// task's future is gone, whether it fired or was aborted.
struct TokenTimer(tokio::task::JoinHandle<()>);

impl TokenTimer {
    fn start(
        myself: ActorRef<SessionMessage>,
        left: std::time::Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.session_timers(1);
        let alive = TimerAlive(metrics);
        Self(tokio::spawn(async move {
            let _alive = alive;
            tokio::time::sleep(left).await;
            let _ = myself.cast(SessionMessage::TokenExpired);
        }))
    }
}

impl Drop for TokenTimer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Held by a token timer's task: its end counts down `hubbub_session_timers`.
struct TimerAlive(Arc<Metrics>);

impl Drop for TimerAlive {
    fn drop(&mut self) {
        self.0.session_timers(-1);
    }
}

impl Actor for SessionActor {
    type Msg = SessionMessage;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        mut args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let settings = &self.ctx.settings;
        if !args.name_given {
            if let Some(presence) = self.ctx.presence() {
                let user_id = args.user.id.clone();
                // Boxed, like request handling below: the start future stays small.
                let asked = Box::pin(ask(&presence, |reply| PresenceMessage::NameOf {
                    user_id,
                    reply,
                }));
                if let Ok(Some(name)) = asked.await {
                    args.user.name = name;
                }
            }
        }
        let welcome = ServerFrame::Welcome {
            session: args.id.clone(),
            user: args.user.clone(),
            node: settings.node.name.clone(),
            protocol: PROTOCOL_VERSION,
            heartbeat_ms: settings.heartbeat.interval_ms,
        };
        // The queue is empty at this point, so the welcome always fits.
        let _ = args.outbox.push(encode(&welcome));
        let limiter = NonZeroU32::new(settings.limits.frames_per_second).map(|rate| {
            let burst = NonZeroU32::new(settings.limits.frames_burst).unwrap_or(rate);
            bucket::bucket(Quota::per_second(rate).allow_burst(burst))
        });
        let token_timer = args.grants.expires_at.map(|expires_at| {
            // A clock that is past the expiry already closes at once.
            let left = expires_at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            TokenTimer::start(myself.clone(), left, self.ctx.metrics.clone())
        });
        let connected = self
            .ctx
            .hooks
            .events
            .connected(&args.id, &args.user)
            .map(Box::new);
        let state = SessionState {
            id: args.id,
            connected_at: now_ms(),
            user: args.user,
            _close_on_drop: args.outbox.close_on_drop(),
            outbox: args.outbox,
            rooms: HashMap::new(),
            last_typing: HashMap::new(),
            grants: args.grants,
            limiter,
            churn: ChurnLimits::new(&settings.limits, self.ctx.metrics.clone()),
            answers: Answers::default(),
            _token_timer: token_timer,
            _connected: connected,
        };
        self.register(&myself, &state);
        if !args.initial_rooms.is_empty() {
            // First in the mailbox: the read loop starts only once this returned.
            let _ = myself.cast(SessionMessage::JoinInitial(args.initial_rooms));
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SessionMessage,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed as a whole: ractor keeps room for the handler's future (and the
        // message in it) inside every actor's processing loop, so an unboxed one
        // would sit in every connection for its whole life, idle or not. The box
        // lives only while a message is handled.
        Box::pin(self.on_message(myself, message, state)).await
    }
}

impl SessionActor {
    async fn on_message(
        &self,
        myself: ActorRef<SessionMessage>,
        message: SessionMessage,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionMessage::Inbound(_, permit) if permit.is_shed() => {
                // The node is past its inbound budget and this connection's frames
                // have waited longest: it goes, and with it what it queued.
                state
                    .outbox
                    .close_now(close::TRY_AGAIN_LATER, "node inbound budget");
            }
            SessionMessage::Inbound(Ok(frame), _permit) => {
                let (kind, received) = (frame.request.kind(), Instant::now());
                self.ctx.metrics.frame_in(kind);
                // Boxed: the requests that wait on other actors make a large future,
                // and the other messages (publish answers above all) need not
                // allocate room for it in `handle`'s box.
                let answer = Box::pin(self.on_request(&myself, state, frame, received)).await;
                if let Some(reply) = answer {
                    count_answer(&self.ctx.metrics, kind, received, &reply);
                    state.answers.send(&state.outbox, encode(&reply));
                }
            }
            SessionMessage::Inbound(Err(bad), _permit) => {
                self.ctx.metrics.frame_in_invalid();
                // Undecodable frames count against the rate limit like any other.
                let error = match rate_limited(state) {
                    Some(limited) => limited,
                    None => bad.error,
                };
                let reply = ServerFrame::failure(bad.reference, error);
                count_answer(&self.ctx.metrics, "invalid", Instant::now(), &reply);
                state.answers.send(&state.outbox, encode(&reply));
            }
            SessionMessage::NameChanged(name) => {
                state.user.name = name.clone();
                for room in state.rooms.values() {
                    let _ = room.cast(RoomMessage::Rename {
                        user_id: state.user.id.clone(),
                        name: name.clone(),
                    });
                }
            }
            SessionMessage::Reregister => self.register(&myself, state),
            SessionMessage::TokenExpired => {
                tracing::debug!(session = %state.id, user = %state.user.id, "token expired");
                state
                    .outbox
                    .close_now(close::TOKEN_EXPIRED, "token expired");
            }
            SessionMessage::Goodbye {
                reason,
                reconnect_after_ms,
            } => {
                let goodbye = ServerFrame::Goodbye {
                    reason: reason.clone(),
                    reconnect_after_ms,
                };
                let _ = state.outbox.push(encode(&goodbye));
                state
                    .outbox
                    .close_after_queued(close::SERVICE_RESTART, &reason);
            }
            SessionMessage::JoinInitial(rooms) => {
                for room in rooms {
                    let reply = match Box::pin(self.join(&myself, state, room, None, false)).await {
                        Ok(data) => ServerFrame::ok(None, data),
                        Err(error) => ServerFrame::failure(None, error),
                    };
                    state.answers.send(&state.outbox, encode(&reply));
                }
            }
            SessionMessage::Published(published) => {
                state.answers.in_flight = state.answers.in_flight.saturating_sub(1);
                let PublishAnswer {
                    slot,
                    room,
                    reference,
                    received,
                    answer,
                } = published;
                let reply = match forget_if_gone(state, &room, answer).and_then(|inner| inner) {
                    Ok(data) => ServerFrame::ok(reference, data),
                    Err(error) => {
                        tracing::debug!(session = %state.id, user = %state.user.id, kind = "publish", code = error.code.as_str(), "request refused");
                        ServerFrame::failure(reference, error)
                    }
                };
                count_answer(&self.ctx.metrics, "publish", received, &reply);
                state.answers.fill(&state.outbox, slot, encode(&reply));
            }
            SessionMessage::PublishedRooms(published) => {
                // One in flight per room (`start_publish_rooms`).
                let rooms = published.outcome.answers.len();
                state.answers.in_flight = state.answers.in_flight.saturating_sub(rooms);
                let RoomsAnswer {
                    slot,
                    reference,
                    received,
                    outcome,
                } = published;
                let reply = ServerFrame::ok(reference, rooms_reply(state, outcome));
                count_answer(&self.ctx.metrics, "publish", received, &reply);
                state.answers.fill(&state.outbox, slot, encode(&reply));
            }
            SessionMessage::Server { call, reply } => {
                let answer = match call {
                    SessionCall::Join(room) => {
                        SessionAnswer::Done(Box::pin(self.server_join(&myself, state, room)).await)
                    }
                    SessionCall::Leave(room) => {
                        SessionAnswer::Done(Box::pin(self.server_leave(&myself, state, room)).await)
                    }
                    SessionCall::Info => {
                        let mut rooms: Vec<String> =
                            state.rooms.keys().map(|r| r.to_string()).collect();
                        rooms.sort();
                        SessionAnswer::Info(ConnectionInfo {
                            node: self.ctx.settings.node.name.clone(),
                            session: state.id.clone(),
                            rooms,
                            connected_at: state.connected_at,
                        })
                    }
                };
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }

    fn register(&self, myself: &ActorRef<SessionMessage>, state: &SessionState) {
        if let Some(presence) = self.ctx.presence() {
            let _ = presence.cast(PresenceMessage::Register(SessionHandle {
                actor: myself.clone(),
                outbox: state.outbox.clone(),
                user: state.user.clone(),
            }));
        }
    }

    /// Handles one request; returns the frame to send back, if any.
    async fn on_request(
        &self,
        myself: &ActorRef<SessionMessage>,
        state: &mut SessionState,
        frame: ClientFrame,
        received: Instant,
    ) -> Option<ServerFrame> {
        let ClientFrame { reference, request } = frame;
        if let Some(limited) = rate_limited(state) {
            return Some(ServerFrame::failure(reference, limited));
        }
        let kind = request.kind();
        let answer = match request {
            Request::Ping => return Some(ServerFrame::Pong { reference }),
            Request::Join { room, since } => self.join(myself, state, room, since, false).await,
            Request::Leave { room } => self.leave(myself, state, room, false).await,
            Request::Publish {
                room,
                content,
                data,
                except_sender,
                idempotency_key,
            } => {
                let key = idempotency_key.as_deref();
                let hooked = self.publish_hook(state, &room, content, data.as_ref(), key);
                let content = match hooked.await {
                    Ok(content) => content,
                    Err(error) => return Some(ServerFrame::failure(reference, error)),
                };
                let publish = Publish {
                    room,
                    content,
                    data,
                    except_sender,
                    idempotency_key,
                };
                if state.answers.in_flight < MAX_PUBLISHES_IN_FLIGHT {
                    match self.pipeline_publish(myself, state, publish, reference.clone(), received)
                    {
                        Ok(()) => return None,
                        Err(error) => Err(error),
                    }
                } else {
                    self.publish(myself, state, publish).await
                }
            }
            Request::PublishRooms {
                rooms,
                content,
                data,
                except_sender,
                idempotency_key,
            } => {
                let publish = PublishRooms {
                    rooms,
                    content,
                    data,
                    except_sender,
                    idempotency_key,
                };
                // Each room's message counts as one publish in flight, so that what a
                // session has handed to rooms is bounded in messages (and so in bytes)
                // as for single publishes; past the bound it waits for the answers.
                let count = publish.rooms.len();
                match self.start_publish_rooms(myself, state, publish) {
                    Err(error) => Err(error),
                    Ok(pending) if state.answers.in_flight + count <= MAX_PUBLISHES_IN_FLIGHT => {
                        let slot = state.answers.reserve();
                        state.answers.in_flight += count;
                        let me = myself.clone();
                        let reference = reference.clone();
                        tokio::spawn(async move {
                            let outcome = pending.await;
                            let _ = me.cast(SessionMessage::PublishedRooms(RoomsAnswer {
                                slot,
                                reference,
                                received,
                                outcome,
                            }));
                        });
                        return None;
                    }
                    Ok(pending) => Ok(rooms_reply(state, pending.await)),
                }
            }
            Request::Typing { room } => match state.rooms.get(&room) {
                Some(actor) => {
                    // A typing event is a cast the room fans out to every member: at
                    // most one per room per TYPING_INTERVAL reaches it, so a client
                    // cannot fill a room's mailbox with them.
                    let now = std::time::Instant::now();
                    let due = state
                        .last_typing
                        .get(&room)
                        .is_none_or(|at| now.duration_since(*at) >= TYPING_INTERVAL);
                    let typing = RoomMessage::Typing {
                        session: myself.get_id(),
                    };
                    if due {
                        state.last_typing.insert(room.clone(), now);
                    }
                    if due && actor.cast(typing).is_err() {
                        state.rooms.remove(&room);
                        return Some(ServerFrame::failure(reference, unavailable(AskError::Gone)));
                    }
                    // Typing is fire-and-forget unless the client asks for a reply.
                    reference.as_ref()?;
                    Ok(ReplyData::Empty {})
                }
                None => Err(not_joined(&room)),
            },
            Request::History {
                room,
                before,
                after,
                limit,
            } => match state.rooms.get(&room) {
                Some(actor) => {
                    let session = myself.get_id();
                    let answer = ask(actor, |reply| RoomMessage::History {
                        session: Some(session),
                        before,
                        after,
                        limit,
                        reply,
                    })
                    .await;
                    forget_if_gone(state, &room, answer).and_then(|inner| inner)
                }
                None => Err(not_joined(&room)),
            },
            Request::Presence {
                room,
                after,
                limit,
                count_only,
            } => match state.rooms.get(&room) {
                Some(actor) => {
                    let answer = ask(actor, |reply| RoomMessage::Presence {
                        after,
                        limit,
                        count_only,
                        reply,
                    })
                    .await;
                    forget_if_gone(state, &room, answer)
                }
                None => Err(not_joined(&room)),
            },
            Request::Direct { to, content } => self.direct(state, to, content).await,
            Request::Rename { name } => self.rename(state, name).await,
        };
        if let Err(error) = &answer {
            tracing::debug!(session = %state.id, user = %state.user.id, kind, code = error.code.as_str(), "request refused");
        }
        Some(match answer {
            Ok(data) => ServerFrame::ok(reference, data),
            Err(error) => ServerFrame::failure(reference, error),
        })
    }

    async fn join(
        &self,
        myself: &ActorRef<SessionMessage>,
        state: &mut SessionState,
        room: RoomName,
        since: Option<u64>,
        by_server: bool,
    ) -> Result<ReplyData, ErrorBody> {
        let max_rooms = self.ctx.settings.limits.max_rooms_per_session;
        if !state.rooms.contains_key(&room) && state.rooms.len() >= max_rooms {
            return Err(ErrorBody::new(
                ErrorCode::TooManyRooms,
                format!("a connection may join at most {max_rooms} rooms"),
            ));
        }
        if !by_server {
            self.ctx.access.may_join(&room, &state.grants)?;
            state.churn.join_or_leave()?;
        }
        if !by_server
            && !state.rooms.contains_key(&room)
            && self.ctx.room_directory().get(room.as_str()).is_none()
        {
            // This join would start the room here.
            state.churn.room_creation()?;
        }
        let rooms = self
            .ctx
            .rooms()
            .ok_or_else(|| unavailable(AskError::Gone))?;
        let mut last_error = AskError::Gone;
        for _ in 0..JOIN_ATTEMPTS {
            let actor = match state.rooms.get(&room) {
                Some(actor) => actor.clone(),
                None => {
                    let name = room.clone();
                    ask(&rooms, |reply| RoomSupervisorMessage::Get {
                        room: name,
                        reply,
                    })
                    .await
                    .map_err(unavailable)??
                }
            };
            let request = JoinRequest {
                session: SessionHandle {
                    actor: myself.clone(),
                    outbox: state.outbox.clone(),
                    user: state.user.clone(),
                },
                since,
            };
            match ask(&actor, |reply| RoomMessage::Join { request, reply }).await {
                Ok(Ok(data)) => {
                    state.rooms.insert(room, actor);
                    return Ok(data);
                }
                Ok(Err(refused)) => return Err(refused),
                Err(e) => {
                    // The room stopped under us: forget it and look it up afresh.
                    state.rooms.remove(&room);
                    last_error = e;
                }
            }
        }
        Err(unavailable(last_error))
    }

    async fn leave(
        &self,
        myself: &ActorRef<SessionMessage>,
        state: &mut SessionState,
        room: RoomName,
        by_server: bool,
    ) -> Result<ReplyData, ErrorBody> {
        if !state.rooms.contains_key(&room) {
            return Err(not_joined(&room));
        }
        if !by_server {
            state.churn.join_or_leave()?;
        }
        let actor = state.rooms.remove(&room).ok_or_else(|| not_joined(&room))?;
        state.last_typing.remove(&room);
        let session = myself.get_id();
        // A room that is gone has forgotten us already; leaving it still succeeds.
        let _ = ask(&actor, |reply| RoomMessage::Leave { session, reply }).await;
        Ok(ReplyData::Leave {
            room: room.to_string(),
        })
    }

    /// The backend joins this connection to `room` (server API `subscribe`); the
    /// client is told with a `subscribed` frame, in its turn among the answers. A
    /// room already joined is left as it is.
    async fn server_join(
        &self,
        myself: &ActorRef<SessionMessage>,
        state: &mut SessionState,
        room: RoomName,
    ) -> Result<(), ErrorBody> {
        if state.rooms.contains_key(&room) {
            return Ok(());
        }
        let data = self.join(myself, state, room.clone(), None, true).await?;
        let seq = match data {
            ReplyData::Join { seq, .. } => seq,
            _ => 0,
        };
        let frame = ServerFrame::Subscribed {
            room: room.to_string(),
            seq,
        };
        state.answers.send(&state.outbox, encode(&frame));
        Ok(())
    }

    /// The backend takes this connection out of `room` (server API `unsubscribe`);
    /// the client is told with an `unsubscribed` frame.
    async fn server_leave(
        &self,
        myself: &ActorRef<SessionMessage>,
        state: &mut SessionState,
        room: RoomName,
    ) -> Result<(), ErrorBody> {
        self.leave(myself, state, room.clone(), true).await?;
        let frame = ServerFrame::Unsubscribed {
            room: room.to_string(),
        };
        state.answers.send(&state.outbox, encode(&frame));
        Ok(())
    }

    /// The publish hook (`[hooks] publish_url`, src/hooks/publish.rs), when it covers
    /// `room`: the content to order (the backend's rewrite, or as sent), or the error
    /// to answer. Awaited here, before the room: a slow backend holds up this
    /// connection's requests only, one publish at a time, never the room. What would
    /// be refused anyway (bad content, not joined, not allowed) is refused before the
    /// backend is asked.
    async fn publish_hook(
        &self,
        state: &SessionState,
        room: &RoomName,
        content: String,
        data: Option<&MessageData>,
        idempotency_key: Option<&str>,
    ) -> Result<String, ErrorBody> {
        let Some(hook) = self
            .ctx
            .hooks
            .publish
            .as_ref()
            .filter(|h| h.applies(room.as_str()))
        else {
            return Ok(content);
        };
        check_publish(&self.ctx, &content, data)?;
        if !state.rooms.contains_key(room) {
            return Err(not_joined(room));
        }
        self.ctx.access.may_publish(room, &state.grants)?;
        let check = PublishCheck {
            room: room.as_str(),
            user: &state.user,
            session: &state.id,
            content: &content,
            data,
            idempotency_key,
        };
        match hook.check(check).await {
            Verdict::Accept => Ok(content),
            Verdict::Rewrite(rewritten) => Ok(rewritten),
            Verdict::Reject(error) => Err(error),
        }
    }

    /// Hands a publish to its room and answers it later, in its turn
    /// ([`SessionMessage::Published`]); an error when it is refused before that.
    fn pipeline_publish(
        &self,
        myself: &ActorRef<SessionMessage>,
        state: &mut SessionState,
        publish: Publish,
        reference: Option<Ref>,
        received: Instant,
    ) -> Result<(), ErrorBody> {
        let Publish {
            room,
            content,
            data,
            except_sender,
            idempotency_key,
        } = publish;
        check_publish(&self.ctx, &content, data.as_ref())?;
        let actor = state.rooms.get(&room).ok_or_else(|| not_joined(&room))?;
        self.ctx.access.may_publish(&room, &state.grants)?;
        self.ctx.message_rate.check(&state.user.id)?;
        let (tx, rx) = ractor::concurrency::oneshot();
        let message = RoomMessage::Publish {
            session: myself.get_id(),
            from: state.user.clone(),
            content,
            data,
            except_sender,
            idempotency_key,
            id: None,
            reply: tx.into(),
        };
        if actor.cast(message).is_err() {
            return forget_if_gone(state, &room, Err::<(), _>(AskError::Gone));
        }
        let slot = state.answers.reserve();
        state.answers.in_flight += 1;
        let me = myself.clone();
        tokio::spawn(async move {
            let answer = match tokio::time::timeout(super::ASK_TIMEOUT, rx).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(_)) => Err(AskError::Gone),
                Err(_) => Err(AskError::Timeout),
            };
            let _ = me.cast(SessionMessage::Published(PublishAnswer {
                slot,
                room,
                reference,
                received,
                answer,
            }));
        });
        Ok(())
    }

    async fn publish(
        &self,
        myself: &ActorRef<SessionMessage>,
        state: &mut SessionState,
        publish: Publish,
    ) -> Result<ReplyData, ErrorBody> {
        let Publish {
            room,
            content,
            data,
            except_sender,
            idempotency_key,
        } = publish;
        check_publish(&self.ctx, &content, data.as_ref())?;
        let actor = state.rooms.get(&room).ok_or_else(|| not_joined(&room))?;
        self.ctx.access.may_publish(&room, &state.grants)?;
        self.ctx.message_rate.check(&state.user.id)?;
        let session = myself.get_id();
        let from = state.user.clone();
        let answer = ask(actor, |reply| RoomMessage::Publish {
            session,
            from,
            content,
            data,
            except_sender,
            // The room hands it to its log, which answers a key it has seen with the
            // original message (`duplicate: true` in the reply).
            idempotency_key,
            id: None,
            reply,
        })
        .await;
        forget_if_gone(state, &room, answer).and_then(|inner| inner)
    }

    /// Hands a publish with `rooms` to each of its rooms, with one id for all; the
    /// future gathers their answers. Refused as a whole (nothing published) when the
    /// body breaks the content rules, a room is not joined, the access rules refuse
    /// one room, or the user's message rate has fewer messages left than rooms.
    fn start_publish_rooms(
        &self,
        myself: &ActorRef<SessionMessage>,
        state: &mut SessionState,
        publish: PublishRooms,
    ) -> Result<PortFuture<RoomsOutcome>, ErrorBody> {
        let PublishRooms {
            rooms,
            content,
            data,
            except_sender,
            idempotency_key,
        } = publish;
        check_publish(&self.ctx, &content, data.as_ref())?;
        let mut actors = Vec::with_capacity(rooms.len());
        for room in &rooms {
            let actor = state.rooms.get(room).ok_or_else(|| not_joined(room))?;
            self.ctx.access.may_publish(room, &state.grants)?;
            actors.push(actor.clone());
        }
        self.ctx.message_rate.check_n(&state.user.id, rooms.len())?;
        let id = uuid::Uuid::now_v7().to_string();
        let mut pending = Vec::with_capacity(rooms.len());
        for (room, actor) in rooms.into_iter().zip(actors) {
            let (tx, rx) = ractor::concurrency::oneshot();
            let message = RoomMessage::Publish {
                session: myself.get_id(),
                from: state.user.clone(),
                content: content.clone(),
                data: data.clone(),
                except_sender,
                idempotency_key: idempotency_key.clone(),
                id: Some(id.clone()),
                reply: tx.into(),
            };
            let sent = actor.cast(message).is_ok();
            pending.push((room, sent.then_some(rx)));
        }
        Ok(Box::pin(async move {
            let answers = pending.into_iter().map(|(room, rx)| async move {
                let answer = match rx {
                    None => Err(AskError::Gone),
                    Some(rx) => match tokio::time::timeout(super::ASK_TIMEOUT, rx).await {
                        Ok(Ok(answer)) => Ok(answer),
                        Ok(Err(_)) => Err(AskError::Gone),
                        Err(_) => Err(AskError::Timeout),
                    },
                };
                (room, answer)
            });
            let answers = futures_util::future::join_all(answers).await;
            RoomsOutcome { id, answers }
        }))
    }

    async fn direct(
        &self,
        state: &SessionState,
        to: String,
        content: String,
    ) -> Result<ReplyData, ErrorBody> {
        self.check_content(&content)?;
        state.churn.direct()?;
        self.ctx.message_rate.check(&state.user.id)?;
        let presence = self
            .ctx
            .presence()
            .ok_or_else(|| unavailable(AskError::Gone))?;
        let from = state.user.clone();
        ask(&presence, |reply| PresenceMessage::Direct {
            from,
            to,
            content,
            reply,
        })
        .await
        .unwrap_or_else(|e| Err(unavailable(e)))
    }

    async fn rename(&self, state: &SessionState, name: String) -> Result<ReplyData, ErrorBody> {
        state.churn.rename()?;
        let presence = self
            .ctx
            .presence()
            .ok_or_else(|| unavailable(AskError::Gone))?;
        let user_id = state.user.id.clone();
        let user = ask(&presence, |reply| PresenceMessage::Rename {
            user_id,
            name,
            reply,
        })
        .await
        .map_err(unavailable)?;
        Ok(ReplyData::Rename { user })
    }

    /// The content rules of `publish` and `direct` ([`check_content`]).
    fn check_content(&self, content: &str) -> Result<(), ErrorBody> {
        check_content(&self.ctx, content)
    }
}

/// The content rules of `publish` and `direct` (docs/protocol.md): not blank, no
/// control character but `\n` and `\t`, within the character and byte bounds. The
/// server API's publishes and direct messages keep them too.
pub(crate) fn check_content(ctx: &NodeContext, content: &str) -> Result<(), ErrorBody> {
    let limits = &ctx.settings.limits;
    let refused = |reason, code, message: String| {
        ctx.metrics.content_refused(reason);
        Err(ErrorBody::new(code, message))
    };
    if content.trim().is_empty() {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            "content must not be empty",
        ));
    }
    // C0 (but \n and \t), DEL and C1: they render as nothing or garble a
    // terminal, and JSON escapes each as six bytes.
    if let Some((at, c)) = content
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        return refused(
            "control_character",
            ErrorCode::BadRequest,
            format!(
                "content must not contain control characters other than \\n and \\t \
                     (U+{:04X} at character {at})",
                u32::from(c)
            ),
        );
    }
    let max_bytes = limits.max_message_bytes;
    if max_bytes > 0 && content.len() > max_bytes {
        return refused(
            "bytes",
            ErrorCode::TooLong,
            format!("content is limited to {max_bytes} bytes of UTF-8"),
        );
    }
    let max = limits.max_message_chars;
    if content.chars().count() > max {
        return refused(
            "chars",
            ErrorCode::TooLong,
            format!("content is limited to {max} characters"),
        );
    }
    Ok(())
}

/// The rules of a publish's body (docs/protocol.md, `publish`): without `data`, the
/// content rules; with `data`, the content may be empty (it is checked like any
/// content otherwise), and the content's bytes plus the data's compact JSON bytes are
/// within the content's byte bound (the smaller of `limits.max_message_bytes` and 4
/// bytes per character of `limits.max_message_chars`), so that a message with data
/// is never larger than the largest message without (replies and queues are sized
/// by that). Shared by the server API's publishes.
pub(crate) fn check_publish(
    ctx: &NodeContext,
    content: &str,
    data: Option<&MessageData>,
) -> Result<(), ErrorBody> {
    let Some(data) = data else {
        return check_content(ctx, content);
    };
    if !content.is_empty() {
        check_content(ctx, content)?;
    }
    let bound = ctx.settings.limits.content_bytes_bound();
    if content.len().saturating_add(data.len()) > bound {
        ctx.metrics.content_refused("bytes");
        return Err(ErrorBody::new(
            ErrorCode::TooLong,
            format!(
                "content and data (as compact JSON) are limited to {bound} bytes together; \
                 these are {} and {}",
                content.len(),
                data.len()
            ),
        ));
    }
    Ok(())
}

/// Counts what an answer tells the metrics: a `rate_limited` refusal (whichever limit
/// refused), or how long an accepted publish took from its arrival here to the room
/// having fanned it out (the room answers only once it has).
fn count_answer(metrics: &Metrics, kind: &str, received: Instant, answer: &ServerFrame) {
    match answer {
        ServerFrame::Reply {
            error: Some(error), ..
        }
        | ServerFrame::Error { error }
            if error.code == ErrorCode::RateLimited =>
        {
            metrics.rate_limited()
        }
        ServerFrame::Reply { ok: true, .. } if kind == "publish" => {
            metrics.publish_done(received.elapsed())
        }
        _ => {}
    }
}

/// A publish request's parts.
struct Publish {
    room: RoomName,
    content: String,
    data: Option<MessageData>,
    except_sender: bool,
    idempotency_key: Option<String>,
}

/// A publish request with `rooms`.
struct PublishRooms {
    rooms: Vec<RoomName>,
    content: String,
    data: Option<MessageData>,
    except_sender: bool,
    idempotency_key: Option<String>,
}

/// The reply to a publish to several rooms: a result per room. A room that is gone
/// is forgotten, as for any request to it.
fn rooms_reply(state: &mut SessionState, outcome: RoomsOutcome) -> ReplyData {
    let results = outcome
        .answers
        .into_iter()
        .map(|(room, answer)| {
            let answer = forget_if_gone(state, &room, answer).and_then(|inner| inner);
            RoomPublished::new(room.as_str(), answer)
        })
        .collect();
    ReplyData::PublishRooms {
        id: outcome.id,
        results,
    }
}

/// Checks the connection's frame rate; the error to answer with when it is over.
fn rate_limited(state: &SessionState) -> Option<ErrorBody> {
    let limiter = state.limiter.as_ref()?;
    let wait = bucket::take(limiter).err()?;
    Some(ErrorBody::rate_limited((wait.as_millis() as u64).max(1)))
}

/// Maps a failed ask to a room into `internal`; a room that is gone (it failed) is
/// forgotten, so the client can join it afresh.
fn forget_if_gone<T>(
    state: &mut SessionState,
    room: &RoomName,
    answer: Result<T, AskError>,
) -> Result<T, ErrorBody> {
    answer.map_err(|e| {
        if e == AskError::Gone {
            state.rooms.remove(room);
            state.last_typing.remove(room);
        }
        unavailable(e)
    })
}

fn not_joined(room: &RoomName) -> ErrorBody {
    ErrorBody::new(ErrorCode::NotJoined, format!("join {room} first"))
}

fn unavailable(error: AskError) -> ErrorBody {
    let message = match error {
        AskError::Gone => "the room or service stopped; try again",
        AskError::Timeout => "the node did not answer in time; try again",
    };
    ErrorBody::new(ErrorCode::Internal, message)
}
