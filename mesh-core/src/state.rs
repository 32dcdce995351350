//! The data-plane state a node wants (and has): interface, WireGuard peers, tunnel address,
//! routes, rules and firewall, normalised to what the kernel stores.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::hash_map::Entry;

use crate::diagnostics::{ObjectKind, Warning};
use crate::firewall::Firewall;
use crate::ip::{Allocator, one_address_cidr};
use crate::routes::{Dev, Route, Rule};
use crate::{Encapsulation, Key, Options, PresharedKey, Topology};

/// A WireGuard peer as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WireGuardPeer {
    /// The peer's public key.
    pub public_key: Key,
    /// Where to send packets; `None` until known.
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs with host bits cleared.
    pub allowed_ips: BTreeSet<IpNet>,
    /// Persistent keepalive in seconds; 0 is off.
    pub persistent_keepalive: u16,
    /// Preshared key, if any (never serialized).
    #[serde(skip)]
    pub preshared_key: Option<PresharedKey>,
}

/// The WireGuard interface's link state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InterfaceState {
    /// Whether the link is up (leaders) or down (other nodes).
    pub up: bool,
    /// Addresses on the interface: the WireGuard CIDR on a leader, none elsewhere.
    pub addresses: BTreeSet<IpNet>,
    /// The MTU, when the agent manages it.
    pub mtu: Option<u32>,
    /// The WireGuard listen port, when the node is a leader.
    pub listen_port: Option<u16>,
}

/// Routes are identified as the kernel identifies them: by table and destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RouteKey {
    /// Routing table.
    pub table: u32,
    /// Destination network (host bits cleared).
    pub dst: IpNet,
}

impl Route {
    /// The kernel's identity of this route.
    pub fn key(&self) -> RouteKey {
        RouteKey { table: self.table, dst: self.dst }
    }
}

/// Everything the mesh owns on a node. Used both for what is wanted ([`DesiredState`]) and, inside
/// [`ObservedState`], for what is there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DataplaneState {
    /// The WireGuard interface.
    pub interface: InterfaceState,
    /// WireGuard peers by public key.
    pub peers: BTreeMap<Key, WireGuardPeer>,
    /// The address of the IPIP tunnel device, when the mesh encapsulates inside the location.
    pub tunnel_address: Option<IpNet>,
    /// Routes by kernel identity.
    pub routes: BTreeMap<RouteKey, Route>,
    /// Policy rules.
    pub rules: BTreeSet<Rule>,
    /// Firewall chains and rules.
    pub firewall: Firewall,
}

/// What a node wants its data plane to be.
pub type DesiredState = DataplaneState;

/// Runtime facts about a WireGuard peer, read from the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeerStats {
    /// Unix seconds of the last handshake; `None` if there was none.
    pub last_handshake: Option<i64>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// What the data plane holds now, plus the peer runtime facts the plan needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ObservedState {
    /// The owned state as read back from the kernel.
    pub state: DataplaneState,
    /// Handshake and traffic counters per peer.
    pub peer_stats: BTreeMap<Key, PeerStats>,
    /// When the observation was made, in Unix seconds.
    pub observed_at: i64,
}

impl ObservedState {
    /// An observation of `state` with no runtime facts (no handshakes).
    pub fn of(state: DataplaneState) -> Self {
        ObservedState { state, ..ObservedState::default() }
    }
}

