//! Fail static, end to end: when the agent loses sight of the cluster for three minutes, every
//! WireGuard peer and every route of the mesh stays, and within five seconds of the cluster's
//! return the agent sees it again and applies what changed meanwhile. Real `mesh-agent`
//! processes, real `wireguard-go`, real kernel routing, in network namespaces.
//!
//! The one test runs three worlds at the same time, each on its own thread (about 3.5 minutes in
//! all), and prints a summary table (scenario, result, time, figures):
//!
//! - **The cluster directory vanishes** (file backend): nodes a1 and a2 (location loc-a, a1
//!   leads) and b1 (loc-b) and a Peer, with every pod path answering. The directory is renamed
//!   away for [`OUTAGE`]; every [`CHECK_EVERY`] each node must hold exactly the WireGuard peers
//!   (with their allowed IPs) and the proto-107 and table-1107 routes it held when converged,
//!   every pod path must answer, and every agent must say it cannot see the cluster
//!   (`mesh_cluster_visible 0`, `/status` `cluster.visible` false). Then the directory comes back
//!   with one more Peer: within [`RECOVERY_LIMIT`] every agent sees the cluster again and both
//!   leaders hold the new Peer.
//! - **The API server answers 500** and **the API server refuses connections** (Kubernetes
//!   backend): one agent (`k1`, location loc-a) against the fake API server of
//!   [`mesh_tests::fake_api`] on 127.0.0.1 inside its namespace, serving Nodes and Peers (list
//!   and watch) and taking the agent's heartbeats. Its WireGuard peers are a remote node `k2`
//!   (loc-b, with a heartbeat the test publishes as k2's agent would) and a Peer; they need not
//!   answer for the peers and routes to exist. The server fails for [`OUTAGE`] (every request
//!   answered 500, or nothing listening), with the same checks; then it serves again with one
//!   more Peer, and within [`RECOVERY_LIMIT`] the agent sees the cluster, holds the new Peer and
//!   has published its heartbeat.
//!
//! Before fail static, every peer was removed 60 s into such an outage (readiness judged against
//! a heartbeat that could not be refreshed), and recovery took about 30 s.
//!
//! Run alone with `cargo test -p mesh-tests --test fail_static`. Needs root, `ip`,
//! `wireguard-go`, `wg`, `iptables`, `ping`, `bash` and `/dev/net/tun`; fails (never skips)
//! without them. Everything is removed when a test ends, also on failure or panic (see
//! `e2e/world.rs`); `KTE_KEEP_DIR=1` keeps the run directories with every process's log.

#[allow(dead_code, reason = "the helpers are shared with e2e.rs and kernel.rs, which use others")]
#[path = "e2e/world.rs"]
mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mesh_netlink::Namespace;
use mesh_tests::fake_api::{FakeApiServer, Mode};
use serde_json::{Value, json};
use world::{Outcome, Probe, Row, World, in_ns, poll, progress, reach, run, unix_now};

/// How long the cluster stays out of sight: the three minutes.
const OUTAGE: Duration = Duration::from_secs(180);
/// How often the data plane is compared with the converged one during the outage.
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// From the cluster's return until the agents see it and have applied the change: reads are
/// retried every 4 to 8 s during the outage, then a pass and a heartbeat follow (measured
/// 0.3–5.8 s); the margin is for three worlds on two loaded cores.
const RECOVERY_LIMIT: Duration = Duration::from_secs(15);
/// How long after the recovery the converged peers and routes are watched once more: several
/// resync periods, in which every node publishes its heartbeat again.
const AFTER_RECOVERY: Duration = Duration::from_secs(10);
/// `--resync-period` of every agent.
const RESYNC: Duration = Duration::from_secs(1);
/// Where every agent serves /metrics and /status, inside its own namespace.
const METRICS_PORT: u16 = 1107;
/// The Peer present from the start.
const PEER_IP: &str = "10.5.0.1/32";
/// The Peer added during the outage: the change the agents must apply on recovery.
const LATE_PEER_IP: &str = "10.5.0.2/32";

