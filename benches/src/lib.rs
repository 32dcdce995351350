//! Synthetic clusters for benchmarks and tests.
//!
//! The generator is deliberately fixed: the same clusters (names, keys, addresses, leaders) were
//! used to time Kilo, so numbers taken with it compare with Kilo's. Do not change what it produces;
//! add a new generator instead.
//!
//! ```
//! use mesh_benches::{Shape, cluster, options};
//! use mesh_core::{DesiredState, Topology};
//!
//! let shape = Shape::location(100, 5, 10);
//! let snapshot = cluster(shape.nodes, shape.locations, shape.peers, 1_700_000_000);
//! let options = options(&shape.leader_host(), shape.granularity);
//! let topology = Topology::compute(&snapshot, &options).unwrap();
//! let (desired, _warnings) = DesiredState::from_topology(&topology, &options);
//! assert!(topology.leader);
//! assert_eq!(desired.peers.len(), 4 + 10); // the other locations' leaders and the peers
//! ```
#![warn(missing_docs)]

use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use mesh_core::{
    ClusterSnapshot, Compatibility, Encapsulation, Endpoint, Granularity, Key, NodeSpec, Options, PeerSpec,
};
use sha2::{Digest, Sha256};

/// The WireGuard port of every generated node and peer endpoint.
pub const PORT: u16 = 51820;

/// The `now` (and every node's `last-seen`) of the benchmark snapshots, in Unix seconds.
pub const NOW: i64 = 1_700_000_000;

/// The name of node `index`: `node-%05d`.
pub fn node_name(index: usize) -> String {
    format!("node-{index:05}")
}

/// The name of peer `index`: `peer-%05d`.
pub fn peer_name(index: usize) -> String {
    format!("peer-{index:05}")
}

/// The public key of a node or peer: the SHA-256 digest of its name.
pub fn key_of(name: &str) -> Key {
    let digest = Sha256::digest(name.as_bytes());
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&digest);
    Key::from_bytes(bytes)
}

fn ipv4(a: usize, b: usize, c: usize, d: usize) -> Ipv4Addr {
    let octet = |value: usize| u8::try_from(value).expect("generated address octet out of range");
    Ipv4Addr::new(octet(a), octet(b), octet(c), octet(d))
}

/// A CIDR of `addr`, host bits kept (generic so this crate need not name `ipnet`'s type).
fn net<T: FromStr<Err: Debug>>(addr: Ipv4Addr, prefix: u8) -> T {
    format!("{addr}/{prefix}").parse().expect("generated CIDR is valid")
}

/// Node `index` of a cluster with `locations` locations, last seen at `now`.
///
/// - name `node-%05d`, location `loc-%03d` of `index % locations`, key SHA-256 of the name;
/// - internal IP `192.168.(i/250).(i%250+1)/24`, pod subnet `10.(42+i/256).(i%256).0/24`;
/// - endpoint `11.0.(i/256).(i%256):51820` (public) when `i % 3 == 0`, else the internal IP on
///   port 51820 (private);
/// - the `leader` annotation when `i / locations == 1` and `i % locations` is even, and then also
///   the allowed-location IP `172.16.(i%locations).0/24`;
/// - no persistent keepalive.
pub fn node(index: usize, locations: usize, now: i64) -> NodeSpec {
    let i = index;
    let name = node_name(i);
    let internal = ipv4(192, 168, i / 250, i % 250 + 1);
    let endpoint_ip = if i.is_multiple_of(3) { ipv4(11, 0, i / 256, i % 256) } else { internal };
    let leader = i / locations == 1 && (i % locations).is_multiple_of(2);
    NodeSpec {
        key: Some(key_of(&name)),
        name,
        location: format!("loc-{:03}", i % locations),
        endpoint: Some(Endpoint::from_ip(IpAddr::V4(endpoint_ip), PORT)),
        internal_ip: Some(net(internal, 24)),
        pod_subnet: Some(net(ipv4(10, 42 + i / 256, i % 256, 0), 24)),
        last_seen: Some(now),
        leader,
        allowed_location_ips: if leader { vec![net(ipv4(172, 16, i % locations, 0), 24)] } else { Vec::new() },
        persistent_keepalive: 0,
        ..NodeSpec::default()
    }
}

