//! The Prometheus metrics of one node, served at `GET /metrics`.
//!
//! Owns: one [`Metrics`] per node, holding its own registry. Not a process-global
//! default registry: the tests run several nodes in one process, and each must count
//! only its own traffic. [`crate::Application`] creates it; actors reach it through
//! `NodeContext::metrics`, the cluster layer through `Cluster::metrics`, the transport
//! through the node context in its state.
//!
//! Must not know: actors, HTTP. Callers hand in what happened (a frame's type, a wire
//! body's kind, a duration); gauges that mirror state kept elsewhere (open connections,
//! running rooms) are set by the scrape handler just before it encodes.
//!
//! Cheap on the hot path: every labelled series a message can touch is looked up once,
//! when the node starts, and kept as a handle; counting is then one relaxed atomic add.
//! prometheus-client's own `Histogram` takes a lock per observation, so the two
//! latency histograms here are [`DurationHistogram`]s: fixed buckets of atomics.
//!
//! No label ever carries a user id or a room name: every label value comes from a
//! fixed list (request types, frame types, wire kinds, auth failure reasons).
//!
//! The exposition is the OpenMetrics text format (`application/openmetrics-text`),
//! which Prometheus scrapes natively; docs/operations.md lists every metric.

use super::process::ProcessCollector;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The version this node was built as (Cargo.toml's), shown in `hubbub_build_info`
/// and `GET /cluster`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit this node was built from (`git rev-parse --short HEAD` at build time,
/// by build.rs; `unknown` without git).
pub const COMMIT: &str = env!("HUBBUB_COMMIT");

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Client request types (`Request::kind`), plus `invalid` for frames that did not
/// decode. The label values of `hubbub_messages_total{direction="in"}`.
pub const REQUEST_TYPES: [&str; 10] = [
    "join", "leave", "publish", "typing", "history", "presence", "direct", "rename", "ping",
    "invalid",
];

/// Server frame types (the `type` of every `ServerFrame`), plus `other` should a frame
/// of another type ever be pushed. The label values of
/// `hubbub_messages_total{direction="out"}`.
pub const SERVER_FRAME_TYPES: [&str; 11] = [
    "welcome",
    "reply",
    "message",
    "typing",
    "presence_diff",
    "direct",
    "renamed",
    "pong",
    "error",
    "goodbye",
    "other",
];

/// Kinds of the bodies nodes send each other (`wire::Body::kind`), counted from the
/// start at zero. A kind not listed is still counted, under its own name.
pub const CLUSTER_KINDS: [&str; 20] = [
    "ping",
    "pong",
    "leaving",
    "sender_key",
    "raft_append",
    "raft_heartbeat",
    "raft_vote",
    "raft_snapshot",
    "raft_write",
    "raft_answer",
    "direct",
    "direct_result",
    "user_renamed",
    "presence_delta",
    "presence_digest",
    "presence_ask",
    "presence_state",
    "presence_typing",
    "user_call",
    "user_call_result",
];

/// The limits that refuse a client's request on a connection that stays open, each
/// counted in `hubbub_limit_refusals{limit}` when it trips: `max_rooms` (a join
/// that would start a room past `limits.max_rooms`), `room_creations`, `joins`,
/// `renames`, `directs` (per connection) and `directs_per_target` (per receiving
/// user); and, for the server API, `api_key` (a call without a valid key) and
/// `api_rate` (a key over `api.requests_per_second`).
pub const LIMITS: [&str; 8] = [
    "max_rooms",
    "room_creations",
    "joins",
    "renames",
    "directs",
    "directs_per_target",
    "api_key",
    "api_rate",
];

/// Upper bounds (seconds) of the latency histograms' buckets: 100 µs to 5 s, where
/// 5 s is the longest an actor waits for another's answer.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0,
];

/// Two labels, as `hubbub_messages_total` and `hubbub_cluster_messages_total` have.
type Labels2 = [(&'static str, &'static str); 2];
/// One label.
type Labels1 = [(&'static str, &'static str); 1];

/// The bound a slow consumer hit: the label values of
/// `hubbub_slow_consumer_disconnects_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumer {
    /// `limits.outbound_queue` frames were waiting.
    Frames,
    /// `limits.outbound_bytes` bytes were waiting.
    Bytes,
    /// The node went past `limits.node_outbound_bytes`, and this connection was one of
    /// those holding the most.
    NodeBudget,
}

impl SlowConsumer {
    const ALL: [SlowConsumer; 3] = [Self::Frames, Self::Bytes, Self::NodeBudget];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Frames => "frames",
            Self::Bytes => "bytes",
            Self::NodeBudget => "node_budget",
        }
    }
}

