//! A shard's room-wide member lists, kept in its log: where the `join`, `leave`,
//! `room_created` and `room_emptied` webhook events come from (docs/webhooks.md).
//!
//! Owns: [`ShardMembers`] (per room, which nodes hold a connection of each user; per
//! node, the epoch its entries count in) and how the member commands change it
//! ([`ShardMembers::member`], [`ShardMembers::rejoin`], [`ShardMembers::gone`],
//! pure: a command in, [`RoomEvent`]s out). Part of a shard's state
//! ([`super::state_machine::ShardState`]), so it is in its snapshots and every
//! replica derives the same events with the same numbers from the same entries. The
//! shard's leader sends them (src/cluster/room_log.rs); what proposes the commands
//! is src/cluster/member_log.rs.
//!
//! Each node is the authority for its own connections: it proposes `Member` when a
//! user's first connection in a room opens on it or its last closes. The leader of
//! the shard proposes `NodeGone` for a node membership declared down, so its members
//! leave; a node that finds itself gone (it was frozen or cut off) or that has just
//! started proposes `NodeRejoin` with a greater epoch, which drops whatever it held,
//! and then sends its members again. A `Member` of an old epoch changes nothing:
//! whatever order a gone node's late entries and its `NodeGone` land in, the lists
//! end as the node's own `Member`s after its rejoin make them.
//!
//! Numbers: a room's events count from 1 at its `room_created` to its `room_emptied`
//! (`seq`); `life` numbers the shard's room lives (one more at every `room_created`),
//! so `(life, seq)` orders every membership event of a room and names it uniquely,
//! across its lives. An
//! emptied room is dropped from the lists (a flood of joins of new names leaves
//! nothing behind); `message_seq` is where the room's messages stood.

use crate::protocol::{RoomName, UserInfo, MAX_MEMBER_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// How many of its latest room events a shard keeps, for a new leader to send again.
pub const RECENT_ROOM_EVENTS: usize = 4096;

/// Longest user name a member command may carry, in bytes (names are bounded far
/// below this by the protocol; this bounds peer input).
pub const MAX_MEMBER_NAME_BYTES: usize = 1024;

/// What happened to a room's member list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomEventKind {
    /// The room got its first member anywhere.
    RoomCreated,
    /// A user's first connection in the room, anywhere.
    Join,
    /// A user's last connection in the room, anywhere, is gone.
    Leave,
    /// The room's last member left.
    RoomEmptied,
}

impl RoomEventKind {
    /// The webhook event name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoomCreated => "room_created",
            Self::Join => "join",
            Self::Leave => "leave",
            Self::RoomEmptied => "room_emptied",
        }
    }
}

/// One change of a room's member list, numbered as every replica numbers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEvent {
    pub room: String,
    pub kind: RoomEventKind,
    /// The user who joined or left (None for `RoomCreated` and `RoomEmptied`).
    pub user: Option<UserInfo>,
    /// This life of the room: the shard's count of room lives at its `RoomCreated`.
    pub life: u64,
    /// 1 for the `RoomCreated`, one more per event of this life.
    pub seq: u64,
    /// The room's last message seq when it happened (0: none yet).
    pub message_seq: u64,
    /// When the command was proposed (ms since the epoch), stamped by its proposer.
    pub ts: u64,
}

impl RoomEvent {
    /// The event's delivery id, the same on every node: `<kind>:<life>.<seq>@<room>`.
    pub fn delivery_id(&self) -> String {
        format!(
            "{}:{}.{}@{}",
            self.kind.as_str(),
            self.life,
            self.seq,
            self.room
        )
    }
}

/// The epoch a node's entries count in, and whether the leader declared it gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEpoch {
    pub epoch: u64,
    pub gone: bool,
}

/// One user of a room: its name when it joined, and the nodes holding its connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RoomUser {
    user: UserInfo,
    nodes: BTreeSet<String>,
}

