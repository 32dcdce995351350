//! Real `mesh-agent`s on the kernel data path: kernel WireGuard created by the agents, IPIP over
//! Cilium's `cilium_tunl`, and NAT traversal, in network namespaces inside the VM.
//!
//! ```text
//!               fabric namespace (bridges only)
//!   bra 192.168.10.0/24    brb 192.168.20.0/24    brn "internet" 198.51.100.0/24 + 203.0.113.0/24
//!    |      |                |      |              |   |   |   |        |
//!   a1*    a2               b1*    b2             a1  a2  b1  b2    nat router 203.0.113.1
//!   (loc-a)                 (loc-b)               .11 .12 .21 .22       | masquerade
//!                                                                       c1 10.0.30.2 (loc-c, keepalive 10)
//! ```
//!
//! `*` carries `kilo.squat.ai/leader`. Node `n` (1–5) has the pod CIDR `10.42.n.0/24` and its
//! pod address `10.42.n.10` on `kube-bridge`. No namespace has a route towards anything else.
//! Agents: `--backend=file` on one directory, `--interface=kilo0 --wireguard-backend=kernel`
//! (the agent creates `kilo0`), `--clean-up=true`, `--internal-cidr` = the location's network.
//!
//! Phases, one row each:
//!
//! 1. `location` (`--encapsulate=never`): only a1, b1 and c1 hold WireGuard peers (each other);
//!    every pod address answers every node, from its pod address. a1 and b1 publish and use C's
//!    endpoint as seen through the NAT (`discovered-endpoints`).
//! 2. `cross`: every node holds the nodes of the other locations as peers, none of its own;
//!    every pod path answers.
//! 3. cilium-kilo (`--compatibility=cilium --local=false --encapsulate=always`, loc-a and loc-b;
//!    c1's agent stopped). A stand-in for Cilium is set up first: in every node, the kernel's
//!    `tunl0` renamed to `cilium_tunl` (left down: the agent must bring it up), a `cilium_host`
//!    with the address `10.42.n.1/32` (published as `cni-compatibility-ip`), and a VXLAN device
//!    `cilium_vxlan` that carries each same-location node's pod CIDR to it (static FDB and
//!    neighbour entries, as Cilium programs them). Asserted: a2's pod reaches b2's pod and b2's
//!    node address and back, along IPIP from a2 to a1's `cilium_host` through the overlay,
//!    WireGuard between a1 and b1, and (for b2's node address, via table 1107 and `iif kilo0`)
//!    IPIP from b1 to b2; every `cilium_tunl` packet counter on that path rises, and SIGTERM
//!    leaves `cilium_tunl` in place.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::world::{self, LOC_A, LOC_B, LOC_C, Location, Outcome, Probe, Row, World, in_ns, poll, reach, step};

/// `--resync-period` of every agent: slow enough for five agents on one emulated CPU.
const RESYNC: &str = "2s";
/// How long a phase may take to converge before its paths are probed.
const CONVERGE: Duration = Duration::from_secs(60);
/// The NAT router's internet address: what c1 looks like from outside.
const NAT_PUBLIC_IP: &str = "203.0.113.1";
/// The VXLAN network of the Cilium stand-in (Cilium's own VNI is per identity; any will do).
const VXLAN: &str = "id 2 dstport 8472 nolearning";

/// One node of the world.
#[derive(Clone, Copy, Debug)]
struct NodeDef {
    name: &'static str,
    location: Location,
    /// The private address on `loc0`, without prefix (the prefix is /24).
    private: &'static str,
    /// The address on the internet bridge, without prefix, if any.
    internet: Option<&'static str>,
    /// `n` of the pod CIDR `10.42.n.0/24`, the pod address `10.42.n.10` and `cilium_host`'s
    /// `10.42.n.1`.
    index: u8,
    /// Carries `kilo.squat.ai/leader`.
    leader: bool,
    /// `kilo.squat.ai/persistent-keepalive`.
    keepalive: Option<u16>,
}

impl NodeDef {
    fn pod_ip(&self) -> String {
        format!("10.42.{}.10", self.index)
    }

    fn cilium_host(&self) -> String {
        format!("10.42.{}.1", self.index)
    }

    fn mac(&self) -> String {
        format!("02:00:00:00:00:{:02x}", self.index)
    }
}

