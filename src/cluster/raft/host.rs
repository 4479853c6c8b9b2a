//! The shard host: every shard's Raft on this node, and the way in for proposals.
//!
//! Owns one `openraft::Raft<ShardTc>` per shard (all shards run on every node: a node
//! that is not one of a shard's voters follows it as a learner, so it applies every
//! committed entry and can serve any room from its own copy), the [`ShardServer`] that
//! answers peers' Raft calls, and one **proposer** task per shard.
//!
//! - **Bootstrap.** Every voter of a shard initializes the group with the configured
//!   voters, once (the same config on each pristine voter is safe in openraft; a
//!   restart meets NotAllowed and ignores it), so a shard forms with any majority of
//!   its voters, whichever start. Voters campaign in rank order (election timeouts
//!   in bands by rank, [`raft_config`]): the first voter up leads, so leaders spread
//!   over the nodes at start and a failed leader's shards pass to their next voters
//!   (cluster/shards.rs).
//! - **Learners.** Whichever node leads a shard adds the configured non-voters as
//!   learners (non-blocking), checked on every change of the shard's metrics.
//! - **Proposing.** A proposal waits in its shard's queue (bounded: a full queue is
//!   `unavailable` at once). The proposer takes everything queued, up to
//!   [`MAX_BATCH`] commands and [`MAX_BATCH_BYTES`], as one log entry (openraft does not batch `client_write`,
//!   and each entry costs a log write: batching is what keeps a shard fast with fsync
//!   on), writes it on the leader (here, or forwarded to the leader over the cluster),
//!   and answers each proposal with its command's outcome. A write that fails for want
//!   of a leader is retried until [`PROPOSE_DEADLINE`]; then every proposal in it is
//!   answered `unavailable`. A shard of which this node reaches no majority of voters
//!   (by the cluster's failure detector, [`Reach`]) refuses at once, and a write
//!   waiting when that happens is answered `unavailable` then, not at the deadline: a
//!   node cut off from the majority stops taking messages within the failure timeout.
//!   (Such a write may still commit after the partition heals; with its idempotency key
//!   a retry answers the original.) A retried batch can be ordered twice if the first attempt
//!   was committed but its answer lost: commands that carry an idempotency key are
//!   answered with the original, the others can appear twice (docs/cluster.md).

use super::network::{decode, encode, RaftLink, ShardNetwork, ShardServer, Transport};
use super::state_machine::{ApplySink, Retention, ShardReader, ShardStateMachine};
use super::types::{
    CommandOutcome, NodeId, ShardBatch, ShardCommand, ShardId, ShardNode, ShardOutcome, ShardTc,
};
use super::LogDb;
use crate::cluster::shards::Placement;
use crate::cluster::wire::{RaftAnswer, RaftCall, RpcKind};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{Config, Raft, ServerState};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Commands one log entry carries at most.
pub const MAX_BATCH: usize = 256;
/// Bytes (about) one log entry carries at most: a batch closes before the command that
/// would pass it (a single command always goes), so one entry always fits in an
/// AppendEntries well under the cluster frame limit (network.rs).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Proposals one shard's queue holds; past it a proposal is refused at once.
pub const QUEUE: usize = 4_096;
/// How long a proposal may wait for a leader before it is answered `unavailable`:
/// under the 5 s a session waits for any answer (actors::ASK_TIMEOUT), so the client
/// hears why.
pub const PROPOSE_DEADLINE: Duration = Duration::from_secs(4);

/// Raft timing, derived from `[cluster]` (heartbeat and failure timeout).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Leader heartbeats; also openraft's AppendEntries timeout, so it must cover a
    /// round trip plus a follower's fsync.
    pub heartbeat: Duration,
    /// The shortest election timeout (a preferred leader's); others wait longer.
    pub election: Duration,
}

/// The nodes this node's failure detector believes are up (itself included); None for
/// a node alone, which reaches all there is.
pub type Reach = Option<watch::Receiver<BTreeSet<NodeId>>>;

/// What a host is connected to.
pub struct Wiring {
    /// Where the state machines put what they commit.
    pub sink: Arc<dyn ApplySink>,
    /// How Raft calls reach the other nodes.
    pub link: Arc<dyn RaftLink>,
    /// Who the failure detector says is up.
    pub reach: Reach,
}

