//! Presence without an owner, wired: the [`PresencePort`] of a clustered node.
//!
//! [`TrackerPort`] puts the pure [`Tracker`](super::tracker) on the cluster wire:
//!
//! - **Deltas.** A Room reports its local connections of a user ([`PresencePort::local`]);
//!   the new absolute count goes at once to every peer up in the view
//!   (`PresenceDelta`).
//! - **Digests.** Every [`DIGEST_EVERY_TICKS`] membership heartbeats, and at once to
//!   a peer that just joined the view, this node sends each peer its digest (one hash
//!   per room it holds members of, `PresenceDigest`). A peer whose copy of a room
//!   hashes differently asks for it (`PresenceAsk`) and replaces its copy with the
//!   answer (`PresenceState`). That repairs lost deltas, and brings a peer that was
//!   declared down and came back up to date. A digest sent to a newcomer asks it for
//!   its own digest back (`reply`), so both sides converge within a round trip once
//!   each has the other in its view.
//! - **Down.** Membership calls [`TrackerPort::node_down`] when it declares a peer
//!   down; on every tick, any node that held entries and is no longer in the view (or
//!   is there with another incarnation) is dropped as well. Presence traffic from a
//!   node that is not in the view with that incarnation is ignored, so a message still
//!   in flight from a node declared down cannot bring its users back.
//! - **Typing** goes only to the nodes that hold members of the room (`PresenceTyping`).
//!
//! Every change to another node's entries goes to the room's actor, if it runs here,
//! as `RoomMessage::RemotePresence` (grouped per room), typing as
//! `RoomMessage::RemoteTyping`. A room not running here gets nothing: it reads
//! [`PresencePort::remote`] when it starts.
//!
//! Large digests and rooms travel in chunks of at most [`MAX_LIST_ITEMS`] items and
//! about [`MAX_LIST_BYTES`] bytes, each covering a key range ([`KeyRange`]) so that it
//! applies on its own; incoming lists over those bounds, and names or ids outside the
//! client protocol's bounds, are refused with a log line.
//!
//! The logic is [`PresenceSync`] (pure: a message in, [`Effects`] out). The port holds
//! it behind a mutex, held only while it computes and while the effects are cast (to
//! peers' Endpoints and to Room actors: casts, which never wait), so what leaves this
//! node and what reaches its rooms is in the order the tracker changed.

use super::tracker::{Entry, KeyRange, RemoteChange, Tracker};
use super::wire::Body;
use super::Cluster;
use crate::actors::port::{PresencePort, RemoteMember};
use crate::actors::{RoomDirectory, RoomMessage};
use crate::protocol::{validate_display_name, validate_user_id, RoomName, UserInfo};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// A digest goes to every up peer once per this many membership heartbeats
/// (`cluster.heartbeat_ms`): a lost delta is repaired within that period plus a round
/// trip.
pub const DIGEST_EVERY_TICKS: u64 = 2;
/// The most items (rooms of a digest or an ask, entries of a room's state) in one
/// envelope; larger lists are sent in chunks, and larger incoming ones refused.
pub const MAX_LIST_ITEMS: usize = 512;
/// The most bytes of one list, counted as its strings plus a fixed allowance per item
/// (close to its JSON size).
pub const MAX_LIST_BYTES: usize = 64 * 1024;
/// The JSON around a digest item `["<room>",<u64>],`.
const DIGEST_ITEM_OVERHEAD: usize = 26;
/// The JSON around an entry `{"user":"<id>","name":"<name>","connections":<u32>},`.
const ENTRY_OVERHEAD: usize = 48;
/// The JSON around a room name in an ask `"<room>",`.
const ASK_ITEM_OVERHEAD: usize = 3;
/// The longest display name in bytes (the protocol bounds it in characters).
const MAX_NAME_BYTES: usize = crate::protocol::MAX_NAME_CHARS * 4;

/// The peers up in the view (this node excluded), with their incarnations.
pub type Peers = BTreeMap<String, u64>;

/// What [`PresenceSync`] asks its port to do, in order.
#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    /// Bodies to send, each to the nodes listed.
    pub sends: Vec<(Vec<String>, Body)>,
    /// Changes of other nodes' members, per room, for the room's actor.
    pub presence: Vec<(String, Vec<RemoteMember>)>,
    /// Typing on other nodes (room, user), for the room's actor.
    pub typing: Vec<(String, UserInfo)>,
}

impl Effects {
    fn send(&mut self, to: Vec<String>, body: Body) {
        if !to.is_empty() {
            self.sends.push((to, body));
        }
    }

    /// Adds tracker changes, grouped per room (rooms in name order, each room's
    /// changes in the order they were made).
    fn changes(&mut self, changes: Vec<RemoteChange>) {
        let mut rooms: BTreeMap<String, Vec<RemoteMember>> = BTreeMap::new();
        for change in changes {
            rooms.entry(change.room).or_default().push(RemoteMember {
                node: change.node,
                user: UserInfo {
                    id: change.user,
                    name: change.name,
                },
                connections: change.connections,
            });
        }
        self.presence.extend(rooms);
    }
}

/// Why incoming presence traffic was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The sender is not in the view with that incarnation (not up yet, declared
    /// down, or a previous life): normal around view changes.
    NotUp,
    /// The body breaks a bound or is not presence traffic.
    Invalid(String),
}

/// The presence logic of one node: the tracker, who was up at the last tick, and
/// the digest schedule. Pure: no I/O, no clock.
#[derive(Debug, Default)]
pub struct PresenceSync {
    tracker: Tracker,
    /// The peers up at the last tick.
    peers: Peers,
    ticks: u64,
}

