//! The `Peer` custom resource (`kilo.squat.ai/v1alpha1`), wire-compatible with Kilo's.
//!
//! The Rust types read every Peer Kilo's CRD admits (all fields default, integers are `i64`),
//! so that one odd object can never break the list of all Peers; [`crate::translate::peer`]
//! then applies Kilo's validation. The CRD we install ([`crd_yaml`]) is Kilo's schema plus
//! Kilo's validation, expressed as OpenAPI constraints and CEL rules, so that the API server
//! rejects a bad Peer without Kilo's admission webhook. CEL's `isIP`/`isCIDR` need
//! Kubernetes 1.31 or newer.

use std::borrow::Cow;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSONSchemaProps};
use kube::{CustomResource, CustomResourceExt};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Specification of the desired behavior of the Kilo Peer.
///
/// Field names, JSON names and meanings are Kilo's `PeerSpec`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[kube(
    group = "kilo.squat.ai",
    version = "v1alpha1",
    kind = "Peer",
    plural = "peers",
    singular = "peer",
    doc = "Peer is a WireGuard peer that should have access to the VPN.",
    derive = "Default",
    derive = "PartialEq",
    schema = "derived"
)]
pub struct PeerSpec {
    /// AllowedIPs is the list of IP addresses that are allowed for the given peer's tunnel.
    #[serde(rename = "allowedIPs", default)]
    pub allowed_ips: Vec<String>,
    /// Endpoint is the initial endpoint for connections to the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<PeerEndpoint>,
    /// PersistentKeepalive is the interval in seconds of the emission of keepalive packets by
    /// the peer. This defaults to 0, which disables the feature.
    #[serde(rename = "persistentKeepalive", default, skip_serializing_if = "is_zero")]
    pub persistent_keepalive: i64,
    /// PresharedKey is the optional symmetric encryption key for the peer.
    #[serde(rename = "presharedKey", default, skip_serializing_if = "String::is_empty")]
    pub preshared_key: String,
    /// PublicKey is the WireGuard public key for the peer.
    #[serde(rename = "publicKey", default)]
    pub public_key: String,
}

/// PeerEndpoint represents a WireGuard endpoint, which is an IP:port tuple.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEndpoint {
    /// DNSOrIP is a DNS name or an IP address.
    #[serde(rename = "dnsOrIP", default)]
    pub dns_or_ip: DnsOrIp,
    /// Port must be a valid port number.
    #[serde(default)]
    pub port: i64,
}

/// DNSOrIP represents either a DNS name or an IP address.
///
/// Kilo's API documentation says the IP wins when both are given; Kilo's agent (and ours) use
/// the DNS name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsOrIp {
    /// DNS must be a valid RFC 1123 subdomain; `""` means none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dns: String,
    /// IP must be a valid IP address; `""` means none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// The most entries `allowedIPs` may have. Kilo sets no limit; CEL's cost budget needs one.
pub const MAX_ALLOWED_IPS: u32 = 1024;

/// A WireGuard key: 32 bytes in padded standard base64, as Go's `base64.StdEncoding` reads it.
const KEY_PATTERN: &str = "^[A-Za-z0-9+/]{43}=$";
/// Kubernetes' `IsDNS1123Subdomain` regular expression, or `""`.
const DNS_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$";

// Kilo's descriptions are controller-gen's rendering of its Go comments, line breaks included;
// they are written out here so that `kubectl explain` reads the same with either CRD.
impl JsonSchema for PeerSpec {
    fn schema_name() -> Cow<'static, str> {
        "PeerSpec".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Specification of the desired behavior of the Kilo Peer. More info:\nhttps://github.com/kubernetes/community/blob/master/contributors/devel/api-conventions.md#spec-and-status",
            "type": "object",
            "required": ["allowedIPs", "publicKey"],
            "properties": {
                "allowedIPs": {
                    "description": "AllowedIPs is the list of IP addresses that are allowed\nfor the given peer's tunnel.",
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_ALLOWED_IPS,
                    "items": {
                        "type": "string",
                        // The longest CIDR text is an IPv6 address with an IPv4 tail and /128.
                        "maxLength": 64,
                    },
                    "x-kubernetes-validations": [{
                        "rule": "self.all(ip, isCIDR(ip))",
                        "message": "every allowed IP must be a CIDR such as 10.5.0.1/32",
                    }],
                },
                "endpoint": {
                    "description": "Endpoint is the initial endpoint for connections to the peer.",
                    "type": "object",
                    "required": ["dnsOrIP", "port"],
                    "properties": {
                        "dnsOrIP": {
                            "description": "DNSOrIP is a DNS name or an IP address.",
                            "type": "object",
                            "properties": {
                                "dns": {
                                    "description": "DNS must be a valid RFC 1123 subdomain.",
                                    "type": "string",
                                    "maxLength": 253,
                                    "pattern": DNS_PATTERN,
                                },
                                "ip": {
                                    "description": "IP must be a valid IP address.",
                                    "type": "string",
                                    "maxLength": 45,
                                    "x-kubernetes-validations": [{
                                        "rule": "self == '' || isIP(self)",
                                        "message": "must be a valid IP address",
                                    }],
                                },
                            },
                            "x-kubernetes-validations": [{
                                "rule": "(has(self.dns) && self.dns != '') || (has(self.ip) && self.ip != '')",
                                "message": "either an endpoint DNS name IP address must be given",
                            }],
                        },
                        "port": {
                            "description": "Port must be a valid port number.",
                            "type": "integer",
                            "format": "int32",
                            "minimum": 1,
                            "maximum": 65535,
                        },
                    },
                },
                "persistentKeepalive": {
                    "description": "PersistentKeepalive is the interval in seconds of the emission\nof keepalive packets by the peer. This defaults to 0, which\ndisables the feature.",
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 65535,
                },
                "presharedKey": {
                    "description": "PresharedKey is the optional symmetric encryption key for the peer.",
                    "type": "string",
                    "maxLength": 44,
                    // Kilo ignores an unparsable preshared key; an empty one means none.
                    "pattern": "^([A-Za-z0-9+/]{43}=)?$",
                },
                "publicKey": {
                    "description": "PublicKey is the WireGuard public key for the peer.",
                    "type": "string",
                    "minLength": 44,
                    "maxLength": 44,
                    "pattern": KEY_PATTERN,
                },
            },
        })
    }
}

