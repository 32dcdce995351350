//! The cluster as the core sees it: nodes and peers as plain values, and the time they were read.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ipnet::IpNet;

use crate::{Endpoint, Key, PresharedKey};

/// How long a node stays ready after its last heartbeat: twice Kilo's 30 s check-in period.
pub const READINESS_WINDOW_SECONDS: i64 = 60;

/// How far in the future a heartbeat may lie (the clocks of two nodes differ) before the node
/// counts as not ready: a `last-seen` far in the future would otherwise keep a node ready for
/// ever (Kilo only checks the age).
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 60;

/// One Kubernetes Node (or a node file of the file backend), translated into what the mesh needs.
///
/// Field values keep Kilo's forms: CIDRs keep their host bits where Kilo keeps them
/// (`internal_ip`, `allowed_location_ips`), the pod subnet is a network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node name (`metadata.name`).
    pub name: String,
    /// The WireGuard endpoint (`force-endpoint`, else `endpoint`).
    pub endpoint: Option<Endpoint>,
    /// The WireGuard public key (`key`); `None` when missing, invalid or all zero.
    pub key: Option<Key>,
    /// The private IP with its interface mask (`force-internal-ip`, else `internal-ip`).
    pub internal_ip: Option<IpNet>,
    /// `force-internal-ip` is `""` or `-`: the node has no private IP on purpose, and its agent
    /// must not fill in one it detects (Kilo's `NoInternalIP`).
    pub no_internal_ip: bool,
    /// The CNI-compatibility IP (`cni-compatibility-ip`; Cilium's `cilium_host` address).
    pub cni_compatibility_ip: Option<IpNet>,
    /// Unix seconds of the last heartbeat (`last-seen`).
    pub last_seen: Option<i64>,
    /// Whether the `leader` annotation is present (its value does not matter).
    pub leader: bool,
    /// The logical location (`location` annotation, else the topology label; `""` if neither).
    pub location: String,
    /// Persistent keepalive in seconds (`persistent-keepalive`); 0 is off.
    pub persistent_keepalive: u16,
    /// The pod subnet (`spec.podCIDR`), as a network.
    pub pod_subnet: Option<IpNet>,
    /// The WireGuard IP the node published (`wireguard-ip`).
    pub wireguard_ip: Option<IpNet>,
    /// Endpoints this node observed for NATed nodes and peers (`discovered-endpoints`).
    pub discovered_endpoints: BTreeMap<Key, SocketAddr>,
    /// Extra subnets routed to this node's location (`allowed-location-ips`), host bits kept.
    pub allowed_location_ips: Vec<IpNet>,
    /// The granularity the node's agent announced (`granularity`), read only by `auto` in tools.
    pub granularity: Option<Granularity>,
    /// The node's agent takes part in fast leader failover (it announced the `failover-v1`
    /// capability). A ready node without it (Kilo, or an agent with the fast path off) makes
    /// every agent use Kilo's election alone.
    pub failover_capable: bool,
    /// The node this node's agent found unreachable over the data path while it led this node's
    /// location: a claim that deposes that leader (see [`crate::failover`]).
    pub leader_unreachable: Option<String>,
}

/// One `Peer` object (`kilo.squat.ai/v1alpha1`): a WireGuard client outside the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSpec {
    /// The Peer name.
    pub name: String,
    /// The CIDRs routed to the peer, host bits kept.
    pub allowed_ips: Vec<IpNet>,
    /// The peer's public key; `None` when missing or invalid.
    pub public_key: Option<Key>,
    /// Where to reach the peer, if it has a fixed endpoint.
    pub endpoint: Option<Endpoint>,
    /// Persistent keepalive in seconds; 0 is off.
    pub persistent_keepalive: u16,
    /// An optional preshared key.
    pub preshared_key: Option<PresharedKey>,
}

/// Everything `Topology::compute` needs from the cluster, read at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterSnapshot {
    /// All nodes, ready or not, in any order.
    pub nodes: Vec<NodeSpec>,
    /// All peers, in any order.
    pub peers: Vec<PeerSpec>,
    /// When the snapshot was taken, in Unix seconds. Readiness is judged against this, never the clock.
    pub now: i64,
}

