//! The room logs as the actors see them: the Raft shard host behind the port
//! ([`crate::actors::port::RoomLog`]).
//!
//! - [`RaftRoomLog`] implements the port: an append becomes a `Publish` command on
//!   the room's shard (stamped here with its id and time, so every replica applies
//!   the same entry), and a read is served from this node's applied copy.
//! - [`RoomSink`] is where the shards' state machines put what they commit: it casts
//!   each room's messages, in log order, to the room's actor if it runs here (a room
//!   that starts later reads the log instead).
//! - [`EndpointLink`] carries Raft calls over the cluster's one Endpoint; a node alone
//!   uses [`NoPeers`].
//! - [`boot`] opens the log database and starts the host: the node's `PortBoot`.
//!
//! Every publish carries an idempotency key: the client's, or else one made from the
//! message id. The proposer retries a batch whose answer was lost; with a key, the
//! retry answers the original instead of ordering the message twice.

use super::raft::host::{NodeNames, ProposeError, ShardHost, Timing, Wiring};
use super::raft::log_store::DB_FILE;
use super::raft::members::{RoomEvent, RoomEventKind};
use super::raft::network::RaftLink;
use super::raft::state_machine::{ApplySink, Committed, Retention, Trimmed};
use super::raft::types::{CommandOutcome, NodeId, ShardCommand, ShardId};
use super::raft::LogDb;
use super::shards::{node_id, shard_of, Placement};
use super::view::View;
use super::wire::{Body, RaftAnswer, RaftCall};
use super::Cluster;
use crate::actors::port::{Append, Appended, LogRead, PortFuture, RoomLog};
use crate::actors::{RoomDirectory, RoomMessage};
use crate::config::WebhookEvent;
use crate::config::{Settings, StorageEngine};
use crate::hooks::{MembershipEvent, Receipt, Webhooks};
use crate::protocol::{now_ms, ErrorBody, ErrorCode};
use crate::telemetry::Metrics;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// The port's room log, on the node's shard host.
pub struct RaftRoomLog {
    host: Arc<ShardHost>,
}

impl RaftRoomLog {
    pub fn new(host: Arc<ShardHost>) -> Self {
        Self { host }
    }

    fn shard(&self, room: &str) -> ShardId {
        shard_of(room, self.host.placement().shards())
    }
}

