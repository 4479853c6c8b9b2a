//! Views, quorum and room ownership: pure functions of who is up.
//!
//! A view is the set of nodes one node currently believes are up (itself included),
//! each with its incarnation. Nodes whose views are equal compute the same owner for
//! every room (rendezvous hashing over the view's node names), so ownership needs no
//! directory and no coordinator. A view has a quorum when it holds a majority of the
//! cluster's size; a node without one owns nothing (see docs/cluster.md).

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

    /// The owner of `room` in this view: the member with the highest rendezvous
    /// score for it.
    pub fn owner_of(&self, room: &str) -> Option<&str> {
        self.members
            .keys()
            .max_by_key(|node| (rendezvous_score(node, room), node.as_str()))
            .map(String::as_str)
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

/// Highest random weight of `node` for `room`: the same on every node and every run.
pub fn rendezvous_score(node: &str, room: &str) -> u64 {
    let mut bytes = Vec::with_capacity(node.len() + room.len() + 1);
    bytes.extend_from_slice(node.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(room.as_bytes());
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
    fn equal_views_agree_on_owners_and_ids() {
        let one = view(&["a", "b", "c"], 3);
        let two = view(&["c", "a", "b"], 3);
        assert_eq!(one.id, two.id);
        for room in ["lobby", "news:1", "x"] {
            assert_eq!(one.owner_of(room), two.owner_of(room));
        }
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

    #[test]
    fn losing_a_node_moves_only_its_rooms() {
        let all = view(&["a", "b", "c"], 3);
        let without_c = view(&["a", "b"], 3);
        let rooms: Vec<String> = (0..300).map(|i| format!("room-{i}")).collect();
        let mut moved = 0;
        for room in &rooms {
            let before = all.owner_of(room).unwrap();
            let after = without_c.owner_of(room).unwrap();
            if before != "c" {
                assert_eq!(before, after, "{room} moved although its owner stayed");
            } else {
                moved += 1;
            }
        }
        // Roughly a third of the rooms lived on c.
        assert!((50..150).contains(&moved), "{moved} of 300 rooms were on c");
    }
}
