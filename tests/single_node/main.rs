//! Integration tests of one node: a real node on port 0, real WebSocket clients.

mod support;

mod bad_input;
mod behaviour;
mod chat;
mod limits;
