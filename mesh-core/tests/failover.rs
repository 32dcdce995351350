//! Fast leader failover in `Topology::compute`: every node elects the same leaders from the same
//! snapshot, whatever the order of nodes and claims; Kilo's election whenever a ready node lacks
//! the capability or the option is off; allowed-location IPs stay with the location.

use std::collections::BTreeMap;

use ipnet::IpNet;
use mesh_core::{ClusterSnapshot, Endpoint, Key, NodeSpec, Options, Topology};
use proptest::prelude::*;

const NOW: i64 = 1_700_000_000;

fn node(index: usize, location: &str) -> NodeSpec {
    let octet = u8::try_from(index + 1).expect("few nodes");
    NodeSpec {
        name: format!("n{index:02}"),
        endpoint: Some(Endpoint::parse(&format!("192.168.0.{octet}:51820")).expect("valid endpoint")),
        key: Some(Key::from_bytes([octet; 32])),
        internal_ip: Some(format!("192.168.0.{octet}/24").parse().expect("valid CIDR")),
        location: location.to_owned(),
        pod_subnet: Some(format!("10.2.{octet}.0/24").parse().expect("valid CIDR")),
        last_seen: Some(NOW - 5),
        failover_capable: true,
        ..NodeSpec::default()
    }
}

/// Leaders per segment name, as the node `hostname` sees them.
fn leaders(snapshot: &ClusterSnapshot, options: &Options) -> BTreeMap<String, String> {
    let topology = Topology::compute(snapshot, options).expect("topology");
    topology.segments.iter().map(|s| (s.name.clone(), s.members[s.leader].name.clone())).collect()
}

fn snapshot(nodes: Vec<NodeSpec>) -> ClusterSnapshot {
    ClusterSnapshot { nodes, peers: vec![], now: NOW }
}

#[test]
fn the_successors_claim_hands_the_location_to_it_on_every_node() {
    let mut nodes = vec![node(0, "x"), node(1, "x"), node(2, "x"), node(3, "y")];
    let before = leaders(&snapshot(nodes.clone()), &Options::for_host("n03"));
    assert_eq!(before["location:x"], "n00");
    let topology = Topology::compute(&snapshot(nodes.clone()), &Options::for_host("n02")).expect("topology");
    let x = &topology.segments[0];
    assert_eq!(x.successor.map(|s| x.members[s].name.as_str()), Some("n01"));

    nodes[1].leader_unreachable = Some("n00".to_owned());
    for host in ["n00", "n01", "n02", "n03"] {
        let after = leaders(&snapshot(nodes.clone()), &Options::for_host(host));
        assert_eq!(after["location:x"], "n01", "seen from {host}");
    }
    let topology = Topology::compute(&snapshot(nodes.clone()), &Options::for_host("n00")).expect("topology");
    assert!(!topology.leader, "the deposed leader knows it is deposed");
    let x = &topology.segments[0];
    assert_eq!(x.deposed, vec![0]);
    assert_eq!(x.successor.map(|s| x.members[s].name.as_str()), Some("n02"));
}

#[test]
fn one_ready_node_without_the_capability_means_kilos_rule_everywhere() {
    let mut nodes = vec![node(0, "x"), node(1, "x"), node(2, "y")];
    nodes[1].leader_unreachable = Some("n00".to_owned());
    nodes[2].failover_capable = false;
    let topology = Topology::compute(&snapshot(nodes.clone()), &Options::for_host("n01")).expect("topology");
    assert!(!topology.fast_failover);
    assert_eq!(topology.segments[0].members[topology.segments[0].leader].name, "n00");
    assert_eq!(topology.segments[0].successor, None, "nobody probes under Kilo's rule");

    // A stale Kilo node does not count: it is not ready.
    nodes[2].last_seen = Some(NOW - 600);
    let topology = Topology::compute(&snapshot(nodes), &Options::for_host("n01")).expect("topology");
    assert!(topology.fast_failover);
    assert_eq!(topology.segments[0].members[topology.segments[0].leader].name, "n01");
}

#[test]
fn the_option_off_gives_kilos_election() {
    let mut nodes = vec![node(0, "x"), node(1, "x")];
    nodes[1].leader_unreachable = Some("n00".to_owned());
    let options = Options { fast_failover: false, ..Options::for_host("n01") };
    let topology = Topology::compute(&snapshot(nodes), &options).expect("topology");
    assert!(!topology.fast_failover);
    assert_eq!(topology.segments[0].members[topology.segments[0].leader].name, "n00");
}

#[test]
fn a_location_keeps_the_allowed_location_ips_of_its_dead_leader_with_fast_failover_only() {
    let range: IpNet = "172.16.0.0/16".parse().expect("valid CIDR");
    let mut nodes = vec![node(0, "x"), node(1, "x"), node(2, "y")];
    nodes[0].allowed_location_ips = vec![range];
    nodes[0].last_seen = Some(NOW - 600);
    let x_ips = |options: &Options| {
        let topology = Topology::compute(&snapshot(nodes.clone()), options).expect("topology");
        let x = topology.segments.iter().find(|s| s.name == "location:x").expect("segment x");
        (x.allowed_location_ips.clone(), x.members[x.leader].name.clone())
    };
    assert_eq!(x_ips(&Options::for_host("n02")), (vec![range], "n01".to_owned()));
    assert_eq!(x_ips(&Options { fast_failover: false, ..Options::for_host("n02") }), (vec![], "n01".to_owned()));
}