/// One agent of a world: its node, namespace and WireGuard interface.
#[derive(Clone, Debug)]
struct Agent {
    node: &'static str,
    namespace: String,
    interface: String,
}

/// What one node's data plane holds of the mesh: its WireGuard peers (by name, with allowed
/// IPs) and its proto-107 and table-1107 routes, one line each.
fn mesh_state(agent: &Agent, names: &BTreeMap<String, String>) -> Outcome<BTreeSet<String>> {
    let mut state = BTreeSet::new();
    for line in run(Command::new("wg").args(["show", &agent.interface, "allowed-ips"]))?.lines() {
        let (key, allowed) = line.split_once('\t').unwrap_or((line, ""));
        let name = names.get(key).map_or_else(|| format!("unknown key {key}"), String::clone);
        let mut allowed: Vec<&str> = allowed.split_whitespace().collect();
        allowed.sort_unstable();
        state.insert(format!("peer {name} allowed-ips {}", allowed.join(",")));
    }
    let routes = in_ns(&agent.namespace, "ip -4 route show table all; ip -6 route show table all")?;
    for line in routes.lines().filter(|line| line.contains("proto 107") || line.contains("table 1107")) {
        state.insert(format!("route {}", line.trim()));
    }
    Ok(state)
}

/// Every agent's [`mesh_state`].
fn mesh_states(
    agents: &[Agent],
    names: &BTreeMap<String, String>,
) -> Outcome<BTreeMap<&'static str, BTreeSet<String>>> {
    agents.iter().map(|agent| Ok((agent.node, mesh_state(agent, names)?))).collect()
}

/// The mesh states once they hold still for two resync periods (a converged mesh may still be
/// settling endpoints).
fn settled_states(
    agents: &[Agent],
    names: &BTreeMap<String, String>,
) -> Outcome<BTreeMap<&'static str, BTreeSet<String>>> {
    poll("the data plane to hold still", Duration::from_secs(30), Duration::ZERO, || {
        let before = mesh_states(agents, names)?;
        std::thread::sleep(RESYNC * 2);
        let after = mesh_states(agents, names)?;
        if before == after { Ok(after) } else { Err(format!("changed from {before:?} to {after:?}")) }
    })
}

/// `mesh_cluster_visible` of `agent` (an error when the series is missing).
fn cluster_visible(agent: &Agent) -> Outcome<f64> {
    let metrics = world::http_get(&agent.namespace, METRICS_PORT, "/metrics")?;
    if !metrics.lines().any(|line| line.starts_with("mesh_cluster_visible ")) {
        return Err(format!("{} serves no mesh_cluster_visible", agent.node));
    }
    Ok(world::series(&metrics, "mesh_cluster_visible"))
}

/// `cluster` of `agent`'s `/status`.
fn status_cluster(agent: &Agent) -> Outcome<Value> {
    let response = world::http_get(&agent.namespace, METRICS_PORT, "/status")?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let status: Value = serde_json::from_str(body).map_err(|error| format!("/status of {}: {error}", agent.node))?;
    Ok(status["cluster"].clone())
}

/// Every agent says it sees the cluster (`true`) or that it does not and since when (`false`).
fn check_visibility(agents: &[Agent], visible: bool) -> Outcome {
    for agent in agents {
        let metric = cluster_visible(agent)?;
        let cluster = status_cluster(agent)?;
        let says = cluster["visible"].as_bool();
        if metric != f64::from(u8::from(visible)) || says != Some(visible) || cluster["lost_since"].is_i64() == visible
        {
            return Err(format!("{}: mesh_cluster_visible {metric}, /status cluster {cluster}", agent.node));
        }
    }
    Ok(())
}

/// `node: N peers, M routes` for each node.
fn summarize(states: &BTreeMap<&'static str, BTreeSet<String>>) -> String {
    let count = |state: &BTreeSet<String>, prefix: &str| state.iter().filter(|line| line.starts_with(prefix)).count();
    let nodes: Vec<String> = states
        .iter()
        .map(|(node, state)| format!("{node}: {} peers, {} routes", count(state, "peer "), count(state, "route ")))
        .collect();
    nodes.join("; ")
}

