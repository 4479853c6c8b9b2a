//! Typed, layered configuration.
//!
//! Owns: the `Settings` tree, its built-in defaults, loading (defaults < file < the
//! file's `[[nodes]]` entry chosen with `--node` < `HUBBUB_SECTION__KEY` environment)
//! and validation. Knows nothing of actors, HTTP or how the cluster is formed;
//! everything else receives a validated `Settings`.
//!
//! Every limit has a default and says what it means in `default.toml`, which is also
//! what `hubbub default-config` prints (a test keeps the two equal).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

mod access;
mod hooks;
mod load;
pub(crate) mod pem;
pub use access::{
    parse_network, AclEntry, AuthMode, AuthSettings, HttpSettings, HttpTls, JoinRule, JwtAlgorithm,
    PublishRule, RateLimitSettings,
};
pub use hooks::{FailurePolicy, HooksSettings, WebhookEvent, WebhookSettings};
pub use load::{
    default_config_toml, environment_warning, is_node_name, load, load_every_node,
    load_every_node_with_env, load_with_env, warnings, ConfigError, ConfigSource, CONFIG_PATH_ENV,
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
    pub auth: AuthSettings,
    pub rate_limit: RateLimitSettings,
    pub http: HttpSettings,
    pub shutdown: ShutdownSettings,
    pub cluster: ClusterSettings,
    pub admin: AdminSettings,
    pub api: ApiSettings,
    pub storage: StorageSettings,
    /// `[hooks]`: the connect and publish hooks (src/hooks/, docs/webhooks.md).
    pub hooks: HooksSettings,
    /// `[[webhooks]]`: the backend's endpoints that are sent signed events. Empty:
    /// none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookSettings>,
    pub socketio: SocketIoSettings,
    /// `[[nodes]]`: every node of a cluster described in one file; `--node NAME` picks
    /// the entry this process runs as. Empty for a file that describes one node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeEntry>,
}

/// `[shutdown]`: how a node drains on SIGTERM / SIGINT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Seconds from the signal to exit, whatever is left open by then.
    pub timeout_secs: u64,
    /// Clients told `goodbye` at a time.
    pub batch_size: usize,
    /// Milliseconds between two batches of `goodbye`.
    pub batch_interval_ms: u64,
    /// Clients are told to reconnect after a random delay up to this many ms, so
    /// that they do not all arrive at the other nodes at once.
    pub reconnect_spread_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            timeout_secs: 30,
            batch_size: 500,
            batch_interval_ms: 100,
            reconnect_spread_ms: 2_000,
        }
    }
}

/// `[admin]`: the operator's listener, apart from the one clients use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// `"IP:port"` of a second HTTP listener that serves `/metrics` and `/cluster`
    /// (and `/healthz`, `/readyz`) instead of the public one, which then answers 404
    /// for them. Empty: no admin listener, everything on `node.http_addr`.
    pub addr: String,
}

impl AdminSettings {
    /// The admin listener's address, `None` when `addr` is empty (or, in settings
    /// that were not validated, not an address).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.addr.trim().parse().ok()
    }
}

/// `[api]`: the server HTTP API for the application's backend (docs/api.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// The keys a call may carry as `Authorization: Bearer <key>`; several at once so
    /// a key can be rotated. Empty: the API is off and every `/api/` path is 404.
    pub keys: Vec<Secret>,
    /// The largest request body, in bytes; a larger one gets HTTP 413.
    pub max_body_bytes: usize,
    /// Calls per second one key may make, sustained; past it HTTP 429. 0: no limit.
    pub requests_per_second: u32,
    /// Calls one key may make at once before the sustained rate applies.
    pub burst: u32,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            max_body_bytes: 65_536,
            requests_per_second: 100,
            burst: 200,
        }
    }
}

impl ApiSettings {
    /// Whether the API is served (some key is configured).
    pub fn enabled(&self) -> bool {
        self.keys.iter().any(|k| !k.is_blank())
    }
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
    /// Threads for each of the node's two runtimes: the HTTP workers that own the
    /// connections, and the actor runtime. 0: one per CPU core.
    pub threads: usize,
}

