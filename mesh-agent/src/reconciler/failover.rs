//! The node's part in fast leader failover ([`mesh_core::failover`]), as values: which leader it
//! probes, its misses in a row, its claim and the claim's hold-down, and each location's leader
//! with the reason it leads.
//!
//! Only the successor of its location's leader probes the leader (ICMP echo to its private IP,
//! every [`FailoverTiming::interval`]). After [`FailoverTiming::misses`] misses in a row it claims
//! the leader unreachable; with three members or more, only if another member still answers
//! (a successor cut off from everyone must not depose a healthy leader). The claimant keeps
//! probing the deposed leader and withdraws the claim once it has answered every probe for
//! [`FailoverTiming::hold_down`]: leadership then returns to Kilo's rule, once.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mesh_core::Topology;

use super::messages::{Action, Report};

/// Probe timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailoverTiming {
    /// Between two probes of one node.
    pub interval: Duration,
    /// How long a probe waits for its answer.
    pub timeout: Duration,
    /// Misses in a row before the claim.
    pub misses: u32,
    /// How long a deposed leader must answer every probe before the claim is withdrawn.
    pub hold_down: Duration,
}

impl Default for FailoverTiming {
    /// Every 500 ms, 400 ms timeout, 3 misses (about 1.5 s), 60 s hold-down.
    fn default() -> Self {
        FailoverTiming {
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(400),
            misses: 3,
            hold_down: Duration::from_secs(60),
        }
    }
}

/// A node to probe: its name and private IP.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Probed {
    name: String,
    ip: IpAddr,
}

/// This node's claim against a leader, and since when the leader has answered without a miss.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Claim {
    leader: Probed,
    answering_since: Option<Instant>,
}

/// Fast failover state of one node; see the [module documentation](self).
#[derive(Debug)]
pub struct Failover {
    timing: FailoverTiming,
    /// The leader this node succeeds, while the fast path is on.
    watched: Option<Probed>,
    misses: u32,
    /// Another member that must answer before a claim (locations of three or more).
    witness: Option<Probed>,
    /// The witness was asked after the misses; the claim waits for its answer.
    witness_asked: bool,
    claim: Option<Claim>,
    next_probe: Option<Instant>,
    /// Probes sent and not answered yet, so a slow answer never piles up probes.
    in_flight: Vec<IpAddr>,
    /// Each segment's leader at the last pass, to report changes.
    leaders: BTreeMap<String, String>,
}

impl Failover {
    /// No target, no claim.
    pub fn new(timing: FailoverTiming) -> Self {
        Failover {
            timing,
            watched: None,
            misses: 0,
            witness: None,
            witness_asked: false,
            claim: None,
            next_probe: None,
            in_flight: Vec::new(),
            leaders: BTreeMap::new(),
        }
    }

    /// The leader this node claims unreachable (what it announces).
    pub fn claim(&self) -> Option<&str> {
        self.claim.as_ref().map(|claim| claim.leader.name.as_str())
    }

    /// Each location's (segment's) leader, by segment name, from the last topology.
    pub fn leaders(&self) -> &BTreeMap<String, String> {
        &self.leaders
    }

