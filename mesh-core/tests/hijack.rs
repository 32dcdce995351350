//! Hijacks are refused: an allowed-location IP of another location, or a Peer allowed IP, that
//! would take over a default route, the local node's networks, another node's addresses, the
//! WireGuard subnet or a service CIDR is left out of the local configuration with a warning,
//! unless `--allowed-hijack-cidr` allows it.

use std::net::IpAddr;

use ipnet::IpNet;
use mesh_core::{
    ClusterSnapshot, DesiredState, Endpoint, Granularity, Key, NodeSpec, ObjectKind, Options, PeerSpec, Topology,
    Warning,
};
use proptest::prelude::*;

const NOW: i64 = 1_000_000;

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn node(name: &str, location: &str, internal: &str, endpoint: &str, pods: &str, key: u8) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        location: location.into(),
        internal_ip: Some(net(internal)),
        endpoint: Some(Endpoint::parse(endpoint).unwrap()),
        pod_subnet: Some(net(pods)),
        key: Some(Key::from_bytes([key; 32])),
        last_seen: Some(NOW),
        ..NodeSpec::default()
    }
}

fn peer(name: &str, allowed_ips: &[&str], key: u8) -> PeerSpec {
    PeerSpec {
        name: name.into(),
        allowed_ips: allowed_ips.iter().map(|ip| net(ip)).collect(),
        public_key: Some(Key::from_bytes([key; 32])),
        ..PeerSpec::default()
    }
}

/// Three locations, one node each: a (LAN 192.168.1.0/24), b (LAN 192.168.2.0/24), c (a cloud
/// VM with a /32 internal IP).
fn cluster(b_location_ips: &[&str], peers: Vec<PeerSpec>) -> ClusterSnapshot {
    let mut b = node("b", "loc-b", "192.168.2.1/24", "203.0.113.2:51820", "10.2.2.0/24", 2);
    b.allowed_location_ips = b_location_ips.iter().map(|ip| net(ip)).collect();
    ClusterSnapshot {
        nodes: vec![
            node("a", "loc-a", "192.168.1.1/24", "203.0.113.1:51820", "10.2.1.0/24", 1),
            b,
            node("c", "loc-c", "10.0.3.1/32", "198.51.100.3:51820", "10.2.3.0/24", 3),
        ],
        peers,
        now: NOW,
    }
}

fn options(host: &str) -> Options {
    Options { service_cidrs: vec![net("10.96.0.0/12")], ..Options::for_host(host) }
}

/// The desired state on `host` and every warning about a refused range.
fn configure(snapshot: &ClusterSnapshot, options: &Options) -> (DesiredState, Vec<Warning>) {
    let topology = Topology::compute(snapshot, options).unwrap();
    let refused = topology.warnings.iter().filter(|w| w.reason.contains("refused (allow it")).cloned().collect();
    (DesiredState::from_topology(&topology, options).0, refused)
}

/// Whether the desired state routes `range` or gives it to a WireGuard peer.
fn configured(state: &DesiredState, range: &str) -> bool {
    let range = net(range).trunc();
    state.routes.values().any(|route| route.dst == range)
        || state.peers.values().any(|peer| peer.allowed_ips.contains(&range))
}

fn reasons(warnings: &[Warning]) -> Vec<(ObjectKind, String, String, String)> {
    warnings.iter().map(|w| (w.kind, w.name.clone(), w.value.clone().unwrap_or_default(), w.reason.clone())).collect()
}

#[test]
fn an_allowed_location_default_route_is_refused_and_named() {
    let snapshot = cluster(&["0.0.0.0/0", "::/0", "192.168.20.0/24"], vec![]);
    let (state, warnings) = configure(&snapshot, &options("a"));
    assert!(!configured(&state, "0.0.0.0/0") && !configured(&state, "::/0"), "{state:?}");
    assert!(configured(&state, "192.168.20.0/24"), "a harmless range was refused: {warnings:?}");
    let reason = "a default route: all traffic would go into the mesh; refused (allow it with --allowed-hijack-cidr)";
    assert_eq!(
        reasons(&warnings),
        [
            (ObjectKind::Node, "b".into(), "0.0.0.0/0".into(), reason.into()),
            (ObjectKind::Node, "b".into(), "::/0".into(), reason.into()),
        ]
    );
    assert!(warnings.iter().all(|w| w.annotation.as_deref() == Some("kilo.squat.ai/allowed-location-ips")));
    // The announcing node keeps its own: it does not route them (it masquerades towards them).
    let topology = Topology::compute(&snapshot, &options("b")).unwrap();
    assert_eq!(topology.local().allowed_location_ips.len(), 3);
}

