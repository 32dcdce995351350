//! Kilo's topology unit tests (kilo-reference.md §10.2–§10.5), with the same expected values,
//! plus `cross` granularity cases of our own.

mod common;

use common::{NOW, key_n, options, snapshot};
use mesh_core::topology::{Peer, deduplicate_peer_ips};
use mesh_core::{ClusterSnapshot, ComputeError, Encapsulation, Endpoint, Granularity, Key, NodeSpec, Topology};

fn compute(host: &str, granularity: Granularity) -> Topology {
    Topology::compute(&snapshot(), &options(host, granularity, false, Encapsulation::Never)).unwrap()
}

fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// (name, allowed IPs, endpoint, key, members, private IPs, WireGuard IP, allowed-location IPs)
type SegmentView = (String, Vec<String>, String, Key, Vec<String>, Vec<String>, String, Vec<String>);

fn segments(topology: &Topology) -> Vec<SegmentView> {
    topology
        .segments
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                strings(&s.allowed_ips),
                s.endpoint.as_ref().unwrap().to_string(),
                s.key,
                s.members.iter().map(|m| m.name.clone()).collect(),
                s.members.iter().filter_map(|m| m.private_ip).map(|ip| ip.to_string()).collect(),
                s.wireguard_ip.to_string(),
                strings(&s.allowed_location_ips),
            )
        })
        .collect()
}

#[expect(clippy::too_many_arguments, reason = "one argument per field of Kilo's segment fixture")]
fn seg(
    name: &str,
    allowed: &[&str],
    endpoint: &str,
    key: u8,
    members: &[&str],
    private: &[&str],
    wg: &str,
    alips: &[&str],
) -> SegmentView {
    let owned = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    (name.into(), owned(allowed), endpoint.into(), key_n(key), owned(members), owned(private), wg.into(), owned(alips))
}

fn location_segments() -> Vec<SegmentView> {
    vec![
        seg(
            "location:1",
            &["10.2.1.0/24", "192.168.0.1/32", "10.4.0.1/32"],
            "10.1.0.1:51820",
            1,
            &["a"],
            &["192.168.0.1"],
            "10.4.0.1",
            &[],
        ),
        seg(
            "location:2",
            &["10.2.2.0/24", "192.168.0.1/32", "10.2.3.0/24", "192.168.0.2/32", "10.4.0.2/32"],
            "10.1.0.2:51820",
            2,
            &["b", "c"],
            &["192.168.0.1", "192.168.0.2"],
            "10.4.0.2",
            &["192.168.178.3/32"],
        ),
        seg("node:d", &["10.2.4.0/24", "10.4.0.3/32"], "10.1.0.4:51820", 4, &["d"], &[], "10.4.0.3", &[]),
    ]
}

fn full_segments() -> Vec<SegmentView> {
    vec![
        seg(
            "node:a",
            &["10.2.1.0/24", "192.168.0.1/32", "10.4.0.1/32"],
            "10.1.0.1:51820",
            1,
            &["a"],
            &["192.168.0.1"],
            "10.4.0.1",
            &[],
        ),
        seg(
            "node:b",
            &["10.2.2.0/24", "192.168.0.1/32", "10.4.0.2/32"],
            "10.1.0.2:51820",
            2,
            &["b"],
            &["192.168.0.1"],
            "10.4.0.2",
            &["192.168.178.3/32"],
        ),
        seg(
            "node:c",
            &["10.2.3.0/24", "192.168.0.2/32", "10.4.0.3/32"],
            "10.1.0.3:51820",
            3,
            &["c"],
            &["192.168.0.2"],
            "10.4.0.3",
            &[],
        ),
        seg("node:d", &["10.2.4.0/24", "10.4.0.4/32"], "10.1.0.4:51820", 4, &["d"], &[], "10.4.0.4", &[]),
    ]
}