const fn node(
    name: &'static str,
    location: Location,
    private: &'static str,
    internet: &'static str,
    index: u8,
) -> NodeDef {
    NodeDef { name, location, private, internet: Some(internet), index, leader: false, keepalive: None }
}

const NODES: [NodeDef; 5] = [
    NodeDef { leader: true, ..node("a1", LOC_A, "192.168.10.1", "198.51.100.11", 1) },
    node("a2", LOC_A, "192.168.10.2", "198.51.100.12", 2),
    NodeDef { leader: true, ..node("b1", LOC_B, "192.168.20.1", "198.51.100.21", 3) },
    node("b2", LOC_B, "192.168.20.2", "198.51.100.22", 4),
    // Alone in its location, so its leader; the annotation only says so.
    NodeDef { internet: None, leader: true, keepalive: Some(10), ..node("c1", LOC_C, "10.0.30.2", "", 5) },
];

fn node_def(name: &str) -> &'static NodeDef {
    NODES.iter().find(|node| node.name == name).expect("a node of the world")
}

/// The agent flags of a phase, besides the common ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Location,
    Cross,
    Cilium,
}

impl Mode {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Mode::Location => &["--mesh-granularity=location", "--encapsulate=never"],
            Mode::Cross => &["--mesh-granularity=cross", "--encapsulate=never"],
            Mode::Cilium => {
                &["--mesh-granularity=location", "--compatibility=cilium", "--local=false", "--encapsulate=always"]
            }
        }
    }

    /// The nodes whose agents run in this phase.
    fn nodes(self) -> Vec<&'static NodeDef> {
        NODES.iter().filter(|node| self != Mode::Cilium || node.location != LOC_C).collect()
    }

    /// The WireGuard peers (node names) `node` must hold.
    fn expected_peers(self, node: &NodeDef) -> BTreeSet<&'static str> {
        let others = self.nodes().into_iter().filter(|other| other.name != node.name);
        match self {
            Mode::Location | Mode::Cilium if !node.leader => BTreeSet::new(),
            Mode::Location | Mode::Cilium => others.filter(|other| other.leader).map(|other| other.name).collect(),
            Mode::Cross => others.filter(|other| other.location != node.location).map(|other| other.name).collect(),
        }
    }
}

/// The mesh on top of the world.
struct Mesh {
    world: World,
    agent: PathBuf,
    cluster: PathBuf,
    running: Vec<&'static str>,
}

/// Runs the phases `selected` picks, each a row; builds the world first if any is picked.
pub fn run(rows: &mut Vec<Row>, selected: &dyn Fn(&str) -> bool) {
    let phases: [(&str, Mode); 3] = [
        ("mesh: location on kernel WireGuard, NAT with keepalive", Mode::Location),
        ("mesh: cross on kernel WireGuard", Mode::Cross),
        ("mesh: cilium-kilo, IPIP over cilium_tunl through the overlay", Mode::Cilium),
    ];
    let phases: Vec<_> = phases.into_iter().filter(|(name, _)| selected(name)).collect();
    if phases.is_empty() {
        return;
    }
    let mut mesh = None;
    if !step(rows, "mesh: build the world", || {
        let built = Mesh::build()?;
        let detail = format!("{} namespaces", built.world.namespaces().len());
        mesh = Some(built);
        Ok(detail)
    }) {
        return;
    }
    let Some(mut mesh) = mesh else { return };
    let mut failed = false;
    for (name, mode) in phases {
        failed |= !step(rows, name, || mesh.phase(mode));
    }
    if failed || std::env::var_os("KTE_LOGS").is_some() {
        world::print_uncaptured(&mesh.world.log_tails(30));
    }
}

impl Mesh {
    fn ns(&self, name: &str) -> String {
        format!("ktk{}-{name}", self.world.id)
    }

