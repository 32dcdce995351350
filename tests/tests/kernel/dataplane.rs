//! `mesh-netlink` and the agent's tunnel handling on the real kernel: kernel WireGuard, Kilo's
//! `tunl0` and Cilium's `cilium_tunl`, which the host kernel lacks (no `wireguard`, no `ipip`).
//!
//! Scenarios, in the order they run (each in its own network namespaces, named after a per-run
//! id and removed when its [`World`] drops, also on panic; no namespace has a route out):
//!
//! 1. `kernel: wireguard per-peer updates via mesh-netlink`: two namespaces joined by a veth, a
//!    [`LinuxDataplane`] in each (kernel WireGuard, `kilo0` created by it), desired states
//!    computed by mesh-core from a two-location cluster. Apply creates a kernel `wireguard`
//!    `kilo0`; the handshake starts when b, configured last, applies its plan (before any ping:
//!    `Plan::handshakes`); `observe()` equals the desired state; the next plan is empty and
//!    applying it writes nothing; pings cross the tunnel (WireGuard IP, and pod to pod over the topology's
//!    routes). Adding a VPN peer plans only that peer's operations (its peer, route and NAT
//!    exception) and leaves the established session alone: the same latest handshake on both
//!    sides (`wg show kilo0 latest-handshakes`) before and after a new ping, counters not reset.
//!    Clean-up removes `kilo0` (`--clean-up-interface`), our routes (main and 1107) and rules.
//! 2. `kernel: tunl0 for the default compatibility`: with `Compatibility::None` and IPIP
//!    encapsulation (a leader with a non-leader in its location), the data plane makes the
//!    kernel's `tunl0` its tunnel: loading ipip by the request when it was not loaded, reusing
//!    the fallback device otherwise; `tunl0` is up with the private MTU − 20 and the tunnel
//!    address, `observe()` reports it, clean-up removes the address (and leaves the kernel's
//!    device, which cannot be deleted). With the fallback renamed `cilium_tunl`, the error names
//!    that device (kernel-vm.md pitfall 11); in a namespace without a fallback device (created
//!    with `net.core.fb_tunnels_only_for_init_net=1`) `tunl0` is created and clean-up deletes it.
//! 3. `kernel: cilium_tunl reused by mesh-netlink`: the kernel's `tunl0` renamed `cilium_tunl`
//!    (down) in two namespaces; with `Compatibility::Cilium` each data plane brings it up, puts
//!    its address on it (marked as ours) and routes the other side's range via `Dev::Tunnel`
//!    onlink in table 1107; pings flow as real IPIP through both devices (c1's `cilium_tunl`
//!    counts the requests out and the replies in); clean-up leaves `cilium_tunl` up, without
//!    our address, routes or rules.
//! 4. `kernel: agent with and without cilium_tunl`: the real `mesh-agent` (file backend,
//!    `--compatibility=cilium --local=false --encapsulate=always`, kernel WireGuard) as the
//!    non-leader of a two-node location, in two namespaces at once: (a) with `tunl0` renamed
//!    `cilium_tunl` (down) it brings the device up and routes to its leader via `cilium_tunl`,
//!    and after SIGTERM the device is still there, without the routes; (b) with a plain `tunl0`
//!    it logs `cilium_tunl interface not found: run Cilium with enable-ipip-termination=true`,
//!    counts the failed reconciles in `kilo_errors_total{event="apply"}` and keeps running.
//!    `mesh-agent doctor` (node scope, `--compatibility=cilium`) exits 4 in (b), reporting the
//!    missing device with the fix `enable-ipip-termination=true`, and exits 0 in (a).
//!
//! Execs are few on purpose (each costs 50–150 ms under emulation): namespace set-up and checks
//! go through one `ip -batch` per namespace, data-plane state through `observe()`.

use std::fmt::Display;
use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mesh_core::backend::Dataplane;
use mesh_core::state::WireGuardPeer;
use mesh_core::{
    ClusterSnapshot, Compatibility, DesiredState, Dev, Encapsulation, Endpoint, KILO_TABLE, Key, NodeSpec, Operation,
    Options, PeerSpec, Plan, RULE_PRIORITY, Route, Rule, Topology,
};
use mesh_netlink::{DataplaneConfig, LinuxDataplane, Namespace, WireGuardBackend};
use nix::sys::signal::Signal;

use crate::Scenario;
use crate::world::{Outcome, World, in_ns, poll, run, run_id, series, unix_now, write_file};

/// The scenarios of this module, in the order they run.
pub const SCENARIOS: &[Scenario] = &[
    ("kernel: wireguard per-peer updates via mesh-netlink", wireguard_per_peer_updates),
    ("kernel: tunl0 for the default compatibility", tunl0_for_the_default_compatibility),
    ("kernel: cilium_tunl reused by mesh-netlink", cilium_tunl_reused),
    ("kernel: agent with and without cilium_tunl", agent_with_and_without_cilium_tunl),
];

/// Fixed key pairs (private, public), made with `wg genkey | wg pubkey`: deriving public keys
/// needs Curve25519, which this crate does not link, and `wg` costs two execs per key.
const KEYS: [(&str, &str); 4] = [
    ("EHeO4MTq5Vj8Y2krGxQP8nX0iieWjOC+7LfYwDhx1Uc=", "QyPTa6n7wRankKEKZKESA2QXHyWP7UoLLp+XTDtIlEs="),
    ("qH9NUejck+g/CRVWUKwxUP1KEMVvP9tQLQQllbkcrXw=", "G8cDGE28q6/zT7p5uHT3jpU4R+Gc4ctM7fTA3X6/gQM="),
    ("4OeeTzkteWnOCu4AmahF7374VyYheklJLeDQahNSxUw=", "nVz/5sC36IxzspqMiLlD4Ud0+7uP7pyMqQp+LRBenzE="),
    ("aK97YRPn3JaqgMB7VoI+THYNgmjIsCAXlA6UNagbNGU=", "QNfO2ZZ1qyab9xICpsIU0Ca6czKtVdUiDdcYuLGlsQU="),
];

