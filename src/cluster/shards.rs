//! Shards: which Raft group orders a room, and which nodes vote in each group.
//!
//! Pure and deterministic: every node computes the same [`Placement`] from the same
//! configured node list (`[[nodes]]`, or `cluster.voters` for the `[node]` + `seeds`
//! form; a single node is a one-voter cluster). Nothing here is guessed from seeds or
//! from the names seen on the network, so two nodes can never disagree about who votes
//! in a shard, and no partition can make two majorities.
//!
//! - A room's shard is `xxh3(room name) mod shards`: fixed for the life of the
//!   configuration (changing `cluster.shards` re-homes rooms: docs/operations.md).
//! - Shard `s` is a Raft group over `replicas` nodes: the nodes at positions
//!   `s, s+1, …, s+replicas-1` (mod the node count) of the node list sorted by name.
//!   Consecutive shards start on consecutive nodes, so every node is the first voter
//!   of `shards / nodes` shards (± 1) and votes in `shards * replicas / nodes`.
//! - The voters of a shard are ranked: the first is its *preferred leader*, and each
//!   voter's election timeout grows with its rank (cluster/raft/host.rs), so the first
//!   voter up leads: leaders spread evenly at start, and when a node fails, its shards
//!   pass to the next voter of each. The successors' order turns with every round of
//!   shards over the nodes (`(s / nodes) mod (replicas - 1)`), so a failed node's
//!   shards spread over the survivors instead of all going to its neighbour.
//!   openraft 0.9 has no leader transfer, so a node that comes back does not take its
//!   shards back until their leaders fail (docs/cluster.md).
//! - A node that is not a voter of a shard follows it as a Raft learner: every node
//!   applies every shard's committed log, so it can serve any room's members, history
//!   and resume from its own copy (docs/cluster.md says what that costs).
//!
//! Node ids are a stable hash of the node's name, so a node keeps its id across
//! restarts and configuration edits that do not rename it.

use std::collections::BTreeMap;
use xxhash_rust::xxh3::xxh3_64;

pub use super::raft::types::{NodeId, ShardId};

/// The id of the node called `name`.
pub fn node_id(name: &str) -> NodeId {
    // Seeded apart from room hashing, so the two never correlate.
    xxh3_64(format!("hubbub-node:{name}").as_bytes())
}

/// A hash of a node list with the shards and replicas it is placed with: nodes whose
/// hashes differ would place shards differently.
pub fn list_hash(placement: &Placement) -> u64 {
    let text = format!(
        "{}/{}/{}",
        placement.shards,
        placement.replicas,
        placement.names().join(",")
    );
    xxh3_64(text.as_bytes()).max(1)
}

/// The shard that orders `room`, of `shards`.
pub fn shard_of(room: &str, shards: u32) -> ShardId {
    (xxh3_64(room.as_bytes()) % u64::from(shards.max(1))) as ShardId
}

/// Why a node list cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no nodes are configured")]
    NoNodes,
    #[error("node {0} is listed twice")]
    Duplicate(String),
    #[error("nodes {0} and {1} hash to the same id; rename one")]
    IdCollision(String, String),
    #[error("cluster.shards must be at least 1")]
    NoShards,
    #[error("cluster.replicas must be at least 1")]
    NoReplicas,
}

/// Every shard's voters, computed from the configured nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    shards: u32,
    replicas: usize,
    /// Node names sorted, and their ids (same order).
    nodes: Vec<(String, NodeId)>,
    /// For each shard, the positions in `nodes` of its voters, preferred leader first.
    voters: Vec<Vec<usize>>,
}

