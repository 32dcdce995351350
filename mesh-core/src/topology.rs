//! Segments, leaders, WireGuard IPs and allowed IPs: Kilo's `NewTopology`, plus `cross` granularity
//! (§4 of the reference: readiness §4.1, grouping §4.4, leaders §4.5, per-segment data §4.6,
//! WireGuard IPs §4.7, peers §4.10). The containers that make it fast at scale are in
//! `crate::tuned`.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::diagnostics::{ObjectKind, Skipped, Warning};
use crate::failover::{Candidate, Election};
use crate::ip::{Allocator, intersect, is_public, one_address_cidr, trunc};
use crate::tuned::groups::{Groups, KnownAddresses, SegmentKey};
use crate::{ClusterSnapshot, Endpoint, Granularity, Key, NodeSpec, Options, PeerSpec, PresharedKey};

/// Why a topology cannot be computed for this node at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ComputeError {
    /// The snapshot has no node named like `--hostname`.
    #[error("local node {hostname:?} is not in the cluster")]
    LocalNodeMissing {
        /// The `--hostname` that was looked for.
        hostname: String,
    },
    /// The local node exists but is not ready, so nothing can be configured yet.
    #[error("local node {hostname:?} is {reason}")]
    LocalNodeNotReady {
        /// The local node's name.
        hostname: String,
        /// Why it is not ready.
        reason: String,
    },
    /// The WireGuard subnet has fewer addresses than there are segments.
    #[error(
        "failed to allocate a WireGuard IP for segment {segment:?}: subnet {subnet} has no addresses left for {segments} segments"
    )]
    SubnetExhausted {
        /// `--subnet`.
        subnet: IpNet,
        /// The first segment left without an address.
        segment: String,
        /// How many segments needed an address.
        segments: usize,
    },
}

/// A node inside a segment, with what routes to it need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node name.
    pub name: String,
    /// Its pod subnet.
    pub pod_subnet: IpNet,
    /// Its private IP, without mask.
    pub private_ip: Option<IpAddr>,
    /// Its CNI-compatibility IP (Cilium's `cilium_host` address), with mask.
    pub cni_compatibility_ip: Option<IpNet>,
}

/// A group of nodes that shares one WireGuard peer entry, terminated by its leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Kilo's segment key: `location:<location>` or `node:<name>`. Segments sort by it.
    pub name: String,
    /// In `cross` granularity, `location:<location>` of the segment's node; `None` otherwise.
    pub group: Option<String>,
    /// The nodes, sorted by name.
    pub members: Vec<Member>,
    /// Index of the leader in `members`.
    pub leader: usize,
    /// The leader's endpoint.
    pub endpoint: Option<Endpoint>,
    /// The leader's public key.
    pub key: Key,
    /// The leader's persistent keepalive in seconds (0 = off; decides whether discovered endpoints apply).
    pub persistent_keepalive: u16,
    /// Per member: pod subnet then private IP `/32`; finally the WireGuard IP `/32`.
    pub allowed_ips: Vec<IpNet>,
    /// The members' `allowed-location-ips`, merged, sorted and filtered for overlaps.
    pub allowed_location_ips: Vec<IpNet>,
    /// The WireGuard IP allocated to the segment's leader.
    pub wireguard_ip: IpAddr,
    /// Indices in `members` of the nodes deposed by a failover claim (empty without fast failover).
    pub deposed: Vec<usize>,
    /// Index in `members` of the node that takes over from the leader, and so probes it; `None`
    /// without fast failover or without another candidate.
    pub successor: Option<usize>,
}

/// A ready `Peer`, with its allowed IPs de-duplicated against earlier peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The Peer name.
    pub name: String,
    /// Allowed IPs, host bits kept (possibly empty after de-duplication).
    pub allowed_ips: Vec<IpNet>,
    /// The public key.
    pub public_key: Key,
    /// The configured endpoint.
    pub endpoint: Option<Endpoint>,
    /// Persistent keepalive in seconds.
    pub persistent_keepalive: u16,
    /// Optional preshared key.
    pub preshared_key: Option<PresharedKey>,
}

