//! Refusing hijacks: an allowed-location IP of another location, or a `Peer`'s allowed IP, that
//! would take over traffic the local node must keep out of the mesh.
//!
//! Kilo routes whatever an allowed-location annotation or a `Peer` names. Nodes write their own
//! annotations, so one node could announce `0.0.0.0/0` and every other node would send its
//! default traffic, or its own LAN, into the WireGuard tunnel towards it. Here such a range is
//! left out of what the local node configures (routes, WireGuard allowed IPs, firewall rules)
//! and reported as a [`Warning`] naming the object and the range, unless the range lies inside
//! one of `--allowed-hijack-cidr` ([`Options::allowed_hijack_cidrs`]).
//!
//! A range is refused when it
//!
//! * is a default route (`0.0.0.0/0`, `::/0`);
//! * overlaps the local node's own networks: its private IP's network and its pod subnet;
//! * contains the WireGuard subnet (`--subnet`) or a segment's WireGuard IP;
//! * overlaps a service CIDR (`--service-cidr`);
//! * contains the internal IP or the endpoint of a node, or overlaps its pod subnet, where the
//!   node is in another location than the nodes announcing the range (a location may announce
//!   its own LAN, which holds its nodes' addresses; a `Peer` has no location).
//!
//! The local location's own allowed-location IPs are never refused: the local node does not
//! route them, it masquerades towards them. The check runs after Kilo's own filters, so every
//! decision other nodes must agree on (segments, WireGuard IPs, which allowed-location IP a
//! segment keeps) stays Kilo's: refusing is a decision about local routes only.

use std::cmp::Ordering;
use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use crate::diagnostics::{ObjectKind, Warning};
use crate::ip::{one_address_cidr, trunc};
use crate::tuned::groups::address_range as bounds;
use crate::tuned::ipv4_blocks::Ipv4Blocks;
use crate::{ClusterSnapshot, Endpoint, NodeSpec, Options, Topology};

/// The annotation allowed-location IPs come from.
const ALLOWED_LOCATION_IPS: &str = "kilo.squat.ai/allowed-location-ips";
/// The `Peer` field allowed IPs come from.
const PEER_ALLOWED_IPS: &str = "spec.allowedIPs";

/// What a guarded network is, in the order a refusal names them (the first that applies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Guarded {
    LocalPrivateNetwork,
    LocalPodSubnet,
    WireGuardSubnet,
    WireGuardIp { segment: usize },
    ServiceCidr,
    PodSubnet { node: usize },
    InternalIp { node: usize },
    Endpoint { node: usize },
}

impl Guarded {
    /// Whether a range must contain the network to take it over (the WireGuard subnet holds
    /// free addresses a `Peer` may use), rather than merely overlap it.
    fn needs_containment(self) -> bool {
        matches!(self, Guarded::WireGuardSubnet)
    }

    /// The node whose network this is, if it is a node's.
    fn node(self) -> Option<usize> {
        match self {
            Guarded::PodSubnet { node } | Guarded::InternalIp { node } | Guarded::Endpoint { node } => Some(node),
            _ => None,
        }
    }
}

/// A network as an inclusive range of addresses of one family: `(is IPv6, bits)`.
type Bounds = ((bool, u128), (bool, u128));

