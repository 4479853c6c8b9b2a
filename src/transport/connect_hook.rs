//! The connect hook at the WebSocket upgrade (src/hooks/connect.rs says what is
//! asked and answered, and who wins): after the gate, before the connection cap.
//! Also what the Socket.IO handshake keeps for its CONNECTs ([`connect_input`]).

use super::http::AppState;
use crate::auth::Identity;
use crate::config::AuthMode;
use crate::hooks::connect::{ConnectHook, ConnectInput, ConnectRefusal, ConnectRequest};
use crate::protocol::RoomName;
use actix_web::{HttpRequest, HttpResponse};
use serde_json::json;
use std::net::IpAddr;

/// The connection's identity and the rooms it joins at once, or the HTTP answer that
/// refuses it (boxed: an `HttpResponse` is large).
pub type Connecting = Result<(Identity, Vec<RoomName>), Box<HttpResponse>>;

/// What `hook` is told of `req`: the headers it passes, the query, the client's
/// address.
pub fn connect_input(
    hook: &ConnectHook,
    req: &HttpRequest,
    client: Option<IpAddr>,
) -> ConnectInput {
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
    ConnectInput {
        headers,
        query: req.query_string().to_owned(),
        remote_addr: client,
    }
}

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
    let input = connect_input(hook, req, client);
    let verified = jwt.then(|| identity.user.clone());
    let request = ConnectRequest {
        input: &input,
        user: verified.as_ref(),
        auth: None,
        namespace: None,
    };
    let (identity, rooms) = match hook
        .admit(request, &settings.node.name, identity, jwt)
        .await
    {
        Ok(allowed) => allowed,
        Err(ConnectRefusal::Denied { status, reason }) => {
            return Err(Box::new(denied(status, &reason)))
        }
        Err(ConnectRefusal::Unavailable(reason)) => return Err(Box::new(unavailable(&reason))),
    };
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
