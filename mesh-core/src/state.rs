//! The data-plane state a node wants (and has): interface, WireGuard peers, tunnel address,
//! routes, rules and firewall, normalised to what the kernel stores (the WireGuard configuration
//! of §4.11 of the reference, the routes and rules of §5, the iptables rules of §6). [`Routes`]
//! and the claim resolver live in `crate::tuned`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

use crate::diagnostics::{ObjectKind, Warning};
use crate::firewall::{Firewall, FirewallLayout};
use crate::ip::{Allocator, one_address_cidr, trunc};
use crate::routes::{Dev, Route, Rule};
use crate::tuned::claims::Claims;
use crate::wireguard::PeerSource;
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

pub use crate::tuned::Routes;

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
    pub routes: Routes,
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
    /// Where our firewall rules sit among everyone else's, for the positions of insertions.
    pub firewall_layout: FirewallLayout,
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

        let peers = wireguard_peers(topology, &mut warn);
        let (route_list, rule_list) = topology.routes(options);
        let routes = kernel_routes(route_list, &mut warn);
        let rules = rule_list
            .into_iter()
            .map(|rule| Rule { src: rule.src.as_ref().map(trunc), dst: rule.dst.as_ref().map(trunc), ..rule })
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

/// The WireGuard peers as the kernel will hold them: one per public key, each allowed IP with
/// one peer, host bits cleared.
///
/// First come, first served: nodes precede Peers, so a Peer cannot take over a node's key or
/// addresses (Kilo lets the kernel give them to whichever comes last). Who claimed an address
/// first is found by sorting all claims by address, which also hands each peer its addresses
/// in the order its set is built fastest from.
fn wireguard_peers(topology: &Topology, warn: &mut impl FnMut(String)) -> BTreeMap<Key, WireGuardPeer> {
    // One source per public key, none with the local node's own (`Topology::key_owners`).
    let sources: Vec<PeerSource<'_>> = topology.wireguard_peer_sources().collect();

    // The claims: every allowed IP of the peers in order, and which peer lists it.
    let count = sources.iter().map(PeerSource::allowed_ip_count).sum();
    let (mut ips, mut claimants) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for (index, source) in sources.iter().enumerate() {
        ips.extend(source.allowed_ips().map(trunc));
        claimants.resize(ips.len(), index);
    }
    // The first claim of an address owns it; a later one by another peer is reported.
    let claims = Claims::resolve(&ips, &claimants, sources.len());

    // Reported in the order of the configuration, as they are met.
    let mut refused = claims.refused.iter().peekable();
    for (index, source) in sources.iter().enumerate() {
        while let Some((claim, first)) = refused.next_if(|(claim, _)| claimants[*claim] == index) {
            warn(format!(
                "allowed IP {} is claimed by WireGuard peers {} and {}; the first keeps it",
                ips[*claim], sources[claimants[*first]].public_key, source.public_key
            ));
        }
    }

    // The peers go into the map from the greatest key down: each insertion then walks the
    // tree's left edge with one comparison per level. (`collect` would copy them all into a
    // vector and sort it with a scratch buffer of the same size, even when it is sorted: 1.6 MB
    // at 5,000 peers.) Keys are sorted by their first eight bytes as integers; the rest breaks ties.
    let prefix = |key: &Key| u64::from_be_bytes(key.as_bytes()[..8].try_into().unwrap_or_default());
    let mut order: Vec<(u64, usize)> =
        sources.iter().enumerate().map(|(index, source)| (prefix(source.public_key), index)).collect();
    order.sort_unstable_by(|(a_prefix, a), (b_prefix, b)| {
        a_prefix.cmp(b_prefix).then_with(|| sources[*a].public_key.cmp(sources[*b].public_key))
    });
    let mut peers = BTreeMap::new();
    for (_, index) in order.into_iter().rev() {
        let source = &sources[index];
        let owned = claims.owned_by(index);
        let peer = WireGuardPeer {
            public_key: *source.public_key,
            endpoint: source.endpoint().and_then(|e| e.socket_addr()),
            allowed_ips: owned.iter().copied().collect(),
            persistent_keepalive: source.persistent_keepalive,
            preshared_key: source.preshared_key.copied(),
        };
        let replaced = peers.insert(peer.public_key, peer);
        debug_assert!(replaced.is_none(), "one source per public key");
    }
    peers
}

/// Routes as the kernel will hold them: destinations with host bits cleared, no route that mixes
/// IP versions, one route per table and destination.
fn kernel_routes(mut route_list: Vec<Route>, warn: &mut impl FnMut(String)) -> Routes {
    route_list.retain_mut(|route| {
        route.dst = trunc(&route.dst);
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
                return false;
            }
            route.gateway = None;
            route.onlink = false;
        }
        true
    });
    // Kilo replaces routes in order, so the kernel keeps the last one for a destination.
    Routes::from_vec(route_list, |earlier, later| {
        if earlier != later {
            warn(format!(
                "two routes to {} in table {} (via {} and via {}); the later one is used",
                later.dst,
                later.table,
                display_gateway(earlier.gateway),
                display_gateway(later.gateway)
            ));
        }
    })
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
