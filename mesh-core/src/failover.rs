//! Fast leader failover: Kilo's leader election with the claims of the location's nodes.
//!
//! Kilo replaces a location's leader only once its `last-seen` heartbeat is 60 s old. With the
//! fast path, the leader's *successor* (Kilo's election over the other members) probes the
//! leader over the private network; after a few misses in a row it publishes a claim on itself,
//! `leader-unreachable: <leader>`. Every agent then elects the same way, from the same
//! annotations:
//!
//! - `deposed` = the members some *other* ready member of the location claims against;
//! - the leader is Kilo's election over the members that are not deposed (over all of them if
//!   every member is deposed);
//! - the successor is Kilo's election over the remaining candidates without the leader.
//!
//! The election works on sets, so the order in which nodes and claims arrive does not matter.
//! It is used only while *every* ready node of the cluster announced the capability
//! ([`NodeSpec::failover_capable`]) and [`Options::fast_failover`](crate::Options) is on: a
//! Kilo node in the cluster does not read claims, and two rules side by side would route one
//! location through two leaders.
//!
//! ```
//! use mesh_core::failover::{Election, Candidate};
//!
//! let members = [Candidate::new("a", false, true, None), Candidate::new("b", false, true, Some("a"))];
//! let election = Election::of(&members);
//! assert_eq!(election.leader, 1); // b claims that a is unreachable
//! assert_eq!(election.deposed, vec![0]);
//! assert_eq!(election.successor, None); // a is deposed: nobody else can take over from b
//! ```

use std::collections::BTreeSet;

use crate::NodeSpec;

/// The failover capability an agent announces (`mesh.kilo-rs/capabilities`).
pub const CAPABILITY: &str = "failover-v1";

/// How a member of a location takes part in the election, in the location's name order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The node name.
    pub name: &'a str,
    /// The node carries Kilo's `leader` annotation.
    pub annotated: bool,
    /// The node's endpoint is a public address.
    pub public_endpoint: bool,
    /// The node's claim: the leader it found unreachable.
    pub leader_unreachable: Option<&'a str>,
}

impl<'a> Candidate<'a> {
    /// A candidate from its parts.
    pub const fn new(
        name: &'a str,
        annotated: bool,
        public_endpoint: bool,
        leader_unreachable: Option<&'a str>,
    ) -> Self {
        Candidate { name, annotated, public_endpoint, leader_unreachable }
    }

    /// The candidate a ready node is.
    pub fn of(node: &'a NodeSpec, public_endpoint: bool) -> Self {
        Candidate::new(&node.name, node.leader, public_endpoint, node.leader_unreachable.as_deref())
    }
}

/// The outcome of one location's election; indices are into the candidates as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    /// The leader.
    pub leader: usize,
    /// The candidates deposed by another member's claim, in order.
    pub deposed: Vec<usize>,
    /// Who takes over when the leader is found unreachable, and so probes it: Kilo's election
    /// over the members that are neither deposed nor the leader.
    pub successor: Option<usize>,
}

impl Election {
    /// Kilo's election (`findLeader`) over `candidates` sorted by name, as (index, candidate):
    /// the first annotated node with a public endpoint, else the first annotated node, else the
    /// first node with a public endpoint, else the first. `None` when there is no candidate.
    pub fn kilo<'c>(candidates: impl Iterator<Item = (usize, Candidate<'c>)> + Clone) -> Option<usize> {
        let first = |wanted: fn(&Candidate<'_>) -> bool| candidates.clone().find(|(_, c)| wanted(c)).map(|(i, _)| i);
        first(|c| c.annotated && c.public_endpoint)
            .or_else(|| first(|c| c.annotated))
            .or_else(|| first(|c| c.public_endpoint))
            .or_else(|| first(|_| true))
    }

    /// The election with claims over a location's ready members, sorted by name (non-empty).
    pub fn of<'c>(members: &'c [Candidate<'c>]) -> Election {
        // Claims on another member (a claim on oneself deposes nobody). Gathered first: a
        // location can hold thousands of members and almost never a claim.
        let claimed: BTreeSet<&str> = members
            .iter()
            .filter_map(|claimant| claimant.leader_unreachable.filter(|&target| target != claimant.name))
            .collect();
        // In index order, so sorted.
        let deposed: Vec<usize> = (0..members.len()).filter(|&index| claimed.contains(members[index].name)).collect();
        let all = || members.iter().copied().enumerate();
        let standing = || all().filter(|(index, _)| deposed.binary_search(index).is_err());
        let leader = if standing().next().is_some() { Election::kilo(standing()) } else { Election::kilo(all()) };
        let leader = leader.unwrap_or(0);
        let successor = Election::kilo(standing().filter(|(index, _)| *index != leader));
        Election { leader, deposed, successor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(name: &str) -> Candidate<'_> {
        Candidate::new(name, false, false, None)
    }

    #[test]
    fn without_claims_the_election_is_kilos_and_the_successor_is_the_next_by_kilos_rule() {
        let members = [plain("a"), Candidate::new("b", true, false, None), Candidate::new("c", false, true, None)];
        assert_eq!(Election::of(&members), Election { leader: 1, deposed: vec![], successor: Some(2) });
    }

    #[test]
    fn a_claim_deposes_the_leader_and_hands_over_to_the_successor() {
        let members = [Candidate::new("a", true, true, None), Candidate::new("b", false, false, Some("a")), plain("c")];
        assert_eq!(Election::of(&members), Election { leader: 1, deposed: vec![0], successor: Some(2) });
    }

    #[test]
    fn a_claim_on_oneself_or_on_a_stranger_deposes_nobody() {
        let members = [Candidate::new("a", false, false, Some("a")), Candidate::new("b", false, false, Some("z"))];
        assert_eq!(Election::of(&members), Election { leader: 0, deposed: vec![], successor: Some(1) });
    }

    #[test]
    fn when_every_member_is_deposed_kilos_election_decides_alone() {
        let members = [Candidate::new("a", false, false, Some("b")), Candidate::new("b", false, false, Some("a"))];
        assert_eq!(Election::of(&members), Election { leader: 0, deposed: vec![0, 1], successor: None });
    }
}
