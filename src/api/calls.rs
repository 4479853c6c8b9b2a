//! The calls of the server API, one handler each (docs/api.md lists them).
//!
//! Every call is a POST with a JSON body (an empty body is `{}`), so one path reads,
//! bounds and decodes them all ([`read_call`]): the key first (401 before anything
//! of the body is looked at), then the key's bucket (429), then the body (413 past
//! `api.max_body_bytes`, 400 when it is not the JSON the call takes).
//!
//! Rooms are reached as a client's requests reach them: through the RoomSupervisor
//! of this node, which starts the room's actor here when it does not run (it then
//! follows the room's log like any other node's copy, and retires when idle). A
//! publish therefore takes the client's path: the room's behaviour, then its log
//! (Raft, from whichever node), idempotent with its key, and the same `message`
//! frame for every member on every node. Users are reached through Presence, which
//! asks every other node in the view for theirs.

use super::error::ApiError;
use super::Api;
use crate::actors::{
    ask, check_content, check_publish, AskError, NodeContext, PresenceMessage, RoomMessage,
    RoomSupervisorMessage,
};
use crate::cluster::wire::{UserCall, UserCallResult};
use crate::protocol::{
    close, validate_display_name, validate_idempotency_key, validate_user_id, ErrorBody, ErrorCode,
    MessageData, ReplyData, RoomName, UserInfo,
};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// The id and name of the sender of a publish or direct message without `from`.
pub const SYSTEM_USER: &str = "system";
/// Rooms one `broadcast` may name.
pub const MAX_BROADCAST_ROOMS: usize = 100;
/// Rooms one page of `rooms` lists at most (and by default).
pub const MAX_ROOMS_PAGE: usize = 1_000;
/// The longest close reason, in bytes (what fits a WebSocket close frame).
pub const MAX_CLOSE_REASON_BYTES: usize = 123;
/// How many times a call looks a room up again when the one it found had just retired.
const ROOM_ATTEMPTS: usize = 3;

type Answer = Result<HttpResponse, ApiError>;

/// Checks the key and its bucket, then reads and decodes the body.
async fn read_call<T: DeserializeOwned>(
    req: &HttpRequest,
    mut payload: web::Payload,
    api: &Api,
) -> Result<T, ApiError> {
    let authorization = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let Some(key) = api.keys.identify(authorization) else {
        api.ctx.metrics.limit_refused("api_key");
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "send one of the [api] keys as `Authorization: Bearer <key>`",
        ));
    };
    if let Err(wait) = api.keys.admit(key) {
        api.ctx.metrics.limit_refused("api_rate");
        return Err(ApiError::rate_limited(wait.as_millis() as u64));
    }
    let max = api.ctx.settings.api.max_body_bytes;
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(ApiError::too_large(max));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("could not read the body: {e}"),
            )
        })?;
        if body.len() + chunk.len() > max {
            return Err(ApiError::too_large(max));
        }
        body.extend_from_slice(&chunk);
    }
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    serde_json::from_slice(text).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("the body is not the JSON object this call takes: {e}"),
        )
    })
}

fn room_name(room: &str) -> Result<RoomName, ApiError> {
    RoomName::parse(room).map_err(ApiError::from)
}

fn user_id(id: &str) -> Result<String, ApiError> {
    validate_user_id(id).map_err(ApiError::from)
}

/// Who a publish or direct message is from, as the call gives it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sender {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// The sender shown to members: the given user (named as given, else by its id), or
/// the system user.
fn sender(from: Option<Sender>) -> Result<UserInfo, ApiError> {
    let from = from.unwrap_or_default();
    let id = match from.user_id {
        Some(id) => user_id(&id)?,
        None => SYSTEM_USER.to_owned(),
    };
    let name = match from.name {
        Some(name) => validate_display_name(&name)?,
        None => id.clone(),
    };
    Ok(UserInfo { id, name })
}

fn idempotency_key(key: Option<String>) -> Result<Option<String>, ApiError> {
    key.map(|k| validate_idempotency_key(&k))
        .transpose()
        .map_err(ApiError::from)
}

