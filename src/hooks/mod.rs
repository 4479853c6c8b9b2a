//! The node's calls to the application's backend (docs/webhooks.md).
//!
//! Owns: the **connect hook** ([`connect`]: the backend allows or denies a WebSocket
//! upgrade and may name the user and rooms to join), the **publish hook**
//! ([`publish`]: before a message is ordered the backend accepts, rejects or rewrites
//! it), each with a timeout, a circuit breaker ([`breaker`]) and a failure policy,
//! called the same way ([`call`]);
//! and the **webhooks** ([`Webhooks`]: signed events POSTed to every `[[webhooks]]`
//! endpoint that wants them, one delivery task and bounded queue per endpoint,
//! [`webhook`], [`signing`]).
//!
//! Must not know: actors, the cluster, actix. Callers hand in what happened (a
//! session connected, a member joined, a message was committed); the transport asks
//! the connect hook, the Session the publish hook. HTTP goes through one shared
//! client ([`client`]).
//!
//! Who sends which event, so that each is sent by one node: connection events
//! (`connect`, `disconnect`) by the node where the connection is; `publish` and the
//! membership events (`join`, `leave`, `room_created`, `room_emptied`) by the leader
//! of the room's log shard, as the entry is applied (src/cluster/room_log.rs; the
//! member lists are src/cluster/raft/members.rs).

pub mod breaker;
pub mod call;
pub mod client;
pub mod connect;
pub mod publish;
pub mod signing;
pub mod webhook;

use crate::config::{Settings, WebhookEvent};
use crate::protocol::{now_ms, ChatMessage, UserInfo};
use crate::telemetry::Metrics;
use client::HttpClient;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use webhook::Endpoint;

/// Everything of a node that talks to the backend.
pub struct Hooks {
    /// `[hooks] connect_url`, when set.
    pub connect: Option<connect::ConnectHook>,
    /// `[hooks] publish_url`, when set.
    pub publish: Option<publish::PublishHook>,
    /// The `[[webhooks]]` endpoints (none: every event is a no-op).
    pub events: Arc<Webhooks>,
}

impl Hooks {
    /// The hooks and webhooks the (validated) settings describe. Nothing is sent
    /// until [`Webhooks::start`] has run on a runtime.
    pub fn new(settings: &Settings, metrics: &Metrics) -> Self {
        let hooks = &settings.hooks;
        // A node that talks to no backend builds no client (it reads the system's
        // TLS roots).
        let needed = !hooks.connect_url.is_empty()
            || !hooks.publish_url.is_empty()
            || !settings.webhooks.is_empty();
        let client = if needed {
            HttpClient::new()
        } else {
            HttpClient::disabled()
        };
        Self {
            connect: (!hooks.connect_url.is_empty())
                .then(|| connect::ConnectHook::new(hooks, client.clone(), metrics.hooks.clone())),
            publish: (!hooks.publish_url.is_empty()).then(|| {
                publish::PublishHook::new(
                    hooks,
                    &settings.node.name,
                    client.clone(),
                    metrics.hooks.clone(),
                )
            }),
            events: Arc::new(Webhooks::new(settings, metrics, client)),
        }
    }
}

/// What `check-config` says of the hooks and webhooks: which are on, their failure
/// policies, the endpoints by name. Never a URL (it may hold a token) or a secret.
/// Empty when none is configured.
pub fn describe(settings: &Settings) -> String {
    let hooks = &settings.hooks;
    let policy = |p: crate::config::FailurePolicy| match p {
        crate::config::FailurePolicy::FailOpen => "fail_open",
        crate::config::FailurePolicy::FailClosed => "fail_closed",
    };
    let mut text = String::new();
    if !hooks.connect_url.is_empty() {
        text.push_str(&format!(
            ", connect hook ({})",
            policy(hooks.connect_failure)
        ));
    }
    if !hooks.publish_url.is_empty() {
        let rooms = if hooks.publish_rooms.is_empty() {
            "every room".to_owned()
        } else {
            hooks.publish_rooms.join(" ")
        };
        text.push_str(&format!(
            ", publish hook for {rooms} ({})",
            policy(hooks.publish_failure)
        ));
    }
    if !settings.webhooks.is_empty() {
        let names: Vec<String> = settings
            .webhooks
            .iter()
            .enumerate()
            .map(|(i, w)| w.display_name(i))
            .collect();
        text.push_str(&format!(", webhooks [{}]", names.join(", ")));
    }
    text
}

