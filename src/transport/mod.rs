//! HTTP and WebSocket: the node's face to clients.
//!
//! Owns: the actix-web server, its routes (`/`, `/ws`, `/healthz`, `/readyz`) and, for
//! each WebSocket, the read loop that decodes frames and forwards them to the
//! connection's Session actor. Knows the actors only through the SessionSupervisor
//! and the Session's message type; room logic never lives here.

mod frame_guard;
mod http;
mod websocket;

pub use http::{serve, AppState};
