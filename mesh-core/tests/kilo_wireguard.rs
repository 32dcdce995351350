//! Kilo's WireGuard configurations (kilo-reference.md §8.3, Appendix B) on the shared fixture of
//! §10.1, byte for byte as `Conf.Bytes` writes them, plus `full` and Cozystack's `cross` granularity.
//!
//! Kilo's `Conf.Bytes` ends with the newline of the last line and `kgctl showconf` writes it with
//! `os.Stdout.Write`, so the text ends in exactly one `\n`. The appendix shows each block followed
//! by an empty line, which is not part of the output; the constants below end where Kilo's do.

mod common;

use std::collections::BTreeMap;

use common::{key, key_n, snapshot};
use ipnet::IpNet;
use mesh_core::wireguard::{Conf, PeerConfig};
use mesh_core::{ClusterSnapshot, Endpoint, Granularity, Key, NodeSpec, Options, Topology};

/// Appendix B.1: `Conf()` of node a, `location` granularity, private key "priv", port 51820,
/// local keepalive 0.
const B1: &str = "\
[Interface]
PrivateKey = cHJpdgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
ListenPort = 51820

[Peer]
AllowedIPs = 10.2.2.0/24, 192.168.0.1/32, 10.2.3.0/24, 192.168.0.2/32, 10.4.0.2/32, 192.168.178.3/32
Endpoint = 10.1.0.2:51820
PersistentKeepalive = 0
PublicKey = a2V5MgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=

[Peer]
AllowedIPs = 10.2.4.0/24, 10.4.0.3/32
Endpoint = 10.1.0.4:51820
PersistentKeepalive = 0
PublicKey = a2V5NAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=

[Peer]
AllowedIPs = 10.5.0.1/24, 10.5.0.2/24
PersistentKeepalive = 0
PublicKey = a2V5NAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=

[Peer]
AllowedIPs = 10.5.0.3/24
Endpoint = 192.168.0.1:51820
PersistentKeepalive = 0
PublicKey = a2V5NQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
";

/// Appendix B.2: `PeerConf("b")` (`kgctl showconf peer b`; peer b has no keepalive → 0).
const B2: &str = "\
[Peer]
AllowedIPs = 10.2.1.0/24, 192.168.0.1/32, 10.4.0.1/32
Endpoint = 10.1.0.1:51820
PersistentKeepalive = 0
PublicKey = a2V5MQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=

[Peer]
AllowedIPs = 10.2.2.0/24, 192.168.0.1/32, 10.2.3.0/24, 192.168.0.2/32, 10.4.0.2/32, 192.168.178.3/32
Endpoint = 10.1.0.2:51820
PersistentKeepalive = 0
PublicKey = a2V5MgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=

[Peer]
AllowedIPs = 10.2.4.0/24, 10.4.0.3/32
Endpoint = 10.1.0.4:51820
PersistentKeepalive = 0
PublicKey = a2V5NAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=

[Peer]
AllowedIPs = 10.5.0.1/24, 10.5.0.2/24
PersistentKeepalive = 0
PublicKey = a2V5NAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
";

/// Appendix B.3: discovered endpoints (see [`b3_snapshot`]).
const B3: &str = "\
[Interface]
PrivateKey = cHJpdgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
ListenPort = 51820

[Peer]
AllowedIPs = 10.2.2.0/24, 192.168.0.1/32, 10.2.3.0/24, 192.168.0.2/32, 10.4.0.2/32, 192.168.178.3/32
Endpoint = 5.5.5.5:3333
PersistentKeepalive = 7
PublicKey = a2V5MgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=

[Peer]
AllowedIPs = 10.2.4.0/24, 10.4.0.3/32
Endpoint = 10.1.0.4:51820
PersistentKeepalive = 7
PublicKey = a2V5NAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=

[Peer]
AllowedIPs = 10.5.0.1/24, 10.5.0.2/24
PersistentKeepalive = 7
PublicKey = a2V5NAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=

[Peer]
AllowedIPs = 10.5.0.3/24
Endpoint = 6.6.6.6:4444
PersistentKeepalive = 7
PublicKey = a2V5NQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
";

/// Appendix B.4: `AsPeer()` of node a (`kgctl showconf node a --as-peer`).
const B4: &str = "\
[Peer]
AllowedIPs = 10.2.1.0/24, 192.168.0.1/32, 10.4.0.1/32
Endpoint = 10.1.0.1:51820
PersistentKeepalive = 0
PublicKey = a2V5MQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
";

/// `full` granularity from c [derived from Kilo's `Conf()` by hand]: segments `node:a` … `node:d`
/// get 10.4.0.1 … 10.4.0.4; every other node is a peer, then the two `Peer`s.
const FULL_C: &str = "\
[Interface]
PrivateKey = cHJpdgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
ListenPort = 51820

