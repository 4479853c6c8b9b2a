//! The WebSocket endpoint: upgrade, then one read loop per connection.
//!
//! The upgrade checks readiness, the connection cap and the query (`user`, `name`),
//! starts the connection's writer task ([`spawn_writer`]) and asks the
//! SessionSupervisor for a Session actor. The read loop then runs on this actix worker
//! (actix-ws's `MessageStream` is not `Send`), decodes each text frame and casts it to
//! the Session. It takes an in-flight permit per frame, so a client that floods is
//! held back by TCP rather than queued in memory.
//!
//! The read loop ends when the client closes, the TCP connection drops, the client
//! stays silent past `heartbeat.timeout_ms` (close 4008), a frame is over
//! `limits.max_frame_bytes` (close 1009), or the outbox starts closing for any other
//! reason. It then stops the Session; rooms and presence notice through their monitors.

use super::frame_guard::FrameGuard;
use super::http::AppState;
use crate::actors::{
    ask, spawn_writer, Outbox, SessionArgs, SessionMessage, SessionSupervisorMessage,
};
use crate::protocol::{
    close, decode_client_frame, validate_display_name, validate_user_id, ErrorBody, ErrorCode,
    FrameError, UserInfo,
};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, ProtocolError};
use ractor::ActorRef;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Frames a connection may have waiting in its Session's mailbox.
const MAX_INFLIGHT_FRAMES: usize = 32;

/// `GET /ws?user=ID&name=NAME`.
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    if !state.ready.load(Ordering::Acquire) {
        return Ok(refuse_unavailable("the node is not accepting connections"));
    }
    let (user, name_given) = match user_from_query(req.query_string()) {
        Ok(found) => found,
        Err(error) => return Ok(HttpResponse::BadRequest().json(json!({ "error": error }))),
    };
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        return Ok(refuse_unavailable("the node is at its connection limit"));
    };
    let Some(sessions) = state.ctx.sessions() else {
        return Ok(refuse_unavailable("the node is restarting its sessions"));
    };
    // Refuse oversized frames from their headers (see frame_guard.rs).
    let oversized = Arc::new(AtomicBool::new(false));
    let guarded = FrameGuard::new(
        body.into_inner(),
        state.ctx.settings.limits.max_frame_bytes,
        oversized.clone(),
    );
    let boxed: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<web::Bytes, actix_web::error::PayloadError>>>,
    > = Box::pin(guarded);
    let mut guarded = actix_web::dev::Payload::Stream { payload: boxed };
    let body = web::Payload::from_request(&req, &mut guarded).await?;
    let (response, ws, stream) = actix_ws::handle(&req, body)?;
    let settings = &state.ctx.settings;
    let outbox = spawn_writer(
        ws,
        settings.limits.outbound_queue,
        Duration::from_millis(settings.heartbeat.interval_ms),
    );
    let session_id = uuid::Uuid::new_v4().simple().to_string();
    let args = SessionArgs {
        id: session_id.clone(),
        user: user.clone(),
        name_given,
        outbox: outbox.clone(),
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
        oversized,
    };
    actix_web::rt::spawn(read_loop(stream, session, outbox, limits, permit));
    Ok(response)
}

fn refuse_unavailable(message: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({
        "error": { "code": "unavailable", "message": message }
    }))
}

/// Reads `user` and `name` from the query; a guest id is made up when `user` is absent.
/// The second value is false when no `name` was given (the name is then the user's
/// current one if it is online, else its id).
fn user_from_query(query: &str) -> Result<(UserInfo, bool), ErrorBody> {
    let params = web::Query::<HashMap<String, String>>::from_query(query)
        .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, format!("bad query string: {e}")))?;
    let id = match params.get("user") {
        Some(id) => validate_user_id(id)?,
        None => format!("guest-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
    };
    let (name, name_given) = match params.get("name") {
        Some(name) => (validate_display_name(name)?, true),
        None => (id.clone(), false),
    };
    Ok((UserInfo { id, name }, name_given))
}

struct ReadLimits {
    max_frame_bytes: usize,
    silence: Duration,
    /// Set by the [`FrameGuard`] when it refused a frame by its header.
    oversized: Arc<AtomicBool>,
}

async fn read_loop(
    stream: actix_ws::MessageStream,
    session: ActorRef<SessionMessage>,
    outbox: Outbox,
    limits: ReadLimits,
    _connection: OwnedSemaphorePermit,
) {
    let mut stream = stream
        .max_frame_size(limits.max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(limits.max_frame_bytes);
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT_FRAMES));
    loop {
        let next = tokio::select! {
            _ = outbox.closed() => break,
            next = tokio::time::timeout(limits.silence, stream.recv()) => next,
        };
        let decoded = match next {
            Err(_silent) => {
                outbox.close_now(close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(error))) => {
                let (code, reason) = match &error {
                    _ if limits.oversized.load(Ordering::Acquire) => {
                        (close::MESSAGE_TOO_BIG, "frame too big")
                    }
                    ProtocolError::Overflow => (close::MESSAGE_TOO_BIG, "frame too big"),
                    ProtocolError::Io(e) if e.to_string().contains("continuation size") => {
                        (close::MESSAGE_TOO_BIG, "frame too big")
                    }
                    ProtocolError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        (close::INVALID_PAYLOAD, "text frames must be UTF-8")
                    }
                    // The connection dropped mid-frame: the client is gone.
                    ProtocolError::Io(_) => break,
                    _ => (close::PROTOCOL_ERROR, "protocol error"),
                };
                tracing::debug!(%error, code, "closing on a websocket protocol error");
                outbox.close_now(code, reason);
                break;
            }
            Ok(Some(Ok(message))) => match message {
                AggregatedMessage::Text(text) => decode_client_frame(&text),
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
        let permit = tokio::select! {
            _ = outbox.closed() => break,
            permit = inflight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        if session
            .cast(SessionMessage::Inbound(decoded, permit))
            .is_err()
        {
            break;
        }
    }
    session.stop(Some("connection closed".to_owned()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_gives_user_or_a_guest() {
        let (user, given) = user_from_query("user=alice&name=Alice%20A").unwrap();
        assert_eq!((user.id.as_str(), user.name.as_str()), ("alice", "Alice A"));
        assert!(given);
        let (guest, given) = user_from_query("").unwrap();
        assert!(guest.id.starts_with("guest-"));
        assert_eq!(guest.name, guest.id);
        assert!(!given);
        assert_eq!(
            user_from_query("user=a%20b").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            user_from_query(&format!("name={}", "x".repeat(65)))
                .unwrap_err()
                .code,
            ErrorCode::TooLong
        );
    }
}