    /// The namespaces, links, addresses, NAT router and cluster files.
    fn build() -> Outcome<Mesh> {
        let world = World::new(&world::run_id())?;
        let cluster = world.dir.join("cluster");
        let mut mesh = Mesh { world, agent: crate::agent()?, cluster, running: Vec::new() };
        let (fabric, router) = (mesh.ns("fabric"), mesh.ns("nat"));
        mesh.world.add_namespace(&fabric)?;
        mesh.world.add_namespace(&router)?;
        let forwarding = "echo 1 > /proc/sys/net/ipv4/ip_forward; echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter";
        in_ns(&fabric, "for bridge in bra brb brn; do ip link add $bridge type bridge; ip link set $bridge up; done")?;
        for node in &NODES {
            let namespace = mesh.ns(node.name);
            mesh.world.add_namespace(&namespace)?;
            let mut script = format!("{forwarding}; ");
            match node.location.bridge {
                Some(bridge) => {
                    world::veth(&format!("{}l", node.name), &fabric, "loc0", &namespace)?;
                    script.push_str(&format!("ip -n {fabric} link set {}l master {bridge} up; ", node.name));
                }
                None => world::veth("lan0", &router, "loc0", &namespace)?,
            }
            script.push_str(&format!(
                "ip addr add {}/24 dev loc0; ip link set loc0 up; ip link add kube-bridge type bridge; \
                 ip addr add {}/24 dev kube-bridge; ip link set kube-bridge up; ",
                node.private,
                node.pod_ip()
            ));
            match node.internet {
                Some(internet) => {
                    world::veth(&format!("{}i", node.name), &fabric, "inet0", &namespace)?;
                    script.push_str(&format!(
                        "ip -n {fabric} link set {}i master brn up; ip addr add {internet}/24 dev inet0; \
                         ip link set inet0 up; ip route add 203.0.113.0/24 dev inet0; ",
                        node.name
                    ));
                }
                None => script.push_str("ip route add default via 10.0.30.1; "),
            }
            // `ip -n` for the fabric side: one exec per node, not two (each costs ~0.1 s here).
            in_ns(&namespace, &script)?;
        }
        // The NAT router in front of c1: masquerades what leaves for the internet and refuses
        // everything else at once (`prohibit`), so nothing waits for a silent drop.
        world::veth("nati", &fabric, "inet0", &router)?;
        in_ns(
            &router,
            &format!(
                "{forwarding}; ip -n {fabric} link set nati master brn up; ip addr add {NAT_PUBLIC_IP}/24 dev inet0; \
                 ip link set inet0 up; ip route add 198.51.100.0/24 dev inet0; ip addr add 10.0.30.1/24 dev lan0; \
                 ip link set lan0 up; ip route add prohibit default; \
                 iptables -t nat -A POSTROUTING -o inet0 -j MASQUERADE"
            ),
        )?;
        for node in &NODES {
            let pod_cidr = format!("10.42.{}.0/24", node.index);
            let yaml = world::node_yaml(node.name, node.location.name, node.leader, node.keepalive, &pod_cidr);
            world::write_file(&mesh.cluster.join("nodes").join(format!("{}.yaml", node.name)), &yaml)?;
        }
        std::fs::create_dir_all(mesh.world.dir.join("keys")).map_err(|error| format!("create keys dir: {error}"))?;
        Ok(mesh)
    }

    fn agent_label(name: &str) -> String {
        format!("agent-{name}")
    }

    /// Stops the running agents (SIGTERM: they clean up) and starts those of `mode`.
    fn restart(&mut self, mode: Mode) -> Outcome {
        self.stop_agents()?;
        for node in mode.nodes() {
            let mut args = vec![
                "--backend=file".to_owned(),
                format!("--cluster-dir={}", self.cluster.display()),
                format!("--hostname={}", node.name),
                "--interface=kilo0".to_owned(),
                "--wireguard-backend=kernel".to_owned(),
                "--cni=false".to_owned(),
                format!("--private-key-file={}", self.world.dir.join("keys").join(node.name).display()),
                "--listen=127.0.0.1:1107".to_owned(),
                format!("--resync-period={RESYNC}"),
                "--clean-up=true".to_owned(),
                format!("--internal-cidr={}", node.location.network),
            ];
            args.extend(mode.flags().iter().map(|flag| (*flag).to_owned()));
            let (label, namespace, agent) = (Self::agent_label(node.name), self.ns(node.name), self.agent.clone());
            self.world.spawn(&label, &namespace, &agent, &args)?;
            self.running.push(node.name);
        }
        Ok(())
    }

    /// SIGTERM to every running agent; each must exit 0 within 10 s.
    fn stop_agents(&mut self) -> Outcome {
        let running = std::mem::take(&mut self.running);
        for name in &running {
            self.world.signal(&Self::agent_label(name), Signal::SIGTERM)?;
        }
        for name in &running {
            let status = self.world.wait_exit(&Self::agent_label(name), Duration::from_secs(10))?;
            if !status.success() {
                return Err(format!("agent {name} exited with {status} on SIGTERM"));
            }
        }
        Ok(())
    }

