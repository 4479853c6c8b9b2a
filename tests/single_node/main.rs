//! Integration tests of one node: a real node on port 0, real WebSocket clients.

mod support;

mod behaviour;
mod chat;
