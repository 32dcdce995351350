//! A public key announced by two objects (a node announcing another node's key, a Peer reusing
//! a node's key) gives one WireGuard peer, one warning naming both objects, and a steady state
//! that needs no write: WireGuard ignores a peer with the device's own key, so a desired state
//! that wants one is never reached and was re-applied on every pass.

use mesh_core::{
    ClusterSnapshot, DataplaneState, DesiredState, Endpoint, Key, NodeSpec, ObjectKind, ObservedState, Options,
    PeerSpec, Plan, Topology, Warning,
};

const NOW: i64 = 1_000_000;

fn key(n: u8) -> Key {
    Key::from_bytes([n; 32])
}

fn node(name: &str, index: u8, key: Key) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        location: name.into(),
        internal_ip: Some(format!("192.168.{index}.1/24").parse().unwrap()),
        endpoint: Some(Endpoint::parse(&format!("203.0.113.{index}:51820")).unwrap()),
        pod_subnet: Some(format!("10.2.{index}.0/24").parse().unwrap()),
        key: Some(key),
        last_seen: Some(NOW),
        ..NodeSpec::default()
    }
}

fn peer(name: &str, key: Key) -> PeerSpec {
    PeerSpec {
        name: name.into(),
        allowed_ips: vec!["10.5.0.1/32".parse().unwrap()],
        public_key: Some(key),
        ..PeerSpec::default()
    }
}

/// What the kernel (or wireguard-go) holds after applying `plan` to `observed`: the plan's
/// semantics, except that a peer with the device's own public key is silently ignored.
fn kernel_after(observed: &DataplaneState, plan: &Plan, own_key: Key) -> DataplaneState {
    let mut state = plan.apply_to(observed);
    state.peers.remove(&own_key);
    state
}

/// Desired state and key warnings of `host`, and whether two passes reach a steady state.
fn converge(snapshot: &ClusterSnapshot, host: &str, own_key: Key) -> (DesiredState, Vec<Warning>) {
    let options = Options::for_host(host);
    let topology = Topology::compute(snapshot, &options).unwrap();
    let warnings: Vec<Warning> =
        topology.warnings.iter().filter(|w| w.reason.contains("gets no WireGuard peer")).cloned().collect();
    let (desired, _) = DesiredState::from_topology(&topology, &options);
    let first = Plan::between(&ObservedState::default(), &desired);
    let after = kernel_after(&DataplaneState::default(), &first, own_key);
    let second = Plan::between(&ObservedState::of(after), &desired);
    assert!(second.is_empty(), "{host}: the next pass writes again: {:?}", second.operations);
    (desired, warnings)
}

#[test]
fn a_node_announcing_the_local_nodes_key_is_not_a_peer_of_it() {
    // x announces v's key.
    let snapshot = ClusterSnapshot {
        nodes: vec![node("v", 1, key(1)), node("x", 2, key(1)), node("w", 3, key(3))],
        peers: vec![],
        now: NOW,
    };
    let (desired, warnings) = converge(&snapshot, "v", key(1));
    assert!(!desired.peers.contains_key(&key(1)));
    assert!(desired.peers.contains_key(&key(3)));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let warning = &warnings[0];
    assert_eq!((warning.kind, warning.name.as_str()), (ObjectKind::Node, "x"));
    assert_eq!(warning.annotation.as_deref(), Some("kilo.squat.ai/key"));
    assert_eq!(
        warning.reason,
        "is the public key of the local node v, which WireGuard cannot have as a peer; node x (segment location:x) \
         gets no WireGuard peer here"
    );
    // Elsewhere the first segment keeps the key, the other is named.
    let (desired, warnings) = converge(&snapshot, "w", key(3));
    assert_eq!(desired.peers.len(), 1);
    assert!(desired.peers[&key(1)].allowed_ips.contains(&"10.2.1.0/24".parse().unwrap()));
    assert_eq!(warnings.len(), 1);
    assert_eq!(
        warnings[0].reason,
        "is already the public key of node v (segment location:v); node x (segment location:x) gets no WireGuard peer here"
    );
}

#[test]
fn a_peer_reusing_a_nodes_key_is_not_a_peer_of_it() {
    let snapshot = ClusterSnapshot {
        nodes: vec![node("v", 1, key(1)), node("w", 2, key(2))],
        peers: vec![peer("laptop", key(1))],
        now: NOW,
    };
    let (desired, warnings) = converge(&snapshot, "v", key(1));
    assert!(!desired.peers.contains_key(&key(1)));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!((warnings[0].kind, warnings[0].name.as_str()), (ObjectKind::Peer, "laptop"));
    assert!(warnings[0].reason.starts_with("is the public key of the local node v,"), "{warnings:?}");
    let (desired, warnings) = converge(&snapshot, "w", key(2));
    assert!(
        !desired.peers[&key(1)].allowed_ips.contains(&"10.5.0.1/32".parse().unwrap()),
        "the Peer took the node's key"
    );
    assert_eq!(
        warnings[0].reason,
        "is already the public key of node v (segment location:v); peer laptop gets no WireGuard peer here"
    );
}

#[test]
fn the_configuration_kilo_renders_keeps_both_entries() {
    let snapshot = ClusterSnapshot {
        nodes: vec![node("v", 1, key(1)), node("w", 2, key(2))],
        peers: vec![peer("laptop", key(2))],
        now: NOW,
    };
    let topology = Topology::compute(&snapshot, &Options::for_host("v")).unwrap();
    let keys: Vec<Key> = topology.wireguard_peers().iter().map(|peer| peer.public_key).collect();
    assert_eq!(keys, [key(2), key(2)], "showconf prints what Kilo prints");
}