/// Why a proposal was not ordered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("{0}")]
    Unavailable(String),
}

/// Why the host did not start.
#[derive(Debug, thiserror::Error)]
#[error("shard {shard}: {reason}")]
pub struct StartError {
    pub shard: ShardId,
    pub reason: String,
}

struct Proposal {
    command: ShardCommand,
    reply: oneshot::Sender<Result<CommandOutcome, ProposeError>>,
}

struct Shard {
    raft: Raft<ShardTc>,
    reader: ShardReader,
    queue: mpsc::Sender<Proposal>,
}

/// Every shard of this node.
pub struct ShardHost {
    me: NodeId,
    timing: Timing,
    placement: Placement,
    server: Arc<ShardServer>,
    transport: Arc<Transport>,
    shards: HashMap<ShardId, Shard>,
    reach: Reach,
    /// False until every shard could order messages from here once: until then a
    /// refusal says the node is starting (its failure detector counts no peers for
    /// its first failure timeout), not that it is cut off.
    settled: AtomicBool,
}

/// How often a starting host checks whether it has settled (see `ShardHost::settled`).
const SETTLE_CHECK: Duration = Duration::from_millis(100);

impl ShardHost {
    /// Starts every shard of `placement` on node `me` (one of its nodes), with its log
    /// in `db`, wired as `wiring` says.
    pub async fn start(
        me: &str,
        placement: Placement,
        db: &LogDb,
        retention: Retention,
        timing: Timing,
        wiring: Wiring,
    ) -> Result<Arc<Self>, StartError> {
        let Wiring { sink, link, reach } = wiring;
        let me = crate::cluster::shards::node_id(me);
        let transport = Arc::new(Transport::new(me, link));
        let server = Arc::new(ShardServer::new(me));
        let mut shards = HashMap::new();
        let mut queues = Vec::new();
        for shard in 0..placement.shards() {
            let fail = |reason: String| StartError { shard, reason };
            let store = db.shard(shard);
            let machine = ShardStateMachine::open(shard, retention, sink.clone(), store.clone())
                .await
                .map_err(|e| fail(e.to_string()))?;
            let reader = machine.reader();
            let rank = placement
                .rank(shard, me)
                .unwrap_or(placement.voters(shard).len());
            let config = raft_config(shard, timing, rank).map_err(fail)?;
            let network = ShardNetwork {
                shard,
                transport: transport.clone(),
            };
            let raft = Raft::new(me, Arc::new(config), network, store, machine)
                .await
                .map_err(|e| fail(e.to_string()))?;
            server.insert(shard, raft.clone());
            let (queue, proposals) = mpsc::channel(QUEUE);
            shards.insert(
                shard,
                Shard {
                    raft,
                    reader,
                    queue,
                },
            );
            queues.push((shard, proposals));
        }
        let host = Arc::new(Self {
            me,
            timing,
            placement,
            server,
            transport,
            shards,
            reach,
            settled: AtomicBool::new(false),
        });
        for (shard, proposals) in queues {
            tokio::spawn(run_proposer(Arc::downgrade(&host), shard, proposals));
        }
        tokio::spawn(watch_settled(Arc::downgrade(&host)));
        host.bootstrap().await?;
        Ok(host)
    }

    async fn bootstrap(self: &Arc<Self>) -> Result<(), StartError> {
        for (&shard, state) in &self.shards {
            // Every voter initializes the group with the same voters (safe in openraft:
            // the same config on several pristine nodes), so a shard forms whichever
            // of its voters start; later starts meet NotAllowed and go on.
            if self.placement.is_voter(shard, self.me) {
                let voters: BTreeMap<NodeId, ShardNode> = self
                    .placement
                    .voters(shard)
                    .into_iter()
                    .map(|id| (id, self.node(id)))
                    .collect();
                match state.raft.initialize(voters).await {
                    Ok(()) => {}
                    Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                    Err(e) => {
                        return Err(StartError {
                            shard,
                            reason: e.to_string(),
                        })
                    }
                }
            }
            tokio::spawn(add_learners(Arc::downgrade(self), shard));
        }
        Ok(())
    }