#[test]
fn another_locations_lan_is_refused_where_it_would_take_over_a_network() {
    // b announces a's LAN: on a it overlaps a's own network, on c it holds a's internal IP.
    let snapshot = cluster(&["192.168.1.0/24"], vec![]);
    let (state, warnings) = configure(&snapshot, &options("a"));
    assert!(!configured(&state, "192.168.1.0/24"));
    assert_eq!(
        reasons(&warnings)[0].3,
        "overlaps the private network 192.168.1.0/24 of the local node a; refused (allow it with --allowed-hijack-cidr)"
    );
    let (state, warnings) = configure(&snapshot, &options("c"));
    assert!(!configured(&state, "192.168.1.0/24"));
    assert!(reasons(&warnings)[0].3.starts_with("contains the internal IP 192.168.1.1 of node a;"), "{warnings:?}");

    // A location announcing its own LAN (holding its own nodes' addresses) is what the
    // annotation is for, as in Cozystack's example cluster.
    let snapshot = cluster(&["192.168.2.0/24"], vec![]);
    for host in ["a", "c"] {
        let (state, warnings) = configure(&snapshot, &options(host));
        assert!(configured(&state, "192.168.2.0/24") && warnings.is_empty(), "{host}: {warnings:?}");
    }
}

#[test]
fn peers_cannot_take_over_default_routes_pods_services_or_the_mesh() {
    let peers = vec![
        peer("all", &["0.0.0.0/0"], 10),
        peer("pods-of-a", &["10.2.1.0/24"], 11),
        peer("services", &["10.96.0.0/16"], 12),
        peer("mesh", &["10.0.0.0/8"], 13),
        peer("wireguard-ip", &["10.4.0.2/32"], 14),
        peer("endpoint", &["198.51.100.0/24"], 15),
        peer("laptop", &["10.5.0.1/32", "10.4.9.9/32"], 16),
    ];
    let snapshot = cluster(&[], peers);
    let (state, warnings) = configure(&snapshot, &options("b"));
    // Peers in name order; of several networks a range takes over, the local node's are named.
    let expected = [
        ("all", "0.0.0.0/0", "a default route: all traffic would go into the mesh"),
        ("endpoint", "198.51.100.0/24", "contains the endpoint IP 198.51.100.3 of node c"),
        ("mesh", "10.0.0.0/8", "overlaps the pod subnet 10.2.2.0/24 of the local node b"),
        ("pods-of-a", "10.2.1.0/24", "overlaps the pod subnet 10.2.1.0/24 of node a"),
        ("services", "10.96.0.0/16", "overlaps the service CIDR 10.96.0.0/12"),
        ("wireguard-ip", "10.4.0.2/32", "contains the WireGuard IP 10.4.0.2 of segment location:loc-b"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(name, value, what)| {
            (
                ObjectKind::Peer,
                name.to_string(),
                value.to_string(),
                format!("{what}; refused (allow it with --allowed-hijack-cidr)"),
            )
        })
        .collect();
    assert_eq!(reasons(&warnings), expected);
    assert!(warnings.iter().all(|w| w.annotation.as_deref() == Some("spec.allowedIPs")));
    for (_, name, value, _) in &expected {
        if name == "pods-of-a" {
            // Still a's: routed to its segment and held by its WireGuard peer.
            let route = state.routes.values().find(|route| route.dst == net(value)).unwrap();
            assert_eq!(route.gateway, Some("10.4.0.1".parse().unwrap()));
            assert!(state.peers[&Key::from_bytes([1; 32])].allowed_ips.contains(&net(value)));
        } else {
            assert!(!configured(&state, value), "{value} is configured");
        }
    }
    // A free address inside the WireGuard subnet is not a hijack.
    assert!(configured(&state, "10.5.0.1/32") && configured(&state, "10.4.9.9/32"));
    // The node whose pods a Peer names would otherwise route them into the tunnel.
    let (state, warnings) = configure(&snapshot, &options("a"));
    assert!(state.routes.values().all(|route| route.dst != net("10.2.1.0/24")), "{state:?}");
    assert!(reasons(&warnings)[3].3.starts_with("overlaps the pod subnet 10.2.1.0/24 of the local node a;"));
    // A range that does not contain the WireGuard subnet but holds other guarded networks
    // names the first of them.
    let snapshot = cluster(&[], vec![peer("wide", &["10.4.0.0/15"], 20)]);
    let (_, warnings) = configure(&snapshot, &options("b"));
    assert!(reasons(&warnings)[0].3.starts_with("contains the WireGuard subnet 10.4.0.0/16;"), "{warnings:?}");
}

#[test]
fn allowed_ranges_are_routed_as_kilo_routes_them() {
    let egress = cluster(&[], vec![peer("egress", &["0.0.0.0/0"], 10)]);
    let lan = cluster(&["192.168.1.0/24"], vec![]);
    let everything = Options { allowed_hijack_cidrs: vec![net("0.0.0.0/0")], ..options("c") };
    for (snapshot, range) in [(&egress, "0.0.0.0/0"), (&lan, "192.168.1.0/24")] {
        let (state, warnings) = configure(snapshot, &everything);
        assert!(warnings.is_empty() && configured(&state, range), "{range}: {warnings:?}");
    }
    // An allowance covers the ranges inside it only.
    let lans = Options { allowed_hijack_cidrs: vec![net("192.168.0.0/16")], ..options("c") };
    assert!(configure(&lan, &lans).1.is_empty());
    let (state, warnings) = configure(&egress, &lans);
    assert!(!configured(&state, "0.0.0.0/0") && warnings.len() == 1);
}

#[test]
fn refusals_do_not_depend_on_input_order() {
    let peers = vec![peer("p", &["0.0.0.0/0", "10.2.3.0/25"], 10), peer("q", &["10.0.0.0/8"], 11)];
    let snapshot = cluster(&["0.0.0.0/0", "192.168.1.0/24"], peers);
    let mut reversed = snapshot.clone();
    reversed.nodes.reverse();
    reversed.peers.reverse();
    for host in ["a", "c"] {
        let forward = Topology::compute(&snapshot, &options(host)).unwrap();
        let backward = Topology::compute(&reversed, &options(host)).unwrap();
        assert_eq!(forward, backward);
    }
}

// ---------------------------------------------------------------------------------------------
// Property: whatever the cluster announces, nothing configured takes over a guarded network.
// ---------------------------------------------------------------------------------------------

/// Ranges a cluster may announce: hostile and harmless ones, of both families.
fn range() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        Just(net("0.0.0.0/0")),
        Just(net("::/0")),
        Just(net("0.0.0.0/1")),
        Just(net("10.0.0.0/8")),
        (0u8..6, 0u8..4).prop_map(|(node, part)| net(&format!("10.2.{node}.{}/26", part * 64))),
        (0u8..6).prop_map(|node| net(&format!("10.2.{node}.0/24"))),
        (0u8..4).prop_map(|location| net(&format!("192.168.{location}.0/24"))),
        (0u8..4, 0u8..6).prop_map(|(location, node)| net(&format!("192.168.{location}.{}/32", node + 1))),
        Just(net("192.168.0.0/16")),
        Just(net("10.4.0.0/16")),
        (0u8..8).prop_map(|n| net(&format!("10.4.0.{n}/32"))),
        Just(net("10.96.0.0/12")),
        Just(net("10.100.0.0/16")),
        (0u8..8).prop_map(|n| net(&format!("172.20.{n}.0/24"))),
        Just(net("203.0.113.0/24")),
        Just(net("fd00:2::/64")),
    ]
}