/// The mesh as seen from one node: what Kilo's `NewTopology` computes, value for value.
///
/// Values keep Kilo's forms (host bits included) so that renderers print what `kgctl` prints;
/// [`DesiredState`](crate::DesiredState) normalises them to what the kernel stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The local node.
    pub hostname: String,
    /// The granularity used.
    pub granularity: Granularity,
    /// Whether the local node terminates WireGuard (always, in `full` and `cross`).
    pub leader: bool,
    /// Index of the local node's segment in `segments`.
    pub local_segment: usize,
    /// The local private IP with its mask.
    pub private_ip: Option<IpNet>,
    /// The local pod subnet.
    pub pod_subnet: IpNet,
    /// The local WireGuard address (`ip/subnet-prefix`) when leader; otherwise the subnet itself.
    pub wireguard_cidr: IpNet,
    /// The WireGuard listen port: the port of the local node's endpoint.
    pub listen_port: u16,
    /// The local node's persistent keepalive, applied to every WireGuard peer.
    pub persistent_keepalive: u16,
    /// Segments sorted by name.
    pub segments: Vec<Segment>,
    /// Ready peers sorted by name.
    pub peers: Vec<Peer>,
    /// NAT endpoints learned by the nodes: the local node's first, then in segment and name order.
    pub discovered_endpoints: BTreeMap<Key, SocketAddr>,
    /// Nodes and peers left out, with the reason.
    pub skipped: Vec<Skipped>,
    /// Values that were ignored (overlapping allowed-location IPs, …).
    pub warnings: Vec<Warning>,
    /// Leaders were elected with failover claims ([`crate::failover`]): the option is on, the
    /// granularity is `location` and every ready node announced the capability.
    pub fast_failover: bool,
    /// Positions in the local WireGuard configuration (Kilo's `Conf()` order) of the entries
    /// whose key an earlier entry or the local node owns: they get no WireGuard peer. Almost
    /// always empty; computed once, with the warnings that name them.
    pub(crate) shadowed_keys: Vec<usize>,
}

/// A node that passed the readiness check, with its required fields unwrapped.
struct ReadyNode<'a> {
    spec: &'a NodeSpec,
    key: &'a Key,
    pod_subnet: IpNet,
}

impl ReadyNode<'_> {
    fn has_public_endpoint(&self) -> bool {
        self.spec.endpoint.as_ref().and_then(Endpoint::ip).is_some_and(is_public)
    }
}

