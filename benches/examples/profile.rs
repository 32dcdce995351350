//! A loop over one stage for `perf record` or `valgrind --tool=callgrind`:
//! `cargo run --release -p mesh-benches --example profile -- STAGE [full] [nodes locations peers] [iterations=N]`
//! where STAGE is compute, desired, pipeline, plan (steady) or plan_changed (one node changed, as in
//! the `plan/one_node_changed` benchmark); the shape defaults to N5000_L100_P100.
//!
//! The timed loop is the function `stage_loop`, so callgrind can count only it:
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*stage_loop*' target/release/examples/profile pipeline iterations=10`.

use std::hint::black_box;

use mesh_benches::{NOW, change_one_node, cluster, node_name, options};
use mesh_core::{ClusterSnapshot, DesiredState, Granularity, ObservedState, Options, Plan, Topology};

fn desired_of(snapshot: &ClusterSnapshot, options: &Options) -> DesiredState {
    DesiredState::from_topology(&Topology::compute(snapshot, options).unwrap(), options).0
}

// No closures in here: callgrind's `--toggle-collect='*stage_loop*'` would match their names too
// and stop counting inside them.
#[inline(never)]
fn stage_loop(
    stage: &str,
    iterations: usize,
    snapshot: &ClusterSnapshot,
    changed: &ClusterSnapshot,
    options: &Options,
) {
    let topology = Topology::compute(snapshot, options).unwrap();
    let desired = desired_of(snapshot, options);
    let observed = ObservedState::of(desired.clone());
    let desired_after_change = desired_of(changed, options);
    for _ in 0..iterations {
        match stage {
            "compute" => drop(black_box(Topology::compute(black_box(snapshot), options))),
            "plan" => drop(black_box(Plan::between(black_box(&observed), &desired))),
            "plan_changed" => drop(black_box(Plan::between(black_box(&observed), &desired_after_change))),
            "pipeline" => {
                let topology = Topology::compute(black_box(snapshot), options).unwrap();
                drop(black_box(DesiredState::from_topology(&topology, options)));
            }
            _ => drop(black_box(DesiredState::from_topology(black_box(&topology), options))),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stage = args.first().cloned().unwrap_or_else(|| "desired".to_owned());
    let full = args.iter().any(|a| a == "full");
    let iterations = args.iter().find_map(|a| a.strip_prefix("iterations=")?.parse().ok()).unwrap_or(300);
    let numbers: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let (nodes, locations, peers) = match numbers[..] {
        [nodes, locations, peers, ..] => (nodes, locations, peers),
        _ => (5000, 100, 100),
    };
    let granularity = if full { Granularity::Full } else { Granularity::Location };
    let snapshot = cluster(nodes, locations, peers, NOW);
    let options = options(&node_name(locations), granularity);
    let mut changed = snapshot.clone();
    change_one_node(&mut changed, locations);
    stage_loop(&stage, iterations, &snapshot, &changed, &options);
}
