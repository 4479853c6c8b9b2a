//! `/socket.io/`: Engine.IO v4 over HTTP long-polling and WebSocket, on the same
//! listener as `/ws` (docs/socketio.md).
//!
//! One handler reads `EIO`, `transport` and `sid` and dispatches:
//!
//! - `GET ?transport=polling` (no sid): the handshake. Readiness, then the
//!   [`Gate`]'s checks but identity ([`Gate::admit_unidentified`]: a Socket.IO client
//!   names itself in its CONNECT), then the connection cap; an [`EngineConnection`]
//!   is registered and the open packet answered.
//! - `GET ?sid=`: a long poll. It waits for the connection's outbox, then answers
//!   everything queued (bounded per response) as one payload. One at a time: a second
//!   concurrent GET closes the connection, as Engine.IO does.
//! - `POST ?sid=`: packets from the client, at most `socketio.max_payload_bytes`
//!   (413 and the connection closes past it).
//! - `GET ?transport=websocket` (no sid): a WebSocket from the start.
//! - `GET ?transport=websocket&sid=`: the upgrade of a polling connection: `2probe`
//!   is answered `3probe` on the WebSocket and the waiting GET is released with a
//!   noop; at `5` the WebSocket's body takes the outbox's reader over.
//!
//! A keepalive task per connection sends the Engine.IO ping every
//! `socketio.ping_interval_ms`, closes a client whose pong does not come within
//! `socketio.ping_timeout_ms` (the next ping goes `ping_interval_ms` after the pong, as
//! in Engine.IO) or that has not connected to a namespace within
//! `socketio.connect_timeout_ms`, and when the connection ends removes it from the
//! registry, stops its Session and gives back its permits.
//!
//! Polling answers carry CORS headers for a page whose `Origin` the gate allows
//! (`http.allowed_origins`; any when empty), and `OPTIONS` answers the preflight.
//!
//! A polling request or an upgrade for a sid another node holds (sids name their
//! node) is relayed there: socketio_forward.rs.
//!
//! Binary attachments travel as binary frames on a WebSocket and as `b<base64>`
//! records in a polling payload (socketio::binary).

use super::frame_guard::{guarded, Tripped};
use super::gate::{Gate, IpSlot};
use super::http::AppState;
use super::inbound_budget::Hold;
use super::outbound::worker_relay;
use super::polling_body::{self, BodyError};
use crate::actors::{Outbox, OutboxBounds, OutboxReader};
use crate::auth::{parse_query, Identity, Refusal};
use crate::protocol::close;
use crate::socketio::connection::{Connection, Flow, Identify, Shared};
use crate::socketio::drain::{poll_drain, End};
use crate::socketio::engine::{
    self, check_query, decode_packet, encode_open, encode_payload, Handshake, HttpError,
    Packet as EnginePacket, Transport,
};
use crate::socketio::registry::{EngineConnection, Registry};
use crate::socketio::Namespaces;
use actix_http::ws::{CloseCode, CloseReason, OpCode, Parser};
use actix_web::body::{BodySize, MessageBody};
use actix_web::http::{header, Method};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use actix_ws::AggregatedMessage;
use bytestring::ByteString;
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// RFC 6455: a close frame's reason is at most 123 bytes.
const MAX_CLOSE_REASON_BYTES: usize = 123;

/// The Socket.IO endpoint's state: its settings and the connections by sid.
pub struct SocketIo {
    registry: Registry,
    /// The other nodes' HTTP listeners, for polling requests they hold.
    peers: super::socketio_forward::Peers,
    namespaces: Arc<Namespaces>,
    ping_interval: Duration,
    ping_timeout: Duration,
    connect_timeout: Duration,
    max_payload: u64,
}

impl SocketIo {
    /// From validated settings (`[socketio]`, and `[[nodes]]` for relaying), the
    /// cluster handle (the HTTP addresses peers gossip) and, when the nodes serve
    /// HTTPS, how to reach theirs (`http.tls.peer_ca`).
    pub fn new(
        all: &crate::config::Settings,
        cluster: Option<Arc<crate::cluster::Cluster>>,
        relay_tls: Option<super::tls::RelayTls>,
    ) -> Self {
        let settings = &all.socketio;
        Self {
            registry: Registry::default(),
            peers: super::socketio_forward::Peers::new(all, cluster, relay_tls),
            // Validated settings: the names are good; none would refuse every CONNECT.
            namespaces: Arc::new(Namespaces::new(&settings.namespaces).unwrap_or_default()),
            ping_interval: Duration::from_millis(settings.ping_interval_ms),
            ping_timeout: Duration::from_millis(settings.ping_timeout_ms),
            connect_timeout: Duration::from_millis(settings.connect_timeout_ms),
            max_payload: settings.max_payload_bytes,
        }
    }
}