/// The message the cilium-kilo documentation tells users to look for.
const CILIUM_TUNL_MISSING: &str = "cilium_tunl interface not found: run Cilium with enable-ipip-termination=true";

/// The private (underlay) interface's MTU in the tunnel scenarios: not 1500, so that the
/// tunnel's MTU (this − 20) cannot be the fallback device's default of 1480 by chance.
const PRIVATE_MTU: u32 = 1400;

// ---------------------------------------------------------------------------------------------
// Scenario 1: kernel WireGuard

fn wireguard_per_peer_updates() -> Outcome<String> {
    let mut world = World::new(&format!("dpwg{}", run_id()))?;
    let (a, b) = (namespace(&world, "a"), namespace(&world, "b"));
    world.add_namespace(&a)?;
    world.add_namespace(&b)?;
    // The underlay (each node's endpoint and private IP) and a pod address on each side.
    ip_batch(
        &world,
        &a,
        &format!(
            "link add priv0 type veth peer name priv0 netns {b}\naddr add 192.168.61.1/24 dev priv0\n\
             link set priv0 up\naddr add 10.2.1.1/32 dev lo"
        ),
    )?;
    ip_batch(&world, &b, "addr add 192.168.61.2/24 dev priv0\nlink set priv0 up\naddr add 10.2.2.1/32 dev lo")?;
    runtime()?.block_on(wireguard_scenario(&world, &a, &b))
}