    fn annotations(&self, node: &str) -> Outcome<BTreeMap<String, String>> {
        world::annotations_in(&self.cluster.join("nodes").join(format!("{node}.yaml")))
    }

    /// `wg show kilo0 dump` in `node`'s namespace: public key → (endpoint, transfer rx + tx).
    fn wg_peers(&self, node: &str) -> Outcome<BTreeMap<String, (String, u64)>> {
        let dump = in_ns(&self.ns(node), "wg show kilo0 dump")?;
        let mut peers = BTreeMap::new();
        for line in dump.lines().skip(1) {
            let fields: Vec<&str> = line.split('\t').collect();
            let [key, _, endpoint, _, _, rx, tx, ..] = fields[..] else {
                return Err(format!("unexpected wg dump line {line:?}"));
            };
            let transfer = rx.parse::<u64>().unwrap_or(0) + tx.parse::<u64>().unwrap_or(0);
            peers.insert(key.to_owned(), (endpoint.to_owned(), transfer));
        }
        Ok(peers)
    }

    /// Waits until every agent of `mode` has published its key and every node holds exactly
    /// its expected WireGuard peers on a kernel `kilo0`; returns who holds how many.
    fn converge(&self, mode: Mode) -> Outcome<String> {
        poll("the WireGuard peers of every node", CONVERGE, Duration::from_millis(500), || {
            let mut names = BTreeMap::new();
            for node in mode.nodes() {
                let key = self.annotations(node.name)?.remove("kilo.squat.ai/key").unwrap_or_default();
                if key.is_empty() {
                    return Err(format!("{} has published no key", node.name));
                }
                names.insert(key, node.name);
            }
            let mut holders = Vec::new();
            for node in mode.nodes() {
                let held: BTreeSet<&str> =
                    self.wg_peers(node.name)?.keys().map(|key| names.get(key).copied().unwrap_or("unknown")).collect();
                let expected = mode.expected_peers(node);
                if held != expected {
                    return Err(format!("{} holds {held:?}, expected {expected:?}", node.name));
                }
                if !held.is_empty() {
                    holders.push(format!("{}:{}", node.name, held.len()));
                }
            }
            Ok(holders.join(" "))
        })
    }

    /// From every node's pod address to every other node's pod address.
    fn pod_probes(&self, mode: Mode) -> Vec<Probe> {
        let nodes = mode.nodes();
        let mut probes = Vec::new();
        for from in &nodes {
            for to in nodes.iter().filter(|to| to.name != from.name) {
                probes.push(self.probe(from, to.name, to.pod_ip()));
            }
        }
        probes
    }

    fn probe(&self, from: &NodeDef, to: &str, address: String) -> Probe {
        Probe {
            from: from.name.into(),
            namespace: self.ns(from.name),
            to: to.into(),
            address,
            source: Some(from.pod_ip()),
        }
    }

    fn phase(&mut self, mode: Mode) -> Outcome<String> {
        let started = Instant::now();
        if mode == Mode::Cilium {
            self.stop_agents()?;
            self.cilium_stand_in()?;
        }
        self.restart(mode)?;
        let holders = self.converge(mode)?;
        let kinds = self.check_kernel_interfaces(mode)?;
        let probes = self.pod_probes(mode);
        let (waited, _) = reach(&probes, CONVERGE)?;
        let mut detail = format!(
            "converged in {:.1}s; peers {holders}; {kinds}; {} pod paths answer ({:.1}s)",
            (started.elapsed() - waited).as_secs_f64(),
            probes.len(),
            waited.as_secs_f64()
        );
        match mode {
            Mode::Location => detail.push_str(&format!("; {}", self.check_nat()?)),
            Mode::Cross => {}
            Mode::Cilium => detail.push_str(&format!("; {}", self.check_cilium_path()?)),
        }
        Ok(detail)
    }

    /// Every agent created `kilo0` as a kernel WireGuard device.
    fn check_kernel_interfaces(&self, mode: Mode) -> Outcome<String> {
        for node in mode.nodes() {
            let link = in_ns(&self.ns(node.name), "ip -d link show kilo0")?;
            if !link.contains("wireguard") {
                return Err(format!("kilo0 of {} is not a kernel WireGuard device: {link}", node.name));
            }
        }
        Ok(format!("{} kernel kilo0 devices", mode.nodes().len()))
    }