/// Calls `visit` with every guarded network of the local node's view: its bounds, what it is,
/// and the network itself (made only when a warning names it).
fn guarded_networks(
    topology: &Topology,
    snapshot: &ClusterSnapshot,
    options: &Options,
    mut visit: impl FnMut(Bounds, Guarded, &dyn Fn() -> IpNet),
) {
    let mut network = |net: IpNet, guarded: Guarded| visit(bounds(&net), guarded, &|| trunc(&net));
    if let Some(private) = topology.private_ip {
        network(private, Guarded::LocalPrivateNetwork);
    }
    network(topology.pod_subnet, Guarded::LocalPodSubnet);
    network(options.subnet, Guarded::WireGuardSubnet);
    for (segment, entry) in topology.segments.iter().enumerate() {
        network(one_address_cidr(entry.wireguard_ip), Guarded::WireGuardIp { segment });
    }
    for cidr in &options.service_cidrs {
        network(*cidr, Guarded::ServiceCidr);
    }
    // Three per node, for thousands of nodes: addresses go without building networks.
    let address = |ip: IpAddr| {
        let bits = match ip {
            IpAddr::V4(v4) => (false, u128::from(u32::from(v4))),
            IpAddr::V6(v6) => (true, u128::from(v6)),
        };
        (bits, bits)
    };
    for (node, spec) in snapshot.nodes.iter().enumerate() {
        if let Some(pods) = spec.pod_subnet {
            visit(bounds(&pods), Guarded::PodSubnet { node }, &|| trunc(&pods));
        }
        if let Some(ip) = spec.internal_ip.map(|internal| internal.addr()) {
            visit(address(ip), Guarded::InternalIp { node }, &|| one_address_cidr(ip));
        }
        if let Some(ip) = spec.endpoint.as_ref().and_then(Endpoint::ip) {
            visit(address(ip), Guarded::Endpoint { node }, &|| one_address_cidr(ip));
        }
    }
}

/// A range to check: an allowed-location IP of another location or a Peer allowed IP.
struct Candidate<'a> {
    /// The range as announced (host bits kept), to name and remove it.
    range: IpNet,
    bounds: Bounds,
    /// The locations whose nodes' networks the range may hold (the announcing segment's).
    own_locations: &'a [&'a str],
    /// The most important guarded network found inside or across it so far.
    taken_over: Option<(Guarded, IpNet)>,
}

/// The candidates sorted by first address, with the running maximum of last addresses, so
/// each guarded network finds the candidates that overlap it without scanning them all: the
/// candidates are few (a handful of allowed-location IPs and Peer IPs), the guarded networks
/// many (three per node), so they are streamed past the candidates rather than indexed. Most
/// IPv4 networks are ruled out before the search, by the /16 blocks the candidates touch.
struct Candidates<'a> {
    candidates: Vec<Candidate<'a>>,
    /// Indices into `candidates`, by first address.
    order: Vec<usize>,
    /// The first addresses, in that order (searched without going through `candidates`).
    firsts: Vec<(bool, u128)>,
    highest_last: Vec<(bool, u128)>,
    /// The /16 blocks of the IPv4 candidates.
    ipv4_blocks: Ipv4Blocks,
}

impl<'a> Candidates<'a> {
    fn new(candidates: Vec<Candidate<'a>>) -> Self {
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_unstable_by_key(|index| candidates[*index].bounds.0);
        let firsts = order.iter().map(|index| candidates[*index].bounds.0).collect();
        let highest_last = order
            .iter()
            .scan((false, 0), |highest, index| {
                *highest = (*highest).max(candidates[*index].bounds.1);
                Some(*highest)
            })
            .collect();
        let mut ipv4_blocks = Ipv4Blocks::new();
        for ((is_ipv6, first), (_, last)) in candidates.iter().map(|candidate| candidate.bounds) {
            if !is_ipv6 {
                ipv4_blocks.insert(first as u32, last as u32);
            }
        }
        Candidates { candidates, order, firsts, highest_last, ipv4_blocks }
    }

    /// Records the guarded network with every candidate that takes it over.
    #[inline]
    fn check(&mut self, bounds: Bounds, guarded: Guarded, network: &dyn Fn() -> IpNet, snapshot: &ClusterSnapshot) {
        if !self.is_far(bounds) {
            self.check_near(bounds, guarded, network, snapshot);
        }
    }

    /// Whether no candidate can overlap the network, as most are: an IPv4 one in other /16
    /// blocks, an IPv6 one below or above them all. Inlined into the loop over the networks.
    #[inline]
    fn is_far(&self, (first, last): Bounds) -> bool {
        if first.0 {
            self.firsts.first().is_none_or(|lowest| last < *lowest)
                || self.highest_last.last().is_none_or(|highest| first > *highest)
        } else {
            !self.ipv4_blocks.touches(first.1 as u32, last.1 as u32)
        }
    }

