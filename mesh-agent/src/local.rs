//! The local node as the agent runs it (Kilo's `handleLocal`, §4.3 of the reference). Pure: the
//! DNS resolution that precedes it is [`crate::resolve`].
//!
//! At each reconcile the agent ([`crate::driver`], through its `Host`):
//!
//! 1. calls [`resolve_endpoints`](crate::resolve::resolve_endpoints) on the snapshot;
//! 2. builds [`LocalInputs`] from the local Node as translated from the cluster, what IP discovery
//!    found (`mesh_netlink::host`), its flags, its key and the current time, and replaces the local node
//!    of the snapshot with the effective [`NodeSpec`] that [`local_node`] returns;
//! 3. computes the topology.
//!

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ipnet::IpNet;
use mesh_core::backend::LocalAnnouncement;
use mesh_core::{Endpoint, Granularity, Key, NodeSpec};

/// What the agent knows about itself at one reconcile.
#[derive(Clone, Debug)]
pub struct LocalInputs<'a> {
    /// The local Node as translated from the cluster (its annotations: `force-endpoint` else
    /// `endpoint`, `force-internal-ip` else `internal-ip`, and the user's annotations).
    pub node: &'a NodeSpec,
    /// The private IP found by IP discovery, with its mask.
    pub private_ip: Option<IpNet>,
    /// The public IP found by IP discovery (the private IP when the host has no public one).
    pub public_ip: Option<IpNet>,
    /// `--port`: the port of an automatic endpoint.
    pub port: u16,
    /// `--prioritise-private-addresses`: the automatic endpoint uses the private IP if there is one.
    pub prioritise_private_addresses: bool,
    /// The node's WireGuard public key.
    pub public_key: Key,
    /// The CNI-compatibility IP (Cilium's `cilium_host` address) in Cilium mode.
    pub cni_compatibility_ip: Option<IpNet>,
    /// The WireGuard CIDR from the last topology while the node is a leader; `None` otherwise.
    pub wireguard_ip: Option<IpNet>,
    /// NAT endpoints the WireGuard device observed (§4.9), by public key.
    pub discovered_endpoints: BTreeMap<Key, SocketAddr>,
    /// `--mesh-granularity`.
    pub granularity: Granularity,
    /// The current time, Unix seconds.
    pub now: i64,
}

/// Where the local endpoint came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointSource {
    /// `force-endpoint`, or the `endpoint` this node published before (sticky, as in Kilo).
    Annotation,
    /// `<external IP>:<--port>` from IP discovery (Kilo logs `overriding endpoint`).
    Detected,
    /// Neither: the node has no endpoint and is not ready.
    Missing,
}

/// Where the local internal IP came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InternalIpSource {
    /// `force-internal-ip`, or the `internal-ip` this node published before (sticky, as in Kilo).
    Annotation,
    /// The private IP from IP discovery.
    Detected,
    /// `force-internal-ip` is `""` or `-`.
    ForcedNone,
    /// The host has no private IP.
    Missing,
}

/// The local node for this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNode {
    /// The node to feed into `Topology::compute`, in place of the translated one.
    pub spec: NodeSpec,
    /// What to publish about the node.
    pub announcement: LocalAnnouncement,
    /// Where the endpoint came from.
    pub endpoint_source: EndpointSource,
    /// Where the internal IP came from.
    pub internal_ip_source: InternalIpSource,
}

