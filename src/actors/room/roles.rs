//! The room's role on this node and the protocol between owner and relays.
//!
//! Ownership follows the view: `view.owner_of(room)` (rendezvous hashing). Whenever
//! the view changes, the node that the new view makes owner RECOVERS before it orders
//! anything: it asks every other node in the view for what it holds (epoch, highest
//! sequence number, history, its own members), and only nodes that have the same view
//! answer. The new owner then takes `epoch = highest epoch + 1`, continues from the
//! highest sequence number, merges the histories, and announces all of it to the
//! nodes holding the room. Relays accept ordered messages only from the owner of their
//! view and never from an older epoch; an owner orders only while its lease is valid
//! (see cluster/membership.rs). Together these keep two nodes from ever handing out the
//! same sequence number for a room. docs/cluster.md states the guarantees.

use super::state::RoomState;
use super::{refuse, unavailable, JoinRequest, Room, RoomMessage};
use crate::cluster::wire::{Body, PublishAck, Replica};
use crate::cluster::View;
use crate::protocol::{now_ms, ChatMessage, ErrorBody, Member, ReplyData, UserInfo};
use ractor::{ActorId, ActorRef, RpcReplyPort};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// What the room is on this node.
pub enum Role {
    Owner,
    Recovering {
        view: u64,
        /// Nodes that have not answered yet (or answered "not ready").
        waiting: BTreeSet<String>,
        replicas: Vec<(String, Replica)>,
    },
    Relay {
        owner: String,
    },
    Unavailable,
}

/// Who waits for a publish's acknowledgement.
pub enum AckTo {
    /// A session on this node.
    Local(RpcReplyPort<Result<ReplyData, ErrorBody>>),
    /// A relay that forwarded the publish.
    Remote { node: String, req: u64 },
}

/// A message the owner ordered that no relay has confirmed yet: it is not in the
/// history, not shown to this node's connections, nor acknowledged, until one does.
pub struct Unreplicated {
    pub message: ChatMessage,
    pub ack_to: Option<AckTo>,
}

/// A join forwarded to the owner, waiting for its answer.
pub struct PendingJoin {
    pub conn: ActorId,
    /// The connection joined with this request (not a re-join).
    pub new: bool,
    pub reply: RpcReplyPort<Result<ReplyData, ErrorBody>>,
}

/// What an owner knows of the other nodes: their members and who holds the room.
/// It holds entries for current members only: a user who has left on every node is
/// pruned ([`OwnerBook::prune`]), so a room that lives for months does not grow with
/// everyone who ever joined it.
#[derive(Default)]
pub struct OwnerBook {
    /// Node → user → that node's connection count (no zero counts, no empty nodes).
    remote: BTreeMap<String, BTreeMap<String, u32>>,
    /// The latest display name of each member.
    names: BTreeMap<String, String>,
    /// Nodes holding the room: each ordered message goes once to each.
    relays: BTreeSet<String>,
}

impl OwnerBook {
    pub fn has_remote_members(&self) -> bool {
        self.remote.values().any(|users| !users.is_empty())
    }

    /// Per-user entries held (names and other nodes' counts).
    pub fn entries(&self) -> usize {
        self.names.len() + self.remote.values().map(BTreeMap::len).sum::<usize>()
    }

    fn set(&mut self, node: &str, user: &UserInfo, connections: u32) {
        if connections == 0 {
            if let Some(users) = self.remote.get_mut(node) {
                users.remove(&user.id);
                if users.is_empty() {
                    self.remote.remove(node);
                }
            }
        } else {
            self.remote
                .entry(node.to_owned())
                .or_default()
                .insert(user.id.clone(), connections);
            self.names.insert(user.id.clone(), user.name.clone());
        }
    }

    /// Forgets the names of users who are no longer members anywhere.
    fn prune(&mut self, members: &BTreeMap<String, Member>) {
        self.names.retain(|id, _| members.contains_key(id));
    }

    /// The room-wide member list: this node's connections plus every other node's.
    fn aggregate(&self, state: &RoomState) -> Vec<Member> {
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        for (id, local) in &state.local {
            *counts.entry(id).or_default() += local.connections;
        }
        for users in self.remote.values() {
            for (id, n) in users {
                *counts.entry(id).or_default() += n;
            }
        }
        counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(id, connections)| Member {
                id: id.to_owned(),
                name: self
                    .names
                    .get(id)
                    .or_else(|| state.local.get(id).map(|l| &l.name))
                    .cloned()
                    .unwrap_or_else(|| id.to_owned()),
                connections,
            })
            .collect()
    }
}

/// Joins and leaves a large room gathers for one `presence_diff` (see
/// `rooms.presence_batch_members` and `rooms.presence_batch_ms`). Holds the net
/// change per user since the batch began: one entry per user who joined or left
/// meanwhile, so it is bounded by the members plus those who left.
pub struct PresenceBatch {
    /// Rooms with more members than this batch.
    over: usize,
    /// How long a batch gathers; zero turns batching off.
    every: Duration,
    /// User → whether it was a member when the batch began, and as what it is now.
    changes: BTreeMap<String, Change>,
    /// Whether a `PresenceTick` is on its way.
    armed: bool,
}