/// The differences between `now` and `then`, node by node, in words.
fn differences(
    now: &BTreeMap<&'static str, BTreeSet<String>>,
    then: &BTreeMap<&'static str, BTreeSet<String>>,
) -> Vec<String> {
    let mut differences = Vec::new();
    for (node, held) in then {
        let current = now.get(node).cloned().unwrap_or_default();
        let lost: Vec<&String> = held.difference(&current).collect();
        let gained: Vec<&String> = current.difference(held).collect();
        if !lost.is_empty() || !gained.is_empty() {
            differences.push(format!("{node} lost {lost:?}, gained {gained:?}"));
        }
    }
    differences
}

/// The outage, watched: every [`CHECK_EVERY`] until [`OUTAGE`] has passed since `started`,
/// every node holds exactly its `converged` state, every agent says it cannot see the cluster,
/// and every probe answers. Returns what was checked.
fn hold_through_outage(
    agents: &[Agent],
    names: &BTreeMap<String, String>,
    converged: &BTreeMap<&'static str, BTreeSet<String>>,
    probes: &[Probe],
    started: Instant,
    label: &str,
) -> Outcome<String> {
    let mut rounds = 0u32;
    loop {
        let next = started + CHECK_EVERY * (rounds + 1);
        std::thread::sleep(next.min(started + OUTAGE).saturating_duration_since(Instant::now()));
        let at = started.elapsed().as_secs_f64();
        let differences = differences(&mesh_states(agents, names)?, converged);
        if !differences.is_empty() {
            return Err(format!("{at:.0}s into the outage the data plane changed: {}", differences.join("; ")));
        }
        check_visibility(agents, false).map_err(|error| format!("{at:.0}s into the outage: {error}"))?;
        if !probes.is_empty() {
            reach(probes, Duration::from_secs(5)).map_err(|error| format!("{at:.0}s into the outage: {error}"))?;
        }
        rounds += 1;
        progress(&format!("{label}: {at:.0}s into the outage, every peer and route held ({rounds} checks)"));
        if started.elapsed() >= OUTAGE {
            let held = converged.values().map(BTreeSet::len).sum::<usize>();
            return Ok(format!(
                "{held} peers and routes on {} node(s) held through {:.0}s ({rounds} checks{})",
                agents.len(),
                started.elapsed().as_secs_f64(),
                if probes.is_empty() {
                    String::new()
                } else {
                    format!(", {} pod paths answering each time", probes.len())
                }
            ));
        }
    }
}

/// From `back` (the cluster's return): how long until every agent sees the cluster, and until
/// `applied` holds; both within [`RECOVERY_LIMIT`].
fn recovery(agents: &[Agent], back: Instant, applied: impl Fn() -> Outcome) -> Outcome<(Duration, Duration)> {
    let (mut visible_after, mut applied_after) = (None, None);
    let mut last_error = String::new();
    while back.elapsed() < RECOVERY_LIMIT * 6 {
        if visible_after.is_none() {
            match agents.iter().map(cluster_visible).collect::<Outcome<Vec<f64>>>() {
                Ok(values) if values.iter().all(|value| *value == 1.0) => visible_after = Some(back.elapsed()),
                Ok(values) => last_error = format!("mesh_cluster_visible {values:?}"),
                Err(error) => last_error = error,
            }
        }
        if applied_after.is_none() {
            match applied() {
                Ok(()) => applied_after = Some(back.elapsed()),
                Err(error) => last_error = error,
            }
        }
        if let (Some(visible), Some(applied)) = (visible_after, applied_after) {
            if visible.max(applied) > RECOVERY_LIMIT {
                return Err(format!(
                    "recovery too slow: cluster seen after {:.1}s, change applied after {:.1}s (limit {}s)",
                    visible.as_secs_f64(),
                    applied.as_secs_f64(),
                    RECOVERY_LIMIT.as_secs()
                ));
            }
            return Ok((visible, applied));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "no recovery {:.0}s after the cluster came back (seen after {visible_after:?}, change applied after \
         {applied_after:?}): {last_error}",
        back.elapsed().as_secs_f64()
    ))
}

