//! `Plan::between` and `Plan::apply_to`: minimal, ordered, per-peer, roaming-aware.

mod common;

use common::{key_n, options, snapshot};
use mesh_core::plan::{KeepReason, PeerUpdate};
use mesh_core::state::PeerStats;
use mesh_core::{DesiredState, Encapsulation, Family, Granularity, ObservedState, Operation, Plan, Topology};

fn desired(host: &str, granularity: Granularity) -> DesiredState {
    let opts = options(host, granularity, true, Encapsulation::Always);
    let topology = Topology::compute(&snapshot(), &opts).unwrap();
    DesiredState::from_topology(&topology, &opts).0
}

#[test]
fn steady_state_needs_no_operation() {
    for host in ["a", "b", "c", "d"] {
        for granularity in [Granularity::Location, Granularity::Full, Granularity::Cross] {
            let state = desired(host, granularity);
            let plan = Plan::between(&ObservedState::of(state.clone()), &state);
            assert!(plan.is_empty(), "{host} {granularity}: {plan:?}");
        }
    }
}

#[test]
fn from_nothing_the_plan_builds_the_whole_state_in_a_safe_order() {
    let state = desired("b", Granularity::Location);
    let plan = Plan::between(&ObservedState::default(), &state);
    assert_eq!(plan.apply_to(&Default::default()), state);
    let position = |kind: &str| plan.operations.iter().position(|op| op.kind() == kind).unwrap();
    // The link is up before routes through it are added; rules follow their routes.
    assert!(position("set_link_up") < position("add_route"));
    assert!(position("add_route") < position("add_rule"));
    assert!(position("add_peer") < position("add_route"));
}

#[test]
fn one_changed_allowed_ip_touches_one_peer_only() {
    let before = desired("a", Granularity::Full);
    let mut after = before.clone();
    let peer = after.peers.get_mut(&key_n(3)).unwrap();
    peer.allowed_ips.insert("10.9.0.0/24".parse().unwrap());
    let plan = Plan::between(&ObservedState::of(before.clone()), &after);
    let mut expected = PeerUpdate::new(key_n(3));
    expected.allowed_ips = Some(after.peers[&key_n(3)].allowed_ips.clone());
    assert_eq!(plan.operations, [Operation::UpdatePeer(expected)]);
    assert_eq!(plan.apply_to(&before), after);
}

#[test]
fn host_bits_do_not_cause_a_perpetual_diff() {
    // Peer "a" claims 10.5.0.1/24 and 10.5.0.2/24; the kernel stores 10.5.0.0/24 once. Kilo compares
    // unmasked values and rewrites the configuration every resync; the desired state is masked.
    let mut snapshot = snapshot();
    snapshot.peers[0].public_key = Some(key_n(6));
    snapshot.peers[1].allowed_ips = vec!["10.6.0.3/24".parse().unwrap()];
    let opts = options("a", Granularity::Location, true, Encapsulation::Always);
    let topology = Topology::compute(&snapshot, &opts).unwrap();
    let (state, warnings) = DesiredState::from_topology(&topology, &opts);
    assert!(warnings.is_empty(), "{warnings:?}");
    let allowed: Vec<String> = state.peers[&key_n(6)].allowed_ips.iter().map(ToString::to_string).collect();
    assert_eq!(allowed, ["10.5.0.0/24"]);
    assert!(state.routes.keys().any(|key| key.dst.to_string() == "10.5.0.0/24"));
}

#[test]
fn a_recently_roamed_endpoint_is_kept_and_reported() {
    let state = desired("a", Granularity::Full);
    let roamed = "203.0.113.50:40000".parse().unwrap();
    let mut observed = ObservedState::of(state.clone());
    observed.state.peers.get_mut(&key_n(2)).unwrap().endpoint = Some(roamed);
    observed.observed_at = 10_000;
    observed.peer_stats.insert(key_n(2), PeerStats { last_handshake: Some(9_990), ..PeerStats::default() });

    let plan = Plan::between(&observed, &state);
    assert!(plan.is_empty(), "{plan:?}");
    assert_eq!(plan.kept_endpoints.len(), 1);
    let kept = plan.kept_endpoints[0];
    assert_eq!((kept.public_key, kept.current, kept.reason), (key_n(2), roamed, KeepReason::Roamed));
    assert_eq!(kept.configured, Some("10.1.0.2:51820".parse().unwrap()));

    // Three minutes after the last handshake the configuration wins again.
    observed.peer_stats.insert(key_n(2), PeerStats { last_handshake: Some(10_000 - 180), ..PeerStats::default() });
    let plan = Plan::between(&observed, &state);
    let mut expected = PeerUpdate::new(key_n(2));
    expected.endpoint = Some("10.1.0.2:51820".parse().unwrap());
    assert_eq!(plan.operations, [Operation::UpdatePeer(expected)]);
    assert!(plan.kept_endpoints.is_empty());
}