/// A room's members in this life of the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RoomMembers {
    life: u64,
    /// The last event's seq.
    events: u64,
    users: BTreeMap<String, RoomUser>,
}

/// When a command was proposed (ms since the epoch), as its proposer stamped it.
pub struct At {
    pub ts: u64,
}

/// A shard's member lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMembers {
    /// How many room lives began in this shard.
    lives: u64,
    nodes: BTreeMap<String, NodeEpoch>,
    rooms: BTreeMap<String, RoomMembers>,
    recent: VecDeque<RoomEvent>,
}

/// Why a member command was not taken: it is malformed peer input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadMember;

impl ShardMembers {
    /// The epoch `node` counts in here (None: it never rejoined this shard).
    pub fn epoch(&self, node: &str) -> Option<NodeEpoch> {
        self.nodes.get(node).copied()
    }

    /// The nodes whose entries count now (not declared gone), with their epochs.
    pub fn live_nodes(&self) -> Vec<(String, u64)> {
        self.nodes
            .iter()
            .filter(|(_, e)| !e.gone)
            .map(|(n, e)| (n.clone(), e.epoch))
            .collect()
    }

    /// Whether any node holds a member of `room`.
    pub fn holds(&self, room: &str) -> bool {
        self.rooms.get(room).is_some_and(|r| !r.users.is_empty())
    }

    /// The users of `room` as the lists hold them.
    pub fn users(&self, room: &str) -> Vec<UserInfo> {
        self.rooms.get(room).map_or_else(Vec::new, |r| {
            r.users.values().map(|u| u.user.clone()).collect()
        })
    }

    /// The latest events (at most [`RECENT_ROOM_EVENTS`]) stamped at or after
    /// `since_ms`, oldest first.
    pub fn recent(&self, since_ms: u64) -> Vec<RoomEvent> {
        self.recent
            .iter()
            .filter(|e| e.ts >= since_ms)
            .cloned()
            .collect()
    }

    /// `Member`: `node` holds (`present`) or no longer holds a connection of `user`
    /// in `room`. Ok(false) when `epoch` is not the node's current one (nothing
    /// changes).
    #[allow(clippy::too_many_arguments)]
    pub fn member(
        &mut self,
        node: &str,
        epoch: u64,
        room: &str,
        user: &UserInfo,
        present: bool,
        at: &At,
        message_seq: u64,
        events: &mut Vec<RoomEvent>,
    ) -> Result<bool, BadMember> {
        if !crate::config::is_node_name(node)
            || RoomName::parse(room).is_err()
            || user.id.is_empty()
            || user.id.len() > MAX_MEMBER_BYTES
            || user.name.len() > MAX_MEMBER_NAME_BYTES
        {
            return Err(BadMember);
        }
        if self.nodes.get(node) != Some(&NodeEpoch { epoch, gone: false }) {
            return Ok(false);
        }
        let mut out = Vec::new();
        if present {
            let lives = &mut self.lives;
            let members = self.rooms.entry(room.to_owned()).or_insert_with(|| {
                out.push((RoomEventKind::RoomCreated, None));
                *lives += 1;
                RoomMembers {
                    life: *lives,
                    events: 0,
                    users: BTreeMap::new(),
                }
            });
            let entry = members.users.entry(user.id.clone()).or_insert_with(|| {
                out.push((RoomEventKind::Join, Some(user.clone())));
                RoomUser {
                    user: user.clone(),
                    nodes: BTreeSet::new(),
                }
            });
            entry.nodes.insert(node.to_owned());
        } else {
            self.remove(room, &user.id, node, &mut out);
        }
        self.number(room, out, at, message_seq, events);
        Ok(true)
    }