impl Topology {
    /// Computes the mesh from the point of view of `options.hostname`.
    ///
    /// Nodes and peers that are not ready are left out and listed in [`Topology::skipped`]; the
    /// local node must be ready. The result does not depend on the order of the snapshot's lists.
    ///
    /// Allowed-location IPs of other locations and `Peer` allowed IPs that would take over the
    /// local node's default route, its own networks, other nodes' addresses, the WireGuard subnet
    /// or a service CIDR are left out and reported in [`Topology::warnings`], unless
    /// [`Options::allowed_hijack_cidrs`] allows them.
    ///
    /// ```
    /// use mesh_core::{ClusterSnapshot, Endpoint, Key, NodeSpec, Options, Topology};
    ///
    /// let node = |name: &str, ip: &str, pods: &str, key: u8| NodeSpec {
    ///     name: name.into(),
    ///     endpoint: Some(Endpoint::parse(&format!("{ip}:51820")).unwrap()),
    ///     key: Some(Key::from_bytes([key; 32])),
    ///     internal_ip: Some(format!("{ip}/24").parse().unwrap()),
    ///     location: name.into(),
    ///     pod_subnet: Some(pods.parse().unwrap()),
    ///     last_seen: Some(1_000),
    ///     ..NodeSpec::default()
    /// };
    /// let snapshot = ClusterSnapshot {
    ///     nodes: vec![node("a", "192.168.1.1", "10.2.1.0/24", 1), node("b", "192.168.2.1", "10.2.2.0/24", 2)],
    ///     peers: vec![],
    ///     now: 1_010,
    /// };
    /// let topology = Topology::compute(&snapshot, &Options::for_host("a")).unwrap();
    /// assert!(topology.leader);
    /// assert_eq!(topology.wireguard_cidr.to_string(), "10.4.0.1/16");
    /// assert_eq!(topology.segments[1].allowed_ips.len(), 3); // pods, private /32, WireGuard /32
    /// ```
    pub fn compute(snapshot: &ClusterSnapshot, options: &Options) -> Result<Topology, ComputeError> {
        let mut skipped = Vec::new();
        let mut warnings = Vec::new();
        let (nodes, local_index) = ready_nodes(snapshot, options, &mut skipped)?;
        let local = &nodes[local_index];

        // Segments (kilo-reference §4.4): a node joins its location's segment, or is a segment of
        // its own in `full` and `cross` granularity and when it has no internal IP.
        let by_location = options.granularity == Granularity::Location;
        let groups = Groups::of(nodes.iter().map(|node| {
            let location = (by_location && node.spec.internal_ip.is_some()).then_some(node.spec.location.as_str());
            (node.spec.name.as_str(), location)
        }));
        let mut leader = options.granularity != Granularity::Location;
        let fast_failover = by_location && options.fast_failover && nodes.iter().all(|n| n.spec.failover_capable);
        let retained = if fast_failover { retained_location_ips(snapshot, &nodes) } else { BTreeMap::new() };
        let mut segments = Vec::with_capacity(groups.segments.len());
        let mut local_segment = 0;
        for (key, members) in &groups.segments {
            let members = &groups.members[members.clone()];
            // `nodes` is sorted by name, so every group already is.
            let election = elect(&nodes, members, fast_failover);
            if members.contains(&local_index) {
                local_segment = segments.len();
                leader |= members[election.leader] == local_index;
            }
            let retained: &[&NodeSpec] = match key {
                (false, location) => retained.get(location).map_or(&[], Vec::as_slice),
                (true, _) => &[],
            };
            segments.push(build_segment(*key, options.granularity, &nodes, members, &election, retained));
        }

        let peers = ready_peers(snapshot, &mut skipped);
        let mut discovered_endpoints = local.spec.discovered_endpoints.clone();
        for (_, members) in &groups.segments {
            for node in &groups.members[members.clone()] {
                for (key, endpoint) in &nodes[*node].spec.discovered_endpoints {
                    discovered_endpoints.entry(*key).or_insert(*endpoint);
                }
            }
        }

        // Asked before the WireGuard IPs join the segments' allowed IPs.
        let known = KnownAddresses::new(&segments);
        let mut allocator = Allocator::new(options.subnet);
        let mut wireguard_cidr = options.subnet.trunc();
        let segment_count = segments.len();
        for (index, segment) in segments.iter_mut().enumerate() {
            let address = allocator.next().ok_or_else(|| ComputeError::SubnetExhausted {
                subnet: options.subnet,
                segment: segment.name.clone(),
                segments: segment_count,
            })?;
            segment.wireguard_ip = address.addr();
            segment.allowed_ips.push(one_address_cidr(address.addr()));
            if leader && index == local_segment {
                wireguard_cidr = address;
            }
        }

        // Every segment's allowed-location IPs, as the filter sees them: earlier segments'
        // filtered, later ones' not yet. Few in practice, so they are scanned, not indexed.
        let mut location_ips: Vec<(usize, IpNet)> = segments
            .iter()
            .enumerate()
            .flat_map(|(index, segment)| segment.allowed_location_ips.iter().map(move |ip| (index, *ip)))
            .collect();
        for (index, ((is_node_key, key), members)) in groups.segments.iter().enumerate() {
            if !segments[index].allowed_location_ips.is_empty() {
                let retained = match retained.get(key).filter(|_| !is_node_key) {
                    Some(retained) => retained.as_slice(),
                    None => &[],
                };
                let members = groups.members[members.clone()]
                    .iter()
                    .map(|node| nodes[*node].spec)
                    .chain(retained.iter().copied());
                let filtered = filter_allowed_location_ips(
                    &segments,
                    index,
                    &location_ips,
                    &known,
                    &peers,
                    members,
                    &mut warnings,
                );
                // Later segments are checked against what this one kept.
                location_ips.retain(|(owner, ip)| *owner != index || filtered.contains(ip));
                segments[index].allowed_location_ips = filtered;
            }
        }

        let mut topology = Topology {
            hostname: options.hostname.clone(),
            granularity: options.granularity,
            leader,
            local_segment,
            private_ip: local.spec.internal_ip,
            pod_subnet: local.pod_subnet,
            wireguard_cidr,
            listen_port: local.spec.endpoint.as_ref().map_or(options.port, |e| e.port),
            persistent_keepalive: local.spec.persistent_keepalive,
            segments,
            peers,
            discovered_endpoints,
            skipped,
            warnings,
            fast_failover,
            shadowed_keys: Vec::new(),
        };
        // Last, so that what other nodes must agree on stays Kilo's: refusing is local.
        crate::hijack::refuse_hijacks(&mut topology, snapshot, options);
        let owners = topology.key_owners();
        let duplicate_keys = topology.duplicate_key_warnings(&owners);
        topology.warnings.extend(duplicate_keys);
        topology.shadowed_keys = owners.iter().enumerate().filter_map(|(at, owner)| owner.map(|_| at)).collect();
        Ok(topology)
    }