async fn wireguard_scenario(world: &World, a: &str, b: &str) -> Outcome<String> {
    let ((private_a, key_a), (private_b, key_b), (_, laptop)) = (keypair(0)?, keypair(1)?, keypair(2)?);
    let now = unix_now();
    // Two locations of one node each: both nodes lead, and each is the other's WireGuard peer.
    let mut snapshot = ClusterSnapshot {
        nodes: vec![
            node_spec("a", "x", "192.168.61.1", "10.2.1.0/24", key_a, now)?,
            node_spec("b", "y", "192.168.61.2", "10.2.2.0/24", key_b, now)?,
        ],
        peers: Vec::new(),
        now,
    };
    let options_a = options("a", Encapsulation::Never, Compatibility::None);
    let options_b = options("b", Encapsulation::Never, Compatibility::None);
    // The topology makes table-1107 routes and rules only when it encapsulates (scenario 2);
    // one of each is added here so that clean-up has some of both to remove.
    let extra_route = kilo_route("192.168.70.5/32", "192.168.61.2", Dev::Private);
    let extra_rule = kilo_rule(Some("10.2.1.0/24"), "192.168.70.5/32");
    let with_extras = |mut desired: DesiredState| {
        desired.routes.insert(extra_route.key(), extra_route);
        desired.rules.insert(extra_rule);
        desired
    };
    let desired_a = with_extras(desired_state(&snapshot, &options_a)?);
    let desired_b = desired_state(&snapshot, &options_b)?;
    let wireguard_ip_of = |desired: &DesiredState| {
        desired.interface.addresses.iter().next().map(|address| address.addr().to_string()).ok_or("no kilo0 address")
    };
    let (ip_a, ip_b) = (wireguard_ip_of(&desired_a)?, wireguard_ip_of(&desired_b)?);

    let mut plane_a = kernel_dataplane(a, private_a, Compatibility::None).await?;
    let mut plane_b = kernel_dataplane(b, private_b, Compatibility::None).await?;
    let first = reconcile(&mut plane_a, &desired_a).await?;
    let configured = Instant::now();
    let second = reconcile(&mut plane_b, &desired_b).await?;
    let first_writes = plane_a.writes();
    ensure(first.handshakes.len() == 1 && second.handshakes.len() == 1, || {
        format!("each side's first plan starts one handshake: {:?} {:?}", first.handshakes, second.handshakes)
    })?;
    // a's datagram reached b before b had kilo0; b's, sent once its plan is applied, makes the
    // handshake with no packet of the test's own.
    // Measured 0.56–0.78 s under emulation; without b's datagram no handshake comes at all.
    poll("the handshake started by b's plan", Duration::from_secs(10), Duration::from_millis(50), || {
        let handshakes = in_ns(a, "wg show kilo0 latest-handshakes")?;
        if handshake(&handshakes, &key_b)? > 0 { Ok(()) } else { Err(format!("none yet: {handshakes}")) }
    })?;
    let handshake_started = configured.elapsed();

    let link = run(Command::new("ip").args(["-n", a, "-d", "link", "show", "kilo0"]))?;
    ensure(link.lines().any(|line| line.trim_start().starts_with("wireguard")), || {
        format!("kilo0 is not a kernel wireguard link: {link}")
    })?;
    let observed = observe(&mut plane_a).await?;
    same_state(&observed.state, &desired_a, "a after the first apply")?;
    same_state(&observe(&mut plane_b).await?.state, &desired_b, "b after the first apply")?;

    // The steady state: nothing to do, nothing written.
    let again = Plan::between(&observed, &desired_a);
    ensure(again.is_empty(), || format!("the second plan is not empty: {again:?}"))?;
    apply(&mut plane_a, &again).await?;
    ensure(plane_a.writes() == first_writes, || {
        format!("an empty plan wrote {} times", plane_a.writes() - first_writes)
    })?;

    // Over the tunnel: WireGuard IP to WireGuard IP (the first ping makes the handshake), and
    // pod to pod over the topology's routes (the reply comes back through kilo0 as well).
    let ping_started = Instant::now();
    let pings = format!("ping -n -q -c1 -W3 {ip_b} >/dev/null && ping -n -q -c1 -W2 -I 10.2.1.1 10.2.2.1 >/dev/null");
    in_ns(a, &pings).map_err(|error| format!("no ping across kilo0: {error}"))?;
    let first_ping = ping_started.elapsed();
    let handshakes_a = in_ns(a, "wg show kilo0 latest-handshakes")?;
    let handshakes_b = in_ns(b, "wg show kilo0 latest-handshakes")?;
    let handshake_b = handshake(&handshakes_a, &key_b)?;
    let handshake_a = handshake(&handshakes_b, &key_a)?;
    ensure(handshake_b > 0 && handshake_a > 0, || format!("no handshake: a: {handshakes_a} b: {handshakes_b}"))?;

    // A new handshake would carry a later second than this one.
    std::thread::sleep(Duration::from_millis(1_100));
    snapshot.peers.push(PeerSpec {
        name: "laptop".to_owned(),
        allowed_ips: vec![net("10.5.0.1/32")?],
        public_key: Some(laptop),
        ..PeerSpec::default()
    });
    let changed = with_extras(desired_state(&snapshot, &options_a)?);
    let before_change = observe(&mut plane_a).await?;
    let stats_before = before_change.peer_stats.get(&key_b).copied().unwrap_or_default();
    let plan = Plan::between(&before_change, &changed);
    let foreign: Vec<&Operation> = plan
        .operations
        .iter()
        .filter(|operation| match operation {
            Operation::AddPeer(peer) => peer.public_key != laptop,
            Operation::AddRoute(route) => route.dst.to_string() != "10.5.0.1/32",
            // The peer's allowed IPs become a KILO-NAT exception.
            Operation::EditFirewall(_) => false,
            _ => true,
        })
        .collect();
    let adds = plan.operations.iter().filter(|operation| matches!(operation, Operation::AddPeer(_))).count();
    ensure(foreign.is_empty() && adds == 1, || format!("adding a peer planned more than that peer: {plan:?}"))?;
    let writes = plane_a.writes();
    apply(&mut plane_a, &plan).await?;
    let change_writes = plane_a.writes() - writes;
    ensure(change_writes == plan.operations.len() as u64, || {
        format!("{change_writes} writes for {} operations", plan.operations.len())
    })?;
    let after = observe(&mut plane_a).await?;
    same_state(&after.state, &changed, "a after adding the peer")?;

    // The session with b survives: pings still pass, and neither side shook hands again.
    let check = format!("{pings} && wg show kilo0 latest-handshakes");
    let handshakes_a = in_ns(a, &check).map_err(|error| format!("no ping after the peer change: {error}"))?;
    let handshakes_b = in_ns(b, "wg show kilo0 latest-handshakes")?;
    ensure(
        handshake(&handshakes_a, &key_b)? == handshake_b && handshake(&handshakes_b, &key_a)? == handshake_a,
        || {
            format!(
                "the session was reset: handshakes were a {handshake_b} b {handshake_a}, now a: {handshakes_a} b: {handshakes_b}"
            )
        },
    )?;
    ensure(handshake(&handshakes_a, &laptop)? == 0, || format!("the laptop shook hands?! {handshakes_a}"))?;
    let stats_after = observe(&mut plane_a).await?.peer_stats.get(&key_b).copied().unwrap_or_default();
    ensure(stats_after.rx_bytes > stats_before.rx_bytes && stats_after.tx_bytes > stats_before.tx_bytes, || {
        format!("b's counters went back or stood still: {stats_before:?} -> {stats_after:?}")
    })?;

    // Clean-up: kilo0 (we created it; --clean-up-interface), routes of ours in every table, rules.
    clean_up(&mut plane_a).await?;
    let left = ip_batch(world, a, "link show\nroute show table all proto 107\nroute show table 1107\nrule show")?;
    ensure(!left.contains("kilo0") && !left.contains("1107") && !left.contains("10.2.2.0/24"), || {
        format!("clean-up left something: {left}")
    })?;
    same_state(&observe(&mut plane_a).await?.state, &DesiredState::default(), "a after clean-up")?;

    let kinds: Vec<&str> = plan.operations.iter().map(Operation::kind).collect();
    Ok(format!(
        "kilo0 kernel wireguard ({ip_a} <-> {ip_b}); first apply {} ops/{first_writes} writes, resync 0 writes; \
         handshake started by b's plan in {:.2}s (no packet of ours); first ping {:.2}s; +peer: {} \
         ({change_writes} writes), b's session kept (same handshake on both sides), rx {}->{} B",
        first.operations.len(),
        handshake_started.as_secs_f64(),
        first_ping.as_secs_f64(),
        kinds.join(","),
        stats_before.rx_bytes,
        stats_after.rx_bytes
    ))
}

// ---------------------------------------------------------------------------------------------
// Scenario 2: tunl0 for --compatibility=none