// TestNewTopology.
#[test]
fn new_topology_matches_kilo() {
    let cases = [
        ("a", Granularity::Location, true, "location:1", Some("192.168.0.1/32"), "10.2.1.0/24", "10.4.0.1/16"),
        ("b", Granularity::Location, true, "location:2", Some("192.168.0.1/32"), "10.2.2.0/24", "10.4.0.2/16"),
        ("c", Granularity::Location, false, "location:2", Some("192.168.0.2/32"), "10.2.3.0/24", "10.4.0.0/16"),
        ("a", Granularity::Full, true, "node:a", Some("192.168.0.1/32"), "10.2.1.0/24", "10.4.0.1/16"),
        ("b", Granularity::Full, true, "node:b", Some("192.168.0.1/32"), "10.2.2.0/24", "10.4.0.2/16"),
        ("c", Granularity::Full, true, "node:c", Some("192.168.0.2/32"), "10.2.3.0/24", "10.4.0.3/16"),
        ("d", Granularity::Full, true, "node:d", None, "10.2.4.0/24", "10.4.0.4/16"),
    ];
    for (host, granularity, leader, local, private, pods, wg) in cases {
        let topology = compute(host, granularity);
        let case = format!("{granularity} from {host}");
        assert_eq!(topology.hostname, host, "{case}");
        assert_eq!(topology.leader, leader, "{case}");
        assert_eq!(topology.local().name, local, "{case}");
        assert_eq!(topology.private_ip.map(|ip| ip.to_string()).as_deref(), private, "{case}");
        assert_eq!(topology.pod_subnet.to_string(), pods, "{case}");
        assert_eq!(topology.wireguard_cidr.to_string(), wg, "{case}");
        assert_eq!(topology.listen_port, 51820, "{case}");
        let expected = if granularity == Granularity::Location { location_segments() } else { full_segments() };
        assert_eq!(segments(&topology), expected, "{case}");
        // Peers in name order, allowed IPs untouched (no duplicates), host bits kept.
        let peers: Vec<(&str, Vec<String>)> =
            topology.peers.iter().map(|p| (p.name.as_str(), strings(&p.allowed_ips))).collect();
        assert_eq!(peers, [("a", vec!["10.5.0.1/24".into(), "10.5.0.2/24".into()]), ("b", vec!["10.5.0.3/24".into()])]);
        assert!(topology.skipped.is_empty() && kilo_warnings(&topology).is_empty(), "{case}");
    }
}

/// The warnings about Kilo's decisions: without the one about the fixture's peer a, which
/// reuses node d's key (tests/duplicate_keys.rs).
fn kilo_warnings(topology: &Topology) -> Vec<&mesh_core::Warning> {
    topology.warnings.iter().filter(|w| !w.reason.ends_with("gets no WireGuard peer here")).collect()
}

#[test]
fn leader_of_every_segment_is_first_when_nothing_else_decides() {
    for host in ["a", "b", "c"] {
        for segment in &compute(host, Granularity::Location).segments {
            assert_eq!(segment.leader, 0);
        }
    }
}

/// A minimal ready node for election and readiness cases.
fn node(name: &str, endpoint: &str, leader: bool) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        endpoint: Some(Endpoint::parse(endpoint).unwrap()),
        key: Some(Key::from_bytes([name.len() as u8 + name.as_bytes()[0]; 32])),
        internal_ip: Some("10.10.0.1/24".parse().unwrap()),
        leader,
        pod_subnet: Some("10.2.0.0/24".parse().unwrap()),
        last_seen: Some(NOW),
        ..NodeSpec::default()
    }
}

// TestFindLeader, through `compute`: the nodes share one location, and names are chosen so that
// name order is the order of Kilo's test lists.
#[test]
fn find_leader_matches_kilo() {
    let a = || node("n1-a", "10.0.0.1:51820", false);
    let b = || node("n2-b", "8.8.8.8:51820", false);
    let c = || node("n3-c", "8.8.8.8:51820", false);
    let d = || node("n4-d", "10.0.0.1:51820", true);
    let two = || node("n5-2", "8.8.8.8:51820", true);
    let cases: Vec<(Vec<NodeSpec>, usize)> = vec![
        (vec![a()], 0),
        (vec![a(), b(), c()], 1),
        (vec![d(), two()], 1),
        (vec![b(), c(), two()], 2),
        (vec![a(), d()], 1),
        (vec![a(), b(), c(), d(), two()], 4),
    ];
    for (nodes, expected) in cases {
        let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let host = names[0].clone();
        let snapshot = ClusterSnapshot { nodes, peers: vec![], now: NOW };
        let topology =
            Topology::compute(&snapshot, &options(&host, Granularity::Location, true, Encapsulation::Never)).unwrap();
        assert_eq!(topology.segments.len(), 1);
        assert_eq!(topology.segments[0].leader, expected, "{names:?}");
    }
}