impl PresenceSync {
    /// An empty one.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many (node, room, user) entries are held, local ones included.
    pub fn entries(&self) -> usize {
        self.tracker.len()
    }

    /// This node's connections of `user` in `room` changed: the delta for every peer.
    pub fn local(&mut self, room: &str, user: &UserInfo, connections: u32, up: &Peers) -> Effects {
        let entry = self
            .tracker
            .set_local(room, &user.id, &user.name, connections);
        let mut effects = Effects::default();
        effects.send(
            up.keys().cloned().collect(),
            Body::PresenceDelta {
                room: room.to_owned(),
                entry,
            },
        );
        effects
    }

    /// Every other node's members of `room`.
    pub fn remote(&self, room: &str) -> Vec<RemoteMember> {
        self.tracker
            .remote_room(room)
            .into_iter()
            .flat_map(|(node, entries)| {
                entries.into_iter().map(move |e| RemoteMember {
                    node: node.clone(),
                    user: UserInfo {
                        id: e.user,
                        name: e.name,
                    },
                    connections: e.connections,
                })
            })
            .collect()
    }

    /// Every room another node holds members of.
    pub fn remote_rooms(&self) -> Vec<String> {
        self.tracker.remote_rooms().into_iter().collect()
    }

    /// A member here is typing in `room`: for the up nodes that hold members of it.
    pub fn typing(&self, room: &str, user: &UserInfo, up: &Peers) -> Effects {
        let to = self
            .tracker
            .remote_room(room)
            .into_iter()
            .map(|(node, _)| node)
            .filter(|node| up.contains_key(node))
            .collect();
        let mut effects = Effects::default();
        effects.send(
            to,
            Body::PresenceTyping {
                room: room.to_owned(),
                user: user.clone(),
            },
        );
        effects
    }

    /// Presence traffic from `from` (incarnation `inc`).
    pub fn on_wire(
        &mut self,
        from: &str,
        inc: u64,
        body: Body,
        up: &Peers,
    ) -> Result<Effects, Refused> {
        if up.get(from) != Some(&inc) {
            return Err(Refused::NotUp);
        }
        let mut effects = Effects::default();
        let sender = || vec![from.to_owned()];
        match body {
            Body::PresenceDelta { room, entry } => {
                check_room(&room)?;
                check_entry(&entry)?;
                let changes = self.tracker.on_delta(from, inc, &room, entry);
                effects.changes(changes);
            }
            Body::PresenceDigest {
                range,
                rooms,
                reply,
            } => {
                check_list("digest", &rooms, digest_item_bytes)?;
                check_range(&range, valid_room)?;
                for (room, _) in &rooms {
                    check_room(room)?;
                    check_in_range(&range, room)?;
                }
                let (ask, changes) = self.tracker.on_digest_range(from, inc, &range, &rooms);
                effects.changes(changes);
                for rooms in chunks(ask, |room| ask_item_bytes(room)) {
                    effects.send(sender(), Body::PresenceAsk { rooms });
                }
                if reply {
                    self.digest_to(sender(), false, &mut effects);
                }
            }
            Body::PresenceAsk { rooms } => {
                check_list("ask", &rooms, |room| ask_item_bytes(room))?;
                for room in &rooms {
                    check_room(room)?;
                }
                for room in rooms {
                    let state =
                        ranged_chunks(self.tracker.local_room(&room), entry_key, entry_bytes);
                    for (range, entries) in state {
                        effects.send(
                            sender(),
                            Body::PresenceState {
                                room: room.clone(),
                                range,
                                entries,
                            },
                        );
                    }
                }
            }
            Body::PresenceState {
                room,
                range,
                entries,
            } => {
                check_room(&room)?;
                check_list("state", &entries, entry_bytes)?;
                check_range(&range, valid_user_id)?;
                for entry in &entries {
                    check_entry(entry)?;
                    check_in_range(&range, &entry.user)?;
                }
                let changes = self
                    .tracker
                    .on_room_state_range(from, inc, &room, &range, entries);
                effects.changes(changes);
            }
            Body::PresenceTyping { room, user } => {
                check_room(&room)?;
                check_user(&user.id, &user.name)?;
                effects.typing.push((room, user));
            }
            other => {
                return Err(Refused::Invalid(format!(
                    "{} is not presence traffic",
                    other.kind()
                )))
            }
        }
        Ok(effects)
    }

    /// Membership declared `node` down: its users leave every room here, and when it
    /// is up again it is met as a newcomer (digests both ways).
    pub fn node_down(&mut self, node: &str) -> Effects {
        self.peers.remove(node);
        let mut effects = Effects::default();
        effects.changes(self.tracker.node_down(node));
        effects
    }

    /// Every membership heartbeat: drops the nodes no longer up, sends newcomers the
    /// digest (asking for theirs), and every [`DIGEST_EVERY_TICKS`] sends it to all.
    pub fn tick(&mut self, up: &Peers) -> Effects {
        let mut effects = Effects::default();
        let mut gone: Vec<String> = self
            .tracker
            .known_nodes()
            .filter(|node| !up.contains_key(*node))
            .map(str::to_owned)
            .collect();
        gone.extend(
            self.peers
                .iter()
                .filter(|(node, inc)| up.get(*node) != Some(*inc))
                .map(|(node, _)| node.clone()),
        );
        gone.sort();
        gone.dedup();
        for node in &gone {
            effects.changes(self.tracker.node_down(node));
        }
        let (mut new, mut known) = (Vec::new(), Vec::new());
        for (node, inc) in up {
            match self.peers.get(node) == Some(inc) {
                true => known.push(node.clone()),
                false => new.push(node.clone()),
            }
        }
        self.peers = up.clone();
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks.is_multiple_of(DIGEST_EVERY_TICKS) {
            self.digest_to(known, false, &mut effects);
        }
        self.digest_to(new, true, &mut effects);
        effects
    }

