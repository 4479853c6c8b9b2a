//! The fault suite (issue #9): real `hubbub` processes, each in its own network
//! namespace joined by veth pairs, real faults (silent partitions, partial partitions,
//! TCP resets of cluster links, `kill -9`, `SIGSTOP`), and a checker over everything
//! every client saw and every reply it got, plus every surviving node's history.
//!
//! - `netns`: the namespaces, links, addresses and network faults;
//! - `harness`: the processes in them and the recording clients;
//! - `run`: one scenario run (seeded schedule, streams, presence samples, the end);
//! - `checker`: the rules, pure, with unit tests of their own;
//! - `scenarios`: the scenarios.
//!
//! Needs root and `ip netns` (it fails saying so otherwise). Runs one test at a time
//! (the `fault` group in .config/nextest.toml). `FAULT_SEED=<n>` replays a schedule;
//! `KEEP_FAULT_TEST_LOGS=1` keeps the nodes' logs of a passing run.
//!
//! `sudo -E cargo nextest run --test fault`.

mod checker;
mod harness;
#[path = "../common/hubbub_node.rs"]
mod hubbub_node;
mod netns;
mod run;
mod scenarios;
#[path = "../common/ws_client.rs"]
mod ws_client;