    /// The local node's segment.
    pub fn local(&self) -> &Segment {
        &self.segments[self.local_segment]
    }

    /// Whether `segment` is in the local node's location: its own segment, or in `cross`
    /// granularity any segment of the same location (reached without WireGuard).
    pub fn is_local_location(&self, segment: &Segment) -> bool {
        segment.name == self.local().name || (segment.group.is_some() && segment.group == self.local().group)
    }

    /// [`Topology::is_local_location`] of `segments[index]`, without comparing names: segment
    /// names are unique, so the local segment is the one at `local_segment`.
    pub(crate) fn is_local_location_at(&self, index: usize) -> bool {
        let segment = &self.segments[index];
        index == self.local_segment || (segment.group.is_some() && segment.group == self.local().group)
    }

    /// The endpoint to give WireGuard for a target: a discovered NAT endpoint when the target has a
    /// persistent keepalive (it is behind NAT and keeps its mapping open), else the configured one.
    pub fn effective_endpoint(&self, configured: Option<&Endpoint>, key: &Key, keepalive: u16) -> Option<Endpoint> {
        if keepalive != 0
            && let Some(discovered) = self.discovered_endpoints.get(key)
        {
            return Some(Endpoint::from_socket_addr(*discovered));
        }
        configured.cloned()
    }

    /// The local node's private address, without mask.
    pub fn local_private_addr(&self) -> Option<IpAddr> {
        self.private_ip.map(|ip| ip.addr())
    }
}

/// Nodes that take part, sorted by name; the local node must be among them.
/// Also returns the local node's index.
fn ready_nodes<'a>(
    snapshot: &'a ClusterSnapshot,
    options: &Options,
    skipped: &mut Vec<Skipped>,
) -> Result<(Vec<ReadyNode<'a>>, usize), ComputeError> {
    let mut sorted: Vec<&NodeSpec> = snapshot.nodes.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut ready = Vec::with_capacity(sorted.len());
    let mut local_found = false;
    let mut local_index = 0;
    for namesakes in sorted.chunk_by(|a, b| a.name == b.name) {
        let spec = namesakes[0];
        let is_local = spec.name == options.hostname;
        local_found |= is_local;
        if is_local {
            local_index = ready.len();
        }
        // Which of several objects with one name is meant cannot be told (only files allow it);
        // picking one by input order would make agents disagree, so none is used.
        if namesakes.len() > 1 {
            let reason = format!("ambiguous: {} nodes have this name; all are ignored", namesakes.len());
            if is_local {
                return Err(ComputeError::LocalNodeNotReady { hostname: spec.name.clone(), reason });
            }
            skipped.extend(namesakes.iter().map(|n| Skipped::node(&n.name, reason.clone())));
            continue;
        }
        match (spec.readiness(snapshot.now), &spec.key, &spec.pod_subnet) {
            (Ok(()), Some(key), Some(pod_subnet)) => ready.push(ReadyNode { spec, key, pod_subnet: trunc(pod_subnet) }),
            (result, ..) => {
                let reason = result.err().map_or_else(|| "not ready".to_owned(), |e| e.to_string());
                if is_local {
                    return Err(ComputeError::LocalNodeNotReady { hostname: spec.name.clone(), reason });
                }
                skipped.push(Skipped::node(&spec.name, reason));
            }
        }
    }
    if !local_found {
        return Err(ComputeError::LocalNodeMissing { hostname: options.hostname.clone() });
    }
    Ok((ready, local_index))
}