fn tunl0_for_the_default_compatibility() -> Outcome<String> {
    let mut world = World::new(&format!("dptun{}", run_id()))?;
    let (reused, renamed, own) = (namespace(&world, "t"), namespace(&world, "r"), namespace(&world, "o"));
    world.add_namespace(&reused)?;
    world.add_namespace(&renamed)?;
    let private = format!(
        "link add priv0 mtu {PRIVATE_MTU} type veth peer name peer0\naddr add 192.168.62.1/24 dev priv0\n\
         link set priv0 up\nlink set peer0 up"
    );
    ip_batch(&world, &reused, &private)?;
    let loaded_before = ipip_loaded();
    let runtime = runtime()?;

    // (1) The kernel's tunl0: a leader with a non-leader in its location, IPIP always.
    let ((private_a, key_a), (_, key_b)) = (keypair(0)?, keypair(1)?);
    let now = unix_now();
    let mut leader = node_spec("a", "x", "192.168.62.1", "10.2.1.0/24", key_a, now)?;
    leader.leader = true;
    let snapshot = ClusterSnapshot {
        nodes: vec![leader, node_spec("b", "x", "192.168.62.2", "10.2.2.0/24", key_b, now)?],
        peers: Vec::new(),
        now,
    };
    let desired = desired_state(&snapshot, &options("a", Encapsulation::Always, Compatibility::None))?;
    let address = desired.tunnel_address.map(|address| address.to_string()).ok_or("no tunnel address desired")?;
    ensure(desired.routes.values().any(|route| route.dev == Dev::Tunnel) && !desired.rules.is_empty(), || {
        format!("the topology routes nothing via the tunnel: {desired:?}")
    })?;
    let expected_mtu = PRIVATE_MTU - mesh_netlink::IPIP_OVERHEAD;
    let steady = runtime.block_on(async {
        let mut plane = kernel_dataplane(&reused, private_a, Compatibility::None).await?;
        reconcile(&mut plane, &desired).await?;
        let tunnel = run(Command::new("ip").args(["-n", &reused, "-d", "addr", "show", "dev", "tunl0"]))?;
        check_tunl0(&tunnel, expected_mtu, &address)?;
        let observed = observe(&mut plane).await?;
        ensure(observed.state.tunnel_address == desired.tunnel_address, || {
            format!("observe() reports tunnel address {:?}", observed.state.tunnel_address)
        })?;
        same_state(&observed.state, &desired, "after the apply")?;
        let writes = plane.writes();
        reconcile(&mut plane, &desired).await?;
        let steady = plane.writes() - writes;
        ensure(steady == 0, || format!("the steady state wrote {steady} times"))?;
        clean_up(&mut plane).await?;
        let tunnel = run(Command::new("ip").args(["-n", &reused, "-d", "addr", "show", "dev", "tunl0"]))?;
        ensure(!tunnel.contains(&format!("inet {address}")), || format!("clean-up left our address: {tunnel}"))?;
        same_state(&observe(&mut plane).await?.state, &DesiredState::default(), "after clean-up")?;
        Ok::<_, String>(steady)
    })?;

    // (2) The fallback renamed (as Cilium does): no tunl0 can exist beside it, and the error
    // says which device is in the way instead of "tunl0 not found".
    ip_batch(&world, &renamed, &format!("link set tunl0 name cilium_tunl\n{private}"))?;
    let set_address =
        Plan { operations: vec![Operation::SetTunnelAddress(Some(net("10.2.1.1/32")?))], ..Plan::default() };
    let error = runtime.block_on(async {
        let mut plane = kernel_dataplane(&renamed, private_a, Compatibility::None).await?;
        match plane.apply(&set_address).await {
            Ok(()) => Err("tunl0 was set up beside the renamed fallback device".to_owned()),
            Err(error) => Ok(error.to_string()),
        }
    })?;
    ensure(error.contains("exists as cilium_tunl") && error.contains("--compatibility=cilium"), || {
        format!("the error does not name cilium_tunl: {error}")
    })?;
    let untouched = run(Command::new("ip").args(["-n", &renamed, "addr", "show", "dev", "cilium_tunl"]))?;
    ensure(!untouched.contains("10.2.1.1") && !flags(&untouched).contains(&"UP"), || {
        format!("cilium_tunl was changed: {untouched}")
    })?;

    // (3) A namespace without the fallback device: tunl0 is ours, so clean-up deletes it.
    {
        let _fallback = FallbackTunnels::only_in_init_net()?;
        world.add_namespace(&own)?;
    }
    let links = ip_batch(&world, &own, &format!("{private}\nlink show"))?;
    ensure(!links.contains("tunl0"), || format!("the fallback device exists anyway: {links}"))?;
    runtime.block_on(async {
        let mut plane = kernel_dataplane(&own, private_a, Compatibility::None).await?;
        apply(&mut plane, &set_address).await?;
        let tunnel = run(Command::new("ip").args(["-n", &own, "-d", "addr", "show", "dev", "tunl0"]))?;
        check_tunl0(&tunnel, expected_mtu, "10.2.1.1/32")?;
        clean_up(&mut plane).await
    })?;
    let links = run(Command::new("ip").args(["-n", &own, "link", "show"]))?;
    ensure(!links.contains("tunl0"), || format!("clean-up left the tunl0 it created: {links}"))?;

    Ok(format!(
        "ipip {}; tunl0 up, mtu {expected_mtu}, {address}, resync {steady} writes, address gone after clean-up; \
         renamed fallback named in the error; own tunl0 created and deleted",
        if loaded_before {
            "already loaded: fallback tunl0 reused"
        } else {
            "loaded by our request: fallback tunl0 used"
        }
    ))
}

/// Checks `ip -d addr show dev tunl0`: any-to-any IPIP, up, with this MTU and address.
fn check_tunl0(tunnel: &str, mtu: u32, address: &str) -> Outcome {
    ensure(
        // `ip -d` says `ipip any …` for the fallback (any inner protocol) and `ipip ipip …`
        // for a device created with IPIP as its protocol (ours, as Kilo's `mode ipip`).
        tunnel.contains("link/ipip")
            && tunnel.contains("remote any local any")
            && tunnel.contains(&format!("mtu {mtu} "))
            && flags(tunnel).contains(&"UP")
            && tunnel.contains(&format!("inet {address}")),
        || format!("tunl0 is not an up IPIP device with mtu {mtu} and {address}: {tunnel}"),
    )
}