#[test]
fn dns_endpoints_count_as_public_only_once_resolved() {
    let mut private = node("a", "10.0.0.1:51820", false);
    private.name = "a".into();
    let mut named = node("b", "gw.example.com:51820", false);
    let snapshot = |named: NodeSpec| ClusterSnapshot { nodes: vec![private.clone(), named], peers: vec![], now: NOW };
    let opts = options("a", Granularity::Location, true, Encapsulation::Never);
    let topology = Topology::compute(&snapshot(named.clone()), &opts).unwrap();
    assert_eq!(topology.segments[0].leader, 0, "an unresolved name is not public");
    named.endpoint = Some(Endpoint {
        host: mesh_core::Host::Dns { name: "gw.example.com".into(), resolved: Some("203.0.113.9".parse().unwrap()) },
        port: 51820,
    });
    let topology = Topology::compute(&snapshot(named), &opts).unwrap();
    assert_eq!(topology.segments[0].leader, 1, "a name that resolves to a public IP is");
}

fn peer(name: &str, key: u8, ips: &[&str]) -> Peer {
    Peer {
        name: name.into(),
        allowed_ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        public_key: key_n(key),
        endpoint: None,
        persistent_keepalive: 0,
        preshared_key: None,
    }
}

// TestDeduplicatePeerIPs.
#[test]
fn deduplicate_peer_ips_matches_kilo() {
    let p1 = || peer("1", 1, &["10.0.0.1/24", "10.0.0.2/24"]);
    let p2 = || peer("2", 2, &["10.0.0.1/24", "10.0.0.3/24"]);
    let p3 = || peer("3", 3, &["10.0.0.2/24", "10.0.0.3/24", "10.0.0.1/24"]);
    let p4 = || peer("4", 4, &["10.0.0.3/24", "10.0.0.3/24"]);
    let run = |mut peers: Vec<Peer>| {
        deduplicate_peer_ips(&mut peers);
        peers.into_iter().map(|p| (p.name, strings(&p.allowed_ips))).collect::<Vec<_>>()
    };
    let v = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    assert_eq!(run(vec![]), vec![]);
    assert_eq!(
        run(vec![p1(), p2()]),
        vec![("1".into(), v(&["10.0.0.1/24", "10.0.0.2/24"])), ("2".into(), v(&["10.0.0.3/24"]))]
    );
    assert_eq!(
        run(vec![p2(), p1()]),
        vec![("2".into(), v(&["10.0.0.1/24", "10.0.0.3/24"])), ("1".into(), v(&["10.0.0.2/24"]))]
    );
    assert_eq!(
        run(vec![p3(), p2(), p1(), p4()]),
        vec![
            ("3".into(), v(&["10.0.0.2/24", "10.0.0.3/24", "10.0.0.1/24"])),
            ("2".into(), v(&[])),
            ("1".into(), v(&[])),
            ("4".into(), v(&[])),
        ]
    );
    assert_eq!(
        run(vec![p4(), p1()]),
        vec![("4".into(), v(&["10.0.0.3/24"])), ("1".into(), v(&["10.0.0.1/24", "10.0.0.2/24"]))]
    );
}

