//! What a Room holds: the connections on this node, the members (this node's, and
//! the room-wide list), the ring of the newest committed messages as delivered here,
//! and fan-out to local connections. Every broadcast is encoded once; the same bytes go to every member.

//!
//! Replies built here are bounded twice: in count (`limit`, [`MAX_HISTORY_LIMIT`],
//! `limits.presence_page`) and in bytes (`limits.max_reply_bytes`, [`ReplyBounds`]).
//! A reply cut by either says so (`more` and a cursor), so a client can fetch the rest
//! in order and nothing is lost silently.

use crate::actors::outbox::{Fanout, Outbox};
use crate::behaviour::RoomBehaviour;
use crate::config::LimitSettings;
use crate::protocol::{
    encode, json_len, ChatMessage, Member, ReplyData, RoomName, ServerFrame, UserInfo,
    MAX_HISTORY_LIMIT, REPLY_ENVELOPE_BYTES,
};
use crate::telemetry::Metrics;
use bytestring::ByteString;
use ractor::{ActorCell, ActorId};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

/// One `presence_diff`'s worth of change: who joined (first connection), who left
/// (last connection), and who is still present with another connection count.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MemberChanges {
    pub joins: Vec<Member>,
    pub leaves: Vec<Member>,
    pub updates: Vec<Member>,
}

impl MemberChanges {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty() && self.updates.is_empty()
    }
}

/// The data of a successful join, within the reply bounds (`limits.max_reply_bytes`,
/// `limits.presence_page`). The cut fields mean what they mean in [`ReplyData::Join`].
#[derive(Debug, Clone, PartialEq)]
pub struct JoinData {
    pub seq: u64,
    pub history: Vec<ChatMessage>,
    pub members: Vec<Member>,
    pub gap: bool,
    pub more: bool,
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub members_more: bool,
    pub members_count: Option<usize>,
}

impl JoinData {
    /// The client's join reply for `room`.
    pub fn into_reply(self, room: String) -> ReplyData {
        ReplyData::Join {
            room,
            seq: self.seq,
            history: self.history,
            members: self.members,
            gap: self.gap,
            more: self.more,
            before: self.before,
            after: self.after,
            members_more: self.members_more,
            members_count: self.members_count,
        }
    }
}

/// Messages a `history` request returns when it gives no `limit`.
const DEFAULT_HISTORY_LIMIT: u32 = 50;

/// How large the replies a room builds may be.
#[derive(Clone, Default)]
pub struct ReplyBounds {
    /// `limits.max_reply_bytes`: the most bytes a `history` or `join` reply takes.
    pub max_reply_bytes: usize,
    /// `limits.presence_page`: the most members one reply lists.
    pub presence_page: usize,
    /// Where a cut reply is counted (`hubbub_replies_cut_total`).
    pub metrics: Option<Arc<Metrics>>,
}

impl ReplyBounds {
    pub fn new(limits: &LimitSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            max_reply_bytes: limits.max_reply_bytes,
            presence_page: limits.presence_page,
            metrics: Some(metrics),
        }
    }

    /// Bytes a reply's lists may take: the bound less the frame around them.
    fn list_budget(&self) -> usize {
        self.max_reply_bytes.saturating_sub(REPLY_ENVELOPE_BYTES)
    }

    fn page(&self) -> usize {
        self.presence_page.max(1)
    }

    fn cut(&self, reply: &'static str) {
        if let Some(metrics) = &self.metrics {
            metrics.reply_cut(reply);
        }
    }
}

/// Messages taken for a reply, in order, and whether held ones in range were left out.
struct Taken {
    messages: Vec<ChatMessage>,
    /// Held messages in the range were left out (by count or by bytes).
    more: bool,
    /// The byte budget, not the count, stopped it.
    by_bytes: bool,
}

