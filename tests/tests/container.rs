//! The container image (`Dockerfile`, built offline by `scripts/image.sh`), run as a cluster runs
//! it: `--version`, the README's `plan` on the example (the same JSON as the workspace's binary),
//! and a mesh whose agents run inside containers from the image, each sharing a node's network
//! namespace (`podman run --privileged --network ns:/run/netns/NODE`), with the iptables and
//! Graphviz of the image, wireguard-go in user space, and the service-link variables Kubernetes
//! sets for a Service named `kilo` in their environment.
//!
//! ```text
//!   fabric namespace: bra 192.168.10.0/24 (loc-a)   brb 192.168.20.0/24 (loc-b)   brn 198.51.100.0/24
//!   a1* 192.168.10.1 198.51.100.11 pods 10.42.1.0/24     b1* 192.168.20.1 198.51.100.21 pods 10.42.4.0/24
//!   a2  192.168.10.2 198.51.100.12 pods 10.42.2.0/24
//! ```
//!
//! Every node reaches every other node's pod address (a2 through its leader a1), the agents
//! publish Kilo's port rather than the Service's, `/graph` renders with the image's Graphviz, the
//! image's iptables wrapper chose the nft back end, and SIGTERM to `podman run` leaves no route,
//! rule, chain or annotation of the mesh behind.
//!
//! A second test shows the image's iptables wrapper choosing the back end that holds the
//! kubelet's hint chain (legacy or nft), and working on a read-only root file system.
//!
//! Needs root, podman with runc, the image `localhost/mesh-agent:dev` (or `MESH_AGENT_IMAGE`), and
//! the e2e suite's tools; fails (never skips) without them. Build the image with
//! `scripts/image.sh`. Containers carry the label `kilo-rs.test=container`: they are removed when
//! the test ends, and a run removes those a killed run left behind.

#[allow(dead_code, reason = "the helpers are shared with e2e.rs and kernel.rs, which use others")]
#[path = "e2e/world.rs"]
mod world;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mesh_kube::annotations::OWNED_ANNOTATIONS;
use nix::sys::signal::Signal;
use world::{LOC_A, LOC_B, Location, Outcome, Probe, World, in_ns, poll, run};

const DEFAULT_IMAGE: &str = "localhost/mesh-agent:dev";
const LABEL: &str = "kilo-rs.test=container";
const METRICS_PORT: u16 = 11070;

/// What Kubernetes puts into a pod's environment for a Service named `kilo` (port 1107).
const SERVICE_LINKS: &[(&str, &str)] = &[
    ("KILO_SERVICE_HOST", "10.96.0.10"),
    ("KILO_SERVICE_PORT", "1107"),
    ("KILO_PORT", "tcp://10.96.0.10:1107"),
    ("KILO_PORT_1107_TCP", "tcp://10.96.0.10:1107"),
    ("KILO_PORT_1107_TCP_PROTO", "tcp"),
    ("KILO_PORT_1107_TCP_PORT", "1107"),
    ("KILO_PORT_1107_TCP_ADDR", "10.96.0.10"),
];

struct NodeDef {
    name: &'static str,
    location: Location,
    private: &'static str,
    internet: &'static str,
    pod_cidr: &'static str,
    pod_ip: &'static str,
    leader: bool,
}

const NODES: [NodeDef; 3] = [
    NodeDef {
        name: "a1",
        location: LOC_A,
        private: "192.168.10.1/24",
        internet: "198.51.100.11/24",
        pod_cidr: "10.42.1.0/24",
        pod_ip: "10.42.1.1",
        leader: true,
    },
    NodeDef {
        name: "a2",
        location: LOC_A,
        private: "192.168.10.2/24",
        internet: "198.51.100.12/24",
        pod_cidr: "10.42.2.0/24",
        pod_ip: "10.42.2.1",
        leader: false,
    },
    NodeDef {
        name: "b1",
        location: LOC_B,
        private: "192.168.20.1/24",
        internet: "198.51.100.21/24",
        pod_cidr: "10.42.4.0/24",
        pod_ip: "10.42.4.1",
        leader: true,
    },
];

fn image() -> String {
    std::env::var("MESH_AGENT_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_owned())
}

/// `podman` as this machine kind needs it: runc (crun needs CAP_SYS_RESOURCE and a cgroup mode
/// CI sandboxes lack), and explicit limits (runc may not raise them).
fn podman() -> Command {
    let mut command = Command::new("podman");
    command.args(["--runtime", "runc"]);
    command
}

const LIMITS: [&str; 4] = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];

