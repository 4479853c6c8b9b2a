//! The connect hook at the WebSocket upgrade (src/hooks/connect.rs says what is
//! asked and answered): after the gate, before the connection cap.
//!
//! Who wins: with `[auth] mode = "jwt"` the token is verified first (a bad one is 401
//! before the backend is asked) and its identity is the connection's; the hook may
//! still deny, and may name rooms to join. In anonymous mode the hook's `user_id` and
//! `name` are the identity (an allow without `user_id` keeps the query's, or the
//! guest id made for it).

use super::http::AppState;
use crate::auth::Identity;
use crate::config::{AuthMode, FailurePolicy};
use crate::hooks::connect::{ConnectRequest, ConnectVerdict};
use crate::protocol::{validate_display_name, validate_user_id, RoomName};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::json;
use std::net::IpAddr;

/// The connection's identity and the rooms it joins at once, or the HTTP answer that
/// refuses it (boxed: an `HttpResponse` is large).
pub type Connecting = Result<(Identity, Vec<RoomName>), Box<HttpResponse>>;

/// Asks the connect hook, when there is one, about an upgrade the gate admitted as
/// `identity`.
pub async fn ask_connect_hook(
    state: &AppState,
    req: &HttpRequest,
    identity: Identity,
    client: Option<IpAddr>,
) -> Connecting {
    let Some(hook) = state.ctx.hooks.connect.as_ref() else {
        return Ok((identity, Vec::new()));
    };
    let settings = &state.ctx.settings;
    let jwt = settings.auth.mode == AuthMode::Jwt;
    let headers = hook
        .pass_headers()
        .iter()
        .filter_map(|name| {
            let values: Vec<&str> = req
                .headers()
                .get_all(name.as_str())
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| (name.clone(), values.join(", ")))
        })
        .collect();
    let request = ConnectRequest {
        headers,
        query: req.query_string(),
        remote_addr: client,
        user: jwt.then_some(&identity.user),
    };
    let verdict = hook.ask(request, &settings.node.name).await;
    let (user_id, name, rooms) = match verdict {
        ConnectVerdict::Allow {
            user_id,
            name,
            rooms,
        } => (user_id, name, rooms),
        ConnectVerdict::Deny { status, reason } => return Err(Box::new(denied(status, &reason))),
        ConnectVerdict::Failed(reason) => {
            return match hook.failure {
                FailurePolicy::FailOpen => Ok((identity, Vec::new())),
                FailurePolicy::FailClosed => Err(Box::new(unavailable(&reason))),
            }
        }
    };
    let mut identity = identity;
    if !jwt {
        if let Some(id) = user_id {
            let Ok(id) = validate_user_id(&id) else {
                return failed_answer(
                    hook.failure,
                    identity,
                    "the connect hook's user_id is not a valid user id",
                );
            };
            identity.user.name = id.clone();
            identity.user.id = id;
            identity.name_given = false;
        }
        if let Some(name) = name {
            let Ok(name) = validate_display_name(&name) else {
                return failed_answer(
                    hook.failure,
                    identity,
                    "the connect hook's name is not a valid name",
                );
            };
            identity.user.name = name;
            identity.name_given = true;
        }
    }
    let max = settings.limits.max_rooms_per_session;
    let rooms: Vec<RoomName> = rooms
        .iter()
        .filter_map(|room| match RoomName::parse(room) {
            Ok(room) => Some(room),
            Err(_) => {
                tracing::debug!(%room, "connect hook named a room that is not a room name; skipped");
                None
            }
        })
        .take(max)
        .collect();
    Ok((identity, rooms))
}

/// An allow that cannot be used is a failure of the hook.
fn failed_answer(policy: FailurePolicy, identity: Identity, reason: &str) -> Connecting {
    tracing::debug!(reason, "connect hook answer unusable");
    match policy {
        FailurePolicy::FailOpen => Ok((identity, Vec::new())),
        FailurePolicy::FailClosed => Err(Box::new(unavailable(reason))),
    }
}

fn denied(status: u16, reason: &str) -> HttpResponse {
    let (mut response, code) = if status == 401 {
        (HttpResponse::Unauthorized(), "unauthorized")
    } else {
        (HttpResponse::Forbidden(), "forbidden")
    };
    response.json(json!({
        "error": { "code": code, "reason": "connect_hook", "message": reason }
    }))
}

fn unavailable(reason: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({
        "error": {
            "code": "unavailable",
            "reason": "connect_hook",
            "message": format!("{reason}; retry"),
        }
    }))
}
