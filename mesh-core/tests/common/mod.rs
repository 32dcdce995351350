//! The shared fixture of Kilo's `pkg/mesh` unit tests (kilo-reference.md §10.1), as values.
#![allow(dead_code)]

use mesh_core::{ClusterSnapshot, Encapsulation, Endpoint, Granularity, Key, NodeSpec, Options, PeerSpec};

/// When the fixture is read; every node checked in at this instant.
pub const NOW: i64 = 1_000_000;

/// Kilo's fixture keys: the ASCII name followed by zero bytes (`key1` → `a2V5MQAA…`).
pub fn key(name: &str) -> Key {
    let mut bytes = [0u8; 32];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    Key::from_bytes(bytes)
}

/// `key1` … `key5`.
pub fn key_n(n: u8) -> Key {
    key(&format!("key{n}"))
}

fn node(name: &str, endpoint: &str, internal_ip: Option<&str>, location: &str, pods: &str, key: Key) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        endpoint: Some(Endpoint::parse(endpoint).unwrap()),
        key: Some(key),
        internal_ip: internal_ip.map(|ip| ip.parse().unwrap()),
        location: location.into(),
        pod_subnet: Some(pods.parse().unwrap()),
        last_seen: Some(NOW),
        ..NodeSpec::default()
    }
}

/// Nodes a, b, c, d and peers a, b of §10.1.
///
/// Node a's keepalive is 25 ns in Kilo's fixture: non-zero, but its own agent would configure 0 s.
/// We model it as 25 s; tests that render a's own configuration set it to 0 (see `from_a_as_kilo`).
pub fn snapshot() -> ClusterSnapshot {
    let mut a = node("a", "10.1.0.1:51820", Some("192.168.0.1/32"), "1", "10.2.1.0/24", key_n(1));
    a.persistent_keepalive = 25;
    let mut b = node("b", "10.1.0.2:51820", Some("192.168.0.1/32"), "2", "10.2.2.0/24", key_n(2));
    b.allowed_location_ips = vec!["192.168.178.3/32".parse().unwrap()];
    let c = node("c", "10.1.0.3:51820", Some("192.168.0.2/32"), "2", "10.2.3.0/24", key_n(3));
    let d = node("d", "10.1.0.4:51820", None, "1", "10.2.4.0/24", key_n(4));
    let peer_a = PeerSpec {
        name: "a".into(),
        allowed_ips: vec!["10.5.0.1/24".parse().unwrap(), "10.5.0.2/24".parse().unwrap()],
        public_key: Some(key_n(4)),
        ..PeerSpec::default()
    };
    let peer_b = PeerSpec {
        name: "b".into(),
        allowed_ips: vec!["10.5.0.3/24".parse().unwrap()],
        public_key: Some(key_n(5)),
        endpoint: Some(Endpoint::parse("192.168.0.1:51820").unwrap()),
        ..PeerSpec::default()
    };
    ClusterSnapshot { nodes: vec![a, b, c, d], peers: vec![peer_a, peer_b], now: NOW }
}

/// Agent options for `host` with the given granularity, `--local` and `--encapsulate`.
pub fn options(host: &str, granularity: Granularity, local: bool, encapsulation: Encapsulation) -> Options {
    Options { granularity, local, encapsulation, ..Options::for_host(host) }
}
