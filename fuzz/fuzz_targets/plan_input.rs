//! The input of `plan`, `showconf` and `graph`: any text, read as YAML or JSON (Lists, streams,
//! single objects). Errors are values, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_agent::cli::input::Objects;
use mesh_kube::annotations::DEFAULT_TOPOLOGY_LABEL;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(objects) = Objects::from_text("fuzz", text) {
        for node in &objects.nodes {
            let _ = mesh_kube::translate::node(node, DEFAULT_TOPOLOGY_LABEL);
        }
        for peer in &objects.peers {
            let _ = mesh_kube::translate::peer(peer);
        }
    }
});
