//! The data plane at scale, on the real kernel in a network namespace (needs root; fails
//! loudly without it): applying 10,000 routes (target ≤ 1 s) and a steady-state pass with
//! 10,000 routes present, `observe` + `Plan::between` (target ≤ 50 ms).
//!
//! Run: `cargo bench -p mesh-netlink --bench dataplane` (as root).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net};
use mesh_core::backend::Dataplane;
use mesh_core::{DesiredState, Dev, Key, MAIN_TABLE, Operation, Plan, Route};
use mesh_netlink::{DataplaneConfig, LinuxDataplane, Namespace, WireGuardBackend};

const ROUTES: usize = 10_000;
const NETNS: &str = "kt-nl-bench";

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap_or_else(|error| panic!("cannot run ip: {error}"));
    assert!(status.success(), "ip {} failed", args.join(" "));
}

/// The benchmark's namespace, deleted on drop.
struct Netns;

impl Netns {
    fn new() -> Netns {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the mesh-netlink benchmark needs root (it builds a network namespace); run it as root"
        );
        let _ = Command::new("ip").args(["netns", "del", NETNS]).stderr(Stdio::null()).status();
        ip(&["netns", "add", NETNS]);
        ip(&["-n", NETNS, "link", "add", "ktbn-p", "type", "veth", "peer", "name", "ktbn-q"]);
        ip(&["-n", NETNS, "link", "set", "ktbn-p", "up"]);
        ip(&["-n", NETNS, "link", "set", "ktbn-q", "up"]);
        ip(&["-n", NETNS, "addr", "add", "192.168.80.1/24", "dev", "ktbn-p"]);
        Netns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
    }
}

fn desired() -> DesiredState {
    let mut desired = DesiredState::default();
    for i in 0..ROUTES {
        let dst = IpNet::V4(Ipv4Net::new([10, 64 + (i / 256) as u8, (i % 256) as u8, 0].into(), 24).unwrap());
        let route = Route {
            dst,
            gateway: Some("192.168.80.2".parse().unwrap()),
            dev: Dev::Private,
            src: Some("192.168.80.1".parse().unwrap()),
            table: MAIN_TABLE,
            onlink: true,
        };
        desired.routes.insert(route.key(), route);
    }
    desired
}

fn bench(c: &mut Criterion) {
    let _netns = Netns::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut config = DataplaneConfig::new(Key::from_bytes([7; 32]));
    config.interface = "ktbn0".to_owned();
    config.private_interface = Some("ktbn-p".to_owned());
    config.backend = WireGuardBackend::Userspace;
    config.create_interface = false;
    config.namespace = Namespace::named(NETNS);
    let mut dataplane = runtime.block_on(LinuxDataplane::new(config)).unwrap();
    let desired = desired();
    let empty = runtime.block_on(dataplane.observe()).unwrap();
    let add_all = Plan::between(&empty, &desired);
    assert_eq!(add_all.operations.len(), ROUTES);
    let delete_all =
        Plan { operations: desired.routes.values().cloned().map(Operation::DeleteRoute).collect(), ..Plan::default() };

    let mut group = c.benchmark_group("dataplane");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(8));
    group.bench_function("apply 10000 routes", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                runtime.block_on(dataplane.apply(&delete_all)).unwrap();
                let start = Instant::now();
                runtime.block_on(dataplane.apply(&add_all)).unwrap();
                total += start.elapsed();
            }
            total
        })
    });

    runtime.block_on(dataplane.apply(&add_all)).unwrap();
    group.bench_function("steady observe + between, 10000 routes", |b| {
        b.iter(|| {
            let observed = runtime.block_on(dataplane.observe()).unwrap();
            let plan = Plan::between(&observed, &desired);
            assert!(plan.is_empty());
            plan
        })
    });
    group.finish();
    runtime.block_on(dataplane.clean_up()).unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