/// Ready peers sorted by name, allowed IPs de-duplicated across peers (earlier names keep them).
fn ready_peers(snapshot: &ClusterSnapshot, skipped: &mut Vec<Skipped>) -> Vec<Peer> {
    let mut sorted: Vec<&PeerSpec> = snapshot.peers.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut peers: Vec<Peer> = Vec::with_capacity(sorted.len());
    let mut keys: BTreeMap<Key, &str> = BTreeMap::new();
    for namesakes in sorted.chunk_by(|a, b| a.name == b.name) {
        let spec = namesakes[0];
        if namesakes.len() > 1 {
            let reason = format!("ambiguous: {} peers have this name; all are ignored", namesakes.len());
            skipped.extend(namesakes.iter().map(|p| Skipped::peer(&p.name, reason.clone())));
            continue;
        }
        let public_key = match (spec.readiness(), spec.public_key) {
            (Ok(()), Some(key)) => key,
            (result, _) => {
                skipped.push(Skipped::peer(&spec.name, result.err().unwrap_or("not ready")));
                continue;
            }
        };
        // Kilo keys peers by public key, so two Peers with one key replace each other in an order
        // that depends on informer timing. We keep the first by name and say so.
        if let Some(owner) = keys.get(&public_key) {
            skipped
                .push(Skipped::peer(&spec.name, format!("public key {public_key} is already used by peer {owner:?}")));
            continue;
        }
        keys.insert(public_key, &spec.name);
        peers.push(Peer {
            name: spec.name.clone(),
            allowed_ips: spec.allowed_ips.clone(),
            public_key,
            endpoint: spec.endpoint.clone(),
            persistent_keepalive: spec.persistent_keepalive,
            preshared_key: spec.preshared_key,
        });
    }
    deduplicate_peer_ips(&mut peers);
    peers
}

/// Kilo's `deduplicatePeerIPs`: an allowed IP (compared with its host bits) belongs to the first
/// peer in order that lists it; later peers, and later entries of the same peer, lose it.
pub fn deduplicate_peer_ips(peers: &mut [Peer]) {
    let mut seen: HashSet<IpNet> = HashSet::new();
    for peer in peers {
        peer.allowed_ips.retain(|ip| seen.insert(*ip));
    }
}