    /// This node's digest, chunked, for `to`.
    fn digest_to(&self, to: Vec<String>, reply: bool, effects: &mut Effects) {
        if to.is_empty() {
            return;
        }
        for (range, rooms) in ranged_chunks(self.tracker.digest(), digest_key, digest_item_bytes) {
            effects.send(
                to.clone(),
                Body::PresenceDigest {
                    range,
                    rooms,
                    reply,
                },
            );
        }
    }
}

/// The presence port of a clustered node: [`PresenceSync`] on the cluster wire.
///
/// The node constructs it at start and records it with
/// [`Cluster::set_presence_port`]; the Endpoint hands it presence traffic and
/// Membership calls [`TrackerPort::tick`] every heartbeat and
/// [`TrackerPort::node_down`] when it declares a peer down.
pub struct TrackerPort {
    /// Weak: the cluster holds this port, and the port must not keep it alive.
    cluster: Weak<Cluster>,
    rooms: RoomDirectory,
    sync: Mutex<PresenceSync>,
}

impl TrackerPort {
    /// The port of `cluster`'s node, calling back the rooms of `rooms`.
    pub fn new(cluster: Arc<Cluster>, rooms: RoomDirectory) -> Self {
        Self {
            cluster: Arc::downgrade(&cluster),
            rooms,
            sync: Mutex::new(PresenceSync::new()),
        }
    }

    /// Presence traffic from a peer (the Endpoint calls this).
    pub fn on_wire(&self, from: &str, inc: u64, body: Body) {
        let kind = body.kind();
        let result = self.run(|sync, up| Ok((sync.on_wire(from, inc, body, up)?, ())));
        match result {
            Some(Err(Refused::NotUp)) => {
                tracing::debug!(peer = %from, kind, "presence from a node not in the view; dropped");
            }
            Some(Err(Refused::Invalid(why))) => {
                tracing::warn!(peer = %from, kind, why = %why, "refused presence traffic");
            }
            _ => {}
        }
    }

    /// Membership declared `node` down.
    pub fn node_down(&self, node: &str) {
        self.run(|sync, _| Ok((sync.node_down(node), ())));
    }

    /// Every membership heartbeat (`cluster.heartbeat_ms`).
    pub fn tick(&self) {
        let entries = self.run(|sync, up| {
            let effects = sync.tick(up);
            Ok((effects, sync.entries()))
        });
        if let (Some(Ok(entries)), Some(cluster)) = (entries, self.cluster.upgrade()) {
            cluster.metrics.set_presence_entries(entries);
        }
    }

    fn lock(&self) -> MutexGuard<'_, PresenceSync> {
        // A panic while holding it leaves the tracker as it was; carry on with it.
        self.sync
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `step` on the logic with the current up peers and carries out its
    /// effects before letting go of the lock. None when the cluster is gone.
    fn run<T>(
        &self,
        step: impl FnOnce(&mut PresenceSync, &Peers) -> Result<(Effects, T), Refused>,
    ) -> Option<Result<T, Refused>> {
        let cluster = self.cluster.upgrade()?;
        let up = up_peers(&cluster);
        let mut sync = self.lock();
        let result = step(&mut sync, &up).map(|(effects, value)| {
            self.apply(&cluster, effects);
            value
        });
        drop(sync);
        Some(result)
    }

    fn apply(&self, cluster: &Cluster, effects: Effects) {
        for (to, body) in effects.sends {
            cluster.send_to_all(&to, body);
        }
        for (room, members) in effects.presence {
            if let Some(actor) = self.rooms.get(&room) {
                let _ = actor.cast(RoomMessage::RemotePresence(members));
            }
        }
        for (room, user) in effects.typing {
            if let Some(actor) = self.rooms.get(&room) {
                let _ = actor.cast(RoomMessage::RemoteTyping(user));
            }
        }
    }
}

impl PresencePort for TrackerPort {
    fn local(&self, room: &str, user: &UserInfo, connections: u32) {
        self.run(|sync, up| Ok((sync.local(room, user, connections, up), ())));
    }

    fn remote(&self, room: &str) -> Vec<RemoteMember> {
        self.lock().remote(room)
    }

    fn remote_rooms(&self) -> Vec<String> {
        self.lock().remote_rooms()
    }

    fn typing(&self, room: &str, user: &UserInfo) {
        self.run(|sync, up| Ok((sync.typing(room, user, up), ())));
    }
}

/// The view's members other than this node.
fn up_peers(cluster: &Cluster) -> Peers {
    cluster
        .view()
        .members
        .iter()
        .filter(|(node, _)| **node != cluster.me)
        .map(|(node, inc)| (node.clone(), *inc))
        .collect()
}

/// Splits `items` into lists of at most [`MAX_LIST_ITEMS`] items and
/// [`MAX_LIST_BYTES`] bytes as `size` counts them (an item over the byte bound alone
/// still goes, in a list of its own; the protocol's bounds make that impossible).
fn chunks<T>(items: Vec<T>, size: fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = size(&item);
        if !chunk.is_empty() && (chunk.len() == MAX_LIST_ITEMS || bytes + n > MAX_LIST_BYTES) {
            out.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += n;
        chunk.push(item);
    }
    if !chunk.is_empty() {
        out.push(chunk);
    }
    out
}