impl NodeSettings {
    /// The thread count `threads` stands for (0: one per CPU core).
    pub fn thread_count(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// `[limits]`: what one client may cost the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Open WebSocket connections on this node; past it an upgrade gets HTTP 503.
    pub max_connections: usize,
    /// TCP connections the client listener holds at once, WebSockets among them; past
    /// it no more are accepted until one closes.
    pub max_http_connections: usize,
    /// Largest WebSocket message a client may send; a larger one closes with 1009.
    pub max_frame_bytes: usize,
    /// Longest `content` of a publish or direct message, in characters.
    pub max_message_chars: usize,
    /// Rooms one connection may be joined to at once.
    pub max_rooms_per_session: usize,
    /// Frames queued for one client; a client that falls this far behind is closed
    /// with 4009 (slow consumer).
    pub outbound_queue: usize,
    /// Bytes queued for one client (frames not yet written, as `actors::outbox`
    /// counts them); a push past it closes with 4009 (slow consumer). 0: frames only.
    pub outbound_bytes: u64,
    /// Bytes queued for all clients of this node together; past it the connections
    /// holding the most are closed with 4009 until the node is back under it. 0: off.
    pub node_outbound_bytes: u64,
    /// Bytes of messages still arriving from all clients of this node together
    /// (WebSocket frames begun, polling bodies being read); past it the connections
    /// whose messages began first are closed (1013) until the node is back under it.
    /// 0: off.
    pub node_inbound_bytes: u64,
    /// Frames per second one connection may send, sustained; excess frames get a
    /// `rate_limited` reply. 0 turns the limit off.
    pub frames_per_second: u32,
    /// Frames one connection may send at once before the sustained rate applies (the
    /// size of its token bucket).
    pub frames_burst: u32,
    /// Longest `content` of a publish or direct message, in bytes of UTF-8, besides
    /// `max_message_chars`. 0: only the character bound applies.
    pub max_message_bytes: usize,
    /// Largest `history` or `join` reply, in bytes; a longer one is cut and says so
    /// (`more` and a cursor).
    pub max_reply_bytes: usize,
    /// Members one `presence` or `join` reply lists; larger rooms are paged.
    pub presence_page: usize,
    /// Rooms running on this node at once; a join that would start another gets
    /// `room_limit`. 0: no cap.
    pub max_rooms: usize,
    /// Rooms one connection may bring into being per minute (joins of a room not
    /// running here), as many at once; excess joins get `rate_limited`. 0: no limit.
    pub room_creations_per_minute: u32,
    /// Joins and leaves per second one connection may make, sustained; it may make
    /// `max_rooms_per_session` at once (a reconnect rejoins every room). 0: no limit.
    pub joins_per_second: u32,
    /// Renames per minute one connection may make, sustained, up to 5 at once.
    /// 0: no limit.
    pub renames_per_minute: u32,
    /// Direct messages per second one connection may send, as many at once.
    /// 0: no limit.
    pub directs_per_second: u32,
    /// Direct messages per second one user may receive on this node from everyone
    /// together, as many at once; excess ones are refused to their senders with
    /// `rate_limited` and the target is not disturbed. 0: no limit.
    pub directs_per_target_per_second: u32,
}

impl LimitSettings {
    /// The byte bound of a message's content and data together: the smaller of
    /// `max_message_bytes` (0: none of its own) and 4 bytes per character of
    /// `max_message_chars` (docs/protocol.md, `publish`).
    pub fn content_bytes_bound(&self) -> usize {
        let chars_bytes = self.max_message_chars.saturating_mul(4);
        match self.max_message_bytes {
            0 => chars_bytes,
            bytes => bytes.min(chars_bytes),
        }
    }
}

/// `[rooms]`: room history and lifetime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomSettings {
    /// Messages each room keeps for `history` requests and `since` resume.
    pub history: usize,
    /// Seconds a message is kept, counted back from the room's newest message; 0:
    /// no age bound (only `history` drops messages).
    pub history_max_age_secs: u64,
    /// Bytes the rooms' history may hold on a node, all shards together (each
    /// shard holds its share); past it a shard forgets its oldest messages first.
    /// 0: no bound (only `history` and `history_max_age_secs` drop messages).
    pub history_bytes: u64,
    /// Bytes of committed messages that may wait in the mailboxes of this node's
    /// Room actors, all rooms together (each room an eighth of it); past it a room
    /// reads what it was not sent from the log instead (src/actors/room/backlog.rs).
    pub delivery_backlog_bytes: u64,
    /// Seconds an empty room's actor keeps running before it stops (its history
    /// stays in the room log). 0 stops it at once.
    pub idle_ttl_secs: u64,
    /// Rooms with more members than this send their joins and leaves as one
    /// `presence_diff` per `presence_batch_ms`. 0: every room does.
    pub presence_batch_members: usize,
    /// Milliseconds a large room gathers joins and leaves into one `presence_diff`.
    /// 0: no batching (one diff per join or leave, in every room).
    pub presence_batch_ms: u64,
    /// `[[rooms.acl]]`: who may join and publish where; none means anyone may join any
    /// room and every member may publish.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub acl: Vec<AclEntry>,
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

/// `[socketio]`: the Socket.IO endpoint (`/socket.io/`, Engine.IO v4, Socket.IO v5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoSettings {
    /// Serve `/socket.io/`; false answers it 404.
    pub enabled: bool,
    /// The namespaces clients may connect to; each but `/` maps onto the room-name
    /// prefix `name:` (`/chat` → `chat:`). An unknown one gets CONNECT_ERROR.
    pub namespaces: Vec<String>,
    /// Engine.IO `pingInterval`: the server pings this often.
    pub ping_interval_ms: u64,
    /// Engine.IO `pingTimeout`: a client silent for `ping_interval_ms` plus this is
    /// closed.
    pub ping_timeout_ms: u64,
    /// Engine.IO `maxPayload`: the largest polling POST body, and the largest
    /// WebSocket message, in bytes.
    pub max_payload_bytes: u64,
    /// A connection that has not connected to a namespace within this is closed.
    pub connect_timeout_ms: u64,
    /// Connection state recovery: a `pid` in CONNECT answers and an offset as the
    /// last argument of `message` events, so that a client reconnecting to any node
    /// gets its rooms back and what it missed.
    pub recovery: bool,
}

