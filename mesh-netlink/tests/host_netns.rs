//! IP discovery and MTU detection against a real kernel, inside network namespaces these tests
//! create (`kt-host-<pid>-<test>`) and delete again, also when a test fails.
//!
//! They need root and `ip` (iproute2), and fail with a clear message when either is missing.
//! Nothing leaves the namespaces: the tests only read addresses and routes, and the hostnames
//! they pass are IP literals or `localhost`, so no DNS query is ever sent.

use std::net::IpAddr;
use std::process::Command;

use ipnet::IpNet;
use mesh_core::Compatibility;
use mesh_netlink::Namespace;
use mesh_netlink::host::{DEFAULT_MTU, HostNetwork, LocalHost, SelectedIps, auto_mtu, ignored_interfaces};

/// The WireGuard interface name the tests pretend to use (its addresses must be ignored).
const WIREGUARD: &str = "ktwg0";

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn ignored() -> Vec<String> {
    ignored_interfaces(WIREGUARD, Compatibility::None)
}

fn require_prerequisites() {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .expect("an effective uid in /proc/self/status");
    assert_eq!(euid, "0", "netns tests need root (they create network namespaces); run them as root");
    let ip = Command::new("ip").arg("-V").output();
    assert!(
        matches!(&ip, Ok(output) if output.status.success()),
        "netns tests need `ip` from iproute2 (apt-get install -y iproute2): {ip:?}"
    );
}

/// A network namespace, deleted on drop (also when the test panics).
struct Netns {
    name: String,
}

impl Netns {
    fn create(test: &str) -> Netns {
        require_prerequisites();
        let name = format!("kt-host-{}-{test}", std::process::id());
        // A namespace left over by a crashed run with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        Netns { name }
    }

    /// Runs `ip -n <ns> ARGS...`, panicking with its output on failure.
    fn ip(&self, args: &str) {
        let mut command = vec!["ip", "-n", &self.name];
        command.extend(args.split_whitespace());
        run(&command);
    }

    fn namespace(&self) -> Namespace {
        Namespace::named(&self.name)
    }

