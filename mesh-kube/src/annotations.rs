//! The `kilo.squat.ai/...` Node annotations: their keys, and the exact text Kilo publishes.
//!
//! Kilo agents and ours must read each other's annotations during a node-by-node roll, so every
//! format here is Kilo's (§2.2 of the reference). The file backend of `mesh-agent` reuses
//! [`announcement_annotations`] so that node files look like `kubectl get nodes -o yaml`.

use std::collections::BTreeMap;

use mesh_core::backend::LocalAnnouncement;

/// The endpoint in use (`host:port`, DNS name first, `[v6]:port`). Written by the agent.
pub const ENDPOINT: &str = "kilo.squat.ai/endpoint";
/// A user override of the endpoint. Read only.
pub const FORCE_ENDPOINT: &str = "kilo.squat.ai/force-endpoint";
/// The private IP in use, as a CIDR with the interface mask, or `""`. Written by the agent.
pub const INTERNAL_IP: &str = "kilo.squat.ai/internal-ip";
/// A user override of the private IP; `""` or `-` means "no private IP". Read only.
pub const FORCE_INTERNAL_IP: &str = "kilo.squat.ai/force-internal-ip";
/// The node's WireGuard public key, standard base64. Written by the agent.
pub const KEY: &str = "kilo.squat.ai/key";
/// The heartbeat, decimal Unix seconds. Written by the agent.
pub const LAST_SEEN: &str = "kilo.squat.ai/last-seen";
/// Leader candidacy: the key's presence counts, its value does not. Read only.
pub const LEADER: &str = "kilo.squat.ai/leader";
/// The node's location; beats the topology label even when empty. Read only.
pub const LOCATION: &str = "kilo.squat.ai/location";
/// The persistent keepalive, in seconds, that the node wants from its peers. Read only.
pub const PERSISTENT_KEEPALIVE: &str = "kilo.squat.ai/persistent-keepalive";
/// The node's WireGuard CIDR while it leads its segment, or `""`. Written by the agent.
pub const WIREGUARD_IP: &str = "kilo.squat.ai/wireguard-ip";
/// NAT endpoints the node observed, a JSON object keyed by public key. Written by the agent.
pub const DISCOVERED_ENDPOINTS: &str = "kilo.squat.ai/discovered-endpoints";
/// Extra CIDRs routed to the node's location, comma separated. Read only.
pub const ALLOWED_LOCATION_IPS: &str = "kilo.squat.ai/allowed-location-ips";
/// The agent's mesh granularity. Written by the agent.
pub const GRANULARITY: &str = "kilo.squat.ai/granularity";
/// The CNI-compatibility IP (Cilium's `cilium_host` address) as a CIDR, or `""`. Written by the agent.
pub const CNI_COMPATIBILITY_IP: &str = "kilo.squat.ai/cni-compatibility-ip";

/// The capabilities of the node's agent, comma separated (`failover-v1`: fast leader failover),
/// or `""`. Ours, not Kilo's: Kilo neither reads nor removes it. Written by the agent.
pub const CAPABILITIES: &str = "mesh.kilo-rs/capabilities";
/// The leader of the node's location that the node found unreachable over the data path (its
/// failover claim), or `""`. Ours, not Kilo's. Written by the agent.
pub const LEADER_UNREACHABLE: &str = "mesh.kilo-rs/leader-unreachable";

/// The Node label that gives the location when there is no [`LOCATION`] annotation (Kilo's
/// `--topology-label` default).
pub const DEFAULT_TOPOLOGY_LABEL: &str = "topology.kubernetes.io/region";

/// Every annotation [`announcement_annotations`] writes, which clean-up removes again.
///
/// Kilo's clean-up removes the first seven and forgets [`CNI_COMPATIBILITY_IP`], which then
/// lingers on the Node after the agent is gone; we remove it too, and our own two.
pub const OWNED_ANNOTATIONS: &[&str] = &[
    ENDPOINT,
    INTERNAL_IP,
    KEY,
    LAST_SEEN,
    WIREGUARD_IP,
    DISCOVERED_ENDPOINTS,
    GRANULARITY,
    CNI_COMPATIBILITY_IP,
    CAPABILITIES,
    LEADER_UNREACHABLE,
];

