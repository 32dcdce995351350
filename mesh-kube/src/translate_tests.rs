//! Kilo's `TestTranslateNode` and `TestTranslatePeer` (pkg/k8s/backend_test.go), case by case,
//! plus every way a value can be bad and the warning it must produce.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSpec as KubeNodeSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_core::{Endpoint, Host, Key, NodeSpec, ObjectKind, PeerSpec, PresharedKey, Warning};

use super::*;
use crate::annotations::{self, DEFAULT_TOPOLOGY_LABEL as REGION};
use crate::crd::{DnsOrIp, Peer, PeerEndpoint, PeerSpec as CrdPeerSpec};

/// Kilo's `fooKey` is generated; any valid non-zero key does.
fn foo_key() -> Key {
    Key::from_bytes([7; 32])
}

fn kube_node(name: &str, annotations: &[(&str, &str)], labels: &[(&str, &str)], pod_cidr: &str) -> Node {
    let map = |pairs: &[(&str, &str)]| {
        (!pairs.is_empty())
            .then(|| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>())
    };
    Node {
        metadata: ObjectMeta {
            name: (!name.is_empty()).then(|| name.to_owned()),
            annotations: map(annotations),
            labels: map(labels),
            ..ObjectMeta::default()
        },
        spec: Some(KubeNodeSpec {
            pod_cidr: (!pod_cidr.is_empty()).then(|| pod_cidr.to_owned()),
            ..KubeNodeSpec::default()
        }),
        status: None,
    }
}

fn cidr(text: &str) -> ipnet::IpNet {
    text.parse().unwrap()
}

fn endpoint(text: &str) -> Option<Endpoint> {
    Some(Endpoint::parse(text).unwrap())
}

/// (annotation, value, reason) of the node `name`.
fn node_warning(name: &str, annotation: &str, value: &str, reason: &str) -> Warning {
    Warning {
        kind: ObjectKind::Node,
        name: name.to_owned(),
        annotation: Some(annotation.to_owned()),
        value: Some(value.to_owned()),
        reason: reason.to_owned(),
    }
}

