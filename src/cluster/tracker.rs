//! Presence without an owner, as Phoenix Tracker does it: the pure core.
//!
//! Each node is the authority for its own connections. When a user's connection count
//! in a room changes on a node, that node sends the new count (an absolute value, so a
//! repeated or replayed delta is harmless) to its peers. Deltas can be lost (a link
//! reset drops whatever was in flight), so every node also sends a periodic
//! *digest*: one hash per room of what it holds locally. A peer whose copy hashes
//! differently asks for that room's state and replaces its copy. A node's entries are
//! dropped everywhere as soon as membership declares it down, and come back through
//! the digest when it returns; a node that restarted (a new incarnation) replaces
//! whatever its previous life had announced.
//!
//! No I/O here: presence_sync.rs feeds this struct what arrives and sends what it
//! returns. A large digest or room state may come in chunks, each over a
//! [`KeyRange`] of room names or user ids. Every operation reports the [`RemoteChange`]s it made, per room, so the
//! room's actor can update its member list and tell its connections.

use std::collections::{BTreeMap, BTreeSet};
use xxhash_rust::xxh3::Xxh3;

/// One user's presence in one room on one node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub user: String,
    pub name: String,
    /// Connections of the user in the room on that node; 0 means it left there.
    pub connections: u32,
}

/// A range of keys (room names or user ids) that one chunk of a digest or of a room's
/// state covers: `from` inclusive, `to` exclusive, None open. A large digest or room
/// travels as several chunks of adjacent ranges, so a chunk can be applied on its own
/// (what it does not list inside its range is gone) and a lost one costs nothing but
/// its own range until the next digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        Self::default()
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &str) -> bool {
        self.from.as_deref().is_none_or(|from| key >= from)
            && self.to.as_deref().is_none_or(|to| key < to)
    }
}

/// What one node holds of one room: user → (name, connections > 0).
pub type RoomEntries = BTreeMap<String, (String, u32)>;

/// A change to another node's entries in a room, for the room's actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteChange {
    pub room: String,
    pub node: String,
    pub user: String,
    pub name: String,
    /// The user's connections in the room on `node` now (0: gone from there).
    pub connections: u32,
}

#[derive(Debug, Default)]
struct Remote {
    incarnation: u64,
    rooms: BTreeMap<String, RoomEntries>,
}

/// The presence of every room on this node and, as last heard, on every other node.
#[derive(Debug, Default)]
pub struct Tracker {
    local: BTreeMap<String, RoomEntries>,
    remote: BTreeMap<String, Remote>,
}