impl Default for SocketIoSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            namespaces: vec!["/".to_owned()],
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            max_payload_bytes: 100_000,
            connect_timeout_ms: 45_000,
            recovery: false,
        }
    }
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

/// `[cluster]`: how this node finds and trusts its peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// Whether this node joins a cluster; `false` runs it alone and the other keys
    /// are not used. A selected `[[nodes]]` entry turns it on.
    pub enabled: bool,
    /// Where this node listens for peers.
    pub bind: SocketAddr,
    /// The `host:port` peers dial to reach this node; empty means `bind`. See
    /// [`ClusterSettings::advertise_addr`].
    pub advertise: String,
    /// The secret every node of the cluster shares; required when `enabled`.
    pub cookie: Secret,
    /// `host:port` of nodes to dial on start; a node may list itself.
    pub seeds: Vec<String>,
    /// Milliseconds between heartbeats to each peer.
    pub heartbeat_ms: u64,
    /// Milliseconds without a heartbeat after which a peer is declared down; also how
    /// long an incoming peer connection has to authenticate.
    pub failure_timeout_ms: u64,
    // ---- the cluster port before authentication (membership/peer_port.rs) ----
    /// The most incoming peer connections waiting to authenticate at once; more are
    /// closed as they arrive.
    pub max_unauthenticated: usize,
    /// The most bytes an incoming peer connection may send before it has
    /// authenticated; a frame announced past it closes the connection.
    pub max_unauthenticated_bytes: u64,
    // ---- end of the cluster port ----
    /// `[cluster.tls]`: TLS between nodes; absent means plain TCP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
    /// Raft groups the rooms are spread over (rooms hash onto them); fixed for the
    /// life of the cluster's data.
    pub shards: u32,
    /// Voters of each shard's Raft group (all voters when there are fewer).
    pub replicas: usize,
    /// The names of the nodes that may vote, for the `[node]` + `seeds` form; empty
    /// with `[[nodes]]`, whose entries are the voters.
    pub voters: Vec<String>,
    /// This node joins a cluster that already runs (a node being added, or replacing
    /// a dead one with an empty data dir): it never bootstraps a shard's Raft group,
    /// and waits for the shards' leaders to add it once the cluster's node list names
    /// it (docs/operations.md, "Adding a node").
    pub join: bool,
}

impl ClusterSettings {
    /// The `host:port` peers dial to reach this node: `advertise`, or `bind` when
    /// `advertise` is empty.
    pub fn advertise_addr(&self) -> String {
        advertise_or_bind(&self.advertise, self.bind)
    }
}

/// `[storage]`: where the Raft logs and snapshots of the room logs live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// The data directory (created at start), relative to the working directory
    /// unless absolute. Not used by the `memory` engine.
    pub dir: PathBuf,
    /// When appended entries reach the disk: `always`, `never`, or an interval such
    /// as `100ms`. See [`StorageSettings::fsync_policy`].
    pub fsync: String,
    pub engine: StorageEngine,
}

impl StorageSettings {
    /// What `fsync` says, or why it says nothing sensible.
    pub fn fsync_policy(&self) -> Result<FsyncPolicy, String> {
        FsyncPolicy::parse(&self.fsync)
    }
}

/// `storage.engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageEngine {
    /// One database file in `storage.dir`.
    Durable,
    /// Memory only: every restart starts empty (tests and benchmarks).
    Memory,
}

/// When appended Raft entries are made durable (`storage.fsync`); what a power loss
/// loses with each is stated in src/cluster/raft/log_store.rs and
/// docs/configuration.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before each append is acknowledged.
    Always,
    /// Once per interval; appends are acknowledged after the fsync that covers them.
    Interval(std::time::Duration),
    /// Appends are acknowledged before they reach the disk.
    Never,
}

