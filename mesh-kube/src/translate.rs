//! Pure translation of Kubernetes objects into the core's model, exactly as Kilo reads them.
//!
//! [`node`] is Kilo's `translateNode` and [`peer`] is Kilo's `Peer.Validate` followed by
//! `translatePeer` (§2.1, §2.4, §3.2, §3.3 of the reference): same formats, same fallbacks, so a
//! Kilo agent and ours see the same cluster. Where Kilo silently ignores a bad value, we ignore
//! it too and say so with a [`Warning`] naming the object, the annotation (or field), the value
//! and what was done. Values Kilo itself writes as `""` on purpose (`internal-ip`,
//! `wireguard-ip`, `cni-compatibility-ip`, `discovered-endpoints`, `endpoint`) are not warnings.
//!
//! Parsing follows Go where Go and Rust differ: CIDRs as `net.ParseCIDR` (host bits kept, the
//! pod subnet masked), keys as `base64.StdEncoding` (padding required, non-zero trailing bits and
//! line breaks tolerated), JSON field names case-insensitively as `encoding/json`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use mesh_core::{
    Endpoint, EndpointError, Granularity, Key, NodeSpec, ObjectKind, PeerSpec, PresharedKey, Skipped, Warning,
};

use crate::annotations::{
    ALLOWED_LOCATION_IPS, CAPABILITIES, CNI_COMPATIBILITY_IP, DISCOVERED_ENDPOINTS, ENDPOINT, FORCE_ENDPOINT,
    FORCE_INTERNAL_IP, GRANULARITY, INTERNAL_IP, KEY, LAST_SEEN, LEADER, LEADER_UNREACHABLE, LOCATION,
    PERSISTENT_KEEPALIVE, WIREGUARD_IP,
};
use crate::crd;

/// A Node as the mesh sees it, with what Kilo would have ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TranslatedNode {
    /// The node.
    pub spec: NodeSpec,
    /// Values that were ignored or overridden, in annotation order.
    pub warnings: Vec<Warning>,
}

/// A valid Peer as the mesh sees it, with what Kilo would have ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TranslatedPeer {
    /// The peer.
    pub spec: PeerSpec,
    /// Values that were ignored.
    pub warnings: Vec<Warning>,
}