/// Sets `net.core.fb_tunnels_only_for_init_net` to 1 (namespaces created meanwhile get no
/// fallback `tunl0`) and restores the old value on drop: the setting is global to the VM.
#[derive(Debug)]
struct FallbackTunnels(String);

impl FallbackTunnels {
    const PATH: &str = "/proc/sys/net/core/fb_tunnels_only_for_init_net";

    fn only_in_init_net() -> Outcome<FallbackTunnels> {
        let old = std::fs::read_to_string(Self::PATH).map_err(|error| format!("read {}: {error}", Self::PATH))?;
        std::fs::write(Self::PATH, "1").map_err(|error| format!("write {}: {error}", Self::PATH))?;
        Ok(FallbackTunnels(old.trim().to_owned()))
    }
}

impl Drop for FallbackTunnels {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario 3: cilium_tunl through mesh-netlink, with IPIP traffic

fn cilium_tunl_reused() -> Outcome<String> {
    load_ipip()?;
    let mut world = World::new(&format!("dpcil{}", run_id()))?;
    let (one, two) = (namespace(&world, "c1"), namespace(&world, "c2"));
    world.add_namespace(&one)?;
    world.add_namespace(&two)?;
    // What Cilium with enable-ipip-termination=true leaves: the fallback device, renamed, down.
    let before = ip_batch(
        &world,
        &one,
        &format!(
            "link set tunl0 name cilium_tunl\nlink add priv0 type veth peer name priv0 netns {two}\n\
             addr add 192.168.63.1/24 dev priv0\nlink set priv0 up\nlink show cilium_tunl"
        ),
    )?;
    ensure(!flags(&before).contains(&"UP"), || format!("cilium_tunl is up before the data plane starts: {before}"))?;
    ip_batch(&world, &two, "link set tunl0 name cilium_tunl\naddr add 192.168.63.2/24 dev priv0\nlink set priv0 up")?;

    // Each side: its tunnel address, and the other's range via cilium_tunl (onlink, to the
    // other's underlay address) in table 1107 behind a rule, as Kilo's cilium routes are.
    let side = |address: &str, other_range: &str, other_underlay: &str| -> Outcome<DesiredState> {
        let mut desired = DesiredState { tunnel_address: Some(net(address)?), ..DesiredState::default() };
        let route = kilo_route(other_range, other_underlay, Dev::Tunnel);
        desired.routes.insert(route.key(), route);
        desired.rules.insert(kilo_rule(None, other_range));
        Ok(desired)
    };
    let desired_one = side("10.30.1.1/32", "10.30.2.0/24", "192.168.63.2")?;
    let desired_two = side("10.30.2.1/32", "10.30.1.0/24", "192.168.63.1")?;

    runtime()?.block_on(async {
        let mut plane_one = kernel_dataplane(&one, keypair(0)?.0, Compatibility::Cilium).await?;
        let mut plane_two = kernel_dataplane(&two, keypair(1)?.0, Compatibility::Cilium).await?;
        reconcile(&mut plane_one, &desired_one).await?;
        reconcile(&mut plane_two, &desired_two).await?;
        same_state(&observe(&mut plane_one).await?.state, &desired_one, "c1 after the apply")?;
        same_state(&observe(&mut plane_two).await?.state, &desired_two, "c2 after the apply")?;
        let applied = ip_batch(&world, &one, "addr show dev cilium_tunl\nroute show table 1107")?;
        ensure(
            flags(&applied).contains(&"UP")
                && applied.contains("inet 10.30.1.1/32")
                && applied.contains("10.30.2.0/24 via 192.168.63.2 dev cilium_tunl proto 107 onlink"),
            || format!("cilium_tunl is not up with our address and route: {applied}"),
        )?;

        // Real IPIP: c1 encapsulates to c2's underlay address through cilium_tunl, c2's
        // fallback device decapsulates, and the reply comes back the same way.
        let counters = "cat /sys/class/net/cilium_tunl/statistics/tx_packets /sys/class/net/cilium_tunl/statistics/rx_packets";
        let traffic = in_ns(&one, &format!("{counters}; ping -n -q -c3 -i0.2 -W2 10.30.2.1 >/dev/null; {counters}"))
            .map_err(|error| format!("no ping over cilium_tunl: {error}"))?;
        let numbers: Vec<u64> = traffic.split_whitespace().filter_map(|word| word.parse().ok()).collect();
        let [tx_before, rx_before, tx_after, rx_after] = numbers[..] else {
            return Err(format!("unexpected counters: {traffic}"));
        };
        ensure(tx_after >= tx_before + 3 && rx_after >= rx_before + 3, || {
            format!("cilium_tunl counters did not rise by 3: tx {tx_before}->{tx_after} rx {rx_before}->{rx_after}")
        })?;

        // Clean-up: our address, routes and rules go; Cilium's device stays, up.
        clean_up(&mut plane_one).await?;
        let left = ip_batch(&world, &one, "addr show dev cilium_tunl\nroute show table 1107\nrule show")?;
        ensure(
            flags(&left).contains(&"UP")
                && !left.contains("10.30.1.1")
                && !left.contains("10.30.2.0/24")
                && !left.contains("1107"),
            || format!("clean-up touched cilium_tunl or left something: {left}"),
        )?;
        same_state(&observe(&mut plane_one).await?.state, &DesiredState::default(), "c1 after clean-up")?;
        Ok(format!(
            "cilium_tunl brought up, 10.30.1.1/32, table-1107 onlink route; 3 pings as IPIP: tx {tx_before}->{tx_after}, \
             rx {rx_before}->{rx_after}; kept up after clean-up"
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Scenario 4: the agent with and without cilium_tunl

/// The agents' HTTP port, inside their own namespaces.
const AGENT_PORT: u16 = 1107;

fn agent_with_and_without_cilium_tunl() -> Outcome<String> {
    load_ipip()?;
    let agent = crate::agent()?;
    let mut world = World::new(&format!("dpag{}", run_id()))?;
    let (with, without) = (namespace(&world, "with"), namespace(&world, "without"));
    for (label, namespace, rename) in [("with", &with, true), ("without", &without, false)] {
        world.add_namespace(namespace)?;
        let rename = if rename { "link set tunl0 name cilium_tunl\n" } else { "" };
        ip_batch(
            &world,
            namespace,
            &format!(
                "{rename}link add priv0 type veth peer name peer0\naddr add 192.168.64.2/24 dev priv0\n\
                 link set priv0 up\nlink set peer0 up"
            ),
        )?;
        write_cluster(&world.dir.join(label))?;
    }
    let started = Instant::now();
    for (label, namespace) in [("with", &with), ("without", &without)] {
        let dir = world.dir.join(label);
        let args: Vec<String> = vec![
            "--backend=file".to_owned(),
            format!("--cluster-dir={}", dir.display()),
            "--hostname=host".to_owned(),
            "--interface=kilo0".to_owned(),
            "--wireguard-backend=kernel".to_owned(),
            "--compatibility=cilium".to_owned(),
            "--local=false".to_owned(),
            "--encapsulate=always".to_owned(),
            "--cni=false".to_owned(),
            "--mtu=1420".to_owned(),
            "--internal-cidr=192.168.64.0/24".to_owned(),
            format!("--private-key-file={}", dir.join("key").display()),
            format!("--listen=127.0.0.1:{AGENT_PORT}"),
        ];
        world.spawn(&format!("agent-{label}"), namespace, &agent, &args)?;
    }

    // (a) The route to the leader's WireGuard IP goes through cilium_tunl, which is now up;
    // (b) the documented message. Both agents start at once; each is timed on its own.
    let (mut route, mut route_time, mut message_time) = (None, None, None);
    let log = world.log_path("agent-without");
    loop {
        if route.is_none() {
            let state = ip_batch(&world, &with, "link show cilium_tunl\nroute show proto 107")?;
            let line = state.lines().find(|line| line.contains("via 10.2.1.77 dev cilium_tunl")).map(str::to_owned);
            if flags(&state).contains(&"UP") && line.is_some() {
                (route, route_time) = (line, Some(started.elapsed()));
            }
        }
        if message_time.is_none() && std::fs::read_to_string(&log).is_ok_and(|text| text.contains(CILIUM_TUNL_MISSING))
        {
            message_time = Some(started.elapsed());
        }
        if route.is_some() && message_time.is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "after 30 s: route via cilium_tunl {}, message {}\n{}",
                if route.is_some() { "installed" } else { "missing" },
                if message_time.is_some() { "logged" } else { "not logged" },
                world.log_tails(15)
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let route = route.unwrap_or_default();
    ensure(route.contains("onlink"), || format!("the route is not onlink: {route}"))?;
    let with_metrics = http_get(&with, "/metrics")?;
    let with_errors = series(&with_metrics, "kilo_errors_total{event=\"apply\"}");
    ensure(with_errors == 0.0, || {
        format!("the agent with cilium_tunl failed {with_errors} passes\n{}", world.log_tails(15))
    })?;

    // (b) goes on: it retries (with back-off) and counts each failure, without exiting.
    let metrics = poll("a second failed reconcile", Duration::from_secs(15), Duration::from_millis(250), || {
        let metrics = http_get(&without, "/metrics")?;
        let errors = series(&metrics, "kilo_errors_total{event=\"apply\"}");
        if errors >= 2.0 { Ok(metrics) } else { Err(format!("kilo_errors_total{{event=\"apply\"}} is {errors}")) }
    })?;
    let apply_errors = series(&metrics, "kilo_errors_total{event=\"apply\"}");
    ensure(world.is_running("agent-without"), || {
        format!("the agent without cilium_tunl exited\n{}", world.log_tails(15))
    })?;
    // Kilo's /health says only that the process serves; failures are in the metrics.
    let health = http_get(&without, "/health").map(|_| "200").unwrap_or("not 200");
    let with_log = std::fs::read_to_string(world.log_path("agent-with")).unwrap_or_default();
    ensure(!with_log.contains(CILIUM_TUNL_MISSING), || "the agent with cilium_tunl did not find it".to_owned())?;

    // `mesh-agent doctor` on each node, as in the agent's pod: without the device a problem with
    // Cilium's fix and exit 4; with it (and the agent converged) nothing to report.
    let (code, report) = doctor(&world, &agent, &without, "without")?;
    let missing = findings(&report, "problem").into_iter().find(|finding| finding["check"] == "cilium-tunl");
    let fix = missing.as_ref().and_then(|finding| finding["fix"].as_str()).unwrap_or_default();
    ensure(code == Some(4) && fix.contains("enable-ipip-termination=true"), || {
        format!("doctor without cilium_tunl (exit {code:?}) did not report it with the fix: {report:#}")
    })?;
    let (code, report) = doctor(&world, &agent, &with, "with")?;
    let passed = findings(&report, "ok").iter().any(|finding| finding["check"] == "cilium-tunl");
    ensure(code == Some(0) && passed && findings(&report, "problem").is_empty(), || {
        format!("doctor with cilium_tunl (exit {code:?}) is not silent: {report:#}")
    })?;

    // Both stop cleanly on SIGTERM; clean-up removes the route and leaves Cilium's device.
    for label in ["agent-with", "agent-without"] {
        world.signal(label, Signal::SIGTERM)?;
    }
    for label in ["agent-with", "agent-without"] {
        let status = world.wait_exit(label, Duration::from_secs(15))?;
        ensure(status.success(), || format!("{label} exited with {status}\n{}", world.log_tails(15)))?;
    }
    let left = ip_batch(&world, &with, "link show cilium_tunl\nroute show proto 107\nroute show table 1107")?;
    ensure(left.contains("cilium_tunl") && !left.contains("via 10.2.1.77"), || {
        format!("after SIGTERM: cilium_tunl gone or routes left: {left}")
    })?;
    let seconds = |time: Option<Duration>| time.unwrap_or_default().as_secs_f64();
    Ok(format!(
        "(a) cilium_tunl up and `{}` after {:.1}s, 0 apply errors, device kept after SIGTERM; (b) message after \
         {:.1}s, {apply_errors} apply errors, still running, /health {health}; doctor: exit 4 and `{fix}` without, \
         exit 0 with",
        route.trim(),
        seconds(route_time),
        seconds(message_time)
    ))
}

/// The cluster of the agent scenario: `host` (the agent's node, no leader annotation) and its
/// location's leader, whose annotations make it ready (as its own agent would have published
/// them) and whose `cilium_host` address is the IPIP gateway to it.
fn write_cluster(dir: &Path) -> Outcome {
    let nodes = dir.join("nodes");
    write_file(
        &nodes.join("host.yaml"),
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: host\n  annotations:\n    kilo.squat.ai/location: loc\n\
         spec:\n  podCIDR: 10.2.2.0/24\n",
    )?;
    write_file(
        &nodes.join("leader.yaml"),
        &format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: leader\n  annotations:\n    kilo.squat.ai/location: loc\n\
             \x20   kilo.squat.ai/leader: \"true\"\n    kilo.squat.ai/key: {key}\n\
             \x20   kilo.squat.ai/endpoint: 192.168.64.1:51820\n    kilo.squat.ai/internal-ip: 192.168.64.1/24\n\
             \x20   kilo.squat.ai/cni-compatibility-ip: 10.2.1.77/32\n    kilo.squat.ai/last-seen: \"{now}\"\n\
             spec:\n  podCIDR: 10.2.1.0/24\n",
            key = KEYS[3].1,
            now = unix_now()
        ),
    )
}

/// `mesh-agent doctor -o json` for `host` in `namespace`, with the agent's flags, on the Node
/// files of the cluster `label` as the agent left them (its published annotations included):
/// the exit code and the report.
fn doctor(world: &World, agent: &Path, namespace: &str, label: &str) -> Outcome<(Option<i32>, serde_json::Value)> {
    let nodes = world.dir.join(label).join("nodes");
    let read = |name: &str| {
        let path = nodes.join(format!("{name}.yaml"));
        std::fs::read_to_string(&path).map_err(|error| format!("read {}: {error}", path.display()))
    };
    let stream = world.dir.join(format!("doctor-{label}.yaml"));
    write_file(&stream, &format!("{}\n---\n{}", read("host")?, read("leader")?))?;
    let output = Command::new("ip")
        .args(["netns", "exec", namespace])
        .arg(agent)
        .args(["doctor", "--nodes"])
        .arg(&stream)
        .args(["--hostname=host", "--interface=kilo0", "--compatibility=cilium", "--local=false"])
        .args(["--encapsulate=always", "--cni=false", "--mesh-granularity=location", "--internal-cidr=192.168.64.0/24"])
        .args(["-o", "json", &format!("--status-url=http://127.0.0.1:{AGENT_PORT}/status")])
        .output()
        .map_err(|error| format!("cannot run doctor: {error}"))?;
    crate::world::doctor_report(&output, &format!("in {namespace}"))
}

/// The findings of a doctor report with `verdict` (`ok`, `problem`, `skipped`).
fn findings(report: &serde_json::Value, verdict: &str) -> Vec<serde_json::Value> {
    let all = report["findings"].as_array().cloned().unwrap_or_default();
    all.into_iter().filter(|finding| finding["verdict"] == verdict).collect()
}

/// GET `path` from the agent in `namespace`.
fn http_get(namespace: &str, path: &str) -> Outcome<String> {
    crate::world::http_get(namespace, AGENT_PORT, path)
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// A current-thread runtime: the rtnetlink connection of each data plane runs as a task on it
/// while the scenario awaits (blocking between awaits is fine: nothing is in flight then).
fn runtime() -> Outcome<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|error| format!("tokio: {error}"))
}

/// A namespace name of this world.
fn namespace(world: &World, suffix: &str) -> String {
    format!("kd-{}-{suffix}", world.id)
}

/// Runs `commands` (one `ip` command per line, without `ip`) in `namespace` with one exec of
/// `ip -batch`; stops at the first failure. Returns what they printed.
fn ip_batch(world: &World, namespace: &str, commands: &str) -> Outcome<String> {
    static BATCHES: AtomicUsize = AtomicUsize::new(0);
    let path = world.dir.join(format!("batch-{}.ip", BATCHES.fetch_add(1, Ordering::Relaxed)));
    write_file(&path, &format!("{commands}\n"))?;
    run(Command::new("ip").args(["-n", namespace, "-batch"]).arg(&path))
        .map_err(|error| format!("{error}\nbatch:\n{commands}"))
}

/// The flags of the first link in `ip link`/`ip addr` output (`<NOARP,UP,LOWER_UP>`).
fn flags(output: &str) -> Vec<&str> {
    output
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map_or_else(Vec::new, |(flags, _)| flags.split(',').collect())
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Outcome {
    if condition { Ok(()) } else { Err(message()) }
}

/// Parses text into an address type the context names (this crate has no direct `ipnet`).
fn net<T: FromStr>(text: &str) -> Outcome<T>
where
    T::Err: Display,
{
    text.parse().map_err(|error| format!("{text:?}: {error}"))
}

/// Key pair `index` of [`KEYS`].
fn keypair(index: usize) -> Outcome<(Key, Key)> {
    let (private, public) = KEYS[index];
    let key = |text: &str| Key::from_base64(text).map_err(|error| format!("key {text}: {error}"));
    Ok((key(private)?, key(public)?))
}

/// A ready node whose endpoint and private IP are `ip` (port 51820, /24).
fn node_spec(name: &str, location: &str, ip: &str, pods: &str, key: Key, now: i64) -> Outcome<NodeSpec> {
    Ok(NodeSpec {
        name: name.to_owned(),
        endpoint: Some(Endpoint::parse(&format!("{ip}:51820")).map_err(|error| format!("endpoint {ip}: {error}"))?),
        key: Some(key),
        internal_ip: Some(net(&format!("{ip}/24"))?),
        location: location.to_owned(),
        pod_subnet: Some(net(pods)?),
        last_seen: Some(now),
        ..NodeSpec::default()
    })
}

fn options(host: &str, encapsulation: Encapsulation, compatibility: Compatibility) -> Options {
    Options { encapsulation, compatibility, mtu: Some(1420), ..Options::for_host(host) }
}

/// The node's desired state, as the agent computes it.
fn desired_state(snapshot: &ClusterSnapshot, options: &Options) -> Outcome<DesiredState> {
    let topology = Topology::compute(snapshot, options).map_err(|error| format!("topology: {error}"))?;
    Ok(DesiredState::from_topology(&topology, options).0)
}

fn kilo_route(dst: &str, gateway: &str, dev: Dev) -> Route {
    Route {
        dst: net(dst).expect("a CIDR literal"),
        gateway: Some(net(gateway).expect("an IP literal")),
        dev,
        src: None,
        table: KILO_TABLE,
        onlink: true,
    }
}

fn kilo_rule(src: Option<&str>, dst: &str) -> Rule {
    Rule {
        src: src.map(|src| net(src).expect("a CIDR literal")),
        dst: Some(net(dst).expect("a CIDR literal")),
        iif: None,
        table: KILO_TABLE,
        priority: RULE_PRIORITY,
    }
}

/// A data plane in `namespace` with kernel WireGuard on `kilo0` (created by it, deleted by
/// clean-up) and `priv0` as the private interface.
async fn kernel_dataplane(namespace: &str, key: Key, compatibility: Compatibility) -> Outcome<LinuxDataplane> {
    let mut config = DataplaneConfig::new(key);
    config.interface = "kilo0".to_owned();
    config.private_interface = Some("priv0".to_owned());
    config.compatibility = compatibility;
    config.backend = WireGuardBackend::Kernel;
    config.create_interface = true;
    config.clean_up_interface = true;
    config.namespace = Namespace::named(namespace);
    LinuxDataplane::new(config).await.map_err(|error| format!("data plane in {namespace}: {error}"))
}

async fn observe(plane: &mut LinuxDataplane) -> Outcome<mesh_core::ObservedState> {
    plane.observe().await.map_err(|error| error.to_string())
}

async fn apply(plane: &mut LinuxDataplane, plan: &Plan) -> Outcome {
    plane.apply(plan).await.map_err(|error| error.to_string())
}

async fn clean_up(plane: &mut LinuxDataplane) -> Outcome {
    plane.clean_up().await.map_err(|error| error.to_string())
}

/// One agent pass: observe, plan, apply. Returns the plan.
async fn reconcile(plane: &mut LinuxDataplane, desired: &DesiredState) -> Outcome<Plan> {
    let plan = Plan::between(&observe(plane).await?, desired);
    apply(plane, &plan).await?;
    Ok(plan)
}

/// Fails with the differing parts when `observed` is not `expected`.
fn same_state(observed: &DesiredState, expected: &DesiredState, when: &str) -> Outcome {
    if observed == expected {
        return Ok(());
    }
    let mut differences = Vec::new();
    if observed.interface != expected.interface {
        differences.push(format!("interface {:?} != {:?}", observed.interface, expected.interface));
    }
    if observed.peers != expected.peers {
        let peers = |peers: &std::collections::BTreeMap<Key, WireGuardPeer>| format!("{:?}", peers.values());
        differences.push(format!("peers {} != {}", peers(&observed.peers), peers(&expected.peers)));
    }
    if observed.tunnel_address != expected.tunnel_address {
        differences.push(format!("tunnel {:?} != {:?}", observed.tunnel_address, expected.tunnel_address));
    }
    if observed.routes != expected.routes {
        differences.push(format!("routes {:?} != {:?}", observed.routes, expected.routes));
    }
    if observed.rules != expected.rules {
        differences.push(format!("rules {:?} != {:?}", observed.rules, expected.rules));
    }
    if observed.firewall != expected.firewall {
        differences.push("the firewall differs".to_owned());
    }
    Err(format!("observe() is not the desired state {when}: {}", differences.join("; ")))
}

/// The latest handshake with `key` in `wg show IFACE latest-handshakes` output (0: none).
fn handshake(output: &str, key: &Key) -> Outcome<u64> {
    let key = key.to_base64();
    output
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(peer, _)| *peer == key)
        .and_then(|(_, time)| time.trim().parse().ok())
        .ok_or_else(|| format!("no handshake entry for {key} in: {output}"))
}

/// Whether the ipip module is loaded (then every namespace has a fallback `tunl0`).
fn ipip_loaded() -> bool {
    std::fs::read_to_string("/proc/modules").is_ok_and(|modules| modules.lines().any(|line| line.starts_with("ipip ")))
}

/// Loads ipip, so that namespaces get the fallback `tunl0` that Cilium renames.
fn load_ipip() -> Outcome {
    if ipip_loaded() { Ok(()) } else { run(Command::new("modprobe").arg("ipip")).map(drop) }
}
