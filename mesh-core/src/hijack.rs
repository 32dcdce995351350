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

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use crate::diagnostics::{ObjectKind, Warning};
use crate::ip::{one_address_cidr, trunc};
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

fn bounds(network: &IpNet) -> Bounds {
    match network {
        IpNet::V4(net) => {
            let (bits, mask) = (u32::from(net.addr()), u32::from(net.netmask()));
            ((false, u128::from(bits & mask)), (false, u128::from(bits | !mask)))
        }
        IpNet::V6(net) => {
            let (bits, mask) = (u128::from(net.addr()), u128::from(net.netmask()));
            ((true, bits & mask), (true, bits | !mask))
        }
    }
}

/// Every guarded network, sorted by first address, with the running maximum of last
/// addresses, so the networks that overlap a range are found without scanning them all.
struct GuardedNetworks<'a> {
    networks: Vec<(Bounds, Guarded, IpNet)>,
    highest_last: Vec<(bool, u128)>,
    snapshot: &'a ClusterSnapshot,
    topology: &'a Topology,
}

impl<'a> GuardedNetworks<'a> {
    fn new(topology: &'a Topology, snapshot: &'a ClusterSnapshot, options: &Options) -> Self {
        let mut networks: Vec<(IpNet, Guarded)> = Vec::with_capacity(3 * snapshot.nodes.len() + 8);
        if let Some(private) = topology.private_ip {
            networks.push((trunc(&private), Guarded::LocalPrivateNetwork));
        }
        networks.push((topology.pod_subnet, Guarded::LocalPodSubnet));
        networks.push((options.subnet.trunc(), Guarded::WireGuardSubnet));
        for (segment, entry) in topology.segments.iter().enumerate() {
            networks.push((one_address_cidr(entry.wireguard_ip), Guarded::WireGuardIp { segment }));
        }
        networks.extend(options.service_cidrs.iter().map(|cidr| (trunc(cidr), Guarded::ServiceCidr)));
        for (node, spec) in snapshot.nodes.iter().enumerate() {
            if let Some(pods) = spec.pod_subnet {
                networks.push((trunc(&pods), Guarded::PodSubnet { node }));
            }
            if let Some(internal) = spec.internal_ip {
                networks.push((one_address_cidr(internal.addr()), Guarded::InternalIp { node }));
            }
            if let Some(ip) = spec.endpoint.as_ref().and_then(Endpoint::ip) {
                networks.push((one_address_cidr(ip), Guarded::Endpoint { node }));
            }
        }
        let mut networks: Vec<(Bounds, Guarded, IpNet)> =
            networks.into_iter().map(|(network, guarded)| (bounds(&network), guarded, network)).collect();
        networks.sort_unstable_by_key(|(bounds, ..)| bounds.0);
        let highest_last = networks
            .iter()
            .scan((false, 0), |highest, (bounds, ..)| {
                *highest = (*highest).max(bounds.1);
                Some(*highest)
            })
            .collect();
        GuardedNetworks { networks, highest_last, snapshot, topology }
    }

    /// The most important guarded network `range` would take over, leaving out the networks
    /// of nodes in `own_locations`.
    fn taken_over(&self, range: &IpNet, own_locations: &[&str]) -> Option<(Guarded, IpNet)> {
        let (first, last) = bounds(range);
        let end = self.networks.partition_point(|(bounds, ..)| bounds.0 <= last);
        let mut found: Option<(Guarded, IpNet)> = None;
        // Walking down from the last network that starts inside the range: once no earlier
        // network reaches the range's first address, none overlaps it.
        for index in (0..end).rev() {
            if self.highest_last[index] < first {
                break;
            }
            let ((network_first, network_last), guarded, network) = self.networks[index];
            if network_last < first || network_first.0 != first.0 {
                continue;
            }
            if guarded.needs_containment() && !(first <= network_first && network_last <= last) {
                continue;
            }
            if guarded.node().is_some_and(|node| own_locations.contains(&self.snapshot.nodes[node].location.as_str())) {
                continue;
            }
            if found.is_none_or(|(best, best_network)| (guarded, network).cmp(&(best, best_network)) == Ordering::Less)
            {
                found = Some((guarded, network));
            }
        }
        found
    }

