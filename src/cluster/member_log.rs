//! This node's part in the rooms' member lists (src/cluster/raft/members.rs), which
//! the membership webhook events (`join`, `leave`, `room_created`, `room_emptied`)
//! come from: on, only while some `[[webhooks]]` endpoint wants one of them.
//!
//! Owns: [`MemberLog`], which
//! - keeps which users have a connection here in which rooms (told through the
//!   presence port: [`WithMemberLists`] wraps it, so every change of a connection
//!   count a Room reports reaches it), and proposes `Member` for each user whose
//!   presence here changed, in the room's shard: queued at once, before the Room
//!   answers the join (so the user's next publish is ordered after it), and retried
//!   until applied (a retry proposes the state now, so retries and coalesced changes
//!   converge);
//! - rejoins each shard (`NodeRejoin` with a new epoch) at start and whenever the
//!   shard's lists say this node is gone or hold another epoch, then proposes all its
//!   users of that shard again;
//! - on the shards this node leads, proposes `NodeGone` for a node that has member
//!   entries but has been out of the membership view for [`ABSENT_GRACE`], so the
//!   members of a dead, frozen or cut-off node leave.
//!
//! Must not know: webhooks (the events are sent by the shard's leader as the entries
//! apply, src/cluster/room_log.rs), Room actors.

use super::raft::host::ShardHost;
use super::raft::members::NodeEpoch;
use super::raft::types::{CommandOutcome, ShardCommand, ShardId};
use super::shards::shard_of;
use super::Cluster;
use crate::actors::port::{PresencePort, RemoteMember};
use crate::protocol::{now_ms, UserInfo};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often the lists are looked at when nothing wakes the task.
const TICK: Duration = Duration::from_millis(100);

/// How long a node with member entries must be out of the view before a leader
/// declares it gone: longer than the views of nodes starting together disagree.
pub const ABSENT_GRACE: Duration = Duration::from_millis(500);

/// Most `Member` commands one shard has in flight from this node.
const BATCH: usize = 512;

/// A room and a user id.
type Key = (String, String);

/// This node's side of the member lists.
pub struct MemberLog {
    host: Weak<ShardHost>,
    me: String,
    shards: u32,
    cluster: Option<Arc<Cluster>>,
    inner: Mutex<Inner>,
    wake: Notify,
}

#[derive(Default)]
struct Inner {
    /// Every user with a connection here, by room and user id.
    local: BTreeMap<Key, UserInfo>,
    shards: BTreeMap<ShardId, ShardSide>,
    /// Nodes with member entries seen out of the view, since when.
    absent: BTreeMap<String, Instant>,
}

#[derive(Default)]
struct ShardSide {
    /// The epoch of this node's latest rejoin of the shard, queued or applied: its
    /// `Member`s are queued behind it with this epoch.
    epoch: Option<u64>,
    /// That rejoin is applied (the shard's lists showed it).
    confirmed: bool,
    /// That rejoin is in flight.
    rejoining: bool,
    /// Users whose presence here the shard's lists may not show yet.
    dirty: BTreeSet<Key>,
    /// A proposal of this node's is in flight (one at a time keeps them in order).
    busy: bool,
    /// `NodeGone` proposals in flight.
    gone_sent: BTreeSet<(String, u64)>,
}