/// The room's actor on this node, started if it does not run here.
async fn room_actor(
    ctx: &NodeContext,
    room: &RoomName,
) -> Result<ractor::ActorRef<RoomMessage>, ErrorBody> {
    let rooms = ctx
        .rooms()
        .ok_or_else(|| ApiError::unanswered(AskError::Gone).0)?;
    let name = room.clone();
    ask(&rooms, |reply| RoomSupervisorMessage::Get {
        room: name,
        reply,
    })
    .await
    .map_err(|e| ApiError::unanswered(e).0)?
}

/// Asks the room's actor, looking it up again when the one found had just stopped.
async fn ask_room<T: Send + 'static>(
    ctx: &NodeContext,
    room: &RoomName,
    build: impl Fn(ractor::RpcReplyPort<T>) -> RoomMessage,
) -> Result<T, ErrorBody> {
    let mut last = AskError::Gone;
    for _ in 0..ROOM_ATTEMPTS {
        let actor = room_actor(ctx, room).await?;
        match ask(&actor, &build).await {
            Ok(answer) => return Ok(answer),
            Err(AskError::Gone) => last = AskError::Gone,
            Err(AskError::Timeout) => return Err(ApiError::unanswered(AskError::Timeout).0),
        }
    }
    Err(ApiError::unanswered(last).0)
}

/// Whether a room is known anywhere: it runs here, holds a message in its log, or
/// has a member on another node. Reads and presence of rooms nobody knows are 404,
/// and start no room actor.
fn room_known(ctx: &NodeContext, room: &RoomName) -> bool {
    if ctx.room_directory().get(room.as_str()).is_some() {
        return true;
    }
    let Some(ports) = ctx.ports() else {
        return false;
    };
    ports.log.read(room.as_str(), Some(u64::MAX)).seq > 0
        || !ports.presence.remote(room.as_str()).is_empty()
}

/// A publish's `content` and `data` (either may be absent, not both), as for
/// clients: a publish with only data has the content `""`.
fn body(content: Option<String>, data: &Value) -> Result<(String, Option<MessageData>), ApiError> {
    let data = MessageData::from_value(data);
    if content.is_none() && data.is_none() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "a publish needs `content`, `data` or both",
        ));
    }
    Ok((content.unwrap_or_default(), data))
}

fn unknown_room(room: &RoomName) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("room {room} has no member and no message"),
    )
}

/// One publish, through the room's actor on this node.
async fn publish_in(
    ctx: &NodeContext,
    room: &RoomName,
    from: &UserInfo,
    content: &str,
    data: &Option<MessageData>,
    key: &Option<String>,
    id: Option<&str>,
) -> Result<Value, ErrorBody> {
    let answer = ask_room(ctx, room, |reply| RoomMessage::ServerPublish {
        from: from.clone(),
        content: content.to_owned(),
        data: data.clone(),
        idempotency_key: key.clone(),
        id: id.map(str::to_owned),
        reply,
    })
    .await??;
    match answer {
        ReplyData::Publish {
            id,
            seq,
            ts,
            duplicate,
        } => Ok(json!({
            "room": room.as_str(),
            "id": id,
            "seq": seq,
            "ts": ts,
            "duplicate": duplicate,
        })),
        _ => Err(ErrorBody::new(
            ErrorCode::Internal,
            "the room answered a publish with something else",
        )),
    }
}

// ------------------------------------------------------------------------- calls

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishCall {
    room: String,
    /// May be absent when `data` is given.
    #[serde(default)]
    content: Option<String>,
    /// Protocol v1 `publish.data`: any JSON value; null is the same as absent.
    #[serde(default)]
    data: Value,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    from: Option<Sender>,
}

