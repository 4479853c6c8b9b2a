//! The Rust floor: the smallest tokio + tungstenite broadcast server that speaks the
//! part of hubbub protocol v1 the benchmark uses. No actors, no framework, no limits:
//! how fast this machine can do the job at all, for hubbub to be measured against.
//!
//! The subset: `welcome` on connect; `join`, `leave` and `publish` requests, each
//! answered with a `reply` carrying its `ref`; `message` broadcasts to every member of
//! the room (the publisher included, before its reply), with one `seq` per room. The
//! user id is `?user=` from the upgrade request. Frames have hubbub's shapes and field
//! order, so clients parse them the same way.
//!
//! Rooms are one map behind one mutex; a broadcast is encoded once and the same
//! bytes are queued to every member. Each connection reads into a 4 KiB buffer and has
//! an unbounded queue drained by a writer task: nothing is ever refused or dropped,
//! unlike hubbub, whose per-connection queue is bounded and closes slow consumers.

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Bytes of each connection's read buffer.
const READ_BUFFER: usize = 4096;

type Outbox = mpsc::UnboundedSender<Message>;

#[derive(Default)]
struct Room {
    seq: u64,
    members: HashMap<u64, Outbox>,
}

type Rooms = Arc<Mutex<HashMap<String, Room>>>;

/// A client frame: only the fields the subset reads.
#[derive(Deserialize)]
struct ClientFrame {
    #[serde(rename = "type")]
    kind: String,
    room: Option<String>,
    content: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct User<'a> {
    id: &'a str,
    name: &'a str,
}

/// A broadcast, in hubbub's field order.
#[derive(Serialize)]
struct MessageFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    id: String,
    seq: u64,
    from: User<'a>,
    content: &'a str,
    ts: u64,
}

/// Accepts connections on `listener` until it fails.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let rooms = Rooms::default();
    let mut next_id = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        next_id += 1;
        tokio::spawn(connection(stream, next_id, rooms.clone()));
    }
}

// tungstenite's handshake callback fixes the closure's error type.
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, id: u64, rooms: Rooms) {
    let _ = stream.set_nodelay(true);
    let mut user = format!("guest-{id}");
    let callback = |request: &Request, response: Response| {
        let query = request.uri().query().unwrap_or("");
        if let Some(given) = query.split('&').find_map(|pair| pair.strip_prefix("user=")) {
            user = given.to_owned();
        }
        Ok(response)
    };
    // tungstenite allocates its read buffer up front (128 KiB by default); the floor's
    // clients send small frames.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config));
    let Ok(ws) = upgrade.await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(first).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let welcome = serde_json::json!({
        "type": "welcome", "session": format!("{id:032x}"), "user": {"id": user, "name": user},
        "node": "rust-floor", "protocol": 1, "heartbeat_ms": 25000
    });
    let _ = tx.send(Message::text(welcome.to_string()));
    let mut joined: Vec<String> = Vec::new();
    while let Some(Ok(frame)) = source.next().await {
        let text = match frame {
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue,
        };
        let (answer, reference) = match serde_json::from_str::<ClientFrame>(&text) {
            Ok(request) => (
                handle(&request, id, &user, &tx, &rooms, &mut joined),
                request.reference,
            ),
            Err(_) => (Err("bad_request"), None),
        };
        let reply = match (answer, reference) {
            (Ok(data), Some(r)) => {
                serde_json::json!({"type": "reply", "ref": r, "ok": true, "data": data})
            }
            (Ok(data), None) => serde_json::json!({"type": "reply", "ok": true, "data": data}),
            (Err(code), Some(r)) => {
                serde_json::json!({"type": "reply", "ref": r, "ok": false, "error": {"code": code, "message": code}})
            }
            (Err(code), None) => {
                serde_json::json!({"type": "error", "error": {"code": code, "message": code}})
            }
        };
        let _ = tx.send(Message::text(reply.to_string()));
    }
    if let Ok(mut rooms) = rooms.lock() {
        for name in joined {
            if let Some(room) = rooms.get_mut(&name) {
                room.members.remove(&id);
            }
        }
    }
}

/// Carries out one request; the reply's data, or an error code.
fn handle(
    request: &ClientFrame,
    id: u64,
    user: &str,
    tx: &Outbox,
    rooms: &Rooms,
    joined: &mut Vec<String>,
) -> Result<serde_json::Value, &'static str> {
    let name = request.room.as_deref().ok_or("bad_request")?;
    let mut rooms = rooms.lock().map_err(|_| "internal")?;
    match request.kind.as_str() {
        "join" => {
            let room = rooms.entry(name.to_owned()).or_default();
            room.members.insert(id, tx.clone());
            if !joined.iter().any(|j| j == name) {
                joined.push(name.to_owned());
            }
            Ok(
                serde_json::json!({"room": name, "seq": room.seq, "history": [], "members": [], "gap": false}),
            )
        }
        "leave" => {
            let room = rooms.get_mut(name).ok_or("not_joined")?;
            room.members.remove(&id).ok_or("not_joined")?;
            joined.retain(|j| j != name);
            Ok(serde_json::json!({"room": name}))
        }
        "publish" => {
            let content = request.content.as_deref().ok_or("bad_request")?;
            let room = rooms.get_mut(name).ok_or("not_joined")?;
            if !room.members.contains_key(&id) {
                return Err("not_joined");
            }
            room.seq += 1;
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let message_id = format!("{:08x}-0000-7000-8000-{:012x}", id as u32, room.seq);
            let frame = MessageFrame {
                kind: "message",
                room: name,
                id: message_id.clone(),
                seq: room.seq,
                from: User {
                    id: user,
                    name: user,
                },
                content,
                ts,
            };
            let encoded: Utf8Bytes = serde_json::to_string(&frame)
                .map_err(|_| "internal")?
                .into();
            for member in room.members.values() {
                let _ = member.send(Message::Text(encoded.clone()));
            }
            Ok(serde_json::json!({"id": message_id, "seq": room.seq, "ts": ts}))
        }
        _ => Err("unknown_type"),
    }
}