    /// a1 and b1 publish c1's endpoint as the NAT shows it, and send to it.
    fn check_nat(&self) -> Outcome<String> {
        let c_key = self.annotations("c1")?.remove("kilo.squat.ai/key").unwrap_or_default();
        let mut seen = Vec::new();
        for leader in ["a1", "b1"] {
            let endpoint = poll(
                &format!("{leader} to publish c1's discovered endpoint"),
                Duration::from_secs(30),
                Duration::from_millis(500),
                || {
                    let text =
                        self.annotations(leader)?.remove("kilo.squat.ai/discovered-endpoints").unwrap_or_default();
                    let discovered: serde_json::Value = serde_json::from_str(&text)
                        .map_err(|error| format!("discovered-endpoints of {leader} {text:?}: {error}"))?;
                    let entry = discovered.get(&c_key).ok_or_else(|| format!("{leader} publishes {text}"))?;
                    let ip = entry.get("IP").and_then(serde_json::Value::as_str).unwrap_or_default();
                    let port = entry.get("Port").and_then(serde_json::Value::as_u64).unwrap_or_default();
                    if ip == NAT_PUBLIC_IP {
                        Ok(format!("{ip}:{port}"))
                    } else {
                        Err(format!("{leader} publishes {text}"))
                    }
                },
            )?;
            let peers = self.wg_peers(leader)?;
            let (configured, _) = peers.get(&c_key).ok_or_else(|| format!("{leader} has no peer c1"))?;
            if *configured != endpoint {
                return Err(format!("{leader} sends to c1 at {configured}, publishes {endpoint}"));
            }
            seen.push(format!("{leader} publishes and uses {endpoint}"));
        }
        Ok(format!("NAT: {}", seen.join(", ")))
    }

    /// The Cilium stand-in in loc-a and loc-b (see the module documentation).
    fn cilium_stand_in(&self) -> Outcome {
        // The ipip module creates the fallback `tunl0` in every namespace, existing ones too.
        world::run(Command::new("modprobe").arg("ipip"))?;
        for node in Mode::Cilium.nodes() {
            let mut script = format!(
                "ip link set tunl0 name cilium_tunl; \
                 ip link add cilium_host type dummy; ip addr add {}/32 dev cilium_host; ip link set cilium_host up; \
                 ip link add cilium_vxlan address {} type vxlan {VXLAN} local {} dev loc0; \
                 ip link set cilium_vxlan up; ",
                node.cilium_host(),
                node.mac(),
                node.private
            );
            for other in NODES.iter().filter(|other| other.location == node.location && other.name != node.name) {
                script.push_str(&format!(
                    "bridge fdb append {mac} dev cilium_vxlan dst {private}; \
                     ip neigh add {gateway} lladdr {mac} dev cilium_vxlan nud permanent; \
                     ip route add 10.42.{index}.0/24 via {gateway} dev cilium_vxlan onlink; ",
                    mac = other.mac(),
                    private = other.private,
                    gateway = other.cilium_host(),
                    index = other.index,
                ));
            }
            in_ns(&self.ns(node.name), &script)?;
        }
        // The stand-in alone must carry a pod path within a location before the mesh is judged.
        let a1 = node_def("a1");
        reach(&[self.probe(node_def("a2"), "a1", a1.pod_ip())], Duration::from_secs(10))
            .map_err(|error| format!("the Cilium stand-in does not carry a2 -> a1: {error}"))?;
        Ok(())
    }

    /// `cilium_tunl`'s packet counters of `node`: (rx, tx).
    fn tunnel_counters(&self, node: &str) -> Outcome<(u64, u64)> {
        let text = in_ns(
            &self.ns(node),
            "cat /sys/class/net/cilium_tunl/statistics/rx_packets /sys/class/net/cilium_tunl/statistics/tx_packets",
        )?;
        let numbers: Vec<u64> = text.split_whitespace().filter_map(|number| number.parse().ok()).collect();
        match numbers[..] {
            [rx, tx] => Ok((rx, tx)),
            _ => Err(format!("cilium_tunl statistics of {node}: {text:?}")),
        }
    }