impl RoomLog for RaftRoomLog {
    fn append(&self, append: Append) -> PortFuture<Result<Appended, ErrorBody>> {
        let host = self.host.clone();
        let shard = self.shard(&append.room);
        let id = append.id;
        let idempotency_key = Some(append.idempotency_key.unwrap_or_else(|| format!("~{id}")));
        let command = match append.data {
            None => ShardCommand::Publish {
                room: append.room,
                from: append.from,
                content: append.content,
                id,
                ts: now_ms(),
                idempotency_key,
            },
            Some(data) => ShardCommand::PublishData {
                room: append.room,
                from: append.from,
                content: append.content,
                data: data.as_json_text().to_owned(),
                id,
                ts: now_ms(),
                idempotency_key,
            },
        };
        // Queued now, not when the future is first polled: a room's appends are ordered
        // in the order the Room asked for them (one connection's publishes keep their
        // order however many are in flight).
        let queued = host.enqueue(shard, command);
        Box::pin(async move {
            let outcome = match queued {
                Ok(committed) => committed.await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(CommandOutcome::Published { id, seq, ts }) => Ok(Appended {
                    id,
                    seq,
                    ts,
                    duplicate: false,
                }),
                Ok(CommandOutcome::Duplicate { id, seq, ts }) => Ok(Appended {
                    id,
                    seq,
                    ts,
                    duplicate: true,
                }),
                Ok(CommandOutcome::Refused { reason }) => Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!("the room's log refused the message: {reason:?}"),
                )),
                Ok(
                    other @ (CommandOutcome::NodesSet
                    | CommandOutcome::MembersNoted { .. }
                    | CommandOutcome::Marked),
                ) => Err(ErrorBody::new(
                    ErrorCode::Internal,
                    format!("the room's log answered a publish with {other:?}"),
                )),
                Err(ProposeError::Unavailable(reason)) => Err(ErrorBody::new(
                    ErrorCode::Unavailable,
                    format!("{reason}; retry"),
                )),
            }
        })
    }

    fn read(&self, room: &str, after: Option<u64>) -> LogRead {
        let Some(reader) = self.host.reader(self.shard(room)) else {
            return LogRead::default();
        };
        let joined = reader.join(room, after);
        LogRead {
            seq: joined.seq,
            messages: joined.messages,
            gap: joined.gap,
        }
    }

    fn unready(&self) -> Option<String> {
        let shards = self.host.placement().shards();
        // Once started, a shard electing a new leader (its last one failed) while this
        // node reaches a majority of its voters is not a reason to turn clients away:
        // only being cut off is. While starting, every shard must have had a leader.
        let settled = self.host.is_settled();
        let mut reasons: Vec<String> = (0..shards)
            .filter_map(|shard| {
                if settled {
                    self.host.cut_off_reason(shard)
                } else {
                    self.host.why_not(shard)
                }
            })
            .collect();
        let unavailable = reasons.len();
        reasons.dedup();
        (unavailable > 0).then(|| {
            self.host.explain(format!(
                "{unavailable} of {shards} room-log shards cannot order messages here: {}",
                reasons.join("; ")
            ))
        })
    }

    fn unavailable(&self, room: &str) -> Option<String> {
        self.host.unavailable(self.shard(room))
    }

    fn may_trail(&self, room: &str) -> bool {
        self.host.leader(self.shard(room)) != Some(self.host.me())
    }

    fn shutdown(&self) -> PortFuture<()> {
        let host = self.host.clone();
        Box::pin(async move { host.shutdown().await })
    }
}

/// Delivers what the shards commit to the Room actors running here, and, on the
/// shard's leader, to the webhook endpoints: `publish` for each message, and the
/// member lists' events (`join`, `leave`, `room_created`, `room_emptied`).
pub struct RoomSink {
    rooms: RoomDirectory,
    /// `hubbub_delivery_behind` counts the rooms told to catch up.
    metrics: Arc<Metrics>,
    shards: u32,
    events: Arc<Webhooks>,
    /// The host, once started: who leads each shard.
    host: OnceLock<Weak<ShardHost>>,
    /// `hooks.webhook_replay_secs`; zero: no replay.
    replay: Duration,
    /// The last term of each shard this node led and replayed `publish` events for.
    replayed: Mutex<BTreeMap<ShardId, u64>>,
    /// The events of each shard this node leads that an endpoint still holds, and
    /// the mark last recorded: what `record_marks` proposes.
    undelivered: Mutex<BTreeMap<ShardId, Undelivered>>,
}

/// A led shard's events still queued at some endpoint.
#[derive(Default)]
struct Undelivered {
    /// (stamp, where it was queued), in the order sent.
    events: VecDeque<(u64, Receipt)>,
    /// The newest stamp sent.
    newest: u64,
    /// The mark last proposed.
    recorded: u64,
}

/// How far back of the recorded mark a new leader starts its resend: entries are
/// stamped by their proposers' clocks, which may lag the leader's by this much.
pub const MARK_MARGIN_MS: u64 = 5_000;

/// How much a shard's mark must have moved before it is recorded again.
const MARK_STEP_MS: u64 = 1_000;

impl RoomSink {
    /// The term of `shard` if this node leads it now (None until the host started).
    fn term_led(&self, shard: ShardId) -> Option<(Arc<ShardHost>, u64)> {
        let host = self.host.get().and_then(Weak::upgrade)?;
        let term = {
            let metrics = host.raft(shard)?.metrics();
            let metrics = metrics.borrow();
            (metrics.current_leader == Some(host.me())).then_some(metrics.current_term)?
        };
        Some((host, term))
    }