impl Placement {
    /// Places `shards` groups of `replicas` voters (all nodes when fewer) over `nodes`.
    pub fn new(nodes: &[String], shards: u32, replicas: usize) -> Result<Self, PlacementError> {
        if nodes.is_empty() {
            return Err(PlacementError::NoNodes);
        }
        if shards == 0 {
            return Err(PlacementError::NoShards);
        }
        if replicas == 0 {
            return Err(PlacementError::NoReplicas);
        }
        let mut sorted: Vec<String> = nodes.to_vec();
        sorted.sort();
        let mut ids: BTreeMap<NodeId, &str> = BTreeMap::new();
        for pair in sorted.windows(2) {
            if pair[0] == pair[1] {
                return Err(PlacementError::Duplicate(pair[0].clone()));
            }
        }
        for name in &sorted {
            if let Some(other) = ids.insert(node_id(name), name) {
                return Err(PlacementError::IdCollision(other.to_owned(), name.clone()));
            }
        }
        let n = sorted.len();
        let r = replicas.min(n);
        let voters = (0..shards as usize)
            .map(|s| {
                // The first voter by position; the successors' order turns with each
                // round of shards over the nodes, so a node's shards pass to different
                // survivors when it fails.
                let turn = if r > 2 { (s / n) % (r - 1) } else { 0 };
                let mut rest: Vec<usize> = (1..r).map(|k| (s + k) % n).collect();
                rest.rotate_left(turn);
                std::iter::once(s % n).chain(rest).collect()
            })
            .collect();
        Ok(Self {
            shards,
            replicas,
            nodes: sorted
                .into_iter()
                .map(|name| (name.clone(), node_id(&name)))
                .collect(),
            voters,
        })
    }

    /// The same shards and replicas over another node list (a runtime change of the
    /// cluster's nodes).
    pub fn with_nodes(&self, nodes: &[String]) -> Result<Self, PlacementError> {
        Self::new(nodes, self.shards, self.replicas)
    }

