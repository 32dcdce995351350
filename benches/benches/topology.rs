//! Topology benchmarks on the synthetic clusters of `mesh_benches` (the ones Kilo was timed with).
//!
//! - `pipeline/<shape>/{leader,non_leader}`: readiness filter, topology and complete desired state
//!   (`Topology::compute` then `DesiredState::from_topology`) for the leader host (node index L)
//!   and for `node-00000`;
//! - `plan/steady/<shape>`: `Plan::between` of the leader host's desired state and itself;
//! - `plan/one_node_changed/<shape>`: `Plan::between` of the leader host's desired state before
//!   and after one remote node changed its endpoint and pod subnet.
//!
//! Run with `cargo bench -p mesh-benches --bench topology`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main, measurement::WallTime};
use mesh_benches::{SHAPES, Shape, change_one_node};
use mesh_core::{ClusterSnapshot, DesiredState, ObservedState, Options, Plan, Topology};

/// Fewer samples for the big clusters, so the whole run takes a few minutes.
fn configure(group: &mut BenchmarkGroup<'_, WallTime>, shape: &Shape) {
    if shape.nodes >= 1000 {
        group.sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    } else {
        group.sample_size(50).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    }
}

fn desired(snapshot: &ClusterSnapshot, options: &Options) -> DesiredState {
    let topology = Topology::compute(snapshot, options).expect("generated cluster computes");
    DesiredState::from_topology(&topology, options).0
}

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    for shape in &SHAPES {
        configure(&mut group, shape);
        let snapshot = shape.cluster();
        for (role, host) in [("leader", shape.leader_host()), ("non_leader", shape.non_leader_host())] {
            let options = shape.options(&host);
            group.bench_function(BenchmarkId::new(shape.name(), role), |b| {
                b.iter(|| {
                    let topology = Topology::compute(black_box(&snapshot), black_box(&options))
                        .expect("generated cluster computes");
                    black_box(DesiredState::from_topology(&topology, &options))
                })
            });
        }
    }
    group.finish();
}

fn plan(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan");
    for shape in &SHAPES {
        configure(&mut group, shape);
        let options = shape.options(&shape.leader_host());
        let mut snapshot = shape.cluster();
        let before = desired(&snapshot, &options);

        let observed = ObservedState::of(before.clone());
        group.bench_function(BenchmarkId::new("steady", shape.name()), |b| {
            b.iter(|| black_box(Plan::between(black_box(&observed), black_box(&before))))
        });

        change_one_node(&mut snapshot, shape.locations);
        let after = desired(&snapshot, &options);
        group.bench_function(BenchmarkId::new("one_node_changed", shape.name()), |b| {
            b.iter(|| black_box(Plan::between(black_box(&observed), black_box(&after))))
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline, plan);
criterion_main!(benches);
