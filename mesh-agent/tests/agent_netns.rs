//! The real `mesh-agent` binary with the file backend, in a network namespace with a userspace
//! WireGuard interface (wireguard-go): it reconciles, serves /health and /metrics, publishes its
//! node, keeps serving and reconciling with 300 idle HTTP clients under a 256 open-files limit,
//! and cleans up on SIGTERM. Needs root, `ip`, `wireguard-go` and `prlimit`; fails loudly without
//! them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Everything the test creates, removed on drop (also when the test panics).
struct World {
    namespace: String,
    interface: String,
    dir: PathBuf,
    wireguard: Option<Child>,
    agent: Option<Child>,
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
            eprintln!("--- agent log ---\n{log}--- end of agent log ---");
        }
        for child in [self.agent.as_mut(), self.wireguard.as_mut()].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "delete", &self.namespace]).status();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.interface));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The agent's open-files limit (soft and hard): below the 300 idle clients of the test.
const OPEN_FILES: u32 = 256;

fn sh(command: &str) -> String {
    let output = Command::new("sh").arg("-c").arg(command).output().expect("sh runs");
    assert!(output.status.success(), "{command}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn in_ns(namespace: &str, command: &str) -> String {
    sh(&format!("ip netns exec {namespace} sh -c '{command}'"))
}

fn require(tool: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).status().is_ok_and(|s| s.success());
    assert!(found, "this test needs `{tool}` (apt-get install -y wireguard-go iproute2 iptables)");
}

/// An HTTP GET from inside the namespace, with bash's /dev/tcp (no curl needed).
fn http_get(namespace: &str, port: u16, path: &str) -> Option<String> {
    let output = Command::new("ip")
        .args(["netns", "exec", namespace, "bash", "-c"])
        .arg(format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3 && cat <&3"
        ))
        .output()
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find(|line| line.starts_with(name)).and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

fn write_node(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join("nodes").join(format!("{name}.yaml")), body).unwrap();
}

