//! One Engine.IO connection: what its client's packets do, whichever transport
//! carries them (polling POSTs, or a WebSocket after or instead of them).
//!
//! Owns: the connection's Engine.IO [`Outbox`] (pings, CONNECT_ERROR, the upgrade's
//! noop: packets written here), and for each namespace it connected to a Session
//! actor with an outbox of its own (the same bounded queue a v1 WebSocket has). A
//! Socket.IO connection is a Session like any other, one per namespace, as
//! socket.io-client multiplexes the namespaces of one `Manager` over one connection:
//! its EVENTs become the v1 [`ClientFrame`]s a v1 read loop casts, with the same
//! in-flight permits, so rooms, presence, limits, ACLs and behaviours apply alike.
//! Whoever drains the connection (`drain::poll_drain`) reads every outbox, and
//! encodes each namespace's v1 frames into Socket.IO packets of that namespace.
//!
//! A namespace's Session ending for any reason but the client's DISCONNECT (slow
//! consumer, token expiry, shutdown) ends the whole connection, as a v1 close would;
//! the client reconnects.
//!
//! Must not know: HTTP, actix. Identity comes through [`Identify`].

use super::engine::Packet as EnginePacket;
use super::packet::{self, PacketType};
use super::recovery::{Recovery, RECOVERY_REF_BASE};
use super::translate::{self, Namespace, Namespaces};
use crate::actors::{
    ask, FrameHold, FrameHolds, InflightPermit, NodeContext, Outbox, SessionArgs, SessionMessage,
    SessionSupervisorMessage,
};
use crate::actors::{OutboxBounds, OutboxReader};
use crate::auth::{Identity, Refusal};
use crate::config::AuthMode;
use crate::hooks::connect::{ConnectInput, ConnectRefusal, ConnectRequest};
use crate::protocol::RoomName;
use ractor::ActorRef;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, Semaphore};

/// Frames a connection may have waiting in its Session's mailbox (as for v1).
const MAX_INFLIGHT_FRAMES: usize = 32;

/// Who a CONNECT's client is: the handshake's parameters with the CONNECT's `auth`
/// fields over them, checked as `[auth]` says (the transport's gate).
pub trait Identify: Send + Sync {
    fn identify(
        &self,
        params: &HashMap<String, String>,
        authorization: Option<&[u8]>,
    ) -> Result<Identity, Refusal>;
}

/// What the transport does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The connection is over (the client closed, or broke the protocol); its
    /// outbox is closing.
    Close,
}

/// What every transport of one Engine.IO connection shares.
pub struct Shared {
    /// The Engine.IO sid.
    pub sid: String,
    /// Engine.IO packets written by the connection itself.
    pub outbox: Outbox,
    /// The reader of each connected namespace's outbox (its Session's frames).
    pub namespaces: Mutex<Vec<NamespaceReader>>,
    /// A namespace was connected once (the connect deadline is met).
    pub connected: AtomicBool,
    /// A pong came (the ping task waits on it).
    pub pong: Notify,
}

impl Shared {
    /// A connection's shared half, with no namespace yet.
    pub fn new(sid: String, outbox: Outbox) -> Self {
        Self {
            sid,
            outbox,
            namespaces: Mutex::new(Vec::new()),
            connected: AtomicBool::new(false),
            pong: Notify::new(),
        }
    }

    /// The namespaces' readers; nothing panics while the lock is held.
    pub fn namespaces(&self) -> MutexGuard<'_, Vec<NamespaceReader>> {
        self.namespaces.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove_namespace(&self, name: &str) {
        self.namespaces().retain(|ns| ns.namespace.name != name);
    }
}

/// One connected namespace's outbox, as its drain reads it.
pub struct NamespaceReader {
    pub namespace: Namespace,
    pub reader: OutboxReader,
    /// Its offsets, and a recovery under way.
    pub recovery: Recovery,
}