    #[inline(never)]
    fn check_near(
        &mut self,
        (first, last): Bounds,
        guarded: Guarded,
        network: &dyn Fn() -> IpNet,
        snapshot: &ClusterSnapshot,
    ) {
        let end = self.firsts.partition_point(|candidate_first| *candidate_first <= last);
        // Walking down from the last candidate that starts inside the network: once no earlier
        // candidate reaches the network's first address, none overlaps it.
        for position in (0..end).rev() {
            if self.highest_last[position] < first {
                break;
            }
            let candidate = &mut self.candidates[self.order[position]];
            let (candidate_first, candidate_last) = candidate.bounds;
            if candidate_last < first || candidate_first.0 != first.0 {
                continue;
            }
            if guarded.needs_containment() && !(candidate_first <= first && last <= candidate_last) {
                continue;
            }
            if guarded
                .node()
                .is_some_and(|node| candidate.own_locations.contains(&snapshot.nodes[node].location.as_str()))
            {
                continue;
            }
            let network = network();
            if candidate.taken_over.is_none_or(|best| (guarded, network).cmp(&best) == Ordering::Less) {
                candidate.taken_over = Some((guarded, network));
            }
        }
    }
}

/// Why a range is refused: what it takes over, in words.
fn refusal(taken_over: (Guarded, IpNet), topology: &Topology, snapshot: &ClusterSnapshot) -> String {
    let (guarded, network) = taken_over;
    let node = |index: usize| &snapshot.nodes[index].name;
    let local = &topology.hostname;
    let what = match guarded {
        Guarded::LocalPrivateNetwork => format!("overlaps the private network {network} of the local node {local}"),
        Guarded::LocalPodSubnet => format!("overlaps the pod subnet {network} of the local node {local}"),
        Guarded::WireGuardSubnet => format!("contains the WireGuard subnet {network}"),
        Guarded::WireGuardIp { segment } => {
            format!("contains the WireGuard IP {} of segment {}", network.addr(), topology.segments[segment].name)
        }
        Guarded::ServiceCidr => format!("overlaps the service CIDR {network}"),
        Guarded::PodSubnet { node: index } => format!("overlaps the pod subnet {network} of node {}", node(index)),
        Guarded::InternalIp { node: index } => {
            format!("contains the internal IP {} of node {}", network.addr(), node(index))
        }
        Guarded::Endpoint { node: index } => {
            format!("contains the endpoint IP {} of node {}", network.addr(), node(index))
        }
    };
    with_remedy(&what)
}

fn with_remedy(what: &str) -> String {
    format!("{what}; refused (allow it with --allowed-hijack-cidr)")
}

/// Where a candidate comes from.
#[derive(Clone, Copy)]
enum Origin {
    /// An allowed-location IP of `topology.segments[index]`.
    Segment(usize),
    /// An allowed IP of `topology.peers[index]`.
    Peer(usize),
}