/// [`chunks`] of items sorted by `key`, each with the key range it covers: together
/// the ranges cover every key, so a receiver drops what no chunk lists. No items make
/// one empty chunk over every key.
fn ranged_chunks<T>(
    mut items: Vec<T>,
    key: fn(&T) -> &str,
    size: fn(&T) -> usize,
) -> Vec<(KeyRange, Vec<T>)> {
    items.sort_by(|a, b| key(a).cmp(key(b)));
    let lists = chunks(items, size);
    if lists.is_empty() {
        return vec![(KeyRange::all(), Vec::new())];
    }
    let starts: Vec<Option<String>> = lists
        .iter()
        .enumerate()
        .map(|(i, list)| match i {
            0 => None,
            _ => list.first().map(|item| key(item).to_owned()),
        })
        .collect();
    lists
        .into_iter()
        .enumerate()
        .map(|(i, list)| {
            let range = KeyRange {
                from: starts[i].clone(),
                to: starts.get(i + 1).cloned().flatten(),
            };
            (range, list)
        })
        .collect()
}

fn digest_key(item: &(String, u64)) -> &str {
    &item.0
}

fn entry_key(entry: &Entry) -> &str {
    &entry.user
}

/// The bytes a digest item counts for.
fn digest_item_bytes(item: &(String, u64)) -> usize {
    item.0.len() + DIGEST_ITEM_OVERHEAD
}

/// The bytes an entry counts for.
fn entry_bytes(entry: &Entry) -> usize {
    entry.user.len() + entry.name.len() + ENTRY_OVERHEAD
}

/// The bytes a room name in an ask counts for.
fn ask_item_bytes(room: &str) -> usize {
    room.len() + ASK_ITEM_OVERHEAD
}

fn invalid(why: impl Into<String>) -> Refused {
    Refused::Invalid(why.into())
}

fn valid_room(room: &str) -> bool {
    RoomName::parse(room).is_ok()
}

fn valid_user_id(id: &str) -> bool {
    validate_user_id(id).is_ok()
}

fn check_room(room: &str) -> Result<(), Refused> {
    if valid_room(room) {
        Ok(())
    } else {
        Err(invalid("a room name outside the protocol's bounds"))
    }
}

fn check_user(id: &str, name: &str) -> Result<(), Refused> {
    if !valid_user_id(id) {
        return Err(invalid("a user id outside the protocol's bounds"));
    }
    if name.len() > MAX_NAME_BYTES || validate_display_name(name).is_err() {
        return Err(invalid("a display name outside the protocol's bounds"));
    }
    Ok(())
}

fn check_entry(entry: &Entry) -> Result<(), Refused> {
    check_user(&entry.user, &entry.name)
}

fn check_list<T>(what: &str, items: &[T], size: fn(&T) -> usize) -> Result<(), Refused> {
    if items.len() > MAX_LIST_ITEMS {
        return Err(invalid(format!(
            "a {what} of {} items (at most {MAX_LIST_ITEMS})",
            items.len()
        )));
    }
    let bytes: usize = items.iter().map(size).sum();
    if bytes > MAX_LIST_BYTES {
        return Err(invalid(format!(
            "a {what} of {bytes} bytes (at most {MAX_LIST_BYTES})"
        )));
    }
    Ok(())
}

fn check_range(range: &KeyRange, valid: fn(&str) -> bool) -> Result<(), Refused> {
    let bounds_valid = [&range.from, &range.to]
        .into_iter()
        .flatten()
        .all(|key| valid(key));
    let ordered = match (&range.from, &range.to) {
        (Some(from), Some(to)) => from < to,
        _ => true,
    };
    if bounds_valid && ordered {
        Ok(())
    } else {
        Err(invalid("a bad key range"))
    }
}

