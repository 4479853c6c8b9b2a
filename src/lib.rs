//! hubbub: an actor-model chat node.
//!
//! Clients speak a JSON protocol over WebSocket; every connection, room and the
//! presence registry is a ractor actor on a runtime of its own, in one supervision
//! tree. The map of the crate, outside in:
//!
//! - [`config`]: typed settings, layered defaults < file < `HUBBUB_SECTION__KEY`.
//! - [`auth`]: who a client is (anonymous or a verified JWT) and which rooms it may
//!   join and publish in (`[[rooms.acl]]`).
//! - [`transport`]: actix-web routes; the WebSocket upgrade and per-connection read loop.
//! - [`protocol`]: the wire format v1 (pure serde types; no I/O).
//! - [`socketio`]: Socket.IO clients (Engine.IO v4 + Socket.IO v5) on the same rooms
//!   and Session actors, their frames translated to and from v1.
//! - [`actors`]: the supervision tree (node, sessions, rooms, presence) and each
//!   connection's bounded outbound queue.
//! - [`behaviour`]: the `RoomBehaviour` trait developers implement to change rooms.
//! - [`cluster`]: membership, failure detection, the wire between nodes, ownership.
//! - [`api`]: the server HTTP API for the application's backend (`/api/`, keys from
//!   `[api]`): it reaches rooms and users through the same actors as clients do.
//! - [`hooks`]: the application's backend: the connect and publish hooks that decide,
//!   the signed webhooks that inform.
//! - [`app`]: builds a node from settings; [`telemetry`]: logs and metrics.
//!
//! docs/architecture.md draws the tree and follows one message through it.

pub mod actors;
pub mod api;
pub mod app;
pub mod auth;
pub mod behaviour;
pub mod cluster;
pub mod config;
pub mod hooks;
pub mod protocol;
pub mod socketio;
pub mod telemetry;
pub mod transport;

pub use app::Application;
pub use behaviour::{Behaviours, Rejection, RoomBehaviour};
pub use config::Settings;