/// The webhook endpoints of a node and what every event body carries.
pub struct Webhooks {
    node: String,
    /// When this node started (ms since the epoch): with `node`, names the run that
    /// `seq` of the node's own events counts in.
    started: u64,
    /// The node's event counter (all but `publish`).
    seq: AtomicU64,
    endpoints: Vec<Arc<Endpoint>>,
    client: HttpClient,
    running: AtomicBool,
}

impl Webhooks {
    fn new(settings: &Settings, metrics: &Metrics, client: HttpClient) -> Self {
        let endpoints = settings
            .webhooks
            .iter()
            .enumerate()
            .map(|(i, hook)| {
                let name = hook.display_name(i);
                let endpoint_metrics = metrics.hooks.endpoint(&name);
                Arc::new(Endpoint::new(name, hook.clone(), endpoint_metrics))
            })
            .collect();
        Self {
            node: settings.node.name.clone(),
            started: now_ms(),
            seq: AtomicU64::new(0),
            endpoints,
            client,
            running: AtomicBool::new(false),
        }
    }

    /// Webhooks that send nothing (tests of other parts).
    pub fn none() -> Self {
        Self {
            node: String::new(),
            started: 0,
            seq: AtomicU64::new(0),
            endpoints: Vec::new(),
            client: HttpClient::default(),
            running: AtomicBool::new(false),
        }
    }

    /// Starts one delivery task per endpoint on the current tokio runtime (the
    /// actor runtime: src/app.rs); once.
    pub fn start(&self) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        for endpoint in &self.endpoints {
            tokio::spawn(endpoint.clone().run(self.client.clone()));
        }
    }

    /// Waits, at most `within`, until every endpoint has delivered (or given up on)
    /// what it holds: a draining node sends its last events (its connections'
    /// `disconnect`s) before it stops. What is left after `within` is lost.
    pub async fn flush(&self, within: std::time::Duration) {
        let until = std::time::Instant::now() + within;
        while !self.endpoints.iter().all(|e| e.is_idle()) && std::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Whether some endpoint wants `event`.
    pub fn wants(&self, event: WebhookEvent) -> bool {
        self.endpoints.iter().any(|e| e.wants(event))
    }

    /// Whether some endpoint wants some event.
    pub fn wants_any(&self) -> bool {
        WebhookEvent::ALL.iter().any(|&event| self.wants(event))
    }

    /// Whether some endpoint wants a membership event (`join`, `leave`,
    /// `room_created`, `room_emptied`): the node then keeps the rooms' member lists
    /// in the room logs (src/cluster/member_log.rs).
    pub fn wants_membership(&self) -> bool {
        [
            WebhookEvent::Join,
            WebhookEvent::Leave,
            WebhookEvent::RoomCreated,
            WebhookEvent::RoomEmptied,
        ]
        .into_iter()
        .any(|event| self.wants(event))
    }

    /// Encodes an event once and queues it at every endpoint that wants it; answers
    /// where it was queued.
    fn emit(&self, event: WebhookEvent, body: impl FnOnce() -> Value) -> Receipt {
        if !self.wants(event) {
            return Receipt::default();
        }
        let encoded: Arc<str> = Arc::from(body().to_string());
        let mut receipt = Receipt::default();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if endpoint.wants(event) {
                if let Some(position) = endpoint.push_at(encoded.clone()) {
                    receipt.0.push((i, position));
                }
            }
        }
        receipt
    }

    /// Whether every endpoint that queued the event of `receipt` is done with it
    /// (delivered it, or had it refused).
    pub fn done_with(&self, receipt: &Receipt) -> bool {
        receipt
            .0
            .iter()
            .all(|&(i, position)| self.endpoints.get(i).is_none_or(|e| e.done() >= position))
    }

    /// The fields of a node's own event (`connect`, `disconnect`).
    fn own(&self, event: WebhookEvent) -> Value {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        json!({
            "event": event.as_str(),
            "node": self.node,
            "node_started": self.started,
            "timestamp": now_ms(),
            "delivery_id": uuid::Uuid::now_v7().to_string(),
            "seq": seq,
        })
    }

    /// A connection of `user` opened (`Connect`) or closed (`Disconnect`) here.
    pub fn connection(&self, event: WebhookEvent, session: &str, user: &UserInfo) {
        let _ = self.emit(event, || {
            let mut body = self.own(event);
            body["session"] = json!(session);
            body["user"] = json!(user);
            body
        });
    }

    /// Sends `connect` for a connection of `user` now, and `disconnect` when the
    /// returned guard drops (the session ended, however it ended). None when no
    /// endpoint wants `disconnect`: a connection then holds nothing for it.
    pub fn connected(self: &Arc<Self>, session: &str, user: &UserInfo) -> Option<Connected> {
        self.connection(WebhookEvent::Connect, session, user);
        self.wants(WebhookEvent::Disconnect).then(|| Connected {
            events: self.clone(),
            session: session.to_owned(),
            user: user.clone(),
        })
    }

    /// A change of a room's member list, committed in its log (sent by the shard's
    /// leader): `join` (a user's first connection in the room, anywhere), `leave` (its
    /// last), `room_created` (the room's first member), `room_emptied` (its last). The
    /// numbers and the delivery id are the log's, the same whichever node sends it.
    pub fn room_event(&self, event: &MembershipEvent<'_>) -> Receipt {
        let kind = event.kind;
        self.emit(kind, || {
            let mut body = json!({
                "event": kind.as_str(),
                "node": self.node,
                "timestamp": event.ts,
                "delivery_id": event.delivery_id,
                "room": event.room,
                "life": event.life,
                "seq": event.seq,
                "message_seq": event.message_seq,
            });
            if let Some(user) = event.user {
                body["user"] = json!(user);
            }
            body
        })
    }

    /// A message was committed in its room's log (sent by the shard's leader). The
    /// delivery id is the message's id and its room ([`publish_delivery_id`]) and
    /// `seq` the room's, so the event is the same whichever node sends it.
    pub fn published(&self, message: &ChatMessage) -> Receipt {
        self.emit(WebhookEvent::Publish, || {
            json!({
                "event": "publish",
                "node": self.node,
                "timestamp": now_ms(),
                "delivery_id": publish_delivery_id(message),
                "room": message.room,
                "seq": message.seq,
                "message": message,
            })
        })
    }
}