/// Peer `index`: name `peer-%05d`, key SHA-256 of the name, allowed IP
/// `10.5.(j/250).(j%250+1)/32`; an even index has no endpoint and a 25 s keepalive, an odd one the
/// endpoint `11.1.(j/256).(j%256):51820` and no keepalive.
pub fn peer(index: usize) -> PeerSpec {
    let j = index;
    let name = peer_name(j);
    let even = j.is_multiple_of(2);
    PeerSpec {
        public_key: Some(key_of(&name)),
        name,
        allowed_ips: vec![net(ipv4(10, 5, j / 250, j % 250 + 1), 32)],
        endpoint: (!even).then(|| Endpoint::from_ip(IpAddr::V4(ipv4(11, 1, j / 256, j % 256)), PORT)),
        persistent_keepalive: if even { 25 } else { 0 },
        preshared_key: None,
    }
}

/// A cluster of `nodes` nodes spread over `locations` locations (node `i` in location `i % locations`)
/// and `peers` peers, every node last seen at `now`. See [`node`] and [`peer`] for the values.
///
/// # Panics
///
/// When `locations` is 0 or a generated address octet does not fit (more than 62 720 nodes).
pub fn cluster(nodes: usize, locations: usize, peers: usize, now: i64) -> ClusterSnapshot {
    assert!(locations > 0, "a cluster needs at least one location");
    ClusterSnapshot {
        nodes: (0..nodes).map(|i| node(i, locations, now)).collect(),
        peers: (0..peers).map(peer).collect(),
        now,
    }
}

/// The agent flags of the benchmarks for `hostname`: WireGuard subnet 10.4.0.0/16, service CIDR
/// 10.96.0.0/12, port 51820, encapsulation `always`, `--local`, IPIP (no CNI compatibility).
pub fn options(hostname: &str, granularity: Granularity) -> Options {
    Options {
        hostname: hostname.to_owned(),
        granularity,
        subnet: "10.4.0.0/16".parse().expect("valid subnet"),
        port: PORT,
        local: true,
        encapsulation: Encapsulation::Always,
        compatibility: Compatibility::None,
        service_cidrs: vec!["10.96.0.0/12".parse().expect("valid service CIDR")],
        ..Options::default()
    }
}

/// The size and granularity of one benchmark cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Number of nodes.
    pub nodes: usize,
    /// Number of locations.
    pub locations: usize,
    /// Number of peers.
    pub peers: usize,
    /// The mesh granularity.
    pub granularity: Granularity,
}

impl Shape {
    /// A shape in `location` granularity.
    pub const fn location(nodes: usize, locations: usize, peers: usize) -> Self {
        Shape { nodes, locations, peers, granularity: Granularity::Location }
    }

    /// A shape in `full` granularity.
    pub const fn full(nodes: usize, locations: usize, peers: usize) -> Self {
        Shape { nodes, locations, peers, granularity: Granularity::Full }
    }

    /// The benchmark name: `N<nodes>_L<locations>_P<peers>`, prefixed with `full_` in `full`
    /// granularity (`cross_` in `cross`).
    pub fn name(&self) -> String {
        let prefix = match self.granularity {
            Granularity::Location => "",
            Granularity::Full => "full_",
            Granularity::Cross => "cross_",
        };
        format!("{prefix}N{}_L{}_P{}", self.nodes, self.locations, self.peers)
    }

    /// The generated cluster of this shape at [`NOW`].
    pub fn cluster(&self) -> ClusterSnapshot {
        cluster(self.nodes, self.locations, self.peers, NOW)
    }

    /// The leader host: node index `locations`, the annotated leader of `loc-000`.
    pub fn leader_host(&self) -> String {
        node_name(self.locations)
    }

    /// The non-leader host: `node-00000` (in `loc-000`, whose leader is node index `locations`).
    pub fn non_leader_host(&self) -> String {
        node_name(0)
    }

    /// The agent flags of this shape for `hostname`.
    pub fn options(&self, hostname: &str) -> Options {
        options(hostname, self.granularity)
    }
}

