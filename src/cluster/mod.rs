//! The cluster layer: nodes that form one ractor_cluster and serve rooms, presence and
//! direct messages across machines, with no broker.
//!
//! ```text
//!   NodeSupervisor
//!     └── ClusterSupervisor                 (supervisor.rs)
//!           ├── Membership                  (membership.rs) ── NodeServer (ractor_cluster)
//!           └── Endpoint                    (endpoint.rs)
//! ```
//!
//! - [`wire`]: every message that crosses nodes; versioned; decoded with a `Result`.
//! - [`raft`]: the Raft room logs (types, state machine, log store, network, host).
//! - [`view`]: who this node believes is up (pure).
//! - [`room_log`]: the room logs behind the actors' port (Raft shard host, sink, link).
//! - [`tracker`] and [`presence_sync`]: presence without an owner (the pure tracker,
//!   and the port that puts it on the wire: deltas, digests, node down).
//! - `membership`: dials seeds and gossiped peers, redials with backoff, runs our
//!   own heartbeat and failure detector (ractor_cluster detects neither a frozen nor a
//!   partitioned peer), and publishes the view.
//! - `endpoint`: the ONLY actor peers can see (Session actors are never advertised).
//!   It receives every envelope, decodes it and hands it to Membership, the room's
//!   actor, or Presence.
//!
//! [`Cluster`] is the handle the rest of the node uses: the current view, sender keys,
//! and `send`. In single-node mode there is no `Cluster` at all: the room logs are a
//! one-voter Raft group of each shard. docs/cluster.md states what is guaranteed and what is not.

pub mod endpoint;
pub mod member_log;
pub mod membership;
pub mod presence_sync;
pub mod raft;
pub mod room_log;
pub mod sender_keys;
pub mod shards;
pub mod supervisor;
pub mod tracker;
pub mod view;
pub mod wire;

pub use endpoint::EndpointMessage;
pub use view::View;

use crate::telemetry::Metrics;
use ractor::ActorRef;
use sender_keys::{Refusal, SenderKeys};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use wire::{Body, Envelope};

/// The process group every node's Endpoint joins, under `hubbub.node.<name>`.
pub const ENDPOINT_GROUP_PREFIX: &str = "hubbub.node.";

/// The pg group name of a node's Endpoint.
pub fn endpoint_group(node: &str) -> String {
    format!("{ENDPOINT_GROUP_PREFIX}{node}")
}

/// An envelope encoded for the wire, and the kind of its body (for the metrics).
#[derive(Clone, Debug)]
pub struct Encoded {
    kind: &'static str,
    bytes: Vec<u8>,
}

/// This node's handle on the cluster, shared by every actor that talks to peers.
pub struct Cluster {
    /// This node's name.
    pub me: String,
    /// Random per process start.
    pub incarnation: u64,
    /// How often heartbeats go out.
    pub heartbeat: Duration,
    /// How long a silent peer stays up.
    pub failure_timeout: Duration,
    started: Instant,
    view_tx: watch::Sender<Arc<View>>,
    endpoints: RwLock<HashMap<String, ActorRef<EndpointMessage>>>,
    /// Each peer's HTTP listener as it gossiped it (membership.rs), for the Socket.IO
    /// relay (transport/socketio_forward.rs).
    http_addrs: RwLock<HashMap<String, String>>,
    /// The sender keys issued to peers and by them (sender_keys.rs).
    keys: Mutex<SenderKeys>,
    next_req: AtomicU64,
    /// The node's metrics: every envelope sent is counted here by kind.
    pub metrics: Arc<Metrics>,
    /// The Raft shards of the room logs, once started (cluster/raft/host.rs).
    shard_host: std::sync::OnceLock<Arc<raft::host::ShardHost>>,
    /// Presence across nodes, once started (cluster/presence_sync.rs).
    presence_port: std::sync::OnceLock<Arc<presence_sync::TrackerPort>>,
}

impl Cluster {
    /// A handle for node `me`, alone in its view until Membership learns more.
    pub fn new(
        me: &str,
        heartbeat: Duration,
        failure_timeout: Duration,
        size: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let incarnation = uuid::Uuid::new_v4().as_u64_pair().0;
        let (view_tx, _) = watch::channel(Arc::new(View::solo(me, incarnation, size)));
        Self {
            me: me.to_owned(),
            incarnation,
            heartbeat,
            failure_timeout,
            started: Instant::now(),
            view_tx,
            endpoints: RwLock::new(HashMap::new()),
            http_addrs: RwLock::new(HashMap::new()),
            keys: Mutex::new(SenderKeys::default()),
            next_req: AtomicU64::new(1),
            metrics,
            shard_host: std::sync::OnceLock::new(),
            presence_port: std::sync::OnceLock::new(),
        }
    }

    /// Records the HTTP address `node` gossiped for itself (empty: none).
    pub fn set_http_addr(&self, node: &str, addr: &str) {
        let mut addrs = self.http_addrs.write().unwrap_or_else(|e| e.into_inner());
        if addr.is_empty() {
            addrs.remove(node);
        } else if addrs.get(node).is_none_or(|known| known != addr) {
            addrs.insert(node.to_owned(), addr.to_owned());
        }
    }