/// The election of a name-sorted segment (indices into `nodes`): Kilo's `findLeader` (§4.5), or
/// with `fast_failover` the election with claims of [`crate::failover`]. Positions in `members`.
fn elect(nodes: &[ReadyNode<'_>], members: &[usize], fast_failover: bool) -> Election {
    // A segment of one node (each segment in `full` granularity) elects it under both rules;
    // nothing of it needs reading, and nobody else can depose it or succeed it.
    if members.len() == 1 {
        return Election { leader: 0, deposed: Vec::new(), successor: None };
    }
    let candidates = members.iter().map(|index| Candidate::of(nodes[*index].spec, nodes[*index].has_public_endpoint()));
    if fast_failover {
        return Election::of(&candidates.collect::<Vec<_>>());
    }
    Election { leader: Election::kilo(candidates.enumerate()).unwrap_or(0), deposed: Vec::new(), successor: None }
}

/// With fast failover, a location keeps the `allowed-location-ips` of its members that are not
/// ready (the ranges an operator put on a leader that died move to the new leader): the nodes of
/// the snapshot that are not among the ready ones, with a private IP, by location.
fn retained_location_ips<'a>(
    snapshot: &'a ClusterSnapshot,
    ready: &[ReadyNode<'_>],
) -> BTreeMap<&'a str, Vec<&'a NodeSpec>> {
    let mut retained: BTreeMap<&str, Vec<&NodeSpec>> = BTreeMap::new();
    for node in &snapshot.nodes {
        let is_ready = ready.binary_search_by(|r| r.spec.name.as_str().cmp(&node.name)).is_ok();
        if !is_ready && node.internal_ip.is_some() && !node.allowed_location_ips.is_empty() {
            retained.entry(node.location.as_str()).or_default().push(node);
        }
    }
    for nodes in retained.values_mut() {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }
    retained
}

fn build_segment(
    (is_node_key, key): SegmentKey<'_>,
    granularity: Granularity,
    nodes: &[ReadyNode<'_>],
    members: &[usize],
    election: &Election,
    retained: &[&NodeSpec],
) -> Segment {
    let leader = election.leader;
    let prefix = if is_node_key { "node:" } else { "location:" };
    let mut name = String::with_capacity(prefix.len() + key.len());
    name.push_str(prefix);
    name.push_str(key);
    let mut allowed_ips = Vec::with_capacity(members.len() * 2 + 1);
    let mut allowed_location_ips: Vec<IpNet> = Vec::new();
    for node in members.iter().map(|index| &nodes[*index]) {
        allowed_ips.push(node.pod_subnet);
        allowed_location_ips.extend_from_slice(&node.spec.allowed_location_ips);
        if let Some(internal) = node.spec.internal_ip {
            allowed_ips.push(one_address_cidr(internal.addr()));
        }
    }
    for node in retained {
        allowed_location_ips.extend_from_slice(&node.allowed_location_ips);
    }
    // Kilo sorts by the CIDR text; keep that order so renderers print what kgctl prints. Equal
    // networks have equal texts, so the repeats end up side by side.
    allowed_location_ips.sort_by_cached_key(ToString::to_string);
    allowed_location_ips.dedup();
    let leader_node = &nodes[members[leader]];
    Segment {
        group: (granularity == Granularity::Cross).then(|| format!("location:{}", leader_node.spec.location)),
        name,
        members: members
            .iter()
            .map(|index| {
                let node = &nodes[*index];
                Member {
                    name: node.spec.name.clone(),
                    pod_subnet: node.pod_subnet,
                    private_ip: node.spec.internal_ip.map(|ip| ip.addr()),
                    cni_compatibility_ip: node.spec.cni_compatibility_ip,
                }
            })
            .collect(),
        leader,
        endpoint: leader_node.spec.endpoint.clone(),
        key: *leader_node.key,
        persistent_keepalive: leader_node.spec.persistent_keepalive,
        allowed_ips,
        allowed_location_ips,
        wireguard_ip: IpAddr::from([0, 0, 0, 0]),
        deposed: election.deposed.clone(),
        successor: election.successor,
    }
}

/// Kilo's `filterAllowedLocationIPs` (§4.6) for segment `index`, against the current state: earlier
/// segments are already filtered, later ones are not, and only segments up to `index` have their
/// WireGuard IP among their allowed IPs.
fn filter_allowed_location_ips<'a>(
    segments: &[Segment],
    index: usize,
    location_ips: &[(usize, IpNet)],
    known: &KnownAddresses,
    peers: &[Peer],
    members: impl Iterator<Item = &'a NodeSpec> + Clone,
    warnings: &mut Vec<Warning>,
) -> Vec<IpNet> {
    let segment = &segments[index];
    // Name the node whose annotation holds the value, so the warning points at what to fix.
    let owner = |ip: &IpNet| {
        members
            .clone()
            .find(|m| m.allowed_location_ips.contains(ip))
            .map_or_else(|| segment.name.clone(), |m| m.name.clone())
    };
    let mut kept = Vec::with_capacity(segment.allowed_location_ips.len());
    'candidates: for candidate in &segment.allowed_location_ips {
        let mut reject = |reason: String| {
            warnings.push(Warning {
                kind: ObjectKind::Node,
                name: owner(candidate),
                annotation: Some("kilo.squat.ai/allowed-location-ips".to_owned()),
                value: Some(candidate.to_string()),
                reason,
            });
        };
        if let Some((other, clash)) =
            location_ips.iter().find(|(other, ip)| *other != index && intersect(candidate, ip))
        {
            reject(format!("overlaps allowed location IP {clash} of segment {}; ignored", segments[*other].name));
            continue 'candidates;
        }
        if known.contains(candidate.addr(), &segments[..=index]) {
            reject("lies inside an allowed IP of the mesh (a pod subnet, private or WireGuard IP); ignored".to_owned());
            continue 'candidates;
        }
        for peer in peers {
            if let Some(clash) = peer.allowed_ips.iter().find(|ip| intersect(candidate, ip)) {
                reject(format!("overlaps allowed IP {clash} of peer {}; ignored", peer.name));
                continue 'candidates;
            }
        }
        kept.push(*candidate);
    }
    kept
}
