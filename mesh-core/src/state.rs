//! The data-plane state a node wants (and has): interface, WireGuard peers, tunnel address,
//! routes, rules and firewall, normalised to what the kernel stores.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use rustc_hash::FxHashSet;
use serde::Serialize;

use crate::diagnostics::{ObjectKind, Warning};
use crate::firewall::{Firewall, FirewallLayout};
use crate::ip::{Allocator, one_address_cidr, order_key, radix_sort, trunc};
use crate::routes::{Dev, Route, Rule};
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

impl RouteKey {
    /// The key's order as integers (table, family, address, prefix length), which compare in a
    /// few instructions where `RouteKey::cmp` compares the `IpNet`s byte by byte.
    pub(crate) fn order(&self) -> (u64, u128) {
        let (family, bits) = order_key(&self.dst);
        (u64::from(self.table) << 16 | u64::from(family), bits)
    }
}

/// Routes by kernel identity: a map from [`RouteKey`] to [`Route`], kept as a vector sorted by
/// key with one route per key. It offers the part of `BTreeMap<RouteKey, Route>`'s interface
/// the mesh needs, but is built with one sort and walked as a slice: a leader of a 5,000-node
/// mesh holds 10,000 routes, and a B-tree of them cost more to build than to compute them.
///
/// A route is always stored under its own key: methods that take a key with a route
/// ([`Routes::insert`], `Extend<(RouteKey, Route)>`, `FromIterator<(RouteKey, Route)>`, as a
/// map would) panic when the key is not `route.key()`.
///
/// ```
/// use mesh_core::{Dev, Route, Routes, MAIN_TABLE};
///
/// let route = |dst: &str, gateway: &str| Route {
///     dst: dst.parse().unwrap(),
///     gateway: Some(gateway.parse().unwrap()),
///     dev: Dev::Kilo,
///     src: None,
///     table: MAIN_TABLE,
///     onlink: true,
/// };
/// // As when a `BTreeMap` is collected, the last route for a key wins.
/// let routes: Routes =
///     [route("10.2.1.0/24", "10.4.0.1"), route("10.2.0.0/24", "10.4.0.2"), route("10.2.1.0/24", "10.4.0.3")]
///         .into_iter()
///         .collect();
/// assert_eq!(routes.len(), 2);
/// assert_eq!(routes.values().next().unwrap().dst.to_string(), "10.2.0.0/24");
/// assert_eq!(routes.get(&route("10.2.1.0/24", "10.4.0.3").key()).unwrap().gateway.unwrap().to_string(), "10.4.0.3");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Routes(Vec<Route>);

impl Routes {
    /// No routes.
    pub const fn new() -> Self {
        Routes(Vec::new())
    }

    /// Routes in any order; of several with one key, the last is kept (as a map keeps the last
    /// value inserted). `replaced(earlier, later)` is called for each route that a later one
    /// with the same key replaces, in that order.
    pub fn from_vec(mut routes: Vec<Route>, mut replaced: impl FnMut(&Route, &Route)) -> Self {
        if routes.is_sorted_by(|a, b| a.key().order() < b.key().order()) {
            return Routes(routes);
        }
        // Sort integers that hold the key and, below it, the input position, so the input order
        // among routes with one key is kept. With IPv4 destinations, few tables (numbered in
        // their order) and fewer than 2^18 routes, each fits in a `u64`, which a radix sort
        // orders in linear time.
        let mut tables: Vec<u32> = Vec::new();
        for route in &routes {
            if tables.last() != Some(&route.table) && !tables.contains(&route.table) && tables.len() <= 256 {
                tables.push(route.table);
            }
        }
        tables.sort_unstable();
        let ipv4_keys = (routes.len() < 1 << 18 && tables.len() <= 256).then(|| {
            let ipv4_key = |(position, route): (usize, &Route)| match route.dst {
                IpNet::V4(net) => {
                    let table = tables.binary_search(&route.table).ok()? as u64;
                    let prefix = u64::from(net.prefix_len());
                    Some(table << 56 | u64::from(u32::from(net.addr())) << 24 | prefix << 18 | position as u64)
                }
                IpNet::V6(_) => None,
            };
            routes.iter().enumerate().map(ipv4_key).collect::<Option<Vec<u64>>>()
        });
        let (mut sources, repeats): (Vec<usize>, bool) = if let Some(Some(mut keys)) = ipv4_keys {
            radix_sort(&mut keys, 2..8);
            let repeats = keys.windows(2).any(|pair| pair[0] >> 18 == pair[1] >> 18);
            (keys.into_iter().map(|key| (key & 0x3_ffff) as usize).collect(), repeats)
        } else {
            let mut keys: Vec<((u64, u128), usize)> =
                routes.iter().enumerate().map(|(position, route)| (route.key().order(), position)).collect();
            keys.sort_unstable();
            let repeats = keys.windows(2).any(|pair| pair[0].0 == pair[1].0);
            (keys.into_iter().map(|(_, position)| position).collect(), repeats)
        };
        permute(&mut routes, &mut sources);
        if repeats {
            // `dedup_by` hands each route with the one kept before it; the later one takes its place.
            routes.dedup_by(|later, kept| {
                let same_key = later.key() == kept.key();
                if same_key {
                    replaced(kept, later);
                    *kept = *later;
                }
                same_key
            });
        }
        Routes(routes)
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The routes, sorted by key.
    pub fn as_slice(&self) -> &[Route] {
        &self.0
    }

    /// The routes, sorted by key.
    pub fn values(&self) -> std::slice::Iter<'_, Route> {
        self.0.iter()
    }

