//! The WebSocket endpoint: upgrade, then one read loop per connection.
//!
//! The upgrade checks readiness (what `/readyz` says, [`AppState::not_ready`]), then passes the [`Gate`](super::gate::Gate) (origin,
//! per-address limits, who the client is), then the connection cap, creates the
//! connection's [`Outbox`] (its response body, [`OutboundBody`], drains it) and asks
//! the SessionSupervisor for a Session actor. The read loop then runs on this actix worker
//! (actix-ws's `MessageStream` is not `Send`), decodes each text frame and casts it to
//! the Session. Each frame travels with an in-flight permit, taken before the frame is
//! read, so a client that floods is held back by TCP rather than queued in memory.
//!
//! The read loop ends when the client closes, the TCP connection drops, the client
//! stays silent past `heartbeat.timeout_ms` (close 4008), a frame is over
//! `limits.max_frame_bytes` (close 1009), or the outbox starts closing for any other
//! reason. It then stops the Session; rooms and presence notice through their monitors.

use super::connect_hook::ask_connect_hook;
use super::frame_guard::{guarded, Trip, Tripped};
use super::gate::{IpSlot, Refused};
use super::http::AppState;
use super::inbound_budget::Hold;
use super::outbound::{worker_relay, OutboundBody};
use crate::actors::{
    ask, FrameHolds, InflightPermit, Outbox, OutboxBounds, SessionArgs, SessionMessage,
    SessionSupervisorMessage,
};
use crate::auth::{Identity, Refusal};
use crate::protocol::{close, decode_client_frame, ErrorBody, ErrorCode, FrameError};
use actix_web::body::MessageBody;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, ProtocolError};
use ractor::ActorRef;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Frames a connection may have waiting in its Session's mailbox.
const MAX_INFLIGHT_FRAMES: usize = 32;

/// `GET /ws?user=ID&name=NAME` (anonymous) or `GET /ws?token=JWT` (jwt mode, or the
/// token in `Authorization: Bearer`).
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    // The same test as /readyz: a node that could not order a message (starting, no
    // quorum) or is leaving takes no client, which goes to another node instead of
    // joining rooms that refuse it.
    if let Some(not_ready) = state.not_ready() {
        return Ok(refuse_unavailable(&not_ready.message()));
    }
    let mut admitted = match state.gate.admit(&req) {
        Ok(admitted) => admitted,
        Err(refused) => {
            if let Refused::Identity(Refusal::Unauthorized(failure)) = &refused {
                state.ctx.metrics.auth_failure(failure.reason.as_str());
            }
            return Ok(refused.response());
        }
    };
    // The connect hook, when `[hooks] connect_url` is set: allow, deny, rooms to join.
    let identity = std::mem::replace(&mut admitted.identity, Identity::placeholder());
    let (identity, initial_rooms) =
        match ask_connect_hook(&state, &req, identity, admitted.client).await {
            Ok(allowed) => allowed,
            Err(refused) => return Ok(*refused),
        };
    let Identity {
        user,
        name_given,
        grants,
    } = identity;
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        return Ok(refuse_unavailable("the node is at its connection limit"));
    };
    let Some(sessions) = state.ctx.sessions() else {
        return Ok(refuse_unavailable("the node is restarting its sessions"));
    };
    // Refuse oversized frames from their headers, and hold what is still arriving
    // against the node's budget (see frame_guard.rs).
    let tripped = Tripped::new();
    let hold = state.inbound.hold();
    // What the frames read and waiting for the Session hold: shed with the guard's.
    let waiting = hold.sibling();
    let body = guarded(
        body.into_inner(),
        state.ctx.settings.limits.max_frame_bytes,
        hold,
        tripped.clone(),
    );
    // actix-ws reads (`MessageStream`); the response body is ours, drawn straight from
    // the outbox (outbound.rs), so actix-ws's own write half is never made.
    let mut handshake = actix_http::ws::handshake(req.head())?;
    let stream = actix_ws::MessageStream::new(body);
    let settings = &state.ctx.settings;
    let bounds = OutboxBounds {
        frames: settings.limits.outbound_queue,
        bytes: settings.limits.outbound_bytes,
    };
    let (outbox, reader) = Outbox::new(
        bounds,
        state.ctx.outbound.clone(),
        state.ctx.metrics.clone(),
        Some(worker_relay()),
    );
    let body = OutboundBody::new(
        reader,
        Duration::from_millis(settings.heartbeat.interval_ms),
    );
    let response = HttpResponse::from(handshake.message_body(body.boxed())?);
    let session_id = uuid::Uuid::new_v4().simple().to_string();
    let args = SessionArgs {
        id: session_id.clone(),
        user: user.clone(),
        name_given,
        grants,
        outbox: outbox.clone(),
        initial_rooms,
    };
    let session = match ask(&sessions, |reply| SessionSupervisorMessage::Open {
        args,
        reply,
    })
    .await
    {
        Ok(Ok(session)) => session,
        _ => {
            outbox.close_now(close::INTERNAL_ERROR, "could not start a session");
            return Ok(refuse_unavailable("could not start a session"));
        }
    };
    tracing::debug!(session = %session_id, user = %user.id, "connected");
    let limits = ReadLimits {
        max_frame_bytes: settings.limits.max_frame_bytes,
        silence: Duration::from_millis(settings.heartbeat.timeout_ms),
        tripped,
        waiting,
    };
    let held = Held {
        _connection: permit,
        _address: admitted.slot,
    };
    actix_web::rt::spawn(read_loop(stream, session, outbox, limits, held));
    Ok(response)
}