/// The annotations a node publishes about itself, in Kilo's exact formats.
///
/// Every key of [`OWNED_ANNOTATIONS`] is present. Absent values are written as Kilo writes them:
/// `""` for the endpoint, key, internal IP, WireGuard IP and CNI-compatibility IP, and `{}` for no
/// discovered endpoints; our own capabilities and failover claim are `""` when absent.
///
/// ```
/// use mesh_core::backend::LocalAnnouncement;
/// use mesh_kube::annotations::{self, announcement_annotations};
///
/// let announcement = LocalAnnouncement {
///     hostname: "node-a".into(),
///     endpoint: Some("[ff10::10]:51820".parse().unwrap()),
///     internal_ip: Some("10.0.0.5/24".parse().unwrap()),
///     last_seen: 1_700_000_000,
///     ..LocalAnnouncement::default()
/// };
/// let written = announcement_annotations(&announcement);
/// assert_eq!(written[annotations::ENDPOINT], "[ff10::10]:51820");
/// assert_eq!(written[annotations::INTERNAL_IP], "10.0.0.5/24");
/// assert_eq!(written[annotations::WIREGUARD_IP], "");
/// assert_eq!(written[annotations::LAST_SEEN], "1700000000");
/// assert_eq!(written[annotations::DISCOVERED_ENDPOINTS], "{}");
/// assert_eq!(written[annotations::GRANULARITY], "location");
/// ```
pub fn announcement_annotations(announcement: &LocalAnnouncement) -> BTreeMap<String, String> {
    let cidr_or_empty = |cidr: Option<ipnet::IpNet>| cidr.map(|cidr| cidr.to_string()).unwrap_or_default();
    BTreeMap::from([
        (ENDPOINT.to_owned(), announcement.endpoint.as_ref().map(ToString::to_string).unwrap_or_default()),
        (INTERNAL_IP.to_owned(), cidr_or_empty(announcement.internal_ip)),
        (KEY.to_owned(), announcement.key.map(|key| key.to_base64()).unwrap_or_default()),
        (LAST_SEEN.to_owned(), announcement.last_seen.to_string()),
        (WIREGUARD_IP.to_owned(), cidr_or_empty(announcement.wireguard_ip)),
        (DISCOVERED_ENDPOINTS.to_owned(), discovered_endpoints_json(announcement)),
        (GRANULARITY.to_owned(), announcement.granularity.as_str().to_owned()),
        (CNI_COMPATIBILITY_IP.to_owned(), cidr_or_empty(announcement.cni_compatibility_ip)),
        (
            CAPABILITIES.to_owned(),
            if announcement.failover_capable { mesh_core::failover::CAPABILITY } else { "" }.to_owned(),
        ),
        (LEADER_UNREACHABLE.to_owned(), announcement.leader_unreachable.clone().unwrap_or_default()),
    ])
}

/// Go's `json.Marshal(map[string]*net.UDPAddr)`: keys sorted by their base64 text (not by key
/// bytes), IPs as Go prints them (IPv4-mapped IPv6 as dotted IPv4), an empty zone.
fn discovered_endpoints_json(announcement: &LocalAnnouncement) -> String {
    let endpoints: BTreeMap<String, serde_json::Value> = announcement
        .discovered_endpoints
        .iter()
        .map(|(key, addr)| {
            let value = serde_json::json!({
                "IP": addr.ip().to_canonical().to_string(),
                "Port": addr.port(),
                "Zone": "",
            });
            (key.to_base64(), value)
        })
        .collect();
    serde_json::to_string(&endpoints).expect("a map of strings to JSON values always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::{Granularity, Key};

    #[test]
    fn writes_every_owned_annotation_in_kilo_format() {
        let key_a = Key::from_bytes([0xff; 32]); // "//////...8="
        let key_b = Key::from_bytes([0x01; 32]); // "AQEB...AQE="
        let announcement = LocalAnnouncement {
            hostname: "a".into(),
            key: Some(key_b),
            endpoint: Some("example.com:51821".parse().unwrap()),
            internal_ip: Some("10.1.0.2/24".parse().unwrap()),
            wireguard_ip: Some("10.4.0.1/16".parse().unwrap()),
            last_seen: 1_000_000_000,
            discovered_endpoints: BTreeMap::from([
                (key_a, "[::ffff:5.5.5.5]:3333".parse().unwrap()),
                (key_b, "[ff10::1]:51820".parse().unwrap()),
            ]),
            granularity: Granularity::Cross,
            cni_compatibility_ip: Some("10.0.1.1/32".parse().unwrap()),
            failover_capable: true,
            leader_unreachable: Some("b".into()),
        };
        let written = announcement_annotations(&announcement);
        assert_eq!(written.keys().map(String::as_str).collect::<Vec<_>>().len(), OWNED_ANNOTATIONS.len());
        for key in OWNED_ANNOTATIONS {
            assert!(written.contains_key(*key), "{key} missing");
        }
        assert_eq!(written[ENDPOINT], "example.com:51821");
        assert_eq!(written[INTERNAL_IP], "10.1.0.2/24");
        assert_eq!(written[KEY], key_b.to_base64());
        assert_eq!(written[LAST_SEEN], "1000000000");
        assert_eq!(written[WIREGUARD_IP], "10.4.0.1/16");
        assert_eq!(written[GRANULARITY], "cross");
        assert_eq!(written[CNI_COMPATIBILITY_IP], "10.0.1.1/32");
        // Go sorts map keys by their text: "/" (0x2f) sorts before "A" (0x41) although key_a's
        // bytes are larger.
        assert_eq!(
            written[DISCOVERED_ENDPOINTS],
            format!(
                r#"{{"{}":{{"IP":"5.5.5.5","Port":3333,"Zone":""}},"{}":{{"IP":"ff10::1","Port":51820,"Zone":""}}}}"#,
                key_a.to_base64(),
                key_b.to_base64()
            )
        );
    }

    #[test]
    fn absent_values_are_written_as_kilo_writes_them() {
        let written = announcement_annotations(&LocalAnnouncement::default());
        for key in [ENDPOINT, INTERNAL_IP, KEY, WIREGUARD_IP, CNI_COMPATIBILITY_IP] {
            assert_eq!(written[key], "", "{key}");
        }
        assert_eq!(written[DISCOVERED_ENDPOINTS], "{}");
        assert_eq!(written[LAST_SEEN], "0");
        assert_eq!(written[GRANULARITY], "location");
    }

    #[test]
    fn ipv4_endpoints_and_ipv6_endpoints() {
        let mut announcement =
            LocalAnnouncement { endpoint: Some("192.0.2.1:51820".parse().unwrap()), ..LocalAnnouncement::default() };
        assert_eq!(announcement_annotations(&announcement)[ENDPOINT], "192.0.2.1:51820");
        announcement.endpoint = Some("[2001:db8::1]:51820".parse().unwrap());
        assert_eq!(announcement_annotations(&announcement)[ENDPOINT], "[2001:db8::1]:51820");
    }
}