    fn node(&self, id: NodeId) -> ShardNode {
        ShardNode::new(self.placement.name_of(id).unwrap_or_default())
    }

    /// This node's Raft id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The shard placement this host runs.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Read access to the rooms of `shard` as this node has applied them.
    pub fn reader(&self, shard: ShardId) -> Option<ShardReader> {
        self.shards.get(&shard).map(|s| s.reader.clone())
    }

    /// The Raft of `shard` on this node.
    pub fn raft(&self, shard: ShardId) -> Option<&Raft<ShardTc>> {
        self.shards.get(&shard).map(|s| &s.raft)
    }

    /// The leader of `shard` as this node last heard (a hint; may be stale).
    pub fn leader(&self, shard: ShardId) -> Option<NodeId> {
        self.raft(shard)?.metrics().borrow().current_leader
    }

    /// How many shards have a known leader (for readiness and `/cluster`).
    pub fn shards_with_leader(&self) -> usize {
        self.shards
            .values()
            .filter(|s| s.raft.metrics().borrow().current_leader.is_some())
            .count()
    }

    /// Why nothing can be ordered in `shard` from this node now: it reaches no
    /// majority of the shard's voters, or the shard has no known leader.
    /// The reason starts with what the node is doing: `starting` (it has not yet been
    /// able to order messages in every shard since it started), or `no quorum`.
    pub fn unavailable(&self, shard: ShardId) -> Option<String> {
        self.why_not(shard).map(|reason| self.explain(reason))
    }

    /// [`ShardHost::unavailable`] without saying what the node is doing.
    pub fn why_not(&self, shard: ShardId) -> Option<String> {
        self.cut_off(shard).or_else(|| {
            self.leader(shard)
                .is_none()
                .then(|| "the room's shard has no leader yet".to_owned())
        })
    }

    /// `reason` prefixed with what the node is doing: starting, or without a quorum.
    pub fn explain(&self, reason: String) -> String {
        if self.settled.load(Ordering::Acquire) {
            format!("no quorum: {reason}")
        } else {
            format!("this node is starting: {reason}")
        }
    }

    /// Whether every shard can order messages from here now.
    fn all_available(&self) -> bool {
        self.shards
            .keys()
            .all(|&shard| self.cut_off(shard).is_none() && self.leader(shard).is_some())
    }

    /// Why this node cannot reach a majority of `shard`'s voters, if it cannot.
    fn cut_off(&self, shard: ShardId) -> Option<String> {
        let reach = self.reach.as_ref()?;
        let up = reach.borrow();
        self.cut_off_from(&up, shard)
    }

    fn cut_off_from(&self, up: &BTreeSet<NodeId>, shard: ShardId) -> Option<String> {
        let voters = self.placement.voters(shard);
        let quorum = voters.len() / 2 + 1;
        let reached = voters
            .iter()
            .filter(|v| **v == self.me || up.contains(v))
            .count();
        (reached < quorum).then(|| {
            format!(
                "this node reaches {reached} of the {} nodes of the room's shard, and a \
                 majority ({quorum}) is needed",
                voters.len()
            )
        })
    }