    /// The cilium-kilo path: annotations, routes, and packets along it (see the module docs).
    fn check_cilium_path(&mut self) -> Outcome<String> {
        let nodes = Mode::Cilium.nodes();
        for node in &nodes {
            let published = self.annotations(node.name)?.remove("kilo.squat.ai/cni-compatibility-ip");
            if published.as_deref() != Some(&format!("{}/32", node.cilium_host())) {
                return Err(format!("{} publishes cni-compatibility-ip {published:?}", node.name));
            }
            let link = in_ns(&self.ns(node.name), "ip link show cilium_tunl")?;
            if !link.contains(",UP") {
                return Err(format!("the agent on {} did not bring cilium_tunl up: {link}", node.name));
            }
        }
        let route = in_ns(&self.ns("a2"), "ip route show 10.42.4.0/24")?;
        if !route.contains("via 10.42.1.1 dev cilium_tunl") {
            return Err(format!("a2 does not send b2's pods to a1's cilium_host over cilium_tunl: {route}"));
        }
        let table = in_ns(&self.ns("b1"), "ip route show table 1107; ip rule")?;
        if !table.contains("192.168.20.2 via 10.42.4.1 dev cilium_tunl") || !table.contains("iif kilo0 lookup 1107") {
            return Err(format!("b1 has no return route to b2 over cilium_tunl: {table}"));
        }

        let a2 = node_def("a2");
        let b2 = node_def("b2");
        let before: Vec<(u64, u64)> =
            ["a2", "a1", "b1", "b2"].iter().map(|node| self.tunnel_counters(node)).collect::<Outcome<_>>()?;
        let wireguard_before = self.wg_peers("a1")?.values().map(|(_, transfer)| transfer).sum::<u64>();
        const PINGS: u64 = 5;
        for address in [b2.pod_ip(), b2.private.to_owned()] {
            in_ns(&self.ns("a2"), &format!("ping -n -q -c {PINGS} -i 0.2 -W 2 -I {} {address}", a2.pod_ip()))
                .map_err(|error| format!("a2's pod to {address}: {error}"))?;
        }
        let after: Vec<(u64, u64)> =
            ["a2", "a1", "b1", "b2"].iter().map(|node| self.tunnel_counters(node)).collect::<Outcome<_>>()?;
        let wireguard_after = self.wg_peers("a1")?.values().map(|(_, transfer)| transfer).sum::<u64>();
        let delta = |index: usize| (after[index].0 - before[index].0, after[index].1 - before[index].1);
        let [(a2_rx, a2_tx), (a1_rx, a1_tx), (b1_rx, b1_tx), (b2_rx, b2_tx)] = [0, 1, 2, 3].map(delta);
        // Requests of both rounds go a2 -> a1 by IPIP, replies b2 -> b1 by IPIP; only the round
        // to b2's node address goes b1 -> b2 by IPIP (pods are Cilium's, over plain VXLAN).
        let expected = [
            ("a2 sent IPIP", a2_tx, 2 * PINGS),
            ("a1 received IPIP", a1_rx, 2 * PINGS),
            ("b2 sent IPIP", b2_tx, 2 * PINGS),
            ("b1 received IPIP", b1_rx, 2 * PINGS),
            ("b1 sent IPIP to b2", b1_tx, PINGS),
            ("b2 received IPIP from b1", b2_rx, PINGS),
        ];
        let short: Vec<String> = expected
            .iter()
            .filter(|(_, seen, least)| seen < least)
            .map(|(what, seen, least)| format!("{what}: {seen} packets (at least {least})"))
            .collect();
        if !short.is_empty() {
            return Err(format!("the path is not the cilium-kilo path: {}", short.join("; ")));
        }
        if wireguard_after <= wireguard_before {
            return Err("a1's WireGuard transfer counters did not rise".into());
        }

        // SIGTERM: the agents clean up, and Cilium's device stays.
        self.stop_agents()?;
        for node in &nodes {
            in_ns(&self.ns(node.name), "ip link show cilium_tunl")
                .map_err(|error| format!("clean-up on {} removed cilium_tunl: {error}", node.name))?;
        }
        Ok(format!(
            "a2 -> b2 pod and node address: cilium_tunl packets a2 tx {a2_tx}, a1 rx {a1_rx} (a1 tx {a1_tx}, a2 rx \
             {a2_rx}), b1 rx {b1_rx} tx {b1_tx}, b2 rx {b2_rx} tx {b2_tx}; a1's WireGuard bytes +{}; cilium_tunl \
             survives clean-up",
            wireguard_after - wireguard_before
        ))
    }
}