struct Change {
    was_member: bool,
    /// Whether it is a member now; `member` is how it joined or left last.
    present: bool,
    member: Member,
}

impl PresenceBatch {
    pub fn new(over: usize, every: Duration) -> Self {
        Self {
            over,
            every,
            changes: BTreeMap::new(),
            armed: false,
        }
    }

    /// Users with a change waiting.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether changes to a room of `members` members go into a batch.
    fn applies(&self, members: usize) -> bool {
        !self.every.is_zero() && (self.armed || members > self.over)
    }

    fn fold(&mut self, joins: Vec<Member>, leaves: Vec<Member>) {
        for (present, member) in joins
            .into_iter()
            .map(|m| (true, m))
            .chain(leaves.into_iter().map(|m| (false, m)))
        {
            match self.changes.get_mut(&member.id) {
                Some(change) => {
                    change.present = present;
                    change.member = member;
                }
                None => {
                    self.changes.insert(
                        member.id.clone(),
                        Change {
                            was_member: !present,
                            present,
                            member,
                        },
                    );
                }
            }
        }
    }

    /// The net joins and leaves since the batch began; the batch starts afresh.
    fn take(&mut self) -> (Vec<Member>, Vec<Member>) {
        self.armed = false;
        let (mut joins, mut leaves) = (Vec::new(), Vec::new());
        for change in std::mem::take(&mut self.changes).into_values() {
            match (change.was_member, change.present) {
                (false, true) => joins.push(change.member),
                (true, false) => leaves.push(change.member),
                // Joined and left (or left and came back) within one batch.
                _ => {}
            }
        }
        (joins, leaves)
    }
}

impl Room {
    /// Whether a join or leave goes into the presence batch rather than out at once;
    /// folds it in and arms the tick if so.
    fn batch_presence(
        &mut self,
        myself: &ActorRef<RoomMessage>,
        joins: &[Member],
        leaves: &[Member],
    ) -> bool {
        if !self.presence_batch.applies(self.state.members.len()) {
            return false;
        }
        self.presence_batch.fold(joins.to_vec(), leaves.to_vec());
        if !self.presence_batch.armed {
            self.presence_batch.armed = true;
            myself.send_after(self.presence_batch.every, || RoomMessage::PresenceTick);
        }
        true
    }

    /// The batch's time is up: one `presence_diff` to this node's connections and, from
    /// an owner, the member list once to each relay.
    pub(super) fn flush_presence(&mut self) {
        let (joins, leaves) = self.presence_batch.take();
        if !joins.is_empty() || !leaves.is_empty() {
            self.metrics.presence_batch();
        }
        self.state
            .push_presence_diff(joins.clone(), leaves.clone(), None);
        if let Role::Owner = self.role {
            self.send_to_relays(Body::RoomPresence {
                room: self.room(),
                epoch: self.epoch,
                members: self.state.members.values().cloned().collect(),
                joins,
                leaves,
            });
        }
    }

    fn room(&self) -> String {
        self.state.name.to_string()
    }

    fn me(&self) -> Option<&str> {
        self.cluster.as_deref().map(|c| c.me.as_str())
    }