/// Identity through the gate's authenticator (`[auth]`).
struct GateIdentity(Arc<Gate>);

impl Identify for GateIdentity {
    fn identify(
        &self,
        params: &HashMap<String, String>,
        authorization: Option<&[u8]>,
    ) -> Result<Identity, Refusal> {
        self.0
            .authenticator()
            .authenticate_params(params, authorization)
    }
}

/// Every request to `/socket.io/`.
pub async fn endpoint(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    sio: web::Data<SocketIo>,
    enabled: bool,
) -> Result<HttpResponse, actix_web::Error> {
    if !enabled {
        return Ok(HttpResponse::NotFound().finish());
    }
    let Ok(params) = parse_query(req.query_string()) else {
        return Ok(engine_error(HttpError::BadRequest));
    };
    let query = match check_query(&params) {
        Ok(query) => query,
        Err(error) => return Ok(engine_error(error)),
    };
    let method = req.method().clone();
    let cors = cors_origin(&req, &state);
    let mut response = match (query.transport, query.sid, method) {
        (Transport::Polling, None, Method::GET) => open_polling(&req, &state, &sio, params),
        (Transport::Polling, Some(sid), Method::GET | Method::POST)
            if sio.registry.get(&sid).is_none() =>
        {
            elsewhere(&req, &sio, &sid, body, state.inbound.hold()).await
        }
        (Transport::Polling, Some(sid), Method::GET) => poll(&sio, &sid).await,
        (Transport::Polling, Some(sid), Method::POST) => {
            post(&sio, &sid, body, state.inbound.hold()).await
        }
        (Transport::WebSocket, sid, Method::GET) => {
            return websocket(req, body, state, sio, sid, params).await
        }
        (Transport::Polling, _, Method::OPTIONS) => HttpResponse::NoContent()
            .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"))
            .insert_header((
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "content-type, authorization",
            ))
            .finish(),
        _ => engine_error(HttpError::BadHandshakeMethod),
    };
    if let Some(origin) = cors {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::HeaderValue::from_static("true"),
        );
        headers.insert(header::VARY, header::HeaderValue::from_static("Origin"));
    }
    Ok(response)
}

/// The `Origin` to allow in CORS headers: a browser page's, when `http.allowed_origins`
/// lets it connect (any, when that is empty). Polling is plain HTTP, so a page of
/// another origin needs these to read the answers; WebSockets do not.
fn cors_origin(req: &HttpRequest, state: &AppState) -> Option<header::HeaderValue> {
    let origin = req.headers().get(header::ORIGIN)?;
    state.gate.allows_origin(req).then(|| origin.clone())
}

/// A polling request for a sid this node does not hold: relayed to the node that
/// does (socketio_forward.rs), or "Session ID unknown".
async fn elsewhere(
    req: &HttpRequest,
    sio: &SocketIo,
    sid: &str,
    body: web::Payload,
    hold: Hold,
) -> HttpResponse {
    let Some(addr) = sio.peers.holder(req, sid) else {
        return engine_error(HttpError::UnknownSid);
    };
    // The holder answers a long poll by its next ping at the latest.
    let deadline = sio.ping_interval + sio.ping_timeout + Duration::from_secs(5);
    super::socketio_forward::relay_polling(
        req,
        body,
        &sio.peers,
        &addr,
        sio.max_payload,
        hold,
        deadline,
    )
    .await
}

fn engine_error(error: HttpError) -> HttpResponse {
    let mut response = match error {
        HttpError::Forbidden => HttpResponse::Forbidden(),
        _ => HttpResponse::BadRequest(),
    };
    response.content_type("application/json").body(error.body())
}

fn refuse_unavailable(message: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(serde_json::json!({
        "error": { "code": "unavailable", "message": message }
    }))
}

/// What a connection holds until it ends: its place under `limits.max_connections`
/// and under `rate_limit.connections_per_ip`.
struct Held {
    _connection: OwnedSemaphorePermit,
    _address: IpSlot,
}

