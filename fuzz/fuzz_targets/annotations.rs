//! Kilo annotations, whatever their values: translated into a node (never failing), then run
//! through the whole core from the node's own and another node's point of view. The plan built
//! from nothing must reach the desired state.
//!
//! Input: NUL-separated key, value, key, value…; a one-byte key picks a Kilo annotation.
#![no_main]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSpec as KubeNodeSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use libfuzzer_sys::fuzz_target;
use mesh_core::{ClusterSnapshot, DesiredState, Endpoint, Key, NodeSpec, ObservedState, Options, Plan, Topology};
use mesh_kube::annotations::*;

const KNOWN: [&str; 15] = [
    ENDPOINT,
    FORCE_ENDPOINT,
    INTERNAL_IP,
    FORCE_INTERNAL_IP,
    KEY,
    LAST_SEEN,
    LEADER,
    LOCATION,
    PERSISTENT_KEEPALIVE,
    WIREGUARD_IP,
    DISCOVERED_ENDPOINTS,
    ALLOWED_LOCATION_IPS,
    GRANULARITY,
    CNI_COMPATIBILITY_IP,
    DEFAULT_TOPOLOGY_LABEL,
];
const NOW: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let mut annotations = BTreeMap::new();
    let mut parts = data.split(|byte| *byte == 0);
    while let (Some(key), Some(value)) = (parts.next(), parts.next()) {
        let key = match key {
            [index] => KNOWN[usize::from(*index) % KNOWN.len()].to_owned(),
            other => String::from_utf8_lossy(other).into_owned(),
        };
        annotations.insert(key, String::from_utf8_lossy(value).into_owned());
    }
    let pod_cidr = annotations.remove("spec.podCIDR").unwrap_or_else(|| "10.2.9.0/24".to_owned());
    let node = Node {
        metadata: ObjectMeta {
            name: Some("fuzzed".to_owned()),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(KubeNodeSpec { pod_cidr: Some(pod_cidr), ..KubeNodeSpec::default() }),
        status: None,
    };
    let translated = mesh_kube::translate::node(&node, DEFAULT_TOPOLOGY_LABEL);
    for warning in &translated.warnings {
        assert!(warning.value.as_ref().is_none_or(|value| value.len() <= 4 * 200), "a value shown whole");
    }

    let mut fuzzed = translated.spec;
    let other = NodeSpec {
        name: "other".to_owned(),
        location: "elsewhere".to_owned(),
        endpoint: Some(Endpoint::parse("198.51.100.1:51820").unwrap()),
        internal_ip: Some("192.168.77.1/24".parse().unwrap()),
        key: Some(Key::from_bytes([9; 32])),
        pod_subnet: Some("10.2.77.0/24".parse().unwrap()),
        last_seen: Some(NOW),
        ..NodeSpec::default()
    };
    for host in ["other", "fuzzed"] {
        if host == "fuzzed" {
            // As the agent on the fuzzed node sees itself: fresh.
            fuzzed.last_seen = Some(NOW);
        }
        let snapshot = ClusterSnapshot { nodes: vec![fuzzed.clone(), other.clone()], peers: vec![], now: NOW };
        let options = Options::for_host(host);
        let Ok(topology) = Topology::compute(&snapshot, &options) else { continue };
        let _ = topology.node_conf(None, options.port).to_string();
        let (desired, _) = DesiredState::from_topology(&topology, &options);
        let plan = Plan::between(&ObservedState::default(), &desired);
        assert_eq!(plan.apply_to(&Default::default()), desired);
        assert!(Plan::between(&ObservedState::of(desired.clone()), &desired).is_empty());
    }
});
