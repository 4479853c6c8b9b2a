//! Integration tests of one node: a real node on port 0, real WebSocket clients.

#[path = "../scrape/mod.rs"]
mod scrape;
mod support;
#[path = "../common/ws_client.rs"]
mod ws_client;

mod abuse;
mod admin;
mod auth;
mod bad_input;
mod behaviour;
mod broadcast;
mod chat;
mod churn;
mod data;
mod history_bytes;
mod idempotency;
mod limits;
mod metrics;
mod replies;
mod tls;
