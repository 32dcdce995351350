//! A loop over one stage for `perf record`: `cargo run --release -p mesh-benches --example profile -- STAGE [full]`
//! where STAGE is compute, desired or plan.

use std::hint::black_box;

use mesh_benches::{NOW, cluster, node_name, options};
use mesh_core::{DesiredState, Granularity, ObservedState, Plan, Topology};

fn main() {
    let stage = std::env::args().nth(1).unwrap_or_else(|| "desired".to_owned());
    let full = std::env::args().any(|a| a == "full");
    let (granularity, nodes, locations, peers) =
        if full { (Granularity::Full, 5000, 100, 100) } else { (Granularity::Location, 5000, 100, 100) };
    let snapshot = cluster(nodes, locations, peers, NOW);
    let options = options(&node_name(locations), granularity);
    let topology = Topology::compute(&snapshot, &options).unwrap();
    let desired = DesiredState::from_topology(&topology, &options).0;
    let observed = ObservedState::of(desired.clone());
    for _ in 0..300 {
        match stage.as_str() {
            "compute" => drop(black_box(Topology::compute(&snapshot, &options))),
            "plan" => drop(black_box(Plan::between(&observed, &desired))),
            _ => drop(black_box(DesiredState::from_topology(&topology, &options))),
        }
    }
}