    fn send(&self, to: &str, body: Body) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.send(to, body))
    }

    fn send_to_relays(&self, body: Body) {
        if let Some(cluster) = &self.cluster {
            if !self.book.relays.is_empty() {
                cluster.send_to_all(&self.book.relays, body);
            }
        }
    }

    // ---------------------------------------------------------------- local requests

    pub(super) fn join(
        &mut self,
        myself: &ActorRef<RoomMessage>,
        request: JoinRequest,
        reply: RpcReplyPort<Result<ReplyData, ErrorBody>>,
    ) {
        let id = request.session.actor.get_id();
        let existing = self.state.connections.contains_key(&id);
        match &self.role {
            Role::Owner => {
                if !existing {
                    let user = &request.session.user;
                    if let Err(refused) =
                        self.state.behaviour.authorize_join(&self.state.name, user)
                    {
                        let _ = reply.send(Err(refused.into()));
                        // A room started for this join alone must not stay behind.
                        self.arm_idle_timer(myself);
                        return;
                    }
                    myself.get_cell().monitor(request.session.actor.get_cell());
                    self.book.names.insert(user.id.clone(), user.name.clone());
                    self.state.add_connection(
                        id,
                        user,
                        request.session.outbox.clone(),
                        request.session.actor.get_cell(),
                        true,
                    );
                    self.publish_members(myself, Some(&id));
                }
                let data = self.state.join_data(request.since);
                let _ = reply.send(Ok(data.into_reply(self.room())));
            }
            Role::Relay { owner } => {
                let owner = owner.clone();
                let user = request.session.user.clone();
                let connections = if existing {
                    self.state.local.get(&user.id).map_or(1, |l| l.connections)
                } else {
                    myself.get_cell().monitor(request.session.actor.get_cell());
                    self.state.add_connection(
                        id,
                        &user,
                        request.session.outbox.clone(),
                        request.session.actor.get_cell(),
                        false,
                    )
                };
                let req = self.cluster.as_ref().map_or(0, |c| c.next_req());
                let sent = self.send(
                    &owner,
                    Body::RoomJoin {
                        room: self.room(),
                        req,
                        user,
                        connections,
                        since: request.since,
                    },
                );
                if sent {
                    self.pending_joins.insert(
                        req,
                        PendingJoin {
                            conn: id,
                            new: !existing,
                            reply,
                        },
                    );
                } else {
                    if !existing {
                        self.drop_connection(myself, &id);
                    }
                    let _ = reply.send(Err(unavailable("the room's owner is unreachable; retry")));
                }
            }
            Role::Recovering { .. } => self.defer(RoomMessage::Join { request, reply }),
            Role::Unavailable => {
                let _ = reply.send(Err(no_quorum()));
                self.arm_idle_timer(myself);
            }
        }
    }

    /// A connection leaves (asked to, or its session ended).
    pub(super) fn leave(&mut self, myself: &ActorRef<RoomMessage>, session: &ActorId) {
        let Some((conn, user, left)) = self.state.remove_connection(session) else {
            return;
        };
        myself.get_cell().unmonitor(conn.cell);
        match &self.role {
            Role::Owner => self.publish_members(myself, None),
            Role::Relay { owner } => {
                let owner = owner.clone();
                self.send(
                    &owner,
                    Body::RoomMember {
                        room: self.room(),
                        user,
                        connections: left,
                    },
                );
            }
            // A recovering owner counts its own connections when it finishes.
            Role::Recovering { .. } | Role::Unavailable => {}
        }
        self.arm_idle_timer(myself);
    }

    /// Forgets a connection without telling anyone (its join never completed).
    fn drop_connection(&mut self, myself: &ActorRef<RoomMessage>, id: &ActorId) {
        if let Some((conn, ..)) = self.state.remove_connection(id) {
            myself.get_cell().unmonitor(conn.cell);
        }
        self.arm_idle_timer(myself);
    }

    pub(super) fn publish(
        &mut self,
        _myself: &ActorRef<RoomMessage>,
        session: &ActorId,
        from: UserInfo,
        content: String,
        reply: RpcReplyPort<Result<ReplyData, ErrorBody>>,
    ) {
        if !self
            .state
            .connections
            .get(session)
            .is_some_and(|c| c.active)
        {
            let _ = reply.send(Err(self.not_joined()));
            return;
        }
        match &self.role {
            Role::Owner => self.order(from, content, AckTo::Local(reply)),
            Role::Relay { owner } => {
                let owner = owner.clone();
                let req = self.cluster.as_ref().map_or(0, |c| c.next_req());
                let body = Body::RoomPublish {
                    room: self.room(),
                    req,
                    from,
                    content,
                };
                if self.send(&owner, body) {
                    self.pending_publishes.insert(req, reply);
                } else {
                    let _ = reply.send(Err(unavailable("the room's owner is unreachable; retry")));
                }
            }
            Role::Recovering { .. } => self.defer(RoomMessage::Publish {
                session: *session,
                from,
                content,
                idempotency_key: None,
                reply,
            }),
            Role::Unavailable => {
                let _ = reply.send(Err(no_quorum()));
            }
        }
    }

    /// Orders a message (owner only): the one place a sequence number is assigned.
    /// The message is shown here and acknowledged at once when no other node holds
    /// the room, else as soon as the designated relay confirms it holds it.
    fn order(&mut self, from: UserInfo, content: String, ack_to: AckTo) {
        if let Some(cluster) = &self.cluster {
            if !cluster.lease_valid() {
                complete(
                    self,
                    ack_to,
                    Err(unavailable(
                        "this node cannot confirm it still owns the room; retry",
                    )),
                );
                return;
            }
        }
        let content = match self
            .state
            .behaviour
            .on_publish(&self.state.name, &from, content)
        {
            Ok(content) => content,
            Err(refused) => {
                complete(self, ack_to, Err(refused.into()));
                return;
            }
        };
        let message = ChatMessage {
            room: self.room(),
            id: uuid::Uuid::now_v7().to_string(),
            // After the last message ordered, confirmed or not.
            seq: self
                .unreplicated
                .back()
                .map_or(self.state.seq, |u| u.message.seq)
                + 1,
            from,
            content,
            ts: now_ms(),
        };
        match self.designated_relay() {
            None => {
                self.state.remember(message.clone());
                self.state.push_message(&message);
                complete(self, ack_to, Ok(ack_of(&message)));
            }
            Some(designated) => {
                self.send_message_to_relays(&message, &designated);
                self.unreplicated.push_back(Unreplicated {
                    message,
                    ack_to: Some(ack_to),
                });
            }
        }
    }

    /// The relay whose confirmation makes a message visible: the one the room would
    /// move to first (highest rendezvous score among the nodes holding it).
    fn designated_relay(&self) -> Option<String> {
        let room = self.state.name.as_str();
        self.book
            .relays
            .iter()
            .max_by_key(|node| {
                (
                    crate::cluster::view::rendezvous_score(node, room),
                    node.as_str(),
                )
            })
            .cloned()
    }

    /// Sends an ordered message once to each relay; only `designated` is asked to ack.
    fn send_message_to_relays(&self, message: &ChatMessage, designated: &str) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let body = |ack| Body::RoomMessage {
            room: self.room(),
            epoch: self.epoch,
            message: message.clone(),
            ack,
        };
        let plain = cluster.encode(body(false));
        for node in &self.book.relays {
            if node == designated {
                cluster.send(node, body(true));
            } else {
                cluster.send_encoded(node, plain.clone());
            }
        }
    }

    /// The designated relay holds everything up to `seq`: show and acknowledge it.
    fn replicated(&mut self, from: &str, seq: u64) {
        if self.designated_relay().as_deref() != Some(from) {
            return;
        }
        self.release_through(seq);
    }

    /// Shows and acknowledges every waiting message up to `seq`, in order.
    fn release_through(&mut self, seq: u64) {
        while self
            .unreplicated
            .front()
            .is_some_and(|u| u.message.seq <= seq)
        {
            let Some(waiting) = self.unreplicated.pop_front() else {
                break;
            };
            // Only now does it enter the history: `history`, `join` and `since` never
            // show a message no other node holds.
            self.state.remember(waiting.message.clone());
            self.state.push_message(&waiting.message);
            if let Some(ack_to) = waiting.ack_to {
                complete(self, ack_to, Ok(ack_of(&waiting.message)));
            }
        }
    }

    /// The set of relays changed: with none left, nothing waits; with a new
    /// designated relay, ask it for what is still unconfirmed.
    fn relays_changed(&mut self) {
        match self.designated_relay() {
            None => self.release_through(u64::MAX),
            Some(designated) => {
                let waiting: Vec<ChatMessage> = self
                    .unreplicated
                    .iter()
                    .map(|u| u.message.clone())
                    .collect();
                for message in waiting {
                    self.send(
                        &designated,
                        Body::RoomMessage {
                            room: self.room(),
                            epoch: self.epoch,
                            message,
                            ack: true,
                        },
                    );
                }
            }
        }
    }

    pub(super) fn typing(&mut self, session: &ActorId) {
        let Some(conn) = self.state.connections.get(session).filter(|c| c.active) else {
            return;
        };
        let Some(local) = self.state.local.get(&conn.user_id) else {
            return;
        };
        let user = UserInfo {
            id: conn.user_id.clone(),
            name: local.name.clone(),
        };
        match &self.role {
            Role::Owner => self.relay_typing(user),
            Role::Relay { owner } => {
                let owner = owner.clone();
                self.send(
                    &owner,
                    Body::RoomTyping {
                        room: self.room(),
                        user,
                    },
                );
            }
            _ => {}
        }
    }

    fn relay_typing(&self, user: UserInfo) {
        self.state.push_typing(&user);
        self.send_to_relays(Body::RoomTyped {
            room: self.room(),
            user,
        });
    }

    pub(super) fn rename(&mut self, user: UserInfo) {
        match &self.role {
            Role::Owner => self.apply_rename(user),
            Role::Relay { owner } => {
                let owner = owner.clone();
                if let Some(local) = self.state.local.get_mut(&user.id) {
                    local.name = user.name.clone();
                }
                self.send(
                    &owner,
                    Body::RoomRename {
                        room: self.room(),
                        user,
                    },
                );
            }
            _ => {
                if let Some(local) = self.state.local.get_mut(&user.id) {
                    local.name = user.name.clone();
                }
            }
        }
    }

    /// Owner: a member's name changed; announce it once, everywhere.
    fn apply_rename(&mut self, user: UserInfo) {
        if self.book.names.contains_key(&user.id) {
            self.book.names.insert(user.id.clone(), user.name.clone());
        }
        if let Some(old_name) = self.state.rename(&user) {
            self.state.push_renamed(&user, old_name.clone());
            self.send_to_relays(Body::RoomRenamed {
                room: self.room(),
                epoch: self.epoch,
                user,
                old_name,
            });
        }
    }

    /// Owner: recomputes the member list; tells this node's connections (but
    /// `except`) and every relay what changed.
    fn publish_members(&mut self, myself: &ActorRef<RoomMessage>, except: Option<&ActorId>) {
        let members = self.book.aggregate(&self.state);
        let (joins, leaves) = self.state.replace_members(members.clone());
        self.book.prune(&self.state.members);
        for member in &joins {
            self.state.behaviour.on_join(&self.state.name, member);
        }
        for member in &leaves {
            self.state.behaviour.on_leave(&self.state.name, member);
        }
        if self.batch_presence(myself, &joins, &leaves) {
            // The relays get the member list with the batch.
            return;
        }
        self.state
            .push_presence_diff(joins.clone(), leaves.clone(), except);
        self.send_to_relays(Body::RoomPresence {
            room: self.room(),
            epoch: self.epoch,
            members,
            joins,
            leaves,
        });
    }

    // ---------------------------------------------------------------- other nodes

    pub(super) fn remote(&mut self, myself: &ActorRef<RoomMessage>, from: String, body: Body) {
        match body {
            // Relay → owner.
            Body::RoomJoin { .. }
            | Body::RoomMember { .. }
            | Body::RoomPublish { .. }
            | Body::RoomTyping { .. }
            | Body::RoomRename { .. }
            | Body::RoomAck { .. }
            | Body::RoomUnsubscribe { .. } => match self.role {
                Role::Owner => self.as_owner(myself, from, body),
                Role::Recovering { .. } => self.defer(RoomMessage::Remote { from, body }),
                _ => self.not_owner(from, body),
            },
            // Owner → relay.
            Body::RoomJoined { .. }
            | Body::RoomPublished { .. }
            | Body::RoomMessage { .. }
            | Body::RoomPresence { .. }
            | Body::RoomTyped { .. }
            | Body::RoomRenamed { .. }
            | Body::OwnerAnnounce { .. } => {
                if matches!(&self.role, Role::Relay { owner } if *owner == from) {
                    self.as_relay(myself, body);
                } else {
                    tracing::debug!(room = %self.state.name, %from, kind = body.kind(), "dropped traffic from a node that is not this room's owner");
                }
            }
            Body::RecoverRequest { view, .. } => self.answer_recovery(&from, view),
            Body::RoomHandoff {
                epoch,
                seq,
                history,
                ..
            } => self.absorb(epoch, seq, history),
            Body::RecoverState {
                view,
                ready,
                replica,
                ..
            } => self.recovery_answer(myself, from, view, ready, replica),
            other => {
                tracing::debug!(room = %self.state.name, kind = other.kind(), "unexpected room traffic dropped");
            }
        }
    }

    /// Answers requests sent to this node as if it were the owner when it is not
    /// (the sender's view differs): joins and publishes are refused, so the client
    /// retries once the views agree; the rest is dropped.
    fn not_owner(&self, from: String, body: Body) {
        let room = self.room();
        let error = unavailable("the room is moving to another node; retry");
        match body {
            Body::RoomJoin { req, .. } => {
                self.send(
                    &from,
                    Body::RoomJoined {
                        room,
                        req,
                        epoch: self.epoch,
                        seq: self.state.seq,
                        result: Err(error),
                        ring: None,
                    },
                );
            }
            Body::RoomPublish { req, .. } => {
                self.send(
                    &from,
                    Body::RoomPublished {
                        room,
                        req,
                        result: Err(error),
                    },
                );
            }
            _ => {}
        }
    }

    fn as_owner(&mut self, myself: &ActorRef<RoomMessage>, from: String, body: Body) {
        match body {
            Body::RoomJoin {
                req,
                user,
                connections,
                since,
                ..
            } => {
                let result = match self.state.behaviour.authorize_join(&self.state.name, &user) {
                    Err(refused) => Err(ErrorBody::from(refused)),
                    Ok(()) => {
                        self.book.set(&from, &user, connections);
                        self.book.names.insert(user.id.clone(), user.name.clone());
                        let new_relay = self.book.relays.insert(from.clone());
                        if new_relay {
                            self.relays_changed();
                        }
                        self.publish_members(myself, None);
                        Ok((self.state.join_data(since), new_relay))
                    }
                };
                let (result, ring) = match result {
                    Ok((data, new_relay)) => (
                        Ok(data),
                        new_relay.then(|| self.state.history.iter().cloned().collect()),
                    ),
                    Err(e) => (Err(e), None),
                };
                self.send(
                    &from,
                    Body::RoomJoined {
                        room: self.room(),
                        req,
                        epoch: self.epoch,
                        seq: self.state.seq,
                        result,
                        ring,
                    },
                );
            }
            Body::RoomMember {
                user, connections, ..
            } => {
                self.book.set(&from, &user, connections);
                self.publish_members(myself, None);
                self.arm_idle_timer(myself);
            }
            Body::RoomPublish {
                req,
                from: user,
                content,
                ..
            } => {
                // Acknowledged after the RoomMessage: the relay holds the message
                // before its publisher hears it was accepted.
                self.order(user, content, AckTo::Remote { node: from, req });
            }
            Body::RoomAck { seq, .. } => self.replicated(&from, seq),
            Body::RoomTyping { user, .. } => self.relay_typing(user),
            Body::RoomRename { user, .. } => {
                self.book.names.insert(user.id.clone(), user.name.clone());
                self.apply_rename(user);
            }
            Body::RoomUnsubscribe { .. } => {
                if self.book.relays.remove(&from) {
                    self.relays_changed();
                }
                if self.book.remote.remove(&from).is_some() {
                    self.publish_members(myself, None);
                }
                self.arm_idle_timer(myself);
            }
            _ => {}
        }
    }

    fn as_relay(&mut self, myself: &ActorRef<RoomMessage>, body: Body) {
        match body {
            Body::RoomJoined {
                req,
                epoch,
                seq,
                result,
                ring,
                ..
            } => {
                let Some(pending) = self.pending_joins.remove(&req) else {
                    return;
                };
                self.epoch = self.epoch.max(epoch);
                match result {
                    Ok(data) => {
                        if let Some(ring) = ring {
                            if seq > self.state.seq || self.state.history.is_empty() {
                                self.state.replace_history(seq, ring);
                            }
                        }
                        if !self.state.connections.values().any(|c| c.active) {
                            // Nobody here has seen anything yet: start from now.
                            self.state.pushed = self.state.pushed.max(self.state.seq);
                        }
                        // A first page is not the whole list: the RoomPresence sent
                        // before this answer brought that.
                        if !data.members_more {
                            let (joins, leaves) = self.state.replace_members(data.members.clone());
                            if !self.batch_presence(myself, &joins, &leaves) {
                                self.state
                                    .push_presence_diff(joins, leaves, Some(&pending.conn));
                            }
                        }
                        match self.state.connections.get_mut(&pending.conn) {
                            Some(conn) => conn.active = true,
                            // The session ended while its join was on its way.
                            None => return,
                        }
                        let _ = pending.reply.send(Ok(data.into_reply(self.room())));
                    }
                    Err(error) => {
                        if pending.new {
                            self.drop_connection(myself, &pending.conn);
                        }
                        let _ = pending.reply.send(Err(error));
                    }
                }
            }
            Body::RoomPublished { req, result, .. } => {
                if let Some(reply) = self.pending_publishes.remove(&req) {
                    let _ = reply.send(result.map(|ack| ReplyData::Publish {
                        id: ack.id,
                        seq: ack.seq,
                        ts: ack.ts,
                        duplicate: false,
                    }));
                }
            }
            Body::RoomMessage {
                epoch,
                message,
                ack,
                ..
            } => {
                if self.cluster.as_ref().is_some_and(|c| c.is_leaving()) {
                    // This node has handed the room over: showing (or confirming) a
                    // message now would show one the next owner may not hold.
                    return;
                }
                if epoch < self.epoch {
                    tracing::warn!(room = %self.state.name, epoch, current = self.epoch, "dropped a message from an older owner epoch");
                    return;
                }
                self.epoch = epoch;
                if message.seq > self.state.seq {
                    self.state.push_message(&message);
                    self.state.remember(message);
                }
                if ack {
                    if let Role::Relay { owner } = &self.role {
                        let owner = owner.clone();
                        self.send(
                            &owner,
                            Body::RoomAck {
                                room: self.room(),
                                seq: self.state.seq,
                            },
                        );
                    }
                }
            }
            Body::RoomPresence { epoch, members, .. } => {
                if epoch < self.epoch {
                    return;
                }
                let (joins, leaves) = self.state.replace_members(members);
                self.state.push_presence_diff(joins, leaves, None);
            }
            Body::RoomTyped { user, .. } => self.state.push_typing(&user),
            Body::RoomRenamed {
                epoch,
                user,
                old_name,
                ..
            } if epoch >= self.epoch => {
                let changed = self.state.rename(&user).is_some();
                if changed {
                    self.state.push_renamed(&user, old_name);
                }
            }
            Body::OwnerAnnounce {
                epoch,
                seq,
                history,
                members,
                ..
            } => {
                if epoch < self.epoch {
                    return;
                }
                self.epoch = epoch;
                self.state.replace_history(seq, history);
                self.state.push_unseen();
                let (joins, leaves) = self.state.replace_members(members);
                self.state.push_presence_diff(joins, leaves, None);
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------- views and recovery

    /// A new view: work out this node's role for the room.
    pub(super) fn on_view(&mut self, myself: &ActorRef<RoomMessage>, view: Arc<View>) {
        if self.view.as_ref().is_some_and(|v| v.id == view.id) {
            return;
        }
        self.view = Some(view.clone());
        self.fail_pending("the room's owner changed; retry");
        let Some(me) = self.me().map(str::to_owned) else {
            return;
        };
        if !view.has_quorum() {
            self.become_(Role::Unavailable);
            return;
        }
        let owner = view
            .owner_of(self.state.name.as_str())
            .unwrap_or(&me)
            .to_owned();
        if owner != me {
            self.become_(Role::Relay { owner });
            return;
        }
        let waiting: BTreeSet<String> =
            view.members.keys().filter(|n| **n != me).cloned().collect();
        tracing::debug!(room = %self.state.name, view = view.id, peers = waiting.len(), "recovering the room as its new owner");
        for node in &waiting {
            self.send(
                node,
                Body::RecoverRequest {
                    room: self.room(),
                    view: view.id,
                },
            );
        }
        let done = waiting.is_empty();
        self.role = Role::Recovering {
            view: view.id,
            waiting,
            replicas: Vec::new(),
        };
        if done {
            self.finish_recovery(myself);
        } else {
            self.schedule_retry(myself, view.id);
        }
    }

    fn become_(&mut self, role: Role) {
        self.role = role;
        let error = match &self.role {
            Role::Unavailable => no_quorum(),
            _ => unavailable("the room's owner changed; retry"),
        };
        for message in std::mem::take(&mut self.deferred) {
            refuse(message, error.clone());
        }
    }

    fn schedule_retry(&self, myself: &ActorRef<RoomMessage>, view: u64) {
        let every = self
            .cluster
            .as_ref()
            .map_or(std::time::Duration::from_millis(100), |c| c.heartbeat);
        myself.send_after(every, move || RoomMessage::RecoveryRetry { view });
    }

    pub(super) fn retry_recovery(&mut self, myself: &ActorRef<RoomMessage>, view: u64) {
        let Role::Recovering {
            view: current,
            waiting,
            ..
        } = &self.role
        else {
            return;
        };
        if *current != view {
            return;
        }
        for node in waiting.clone() {
            self.send(
                &node,
                Body::RecoverRequest {
                    room: self.room(),
                    view,
                },
            );
        }
        self.schedule_retry(myself, view);
    }

    /// Another node, owner under `view`, asks what this node holds.
    fn answer_recovery(&mut self, from: &str, view: u64) {
        let ready = self
            .view
            .as_ref()
            .is_some_and(|v| v.id == view && v.owner_of(self.state.name.as_str()) == Some(from));
        let replica = ready.then(|| Replica {
            epoch: self.epoch,
            seq: self.state.seq,
            history: self.state.history.iter().cloned().collect(),
            local_members: self.state.local_members(),
        });
        self.send(
            from,
            Body::RecoverState {
                room: self.room(),
                view,
                ready,
                replica,
            },
        );
    }

    fn recovery_answer(
        &mut self,
        myself: &ActorRef<RoomMessage>,
        from: String,
        view: u64,
        ready: bool,
        replica: Option<Replica>,
    ) {
        let Role::Recovering {
            view: current,
            waiting,
            replicas,
        } = &mut self.role
        else {
            return;
        };
        if *current != view || !ready || !waiting.remove(&from) {
            return;
        }
        if let Some(replica) = replica {
            replicas.push((from, replica));
        }
        if waiting.is_empty() {
            self.finish_recovery(myself);
        }
    }

    /// Every node of the view answered: take over with a new epoch.
    fn finish_recovery(&mut self, myself: &ActorRef<RoomMessage>) {
        let Role::Recovering { view, replicas, .. } =
            std::mem::replace(&mut self.role, Role::Owner)
        else {
            return;
        };
        let mut epoch = self.epoch;
        let mut seq = self.state.seq;
        // Where two copies disagree on a sequence number, the one from the highest
        // epoch wins: a lower epoch's copy was ordered by an owner that lost the room
        // before any other node held that message (so nobody was shown it).
        let mut copies: Vec<(u64, Vec<ChatMessage>)> =
            vec![(self.epoch, self.state.history.iter().cloned().collect())];
        copies.extend(replicas.iter().map(|(_, r)| (r.epoch, r.history.clone())));
        copies.sort_by_key(|copy| std::cmp::Reverse(copy.0));
        let mut merged: BTreeMap<u64, ChatMessage> = BTreeMap::new();
        for (_, history) in copies {
            for message in history {
                merged.entry(message.seq).or_insert(message);
            }
        }
        self.book = OwnerBook::default();
        for (node, replica) in replicas {
            epoch = epoch.max(replica.epoch);
            seq = seq.max(replica.seq);
            for member in replica.local_members {
                let user = UserInfo {
                    id: member.id,
                    name: member.name,
                };
                self.book.set(&node, &user, member.connections);
            }
            self.book.relays.insert(node);
        }
        for (id, local) in &self.state.local {
            self.book.names.insert(id.clone(), local.name.clone());
        }
        self.epoch = epoch + 1;
        // Replace rather than merge into our copy: where ours disagreed, it lost.
        self.state.history.clear();
        self.state.seq = 0;
        self.state
            .replace_history(seq, merged.into_values().collect());
        let members = self.book.aggregate(&self.state);
        tracing::info!(room = %self.state.name, epoch = self.epoch, seq = self.state.seq, relays = self.book.relays.len(), view, "took over the room");
        // The relays first, then our own connections: what these are shown, others
        // already hold.
        self.send_to_relays(Body::OwnerAnnounce {
            room: self.room(),
            view,
            epoch: self.epoch,
            seq: self.state.seq,
            history: self.state.history.iter().cloned().collect(),
            members: members.clone(),
        });
        self.state.push_unseen();
        let (joins, leaves) = self.state.replace_members(members);
        self.state.push_presence_diff(joins, leaves, None);
        for message in std::mem::take(&mut self.deferred) {
            self.dispatch(myself, message);
        }
        self.arm_idle_timer(myself);
    }

    /// This node is leaving (its lease is already void): send what it holds to the
    /// node the room moves to, so its history survives even if nobody else held it.
    pub(super) fn hand_off(&mut self) {
        let (Some(cluster), Some(view)) = (&self.cluster, &self.view) else {
            return;
        };
        let rest: std::collections::BTreeMap<String, u64> = view
            .members
            .iter()
            .filter(|(name, _)| **name != cluster.me)
            .map(|(name, inc)| (name.clone(), *inc))
            .collect();
        let size = rest.len();
        let next = View::new(rest, size);
        let Some(heir) = next.owner_of(self.state.name.as_str()) else {
            return;
        };
        tracing::debug!(room = %self.state.name, %heir, seq = self.state.seq, "handing the room over");
        cluster.send(
            heir,
            Body::RoomHandoff {
                room: self.room(),
                epoch: self.epoch,
                seq: self.state.seq,
                history: self.state.history.iter().cloned().collect(),
            },
        );
    }

    /// Takes in a leaving node's copy of the room. Where copies disagree, the higher
    /// epoch wins, as in a recovery; the next recovery then carries it all.
    fn absorb(&mut self, epoch: u64, seq: u64, history: Vec<ChatMessage>) {
        let mine: Vec<ChatMessage> = self.state.history.iter().cloned().collect();
        let (first, second) = if epoch > self.epoch {
            (history, mine)
        } else {
            (mine, history)
        };
        let mut merged: BTreeMap<u64, ChatMessage> = BTreeMap::new();
        for message in first.into_iter().chain(second) {
            merged.entry(message.seq).or_insert(message);
        }
        self.epoch = self.epoch.max(epoch);
        let seq = seq.max(self.state.seq);
        self.state.history.clear();
        self.state
            .replace_history(seq, merged.into_values().collect());
    }

    /// Answers every request waiting on another node with `unavailable`.
    pub(super) fn fail_pending(&mut self, why: &str) {
        for (_, pending) in self.pending_joins.drain() {
            let _ = pending.reply.send(Err(unavailable(why)));
            // The connection stays registered but inactive only until the session
            // retries; drop it so it does not linger.
            if pending.new {
                if let Some((conn, ..)) = self.state.remove_connection(&pending.conn) {
                    let _ = conn;
                }
            }
        }
        for (_, reply) in self.pending_publishes.drain() {
            let _ = reply.send(Err(unavailable(why)));
        }
        // Ordered but unconfirmed: neither shown nor acknowledged, and forgotten here.
        // If a relay received it, it survives the ownership change through that
        // relay's copy and is shown then; its publisher may have retried (a retried
        // message can appear twice, never one sequence number twice).
        for waiting in std::mem::take(&mut self.unreplicated) {
            if let Some(ack_to) = waiting.ack_to {
                complete(self, ack_to, Err(unavailable(why)));
            }
        }
    }
}

/// The acknowledgement of an ordered message.
fn ack_of(message: &ChatMessage) -> PublishAck {
    PublishAck {
        id: message.id.clone(),
        seq: message.seq,
        ts: message.ts,
    }
}

/// Answers a publish, locally or to the relay that forwarded it.
fn complete(room: &Room, ack_to: AckTo, result: Result<PublishAck, ErrorBody>) {
    match ack_to {
        AckTo::Local(reply) => {
            let _ = reply.send(result.map(|ack| ReplyData::Publish {
                id: ack.id,
                seq: ack.seq,
                ts: ack.ts,
                duplicate: false,
            }));
        }
        AckTo::Remote { node, req } => {
            room.send(
                &node,
                Body::RoomPublished {
                    room: room.room(),
                    req,
                    result,
                },
            );
        }
    }
}

fn no_quorum() -> ErrorBody {
    unavailable("this node is cut off from most of the cluster; retry or reconnect elsewhere")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, connections: u32) -> Member {
        Member {
            id: id.to_owned(),
            name: id.to_uppercase(),
            connections,
        }
    }

    #[test]
    fn a_batch_carries_the_net_change_since_it_began() {
        let mut batch = PresenceBatch::new(0, Duration::from_millis(100));
        // carol joins; dan joins and leaves again; erin (a member before) leaves;
        // frank (a member before) leaves and comes back.
        batch.fold(vec![member("carol", 1), member("dan", 1)], vec![]);
        batch.fold(vec![], vec![member("dan", 0), member("erin", 0)]);
        batch.fold(vec![], vec![member("frank", 0)]);
        batch.fold(vec![member("frank", 1)], vec![]);
        assert_eq!(batch.len(), 4);
        let (joins, leaves) = batch.take();
        let ids = |list: &[Member]| list.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&joins), ["carol"]);
        assert_eq!(ids(&leaves), ["erin"]);
        assert_eq!(leaves[0].connections, 0);
        assert_eq!(batch.len(), 0);
    }

    #[test]
    fn batching_applies_to_rooms_over_the_size_and_zero_ms_turns_it_off() {
        let batch = PresenceBatch::new(100, Duration::from_millis(200));
        assert!(!batch.applies(100));
        assert!(batch.applies(101));
        let off = PresenceBatch::new(0, Duration::ZERO);
        assert!(!off.applies(10_000));
    }

    #[test]
    fn the_owner_book_forgets_users_who_left_everywhere() {
        let mut book = OwnerBook::default();
        let alice = UserInfo {
            id: "alice".to_owned(),
            name: "Alice".to_owned(),
        };
        let bob = UserInfo {
            id: "bob".to_owned(),
            name: "Bob".to_owned(),
        };
        book.set("b", &alice, 2);
        book.set("c", &bob, 1);
        assert_eq!(book.entries(), 4);
        book.set("b", &alice, 0);
        assert!(!book.remote.contains_key("b"), "an empty node is dropped");
        let still: BTreeMap<String, Member> = [("bob".to_owned(), member("bob", 1))].into();
        book.prune(&still);
        assert_eq!(book.names.keys().collect::<Vec<_>>(), ["bob"]);
        assert_eq!(book.entries(), 2);
        book.set("c", &bob, 0);
        book.prune(&BTreeMap::new());
        assert_eq!(book.entries(), 0);
        assert!(!book.has_remote_members());
    }
}