fn check_in_range(range: &KeyRange, key: &str) -> Result<(), Refused> {
    if range.contains(key) {
        Ok(())
    } else {
        Err(invalid("an item outside its chunk's range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few nodes' presence logic and the bodies between them.
    struct Net {
        nodes: BTreeMap<String, (u64, PresenceSync)>,
        /// Whether each node has each other in its view (all, by default).
        cut: Vec<(String, String)>,
        /// Room casts each node made: (node, room, members).
        presence: Vec<(String, String, Vec<RemoteMember>)>,
        typing: Vec<(String, String, UserInfo)>,
        sent: Vec<(String, String, Body)>,
    }

    impl Net {
        fn new(names: &[&str]) -> Self {
            Self {
                nodes: names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.to_string(), (i as u64 + 1, PresenceSync::new())))
                    .collect(),
                cut: Vec::new(),
                presence: Vec::new(),
                typing: Vec::new(),
                sent: Vec::new(),
            }
        }

        fn up(&self, of: &str) -> Peers {
            self.nodes
                .iter()
                .filter(|(n, _)| n.as_str() != of)
                .filter(|(n, _)| {
                    !self
                        .cut
                        .iter()
                        .any(|(a, b)| (a == of && *b == **n) || (b == of && *a == **n))
                })
                .map(|(n, (inc, _))| (n.clone(), *inc))
                .collect()
        }

        fn sync(&mut self, node: &str) -> &mut PresenceSync {
            &mut self.nodes.get_mut(node).unwrap().1
        }

        /// Delivers `effects` of `from` and everything they cause, dropping what
        /// `lose` says.
        fn run(&mut self, from: &str, effects: Effects, lose: &dyn Fn(&str, &Body) -> bool) {
            let mut queue = vec![(from.to_string(), effects)];
            while let Some((node, effects)) = queue.pop() {
                for (room, members) in effects.presence {
                    self.presence.push((node.clone(), room, members));
                }
                for (room, user) in effects.typing {
                    self.typing.push((node.clone(), room, user));
                }
                let inc = self.nodes[&node].0;
                for (to, body) in effects.sends {
                    for target in to {
                        self.sent.push((node.clone(), target.clone(), body.clone()));
                        if lose(&target, &body) {
                            continue;
                        }
                        let up = self.up(&target);
                        match self.sync(&target).on_wire(&node, inc, body.clone(), &up) {
                            Ok(effects) => queue.push((target, effects)),
                            Err(Refused::NotUp) => {}
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                }
            }
        }

        fn local(&mut self, node: &str, room: &str, user: &str, n: u32) {
            self.local_lossy(node, room, user, n, &|_, _| false);
        }

        fn local_lossy(
            &mut self,
            node: &str,
            room: &str,
            user: &str,
            n: u32,
            lose: &dyn Fn(&str, &Body) -> bool,
        ) {
            let up = self.up(node);
            let user = UserInfo {
                id: user.into(),
                name: user.to_uppercase(),
            };
            let effects = self.sync(node).local(room, &user, n, &up);
            self.run(node, effects, lose);
        }

        fn tick(&mut self, node: &str) {
            let up = self.up(node);
            let effects = self.sync(node).tick(&up);
            self.run(node, effects, &|_, _| false);
        }

        fn tick_all(&mut self) {
            let names: Vec<String> = self.nodes.keys().cloned().collect();
            for name in names {
                self.tick(&name);
            }
        }

        /// What `node` holds of `room` from others: sorted (node, user, connections).
        fn seen(&self, node: &str, room: &str) -> Vec<(String, String, u32)> {
            let mut seen: Vec<_> = self.nodes[node]
                .1
                .remote(room)
                .into_iter()
                .map(|m| (m.node, m.user.id, m.connections))
                .collect();
            seen.sort();
            seen
        }
    }

    fn triple(node: &str, user: &str, n: u32) -> (String, String, u32) {
        (node.into(), user.into(), n)
    }

    #[test]
    fn a_delta_reaches_every_up_peer_and_its_room_once_per_change() {
        let mut net = Net::new(&["a", "b", "c"]);
        net.local("a", "lobby", "ann", 2);
        assert_eq!(net.seen("b", "lobby"), vec![triple("a", "ann", 2)]);
        assert_eq!(net.seen("c", "lobby"), vec![triple("a", "ann", 2)]);
        assert_eq!(net.presence.len(), 2);
        // Repeating it changes nothing, so no room hears about it.
        net.local("a", "lobby", "ann", 2);
        assert_eq!(net.presence.len(), 2);
        net.local("a", "lobby", "ann", 0);
        assert!(net.seen("b", "lobby").is_empty());
        let (_, room, members) = net.presence.last().unwrap();
        assert_eq!((room.as_str(), members[0].connections), ("lobby", 0));
    }

    #[test]
    fn changes_reach_rooms_grouped_per_room() {
        let mut effects = Effects::default();
        let change = |room: &str, user: &str| RemoteChange {
            room: room.into(),
            node: "b".into(),
            user: user.into(),
            name: user.into(),
            connections: 0,
        };
        effects.changes(vec![
            change("lobby", "x"),
            change("dev", "y"),
            change("lobby", "z"),
        ]);
        let summary: Vec<(String, Vec<String>)> = effects
            .presence
            .into_iter()
            .map(|(room, members)| (room, members.into_iter().map(|m| m.user.id).collect()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("dev".to_string(), vec!["y".to_string()]),
                ("lobby".to_string(), vec!["x".to_string(), "z".to_string()]),
            ]
        );
    }

    #[test]
    fn a_lost_delta_is_repaired_within_one_digest_period() {
        let mut net = Net::new(&["a", "b"]);
        net.tick_all(); // everyone meets everyone
        net.local("a", "lobby", "ann", 1);
        net.local_lossy("a", "lobby", "bob", 1, &|_, _| true);
        net.local_lossy("a", "lobby", "ann", 0, &|_, _| true);
        assert_eq!(net.seen("b", "lobby"), vec![triple("a", "ann", 1)]);
        for _ in 0..DIGEST_EVERY_TICKS {
            net.tick("a");
        }
        assert_eq!(net.seen("b", "lobby"), vec![triple("a", "bob", 1)]);
        // The copies agree now: the next digest asks for nothing.
        net.sent.clear();
        for _ in 0..DIGEST_EVERY_TICKS {
            net.tick("a");
        }
        assert!(net
            .sent
            .iter()
            .all(|(_, _, body)| matches!(body, Body::PresenceDigest { .. })));
    }

    #[test]
    fn a_node_that_leaves_the_view_leaves_every_room_and_comes_back_by_digest() {
        let mut net = Net::new(&["a", "b", "c"]);
        net.tick_all();
        net.local("a", "lobby", "ann", 1);
        net.local("a", "dev", "ann", 1);
        net.local("c", "lobby", "cy", 1);
        // b loses a (declared down): a's users leave b's rooms at once.
        net.cut.push(("a".into(), "b".into()));
        let effects = net.sync("b").node_down("a");
        assert_eq!(effects.presence.len(), 2);
        net.run("b", effects, &|_, _| false);
        assert_eq!(net.seen("b", "lobby"), vec![triple("c", "cy", 1)]);
        assert!(net.seen("b", "dev").is_empty());
        // While cut, a's traffic to b is refused (still in flight, say).
        let up = net.up("b");
        let late = Body::PresenceDelta {
            room: "lobby".into(),
            entry: Entry {
                user: "ann".into(),
                name: "ANN".into(),
                connections: 1,
            },
        };
        assert_eq!(
            net.sync("b").on_wire("a", 1, late, &up),
            Err(Refused::NotUp)
        );
        net.local("a", "lobby", "al", 1);
        assert_eq!(net.seen("b", "lobby"), vec![triple("c", "cy", 1)]);
        // Healed: the first tick of either side brings b up to date.
        net.cut.clear();
        net.tick("b");
        assert_eq!(
            net.seen("b", "lobby"),
            vec![
                triple("a", "al", 1),
                triple("a", "ann", 1),
                triple("c", "cy", 1)
            ]
        );
        assert_eq!(net.seen("b", "dev"), vec![triple("a", "ann", 1)]);
    }

    #[test]
    fn a_tick_drops_nodes_gone_from_the_view_even_without_node_down() {
        let mut net = Net::new(&["a", "b"]);
        net.tick_all();
        net.local("a", "lobby", "ann", 1);
        net.cut.push(("a".into(), "b".into()));
        net.tick("b");
        assert!(net.seen("b", "lobby").is_empty());
        let (node, room, members) = net.presence.last().unwrap();
        assert_eq!((node.as_str(), room.as_str()), ("b", "lobby"));
        assert_eq!(members[0].connections, 0);
    }

    #[test]
    fn a_restarted_peer_is_dropped_then_learned_again() {
        let mut net = Net::new(&["a", "b"]);
        net.tick_all();
        net.local("a", "lobby", "ann", 1);
        // a restarts: a new incarnation, and it forgot everything.
        net.nodes.insert("a".into(), (9, PresenceSync::new()));
        net.tick("b");
        assert!(net.seen("b", "lobby").is_empty());
        net.local("a", "lobby", "al", 1);
        assert_eq!(net.seen("b", "lobby"), vec![triple("a", "al", 1)]);
    }

    #[test]
    fn a_newcomer_gets_the_digest_and_sends_its_own_back() {
        let mut net = Net::new(&["a", "b"]);
        net.cut.push(("a".into(), "b".into()));
        net.tick_all();
        net.local("a", "lobby", "ann", 1);
        net.local("b", "lobby", "bob", 1);
        net.cut.clear();
        // Only a sees the view change yet; one tick converges both ways.
        net.tick("a");
        assert_eq!(net.seen("b", "lobby"), vec![triple("a", "ann", 1)]);
        assert_eq!(net.seen("a", "lobby"), vec![triple("b", "bob", 1)]);
    }

    #[test]
    fn a_large_digest_and_a_large_room_travel_in_bounded_chunks() {
        let mut net = Net::new(&["a", "b"]);
        net.tick_all();
        for i in 0..1_500 {
            net.local_lossy("a", &format!("room-{i:05}"), "ann", 1, &|_, _| true);
        }
        for i in 0..1_300 {
            net.local_lossy("a", "big", &format!("user-{i:05}"), 1, &|_, _| true);
        }
        assert!(net.seen("b", "big").is_empty());
        net.sent.clear();
        for _ in 0..DIGEST_EVERY_TICKS {
            net.tick("a");
        }
        assert_eq!(net.seen("b", "big").len(), 1_300);
        assert_eq!(net.seen("b", "room-01499"), vec![triple("a", "ann", 1)]);
        let mut digests = 0;
        let mut states = 0;
        let mut asks = 0;
        for (_, _, body) in &net.sent {
            match body {
                Body::PresenceDigest { rooms, .. } => {
                    digests += 1;
                    assert!(check_list("digest", rooms, digest_item_bytes).is_ok());
                }
                Body::PresenceState { room, entries, .. } if room == "big" => {
                    states += 1;
                    assert!(check_list("state", entries, entry_bytes).is_ok());
                }
                Body::PresenceAsk { rooms } => {
                    asks += 1;
                    assert!(check_list("ask", rooms, |room| ask_item_bytes(room)).is_ok());
                }
                _ => {}
            }
        }
        assert!(digests >= 3, "{digests} digest chunks");
        assert!(states >= 3, "{states} state chunks of the big room");
        assert!(asks >= 3, "{asks} asks");
    }

    #[test]
    fn chunk_ranges_are_adjacent_and_cover_every_key() {
        let items: Vec<(String, u64)> = (0..2_000).map(|i| (format!("r{i:04}"), i)).collect();
        let chunks = ranged_chunks(items, digest_key, digest_item_bytes);
        assert!(chunks.len() > 1);
        assert_eq!(chunks[0].0.from, None);
        assert_eq!(chunks.last().unwrap().0.to, None);
        for pair in chunks.windows(2) {
            assert_eq!(pair[0].0.to, pair[1].0.from);
        }
        for (range, list) in &chunks {
            assert!(list.iter().all(|(room, _)| range.contains(room)));
        }
        assert_eq!(chunks.iter().map(|(_, l)| l.len()).sum::<usize>(), 2_000);
        let empty = ranged_chunks(Vec::new(), digest_key, digest_item_bytes);
        assert_eq!(empty, vec![(KeyRange::all(), Vec::new())]);
    }

    #[test]
    fn a_lost_chunk_touches_nothing_outside_its_own_range() {
        let mut net = Net::new(&["a", "b"]);
        net.tick_all();
        for i in 0..1_500 {
            net.local("a", &format!("room-{i:05}"), "ann", 1);
        }
        // The first digest chunk of the next round is lost: nothing is dropped.
        let lose_first = std::cell::Cell::new(true);
        let up = net.up("a");
        net.sync("a").ticks = DIGEST_EVERY_TICKS - 1;
        let effects = net.sync("a").tick(&up);
        net.run("a", effects, &|_, body| {
            matches!(body, Body::PresenceDigest { .. }) && lose_first.replace(false)
        });
        for i in [0, 700, 1_499] {
            assert_eq!(net.seen("b", &format!("room-{i:05}")).len(), 1);
        }
    }

    #[test]
    fn an_ask_for_a_room_left_since_answers_it_empty() {
        let mut net = Net::new(&["a", "b"]);
        net.tick_all();
        net.local("a", "lobby", "ann", 1);
        net.local_lossy("a", "lobby", "ann", 0, &|_, _| true);
        let up = net.up("a");
        let effects = net
            .sync("a")
            .on_wire(
                "b",
                2,
                Body::PresenceAsk {
                    rooms: vec!["lobby".into()],
                },
                &up,
            )
            .unwrap();
        assert_eq!(
            effects.sends,
            vec![(
                vec!["b".to_string()],
                Body::PresenceState {
                    room: "lobby".into(),
                    range: KeyRange::all(),
                    entries: vec![],
                }
            )]
        );
        net.run("a", effects, &|_, _| false);
        assert!(net.seen("b", "lobby").is_empty());
    }

    #[test]
    fn typing_goes_only_to_nodes_holding_members_of_the_room() {
        let mut net = Net::new(&["a", "b", "c"]);
        net.tick_all();
        net.local("b", "lobby", "bob", 1);
        net.local("c", "dev", "cy", 1);
        let up = net.up("a");
        let ann = UserInfo {
            id: "ann".into(),
            name: "Ann".into(),
        };
        let effects = net.sync("a").typing("lobby", &ann, &up);
        assert_eq!(effects.sends.len(), 1);
        assert_eq!(effects.sends[0].0, vec!["b".to_string()]);
        net.run("a", effects, &|_, _| false);
        assert_eq!(net.typing, vec![("b".into(), "lobby".into(), ann.clone())]);
        assert!(net.sync("a").typing("empty", &ann, &up).sends.is_empty());
    }

    #[test]
    fn over_size_and_out_of_bounds_traffic_is_refused() {
        let mut us = PresenceSync::new();
        let up: Peers = [("b".to_string(), 1)].into();
        let entry = |user: &str, name: &str| Entry {
            user: user.into(),
            name: name.into(),
            connections: 1,
        };
        let mut refuse = |body: Body| {
            assert!(
                matches!(
                    us.on_wire("b", 1, body.clone(), &up),
                    Err(Refused::Invalid(_))
                ),
                "{body:?}"
            );
        };
        refuse(Body::PresenceDigest {
            range: KeyRange::all(),
            rooms: (0..=MAX_LIST_ITEMS)
                .map(|i| (format!("r{i:05}"), 0))
                .collect(),
            reply: false,
        });
        refuse(Body::PresenceAsk {
            rooms: (0..=MAX_LIST_ITEMS).map(|i| format!("r{i}")).collect(),
        });
        refuse(Body::PresenceState {
            room: "lobby".into(),
            range: KeyRange::all(),
            entries: (0..=MAX_LIST_ITEMS)
                .map(|i| entry(&format!("u{i}"), "x"))
                .collect(),
        });
        // Under the count, over the bytes: 400 entries of ~300 bytes.
        let wide = "é".repeat(64);
        refuse(Body::PresenceState {
            room: "lobby".into(),
            range: KeyRange::all(),
            entries: (0..400)
                .map(|i| entry(&format!("u{i:03}{}", "x".repeat(50)), &wide))
                .collect(),
        });
        refuse(Body::PresenceDelta {
            room: "no spaces".into(),
            entry: entry("u", "x"),
        });
        refuse(Body::PresenceDelta {
            room: "lobby".into(),
            entry: entry(&"u".repeat(65), "x"),
        });
        refuse(Body::PresenceDelta {
            room: "lobby".into(),
            entry: entry("u", &"n".repeat(65)),
        });
        refuse(Body::PresenceDigest {
            range: KeyRange {
                from: Some("m".into()),
                to: None,
            },
            rooms: vec![("a".into(), 0)],
            reply: false,
        });
        refuse(Body::PresenceDigest {
            range: KeyRange {
                from: Some("m".into()),
                to: Some("c".into()),
            },
            rooms: vec![],
            reply: false,
        });
        refuse(Body::PresenceTyping {
            room: "lobby".into(),
            user: UserInfo {
                id: "".into(),
                name: "x".into(),
            },
        });
        refuse(Body::Leaving {});
        assert!(us.tracker.is_empty());
    }

    mod wired {
        use super::*;
        use crate::cluster::{EndpointMessage, View};
        use crate::telemetry::Metrics;
        use ractor::{Actor, ActorProcessingErr, ActorRef};
        use std::time::Duration;
        use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

        /// Forwards whatever it gets to the test.
        struct Forward<M>(std::marker::PhantomData<fn() -> M>);

        impl<M: ractor::Message> Actor for Forward<M> {
            type Msg = M;
            type State = UnboundedSender<M>;
            type Arguments = UnboundedSender<M>;

            async fn pre_start(
                &self,
                _myself: ActorRef<M>,
                tx: UnboundedSender<M>,
            ) -> Result<UnboundedSender<M>, ActorProcessingErr> {
                Ok(tx)
            }

            async fn handle(
                &self,
                _myself: ActorRef<M>,
                message: M,
                tx: &mut UnboundedSender<M>,
            ) -> Result<(), ActorProcessingErr> {
                let _ = tx.send(message);
                Ok(())
            }
        }

        async fn spawn<M: ractor::Message>() -> (ActorRef<M>, UnboundedReceiver<M>) {
            let (tx, rx) = unbounded_channel();
            let (actor, _) = Actor::spawn(None, Forward(std::marker::PhantomData), tx)
                .await
                .expect("spawn");
            (actor, rx)
        }

        async fn next<M>(rx: &mut UnboundedReceiver<M>) -> M {
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("within 5 s")
                .expect("open")
        }

        const B_KEY: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";

        async fn next_body(rx: &mut UnboundedReceiver<EndpointMessage>) -> Body {
            let EndpointMessage::Frame(bytes) = next(rx).await;
            let frame = crate::cluster::wire::decode(&bytes).expect("decodes");
            assert_eq!(frame.key, B_KEY, "sealed with the key b gave us");
            let [envelope] = <[_; 1]>::try_from(frame.envelopes).expect("one envelope");
            assert_eq!(envelope.from, "a");
            envelope.body
        }

        async fn next_presence(rx: &mut UnboundedReceiver<RoomMessage>) -> Vec<RemoteMember> {
            match next(rx).await {
                RoomMessage::RemotePresence(members) => members,
                _ => panic!("expected RemotePresence"),
            }
        }

        #[tokio::test]
        async fn the_port_talks_to_peers_and_to_running_rooms() {
            let metrics = Arc::new(Metrics::new());
            let cluster = Arc::new(Cluster::new(
                "a",
                Duration::from_millis(500),
                Duration::from_secs(3),
                2,
                metrics.clone(),
            ));
            let members = [("a".to_string(), cluster.incarnation), ("b".to_string(), 5)];
            cluster.publish_view(View::new(members.into(), 2));
            let (endpoint, mut peer) = spawn::<EndpointMessage>().await;
            cluster.set_endpoint("b", Some(endpoint.clone()));
            cluster.accept_sender("b", 5);
            assert!(cluster.key_offered("b", 5, B_KEY));
            let rooms = RoomDirectory::default();
            let (room, mut lobby) = spawn::<RoomMessage>().await;
            rooms.insert("lobby", room.clone());
            let port = Arc::new(TrackerPort::new(cluster.clone(), rooms));
            cluster.set_presence_port(port.clone());

            // A peer's delta reaches the running room; one for a room not running
            // here reaches nobody but is kept for when it starts.
            let bob = Entry {
                user: "bob".into(),
                name: "Bob".into(),
                connections: 2,
            };
            for room in ["lobby", "dev"] {
                let delta = Body::PresenceDelta {
                    room: room.into(),
                    entry: bob.clone(),
                };
                port.on_wire("b", 5, delta);
            }
            let bob_there = RemoteMember {
                node: "b".into(),
                user: UserInfo {
                    id: "bob".into(),
                    name: "Bob".into(),
                },
                connections: 2,
            };
            assert_eq!(next_presence(&mut lobby).await, vec![bob_there.clone()]);
            assert_eq!(port.remote("dev"), vec![bob_there.clone()]);
            // Another incarnation of b is not in the view: ignored.
            port.on_wire(
                "b",
                6,
                Body::PresenceDelta {
                    room: "lobby".into(),
                    entry: Entry {
                        connections: 9,
                        ..bob.clone()
                    },
                },
            );
            assert_eq!(port.remote("lobby"), vec![bob_there.clone()]);

            // Local changes and typing go to the peer.
            let ann = UserInfo {
                id: "ann".into(),
                name: "Ann".into(),
            };
            port.local("lobby", &ann, 1);
            assert_eq!(
                next_body(&mut peer).await,
                Body::PresenceDelta {
                    room: "lobby".into(),
                    entry: Entry {
                        user: "ann".into(),
                        name: "Ann".into(),
                        connections: 1,
                    },
                }
            );
            port.typing("lobby", &ann);
            assert_eq!(
                next_body(&mut peer).await,
                Body::PresenceTyping {
                    room: "lobby".into(),
                    user: ann.clone(),
                }
            );
            port.on_wire(
                "b",
                5,
                Body::PresenceTyping {
                    room: "lobby".into(),
                    user: bob_there.user.clone(),
                },
            );
            assert!(matches!(
                next(&mut lobby).await,
                RoomMessage::RemoteTyping(user) if user.id == "bob"
            ));

            // The first tick meets b: our digest, asking for b's.
            port.tick();
            let Body::PresenceDigest { rooms, reply, .. } = next_body(&mut peer).await else {
                panic!("expected a digest");
            };
            assert!(reply);
            assert_eq!(rooms.len(), 1);
            let entries = |text: &str| -> Option<f64> {
                text.lines()
                    .find_map(|l| l.strip_prefix("hubbub_presence_entries "))
                    .and_then(|v| v.trim().parse().ok())
            };
            assert_eq!(entries(&metrics.encode().unwrap()), Some(3.0));

            // b is declared down: bob leaves the running room.
            port.node_down("b");
            let gone = next_presence(&mut lobby).await;
            assert_eq!(
                gone,
                vec![RemoteMember {
                    connections: 0,
                    ..bob_there
                }]
            );
            assert!(port.remote("dev").is_empty());
            room.stop(None);
            endpoint.stop(None);
        }
    }
}