/// Translates a Node as Kilo's `translateNode` does; `topology_label` is the agent's
/// `--topology-label` (usually [`crate::annotations::DEFAULT_TOPOLOGY_LABEL`]).
///
/// Never fails: a bad value leaves its field empty (or falls back, for the `force-*`
/// annotations) and adds a warning. A node left without endpoint, key, pod subnet or heartbeat
/// is later found not ready by the core.
pub fn node(node: &Node, topology_label: &str) -> TranslatedNode {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let no_strings = BTreeMap::new();
    let annotations = node.metadata.annotations.as_ref().unwrap_or(&no_strings);
    let labels = node.metadata.labels.as_ref().unwrap_or(&no_strings);
    let mut reader = Reader { name, kind: ObjectKind::Node, warnings: Vec::new() };
    let get = |key: &str| annotations.get(key).map(String::as_str);

    let endpoint = match get(FORCE_ENDPOINT) {
        Some(text) => reader.endpoint(FORCE_ENDPOINT, text),
        None => None,
    }
    .or_else(|| match get(ENDPOINT) {
        // Kilo publishes "" while it has no endpoint.
        None | Some("") => None,
        Some(text) => reader.endpoint(ENDPOINT, text),
    });

    let force_no_internal_ip = matches!(get(FORCE_INTERNAL_IP), Some("" | "-"));
    let internal_ip = if force_no_internal_ip {
        None
    } else {
        let forced = get(FORCE_INTERNAL_IP).and_then(|text| {
            let parsed = parse_cidr(text);
            if parsed.is_none() {
                reader.warn(FORCE_INTERNAL_IP, text, format!("not a CIDR; falling back to {INTERNAL_IP}"));
            }
            parsed
        });
        forced.or_else(|| reader.optional_cidr(INTERNAL_IP, get(INTERNAL_IP)))
    };

    let key = get(KEY).and_then(|text| match parse_key(text) {
        Ok(key) if key.is_zero() => {
            reader.warn(KEY, text, "the all-zero key is no key; ignored");
            None
        }
        Ok(key) => Some(key),
        Err(error) => {
            reader.warn(KEY, text, format!("not a WireGuard key ({error}); ignored"));
            None
        }
    });

    let leader = match get(LEADER) {
        None => false,
        Some(text) => {
            if matches!(text.to_ascii_lowercase().as_str(), "false" | "no" | "0" | "off") {
                reader.warn(LEADER, text, "the annotation counts by its presence: the node is a leader candidate");
            }
            true
        }
    };

    // The annotation wins even when empty (Kilo's code and tests, contrary to its docs).
    let location = match get(LOCATION) {
        Some("") => {
            let reason = match labels.get(topology_label).filter(|label| !label.is_empty()) {
                Some(label) => format!(
                    "empty location overrides the label {topology_label}={label:?}; the node is in the default location \"\""
                ),
                None => "empty location; the node is in the default location \"\"".to_owned(),
            };
            reader.warn(LOCATION, "", reason);
            String::new()
        }
        Some(location) => location.to_owned(),
        None => labels.get(topology_label).cloned().unwrap_or_default(),
    };

    let persistent_keepalive = match get(PERSISTENT_KEEPALIVE) {
        None => 0,
        Some(text) => reader.keepalive(PERSISTENT_KEEPALIVE, text, text.parse::<i64>().ok()),
    };

    let last_seen = get(LAST_SEEN).and_then(|text| {
        let parsed = text.parse::<i64>().ok();
        if parsed.is_none() {
            reader.warn(LAST_SEEN, text, "not a Unix time in seconds; the node counts as never seen");
        }
        parsed
    });

    let wireguard_ip = reader.optional_cidr(WIREGUARD_IP, get(WIREGUARD_IP));

    let discovered_endpoints = match get(DISCOVERED_ENDPOINTS) {
        None | Some("") => BTreeMap::new(),
        Some(text) => match parse_discovered_endpoints(text) {
            Ok((endpoints, skipped)) => {
                for (entry, reason) in skipped {
                    reader.warn(DISCOVERED_ENDPOINTS, &entry, reason);
                }
                endpoints
            }
            Err(error) => {
                reader.warn(DISCOVERED_ENDPOINTS, text, format!("not a JSON object of endpoints ({error}); ignored"));
                BTreeMap::new()
            }
        },
    };

    let mut allowed_location_ips = Vec::new();
    if let Some(text) = get(ALLOWED_LOCATION_IPS).filter(|text| !text.is_empty()) {
        // Kilo splits on ',' and does not trim: " 10.0.0.0/8" is not a CIDR.
        for entry in text.split(',') {
            match parse_cidr(entry) {
                Some(cidr) => allowed_location_ips.push(cidr),
                None if entry.trim() != entry && parse_cidr(entry.trim()).is_some() => reader.warn(
                    ALLOWED_LOCATION_IPS,
                    entry,
                    "not a CIDR: entries are split on ',' without trimming spaces; entry ignored",
                ),
                None => reader.warn(ALLOWED_LOCATION_IPS, entry, "not a CIDR; entry ignored"),
            }
        }
    }

    let granularity = get(GRANULARITY).and_then(|text| {
        let parsed = Granularity::parse(text);
        if parsed.is_none() {
            reader.warn(GRANULARITY, text, "not one of location, full, cross; ignored");
        }
        parsed
    });

    // Capabilities this agent does not know are newer agents' and are ignored without a word.
    let failover_capable = get(CAPABILITIES)
        .is_some_and(|text| text.split(',').any(|capability| capability.trim() == mesh_core::failover::CAPABILITY));
    let leader_unreachable = match get(LEADER_UNREACHABLE) {
        None | Some("") => None,
        Some(text) => match mesh_core::dns1123_subdomain_errors(text).first() {
            None => Some(text.to_owned()),
            Some(error) => {
                reader.warn(LEADER_UNREACHABLE, text, format!("not a node name ({error}); the claim is ignored"));
                None
            }
        },
    };

    let cni_compatibility_ip = reader.optional_cidr(CNI_COMPATIBILITY_IP, get(CNI_COMPATIBILITY_IP));

    let pod_cidr = node.spec.as_ref().and_then(|spec| spec.pod_cidr.as_deref()).unwrap_or_default();
    let pod_subnet = if pod_cidr.is_empty() {
        // Not assigned yet: the node is simply not ready.
        None
    } else {
        let parsed = parse_cidr(pod_cidr).map(|cidr| cidr.trunc());
        if parsed.is_none() {
            reader.warn("spec.podCIDR", pod_cidr, "not a CIDR; the node has no pod subnet");
        }
        parsed
    };

    TranslatedNode {
        spec: NodeSpec {
            name: name.to_owned(),
            endpoint,
            key,
            internal_ip,
            no_internal_ip: force_no_internal_ip,
            cni_compatibility_ip,
            last_seen,
            leader,
            location,
            persistent_keepalive,
            pod_subnet,
            wireguard_ip,
            discovered_endpoints,
            allowed_location_ips,
            granularity,
            failover_capable,
            leader_unreachable,
        },
        warnings: reader.warnings,
    }
}