/// Every metric of one node. Shared in an `Arc`; all methods take `&self`.
pub struct Metrics {
    registry: Registry,
    connections: Gauge,
    rooms: Gauge,
    messages: Family<Labels2, Counter>,
    /// Handles into `messages`, by index in [`REQUEST_TYPES`].
    frames_in: Vec<Counter>,
    /// Handles into `messages`, by index in [`SERVER_FRAME_TYPES`].
    frames_out: Vec<Counter>,
    publish_duration: DurationHistogram,
    peers_up: Gauge,
    peers_down: Gauge,
    heartbeat_rtt: DurationHistogram,
    cluster_messages: Family<Labels2, Counter>,
    /// Handles into `cluster_messages`, by index in [`CLUSTER_KINDS`].
    cluster_out: Vec<Counter>,
    cluster_in: Vec<Counter>,
    cluster_in_invalid: Counter,
    /// Handles into `hubbub_slow_consumer_disconnects`, in [`SlowConsumer::ALL`] order.
    slow_consumer_disconnects: Vec<Counter>,
    outbound_bytes: Gauge,
    inbound_bytes: Gauge,
    inbound_shed: Counter,
    rate_limited: Counter,
    auth_failures: Family<Labels1, Counter>,
    // The cluster port before authentication (cluster/membership/peer_port.rs).
    peer_unauthenticated: Gauge,
    peer_refusals: Family<Labels1, Counter>,
    cluster_frames_dropped: Family<Labels1, Counter>,
    replies_cut: Family<Labels1, Counter>,
    content_refused: Family<Labels1, Counter>,
    api_calls: Family<Labels2, Counter>,
    /// Handles into `hubbub_limit_refusals`, by index in [`LIMITS`].
    limit_refusals: Vec<Counter>,
    presence_batches: Counter,
    delivery_gaps: Counter,
    delivery_behind: Counter,
    room_state_entries: Gauge,
    session_timers: Gauge,
    presence_entries: Gauge,
    storage_bytes: Gauge,
    history_bytes: Gauge,
    history_forgotten: Counter,
    storage_commit: DurationHistogram,
    storage_queued: DurationHistogram,
    /// The connect and publish hooks and the webhook endpoints (hook_metrics.rs).
    pub hooks: super::hook_metrics::HookMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric of a node at zero, and the process metrics.
    pub fn new() -> Self {
        let mut registry = Registry::default();

        let connections = Gauge::default();
        registry.register(
            "hubbub_connections",
            "WebSocket connections open on this node",
            connections.clone(),
        );
        let messages = Family::<Labels2, Counter>::default();
        registry.register(
            "hubbub_messages",
            "Client frames received (direction=in, by request type; invalid: not decodable) \
             and server frames queued to clients (direction=out, by frame type; a broadcast \
             counts once per member)",
            messages.clone(),
        );
        let frames_in = REQUEST_TYPES
            .iter()
            .map(|t| {
                messages
                    .get_or_create(&[("direction", "in"), ("type", t)])
                    .clone()
            })
            .collect();
        let frames_out = SERVER_FRAME_TYPES
            .iter()
            .map(|t| {
                messages
                    .get_or_create(&[("direction", "out"), ("type", t)])
                    .clone()
            })
            .collect();
        let publish_duration = DurationHistogram::new(&LATENCY_BUCKETS);
        registry.register(
            "hubbub_publish_duration_seconds",
            "From a publish reaching its Session to the message fanned out: pushed to this \
             node's members (room owner here) or acknowledged by the owner (relay here); \
             accepted publishes only",
            publish_duration.clone(),
        );
        let rooms = Gauge::default();
        registry.register(
            "hubbub_rooms",
            "Room actors running on this node (owned or relayed)",
            rooms.clone(),
        );
        let peers = Family::<Labels1, Gauge>::default();
        registry.register(
            "hubbub_cluster_peers",
            "Other nodes this node knows of, in its view (state=up) or not (state=down)",
            peers.clone(),
        );
        let peers_up = peers.get_or_create(&[("state", "up")]).clone();
        let peers_down = peers.get_or_create(&[("state", "down")]).clone();
        let heartbeat_rtt = DurationHistogram::new(&LATENCY_BUCKETS);
        registry.register(
            "hubbub_cluster_heartbeat_rtt_seconds",
            "Round trip of a heartbeat to a peer and its answer",
            heartbeat_rtt.clone(),
        );
        let cluster_messages = Family::<Labels2, Counter>::default();
        registry.register(
            "hubbub_cluster_messages",
            "Envelopes sent to other nodes (direction=out) and received from them \
             (direction=in), by wire body kind; invalid: received and not decodable",
            cluster_messages.clone(),
        );
        let kind_counters = |direction: &'static str| -> Vec<Counter> {
            CLUSTER_KINDS
                .iter()
                .map(|kind| {
                    cluster_messages
                        .get_or_create(&[("direction", direction), ("kind", kind)])
                        .clone()
                })
                .collect()
        };
        let cluster_out = kind_counters("out");
        let cluster_in = kind_counters("in");
        let cluster_in_invalid = cluster_messages
            .get_or_create(&[("direction", "in"), ("kind", "invalid")])
            .clone();
        let slow_consumers = Family::<Labels1, Counter>::default();
        registry.register(
            "hubbub_slow_consumer_disconnects",
            "Connections closed with 4009 (slow consumer), by the bound hit: their outbound \
             queue held limits.outbound_queue frames (frames) or limits.outbound_bytes bytes \
             (bytes), or the node went past limits.node_outbound_bytes and they held the \
             most (node_budget)",
            slow_consumers.clone(),
        );
        let slow_consumer_disconnects = SlowConsumer::ALL
            .iter()
            .map(|hit| {
                slow_consumers
                    .get_or_create(&[("reason", hit.label())])
                    .clone()
            })
            .collect();
        let outbound_bytes = Gauge::default();
        registry.register(
            "hubbub_outbound_bytes",
            "Bytes queued toward clients on this node (every connection's outbound queue \
             and what its writer took and has not yet written), as limits.node_outbound_bytes \
             counts them",
            outbound_bytes.clone(),
        );
        let inbound_bytes = Gauge::default();
        registry.register(
            "hubbub_inbound_bytes",
            "Bytes of messages still arriving from clients on this node (WebSocket frames \
             begun, at the size their header announces, and polling bodies being read), as \
             limits.node_inbound_bytes counts them",
            inbound_bytes.clone(),
        );
        let inbound_shed = Counter::default();
        registry.register(
            "hubbub_inbound_shed",
            "Connections closed (1013, or HTTP 503 for a polling body) because the node was \
             past limits.node_inbound_bytes and their message still arriving was among the \
             oldest",
            inbound_shed.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "hubbub_rate_limited",
            "Client frames refused with rate_limited",
            rate_limited.clone(),
        );
        let auth_failures = Family::<Labels1, Counter>::default();
        registry.register(
            "hubbub_auth_failures",
            "Connections refused for their credentials, by reason",
            auth_failures.clone(),
        );
        // Which build answers: a gauge at 1, its labels the version and commit.
        let build_info = Family::<Labels2, Gauge>::default();
        registry.register(
            "hubbub_build_info",
            "Always 1; the labels say which build this node runs (version from Cargo.toml, \
             commit from git at build time, unknown without git)",
            build_info.clone(),
        );
        build_info
            .get_or_create(&[("version", VERSION), ("commit", COMMIT)])
            .set(1);
        // The cluster port before authentication.
        let peer_unauthenticated = Gauge::default();
        registry.register(
            "hubbub_cluster_unauthenticated_connections",
            "Incoming peer connections not authenticated yet (TLS handshake or cookie \
             challenge in progress); at most cluster.max_unauthenticated",
            peer_unauthenticated.clone(),
        );
        let peer_refusals = Family::<Labels1, Counter>::default();
        registry.register(
            "hubbub_cluster_peer_connections_refused",
            "Incoming peer connections closed before they authenticated, by reason",
            peer_refusals.clone(),
        );
        let cluster_frames_dropped = Family::<Labels1, Counter>::default();
        registry.register(
            "hubbub_cluster_frames_dropped",
            "Frames from peers dropped unread, by reason: undecodable (malformed, too \
             large or another wire version), unknown_sender (from a node no session was \
             accepted for), bad_key (without the sender key issued to the node it names), \
             wrong_caller (a Raft call naming another node than its sender)",
            cluster_frames_dropped.clone(),
        );
        for reason in CLUSTER_DROP_REASONS {
            drop(cluster_frames_dropped.get_or_create(&[("reason", reason)]));
        }
        let replies_cut = Family::<Labels1, Counter>::default();
        registry.register(
            "hubbub_replies_cut",
            "Replies that left out what they would have held, by reply: history and join \
             by limits.max_reply_bytes, presence and join_members by limits.presence_page",
            replies_cut.clone(),
        );
        for reply in REPLY_CUTS {
            drop(replies_cut.get_or_create(&[("reply", reply)]));
        }
        let content_refused = Family::<Labels1, Counter>::default();
        registry.register(
            "hubbub_content_refused",
            "publish and direct content refused, by reason: control_character \
             (bad_request), bytes (limits.max_message_bytes), chars (limits.max_message_chars)",
            content_refused.clone(),
        );
        for reason in CONTENT_REFUSALS {
            drop(content_refused.get_or_create(&[("reason", reason)]));
        }
        let api_calls = Family::<Labels2, Counter>::default();
        registry.register(
            "hubbub_api_calls",
            "Server API calls answered (docs/api.md), by call (the path after /api/; \
             unknown for a path it does not serve) and HTTP status",
            api_calls.clone(),
        );
        let refusals = Family::<Labels1, Counter>::default();
        registry.register(
            "hubbub_limit_refusals",
            "Client requests refused by a per-node, per-connection or per-target limit, \
             by limit (each also answered rate_limited or room_limit)",
            refusals.clone(),
        );
        let limit_refusals = LIMITS
            .iter()
            .map(|limit| refusals.get_or_create(&[("limit", limit)]).clone())
            .collect();
        let delivery_gaps = Counter::default();
        registry.register(
            "hubbub_delivery_gaps",
            "Times a room caught up from the log and found messages no longer held (its connections got a gap frame)",
            delivery_gaps.clone(),
        );
        let delivery_behind = Counter::default();
        registry.register(
            "hubbub_delivery_behind",
            "Times a room's committed messages were not queued to its actor, the node's \
             delivery backlog (rooms.delivery_backlog_bytes) being full, and the room \
             caught up from the log instead",
            delivery_behind.clone(),
        );
        let presence_batches = Counter::default();
        registry.register(
            "hubbub_presence_batches",
            "presence_diff broadcasts that carried a batch of joins and leaves gathered \
             over rooms.presence_batch_ms (rooms over rooms.presence_batch_members)",
            presence_batches.clone(),
        );
        let room_state_entries = Gauge::default();
        registry.register(
            "hubbub_room_state_entries",
            "Per-user and per-connection entries the rooms on this node hold (members, \
             connections, names); follows current members, never everyone who joined",
            room_state_entries.clone(),
        );
        let session_timers = Gauge::default();
        registry.register(
            "hubbub_session_timers",
            "Token-expiry timers alive on this node; one per open connection with an \
             expiring token at most",
            session_timers.clone(),
        );
        let presence_entries = Gauge::default();
        registry.register(
            "hubbub_presence_entries",
            "Presence entries (node, room, user) the presence tracker holds: this node's \
             own and every up peer's as last heard; set every heartbeat",
            presence_entries.clone(),
        );
        let storage_bytes = Gauge::default();
        registry.register(
            "hubbub_storage_bytes",
            "Bytes the room logs' database file takes on disk (storage.dir); 0 with the \
             memory engine; read every 5 s",
            storage_bytes.clone(),
        );
        let history_bytes = Gauge::default();
        registry.register(
            "hubbub_history_bytes",
            "Bytes the rooms' history holds on this node, all shards together, as \
             rooms.history_bytes counts them; read every second",
            history_bytes.clone(),
        );
        let history_forgotten = Counter::default();
        registry.register(
            "hubbub_history_forgotten",
            "Messages the room logs forgot, oldest first, to stay within \
             rooms.history_bytes",
            history_forgotten.clone(),
        );
        let storage_commit = DurationHistogram::new(&LATENCY_BUCKETS);
        registry.register(
            "hubbub_storage_commit_duration_seconds",
            "Each commit of the room logs' database (storage.engine = \"durable\"): one \
             transaction holding every shard's waiting writes, with its fsync when \
             storage.fsync asks for one; the disk's share of a publish's latency",
            storage_commit.clone(),
        );
        let storage_queued = DurationHistogram::new(&LATENCY_BUCKETS);
        registry.register(
            "hubbub_storage_queued_seconds",
            "How long the oldest write of each commit waited for the log writer (it was \
             busy with the commit before)",
            storage_queued.clone(),
        );
        let hooks = super::hook_metrics::HookMetrics::register(&mut registry);
        registry.register_collector(Box::new(ProcessCollector));