/// `POST /api/publish`.
pub async fn publish(req: HttpRequest, payload: web::Payload, api: web::Data<Api>) -> Answer {
    let call: PublishCall = read_call(&req, payload, &api).await?;
    let room = room_name(&call.room)?;
    let from = sender(call.from)?;
    let key = idempotency_key(call.idempotency_key)?;
    let (content, data) = body(call.content, &call.data)?;
    check_publish(&api.ctx, &content, data.as_ref())?;
    let published = publish_in(&api.ctx, &room, &from, &content, &data, &key, None).await?;
    Ok(HttpResponse::Ok().json(published))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastCall {
    rooms: Vec<String>,
    /// May be absent when `data` is given.
    #[serde(default)]
    content: Option<String>,
    /// Protocol v1 `publish.data`: any JSON value; null is the same as absent.
    #[serde(default)]
    data: Value,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    from: Option<Sender>,
}

/// `POST /api/broadcast`: one message to many rooms, a result per room.
pub async fn broadcast(req: HttpRequest, payload: web::Payload, api: web::Data<Api>) -> Answer {
    let call: BroadcastCall = read_call(&req, payload, &api).await?;
    if call.rooms.is_empty() || call.rooms.len() > MAX_BROADCAST_ROOMS {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("`rooms` names 1 to {MAX_BROADCAST_ROOMS} rooms"),
        ));
    }
    let mut rooms = Vec::new();
    let mut seen = BTreeSet::new();
    for room in &call.rooms {
        let room = room_name(room)?;
        if seen.insert(room.to_string()) {
            rooms.push(room);
        }
    }
    let from = sender(call.from)?;
    let key = idempotency_key(call.idempotency_key)?;
    let (content, data) = body(call.content, &call.data)?;
    check_publish(&api.ctx, &content, data.as_ref())?;
    // One message, one id in every room (as a client's `publish` with `rooms`).
    let id = uuid::Uuid::now_v7().to_string();
    let publishes = rooms
        .iter()
        .map(|room| publish_in(&api.ctx, room, &from, &content, &data, &key, Some(&id)));
    let results: Vec<Value> = futures_util::future::join_all(publishes)
        .await
        .into_iter()
        .zip(&rooms)
        .map(|(result, room)| match result {
            Ok(mut published) => {
                published["ok"] = json!(true);
                published
            }
            Err(error) => json!({ "room": room.as_str(), "ok": false, "error": error }),
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "id": id, "results": results })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectCall {
    to: String,
    content: String,
    #[serde(default)]
    from: Option<Sender>,
}

/// `POST /api/direct`: a direct message to every connection of a user, on any node.
pub async fn direct(req: HttpRequest, payload: web::Payload, api: web::Data<Api>) -> Answer {
    let call: DirectCall = read_call(&req, payload, &api).await?;
    let to = user_id(&call.to)?;
    let from = sender(call.from)?;
    check_content(&api.ctx, &call.content)?;
    let presence = api
        .ctx
        .presence()
        .ok_or_else(|| ApiError::unanswered(AskError::Gone))?;
    let target = to.clone();
    let answer = ask(&presence, |reply| PresenceMessage::Direct {
        from,
        to: target,
        content: call.content,
        reply,
    })
    .await
    .map_err(ApiError::unanswered)??;
    match answer {
        ReplyData::Direct { id, ts, delivered } => Ok(HttpResponse::Ok().json(json!({
            "to": to, "id": id, "ts": ts, "delivered": delivered,
        }))),
        _ => Err(ApiError::new(
            ErrorCode::Internal,
            "presence answered a direct message with something else",
        )),
    }
}

/// Does `call` on every connection of `user`, on every node.
async fn user_call(api: &Api, user: &str, call: UserCall) -> Result<UserCallResult, ApiError> {
    let presence = api
        .ctx
        .presence()
        .ok_or_else(|| ApiError::unanswered(AskError::Gone))?;
    let user = user.to_owned();
    ask(&presence, |reply| PresenceMessage::UserCall {
        user,
        call,
        reply,
    })
    .await
    .map_err(ApiError::unanswered)
}