/// Validates a Peer as Kilo's `Peer.Validate` does and translates it as `translatePeer` does.
///
/// `Err` is the Peer Kilo drops, with Kilo's validation message as the reason, e.g.
/// `WireGuard public key has invalid length`. The CRD of [`crate::crd`] makes the API server
/// reject such Peers up front; this check still matters for Peers stored before it was installed.
pub fn peer(peer: &crd::Peer) -> Result<TranslatedPeer, Skipped> {
    let name = peer.metadata.name.as_deref().unwrap_or_default();
    validate_peer(&peer.spec).map_err(|reason| Skipped::peer(name, reason))?;
    Ok(translate_peer_spec(name, &peer.spec))
}

/// Kilo's `Peer.Validate`: the first failure, with Kilo's message.
pub fn validate_peer(spec: &crd::PeerSpec) -> Result<(), String> {
    for ip in &spec.allowed_ips {
        if parse_cidr(ip).is_none() {
            return Err(format!("failed to parse {ip:?} as a valid IP address: invalid CIDR address: {ip}"));
        }
    }
    if let Some(endpoint) = &spec.endpoint {
        let crd::DnsOrIp { dns, ip } = &endpoint.dns_or_ip;
        if ip.is_empty() && dns.is_empty() {
            return Err("either an endpoint DNS name IP address must be given".to_owned());
        }
        if !dns.is_empty() {
            let errors = mesh_core::dns1123_subdomain_errors(dns);
            if !errors.is_empty() {
                return Err(errors.join("; "));
            }
        }
        if !ip.is_empty() && ip.parse::<IpAddr>().is_err() {
            return Err(format!("failed to parse {ip:?} as a valid IP address"));
        }
        if !(1..=65535).contains(&endpoint.port) {
            return Err(format!("port must be a valid UDP port number, got {}", endpoint.port));
        }
    }
    if spec.persistent_keepalive < 0 {
        // Kilo formats the number with %q, which prints a garbled rune; we print the number.
        return Err(format!(
            "persistent keepalive must be greater than or equal to zero; got {}",
            spec.persistent_keepalive
        ));
    }
    match decode_go_base64(&spec.public_key) {
        Err(error) => Err(format!("WireGuard public key is not base64 encoded: {error}")),
        Ok(bytes) if bytes.len() != 32 => Err("WireGuard public key has invalid length".to_owned()),
        Ok(_) => Ok(()),
    }
}

