//! The abuse suite (issue #13): each test starts a real `hubbub` process with the
//! default limits, attacks it from loopback with real sockets for a stated time, and
//! asserts that
//! - the node's resident memory (`VmRSS` of `/proc/<pid>/status`, sampled every 50 ms)
//!   stays under [`support::RSS_BOUND`] (512 MiB; docs/operations.md, "Memory under
//!   abuse"),
//! - the node answers `/healthz` within 2 s on every poll, four a second,
//! - a well-behaved member of the attacked room receives every message published
//!   there, complete, in order and within 5 s ([`support::Conversation`]).
//!
//! Each attack's rate and duration are constants at the top of its file. The tests run
//! one at a time (the `abuse` group in .config/nextest.toml, and [`support::SERIAL`]
//! under `cargo test`): an attack measures the node, not its neighbours. The figures
//! of each run are appended to `<target>/tmp/abuse-figures.txt`; to see them as they
//! come: `cargo nextest run --test abuse --no-capture`.

#[path = "../common/hubbub_node.rs"]
mod hubbub_node;
mod support;
#[path = "../common/ws_client.rs"]
mod ws_client;

mod churn;
mod cluster_port;
mod direct_flood;
mod history_fill;
mod http_heads;
mod reconnect;
mod rename_storm;
mod replies;
mod room_flood;
mod soak;
mod socketio_stall;
mod ws_stall;
