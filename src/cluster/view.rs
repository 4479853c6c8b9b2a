//! Views: who one node believes is up, a pure value.
//!
//! A view is the set of nodes one node currently believes are up (itself included),
//! each with its incarnation. Presence and direct messages go to the nodes of the
//! view; room order does not depend on it (the room logs are Raft groups, see
//! cluster/raft). `has_quorum` says whether the view holds a majority of the
//! configured nodes, for `/cluster`.

use std::collections::BTreeMap;
use xxhash_rust::xxh3::xxh3_64;

/// One node's belief of who is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// A hash of `members`; equal views have equal ids on every node.
    pub id: u64,
    /// Node name → incarnation, this node included.
    pub members: BTreeMap<String, u64>,
    /// How many members make a majority of the cluster.
    pub quorum: usize,
}

impl View {
    /// A view of `members` in a cluster of `cluster_size` nodes.
    pub fn new(members: BTreeMap<String, u64>, cluster_size: usize) -> Self {
        let size = cluster_size.max(members.len()).max(1);
        Self {
            id: view_id(&members),
            quorum: size / 2 + 1,
            members,
        }
    }

    /// The view of a node alone (also the single-node, non-cluster view).
    pub fn solo(name: &str, incarnation: u64, cluster_size: usize) -> Self {
        Self::new(
            BTreeMap::from([(name.to_owned(), incarnation)]),
            cluster_size,
        )
    }

    /// True when this view holds a majority of the cluster.
    pub fn has_quorum(&self) -> bool {
        self.members.len() >= self.quorum
    }
}

/// A stable id for a set of (name, incarnation) pairs.
pub fn view_id(members: &BTreeMap<String, u64>) -> u64 {
    let mut bytes = Vec::with_capacity(members.len() * 24);
    for (name, inc) in members {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&inc.to_le_bytes());
    }
    xxh3_64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(names: &[&str], size: usize) -> View {
        View::new(names.iter().map(|n| (n.to_string(), 1)).collect(), size)
    }

    #[test]
    fn quorum_is_a_majority_of_the_cluster() {
        assert!(view(&["a", "b"], 3).has_quorum());
        assert!(!view(&["a"], 3).has_quorum());
        assert!(view(&["a"], 1).has_quorum());
        assert!(!view(&["a", "b"], 4).has_quorum());
        assert!(view(&["a", "b", "c"], 4).has_quorum());
    }

    #[test]
    fn equal_views_have_equal_ids() {
        let one = view(&["a", "b", "c"], 3);
        let two = view(&["c", "a", "b"], 3);
        assert_eq!(one.id, two.id);
        let restarted = View::new(
            [
                ("a".to_string(), 1),
                ("b".to_string(), 2),
                ("c".to_string(), 1),
            ]
            .into(),
            3,
        );
        assert_ne!(one.id, restarted.id, "a restart is a new view");
    }
}