/// The checks and the state of a new Engine.IO connection; the reader of its outbox.
fn open(
    req: &HttpRequest,
    state: &AppState,
    sio: &web::Data<SocketIo>,
    params: HashMap<String, String>,
    transport: Transport,
) -> Result<(Arc<EngineConnection>, OutboxReader, Held), Box<HttpResponse>> {
    if let Some(not_ready) = state.not_ready() {
        return Err(Box::new(refuse_unavailable(&not_ready.message())));
    }
    let slot = state
        .gate
        .admit_unidentified(req)
        .map_err(|refused| Box::new(refused.response()))?;
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        return Err(Box::new(refuse_unavailable(
            "the node is at its connection limit",
        )));
    };
    let settings = &state.ctx.settings;
    let bounds = OutboxBounds {
        frames: settings.limits.outbound_queue,
        bytes: settings.limits.outbound_bytes,
    };
    // A polling connection's requests land on any worker: no relay of one worker.
    let relay = (transport == Transport::WebSocket).then(worker_relay);
    let (outbox, reader) = Outbox::new(
        bounds,
        state.ctx.outbound.clone(),
        state.ctx.metrics.clone(),
        relay,
    );
    let shared = Arc::new(Shared::new(sio.peers.new_sid(), outbox));
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes().to_vec());
    let hook_input =
        state.ctx.hooks.connect.as_ref().map(|hook| {
            super::connect_hook::connect_input(hook, req, state.gate.client_address(req))
        });
    let inbound = Connection::new(
        state.ctx.clone(),
        shared.clone(),
        sio.namespaces.clone(),
        Arc::new(GateIdentity(state.gate.clone())),
        params,
        authorization,
        hook_input,
    )
    .with_frame_holds(Box::new(frame_holds(state, &shared.outbox)));
    let engine = Arc::new(EngineConnection::new(shared, None, inbound));
    let held = Held {
        _connection: permit,
        _address: slot,
    };
    Ok((engine, reader, held))
}

fn handshake(sio: &SocketIo, sid: &str, transport: Transport) -> String {
    encode_open(&Handshake {
        sid: sid.to_owned(),
        upgrades: match transport {
            Transport::Polling => vec!["websocket"],
            Transport::WebSocket => vec![],
        },
        ping_interval: sio.ping_interval.as_millis() as u64,
        ping_timeout: sio.ping_timeout.as_millis() as u64,
        max_payload: sio.max_payload,
    })
}

fn open_polling(
    req: &HttpRequest,
    state: &AppState,
    sio: &web::Data<SocketIo>,
    params: HashMap<String, String>,
) -> HttpResponse {
    let (engine, reader, held) = match open(req, state, sio, params, Transport::Polling) {
        Ok(opened) => opened,
        Err(refused) => return *refused,
    };
    *engine.reader() = Some(reader);
    let sid = engine.shared.sid.clone();
    sio.registry.insert(engine.clone());
    actix_web::rt::spawn(keepalive(engine, sio.clone(), held));
    text_response(handshake(sio, &sid, Transport::Polling))
}

fn text_response(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=UTF-8")
        .body(body)
}

/// A long poll: what the outbox holds, once it holds something.
async fn poll(sio: &SocketIo, sid: &str) -> HttpResponse {
    let Some(engine) = sio.registry.get(sid) else {
        return engine_error(HttpError::UnknownSid);
    };
    let Some(_claim) = engine.claim(&engine.polling) else {
        engine
            .shared
            .outbox
            .close_now(close::NORMAL, "overlapping polls");
        return engine_error(HttpError::BadRequest);
    };
    if engine.reader().is_none() {
        // Upgraded: polling is over for this connection (the GET that was waiting
        // when the WebSocket took over got its noop).
        return engine_error(HttpError::BadRequest);
    }
    let mut packets: Vec<ByteString> = Vec::new();
    if engine.closing.load(Ordering::Acquire) {
        return closed(sio, &engine, packets).await;
    }
    let end = std::future::poll_fn(|cx| {
        let slot = engine.reader();
        match slot.as_ref() {
            // The WebSocket took the connection over: this poll ends with a noop.
            None => {
                packets.push(ByteString::from_static("6"));
                Poll::Ready(End::Open)
            }
            Some(reader) => poll_drain(cx, reader, &engine.shared, &mut packets),
        }
    })
    .await;
    if let End::Close(..) = end {
        if packets.is_empty() {
            return closed(sio, &engine, packets).await;
        }
        // socket.io-client hands a payload's messages to the application a tick
        // later than it handles a close in the same payload, and loses them (a
        // `goodbye`): the close goes in the next answer.
        engine.closing.store(true, Ordering::Release);
    }
    text_response(encode_payload(&packets))
}