#[test]
fn netns_agent_with_file_backend_reconciles_serves_and_cleans_up() {
    assert!(nix_is_root(), "this test needs root (network namespaces, WireGuard, iptables)");
    for tool in ["ip", "wireguard-go", "wg", "iptables-save", "bash", "prlimit"] {
        require(tool);
    }
    let id = std::process::id() % 100_000;
    let mut world = World {
        namespace: format!("kt-agent-{id}"),
        interface: format!("ktag{id}"),
        dir: std::env::temp_dir().join(format!("mesh-agent-netns-{id}")),
        wireguard: None,
        agent: None,
    };
    let ns = world.namespace.clone();
    std::fs::create_dir_all(world.dir.join("nodes")).unwrap();
    let now = mesh_core::time::unix_seconds(std::time::SystemTime::now());
    let remote_key = mesh_core::Key::from_bytes([7; 32]);
    write_node(
        &world.dir,
        "node-a",
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n  annotations:\n    kilo.squat.ai/location: alpha\n    \
         user.example/keep: \"yes\"\n  labels:\n    kubernetes.io/hostname: node-a\nspec:\n  podCIDR: 10.42.1.0/24\n",
    );
    write_node(
        &world.dir,
        "node-b",
        &format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-b\n  annotations:\n    kilo.squat.ai/location: beta\n    \
             kilo.squat.ai/key: {remote_key}\n    kilo.squat.ai/endpoint: 172.31.250.9:51820\n    \
             kilo.squat.ai/internal-ip: 172.31.250.9/24\n    kilo.squat.ai/last-seen: \"{now}\"\nspec:\n  podCIDR: 10.42.2.0/24\n"
        ),
    );

    // The node: one veth end in its own namespace, no default route, so nothing leaves it.
    sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
    sh(&format!(
        "ip link add ktv{id} type veth peer name ktp{id} && ip link set ktp{id} netns {ns} && \
         ip -n {ns} addr add 172.31.250.2/24 dev ktp{id} && ip -n {ns} link set ktp{id} up"
    ));
    world.wireguard = Some(
        Command::new("ip")
            .args(["netns", "exec", &ns, "env", "WG_PROCESS_FOREGROUND=1", "wireguard-go", "-f", &world.interface])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wireguard-go starts"),
    );
    let socket = PathBuf::from(format!("/var/run/wireguard/{}.sock", world.interface));
    wait_for("the wireguard-go UAPI socket", Duration::from_secs(5), || socket.exists().then_some(()));

    let port = 20_000 + u16::try_from(id % 10_000).unwrap();
    let log = std::fs::File::create(world.dir.join("agent.log")).unwrap();
    world.agent = Some(
        // A low open-files limit, as in a tight container: idle HTTP clients must not use it up.
        Command::new("prlimit")
            .arg(format!("--nofile={OPEN_FILES}:{OPEN_FILES}"))
            .args(["--", "ip", "netns", "exec", &ns, env!("CARGO_BIN_EXE_mesh-agent")])
            .args(["--backend=file", "--hostname", "node-a", "--encapsulate=never", "--cni=false"])
            .arg(format!("--cluster-dir={}", world.dir.display()))
            .arg(format!("--interface={}", world.interface))
            .args(["--create-interface=false", "--wireguard-backend=userspace", "--resync-period=1s"])
            .arg(format!("--private-key-file={}", world.dir.join("key/private").display()))
            .arg(format!("--listen=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mesh-agent starts"),
    );

    let health = wait_for("/health", Duration::from_secs(10), || http_get(&ns, port, "/health"));
    assert!(health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"), "{health}");
    let first = wait_for("a reconcile", Duration::from_secs(10), || {
        http_get(&ns, port, "/metrics").and_then(|m| metric(&m, "kilo_reconciles_total")).filter(|n| *n >= 1.0)
    });
    let later = wait_for("kilo_reconciles_total rising", Duration::from_secs(10), || {
        http_get(&ns, port, "/metrics").and_then(|m| metric(&m, "kilo_reconciles_total")).filter(|n| *n > first)
    });
    assert!(later > first);
    let graph = http_get(&ns, port, "/graph?format=dot").unwrap();
    assert!(graph.contains("digraph kilo {") && graph.contains("\"node-b\""), "{graph}");
    let metrics = http_get(&ns, port, "/metrics").unwrap();
    assert_eq!(metric(&metrics, "kilo_leader"), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "kilo_nodes"), Some(2.0), "{metrics}");
    assert_eq!(metric(&metrics, "kilo_errors_total{event=\"apply\"}").unwrap_or(0.0), 0.0, "{metrics}");

    // The node file gains the agent's annotations and keeps everything else.
    let node_file = world.dir.join("nodes/node-a.yaml");
    let annotated = wait_for("the node's annotations", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&node_file).ok()?;
        text.contains("kilo.squat.ai/wireguard-ip: 10.4.0.1/16").then_some(text)
    });
    for expected in [
        "kilo.squat.ai/key:",
        "kilo.squat.ai/endpoint: 172.31.250.2:51820",
        "kilo.squat.ai/internal-ip: 172.31.250.2/24",
        "kilo.squat.ai/last-seen:",
        "kilo.squat.ai/granularity: location",
        "user.example/keep:",
        "podCIDR: 10.42.1.0/24",
    ] {
        assert!(annotated.contains(expected), "{expected} missing in\n{annotated}");
    }
    // The data plane: the remote node as a WireGuard peer, its pod subnet routed into the tunnel.
    let wg = in_ns(&ns, &format!("wg show {} peers", world.interface));
    assert_eq!(wg.trim(), remote_key.to_string());
    let routes = in_ns(&ns, "ip route show proto 107");
    assert!(routes.contains(&format!("10.42.2.0/24 via 10.4.0.2 dev {}", world.interface)), "{routes}");
    assert!(in_ns(&ns, "iptables-save -t nat").contains(":KILO-NAT"));

    // 300 clients connect to the agent's port and send nothing (more than its open-files limit):
    // /health still answers and reconciles go on.
    let idle = mesh_netlink::Namespace::named(&ns)
        .run(|| (0..300).map(|_| std::net::TcpStream::connect(("127.0.0.1", port))).collect::<Result<Vec<_>, _>>())
        .expect("enter the namespace")
        .expect("300 idle clients connect");
    let before = metric(&http_get(&ns, port, "/metrics").expect("/metrics with idle clients"), "kilo_reconciles_total")
        .expect("kilo_reconciles_total");
    for _ in 0..3 {
        let health = http_get(&ns, port, "/health").expect("/health answers with 300 idle clients");
        assert!(health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"), "{health}");
        std::thread::sleep(Duration::from_secs(1));
    }
    wait_for("reconciles with 300 idle clients", Duration::from_secs(10), || {
        http_get(&ns, port, "/metrics").and_then(|m| metric(&m, "kilo_reconciles_total")).filter(|n| *n >= before + 2.0)
    });
    let metrics = http_get(&ns, port, "/metrics").unwrap();
    assert_eq!(metric(&metrics, "kilo_errors_total{event=\"apply\"}").unwrap_or(0.0), 0.0, "{metrics}");
    let log = std::fs::read_to_string(world.dir.join("agent.log")).unwrap();
    assert!(!log.contains("Too many open files"), "{log}");
    drop(idle);

    // SIGTERM: clean-up, exit within 10 s.
    let agent = world.agent.as_mut().unwrap();
    sh(&format!("kill -TERM {}", agent.id()));
    let started = Instant::now();
    let status = wait_for("the agent to exit", Duration::from_secs(10), || agent.try_wait().unwrap());
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(10));
    world.agent = None;
    let cleaned = std::fs::read_to_string(&node_file).unwrap();
    assert!(!cleaned.contains("kilo.squat.ai/key"), "{cleaned}");
    assert!(cleaned.contains("user.example/keep"), "{cleaned}");
    assert_eq!(in_ns(&ns, "ip route show table all proto 107").trim(), "");
    assert!(!in_ns(&ns, "ip rule show").contains("1107"));
    assert!(!in_ns(&ns, "iptables-save").contains("KILO"));
}

fn nix_is_root() -> bool {
    sh("id -u").trim() == "0"
}