/// The inbound state of one connection.
pub struct Connection {
    ctx: Arc<NodeContext>,
    shared: Arc<Shared>,
    namespaces: Arc<Namespaces>,
    identify: Arc<dyn Identify>,
    /// The handshake's query parameters and `Authorization` header.
    params: HashMap<String, String>,
    authorization: Option<Vec<u8>>,
    /// What the connect hook is told of the handshake (its headers, query and
    /// address), when `[hooks] connect_url` is set.
    hook_input: Option<ConnectInput>,
    /// The Session of each connected namespace, by name.
    sessions: HashMap<String, (Namespace, ActorRef<SessionMessage>)>,
    inflight: Arc<Semaphore>,
    /// Where the frames handed to a Session take their hold of the node's inbound
    /// budget (`limits.node_inbound_bytes`) while they wait; None: they take none.
    holds: Option<Box<dyn FrameHolds>>,
    /// A BINARY_EVENT waiting for its attachments, or a packet whose attachments are
    /// skipped.
    binary: Option<Attachments>,
    /// The most bytes one event's attachments may take: `socketio.max_payload_bytes`,
    /// or less when their base64 could not fit a message (`limits.max_message_bytes`).
    max_attachment_bytes: usize,
}

/// What a binary packet announced and what of it came.
struct Attachments {
    /// The event to send on once every part is there; None: skip the parts.
    event: Option<BinaryEvent>,
    expected: usize,
    /// Parts come so far; kept in `parts` while `event` is there.
    received: usize,
    parts: Vec<Vec<u8>>,
    bytes: usize,
    /// What the kept parts hold of the node's inbound budget while the rest come.
    hold: Option<Box<dyn FrameHold>>,
}

struct BinaryEvent {
    namespace: String,
    ack: Option<u64>,
    name: String,
    args: Vec<Value>,
}

