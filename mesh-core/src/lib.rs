//! The pure topology core of a Kilo-compatible WireGuard mesh for Kubernetes.
//!
//! Values in, values out: a [`ClusterSnapshot`] (nodes, peers, and the time it was read) and the
//! agent's [`Options`] give a [`Topology`] (segments, leaders, WireGuard IPs, allowed IPs: exactly
//! Kilo's decisions), from which [`DesiredState::from_topology`] derives what the node's data plane
//! should hold (interface, WireGuard peers, routes, rules, firewall). [`Plan::between`] turns an
//! observed state into the desired one with the fewest operations, per WireGuard peer, so healthy
//! sessions survive. No I/O, no clock, no async runtime: the crate embeds in any controller.
//!
//! # Example: another controller computes one node's WireGuard configuration
//!
//! ```
//! use mesh_core::{ClusterSnapshot, DesiredState, Endpoint, Key, NodeSpec, Options, Topology};
//!
//! // Your own node list, however you got it.
//! let nodes = [("gw-paris", "paris", "203.0.113.10", "10.42.0.0/24"),
//!              ("gw-berlin", "berlin", "198.51.100.20", "10.42.1.0/24")];
//! let snapshot = ClusterSnapshot {
//!     nodes: nodes.iter().enumerate().map(|(i, (name, location, ip, pods))| NodeSpec {
//!         name: name.to_string(),
//!         location: location.to_string(),
//!         endpoint: Some(Endpoint::parse(&format!("{ip}:51820")).unwrap()),
//!         internal_ip: Some(format!("{ip}/24").parse().unwrap()),
//!         key: Some(Key::from_bytes([i as u8 + 1; 32])),
//!         pod_subnet: Some(pods.parse().unwrap()),
//!         last_seen: Some(1_700_000_000),
//!         ..NodeSpec::default()
//!     }).collect(),
//!     peers: vec![],
//!     now: 1_700_000_010, // time is an input
//! };
//!
//! let options = Options::for_host("gw-paris");
//! let topology = Topology::compute(&snapshot, &options).unwrap();
//! print!("{}", topology.node_conf(None, options.port)); // wg-quick text, as `kgctl showconf`
//!
//! let (desired, _warnings) = DesiredState::from_topology(&topology, &options);
//! let berlin = &desired.peers[&Key::from_bytes([2; 32])];
//! assert_eq!(berlin.endpoint, Some("198.51.100.20:51820".parse().unwrap()));
//! assert!(berlin.allowed_ips.contains(&"10.42.1.0/24".parse().unwrap()));
//! ```
#![warn(missing_docs)]

pub mod backend;
mod diagnostics;
mod endpoint;
pub mod failover;
pub mod firewall;
mod graph;
mod hijack;
pub mod ip;
mod key;
mod key_owners;
mod model;
pub mod nat;
mod options;
pub mod plan;
pub mod routes;
pub mod state;
pub mod time;
pub mod topology;
mod tuned;
pub mod wireguard;

pub use diagnostics::{ObjectKind, Skipped, Warning};
pub use endpoint::{Endpoint, EndpointError, Host, dns1123_subdomain_errors};
pub use firewall::{
    Chain, ChainName, Comment, Family, Firewall, FirewallChange, FirewallEdit, FirewallLayout, FirewallRule,
    ForeignChain, ForeignRule, Match, Target,
};
pub use key::{Key, KeyError, PresharedKey};
pub use model::{
    ClusterSnapshot, Granularity, MAX_CLOCK_SKEW_SECONDS, NodeSpec, NotReady, PeerSpec, READINESS_WINDOW_SECONDS,
};
pub use options::{Compatibility, Encapsulation, KILO_TABLE, MAIN_TABLE, Options, RULE_PRIORITY};
pub use plan::{HandshakeStart, Operation, Plan};
pub use routes::{Dev, DeviceNames, Route, Rule};
pub use state::{DataplaneState, DesiredState, ObservedState, RouteKey, Routes};
pub use topology::{ComputeError, Topology};