/// A cluster of capable nodes: (location, Kilo's leader annotation, public endpoint, stale, claim).
type Shape = Vec<(u8, bool, bool, bool, Option<u8>)>;

fn cluster(shape: &Shape) -> Vec<NodeSpec> {
    let mut nodes: Vec<NodeSpec> = shape
        .iter()
        .enumerate()
        .map(|(index, (location, annotated, public, stale, claim))| {
            let mut spec = node(index, ["x", "y", "z"][usize::from(*location) % 3]);
            spec.leader = *annotated;
            if *public {
                spec.endpoint = Some(Endpoint::parse(&format!("203.0.113.{}:51820", index + 1)).expect("valid"));
            }
            if *stale {
                spec.last_seen = Some(NOW - 61);
            }
            spec.leader_unreachable = claim.map(|target| format!("n{:02}", usize::from(target) % shape.len()));
            spec
        })
        .collect();
    // The first node is always ready, so there is a point of view.
    nodes[0].last_seen = Some(NOW);
    nodes
}

fn shapes() -> impl Strategy<Value = (Shape, Vec<usize>)> {
    prop::collection::vec(
        (0u8..3, any::<bool>(), any::<bool>(), prop::bool::weighted(0.2), prop::option::weighted(0.5, 0u8..8)),
        1..8,
    )
    .prop_flat_map(|shape| {
        let order: Vec<usize> = (0..shape.len()).collect();
        (Just(shape), Just(order).prop_shuffle())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every ready node computes the same leader, deposed set and successor for every location,
    /// whatever the order of the nodes (and so of their claims).
    #[test]
    fn every_node_elects_the_same_leaders_in_any_order((shape, order) in shapes()) {
        let nodes = cluster(&shape);
        let shuffled: Vec<NodeSpec> = order.iter().map(|index| nodes[*index].clone()).collect();
        let view = |nodes: &[NodeSpec], host: &str| {
            Topology::compute(&snapshot(nodes.to_vec()), &Options::for_host(host)).ok().map(|topology| {
                topology
                    .segments
                    .iter()
                    .map(|s| {
                        let name = |index: usize| s.members[index].name.clone();
                        (s.name.clone(), name(s.leader), s.deposed.iter().map(|d| name(*d)).collect::<Vec<_>>(), s.successor.map(name))
                    })
                    .collect::<Vec<_>>()
            })
        };
        let reference = view(&nodes, "n00").expect("n00 is ready");
        for spec in &nodes {
            if let Some(seen) = view(&shuffled, &spec.name) {
                prop_assert_eq!(&seen, &reference, "seen from {}", spec.name);
            }
        }
    }

    /// Deposed nodes never lead while a member stands, the successor is never the leader nor
    /// deposed, and without any claim the election is Kilo's.
    #[test]
    fn claims_only_depose_and_without_claims_the_leader_is_kilos((shape, _order) in shapes()) {
        let nodes = cluster(&shape);
        let topology = Topology::compute(&snapshot(nodes.clone()), &Options::for_host("n00")).expect("n00 is ready");
        for segment in &topology.segments {
            if segment.deposed.len() < segment.members.len() {
                prop_assert!(!segment.deposed.contains(&segment.leader));
            }
            if let Some(successor) = segment.successor {
                prop_assert!(successor != segment.leader && !segment.deposed.contains(&successor));
            }
        }
        let unclaimed: Vec<NodeSpec> = nodes.iter().map(|n| NodeSpec { leader_unreachable: None, ..n.clone() }).collect();
        let kilo = Options { fast_failover: false, ..Options::for_host("n00") };
        prop_assert_eq!(leaders(&snapshot(unclaimed.clone()), &Options::for_host("n00")), leaders(&snapshot(unclaimed), &kilo));
    }

    /// One ready node without the capability: the claims are ignored, the topology is Kilo's.
    #[test]
    fn a_node_without_the_capability_falls_back_to_kilo((shape, _order) in shapes(), which in any::<prop::sample::Index>()) {
        let mut nodes = cluster(&shape);
        let ready: Vec<usize> = (0..nodes.len()).filter(|i| nodes[*i].readiness(NOW).is_ok()).collect();
        nodes[ready[which.index(ready.len())]].failover_capable = false;
        let with_claims = Topology::compute(&snapshot(nodes.clone()), &Options::for_host("n00")).expect("ready");
        let kilo = Topology::compute(&snapshot(nodes), &Options { fast_failover: false, ..Options::for_host("n00") })
            .expect("ready");
        prop_assert!(!with_claims.fast_failover);
        prop_assert_eq!(with_claims, kilo);
    }
}