/// For [`AFTER_RECOVERY`] after the recovery, every node still holds all it held when converged
/// (it may hold more: the change): the nodes that heartbeat again stay in the mesh.
fn keep_after_recovery(
    agents: &[Agent],
    names: &BTreeMap<String, String>,
    converged: &BTreeMap<&'static str, BTreeSet<String>>,
) -> Outcome {
    let recovered = Instant::now();
    while recovered.elapsed() < AFTER_RECOVERY {
        let now = mesh_states(agents, names)?;
        let lost: Vec<String> = converged
            .iter()
            .filter_map(|(node, held)| {
                let missing: Vec<&String> = held.difference(&now[node]).collect();
                (!missing.is_empty()).then(|| format!("{node} lost {missing:?}"))
            })
            .collect();
        if !lost.is_empty() {
            return Err(format!("{:.1}s after the recovery: {}", recovered.elapsed().as_secs_f64(), lost.join("; ")));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// A WireGuard key pair: (private, public).
fn key_pair() -> Outcome<(String, String)> {
    let private = run(Command::new("wg").arg("genkey"))?.trim().to_owned();
    let public = world::sh(&format!("echo '{private}' | wg pubkey"))?.trim().to_owned();
    Ok((private, public))
}

/// Whether `agent` holds a WireGuard peer with `key` and exactly `allowed` as allowed IPs.
fn holds_peer(agent: &Agent, key: &str, allowed: &str) -> Outcome {
    let dump = run(Command::new("wg").args(["show", &agent.interface, "allowed-ips"]))?;
    if dump.lines().any(|line| line.split_once('\t') == Some((key, allowed))) {
        Ok(())
    } else {
        Err(format!("{} holds no peer {key} with {allowed}: {dump:?}", agent.node))
    }
}

/// Checks the prerequisites and removes what killed runs left behind; the `mesh-agent` binary.
fn prerequisites() -> PathBuf {
    assert!(world::is_root(), "this test needs root (network namespaces, WireGuard, iptables); run it as root");
    for tool in ["ip", "wireguard-go", "wg", "iptables", "ping", "bash", "timeout"] {
        assert!(
            world::has_tool(tool),
            "this test needs `{tool}`: apt-get install -y wireguard-tools wireguard-go iptables iproute2 iputils-ping"
        );
    }
    assert!(Path::new("/dev/net/tun").exists(), "this test needs /dev/net/tun (wireguard-go creates TUN devices)");
    std::fs::create_dir_all("/var/run/wireguard").expect("create /var/run/wireguard");
    let abandoned = World::remove_abandoned();
    if abandoned > 0 {
        progress(&format!("removed {abandoned} world(s) that killed runs left behind"));
    }
    world::agent_binary().unwrap_or_else(|error| panic!("{error}"))
}

/// Runs `body` in a fresh world named after `suffix` (removed afterwards, also on panic): its
/// summary row, and the processes' logs if it failed.
fn run_scenario(scenario: &str, suffix: char, body: impl FnOnce(&mut World) -> Outcome<String>) -> (Row, String) {
    let mut world = World::new(&format!("{}{suffix}", world::run_id())).expect("a run directory");
    let mut rows = Vec::new();
    world::step(&mut rows, scenario, || body(&mut world));
    let row = rows.pop().expect("one row");
    let logs = if row.result.is_err() { world.log_tails(60) } else { String::new() };
    (row, logs)
}

// ----- the cluster directory vanishes (file backend) -----

/// A node of the file-backend world.
struct FileNode {
    name: &'static str,
    location: world::Location,
    private: &'static str,
    internet: &'static str,
    pod_cidr: &'static str,
    pod_ip: &'static str,
    leader: bool,
}

const FILE_NODES: [FileNode; 3] = [
    FileNode {
        name: "a1",
        location: world::LOC_A,
        private: "192.168.10.1/24",
        internet: "198.51.100.11/24",
        pod_cidr: "10.42.1.0/24",
        pod_ip: "10.42.1.1",
        leader: true,
    },
    FileNode {
        name: "a2",
        location: world::LOC_A,
        private: "192.168.10.2/24",
        internet: "198.51.100.12/24",
        pod_cidr: "10.42.2.0/24",
        pod_ip: "10.42.2.1",
        leader: false,
    },
    FileNode {
        name: "b1",
        location: world::LOC_B,
        private: "192.168.20.1/24",
        internet: "198.51.100.21/24",
        pod_cidr: "10.42.3.0/24",
        pod_ip: "10.42.3.1",
        leader: true,
    },
];

/// The WireGuard peers each node holds in `location` granularity (names; a2 follows a1).
fn file_expected_peers(node: &str) -> BTreeSet<String> {
    let peers: &[&str] = match node {
        "a1" => &["b1", "laptop"],
        "b1" => &["a1", "laptop"],
        _ => &[],
    };
    peers.iter().map(|peer| (*peer).to_owned()).collect()
}

fn peer_yaml(name: &str, public_key: &str, allowed: &str) -> String {
    format!(
        "apiVersion: kilo.squat.ai/v1alpha1\nkind: Peer\nmetadata:\n  name: {name}\nspec:\n  allowedIPs:\n  - {allowed}\n  \
         publicKey: {public_key}\n  persistentKeepalive: 10\n"
    )
}

fn cluster_directory_vanishes(world: &mut World, agent_binary: &Path) -> Outcome<String> {
    let id = world.id.clone();
    let ns = |name: &str| format!("kte{id}-{name}");
    let agents: Vec<Agent> = FILE_NODES
        .iter()
        .map(|node| Agent { node: node.name, namespace: ns(node.name), interface: format!("kte{id}{}", node.name) })
        .collect();
    let fabric = ns("fabric");
    world.add_namespace(&fabric)?;
    in_ns(&fabric, "for bridge in bra brb brn; do ip link add $bridge type bridge; ip link set $bridge up; done")?;
    for (node, agent) in FILE_NODES.iter().zip(&agents) {
        world.add_namespace(&agent.namespace)?;
        world::veth(&format!("{}l", node.name), &fabric, "loc0", &agent.namespace)?;
        world::veth(&format!("{}i", node.name), &fabric, "inet0", &agent.namespace)?;
        let bridge = node.location.bridge.ok_or("a bridged location")?;
        in_ns(&fabric, &format!("ip link set {0}l master {bridge} up; ip link set {0}i master brn up", node.name))?;
        in_ns(
            &agent.namespace,
            &format!(
                "echo 1 > /proc/sys/net/ipv4/ip_forward; ip addr add {} dev loc0; ip link set loc0 up; \
                 ip addr add {} dev inet0; ip link set inet0 up; ip link add kube-bridge type bridge; \
                 ip addr add {}/24 dev kube-bridge; ip link set kube-bridge up",
                node.private, node.internet, node.pod_ip
            ),
        )?;
        world.spawn_wireguard_go(&format!("wg-{}", node.name), &agent.namespace, &agent.interface)?;
    }

    let cluster = world.dir.join("cluster");
    for node in &FILE_NODES {
        let yaml = world::node_yaml(node.name, node.location.name, node.leader, None, node.pod_cidr);
        world::write_file(&cluster.join("nodes").join(format!("{}.yaml", node.name)), &yaml)?;
    }
    let (_, laptop_key) = key_pair()?;
    world::write_file(&cluster.join("peers").join("laptop.yaml"), &peer_yaml("laptop", &laptop_key, PEER_IP))?;
    std::fs::create_dir_all(world.dir.join("keys")).map_err(|error| format!("create keys dir: {error}"))?;
    for (node, agent) in FILE_NODES.iter().zip(&agents) {
        let mut args = world::file_backend_agent_args(
            &cluster,
            node.name,
            &agent.interface,
            &world.dir.join("keys").join(node.name),
            METRICS_PORT,
            RESYNC,
            node.location.network,
        );
        args.push("--mesh-granularity=location".to_owned());
        world.spawn(&format!("agent-{}", node.name), &agent.namespace, agent_binary, &args)?;
    }

    // Converged: every node's key published, the expected WireGuard peers, every pod path.
    let converging = Instant::now();
    let mut names = poll("every node's published key", Duration::from_secs(30), Duration::from_millis(250), || {
        FILE_NODES
            .iter()
            .map(|node| {
                let path = cluster.join("nodes").join(format!("{}.yaml", node.name));
                let key = world::annotations_in(&path)?.remove("kilo.squat.ai/key").unwrap_or_default();
                if key.is_empty() {
                    Err(format!("{} has published no key", node.name))
                } else {
                    Ok((key, node.name.into()))
                }
            })
            .collect::<Outcome<BTreeMap<String, String>>>()
    })?;
    names.insert(laptop_key, "laptop".into());
    poll("every node's WireGuard peers", Duration::from_secs(30), Duration::from_millis(250), || {
        for agent in &agents {
            let state = mesh_state(agent, &names)?;
            let held: BTreeSet<String> = state
                .iter()
                .filter_map(|line| line.strip_prefix("peer ")?.split_once(' ').map(|(name, _)| name.to_owned()))
                .collect();
            if held != file_expected_peers(agent.node) {
                return Err(format!("{} holds {held:?}", agent.node));
            }
        }
        Ok(())
    })?;
    let probes: Vec<Probe> = FILE_NODES
        .iter()
        .flat_map(|from| {
            FILE_NODES.iter().filter(move |to| to.name != from.name).map(move |to| Probe {
                from: from.name.into(),
                namespace: ns(from.name),
                to: to.name.into(),
                address: to.pod_ip.into(),
                source: None,
            })
        })
        .collect();
    reach(&probes, Duration::from_secs(45))?;
    check_visibility(&agents, true)?;
    let converged = settled_states(&agents, &names)?;
    progress(&format!("directory: converged in {:.1}s: {}", converging.elapsed().as_secs_f64(), summarize(&converged)));

    // The directory vanishes.
    let away = world.dir.join("cluster.away");
    std::fs::rename(&cluster, &away).map_err(|error| format!("rename the cluster directory away: {error}"))?;
    let lost = Instant::now();
    let held = hold_through_outage(&agents, &names, &converged, &probes, lost, "directory")?;

    // It comes back with one more Peer.
    let (_, late_key) = key_pair()?;
    world::write_file(&away.join("peers").join("late.yaml"), &peer_yaml("late", &late_key, LATE_PEER_IP))?;
    std::fs::rename(&away, &cluster).map_err(|error| format!("rename the cluster directory back: {error}"))?;
    let back = Instant::now();
    let leaders: Vec<&Agent> = agents.iter().filter(|agent| agent.node != "a2").collect();
    let (seen, applied) =
        recovery(&agents, back, || leaders.iter().try_for_each(|leader| holds_peer(leader, &late_key, LATE_PEER_IP)))?;
    progress(&format!(
        "RECOVERY (directory): cluster seen after {:.1}s, new Peer applied after {:.1}s",
        seen.as_secs_f64(),
        applied.as_secs_f64()
    ));
    names.insert(late_key, "late".into());
    keep_after_recovery(&agents, &names, &converged)?;
    reach(&probes, Duration::from_secs(5))?;
    Ok(format!(
        "{held}; directory back: every agent saw the cluster after {:.1}s, both leaders held the new Peer after \
         {:.1}s (limit {}s); for 10 s after, every peer and route held and every path answers",
        seen.as_secs_f64(),
        applied.as_secs_f64(),
        RECOVERY_LIMIT.as_secs()
    ))
}

// ----- the API server fails (Kubernetes backend) -----

/// The agent's node.
const LOCAL: &str = "k1";
/// The remote node, alone in its location, whose leader k1 peers with.
const REMOTE: &str = "k2";

/// A Node as the API server returns it, with `annotations`.
fn node_object(name: &str, pod_cidr: &str, annotations: &Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}, "annotations": annotations},
        "spec": {"podCIDR": pod_cidr}
    })
}

