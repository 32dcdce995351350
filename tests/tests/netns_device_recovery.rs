//! The WireGuard device comes back: two real `mesh-agent` processes (file backend) on
//! `wireguard-go` in network namespaces; node A's `wireguard-go` is killed, so its interface and
//! every route through it vanish and A's passes fail and back off; after A has backed off for a
//! while, `wireguard-go` is started again (as a restarted sidecar container would be) and A must
//! restore its interface, peers and routes within seconds of the device reappearing, not when
//! its grown backoff ends. Then A's route to B's pods is deleted by hand (`ip route del`), and
//! A must put it back within seconds, not at its next resync.
//!
//! ```text
//!   ns A                                  ns B
//!   kdrXa (wireguard-go) 10.4.0.1/16      kdrXb (wireguard-go) 10.4.0.2/16
//!   veth 172.31.251.1/24 ───────────────  veth 172.31.251.2/24
//!   kube-bridge 10.42.1.1/24 (pod)        kube-bridge 10.42.2.1/24 (pod)
//! ```
//!
//! Both agents run with Kilo's 30 s resync period, so only the agent's own reaction to the
//! device or route can explain a recovery within seconds. The measured recovery times are
//! printed.
//!
//! Needs root, `ip`, `wireguard-go`, `wg`, `ping`, `bash` and `/dev/net/tun`; fails (never skips)
//! without them. Everything is removed when the test ends, also on failure or panic.

#[allow(dead_code, reason = "the helpers are shared with e2e.rs, kernel.rs and container.rs, which use others")]
#[path = "e2e/world.rs"]
mod world;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use world::{Outcome, World, in_ns, poll, progress, run};

/// The agents' resync period: Kilo's default, so that a timer cannot hide a slow reaction.
const RESYNC: Duration = Duration::from_secs(30);
/// How long node A's device stays gone: long enough for its retries to back off past 8 s.
const DEVICE_GONE: Duration = Duration::from_secs(16);
/// The limit on restoring peers and routes after the device reappears (measured: well under 1 s).
const RESTORE_LIMIT: Duration = Duration::from_secs(5);
const METRICS_PORT: u16 = 9101;

struct Node {
    name: &'static str,
    namespace: String,
    interface: String,
    address: &'static str,
    pod_cidr: &'static str,
    pod_address: &'static str,
}

impl Node {
    fn wireguard_label(&self) -> String {
        format!("wg-{}", self.name)
    }

    fn socket(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/wireguard/{}.sock", self.interface))
    }
}

fn prerequisites() {
    assert!(world::is_root(), "this test needs root (network namespaces, TUN devices, routes)");
    assert!(Path::new("/dev/net/tun").exists(), "this test needs /dev/net/tun");
    for tool in ["ip", "wireguard-go", "wg", "ping", "bash"] {
        assert!(world::has_tool(tool), "this test needs `{tool}` on the PATH (scripts/test-deps.sh installs it)");
    }
}

/// GET `path` from the agent in `namespace`.
fn http_get(namespace: &str, path: &str) -> Outcome<String> {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{METRICS_PORT} && printf 'GET {path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3 && cat <&3"
    );
    run(Command::new("ip").args(["netns", "exec", namespace, "timeout", "5", "bash", "-c", &script]))
}

fn start_wireguard(world: &mut World, node: &Node) -> Outcome {
    let _ = std::fs::remove_file(node.socket());
    world.spawn_with_env(
        &node.wireguard_label(),
        &node.namespace,
        Path::new("wireguard-go"),
        &["-f".to_owned(), node.interface.clone()],
        &[("WG_PROCESS_FOREGROUND", "1")],
    )?;
    let link = format!("ip -n {} link show {}", node.namespace, node.interface);
    poll(&format!("{}'s device and UAPI socket", node.name), Duration::from_secs(10), Duration::from_millis(10), || {
        world::sh(&link)?;
        if node.socket().exists() { Ok(()) } else { Err(format!("{} missing", node.socket().display())) }
    })
}

/// Whether `node` holds `peer_key` as a WireGuard peer and routes `remote`'s pod CIDR into its
/// tunnel.
fn restored(node: &Node, peer_key: &str, remote: &Node) -> Outcome {
    let peers = in_ns(&node.namespace, &format!("wg show {} peers", node.interface))?;
    if !peers.lines().any(|line| line.trim() == peer_key) {
        return Err(format!("{} has peers {peers:?}, not {peer_key}", node.name));
    }
    let routes = in_ns(&node.namespace, "ip route show proto 107")?;
    let wanted = format!("{} via 10.4.0.2 dev {}", remote.pod_cidr, node.interface);
    if !routes.contains(&wanted) {
        return Err(format!("{} has no route {wanted}: {routes:?}", node.name));
    }
    Ok(())
}

fn ping(from: &Node, to: &Node) -> Outcome {
    in_ns(&from.namespace, &format!("ping -c1 -W1 {}", to.pod_address)).map(drop)
}

fn apply_errors(node: &Node) -> Outcome<f64> {
    Ok(world::series(&http_get(&node.namespace, "/metrics")?, "kilo_errors_total{event=\"apply\"}"))
}

/// The kernel's changes the agent reacted to: a repair within seconds could also come from a
/// timer (a resync, a check-in), so each repair must show up here too.
fn link_changes(node: &Node) -> Outcome<f64> {
    Ok(world::series(&http_get(&node.namespace, "/metrics")?, "mesh_link_changes_total"))
}

