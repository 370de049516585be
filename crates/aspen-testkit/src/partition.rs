//! Which links are cut: the pure bookkeeping behind partition, isolate and heal, kept apart from
//! the tc plumbing so it can be unit-tested without root.

use std::collections::BTreeSet;

use crate::error::TestkitError;

/// The set of severed node-to-node links and of nodes cut off from the test process.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct LinkState {
    nodes: usize,
    /// Unordered pairs, stored as `(low, high)`.
    cut: BTreeSet<(usize, usize)>,
    no_clients: BTreeSet<usize>,
}

impl LinkState {
    /// Fully connected state for `nodes` nodes.
    pub(crate) fn new(nodes: usize) -> Self {
        Self { nodes, ..Self::default() }
    }

    /// Makes room for more nodes; new nodes start fully connected.
    pub(crate) fn set_len(&mut self, nodes: usize) {
        self.nodes = self.nodes.max(nodes);
    }

    /// Replaces all node-to-node cuts: nodes in different groups cannot talk. Nodes listed in
    /// no group keep every link. Client isolation is left as is.
    pub(crate) fn set_partition(&mut self, groups: &[&[usize]]) -> Result<(), TestkitError> {
        let mut group_of = vec![None; self.nodes];
        for (g, members) in groups.iter().enumerate() {
            for &i in *members {
                let slot = group_of.get_mut(i).ok_or(TestkitError::NoSuchNode { index: i, len: self.nodes })?;
                if slot.is_some() {
                    return Err(TestkitError::BadPartition(format!("node {i} appears more than once in {groups:?}")));
                }
                *slot = Some(g);
            }
        }
        self.cut.clear();
        for a in 0..self.nodes {
            for b in a + 1..self.nodes {
                if let (Some(ga), Some(gb)) = (group_of[a], group_of[b])
                    && ga != gb
                {
                    self.cut.insert((a, b));
                }
            }
        }
        Ok(())
    }

    /// Replaces all node-to-node cuts so that `i` reaches no other node.
    pub(crate) fn isolate(&mut self, i: usize) -> Result<(), TestkitError> {
        self.check(i)?;
        let rest: Vec<usize> = (0..self.nodes).filter(|&j| j != i).collect();
        self.set_partition(&[&[i], &rest])
    }

    /// Severs the single link between `a` and `b`, keeping other cuts.
    pub(crate) fn cut_link(&mut self, a: usize, b: usize) -> Result<(), TestkitError> {
        self.check(a)?;
        self.check(b)?;
        if a == b {
            return Err(TestkitError::BadPartition(format!("cannot cut node {a} from itself")));
        }
        self.cut.insert((a.min(b), a.max(b)));
        Ok(())
    }

    /// Cuts node `i` off from the test process (clients), keeping node-to-node links.
    pub(crate) fn isolate_from_clients(&mut self, i: usize) -> Result<(), TestkitError> {
        self.check(i)?;
        self.no_clients.insert(i);
        Ok(())
    }

    /// Restores every link.
    pub(crate) fn heal(&mut self) {
        self.cut.clear();
        self.no_clients.clear();
    }

    /// Nodes that `i` cannot exchange packets with.
    pub(crate) fn blocked_peers(&self, i: usize) -> Vec<usize> {
        self.cut
            .iter()
            .filter_map(|&(a, b)| {
                if a == i {
                    Some(b)
                } else if b == i {
                    Some(a)
                } else {
                    None
                }
            })
            .collect()
    }

    /// Whether `i` is cut off from the test process.
    pub(crate) fn clients_blocked(&self, i: usize) -> bool {
        self.no_clients.contains(&i)
    }

    fn check(&self, i: usize) -> Result<(), TestkitError> {
        if i < self.nodes { Ok(()) } else { Err(TestkitError::NoSuchNode { index: i, len: self.nodes }) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_cuts_across_groups_only() {
        let mut s = LinkState::new(5);
        s.set_partition(&[&[0, 1], &[2, 3]]).expect("valid");
        assert_eq!(s.blocked_peers(0), vec![2, 3]);
        assert_eq!(s.blocked_peers(3), vec![0, 1]);
        assert!(s.blocked_peers(4).is_empty(), "unlisted node keeps its links");
        s.set_partition(&[&[0], &[1]]).expect("valid");
        assert_eq!(s.blocked_peers(0), vec![1], "partition replaces earlier cuts");
        assert!(s.blocked_peers(2).is_empty());
    }

    #[test]
    fn isolate_cut_and_heal() {
        let mut s = LinkState::new(3);
        s.isolate(1).expect("valid");
        assert_eq!(s.blocked_peers(1), vec![0, 2]);
        assert_eq!(s.blocked_peers(0), vec![1]);
        s.heal();
        s.cut_link(2, 0).expect("valid");
        assert_eq!(s.blocked_peers(0), vec![2]);
        s.isolate_from_clients(1).expect("valid");
        assert!(s.clients_blocked(1) && !s.clients_blocked(0));
        s.heal();
        assert_eq!(s, LinkState::new(3));
    }

    #[test]
    fn rejects_bad_input() {
        let mut s = LinkState::new(3);
        assert!(matches!(s.set_partition(&[&[0], &[0, 1]]), Err(TestkitError::BadPartition(_))));
        assert!(matches!(s.set_partition(&[&[3]]), Err(TestkitError::NoSuchNode { .. })));
        assert!(s.cut_link(1, 1).is_err());
        assert!(s.isolate(7).is_err());
        s.set_len(8);
        assert!(s.isolate(7).is_ok());
    }
}