impl MemberLog {
    /// Starts keeping this node's part of the lists on the actor runtime.
    pub fn start(host: &Arc<ShardHost>, me: &str, cluster: Option<Arc<Cluster>>) -> Arc<Self> {
        let log = Arc::new(Self {
            host: Arc::downgrade(host),
            me: me.to_owned(),
            shards: host.placement().shards(),
            cluster,
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
        });
        // Queued before any Room can report a connection: every `Member` of this
        // run is queued behind its shard's rejoin.
        for shard in 0..log.shards {
            log.round(host, shard);
        }
        tokio::spawn(log.clone().run());
        log
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This node's connections of `user` in `room` are now `connections`. A change
    /// of whether the user is here is queued in the room's shard at once, before the
    /// Room answers the join or leave that made it: what the user publishes next is
    /// ordered after it. Until this node's rejoin of the shard is applied, or when
    /// the proposal fails, it waits for the next round.
    pub fn note(self: &Arc<Self>, room: &str, user: &UserInfo, connections: u32) {
        let key = (room.to_owned(), user.id.clone());
        let shard = shard_of(room, self.shards);
        let present = connections > 0;
        let mut inner = self.inner();
        let changed = if present {
            inner.local.insert(key.clone(), user.clone()).is_none()
        } else {
            inner.local.remove(&key).is_some()
        };
        if !changed {
            return;
        }
        let side = inner.shards.entry(shard).or_default();
        let queued = match (side.epoch, self.host.upgrade()) {
            (Some(epoch), Some(host)) => host
                .enqueue(shard, self.member(epoch, &key, present.then_some(user)))
                .ok(),
            _ => None,
        };
        let Some(answer) = queued else {
            side.dirty.insert(key);
            drop(inner);
            self.wake.notify_one();
            return;
        };
        drop(inner);
        let log = self.clone();
        tokio::spawn(async move {
            if !matches!(
                answer.await,
                Ok(CommandOutcome::MembersNoted { applied: true })
            ) {
                log.inner()
                    .shards
                    .entry(shard)
                    .or_default()
                    .dirty
                    .insert(key);
                log.wake.notify_one();
            }
        });
    }

    /// The `Member` command for `key`: present as `user`, or gone.
    fn member(&self, epoch: u64, key: &Key, user: Option<&UserInfo>) -> ShardCommand {
        ShardCommand::Member {
            node: self.me.clone(),
            epoch,
            room: key.0.clone(),
            user: user.cloned().unwrap_or_else(|| UserInfo {
                id: key.1.clone(),
                name: String::new(),
            }),
            present: user.is_some(),
            ts: now_ms(),
        }
    }

    async fn run(self: Arc<Self>) {
        loop {
            let Some(host) = self.host.upgrade() else {
                return;
            };
            for shard in 0..self.shards {
                self.round(&host, shard);
            }
            drop(host);
            let _ = tokio::time::timeout(TICK, self.wake.notified()).await;
        }
    }

    /// One look at `shard`: rejoin, send what changed here, or, as its leader,
    /// declare absent nodes gone.
    fn round(self: &Arc<Self>, host: &Arc<ShardHost>, shard: ShardId) {
        let Some(reader) = host.reader(shard) else {
            return;
        };
        let available = host.unavailable(shard).is_none();
        if available && self.leads(host, shard) {
            self.declare_gone(host, shard, reader.member_nodes());
        }
        let listed = reader.member_epoch(&self.me);
        let shards = self.shards;
        let mut inner = self.inner();
        let Inner {
            local,
            shards: sides,
            ..
        } = &mut *inner;
        let side = sides.entry(shard).or_default();
        if side.rejoining {
            return;
        }
        let shown = side
            .epoch
            .is_some_and(|epoch| listed == Some(NodeEpoch { epoch, gone: false }));
        if shown && !side.confirmed {
            // A rejoin whose answer was lost landed after all.
            side.confirmed = true;
            side.dirty = keys_of(local, shards, shard);
        }
        if !shown {
            // Never rejoined, the rejoin is not applied yet, or the lists say this
            // node is gone. Queued under the lock: the `Member`s queued after it carry
            // its epoch.
            let epoch = next_epoch(side.epoch, listed, now_ms());
            let command = ShardCommand::NodeRejoin {
                node: self.me.clone(),
                epoch,
                ts: now_ms(),
            };
            let Ok(answer) = host.enqueue(shard, command) else {
                return;
            };
            side.epoch = Some(epoch);
            side.confirmed = false;
            side.rejoining = true;
            drop(inner);
            let log = self.clone();
            tokio::spawn(async move {
                let _ = answer.await;
                // A retried proposal answers `applied: false` the second time: what the
                // lists hold is what counts.
                let taken = reader.member_epoch(&log.me) == Some(NodeEpoch { epoch, gone: false });
                let mut inner = log.inner();
                let Inner {
                    local,
                    shards: sides,
                    ..
                } = &mut *inner;
                let side = sides.entry(shard).or_default();
                side.rejoining = false;
                if taken && side.epoch == Some(epoch) {
                    side.confirmed = true;
                    // Everything of this shard again: what was queued behind the
                    // rejoin is idempotent, what was queued before it is gone.
                    side.dirty = keys_of(local, log.shards, shard);
                    tracing::debug!(
                        shard,
                        epoch,
                        users = side.dirty.len(),
                        "member lists rejoined"
                    );
                }
                drop(inner);
                log.wake.notify_one();
            });
            return;
        }
        if side.busy || side.dirty.is_empty() || !available {
            return;
        }
        let epoch = side.epoch.unwrap_or_default();
        let keys: Vec<Key> = side.dirty.iter().take(BATCH).cloned().collect();
        let mut sent = Vec::with_capacity(keys.len());
        for key in keys {
            side.dirty.remove(&key);
            let command = self.member(epoch, &key, local.get(&key));
            // Queued in order, under the lock: a user's changes keep their order.
            match host.enqueue(shard, command) {
                Ok(answer) => sent.push((key, answer)),
                Err(_) => {
                    side.dirty.insert(key);
                }
            }
        }
        if sent.is_empty() {
            return;
        }
        side.busy = true;
        drop(inner);
        let log = self.clone();
        tokio::spawn(async move {
            let mut again = Vec::new();
            for (key, answer) in sent {
                if !matches!(
                    answer.await,
                    Ok(CommandOutcome::MembersNoted { applied: true })
                ) {
                    again.push(key);
                }
            }
            let mut inner = log.inner();
            let side = inner.shards.entry(shard).or_default();
            side.busy = false;
            let retry = !again.is_empty();
            side.dirty.extend(again);
            drop(inner);
            if retry {
                tracing::debug!(shard, "member list changes to send again");
            }
            log.wake.notify_one();
        });
    }

    fn leads(&self, host: &ShardHost, shard: ShardId) -> bool {
        host.raft(shard)
            .is_some_and(|raft| raft.metrics().borrow().current_leader == Some(host.me()))
    }

    /// As `shard`'s leader: `NodeGone` for every node with entries that has been out
    /// of the view for [`ABSENT_GRACE`].
    fn declare_gone(
        self: &Arc<Self>,
        host: &Arc<ShardHost>,
        shard: ShardId,
        listed: Vec<(String, u64)>,
    ) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let view = cluster.view();
        let now = Instant::now();
        let mut inner = self.inner();
        inner
            .absent
            .retain(|node, _| !view.members.contains_key(node));
        let mut due = Vec::new();
        for (node, epoch) in listed {
            if node == self.me || view.members.contains_key(&node) {
                continue;
            }
            let since = *inner.absent.entry(node.clone()).or_insert(now);
            if now.duration_since(since) < ABSENT_GRACE {
                continue;
            }
            let side = inner.shards.entry(shard).or_default();
            if side.gone_sent.insert((node.clone(), epoch)) {
                due.push((node, epoch));
            }
        }
        drop(inner);
        for (node, epoch) in due {
            tracing::info!(shard, node = %node, epoch, "a node out of the view: its room members leave");
            let answer = host.enqueue(
                shard,
                ShardCommand::NodeGone {
                    node: node.clone(),
                    epoch,
                    ts: now_ms(),
                },
            );
            let log = self.clone();
            tokio::spawn(async move {
                if let Ok(answer) = answer {
                    let _ = answer.await;
                }
                let mut inner = log.inner();
                inner
                    .shards
                    .entry(shard)
                    .or_default()
                    .gone_sent
                    .remove(&(node, epoch));
            });
        }
    }
}

