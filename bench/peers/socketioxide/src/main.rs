//! The socketioxide peer: socketioxide (Socket.IO v5 over Engine.IO v4, WebSocket only)
//! on axum, one process, doing what bench/peers/socketio/server.js does for what
//! hubbub-bench sends:
//!
//!   join(room, ack)              the socket joins the room; ack({ok: true, room, seq})
//!   leave(room, ack)             ack({ok: true, room}); ack({ok: false, error:
//!                                "not_joined"}) if it had not joined
//!   publish({room, content}, ack)
//!       io.to(room).emit("message", {room, id, seq, from, content, ts}) to every member
//!       (the publisher included), then ack({ok: true, id, seq, ts}).
//!
//! `seq` counts per room in this process; `id` is a random UUID, `ts` milliseconds since
//! the epoch, `from` a user named after the process and a counter, as in the Node peer.
//! Anything malformed is refused with `bad_request`, as there.
//!
//! Settings are socketioxide's defaults but two: WebSocket only (as the socket.io peer),
//! and a per-socket buffer of 4096 packets instead of 128. socketioxide drops a packet
//! for a socket whose buffer is full, where socket.io queues without bound and hubbub
//! bounds a connection's queue in bytes; with 128 a burst at a rate whose p99 is still
//! within the fan-out's bound can already lose messages, which would count against
//! socketioxide for a setting rather than for its speed. `SOCKETIOXIDE_BUFFER` changes
//! it.
//!
//! Usage: socketioxide-peer [PORT]   (127.0.0.1; default port 9500)

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::handler::ConnectHandler;
use socketioxide::{SocketIo, TransportType};

/// room name -> the last `seq` given in it.
static SEQS: LazyLock<Mutex<HashMap<String, u64>>> = LazyLock::new(Default::default);
static NEXT_USER: AtomicU64 = AtomicU64::new(0);

fn refuse(ack: AckSender, code: &str) {
    ack.send(&json!({"ok": false, "error": code})).ok();
}

/// Registers the socket's event handlers. Run as a connect *middleware*, which
/// socketioxide awaits before it sends the CONNECT reply, and not in the connect handler,
/// which it runs after sending it: a client that emits `join` as soon as it is connected
/// (the churn scenario does) would otherwise race the registration, and an event that
/// arrives before its handler is dropped without an ack.
async fn register(socket: SocketRef, io: SocketIo) -> Result<(), Infallible> {
    let user = format!(
        "sio-{}-{}",
        std::process::id(),
        NEXT_USER.fetch_add(1, Ordering::Relaxed) + 1
    );

    socket.on(
        "join",
        async |socket: SocketRef, Data::<Value>(room), ack: AckSender| {
            let Value::String(room) = room else {
                return refuse(ack, "bad_request");
            };
            socket.join(room.clone());
            let seq = SEQS.lock().unwrap().get(&room).copied().unwrap_or(0);
            ack.send(&json!({"ok": true, "room": room, "seq": seq}))
                .ok();
        },
    );

    socket.on(
        "leave",
        async |socket: SocketRef, Data::<Value>(room), ack: AckSender| {
            let Value::String(room) = room else {
                return refuse(ack, "not_joined");
            };
            if !socket.rooms().iter().any(|r| *r == room) {
                return refuse(ack, "not_joined");
            }
            socket.leave(room.clone());
            ack.send(&json!({"ok": true, "room": room})).ok();
        },
    );

    socket.on(
        "publish",
        async move |socket: SocketRef, Data::<Value>(frame), ack: AckSender| {
            let (Some(Value::String(room)), Some(Value::String(content))) =
                (frame.get("room"), frame.get("content"))
            else {
                return refuse(ack, "bad_request");
            };
            if !socket.rooms().iter().any(|r| r == room) {
                return refuse(ack, "not_joined");
            }
            let seq = {
                let mut seqs = SEQS.lock().unwrap();
                let seq = seqs.entry(room.clone()).or_insert(0);
                *seq += 1;
                *seq
            };
            let id = uuid::Uuid::new_v4().to_string();
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let message = json!({
                "room": room,
                "id": id,
                "seq": seq,
                "from": {"id": user, "name": user},
                "content": content,
                "ts": ts,
            });
            // io.to (not socket.to): the publisher is a member and gets it too.
            io.to(room.clone()).emit("message", &message).await.ok();
            ack.send(&json!({"ok": true, "id": id, "seq": seq, "ts": ts}))
                .ok();
        },
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PORT").ok())
        .map_or(Ok(9500), |p| p.parse())?;
    let buffer: usize = std::env::var("SOCKETIOXIDE_BUFFER")
        .ok()
        .map_or(Ok(4096), |b| b.parse())?;

    let (layer, io) = SocketIo::builder()
        .transports([TransportType::Websocket])
        .max_buffer_size(buffer)
        .build_layer();
    io.ns("/", (async || {}).with(register));

    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("socketioxide listening on 127.0.0.1:{port} (buffer {buffer} packets)");
    axum::serve(listener, app).await?;
    Ok(())
}