impl DataplaneState {
    /// The complete desired state of the local node, and warnings about values the kernel cannot
    /// hold as given (a public key or an allowed IP claimed twice, two routes to one destination).
    ///
    /// ```
    /// # use mesh_core::*;
    /// # let node = |name: &str, ip: &str, pods: &str, key: u8| NodeSpec {
    /// #     name: name.into(), endpoint: Some(Endpoint::parse(&format!("{ip}:51820")).unwrap()),
    /// #     key: Some(Key::from_bytes([key; 32])), internal_ip: Some(format!("{ip}/24").parse().unwrap()),
    /// #     location: name.into(), pod_subnet: Some(pods.parse().unwrap()), last_seen: Some(0),
    /// #     ..NodeSpec::default() };
    /// # let snapshot = ClusterSnapshot { nodes: vec![node("a", "192.168.1.1", "10.2.1.0/24", 1),
    /// #     node("b", "192.168.2.1", "10.2.2.0/24", 2)], peers: vec![], now: 0 };
    /// let options = Options::for_host("a");
    /// let topology = Topology::compute(&snapshot, &options).unwrap();
    /// let (desired, warnings) = DesiredState::from_topology(&topology, &options);
    /// assert!(warnings.is_empty());
    /// assert_eq!(desired.peers.len(), 1);
    /// assert!(Plan::between(&ObservedState::of(desired.clone()), &desired).is_empty());
    /// ```
    pub fn from_topology(topology: &Topology, options: &Options) -> (DesiredState, Vec<Warning>) {
        let mut warnings = Vec::new();
        let mut warn = |reason: String| {
            warnings.push(Warning {
                kind: ObjectKind::Node,
                name: topology.hostname.clone(),
                annotation: None,
                value: None,
                reason,
            });
        };

        let configs = topology.wireguard_peers();
        let mut peers: BTreeMap<Key, WireGuardPeer> = BTreeMap::new();
        let mut owners: FxHashMap<IpNet, Key> = FxHashMap::default();
        owners.reserve(configs.iter().map(|config| config.allowed_ips.len()).sum());
        for config in configs {
            // First come, first served: nodes precede Peers, so a Peer cannot take over a node's
            // key or addresses (Kilo lets the kernel give them to whichever comes last).
            if peers.contains_key(&config.public_key) {
                warn(format!(
                    "public key {} appears twice in the WireGuard configuration; the later entry is ignored",
                    config.public_key
                ));
                continue;
            }
            let mut allowed_ips = Vec::with_capacity(config.allowed_ips.len());
            for ip in config.allowed_ips.iter().map(IpNet::trunc) {
                match owners.entry(ip) {
                    Entry::Occupied(owner) if *owner.get() != config.public_key => warn(format!(
                        "allowed IP {ip} is claimed by WireGuard peers {} and {}; the first keeps it",
                        owner.get(),
                        config.public_key
                    )),
                    Entry::Occupied(_) => {}
                    Entry::Vacant(entry) => {
                        entry.insert(config.public_key);
                        allowed_ips.push(ip);
                    }
                }
            }
            peers.insert(
                config.public_key,
                WireGuardPeer {
                    public_key: config.public_key,
                    endpoint: config.endpoint.as_ref().and_then(|e| e.socket_addr()),
                    allowed_ips: allowed_ips.into_iter().collect(),
                    persistent_keepalive: config.persistent_keepalive,
                    preshared_key: config.preshared_key,
                },
            );
        }

        let (route_list, rule_list) = topology.routes(options);
        let mut kept: Vec<Route> = Vec::with_capacity(route_list.len());
        for mut route in route_list {
            route.dst = route.dst.trunc();
            // Kilo mixes families (an IPv4 source or WireGuard gateway on a route to an IPv6
            // network), which the kernel refuses. WireGuard routes by allowed IPs and needs no
            // gateway; a private-network or tunnel route cannot cross families at all.
            let family = |ip: IpAddr| ip.is_ipv4();
            let dst_family = family(route.dst.addr());
            if route.src.is_some_and(|src| family(src) != dst_family) {
                route.src = None;
            }
            if route.gateway.is_some_and(|gateway| family(gateway) != dst_family) {
                if route.dev != Dev::Kilo {
                    warn(format!(
                        "no route to {} over the private network: its gateway {} is of the other IP version",
                        route.dst,
                        display_gateway(route.gateway)
                    ));
                    continue;
                }
                route.gateway = None;
                route.onlink = false;
            }
            kept.push(route);
        }
        // Kilo replaces routes in order, so the kernel keeps the last one for a destination. A
        // stable sort by destination keeps that order among routes to one destination, and
        // `BTreeMap` keeps the last of equal keys.
        kept.sort_by_key(Route::key);
        for pair in kept.windows(2) {
            if pair[0].key() == pair[1].key() && pair[0] != pair[1] {
                warn(format!(
                    "two routes to {} in table {} (via {} and via {}); the later one is used",
                    pair[1].dst,
                    pair[1].table,
                    display_gateway(pair[0].gateway),
                    display_gateway(pair[1].gateway)
                ));
            }
        }
        let routes: BTreeMap<RouteKey, Route> = kept.iter().map(|route| (route.key(), *route)).collect();
        let rules = rule_list
            .into_iter()
            .map(|rule| Rule { src: rule.src.map(|net| net.trunc()), dst: rule.dst.map(|net| net.trunc()), ..rule })
            .collect();

        let leader = topology.leader;
        let state = DataplaneState {
            interface: InterfaceState {
                up: leader,
                addresses: if leader { BTreeSet::from([topology.wireguard_cidr]) } else { BTreeSet::new() },
                mtu: options.mtu,
                listen_port: leader.then_some(topology.listen_port),
            },
            peers,
            tunnel_address: tunnel_address(topology, options),
            routes,
            rules,
            firewall: topology.firewall(options),
        };
        (state, warnings)
    }
}

/// Kilo gives the IPIP tunnel the first address of the pod subnet when it encapsulates inside the
/// location (and the node has a private IP, without which its encapsulator is a no-op).
fn tunnel_address(topology: &Topology, options: &Options) -> Option<IpNet> {
    let encapsulates = options.encapsulation != Encapsulation::Never
        && options.local
        && options.compatibility.uses_ipip()
        && topology.private_ip.is_some();
    if !encapsulates {
        return None;
    }
    Allocator::new(topology.pod_subnet).next().map(|address| one_address_cidr(address.addr()))
}

fn display_gateway(gateway: Option<IpAddr>) -> String {
    gateway.map_or_else(|| "no gateway".to_owned(), |ip| ip.to_string())
}