/// How nodes are grouped into WireGuard segments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Granularity {
    /// One segment per location; its leader terminates WireGuard for the location (Kilo's default).
    #[default]
    Location,
    /// Every node is its own segment: a full WireGuard mesh.
    Full,
    /// Every node talks WireGuard directly to the nodes of *other* locations and uses the private
    /// network (or the CNI) inside its own location.
    Cross,
}

impl Granularity {
    /// The flag and annotation value: `location`, `full` or `cross`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Granularity::Location => "location",
            Granularity::Full => "full",
            Granularity::Cross => "cross",
        }
    }

    /// Parses a flag or annotation value.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "location" => Some(Granularity::Location),
            "full" => Some(Granularity::Full),
            "cross" => Some(Granularity::Cross),
            _ => None,
        }
    }
}

impl std::fmt::Display for Granularity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a node is not ready, judged as Kilo does (§4.1 of the reference).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// No endpoint, or a DNS endpoint is not what is missing: an endpoint without address and port.
    #[error("not ready: no endpoint")]
    NoEndpoint,
    /// No valid public key.
    #[error("not ready: no WireGuard public key")]
    NoKey,
    /// No pod subnet.
    #[error("not ready: no pod subnet (spec.podCIDR)")]
    NoPodSubnet,
    /// The node never published a heartbeat.
    #[error("not ready: no last-seen heartbeat")]
    NeverSeen,
    /// The heartbeat is too old.
    #[error("not ready: last-seen {age} s ago (limit {limit} s)", limit = READINESS_WINDOW_SECONDS)]
    Stale {
        /// Seconds since the last heartbeat.
        age: i64,
    },
    /// The heartbeat lies further in the future than clocks differ.
    #[error("not ready: last-seen {ahead} s in the future (limit {limit} s of clock skew)", limit = MAX_CLOCK_SKEW_SECONDS)]
    FromTheFuture {
        /// Seconds from now to the heartbeat.
        ahead: i64,
    },
}

impl NodeSpec {
    /// Checks Kilo's readiness rule against `now` (Unix seconds): an endpoint, a key, a pod subnet
    /// and a heartbeat less than [`READINESS_WINDOW_SECONDS`] old, and (unlike Kilo) not more
    /// than [`MAX_CLOCK_SKEW_SECONDS`] in the future.
    ///
    /// ```
    /// use mesh_core::{Endpoint, Key, NodeSpec, NotReady};
    /// let node = |last_seen| NodeSpec {
    ///     endpoint: Some(Endpoint::parse("192.0.2.1:51820").unwrap()),
    ///     key: Some(Key::from_bytes([1; 32])),
    ///     pod_subnet: Some("10.2.1.0/24".parse().unwrap()),
    ///     last_seen: Some(last_seen),
    ///     ..NodeSpec::default()
    /// };
    /// assert_eq!(node(1_000).readiness(1_030), Ok(()));
    /// assert_eq!(node(1_000).readiness(1_060), Err(NotReady::Stale { age: 60 }));
    /// assert_eq!(node(1_050).readiness(1_000), Ok(()), "a clock a little ahead");
    /// assert_eq!(node(4_000_000_000).readiness(1_000), Err(NotReady::FromTheFuture { ahead: 3_999_999_000 }));
    /// ```
    pub fn readiness(&self, now: i64) -> Result<(), NotReady> {
        if self.endpoint.is_none() {
            return Err(NotReady::NoEndpoint);
        }
        if self.key.is_none() {
            return Err(NotReady::NoKey);
        }
        if self.pod_subnet.is_none() {
            return Err(NotReady::NoPodSubnet);
        }
        let last_seen = self.last_seen.ok_or(NotReady::NeverSeen)?;
        let age = now.saturating_sub(last_seen);
        if age >= READINESS_WINDOW_SECONDS {
            return Err(NotReady::Stale { age });
        }
        if age < -MAX_CLOCK_SKEW_SECONDS {
            return Err(NotReady::FromTheFuture { ahead: age.saturating_neg() });
        }
        Ok(())
    }
}

impl PeerSpec {
    /// Kilo's peer readiness: at least one allowed IP and a public key.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.allowed_ips.is_empty() {
            return Err("not ready: no allowed IPs");
        }
        if self.public_key.is_none() {
            return Err("not ready: no public key");
        }
        Ok(())
    }
}
