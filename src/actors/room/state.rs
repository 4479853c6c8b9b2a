//! What a Room holds whatever its role: the connections on this node, the members
//! (this node's, and the room-wide list), the history ring, and fan-out to local
//! connections. Every broadcast is encoded once; the same bytes go to every member.

use crate::actors::outbox::{Fanout, Outbox};
use crate::behaviour::RoomBehaviour;
use crate::protocol::{
    encode, ChatMessage, Member, ReplyData, RoomName, ServerFrame, UserInfo, MAX_HISTORY_LIMIT,
};
use bytestring::ByteString;
use ractor::{ActorCell, ActorId};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// Messages a `history` request returns when it gives no `limit`.
const DEFAULT_HISTORY_LIMIT: u32 = 50;

/// A connection on this node joined to the room.
pub struct Connection {
    pub user_id: String,
    pub outbox: Outbox,
    pub cell: ActorCell,
    /// False while its join waits for the owner's answer: it gets no broadcasts yet,
    /// so it never sees a message twice (once live, once in its join reply).
    pub active: bool,
}

/// A user with connections on this node.
pub struct LocalMember {
    pub name: String,
    pub connections: u32,
}

/// The room as this node holds it.
pub struct RoomState {
    pub name: RoomName,
    pub behaviour: Arc<dyn RoomBehaviour>,
    pub connections: HashMap<ActorId, Connection>,
    /// Users with connections on this node, by id.
    pub local: BTreeMap<String, LocalMember>,
    /// The room-wide member list as last computed (owner) or announced (relay).
    pub members: BTreeMap<String, Member>,
    /// The highest sequence number held.
    pub seq: u64,
    /// The highest sequence number pushed to this node's connections.
    pub pushed: u64,
    pub history: VecDeque<ChatMessage>,
    pub history_cap: usize,
    /// Bumped whenever the room empties or fills, so a stale idle timer does nothing.
    pub idle_generation: u64,
}

impl RoomState {
    pub fn new(name: RoomName, behaviour: Arc<dyn RoomBehaviour>, history_cap: usize) -> Self {
        Self {
            name,
            behaviour,
            connections: HashMap::new(),
            local: BTreeMap::new(),
            members: BTreeMap::new(),
            seq: 0,
            pushed: 0,
            // Grows as messages arrive: an empty room costs no history.
            history: VecDeque::new(),
            history_cap,
            idle_generation: 0,
        }
    }

    /// Adds a connection; returns the user's connection count on this node.
    pub fn add_connection(
        &mut self,
        id: ActorId,
        user: &UserInfo,
        outbox: Outbox,
        cell: ActorCell,
        active: bool,
    ) -> u32 {
        self.idle_generation += 1;
        self.connections.insert(
            id,
            Connection {
                user_id: user.id.clone(),
                outbox,
                cell,
                active,
            },
        );
        let entry = self.local.entry(user.id.clone()).or_insert(LocalMember {
            name: user.name.clone(),
            connections: 0,
        });
        entry.connections += 1;
        entry.connections
    }

    /// Removes a connection; returns it with its user's remaining count on this node.
    pub fn remove_connection(&mut self, id: &ActorId) -> Option<(Connection, UserInfo, u32)> {
        let conn = self.connections.remove(id)?;
        let (name, left) = match self.local.get_mut(&conn.user_id) {
            Some(entry) => {
                entry.connections = entry.connections.saturating_sub(1);
                (entry.name.clone(), entry.connections)
            }
            None => (String::new(), 0),
        };
        if left == 0 {
            self.local.remove(&conn.user_id);
        }
        let user = UserInfo {
            id: conn.user_id.clone(),
            name,
        };
        Some((conn, user, left))
    }

    /// This node's members, with this node's counts.
    pub fn local_members(&self) -> Vec<Member> {
        self.local
            .iter()
            .map(|(id, m)| Member {
                id: id.clone(),
                name: m.name.clone(),
                connections: m.connections,
            })
            .collect()
    }

    /// The room-wide member list.
    pub fn member_list(&self) -> Vec<Member> {
        self.members.values().cloned().collect()
    }

    /// Replaces the room-wide member list; returns who joined and who left.
    pub fn replace_members(&mut self, members: Vec<Member>) -> (Vec<Member>, Vec<Member>) {
        let next: BTreeMap<String, Member> =
            members.into_iter().map(|m| (m.id.clone(), m)).collect();
        let joins = next
            .values()
            .filter(|m| !self.members.contains_key(&m.id))
            .cloned()
            .collect();
        let leaves = self
            .members
            .values()
            .filter(|m| !next.contains_key(&m.id))
            .map(|m| Member {
                connections: 0,
                ..m.clone()
            })
            .collect();
        self.members = next;
        (joins, leaves)
    }

    /// Appends an ordered message (ignoring one already held); true if it was new.
    pub fn remember(&mut self, message: ChatMessage) -> bool {
        if message.seq <= self.seq {
            return false;
        }
        self.seq = message.seq;
        if self.history.len() >= self.history_cap {
            self.history.pop_front();
        }
        self.history.push_back(message);
        true
    }