#[test]
fn a_learned_endpoint_without_configured_one_is_never_reset() {
    // Peer "a" has no endpoint (give it a key of its own; the fixture reuses node d's).
    let mut snapshot = snapshot();
    snapshot.peers[0].public_key = Some(key_n(6));
    let opts = options("b", Granularity::Location, true, Encapsulation::Always);
    let topology = Topology::compute(&snapshot, &opts).unwrap();
    let (state, _) = DesiredState::from_topology(&topology, &opts);
    assert_eq!(state.peers[&key_n(6)].endpoint, None);
    let mut observed = ObservedState::of(state.clone());
    let learned = "198.51.100.7:5555".parse().unwrap();
    observed.state.peers.get_mut(&key_n(6)).unwrap().endpoint = Some(learned);
    let plan = Plan::between(&observed, &state);
    assert!(plan.is_empty());
    assert_eq!(plan.kept_endpoints[0].reason, KeepReason::NoneConfigured);
}

#[test]
fn leadership_change_swaps_routes_in_place_and_drops_peers() {
    let leader = desired("b", Granularity::Location);
    let mut snapshot = snapshot();
    snapshot.nodes[2].leader = true; // c becomes location 2's leader
    let opts = options("b", Granularity::Location, true, Encapsulation::Always);
    let topology = Topology::compute(&snapshot, &opts).unwrap();
    assert!(!topology.leader);
    let (mut follower, _) = DesiredState::from_topology(&topology, &opts);
    let plan = Plan::between(&ObservedState::of(leader.clone()), &follower);
    // A follower does not care about the listen port, so the plan leaves it as it is.
    assert_eq!(follower.interface.listen_port, None);
    follower.interface.listen_port = leader.interface.listen_port;
    assert_eq!(plan.apply_to(&leader), follower);
    assert!(plan.operations.contains(&Operation::SetLinkUp(false)));
    assert!(plan.operations.iter().any(|op| matches!(op, Operation::ReplaceRoute(_))));
    assert!(plan.operations.iter().all(|op| !matches!(op, Operation::AddPeer(_))));
    let removed = plan.operations.iter().filter(|op| matches!(op, Operation::RemovePeer(_))).count();
    assert_eq!(removed, leader.peers.len());
    // Deletions come first.
    let first_add = plan.operations.iter().position(|op| op.kind().starts_with("add")).unwrap_or(usize::MAX);
    let last_delete = plan.operations.iter().rposition(|op| op.kind().starts_with("delete")).unwrap_or(0);
    assert!(last_delete < first_add);
}

#[test]
fn a_firewall_change_rewrites_one_family_only() {
    let before = desired("b", Granularity::Location);
    let mut opts = options("b", Granularity::Location, true, Encapsulation::Always);
    opts.service_cidrs = vec!["10.96.0.0/12".parse().unwrap()];
    let topology = Topology::compute(&snapshot(), &opts).unwrap();
    let (after, _) = DesiredState::from_topology(&topology, &opts);
    let plan = Plan::between(&ObservedState::of(before.clone()), &after);
    assert_eq!(plan.operations.len(), 1);
    assert!(matches!(&plan.operations[0], Operation::EditFirewall(edit) if edit.family == Family::Ipv4));
    assert_eq!(plan.apply_to(&before), after);
}

#[test]
fn duplicate_keys_and_routes_are_resolved_and_reported() {
    // The fixture's peer "a" uses node d's key: the node keeps it, the peer is reported.
    let opts = options("a", Granularity::Location, true, Encapsulation::Always);
    let topology = Topology::compute(&snapshot(), &opts).unwrap();
    let (state, _) = DesiredState::from_topology(&topology, &opts);
    let d = &state.peers[&key_n(4)];
    assert!(d.allowed_ips.contains(&"10.2.4.0/24".parse().unwrap()));
    let reason = "is already the public key of node d (segment node:d); peer a gets no WireGuard peer here";
    assert!(topology.warnings.iter().any(|w| w.name == "a" && w.reason == reason), "{:?}", topology.warnings);

    // Nodes a and b share 192.168.0.1: from d two routes claim it; the later one is used.
    let opts = options("d", Granularity::Location, true, Encapsulation::Always);
    let topology = Topology::compute(&snapshot(), &opts).unwrap();
    let (state, warnings) = DesiredState::from_topology(&topology, &opts);
    let route = state.routes.values().find(|r| r.dst.to_string() == "192.168.0.1/32").unwrap();
    assert_eq!(route.gateway, Some("10.4.0.2".parse().unwrap()));
    assert!(warnings.iter().any(|w| w.reason.contains("two routes to 192.168.0.1/32")), "{warnings:?}");
}

