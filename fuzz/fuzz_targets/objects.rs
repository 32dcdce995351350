//! Node and Peer objects as JSON, whatever their shape: deserialized as the API server's
//! clients would, then translated (never failing) and validated.
#![no_main]

use k8s_openapi::api::core::v1::Node;
use libfuzzer_sys::fuzz_target;
use mesh_kube::annotations::DEFAULT_TOPOLOGY_LABEL;
use mesh_kube::crd::Peer;

fuzz_target!(|data: &[u8]| {
    if let Ok(node) = serde_json::from_slice::<Node>(data) {
        let translated = mesh_kube::translate::node(&node, DEFAULT_TOPOLOGY_LABEL);
        let _ = translated.spec.readiness(1_700_000_000);
    }
    if let Ok(peer) = serde_json::from_slice::<Peer>(data) {
        let valid = mesh_kube::translate::validate_peer(&peer.spec).is_ok();
        if let Ok(translated) = mesh_kube::translate::peer(&peer) {
            assert!(valid, "a Peer that fails validation was translated");
            let _ = translated.spec.readiness();
        }
    }
});
