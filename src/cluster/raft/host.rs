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
//!   its voters, whichever start. Voters bootstrap in rank order ([`bootstrap_due`]:
//!   bootstrapping starts an election, so the first to do it leads), so leaders spread
//!   as placed (cluster/shards.rs) however far apart the nodes start; election
//!   timeouts lie in bands by rank ([`raft_config`]), so a failed leader's shards pass
//!   to their next voters.
//! - **Learners and membership changes** (`reconcile`). Whichever node leads a shard
//!   moves its group to what the cluster's node list places there: the nodes not in
//!   the group are added as learners; once the shard's voters-to-be are all up and
//!   caught up, one membership change makes them the voters (removed voters stay
//!   learners); then nodes no longer listed are removed. Checked on every change of
//!   the shard's metrics and every second. The node list is the configured one until
//!   `SetNodes` changes it in shard 0's log (`set_nodes`, `POST /cluster/nodes`);
//!   every node follows shard 0, so every node's placement follows the same list.
//! - **Joining.** A node started with `cluster.join` never bootstraps: it waits for
//!   the leaders to add it (a new node, or one replacing a dead one with an empty
//!   data dir: two pristine voters of one shard bootstrapping on their own could
//!   elect a leader without the rest).
//! - **Proposing.** A proposal waits in its shard's queue (bounded in count,
//!   [`QUEUE`], and in bytes, [`QUEUE_BYTES`]: a full queue is `unavailable` at once). The proposer takes everything queued, up to
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
use openraft::ChangeMembers;
use openraft::{Config, Raft, ServerState};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
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
/// Bytes of commands one shard's queue holds (as `ShardCommand::approx_bytes` counts
/// them); past it a proposal is refused at once, as past [`QUEUE`] (a command alone
/// in the queue always goes). With the batch of at most [`MAX_BATCH_BYTES`] being
/// written, a shard holds about 5 MiB of proposals, 80 MiB for 16 shards.
pub const QUEUE_BYTES: usize = 4 * 1024 * 1024;
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
    /// Node names by id, shared with the link (the host adds the names of every node
    /// list it follows).
    pub names: Arc<NodeNames>,
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
    /// Counted in its shard's queue until the proposer takes it into a batch.
    _queued: Queued,
}

/// A command's bytes in its shard's queue ([`QUEUE_BYTES`]), given back when dropped.
struct Queued {
    bytes: Arc<AtomicUsize>,
    size: usize,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.bytes.fetch_sub(self.size, Ordering::AcqRel);
    }
}

struct Shard {
    raft: Raft<ShardTc>,
    reader: ShardReader,
    queue: mpsc::Sender<Proposal>,
    /// The bytes of the commands in `queue`.
    queued: Arc<AtomicUsize>,
}

/// Node names by Raft id: every name this node has seen in a node list (configured or
/// set at runtime), for addressing Raft calls. Shared with the link.
#[derive(Debug, Default)]
pub struct NodeNames(RwLock<BTreeMap<NodeId, String>>);

impl NodeNames {
    /// The names of `placement`'s nodes, added to those known.
    pub fn learn(&self, placement: &Placement) {
        let mut names = self.0.write().unwrap_or_else(PoisonError::into_inner);
        for (name, id) in placement.nodes() {
            names.insert(id, name.to_owned());
        }
    }

    /// The name of node `id`, if it was ever listed.
    pub fn get(&self, id: NodeId) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }
}

/// Where the cluster's node list comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeListSource {
    /// `[[nodes]]` or `cluster.voters`.
    Config,
    /// A `SetNodes` in shard 0's log (`POST /cluster/nodes`).
    Runtime,
}

impl NodeListSource {
    /// As `GET /cluster` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Runtime => "runtime",
        }
    }
}

/// Why a node list change was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetNodesError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

