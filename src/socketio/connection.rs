//! One Engine.IO connection: what its client's packets do, whichever transport
//! carries them (polling POSTs, or a WebSocket after or instead of them).
//!
//! Owns: the connection's [`Outbox`] (the same bounded queue a v1 WebSocket has; the
//! transport drains it and encodes v1 frames into Socket.IO packets on the way out,
//! `translate::server_frame`), the namespace it connected to and the Session actor
//! that CONNECT started. A Socket.IO connection is a Session like any other: its
//! EVENTs become the v1 [`ClientFrame`]s a v1 read loop casts, with the same
//! in-flight permits, so rooms, presence, limits, ACLs and behaviours apply alike.
//!
//! The outbox carries two kinds of text: v1 server frames (they start with `{`) from
//! the Session, its rooms and presence, and Engine.IO packets (they start with a
//! digit) written here (pings, CONNECT_ERROR, the upgrade's noop). The drain tells
//! them apart by that first byte.
//!
//! One namespace per Engine.IO connection on this branch: a CONNECT to a second one
//! gets CONNECT_ERROR (socket.io-client multiplexes namespaces of one `Manager`; give
//! each namespace its own with `forceNew: true` meanwhile).
//!
//! Must not know: HTTP, actix. Identity comes through [`Identify`].

use super::engine::Packet as EnginePacket;
use super::packet::{self, PacketType};
use super::translate::{self, Namespace, Namespaces};
use crate::actors::{
    ask, NodeContext, Outbox, SessionArgs, SessionMessage, SessionSupervisorMessage,
};
use crate::auth::{Identity, Refusal};
use ractor::ActorRef;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
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
    pub outbox: Outbox,
    /// The namespace, once connected: the drain needs it to encode v1 frames.
    pub namespace: OnceLock<Namespace>,
    /// A pong came (the ping task waits on it).
    pub pong: Notify,
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
    session: Option<ActorRef<SessionMessage>>,
    inflight: Arc<Semaphore>,
    /// Binary attachments of a refused binary packet still to come.
    skip_binary: u32,
}