/// The shapes the Kilo comparison was timed with.
pub const SHAPES: [Shape; 6] = [
    Shape::location(10, 2, 0),
    Shape::location(100, 5, 10),
    Shape::location(1000, 20, 50),
    Shape::location(5000, 100, 100),
    Shape::full(1000, 20, 50),
    Shape::full(5000, 100, 100),
];

/// The remote node [`change_one_node`] changes: the first node of `loc-001` with a public endpoint,
/// which `loc-001` elects as its leader (the location has no annotated node), so the change is
/// visible from the leader host in every granularity.
///
/// # Panics
///
/// When the cluster has fewer than two locations or no such node.
pub fn changed_node_index(nodes: usize, locations: usize) -> usize {
    assert!(locations >= 2, "needs a second location");
    (1..nodes).step_by(locations).find(|i| i.is_multiple_of(3)).expect("loc-001 has a node with a public endpoint")
}

/// Changes one remote node of a generated cluster (see [`changed_node_index`]): its endpoint
/// moves to `11.3.0.1:51821` and its pod subnet to `10.250.0.0/24`. Returns the node's name.
pub fn change_one_node(snapshot: &mut ClusterSnapshot, locations: usize) -> String {
    let index = changed_node_index(snapshot.nodes.len(), locations);
    let node = &mut snapshot.nodes[index];
    node.endpoint = Some(Endpoint::from_ip(IpAddr::V4(Ipv4Addr::new(11, 3, 0, 1)), PORT + 1));
    node.pod_subnet = Some("10.250.0.0/24".parse().expect("valid pod subnet"));
    node.name.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::{DesiredState, Plan, Topology};

    fn ip<T: FromStr<Err: Debug>>(text: &str) -> T {
        text.parse().unwrap()
    }

    #[test]
    fn generated_values() {
        let snapshot = cluster(1000, 20, 50, NOW);
        assert_eq!(snapshot.nodes.len(), 1000);
        assert_eq!(snapshot.peers.len(), 50);
        assert_eq!(snapshot.now, NOW);

        let node0 = &snapshot.nodes[0];
        assert_eq!(node0.name, "node-00000");
        assert_eq!(node0.location, "loc-000");
        assert_eq!(node0.key, Some(key_of("node-00000")));
        // SHA-256("node-00000"), as `printf node-00000 | sha256sum` prints it.
        assert_eq!(hex(node0.key.unwrap()), "64eafbaec99c605788b6cdb148c15ffa610cd5aea866dbb8f8684e90ca61b48b");
        assert_eq!(node0.internal_ip, Some(ip("192.168.0.1/24")));
        assert_eq!(node0.pod_subnet, Some(ip("10.42.0.0/24")));
        assert_eq!(node0.endpoint, Some("11.0.0.0:51820".parse().unwrap()));
        assert!(!node0.leader);
        assert!(node0.allowed_location_ips.is_empty());
        assert_eq!(node0.last_seen, Some(NOW));
        assert_eq!(node0.persistent_keepalive, 0);

        let node1 = &snapshot.nodes[1];
        assert_eq!(node1.name, "node-00001");
        assert_eq!(node1.location, "loc-001");
        assert_eq!(node1.internal_ip, Some(ip("192.168.0.2/24")));
        assert_eq!(node1.pod_subnet, Some(ip("10.42.1.0/24")));
        assert_eq!(node1.endpoint, Some("192.168.0.2:51820".parse().unwrap()));
        assert!(!node1.leader);

        let node20 = &snapshot.nodes[20];
        assert_eq!(node20.name, "node-00020");
        assert_eq!(node20.location, "loc-000");
        assert_eq!(node20.endpoint, Some("192.168.0.21:51820".parse().unwrap()));
        assert!(node20.leader);
        assert_eq!(node20.allowed_location_ips, vec![ip("172.16.0.0/24")]);
        // Annotated: i / L == 1 and i % L even, so 20, 22, …, 38; not 21 nor 40.
        let annotated: Vec<usize> = (0..1000).filter(|&i| snapshot.nodes[i].leader).collect();
        assert_eq!(annotated, (20..40).step_by(2).collect::<Vec<_>>());
        assert_eq!(snapshot.nodes[38].allowed_location_ips, vec![ip("172.16.18.0/24")]);

        let node999 = &snapshot.nodes[999];
        assert_eq!(node999.internal_ip, Some(ip("192.168.3.250/24")));
        assert_eq!(node999.pod_subnet, Some(ip("10.45.231.0/24")));
        assert_eq!(node999.endpoint, Some("11.0.3.231:51820".parse().unwrap()));

        let peer0 = &snapshot.peers[0];
        assert_eq!(peer0.name, "peer-00000");
        assert_eq!(peer0.public_key, Some(key_of("peer-00000")));
        assert_eq!(peer0.allowed_ips, vec![ip("10.5.0.1/32")]);
        assert_eq!(peer0.endpoint, None);
        assert_eq!(peer0.persistent_keepalive, 25);
        let peer1 = &snapshot.peers[1];
        assert_eq!(hex(peer1.public_key.unwrap()), "15e48ac3e4e1ebd74d956cd3d575cdddf70f437775b9476f6fde2f6d347e6c11");
        assert_eq!(peer1.allowed_ips, vec![ip("10.5.0.2/32")]);
        assert_eq!(peer1.endpoint, Some("11.1.0.1:51820".parse().unwrap()));
        assert_eq!(peer1.persistent_keepalive, 0);
    }

    fn hex(key: Key) -> String {
        key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn node_l_leads_its_location_and_node_0_does_not() {
        for shape in SHAPES.iter().filter(|shape| shape.granularity == Granularity::Location) {
            let snapshot = shape.cluster();
            let leader_options = shape.options(&shape.leader_host());
            let topology = Topology::compute(&snapshot, &leader_options).unwrap();
            assert!(topology.leader, "{}: node L leads", shape.name());
            let local = topology.local();
            assert_eq!(local.name, "location:loc-000");
            assert_eq!(local.members[local.leader].name, shape.leader_host());
            assert_eq!(topology.segments.len(), shape.locations);
            assert_eq!(topology.peers.len(), shape.peers);
            assert!(topology.skipped.is_empty());

            let other = Topology::compute(&snapshot, &shape.options(&shape.non_leader_host())).unwrap();
            assert!(!other.leader, "{}: node-00000 does not lead", shape.name());
            assert_eq!(other.local().members[other.local().leader].name, shape.leader_host());
        }
    }

    #[test]
    fn every_node_leads_in_full_granularity() {
        let shape = Shape::full(100, 5, 10);
        let snapshot = shape.cluster();
        for host in [shape.leader_host(), shape.non_leader_host()] {
            let topology = Topology::compute(&snapshot, &shape.options(&host)).unwrap();
            assert!(topology.leader);
            assert_eq!(topology.segments.len(), 100);
        }
    }

    #[test]
    fn one_changed_node_gives_a_small_plan() {
        for shape in [Shape::location(10, 2, 0), Shape::location(100, 5, 10), Shape::full(100, 5, 10)] {
            let host = shape.leader_host();
            let options = shape.options(&host);
            let mut snapshot = shape.cluster();
            let before = DesiredState::from_topology(&Topology::compute(&snapshot, &options).unwrap(), &options).0;
            assert!(Plan::between(&mesh_core::ObservedState::of(before.clone()), &before).is_empty());

            let changed = change_one_node(&mut snapshot, shape.locations);
            let index = changed_node_index(shape.nodes, shape.locations);
            assert_eq!(changed, node_name(index));
            assert_eq!(index % shape.locations, 1);
            let after = DesiredState::from_topology(&Topology::compute(&snapshot, &options).unwrap(), &options).0;
            let plan = Plan::between(&mesh_core::ObservedState::of(before.clone()), &after);
            assert!(!plan.is_empty(), "{}", shape.name());
            let kinds: Vec<&str> = plan.operations.iter().map(|op| op.kind()).collect();
            assert!(kinds.contains(&"update_peer"), "{}: {kinds:?}", shape.name());
            assert!(!kinds.contains(&"remove_peer"), "{}: {kinds:?}", shape.name());
            assert_eq!(plan.apply_to(&before), after);
        }
    }
}