const API_VERSION_DESCRIPTION: &str = "APIVersion defines the versioned schema of this representation of an object.
Servers should convert recognized schemas to the latest internal value, and
may reject unrecognized values.
More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";

const KIND_DESCRIPTION: &str = "Kind is a string value representing the REST resource this object represents.
Servers may infer this from the endpoint the client submits requests to.
Cannot be updated.
In CamelCase.
More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

/// The Peer `CustomResourceDefinition` as an object: Kilo's, plus validation.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = Peer::crd();
    // What controller-gen writes for Kilo and kube-derive leaves out (or adds: a title).
    crd.spec.names.list_kind = Some("PeerList".to_owned());
    for version in &mut crd.spec.versions {
        let Some(root) = version.schema.as_mut().and_then(|schema| schema.open_api_v3_schema.as_mut()) else {
            continue;
        };
        root.title = None;
        let properties = root.properties.get_or_insert_with(Default::default);
        let string = |description: &str| JSONSchemaProps {
            description: Some(description.to_owned()),
            type_: Some("string".to_owned()),
            ..JSONSchemaProps::default()
        };
        properties.insert("apiVersion".to_owned(), string(API_VERSION_DESCRIPTION));
        properties.insert("kind".to_owned(), string(KIND_DESCRIPTION));
        properties.insert(
            "metadata".to_owned(),
            JSONSchemaProps { type_: Some("object".to_owned()), ..JSONSchemaProps::default() },
        );
    }
    crd
}

/// The Peer CRD as one YAML document (no `---`), byte for byte what `deploy/base/crds.yaml` holds.
///
/// Keys are sorted, as `controller-gen` writes them, so the output is deterministic.
pub fn crd_yaml() -> String {
    // Through a JSON value: its maps are sorted, so the YAML does not depend on field order.
    let mut value = serde_json::to_value(crd()).expect("a CustomResourceDefinition serializes to JSON");
    integral_numbers(&mut value);
    serde_norway::to_string(&value).expect("a JSON value serializes to YAML")
}

/// `minimum: 1` rather than `1.0`: the schema's bounds are `f64` in k8s-openapi.
fn integral_numbers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(number) => {
            if let Some(float) = number.as_f64().filter(|float| float.fract() == 0.0 && float.abs() < 1e15) {
                *number = serde_json::Number::from(float as i64);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        serde_json::Value::Object(map) => map.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn resource_identity_is_kilos() {
        assert_eq!(Peer::group(&()), "kilo.squat.ai");
        assert_eq!(Peer::version(&()), "v1alpha1");
        assert_eq!(Peer::kind(&()), "Peer");
        assert_eq!(Peer::plural(&()), "peers");
        assert_eq!(Peer::api_version(&()), "kilo.squat.ai/v1alpha1");
        let url = Peer::url_path(&(), None);
        assert_eq!(url, "/apis/kilo.squat.ai/v1alpha1/peers");
    }

    #[test]
    fn reads_kilos_json() {
        let json = r#"{"apiVersion":"kilo.squat.ai/v1alpha1","kind":"Peer","metadata":{"name":"p"},
            "spec":{"allowedIPs":["10.5.0.1/32"],"publicKey":"k","persistentKeepalive":10,
                    "endpoint":{"dnsOrIP":{"dns":"example.com","ip":"1.2.3.4"},"port":51820}}}"#;
        let peer: Peer = serde_json::from_str(json).unwrap();
        assert_eq!(peer.spec.allowed_ips, ["10.5.0.1/32"]);
        assert_eq!(peer.spec.persistent_keepalive, 10);
        let endpoint = peer.spec.endpoint.as_ref().unwrap();
        assert_eq!(endpoint.dns_or_ip.dns, "example.com");
        assert_eq!(endpoint.dns_or_ip.ip, "1.2.3.4");
        assert_eq!(endpoint.port, 51820);
        // Serializes back with Kilo's omitempty behaviour.
        let back = serde_json::to_value(&peer.spec).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"allowedIPs":["10.5.0.1/32"],"publicKey":"k","persistentKeepalive":10,
                "endpoint":{"dnsOrIP":{"dns":"example.com","ip":"1.2.3.4"},"port":51820}})
        );
        // A spec missing everything still decodes: validation, not decoding, rejects it.
        let empty: Peer = serde_json::from_str(r#"{"metadata":{"name":"e"},"spec":{}}"#).unwrap();
        assert_eq!(empty.spec, PeerSpec::default());
    }
}