impl Connection {
    pub fn new(
        ctx: Arc<NodeContext>,
        shared: Arc<Shared>,
        namespaces: Arc<Namespaces>,
        identify: Arc<dyn Identify>,
        params: HashMap<String, String>,
        authorization: Option<Vec<u8>>,
        hook_input: Option<ConnectInput>,
    ) -> Self {
        // Parts larger than what their base64 could fit in a message's data are
        // refused as they come, not kept: a connection holds at most this much.
        let max_attachment_bytes = usize::try_from(ctx.settings.socketio.max_payload_bytes)
            .unwrap_or(usize::MAX)
            .min(ctx.settings.limits.content_bytes_bound() / 4 * 3);
        Self {
            ctx,
            shared,
            namespaces,
            identify,
            params,
            authorization,
            hook_input,
            sessions: HashMap::new(),
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT_FRAMES)),
            holds: None,
            binary: None,
            max_attachment_bytes,
        }
    }

    /// The same connection, its frames holding their bytes in `holds` while they
    /// wait for their Session.
    pub fn with_frame_holds(mut self, holds: Box<dyn FrameHolds>) -> Self {
        self.holds = Some(holds);
        self
    }

    /// Namespaces connected now (a Session runs for each).
    pub fn connected(&self) -> usize {
        self.sessions.len()
    }

    /// Handles one packet from the client.
    pub async fn on_packet(&mut self, packet: EnginePacket<'_>) -> Flow {
        self.shared.outbox.heard();
        match packet {
            EnginePacket::Close => {
                self.end();
                Flow::Close
            }
            EnginePacket::Ping(data) => {
                // Only a probe is a client's ping in v4; answer it all the same.
                let _ = self.shared.outbox.push(format!("3{data}").into());
                Flow::Continue
            }
            EnginePacket::Pong(_) => {
                self.shared.pong.notify_one();
                Flow::Continue
            }
            EnginePacket::Upgrade | EnginePacket::Noop => Flow::Continue,
            EnginePacket::Binary(bytes) => self.on_attachment(bytes).await,
            EnginePacket::Message(text) => self.on_message(text).await,
        }
    }

    async fn on_message(&mut self, text: &str) -> Flow {
        if self.binary.is_some() {
            return self.protocol_error("text message while attachments were due");
        }
        let packet = match packet::decode(text) {
            Ok(packet) => packet,
            Err(error) => return self.protocol_error(&error.to_string()),
        };
        match packet.kind {
            PacketType::Connect => {
                // Boxed: it waits on the SessionSupervisor; the rest stays small.
                Box::pin(self.connect(packet.namespace, packet.payload)).await;
                Flow::Continue
            }
            PacketType::Disconnect => {
                // Its reader goes first, so that its Session's end is not taken for
                // the connection's.
                self.shared.remove_namespace(packet.namespace);
                if let Some((_, session)) = self.sessions.remove(packet.namespace) {
                    session.stop(Some("namespace disconnected".to_owned()));
                }
                Flow::Continue
            }
            PacketType::Event => {
                let Some((name, args)) = packet.event() else {
                    return self.protocol_error("an event needs a name");
                };
                // socket.io ignores packets for namespaces not connected.
                let Some((namespace, session)) = self.sessions.get(packet.namespace) else {
                    return Flow::Continue;
                };
                let frame =
                    translate::client_frame(name, args, packet.ack, namespace, &self.namespaces);
                let session = session.clone();
                self.cast(&session, frame, text.len() as u64).await
            }
            PacketType::BinaryEvent => {
                let Some((name, args)) = packet.event() else {
                    return self.protocol_error("an event needs a name");
                };
                // Events of namespaces not connected are ignored, their parts skipped.
                let event = self
                    .sessions
                    .contains_key(packet.namespace)
                    .then(|| BinaryEvent {
                        namespace: packet.namespace.to_owned(),
                        ack: packet.ack,
                        name: name.to_owned(),
                        args: args.to_vec(),
                    });
                self.binary = Some(Attachments {
                    event,
                    expected: packet.attachments as usize,
                    received: 0,
                    parts: Vec::new(),
                    bytes: 0,
                    hold: None,
                });
                self.attachments_complete().await
            }
            // The server never asks for acks: one for an id never sent is ignored,
            // as socket.io does.
            PacketType::Ack => Flow::Continue,
            PacketType::BinaryAck => {
                self.binary = Some(Attachments {
                    event: None,
                    expected: packet.attachments as usize,
                    received: 0,
                    parts: Vec::new(),
                    bytes: 0,
                    hold: None,
                });
                self.attachments_complete().await
            }
            PacketType::ConnectError => self.protocol_error("CONNECT_ERROR from a client"),
        }
    }

    /// One binary message: the next part of the binary packet waiting for it.
    async fn on_attachment(&mut self, bytes: Vec<u8>) -> Flow {
        let max = self.max_attachment_bytes;
        let Some(waiting) = &mut self.binary else {
            return self.protocol_error("binary message without a packet");
        };
        waiting.received += 1;
        waiting.bytes = waiting.bytes.saturating_add(bytes.len());
        let mut refused = None;
        if waiting.bytes > max {
            // Past the bound the parts are counted, not kept; the event is refused.
            refused = waiting.event.take();
            waiting.parts = Vec::new();
            waiting.hold = None;
        }
        if waiting.event.is_some() {
            waiting.parts.push(bytes);
            // Kept parts count in the node's inbound budget until the last one comes:
            // a connection that never sends it holds them, and thousands could.
            let bytes = waiting.bytes as u64;
            let held = match (&mut waiting.hold, &self.holds) {
                (Some(hold), _) => hold.resize(bytes),
                (None, Some(holds)) => holds
                    .hold(bytes)
                    .map(|hold| waiting.hold = Some(hold))
                    .is_some(),
                (None, None) => true,
            };
            if !held {
                return self.shed();
            }
        }
        if let Some(event) = refused {
            let why = format!(
                "the attachments of one event are limited to {max} bytes here (as base64 \
                 they count against the message size limit)"
            );
            self.refuse_binary(&event, "too_long", &why);
        }
        self.attachments_complete().await
    }

    /// When every part of the waiting binary packet is there: its event, with each
    /// placeholder replaced by its part as `{"_binary":"<base64>"}` (socketio::binary),
    /// goes to its namespace's Session as an EVENT would.
    async fn attachments_complete(&mut self) -> Flow {
        let Some(waiting) = &self.binary else {
            return Flow::Continue;
        };
        if waiting.received < waiting.expected {
            return Flow::Continue;
        }
        let Some(mut waiting) = self.binary.take() else {
            return Flow::Continue;
        };
        // The parts are now the frame's, which `cast` holds in the budget.
        waiting.hold = None;
        let Some(mut event) = waiting.event else {
            return Flow::Continue;
        };
        let mut args = Value::Array(std::mem::take(&mut event.args));
        if let Err(why) = super::binary::fill(&mut args, &waiting.parts) {
            return self.protocol_error(&why);
        }
        let Value::Array(args) = args else {
            return Flow::Continue;
        };
        let Some((namespace, session)) = self.sessions.get(&event.namespace) else {
            return Flow::Continue;
        };
        let frame =
            translate::client_frame(&event.name, &args, event.ack, namespace, &self.namespaces);
        let session = session.clone();
        let bytes = waiting.bytes as u64;
        self.cast(&session, frame, bytes).await
    }

    /// The node's inbound budget shed this connection: it closes with 1013.
    fn shed(&mut self) -> Flow {
        self.shared.outbox.close_now(
            crate::protocol::close::TRY_AGAIN_LATER,
            "node inbound budget",
        );
        self.end();
        Flow::Close
    }

    /// Answers a binary event's ack (when it asked for one) with an error.
    fn refuse_binary(&self, event: &BinaryEvent, code: &str, message: &str) {
        let Some(id) = event.ack else {
            return;
        };
        let error = json!([{"ok": false, "error": {"code": code, "message": message}}]);
        let ack = packet::encode(
            PacketType::Ack,
            &event.namespace,
            Some(id),
            &error.to_string(),
        );
        self.push_raw(ack);
    }

    /// Hands `frame` (of about `bytes`, 0 for one the node made) to `session`, once
    /// the connection has a place for it and the node's inbound budget its bytes.
    async fn cast(
        &mut self,
        session: &ActorRef<SessionMessage>,
        frame: Result<crate::protocol::ClientFrame, crate::protocol::FrameError>,
        bytes: u64,
    ) -> Flow {
        let permit = tokio::select! {
            _ = self.shared.outbox.closed() => return Flow::Close,
            permit = self.inflight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Flow::Close,
            },
        };
        let hold = match &self.holds {
            Some(holds) if bytes > 0 => match holds.hold(bytes) {
                Some(hold) => Some(hold),
                None => return self.shed(),
            },
            _ => None,
        };
        if session
            .cast(SessionMessage::Inbound(
                frame,
                InflightPermit::new(permit, hold),
            ))
            .is_err()
        {
            self.end();
            return Flow::Close;
        }
        Flow::Continue
    }

    /// The connect hook, when `[hooks] connect_url` is set, as for a `/ws` upgrade
    /// (src/hooks/connect.rs), told the CONNECT's namespace and `auth` too. The rooms
    /// it names are in the namespace's terms (a room another namespace owns is
    /// skipped in `/`).
    async fn ask_connect_hook(
        &self,
        namespace: &Namespace,
        auth: Option<&Value>,
        identity: Identity,
    ) -> Result<(Identity, Vec<RoomName>), ConnectRefusal> {
        let Some(hook) = self.ctx.hooks.connect.as_ref() else {
            return Ok((identity, Vec::new()));
        };
        let settings = &self.ctx.settings;
        let jwt = settings.auth.mode == AuthMode::Jwt;
        let verified = jwt.then(|| identity.user.clone());
        let empty = ConnectInput::default();
        let request = ConnectRequest {
            input: self.hook_input.as_ref().unwrap_or(&empty),
            user: verified.as_ref(),
            auth,
            namespace: Some(&namespace.name),
        };
        let (identity, rooms) = hook
            .admit(request, &settings.node.name, identity, jwt)
            .await?;
        let rooms = rooms
            .iter()
            .filter_map(|shown| {
                let room = self.namespaces.room_in(namespace, shown)?;
                RoomName::parse(&room).ok()
            })
            .take(settings.limits.max_rooms_per_session)
            .collect();
        Ok((identity, rooms))
    }

    async fn connect(&mut self, name: &str, auth: Option<Value>) {
        if self.sessions.contains_key(name) {
            // Connected already: socket.io ignores it too.
            return;
        }
        let Some(namespace) = self.namespaces.get(name).cloned() else {
            self.push_raw(packet::connect_error(name, "Invalid namespace", None));
            return;
        };
        let max_rooms = self.ctx.settings.limits.max_rooms_per_session;
        // An earlier connection's pid and offset: recover its rooms (recovery.rs).
        let resume = match &auth {
            Some(Value::Object(fields)) => match (fields.get("pid"), fields.get("offset")) {
                (Some(Value::String(pid)), Some(Value::String(offset))) => {
                    Recovery::parse_offset(offset, max_rooms).map(|rooms| (pid.clone(), rooms))
                }
                _ => None,
            },
            _ => None,
        };
        let mut params = self.params.clone();
        if let Some(Value::Object(fields)) = &auth {
            for key in ["token", "user", "name"] {
                if let Some(Value::String(value)) = fields.get(key) {
                    params.insert(key.to_owned(), value.clone());
                }
            }
        }
        let identity = match self
            .identify
            .identify(&params, self.authorization.as_deref())
        {
            Ok(identity) => identity,
            Err(Refusal::Unauthorized(failure)) => {
                self.ctx.metrics.auth_failure(failure.reason.as_str());
                let data = json!({"code": "unauthorized", "reason": failure.reason.as_str()});
                self.push_raw(packet::connect_error(name, &failure.message, Some(data)));
                return;
            }
            Err(Refusal::BadRequest(error)) => {
                let data = json!({"code": error.code.as_str()});
                self.push_raw(packet::connect_error(name, &error.message, Some(data)));
                return;
            }
        };
        let (identity, initial_rooms) = match self
            .ask_connect_hook(&namespace, auth.as_ref(), identity)
            .await
        {
            Ok(admitted) => admitted,
            Err(refusal) => {
                let (message, code) = match refusal {
                    ConnectRefusal::Denied {
                        status: 401,
                        reason,
                    } => (reason, "unauthorized"),
                    ConnectRefusal::Denied { reason, .. } => (reason, "forbidden"),
                    ConnectRefusal::Unavailable(reason) => {
                        (format!("{reason}; retry"), "unavailable")
                    }
                };
                let data = json!({"code": code, "reason": "connect_hook"});
                self.push_raw(packet::connect_error(name, &message, Some(data)));
                return;
            }
        };
        let Some(sessions) = self.ctx.sessions() else {
            let message = "the node is restarting its sessions";
            self.push_raw(packet::connect_error(
                name,
                message,
                Some(json!({"code": "unavailable"})),
            ));
            return;
        };
        let settings = &self.ctx.settings;
        let bounds = OutboxBounds {
            frames: settings.limits.outbound_queue,
            bytes: settings.limits.outbound_bytes,
        };
        // No worker's relay: whichever request drains the connection wakes directly.
        let (outbox, reader) = Outbox::new(
            bounds,
            self.ctx.outbound.clone(),
            self.ctx.metrics.clone(),
            None,
        );
        let recovery = match &resume {
            _ if !self.ctx.settings.socketio.recovery => Recovery::off(),
            Some((pid, rooms)) => Recovery::resuming(pid.clone(), rooms.len()),
            None => Recovery::fresh(),
        };
        let resume = resume.filter(|_| self.ctx.settings.socketio.recovery);
        self.shared.namespaces().push(NamespaceReader {
            namespace: namespace.clone(),
            reader,
            recovery,
        });
        // Wakes the drain, which then reads the new outbox too (an empty packet is
        // never written).
        let _ = self.shared.outbox.push(bytestring::ByteString::new());
        let args = SessionArgs {
            id: uuid::Uuid::new_v4().simple().to_string(),
            user: identity.user,
            name_given: identity.name_given,
            grants: identity.grants,
            outbox,
            initial_rooms,
        };
        match ask(&sessions, |reply| SessionSupervisorMessage::Open {
            args,
            reply,
        })
        .await
        {
            // The Session's `welcome` is the CONNECT's answer (translate.rs).
            Ok(Ok(session)) => {
                self.shared.connected.store(true, Ordering::Release);
                // Each room again from its position; the answers are the drain's.
                for (i, (room, since)) in
                    resume.into_iter().flat_map(|(_, rooms)| rooms).enumerate()
                {
                    let fields = json!({"room": room, "since": since});
                    let reference = RECOVERY_REF_BASE + i as u64;
                    let frame = translate::client_frame(
                        "join",
                        &[fields],
                        Some(reference),
                        &namespace,
                        &self.namespaces,
                    );
                    if self.cast(&session, frame, 0).await == Flow::Close {
                        return;
                    }
                }
                self.sessions.insert(name.to_owned(), (namespace, session));
            }
            _ => {
                self.shared.remove_namespace(name);
                let message = "could not start a session";
                self.push_raw(packet::connect_error(
                    name,
                    message,
                    Some(json!({"code": "internal"})),
                ));
            }
        }
    }

    /// Queues a Socket.IO packet as an Engine.IO message.
    fn push_raw(&self, socketio: String) {
        let _ = self
            .shared
            .outbox
            .push(super::engine::encode_message(&socketio).into());
    }

    fn protocol_error(&mut self, why: &str) -> Flow {
        tracing::debug!(sid = %self.shared.sid, why, "closing a Socket.IO connection on a protocol error");
        self.end();
        Flow::Close
    }

    /// Ends the connection: every Session stops, every outbox closes.
    pub fn end(&mut self) {
        self.binary = None;
        for (_, (_, session)) in self.sessions.drain() {
            session.stop(Some("connection closed".to_owned()));
        }
        self.shared
            .outbox
            .close_now(crate::protocol::close::NORMAL, "");
        // Dropping the readers closes the namespaces' outboxes.
        self.shared.namespaces().clear();
    }
}
