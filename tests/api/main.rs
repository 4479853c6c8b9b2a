//! Integration tests of the server HTTP API (docs/api.md): real nodes on port 0 (and,
//! in `cluster`, three real `hubbub` processes), real HTTP calls, real WebSocket
//! members watching what the calls do.
//!
//! `single` drives every call on one node, with good and bad input; `openapi` checks
//! every answer against docs/api.yaml; `cluster` makes the calls on a node where the
//! members are not. The cluster tests run one at a time (the `cluster` group in
//! .config/nextest.toml, and the harness's process-wide lock).

// The cluster suite's harness; this suite uses part of it.
#[allow(dead_code, unused_imports)]
#[path = "../cluster/support.rs"]
mod cluster_support;
mod http;
#[path = "../common/hubbub_node.rs"]
mod hubbub_node;
#[path = "../single_node/support.rs"]
mod support;
#[path = "../common/ws_client.rs"]
mod ws_client;

mod cluster;
mod openapi;
mod single;

/// The keys test nodes are configured with (two, as during a rotation).
pub const KEY: &str = "test-api-key-0123456789";
pub const OTHER_KEY: &str = "test-api-key-rotated-9876543210";

/// Single-node settings with the API on (both keys), no per-key limit.
pub fn api_settings() -> hubbub::Settings {
    let mut settings = support::test_settings();
    settings.api.keys = vec![
        hubbub::config::Secret::new(KEY),
        hubbub::config::Secret::new(OTHER_KEY),
    ];
    settings.api.requests_per_second = 0;
    settings
}