/// Where one event was queued: (endpoint, position) for each endpoint that took it
/// (none when no endpoint wanted it or every queue was full).
#[derive(Debug, Default, Clone)]
pub struct Receipt(Vec<(usize, u64)>);

impl Receipt {
    /// Whether no endpoint holds the event.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A change of a room's member list as the room's log numbered it (the cluster's
/// member lists, src/cluster/raft/members.rs, hand these in).
pub struct MembershipEvent<'a> {
    /// `Join`, `Leave`, `RoomCreated` or `RoomEmptied`.
    pub kind: WebhookEvent,
    pub room: &'a str,
    /// Who joined or left (none for the room's own events).
    pub user: Option<&'a UserInfo>,
    /// Which life of the room (one more at every `room_created` of the shard).
    pub life: u64,
    /// 1 at the life's `room_created`, one more per event.
    pub seq: u64,
    /// The room's last message seq then.
    pub message_seq: u64,
    /// When it happened (ms since the epoch).
    pub ts: u64,
    /// The same on every node.
    pub delivery_id: String,
}

/// A `publish` event's delivery id: `<message id>@<room>`. The id alone is not
/// enough: one publish to several rooms (protocol v1 `rooms`, the server API's
/// `broadcast`) gives every room's message the same id, and each room's is its own
/// event. The same on every node, so a failover's resend deduplicates.
pub fn publish_delivery_id(message: &ChatMessage) -> String {
    format!("{}@{}", message.id, message.room)
}

/// A connection's place in the webhooks: `disconnect` is sent when it drops.
pub struct Connected {
    events: Arc<Webhooks>,
    session: String,
    user: UserInfo,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.events
            .connection(WebhookEvent::Disconnect, &self.session, &self.user);
    }
}