/// `podman run --rm IMAGE ARGS` and its standard output.
fn run_image(volumes: &[&str], args: &[&str]) -> Outcome<String> {
    let mut command = podman();
    command.args(["run", "--rm", "--label", LABEL]).args(LIMITS);
    for volume in volumes {
        command.args(["--volume", volume]);
    }
    run(command.arg(image()).args(args))
}

/// Removes every container of this suite (by label), running or not.
fn remove_containers() {
    let ids = run(podman().args(["ps", "--all", "--quiet", "--filter", &format!("label={LABEL}")])).unwrap_or_default();
    for id in ids.split_whitespace() {
        let _ = run(podman().args(["rm", "--force", "--time", "0", id]));
    }
}

/// The tests of this suite run one at a time: each removes the suite's containers (by label)
/// when it starts and ends.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes the suite's containers when dropped: declared after the [`World`], it is dropped
/// before it, so the containers go before their namespaces.
struct Containers;

impl Drop for Containers {
    fn drop(&mut self) {
        remove_containers();
    }
}

struct Mesh {
    world: World,
    cluster: PathBuf,
}

impl Mesh {
    fn ns(&self, name: &str) -> String {
        format!("kte{}-{name}", self.world.id)
    }

    fn iface(&self, name: &str) -> String {
        format!("kte{}{name}", self.world.id)
    }

    fn container(&self, name: &str) -> String {
        format!("kte{}-{name}", self.world.id)
    }

    fn build(&mut self) -> Outcome {
        let fabric = self.ns("fabric");
        self.world.add_namespace(&fabric)?;
        let no_rp_filter = "echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter; \
                            echo 0 > /proc/sys/net/ipv4/conf/default/rp_filter";
        in_ns(
            &fabric,
            &format!("{no_rp_filter}; for b in bra brb brn; do ip link add $b type bridge; ip link set $b up; done"),
        )?;
        for node in &NODES {
            let namespace = self.ns(node.name);
            self.world.add_namespace(&namespace)?;
            world::veth(&format!("{}l", node.name), &fabric, "loc0", &namespace)?;
            world::veth(&format!("{}i", node.name), &fabric, "inet0", &namespace)?;
            let bridge = node.location.bridge.expect("a bridged location");
            in_ns(
                &fabric,
                &format!("ip link set {n}l master {bridge} up; ip link set {n}i master brn up", n = node.name),
            )?;
            in_ns(
                &namespace,
                &format!(
                    "{no_rp_filter}; echo 1 > /proc/sys/net/ipv4/ip_forward; \
                     ip addr add {} dev loc0; ip link set loc0 up; ip addr add {} dev inet0; ip link set inet0 up; \
                     ip link add kube-bridge type bridge; ip addr add {}/24 dev kube-bridge; ip link set kube-bridge up",
                    node.private, node.internet, node.pod_ip
                ),
            )?;
            let yaml = world::node_yaml(node.name, node.location.name, node.leader, None, node.pod_cidr);
            world::write_file(&self.cluster.join("nodes").join(format!("{}.yaml", node.name)), &yaml)?;
        }
        for node in &NODES {
            let interface = self.iface(node.name);
            let socket = PathBuf::from(format!("/var/run/wireguard/{interface}.sock"));
            self.world.own_file(socket.clone());
            self.world.spawn_with_env(
                &format!("wg-{}", node.name),
                &self.ns(node.name),
                Path::new("wireguard-go"),
                &["-f".to_owned(), interface],
                &[("WG_PROCESS_FOREGROUND", "1")],
            )?;
            poll(
                &format!("the UAPI socket of {}", node.name),
                Duration::from_secs(10),
                Duration::from_millis(50),
                || {
                    if socket.exists() { Ok(()) } else { Err(format!("{} missing", socket.display())) }
                },
            )?;
        }
        std::fs::create_dir_all(self.world.dir.join("keys")).map_err(|error| format!("create keys dir: {error}"))
    }

    /// The agent of `node` in a container from the image, in the node's network namespace; the
    /// `podman run` process is the world's process `agent-NODE` (SIGTERM reaches the agent).
    fn start_agent(&mut self, node: &NodeDef) -> Outcome {
        let dir = self.world.dir.display().to_string();
        let mut command = podman();
        command
            .args(["run", "--rm", "--name", &self.container(node.name), "--label", LABEL, "--privileged"])
            .args(LIMITS)
            .arg(format!("--network=ns:/run/netns/{}", self.ns(node.name)))
            .args(["--volume", "/var/run/wireguard:/var/run/wireguard", "--volume", &format!("{dir}:{dir}")]);
        for (key, value) in SERVICE_LINKS {
            command.args(["--env", &format!("{key}={value}")]);
        }
        command.arg(image()).args(world::file_backend_agent_args(
            &self.cluster,
            node.name,
            &self.iface(node.name),
            &self.world.dir.join("keys").join(node.name),
            METRICS_PORT,
            Duration::from_secs(1),
            node.location.network,
        ));
        self.world.spawn_command(&format!("agent-{}", node.name), command).map(drop)
    }