/// The digest hash of a room's entries (order-independent: entries are sorted).
pub fn room_hash(entries: &RoomEntries) -> u64 {
    let mut hasher = Xxh3::new();
    for (user, (name, connections)) in entries {
        hasher.update(user.as_bytes());
        hasher.update(&[0]);
        hasher.update(name.as_bytes());
        hasher.update(&[0]);
        hasher.update(&connections.to_le_bytes());
    }
    hasher.digest()
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a local change; returns the delta to send to every peer.
    pub fn set_local(&mut self, room: &str, user: &str, name: &str, connections: u32) -> Entry {
        set(&mut self.local, room, user, name, connections);
        Entry {
            user: user.to_owned(),
            name: name.to_owned(),
            connections,
        }
    }

    /// This node's own entries for `room` (what a peer asking for it gets).
    pub fn local_room(&self, room: &str) -> Vec<Entry> {
        entries_of(self.local.get(room))
    }

    /// Every other node's entries for `room`: (node, entries).
    pub fn remote_room(&self, room: &str) -> Vec<(String, Vec<Entry>)> {
        self.remote
            .iter()
            .filter_map(|(node, remote)| {
                let entries = remote.rooms.get(room)?;
                Some((node.clone(), entries_of(Some(entries))))
            })
            .collect()
    }

    /// Every room some other node holds members of (for the server API's room list).
    pub fn remote_rooms(&self) -> BTreeSet<String> {
        self.remote
            .values()
            .flat_map(|remote| {
                remote
                    .rooms
                    .iter()
                    .filter(|(_, entries)| !entries.is_empty())
                    .map(|(room, _)| room.clone())
            })
            .collect()
    }

    /// The digest of this node's entries: every room with a local member and its hash.
    pub fn digest(&self) -> Vec<(String, u64)> {
        self.local
            .iter()
            .map(|(room, entries)| (room.clone(), room_hash(entries)))
            .collect()
    }

    /// A delta from `node` (incarnation `inc`).
    pub fn on_delta(
        &mut self,
        node: &str,
        inc: u64,
        room: &str,
        entry: Entry,
    ) -> Vec<RemoteChange> {
        let mut changes = self.meet(node, inc);
        let remote = self.remote.entry(node.to_owned()).or_default();
        if set(
            &mut remote.rooms,
            room,
            &entry.user,
            &entry.name,
            entry.connections,
        ) {
            changes.push(RemoteChange {
                room: room.to_owned(),
                node: node.to_owned(),
                user: entry.user,
                name: entry.name,
                connections: entry.connections,
            });
        }
        changes
    }

    /// A complete digest from `node`: every room it holds members of, with hashes.
    /// Returns the rooms whose state to ask it for, and the changes made by dropping
    /// rooms it no longer lists.
    pub fn on_digest(
        &mut self,
        node: &str,
        inc: u64,
        digest: &[(String, u64)],
    ) -> (Vec<String>, Vec<RemoteChange>) {
        self.on_digest_range(node, inc, &KeyRange::all(), digest)
    }

    /// One chunk of a digest from `node`: every room in `range` it holds members of.
    /// Rooms outside the range are left alone (listed ones there are ignored).
    pub fn on_digest_range(
        &mut self,
        node: &str,
        inc: u64,
        range: &KeyRange,
        digest: &[(String, u64)],
    ) -> (Vec<String>, Vec<RemoteChange>) {
        let mut changes = self.meet(node, inc);
        let listed: BTreeMap<&str, u64> = digest
            .iter()
            .filter(|(room, _)| range.contains(room))
            .map(|(r, h)| (r.as_str(), *h))
            .collect();
        let remote = self.remote.entry(node.to_owned()).or_default();
        let gone: Vec<String> = remote
            .rooms
            .keys()
            .filter(|room| range.contains(room) && !listed.contains_key(room.as_str()))
            .cloned()
            .collect();
        for room in gone {
            if let Some(entries) = remote.rooms.remove(&room) {
                changes.extend(departures(node, &room, entries));
            }
        }
        let ask = listed
            .iter()
            .filter(|(room, hash)| remote.rooms.get(**room).map(room_hash) != Some(**hash))
            .map(|(room, _)| (*room).to_owned())
            .collect();
        (ask, changes)
    }

    /// A room's whole state from `node` (the answer to a digest mismatch).
    pub fn on_room_state(
        &mut self,
        node: &str,
        inc: u64,
        room: &str,
        entries: Vec<Entry>,
    ) -> Vec<RemoteChange> {
        self.on_room_state_range(node, inc, room, &KeyRange::all(), entries)
    }

    /// One chunk of a room's state from `node`: its users in `range` (user ids).
    /// Users outside the range are left alone (listed ones there are ignored).
    pub fn on_room_state_range(
        &mut self,
        node: &str,
        inc: u64,
        room: &str,
        range: &KeyRange,
        entries: Vec<Entry>,
    ) -> Vec<RemoteChange> {
        let mut changes = self.meet(node, inc);
        let remote = self.remote.entry(node.to_owned()).or_default();
        let mut kept = remote.rooms.remove(room).unwrap_or_default();
        let in_range: Vec<String> = kept.keys().filter(|u| range.contains(u)).cloned().collect();
        let before: RoomEntries = in_range
            .into_iter()
            .filter_map(|user| kept.remove_entry(&user))
            .collect();
        let after: RoomEntries = entries
            .into_iter()
            .filter(|e| e.connections > 0 && range.contains(&e.user))
            .map(|e| (e.user, (e.name, e.connections)))
            .collect();
        let users: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        for user in users {
            let old = before.get(user);
            let new = after.get(user);
            if old != new {
                let (name, connections) = match (new, old) {
                    (Some((name, n)), _) => (name.clone(), *n),
                    (None, Some((name, _))) => (name.clone(), 0),
                    (None, None) => continue,
                };
                changes.push(RemoteChange {
                    room: room.to_owned(),
                    node: node.to_owned(),
                    user: user.clone(),
                    name,
                    connections,
                });
            }
        }
        kept.extend(after);
        if !kept.is_empty() {
            remote.rooms.insert(room.to_owned(), kept);
        }
        changes
    }

    /// Membership declared `node` down: everything it announced is gone.
    pub fn node_down(&mut self, node: &str) -> Vec<RemoteChange> {
        match self.remote.remove(node) {
            Some(remote) => remote
                .rooms
                .into_iter()
                .flat_map(|(room, entries)| departures(node, &room, entries))
                .collect(),
            None => Vec::new(),
        }
    }

    /// The nodes whose entries are held.
    pub fn known_nodes(&self) -> impl Iterator<Item = &str> {
        self.remote.keys().map(String::as_str)
    }

    /// How many (node, room, user) entries are held, local ones included.
    pub fn len(&self) -> usize {
        let count = |rooms: &BTreeMap<String, RoomEntries>| -> usize {
            rooms.values().map(BTreeMap::len).sum()
        };
        count(&self.local) + self.remote.values().map(|r| count(&r.rooms)).sum::<usize>()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Notes `node`'s incarnation; a new one means it restarted, and its previous
    /// life's entries are dropped first.
    fn meet(&mut self, node: &str, inc: u64) -> Vec<RemoteChange> {
        match self.remote.get(node) {
            Some(remote) if remote.incarnation != inc => {
                let changes = self.node_down(node);
                self.remote.entry(node.to_owned()).or_default().incarnation = inc;
                changes
            }
            Some(_) => Vec::new(),
            None => {
                self.remote.entry(node.to_owned()).or_default().incarnation = inc;
                Vec::new()
            }
        }
    }
}

/// Sets (or with 0 connections removes) one entry; true when it changed.
fn set(
    rooms: &mut BTreeMap<String, RoomEntries>,
    room: &str,
    user: &str,
    name: &str,
    connections: u32,
) -> bool {
    if connections == 0 {
        let Some(entries) = rooms.get_mut(room) else {
            return false;
        };
        let removed = entries.remove(user).is_some();
        if entries.is_empty() {
            rooms.remove(room);
        }
        return removed;
    }
    let entries = rooms.entry(room.to_owned()).or_default();
    let value = (name.to_owned(), connections);
    if entries.get(user) == Some(&value) {
        return false;
    }
    entries.insert(user.to_owned(), value);
    true
}

fn entries_of(entries: Option<&RoomEntries>) -> Vec<Entry> {
    entries
        .into_iter()
        .flatten()
        .map(|(user, (name, connections))| Entry {
            user: user.clone(),
            name: name.clone(),
            connections: *connections,
        })
        .collect()
}

fn departures(node: &str, room: &str, entries: RoomEntries) -> Vec<RemoteChange> {
    entries
        .into_iter()
        .map(|(user, (name, _))| RemoteChange {
            room: room.to_owned(),
            node: node.to_owned(),
            user,
            name,
            connections: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, n: u32) -> Entry {
        Entry {
            user: user.into(),
            name: user.to_uppercase(),
            connections: n,
        }
    }

    #[test]
    fn deltas_are_absolute_so_repeats_change_nothing() {
        let mut t = Tracker::new();
        assert_eq!(t.on_delta("b", 1, "lobby", entry("bob", 2)).len(), 1);
        assert!(t.on_delta("b", 1, "lobby", entry("bob", 2)).is_empty());
        let gone = t.on_delta("b", 1, "lobby", entry("bob", 0));
        assert_eq!(gone[0].connections, 0);
        assert!(t.remote_room("lobby").is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn remote_rooms_are_those_another_node_holds_members_of() {
        let mut t = Tracker::new();
        t.set_local("mine", "me", "ME", 1);
        t.on_delta("b", 1, "lobby", entry("bob", 1));
        t.on_delta("c", 1, "lobby", entry("cat", 2));
        t.on_delta("c", 1, "side", entry("cat", 1));
        let rooms: Vec<String> = t.remote_rooms().into_iter().collect();
        assert_eq!(rooms, ["lobby", "side"]);
        t.on_delta("c", 1, "side", entry("cat", 0));
        t.node_down("b");
        let rooms: Vec<String> = t.remote_rooms().into_iter().collect();
        assert_eq!(rooms, ["lobby"]);
        t.node_down("c");
        assert!(t.remote_rooms().is_empty());
    }

    #[test]
    fn a_lost_delta_is_repaired_by_the_digest() {
        // Node b's own tracker, and ours, which misses b's second delta.
        let mut b = Tracker::new();
        let mut us = Tracker::new();
        let first = b.set_local("lobby", "bob", "BOB", 1);
        us.on_delta("b", 7, "lobby", first);
        let _lost = b.set_local("lobby", "carol", "CAROL", 1);
        let (ask, changes) = us.on_digest("b", 7, &b.digest());
        assert!(changes.is_empty());
        assert_eq!(ask, vec!["lobby".to_string()]);
        let repaired = us.on_room_state("b", 7, "lobby", b.local_room("lobby"));
        assert_eq!(repaired.len(), 1);
        assert_eq!(repaired[0].user, "carol");
        // Now the copies agree and the next digest asks for nothing.
        let (ask, _) = us.on_digest("b", 7, &b.digest());
        assert!(ask.is_empty());
    }

    #[test]
    fn a_room_missing_from_a_digest_is_emptied() {
        let mut us = Tracker::new();
        us.on_delta("b", 1, "lobby", entry("bob", 1));
        us.on_delta("b", 1, "dev", entry("dan", 1));
        let (ask, changes) = us.on_digest(
            "b",
            1,
            &[("dev".into(), {
                let mut e = RoomEntries::new();
                e.insert("dan".into(), ("DAN".into(), 1));
                room_hash(&e)
            })],
        );
        assert!(ask.is_empty());
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (changes[0].room.as_str(), changes[0].connections),
            ("lobby", 0)
        );
    }

    #[test]
    fn a_node_declared_down_leaves_every_room() {
        let mut us = Tracker::new();
        us.on_delta("b", 1, "lobby", entry("bob", 1));
        us.on_delta("b", 1, "dev", entry("bob", 2));
        us.on_delta("c", 1, "lobby", entry("cy", 1));
        let mut gone = us.node_down("b");
        gone.sort_by(|x, y| x.room.cmp(&y.room));
        assert_eq!(gone.len(), 2);
        assert!(gone.iter().all(|c| c.connections == 0 && c.node == "b"));
        assert_eq!(us.remote_room("lobby").len(), 1);
        assert!(us.node_down("b").is_empty());
    }

    #[test]
    fn a_restarted_node_replaces_its_previous_life() {
        let mut us = Tracker::new();
        us.on_delta("b", 1, "lobby", entry("bob", 1));
        let changes = us.on_delta("b", 2, "dev", entry("dan", 1));
        // bob left (the old life), dan joined (the new one).
        assert_eq!(changes.len(), 2);
        assert!(changes
            .iter()
            .any(|c| c.user == "bob" && c.connections == 0));
        assert!(changes
            .iter()
            .any(|c| c.user == "dan" && c.connections == 1));
        assert!(us.remote_room("lobby").is_empty());
    }

    #[test]
    fn room_state_reports_only_what_changed() {
        let mut us = Tracker::new();
        us.on_delta("b", 1, "lobby", entry("bob", 1));
        us.on_delta("b", 1, "lobby", entry("ann", 1));
        let changes = us.on_room_state("b", 1, "lobby", vec![entry("bob", 1), entry("cy", 3)]);
        let mut summary: Vec<(String, u32)> = changes
            .into_iter()
            .map(|c| (c.user, c.connections))
            .collect();
        summary.sort();
        assert_eq!(summary, vec![("ann".into(), 0), ("cy".into(), 3)]);
    }

    #[test]
    fn the_hash_is_independent_of_insertion_order_and_sees_counts() {
        let mut a = Tracker::new();
        let mut b = Tracker::new();
        a.set_local("r", "x", "X", 1);
        a.set_local("r", "y", "Y", 1);
        b.set_local("r", "y", "Y", 1);
        b.set_local("r", "x", "X", 1);
        assert_eq!(a.digest(), b.digest());
        b.set_local("r", "x", "X", 2);
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn a_digest_chunk_drops_only_rooms_inside_its_range() {
        let mut us = Tracker::new();
        for room in ["a", "f", "m", "z"] {
            us.on_delta("b", 1, room, entry("bob", 1));
        }
        let range = KeyRange {
            from: Some("b".into()),
            to: Some("n".into()),
        };
        // Lists nothing in [b, n): f and m are gone there, a and z untouched; a
        // listed room outside the range is ignored.
        let (ask, changes) = us.on_digest_range("b", 1, &range, &[("q".into(), 1)]);
        assert!(ask.is_empty());
        let mut gone: Vec<&str> = changes.iter().map(|c| c.room.as_str()).collect();
        gone.sort();
        assert_eq!(gone, vec!["f", "m"]);
        for (room, held) in [("a", 1), ("f", 0), ("m", 0), ("z", 1), ("q", 0)] {
            assert_eq!(us.remote_room(room).len(), held, "{room}");
        }
    }

    #[test]
    fn a_room_state_chunk_replaces_only_users_inside_its_range() {
        let mut us = Tracker::new();
        for user in ["ann", "bob", "cy", "dan"] {
            us.on_delta("b", 1, "lobby", entry(user, 1));
        }
        let range = KeyRange {
            from: Some("b".into()),
            to: Some("d".into()),
        };
        let changes = us.on_room_state_range(
            "b",
            1,
            "lobby",
            &range,
            vec![entry("bob", 2), entry("dan", 5), entry("bea", 1)],
        );
        let mut summary: Vec<(String, u32)> = changes
            .into_iter()
            .map(|c| (c.user, c.connections))
            .collect();
        summary.sort();
        assert_eq!(
            summary,
            vec![("bea".into(), 1), ("bob".into(), 2), ("cy".into(), 0)]
        );
        let held: Vec<(String, u32)> = us.remote_room("lobby")[0]
            .1
            .iter()
            .map(|e| (e.user.clone(), e.connections))
            .collect();
        assert_eq!(
            held,
            vec![
                ("ann".into(), 1),
                ("bea".into(), 1),
                ("bob".into(), 2),
                ("dan".into(), 1)
            ]
        );
        // An empty chunk over every user empties the room.
        us.on_room_state_range("b", 1, "lobby", &KeyRange::all(), vec![]);
        assert!(us.remote_room("lobby").is_empty());
    }

    #[test]
    fn local_state_holds_only_current_members() {
        let mut t = Tracker::new();
        for i in 0..100 {
            let user = format!("u{i}");
            t.set_local("lobby", &user, &user, 1);
            t.set_local("lobby", &user, &user, 0);
        }
        assert!(t.is_empty());
        assert!(t.digest().is_empty());
    }
}