    /// The first time this node is seen leading `shard` in a term (here as an entry
    /// applies, or by the watcher when no entry comes), it sends again the events of
    /// the shard's messages and member lists stamped within the replay window, but
    /// those of `applying` and `events` (sent next anyway): the previous leader may
    /// have applied them and not delivered them, and this node applied them as a
    /// follower, sending nothing. Their delivery ids are the same whichever node
    /// sends them, so a backend drops what it has. Returns whether this node leads
    /// `shard`.
    fn lead(&self, shard: ShardId, applying: &[Committed], events: &[RoomEvent]) -> bool {
        let Some((host, term)) = self.term_led(shard) else {
            return false;
        };
        if self.replay.is_zero() {
            return true;
        }
        let Ok(mut replayed) = self.replayed.lock() else {
            return true;
        };
        if replayed.get(&shard) == Some(&term) {
            return true;
        }
        replayed.insert(shard, term);
        let Some(reader) = host.reader(shard) else {
            return true;
        };
        // From the mark the previous leader recorded (everything stamped before it
        // was delivered), less the clocks' margin; without one, the replay window.
        let since = match reader.webhook_mark() {
            Some(mark) => mark.saturating_sub(MARK_MARGIN_MS),
            None => now_ms().saturating_sub(self.replay.as_millis() as u64),
        };
        self.forget(shard);
        // By id and room: one publish to several rooms gives each the same id.
        let skip: BTreeSet<(&str, &str)> = applying
            .iter()
            .map(|c| (c.message.id.as_str(), c.message.room.as_str()))
            .collect();
        let messages: Vec<_> = if self.events.wants(WebhookEvent::Publish) {
            reader
                .recent(since)
                .into_iter()
                .filter(|m| !skip.contains(&(m.id.as_str(), m.room.as_str())))
                .collect()
        } else {
            Vec::new()
        };
        let room_events: Vec<_> = reader
            .recent_room_events(since)
            .into_iter()
            .filter(|e| !events.contains(e))
            .collect();
        if !messages.is_empty() || !room_events.is_empty() {
            tracing::info!(
                shard,
                term,
                messages = messages.len(),
                room_events = room_events.len(),
                "leading a shard: sending its recent events again"
            );
        }
        for message in &messages {
            let receipt = self.events.published(message);
            self.sent(shard, message.ts, receipt);
        }
        for event in &room_events {
            self.send_room_event(shard, event);
        }
        true
    }

    /// An event of `shard` stamped `ts` was queued as `receipt`.
    fn sent(&self, shard: ShardId, ts: u64, receipt: Receipt) {
        let Ok(mut undelivered) = self.undelivered.lock() else {
            return;
        };
        let entry = undelivered.entry(shard).or_default();
        entry.newest = entry.newest.max(ts);
        if !receipt.is_empty() {
            entry.events.push_back((ts, receipt));
        }
    }

    /// This node no longer leads `shard` (or leads it anew): what it tracked there
    /// is the next leader's to resend.
    fn forget(&self, shard: ShardId) {
        if let Ok(mut undelivered) = self.undelivered.lock() {
            undelivered.remove(&shard);
        }
    }

    /// For each shard this node leads, the stamp before which every event it sent
    /// is delivered (the oldest stamp still queued, or the newest sent when none is),
    /// proposed as the shard's `WebhookMark` once it moved by [`MARK_STEP_MS`].
    fn record_marks(&self, host: &Arc<ShardHost>) {
        let Ok(mut undelivered) = self.undelivered.lock() else {
            return;
        };
        let mut due = Vec::new();
        for (&shard, entry) in undelivered.iter_mut() {
            if self.term_led(shard).is_none() {
                continue;
            }
            entry
                .events
                .retain(|(_, receipt)| !self.events.done_with(receipt));
            let mark = entry
                .events
                .iter()
                .map(|(ts, _)| *ts)
                .min()
                .unwrap_or(entry.newest);
            if mark >= entry.recorded + MARK_STEP_MS {
                entry.recorded = mark;
                due.push((shard, mark));
            }
        }
        undelivered.retain(|&shard, _| self.term_led(shard).is_some());
        drop(undelivered);
        for (shard, ts) in due {
            if let Ok(answer) = host.enqueue(shard, ShardCommand::WebhookMark { ts }) {
                tokio::spawn(answer);
            }
        }
    }
}