[Peer]
AllowedIPs = 10.2.1.0/24, 192.168.0.1/32, 10.4.0.1/32
Endpoint = 10.1.0.1:51820
PersistentKeepalive = 0
PublicKey = a2V5MQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=

[Peer]
AllowedIPs = 10.2.2.0/24, 192.168.0.1/32, 10.4.0.2/32, 192.168.178.3/32
Endpoint = 10.1.0.2:51820
PersistentKeepalive = 0
PublicKey = a2V5MgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=

[Peer]
AllowedIPs = 10.2.4.0/24, 10.4.0.4/32
Endpoint = 10.1.0.4:51820
PersistentKeepalive = 0
PublicKey = a2V5NAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=

[Peer]
AllowedIPs = 10.5.0.1/24, 10.5.0.2/24
PersistentKeepalive = 0
PublicKey = a2V5NAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=

[Peer]
AllowedIPs = 10.5.0.3/24
Endpoint = 192.168.0.1:51820
PersistentKeepalive = 0
PublicKey = a2V5NQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
";

/// Cozystack's cross patch, the issue's case (locations "x" = {a, b}, "y" = {c}, no `Peer`s),
/// `Conf()` of c [derived by hand]: c peers with both nodes of "x", each on its own segment.
const CROSS_ISSUE_C: &str = "\
[Interface]
ListenPort = 51820

[Peer]
AllowedIPs = 10.2.1.0/24, 192.168.0.1/32, 10.4.0.1/32
Endpoint = 10.1.0.1:51820
PersistentKeepalive = 0
PublicKey = a2V5MQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=

[Peer]
AllowedIPs = 10.2.2.0/24, 192.168.0.1/32, 10.4.0.2/32, 192.168.178.3/32
Endpoint = 10.1.0.2:51820
PersistentKeepalive = 0
PublicKey = a2V5MgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
";

fn options(host: &str, granularity: Granularity) -> Options {
    Options { granularity, ..Options::for_host(host) }
}

fn topology(snapshot: &ClusterSnapshot, host: &str, granularity: Granularity) -> Topology {
    Topology::compute(snapshot, &options(host, granularity)).expect("topology")
}

fn node_mut<'a>(snapshot: &'a mut ClusterSnapshot, name: &str) -> &'a mut NodeSpec {
    snapshot.nodes.iter_mut().find(|node| node.name == name).expect("node in fixture")
}

/// The fixture as node a's own agent sees it. Kilo's fixture gives a a keepalive of 25 ns, which
/// its `Conf()` prints as 0 s. In our model the local node's own `persistent_keepalive` is what
/// every peer gets (Kilo's agent passes the local node's annotation), so a renders with 0 here.
fn from_a_with_keepalive_zero() -> ClusterSnapshot {
    let mut snapshot = snapshot();
    node_mut(&mut snapshot, "a").persistent_keepalive = 0;
    snapshot
}

/// B.3's fixture: b behind NAT (keepalive 10 s), peer b too; node a (local, keepalive 7 s) has
/// discovered b's and peer b's endpoints. d's key is discovered nowhere.
fn b3_snapshot() -> ClusterSnapshot {
    let mut snapshot = snapshot();
    node_mut(&mut snapshot, "b").persistent_keepalive = 10;
    snapshot.peers.iter_mut().find(|peer| peer.name == "b").expect("peer b").persistent_keepalive = 10;
    let a = node_mut(&mut snapshot, "a");
    a.persistent_keepalive = 7;
    a.discovered_endpoints =
        BTreeMap::from([(key_n(2), "5.5.5.5:3333".parse().unwrap()), (key_n(5), "6.6.6.6:4444".parse().unwrap())]);
    snapshot
}

/// The fixture with its nodes moved to other locations.
fn relocated(locations: &[(&str, &str)]) -> ClusterSnapshot {
    let mut snapshot = snapshot();
    snapshot.nodes.retain(|node| locations.iter().any(|(name, _)| *name == node.name));
    for (name, location) in locations {
        node_mut(&mut snapshot, name).location = (*location).to_owned();
    }
    snapshot
}

fn as_conf(peer: PeerConfig) -> Conf {
    Conf { interface: None, peers: vec![peer] }
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|net| net.parse().unwrap()).collect()
}

fn keys(peers: &[PeerConfig]) -> Vec<Key> {
    peers.iter().map(|peer| peer.public_key).collect()
}

#[test]
fn b1_conf_of_a() {
    let topology = topology(&from_a_with_keepalive_zero(), "a", Granularity::Location);
    assert_eq!(topology.node_conf(Some(key("priv")), 51820).to_string(), B1);
}