    fn http_get(&self, node: &str, path: &str) -> Outcome<String> {
        world::http_get(&self.ns(node), METRICS_PORT, path)
    }

    fn probes(&self) -> Vec<Probe> {
        let mut probes = Vec::new();
        for from in &NODES {
            for to in NODES.iter().filter(|to| to.name != from.name) {
                probes.push(Probe {
                    from: from.name.to_owned(),
                    namespace: self.ns(from.name),
                    to: to.name.to_owned(),
                    address: to.pod_ip.to_owned(),
                    source: Some(from.pod_ip.to_owned()),
                });
            }
        }
        probes
    }

    /// Routes and rules of the mesh (table 1107, protocol 107) and KILO chains left in `node`.
    fn leftovers(&self, node: &str) -> Outcome<String> {
        in_ns(
            &self.ns(node),
            "{ ip route show table all proto 107; ip rule show | grep -w 1107 || true; \
               iptables-save | grep -E '^:KILO' || true; }",
        )
    }
}

fn scenario(mesh: &mut Mesh) -> Outcome<String> {
    mesh.build()?;
    for node in &NODES {
        mesh.start_agent(node)?;
    }
    let (took, _) = world::reach(&mesh.probes(), Duration::from_secs(90))?;
    // Kilo's port, not the Service's: the service-link KILO_PORT was ignored.
    for node in NODES.iter().filter(|node| node.leader) {
        let annotations = world::annotations_in(&mesh.cluster.join("nodes").join(format!("{}.yaml", node.name)))?;
        let endpoint = annotations.get("kilo.squat.ai/endpoint").cloned().unwrap_or_default();
        if !endpoint.ends_with(":51820") {
            return Err(format!("{} publishes endpoint {endpoint:?}, not port 51820", node.name));
        }
    }
    // The image's Graphviz renders /graph; the image's iptables wrapper chose nft, whose tables
    // the node's namespace holds.
    let graph = mesh.http_get("a1", "/graph")?;
    if !graph.contains("<svg") {
        return Err(format!("/graph is no SVG: {}", graph.chars().take(300).collect::<String>()));
    }
    let backend = run(podman().args(["exec", &mesh.container("a1"), "readlink", "/usr/sbin/iptables-save"]))?;
    if backend.trim() != "xtables-nft-multi" {
        return Err(format!("the iptables wrapper chose {backend:?}, not xtables-nft-multi"));
    }
    let chains = in_ns(&mesh.ns("a1"), "iptables-save -t nat")?;
    if !chains.contains(":KILO-NAT") {
        return Err(format!("no KILO-NAT chain in a1's namespace:\n{chains}"));
    }
    // SIGTERM to `podman run` reaches the agent, which cleans up and exits 0.
    for node in &NODES {
        mesh.world.signal(&format!("agent-{}", node.name), Signal::SIGTERM)?;
    }
    for node in &NODES {
        let status = mesh.world.wait_exit(&format!("agent-{}", node.name), Duration::from_secs(20))?;
        if !status.success() {
            return Err(format!("agent-{} exited with {status}", node.name));
        }
        let left = mesh.leftovers(node.name)?;
        if !left.trim().is_empty() {
            return Err(format!("{} keeps after SIGTERM:\n{left}", node.name));
        }
        let annotations = world::annotations_in(&mesh.cluster.join("nodes").join(format!("{}.yaml", node.name)))?;
        let owned: Vec<&String> = annotations.keys().filter(|key| OWNED_ANNOTATIONS.contains(&key.as_str())).collect();
        if !owned.is_empty() {
            return Err(format!("{} keeps annotations {owned:?} after SIGTERM", node.name));
        }
    }
    Ok(format!("3 agents in containers meshed in {took:.1?} and cleaned up"))
}

/// Fails loudly unless the test runs as root with `tools` and the image at hand; then removes
/// what killed runs left behind.
fn prerequisites(tools: &[&str]) {
    assert!(world::is_root(), "this test needs root (network namespaces, podman)");
    for tool in tools {
        assert!(world::has_tool(tool), "this test needs `{tool}`: run scripts/test-deps.sh");
    }
    let image = image();
    assert!(
        podman().args(["image", "exists", &image]).status().is_ok_and(|status| status.success()),
        "the image {image} is missing: build it with scripts/image.sh"
    );
    World::remove_abandoned();
    remove_containers();
}