/// Kilo's `translatePeer`, without validation.
fn translate_peer_spec(name: &str, spec: &crd::PeerSpec) -> TranslatedPeer {
    let mut reader = Reader { name, kind: ObjectKind::Peer, warnings: Vec::new() };
    let mut allowed_ips = Vec::new();
    for ip in &spec.allowed_ips {
        match parse_cidr(ip) {
            Some(cidr) => allowed_ips.push(cidr),
            None => reader.warn("spec.allowedIPs", ip, "not a CIDR; entry ignored"),
        }
    }

    let mut endpoint = None;
    if let Some(spec_endpoint) = &spec.endpoint
        && spec_endpoint.port > 0
    {
        let port = u16::try_from(spec_endpoint.port).ok();
        let crd::DnsOrIp { dns, ip } = &spec_endpoint.dns_or_ip;
        if let (Some(port), Ok(ip)) = (port, ip.parse::<IpAddr>()) {
            endpoint = Some(Endpoint::from_ip(ip, port));
        }
        // The DNS name wins over the IP (Kilo's agent; its API documentation says otherwise).
        if !dns.is_empty() {
            endpoint = Endpoint::parse(&format!("{dns}:{}", spec_endpoint.port)).ok();
        }
    }

    let public_key = match parse_key(&spec.public_key) {
        Ok(key) if key.is_zero() => {
            reader.warn("spec.publicKey", &spec.public_key, "the all-zero key is no key; the peer is not ready");
            None
        }
        Ok(key) => Some(key),
        Err(error) => {
            reader.warn("spec.publicKey", &spec.public_key, format!("not a WireGuard key ({error}); ignored"));
            None
        }
    };

    let preshared_key = if spec.preshared_key.is_empty() {
        None
    } else {
        match parse_key(&spec.preshared_key) {
            Ok(key) => Some(PresharedKey::new(key)),
            Err(error) => {
                // Never echo a secret, not even a malformed one.
                reader.warn(
                    "spec.presharedKey",
                    "<redacted>",
                    format!("not a WireGuard key ({error}); the peer is configured without a preshared key"),
                );
                None
            }
        }
    };

    let persistent_keepalive = if spec.persistent_keepalive > 0 {
        let text = spec.persistent_keepalive.to_string();
        reader.keepalive("spec.persistentKeepalive", &text, Some(spec.persistent_keepalive))
    } else {
        0
    };

    TranslatedPeer {
        spec: PeerSpec {
            name: name.to_owned(),
            allowed_ips,
            public_key,
            endpoint,
            persistent_keepalive,
            preshared_key,
        },
        warnings: reader.warnings,
    }
}

/// Collects the warnings of one object.
struct Reader<'a> {
    name: &'a str,
    kind: ObjectKind,
    warnings: Vec<Warning>,
}

impl Reader<'_> {
    fn warn(&mut self, annotation: &str, value: &str, reason: impl Into<String>) {
        self.warnings.push(Warning {
            kind: self.kind,
            name: self.name.to_owned(),
            annotation: Some(annotation.to_owned()),
            value: Some(Warning::excerpt(value)),
            reason: reason.into(),
        });
    }

    fn endpoint(&mut self, annotation: &str, text: &str) -> Option<Endpoint> {
        match Endpoint::parse(text) {
            Ok(endpoint) => Some(endpoint),
            Err(error) => {
                let problem = match error {
                    EndpointError::NotHostPort => "not host:port (IPv6 hosts in brackets)",
                    EndpointError::InvalidPort(port)
                        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        "port out of range"
                    }
                    EndpointError::InvalidPort(_) => "port is not a number",
                    EndpointError::InvalidHost(_) => "host is neither an IP address nor a DNS name",
                };
                self.warn(annotation, text, format!("{problem}; ignored"));
                None
            }
        }
    }

    /// A CIDR annotation that Kilo writes as `""` when it has no value.
    fn optional_cidr(&mut self, annotation: &str, text: Option<&str>) -> Option<IpNet> {
        let text = text.filter(|text| !text.is_empty())?;
        let parsed = parse_cidr(text);
        if parsed.is_none() {
            self.warn(annotation, text, "not a CIDR; ignored");
        }
        parsed
    }

    /// A keepalive in seconds: WireGuard takes 0..=65535; anything else is off.
    fn keepalive(&mut self, field: &str, text: &str, seconds: Option<i64>) -> u16 {
        let reason = match seconds {
            Some(seconds) => match u16::try_from(seconds) {
                Ok(seconds) => return seconds,
                Err(_) if seconds < 0 => "negative; persistent keepalive off (0)",
                Err(_) => "more than 65535 seconds; persistent keepalive off (0)",
            },
            None => "not an integer number of seconds; persistent keepalive off (0)",
        };
        self.warn(field, text, reason);
        0
    }
}

/// Go's `net.ParseCIDR` followed by Kilo's `normalizeIP`: the address keeps its host bits.
fn parse_cidr(text: &str) -> Option<IpNet> {
    let (address, prefix) = text.split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    match address {
        IpAddr::V4(v4) => Ipv4Net::new(v4, prefix).ok().map(IpNet::V4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            // Kilo stores IPv4-mapped addresses as IPv4.
            Some(v4) if (96..=128).contains(&prefix) => Ipv4Net::new(v4, prefix - 96).ok().map(IpNet::V4),
            _ => Ipv6Net::new(v6, prefix).ok().map(IpNet::V6),
        },
    }
}