impl RoomSink {
    fn send_room_event(&self, shard: ShardId, event: &RoomEvent) {
        let kind = match event.kind {
            RoomEventKind::RoomCreated => WebhookEvent::RoomCreated,
            RoomEventKind::Join => WebhookEvent::Join,
            RoomEventKind::Leave => WebhookEvent::Leave,
            RoomEventKind::RoomEmptied => WebhookEvent::RoomEmptied,
        };
        let receipt = self.events.room_event(&MembershipEvent {
            kind,
            room: &event.room,
            user: event.user.as_ref(),
            life: event.life,
            seq: event.seq,
            message_seq: event.message_seq,
            ts: event.ts,
            delivery_id: event.delivery_id(),
        });
        self.sent(shard, event.ts, receipt);
    }
}

impl ApplySink for RoomSink {
    fn committed(&self, shard: ShardId, committed: Vec<Committed>) {
        self.applied(shard, committed, Vec::new());
    }

    fn applied(&self, shard: ShardId, committed: Vec<Committed>, events: Vec<RoomEvent>) {
        // Exactly one node sends a message's `publish` event, and a member list's
        // events: the shard's leader, as it applies the entry. What a leadership
        // change lets slip between two leaders is sent again by the new one (`lead`).
        let publish = self.events.wants(WebhookEvent::Publish) && !committed.is_empty();
        if (publish || !events.is_empty()) && self.lead(shard, &committed, &events) {
            if publish {
                for entry in &committed {
                    let receipt = self.events.published(&entry.message);
                    self.sent(shard, entry.message.ts, receipt);
                }
            }
            for event in &events {
                self.send_room_event(shard, event);
            }
        }
        // Grouped per room, each group in log order.
        let mut by_room: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for entry in committed {
            by_room.entry(entry.room).or_default().push(entry.message);
        }
        for (room, messages) in by_room {
            self.rooms.deliver(&room, messages, &self.metrics);
        }
    }

    fn trimmed(&self, _shard: ShardId, trimmed: Vec<Trimmed>) {
        for trim in trimmed {
            if let Some(actor) = self.rooms.get(&trim.room) {
                let _ = actor.cast(RoomMessage::Trimmed {
                    first_held: trim.first_held,
                });
            }
        }
    }

    fn snapshot_installed(&self, shard: ShardId) {
        for room in self.rooms.names() {
            if shard_of(&room, self.shards) == shard {
                if let Some(actor) = self.rooms.get(&room) {
                    let _ = actor.cast(RoomMessage::Reread);
                }
            }
        }
    }
}

/// Raft calls over the cluster Endpoint, addressed by node name.
pub struct EndpointLink {
    cluster: Arc<Cluster>,
    names: Arc<NodeNames>,
}

impl EndpointLink {
    fn name(&self, id: NodeId) -> Option<String> {
        self.names.get(id)
    }
}

impl RaftLink for EndpointLink {
    fn send_call(&self, to: NodeId, call: RaftCall) -> bool {
        self.name(to)
            .is_some_and(|name| self.cluster.send(&name, Body::RaftCall(call)))
    }

    fn send_answer(&self, to: NodeId, answer: RaftAnswer) -> bool {
        self.name(to)
            .is_some_and(|name| self.cluster.send(&name, Body::RaftAnswer(answer)))
    }
}

/// The link of a node alone: there is nobody to call.
pub struct NoPeers;

impl RaftLink for NoPeers {
    fn send_call(&self, _to: NodeId, _call: RaftCall) -> bool {
        false
    }

    fn send_answer(&self, _to: NodeId, _answer: RaftAnswer) -> bool {
        false
    }
}