fn ensure_noticed(node: &Node, before: f64, what: &str) -> Outcome {
    let after = link_changes(node)?;
    if after > before {
        Ok(())
    } else {
        Err(format!("{} repaired {what} without noticing it (mesh_link_changes_total {before} -> {after})", node.name))
    }
}

#[test]
fn netns_agent_restores_the_wireguard_device_and_a_deleted_route_within_seconds_root() {
    prerequisites();
    World::remove_abandoned();
    let id = world::run_id();
    let mut world = World::new(&format!("dr{id}")).expect("a run directory");
    let result = scenario(&mut world, &id);
    if let Err(error) = &result {
        world::print_uncaptured(&world.log_tails(40));
        panic!("{error}");
    }
}

fn scenario(world: &mut World, id: &str) -> Outcome {
    let nodes = [
        Node {
            name: "a",
            namespace: format!("kt-dr{id}a"),
            interface: format!("kdr{id}a"),
            address: "172.31.251.1/24",
            pod_cidr: "10.42.1.0/24",
            pod_address: "10.42.1.1",
        },
        Node {
            name: "b",
            namespace: format!("kt-dr{id}b"),
            interface: format!("kdr{id}b"),
            address: "172.31.251.2/24",
            pod_cidr: "10.42.2.0/24",
            pod_address: "10.42.2.1",
        },
    ];
    let cluster = world.dir.join("cluster");
    std::fs::create_dir_all(cluster.join("nodes")).map_err(|error| format!("create the cluster dir: {error}"))?;
    for node in &nodes {
        world.add_namespace(&node.namespace)?;
    }
    world::veth("kdrv", &nodes[0].namespace, "kdrv", &nodes[1].namespace)?;
    for node in &nodes {
        let ns = &node.namespace;
        in_ns(
            ns,
            &format!(
                "ip addr add {} dev kdrv && ip link set kdrv up && ip link add kube-bridge type bridge && \
                 ip addr add {}/24 dev kube-bridge && ip link set kube-bridge up",
                node.address, node.pod_address
            ),
        )?;
        world.own_file(node.socket());
        start_wireguard(world, node)?;
        let location = format!("loc-{}", node.name);
        world::write_file(
            &cluster.join("nodes").join(format!("{}.yaml", node.name)),
            &world::node_yaml(node.name, &location, false, None, node.pod_cidr),
        )?;
    }
    let agent = world::agent_binary()?;
    for node in &nodes {
        let key = world.dir.join(format!("{}.key", node.name));
        let args = world::file_backend_agent_args(
            &cluster,
            node.name,
            &node.interface,
            &key,
            METRICS_PORT,
            RESYNC,
            "172.31.251.0/24",
        );
        world.spawn(&format!("agent-{}", node.name), &node.namespace, &agent, &args)?;
    }
    let [a, b] = &nodes;
    poll("A to reach B's pod through the mesh", Duration::from_secs(60), Duration::from_millis(200), || ping(a, b))?;
    let b_key = world::annotations_in(&cluster.join("nodes/b.yaml"))?
        .remove("kilo.squat.ai/key")
        .ok_or("b published no key")?;
    restored(a, &b_key, b)?;
    progress("the mesh is up; killing A's wireguard-go");

    // The device goes: A's passes fail and back off.
    let errors_before = apply_errors(a)?;
    world.signal(&a.wireguard_label(), Signal::SIGKILL)?;
    world.wait_exit(&a.wireguard_label(), Duration::from_secs(5))?;
    std::thread::sleep(DEVICE_GONE);
    let failed_passes = apply_errors(a)? - errors_before;
    if failed_passes < 3.0 {
        return Err(format!("A failed {failed_passes} passes without its device; expected it to retry and back off"));
    }
    if ping(a, b).is_ok() {
        return Err("A reaches B's pod without its WireGuard device".into());
    }

    // The device comes back, empty: no key, no peer, no address, down.
    progress(&format!("A failed {failed_passes} passes; starting its wireguard-go again"));
    let changes_before = link_changes(a)?;
    start_wireguard(world, a)?;
    let back = Instant::now();
    poll("A's peers and routes", RESTORE_LIMIT, Duration::from_millis(20), || restored(a, &b_key, b))?;
    let configured = back.elapsed();
    poll("A to reach B's pod again", RESTORE_LIMIT, Duration::from_millis(20), || ping(a, b))?;
    let reachable = back.elapsed();
    ensure_noticed(a, changes_before, "its device")?;
    progress(&format!(
        "device back: peers and routes restored after {:.2} s, B's pod reachable after {:.2} s",
        configured.as_secs_f64(),
        reachable.as_secs_f64()
    ));
    let status = http_get(&a.namespace, "/health")?;
    if !status.starts_with("HTTP/1.0 200") && !status.starts_with("HTTP/1.1 200") {
        return Err(format!("A is not healthy after the device returned: {status}"));
    }

    // Someone deletes the mesh's route to B's pods (`ip` fails unless it deleted one).
    let changes_before = link_changes(a)?;
    in_ns(&a.namespace, &format!("ip route del {} proto 107", b.pod_cidr))?;
    let deleted = Instant::now();
    poll("A's route to B's pods again", RESTORE_LIMIT, Duration::from_millis(20), || restored(a, &b_key, b))?;
    let route_back = deleted.elapsed();
    ensure_noticed(a, changes_before, "the deleted route")?;
    poll("A to reach B's pod again", RESTORE_LIMIT, Duration::from_millis(20), || ping(a, b))?;
    progress(&format!("route deleted by hand: back after {:.2} s", route_back.as_secs_f64()));
    Ok(())
}
