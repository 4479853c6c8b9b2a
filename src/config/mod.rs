//! Typed, layered configuration.
//!
//! Owns: the `Settings` tree, its built-in defaults, loading (defaults < file <
//! `HUBBUB_SECTION__KEY` environment) and validation. Knows nothing of actors or HTTP;
//! everything else receives a validated `Settings`.
//!
//! Every limit has a default and says what it means in `default.toml`, which is also
//! what `hubbub default-config` prints (a test keeps the two equal).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

mod load;
pub use load::{
    default_config_toml, load, load_with_env, ConfigError, ConfigSource, CONFIG_PATH_ENV,
};

/// The whole configuration of one node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub node: NodeSettings,
    pub limits: LimitSettings,
    pub rooms: RoomSettings,
    pub heartbeat: HeartbeatSettings,
    pub log: LogSettings,
}

/// `[node]`: who this node is and where it listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// Name of this node, shown in `welcome` frames and logs. Default: the host name,
    /// or `hubbub` when it cannot be read.
    pub name: String,
    /// HTTP and WebSocket listen address. Port 0 picks a free port.
    pub http_addr: SocketAddr,
}

/// `[limits]`: what one client may cost the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Open WebSocket connections on this node; past it an upgrade gets HTTP 503.
    pub max_connections: usize,
    /// Largest WebSocket message a client may send; a larger one closes with 1009.
    pub max_frame_bytes: usize,
    /// Longest `content` of a publish or direct message, in characters.
    pub max_message_chars: usize,
    /// Rooms one connection may be joined to at once.
    pub max_rooms_per_session: usize,
    /// Frames queued for one client; a client that falls this far behind is closed
    /// with 4009 (slow consumer).
    pub outbound_queue: usize,
    /// Frames per second one connection may send, sustained; excess frames get a
    /// `rate_limited` reply. 0 turns the limit off.
    pub frames_per_second: u32,
    /// Frames one connection may send at once before the sustained rate applies (the
    /// size of its token bucket).
    pub frames_burst: u32,
}

/// `[rooms]`: room history and lifetime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomSettings {
    /// Messages each room keeps for `history` requests and `since` resume.
    pub history: usize,
    /// Seconds an empty room keeps its history before it stops. 0 stops it at once.
    pub idle_ttl_secs: u64,
}

/// `[heartbeat]`: liveness of client connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatSettings {
    /// The server sends a WebSocket ping this often; clients are told it in `welcome`.
    pub interval_ms: u64,
    /// A client that sends nothing (frames, pongs) for this long is closed with 4008.
    pub timeout_ms: u64,
}

/// `[log]`: tracing output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A tracing filter: `info`, `debug`, or directives such as `hubbub=debug,warn`.
    pub level: String,
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (for log shippers).
    Json,
    /// Human-readable, coloured when the output is a terminal.
    Pretty,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            name: default_node_name(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_frame_bytes: 65_536,
            max_message_chars: 5_000,
            max_rooms_per_session: 100,
            outbound_queue: 1_024,
            frames_per_second: 50,
            frames_burst: 100,
        }
    }
}

impl Default for RoomSettings {
    fn default() -> Self {
        Self {
            history: 100,
            idle_ttl_secs: 300,
        }
    }
}

impl Default for HeartbeatSettings {
    fn default() -> Self {
        Self {
            interval_ms: 25_000,
            timeout_ms: 60_000,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Pretty,
        }
    }
}

/// The host name, which is what an operator expects a node to be called.
fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "hubbub".to_owned())
}