fn offline(user: &str) -> ApiError {
    ApiError::new(
        ErrorCode::UserOffline,
        format!("{user} has no connection on any node"),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectCall {
    user_id: String,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/disconnect`: closes every connection of a user, with a close code and
/// reason.
pub async fn disconnect(req: HttpRequest, payload: web::Payload, api: web::Data<Api>) -> Answer {
    let call: DisconnectCall = read_call(&req, payload, &api).await?;
    let user = user_id(&call.user_id)?;
    let code = call.code.unwrap_or(close::DISCONNECTED);
    if code != close::NORMAL && !(4000..=4999).contains(&code) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "`code` is 1000 or 4000 to 4999",
        ));
    }
    let reason = call
        .reason
        .unwrap_or_else(|| "disconnected by the server".to_owned());
    if reason.len() > MAX_CLOSE_REASON_BYTES || reason.chars().any(char::is_control) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "`reason` is at most {MAX_CLOSE_REASON_BYTES} bytes with no control characters"
            ),
        ));
    }
    let result = user_call(&api, &user, UserCall::Disconnect { code, reason }).await?;
    if result.affected == 0 {
        return Err(offline(&user));
    }
    Ok(HttpResponse::Ok().json(json!({ "user_id": user, "disconnected": result.affected })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipCall {
    user_id: String,
    room: String,
}

/// `POST /api/subscribe` (`join`) and `/api/unsubscribe`: the user's connections,
/// on every node, join or leave a room.
async fn membership(
    req: HttpRequest,
    payload: web::Payload,
    api: web::Data<Api>,
    join: bool,
) -> Answer {
    let call: MembershipCall = read_call(&req, payload, &api).await?;
    let user = user_id(&call.user_id)?;
    let room = room_name(&call.room)?;
    let op = if join {
        UserCall::Join {
            room: room.to_string(),
        }
    } else {
        UserCall::Leave {
            room: room.to_string(),
        }
    };
    let result = user_call(&api, &user, op).await?;
    if result.affected == 0 {
        return Err(match result.refused {
            Some(refused) => ApiError(refused),
            None => offline(&user),
        });
    }
    Ok(HttpResponse::Ok().json(json!({
        "user_id": user,
        "room": room.as_str(),
        "connections": result.affected,
    })))
}

/// `POST /api/subscribe`.
pub async fn subscribe(req: HttpRequest, payload: web::Payload, api: web::Data<Api>) -> Answer {
    membership(req, payload, api, true).await
}

/// `POST /api/unsubscribe`.
pub async fn unsubscribe(req: HttpRequest, payload: web::Payload, api: web::Data<Api>) -> Answer {
    membership(req, payload, api, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceCall {
    room: String,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

/// `POST /api/presence`: the room's members on every node, a page at a time.
pub async fn presence(req: HttpRequest, payload: web::Payload, api: web::Data<Api>) -> Answer {
    let call: PresenceCall = read_call(&req, payload, &api).await?;
    let room = room_name(&call.room)?;
    if let Some(after) = &call.after {
        user_id(after)?;
    }
    if !room_known(&api.ctx, &room) {
        return Err(unknown_room(&room));
    }
    let page = ask_room(&api.ctx, &room, |reply| RoomMessage::Presence {
        after: call.after.clone(),
        limit: call.limit,
        count_only: false,
        reply,
    })
    .await?;
    let mut body = serde_json::to_value(&page).unwrap_or_else(|_| json!({}));
    if let ReplyData::Presence { members, count, .. } = &page {
        body["count"] = json!(count.unwrap_or(members.len()));
        body["more"] = json!(body["more"].as_bool().unwrap_or(false));
    }
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomCall {
    room: String,
}

/// `POST /api/presence_count`: members and connections of the room on every node.
pub async fn presence_count(
    req: HttpRequest,
    payload: web::Payload,
    api: web::Data<Api>,
) -> Answer {
    let call: RoomCall = read_call(&req, payload, &api).await?;
    let room = room_name(&call.room)?;
    if !room_known(&api.ctx, &room) {
        return Err(unknown_room(&room));
    }
    let count = ask_room(&api.ctx, &room, |reply| RoomMessage::Presence {
        after: None,
        limit: None,
        count_only: true,
        reply,
    })
    .await?;
    Ok(HttpResponse::Ok().json(count))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryCall {
    room: String,
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    limit: Option<u32>,
}

/// `POST /api/history`: the room's messages, paged as a client's `history` is.
pub async fn history(req: HttpRequest, payload: web::Payload, api: web::Data<Api>) -> Answer {
    let call: HistoryCall = read_call(&req, payload, &api).await?;
    let room = room_name(&call.room)?;
    if !room_known(&api.ctx, &room) {
        return Err(unknown_room(&room));
    }
    let page = ask_room(&api.ctx, &room, |reply| RoomMessage::History {
        session: None,
        before: call.before,
        after: call.after,
        limit: call.limit,
        reply,
    })
    .await??;
    let mut body = serde_json::to_value(&page).unwrap_or_else(|_| json!({}));
    body["more"] = json!(body["more"].as_bool().unwrap_or(false));
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsCall {
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `POST /api/rooms`: the rooms with members on any node, with their member and
/// connection counts, sorted by name, a page at a time.
pub async fn rooms(req: HttpRequest, payload: web::Payload, api: web::Data<Api>) -> Answer {
    let call: RoomsCall = read_call(&req, payload, &api).await?;
    let limit = call
        .limit
        .unwrap_or(MAX_ROOMS_PAGE)
        .clamp(1, MAX_ROOMS_PAGE);
    let ctx = &api.ctx;
    let mut names: BTreeSet<String> = ctx.room_directory().names().into_iter().collect();
    if let Some(ports) = ctx.ports() {
        names.extend(ports.presence.remote_rooms());
    }
    let after = call.after.unwrap_or_default();
    let mut listed = Vec::new();
    let mut more = false;
    let candidates = names.into_iter().filter(|name| *name > after);
    for name in candidates {
        if listed.len() == limit {
            more = true;
            break;
        }
        let Ok(room) = RoomName::parse(&name) else {
            continue;
        };
        let (members, connections) = match ctx.room_directory().get(room.as_str()) {
            Some(actor) => match ask(&actor, |reply| RoomMessage::Presence {
                after: None,
                limit: None,
                count_only: true,
                reply,
            })
            .await
            {
                Ok(ReplyData::PresenceCount {
                    count, connections, ..
                }) => (count, connections),
                _ => continue,
            },
            None => {
                let remote = ctx
                    .ports()
                    .map(|p| p.presence.remote(room.as_str()))
                    .unwrap_or_default();
                let users: BTreeSet<&str> = remote
                    .iter()
                    .filter(|m| m.connections > 0)
                    .map(|m| m.user.id.as_str())
                    .collect();
                let connections = remote.iter().map(|m| u64::from(m.connections)).sum();
                (users.len(), connections)
            }
        };
        if members == 0 {
            continue;
        }
        listed.push(json!({ "room": name, "members": members, "connections": connections }));
    }
    let mut body = json!({ "rooms": listed, "more": more });
    if more {
        if let Some(last) = listed_last(&body) {
            body["after"] = json!(last);
        }
    }
    Ok(HttpResponse::Ok().json(body))
}

fn listed_last(body: &Value) -> Option<String> {
    body["rooms"]
        .as_array()?
        .last()?
        .get("room")?
        .as_str()
        .map(str::to_owned)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserQuery {
    user_id: String,
}

/// `POST /api/user`: every connection of a user, on every node.
pub async fn user(req: HttpRequest, payload: web::Payload, api: web::Data<Api>) -> Answer {
    let call: UserQuery = read_call(&req, payload, &api).await?;
    let user = user_id(&call.user_id)?;
    let mut result = user_call(&api, &user, UserCall::Connections).await?;
    if result.connections.is_empty() {
        return Err(offline(&user));
    }
    result
        .connections
        .sort_by(|a, b| (a.connected_at, &a.session).cmp(&(b.connected_at, &b.session)));
    Ok(HttpResponse::Ok().json(json!({ "user_id": user, "connections": result.connections })))
}

/// `GET /api/openapi.yaml`: the document describing all of the above.
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/yaml")
        .body(super::OPENAPI)
}

/// Any other path under `/api/`.
pub async fn unknown(req: HttpRequest) -> Answer {
    Err(ApiError::new(
        ErrorCode::NotFound,
        format!("the server API has no call {}", req.path()),
    ))
}
