//! Integration tests of the backend integration (issue #10, part B): the connect and
//! publish hooks and the signed webhooks, against a real HTTP backend started by the
//! test ([`backend::Backend`]) and real nodes on port 0 with real WebSocket clients.

mod backend;
#[path = "../scrape/mod.rs"]
mod scrape;
#[path = "../single_node/support.rs"]
mod support;
#[path = "../common/ws_client.rs"]
mod ws_client;

mod connect_hook;
mod example_backend;
mod figures;
mod publish_hook;
mod webhooks;