    /// When the next probe is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_probe
    }

    /// Takes the topology of a successful pass: who to watch, and who leads each location.
    pub fn on_topology(&mut self, topology: &Topology, now: Instant, reports: &mut impl Extend<Report>) {
        let mut leaders = BTreeMap::new();
        for (segment, (leader, reason)) in leaders_of(topology) {
            let previous = self.leaders.get(&segment).cloned();
            if previous.as_ref().is_some_and(|previous| *previous != leader) {
                reports.extend([Report::LeaderChanged {
                    segment: segment.clone(),
                    from: previous,
                    to: leader.clone(),
                    reason,
                }]);
            }
            leaders.insert(segment, leader);
        }
        self.leaders = leaders;

        let local = topology.local();
        let member = |index: usize| {
            let member = &local.members[index];
            member.private_ip.map(|ip| Probed { name: member.name.clone(), ip })
        };
        let successor = local.successor.filter(|s| local.members[*s].name == topology.hostname);
        let watched = successor.and_then(|_| member(local.leader));
        if watched != self.watched {
            self.misses = 0;
            self.witness_asked = false;
            self.watched = watched;
        }
        // The witness: the first other standing member, neither leader nor this node.
        self.witness = (0..local.members.len())
            .filter(|index| *index != local.leader && !local.deposed.contains(index))
            .find(|index| local.members[*index].name != topology.hostname)
            .and_then(member);
        // A claim against a node that left the cluster (neither member nor skipped) is void.
        if let Some(claim) = &self.claim {
            let name = &claim.leader.name;
            let known = topology.segments.iter().any(|s| s.members.iter().any(|m| &m.name == name))
                || topology.skipped.iter().any(|s| &s.name == name);
            if !known {
                reports.extend([Report::FailoverClaimWithdrawn { leader: name.clone(), reason: "left the cluster" }]);
                self.claim = None;
            }
        }
        if self.watched.is_none() && self.claim.is_none() {
            self.next_probe = None;
        } else if self.next_probe.is_none() {
            self.next_probe = Some(now);
        }
    }

    /// Sends the probes that are due.
    pub fn handle_timeout(&mut self, now: Instant, actions: &mut impl Extend<Action>) {
        let Some(due) = self.next_probe.filter(|due| *due <= now) else { return };
        let mut next = due;
        while next <= now {
            next += self.timing.interval;
        }
        self.next_probe = Some(next);
        let targets = [self.watched.as_ref().map(|w| w.ip), self.claim.as_ref().map(|c| c.leader.ip)];
        for ip in targets.into_iter().flatten() {
            self.probe(ip, actions);
        }
    }

    fn probe(&mut self, ip: IpAddr, actions: &mut impl Extend<Action>) {
        if !self.in_flight.contains(&ip) {
            self.in_flight.push(ip);
            actions.extend([Action::Probe { ip, timeout: self.timing.timeout }]);
        }
    }

    /// Takes a probe's answer. Returns whether the claim changed (the node must announce).
    pub fn on_probed(
        &mut self,
        ip: IpAddr,
        reachable: bool,
        now: Instant,
        actions: &mut impl Extend<Action>,
        reports: &mut impl Extend<Report>,
    ) -> bool {
        if !self.in_flight.contains(&ip) {
            // Not asked for (or already answered): nothing to learn from it.
            return false;
        }
        self.in_flight.retain(|sent| *sent != ip);
        reports.extend([Report::Probed { ip, reachable }]);
        let mut changed = false;
        if let Some(claim) = &mut self.claim
            && claim.leader.ip == ip
        {
            if !reachable {
                claim.answering_since = None;
            } else if now.duration_since(*claim.answering_since.get_or_insert(now)) >= self.timing.hold_down {
                reports.extend([Report::FailoverClaimWithdrawn {
                    leader: claim.leader.name.clone(),
                    reason: "answered every probe for the hold-down",
                }]);
                self.claim = None;
                changed = true;
            }
        }
        if self.witness_asked && self.witness.as_ref().is_some_and(|w| w.ip == ip) {
            self.witness_asked = false;
            if reachable {
                changed |= self.claim_watched(reports);
            } else if let Some(watched) = &self.watched {
                reports.extend([Report::FailoverHeldBack { leader: watched.name.clone() }]);
            }
        }
        if let Some(watched) = &self.watched
            && watched.ip == ip
            && self.claim.as_ref().is_none_or(|claim| claim.leader != *watched)
        {
            if reachable {
                self.misses = 0;
            } else {
                self.misses = self.misses.saturating_add(1);
                if self.misses >= self.timing.misses && !self.witness_asked {
                    match self.witness.as_ref().map(|w| w.ip) {
                        Some(witness) => {
                            self.witness_asked = true;
                            self.probe(witness, actions);
                        }
                        None => changed |= self.claim_watched(reports),
                    }
                }
            }
        }
        changed
    }

    fn claim_watched(&mut self, reports: &mut impl Extend<Report>) -> bool {
        let Some(watched) = self.watched.take() else { return false };
        reports.extend([Report::FailoverClaimed { leader: watched.name.clone(), misses: self.misses }]);
        self.misses = 0;
        self.claim = Some(Claim { leader: watched, answering_since: None });
        true
    }
}

/// Each segment's leader by segment name, and why it leads as far as failover goes.
fn leaders_of(topology: &Topology) -> BTreeMap<String, (String, String)> {
    topology
        .segments
        .iter()
        .map(|segment| {
            let leader = segment.members[segment.leader].name.clone();
            let reason = if segment.deposed.is_empty() {
                "Kilo's election".to_owned()
            } else {
                let deposed: Vec<&str> = segment.deposed.iter().map(|d| segment.members[*d].name.as_str()).collect();
                format!("failover claim: {} deposed (unreachable over the private network)", deposed.join(", "))
            };
            (segment.name.clone(), (leader, reason))
        })
        .collect()
}