fn cluster_with_hostile_ranges() -> impl Strategy<Value = (ClusterSnapshot, Vec<IpNet>)> {
    let nodes = prop::collection::vec((0u8..4, prop::collection::vec(range(), 0..3), any::<bool>()), 2..7);
    let peers = prop::collection::vec(prop::collection::vec(range(), 1..4), 0..4);
    let allowed = prop::collection::vec(range(), 0..2);
    (nodes, peers, allowed).prop_map(|(nodes, peers, allowed)| {
        let nodes = nodes
            .into_iter()
            .enumerate()
            .map(|(index, (location, location_ips, public))| {
                let endpoint = if public {
                    format!("203.0.113.{}:51820", index + 1)
                } else {
                    format!("192.168.{location}.{}:51820", index + 1)
                };
                NodeSpec {
                    allowed_location_ips: location_ips,
                    ..node(
                        &format!("n{index}"),
                        &format!("loc-{location}"),
                        &format!("192.168.{location}.{}/24", index + 1),
                        &endpoint,
                        &format!("10.2.{index}.0/24"),
                        index as u8 + 1,
                    )
                }
            })
            .collect();
        let peers = peers
            .into_iter()
            .enumerate()
            .map(|(index, ranges)| PeerSpec {
                name: format!("p{index}"),
                allowed_ips: ranges,
                public_key: Some(Key::from_bytes([100 + index as u8; 32])),
                ..PeerSpec::default()
            })
            .collect();
        (ClusterSnapshot { nodes, peers, now: NOW }, allowed)
    })
}

