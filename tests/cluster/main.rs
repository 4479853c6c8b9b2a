//! Multi-process tests of a cluster: real `hubbub` processes started from generated
//! configs on free ports, driven by WebSocket clients, with real faults (`kill -9`,
//! `SIGSTOP` / `SIGCONT`, a wrong cookie, a taken name, certificates another CA signed).
//! The harness is tests/common/hubbub_node.rs (shared with the abuse and fault suites)
//! and `support` (this suite's `Cluster`); the tests run one at a time (timing
//! assertions need the CPU to themselves).
//!
//! `HUBBUB_LOG__LEVEL=debug cargo test --test cluster` raises the nodes' log level; a
//! failing test prints the tail of every node's log and keeps its directory.

#[path = "../hooks/backend.rs"]
mod backend;
#[path = "../common/hubbub_node.rs"]
mod hubbub_node;
#[path = "../scrape/mod.rs"]
mod scrape;
mod support;
#[path = "../common/ws_client.rs"]
mod ws_client;

mod backlog;
mod broadcast;
mod chat;
mod data;
mod drain;
mod failover;
mod harness;
mod impersonation;
mod logs;
mod membership;
mod metrics;
mod nodes;
mod peer_port;
mod presence;
mod refused;
mod replies;
mod start_order;
mod status;
mod tls;
mod webhooks;
