//! Times each stage of the pipeline on one shape, for quick iterations on performance:
//! `cargo run --release -p mesh-benches --example stages [nodes locations peers] [full]`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use mesh_benches::{NOW, cluster, node_name, options};
use mesh_core::{DesiredState, Granularity, ObservedState, Plan, Topology};

fn time<T>(label: &str, iterations: u32, mut f: impl FnMut() -> T) -> Duration {
    let _ = black_box(f());
    let started = Instant::now();
    for _ in 0..iterations {
        black_box(f());
    }
    let per = started.elapsed() / iterations;
    println!("{label:>24}: {per:?}");
    per
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (nodes, locations, peers) = (number(0, 5000), number(1, 100), number(2, 100));
    let granularity = if args.iter().any(|a| a == "full") { Granularity::Full } else { Granularity::Location };
    let snapshot = cluster(nodes, locations, peers, NOW);
    let options = options(&node_name(locations), granularity);
    let topology = Topology::compute(&snapshot, &options).unwrap();
    let iterations = 20;
    time("compute", iterations, || Topology::compute(&snapshot, &options).unwrap());
    time("firewall", iterations, || topology.firewall(&options));
    time("routes", iterations, || topology.routes(&options));
    time("wireguard_peers", iterations, || topology.wireguard_peers());
    time("from_topology", iterations, || DesiredState::from_topology(&topology, &options));
    time("pipeline", iterations, || {
        let topology = Topology::compute(&snapshot, &options).unwrap();
        DesiredState::from_topology(&topology, &options)
    });
    let desired = DesiredState::from_topology(&topology, &options).0;
    let observed = ObservedState::of(desired.clone());
    time("plan/steady", iterations, || Plan::between(&observed, &desired));
}