    /// Resolves once this node is cut off from `shard`'s majority (never for a node
    /// alone), with the reason.
    async fn lost_majority(&self, shard: ShardId) -> String {
        let Some(mut reach) = self.reach.clone() else {
            return std::future::pending().await;
        };
        loop {
            let reason = self.cut_off_from(&reach.borrow_and_update(), shard);
            if let Some(reason) = reason {
                return reason;
            }
            if reach.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Orders `command` in its room's shard; resolves once it is committed.
    pub async fn propose(
        &self,
        shard: ShardId,
        command: ShardCommand,
    ) -> Result<CommandOutcome, ProposeError> {
        let state = self
            .shards
            .get(&shard)
            .ok_or_else(|| ProposeError::Unavailable(format!("no shard {shard}")))?;
        let (reply, answer) = oneshot::channel();
        state
            .queue
            .try_send(Proposal { command, reply })
            .map_err(|_| ProposeError::Unavailable("the room's shard is overloaded".into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(ProposeError::Unavailable("the shard stopped".into())))
    }

    /// A peer's Raft call: served in a task of its own; the answer goes back through
    /// the link.
    pub fn serve(self: &Arc<Self>, call: RaftCall) {
        let host = self.clone();
        tokio::spawn(async move {
            let from = call.from;
            let answer = host.server.serve(call).await;
            host.transport.answer(from, answer);
        });
    }

    /// A peer's answer to one of this node's calls.
    pub fn answered(&self, answer: RaftAnswer) {
        self.transport.complete(answer);
    }

    /// Stops every shard (peers' calls are refused from the first moment).
    pub async fn shutdown(&self) {
        for (&shard, state) in &self.shards {
            self.server.remove(shard);
            let _ = state.raft.shutdown().await;
        }
    }

    /// Writes one batch on the shard's leader, here or forwarded; retried while there
    /// is no leader, until the deadline.
    async fn write(&self, shard: ShardId, batch: ShardBatch) -> Result<ShardOutcome, ProposeError> {
        let state = self
            .shards
            .get(&shard)
            .ok_or_else(|| ProposeError::Unavailable(format!("no shard {shard}")))?;
        let deadline = Instant::now() + PROPOSE_DEADLINE;
        let mut pause = Duration::from_millis(20);
        loop {
            if let Some(reason) = self.cut_off(shard) {
                return Err(ProposeError::Unavailable(self.explain(reason)));
            }
            let leader = state.raft.metrics().borrow().current_leader;
            let attempt = async {
                match leader {
                    Some(leader) if leader == self.me => {
                        local_write(&state.raft, batch.clone(), deadline).await
                    }
                    Some(leader) => self.forward(shard, leader, &batch, deadline).await,
                    None => Err(Retry("the room's shard has no leader yet".into())),
                }
            };
            let attempt = tokio::select! {
                attempt = attempt => attempt,
                reason = self.lost_majority(shard) => {
                    return Err(ProposeError::Unavailable(self.explain(reason)));
                }
            };
            let reason = match attempt {
                Ok(outcome) => return Ok(outcome),
                Err(Retry(reason)) => reason,
            };
            if Instant::now() + pause >= deadline {
                return Err(ProposeError::Unavailable(self.explain(reason)));
            }
            // Wait for the shard's metrics to change (a new leader) or the pause.
            let mut metrics = state.raft.metrics();
            let _ = tokio::time::timeout(pause, metrics.changed()).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    async fn forward(
        &self,
        shard: ShardId,
        leader: NodeId,
        batch: &ShardBatch,
        deadline: Instant,
    ) -> Result<ShardOutcome, Retry> {
        let payload = encode(batch).map_err(|e| Retry(e.to_string()))?;
        // One attempt waits about two election timeouts: a leader that does not
        // answer by then has most likely been replaced, and the hint moved on.
        let attempt = (self.timing.election * 2).max(Duration::from_millis(500));
        let ttl = deadline
            .saturating_duration_since(Instant::now())
            .min(attempt);
        let bytes = self
            .transport
            .call(leader, shard, RpcKind::ClientWrite, payload, ttl)
            .await
            .map_err(|e| Retry(e.to_string()))?;
        type Answer = Result<
            ClientWriteResponse<ShardTc>,
            RaftError<NodeId, ClientWriteError<NodeId, ShardNode>>,
        >;
        let answer: Answer = decode(&bytes).map_err(|e| Retry(e.to_string()))?;
        answer.map(|r| r.data).map_err(write_error)
    }
}

/// A write attempt that may succeed later (no leader, a leader change, a lost call).
struct Retry(String);

/// Writes on this node, the leader. A leader cut off from its majority does not step
/// down at once (it cannot know), so the write is bounded by the deadline; it may still
/// commit later, once the partition heals, if no other leader overwrote it.
async fn local_write(
    raft: &Raft<ShardTc>,
    batch: ShardBatch,
    deadline: Instant,
) -> Result<ShardOutcome, Retry> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, raft.client_write(batch)).await {
        Ok(written) => written.map(|r| r.data).map_err(write_error),
        Err(_) => Err(Retry("no majority of the room's shard answered".into())),
    }
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, ShardNode>>) -> Retry {
    match e.forward_to_leader::<ShardNode>() {
        Some(_) => Retry("the room's shard is changing leader".into()),
        None => Retry(e.to_string()),
    }
}

/// openraft's settings for one shard on a voter of `rank` (0: the preferred leader;
/// a learner passes its position past the voters). Each rank's election timeouts lie
/// in a band of their own, `[1 + rank/2, 1.5 + rank/2)` times the election time, so
/// the first voter up campaigns first and, in the common case, wins: a failed leader's
/// shard passes to its next voter (cluster/shards.rs spreads those).
fn raft_config(shard: ShardId, timing: Timing, rank: usize) -> Result<Config, String> {
    let election = timing.election.as_millis().max(2) as u64;
    let min = election + rank as u64 * election / 2;
    let max = min + election / 2;
    Config {
        cluster_name: format!("shard-{shard}"),
        heartbeat_interval: timing.heartbeat.as_millis().max(1) as u64,
        election_timeout_min: min,
        election_timeout_max: max.max(min + 1),
        install_snapshot_timeout: 3_000,
        // Chunks well under the cluster frame limit (cluster/wire.rs).
        snapshot_max_chunk_size: 1024 * 1024,
        max_payload_entries: 64,
        purge_batch_size: 256,
        ..Default::default()
    }
    .validate()
    .map_err(|e| e.to_string())
}

/// Marks the host settled the first time every shard can order messages from it, then
/// ends (also when the host is gone).
async fn watch_settled(host: std::sync::Weak<ShardHost>) {
    loop {
        {
            let Some(host) = host.upgrade() else { return };
            if host.all_available() {
                host.settled.store(true, Ordering::Release);
                return;
            }
        }
        tokio::time::sleep(SETTLE_CHECK).await;
    }
}

/// One shard's proposer: takes what is queued as one batch, writes it, answers each.
/// Ends when the host is gone.
async fn run_proposer(
    host: std::sync::Weak<ShardHost>,
    shard: ShardId,
    mut proposals: mpsc::Receiver<Proposal>,
) {
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    // A proposal that did not fit in the last batch opens the next one.
    let mut carried: Option<Proposal> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match proposals.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut bytes = first.command.approx_bytes();
        waiting.push(first);
        while waiting.len() < MAX_BATCH {
            match proposals.try_recv() {
                Ok(next) => {
                    let size = next.command.approx_bytes();
                    if bytes + size > MAX_BATCH_BYTES {
                        carried = Some(next);
                        break;
                    }
                    bytes += size;
                    waiting.push(next);
                }
                Err(_) => break,
            }
        }
        let Some(host) = host.upgrade() else {
            return;
        };
        let (commands, replies): (Vec<_>, Vec<_>) =
            waiting.drain(..).map(|p| (p.command, p.reply)).unzip();
        let result = host.write(shard, ShardBatch(commands)).await;
        drop(host);
        match result {
            Ok(ShardOutcome(outcomes)) if outcomes.len() == replies.len() => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Ok(_) => {
                // An entry applied before answers no outcomes: it was a replay.
                for reply in replies {
                    let _ = reply.send(Err(ProposeError::Unavailable(
                        "the shard answered out of step; retry".into(),
                    )));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Adds the shard's configured learners whenever this node leads it.
async fn add_learners(host: std::sync::Weak<ShardHost>, shard: ShardId) {
    let Some((raft, learners, nodes)) = host.upgrade().and_then(|host| {
        let raft = host.raft(shard)?.clone();
        let learners = host.placement.learners(shard);
        let nodes: Vec<(NodeId, ShardNode)> =
            learners.iter().map(|&id| (id, host.node(id))).collect();
        Some((raft, learners, nodes))
    }) else {
        return;
    };
    if learners.is_empty() {
        return;
    }
    let mut metrics = raft.metrics();
    loop {
        let (leading, missing) = {
            let m = metrics.borrow();
            let known: Vec<NodeId> = m.membership_config.nodes().map(|(id, _)| *id).collect();
            (
                m.state == ServerState::Leader,
                learners
                    .iter()
                    .copied()
                    .filter(|id| !known.contains(id))
                    .collect::<Vec<_>>(),
            )
        };
        if leading {
            for id in missing {
                if let Some((_, node)) = nodes.iter().find(|(nid, _)| *nid == id) {
                    let _ = raft.add_learner(id, node.clone(), false).await;
                }
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