fn refuse_unavailable(message: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({
        "error": { "code": "unavailable", "message": message }
    }))
}

/// What a connection holds until its read loop ends: its place under
/// `limits.max_connections` and under `rate_limit.connections_per_ip`.
struct Held {
    _connection: OwnedSemaphorePermit,
    _address: IpSlot,
}

struct ReadLimits {
    max_frame_bytes: usize,
    /// `heartbeat.timeout_ms`: a client silent this long is closed with 4008.
    silence: Duration,
    /// Why the frame guard failed the stream, when it did.
    tripped: Arc<Tripped>,
    /// A sibling of the frame guard's hold: each frame read takes one of its own
    /// until its Session takes the frame.
    waiting: Hold,
}

async fn read_loop(
    stream: actix_ws::MessageStream,
    session: ActorRef<SessionMessage>,
    outbox: Outbox,
    limits: ReadLimits,
    _held: Held,
) {
    let mut stream = stream
        .max_frame_size(limits.max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(limits.max_frame_bytes);
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT_FRAMES));
    // The permit the next frame will travel with, taken before the frame is read: a
    // client with MAX_INFLIGHT_FRAMES frames still queued waits here, held back by TCP,
    // and nothing decoded is held while it waits.
    let mut permit = None;
    let mut silent = std::pin::pin!(tokio::time::sleep(limits.silence));
    loop {
        if permit.is_none() {
            permit = tokio::select! {
                _ = outbox.closed() => break,
                taken = inflight.clone().acquire_owned() => match taken {
                    Ok(taken) => Some(taken),
                    Err(_) => break,
                },
            };
        }
        let next = tokio::select! {
            _ = outbox.closed() => break,
            _ = silent.as_mut() => {
                // The deadline is re-armed here, not per frame: frames only stamp
                // the outbox, and the deadline moves on from the last stamp.
                let quiet_until = outbox.last_heard() + limits.silence;
                if std::time::Instant::now() >= quiet_until {
                    outbox.close_now(close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                    break;
                }
                silent.as_mut().reset(quiet_until.into());
                continue;
            }
            next = stream.recv() => next,
        };
        outbox.heard();
        // What the frame holds while it waits: its text (decoded, about as much).
        let mut read_bytes = 0;
        let decoded = match next {
            None => break,
            Some(Err(error)) => {
                let (code, reason) = match (&error, limits.tripped.why()) {
                    (_, Some(Trip::Oversized)) => (close::MESSAGE_TOO_BIG, "frame too big"),
                    (_, Some(Trip::Shed)) => (close::TRY_AGAIN_LATER, "node inbound budget"),
                    (ProtocolError::Overflow, _) => (close::MESSAGE_TOO_BIG, "frame too big"),
                    (ProtocolError::Io(e), _) if e.to_string().contains("continuation size") => {
                        (close::MESSAGE_TOO_BIG, "frame too big")
                    }
                    (ProtocolError::Io(e), _) if e.kind() == std::io::ErrorKind::InvalidData => {
                        (close::INVALID_PAYLOAD, "text frames must be UTF-8")
                    }
                    // The connection dropped mid-frame: the client is gone.
                    (ProtocolError::Io(_), _) => break,
                    _ => (close::PROTOCOL_ERROR, "protocol error"),
                };
                tracing::debug!(%error, code, "closing on a websocket protocol error");
                outbox.close_now(code, reason);
                break;
            }
            Some(Ok(message)) => match message {
                AggregatedMessage::Text(text) => {
                    read_bytes = text.len() as u64;
                    decode_client_frame(&text)
                }
                AggregatedMessage::Binary(_) => Err(FrameError {
                    reference: None,
                    error: ErrorBody::new(
                        ErrorCode::BadRequest,
                        "binary frames are not supported; send JSON text frames",
                    ),
                }),
                AggregatedMessage::Ping(payload) => {
                    outbox.pong(payload);
                    continue;
                }
                AggregatedMessage::Pong(_) => continue,
                AggregatedMessage::Close(_) => {
                    outbox.close_now(close::NORMAL, "");
                    break;
                }
            },
        };
        let Some(slot) = permit.take() else {
            break;
        };
        // A binary or empty frame waits with nothing to count.
        let waiting = match read_bytes {
            0 => None,
            bytes => match limits.waiting.hold(bytes) {
                Some(waiting) => Some(waiting),
                None => {
                    outbox.close_now(close::TRY_AGAIN_LATER, "node inbound budget");
                    break;
                }
            },
        };
        let permit = InflightPermit::new(slot, waiting);
        if session
            .cast(SessionMessage::Inbound(decoded, permit))
            .is_err()
        {
            break;
        }
    }
    session.stop(Some("connection closed".to_owned()));
}