/// Kilo's `handleLocal`: the effective local node and its announcement.
///
/// * Endpoint: the node's (`force-endpoint`, else the published `endpoint`) when it has one;
///   otherwise `<external IP>:<port>`, where the external IP is the private IP with
///   `prioritise_private_addresses` (if there is one), else the public IP. Like Kilo's, a
///   published endpoint is sticky: removing `force-endpoint` keeps the forced value, because
///   it is then the published `endpoint`; only clean-up resets it.
/// * Internal IP: the node's (`force-internal-ip`, else the published `internal-ip`, equally
///   sticky); otherwise the detected private IP, unless the node has `no_internal_ip`.
/// * Key, CNI-compatibility IP, WireGuard IP, discovered endpoints and granularity: the agent's.
///   `last_seen` is `now`. Everything else (location, leader, keepalive, pod subnet, allowed
///   location IPs) is the node's.
pub fn local_node(inputs: &LocalInputs<'_>) -> LocalNode {
    let node = inputs.node;
    let (endpoint, endpoint_source) = match &node.endpoint {
        Some(endpoint) => (Some(endpoint.clone()), EndpointSource::Annotation),
        None => {
            let external = match inputs.private_ip {
                Some(private) if inputs.prioritise_private_addresses => Some(private),
                _ => inputs.public_ip.or(inputs.private_ip),
            };
            match external {
                Some(ip) => (Some(Endpoint::from_ip(ip.addr(), inputs.port)), EndpointSource::Detected),
                None => (None, EndpointSource::Missing),
            }
        }
    };
    let (internal_ip, internal_ip_source) = match (node.internal_ip, node.no_internal_ip, inputs.private_ip) {
        (_, true, _) => (None, InternalIpSource::ForcedNone),
        (Some(ip), false, _) => (Some(ip), InternalIpSource::Annotation),
        (None, false, Some(ip)) => (Some(ip), InternalIpSource::Detected),
        (None, false, None) => (None, InternalIpSource::Missing),
    };
    let spec = NodeSpec {
        name: node.name.clone(),
        endpoint,
        key: Some(inputs.public_key),
        internal_ip,
        no_internal_ip: node.no_internal_ip,
        cni_compatibility_ip: inputs.cni_compatibility_ip,
        last_seen: Some(inputs.now),
        leader: node.leader,
        location: node.location.clone(),
        persistent_keepalive: node.persistent_keepalive,
        pod_subnet: node.pod_subnet,
        wireguard_ip: inputs.wireguard_ip,
        discovered_endpoints: inputs.discovered_endpoints.clone(),
        allowed_location_ips: node.allowed_location_ips.clone(),
        granularity: Some(inputs.granularity),
        // The reconciler's: it sets the capability and its failover claim before announcing.
        failover_capable: node.failover_capable,
        leader_unreachable: node.leader_unreachable.clone(),
    };
    let announcement = LocalAnnouncement::of(&spec, inputs.granularity, inputs.now);
    LocalNode { spec, announcement, endpoint_source, internal_ip_source }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn endpoint(text: &str) -> Endpoint {
        text.parse().unwrap()
    }

    fn key(byte: u8) -> Key {
        Key::from_bytes([byte; 32])
    }

    /// The local Node as a fresh cluster shows it: nothing published yet.
    fn fresh_node() -> NodeSpec {
        NodeSpec {
            name: "node-a".to_owned(),
            location: "paris".to_owned(),
            leader: true,
            persistent_keepalive: 25,
            pod_subnet: Some(net("10.2.0.0/24")),
            allowed_location_ips: vec![net("192.168.100.0/24")],
            ..NodeSpec::default()
        }
    }

    fn inputs(node: &NodeSpec) -> LocalInputs<'_> {
        LocalInputs {
            node,
            private_ip: Some(net("192.168.0.5/24")),
            public_ip: Some(net("203.0.113.5/24")),
            port: 51820,
            prioritise_private_addresses: false,
            public_key: key(1),
            cni_compatibility_ip: None,
            wireguard_ip: None,
            discovered_endpoints: BTreeMap::new(),
            granularity: Granularity::Location,
            now: NOW,
        }
    }

    #[test]
    fn a_fresh_node_gets_detected_endpoint_and_internal_ip() {
        let node = fresh_node();
        let local = local_node(&inputs(&node));
        assert_eq!(local.endpoint_source, EndpointSource::Detected);
        assert_eq!(local.internal_ip_source, InternalIpSource::Detected);
        assert_eq!(
            local.spec,
            NodeSpec {
                name: "node-a".to_owned(),
                endpoint: Some(endpoint("203.0.113.5:51820")),
                key: Some(key(1)),
                internal_ip: Some(net("192.168.0.5/24")),
                no_internal_ip: false,
                cni_compatibility_ip: None,
                last_seen: Some(NOW),
                leader: true,
                location: "paris".to_owned(),
                persistent_keepalive: 25,
                pod_subnet: Some(net("10.2.0.0/24")),
                wireguard_ip: None,
                discovered_endpoints: BTreeMap::new(),
                allowed_location_ips: vec![net("192.168.100.0/24")],
                granularity: Some(Granularity::Location),
                failover_capable: false,
                leader_unreachable: None,
            }
        );
        assert_eq!(
            local.announcement,
            LocalAnnouncement {
                hostname: "node-a".to_owned(),
                key: Some(key(1)),
                endpoint: Some(endpoint("203.0.113.5:51820")),
                internal_ip: Some(net("192.168.0.5/24")),
                wireguard_ip: None,
                last_seen: NOW,
                discovered_endpoints: BTreeMap::new(),
                granularity: Granularity::Location,
                cni_compatibility_ip: None,
                failover_capable: false,
                leader_unreachable: None,
            }
        );
        assert!(local.spec.readiness(NOW).is_ok());
    }

    #[test]
    fn prioritise_private_addresses_uses_the_private_ip_when_there_is_one() {
        let node = fresh_node();
        let local = local_node(&LocalInputs { prioritise_private_addresses: true, port: 51821, ..inputs(&node) });
        assert_eq!(local.spec.endpoint, Some(endpoint("192.168.0.5:51821")));
        let local = local_node(&LocalInputs { prioritise_private_addresses: true, private_ip: None, ..inputs(&node) });
        assert_eq!(local.spec.endpoint, Some(endpoint("203.0.113.5:51820")));
        assert_eq!(local.internal_ip_source, InternalIpSource::Missing);
        assert_eq!(local.spec.internal_ip, None);
    }

    #[test]
    fn ipv6_external_ip_prints_in_brackets() {
        let node = fresh_node();
        let local = local_node(&LocalInputs { public_ip: Some(net("2001:db8::5/64")), ..inputs(&node) });
        assert_eq!(local.spec.endpoint.unwrap().to_string(), "[2001:db8::5]:51820");
    }

    #[test]
    fn without_any_ip_and_annotation_there_is_no_endpoint() {
        let node = fresh_node();
        let local = local_node(&LocalInputs { public_ip: None, private_ip: None, ..inputs(&node) });
        assert_eq!(local.endpoint_source, EndpointSource::Missing);
        assert_eq!(local.spec.endpoint, None);
        assert!(local.spec.readiness(NOW).is_err());
        // Only a private IP: it is the public one too (as IP discovery would have said).
        let local = local_node(&LocalInputs { public_ip: None, ..inputs(&node) });
        assert_eq!(local.spec.endpoint, Some(endpoint("192.168.0.5:51820")));
    }

    #[test]
    fn annotated_endpoint_and_internal_ip_are_sticky() {
        // What this node published earlier (or a force-* annotation): kept, even though
        // discovery now finds other addresses and --port changed.
        let node = NodeSpec {
            endpoint: Some(endpoint("198.51.100.9:51000")),
            internal_ip: Some(net("10.9.0.9/16")),
            ..fresh_node()
        };
        let local = local_node(&LocalInputs { port: 4000, prioritise_private_addresses: true, ..inputs(&node) });
        assert_eq!(local.endpoint_source, EndpointSource::Annotation);
        assert_eq!(local.internal_ip_source, InternalIpSource::Annotation);
        assert_eq!(local.spec.endpoint, Some(endpoint("198.51.100.9:51000")));
        assert_eq!(local.spec.internal_ip, Some(net("10.9.0.9/16")));
        assert_eq!(local.announcement.endpoint, local.spec.endpoint);
        assert_eq!(local.announcement.internal_ip, local.spec.internal_ip);
    }

    #[test]
    fn a_dns_endpoint_annotation_is_kept_by_name() {
        let node = NodeSpec { endpoint: Some(endpoint("gw.example.com:51820")), ..fresh_node() };
        let local = local_node(&inputs(&node));
        assert_eq!(local.endpoint_source, EndpointSource::Annotation);
        assert_eq!(local.announcement.endpoint.unwrap().to_string(), "gw.example.com:51820");
    }

    #[test]
    fn force_no_internal_ip_wins_over_detection() {
        let node = NodeSpec { no_internal_ip: true, ..fresh_node() };
        let local = local_node(&inputs(&node));
        assert_eq!(local.internal_ip_source, InternalIpSource::ForcedNone);
        assert_eq!(local.spec.internal_ip, None);
        assert_eq!(local.announcement.internal_ip, None);
        // The endpoint may still use the private IP.
        let local = local_node(&LocalInputs { prioritise_private_addresses: true, ..inputs(&node) });
        assert_eq!(local.spec.endpoint, Some(endpoint("192.168.0.5:51820")));
    }

    #[test]
    fn agent_owned_fields_come_from_the_agent() {
        let node = NodeSpec {
            key: Some(key(9)),
            last_seen: Some(NOW - 1000),
            wireguard_ip: Some(net("10.4.0.7/16")),
            cni_compatibility_ip: Some(net("10.0.0.9/32")),
            granularity: Some(Granularity::Full),
            discovered_endpoints: BTreeMap::from([(key(7), "1.1.1.1:1".parse().unwrap())]),
            ..fresh_node()
        };
        let discovered = BTreeMap::from([(key(3), "198.51.100.3:3333".parse().unwrap())]);
        let local = local_node(&LocalInputs {
            public_key: key(2),
            wireguard_ip: Some(net("10.4.0.1/16")),
            cni_compatibility_ip: Some(net("10.0.1.1/32")),
            granularity: Granularity::Cross,
            discovered_endpoints: discovered.clone(),
            ..inputs(&node)
        });
        assert_eq!(local.spec.key, Some(key(2)));
        assert_eq!(local.spec.last_seen, Some(NOW));
        assert_eq!(local.spec.wireguard_ip, Some(net("10.4.0.1/16")));
        assert_eq!(local.spec.cni_compatibility_ip, Some(net("10.0.1.1/32")));
        assert_eq!(local.spec.granularity, Some(Granularity::Cross));
        assert_eq!(local.spec.discovered_endpoints, discovered);
        assert_eq!(local.announcement.key, Some(key(2)));
        assert_eq!(local.announcement.wireguard_ip, Some(net("10.4.0.1/16")));
        assert_eq!(local.announcement.cni_compatibility_ip, Some(net("10.0.1.1/32")));
        assert_eq!(local.announcement.granularity, Granularity::Cross);
        assert_eq!(local.announcement.discovered_endpoints, discovered);
        // A non-leader publishes no WireGuard IP.
        let local = local_node(&inputs(&node));
        assert_eq!(local.spec.wireguard_ip, None);
        assert_eq!(local.announcement.wireguard_ip, None);
    }
}
