//! The in-process network: several nodes' [`ShardHost`]s in one process, their Raft
//! calls handed from one to another directly instead of over ractor_cluster.
//!
//! It is the in-process test tier's port (issue #9): scenario tests run three nodes in
//! one process, cut and heal links between them ([`LocalNet::cut`] drops calls
//! silently both ways, as a real partition does), and check what each node applied,
//! in a fraction of the time real processes take.

use super::host::ShardHost;
use super::network::RaftLink;
use super::types::NodeId;
use crate::cluster::wire::{RaftAnswer, RaftCall};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock, Weak};

/// The nodes of one in-process cluster and the links cut between them.
#[derive(Default)]
pub struct LocalNet {
    hosts: RwLock<HashMap<NodeId, Weak<ShardHost>>>,
    cut: RwLock<BTreeSet<(NodeId, NodeId)>>,
}

impl LocalNet {
    /// An empty network.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The link of node `me`.
    pub fn link(self: &Arc<Self>, me: NodeId) -> Arc<LocalLink> {
        Arc::new(LocalLink {
            me,
            net: self.clone(),
        })
    }

    /// Makes `host` reachable.
    pub fn attach(&self, host: &Arc<ShardHost>) {
        if let Ok(mut hosts) = self.hosts.write() {
            hosts.insert(host.me(), Arc::downgrade(host));
        }
    }

    /// Makes node `id` unreachable (it stopped).
    pub fn detach(&self, id: NodeId) {
        if let Ok(mut hosts) = self.hosts.write() {
            hosts.remove(&id);
        }
    }

    /// Drops everything between `a` and `b`, both ways, until [`LocalNet::heal`].
    pub fn cut(&self, a: NodeId, b: NodeId) {
        if let Ok(mut cut) = self.cut.write() {
            cut.insert((a.min(b), a.max(b)));
        }
    }

    /// Restores the link between `a` and `b`.
    pub fn heal(&self, a: NodeId, b: NodeId) {
        if let Ok(mut cut) = self.cut.write() {
            cut.remove(&(a.min(b), a.max(b)));
        }
    }

    fn is_cut(&self, a: NodeId, b: NodeId) -> bool {
        self.cut
            .read()
            .map(|cut| cut.contains(&(a.min(b), a.max(b))))
            .unwrap_or(false)
    }

    fn host(&self, id: NodeId) -> Option<Arc<ShardHost>> {
        self.hosts.read().ok()?.get(&id)?.upgrade()
    }
}

/// One node's end of a [`LocalNet`].
pub struct LocalLink {
    me: NodeId,
    net: Arc<LocalNet>,
}

impl RaftLink for LocalLink {
    fn send_call(&self, to: NodeId, call: RaftCall) -> bool {
        let Some(host) = self.net.host(to) else {
            return false;
        };
        // A cut link loses the call silently: the caller times out.
        if !self.net.is_cut(self.me, to) {
            host.serve(call);
        }
        true
    }