#[test]
fn netns_container_image_runs_the_agent_plan_and_a_mesh_root() {
    let _serial = one_at_a_time();
    prerequisites(&["podman", "runc", "ip", "wireguard-go", "iptables-save", "ping", "bash", "timeout"]);

    // --version and the README's plan, the same JSON as the workspace's binary prints.
    let version = run_image(&[], &["--version"]).expect("mesh-agent --version in the image");
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").canonicalize().unwrap();
    let plan_args = [
        "plan",
        "--nodes",
        "/examples/cozystack-cluster.yaml",
        "--hostname",
        "onprem-1",
        "--compatibility=cilium",
        "--local=false",
        "--subnet",
        "100.66.0.0/16",
        "--now",
        "1767225600",
        "-o",
        "json",
    ];
    let in_image =
        run_image(&[&format!("{}:/examples:ro", examples.display())], &plan_args).expect("plan in the image");
    let agent = world::agent_binary().expect("the workspace's mesh-agent");
    let on_host =
        run(Command::new(agent)
            .args(plan_args.iter().map(|arg| arg.replace("/examples", &examples.display().to_string()))))
        .expect("plan on the host");
    let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).expect("plan JSON");
    assert_eq!(parse(&in_image), parse(&on_host), "the image's plan differs from the workspace's");

    let world = World::new(&world::run_id()).expect("a world");
    let containers = Containers;
    let cluster = world.dir.join("cluster");
    let mut mesh = Mesh { world, cluster };
    let outcome = scenario(&mut mesh);
    drop(containers);
    match outcome {
        Ok(summary) => world::progress(&format!("container: {summary}")),
        Err(error) => panic!("container scenario failed: {error}\n{}", mesh.world.log_tails(30)),
    }
}

/// Runs `script` with `sh` in a container from the image, privileged, in `namespace`.
fn sh_in_image(namespace: &str, extra: &[&str], script: &str) -> Outcome<String> {
    let mut command = podman();
    command
        .args(["run", "--rm", "--label", LABEL, "--privileged"])
        .args(LIMITS)
        .arg(format!("--network=ns:/run/netns/{namespace}"))
        .args(extra)
        .args(["--entrypoint", "sh"])
        .arg(image())
        .args(["-ec", script]);
    run(&mut command)
}

#[test]
fn netns_container_iptables_wrapper_picks_the_nodes_back_end_root() {
    let _serial = one_at_a_time();
    prerequisites(&[
        "podman",
        "runc",
        "ip",
        "iptables-legacy",
        "iptables-nft",
        "iptables-legacy-save",
        "iptables-nft-save",
    ]);
    let mut world = World::new(&world::run_id()).expect("a world");
    let _containers = Containers;
    // (namespace, the back end whose tables hold the kubelet's hint chain, extra podman flags,
    // what /usr/sbin/iptables points at afterwards)
    let cases = [
        ("legacy", Some("legacy"), &[][..], "xtables-legacy-multi"),
        ("nft", Some("nft"), &[][..], "xtables-nft-multi"),
        // No hints and no rules: nft. A read-only root: the wrapper cannot relink and runs the
        // chosen back end itself, every time.
        ("readonly", None, &["--read-only"][..], "iptables-wrapper"),
    ];
    for (name, hint, extra, link) in cases {
        let namespace = format!("kte{}-{name}", world.id);
        world.add_namespace(&namespace).expect("a namespace");
        if let Some(backend) = hint {
            in_ns(&namespace, &format!("iptables-{backend} -t mangle -N KUBE-IPTABLES-HINT")).expect("a hint chain");
        }
        let linked = sh_in_image(&namespace, extra, "iptables -t nat -N KILO-WRAPPER; readlink /usr/sbin/iptables")
            .unwrap_or_else(|error| panic!("{name}: iptables in the image: {error}"));
        assert_eq!(linked.trim(), link, "{name}");
        let chosen = hint.unwrap_or("nft");
        let other = if chosen == "nft" { "legacy" } else { "nft" };
        let written = in_ns(&namespace, &format!("iptables-{chosen}-save -t nat")).unwrap();
        assert!(written.contains(":KILO-WRAPPER"), "{name}: the chain is not in the {chosen} tables:\n{written}");
        let elsewhere = in_ns(&namespace, &format!("iptables-{other}-save -t nat 2>/dev/null || true")).unwrap();
        assert!(!elsewhere.contains(":KILO-WRAPPER"), "{name}: the chain went to the {other} tables too");
    }
}