/// Opens the log database (`[storage]`) and starts every shard of this node: the room
/// logs of [`crate::actors::PortBoot`]. A clear error when the data directory cannot
/// be used.
pub async fn start_host(
    settings: &Settings,
    cluster: Option<Arc<Cluster>>,
    rooms: RoomDirectory,
    metrics: Arc<Metrics>,
    events: Arc<Webhooks>,
) -> Result<Arc<ShardHost>, String> {
    let me = settings.node.name.clone();
    let nodes = settings.cluster_nodes();
    let placement = Placement::new(&nodes, settings.cluster.shards, settings.cluster.replicas)
        .map_err(|e| format!("cluster.voters: {e}"))?;
    let (db, file) = match settings.storage.engine {
        StorageEngine::Memory => (LogDb::memory(), None),
        StorageEngine::Durable => {
            let fsync = settings.storage.fsync_policy()?;
            let dir = settings.storage.dir.join(&me);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("storage.dir: cannot create {}: {e}", dir.display()))?;
            let db = LogDb::open_timed(&dir, fsync, metrics.storage_timings())
                .map_err(|e| format!("storage.dir: {e}"))?;
            (db, Some(dir.join(DB_FILE)))
        }
    };
    let names = Arc::new(NodeNames::default());
    let link: Arc<dyn RaftLink> = match &cluster {
        Some(cluster) => Arc::new(EndpointLink {
            cluster: cluster.clone(),
            names: names.clone(),
        }),
        None => Arc::new(NoPeers),
    };
    let retention = Retention {
        max_age_ms: settings.rooms.history_max_age_secs.saturating_mul(1_000),
        // Every node applies every shard, so each holds its share of the node's.
        shard_bytes: match settings.rooms.history_bytes {
            0 => 0,
            bytes => (bytes / u64::from(placement.shards())).max(1),
        },
        ..Retention::messages(settings.rooms.history)
    };
    let timing = match &cluster {
        // A follower campaigns once its leader lease (its election_timeout_max) and an
        // election timeout have passed since the leader was last heard: for the
        // second voter by rank 3.5 to 4 election times, so a quarter of the failure
        // timeout puts failover at about the failure timeout (docs/cluster.md).
        Some(_) => Timing {
            heartbeat: Duration::from_millis(settings.cluster.heartbeat_ms.clamp(20, 200)),
            election: Duration::from_millis(
                (settings.cluster.failure_timeout_ms / 4).clamp(150, 1_000),
            ),
        },
        // Alone, the one voter elects itself at once.
        None => Timing {
            heartbeat: Duration::from_millis(50),
            election: Duration::from_millis(150),
        },
    };
    let sink = Arc::new(RoomSink {
        rooms,
        metrics: metrics.clone(),
        shards: placement.shards(),
        events: events.clone(),
        host: OnceLock::new(),
        replay: Duration::from_secs(settings.hooks.webhook_replay_secs),
        replayed: Mutex::new(BTreeMap::new()),
        undelivered: Mutex::new(BTreeMap::new()),
    });
    let reach = cluster.as_ref().map(|cluster| reach_of(cluster));
    let wiring = Wiring {
        sink: sink.clone(),
        link,
        reach,
        names,
    };
    let join = cluster.is_some() && settings.cluster.join;
    let host = ShardHost::start(&me, placement, &db, retention, timing, wiring, join)
        .await
        .map_err(|e| format!("the room logs did not start: {e}"))?;
    let _ = sink.host.set(Arc::downgrade(&host));
    if events.wants_any() && !sink.replay.is_zero() {
        tokio::spawn(watch_leadership(Arc::downgrade(&host), sink.clone()));
    }
    if let Some(cluster) = &cluster {
        cluster.set_shard_host(host.clone());
    }
    tokio::spawn(watch_history(Arc::downgrade(&host), metrics.clone()));
    if let Some(file) = file {
        tokio::spawn(watch_disk(Arc::downgrade(&host), file, metrics));
    }
    Ok(host)
}