    /// The routes, sorted by key.
    pub fn iter(&self) -> std::slice::Iter<'_, Route> {
        self.0.iter()
    }

    /// The keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = RouteKey> + '_ {
        self.0.iter().map(Route::key)
    }

    fn position(&self, key: &RouteKey) -> Result<usize, usize> {
        let order = key.order();
        self.0.binary_search_by(|route| route.key().order().cmp(&order))
    }

    /// The route with this key.
    pub fn get(&self, key: &RouteKey) -> Option<&Route> {
        self.position(key).ok().map(|index| &self.0[index])
    }

    /// Whether there is a route with this key.
    pub fn contains_key(&self, key: &RouteKey) -> bool {
        self.position(key).is_ok()
    }

    /// Adds `route` under `key`, which must be `route.key()`, and returns the route it replaces.
    /// Inserting in key order is cheapest; each insertion elsewhere moves the routes after it.
    ///
    /// # Panics
    ///
    /// When `key` is not `route.key()`.
    pub fn insert(&mut self, key: RouteKey, route: Route) -> Option<Route> {
        assert_eq!(key, route.key(), "a route is stored under its own key");
        match self.position(&key) {
            Ok(index) => Some(std::mem::replace(&mut self.0[index], route)),
            Err(index) => {
                self.0.insert(index, route);
                None
            }
        }
    }

    /// Removes and returns the route with this key.
    pub fn remove(&mut self, key: &RouteKey) -> Option<Route> {
        self.position(key).ok().map(|index| self.0.remove(index))
    }

    /// Applies changes in order, each a route to add or replace (`Some`) or a key to remove
    /// (`None`), with one sort and one walk however many there are.
    pub(crate) fn apply(&mut self, changes: Vec<(RouteKey, Option<Route>)>) {
        if changes.is_empty() {
            return;
        }
        let mut changes: Vec<((u64, u128), Option<Route>)> =
            changes.into_iter().map(|(key, change)| (key.order(), change)).collect();
        // Stable: of several changes to one key, the last decides.
        changes.sort_by_key(|(order, _)| *order);
        let mut next = Vec::with_capacity(self.0.len() + changes.len());
        let mut current = std::mem::take(&mut self.0).into_iter().peekable();
        let mut changes = changes.into_iter().peekable();
        while let Some((order, mut change)) = changes.next() {
            while let Some((_, later)) = changes.next_if(|(later_order, _)| *later_order == order) {
                change = later;
            }
            while let Some(route) = current.next_if(|route| route.key().order() < order) {
                next.push(route);
            }
            // The change replaces or removes the route with its key, if there is one.
            current.next_if(|route| route.key().order() == order);
            next.extend(change);
        }
        next.extend(current);
        self.0 = next;
    }
}