    /// Why `range` is refused, or `None` when it is not.
    fn refusal(&self, range: &IpNet, own_locations: &[&str], allowed: &[IpNet]) -> Option<String> {
        let range = trunc(range);
        if allowed.iter().any(|allowed| allowed.contains(&range)) {
            return None;
        }
        let what = if range.prefix_len() == 0 {
            "a default route: all traffic would go into the mesh".to_owned()
        } else {
            let (guarded, network) = self.taken_over(&range, own_locations)?;
            let node = |index: usize| &self.snapshot.nodes[index].name;
            let local = &self.topology.hostname;
            match guarded {
                Guarded::LocalPrivateNetwork => {
                    format!("overlaps the private network {network} of the local node {local}")
                }
                Guarded::LocalPodSubnet => format!("overlaps the pod subnet {network} of the local node {local}"),
                Guarded::WireGuardSubnet => format!("contains the WireGuard subnet {network}"),
                Guarded::WireGuardIp { segment } => format!(
                    "contains the WireGuard IP {} of segment {}",
                    network.addr(),
                    self.topology.segments[segment].name
                ),
                Guarded::ServiceCidr => format!("overlaps the service CIDR {network}"),
                Guarded::PodSubnet { node: index } => {
                    format!("overlaps the pod subnet {network} of node {}", node(index))
                }
                Guarded::InternalIp { node: index } => {
                    format!("contains the internal IP {} of node {}", network.addr(), node(index))
                }
                Guarded::Endpoint { node: index } => {
                    format!("contains the endpoint IP {} of node {}", network.addr(), node(index))
                }
            }
        };
        Some(format!("{what}; refused (allow it with --allowed-hijack-cidr)"))
    }
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
    let peer_ips = topology.peers.iter().any(|peer| !peer.allowed_ips.is_empty());
    if routed_segments.is_empty() && !peer_ips {
        return;
    }
    let mut warnings = Vec::new();
    let mut refused_location_ips: Vec<(usize, IpNet)> = Vec::new();
    let mut refused_peer_ips: Vec<(usize, IpNet)> = Vec::new();
    {
        let guarded = GuardedNetworks::new(topology, snapshot, options);
        let allowed = &options.allowed_hijack_cidrs;
        let by_name: FxHashMap<&str, &NodeSpec> = if routed_segments.is_empty() {
            FxHashMap::default()
        } else {
            snapshot.nodes.iter().map(|node| (node.name.as_str(), node)).collect()
        };
        for &index in &routed_segments {
            let segment = &topology.segments[index];
            let members: Vec<&NodeSpec> =
                segment.members.iter().filter_map(|member| by_name.get(member.name.as_str()).copied()).collect();
            let mut own_locations: Vec<&str> = members.iter().map(|node| node.location.as_str()).collect();
            own_locations.sort_unstable();
            own_locations.dedup();
            for range in &segment.allowed_location_ips {
                let Some(reason) = guarded.refusal(range, &own_locations, allowed) else { continue };
                let announcer = members.iter().find(|node| node.allowed_location_ips.contains(range));
                warnings.push(Warning {
                    kind: ObjectKind::Node,
                    name: announcer.map_or_else(|| segment.name.clone(), |node| node.name.clone()),
                    annotation: Some(ALLOWED_LOCATION_IPS.to_owned()),
                    value: Some(range.to_string()),
                    reason,
                });
                refused_location_ips.push((index, *range));
            }
        }
        for (index, peer) in topology.peers.iter().enumerate() {
            for range in &peer.allowed_ips {
                let Some(reason) = guarded.refusal(range, &[], allowed) else { continue };
                warnings.push(Warning {
                    kind: ObjectKind::Peer,
                    name: peer.name.clone(),
                    annotation: Some(PEER_ALLOWED_IPS.to_owned()),
                    value: Some(range.to_string()),
                    reason,
                });
                refused_peer_ips.push((index, *range));
            }
        }
    }
    for (index, range) in refused_location_ips {
        topology.segments[index].allowed_location_ips.retain(|ip| *ip != range);
    }
    for (index, range) in refused_peer_ips {
        topology.peers[index].allowed_ips.retain(|ip| *ip != range);
    }
    topology.warnings.extend(warnings);
}