    /// The node names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|(name, _)| name.clone()).collect()
    }

    /// How many shards there are.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The shard of `room`.
    pub fn shard_of(&self, room: &str) -> ShardId {
        shard_of(room, self.shards)
    }

    /// Every configured node: name and id, sorted by name.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, NodeId)> {
        self.nodes.iter().map(|(name, id)| (name.as_str(), *id))
    }

    /// The name of node `id`, if it is configured.
    pub fn name_of(&self, id: NodeId) -> Option<&str> {
        self.nodes
            .iter()
            .find(|(_, nid)| *nid == id)
            .map(|(name, _)| name.as_str())
    }

    /// The voters of `shard` (preferred leader first); empty for an unknown shard.
    pub fn voters(&self, shard: ShardId) -> Vec<NodeId> {
        self.voters
            .get(shard as usize)
            .map(|positions| positions.iter().map(|&p| self.nodes[p].1).collect())
            .unwrap_or_default()
    }

    /// The nodes that follow `shard` as learners: every configured node not a voter.
    pub fn learners(&self, shard: ShardId) -> Vec<NodeId> {
        let voters = self.voters(shard);
        self.nodes
            .iter()
            .map(|(_, id)| *id)
            .filter(|id| !voters.contains(id))
            .collect()
    }

    /// The node that bootstraps `shard` and campaigns first.
    pub fn preferred_leader(&self, shard: ShardId) -> Option<NodeId> {
        self.voters(shard).first().copied()
    }

    /// The rank of `id` among `shard`'s voters (0: the preferred leader); None for a
    /// node that does not vote in it.
    pub fn rank(&self, shard: ShardId, id: NodeId) -> Option<usize> {
        self.voters(shard).iter().position(|v| *v == id)
    }

    /// Whether node `id` votes in `shard`.
    pub fn is_voter(&self, shard: ShardId, id: NodeId) -> bool {
        self.voters(shard).contains(&id)
    }

    /// The smallest number of voters of `shard` that is a majority.
    pub fn quorum(&self, shard: ShardId) -> usize {
        self.voters(shard).len() / 2 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn three_nodes_three_replicas_every_node_votes_everywhere() {
        let p = Placement::new(&names(&["c", "a", "b"]), 16, 3).unwrap();
        for s in 0..16 {
            let mut voters = p.voters(s);
            voters.sort();
            let mut all: Vec<NodeId> = p.nodes().map(|(_, id)| id).collect();
            all.sort();
            assert_eq!(voters, all);
            assert!(p.learners(s).is_empty());
            assert_eq!(p.quorum(s), 2);
        }
    }

    #[test]
    fn fewer_nodes_than_replicas_uses_them_all_and_one_node_is_a_one_voter_cluster() {
        let p = Placement::new(&names(&["solo"]), 4, 3).unwrap();
        for s in 0..4 {
            assert_eq!(p.voters(s), vec![node_id("solo")]);
            assert_eq!(p.quorum(s), 1);
        }
    }

    #[test]
    fn shards_and_preferred_leaders_spread_evenly() {
        let nodes = names(&["a", "b", "c", "d", "e"]);
        let p = Placement::new(&nodes, 64, 3).unwrap();
        let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut votes: BTreeMap<NodeId, usize> = BTreeMap::new();
        for s in 0..64 {
            *leads.entry(p.preferred_leader(s).unwrap()).or_default() += 1;
            for v in p.voters(s) {
                *votes.entry(v).or_default() += 1;
            }
            assert_eq!(p.voters(s).len(), 3);
            assert_eq!(p.learners(s).len(), 2);
        }
        // 64 shards over 5 nodes: 12 or 13 each; 192 votes: 38 or 39 each.
        assert!(leads.values().all(|&n| (12..=13).contains(&n)), "{leads:?}");
        assert!(votes.values().all(|&n| (38..=39).contains(&n)), "{votes:?}");
    }

    #[test]
    fn placement_is_the_same_whatever_the_order_nodes_are_listed_in() {
        let a = Placement::new(&names(&["a", "b", "c", "d"]), 8, 3).unwrap();
        let b = Placement::new(&names(&["d", "c", "b", "a"]), 8, 3).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn rooms_hash_onto_every_shard_and_stay_put() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..1000 {
            let room = format!("room-{i}");
            let s = shard_of(&room, 16);
            assert!(s < 16);
            assert_eq!(s, shard_of(&room, 16));
            seen.insert(s);
        }
        assert_eq!(seen.len(), 16);
    }

    #[test]
    fn bad_lists_are_errors() {
        assert_eq!(Placement::new(&[], 4, 3), Err(PlacementError::NoNodes));
        assert_eq!(
            Placement::new(&names(&["a", "a"]), 4, 3),
            Err(PlacementError::Duplicate("a".into()))
        );
        assert_eq!(
            Placement::new(&names(&["a"]), 0, 3),
            Err(PlacementError::NoShards)
        );
        assert_eq!(
            Placement::new(&names(&["a"]), 4, 0),
            Err(PlacementError::NoReplicas)
        );
    }

    #[test]
    fn names_and_ids_map_both_ways() {
        let p = Placement::new(&names(&["a", "b"]), 2, 3).unwrap();
        assert_eq!(p.name_of(node_id("b")), Some("b"));
        assert_eq!(p.name_of(42), None);
        assert!(p.is_voter(1, node_id("a")));
        assert!(p.voters(99).is_empty());
    }

    #[test]
    fn a_failed_nodes_shards_pass_to_different_survivors() {
        let p = Placement::new(&names(&["a", "b", "c"]), 16, 3).unwrap();
        let mut successors: BTreeMap<NodeId, usize> = BTreeMap::new();
        for s in 0..16 {
            let voters = p.voters(s);
            assert_eq!(voters.len(), 3);
            assert_eq!(p.rank(s, voters[1]), Some(1));
            if voters[0] == node_id("a") {
                *successors.entry(voters[1]).or_default() += 1;
            }
        }
        // a first-votes 6 shards; b and c each take 3 of them over.
        assert_eq!(successors.get(&node_id("b")), Some(&3), "{successors:?}");
        assert_eq!(successors.get(&node_id("c")), Some(&3), "{successors:?}");
        assert_eq!(p.rank(0, node_id("nobody")), None);
    }
}