/// Puts `items[sources[i]]` at `i`, in place, one cycle of the permutation at a time (the
/// vector of routes is the largest of the desired state; a sorted copy would double it).
/// `sources` is used up.
fn permute<T: Copy>(items: &mut [T], sources: &mut [usize]) {
    const DONE: usize = usize::MAX;
    for start in 0..items.len() {
        if sources[start] == DONE {
            continue;
        }
        let first = items[start];
        let mut target = start;
        loop {
            let source = std::mem::replace(&mut sources[target], DONE);
            if source == start {
                items[target] = first;
                break;
            }
            items[target] = items[source];
            target = source;
        }
    }
}

impl fmt::Debug for Routes {
    /// As a map from key to route, like `BTreeMap<RouteKey, Route>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().map(|route| (route.key(), route))).finish()
    }
}

impl Serialize for Routes {
    /// As a map from key to route, like `BTreeMap<RouteKey, Route>`.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|route| (route.key(), route)))
    }
}

impl FromIterator<Route> for Routes {
    /// Of several routes with one key, the last is kept.
    fn from_iter<I: IntoIterator<Item = Route>>(routes: I) -> Self {
        Routes::from_vec(routes.into_iter().collect(), |_, _| {})
    }
}

impl FromIterator<(RouteKey, Route)> for Routes {
    /// Of several routes with one key, the last is kept. Panics when a key is not its route's.
    fn from_iter<I: IntoIterator<Item = (RouteKey, Route)>>(entries: I) -> Self {
        entries.into_iter().map(own_key).collect()
    }
}

impl Extend<Route> for Routes {
    /// A route replaces the one with its key.
    fn extend<I: IntoIterator<Item = Route>>(&mut self, routes: I) {
        let mut all = std::mem::take(&mut self.0);
        all.extend(routes);
        *self = Routes::from_vec(all, |_, _| {});
    }
}

impl Extend<(RouteKey, Route)> for Routes {
    /// A route replaces the one with its key. Panics when a key is not its route's.
    fn extend<I: IntoIterator<Item = (RouteKey, Route)>>(&mut self, entries: I) {
        self.extend(entries.into_iter().map(own_key));
    }
}

fn own_key((key, route): (RouteKey, Route)) -> Route {
    assert_eq!(key, route.key(), "a route is stored under its own key");
    route
}

impl<'a> IntoIterator for &'a Routes {
    type Item = &'a Route;
    type IntoIter = std::slice::Iter<'a, Route>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for Routes {
    type Item = Route;
    type IntoIter = std::vec::IntoIter<Route>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
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
    let sources: Vec<PeerSource<'_>> = topology.wireguard_peer_sources().collect();
    let mut keys: FxHashSet<Key> = FxHashSet::default();
    keys.reserve(sources.len());
    let accepted: Vec<bool> = sources.iter().map(|source| keys.insert(*source.public_key)).collect();