/// Every shard of this node.
pub struct ShardHost {
    me: NodeId,
    timing: Timing,
    /// What the cluster's current node list places where.
    placement: RwLock<Arc<Placement>>,
    /// The configured node list's placement (what a new cluster starts from).
    configured: Arc<Placement>,
    names: Arc<NodeNames>,
    /// Every peer up follows the same node list as this node (Membership says so from
    /// their heartbeats); leaders move no group while it is false.
    peers_agree: AtomicBool,
    /// The peers up that announce the same node list as this node (Membership);
    /// None for a node alone.
    agreeing: std::sync::Mutex<Option<BTreeSet<NodeId>>>,
    /// Started with `cluster.join`: nothing bootstrapped here.
    join: bool,
    server: Arc<ShardServer>,
    transport: Arc<Transport>,
    shards: HashMap<ShardId, Shard>,
    reach: Reach,
    /// False until every shard could order messages from here once: until then a
    /// refusal says the node is starting (its peers are not up in its view yet, or its
    /// shards have not found their leaders), not that it is cut off.
    settled: AtomicBool,
}

/// How often a starting host checks whether it has settled (see `ShardHost::settled`).
const SETTLE_CHECK: Duration = Duration::from_millis(100);

impl ShardHost {
    /// Starts every shard of `placement` (the configured node list) on node `me`, with
    /// its log in `db`, wired as `wiring` says. With `join`, it bootstraps no shard.
    pub async fn start(
        me: &str,
        placement: Placement,
        db: &LogDb,
        retention: Retention,
        timing: Timing,
        wiring: Wiring,
        join: bool,
    ) -> Result<Arc<Self>, StartError> {
        let Wiring {
            sink,
            link,
            reach,
            names,
        } = wiring;
        names.learn(&placement);
        let configured = Arc::new(placement);
        let mut placement = configured.clone();
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
            if shard == 0 {
                // A node list set at runtime (shard 0's log, applied by now from its
                // snapshot and committed entries) holds over the configured one.
                if let Some(set) = reader.nodes().and_then(|n| configured.with_nodes(&n).ok()) {
                    names.learn(&set);
                    placement = Arc::new(set);
                }
            }
            let (queue, proposals) = mpsc::channel(QUEUE);
            shards.insert(
                shard,
                Shard {
                    raft,
                    reader,
                    queue,
                    queued: Arc::default(),
                },
            );
            queues.push((shard, proposals));
        }
        let host = Arc::new(Self {
            me,
            timing,
            placement: RwLock::new(placement),
            configured,
            names,
            peers_agree: AtomicBool::new(true),
            agreeing: std::sync::Mutex::new(None),
            join,
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
        host.bootstrap(join).await?;
        Ok(host)
    }

    async fn bootstrap(self: &Arc<Self>, join: bool) -> Result<(), StartError> {
        let placement = self.placement();
        for (&shard, state) in &self.shards {
            // Every voter initializes a pristine group with the same voters (safe in
            // openraft: the same config on several pristine nodes), so a shard forms
            // whichever of its voters start; a group already initialized (a restart)
            // needs nothing. A joining node leaves it to the running cluster.
            let pristine = !state.raft.is_initialized().await.map_err(|e| StartError {
                shard,
                reason: e.to_string(),
            })?;
            if pristine && !join && placement.is_voter(shard, self.me) {
                tokio::spawn(initialize(Arc::downgrade(self), shard));
            }
            tokio::spawn(reconcile(Arc::downgrade(self), shard));
        }
        Ok(())
    }

    fn node(&self, id: NodeId) -> ShardNode {
        ShardNode::new(self.names.get(id).unwrap_or_default())
    }

    /// This node's Raft id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// What the cluster's current node list places where.
    pub fn placement(&self) -> Arc<Placement> {
        self.placement
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The cluster's node list now, and where it comes from.
    pub fn node_list(&self) -> (Vec<String>, NodeListSource) {
        let placement = self.placement();
        let source = if placement.names() == self.configured.names() {
            NodeListSource::Config
        } else {
            NodeListSource::Runtime
        };
        (placement.names(), source)
    }

    /// The node list this node follows, as heartbeats announce it: None for a joining
    /// node that has not yet applied a list from shard 0 (its configured list is only
    /// a guess, and must not hold the others' groups still).
    pub fn announced_placement(&self) -> Option<Arc<Placement>> {
        let unplaced = self.join
            && self
                .shards
                .get(&0)
                .is_none_or(|s| s.reader.nodes().is_none());
        (!unplaced).then(|| self.placement())
    }

    /// Which peers up follow the same node list as this node, and whether all do
    /// (Membership, on heartbeats).
    pub fn set_list_agreement(&self, agreeing: BTreeSet<NodeId>, all: bool) {
        *self.agreeing.lock().unwrap_or_else(PoisonError::into_inner) = Some(agreeing);
        self.peers_agree.store(all, Ordering::Relaxed);
    }

    /// Whether a majority of `voters` (this node included) is known to follow this
    /// node's node list: a pristine shard is bootstrapped only then, so nodes whose
    /// lists differ never initialize one group with two different voter sets. A node
    /// alone (no cluster) always is.
    fn majority_agrees(&self, voters: &[NodeId]) -> bool {
        if self.reach.is_none() {
            return true;
        }
        // Before any peer was heard, this node alone agrees with itself: enough for a
        // shard whose only voter it is.
        let count = voters.iter().filter(|v| self.agrees(**v)).count();
        count > voters.len() / 2
    }

    /// Whether node `id` is up and follows the same node list as this node (this node
    /// always does).
    fn agrees(&self, id: NodeId) -> bool {
        if id == self.me || self.reach.is_none() {
            return true;
        }
        let agreeing = self.agreeing.lock().unwrap_or_else(PoisonError::into_inner);
        agreeing.as_ref().is_some_and(|a| a.contains(&id))
    }

    /// The configured node list (`[[nodes]]` or `cluster.voters`).
    pub fn configured_nodes(&self) -> Vec<String> {
        self.configured.names()
    }

    /// Makes `nodes` the cluster's node list: ordered in shard 0's log, so every node
    /// applies it; each shard's leader then moves its group to match. Resolves once
    /// committed (the groups move after, within seconds: `GET /cluster` shows them).
    pub async fn set_nodes(&self, mut nodes: Vec<String>) -> Result<Vec<String>, SetNodesError> {
        nodes.sort();
        if !super::state_machine::valid_node_list(&nodes) {
            return Err(SetNodesError::Invalid(
                "a node list names at least one node, each once, each a valid node.name".into(),
            ));
        }
        let placement = self
            .placement()
            .with_nodes(&nodes)
            .map_err(|e| SetNodesError::Invalid(e.to_string()))?;
        match self
            .propose(
                0,
                ShardCommand::SetNodes {
                    nodes: nodes.clone(),
                },
            )
            .await
        {
            Ok(CommandOutcome::NodesSet) => {
                self.adopt(placement);
                Ok(nodes)
            }
            Ok(other) => Err(SetNodesError::Invalid(format!(
                "the cluster's log refused the node list: {other:?}"
            ))),
            Err(ProposeError::Unavailable(reason)) => Err(SetNodesError::Unavailable(reason)),
        }
    }

    /// Follows shard 0's node list when it changed (every reconcile round).
    fn refresh_placement(&self) {
        let Some(nodes) = self.shards.get(&0).and_then(|s| s.reader.nodes()) else {
            return;
        };
        if nodes == self.placement().names() {
            return;
        }
        match self.configured.with_nodes(&nodes) {
            Ok(placement) => self.adopt(placement),
            Err(e) => tracing::error!(
                error = %e,
                "the cluster's node list in the room logs cannot be placed; keeping the last one"
            ),
        }
    }

    fn adopt(&self, placement: Placement) {
        let mut current = self
            .placement
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if current.names() == placement.names() {
            return;
        }
        self.names.learn(&placement);
        let configured = self.configured.names();
        if placement.names() != configured {
            tracing::info!(
                nodes = ?placement.names(),
                configured = ?configured,
                "the cluster's node list is now {:?}; it differs from this node's \
                 configured list, which is no longer used (update the config to match)",
                placement.names()
            );
        } else {
            tracing::info!(nodes = ?placement.names(), "the cluster's node list is now {:?}", placement.names());
        }
        *current = Arc::new(placement);
    }

    /// The name of node `id`, if any node list this node followed named it.
    pub fn name_of(&self, id: NodeId) -> Option<String> {
        self.names.get(id)
    }

    /// `shard`'s voters and how many learners it has, as this node's copy of its
    /// membership says (no voters: the group has no membership here yet).
    pub fn members(&self, shard: ShardId) -> (Vec<NodeId>, usize) {
        let Some(raft) = self.raft(shard) else {
            return (Vec::new(), 0);
        };
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        (
            membership.voter_ids().collect(),
            membership.learner_ids().count(),
        )
    }

    /// The voters of `shard` now: its Raft membership's, or the placement's while the
    /// group has no membership yet.
    fn voters_now(&self, shard: ShardId) -> Vec<NodeId> {
        let voters: Vec<NodeId> = self
            .raft(shard)
            .map(|raft| {
                raft.metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .collect()
            })
            .unwrap_or_default();
        if voters.is_empty() {
            self.placement().voters(shard)
        } else {
            voters
        }
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

    /// `shard`'s Raft term on this node and the index of the last log entry it has
    /// applied (its copy of the rooms reaches that far): for `/cluster`, where
    /// comparing nodes shows how far a copy trails.
    pub fn progress(&self, shard: ShardId) -> Option<(u64, u64)> {
        let metrics = self.raft(shard)?.metrics();
        let metrics = metrics.borrow();
        Some((
            metrics.current_term,
            metrics.last_applied.map_or(0, |id| id.index),
        ))
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

    /// Whether every shard has been able to order messages from here since the start.
    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// Why this node reaches no majority of `shard`'s voters, if it does not.
    pub fn cut_off_reason(&self, shard: ShardId) -> Option<String> {
        self.cut_off(shard)
    }

    /// Whether every shard can order messages from here now.
    fn all_available(&self) -> bool {
        self.shards
            .keys()
            .all(|&shard| self.cut_off(shard).is_none() && self.leader(shard).is_some())
    }

    /// Whether the failure detector says node `id` is up (always, for a node alone).
    fn reaches(&self, id: NodeId) -> bool {
        self.reach
            .as_ref()
            .is_none_or(|reach| reach.borrow().contains(&id))
    }

    /// Why this node cannot reach a majority of `shard`'s voters, if it cannot.
    fn cut_off(&self, shard: ShardId) -> Option<String> {
        let reach = self.reach.as_ref()?;
        let up = reach.borrow();
        self.cut_off_from(&up, shard)
    }

    fn cut_off_from(&self, up: &BTreeSet<NodeId>, shard: ShardId) -> Option<String> {
        let voters = self.voters_now(shard);
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
        self.enqueue(shard, command)?.await
    }

    /// Queues `command` in its shard now (commands queued one after the other are
    /// ordered in that order), and returns what resolves once it is committed.
    pub fn enqueue(
        &self,
        shard: ShardId,
        command: ShardCommand,
    ) -> Result<impl std::future::Future<Output = Result<CommandOutcome, ProposeError>>, ProposeError>
    {
        let state = self
            .shards
            .get(&shard)
            .ok_or_else(|| ProposeError::Unavailable(format!("no shard {shard}")))?;
        let overloaded = || ProposeError::Unavailable("the room's shard is overloaded".into());
        let size = command.approx_bytes();
        let held = state.queued.fetch_add(size, Ordering::AcqRel);
        let queued = Queued {
            bytes: state.queued.clone(),
            size,
        };
        if held > 0 && held + size > QUEUE_BYTES {
            return Err(overloaded());
        }
        let (reply, answer) = oneshot::channel();
        state
            .queue
            .try_send(Proposal {
                command,
                reply,
                _queued: queued,
            })
            .map_err(|_| overloaded())?;
        Ok(async move {
            answer
                .await
                .unwrap_or_else(|_| Err(ProposeError::Unavailable("the shard stopped".into())))
        })
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

/// How many election times a voter waits, once a majority agrees, for a senior voter
/// that is up to bootstrap the shard before it does so itself (`bootstrap_due`).
const SENIOR_PATIENCE: u32 = 8;

/// Whether a pristine voter of `rank` bootstraps its shard now, a majority of its
/// voters having agreed on the node list for `agreed`. In openraft, bootstrapping
/// (`initialize`) starts an election at once, so whichever voter bootstraps first
/// leads: the preferred leader (rank 0) does it at once, and each other voter gives
/// the ones ranked above it time to, so leaders spread as placed (cluster/shards.rs)
/// however far apart the nodes start. Seniors none of which is up are given `rank`
/// election times (the shard still forms without them); a senior that is up
/// [`SENIOR_PATIENCE`] times that, enough to see the majority itself.
fn bootstrap_due(rank: usize, senior_up: bool, agreed: Duration, election: Duration) -> bool {
    let rank = u32::try_from(rank).unwrap_or(u32::MAX);
    let patience = if senior_up { SENIOR_PATIENCE } else { 1 };
    agreed >= election.saturating_mul(rank.saturating_mul(patience))
}

/// Initializes a pristine `shard` with the voters this node's list places there, once a
/// majority of them announce the same list ([`ShardHost::majority_agrees`]): nodes
/// whose configured lists differ wait (and Membership logs why) instead of forming
/// one group twice over different voters. A voter below the shard's first rank waits
/// for its seniors first ([`bootstrap_due`]); the group reaching it ends the wait.
async fn initialize(host: std::sync::Weak<ShardHost>, shard: ShardId) {
    let mut waited = Duration::ZERO;
    let mut agreed = Duration::ZERO;
    loop {
        let Some(host) = host.upgrade() else {
            return;
        };
        let placement = host.placement();
        let voters = placement.voters(shard);
        let rank = placement.rank(shard, host.me).unwrap_or(voters.len());
        let senior_up = voters[..rank.min(voters.len())]
            .iter()
            .any(|&senior| host.agrees(senior));
        let majority = host.majority_agrees(&voters);
        if majority && bootstrap_due(rank, senior_up, agreed, host.timing.election) {
            let Some(raft) = host.raft(shard) else {
                return;
            };
            let members: BTreeMap<NodeId, ShardNode> =
                voters.iter().map(|&id| (id, host.node(id))).collect();
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => tracing::error!(shard, error = %e, "the shard could not be bootstrapped"),
            }
            return;
        }
        // Already formed by the others (this node was added later, or restarted with
        // an empty data dir): nothing to bootstrap.
        if host.raft(shard).is_some_and(|raft| {
            raft.metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .next()
                .is_some()
        }) {
            return;
        }
        drop(host);
        if waited == Duration::from_secs(30) {
            tracing::warn!(
                shard,
                "shard not bootstrapped after 30 s: no majority of its voters is up with the \
                 same node list as this node (see GET /cluster, peers' same_node_list)"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
        if majority {
            agreed += Duration::from_millis(50);
        }
    }
}

/// How far (in log entries) a learner may trail the leader and still be made a voter.
const CAUGHT_UP: u64 = 64;
/// How long one membership change may take before the next round tries again.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a shard's leader does next to move the group to what the node list places
/// there (pure: `reconcile` runs it).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Nothing to do.
    Settled,
    /// Add these listed nodes, up and not in the group, as learners.
    AddLearners(Vec<NodeId>),
    /// Make exactly these the voters (removed voters stay learners).
    SetVoters(BTreeSet<NodeId>),
    /// Remove these learners, no longer listed.
    Remove(BTreeSet<NodeId>),
    /// The voters-to-be are not all up or caught up yet.
    Wait,
}

/// The next step for a group whose voters are `voters` and other members `learners`,
/// towards `want` voters and `listed` nodes, given who is `up` and each member's
/// `lag` behind the leader (None: unknown).
fn next_step(
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
    want: &BTreeSet<NodeId>,
    listed: &BTreeSet<NodeId>,
    up: &dyn Fn(NodeId) -> bool,
    lag: &dyn Fn(NodeId) -> Option<u64>,
) -> Step {
    let members: BTreeSet<NodeId> = voters.union(learners).copied().collect();
    let missing: Vec<NodeId> = listed
        .iter()
        .filter(|id| !members.contains(id) && up(**id))
        .copied()
        .collect();
    if !missing.is_empty() {
        return Step::AddLearners(missing);
    }
    if voters != want {
        let ready = want.iter().all(|id| {
            voters.contains(id)
                || (members.contains(id) && up(*id) && lag(*id).is_some_and(|l| l <= CAUGHT_UP))
        });
        return if ready {
            Step::SetVoters(want.clone())
        } else {
            Step::Wait
        };
    }
    let gone: BTreeSet<NodeId> = learners.difference(listed).copied().collect();
    if gone.is_empty() {
        Step::Settled
    } else {
        Step::Remove(gone)
    }
}

/// Whenever this node leads `shard`: moves the group to what the cluster's node list
/// places there, one step at a time ([`next_step`]). Runs on every change of the
/// shard's metrics and every second (the node list and who is up change too).
async fn reconcile(host: std::sync::Weak<ShardHost>, shard: ShardId) {
    let Some(raft) = host.upgrade().and_then(|h| h.raft(shard).cloned()) else {
        return;
    };
    let mut metrics = raft.metrics();
    loop {
        let Some(host) = host.upgrade() else {
            return;
        };
        // Cheap (shard 0's list against the current one): every shard's round looks.
        host.refresh_placement();
        let step = {
            let m = metrics.borrow_and_update();
            let membership = m.membership_config.membership();
            let agree = host.peers_agree.load(Ordering::Relaxed);
            if m.state != ServerState::Leader || membership.get_joint_config().len() > 1 || !agree {
                None
            } else {
                let placement = host.placement();
                let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
                let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
                let want: BTreeSet<NodeId> = placement.voters(shard).into_iter().collect();
                let listed: BTreeSet<NodeId> = placement.nodes().map(|(_, id)| id).collect();
                let last = m.last_log_index.unwrap_or(0);
                let replication = m.replication.clone().unwrap_or_default();
                let me = host.me;
                let up = |id: NodeId| id == me || host.reaches(id);
                let lag = |id: NodeId| {
                    if id == me {
                        return Some(0);
                    }
                    replication
                        .get(&id)
                        .map(|matched| last.saturating_sub(matched.map_or(0, |l| l.index)))
                };
                Some(next_step(&voters, &learners, &want, &listed, &up, &lag))
            }
        };
        let nodes: Vec<(NodeId, ShardNode)> = match &step {
            Some(Step::AddLearners(ids)) => ids.iter().map(|&id| (id, host.node(id))).collect(),
            _ => Vec::new(),
        };
        drop(host);
        let change = async {
            match step {
                Some(Step::AddLearners(_)) => {
                    for (id, node) in nodes {
                        if let Err(e) = raft.add_learner(id, node.clone(), false).await {
                            tracing::debug!(shard, node = %node.name, error = %e, "could not add a learner");
                        }
                    }
                }
                Some(Step::SetVoters(voters)) => {
                    tracing::info!(shard, voters = ?voters, "changing the shard's voters");
                    if let Err(e) = raft.change_membership(voters, true).await {
                        tracing::warn!(shard, error = %e, "the shard's voters did not change");
                    }
                }
                Some(Step::Remove(gone)) => {
                    tracing::info!(shard, nodes = ?gone, "removing nodes no longer listed from the shard");
                    if let Err(e) = raft
                        .change_membership(ChangeMembers::RemoveNodes(gone), false)
                        .await
                    {
                        tracing::warn!(shard, error = %e, "the nodes were not removed");
                    }
                }
                Some(Step::Settled | Step::Wait) | None => {}
            }
        };
        let _ = tokio::time::timeout(CHANGE_TIMEOUT, change).await;
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{bootstrap_due, next_step, Step, CAUGHT_UP, SENIOR_PATIENCE};
    use std::collections::BTreeSet;
    use std::time::Duration;

    #[test]
    fn voters_bootstrap_in_rank_order() {
        let election = Duration::from_millis(100);
        let ms = Duration::from_millis;
        // The preferred leader at once, whoever else is up.
        assert!(bootstrap_due(0, false, Duration::ZERO, election));
        assert!(bootstrap_due(0, true, Duration::ZERO, election));
        // The next voter, its senior down: one election time after the majority agreed;
        // the third two.
        assert!(!bootstrap_due(1, false, ms(99), election));
        assert!(bootstrap_due(1, false, ms(100), election));
        assert!(!bootstrap_due(2, false, ms(150), election));
        assert!(bootstrap_due(2, false, ms(200), election));
        // A senior that is up is given time to see the majority and go first; a stuck
        // one does not keep the shard from forming.
        let patience = election * SENIOR_PATIENCE;
        assert!(!bootstrap_due(1, true, ms(100), election));
        assert!(!bootstrap_due(1, true, patience - ms(1), election));
        assert!(bootstrap_due(1, true, patience, election));
        assert!(bootstrap_due(2, true, patience * 2, election));
        // A learner (ranked past the voters) never gets an overflow.
        assert!(!bootstrap_due(usize::MAX, true, ms(100), election));
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_group_moves_to_its_placement_one_safe_step_at_a_time() {
        let all_up = |_| true;
        let caught_up = |_| Some(0);
        // Settled.
        let (v, l) = (set(&[1, 2, 3]), set(&[4]));
        let listed = set(&[1, 2, 3, 4]);
        assert_eq!(
            next_step(&v, &l, &set(&[1, 2, 3]), &listed, &all_up, &caught_up),
            Step::Settled
        );
        // A new node listed: first a learner (only once it is up).
        let listed5 = set(&[1, 2, 3, 4, 5]);
        assert_eq!(
            next_step(&v, &l, &set(&[1, 2, 5]), &listed5, &all_up, &caught_up),
            Step::AddLearners(vec![5])
        );
        let five_down = |id| id != 5;
        assert_eq!(
            next_step(&v, &l, &set(&[1, 2, 5]), &listed5, &five_down, &caught_up),
            Step::Wait
        );
        // A learner that trails, or is down, is not made a voter yet.
        let l5 = set(&[4, 5]);
        let trailing = |id| Some(if id == 5 { CAUGHT_UP + 1 } else { 0 });
        assert_eq!(
            next_step(&v, &l5, &set(&[1, 2, 5]), &listed5, &all_up, &trailing),
            Step::Wait
        );
        assert_eq!(
            next_step(&v, &l5, &set(&[1, 2, 5]), &listed5, &all_up, &|_| None),
            Step::Wait
        );
        assert_eq!(
            next_step(&v, &l5, &set(&[1, 2, 5]), &listed5, &all_up, &caught_up),
            Step::SetVoters(set(&[1, 2, 5]))
        );
        // 3 no longer listed: once the voters are right, it is removed.
        let (v, l) = (set(&[1, 2, 5]), set(&[3, 4]));
        assert_eq!(
            next_step(
                &v,
                &l,
                &set(&[1, 2, 5]),
                &set(&[1, 2, 4, 5]),
                &all_up,
                &caught_up
            ),
            Step::Remove(set(&[3]))
        );
        // A voter that is down stays until its replacement is ready; the change itself
        // does not need the leaving voter.
        let three_down = |id| id != 3;
        let (v, l) = (set(&[1, 2, 3]), set(&[4]));
        assert_eq!(
            next_step(
                &v,
                &l,
                &set(&[1, 2, 4]),
                &set(&[1, 2, 4]),
                &three_down,
                &caught_up
            ),
            Step::SetVoters(set(&[1, 2, 4]))
        );
    }
}