/// The epoch of this node's next rejoin of a shard, given its last one (`mine`) and
/// what the shard's lists hold for it. A rejoin not yet seen applied is retried with
/// the same epoch: it applies once, and the `Member`s already queued behind the
/// first try count (a new epoch would drop them, and their users would leave and join
/// again). A new epoch, greater than any the lists saw, only when there is none yet
/// or the lists say this node is gone (its `Member`s of that epoch count no more).
fn next_epoch(mine: Option<u64>, listed: Option<NodeEpoch>, now: u64) -> u64 {
    let fresh = || now.max(listed.map_or(0, |l| l.epoch + 1));
    match (mine, listed) {
        (Some(mine), None) => mine,
        (Some(mine), Some(listed)) if listed.epoch < mine => mine,
        _ => fresh(),
    }
}

/// The users of `shard` with a connection here.
fn keys_of(local: &BTreeMap<Key, UserInfo>, shards: u32, shard: ShardId) -> BTreeSet<Key> {
    local
        .keys()
        .filter(|(room, _)| shard_of(room, shards) == shard)
        .cloned()
        .collect()
}

/// The presence port with the member lists told of every local change.
pub struct WithMemberLists {
    pub presence: Arc<dyn PresencePort>,
    pub members: Arc<MemberLog>,
}

impl PresencePort for WithMemberLists {
    fn local(&self, room: &str, user: &UserInfo, connections: u32) {
        self.presence.local(room, user, connections);
        self.members.note(room, user, connections);
    }

    fn remote(&self, room: &str) -> Vec<RemoteMember> {
        self.presence.remote(room)
    }

    fn typing(&self, room: &str, user: &UserInfo) {
        self.presence.typing(room, user);
    }

    fn remote_rooms(&self) -> Vec<String> {
        self.presence.remote_rooms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejoin_is_retried_with_its_epoch_and_a_gone_node_takes_a_new_one() {
        let listed = |epoch, gone| Some(NodeEpoch { epoch, gone });
        // First: the clock, past anything listed (a restart after a clock step back).
        assert_eq!(next_epoch(None, None, 100), 100);
        assert_eq!(next_epoch(None, listed(500, false), 100), 501);
        // Not applied yet: the same epoch again.
        assert_eq!(next_epoch(Some(100), None, 200), 100);
        assert_eq!(next_epoch(Some(100), listed(40, false), 200), 100);
        assert_eq!(next_epoch(Some(100), listed(40, true), 200), 100);
        // Declared gone in it: a new one.
        assert_eq!(next_epoch(Some(100), listed(100, true), 200), 200);
        assert_eq!(next_epoch(Some(100), listed(100, true), 50), 101);
    }
}