/// Removes from `topology` every allowed-location IP of another location and every `Peer`
/// allowed IP that would take over a guarded network (see the module documentation), and adds
/// a warning for each to `topology.warnings`.
pub(crate) fn refuse_hijacks(topology: &mut Topology, snapshot: &ClusterSnapshot, options: &Options) {
    let routed_segments: Vec<usize> = (0..topology.segments.len())
        .filter(|index| {
            !topology.is_local_location_at(*index) && !topology.segments[*index].allowed_location_ips.is_empty()
        })
        .collect();
    if routed_segments.is_empty() && topology.peers.iter().all(|peer| peer.allowed_ips.is_empty()) {
        return;
    }
    // Per routed segment, the location its nodes are in: from the segment's name where it
    // says (`location:` segments, and `cross` groups), else from its one node.
    let mut by_name: Option<FxHashMap<&str, &NodeSpec>> = None;
    let own_locations: Vec<[&str; 1]> = routed_segments
        .iter()
        .map(|index| {
            let segment = &topology.segments[*index];
            let named = segment.name.strip_prefix("location:");
            let grouped = segment.group.as_deref().and_then(|group| group.strip_prefix("location:"));
            let location = named.or(grouped).unwrap_or_else(|| {
                let by_name = by_name
                    .get_or_insert_with(|| snapshot.nodes.iter().map(|node| (node.name.as_str(), node)).collect());
                let leader = segment.members[segment.leader].name.as_str();
                by_name.get(leader).map_or("", |node| node.location.as_str())
            });
            [location]
        })
        .collect();

    // The ranges to check, in the order they are reported: segments, then Peers.
    let allowed = |range: &IpNet| options.allowed_hijack_cidrs.iter().any(|allowed| allowed.contains(&trunc(range)));
    let mut candidates = Vec::new();
    let mut origins: Vec<Origin> = Vec::new();
    for (position, index) in routed_segments.iter().enumerate() {
        for range in topology.segments[*index].allowed_location_ips.iter().filter(|range| !allowed(range)) {
            candidates.push(Candidate {
                range: *range,
                bounds: bounds(&trunc(range)),
                own_locations: &own_locations[position],
                taken_over: None,
            });
            origins.push(Origin::Segment(*index));
        }
    }
    for (index, peer) in topology.peers.iter().enumerate() {
        for range in peer.allowed_ips.iter().filter(|range| !allowed(range)) {
            candidates.push(Candidate {
                range: *range,
                bounds: bounds(&trunc(range)),
                own_locations: &[],
                taken_over: None,
            });
            origins.push(Origin::Peer(index));
        }
    }
    if candidates.is_empty() {
        return;
    }
    let mut candidates = Candidates::new(candidates);
    guarded_networks(topology, snapshot, options, |bounds, guarded, network| {
        candidates.check(bounds, guarded, network, snapshot);
    });

    let mut refused_location_ips: Vec<(usize, IpNet)> = Vec::new();
    let mut refused_peer_ips: Vec<(usize, IpNet)> = Vec::new();
    let mut warnings = Vec::new();
    for (candidate, origin) in candidates.candidates.iter().zip(origins) {
        let reason = if candidate.range.prefix_len() == 0 {
            with_remedy("a default route: all traffic would go into the mesh")
        } else if let Some(taken_over) = candidate.taken_over {
            refusal(taken_over, topology, snapshot)
        } else {
            continue;
        };
        let range = candidate.range;
        let warning = match origin {
            Origin::Segment(index) => {
                refused_location_ips.push((index, range));
                let segment = &topology.segments[index];
                let announcer = snapshot.nodes.iter().find(|node| {
                    node.allowed_location_ips.contains(&range)
                        && segment.members.iter().any(|member| member.name == node.name)
                });
                Warning {
                    kind: ObjectKind::Node,
                    name: announcer.map_or_else(|| topology.segments[index].name.clone(), |node| node.name.clone()),
                    annotation: Some(ALLOWED_LOCATION_IPS.to_owned()),
                    value: Some(range.to_string()),
                    reason,
                }
            }
            Origin::Peer(index) => {
                refused_peer_ips.push((index, range));
                Warning {
                    kind: ObjectKind::Peer,
                    name: topology.peers[index].name.clone(),
                    annotation: Some(PEER_ALLOWED_IPS.to_owned()),
                    value: Some(range.to_string()),
                    reason,
                }
            }
        };
        warnings.push(warning);
    }
    for (index, range) in refused_location_ips {
        topology.segments[index].allowed_location_ips.retain(|ip| *ip != range);
    }
    for (index, range) in refused_peer_ips {
        topology.peers[index].allowed_ips.retain(|ip| *ip != range);
    }
    topology.warnings.extend(warnings);
}