    /// Replaces the history with a merged copy (a new owner's).
    pub fn replace_history(&mut self, seq: u64, history: Vec<ChatMessage>) {
        let skip = history.len().saturating_sub(self.history_cap);
        self.history = history.into_iter().skip(skip).collect();
        self.seq = self.seq.max(seq);
    }

    /// Pushes every held message this node's connections have not seen yet.
    pub fn push_unseen(&mut self) {
        let unseen: Vec<ByteString> = self
            .history
            .iter()
            .filter(|m| m.seq > self.pushed)
            .map(|m| encode(&ServerFrame::Message(m.clone())))
            .collect();
        for frame in &unseen {
            self.broadcast(frame, None);
        }
        self.pushed = self.pushed.max(self.seq);
    }

    /// Pushes one ordered message to this node's connections.
    pub fn push_message(&mut self, message: &ChatMessage) {
        let frame = encode(&ServerFrame::Message(message.clone()));
        self.broadcast(&frame, None);
        self.pushed = self.pushed.max(message.seq);
    }

    /// Sends a presence_diff to this node's connections (but `except`), if non-empty.
    pub fn push_presence_diff(
        &self,
        joins: Vec<Member>,
        leaves: Vec<Member>,
        except: Option<&ActorId>,
    ) {
        if joins.is_empty() && leaves.is_empty() {
            return;
        }
        let diff = ServerFrame::PresenceDiff {
            room: self.name.to_string(),
            joins,
            leaves,
        };
        self.broadcast(&encode(&diff), except);
    }

    /// Sends a typing frame to this node's connections of users other than `user`.
    pub fn push_typing(&self, user: &UserInfo) {
        let frame = encode(&ServerFrame::Typing {
            room: self.name.to_string(),
            user: user.clone(),
        });
        let mut fanout = Fanout::new(&frame);
        for conn in self.connections.values() {
            if conn.active && conn.user_id != user.id {
                let _ = fanout.push(&conn.outbox);
            }
        }
    }

    /// Records a new name for a user; the old name when it changed.
    pub fn rename(&mut self, user: &UserInfo) -> Option<String> {
        if let Some(local) = self.local.get_mut(&user.id) {
            local.name = user.name.clone();
        }
        let member = self.members.get_mut(&user.id)?;
        if member.name == user.name {
            return None;
        }
        Some(std::mem::replace(&mut member.name, user.name.clone()))
    }

    /// Sends a renamed frame to this node's connections.
    pub fn push_renamed(&self, user: &UserInfo, old_name: String) {
        let frame = encode(&ServerFrame::Renamed {
            room: self.name.to_string(),
            user: user.clone(),
            old_name,
        });
        self.broadcast(&frame, None);
    }

    /// Pushes the same bytes to every active connection but `except`, waking each
    /// actix worker once ([`Fanout`]). A member whose queue is full is closed as a slow
    /// consumer by its outbox; its Session then ends and the monitor removes it from
    /// the room.
    pub fn broadcast(&self, frame: &ByteString, except: Option<&ActorId>) {
        let mut fanout = Fanout::new(frame);
        for (id, conn) in &self.connections {
            if conn.active && Some(id) != except {
                let _ = fanout.push(&conn.outbox);
            }
        }
    }

    /// The messages a joining client gets, and whether some it asked for are gone.
    /// A resume (`since`) gets every held message after `since`: the history ring
    /// (`rooms.history`) bounds it. A fresh join gets at most [`MAX_HISTORY_LIMIT`],
    /// the newest; older ones are a `history` request away.
    pub fn resume_from(&self, since: Option<u64>) -> (Vec<ChatMessage>, bool) {
        let (messages, gap) = self.resume_all(since);
        let cap = MAX_HISTORY_LIMIT as usize;
        if since.is_some() || messages.len() <= cap {
            return (messages, gap);
        }
        let cut = messages.len() - cap;
        (messages[cut..].to_vec(), gap)
    }

    fn resume_all(&self, since: Option<u64>) -> (Vec<ChatMessage>, bool) {
        let Some(since) = since else {
            return (self.history.iter().cloned().collect(), false);
        };
        if since > self.seq {
            // The client saw sequence numbers this room never handed out: the room
            // was retired and started afresh. Everything it holds is new to the client.
            return (self.history.iter().cloned().collect(), true);
        }
        let oldest_held = self.history.front().map_or(self.seq + 1, |m| m.seq);
        let gap = since < self.seq && oldest_held > since + 1;
        let missed = self
            .history
            .iter()
            .filter(|m| m.seq > since)
            .cloned()
            .collect();
        (missed, gap)
    }

    /// A `history` reply: up to `limit` messages before `before`, oldest first.
    pub fn history_page(&self, before: Option<u64>, limit: Option<u32>) -> ReplyData {
        let limit = limit
            .unwrap_or(DEFAULT_HISTORY_LIMIT)
            .clamp(1, MAX_HISTORY_LIMIT) as usize;
        let before = before.unwrap_or(u64::MAX);
        let older: Vec<&ChatMessage> = self.history.iter().filter(|m| m.seq < before).collect();
        let start = older.len().saturating_sub(limit);
        ReplyData::History {
            room: self.name.to_string(),
            messages: older[start..].iter().map(|m| (*m).clone()).collect(),
        }
    }
}