    fn send_answer(&self, to: NodeId, answer: RaftAnswer) -> bool {
        let Some(host) = self.net.host(to) else {
            return false;
        };
        if !self.net.is_cut(self.me, to) {
            host.answered(answer);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::raft::host::{ProposeError, Timing, Wiring, PROPOSE_DEADLINE};
    use crate::cluster::raft::state_machine::{Committed, Retention};
    use crate::cluster::raft::types::{CommandOutcome, ShardCommand};
    use crate::cluster::raft::LogDb;
    use crate::cluster::shards::{node_id, Placement};
    use crate::protocol::UserInfo;
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    use tokio::sync::watch;

    const SHARDS: u32 = 4;
    const DEADLINE: Duration = Duration::from_secs(20);

    fn timing() -> Timing {
        Timing {
            heartbeat: Duration::from_millis(50),
            election: Duration::from_millis(300),
        }
    }

    /// What one node's state machines handed to the node, in order.
    #[derive(Default)]
    struct Seen(Mutex<Vec<Committed>>);

    struct Node {
        name: String,
        host: Arc<ShardHost>,
        seen: Arc<Seen>,
        /// Who this node's failure detector says is up (every node at first).
        reach: watch::Sender<BTreeSet<NodeId>>,
    }

    async fn cluster(net: &Arc<LocalNet>, names: &[&str], replicas: usize) -> Vec<Node> {
        let mut nodes = Vec::new();
        for name in names {
            nodes.push(start_node(net, name, names, names, replicas, false, None).await);
        }
        nodes
    }

    /// [`cluster`] with every node keeping its shards' rooms to `retention`.
    async fn cluster_retaining(
        net: &Arc<LocalNet>,
        names: &[&str],
        retention: Retention,
    ) -> Vec<Node> {
        let mut nodes = Vec::new();
        for name in names {
            nodes.push(start_node(net, name, names, names, 3, false, Some(retention)).await);
        }
        nodes
    }

    /// Starts node `name` with `listed` as its configured node list, believing every
    /// node of `up` is up; its shards keep their rooms to `retention` (None: 1,000
    /// messages a room).
    async fn start_node(
        net: &Arc<LocalNet>,
        name: &str,
        listed: &[&str],
        up: &[&str],
        replicas: usize,
        join: bool,
        retention: Option<Retention>,
    ) -> Node {
        let retention = retention.unwrap_or(Retention::messages(1000));
        let all: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
        let placement = Placement::new(&all, SHARDS, replicas).unwrap();
        let everyone: BTreeSet<NodeId> = up.iter().map(|n| node_id(n)).collect();
        let (reach, reach_rx) = watch::channel(everyone);
        let seen = Arc::new(Seen::default());
        let sink_seen = seen.clone();
        let sink = move |_shard, committed: Vec<Committed>| {
            sink_seen.0.lock().unwrap().extend(committed);
        };
        let host = ShardHost::start(
            name,
            placement,
            &LogDb::memory(),
            retention,
            timing(),
            Wiring {
                sink: Arc::new(sink),
                link: net.link(node_id(name)),
                reach: Some(reach_rx),
                names: Arc::default(),
            },
            join,
        )
        .await
        .unwrap();
        // What Membership tells a host from heartbeats: every node up follows one list.
        host.set_list_agreement(up.iter().map(|n| node_id(n)).collect(), true);
        net.attach(&host);
        Node {
            name: name.to_string(),
            host,
            seen,
            reach,
        }
    }

    async fn every_shard_led(nodes: &[Node]) {
        until("a leader for every shard on every node", || {
            nodes
                .iter()
                .all(|n| n.host.shards_with_leader() == SHARDS as usize)
        })
        .await;
    }

    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        while !check() {
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn publish(room: &str, n: usize) -> ShardCommand {
        ShardCommand::Publish {
            room: room.into(),
            from: UserInfo {
                id: "u".into(),
                name: "U".into(),
            },
            content: format!("message {n}"),
            id: format!("id-{room}-{n}"),
            ts: n as u64,
            idempotency_key: None,
        }
    }

    fn seqs(node: &Node, room: &str) -> Vec<u64> {
        node.seen
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.room == room)
            .map(|c| c.message.seq)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_order_every_room_once_and_every_node_applies_it_in_order() {
        let net = LocalNet::new();
        let nodes = cluster(&net, &["a", "b", "c"], 3).await;
        every_shard_led(&nodes).await;
        let room = "lobby";
        let shard = nodes[0].host.placement().shard_of(room);
        // 60 publishes from all three nodes at once: most are forwarded to the leader.
        let mut tasks = Vec::new();
        for i in 0..60 {
            let host = nodes[i % 3].host.clone();
            tasks.push(tokio::spawn(async move {
                host.propose(shard, publish(room, i)).await
            }));
        }
        let mut ordered = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                Ok(CommandOutcome::Published { seq, .. }) => ordered.push(seq),
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        ordered.sort_unstable();
        assert_eq!(ordered, (1..=60).collect::<Vec<u64>>());
        for node in &nodes {
            until(&format!("{} to apply 60", node.name), || {
                seqs(node, room).len() == 60
            })
            .await;
            assert_eq!(
                seqs(node, room),
                (1..=60).collect::<Vec<u64>>(),
                "{}",
                node.name
            );
            let reader = node.host.reader(shard).unwrap();
            assert_eq!(reader.seq(room), 60);
        }
    }

    /// Past a shard's bytes, every replica forgets the same messages at the same
    /// entry: three nodes end with the same rooms, seqs and held bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_replica_forgets_the_same_past_the_shards_bytes() {
        let net = LocalNet::new();
        let retention = Retention {
            shard_bytes: 6_000,
            ..Retention::messages(1000)
        };
        let nodes = cluster_retaining(&net, &["a", "b", "c"], retention).await;
        every_shard_led(&nodes).await;
        let placement = nodes[0].host.placement().clone();
        let shard = placement.shard_of("lobby");
        // Three rooms of the one shard.
        let rooms: Vec<String> = (0..)
            .map(|i| format!("room-{i}"))
            .filter(|r| placement.shard_of(r) == shard)
            .take(3)
            .collect();
        for i in 0..90 {
            let host = nodes[i % 3].host.clone();
            let outcome = host.propose(shard, publish(&rooms[i % 3], i)).await;
            assert!(
                matches!(outcome, Ok(CommandOutcome::Published { .. })),
                "{outcome:?}"
            );
        }
        let view = |node: &Node| {
            let reader = node.host.reader(shard).unwrap();
            let rooms: Vec<(u64, Vec<u64>)> = rooms
                .iter()
                .map(|r| {
                    let joined = reader.join(r, None);
                    (joined.seq, joined.messages.iter().map(|m| m.seq).collect())
                })
                .collect();
            (reader.last_applied(), reader.held_bytes(), rooms)
        };
        until("every node to apply the last publish", || {
            nodes
                .iter()
                .all(|n| view(n).2.iter().all(|(seq, _)| *seq == 30))
        })
        .await;
        let first = view(&nodes[0]);
        assert!(first.1 <= 6_000, "{} bytes held", first.1);
        let held: usize = first.2.iter().map(|(_, m)| m.len()).sum();
        assert!(held < 90, "nothing was forgotten: {held} held");
        for node in &nodes[1..] {
            until(&format!("{} to agree with a", node.name), || {
                view(node) == view(&nodes[0])
            })
            .await;
        }
    }

    fn voters(node: &Node, shard: u32) -> BTreeSet<NodeId> {
        let raft = node.host.raft(shard).unwrap();
        let metrics = raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().voter_ids().collect()
    }

    fn members(node: &Node, shard: u32) -> BTreeSet<NodeId> {
        let raft = node.host.raft(shard).unwrap();
        let metrics = raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_added_and_removed_at_runtime_move_every_shards_voters() {
        let net = LocalNet::new();
        let four = ["a", "b", "c", "d"];
        let mut nodes = Vec::new();
        for name in ["a", "b", "c"] {
            nodes.push(start_node(&net, name, &["a", "b", "c"], &four, 3, false, None).await);
        }
        every_shard_led(&nodes).await;
        let room = "lobby";
        let shard = nodes[0].host.placement().shard_of(room);
        for i in 0..20 {
            let outcome = nodes[0].host.propose(shard, publish(room, i)).await;
            assert!(
                matches!(outcome, Ok(CommandOutcome::Published { .. })),
                "{outcome:?}"
            );
        }

        // d joins (its own list already names it) and bootstraps nothing; then the
        // list is changed on b, and every shard moves to the four-node placement.
        nodes.push(start_node(&net, "d", &four, &four, 3, true, None).await);
        assert!(
            (0..SHARDS).all(|s| members(&nodes[3], s).is_empty()),
            "a joining node bootstraps no shard"
        );
        let set = nodes[1].host.set_nodes(names(&["d", "c", "b", "a"])).await;
        assert_eq!(set, Ok(names(&four)));
        let want = Placement::new(&names(&four), SHARDS, 3).unwrap();
        until(
            "every shard's voters to follow the four-node list everywhere",
            || {
                nodes.iter().all(|n| {
                    (0..SHARDS).all(|s| {
                        voters(n, s) == want.voters(s).into_iter().collect::<BTreeSet<_>>()
                            && members(n, s).len() == 4
                    })
                })
            },
        )
        .await;
        for node in &nodes {
            assert_eq!(node.host.node_list().0, names(&four), "{}", node.name);
        }
        assert_eq!(
            nodes[0].host.node_list().1,
            crate::cluster::raft::host::NodeListSource::Runtime
        );
        // d holds the history from before it existed.
        until("d to apply the earlier messages", || {
            seqs(&nodes[3], room) == (1..=20).collect::<Vec<u64>>()
        })
        .await;

        // c is removed, from d: it leaves every group, and the rest go on.
        let three = ["a", "b", "d"];
        assert_eq!(
            nodes[3].host.set_nodes(names(&three)).await,
            Ok(names(&three))
        );
        let want = Placement::new(&names(&three), SHARDS, 3).unwrap();
        let c = node_id("c");
        until("c to leave every shard, on a, b and d", || {
            [0, 1, 3].iter().all(|&i| {
                (0..SHARDS).all(|s| {
                    !members(&nodes[i], s).contains(&c)
                        && voters(&nodes[i], s)
                            == want.voters(s).into_iter().collect::<BTreeSet<_>>()
                })
            })
        })
        .await;
        for (i, node) in nodes.iter().enumerate().filter(|(i, _)| *i != 2) {
            let outcome = node.host.propose(shard, publish(room, 100 + i)).await;
            assert!(
                matches!(outcome, Ok(CommandOutcome::Published { .. })),
                "{}: {outcome:?}",
                node.name
            );
        }
        // A list that cannot be placed is refused before anything is proposed.
        assert!(matches!(
            nodes[0].host.set_nodes(names(&["a", "a"])).await,
            Err(crate::cluster::raft::host::SetNodesError::Invalid(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_is_no_voter_follows_as_a_learner() {
        let net = LocalNet::new();
        let nodes = cluster(&net, &["a", "b", "c", "d"], 3).await;
        every_shard_led(&nodes).await;
        let room = "dev";
        let shard = nodes[0].host.placement().shard_of(room);
        let learner = nodes
            .iter()
            .find(|n| !n.host.placement().is_voter(shard, n.host.me()))
            .unwrap();
        for i in 0..10 {
            let outcome = learner.host.propose(shard, publish(room, i)).await;
            assert!(
                matches!(outcome, Ok(CommandOutcome::Published { .. })),
                "{outcome:?}"
            );
        }
        until("the learner to apply all", || {
            seqs(learner, room).len() == 10
        })
        .await;
        assert_eq!(seqs(learner, room), (1..=10).collect::<Vec<u64>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_off_leader_loses_its_shard_and_catches_up_when_healed() {
        let net = LocalNet::new();
        let nodes = cluster(&net, &["a", "b", "c"], 3).await;
        every_shard_led(&nodes).await;
        let room = "ops";
        let shard = nodes[0].host.placement().shard_of(room);
        let leader = nodes[0].host.leader(shard).unwrap();
        let (cut_off, rest): (Vec<&Node>, Vec<&Node>) =
            nodes.iter().partition(|n| n.host.me() == leader);
        let cut_off = cut_off[0];
        for i in 0..5 {
            assert!(cut_off.host.propose(shard, publish(room, i)).await.is_ok());
        }
        for other in &rest {
            net.cut(leader, other.host.me());
        }
        // The majority elects a new leader and goes on ordering.
        for i in 5..15 {
            let outcome = rest[0].host.propose(shard, publish(room, i)).await;
            assert!(
                matches!(outcome, Ok(CommandOutcome::Published { .. })),
                "{outcome:?}"
            );
        }
        assert_ne!(rest[0].host.leader(shard), Some(leader));
        // The minority orders nothing: its proposal fails once the deadline passes.
        let minority = cut_off.host.propose(shard, publish(room, 99)).await;
        assert!(
            matches!(minority, Err(ProposeError::Unavailable(_))),
            "{minority:?}"
        );
        for other in &rest {
            net.heal(leader, other.host.me());
        }
        for node in &nodes {
            until(&format!("{} to hold 15", node.name), || {
                node.host.reader(shard).unwrap().seq(room) >= 15
            })
            .await;
        }
        // Nobody ever saw two messages with one seq, and every node saw 1..=15 in order
        // (the minority's message 99 was never committed, or came after 15).
        for node in &nodes {
            let seen = seqs(node, room);
            assert_eq!(
                &seen[..15],
                &(1..=15).collect::<Vec<u64>>()[..],
                "{}",
                node.name
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_sees_no_majority_refuses_at_once_and_answers_a_waiting_write() {
        let net = LocalNet::new();
        let nodes = cluster(&net, &["a", "b", "c"], 3).await;
        every_shard_led(&nodes).await;
        let room = "island";
        let shard = nodes[0].host.placement().shard_of(room);
        let leader = nodes[0].host.leader(shard).unwrap();
        let island = nodes.iter().find(|n| n.host.me() == leader).unwrap();
        assert!(island.host.propose(shard, publish(room, 0)).await.is_ok());
        assert_eq!(island.host.unavailable(shard), None);

        // Cut off, but its detector has not noticed yet: the write waits...
        for other in nodes.iter().filter(|n| n.host.me() != leader) {
            net.cut(leader, other.host.me());
        }
        let host = island.host.clone();
        let waiting = tokio::spawn(async move { host.propose(shard, publish(room, 1)).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiting.is_finished(),
            "a write without a majority returned early"
        );
        // ...until the detector says the others are down: answered then, not at the
        // deadline.
        let noticed = Instant::now();
        island.reach.send_replace(BTreeSet::from([leader]));
        let outcome = waiting.await.unwrap();
        assert!(
            matches!(outcome, Err(ProposeError::Unavailable(_))),
            "{outcome:?}"
        );
        assert!(
            noticed.elapsed() < PROPOSE_DEADLINE / 2,
            "{:?}",
            noticed.elapsed()
        );
        // From then on it refuses at once, and says why.
        let refused = Instant::now();
        let outcome = island.host.propose(shard, publish(room, 2)).await;
        assert!(
            matches!(outcome, Err(ProposeError::Unavailable(ref r)) if r.contains("majority")),
            "{outcome:?}"
        );
        assert!(
            refused.elapsed() < PROPOSE_DEADLINE / 2,
            "{:?}",
            refused.elapsed()
        );
        let reason = island.host.unavailable(shard).expect("unavailable");
        assert!(reason.contains("reaches 1 of the 3"), "{reason}");
        // It had been able to order messages before: not "starting".
        assert!(reason.starts_with("no quorum: "), "{reason}");
        // The others never stop.
        let majority = nodes.iter().find(|n| n.host.me() != leader).unwrap();
        let outcome = majority.host.propose(shard, publish(room, 3)).await;
        assert!(
            matches!(outcome, Ok(CommandOutcome::Published { .. })),
            "{outcome:?}"
        );
    }

    /// A clustered node whose list names only itself hears no heartbeat announcing a
    /// list, and needs none: it alone is its shards' majority.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clustered_node_listed_alone_bootstraps_without_hearing_a_peer() {
        let net = LocalNet::new();
        let placement = Placement::new(&["a".to_string()], SHARDS, 3).unwrap();
        let (_reach, reach_rx) = watch::channel(BTreeSet::from([node_id("a")]));
        let host = ShardHost::start(
            "a",
            placement,
            &LogDb::memory(),
            Retention::messages(10),
            timing(),
            Wiring {
                sink: Arc::new(|_shard, _committed: Vec<Committed>| {}),
                link: net.link(node_id("a")),
                reach: Some(reach_rx),
                names: Arc::default(),
            },
            false,
        )
        .await
        .unwrap();
        until("every shard to elect the one node", || {
            host.shards_with_leader() == SHARDS as usize
        })
        .await;
    }

    /// Node "a" of the three-node list a, b, c, started alone (nobody answers its
    /// calls), its failure detector counting the nodes of `up` as up (keep the
    /// sender: dropped, the host stops hearing changes).
    async fn lone_voter(
        up: &[&str],
    ) -> (Arc<ShardHost>, Placement, watch::Sender<BTreeSet<NodeId>>) {
        let net = LocalNet::new();
        let all: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let placement = Placement::new(&all, SHARDS, 3).unwrap();
        let (reach, reach_rx) = watch::channel(up.iter().map(|n| node_id(n)).collect());
        let host = ShardHost::start(
            "a",
            placement.clone(),
            &LogDb::memory(),
            Retention::messages(1000),
            timing(),
            Wiring {
                sink: Arc::new(|_shard, _committed: Vec<Committed>| {}),
                link: net.link(node_id("a")),
                reach: Some(reach_rx),
                names: Arc::default(),
            },
            false,
        )
        .await
        .unwrap();
        (host, placement, reach)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_has_not_yet_seen_a_majority_says_it_is_starting() {
        // As at a real start: the failure detector counts no peer yet.
        let (host, placement, _reach) = lone_voter(&["a"]).await;
        let shard = placement.shard_of("lobby");
        let reason = host.unavailable(shard).expect("unavailable");
        assert!(
            reason.starts_with("this node is starting: ") && reason.contains("reaches 1 of the 3"),
            "{reason}"
        );
        let refused = host.propose(shard, publish("lobby", 0)).await;
        assert!(
            matches!(refused, Err(ProposeError::Unavailable(ref r)) if r.starts_with("this node is starting: ")),
            "{refused:?}"
        );
    }

    /// A shard's queue holds at most QUEUE_BYTES of commands while its proposer is
    /// busy (here: waiting for a leader that never comes); past it a command is
    /// refused at once, and one alone in the queue always goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shard_queue_refuses_past_its_bytes() {
        use crate::cluster::raft::host::QUEUE_BYTES;
        // b and c count as up, so writes wait for a leader instead of being refused.
        let (host, placement, _reach) = lone_voter(&["a", "b", "c"]).await;
        let shard = placement.shard_of("lobby");
        let sized = |n: usize, bytes: usize| ShardCommand::Publish {
            room: "lobby".into(),
            from: UserInfo {
                id: "u".into(),
                name: "U".into(),
            },
            content: "x".repeat(bytes),
            id: format!("id-{n}"),
            ts: n as u64,
            idempotency_key: None,
        };
        // Larger than the whole queue: alone, it goes (to the proposer, which waits).
        let first = host
            .enqueue(shard, sized(0, QUEUE_BYTES + 1))
            .expect("alone, it goes");
        let first = tokio::spawn(first);
        until("the proposer took the first command", || {
            host.enqueue(shard, sized(1, 1)).is_ok()
        })
        .await;
        let quarter = QUEUE_BYTES / 4 - 1_000;
        let mut queued = Vec::new();
        for n in 2..5 {
            let answer = host
                .enqueue(shard, sized(n, quarter))
                .expect("within the bytes");
            queued.push(tokio::spawn(answer));
        }
        let refused = host.enqueue(shard, sized(9, 2 * quarter)).err();
        assert!(
            matches!(refused, Some(ProposeError::Unavailable(ref r)) if r.contains("overloaded")),
            "{refused:?}"
        );
        // Every queued command is answered in the end (unavailable: no leader came).
        let answered = tokio::time::timeout(3 * PROPOSE_DEADLINE, first).await;
        assert!(matches!(answered, Ok(Ok(Err(_)))), "{answered:?}");
        for answer in queued {
            let answered = tokio::time::timeout(3 * PROPOSE_DEADLINE, answer).await;
            assert!(matches!(answered, Ok(Ok(Err(_)))), "{answered:?}");
        }
    }
}