    fn read(&self, hostname: &str) -> HostNetwork {
        HostNetwork::read(&self.namespace(), hostname).unwrap_or_else(|error| panic!("reading {}: {error}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip").args(["netns", "del", &self.name]).output() {
            Ok(output) if output.status.success() => {}
            other => eprintln!("failed to delete network namespace {}: {other:?}", self.name),
        }
    }
}

fn run(command: &[&str]) {
    let output = Command::new(command[0])
        .args(&command[1..])
        .output()
        .unwrap_or_else(|error| panic!("failed to run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A node-like namespace:
///
/// * `kth0` (MTU 1400): 192.168.77.2/24, 203.0.113.2/24, fd00:77::2/64; the default route goes
///   through it, via 192.168.77.1 on its veth peer `kth1` (in the same namespace, so a packet
///   could never leave it);
/// * `ktwg0` (the "WireGuard interface", ignored): 10.4.0.1/16;
/// * `ktwg1` (its veth peer, MTU 1300): 10.0.0.9/24, which sorts before every other private
///   address.
fn node_namespace(test: &str) -> Netns {
    let ns = Netns::create(test);
    ns.ip("link set lo up");
    ns.ip("link add kth0 mtu 1400 type veth peer name kth1");
    ns.ip("link add ktwg0 type veth peer name ktwg1");
    ns.ip("link set ktwg1 mtu 1300");
    ns.ip("addr add 192.168.77.2/24 dev kth0");
    ns.ip("addr add 203.0.113.2/24 dev kth0");
    ns.ip("addr add fd00:77::2/64 dev kth0 nodad");
    ns.ip("addr add 192.168.77.1/24 dev kth1");
    ns.ip("addr add fd00:77::1/64 dev kth1 nodad");
    ns.ip("addr add 10.4.0.1/16 dev ktwg0");
    ns.ip("addr add 10.0.0.9/24 dev ktwg1");
    for link in ["kth0", "kth1", "ktwg0", "ktwg1"] {
        ns.ip(&format!("link set {link} up"));
    }
    ns.ip("route add default via 192.168.77.1 dev kth0");
    ns
}

fn names(local: &LocalHost) -> (Option<&str>, Option<&str>) {
    (
        local.private_interface.as_ref().map(|interface| interface.name.as_str()),
        local.default_interface.as_ref().map(|interface| interface.name.as_str()),
    )
}

#[test]
fn netns_reads_links_addresses_and_the_default_route() {
    let ns = node_namespace("read");
    // An IPv6 default route elsewhere: the IPv4 one comes first, as in Kilo's route dump.
    ns.ip("-6 route add default dev ktwg1");
    // Cilium's host interface, its IPv6 address first.
    ns.ip("link add cilium_host type veth peer name cilium_net");
    ns.ip("addr add fd00:99::1/128 dev cilium_host nodad");
    ns.ip("addr add 10.0.1.7/32 dev cilium_host");
    let host = ns.read("localhost");
    assert_eq!(host.cilium_host_ip(), Some(net("10.0.1.7/32")));

    let kth0 = host.interface_named("kth0").expect("kth0 is read");
    assert_eq!(kth0.mtu, Some(1400));
    let mut addresses = kth0.addresses.clone();
    addresses.retain(|address| !matches!(address.addr(), IpAddr::V6(v6) if v6.segments()[0] == 0xfe80));
    addresses.sort();
    assert_eq!(addresses, [net("192.168.77.2/24"), net("203.0.113.2/24"), net("fd00:77::2/64")]);
    assert_eq!(host.interface_named("ktwg0").unwrap().addresses.first(), Some(&net("10.4.0.1/16")));
    assert!(host.interface_named("lo").unwrap().addresses.contains(&net("127.0.0.1/8")));
    assert_eq!(host.default_route_interface, Some(kth0.index));
    assert_eq!(host.underlay_mtu(), Some(1400));
    assert_eq!(auto_mtu(host.underlay_mtu(), false), 1320);
    assert_eq!(auto_mtu(host.underlay_mtu(), true), 1320);
    // `localhost` resolves from /etc/hosts to loopback addresses only.
    assert!(!host.hostname_ips.is_empty());
    assert!(host.hostname_ips.iter().all(IpAddr::is_loopback), "{:?}", host.hostname_ips);
    // Only the namespace's interfaces are visible (plus the fallback tunnel devices the kernel
    // adds to every namespace when their modules are loaded).
    let fallback = ["tunl0", "sit0", "ip6tnl0", "ip6gre0", "gre0", "gretap0", "erspan0", "ip_vti0", "ip6_vti0"];
    for interface in &host.interfaces {
        assert!(
            ["lo", "kth0", "kth1", "ktwg0", "ktwg1", "cilium_host", "cilium_net"].contains(&interface.name.as_str())
                || fallback.contains(&interface.name.as_str()),
            "unexpected interface {interface:?}"
        );
    }
}

#[test]
fn netns_discovers_the_node_ips_as_kilo() {
    let ns = node_namespace("discover");

    // The hostname resolves only to loopback: the default route's interface decides.
    let local = ns.read("localhost").discover(&ignored(), &[]).unwrap();
    assert_eq!(local.ips, SelectedIps { private: Some(net("192.168.77.2/24")), public: net("203.0.113.2/24") });
    assert_eq!(names(&local), (Some("kth0"), Some("kth0")));
    assert_eq!(local.private_interface.as_ref().unwrap().mtu, Some(1400));

    // A hostname that is an address on a local interface wins (mask from the interface).
    let local = ns.read("10.0.0.9").discover(&ignored(), &[]).unwrap();
    assert_eq!(local.ips, SelectedIps { private: Some(net("10.0.0.9/24")), public: net("203.0.113.2/24") });
    assert_eq!(names(&local), (Some("ktwg1"), Some("kth0")));
    assert_eq!(local.private_interface.as_ref().unwrap().mtu, Some(1300));

    // ...except when it is on an ignored interface.
    let local = ns.read("10.4.0.1").discover(&ignored(), &[]).unwrap();
    assert_eq!(local.ips.private, Some(net("192.168.77.2/24")));

    // --internal-cidr filters private candidates only; ignored addresses stay ignored.
    let local = ns.read("localhost").discover(&ignored(), &[net("10.0.0.0/8")]).unwrap();
    assert_eq!(local.ips, SelectedIps { private: Some(net("10.0.0.9/24")), public: net("203.0.113.2/24") });
    let local = ns.read("localhost").discover(&ignored(), &[net("10.4.0.0/16")]).unwrap();
    assert_eq!(local.ips, SelectedIps { private: None, public: net("203.0.113.2/24") });
    assert_eq!(local.private_interface, None);
}

#[test]
fn netns_without_a_default_route_then_with_an_ipv6_one() {
    let ns = node_namespace("noroute");
    ns.ip("route del default");
    let host = ns.read("localhost");
    assert_eq!(host.default_route_interface, None);
    assert_eq!(auto_mtu(host.underlay_mtu(), false), DEFAULT_MTU);
    // Only the all-interfaces group is left: 10.0.0.9/24 sorts first among private addresses.
    let local = host.discover(&ignored(), &[]).unwrap();
    assert_eq!(local.ips, SelectedIps { private: Some(net("10.0.0.9/24")), public: net("203.0.113.2/24") });
    assert_eq!(names(&local), (Some("ktwg1"), None));

    // IPv6 refuses a local gateway: this one is a neighbour that does not exist.
    ns.ip("-6 route add default via fd00:77::99 dev kth0");
    let host = ns.read("localhost");
    assert_eq!(host.default_interface().map(|interface| interface.name.as_str()), Some("kth0"));
    assert_eq!(auto_mtu(host.underlay_mtu(), false), 1320);
}

#[test]
fn netns_a_host_with_only_loopback_has_no_valid_ip() {
    let ns = Netns::create("empty");
    ns.ip("link set lo up");
    let error = ns.read("127.0.0.1").discover(&ignored(), &[]).unwrap_err();
    assert_eq!(error.to_string(), "no valid IP was found");
}

#[test]
fn netns_read_async_from_a_runtime() {
    let ns = node_namespace("async");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let host = runtime.block_on(HostNetwork::read_async(&ns.namespace(), "192.168.77.2")).unwrap();
    assert_eq!(host.hostname_ips, ["192.168.77.2".parse::<IpAddr>().unwrap()]);
    let local = host.discover(&ignored(), &[]).unwrap();
    assert_eq!(local.ips.private, Some(net("192.168.77.2/24")));
    // The calling thread stayed in its own namespace.
    let own = HostNetwork::read(&Namespace::Current, "localhost").unwrap();
    assert!(own.interface_named("kth0").is_none());
}

#[test]
fn netns_discover_local_host_passes_over_the_wireguard_interface_and_the_tunnel() {
    let ns = node_namespace("local");
    ns.ip("link add cilium_tunl type veth peer name kttun1");
    ns.ip("addr add 10.0.2.2/24 dev cilium_tunl");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let discover = |hostname: &str, compatibility: Compatibility, internal: &[IpNet]| {
        runtime
            .block_on(mesh_netlink::host::discover_local_host(
                &ns.namespace(),
                hostname,
                WIREGUARD,
                compatibility,
                internal,
            ))
            .unwrap()
    };
    // The hostname's address on the WireGuard interface is passed over: kth0 holds the private IP.
    let (network, local) = discover("10.4.0.1", Compatibility::None, &[]);
    assert_eq!(network.underlay_mtu(), Some(1400), "what was read comes back too");
    assert_eq!(names(&local), (Some("kth0"), Some("kth0")));
    // Cilium's tunnel is passed over with --compatibility=cilium only.
    assert_eq!(names(&discover("10.0.2.2", Compatibility::Cilium, &[]).1).0, Some("kth0"));
    assert_eq!(names(&discover("10.0.2.2", Compatibility::None, &[]).1).0, Some("cilium_tunl"));
    // --internal-cidr decides which private IP, hence which interface.
    assert_eq!(names(&discover("localhost", Compatibility::None, &[net("10.0.0.0/24")]).1).0, Some("ktwg1"));
}