/// The last answer of a polling connection: what is left, then the close packet.
async fn closed(
    sio: &SocketIo,
    engine: &EngineConnection,
    mut packets: Vec<ByteString>,
) -> HttpResponse {
    packets.push(ByteString::from_static("1"));
    sio.registry.remove(&engine.shared.sid);
    engine.inbound.lock().await.end();
    text_response(encode_payload(&packets))
}

/// Packets from the client.
async fn post(sio: &SocketIo, sid: &str, body: web::Payload, hold: Hold) -> HttpResponse {
    let Some(engine) = sio.registry.get(sid) else {
        return engine_error(HttpError::UnknownSid);
    };
    let Some(_claim) = engine.claim(&engine.posting) else {
        end_now(sio, &engine).await;
        return engine_error(HttpError::BadRequest);
    };
    let bytes = match polling_body::read(body, sio.max_payload, hold).await {
        Ok(bytes) => bytes,
        Err(BodyError::Broken) => return engine_error(HttpError::BadRequest),
        Err(BodyError::TooLarge) => {
            end_now(sio, &engine).await;
            return HttpResponse::PayloadTooLarge()
                .content_type("application/json")
                .body(r#"{"code":3,"message":"Bad request"}"#);
        }
        // The node holds all it may of bodies still arriving: this one goes, the
        // connection with it (the client reconnects, and may recover).
        Err(BodyError::Shed) => {
            end_now(sio, &engine).await;
            return HttpResponse::ServiceUnavailable()
                .content_type("application/json")
                .body(r#"{"code":3,"message":"Bad request"}"#);
        }
    };
    let mut inbound = engine.inbound.lock().await;
    let Ok(text) = std::str::from_utf8(&bytes) else {
        sio.registry.remove(&engine.shared.sid);
        inbound.end();
        return engine_error(HttpError::BadRequest);
    };
    let Ok(packets) = engine::decode_payload(text) else {
        sio.registry.remove(&engine.shared.sid);
        inbound.end();
        return engine_error(HttpError::BadRequest);
    };
    for packet in packets {
        if inbound.on_packet(packet).await == Flow::Close {
            break;
        }
    }
    HttpResponse::Ok().content_type("text/html").body("ok")
}

/// Ends a polling connection whose POST broke the rules, out of the registry at once:
/// the client's next request learns it is gone (400, unknown sid) instead of finding
/// it still there until its keepalive task notices.
async fn end_now(sio: &SocketIo, engine: &EngineConnection) {
    sio.registry.remove(&engine.shared.sid);
    engine.inbound.lock().await.end();
}

/// Pings, pongs, the connect deadline; the connection's end.
async fn keepalive(engine: Arc<EngineConnection>, sio: web::Data<SocketIo>, held: Held) {
    let outbox = engine.shared.outbox.clone();
    let connect_by = Instant::now() + sio.connect_timeout;
    let mut next_ping = Instant::now() + sio.ping_interval;
    loop {
        let connected = engine.shared.connected.load(Ordering::Acquire);
        let wake = if connected {
            next_ping
        } else {
            next_ping.min(connect_by)
        };
        tokio::select! {
            _ = outbox.closed() => break,
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        if !connected && Instant::now() >= connect_by {
            outbox.close_now(close::NORMAL, "connect timeout");
            break;
        }
        if Instant::now() < next_ping {
            continue;
        }
        if outbox.push(ByteString::from_static("2")).is_err() {
            break;
        }
        tokio::select! {
            _ = outbox.closed() => break,
            _ = engine.shared.pong.notified() => {}
            _ = tokio::time::sleep(sio.ping_timeout) => {
                outbox.close_now(close::HEARTBEAT_TIMEOUT, "ping timeout");
                break;
            }
        }
        next_ping = Instant::now() + sio.ping_interval;
    }
    sio.registry.remove(&engine.shared.sid);
    engine.inbound.lock().await.end();
    drop(held);
}

/// What the read loop hands a WebSocket's body during an upgrade.
enum BodyInput {
    /// An Engine.IO packet outside the outbox (`3probe`).
    Text(ByteString),
    /// The upgrade is done: write what the outbox holds from now on.
    Reader(OutboxReader),
}

async fn websocket(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    sio: web::Data<SocketIo>,
    sid: Option<String>,
    params: HashMap<String, String>,
) -> Result<HttpResponse, actix_web::Error> {
    let (engine, reader, held) = match &sid {
        Some(sid) => {
            let Some(engine) = sio.registry.get(sid) else {
                // Held by another node: the upgrade is relayed there.
                let Some(addr) = sio.peers.holder(&req, sid) else {
                    return Ok(engine_error(HttpError::UnknownSid));
                };
                let max = usize::try_from(sio.max_payload).unwrap_or(usize::MAX);
                let silence = sio.ping_interval + sio.ping_timeout + Duration::from_secs(5);
                // Guarded as a WebSocket of this node's own (see frame_guard.rs).
                let mut guarded_body =
                    guarded(body.into_inner(), max, state.inbound.hold(), Tripped::new());
                let body = web::Payload::from_request(&req, &mut guarded_body).await?;
                return super::socketio_forward::relay_websocket(
                    req, body, &sio.peers, &addr, max, silence,
                )
                .await;
            };
            if engine
                .upgrading
                .swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                return Ok(engine_error(HttpError::BadRequest));
            }
            (engine, None, None)
        }
        None => match open(&req, &state, &sio, params, Transport::WebSocket) {
            Ok((engine, reader, held)) => {
                let open = handshake(&sio, &engine.shared.sid, Transport::WebSocket);
                let _ = engine.shared.outbox.push(open.into());
                (engine, Some(reader), Some(held))
            }
            Err(refused) => return Ok(*refused),
        },
    };
    let mut handshake = match actix_http::ws::handshake(req.head()) {
        Ok(handshake) => handshake,
        Err(error) => {
            if held.is_some() {
                engine.shared.outbox.close_now(close::NORMAL, "");
            } else {
                engine
                    .upgrading
                    .store(false, std::sync::atomic::Ordering::Release);
            }
            return Err(error.into());
        }
    };
    // Oversized frames refused from their headers, what is still arriving held against
    // the node's budget (see frame_guard.rs); either ends the read loop below.
    let max = usize::try_from(sio.max_payload).unwrap_or(usize::MAX);
    let stream = actix_ws::MessageStream::new(guarded(
        body.into_inner(),
        max,
        state.inbound.hold(),
        Tripped::new(),
    ));
    // Only an upgrade needs a channel to its body (a direct WebSocket holds the
    // reader from the start, and an idle connection should not hold a channel).
    let (tx, inputs) = match reader {
        None => {
            let (tx, rx) = mpsc::channel(2);
            (Some(tx), Some(rx))
        }
        Some(_) => (None, None),
    };
    let body = SocketIoBody {
        reader,
        inputs,
        shared: engine.shared.clone(),
        done: false,
    };
    let response = HttpResponse::from(handshake.message_body(body.boxed())?);
    if let Some(held) = held {
        actix_web::rt::spawn(keepalive(engine.clone(), sio.clone(), held));
    }
    actix_web::rt::spawn(read_loop(stream, engine, tx, max));
    Ok(response)
}

async fn read_loop(
    stream: actix_ws::MessageStream,
    engine: Arc<EngineConnection>,
    mut probing: Option<mpsc::Sender<BodyInput>>,
    max_payload: usize,
) {
    let mut stream = stream
        .max_frame_size(max_payload)
        .aggregate_continuations()
        .max_continuation_size(max_payload);
    let outbox = engine.shared.outbox.clone();
    loop {
        let next = tokio::select! {
            _ = outbox.closed() => break,
            next = stream.recv() => next,
        };
        let message = match next {
            None | Some(Err(_)) => break,
            Some(Ok(message)) => message,
        };
        let packet = match &message {
            AggregatedMessage::Text(text) => match decode_packet(text) {
                Ok(packet) => packet,
                Err(error) => {
                    tracing::debug!(%error, "closing a Socket.IO WebSocket on a bad packet");
                    engine.inbound.lock().await.end();
                    return;
                }
            },
            AggregatedMessage::Binary(bytes) => EnginePacket::Binary(bytes.to_vec()),
            AggregatedMessage::Ping(_) | AggregatedMessage::Pong(_) => continue,
            AggregatedMessage::Close(_) => break,
        };
        if let Some(tx) = &probing {
            match packet {
                EnginePacket::Ping("probe") => {
                    if tx.send(BodyInput::Text("3probe".into())).await.is_err() {
                        break;
                    }
                    // Releases the GET still waiting, so the client can send `5`.
                    let _ = outbox.push(ByteString::from_static("6"));
                    continue;
                }
                EnginePacket::Upgrade => {
                    let reader = engine.reader().take();
                    let Some(reader) = reader else {
                        break;
                    };
                    if tx.send(BodyInput::Reader(reader)).await.is_err() {
                        break;
                    }
                    probing = None;
                    outbox.heard();
                    continue;
                }
                _ => {}
            }
        }
        // Boxed: a CONNECT waits on the SessionSupervisor, and an unboxed future
        // that large would sit in every connection's read loop for its whole life.
        let flow = Box::pin(async { engine.inbound.lock().await.on_packet(packet).await }).await;
        if flow == Flow::Close {
            return;
        }
    }
    if probing.is_some() {
        // The upgrade did not finish: the connection goes on polling.
        engine
            .upgrading
            .store(false, std::sync::atomic::Ordering::Release);
        return;
    }
    engine.inbound.lock().await.end();
}

/// The response body of a Socket.IO WebSocket: Engine.IO packets from the outbox
/// (v1 frames translated on the way, `socketio::drain`), as text frames.
struct SocketIoBody {
    /// None while an upgrade probes.
    reader: Option<OutboxReader>,
    /// What an upgrade's read loop hands over; None once closed (or never).
    inputs: Option<mpsc::Receiver<BodyInput>>,
    shared: Arc<Shared>,
    done: bool,
}

impl MessageBody for SocketIoBody {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut buf = BytesMut::new();
        loop {
            let mut progressed = false;
            while let Some(inputs) = &mut this.inputs {
                match inputs.poll_recv(cx) {
                    Poll::Ready(Some(BodyInput::Text(text))) => {
                        write_text(&mut buf, &text);
                        progressed = true;
                    }
                    Poll::Ready(Some(BodyInput::Reader(reader))) => {
                        this.reader = Some(reader);
                        progressed = true;
                    }
                    Poll::Ready(None) => this.inputs = None,
                    Poll::Pending => break,
                }
            }
            match &this.reader {
                Some(reader) => {
                    let mut packets = Vec::new();
                    if let Poll::Ready(end) = poll_drain(cx, reader, &this.shared, &mut packets) {
                        progressed = true;
                        for packet in &packets {
                            write_packet(&mut buf, packet);
                        }
                        if let End::Close(code, reason) = end {
                            write_close(&mut buf, code, reason);
                            this.done = true;
                        }
                    }
                }
                None if this.inputs.is_none() => {
                    // The upgrade was abandoned before `5`.
                    write_close(&mut buf, close::NORMAL, String::new());
                    this.done = true;
                }
                None => {}
            }
            if !buf.is_empty() || this.done {
                return Poll::Ready(Some(Ok(buf.freeze())));
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }
}

fn write_text(buf: &mut BytesMut, text: &str) {
    Parser::write_message(buf, text.as_bytes(), OpCode::Text, true, false);
}

/// Where a Socket.IO connection's frames and parked attachments hold their bytes
/// in the node's inbound budget. Nothing polls a hold while its bytes wait (unlike
/// a `/ws` frame guard's), so a shed closes the connection's outbox (1013) at once,
/// whichever transport it is on, rather than when its Session or its next packet
/// looks.
fn frame_holds(state: &AppState, outbox: &Outbox) -> Hold {
    struct CloseOnShed(Outbox);
    impl std::task::Wake for CloseOnShed {
        fn wake(self: Arc<Self>) {
            self.0
                .close_now(close::TRY_AGAIN_LATER, "node inbound budget");
        }
    }
    let holds = state.inbound.hold();
    holds.wake_on_shed(&std::task::Waker::from(Arc::new(CloseOnShed(
        outbox.clone(),
    ))));
    holds
}

/// A drained packet as its WebSocket frame: text, or, for an attachment (its polling
/// record `b<base64>`, socketio::binary), the binary frame of its bytes.
fn write_packet(buf: &mut BytesMut, packet: &str) {
    match crate::socketio::binary::record_bytes(packet) {
        Some(bytes) => Parser::write_message(buf, &bytes[..], OpCode::Binary, true, false),
        None => write_text(buf, packet),
    }
}

fn write_close(buf: &mut BytesMut, code: u16, mut reason: String) {
    if reason.len() > MAX_CLOSE_REASON_BYTES {
        let mut end = MAX_CLOSE_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    let reason = CloseReason {
        code: CloseCode::from(code),
        description: (!reason.is_empty()).then_some(reason),
    };
    Parser::write_close(buf, Some(reason), false);
}