        Self {
            registry,
            connections,
            rooms,
            messages,
            frames_in,
            frames_out,
            publish_duration,
            peers_up,
            peers_down,
            heartbeat_rtt,
            cluster_messages,
            cluster_out,
            cluster_in,
            cluster_in_invalid,
            slow_consumer_disconnects,
            outbound_bytes,
            inbound_bytes,
            inbound_shed,
            rate_limited,
            auth_failures,
            peer_unauthenticated,
            peer_refusals,
            cluster_frames_dropped,
            replies_cut,
            content_refused,
            api_calls,
            limit_refusals,
            presence_batches,
            delivery_gaps,
            delivery_behind,
            room_state_entries,
            session_timers,
            presence_entries,
            storage_bytes,
            history_bytes,
            history_forgotten,
            storage_commit,
            storage_queued,
            hooks,
        }
    }

    /// Encodes every metric (OpenMetrics text, ending in `# EOF`).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// Sets the open WebSocket connections (at scrape time).
    pub fn set_connections(&self, open: usize) {
        self.connections.set(gauge_value(open));
    }

    /// Sets the running Room actors (at scrape time).
    pub fn set_rooms(&self, running: usize) {
        self.rooms.set(gauge_value(running));
    }

    /// A client frame reached its Session, decoded as a request of `kind`
    /// (`Request::kind`).
    pub fn frame_in(&self, kind: &'static str) {
        match REQUEST_TYPES.iter().position(|t| *t == kind) {
            Some(i) => self.frames_in[i].inc(),
            None => self
                .messages
                .get_or_create(&[("direction", "in"), ("type", kind)])
                .inc(),
        };
    }

    /// A client frame that did not decode (bad JSON, unknown type, binary).
    pub fn frame_in_invalid(&self) {
        self.frame_in("invalid");
    }

    /// A server frame of type `kind` (see [`FrameType::of`]) was queued to one client.
    pub fn frame_out(&self, kind: FrameType) {
        self.frames_out[kind.0].inc();
    }

    /// A publish was fanned out `took` after its Session received it.
    pub fn publish_done(&self, took: Duration) {
        self.publish_duration.observe(took);
    }

    /// The peers this node knows, by whether they are in its view.
    pub fn set_peers(&self, up: usize, down: usize) {
        self.peers_up.set(gauge_value(up));
        self.peers_down.set(gauge_value(down));
    }

    /// A heartbeat's answer came back `rtt` after it was sent.
    pub fn heartbeat_rtt(&self, rtt: Duration) {
        self.heartbeat_rtt.observe(rtt);
    }

    /// An envelope carrying a body of `kind` (`wire::Body::kind`) went to a peer.
    pub fn cluster_message_out(&self, kind: &'static str) {
        self.cluster_count(&self.cluster_out, "out", kind);
    }

    /// An envelope carrying a body of `kind` arrived from a peer.
    pub fn cluster_message_in(&self, kind: &'static str) {
        self.cluster_count(&self.cluster_in, "in", kind);
    }

    /// An envelope arrived from a peer and did not decode.
    pub fn cluster_message_invalid(&self) {
        self.cluster_in_invalid.inc();
    }

    fn cluster_count(&self, known: &[Counter], direction: &'static str, kind: &'static str) {
        match CLUSTER_KINDS.iter().position(|k| *k == kind) {
            Some(i) => known[i].inc(),
            None => self
                .cluster_messages
                .get_or_create(&[("direction", direction), ("kind", kind)])
                .inc(),
        };
    }

    /// A connection was closed as a slow consumer (4009), having hit `bound`.
    pub fn slow_consumer_disconnect(&self, bound: SlowConsumer) {
        let index = SlowConsumer::ALL
            .iter()
            .position(|known| *known == bound)
            .unwrap_or_default();
        self.slow_consumer_disconnects[index].inc();
    }

    /// Sets the bytes queued toward clients (at scrape time).
    pub fn set_outbound_bytes(&self, bytes: u64) {
        self.outbound_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// A client frame was refused with `rate_limited`.
    /// Sets the bytes of messages still arriving (at scrape time).
    pub fn set_inbound_bytes(&self, bytes: u64) {
        self.inbound_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// A connection was closed for `limits.node_inbound_bytes`.
    pub fn inbound_shed(&self) {
        self.inbound_shed.inc();
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// A connection was refused for its credentials. `reason` is a fixed word (such as
    /// `missing`, `expired`, `bad_signature`), never anything taken from the request.
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// A reply was cut by a bound; `reply` is one of [`REPLY_CUTS`].
    pub fn reply_cut(&self, reply: &'static str) {
        self.replies_cut.get_or_create(&[("reply", reply)]).inc();
    }

    /// Content was refused; `reason` is one of [`CONTENT_REFUSALS`].
    pub fn content_refused(&self, reason: &'static str) {
        self.content_refused
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// A server API call was answered with `status`.
    pub fn api_call(&self, call: &'static str, status: u16) {
        let status = match status {
            200 => "200",
            400 => "400",
            401 => "401",
            403 => "403",
            404 => "404",
            405 => "405",
            409 => "409",
            413 => "413",
            429 => "429",
            503 => "503",
            _ => "other",
        };
        self.api_calls
            .get_or_create(&[("call", call), ("status", status)])
            .inc();
    }

    /// A request was refused by `limit`, one of [`LIMITS`].
    pub fn limit_refused(&self, limit: &'static str) {
        if let Some(i) = LIMITS.iter().position(|l| *l == limit) {
            self.limit_refusals[i].inc();
        }
    }

    /// A room caught up and found messages no longer held.
    pub fn delivery_gap(&self) {
        self.delivery_gaps.inc();
    }

    /// A room caught up from the log because its delivery backlog was full.
    pub fn delivery_behind(&self) {
        self.delivery_behind.inc();
    }

    /// A room sent one `presence_diff` for a batch of joins and leaves.
    pub fn presence_batch(&self) {
        self.presence_batches.inc();
    }

    /// A room's per-user entries changed by `delta` (see `hubbub_room_state_entries`).
    pub fn room_state_entries(&self, delta: i64) {
        self.room_state_entries.inc_by(delta);
    }

    /// The histograms the log writer observes each commit in
    /// (`hubbub_storage_commit_duration_seconds`, `hubbub_storage_queued_seconds`).
    pub fn storage_timings(&self) -> StorageTimings {
        StorageTimings {
            commit: self.storage_commit.clone(),
            queued: self.storage_queued.clone(),
        }
    }

    /// Sets the size of the room logs' database file (see `hubbub_storage_bytes`).
    pub fn set_storage_bytes(&self, bytes: u64) {
        self.storage_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Sets what the rooms' history holds (see `hubbub_history_bytes`) and counts the
    /// messages forgotten since the last call.
    pub fn set_history(&self, bytes: u64, newly_forgotten: u64) {
        self.history_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        if newly_forgotten > 0 {
            self.history_forgotten.inc_by(newly_forgotten);
        }
    }

    /// Sets the presence tracker's entries (see `hubbub_presence_entries`).
    pub fn set_presence_entries(&self, entries: usize) {
        self.presence_entries.set(gauge_value(entries));
    }

    /// A token-expiry timer started (`1`) or ended (`-1`).
    pub fn session_timers(&self, delta: i64) {
        self.session_timers.inc_by(delta);
    }

    /// Shows every reason an upgrade can be refused for at 0 from the start, so that
    /// `rate()` over them works before the first failure.
    pub fn auth_failure_reasons(&self, reasons: &[&'static str]) {
        for reason in reasons {
            drop(self.auth_failures.get_or_create(&[("reason", reason)]));
        }
    }

    // ---- the cluster port before authentication ----

    /// An incoming peer connection took a slot among `cluster.max_unauthenticated`.
    pub fn peer_unauthenticated_opened(&self) {
        self.peer_unauthenticated.inc();
    }

    /// An incoming peer connection authenticated or closed, releasing its slot.
    pub fn peer_unauthenticated_ended(&self) {
        self.peer_unauthenticated.dec();
    }

    /// An incoming peer connection was closed before it authenticated. `reason` is a
    /// fixed word (`membership::peer_port::REFUSAL_REASONS`).
    pub fn peer_refused(&self, reason: &'static str) {
        self.peer_refusals
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// A frame from a peer was dropped unread; `reason` is one of
    /// [`CLUSTER_DROP_REASONS`].
    pub fn cluster_frame_dropped(&self, reason: &'static str) {
        self.cluster_frames_dropped
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Shows every reason a peer connection can be refused for at 0 from the start.
    pub fn peer_refusal_reasons(&self, reasons: &[&'static str]) {
        for reason in reasons {
            drop(self.peer_refusals.get_or_create(&[("reason", reason)]));
        }
    }
}

/// The `reason` label of `hubbub_cluster_frames_dropped_total`, each shown from the start.
pub const CLUSTER_DROP_REASONS: [&str; 4] =
    ["undecodable", "unknown_sender", "bad_key", "wrong_caller"];

/// The `reply` label of `hubbub_replies_cut_total`, each shown from the start.
pub const REPLY_CUTS: [&str; 4] = ["history", "join", "join_members", "presence"];

/// The `reason` label of `hubbub_content_refused_total`, each shown from the start.
pub const CONTENT_REFUSALS: [&str; 3] = ["control_character", "bytes", "chars"];

/// The type of an encoded server frame, an index into [`SERVER_FRAME_TYPES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameType(usize);

impl FrameType {
    /// Reads the type from the JSON itself: `protocol::encode` writes the `type` tag
    /// first, so a broadcast encoded once is classified by every member's outbox
    /// without being decoded. Anything else is `other`.
    pub fn of(frame: &str) -> Self {
        let kind = frame
            .strip_prefix(r#"{"type":""#)
            .and_then(|rest| rest.split_once('"'))
            .map(|(kind, _)| kind);
        let last = SERVER_FRAME_TYPES.len() - 1;
        Self(
            kind.and_then(|kind| SERVER_FRAME_TYPES[..last].iter().position(|t| *t == kind))
                .unwrap_or(last),
        )
    }

    /// Its label value.
    pub fn name(self) -> &'static str {
        SERVER_FRAME_TYPES[self.0]
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What the room logs' writer thread times (see [`Metrics::storage_timings`]); the
/// default counts into histograms nobody reads (tests, the memory engine).
#[derive(Clone, Debug)]
pub struct StorageTimings {
    /// Each commit, fsync included when there was one.
    pub commit: DurationHistogram,
    /// How long the oldest write of each commit waited for the writer.
    pub queued: DurationHistogram,
}

impl Default for StorageTimings {
    fn default() -> Self {
        Self {
            commit: DurationHistogram::new(&LATENCY_BUCKETS),
            queued: DurationHistogram::new(&LATENCY_BUCKETS),
        }
    }
}

/// A histogram of durations with fixed buckets, counted with atomics only.
///
/// Each observation adds to one bucket and to the sum; a scrape reads the buckets
/// and derives `_count` from them, so the count always equals the `+Inf` bucket even
/// while observations race the scrape.
#[derive(Clone, Debug)]
pub struct DurationHistogram(Arc<HistogramCells>);

#[derive(Debug)]
struct HistogramCells {
    /// Upper bounds in seconds, ascending.
    bounds: &'static [f64],
    /// One more than `bounds`: the last counts what is above every bound.
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    /// A histogram with the given ascending upper bounds (seconds) and `+Inf`.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self(Arc::new(HistogramCells {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }))
    }

    /// Counts one duration.
    pub fn observe(&self, took: Duration) {
        let cells = &self.0;
        let seconds = took.as_secs_f64();
        let i = cells
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(cells.bounds.len());
        cells.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        cells.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let cells = &self.0;
        // Per-bucket counts; the encoder makes them cumulative.
        let buckets: Vec<(f64, u64)> = cells
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(cells.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = cells.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        encode, ChatMessage, DirectFrame, ErrorBody, ErrorCode, ReplyData, ServerFrame, UserInfo,
    };

    fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == name_and_labels).then(|| value.parse().ok())?
        })
    }

    fn user() -> UserInfo {
        UserInfo {
            id: "u".into(),
            name: "U".into(),
        }
    }

    /// Every ServerFrame variant, encoded as the node sends it, with its type.
    fn every_server_frame() -> Vec<(&'static str, ServerFrame)> {
        let message = ChatMessage {
            room: "r".into(),
            id: "i".into(),
            seq: 1,
            from: user(),
            content: "c".into(),
            ts: 0,
            data: None,
        };
        vec![
            (
                "welcome",
                ServerFrame::Welcome {
                    session: "s".into(),
                    user: user(),
                    node: "n".into(),
                    protocol: 1,
                    heartbeat_ms: 1,
                },
            ),
            ("reply", ServerFrame::ok(None, ReplyData::Empty {})),
            ("message", ServerFrame::Message(message)),
            (
                "typing",
                ServerFrame::Typing {
                    room: "r".into(),
                    user: user(),
                },
            ),
            (
                "presence_diff",
                ServerFrame::PresenceDiff {
                    room: "r".into(),
                    joins: vec![],
                    leaves: vec![],
                    updates: vec![],
                },
            ),
            (
                "direct",
                ServerFrame::Direct(DirectFrame {
                    id: "i".into(),
                    from: user(),
                    content: "c".into(),
                    ts: 0,
                }),
            ),
            (
                "renamed",
                ServerFrame::Renamed {
                    room: "r".into(),
                    user: user(),
                    old_name: "o".into(),
                },
            ),
            ("pong", ServerFrame::Pong { reference: None }),
            (
                "error",
                ServerFrame::failure(None, ErrorBody::new(ErrorCode::BadRequest, "x")),
            ),
            (
                "goodbye",
                ServerFrame::Goodbye {
                    reason: "shutdown".into(),
                    reconnect_after_ms: 1,
                },
            ),
        ]
    }

    #[test]
    fn every_server_frame_is_counted_under_its_type() {
        let metrics = Metrics::new();
        let frames = every_server_frame();
        assert_eq!(frames.len(), SERVER_FRAME_TYPES.len() - 1);
        for (kind, frame) in &frames {
            let classified = FrameType::of(&encode(frame));
            assert_eq!(classified.name(), *kind);
            metrics.frame_out(classified);
        }
        metrics.frame_out(FrameType::of("not a frame"));
        let text = metrics.encode().unwrap();
        for kind in SERVER_FRAME_TYPES {
            let series = format!(r#"hubbub_messages_total{{direction="out",type="{kind}"}}"#);
            assert_eq!(sample(&text, &series), Some(1.0), "{series} in\n{text}");
        }
    }

    #[test]
    fn request_types_and_wire_kinds_are_counted_including_unlisted_ones() {
        let metrics = Metrics::new();
        metrics.frame_in("publish");
        metrics.frame_in("publish");
        metrics.frame_in_invalid();
        metrics.frame_in("subscribe");
        metrics.cluster_message_out("raft_append");
        metrics.cluster_message_in("raft_answer");
        metrics.cluster_message_in("leave");
        metrics.cluster_message_invalid();
        let text = metrics.encode().unwrap();
        let value = |series: &str| sample(&text, series);
        assert_eq!(
            value(r#"hubbub_messages_total{direction="in",type="publish"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(r#"hubbub_messages_total{direction="in",type="invalid"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(r#"hubbub_messages_total{direction="in",type="subscribe"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(r#"hubbub_messages_total{direction="in",type="join"}"#),
            Some(0.0)
        );
        assert_eq!(
            value(r#"hubbub_cluster_messages_total{direction="out",kind="raft_append"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(r#"hubbub_cluster_messages_total{direction="in",kind="raft_answer"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(r#"hubbub_cluster_messages_total{direction="in",kind="leave"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(r#"hubbub_cluster_messages_total{direction="in",kind="invalid"}"#),
            Some(1.0)
        );
    }

    #[test]
    fn a_histogram_counts_each_duration_in_its_bucket() {
        let metrics = Metrics::new();
        metrics.publish_done(Duration::from_micros(50));
        metrics.publish_done(Duration::from_micros(300));
        metrics.publish_done(Duration::from_secs(60));
        assert_eq!(metrics.publish_duration.count(), 3);
        let text = metrics.encode().unwrap();
        let value = |series: &str| sample(&text, series);
        assert_eq!(
            value(r#"hubbub_publish_duration_seconds_bucket{le="0.0001"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(r#"hubbub_publish_duration_seconds_bucket{le="0.0005"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(r#"hubbub_publish_duration_seconds_bucket{le="5.0"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(r#"hubbub_publish_duration_seconds_bucket{le="+Inf"}"#),
            Some(3.0)
        );
        assert_eq!(value("hubbub_publish_duration_seconds_count"), Some(3.0));
        let sum = value("hubbub_publish_duration_seconds_sum").unwrap();
        assert!((sum - 60.00035).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn the_exposition_ends_in_eof_and_has_every_metric() {
        let metrics = Metrics::new();
        metrics.set_connections(3);
        metrics.set_rooms(2);
        metrics.set_peers(1, 1);
        metrics.auth_failure_reasons(&["expired", "missing_token"]);
        metrics.auth_failure("expired");
        metrics.rate_limited();
        metrics.slow_consumer_disconnect(SlowConsumer::Bytes);
        metrics.set_outbound_bytes(4_096);
        metrics.set_inbound_bytes(65_536);
        metrics.inbound_shed();
        metrics.heartbeat_rtt(Duration::from_millis(1));
        metrics.set_presence_entries(12);
        let text = metrics.encode().unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for (series, expected) in [
            ("hubbub_connections", 3.0),
            ("hubbub_rooms", 2.0),
            (r#"hubbub_cluster_peers{state="up"}"#, 1.0),
            (r#"hubbub_cluster_peers{state="down"}"#, 1.0),
            (r#"hubbub_auth_failures_total{reason="expired"}"#, 1.0),
            (r#"hubbub_auth_failures_total{reason="missing_token"}"#, 0.0),
            ("hubbub_rate_limited_total", 1.0),
            (
                r#"hubbub_slow_consumer_disconnects_total{reason="bytes"}"#,
                1.0,
            ),
            (
                r#"hubbub_slow_consumer_disconnects_total{reason="frames"}"#,
                0.0,
            ),
            (
                r#"hubbub_slow_consumer_disconnects_total{reason="node_budget"}"#,
                0.0,
            ),
            ("hubbub_outbound_bytes", 4_096.0),
            ("hubbub_inbound_bytes", 65_536.0),
            ("hubbub_inbound_shed_total", 1.0),
            ("hubbub_cluster_heartbeat_rtt_seconds_count", 1.0),
            ("hubbub_presence_entries", 12.0),
        ] {
            assert_eq!(sample(&text, series), Some(expected), "{series} in\n{text}");
        }
        #[cfg(target_os = "linux")]
        for name in [
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_cpu_seconds_total",
            "process_start_time_seconds",
        ] {
            let value = sample(&text, name).unwrap_or_else(|| panic!("{name} in\n{text}"));
            // A test process may not have used a whole clock tick of CPU yet.
            let least = if name == "process_cpu_seconds_total" {
                0.0
            } else {
                1.0
            };
            assert!(value >= least, "{name} = {value}");
        }
    }
}