/// The longest `storage.fsync` interval, in ms: every append waits up to it.
pub const MAX_FSYNC_INTERVAL_MS: u64 = 10_000;

impl FsyncPolicy {
    /// `always`, `never`, or `<N>ms` with N from 1 to [`MAX_FSYNC_INTERVAL_MS`].
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "always" => return Ok(Self::Always),
            "never" => return Ok(Self::Never),
            _ => {}
        }
        let ms = text
            .strip_suffix("ms")
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                format!(
                    "must be \"always\", \"never\" or an interval such as \"100ms\", not {text:?}"
                )
            })?;
        if !(1..=MAX_FSYNC_INTERVAL_MS).contains(&ms) {
            return Err(format!(
                "an interval must be from 1ms to {MAX_FSYNC_INTERVAL_MS}ms, not {text:?}"
            ));
        }
        Ok(Self::Interval(std::time::Duration::from_millis(ms)))
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./hubbub-data"),
            fsync: "always".to_owned(),
            engine: StorageEngine::Durable,
        }
    }
}

/// `[cluster.tls]`: the PEM files for TLS between nodes. All three are required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// This node's certificate.
    pub cert: PathBuf,
    /// The private key of `cert`.
    pub key: PathBuf,
    /// The certificate authority that signed every node's certificate.
    pub ca: PathBuf,
}

/// One `[[nodes]]` entry: what differs between the nodes of a cluster described in
/// one file. Selecting it with `--node` sets `node.name`, `node.http_addr`,
/// `cluster.bind` and `cluster.advertise`, turns the cluster on and, unless seeds are
/// given explicitly, seeds it with every entry's advertised address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The node's name (`node.name`), which `--node` selects.
    pub name: String,
    /// Its HTTP and WebSocket listen address (`node.http_addr`).
    pub http_addr: SocketAddr,
    /// Where it listens for peers (`cluster.bind`).
    pub bind: SocketAddr,
    /// The `host:port` peers dial (`cluster.advertise`); empty means `bind`.
    #[serde(default)]
    pub advertise: String,
}

impl NodeEntry {
    /// The `host:port` peers dial to reach this node: `advertise`, else `bind`.
    pub fn advertise_addr(&self) -> String {
        advertise_or_bind(&self.advertise, self.bind)
    }
}

fn advertise_or_bind(advertise: &str, bind: SocketAddr) -> String {
    if advertise.is_empty() {
        bind.to_string()
    } else {
        advertise.to_owned()
    }
}

/// A value that must never be printed, such as the cluster cookie. `Debug` and
/// `Display` show `[redacted]`; only [`Secret::expose`] gives the value, so every use
/// of it is easy to find.
///
/// It serialises as its value, because the built-in defaults are layered by
/// serialising `Settings`; do not serialise settings anywhere they could be shown.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the places that need it (the cluster handshake, the
    /// verification of tokens).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret is set (empty or only whitespace).
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            name: default_node_name(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            threads: 0,
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_http_connections: 12_000,
            max_frame_bytes: 65_536,
            max_message_chars: 5_000,
            max_rooms_per_session: 100,
            outbound_queue: 1_024,
            outbound_bytes: 1_048_576,
            node_outbound_bytes: 268_435_456,
            node_inbound_bytes: 67_108_864,
            frames_per_second: 50,
            frames_burst: 100,
            max_message_bytes: 16_384,
            max_reply_bytes: 262_144,
            presence_page: 100,
            max_rooms: 10_000,
            room_creations_per_minute: 60,
            joins_per_second: 10,
            renames_per_minute: 30,
            directs_per_second: 10,
            directs_per_target_per_second: 20,
        }
    }
}

impl Default for RoomSettings {
    fn default() -> Self {
        Self {
            history: 100,
            history_max_age_secs: 0,
            history_bytes: 128 * 1024 * 1024,
            delivery_backlog_bytes: 64 * 1024 * 1024,
            idle_ttl_secs: 300,
            presence_batch_members: 100,
            presence_batch_ms: 200,
            acl: Vec::new(),
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
            level: "info,ractor_cluster=error".to_owned(),
            format: LogFormat::Pretty,
        }
    }
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            bind: SocketAddr::from(([127, 0, 0, 1], 4370)),
            advertise: String::new(),
            cookie: Secret::default(),
            seeds: Vec::new(),
            heartbeat_ms: 500,
            failure_timeout_ms: 3_000,
            max_unauthenticated: 64,
            max_unauthenticated_bytes: 64 * 1024,
            tls: None,
            shards: 16,
            replicas: 3,
            voters: Vec::new(),
            join: false,
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