fn peer_object(name: &str, public_key: &str, allowed: &str) -> Value {
    json!({
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": name},
        "spec": {"allowedIPs": [allowed], "publicKey": public_key, "persistentKeepalive": 10}
    })
}

/// k2's heartbeat, as k2's agent would publish it.
fn remote_heartbeat(server: &FakeApiServer) -> Outcome {
    let beat =
        |node: &mut Value| node["metadata"]["annotations"]["kilo.squat.ai/last-seen"] = json!(unix_now().to_string());
    if server.edit_node(REMOTE, beat) { Ok(()) } else { Err(format!("the API server has no node {REMOTE}")) }
}

/// k1's `last-seen` as the API server holds it.
fn local_last_seen(server: &FakeApiServer) -> Option<i64> {
    server.node(LOCAL)?["metadata"]["annotations"]["kilo.squat.ai/last-seen"].as_str()?.parse().ok()
}

/// The API server fails as `fault` says for [`OUTAGE`], then serves again with one more Peer.
fn api_server_fails(world: &mut World, agent_binary: &Path, fault: Mode) -> Outcome<String> {
    let label = if fault == Mode::Failing { "API 500" } else { "API refused" };
    let agent = Agent {
        node: LOCAL,
        namespace: format!("kte{}-{LOCAL}", world.id),
        interface: format!("kte{}{LOCAL}", world.id),
    };
    world.add_namespace(&agent.namespace)?;
    in_ns(
        &agent.namespace,
        "ip link add loc0 type veth peer name loc1; ip addr add 192.168.10.1/24 dev loc0; ip link set loc1 up; \
         ip link set loc0 up; ip link add kube-bridge type bridge; ip addr add 10.42.1.1/24 dev kube-bridge; \
         ip link set kube-bridge up",
    )?;
    world.spawn_wireguard_go("wg-k1", &agent.namespace, &agent.interface)?;

    let namespace = Namespace::named(&agent.namespace);
    let bind = move |address: SocketAddr| {
        namespace.run(|| TcpListener::bind(address)).map_err(std::io::Error::other).and_then(|bound| bound)
    };
    let server = FakeApiServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), bind)
        .map_err(|error| format!("start the fake API server in {}: {error}", agent.namespace))?;
    let (_, remote_key) = key_pair()?;
    let (_, laptop_key) = key_pair()?;
    server.set_node(node_object(LOCAL, "10.42.1.0/24", &json!({"kilo.squat.ai/location": "loc-a"})));
    server.set_node(node_object(
        REMOTE,
        "10.42.2.0/24",
        &json!({
            "kilo.squat.ai/location": "loc-b",
            "kilo.squat.ai/key": remote_key,
            "kilo.squat.ai/endpoint": "198.51.100.21:51820",
            "kilo.squat.ai/internal-ip": "192.168.20.1/24",
            "kilo.squat.ai/wireguard-ip": "10.4.0.2/16",
            "kilo.squat.ai/granularity": "location",
            "kilo.squat.ai/last-seen": unix_now().to_string(),
        }),
    ));
    server.set_peer(peer_object("laptop", &laptop_key, PEER_IP));
    let kubeconfig = world.dir.join("kubeconfig");
    world::write_file(
        &kubeconfig,
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n\
             users:\n- name: fake\n  user:\n    token: fake\n",
            server.address()
        ),
    )?;
    let mut args = vec!["--backend=kubernetes".to_owned(), format!("--kubeconfig={}", kubeconfig.display())];
    args.extend(world::agent_args(
        LOCAL,
        &agent.interface,
        &world.dir.join("k1.key"),
        METRICS_PORT,
        RESYNC,
        world::LOC_A.network,
    ));
    args.push("--mesh-granularity=location".to_owned());
    world.spawn("agent-k1", &agent.namespace, agent_binary, &args)?;

    let converging = Instant::now();
    let names: BTreeMap<String, String> =
        [(remote_key, REMOTE.to_owned()), (laptop_key, "laptop".to_owned())].into_iter().collect();
    let agents = [agent];
    poll("k1's WireGuard peers and routes", Duration::from_secs(30), Duration::from_millis(250), || {
        let state = mesh_state(&agents[0], &names)?;
        let peers = state.iter().filter(|line| line.starts_with("peer ")).count();
        let route = state.iter().any(|line| line.starts_with("route 10.42.2.0/24 "));
        if peers == 2 && route && local_last_seen(&server).is_some() { Ok(()) } else { Err(format!("{state:?}")) }
    })?;
    check_visibility(&agents, true)?;
    let converged = settled_states(&agents, &names)?;
    progress(&format!("{label}: converged in {:.1}s: {}", converging.elapsed().as_secs_f64(), summarize(&converged)));

    remote_heartbeat(&server)?;
    let requests_before = server.requests();
    server.set_mode(fault);
    let lost = Instant::now();
    let held = hold_through_outage(&agents, &names, &converged, &[], lost, label)?;
    let requests = server.requests() - requests_before;
    let rate = requests as f64 / OUTAGE.as_secs_f64();
    if rate >= 1.0 {
        return Err(format!("{requests} requests in the {}s outage ({rate:.2}/s): at most 1/s", OUTAGE.as_secs()));
    }

    let (_, late_key) = key_pair()?;
    server.set_peer(peer_object("late", &late_key, LATE_PEER_IP));
    let back_unix = unix_now();
    server.set_mode(Mode::Serving);
    let back = Instant::now();
    remote_heartbeat(&server)?;
    let (seen, applied) = recovery(&agents, back, || {
        holds_peer(&agents[0], &late_key, LATE_PEER_IP)?;
        match local_last_seen(&server) {
            Some(last_seen) if last_seen >= back_unix => Ok(()),
            other => Err(format!("k1's heartbeat is {other:?}, from before the API server came back")),
        }
    })?;
    progress(&format!(
        "RECOVERY ({label}): cluster seen after {:.1}s, new Peer applied and heartbeat published after {:.1}s",
        seen.as_secs_f64(),
        applied.as_secs_f64()
    ));
    keep_after_recovery(&agents, &names, &converged)?;
    let answered = if fault == Mode::Failing {
        format!("{requests} requests answered 500 ({rate:.2}/s, limit 1/s)")
    } else {
        "every connection refused".to_owned()
    };
    Ok(format!(
        "{held}; {answered}; API server back: the agent saw the cluster after {:.1}s, held the new Peer and had \
         published its heartbeat after {:.1}s (limit {}s); for 10 s after, every peer and route held",
        seen.as_secs_f64(),
        applied.as_secs_f64(),
        RECOVERY_LIMIT.as_secs()
    ))
}