    /// The HTTP address `node` gossiped for itself, if any.
    pub fn http_addr(&self, node: &str) -> Option<String> {
        let addrs = self.http_addrs.read().unwrap_or_else(|e| e.into_inner());
        addrs.get(node).cloned()
    }

    /// The Raft shards of the room logs, once the node started them.
    pub fn shard_host(&self) -> Option<Arc<raft::host::ShardHost>> {
        self.shard_host.get().cloned()
    }

    /// Records the started shard host (once; the node does it at start).
    pub fn set_shard_host(&self, host: Arc<raft::host::ShardHost>) {
        let _ = self.shard_host.set(host);
    }

    /// Presence across nodes, once the node started it: the Endpoint hands it presence
    /// traffic, Membership its heartbeats and the peers it declares down.
    pub fn presence_port(&self) -> Option<Arc<presence_sync::TrackerPort>> {
        self.presence_port.get().cloned()
    }

    /// Records the presence port (once; the node does it at start).
    pub fn set_presence_port(&self, port: Arc<presence_sync::TrackerPort>) {
        let _ = self.presence_port.set(port);
    }

    /// Milliseconds on this node's monotonic clock.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        self.view_tx.borrow().clone()
    }

    /// Notified on every view change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.view_tx.subscribe()
    }

    /// Publishes a new view (Membership only). Unchanged views are not republished.
    pub fn publish_view(&self, view: View) {
        self.view_tx.send_if_modified(|current| {
            if current.id == view.id && current.quorum == view.quorum {
                false
            } else {
                *current = Arc::new(view);
                true
            }
        });
    }

    /// Records (or forgets) where a peer's Endpoint is (Membership only).
    pub fn set_endpoint(&self, node: &str, endpoint: Option<ActorRef<EndpointMessage>>) {
        if let Ok(mut endpoints) = self.endpoints.write() {
            match endpoint {
                Some(endpoint) => endpoints.insert(node.to_owned(), endpoint),
                None => endpoints.remove(node),
            };
        }
    }

    /// We accepted a session for `name` in incarnation `inc` (Membership only): the
    /// key its frames must carry (stable for the incarnation).
    pub fn accept_sender(&self, name: &str, inc: u64) -> String {
        self.with_keys(|keys| keys.accept(name, inc))
    }

    /// The key to offer `name` again, while it has not shown it holds it.
    pub fn key_to_offer(&self, name: &str) -> Option<String> {
        self.with_keys(|keys| keys.to_offer(name))
    }

    /// Checks that a frame claiming to come from `name` (incarnation `inc`) carries the
    /// key issued to it (the Endpoint, for every frame but a key offer).
    pub fn check_sender(&self, name: &str, inc: u64, key: &str) -> Result<(), Refusal> {
        self.with_keys(|keys| keys.check(name, inc, key))
    }

    /// `name` offers the key for our frames to it; true when taken.
    pub fn key_offered(&self, name: &str, inc: u64, key: &str) -> bool {
        self.with_keys(|keys| keys.offered(name, inc, key))
    }

    fn with_keys<T>(&self, f: impl FnOnce(&mut SenderKeys) -> T) -> T {
        // A panic elsewhere while the lock was held leaves the keys whole.
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut keys)
    }

    /// A fresh request number, unique on this node.
    pub fn next_req(&self) -> u64 {
        self.next_req.fetch_add(1, Ordering::Relaxed)
    }

    /// Wraps a body in this node's envelope and encodes it.
    pub fn encode(&self, body: Body) -> Encoded {
        let kind = body.kind();
        let bytes = wire::encode(&Envelope {
            from: self.me.clone(),
            inc: self.incarnation,
            body,
        });
        Encoded { kind, bytes }
    }

    /// Sends a body to one node; false when that node is not reachable.
    pub fn send(&self, to: &str, body: Body) -> bool {
        self.send_encoded(to, &self.encode(body))
    }

    /// Sends an already encoded envelope (encode once, send to many), sealed with the
    /// key `to` issued us. A peer whose Endpoint is not known, or that has not given
    /// us its key yet, is not reachable (false); only a key offer goes without one.
    /// Each envelope sent is counted in `hubbub_cluster_messages_total`, before it
    /// leaves: once it has, the peer may have acted on it before this thread runs on.
    pub fn send_encoded(&self, to: &str, encoded: &Encoded) -> bool {
        let endpoint = self
            .endpoints
            .read()
            .ok()
            .and_then(|endpoints| endpoints.get(to).cloned());
        let Some(endpoint) = endpoint else {
            return false;
        };
        let key = if encoded.kind == "sender_key" {
            Some(String::new())
        } else {
            self.with_keys(|keys| keys.key_for(to).map(str::to_owned))
        };
        let Some(key) = key else {
            return false;
        };
        self.metrics.cluster_message_out(encoded.kind);
        let frame = wire::seal(&key, &[&encoded.bytes]);
        endpoint.cast(EndpointMessage::Frame(frame)).is_ok()
    }

    /// Sends one body to several nodes, encoding it once.
    pub fn send_to_all<'a>(&self, to: impl IntoIterator<Item = &'a String>, body: Body) {
        let bytes = self.encode(body);
        for node in to {
            self.send_encoded(node, &bytes);
        }
    }
}