impl Connection {
    pub fn new(
        ctx: Arc<NodeContext>,
        shared: Arc<Shared>,
        namespaces: Arc<Namespaces>,
        identify: Arc<dyn Identify>,
        params: HashMap<String, String>,
        authorization: Option<Vec<u8>>,
    ) -> Self {
        Self {
            ctx,
            shared,
            namespaces,
            identify,
            params,
            authorization,
            session: None,
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT_FRAMES)),
            skip_binary: 0,
        }
    }

    /// Whether a namespace is connected (a Session runs).
    pub fn is_connected(&self) -> bool {
        self.session.is_some()
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
            EnginePacket::Binary(_) if self.skip_binary > 0 => {
                self.skip_binary -= 1;
                Flow::Continue
            }
            EnginePacket::Binary(_) => self.protocol_error("binary message without a packet"),
            EnginePacket::Message(text) => self.on_message(text).await,
        }
    }

    async fn on_message(&mut self, text: &str) -> Flow {
        if self.skip_binary > 0 {
            return self.protocol_error("text message while attachments were due");
        }
        let packet = match packet::decode(text) {
            Ok(packet) => packet,
            Err(error) => return self.protocol_error(&error.to_string()),
        };
        match packet.kind {
            PacketType::Connect => {
                self.connect(packet.namespace, packet.payload).await;
                Flow::Continue
            }
            PacketType::Disconnect => {
                if self.namespace_is(packet.namespace) {
                    self.end();
                    return Flow::Close;
                }
                Flow::Continue
            }
            PacketType::Event => {
                if !self.namespace_is(packet.namespace) {
                    // socket.io ignores packets for namespaces not connected.
                    return Flow::Continue;
                }
                let Some((name, args)) = packet.event() else {
                    return self.protocol_error("an event needs a name");
                };
                let Some(namespace) = self.shared.namespace.get() else {
                    return Flow::Continue;
                };
                let frame =
                    translate::client_frame(name, args, packet.ack, namespace, &self.namespaces);
                self.cast(frame).await
            }
            PacketType::BinaryEvent => {
                self.skip_binary = packet.attachments;
                if let Some(id) = packet.ack.filter(|_| self.namespace_is(packet.namespace)) {
                    let error = json!([{
                        "ok": false,
                        "error": {
                            "code": "bad_request",
                            "message": "binary attachments are not supported yet; send JSON",
                        }
                    }]);
                    self.push_packet(PacketType::Ack, Some(id), &error.to_string());
                }
                Flow::Continue
            }
            // The server never asks for acks: one for an id never sent is ignored,
            // as socket.io does.
            PacketType::Ack => Flow::Continue,
            PacketType::BinaryAck => {
                self.skip_binary = packet.attachments;
                Flow::Continue
            }
            PacketType::ConnectError => self.protocol_error("CONNECT_ERROR from a client"),
        }
    }

    fn namespace_is(&self, name: &str) -> bool {
        self.session.is_some()
            && self
                .shared
                .namespace
                .get()
                .is_some_and(|ns| ns.name == name)
    }

    async fn cast(
        &mut self,
        frame: Result<crate::protocol::ClientFrame, crate::protocol::FrameError>,
    ) -> Flow {
        let Some(session) = &self.session else {
            return Flow::Continue;
        };
        let permit = tokio::select! {
            _ = self.shared.outbox.closed() => return Flow::Close,
            permit = self.inflight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Flow::Close,
            },
        };
        if session
            .cast(SessionMessage::Inbound(frame, permit))
            .is_err()
        {
            self.end();
            return Flow::Close;
        }
        Flow::Continue
    }

    async fn connect(&mut self, name: &str, auth: Option<Value>) {
        if self.session.is_some() {
            if !self.namespace_is(name) {
                self.push_raw(packet::connect_error(
                    name,
                    "one namespace per connection on this server; connect with forceNew",
                    None,
                ));
            }
            return;
        }
        let Some(namespace) = self.namespaces.get(name).cloned() else {
            self.push_raw(packet::connect_error(name, "Invalid namespace", None));
            return;
        };
        let mut params = self.params.clone();
        if let Some(Value::Object(fields)) = auth {
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
        let Some(sessions) = self.ctx.sessions() else {
            let message = "the node is restarting its sessions";
            self.push_raw(packet::connect_error(
                name,
                message,
                Some(json!({"code": "unavailable"})),
            ));
            return;
        };
        let _ = self.shared.namespace.set(namespace);
        let args = SessionArgs {
            id: uuid::Uuid::new_v4().simple().to_string(),
            user: identity.user,
            name_given: identity.name_given,
            grants: identity.grants,
            outbox: self.shared.outbox.clone(),
        };
        match ask(&sessions, |reply| SessionSupervisorMessage::Open {
            args,
            reply,
        })
        .await
        {
            // The Session's `welcome` is the CONNECT's answer (translate.rs).
            Ok(Ok(session)) => self.session = Some(session),
            _ => {
                let message = "could not start a session";
                self.push_raw(packet::connect_error(
                    name,
                    message,
                    Some(json!({"code": "internal"})),
                ));
            }
        }
    }

    fn push_packet(&self, kind: PacketType, ack: Option<u64>, json: &str) {
        let name = self
            .shared
            .namespace
            .get()
            .map_or(packet::DEFAULT_NAMESPACE, |ns| ns.name.as_str());
        self.push_raw(packet::encode(kind, name, ack, json));
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

    /// Ends the connection: the Session stops, the outbox closes.
    pub fn end(&mut self) {
        if let Some(session) = self.session.take() {
            session.stop(Some("connection closed".to_owned()));
        }
        self.shared
            .outbox
            .close_now(crate::protocol::close::NORMAL, "");
    }
}