/// How often the leaders of the shards are looked at for a change.
const LEADERSHIP_POLL: Duration = Duration::from_millis(200);

/// Looks at which shards this node leads every [`LEADERSHIP_POLL`], so that a shard
/// it comes to lead (at start, or when leadership moves here) gets its replay
/// ([`RoomSink::lead`]) even when no new entry is applied there; and records the
/// webhook marks of the shards it leads ([`RoomSink::record_marks`]).
async fn watch_leadership(host: Weak<ShardHost>, sink: Arc<RoomSink>) {
    loop {
        tokio::time::sleep(LEADERSHIP_POLL).await;
        let Some(host) = host.upgrade() else {
            return;
        };
        for shard in 0..host.placement().shards() {
            sink.lead(shard, &[], &[]);
        }
        sink.record_marks(&host);
    }
}

/// Reads the database file's size into `hubbub_storage_bytes` every 5 s while the host
/// runs.
async fn watch_disk(host: std::sync::Weak<ShardHost>, file: PathBuf, metrics: Arc<Metrics>) {
    while host.strong_count() > 0 {
        // One stat every few seconds: cheap enough to make on the runtime.
        if let Ok(meta) = std::fs::metadata(&file) {
            metrics.set_storage_bytes(meta.len());
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Reads what the shards' rooms hold into `hubbub_history_bytes`, and what they
/// forgot into `hubbub_history_forgotten_total`, every second while the host runs.
async fn watch_history(host: Weak<ShardHost>, metrics: Arc<Metrics>) {
    let mut counted = 0;
    loop {
        let Some(host) = host.upgrade() else {
            return;
        };
        let (mut bytes, mut forgotten) = (0, 0);
        for shard in 0..host.placement().shards() {
            if let Some(reader) = host.reader(shard) {
                bytes += reader.held_bytes();
                forgotten += reader.forgotten();
            }
        }
        drop(host);
        metrics.set_history(bytes, forgotten.saturating_sub(counted));
        counted = counted.max(forgotten);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The nodes of the cluster's current view as Raft ids, kept up to date: the host
/// refuses at once on a shard of which it reaches no majority.
fn reach_of(cluster: &Cluster) -> watch::Receiver<BTreeSet<NodeId>> {
    let ids =
        |view: &View| -> BTreeSet<NodeId> { view.members.keys().map(|n| node_id(n)).collect() };
    let mut views = cluster.subscribe();
    let (tx, rx) = watch::channel(ids(&views.borrow_and_update()));
    tokio::spawn(async move {
        while views.changed().await.is_ok() {
            let up = ids(&views.borrow_and_update());
            if tx.send(up).is_err() {
                break;
            }
        }
    });
    rx
}

/// Each shard's voters and leader as this node knows them, for `GET /cluster`:
/// `voters` from the shard's Raft membership (ranked as placed when they are the
/// placed ones), `placed` where the node list puts them (the two differ while a node
/// list change moves the group), and `learners`, how many nodes follow it.
pub fn shard_status(host: &ShardHost) -> serde_json::Value {
    let placement = host.placement();
    let name = |id: NodeId| host.name_of(id).unwrap_or_else(|| "?".to_owned());
    let shards: Vec<serde_json::Value> = (0..placement.shards())
        .map(|shard| {
            let placed = placement.voters(shard);
            let (mut voters, learners) = host.members(shard);
            // Ranked as placed where they agree; the others after, by id.
            voters.sort_by_key(|id| {
                (
                    placed.iter().position(|p| p == id).unwrap_or(usize::MAX),
                    *id,
                )
            });
            let (term, applied) = host.progress(shard).unwrap_or_default();
            serde_json::json!({
                "shard": shard,
                "voters": voters.into_iter().map(name).collect::<Vec<_>>(),
                "placed": placed.into_iter().map(name).collect::<Vec<_>>(),
                "learners": learners,
                "leader": host.leader(shard).map(name),
                "term": term,
                "applied": applied,
            })
        })
        .collect();
    serde_json::Value::Array(shards)
}
