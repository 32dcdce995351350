//! Shared helpers for the real-kernel tests: network namespaces, veth pairs and wireguard-go
//! daemons, each removed by a drop guard (also when a test panics).
//!
//! Prerequisites are checked loudly: a test that cannot run fails with the reason; it never
//! skips. Every name starts with `kt-` (namespaces) or `kt` (interfaces) plus a short test id,
//! so tests can run in parallel threads.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mesh_core::Key;
use mesh_netlink::{DataplaneConfig, LinuxDataplane, Namespace, WireGuardBackend, uapi_socket_path};

/// Fails the test unless it runs as root with `ip`, `iptables-save` and `iptables-restore`.
pub fn require_netns_prerequisites() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, netlink writes, iptables); run `cargo test -p mesh-netlink` as root"
    );
    for tool in ["ip", "iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore", "ping"] {
        require_tool(tool);
    }
}

/// Fails the test unless `tool` is on the PATH.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "this test needs `{tool}` on the PATH (apt-get install wireguard-go wireguard-tools iptables iproute2 iputils-ping)"
    );
}

/// Runs a command and returns its output, failing the test when it cannot start.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program} {}: {error}", args.join(" ")))
}

/// Runs a command that must succeed and returns its stdout.
pub fn check(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace (after removing a leftover of the same name) with `lo` up. It has
    /// no default route: nothing can leave it.
    pub fn new(name: &str) -> Netns {
        let _ = run("ip", &["netns", "del", name]);
        check("ip", &["netns", "add", name]);
        let netns = Netns { name: name.to_owned() };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// `ip -n NAME ARGS…`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        check("ip", &full)
    }

    /// A command inside the namespace.
    pub fn exec(&self, command: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(command);
        run("ip", &full)
    }

    /// A command inside the namespace that must succeed; its stdout.
    pub fn check(&self, command: &[&str]) -> String {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(command);
        check("ip", &full)
    }

    /// Whether one ping to `address` is answered (within a second).
    pub fn pings(&self, address: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "1", address]).status.success()
    }

    /// The data plane's handle on this namespace.
    pub fn namespace(&self) -> Namespace {
        Namespace::named(&self.name)
    }

    /// A veth pair `here` (in this namespace) – `there` (in `other`), both up.
    pub fn veth(&self, here: &str, other: &Netns, there: &str) {
        self.ip(&["link", "add", here, "type", "veth", "peer", "name", there, "netns", &other.name]);
        self.ip(&["link", "set", here, "up"]);
        other.ip(&["link", "set", there, "up"]);
    }

    /// A veth pair with both ends in this namespace, both up (a stand-in private interface).
    pub fn veth_pair(&self, here: &str, there: &str) {
        self.ip(&["link", "add", here, "type", "veth", "peer", "name", there]);
        self.ip(&["link", "set", here, "up"]);
        self.ip(&["link", "set", there, "up"]);
    }

    /// Adds an address (IPv6 without duplicate address detection, so it is usable at once).
    pub fn address(&self, dev: &str, cidr: &str) {
        if cidr.contains(':') {
            self.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"]);
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A wireguard-go daemon serving `interface` inside a namespace, killed by PID on drop.
#[derive(Debug)]
pub struct WireGuardGo {
    pub interface: String,
    child: Child,
}

impl WireGuardGo {
    /// Starts `wireguard-go -f INTERFACE` in the namespace and waits for its UAPI socket.
    pub fn start(netns: &Netns, interface: &str) -> WireGuardGo {
        require_tool("wireguard-go");
        let socket = uapi_socket_path(interface);
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("ip")
            .args(["netns", "exec", &netns.name, "env", "WG_PROCESS_FOREGROUND=1", "wireguard-go", "-f", interface])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start wireguard-go for {interface}: {error}"));
        let daemon = WireGuardGo { interface: interface.to_owned(), child };
        wait_for(&socket, Duration::from_secs(5));
        daemon
    }
}

impl Drop for WireGuardGo {
    fn drop(&mut self) {
        // `ip netns exec` and `env` exec the daemon, so the child's PID is wireguard-go's.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        let _ = std::fs::remove_file(uapi_socket_path(&self.interface));
    }
}

fn wait_for(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < limit, "{} did not appear within {limit:?}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A private key from a seed, and its public key.
pub fn keypair(seed: u8) -> (Key, Key) {
    let mut bytes = [seed; 32];
    // Curve25519 clamping, as `wg genkey` does.
    bytes[0] &= 248;
    bytes[31] = (bytes[31] & 127) | 64;
    let private = wireguard_control::Key(bytes);
    (Key::from_bytes(private.0), Key::from_bytes(private.get_public().0))
}

/// A data plane in `netns` for a userspace WireGuard interface (not created by us).
pub async fn dataplane(
    netns: &Netns,
    interface: &str,
    private_interface: Option<&str>,
    private_key: Key,
) -> LinuxDataplane {
    let mut config = DataplaneConfig::new(private_key);
    config.interface = interface.to_owned();
    config.private_interface = private_interface.map(str::to_owned);
    config.backend = WireGuardBackend::Userspace;
    config.create_interface = false;
    config.namespace = netns.namespace();
    LinuxDataplane::new(config).await.expect("a data plane")
}

/// Parses a socket address.
pub fn endpoint(text: &str) -> SocketAddr {
    text.parse().expect("a socket address")
}