#[test]
fn b1_showconf_node_without_private_key() {
    // kgctl uses a zero key: the interface section stays, its PrivateKey line goes.
    let topology = topology(&from_a_with_keepalive_zero(), "a", Granularity::Location);
    let expected = B1.replace("PrivateKey = cHJpdgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "");
    assert_eq!(topology.node_conf(None, 51820).to_string(), expected);
    assert_eq!(topology.node_conf(Some(Key::from_bytes([0; 32])), 51820).to_string(), expected);
    assert_eq!(topology.node_conf(None, 4242).to_string(), expected.replace("ListenPort = 51820", "ListenPort = 4242"));
}

#[test]
fn b1_keepalive_of_the_local_node_applies_to_every_peer() {
    // With the fixture's keepalive of a (25 ns in Kilo, 25 s here), every peer gets a's value.
    let topology = topology(&snapshot(), "a", Granularity::Location);
    let conf = topology.node_conf(Some(key("priv")), 51820).to_string();
    assert_eq!(conf, B1.replace("PersistentKeepalive = 0", "PersistentKeepalive = 25"));
}

#[test]
fn b2_peer_conf_of_b() {
    // kgctl renders from the last ready node, in informer order: any host gives the same text.
    for host in ["a", "b", "c", "d"] {
        let topology = topology(&snapshot(), host, Granularity::Location);
        assert_eq!(topology.peer_conf("b").to_string(), B2, "from {host}");
    }
}

#[test]
fn b2_peer_conf_uses_the_peers_keepalive() {
    let mut snapshot = snapshot();
    snapshot.peers.iter_mut().find(|peer| peer.name == "b").unwrap().persistent_keepalive = 15;
    let topology = topology(&snapshot, "d", Granularity::Location);
    assert_eq!(topology.peer_conf("b").to_string(), B2.replace("PersistentKeepalive = 0", "PersistentKeepalive = 15"));
}

#[test]
fn b3_discovered_endpoints() {
    let topology = topology(&b3_snapshot(), "a", Granularity::Location);
    assert_eq!(topology.node_conf(Some(key("priv")), 51820).to_string(), B3);
}

#[test]
fn b3_discovered_endpoints_need_the_targets_keepalive() {
    // Without b's and peer b's keepalive the discovered endpoints are ignored.
    let mut snapshot = b3_snapshot();
    node_mut(&mut snapshot, "b").persistent_keepalive = 0;
    snapshot.peers.iter_mut().find(|peer| peer.name == "b").unwrap().persistent_keepalive = 0;
    let topology = topology(&snapshot, "a", Granularity::Location);
    let expected = B1.replace("PersistentKeepalive = 0", "PersistentKeepalive = 7");
    assert_eq!(topology.node_conf(Some(key("priv")), 51820).to_string(), expected);
}

#[test]
fn b4_as_peer_of_a() {
    // Kilo prints `AsPeer` as a configuration with that one peer and no interface.
    for snapshot in [snapshot(), from_a_with_keepalive_zero(), b3_snapshot()] {
        let topology = topology(&snapshot, "a", Granularity::Location);
        assert_eq!(as_conf(topology.as_peer()).to_string(), B4);
    }
}

#[test]
fn non_leader_has_no_peers() {
    // Kilo's `Conf()` of c would list the other segments, but c is not a leader: its agent
    // configures no peers and `kgctl showconf node c` refuses ("Node "c" is not a leader node").
    let topology = topology(&snapshot(), "c", Granularity::Location);
    assert!(!topology.leader);
    assert!(topology.wireguard_peers().is_empty());
    assert_eq!(topology.node_conf(None, 51820).to_string(), "[Interface]\nListenPort = 51820\n");
}

#[test]
fn full_granularity_from_c() {
    let topology = topology(&snapshot(), "c", Granularity::Full);
    assert!(topology.leader);
    assert_eq!(topology.wireguard_cidr.to_string(), "10.4.0.3/16");
    assert_eq!(topology.node_conf(Some(key("priv")), 51820).to_string(), FULL_C);
}

#[test]
fn cross_two_locations_with_peers() {
    // Locations "x" = {a, b} and "y" = {c, d} (d has no private IP; in `cross` it still belongs
    // to its location). Each node is a leader on its own segment, WireGuard IPs follow the names.
    let snapshot = relocated(&[("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")]);
    let expect = [("a", ["c", "d"]), ("b", ["c", "d"]), ("c", ["a", "b"]), ("d", ["a", "b"])];
    let node_key = |name: &str| key_n(name.as_bytes()[0] - b'a' + 1);
    let node_allowed_ips = |name: &str| match name {
        "a" => nets(&["10.2.1.0/24", "192.168.0.1/32", "10.4.0.1/32"]),
        "b" => nets(&["10.2.2.0/24", "192.168.0.1/32", "10.4.0.2/32", "192.168.178.3/32"]),
        "c" => nets(&["10.2.3.0/24", "192.168.0.2/32", "10.4.0.3/32"]),
        "d" => nets(&["10.2.4.0/24", "10.4.0.4/32"]),
        _ => unreachable!(),
    };
    for (host, remote) in expect {
        let topology = topology(&snapshot, host, Granularity::Cross);
        assert!(topology.leader, "{host}");
        let index = host.as_bytes()[0] - b'a' + 1;
        assert_eq!(topology.wireguard_cidr.to_string(), format!("10.4.0.{index}/16"));

        let peers = topology.wireguard_peers();
        // The two nodes of the other location, then the two `Peer`s.
        assert_eq!(peers.len(), 4, "{host}: {peers:?}");
        let mut expected_keys: Vec<Key> = remote.iter().map(|name| node_key(name)).collect();
        expected_keys.extend([key_n(4), key_n(5)]);
        assert_eq!(keys(&peers), expected_keys, "{host}");
        for (peer, name) in peers.iter().zip(remote) {
            assert_eq!(peer.allowed_ips, node_allowed_ips(name), "{host} → {name}");
            let ip = match name {
                "a" => "10.1.0.1",
                "b" => "10.1.0.2",
                "c" => "10.1.0.3",
                _ => "10.1.0.4",
            };
            assert_eq!(peer.endpoint, Some(Endpoint::parse(&format!("{ip}:51820")).unwrap()));
        }
        assert_eq!(peers[2].allowed_ips, nets(&["10.5.0.1/24", "10.5.0.2/24"]));
        assert_eq!(peers[3].allowed_ips, nets(&["10.5.0.3/24"]));
        // Rendered as Kilo renders any `Conf`.
        let text = topology.node_conf(None, 51820).to_string();
        assert_eq!(text.matches("[Peer]").count(), 4, "{host}");
    }
}

#[test]
fn cross_issue_case_two_plus_one_nodes() {
    // Cozystack's e2e check: with locations of 2 and 1 nodes, each node of the first location
    // peers only with the single node of the second, which peers with both.
    let mut snapshot = relocated(&[("a", "x"), ("b", "x"), ("c", "y")]);
    snapshot.peers.clear();
    for (host, expected) in [("a", vec![key_n(3)]), ("b", vec![key_n(3)]), ("c", vec![key_n(1), key_n(2)])] {
        let topology = topology(&snapshot, host, Granularity::Cross);
        let peers = topology.wireguard_peers();
        assert_eq!(keys(&peers), expected, "{host}");
        let text = topology.node_conf(None, 51820).to_string();
        assert_eq!(text.lines().filter(|line| *line == "[Peer]").count(), expected.len(), "{host}");
    }
    let topology = topology(&snapshot, "c", Granularity::Cross);
    assert_eq!(topology.node_conf(None, 51820).to_string(), CROSS_ISSUE_C);
    // Node a's own keepalive (25 s in our model of the fixture) applies to its peer.
    let from_a = crate::topology(&snapshot, "a", Granularity::Cross).node_conf(None, 51820).to_string();
    assert_eq!(
        from_a,
        "[Interface]\nListenPort = 51820\n\n[Peer]\nAllowedIPs = 10.2.3.0/24, 192.168.0.2/32, 10.4.0.3/32\n\
         Endpoint = 10.1.0.3:51820\nPersistentKeepalive = 25\nPublicKey = a2V5MwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    );

    // With the same locations, `location` granularity gives one peer per remote location and
    // `full` one per other node.
    let location = crate::topology(&snapshot, "c", Granularity::Location);
    assert_eq!(keys(&location.wireguard_peers()), [key_n(1)]);
    let full = crate::topology(&snapshot, "a", Granularity::Full);
    assert_eq!(keys(&full.wireguard_peers()), [key_n(2), key_n(3)]);
}

#[test]
fn cross_as_peer_and_peer_conf() {
    // Cross segments are single nodes: `AsPeer` is the node alone, `PeerConf` lists every node.
    let snapshot = relocated(&[("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")]);
    let topology = topology(&snapshot, "b", Granularity::Cross);
    assert_eq!(
        as_conf(topology.as_peer()).to_string(),
        "[Peer]\nAllowedIPs = 10.2.2.0/24, 192.168.0.1/32, 10.4.0.2/32\nEndpoint = 10.1.0.2:51820\n\
         PersistentKeepalive = 0\nPublicKey = a2V5MgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    );
    let conf = topology.peer_conf("b");
    assert_eq!(keys(&conf.peers), [key_n(1), key_n(2), key_n(3), key_n(4), key_n(4)]);
}
