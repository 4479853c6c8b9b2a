//! Socket.IO clients, unchanged: Engine.IO v4 (HTTP long-polling and WebSocket, and
//! the upgrade between them) carrying Socket.IO v5, on the same rooms and Session
//! actors as protocol v1 (docs/socketio.md).
//!
//! - [`engine`]: Engine.IO packets and polling payloads (pure).
//! - [`binary`]: binary attachments between Socket.IO placeholders and v1's
//!   `{"_binary":"<base64>"}` (pure).
//! - [`packet`]: Socket.IO packets (pure).
//! - [`translate`]: Socket.IO EVENTs to v1 requests and v1 server frames to
//!   Socket.IO packets; namespaces as room-name prefixes (pure).
//! - [`drain`]: what a transport writes for what a connection's outboxes hold.
//! - [`connection`]: one Engine.IO connection's inbound side: each CONNECT starts a
//!   Session for its namespace, EVENTs become that Session's frames.
//! - [`recovery`]: connection state recovery kept by the client (`pid`, offsets),
//!   so that any node can recover a connection (pure).
//! - [`registry`]: the Engine.IO connections of this node, by sid, for the polling
//!   requests and the upgrade that name them.
//!
//! Must not know: actix or HTTP; `transport::socketio` serves the routes and writes
//! the WebSocket frames. Nothing here reads `config` either: the transport hands in
//! the values.

pub mod binary;
pub mod connection;
pub mod drain;
pub mod engine;
pub mod packet;
pub mod recovery;
pub mod registry;
pub mod translate;

pub use translate::{Namespace, Namespaces};