    // The claims: every allowed IP of the accepted peers in order, and which peer lists it.
    let count = sources.iter().zip(&accepted).filter(|(_, accepted)| **accepted).map(|(s, _)| s.allowed_ip_count());
    let count = count.sum();
    let (mut ips, mut claimants) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for (index, source) in sources.iter().enumerate().filter(|(index, _)| accepted[*index]) {
        ips.extend(source.allowed_ips().map(trunc));
        claimants.resize(ips.len(), index);
    }
    // The claims sorted by address, earlier claims first. IPv4 addresses over claim numbers
    // below 2^24 fit in a `u64`, which a radix sort orders in linear time.
    let ipv4_keys = (ips.len() < 1 << 24).then(|| {
        let ipv4_key = |(claim, ip): (usize, &IpNet)| match ip {
            IpNet::V4(net) => {
                Some(u64::from(u32::from(net.addr())) << 32 | u64::from(net.prefix_len()) << 24 | claim as u64)
            }
            IpNet::V6(_) => None,
        };
        ips.iter().enumerate().map(ipv4_key).collect::<Option<Vec<u64>>>()
    });
    // The first claim of an address owns it; a later one by another peer is reported.
    let mut owned: Vec<usize> = Vec::with_capacity(ips.len());
    let mut refused: Vec<(usize, usize)> = Vec::new();
    let mut owned_per_source = vec![0; sources.len()];
    let mut first: Option<usize> = None;
    let mut claim_in_order = |claim: usize| match first {
        Some(first) if ips[first] == ips[claim] => {
            if claimants[first] != claimants[claim] {
                refused.push((claim, first));
            }
        }
        _ => {
            first = Some(claim);
            owned.push(claim);
            owned_per_source[claimants[claim]] += 1;
        }
    };
    if let Some(Some(mut keys)) = ipv4_keys {
        radix_sort(&mut keys, 3..8);
        keys.into_iter().for_each(|key| claim_in_order((key & 0xff_ffff) as usize));
    } else {
        let mut keys: Vec<((u16, u128), usize)> = ips.iter().map(order_key).zip(0..).collect();
        keys.sort_unstable();
        keys.into_iter().for_each(|(_, claim)| claim_in_order(claim));
    }
    refused.sort_unstable();
    // Each peer's addresses, still sorted by address, side by side (a counting sort by peer).
    let starts: Vec<usize> = owned_per_source
        .iter()
        .scan(0, |next, count| {
            let start = *next;
            *next += count;
            Some(start)
        })
        .collect();
    let mut next = starts.clone();
    let mut sorted_ips = vec![IpNet::default(); owned.len()];
    for claim in owned {
        let slot = &mut next[claimants[claim]];
        sorted_ips[*slot] = ips[claim];
        *slot += 1;
    }

    // Reported in the order of the configuration, as they are met.
    let mut refused = refused.iter().peekable();
    for (index, source) in sources.iter().enumerate() {
        if !accepted[index] {
            warn(format!(
                "public key {} appears twice in the WireGuard configuration; the later entry is ignored",
                source.public_key
            ));
        }
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
    let mut order: Vec<(u64, usize)> = (0..sources.len())
        .filter(|index| accepted[*index])
        .map(|index| (prefix(sources[index].public_key), index))
        .collect();
    order.sort_unstable_by(|(a_prefix, a), (b_prefix, b)| {
        a_prefix.cmp(b_prefix).then_with(|| sources[*a].public_key.cmp(sources[*b].public_key))
    });
    let mut peers = BTreeMap::new();
    for (_, index) in order.into_iter().rev() {
        let source = &sources[index];
        let owned = &sorted_ips[starts[index]..starts[index] + owned_per_source[index]];
        let peer = WireGuardPeer {
            public_key: *source.public_key,
            endpoint: source.endpoint().and_then(|e| e.socket_addr()),
            allowed_ips: owned.iter().copied().collect(),
            persistent_keepalive: source.persistent_keepalive,
            preshared_key: source.preshared_key.copied(),
        };
        peers.insert(peer.public_key, peer);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAIN_TABLE;

    fn route(dst: &str, gateway: u8, table: u32) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            gateway: Some(IpAddr::from([10, 4, 0, gateway])),
            dev: Dev::Kilo,
            src: None,
            table,
            onlink: true,
        }
    }

    #[test]
    fn routes_sort_by_key_and_keep_the_last_of_a_key() {
        let input = vec![
            route("fd00::/64", 1, MAIN_TABLE),
            route("10.2.0.0/24", 2, 1107),
            route("10.2.0.0/24", 3, MAIN_TABLE),
            route("10.2.0.0/16", 4, MAIN_TABLE),
            route("10.2.0.0/24", 5, MAIN_TABLE),
            route("10.2.0.0/24", 5, MAIN_TABLE),
            route("10.1.0.0/24", 6, MAIN_TABLE),
        ];
        let mut replaced = Vec::new();
        let routes = Routes::from_vec(input.clone(), |earlier, later| replaced.push((earlier.gateway, later.gateway)));
        let expected: BTreeMap<RouteKey, Route> = input.iter().map(|route| (route.key(), *route)).collect();
        assert_eq!(routes.values().copied().collect::<Vec<_>>(), expected.values().copied().collect::<Vec<_>>());
        assert_eq!(format!("{routes:?}"), format!("{expected:?}"));
        let gateway = |last: u8| Some(IpAddr::from([10, 4, 0, last]));
        assert_eq!(replaced, [(gateway(3), gateway(5)), (gateway(5), gateway(5))]);
        assert_eq!(input.into_iter().collect::<Routes>(), routes);
    }