    /// `NodeRejoin`: `node` starts over with `epoch`, dropping what it held. Ok(false)
    /// when `epoch` is not greater than its current one.
    pub fn rejoin(
        &mut self,
        node: &str,
        epoch: u64,
        at: &At,
        message_seq: &dyn Fn(&str) -> u64,
        events: &mut Vec<RoomEvent>,
    ) -> Result<bool, BadMember> {
        if !crate::config::is_node_name(node) {
            return Err(BadMember);
        }
        if self.nodes.get(node).is_some_and(|e| e.epoch >= epoch) {
            return Ok(false);
        }
        self.drop_node(node, at, message_seq, events);
        self.nodes
            .insert(node.to_owned(), NodeEpoch { epoch, gone: false });
        Ok(true)
    }

    /// `NodeGone`: `node`'s entries of `epoch` are dropped, unless it rejoined since
    /// (Ok(false)).
    pub fn gone(
        &mut self,
        node: &str,
        epoch: u64,
        at: &At,
        message_seq: &dyn Fn(&str) -> u64,
        events: &mut Vec<RoomEvent>,
    ) -> Result<bool, BadMember> {
        if !crate::config::is_node_name(node) {
            return Err(BadMember);
        }
        if self.nodes.get(node) != Some(&NodeEpoch { epoch, gone: false }) {
            return Ok(false);
        }
        self.drop_node(node, at, message_seq, events);
        self.nodes
            .insert(node.to_owned(), NodeEpoch { epoch, gone: true });
        Ok(true)
    }

    /// Takes `node` out of every room it holds members in, room by room in name order.
    fn drop_node(
        &mut self,
        node: &str,
        at: &At,
        message_seq: &dyn Fn(&str) -> u64,
        events: &mut Vec<RoomEvent>,
    ) {
        let held: Vec<(String, Vec<String>)> = self
            .rooms
            .iter()
            .map(|(room, members)| {
                let users = members
                    .users
                    .iter()
                    .filter(|(_, u)| u.nodes.contains(node))
                    .map(|(id, _)| id.clone())
                    .collect::<Vec<_>>();
                (room.clone(), users)
            })
            .filter(|(_, users)| !users.is_empty())
            .collect();
        for (room, users) in held {
            let mut out = Vec::new();
            for id in users {
                self.remove(&room, &id, node, &mut out);
            }
            let seq = message_seq(&room);
            self.number(&room, out, at, seq, events);
        }
    }

    /// Takes `node` off `user_id` in `room`: a `Leave` when no node holds the user any
    /// more, and a `RoomEmptied` when nobody is left (the room is dropped then, after
    /// its events are numbered).
    fn remove(
        &mut self,
        room: &str,
        user_id: &str,
        node: &str,
        out: &mut Vec<(RoomEventKind, Option<UserInfo>)>,
    ) {
        let Some(members) = self.rooms.get_mut(room) else {
            return;
        };
        let Some(entry) = members.users.get_mut(user_id) else {
            return;
        };
        if !entry.nodes.remove(node) || !entry.nodes.is_empty() {
            return;
        }
        if let Some(left) = members.users.remove(user_id) {
            out.push((RoomEventKind::Leave, Some(left.user)));
        }
        if members.users.is_empty() {
            out.push((RoomEventKind::RoomEmptied, None));
        }
    }