/// Go's `base64.StdEncoding`: padding required, non-zero trailing bits accepted, `\r` and `\n`
/// skipped.
const GO_STD_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Decodes like Go's `base64.StdEncoding.DecodeString`, with Go's error text.
fn decode_go_base64(text: &str) -> Result<Vec<u8>, String> {
    let stripped: String = text.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    GO_STD_BASE64.decode(&stripped).map_err(|error| {
        let offset = match error {
            base64::DecodeError::InvalidByte(offset, _) => offset,
            base64::DecodeError::InvalidLastSymbol { offset, .. } => offset,
            // Go reports the start of the incomplete last quantum.
            base64::DecodeError::InvalidLength(length) => length - length % 4,
            base64::DecodeError::InvalidPadding => stripped.find('=').unwrap_or(stripped.len() - stripped.len() % 4),
        };
        format!("illegal base64 data at input byte {offset}")
    })
}

/// `wgtypes.ParseKey`: Go's base64, exactly 32 bytes.
fn parse_key(text: &str) -> Result<Key, String> {
    let bytes = decode_go_base64(text)?;
    let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| format!("{} bytes, a key has 32", bytes.len()))?;
    Ok(Key::from_bytes(bytes))
}

/// The usable endpoints, and the `(entry key, reason)` of each entry left out.
type DiscoveredEndpoints = (BTreeMap<Key, SocketAddr>, Vec<(String, String)>);

/// Kilo's `json.Unmarshal` into `map[string]*net.UDPAddr`.
///
/// `Err` is what makes Go's decoder fail, which makes Kilo drop the whole annotation. Entries Go
/// accepts but nobody can use (an invalid key, no IP, a port outside 1..=65535, `null`) are left
/// out and listed as `(entry key, reason)`.
fn parse_discovered_endpoints(text: &str) -> Result<DiscoveredEndpoints, String> {
    use serde_json::Value;

    let value: Value = serde_json::from_str(text).map_err(|error| error.to_string())?;
    let object = match value {
        Value::Null => return Ok((BTreeMap::new(), Vec::new())),
        Value::Object(object) => object,
        other => return Err(format!("expected an object, got {}", json_kind(&other))),
    };
    let mut endpoints = BTreeMap::new();
    let mut skipped = Vec::new();
    for (entry, value) in &object {
        let fields = match value {
            Value::Null => {
                skipped.push((entry.clone(), "null endpoint; entry ignored".to_owned()));
                continue;
            }
            Value::Object(fields) => fields,
            other => return Err(format!("endpoint of {entry:?} is {}, not an object", json_kind(other))),
        };
        // encoding/json matches field names case-insensitively.
        let field = |name: &str| {
            fields.get(name).or_else(|| fields.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, v)| v))
        };
        let ip = match field("IP") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) if text.is_empty() => None,
            Some(Value::String(text)) => {
                Some(text.parse::<IpAddr>().map_err(|_| format!("IP {text:?} of {entry:?} is not an IP address"))?)
            }
            Some(other) => return Err(format!("IP of {entry:?} is {}, not a string", json_kind(other))),
        };
        let port = match field("Port") {
            None | Some(Value::Null) => 0,
            Some(Value::Number(number)) => {
                number.as_i64().ok_or_else(|| format!("Port {number} of {entry:?} is not an integer"))?
            }
            Some(other) => return Err(format!("Port of {entry:?} is {}, not a number", json_kind(other))),
        };
        match field("Zone") {
            None | Some(Value::Null | Value::String(_)) => {}
            Some(other) => return Err(format!("Zone of {entry:?} is {}, not a string", json_kind(other))),
        }
        let Ok(key) = parse_key(entry) else {
            skipped.push((entry.clone(), "not a WireGuard key; entry ignored".to_owned()));
            continue;
        };
        let Some(ip) = ip else {
            skipped.push((entry.clone(), "no IP; entry ignored".to_owned()));
            continue;
        };
        let Some(port) = u16::try_from(port).ok().filter(|port| *port != 0) else {
            skipped.push((entry.clone(), format!("port {port} out of range; entry ignored")));
            continue;
        };
        endpoints.insert(key, SocketAddr::new(ip.to_canonical(), port));
    }
    Ok((endpoints, skipped))
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