    #[test]
    fn routes_in_many_tables_sort_as_a_map_does() {
        // More tables than the integer keys number, and enough routes for the radix sort.
        let input: Vec<Route> = (0..3000u32)
            .map(|i| route(&format!("10.{}.{}.0/24", i % 7, i % 251), (i % 5) as u8, 1000 + (i * 7919) % 401))
            .collect();
        let expected: BTreeMap<RouteKey, Route> = input.iter().map(|route| (route.key(), *route)).collect();
        let routes = Routes::from_vec(input.clone(), |_, _| {});
        assert!(routes.values().eq(expected.values()));
        let few_tables: Vec<Route> = input.iter().map(|route| Route { table: route.table % 3, ..*route }).collect();
        let expected: BTreeMap<RouteKey, Route> = few_tables.iter().map(|route| (route.key(), *route)).collect();
        assert!(Routes::from_vec(few_tables, |_, _| {}).values().eq(expected.values()));
    }

    #[test]
    fn routes_behave_as_a_map_by_key() {
        let mut routes = Routes::new();
        let mut map = BTreeMap::new();
        for (index, dst) in ["10.2.3.0/24", "10.2.1.0/24", "10.2.3.0/24", "10.2.2.0/24"].iter().enumerate() {
            let route = route(dst, index as u8, MAIN_TABLE);
            assert_eq!(routes.insert(route.key(), route), map.insert(route.key(), route));
        }
        let gone = route("10.2.1.0/24", 0, MAIN_TABLE).key();
        assert_eq!(routes.remove(&gone), map.remove(&gone));
        assert_eq!(routes.remove(&gone), None);
        assert_eq!(routes.keys().collect::<Vec<_>>(), map.keys().copied().collect::<Vec<_>>());
        assert_eq!(
            routes.get(&route("10.2.3.0/24", 0, MAIN_TABLE).key()).and_then(|r| r.gateway),
            map.values().nth(1).and_then(|r| r.gateway)
        );
        routes.extend([route("10.2.2.0/24", 9, MAIN_TABLE)].map(|route| (route.key(), route)));
        assert_eq!(
            routes.get(&route("10.2.2.0/24", 0, MAIN_TABLE).key()).and_then(|r| r.gateway),
            Some(IpAddr::from([10, 4, 0, 9]))
        );
        assert_eq!(routes.len(), 2);
    }

    #[test]
    #[should_panic(expected = "own key")]
    fn a_route_is_only_stored_under_its_own_key() {
        let route = route("10.2.0.0/24", 1, MAIN_TABLE);
        Routes::new().insert(RouteKey { table: 1107, dst: route.dst }, route);
    }

    #[test]
    fn applied_changes_equal_changes_one_by_one() {
        let start: Routes =
            ["10.2.0.0/24", "10.2.1.0/24", "10.2.2.0/24"].map(|dst| route(dst, 1, MAIN_TABLE)).into_iter().collect();
        let changes = vec![
            (route("10.2.1.0/24", 0, MAIN_TABLE).key(), None),
            (route("10.2.9.0/24", 2, MAIN_TABLE).key(), Some(route("10.2.9.0/24", 2, MAIN_TABLE))),
            (route("10.2.1.0/24", 3, MAIN_TABLE).key(), Some(route("10.2.1.0/24", 3, MAIN_TABLE))),
            (route("10.2.0.0/24", 4, MAIN_TABLE).key(), Some(route("10.2.0.0/24", 4, MAIN_TABLE))),
            (route("10.2.0.0/24", 4, MAIN_TABLE).key(), None),
            (route("10.2.5.0/24", 4, MAIN_TABLE).key(), None),
        ];
        let mut one_by_one = start.clone();
        for (key, change) in &changes {
            match change {
                Some(route) => one_by_one.insert(*key, *route),
                None => one_by_one.remove(key),
            };
        }
        let mut together = start;
        together.apply(changes);
        assert_eq!(together, one_by_one);
        assert_eq!(together.len(), 3);
    }
}