/// Takes messages from `candidates` in the order given until `count` are taken or the
/// next would pass `budget` bytes (as a JSON list). The first is always taken, however
/// large, so paging always moves on (config validation keeps one message well inside
/// the budget).
fn take_within<'a>(
    candidates: impl Iterator<Item = &'a ChatMessage>,
    count: usize,
    budget: usize,
) -> Taken {
    let mut messages = Vec::new();
    let mut used = 0usize;
    let mut candidates = candidates.peekable();
    while let Some(message) = candidates.peek() {
        if messages.len() >= count {
            return Taken {
                messages,
                more: true,
                by_bytes: false,
            };
        }
        // Each element after the first adds a comma.
        let size = json_len(*message) + usize::from(!messages.is_empty());
        if !messages.is_empty() && used.saturating_add(size) > budget {
            return Taken {
                messages,
                more: true,
                by_bytes: true,
            };
        }
        used = used.saturating_add(size);
        messages.push((*message).clone());
        candidates.next();
    }
    Taken {
        messages,
        more: false,
        by_bytes: false,
    }
}

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
    /// Whether any connection ever joined here: a room that never held a message
    /// retires at once when it empties, but not before its first join has come.
    pub had_connection: bool,
    /// How large its replies may be (set from the node's limits when the room starts).
    pub bounds: ReplyBounds,
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
            had_connection: false,
            bounds: ReplyBounds::default(),
        }
    }

    /// The same state with its replies bounded by `bounds`.
    pub fn bounded_by(mut self, bounds: ReplyBounds) -> Self {
        self.bounds = bounds;
        self
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
        self.had_connection = true;
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

    /// Forgets the held messages below `first_held` (the log forgot them).
    pub fn forget_before(&mut self, first_held: u64) {
        while self.history.front().is_some_and(|m| m.seq < first_held) {
            self.history.pop_front();
        }
    }

    /// Replaces the history with a merged copy (a new owner's).
    pub fn replace_history(&mut self, seq: u64, history: Vec<ChatMessage>) {
        let skip = history.len().saturating_sub(self.history_cap);
        self.history = history.into_iter().skip(skip).collect();
        self.seq = self.seq.max(seq);
    }

    /// Sends a message frame to this node's connections (but `except`).
    pub fn push_message(&mut self, message: &ChatMessage, except: Option<&ActorId>) {
        let frame = encode(&ServerFrame::Message(message.clone()));
        self.broadcast(&frame, except);
        self.pushed = self.pushed.max(message.seq);
    }

    /// Sends a presence_diff to this node's connections (but `except`), if non-empty.
    pub fn push_presence_diff(&self, diff: MemberChanges, except: Option<&ActorId>) {
        if diff.is_empty() {
            return;
        }
        let MemberChanges {
            joins,
            leaves,
            updates,
        } = diff;
        let diff = ServerFrame::PresenceDiff {
            room: self.name.to_string(),
            joins,
            leaves,
            updates,
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

    /// What a join reply carries, bounded in count and bytes (docs/protocol.md, `join`).
    ///
    /// - No `since`: the NEWEST held messages that fit (at most [`MAX_HISTORY_LIMIT`]),
    ///   oldest first; `more` and `before` when older held ones were left out.
    /// - A resume (`since`): the OLDEST missed messages first, as many as fit; `more`
    ///   and `after` when later ones were left out, so the client fetches exactly the
    ///   rest with `history` (`after`, and `before` = the reply's `seq` + 1).
    ///
    /// The member list is the full list up to `limits.presence_page` members, else the
    /// first page with `members_more` and `members_count`. Its bytes come out of the
    /// same budget before the history's.
    pub fn join_data(&self, since: Option<u64>) -> JoinData {
        let page = self.bounds.page();
        let total = self.members.len();
        let members: Vec<Member> = self.members.values().take(page).cloned().collect();
        let members_more = total > members.len();
        if members_more {
            self.bounds.cut("join_members");
        }
        let budget = self.bounds.list_budget().saturating_sub(json_len(&members));
        let (taken, gap, forward) = match self.resume_point(since) {
            None => {
                let mut taken = take_within(
                    self.history.iter().rev(),
                    MAX_HISTORY_LIMIT as usize,
                    budget,
                );
                taken.messages.reverse();
                (taken, false, false)
            }
            Some((after, gap)) => {
                let missed = self.history.iter().filter(|m| m.seq > after);
                (take_within(missed, usize::MAX, budget), gap, true)
            }
        };
        if taken.by_bytes {
            self.bounds.cut("join");
        }
        let (before, after) = cursors(&taken, forward);
        JoinData {
            seq: self.seq,
            history: taken.messages,
            members,
            gap,
            more: taken.more,
            before,
            after,
            members_more,
            members_count: members_more.then_some(total),
        }
    }

    /// Where a resume starts (every held message after the returned `seq`) and whether
    /// messages it asked for are gone; None for a join without `since`.
    fn resume_point(&self, since: Option<u64>) -> Option<(u64, bool)> {
        let since = since?;
        if since > self.seq {
            // The client saw sequence numbers this room never handed out: the room
            // was retired and started afresh. Everything it holds is new to the client.
            return Some((0, true));
        }
        let oldest_held = self.history.front().map_or(self.seq + 1, |m| m.seq);
        let gap = since < self.seq && oldest_held > since + 1;
        Some((since, gap))
    }

    /// A `history` reply. Without `after`: the newest messages before `before`, oldest
    /// first (paging backwards). With `after`: the oldest after `after` (and before
    /// `before`, if given), oldest first (paging forwards). At most `limit`, and at
    /// most `limits.max_reply_bytes` as a frame; `more` and a cursor when cut.
    pub fn history_page(
        &self,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> ReplyData {
        let limit = limit
            .unwrap_or(DEFAULT_HISTORY_LIMIT)
            .clamp(1, MAX_HISTORY_LIMIT) as usize;
        let before = before.unwrap_or(u64::MAX);
        let budget = self.bounds.list_budget();
        let in_range = self.history.iter().filter(|m| m.seq < before);
        let taken = match after {
            Some(after) => take_within(in_range.filter(|m| m.seq > after), limit, budget),
            None => {
                let older: Vec<&ChatMessage> = in_range.collect();
                let mut taken = take_within(older.into_iter().rev(), limit, budget);
                taken.messages.reverse();
                taken
            }
        };
        if taken.by_bytes {
            self.bounds.cut("history");
        }
        let (before, after) = cursors(&taken, after.is_some());
        ReplyData::History {
            room: self.name.to_string(),
            messages: taken.messages,
            more: taken.more,
            before,
            after,
        }
    }

    /// A `presence` reply: members in user id order after `after`, at most `limit`
    /// and at most `limits.presence_page`. A room within the page size asked without
    /// `after` or `limit` gets its whole list and nothing else, as before paging.
    pub fn presence_page(
        &self,
        after: Option<&str>,
        limit: Option<u32>,
        count_only: bool,
    ) -> ReplyData {
        let room = self.name.to_string();
        let total = self.members.len();
        if count_only {
            return ReplyData::PresenceCount {
                room,
                count: total,
                connections: self
                    .members
                    .values()
                    .map(|m| u64::from(m.connections))
                    .sum(),
            };
        }
        let page = self.bounds.page();
        let paged = total > page || after.is_some() || limit.is_some();
        let limit = limit.map_or(page, |l| (l as usize).clamp(1, page));
        let start = match after {
            Some(id) => Bound::Excluded(id),
            None => Bound::Unbounded,
        };
        let mut rest = self
            .members
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, m)| m);
        let members: Vec<Member> = rest.by_ref().take(limit).cloned().collect();
        let more = rest.next().is_some();
        if more {
            self.bounds.cut("presence");
        }
        ReplyData::Presence {
            room,
            after: more.then(|| members.last().map(|m| m.id.clone())).flatten(),
            members,
            more,
            count: paged.then_some(total),
        }
    }
}

/// The cursor to continue a cut page: `before` (the first seq) paging backwards,
/// `after` (the last seq) paging forwards; none when nothing was left out.
fn cursors(taken: &Taken, forward: bool) -> (Option<u64>, Option<u64>) {
    if !taken.more {
        return (None, None);
    }
    if forward {
        (None, taken.messages.last().map(|m| m.seq))
    } else {
        (taken.messages.first().map(|m| m.seq), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::behaviour::PlainChat;

    fn room(bytes: usize, page: usize) -> RoomState {
        RoomState::new(RoomName::parse("lobby").unwrap(), Arc::new(PlainChat), 500).bounded_by(
            ReplyBounds {
                max_reply_bytes: bytes,
                presence_page: page,
                metrics: None,
            },
        )
    }

    fn fill(state: &mut RoomState, count: u64, content_bytes: usize) {
        for seq in 1..=count {
            state.remember(ChatMessage {
                room: "lobby".into(),
                id: format!("id-{seq}"),
                seq,
                from: UserInfo {
                    id: "alice".into(),
                    name: "Alice".into(),
                },
                content: "x".repeat(content_bytes).into(),
                ts: 1,
                data: None,
            });
        }
    }

    fn seqs(messages: &[ChatMessage]) -> Vec<u64> {
        messages.iter().map(|m| m.seq).collect()
    }

    fn page(data: ReplyData) -> (Vec<u64>, bool, Option<u64>, Option<u64>) {
        match data {
            ReplyData::History {
                messages,
                more,
                before,
                after,
                ..
            } => (seqs(&messages), more, before, after),
            other => panic!("not a history page: {other:?}"),
        }
    }

    #[test]
    fn a_history_page_is_cut_at_the_byte_bound_and_pages_back_to_everything() {
        let mut state = room(REPLY_ENVELOPE_BYTES + 5_000, 10);
        fill(&mut state, 30, 900);
        let mut before = None;
        let mut all = Vec::new();
        loop {
            let data = state.history_page(before, None, Some(1000));
            assert!(json_len(&data) <= 5_000 + 200, "{}", json_len(&data));
            let (mut got, more, next, after) = page(data);
            assert!(got.len() < 30 && !got.is_empty());
            assert_eq!(after, None);
            got.append(&mut all);
            all = got;
            if !more {
                assert_eq!(next, None);
                break;
            }
            assert_eq!(next, all.first().copied());
            before = next;
        }
        assert_eq!(all, (1..=30).collect::<Vec<_>>());
    }

    #[test]
    fn a_forward_page_within_a_window_gives_each_message_once_in_order() {
        let mut state = room(REPLY_ENVELOPE_BYTES + 5_000, 10);
        fill(&mut state, 30, 900);
        let mut after = Some(4);
        let mut all = Vec::new();
        while let Some(from) = after {
            let (mut got, more, before, next) =
                page(state.history_page(Some(26), Some(from), None));
            assert_eq!(before, None);
            all.append(&mut got);
            after = if more { next } else { None };
        }
        assert_eq!(all, (5..=25).collect::<Vec<_>>());
    }

    #[test]
    fn the_count_cuts_too_and_says_so() {
        let mut state = room(1 << 20, 10);
        fill(&mut state, 30, 10);
        assert_eq!(
            page(state.history_page(None, None, Some(5))),
            ((26..=30).collect(), true, Some(26), None)
        );
        assert_eq!(
            page(state.history_page(None, None, None)),
            ((1..=30).collect(), false, None, None)
        );
    }

    #[test]
    fn one_message_larger_than_the_bound_is_still_sent_alone() {
        let mut state = room(REPLY_ENVELOPE_BYTES + 100, 10);
        fill(&mut state, 3, 1_000);
        assert_eq!(
            page(state.history_page(None, None, None)),
            (vec![3], true, Some(3), None)
        );
    }

    #[test]
    fn a_resume_gets_the_oldest_missed_first_and_a_fresh_join_the_newest() {
        let mut state = room(REPLY_ENVELOPE_BYTES + 5_000, 10);
        fill(&mut state, 30, 900);
        let resume = state.join_data(Some(10));
        assert_eq!(resume.history.first().map(|m| m.seq), Some(11));
        assert!(resume.more && resume.before.is_none());
        assert_eq!(resume.after, resume.history.last().map(|m| m.seq));
        assert!(json_len(&resume.into_reply("r".into())) <= 5_000 + 300);
        let fresh = state.join_data(None);
        assert_eq!(fresh.history.last().map(|m| m.seq), Some(30));
        assert!(fresh.more && fresh.after.is_none());
        assert_eq!(fresh.before, fresh.history.first().map(|m| m.seq));
        let caught_up = state.join_data(Some(30));
        assert!(caught_up.history.is_empty() && !caught_up.more);
        let small = state.join_data(Some(28));
        assert_eq!((seqs(&small.history), small.more), (vec![29, 30], false));
    }

    fn with_members(state: &mut RoomState, count: u32) {
        let members = (0..count)
            .map(|i| Member {
                id: format!("user-{i:03}"),
                name: format!("User {i}"),
                connections: 1 + i % 2,
            })
            .collect();
        state.replace_members(members);
    }

    #[test]
    fn presence_pages_a_big_room_by_id_and_counts() {
        let mut state = room(1 << 20, 10);
        with_members(&mut state, 25);
        let mut after: Option<String> = None;
        let mut ids = Vec::new();
        loop {
            let ReplyData::Presence {
                members,
                more,
                after: next,
                count,
                ..
            } = state.presence_page(after.as_deref(), None, false)
            else {
                panic!("not a presence page");
            };
            assert!(members.len() <= 10);
            assert_eq!(count, Some(25));
            ids.extend(members.into_iter().map(|m| m.id));
            if !more {
                assert_eq!(next, None);
                break;
            }
            after = next;
        }
        let want: Vec<String> = (0..25).map(|i| format!("user-{i:03}")).collect();
        assert_eq!(ids, want);
        assert_eq!(
            state.presence_page(None, None, true),
            ReplyData::PresenceCount {
                room: "lobby".into(),
                count: 25,
                connections: 37,
            }
        );
        let join = state.join_data(None);
        assert_eq!(join.members.len(), 10);
        assert_eq!((join.members_more, join.members_count), (true, Some(25)));
    }

    #[test]
    fn a_small_room_keeps_the_old_presence_and_join_shapes() {
        let mut state = room(1 << 20, 10);
        with_members(&mut state, 10);
        let ReplyData::Presence {
            members,
            more,
            after,
            count,
            ..
        } = state.presence_page(None, None, false)
        else {
            panic!("not a presence page");
        };
        assert_eq!((members.len(), more, after, count), (10, false, None, None));
        let join = state.join_data(None);
        assert_eq!(join.members.len(), 10);
        assert_eq!((join.members_more, join.members_count), (false, None));
    }
}