struct NodeCase {
    name: &'static str,
    annotations: Vec<(&'static str, String)>,
    labels: Vec<(&'static str, &'static str)>,
    subnet: &'static str,
    out: NodeSpec,
    /// (annotation, value, reason)
    warnings: Vec<(&'static str, &'static str, &'static str)>,
}

fn run_node_cases(cases: Vec<NodeCase>) {
    for case in cases {
        let annotations: Vec<(&str, &str)> = case.annotations.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let node = kube_node("", &annotations, &case.labels, case.subnet);
        let translated = super::node(&node, REGION);
        assert_eq!(translated.spec, case.out, "test case {:?}", case.name);
        let expected: Vec<Warning> = case
            .warnings
            .iter()
            .map(|(annotation, value, reason)| node_warning("", annotation, value, reason))
            .collect();
        assert_eq!(translated.warnings, expected, "test case {:?}", case.name);
    }
}

fn a(key: &'static str, value: &str) -> (&'static str, String) {
    (key, value.to_owned())
}

#[test]
fn kilo_translate_node() {
    let complete = |force_endpoint: &str| {
        vec![
            a(ENDPOINT, "10.0.0.1:51820"),
            a(FORCE_ENDPOINT, force_endpoint),
            a(FORCE_INTERNAL_IP, "10.1.0.2/32"),
            a(INTERNAL_IP, "10.1.0.1/32"),
            a(KEY, &foo_key().to_base64()),
            a(LAST_SEEN, "1000000000"),
            a(LEADER, ""),
            a(LOCATION, "b"),
            a(PERSISTENT_KEEPALIVE, "25"),
            a(WIREGUARD_IP, "10.4.0.1/16"),
        ]
    };
    let complete_out = |endpoint_text: &str| NodeSpec {
        endpoint: endpoint(endpoint_text),
        internal_ip: Some(cidr("10.1.0.2/32")),
        key: Some(foo_key()),
        last_seen: Some(1_000_000_000),
        leader: true,
        location: "b".into(),
        persistent_keepalive: 25,
        pod_subnet: Some(cidr("10.2.1.0/24")),
        wireguard_ip: Some(cidr("10.4.0.1/16")),
        ..NodeSpec::default()
    };
    let published = |internal_ip: &str, force: Option<&str>| {
        let mut annotations = vec![
            a(ENDPOINT, "10.0.0.1:51820"),
            a(INTERNAL_IP, internal_ip),
            a(KEY, &foo_key().to_base64()),
            a(LAST_SEEN, "1000000000"),
            a(LOCATION, "b"),
            a(PERSISTENT_KEEPALIVE, "25"),
            a(WIREGUARD_IP, "10.4.0.1/16"),
        ];
        if let Some(force) = force {
            annotations.push(a(FORCE_INTERNAL_IP, force));
        }
        annotations
    };
    let published_out = NodeSpec {
        endpoint: endpoint("10.0.0.1:51820"),
        internal_ip: None,
        key: Some(foo_key()),
        last_seen: Some(1_000_000_000),
        leader: false,
        location: "b".into(),
        persistent_keepalive: 25,
        pod_subnet: Some(cidr("10.2.1.0/24")),
        wireguard_ip: Some(cidr("10.4.0.1/16")),
        ..NodeSpec::default()
    };
    let case = |name, annotations, labels, subnet, out, warnings| NodeCase {
        name,
        annotations,
        labels,
        subnet,
        out,
        warnings,
    };
    run_node_cases(vec![
        case("empty", vec![], vec![], "", NodeSpec::default(), vec![]),
        case(
            "invalid ips",
            vec![a(ENDPOINT, "10.0.0.1"), a(INTERNAL_IP, "foo")],
            vec![],
            "",
            NodeSpec::default(),
            vec![
                (ENDPOINT, "10.0.0.1", "not host:port (IPv6 hosts in brackets); ignored"),
                (INTERNAL_IP, "foo", "not a CIDR; ignored"),
            ],
        ),
        case(
            "valid ips",
            vec![a(ENDPOINT, "10.0.0.1:51820"), a(INTERNAL_IP, "10.0.0.2/32")],
            vec![],
            "",
            NodeSpec {
                endpoint: endpoint("10.0.0.1:51820"),
                internal_ip: Some(cidr("10.0.0.2/32")),
                ..NodeSpec::default()
            },
            vec![],
        ),
        case(
            "valid ips with ipv6",
            vec![a(ENDPOINT, "[ff10::10]:51820"), a(INTERNAL_IP, "ff60::10/64")],
            vec![],
            "",
            NodeSpec {
                endpoint: endpoint("[ff10::10]:51820"),
                internal_ip: Some(cidr("ff60::10/64")),
                ..NodeSpec::default()
            },
            vec![],
        ),
        case(
            "invalid subnet",
            vec![],
            vec![],
            "foo",
            NodeSpec::default(),
            vec![("spec.podCIDR", "foo", "not a CIDR; the node has no pod subnet")],
        ),
        case(
            "normalize subnet",
            vec![],
            vec![],
            "10.2.0.1/24",
            NodeSpec { pod_subnet: Some(cidr("10.2.0.0/24")), ..NodeSpec::default() },
            vec![],
        ),
        case(
            "valid subnet",
            vec![],
            vec![],
            "10.2.1.0/24",
            NodeSpec { pod_subnet: Some(cidr("10.2.1.0/24")), ..NodeSpec::default() },
            vec![],
        ),
        case(
            "region",
            vec![],
            vec![(REGION, "a")],
            "",
            NodeSpec { location: "a".into(), ..NodeSpec::default() },
            vec![],
        ),
        case(
            "region override",
            vec![a(LOCATION, "b")],
            vec![(REGION, "a")],
            "",
            NodeSpec { location: "b".into(), ..NodeSpec::default() },
            vec![],
        ),
        case(
            "invalid endpoint override",
            vec![a(ENDPOINT, "10.0.0.1:51820"), a(FORCE_ENDPOINT, "-10.0.0.2:51821")],
            vec![],
            "",
            NodeSpec { endpoint: endpoint("10.0.0.1:51820"), ..NodeSpec::default() },
            vec![(FORCE_ENDPOINT, "-10.0.0.2:51821", "host is neither an IP address nor a DNS name; ignored")],
        ),
        case(
            "endpoint override",
            vec![a(ENDPOINT, "10.0.0.1:51820"), a(FORCE_ENDPOINT, "10.0.0.2:51821")],
            vec![],
            "",
            NodeSpec { endpoint: endpoint("10.0.0.2:51821"), ..NodeSpec::default() },
            vec![],
        ),
        case(
            "wireguard persistent keepalive override",
            vec![a(PERSISTENT_KEEPALIVE, "25")],
            vec![],
            "",
            NodeSpec { persistent_keepalive: 25, ..NodeSpec::default() },
            vec![],
        ),
        case(
            "invalid internal IP override",
            vec![a(INTERNAL_IP, "10.1.0.1/24"), a(FORCE_INTERNAL_IP, "-10.1.0.2/24")],
            vec![],
            "",
            NodeSpec { internal_ip: Some(cidr("10.1.0.1/24")), ..NodeSpec::default() },
            vec![(FORCE_INTERNAL_IP, "-10.1.0.2/24", "not a CIDR; falling back to kilo.squat.ai/internal-ip")],
        ),
        case(
            "internal IP override",
            vec![a(INTERNAL_IP, "10.1.0.1/24"), a(FORCE_INTERNAL_IP, "10.1.0.2/24")],
            vec![],
            "",
            // Host bits kept.
            NodeSpec { internal_ip: Some(cidr("10.1.0.2/24")), ..NodeSpec::default() },
            vec![],
        ),
        case(
            "invalid time",
            vec![a(LAST_SEEN, "foo")],
            vec![],
            "",
            NodeSpec::default(),
            vec![(LAST_SEEN, "foo", "not a Unix time in seconds; the node counts as never seen")],
        ),
        case(
            "complete",
            complete("10.0.0.2:51821"),
            vec![(REGION, "a")],
            "10.2.1.0/24",
            complete_out("10.0.0.2:51821"),
            vec![],
        ),
        case(
            "complete with ipv6",
            complete("[1100::10]:51821"),
            vec![(REGION, "a")],
            "10.2.1.0/24",
            complete_out("[1100::10]:51821"),
            vec![],
        ),
        case("no InternalIP", published("", None), vec![(REGION, "a")], "10.2.1.0/24", published_out.clone(), vec![]),
        NodeCase {
            name: "Force no internal IP",
            annotations: published("10.1.0.1/32", Some("")),
            labels: vec![(REGION, "a")],
            subnet: "10.2.1.0/24",
            out: NodeSpec { no_internal_ip: true, ..published_out.clone() },
            warnings: vec![],
        },
    ]);
}

#[test]
fn node_name_and_every_read_annotation() {
    let key_a = Key::from_bytes([1; 32]);
    let node = kube_node(
        "node-a",
        &[
            (FORCE_ENDPOINT, "gw.example.com:51821"),
            (FORCE_INTERNAL_IP, "-"),
            (INTERNAL_IP, "10.1.0.1/24"),
            (ALLOWED_LOCATION_IPS, "10.9.0.1/24,192.168.5.0/24"),
            (DISCOVERED_ENDPOINTS, &format!(r#"{{"{key_a}":{{"IP":"5.5.5.5","Port":3333,"Zone":""}}}}"#)),
            (GRANULARITY, "cross"),
            (CNI_COMPATIBILITY_IP, "10.0.1.1/32"),
            (LEADER, "true"),
        ],
        &[(REGION, "eu")],
        "10.2.3.0/24",
    );
    let translated = super::node(&node, REGION);
    assert_eq!(translated.warnings, vec![]);
    assert!(translated.spec.no_internal_ip);
    let spec = translated.spec;
    assert_eq!(spec.name, "node-a");
    assert_eq!(
        spec.endpoint,
        Some(Endpoint { host: Host::Dns { name: "gw.example.com".into(), resolved: None }, port: 51821 })
    );
    assert_eq!(spec.internal_ip, None);
    assert_eq!(spec.allowed_location_ips, vec![cidr("10.9.0.1/24"), cidr("192.168.5.0/24")]);
    assert_eq!(spec.discovered_endpoints, BTreeMap::from([(key_a, "5.5.5.5:3333".parse().unwrap())]));
    assert_eq!(spec.granularity, Some(Granularity::Cross));
    assert_eq!(spec.cni_compatibility_ip, Some(cidr("10.0.1.1/32")));
    assert!(spec.leader);
    assert_eq!(spec.location, "eu");
    // Another topology label: the region label no longer counts.
    assert_eq!(super::node(&node, "example.com/zone").spec.location, "");
}

#[test]
fn empty_values_kilo_writes_on_purpose_are_not_warnings() {
    let node = kube_node(
        "n",
        &[
            (ENDPOINT, ""),
            (INTERNAL_IP, ""),
            (WIREGUARD_IP, ""),
            (CNI_COMPATIBILITY_IP, ""),
            (DISCOVERED_ENDPOINTS, ""),
            (ALLOWED_LOCATION_IPS, ""),
        ],
        &[],
        "",
    );
    let translated = super::node(&node, REGION);
    assert_eq!(translated.warnings, vec![]);
    assert_eq!(translated.spec, NodeSpec { name: "n".into(), ..NodeSpec::default() });
    // `null` and `{}` are what Kilo writes for no discovered endpoints.
    for empty in ["null", "{}"] {
        let node = kube_node("n", &[(DISCOVERED_ENDPOINTS, empty)], &[], "");
        assert_eq!(super::node(&node, REGION).warnings, vec![], "{empty}");
    }
}

/// Runs `annotations` on a node named `n` and returns the translation.
fn translate_annotations(annotations: &[(&str, &str)], labels: &[(&str, &str)]) -> TranslatedNode {
    super::node(&kube_node("n", annotations, labels, ""), REGION)
}

fn assert_warnings(translated: &TranslatedNode, expected: &[(&str, &str, &str)]) {
    let expected: Vec<Warning> = expected.iter().map(|(a, v, r)| node_warning("n", a, v, r)).collect();
    assert_eq!(translated.warnings, expected);
}

#[test]
fn bad_cidrs_are_ignored_with_warnings() {
    let translated = translate_annotations(
        &[
            (INTERNAL_IP, "10.0.0.1/33"),
            (WIREGUARD_IP, "foo"),
            (CNI_COMPATIBILITY_IP, "10.0.1.1"),
            (ALLOWED_LOCATION_IPS, "10.1.0.0/16, 10.2.0.0/16,bad,"),
        ],
        &[],
    );
    assert_eq!(translated.spec.internal_ip, None);
    assert_eq!(translated.spec.wireguard_ip, None);
    assert_eq!(translated.spec.cni_compatibility_ip, None);
    assert_eq!(translated.spec.allowed_location_ips, vec![cidr("10.1.0.0/16")]);
    assert_warnings(
        &translated,
        &[
            (INTERNAL_IP, "10.0.0.1/33", "not a CIDR; ignored"),
            (WIREGUARD_IP, "foo", "not a CIDR; ignored"),
            (
                ALLOWED_LOCATION_IPS,
                " 10.2.0.0/16",
                "not a CIDR: entries are split on ',' without trimming spaces; entry ignored",
            ),
            (ALLOWED_LOCATION_IPS, "bad", "not a CIDR; entry ignored"),
            (ALLOWED_LOCATION_IPS, "", "not a CIDR; entry ignored"),
            (CNI_COMPATIBILITY_IP, "10.0.1.1", "not a CIDR; ignored"),
        ],
    );
}

#[test]
fn a_huge_bad_value_is_shown_shortened() {
    let huge = format!("{}:51820", "é".repeat(500_000));
    let translated = translate_annotations(&[(FORCE_ENDPOINT, &huge)], &[]);
    assert_eq!(translated.warnings.len(), 1);
    let shown = translated.warnings[0].value.as_deref().unwrap();
    assert_eq!(shown, format!("{}… (1000006 bytes)", "é".repeat(Warning::VALUE_SHOWN)));
}

#[test]
fn bad_ports_and_hosts_are_ignored_with_warnings() {
    // The design's example: a forced endpoint with a port out of range.
    let translated = translate_annotations(&[(FORCE_ENDPOINT, "1.2.3.4:99999"), (ENDPOINT, "10.0.0.1:51820")], &[]);
    assert_eq!(translated.spec.endpoint, endpoint("10.0.0.1:51820"));
    assert_warnings(&translated, &[(FORCE_ENDPOINT, "1.2.3.4:99999", "port out of range; ignored")]);

    for (value, reason) in [
        ("1.2.3.4:0", "port out of range; ignored"),
        ("1.2.3.4:abc", "port is not a number; ignored"),
        ("1.2.3.4:", "port is not a number; ignored"),
        ("ff10::1:51820", "not host:port (IPv6 hosts in brackets); ignored"),
        ("Bad_Host:51820", "host is neither an IP address nor a DNS name; ignored"),
    ] {
        let translated = translate_annotations(&[(ENDPOINT, value)], &[]);
        assert_eq!(translated.spec.endpoint, None, "{value}");
        assert_warnings(&translated, &[(ENDPOINT, value, reason)]);
    }
    // An empty force-endpoint falls back without complaint from Kilo, but is reported.
    let translated = translate_annotations(&[(FORCE_ENDPOINT, ""), (ENDPOINT, "10.0.0.1:51820")], &[]);
    assert_eq!(translated.spec.endpoint, endpoint("10.0.0.1:51820"));
    assert_warnings(&translated, &[(FORCE_ENDPOINT, "", "not host:port (IPv6 hosts in brackets); ignored")]);
}

#[test]
fn bad_keys_are_ignored_with_warnings() {
    for (value, reason) in [
        ("not base64!", "not a WireGuard key (illegal base64 data at input byte 3); ignored"),
        ("a2V5MQ==", "not a WireGuard key (4 bytes, a key has 32); ignored"),
        ("", "not a WireGuard key (0 bytes, a key has 32); ignored"),
        ("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "the all-zero key is no key; ignored"),
    ] {
        let translated = translate_annotations(&[(KEY, value)], &[]);
        assert_eq!(translated.spec.key, None, "{value}");
        assert_warnings(&translated, &[(KEY, value, reason)]);
    }
    // Go's decoder tolerates non-zero trailing bits and line breaks; so do we.
    let canonical = foo_key().to_base64();
    assert!(canonical.ends_with("c="));
    let lenient = canonical.replace("c=", "d="); // the last symbol's two spare bits set
    assert_eq!(translate_annotations(&[(KEY, &lenient)], &[]).spec.key, Some(foo_key()));
    let wrapped = format!("{}\n", foo_key().to_base64());
    assert_eq!(translate_annotations(&[(KEY, &wrapped)], &[]).spec.key, Some(foo_key()));
}

#[test]
fn bad_keepalives_are_off_with_warnings() {
    for (value, reason) in [
        ("-5", "negative; persistent keepalive off (0)"),
        ("abc", "not an integer number of seconds; persistent keepalive off (0)"),
        ("2.5", "not an integer number of seconds; persistent keepalive off (0)"),
        ("", "not an integer number of seconds; persistent keepalive off (0)"),
        ("70000", "more than 65535 seconds; persistent keepalive off (0)"),
    ] {
        let translated = translate_annotations(&[(PERSISTENT_KEEPALIVE, value)], &[]);
        assert_eq!(translated.spec.persistent_keepalive, 0, "{value}");
        assert_warnings(&translated, &[(PERSISTENT_KEEPALIVE, value, reason)]);
    }
    assert_eq!(translate_annotations(&[(PERSISTENT_KEEPALIVE, "+25")], &[]).spec.persistent_keepalive, 25);
    assert_eq!(translate_annotations(&[(PERSISTENT_KEEPALIVE, "65535")], &[]).spec.persistent_keepalive, 65535);
}

#[test]
fn malformed_discovered_endpoints_are_ignored_with_warnings() {
    for (value, detail) in [
        ("{not json", "key must be a string at line 1 column 2"),
        ("[]", "expected an object, got an array"),
        (r#"{"k":"1.2.3.4:5"}"#, r#"endpoint of "k" is a string, not an object"#),
        (r#"{"k":{"IP":"nope","Port":1}}"#, r#"IP "nope" of "k" is not an IP address"#),
        (r#"{"k":{"IP":"1.2.3.4","Port":"1"}}"#, r#"Port of "k" is a string, not a number"#),
        (r#"{"k":{"IP":"1.2.3.4","Port":1.5}}"#, r#"Port 1.5 of "k" is not an integer"#),
    ] {
        let translated = translate_annotations(&[(DISCOVERED_ENDPOINTS, value)], &[]);
        assert_eq!(translated.spec.discovered_endpoints, BTreeMap::new(), "{value}");
        let reason = format!("not a JSON object of endpoints ({detail}); ignored");
        assert_warnings(&translated, &[(DISCOVERED_ENDPOINTS, value, &reason)]);
    }

    // Go accepts these entries but nobody can use them: they are left out one by one.
    let (key_a, key_b, key_c) = (Key::from_bytes([1; 32]), Key::from_bytes([2; 32]), Key::from_bytes([3; 32]));
    let value = format!(
        r#"{{"{key_a}":{{"IP":"5.5.5.5","Port":3333,"Zone":""}},"bad":{{"IP":"1.1.1.1","Port":1}},
            "{key_b}":{{"ip":"::ffff:6.6.6.6","port":51820}},"{key_c}":{{"IP":"","Port":1}},
            "{}":{{"IP":"7.7.7.7","Port":0}},"{}":null}}"#,
        Key::from_bytes([4; 32]),
        Key::from_bytes([5; 32]),
    );
    let translated = translate_annotations(&[(DISCOVERED_ENDPOINTS, &value)], &[]);
    assert_eq!(
        translated.spec.discovered_endpoints,
        BTreeMap::from([(key_a, "5.5.5.5:3333".parse().unwrap()), (key_b, "6.6.6.6:51820".parse().unwrap())])
    );
    let four = Key::from_bytes([4; 32]).to_base64();
    let five = Key::from_bytes([5; 32]).to_base64();
    let c = key_c.to_base64();
    let mut expected = vec![
        (DISCOVERED_ENDPOINTS, c.as_str(), "no IP; entry ignored"),
        (DISCOVERED_ENDPOINTS, four.as_str(), "port 0 out of range; entry ignored"),
        (DISCOVERED_ENDPOINTS, five.as_str(), "null endpoint; entry ignored"),
        (DISCOVERED_ENDPOINTS, "bad", "not a WireGuard key; entry ignored"),
    ];
    // serde_json's map is sorted by key text.
    expected.sort_by_key(|(_, value, _)| value.to_string());
    assert_warnings(&translated, &expected);
}

#[test]
fn empty_location_overrides_the_label_with_a_warning() {
    let translated = translate_annotations(&[(LOCATION, "")], &[(REGION, "a")]);
    assert_eq!(translated.spec.location, "");
    assert_warnings(
        &translated,
        &[(
            LOCATION,
            "",
            "empty location overrides the label topology.kubernetes.io/region=\"a\"; the node is in the default location \"\"",
        )],
    );
    let translated = translate_annotations(&[(LOCATION, "")], &[]);
    assert_warnings(&translated, &[(LOCATION, "", "empty location; the node is in the default location \"\"")]);
    // No annotation, no label: the default location, nothing to report.
    assert_warnings(&translate_annotations(&[], &[]), &[]);
}

#[test]
fn odd_granularity_leader_and_last_seen_values() {
    let translated = translate_annotations(&[(GRANULARITY, "auto"), (LEADER, "false"), (LAST_SEEN, "")], &[]);
    assert_eq!(translated.spec.granularity, None);
    assert!(translated.spec.leader, "presence counts");
    assert_eq!(translated.spec.last_seen, None);
    assert_warnings(
        &translated,
        &[
            (LEADER, "false", "the annotation counts by its presence: the node is a leader candidate"),
            (LAST_SEEN, "", "not a Unix time in seconds; the node counts as never seen"),
            (GRANULARITY, "auto", "not one of location, full, cross; ignored"),
        ],
    );
    for (text, granularity) in [("location", Granularity::Location), ("full", Granularity::Full)] {
        assert_eq!(translate_annotations(&[(GRANULARITY, text)], &[]).spec.granularity, Some(granularity));
    }
}

#[test]
fn go_cidr_parsing() {
    assert_eq!(parse_cidr("10.0.0.1/24"), Some(cidr("10.0.0.1/24")));
    assert_eq!(parse_cidr("::ffff:10.0.0.1/120"), Some(cidr("10.0.0.1/24")));
    assert_eq!(parse_cidr("ff60::10/64"), Some(cidr("ff60::10/64")));
    for bad in ["10.0.0.1", "10.0.0.1/", "10.0.0.1/33", "10.0.0.1/+8", "fe80::1%eth0/64", "010.0.0.1/8", "/8", ""] {
        assert_eq!(parse_cidr(bad), None, "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// Peers

fn peer_object(name: &str, spec: CrdPeerSpec) -> Peer {
    let mut peer = Peer::new(name, spec);
    if name.is_empty() {
        peer.metadata.name = None;
    }
    peer
}

fn crd_endpoint(dns: &str, ip: &str, port: i64) -> Option<PeerEndpoint> {
    Some(PeerEndpoint { dns_or_ip: DnsOrIp { dns: dns.into(), ip: ip.into() }, port })
}

fn peer_warning(field: &str, value: &str, reason: &str) -> Warning {
    Warning {
        kind: ObjectKind::Peer,
        name: String::new(),
        annotation: Some(field.to_owned()),
        value: Some(value.to_owned()),
        reason: reason.to_owned(),
    }
}

const EMPTY_KEY_WARNING: (&str, &str, &str) =
    ("spec.publicKey", "", "not a WireGuard key (0 bytes, a key has 32); ignored");
const KEY_LENGTH: &str = "WireGuard public key has invalid length";

#[test]
fn kilo_translate_peer() {
    let psk = Key::from_bytes([9; 32]);
    struct PeerCase {
        name: &'static str,
        spec: CrdPeerSpec,
        /// Kilo's `translatePeer` result.
        out: PeerSpec,
        warnings: Vec<(&'static str, &'static str, &'static str)>,
        /// Kilo's `Validate` result: `Err` means Kilo drops the Peer.
        valid: Result<(), &'static str>,
    }
    let cases = vec![
        PeerCase {
            name: "empty",
            spec: CrdPeerSpec::default(),
            out: PeerSpec::default(),
            warnings: vec![EMPTY_KEY_WARNING],
            valid: Err(KEY_LENGTH),
        },
        PeerCase {
            name: "invalid ips",
            spec: CrdPeerSpec { allowed_ips: vec!["10.0.0.1".into(), "foo".into()], ..CrdPeerSpec::default() },
            out: PeerSpec::default(),
            warnings: vec![
                ("spec.allowedIPs", "10.0.0.1", "not a CIDR; entry ignored"),
                ("spec.allowedIPs", "foo", "not a CIDR; entry ignored"),
                EMPTY_KEY_WARNING,
            ],
            valid: Err(r#"failed to parse "10.0.0.1" as a valid IP address: invalid CIDR address: 10.0.0.1"#),
        },
        PeerCase {
            name: "valid ips",
            spec: CrdPeerSpec {
                allowed_ips: vec!["10.0.0.1/24".into(), "10.0.0.2/32".into()],
                ..CrdPeerSpec::default()
            },
            out: PeerSpec { allowed_ips: vec![cidr("10.0.0.1/24"), cidr("10.0.0.2/32")], ..PeerSpec::default() },
            warnings: vec![EMPTY_KEY_WARNING],
            valid: Err(KEY_LENGTH),
        },
        PeerCase {
            name: "invalid endpoint ip",
            spec: CrdPeerSpec { endpoint: crd_endpoint("", "foo", 51820), ..CrdPeerSpec::default() },
            out: PeerSpec::default(),
            warnings: vec![EMPTY_KEY_WARNING],
            valid: Err(r#"failed to parse "foo" as a valid IP address"#),
        },
        PeerCase {
            name: "only endpoint port",
            spec: CrdPeerSpec { endpoint: crd_endpoint("", "", 51820), ..CrdPeerSpec::default() },
            out: PeerSpec::default(),
            warnings: vec![EMPTY_KEY_WARNING],
            valid: Err("either an endpoint DNS name IP address must be given"),
        },
        PeerCase {
            name: "valid endpoint ip",
            spec: CrdPeerSpec { endpoint: crd_endpoint("", "10.0.0.1", 51820), ..CrdPeerSpec::default() },
            out: PeerSpec { endpoint: endpoint("10.0.0.1:51820"), ..PeerSpec::default() },
            warnings: vec![EMPTY_KEY_WARNING],
            valid: Err(KEY_LENGTH),
        },
        PeerCase {
            name: "valid endpoint ipv6",
            spec: CrdPeerSpec { endpoint: crd_endpoint("", "ff60::2", 51820), ..CrdPeerSpec::default() },
            out: PeerSpec { endpoint: endpoint("[ff60::2]:51820"), ..PeerSpec::default() },
            warnings: vec![EMPTY_KEY_WARNING],
            valid: Err(KEY_LENGTH),
        },
        PeerCase {
            name: "valid endpoint DNS",
            spec: CrdPeerSpec { endpoint: crd_endpoint("example.com", "", 51820), ..CrdPeerSpec::default() },
            out: PeerSpec {
                endpoint: Some(Endpoint {
                    host: Host::Dns { name: "example.com".into(), resolved: None },
                    port: 51820,
                }),
                ..PeerSpec::default()
            },
            warnings: vec![EMPTY_KEY_WARNING],
            valid: Err(KEY_LENGTH),
        },
        PeerCase {
            name: "empty key",
            spec: CrdPeerSpec { public_key: String::new(), ..CrdPeerSpec::default() },
            out: PeerSpec::default(),
            warnings: vec![EMPTY_KEY_WARNING],
            valid: Err(KEY_LENGTH),
        },
        PeerCase {
            name: "valid key",
            spec: CrdPeerSpec { public_key: foo_key().to_base64(), ..CrdPeerSpec::default() },
            out: PeerSpec { public_key: Some(foo_key()), ..PeerSpec::default() },
            warnings: vec![],
            valid: Ok(()),
        },
        PeerCase {
            name: "invalid keepalive",
            spec: CrdPeerSpec { persistent_keepalive: -1, ..CrdPeerSpec::default() },
            out: PeerSpec::default(),
            warnings: vec![EMPTY_KEY_WARNING],
            valid: Err("persistent keepalive must be greater than or equal to zero; got -1"),
        },
        PeerCase {
            name: "valid keepalive",
            spec: CrdPeerSpec { persistent_keepalive: 1, ..CrdPeerSpec::default() },
            out: PeerSpec { persistent_keepalive: 1, ..PeerSpec::default() },
            warnings: vec![EMPTY_KEY_WARNING],
            valid: Err(KEY_LENGTH),
        },
        PeerCase {
            name: "valid preshared key",
            spec: CrdPeerSpec { preshared_key: psk.to_base64(), ..CrdPeerSpec::default() },
            out: PeerSpec { preshared_key: Some(PresharedKey::new(psk)), ..PeerSpec::default() },
            warnings: vec![EMPTY_KEY_WARNING],
            valid: Err(KEY_LENGTH),
        },
    ];
    for case in cases {
        // Kilo's translatePeer, unvalidated, as its test calls it.
        let translated = translate_peer_spec("", &case.spec);
        assert_eq!(translated.spec, case.out, "test case {:?}", case.name);
        let warnings: Vec<Warning> = case.warnings.iter().map(|(f, v, r)| peer_warning(f, v, r)).collect();
        assert_eq!(translated.warnings, warnings, "test case {:?}", case.name);

        // What the agent gets: Kilo drops invalid Peers.
        let result = peer(&peer_object("", case.spec.clone()));
        match case.valid {
            Ok(()) => assert_eq!(result.map(|t| t.spec), Ok(case.out.clone()), "test case {:?}", case.name),
            Err(reason) => {
                assert_eq!(result, Err(Skipped::peer("", reason)), "test case {:?}", case.name);
            }
        }

        // With a valid key the cases that failed only for the key translate to Kilo's result.
        if case.valid == Err(KEY_LENGTH) {
            let spec = CrdPeerSpec { public_key: foo_key().to_base64(), ..case.spec.clone() };
            let translated = peer(&peer_object("", spec)).unwrap_or_else(|s| panic!("{}: {s:?}", case.name));
            assert_eq!(translated.spec, PeerSpec { public_key: Some(foo_key()), ..case.out }, "{}", case.name);
            assert_eq!(translated.warnings, vec![], "{}", case.name);
        }
    }
}

fn valid_spec() -> CrdPeerSpec {
    CrdPeerSpec { allowed_ips: vec!["10.5.0.1/32".into()], public_key: foo_key().to_base64(), ..CrdPeerSpec::default() }
}

#[test]
fn invalid_peers_are_skipped_with_kilos_messages() {
    let regex_message = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or \
                         '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used \
                         for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
    let long = format!("{}.com", "a".repeat(250));
    let cases: Vec<(CrdPeerSpec, String)> = vec![
        (
            CrdPeerSpec { public_key: "not base64!".into(), ..valid_spec() },
            "WireGuard public key is not base64 encoded: illegal base64 data at input byte 3".into(),
        ),
        (CrdPeerSpec { public_key: "a2V5MQ==".into(), ..valid_spec() }, KEY_LENGTH.into()),
        (
            CrdPeerSpec { allowed_ips: vec!["10.5.0.1/32".into(), "10.6.0.0/33".into()], ..valid_spec() },
            r#"failed to parse "10.6.0.0/33" as a valid IP address: invalid CIDR address: 10.6.0.0/33"#.into(),
        ),
        (
            CrdPeerSpec { endpoint: crd_endpoint("", "10.0.0.1", 0), ..valid_spec() },
            "port must be a valid UDP port number, got 0".into(),
        ),
        (
            CrdPeerSpec { endpoint: crd_endpoint("", "10.0.0.1", 65536), ..valid_spec() },
            "port must be a valid UDP port number, got 65536".into(),
        ),
        (CrdPeerSpec { endpoint: crd_endpoint("Bad_Name", "", 51820), ..valid_spec() }, regex_message.into()),
        (
            CrdPeerSpec { endpoint: crd_endpoint(&format!("-{long}"), "", 51820), ..valid_spec() },
            format!("must be no more than 253 characters; {regex_message}"),
        ),
        (
            CrdPeerSpec { persistent_keepalive: -10, ..valid_spec() },
            "persistent keepalive must be greater than or equal to zero; got -10".into(),
        ),
    ];
    for (spec, reason) in cases {
        assert_eq!(peer(&peer_object("p", spec.clone())), Err(Skipped::peer("p", reason)), "{spec:?}");
    }
}

#[test]
fn valid_peers_with_odd_values() {
    // DNS beats IP; Kilo's API documentation says otherwise, its agent does this.
    let spec = CrdPeerSpec { endpoint: crd_endpoint("vpn.example.com", "10.0.0.1", 51820), ..valid_spec() };
    let translated = peer(&peer_object("p", spec)).unwrap();
    assert_eq!(translated.spec.endpoint.unwrap().dns_name(), Some("vpn.example.com"));

    // An all-zero key passes Kilo's validation; the peer stays but is not ready.
    let zero = "A".repeat(43) + "=";
    let translated = peer(&peer_object("p", CrdPeerSpec { public_key: zero.clone(), ..valid_spec() })).unwrap();
    assert_eq!(translated.spec.public_key, None);
    assert_eq!(
        translated.warnings,
        vec![Warning {
            name: "p".into(),
            ..peer_warning("spec.publicKey", &zero, "the all-zero key is no key; the peer is not ready")
        }]
    );

    // A bad preshared key is ignored, never echoed.
    let translated = peer(&peer_object("p", CrdPeerSpec { preshared_key: "secret".into(), ..valid_spec() })).unwrap();
    assert_eq!(translated.spec.preshared_key, None);
    assert_eq!(translated.warnings.len(), 1);
    assert_eq!(translated.warnings[0].value.as_deref(), Some("<redacted>"));
    assert_eq!(
        translated.warnings[0].reason,
        "not a WireGuard key (illegal base64 data at input byte 4); the peer is configured without a preshared key"
    );

    // WireGuard cannot do more than 65535 s.
    let translated = peer(&peer_object("p", CrdPeerSpec { persistent_keepalive: 70000, ..valid_spec() })).unwrap();
    assert_eq!(translated.spec.persistent_keepalive, 0);
    assert_eq!(translated.warnings[0].reason, "more than 65535 seconds; persistent keepalive off (0)");

    // The name is carried; host bits are kept.
    let spec = CrdPeerSpec { allowed_ips: vec!["10.5.0.1/24".into()], ..valid_spec() };
    let translated = peer(&peer_object("laptop", spec)).unwrap();
    assert_eq!(translated.spec.name, "laptop");
    assert_eq!(translated.spec.allowed_ips, vec![cidr("10.5.0.1/24")]);
}

#[test]
fn failover_capability_and_claim_are_read_and_bad_claims_are_ignored_with_a_warning() {
    let translated = |annotations: &[(&str, &str)]| node(&kube_node("a", annotations, &[], "10.2.1.0/24"), REGION);
    let plain = translated(&[]);
    assert!(!plain.spec.failover_capable && plain.spec.leader_unreachable.is_none());

    let capable = translated(&[
        (annotations::CAPABILITIES, "future-v9, failover-v1"),
        (annotations::LEADER_UNREACHABLE, "node-b"),
    ]);
    assert!(capable.spec.failover_capable);
    assert_eq!(capable.spec.leader_unreachable.as_deref(), Some("node-b"));
    assert!(capable.warnings.is_empty(), "{:?}", capable.warnings);

    let empty = translated(&[(annotations::CAPABILITIES, ""), (annotations::LEADER_UNREACHABLE, "")]);
    assert!(!empty.spec.failover_capable && empty.spec.leader_unreachable.is_none() && empty.warnings.is_empty());

    let bad = translated(&[(annotations::LEADER_UNREACHABLE, "Not_A_Node")]);
    assert_eq!(bad.spec.leader_unreachable, None);
    assert_eq!(bad.warnings.len(), 1);
    assert_eq!(bad.warnings[0].annotation.as_deref(), Some(annotations::LEADER_UNREACHABLE));
    assert!(bad.warnings[0].reason.ends_with("the claim is ignored"), "{}", bad.warnings[0].reason);
}

#[test]
fn the_announcement_round_trips_capability_and_claim() {
    let announcement = mesh_core::backend::LocalAnnouncement {
        hostname: "a".into(),
        failover_capable: true,
        leader_unreachable: Some("b".into()),
        ..Default::default()
    };
    let written = annotations::announcement_annotations(&announcement);
    assert_eq!(written[annotations::CAPABILITIES], "failover-v1");
    assert_eq!(written[annotations::LEADER_UNREACHABLE], "b");
    let pairs: Vec<(&str, &str)> = written.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let read = node(&kube_node("a", &pairs, &[], "10.2.1.0/24"), REGION).spec;
    assert!(read.failover_capable);
    assert_eq!(read.leader_unreachable.as_deref(), Some("b"));

    let quiet = annotations::announcement_annotations(&mesh_core::backend::LocalAnnouncement::default());
    assert_eq!((quiet[annotations::CAPABILITIES].as_str(), quiet[annotations::LEADER_UNREACHABLE].as_str()), ("", ""));
}