// TestFilterAllowedIPs: each case sets the allowed-location IPs of the three location segments
// (through the annotations of their leaders a, b and d) and filters in segment order.
#[test]
fn filter_allowed_location_ips_matches_kilo() {
    let ip = |n: &str| if n.contains('/') { n.to_owned() } else { format!("192.168.178.{n}/32") };
    type PerSegment<'a> = [&'a [&'a str]; 3];
    let cases: [(PerSegment<'_>, PerSegment<'_>); 4] = [
        ([&["4"], &["5"], &["6", "7"]], [&["4"], &["5"], &["6", "7"]]),
        ([&["4", "8"], &["5"], &["6", "7", "4"]], [&["8"], &["5"], &["4", "6", "7"]]),
        ([&["10.4.0.1/32", "8"], &["5"], &["6", "7"]], [&["8"], &["5"], &["6", "7"]]),
        ([&["8"], &["5"], &["192.168.178.7/24"]], [&[], &[], &["192.168.178.7/24"]]),
    ];
    for (input, expected) in cases {
        let mut snapshot = snapshot();
        for (node, ips) in snapshot.nodes.iter_mut().filter(|n| n.name != "c").zip(input) {
            node.allowed_location_ips = ips.iter().map(|n| ip(n).parse().unwrap()).collect();
        }
        let topology =
            Topology::compute(&snapshot, &options("a", Granularity::Location, false, Encapsulation::Never)).unwrap();
        let got: Vec<Vec<String>> = topology.segments.iter().map(|s| strings(&s.allowed_location_ips)).collect();
        // Kilo keeps a segment's list sorted by text; the survivors are what the test checks.
        let want: Vec<Vec<String>> = expected
            .iter()
            .map(|ips| {
                let mut ips: Vec<String> = ips.iter().map(|n| ip(n)).collect();
                ips.sort();
                ips
            })
            .collect();
        assert_eq!(got, want, "input {input:?}");
        let dropped: usize =
            input.iter().map(|ips| ips.len()).sum::<usize>() - want.iter().map(Vec::len).sum::<usize>();
        assert_eq!(kilo_warnings(&topology).len(), dropped, "every dropped IP is reported: {:?}", topology.warnings);
    }
}

#[test]
fn readiness_follows_kilo_and_is_reported() {
    let mut snapshot = snapshot();
    snapshot.nodes[2].last_seen = Some(NOW - 75); // c
    snapshot.nodes[3].pod_subnet = None; // d
    let topology =
        Topology::compute(&snapshot, &options("a", Granularity::Location, false, Encapsulation::Never)).unwrap();
    let skipped: Vec<(String, String)> = topology.skipped.iter().map(|s| (s.name.clone(), s.reason.clone())).collect();
    assert_eq!(
        skipped,
        [
            ("c".to_owned(), "not ready: last-seen 75 s ago (limit 60 s)".to_owned()),
            ("d".to_owned(), "not ready: no pod subnet (spec.podCIDR)".to_owned())
        ]
    );
    assert_eq!(topology.segments.len(), 2);

    // TestReady's not-ready cases, on the local node: typed errors, never a panic.
    let mut broken = snapshot.clone();
    broken.nodes[0].key = None;
    let error = Topology::compute(&broken, &options("a", Granularity::Location, false, Encapsulation::Never));
    assert_eq!(
        error,
        Err(ComputeError::LocalNodeNotReady {
            hostname: "a".into(),
            reason: "not ready: no WireGuard public key".into()
        })
    );
    let error = Topology::compute(&snapshot, &options("zz", Granularity::Location, false, Encapsulation::Never));
    assert_eq!(error, Err(ComputeError::LocalNodeMissing { hostname: "zz".into() }));
}

#[test]
fn exhausted_subnet_is_a_typed_error() {
    let mut opts = options("a", Granularity::Full, false, Encapsulation::Never);
    opts.subnet = "10.4.0.0/31".parse().unwrap();
    let error = Topology::compute(&snapshot(), &opts).unwrap_err();
    assert_eq!(
        error,
        ComputeError::SubnetExhausted { subnet: opts.subnet, segment: "node:b".into(), segments: 4 },
        "{error}"
    );
    opts.subnet = "10.4.0.0/29".parse().unwrap();
    assert!(Topology::compute(&snapshot(), &opts).is_ok());
}

// Cozystack's TestNewTopology "cross from X" cases: every node is its own segment (`node:<name>`)
// with its location as group, every node is a leader, and WireGuard IPs follow segment order.
#[test]
fn cross_topology_matches_cozystack() {
    for (host, wg) in [("a", "10.4.0.1/16"), ("b", "10.4.0.2/16"), ("c", "10.4.0.3/16"), ("d", "10.4.0.4/16")] {
        let topology = compute(host, Granularity::Cross);
        assert!(topology.leader, "cross from {host}");
        assert_eq!(topology.local().name, format!("node:{host}"));
        assert_eq!(topology.wireguard_cidr.to_string(), wg);
        assert_eq!(segments(&topology), full_segments(), "cross from {host}");
        let groups: Vec<_> = topology.segments.iter().map(|s| s.group.clone().unwrap()).collect();
        assert_eq!(groups, ["location:1", "location:2", "location:2", "location:1"]);
    }
}

// Cozystack's TestNewTopologyEmptyLocation: a node without location groups under "location:".
#[test]
fn empty_location_matches_cozystack() {
    let mut snapshot = snapshot();
    snapshot.nodes.push(NodeSpec {
        name: "e".into(),
        endpoint: Some(Endpoint::parse("10.1.0.5:51820").unwrap()),
        internal_ip: Some("10.1.0.5/32".parse().unwrap()),
        pod_subnet: Some("10.2.5.0/24".parse().unwrap()),
        key: Some(common::key("key6")),
        last_seen: Some(NOW),
        ..NodeSpec::default()
    });
    let opts = options("e", Granularity::Location, false, Encapsulation::Never);
    let topology = Topology::compute(&snapshot, &opts).unwrap();
    let names: Vec<_> = topology.segments.iter().map(|s| (s.name.as_str(), s.wireguard_ip.to_string())).collect();
    assert_eq!(
        names,
        [
            ("location:", "10.4.0.1".into()),
            ("location:1", "10.4.0.2".into()),
            ("location:2", "10.4.0.3".into()),
            ("node:d", "10.4.0.4".into())
        ]
    );
    assert_eq!(topology.wireguard_cidr.to_string(), "10.4.0.1/16");

    let opts = options("e", Granularity::Cross, false, Encapsulation::Never);
    let topology = Topology::compute(&snapshot, &opts).unwrap();
    assert_eq!(topology.local().group.as_deref(), Some("location:"));
    assert_eq!(topology.wireguard_cidr.to_string(), "10.4.0.5/16");
}

#[test]
fn result_does_not_depend_on_input_order() {
    let mut reversed = snapshot();
    reversed.nodes.reverse();
    reversed.peers.reverse();
    for granularity in [Granularity::Location, Granularity::Full, Granularity::Cross] {
        let opts = options("b", granularity, true, Encapsulation::Always);
        assert_eq!(Topology::compute(&snapshot(), &opts), Topology::compute(&reversed, &opts));
    }
}

#[test]
fn discovered_endpoints_merge_local_first_then_segment_order() {
    let mut snapshot = snapshot();
    let nat = |ip: &str| ip.parse().unwrap();
    snapshot.nodes[2].discovered_endpoints.insert(key_n(5), nat("7.7.7.7:1")); // c
    snapshot.nodes[1].discovered_endpoints.insert(key_n(5), nat("8.8.8.8:2")); // b
    snapshot.nodes[1].discovered_endpoints.insert(key_n(4), nat("9.9.9.9:3")); // b
    snapshot.nodes[0].discovered_endpoints.insert(key_n(4), nat("6.6.6.6:4")); // a, but a is not local
    let topology =
        Topology::compute(&snapshot, &options("c", Granularity::Location, false, Encapsulation::Never)).unwrap();
    // Local c first; then location:1 (a), location:2 (b, c), node:d.
    assert_eq!(topology.discovered_endpoints[&key_n(5)], nat("7.7.7.7:1"));
    assert_eq!(topology.discovered_endpoints[&key_n(4)], nat("6.6.6.6:4"));
}