/// The three outages at once, each in its own world: the wall time is one outage's.
#[test]
fn netns_root_three_minute_outages_of_the_cluster_keep_the_mesh_and_recover_in_seconds() {
    let agent = prerequisites();
    let started = Instant::now();
    let results: Vec<(Row, String)> = std::thread::scope(|scope| {
        let agent = &agent;
        let scenarios = [
            scope.spawn(move || {
                run_scenario("the cluster directory vanishes (file backend)", 'd', |world| {
                    cluster_directory_vanishes(world, agent)
                })
            }),
            scope.spawn(move || {
                run_scenario("the API server answers 500", 'e', |world| api_server_fails(world, agent, Mode::Failing))
            }),
            scope.spawn(move || {
                run_scenario("the API server refuses connections", 'r', |world| {
                    api_server_fails(world, agent, Mode::Down)
                })
            }),
        ];
        scenarios.into_iter().map(|scenario| scenario.join().expect("a scenario thread")).collect()
    });
    let (rows, logs): (Vec<Row>, Vec<String>) = results.into_iter().unzip();
    world::print_uncaptured(&world::summary(&rows, started.elapsed()));
    let failed: Vec<&str> = rows.iter().filter(|row| row.result.is_err()).map(|row| row.scenario.as_str()).collect();
    if !failed.is_empty() {
        world::print_uncaptured(&logs.concat());
        panic!("{} scenario(s) failed: {}", failed.len(), failed.join(", "));
    }
}
