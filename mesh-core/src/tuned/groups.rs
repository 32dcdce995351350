//! [`Groups`] of nodes into segments, and the [`KnownAddresses`] that allowed-location IPs must
//! not fall into: the two passes of `Topology::compute` over every node, without maps.

use std::net::IpAddr;
use std::ops::Range;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use crate::topology::Segment;

/// Kilo's segment key of a group of nodes, as (is a `node:` key, the text after the prefix):
/// `location:<location>`, or `node:<name>`. Keys compare as Kilo's key strings do.
pub(crate) type SegmentKey<'a> = (bool, &'a str);

/// Nodes grouped into segments in Kilo's segment order, found with a counting sort instead of a
/// `BTreeMap` of segments: `location:` keys first, by location, each location's nodes in input
/// order, then a `node:` segment for each node without a location, by name.
#[derive(Debug)]
pub(crate) struct Groups<'a> {
    /// Each segment's key and its range in `members`.
    pub(crate) segments: Vec<(SegmentKey<'a>, Range<usize>)>,
    /// Indices of nodes, segment after segment, each segment's in input order.
    pub(crate) members: Vec<usize>,
}

impl<'a> Groups<'a> {
    /// Groups nodes given in name order as (name, location to group by, if any).
    pub(crate) fn of(nodes: impl ExactSizeIterator<Item = (&'a str, Option<&'a str>)> + Clone) -> Self {
        let mut groups = Groups { segments: Vec::new(), members: Vec::with_capacity(nodes.len()) };
        // Number the locations as they come, then lay out their members with a counting sort,
        // which keeps the input order inside each location.
        let mut numbers: FxHashMap<&str, usize> = FxHashMap::default();
        let mut sizes: Vec<usize> = Vec::new();
        let number_of: Vec<Option<usize>> = nodes
            .clone()
            .map(|(_, location)| {
                let number = *numbers.entry(location?).or_insert(sizes.len());
                if number == sizes.len() {
                    sizes.push(0);
                }
                sizes[number] += 1;
                Some(number)
            })
            .collect();
        let mut locations: Vec<(&str, usize)> = numbers.into_iter().collect();
        locations.sort_unstable();
        let mut next = vec![0; sizes.len()];
        let mut start = 0;
        for (location, number) in locations {
            groups.segments.push(((false, location), start..start + sizes[number]));
            next[number] = start;
            start += sizes[number];
        }
        groups.members.resize(start, 0);
        for (index, number) in number_of.iter().enumerate() {
            if let Some(number) = *number {
                groups.members[next[number]] = index;
                next[number] += 1;
            }
        }
        for (index, (name, _)) in nodes.enumerate() {
            if number_of[index].is_none() {
                groups.segments.push(((true, name), groups.members.len()..groups.members.len() + 1));
                groups.members.push(index);
            }
        }
        groups
    }
}

/// Which allowed-location IPs lie inside an allowed IP of the mesh (Kilo's `filterAllowedLocationIPs`). Those IPs are few and the
/// mesh's allowed IPs many (a pod subnet and a private IP per node), so the candidates are
/// sorted and each allowed IP of the nodes looks for candidates in its range, instead of the
/// allowed IPs being indexed for the candidates to look up (Kilo's filter is quadratic).
pub(crate) struct KnownAddresses {
    /// The candidates' addresses, sorted and unique, as (is IPv6, bits).
    candidates: Vec<(bool, u128)>,
    /// Per candidate: whether a node's pod subnet or private IP contains it.
    inside_nodes: Vec<bool>,
}

/// The first and last address of a network, as [`address_bits`].
pub(crate) fn address_range(network: &IpNet) -> ((bool, u128), (bool, u128)) {
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

fn address_bits(addr: IpAddr) -> (bool, u128) {
    match addr {
        IpAddr::V4(v4) => (false, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (true, u128::from(v6)),
    }
}

impl KnownAddresses {
    /// Built from segments whose allowed IPs are still their nodes' only.
    pub(crate) fn new(segments: &[Segment]) -> Self {
        let mut candidates: Vec<(bool, u128)> = segments
            .iter()
            .flat_map(|segment| segment.allowed_location_ips.iter().map(|ip| address_bits(ip.addr())))
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let mut inside_nodes = vec![false; candidates.len()];
        let (Some(lowest), Some(highest)) = (candidates.first().copied(), candidates.last().copied()) else {
            return KnownAddresses { candidates, inside_nodes };
        };
        for network in segments.iter().flat_map(|segment| &segment.allowed_ips) {
            let (first, last) = address_range(network);
            // Most networks are nowhere near the candidates.
            if last < lowest || first > highest {
                continue;
            }
            let start = candidates.partition_point(|candidate| *candidate < first);
            for (candidate, inside) in candidates[start..].iter().zip(&mut inside_nodes[start..]) {
                if *candidate > last {
                    break;
                }
                *inside = true;
            }
        }
        KnownAddresses { candidates, inside_nodes }
    }

    /// Whether `addr` (a candidate's) lies inside a node's allowed IP or is the WireGuard IP of
    /// one of `allocated`, segments whose WireGuard IPs ascend as the allocator handed them out.
    pub(crate) fn contains(&self, addr: IpAddr, allocated: &[Segment]) -> bool {
        let bits = address_bits(addr);
        self.candidates.binary_search(&bits).is_ok_and(|index| self.inside_nodes[index])
            || allocated.binary_search_by_key(&bits, |segment| address_bits(segment.wireguard_ip)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn groups_are_the_segments_a_map_of_keys_gives() {
        let nodes = [("a", Some("eu")), ("b", None), ("c", Some("us")), ("d", Some("eu")), ("e", None)];
        let groups = Groups::of(nodes.iter().copied());
        let mut expected: BTreeMap<SegmentKey<'_>, Vec<usize>> = BTreeMap::new();
        for (index, (name, location)) in nodes.iter().enumerate() {
            expected.entry(location.map_or((true, *name), |location| (false, location))).or_default().push(index);
        }
        let found: BTreeMap<SegmentKey<'_>, Vec<usize>> =
            groups.segments.iter().map(|(key, range)| (*key, groups.members[range.clone()].to_vec())).collect();
        assert_eq!(found, expected);
        assert!(groups.segments.iter().map(|(key, _)| *key).is_sorted());
    }
}
