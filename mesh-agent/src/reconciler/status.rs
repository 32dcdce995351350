//! What a pass tells `/status`: who leads each segment and why, the peers' handshakes as
//! observed, and the plan the pass computed.

use std::collections::BTreeMap;

use mesh_core::state::PeerStats;
use mesh_core::{ClusterSnapshot, Granularity, Key, Plan, Topology};

/// Why a node leads its segment: Kilo's election order (the first by name of each kind wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaderReason {
    /// Annotated `kilo.squat.ai/leader` and has a public endpoint.
    AnnotatedWithPublicEndpoint,
    /// Annotated `kilo.squat.ai/leader` (no annotated node has a public endpoint).
    Annotated,
    /// Has a public endpoint (no node is annotated).
    PublicEndpoint,
    /// First by name (no node is annotated or has a public endpoint).
    FirstByName,
    /// Alone in its segment (`full` and `cross` granularity: every node leads).
    OwnSegment,
}

impl LeaderReason {
    /// The reason in words.
    pub const fn describe(self) -> &'static str {
        match self {
            LeaderReason::AnnotatedWithPublicEndpoint => "annotated kilo.squat.ai/leader and has a public endpoint",
            LeaderReason::Annotated => {
                "annotated kilo.squat.ai/leader (no annotated node of the location has a public endpoint)"
            }
            LeaderReason::PublicEndpoint => {
                "first by name with a public endpoint (no node of the location is annotated kilo.squat.ai/leader)"
            }
            LeaderReason::FirstByName => {
                "first by name (no node of the location is annotated kilo.squat.ai/leader or has a public endpoint)"
            }
            LeaderReason::OwnSegment => "every node leads its own segment in this granularity",
        }
    }
}

/// The leader of one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentLeader {
    /// `location:<name>` or `node:<name>`.
    pub segment: String,
    /// The leader's node name.
    pub node: String,
    /// Why it leads, among the members not deposed.
    pub reason: LeaderReason,
    /// Members deposed by a fast-failover claim (unreachable over the private network), which
    /// Kilo's election would otherwise consider first.
    pub deposed: Vec<String>,
}

/// The leader of every segment of `topology`, with the reason read from the leader's node in
/// `snapshot` (the snapshot the topology was computed from).
pub fn leaders(snapshot: &ClusterSnapshot, topology: &Topology) -> Vec<SegmentLeader> {
    topology
        .segments
        .iter()
        .map(|segment| {
            let node = segment.members[segment.leader].name.clone();
            let spec = snapshot.nodes.iter().find(|spec| spec.name == node);
            let annotated = spec.is_some_and(|spec| spec.leader);
            let public =
                segment.endpoint.as_ref().and_then(mesh_core::Endpoint::ip).is_some_and(mesh_core::ip::is_public);
            let reason = match (annotated, public) {
                _ if segment.members.len() == 1 && topology.granularity != Granularity::Location => {
                    LeaderReason::OwnSegment
                }
                (true, true) => LeaderReason::AnnotatedWithPublicEndpoint,
                (true, false) => LeaderReason::Annotated,
                (false, true) => LeaderReason::PublicEndpoint,
                (false, false) => LeaderReason::FirstByName,
            };
            let deposed = segment.deposed.iter().map(|index| segment.members[*index].name.clone()).collect();
            SegmentLeader { segment: segment.name.clone(), node, reason, deposed }
        })
        .collect()
}

/// What one pass computed, for `/status`: emitted before its plan is applied, so a plan that
/// fails to apply stays visible as pending.
#[derive(Clone, Debug, PartialEq)]
pub struct PassStatus {
    /// The local node.
    pub hostname: String,
    /// Whether the local node leads its segment.
    pub leader: bool,
    /// The local node's segment.
    pub segment: String,
    /// Every segment's leader.
    pub leaders: Vec<SegmentLeader>,
    /// Handshakes and traffic per WireGuard peer, as observed at the pass's start.
    pub peer_stats: BTreeMap<Key, PeerStats>,
    /// When the data plane was observed (Unix seconds).
    pub observed_at: i64,
    /// What the pass is about to change (empty in steady state).
    pub plan: Plan,
}

impl PassStatus {
    /// The status of a pass that computed `topology` from `snapshot`, observed `observed` and
    /// planned `plan`.
    pub fn of(
        snapshot: &ClusterSnapshot,
        topology: &Topology,
        observed: &mesh_core::ObservedState,
        plan: &Plan,
    ) -> Self {
        PassStatus {
            hostname: topology.hostname.clone(),
            leader: topology.leader,
            segment: topology
                .segments
                .get(topology.local_segment)
                .map(|segment| segment.name.clone())
                .unwrap_or_default(),
            leaders: leaders(snapshot, topology),
            peer_stats: observed.peer_stats.clone(),
            observed_at: observed.observed_at,
            plan: plan.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::{Endpoint, Options};

    fn reasons(
        snapshot: &ClusterSnapshot,
        host: &str,
        granularity: Granularity,
    ) -> Vec<(String, String, LeaderReason)> {
        let options = Options { granularity, ..Options::for_host(host) };
        let topology = Topology::compute(snapshot, &options).unwrap();
        leaders(snapshot, &topology).into_iter().map(|l| (l.segment, l.node, l.reason)).collect()
    }

    /// One location `x` of three nodes with private endpoints, nobody annotated.
    fn one_location() -> ClusterSnapshot {
        let mut snapshot = mesh_tests::two_locations(1_000);
        let template = snapshot.nodes[0].clone();
        snapshot.nodes = (1..=3u8)
            .map(|i| mesh_core::NodeSpec {
                name: format!("x{i}"),
                location: "x".into(),
                key: Some(Key::from_bytes([i; 32])),
                endpoint: Some(Endpoint::parse(&format!("10.0.0.{i}:51820")).unwrap()),
                internal_ip: Some(format!("10.0.0.{i}/24").parse().unwrap()),
                pod_subnet: Some(format!("10.2.{i}.0/24").parse().unwrap()),
                ..template.clone()
            })
            .collect();
        snapshot
    }

    #[test]
    fn the_reason_follows_kilos_election_order() {
        let mut snapshot = one_location();
        let elected = |snapshot: &ClusterSnapshot| {
            let leaders = reasons(snapshot, "x1", Granularity::Location);
            assert_eq!(leaders.len(), 1, "{leaders:?}");
            (leaders[0].1.clone(), leaders[0].2)
        };
        assert_eq!(elected(&snapshot), ("x1".into(), LeaderReason::FirstByName));
        snapshot.nodes[2].endpoint = Some(Endpoint::parse("198.51.100.3:51820").unwrap());
        assert_eq!(elected(&snapshot), ("x3".into(), LeaderReason::PublicEndpoint));
        snapshot.nodes[1].leader = true;
        assert_eq!(elected(&snapshot), ("x2".into(), LeaderReason::Annotated));
        snapshot.nodes[2].leader = true;
        assert_eq!(elected(&snapshot), ("x3".into(), LeaderReason::AnnotatedWithPublicEndpoint));
        let full = reasons(&snapshot, "x1", Granularity::Full);
        assert_eq!(full.len(), 3);
        assert!(full.iter().all(|leader| leader.2 == LeaderReason::OwnSegment), "{full:?}");
    }
}