#[test]
fn tunnel_address_is_the_first_pod_ip_when_encapsulating_locally() {
    let state = desired("c", Granularity::Location);
    assert_eq!(state.tunnel_address, Some("10.2.3.1/32".parse().unwrap()));
    let opts = options("c", Granularity::Location, false, Encapsulation::Always);
    let topology = Topology::compute(&snapshot(), &opts).unwrap();
    assert_eq!(DesiredState::from_topology(&topology, &opts).0.tunnel_address, None);
}

#[test]
fn a_handshake_starts_with_each_added_peer_that_has_an_endpoint() {
    // Peer "a" has no endpoint (a key of its own; the fixture reuses node d's): nothing to send to.
    let mut snapshot = snapshot();
    snapshot.peers[0].public_key = Some(key_n(6));
    let opts = options("a", Granularity::Full, true, Encapsulation::Always);
    let state = DesiredState::from_topology(&Topology::compute(&snapshot, &opts).unwrap(), &opts).0;
    let plan = Plan::between(&ObservedState::default(), &state);
    // Peer "b" lost its only allowed IP to "a" (same range): nothing would route to it either.
    let reachable: Vec<_> =
        state.peers.values().filter(|peer| peer.endpoint.is_some() && !peer.allowed_ips.is_empty()).collect();
    assert_eq!(reachable.len() + 2, state.peers.len(), "the fixture has peers without endpoint or allowed IPs");
    assert_eq!(plan.handshakes.len(), reachable.len());
    for (start, peer) in plan.handshakes.iter().zip(&reachable) {
        assert_eq!(start.public_key, peer.public_key);
        // A host route of the peer (its WireGuard IP) when it has one: only this peer is sent to.
        let host_route = peer.allowed_ips.iter().find(|net| net.prefix_len() == 32).unwrap();
        assert_eq!(start.address, host_route.addr(), "{peer:?}");
    }
    // Steady state: nothing is sent.
    assert!(Plan::between(&ObservedState::of(state.clone()), &state).handshakes.is_empty());
}

#[test]
fn a_peer_reached_only_through_a_default_route_gets_no_datagram() {
    let mut state = desired("a", Granularity::Full);
    let peer = state.peers.get_mut(&key_n(2)).unwrap();
    peer.allowed_ips = ["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()].into();
    let plan = Plan::between(&ObservedState::default(), &state);
    assert!(plan.operations.contains(&Operation::AddPeer(state.peers[&key_n(2)].clone())), "{plan:?}");
    assert!(plan.handshakes.iter().all(|start| start.public_key != key_n(2)), "{:?}", plan.handshakes);
    assert!(plan.handshakes.iter().any(|start| start.public_key == key_n(3)), "the others still get theirs");
}

#[test]
fn a_leader_swap_starts_a_handshake_with_the_new_leader_only() {
    let before = desired("a", Granularity::Location);
    let mut snapshot = snapshot();
    snapshot.nodes[2].leader = true; // c takes location 2 over from b
    let opts = options("a", Granularity::Location, true, Encapsulation::Always);
    let after = DesiredState::from_topology(&Topology::compute(&snapshot, &opts).unwrap(), &opts).0;
    let plan = Plan::between(&ObservedState::of(before), &after);
    assert!(plan.operations.contains(&Operation::RemovePeer(key_n(2))));
    let keys: Vec<_> = plan.handshakes.iter().map(|start| start.public_key).collect();
    assert_eq!(keys, [key_n(3)]);
    assert!(after.peers[&key_n(3)].allowed_ips.iter().any(|net| net.contains(&plan.handshakes[0].address)));
}

#[test]
fn a_new_endpoint_starts_a_handshake_and_other_peer_changes_do_not() {
    let state = desired("a", Granularity::Full);
    let mut observed = ObservedState::of(state.clone());
    let peer = observed.state.peers.get_mut(&key_n(2)).unwrap();
    peer.endpoint = Some("203.0.113.50:40000".parse().unwrap());
    observed.state.peers.get_mut(&key_n(3)).unwrap().persistent_keepalive = 7;
    let plan = Plan::between(&observed, &state);
    assert_eq!(plan.operations.len(), 2, "{plan:?}");
    let keys: Vec<_> = plan.handshakes.iter().map(|start| start.public_key).collect();
    assert_eq!(keys, [key_n(2)]);
    // A kept (roamed) endpoint is no new endpoint: its session is alive.
    observed.observed_at = 10_000;
    observed.peer_stats.insert(key_n(2), PeerStats { last_handshake: Some(9_990), ..PeerStats::default() });
    assert!(Plan::between(&observed, &state).handshakes.is_empty());
}
