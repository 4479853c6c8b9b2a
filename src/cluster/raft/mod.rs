//! Room logs on Raft (openraft 0.9): one Raft group per shard.
//!
//! - `network`: openraft's RPCs over the cluster's one Endpoint.

pub mod network;
