//! Computes and prints what every node of a built-in three-location cluster configures: its
//! WireGuard interface and peers (wg-quick), routes, rules and firewall.
//!
//! ```text
//! cargo run -p mesh-core --example three-locations [location|full|cross]
//! ```
//!
//! The cluster is shaped like a Cozystack deployment: an on-premises location with three nodes
//! (one leader-annotated, with an extra on-premises subnet in `allowed-location-ips`), two cloud
//! locations whose nodes sit behind NAT with `persistent-keepalive: "20"`, and one laptop `Peer`.

use std::process::ExitCode;

use mesh_core::{
    ClusterSnapshot, DesiredState, DeviceNames, Endpoint, Granularity, Key, NodeSpec, Options, PeerSpec, Topology,
};

const NOW: i64 = 1_767_225_600;

struct Node {
    name: &'static str,
    location: &'static str,
    internal_ip: &'static str,
    endpoint: &'static str,
    pods: &'static str,
    leader: bool,
    keepalive: u16,
    allowed_location_ips: &'static [&'static str],
}

const NODES: &[Node] = &[
    Node {
        name: "onprem-1",
        location: "onprem",
        internal_ip: "192.168.10.11/24",
        endpoint: "203.0.113.10:51820",
        pods: "10.244.0.0/24",
        leader: true,
        keepalive: 0,
        allowed_location_ips: &["192.168.20.0/24"],
    },
    Node {
        name: "onprem-2",
        location: "onprem",
        internal_ip: "192.168.10.12/24",
        endpoint: "192.168.10.12:51820",
        pods: "10.244.1.0/24",
        leader: false,
        keepalive: 0,
        allowed_location_ips: &[],
    },
    Node {
        name: "onprem-3",
        location: "onprem",
        internal_ip: "192.168.10.13/24",
        endpoint: "192.168.10.13:51820",
        pods: "10.244.2.0/24",
        leader: false,
        keepalive: 0,
        allowed_location_ips: &[],
    },
    Node {
        name: "aws-1",
        location: "aws-eu-central-1",
        internal_ip: "172.31.5.20/20",
        endpoint: "198.51.100.21:51820",
        pods: "10.244.3.0/24",
        leader: false,
        keepalive: 20,
        allowed_location_ips: &[],
    },
    Node {
        name: "aws-2",
        location: "aws-eu-central-1",
        internal_ip: "172.31.6.31/20",
        endpoint: "172.31.6.31:51820",
        pods: "10.244.4.0/24",
        leader: false,
        keepalive: 20,
        allowed_location_ips: &[],
    },
    Node {
        name: "hetzner-1",
        location: "hetzner-fsn1",
        internal_ip: "10.0.0.2/32",
        endpoint: "198.51.100.40:51820",
        pods: "10.244.5.0/24",
        leader: false,
        keepalive: 20,
        allowed_location_ips: &[],
    },
];

fn key_of(name: &str) -> Key {
    // A stable, obviously fake key per name: its bytes spell the name.
    let mut bytes = [0u8; 32];
    for (byte, value) in bytes.iter_mut().zip(name.bytes()) {
        *byte = value;
    }
    Key::from_bytes(bytes)
}

fn cluster() -> ClusterSnapshot {
    let nodes = NODES
        .iter()
        .map(|node| NodeSpec {
            name: node.name.into(),
            endpoint: Some(Endpoint::parse(node.endpoint).expect("valid endpoint")),
            key: Some(key_of(node.name)),
            internal_ip: Some(node.internal_ip.parse().expect("valid internal IP")),
            last_seen: Some(NOW - 5),
            leader: node.leader,
            location: node.location.into(),
            persistent_keepalive: node.keepalive,
            pod_subnet: Some(node.pods.parse().expect("valid pod subnet")),
            allowed_location_ips: node.allowed_location_ips.iter().map(|ip| ip.parse().expect("valid CIDR")).collect(),
            ..NodeSpec::default()
        })
        .collect();
    let laptop = PeerSpec {
        name: "laptop".into(),
        allowed_ips: vec!["10.5.0.1/32".parse().expect("valid CIDR")],
        public_key: Some(key_of("laptop")),
        persistent_keepalive: 25,
        ..PeerSpec::default()
    };
    ClusterSnapshot { nodes, peers: vec![laptop], now: NOW }
}

fn main() -> ExitCode {
    let granularity = match std::env::args().nth(1) {
        None => Granularity::Location,
        Some(text) => match Granularity::parse(&text) {
            Some(granularity) => granularity,
            None => {
                eprintln!("unknown granularity {text:?}; possible values are: location, full, cross");
                return ExitCode::from(1);
            }
        },
    };
    let snapshot = cluster();
    for node in NODES {
        let options = Options {
            granularity,
            service_cidrs: vec!["10.96.0.0/16".parse().expect("valid CIDR")],
            ..Options::for_host(node.name)
        };
        let topology = match Topology::compute(&snapshot, &options) {
            Ok(topology) => topology,
            Err(error) => {
                eprintln!("{}: {error}", node.name);
                return ExitCode::from(2);
            }
        };
        let (desired, warnings) = DesiredState::from_topology(&topology, &options);
        let names = DeviceNames::new(&options, "eth0");
        let role = if topology.leader {
            format!("leader of {}, WireGuard {}", topology.local().name, topology.wireguard_cidr)
        } else {
            format!("follower in {}, WireGuard interface down", topology.local().name)
        };
        println!("=== {} ({role}) ===", node.name);
        if topology.leader {
            println!("--- WireGuard ({}) ---", options.interface);
            print!("{}", topology.node_conf(None, topology.listen_port));
        }
        println!("--- routes ---");
        for route in desired.routes.values() {
            println!("{}", route.to_ip_route(&names));
        }
        println!("--- rules ---");
        for rule in &desired.rules {
            println!("{}", rule.to_ip_rule(&names));
        }
        println!("--- firewall ---");
        for rule in &desired.firewall.rules {
            let family = if rule.family == mesh_core::Family::Ipv4 { "iptables" } else { "ip6tables" };
            println!("{family} -t {} -A {} {}", rule.table(), rule.chain.as_str(), rule.args().join(" "));
        }
        for warning in warnings.iter().chain(&topology.warnings) {
            println!("warning: {}: {}", warning.name, warning.reason);
        }
        println!();
    }
    ExitCode::SUCCESS
}