    /// Numbers `out` as the next events of `room`, keeps them among the recent ones
    /// and hands them out; drops the room once it is emptied.
    fn number(
        &mut self,
        room: &str,
        out: Vec<(RoomEventKind, Option<UserInfo>)>,
        at: &At,
        message_seq: u64,
        events: &mut Vec<RoomEvent>,
    ) {
        let Some(members) = self.rooms.get_mut(room) else {
            return;
        };
        let mut emptied = false;
        for (kind, user) in out {
            members.events += 1;
            emptied |= kind == RoomEventKind::RoomEmptied;
            let event = RoomEvent {
                room: room.to_owned(),
                kind,
                user,
                life: members.life,
                seq: members.events,
                message_seq,
                ts: at.ts,
            };
            self.recent.push_back(event.clone());
            events.push(event);
        }
        while self.recent.len() > RECENT_ROOM_EVENTS {
            self.recent.pop_front();
        }
        if emptied {
            self.rooms.remove(room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserInfo {
        UserInfo {
            id: id.into(),
            name: id.to_uppercase(),
        }
    }

    fn at(n: u64) -> At {
        At { ts: 1_000 + n }
    }

    fn none(_: &str) -> u64 {
        0
    }

    fn kinds(events: &[RoomEvent]) -> Vec<(&str, Option<&str>, u64)> {
        events
            .iter()
            .map(|e| {
                (
                    e.kind.as_str(),
                    e.user.as_ref().map(|u| u.id.as_str()),
                    e.seq,
                )
            })
            .collect()
    }

    /// `nodes` rejoined at epoch 1.
    fn lists(nodes: &[&str]) -> ShardMembers {
        let mut members = ShardMembers::default();
        for node in nodes {
            assert_eq!(
                members.rejoin(node, 1, &at(1), &none, &mut Vec::new()),
                Ok(true)
            );
        }
        members
    }

    #[test]
    fn first_and_last_connections_anywhere_make_the_events() {
        let mut m = lists(&["a", "b"]);
        let mut ev = Vec::new();
        m.member("a", 1, "lobby", &user("al"), true, &at(2), 0, &mut ev)
            .unwrap();
        // The same user on a second node, and again on the first: no event.
        m.member("b", 1, "lobby", &user("al"), true, &at(3), 0, &mut ev)
            .unwrap();
        m.member("a", 1, "lobby", &user("al"), true, &at(4), 0, &mut ev)
            .unwrap();
        m.member("b", 1, "lobby", &user("bo"), true, &at(5), 7, &mut ev)
            .unwrap();
        m.member("a", 1, "lobby", &user("al"), false, &at(6), 7, &mut ev)
            .unwrap();
        assert_eq!(
            kinds(&ev),
            [
                ("room_created", None, 1),
                ("join", Some("al"), 2),
                ("join", Some("bo"), 3)
            ]
        );
        m.member("b", 1, "lobby", &user("al"), false, &at(7), 7, &mut ev)
            .unwrap();
        m.member("b", 1, "lobby", &user("bo"), false, &at(8), 9, &mut ev)
            .unwrap();
        assert_eq!(
            kinds(&ev[3..]),
            [
                ("leave", Some("al"), 4),
                ("leave", Some("bo"), 5),
                ("room_emptied", None, 6)
            ]
        );
        assert!(ev.iter().all(|e| e.life == 1), "{ev:?}");
        assert_eq!(ev[2].message_seq, 7);
        assert_eq!(ev[5].message_seq, 9);
        assert_eq!(ev[0].delivery_id(), "room_created:1.1@lobby");
        // Emptied: dropped, and the next life starts at 1 with its own life number.
        let mut again = Vec::new();
        m.member("a", 1, "lobby", &user("cy"), true, &at(9), 9, &mut again)
            .unwrap();
        assert_eq!(
            kinds(&again),
            [("room_created", None, 1), ("join", Some("cy"), 2)]
        );
        assert_eq!(again[0].life, 2);
        assert_eq!(m.recent(0).len(), 8);
        assert_eq!(m.recent(1_000 + 9).len(), 2);
    }

    #[test]
    fn a_gone_node_takes_its_members_with_it_and_old_entries_count_for_nothing() {
        let mut m = lists(&["a", "b"]);
        let mut ev = Vec::new();
        m.member("a", 1, "r1", &user("al"), true, &at(2), 0, &mut ev)
            .unwrap();
        m.member("a", 1, "r2", &user("al"), true, &at(3), 0, &mut ev)
            .unwrap();
        m.member("b", 1, "r2", &user("bo"), true, &at(4), 0, &mut ev)
            .unwrap();
        ev.clear();
        assert_eq!(m.gone("a", 1, &at(5), &none, &mut ev), Ok(true));
        assert_eq!(
            ev.iter()
                .map(|e| (e.room.as_str(), e.kind.as_str()))
                .collect::<Vec<_>>(),
            [("r1", "leave"), ("r1", "room_emptied"), ("r2", "leave")]
        );
        assert_eq!(
            m.epoch("a"),
            Some(NodeEpoch {
                epoch: 1,
                gone: true
            })
        );
        // Late entries of the gone epoch, and a second NodeGone: nothing.
        ev.clear();
        assert_eq!(
            m.member("a", 1, "r1", &user("al"), true, &at(6), 0, &mut ev),
            Ok(false)
        );
        assert_eq!(m.gone("a", 1, &at(7), &none, &mut ev), Ok(false));
        assert!(ev.is_empty());
        // It rejoins and sends its members again.
        assert_eq!(m.rejoin("a", 2, &at(8), &none, &mut ev), Ok(true));
        m.member("a", 2, "r2", &user("al"), true, &at(9), 0, &mut ev)
            .unwrap();
        assert_eq!(kinds(&ev), [("join", Some("al"), 5)]);
        // A NodeGone of the old epoch landing after the rejoin changes nothing.
        assert_eq!(m.gone("a", 1, &at(10), &none, &mut ev), Ok(false));
        assert_eq!(m.users("r2").len(), 2);
        assert_eq!(m.live_nodes(), [("a".to_owned(), 2), ("b".to_owned(), 1)]);
    }

    #[test]
    fn a_rejoin_drops_what_a_restarted_node_held() {
        let mut m = lists(&["a"]);
        let mut ev = Vec::new();
        m.member("a", 1, "r", &user("al"), true, &at(2), 0, &mut ev)
            .unwrap();
        ev.clear();
        // Not greater: refused. Greater: what it held leaves.
        assert_eq!(m.rejoin("a", 1, &at(3), &none, &mut ev), Ok(false));
        assert_eq!(m.rejoin("a", 5, &at(4), &|_| 3, &mut ev), Ok(true));
        assert_eq!(
            kinds(&ev),
            [("leave", Some("al"), 3), ("room_emptied", None, 4)]
        );
        assert_eq!(ev[0].message_seq, 3);
        // Before any rejoin a node's entries count for nothing.
        let mut fresh = ShardMembers::default();
        assert_eq!(
            fresh.member("a", 0, "r", &user("al"), true, &at(1), 0, &mut ev),
            Ok(false)
        );
    }

    #[test]
    fn malformed_commands_are_refused() {
        let mut m = lists(&["a"]);
        let mut ev = Vec::new();
        let long = "x".repeat(MAX_MEMBER_NAME_BYTES + 1);
        for (node, room, u) in [
            ("", "r", user("al")),
            ("a", "no spaces", user("al")),
            ("a", "r", user("")),
            (
                "a",
                "r",
                UserInfo {
                    id: "al".into(),
                    name: long,
                },
            ),
        ] {
            assert_eq!(
                m.member(node, 1, room, &u, true, &at(2), 0, &mut ev),
                Err(BadMember)
            );
        }
        assert_eq!(m.rejoin("", 1, &at(2), &none, &mut ev), Err(BadMember));
        assert_eq!(m.gone("", 1, &at(2), &none, &mut ev), Err(BadMember));
        assert!(ev.is_empty());
    }

    #[test]
    fn recent_events_are_bounded() {
        let mut m = lists(&["a"]);
        let mut ev = Vec::new();
        for i in 0..RECENT_ROOM_EVENTS as u64 {
            let present = i % 2 == 0;
            m.member("a", 1, "r", &user("al"), present, &at(i + 2), 0, &mut ev)
                .unwrap();
        }
        assert_eq!(m.recent(0).len(), RECENT_ROOM_EVENTS);
        assert_eq!(ev.len(), RECENT_ROOM_EVENTS * 2);
    }
}