/// An independent statement of the rule: whether `range`, announced by nodes of `own_locations`
/// (none for a Peer), takes over a network the local node must keep.
fn takes_over(
    snapshot: &ClusterSnapshot,
    topology: &Topology,
    options: &Options,
    range: IpNet,
    own_locations: &[String],
) -> bool {
    let range = range.trunc();
    let overlaps = |network: IpNet| range.contains(&network) || network.contains(&range);
    let local = snapshot.nodes.iter().find(|node| node.name == options.hostname).unwrap();
    range.prefix_len() == 0
        || local.internal_ip.is_some_and(|ip| overlaps(ip.trunc()))
        || overlaps(topology.pod_subnet)
        || range.contains(&options.subnet.trunc())
        || topology.segments.iter().any(|segment| range.contains(&segment.wireguard_ip))
        || options.service_cidrs.iter().any(|cidr| overlaps(cidr.trunc()))
        || snapshot.nodes.iter().filter(|node| !own_locations.contains(&node.location)).any(|node| {
            node.pod_subnet.is_some_and(|pods| overlaps(pods.trunc()))
                || node.internal_ip.is_some_and(|ip| range.contains(&ip.addr()))
                || node.endpoint.as_ref().and_then(Endpoint::ip).is_some_and(|ip: IpAddr| range.contains(&ip))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn nothing_configured_takes_over_a_guarded_network((snapshot, allowed) in cluster_with_hostile_ranges()) {
        for host in &snapshot.nodes {
            let options = Options {
                service_cidrs: vec![net("10.96.0.0/12")],
                allowed_hijack_cidrs: allowed.clone(),
                granularity: Granularity::Location,
                ..Options::for_host(&host.name)
            };
            let Ok(topology) = Topology::compute(&snapshot, &options) else { continue };
            let allowed = |range: &IpNet| allowed.iter().any(|allowed| allowed.contains(&range.trunc()));
            // What is left of the announced ranges passes the rule or is allowed.
            for (index, segment) in topology.segments.iter().enumerate() {
                if topology.is_local_location(segment) {
                    continue;
                }
                let own: Vec<String> = snapshot
                    .nodes
                    .iter()
                    .filter(|node| segment.members.iter().any(|member| member.name == node.name))
                    .map(|node| node.location.clone())
                    .collect();
                for range in &segment.allowed_location_ips {
                    prop_assert!(
                        allowed(range) || !takes_over(&snapshot, &topology, &options, *range, &own),
                        "{}: segment {index} keeps {range}", host.name
                    );
                }
            }
            for peer in &topology.peers {
                for range in &peer.allowed_ips {
                    prop_assert!(
                        allowed(range) || !takes_over(&snapshot, &topology, &options, *range, &[]),
                        "{}: peer {} keeps {range}", host.name, peer.name
                    );
                }
            }
            // And every route or WireGuard allowed IP of the desired state is a node's own
            // network, or one of those.
            let (state, _) = DesiredState::from_topology(&topology, &options);
            let node_networks: Vec<IpNet> = snapshot
                .nodes
                .iter()
                .flat_map(|node| [node.pod_subnet.map(|p| p.trunc()), node.internal_ip.map(|ip| IpNet::from(ip.addr()))])
                .flatten()
                .chain(topology.segments.iter().map(|segment| IpNet::from(segment.wireguard_ip)))
                .collect();
            let kept: Vec<IpNet> = topology
                .segments
                .iter()
                .flat_map(|segment| segment.allowed_location_ips.iter())
                .chain(topology.peers.iter().flat_map(|peer| peer.allowed_ips.iter()))
                .map(IpNet::trunc)
                .collect();
            let configured = state
                .routes
                .values()
                .map(|route| route.dst)
                .chain(state.peers.values().flat_map(|peer| peer.allowed_ips.iter().copied()));
            for range in configured {
                prop_assert!(node_networks.contains(&range) || kept.contains(&range), "{}: {range} configured", host.name);
                if range.prefix_len() == 0 {
                    prop_assert!(allowed(&range), "{}: a default route configured", host.name);
                }
            }
        }
    }

    #[test]
    fn with_everything_allowed_nothing_is_refused((snapshot, _) in cluster_with_hostile_ranges()) {
        for host in &snapshot.nodes {
            let options = Options {
                allowed_hijack_cidrs: vec![net("0.0.0.0/0"), net("::/0")],
                ..Options::for_host(&host.name)
            };
            if let Ok(topology) = Topology::compute(&snapshot, &options) {
                prop_assert!(topology.warnings.iter().all(|w| !w.reason.contains("refused (allow it")));
            }
        }
    }
}
