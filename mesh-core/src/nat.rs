//! NAT traversal: which endpoints WireGuard learned that the mesh should publish (Kilo §4.9).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::{ClusterSnapshot, Key, ObservedState};

/// The endpoints this node's WireGuard device learned from handshakes, for the targets that are
/// behind NAT: ready nodes with a persistent keepalive, and every ready Peer (Kilo records Peers
/// whatever their keepalive). Published as `kilo.squat.ai/discovered-endpoints`, they let leaders
/// reach NATed nodes at the address their packets really come from.
///
/// ```
/// use mesh_core::{ClusterSnapshot, ObservedState};
/// use mesh_core::nat::discovered_endpoints;
/// assert!(discovered_endpoints(&ClusterSnapshot::default(), &ObservedState::default()).is_empty());
/// ```
pub fn discovered_endpoints(snapshot: &ClusterSnapshot, observed: &ObservedState) -> BTreeMap<Key, SocketAddr> {
    let learned = |key: &Key| -> Option<SocketAddr> {
        let handshook = observed.peer_stats.get(key).is_some_and(|stats| stats.last_handshake.is_some());
        // Without a handshake the endpoint is only what we configured ourselves.
        if !handshook {
            return None;
        }
        observed.state.peers.get(key).and_then(|peer| peer.endpoint)
    };
    let nodes = snapshot
        .nodes
        .iter()
        .filter(|node| node.persistent_keepalive != 0 && node.readiness(snapshot.now).is_ok())
        .filter_map(|node| node.key);
    let peers = snapshot.peers.iter().filter(|peer| peer.readiness().is_ok()).filter_map(|peer| peer.public_key);
    nodes.chain(peers).filter_map(|key| learned(&key).map(|endpoint| (key, endpoint))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{PeerStats, WireGuardPeer};
    use crate::{Endpoint, NodeSpec, PeerSpec};

    fn observed(key: Key, endpoint: &str, handshake: Option<i64>) -> ObservedState {
        let mut observed = ObservedState::default();
        observed.state.peers.insert(
            key,
            WireGuardPeer {
                public_key: key,
                endpoint: Some(endpoint.parse().unwrap()),
                allowed_ips: Default::default(),
                persistent_keepalive: 0,
                preshared_key: None,
            },
        );
        observed.peer_stats.insert(key, PeerStats { last_handshake: handshake, ..PeerStats::default() });
        observed
    }

    fn node(key: Key, keepalive: u16) -> NodeSpec {
        NodeSpec {
            name: "n".into(),
            endpoint: Some(Endpoint::parse("10.0.0.1:51820").unwrap()),
            key: Some(key),
            pod_subnet: Some("10.2.0.0/24".parse().unwrap()),
            last_seen: Some(100),
            persistent_keepalive: keepalive,
            ..NodeSpec::default()
        }
    }

    #[test]
    fn records_handshaken_endpoints_of_natted_nodes_and_peers_only() {
        let (a, b) = (Key::from_bytes([1; 32]), Key::from_bytes([2; 32]));
        let snapshot = |keepalive| ClusterSnapshot { nodes: vec![node(a, keepalive)], peers: vec![], now: 110 };
        let found = discovered_endpoints(&snapshot(20), &observed(a, "198.51.100.1:4000", Some(105)));
        assert_eq!(found[&a], "198.51.100.1:4000".parse().unwrap());
        assert!(discovered_endpoints(&snapshot(0), &observed(a, "198.51.100.1:4000", Some(105))).is_empty());
        assert!(discovered_endpoints(&snapshot(20), &observed(a, "198.51.100.1:4000", None)).is_empty());

        let peer = PeerSpec {
            name: "p".into(),
            allowed_ips: vec!["10.5.0.1/32".parse().unwrap()],
            public_key: Some(b),
            ..PeerSpec::default()
        };
        let snapshot = ClusterSnapshot { nodes: vec![], peers: vec![peer], now: 110 };
        let found = discovered_endpoints(&snapshot, &observed(b, "192.0.2.9:5000", Some(100)));
        assert_eq!(found[&b], "192.0.2.9:5000".parse().unwrap());
    }
}
