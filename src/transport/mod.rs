//! HTTP and WebSocket: the node's face to clients.
//!
//! Owns: the actix-web server (plain HTTP, or HTTPS and WSS with `[http.tls]`), its
//! routes (`/`, `/ws`, `/socket.io/` (socketio.rs), `/healthz`, `/readyz`, `/cluster`, `/metrics`, and
//! `/cluster/nodes` on the admin listener: cluster_admin.rs) and, for each
//! WebSocket, the read loop that decodes frames and forwards them to the connection's
//! Session actor, and the response body that writes what its outbox holds. Every upgrade first passes the [`Gate`] (origin,
//! per-address limits, authentication). Knows the actors only through the SessionSupervisor
//! and the Session's message type; room logic never lives here.

mod cluster_admin;
mod connect_hook;
mod frame_guard;
mod gate;
mod http;
mod inbound_budget;
mod outbound;
mod polling_body;
mod scrape;
mod socketio;
mod socketio_forward;
pub(crate) mod tls;
mod websocket;

pub use gate::{Gate, Refused};
pub use http::{serve, serve_admin, AppState};
