//! The Linux data plane on the real kernel, in network namespaces the tests create and delete.
//! Every test needs root (`netns_` prefix) and fails, never skips, without it.

mod common;
mod fixtures;

use std::time::{Duration, Instant};

use common::{Netns, WireGuardGo, dataplane, keypair, require_netns_prerequisites};
use fixtures::*;
use mesh_core::backend::Dataplane;
use mesh_core::plan::PeerUpdate;
use mesh_core::state::InterfaceState;
use mesh_core::{DesiredState, Dev, Encapsulation, Family, HandshakeStart, Operation, Plan};
use mesh_netlink::{LinuxDataplane, ROUTE_PROTOCOL};

/// One reconcile pass: observe, plan, apply; returns the plan and the state it started from.
async fn reconcile(dataplane: &mut LinuxDataplane, desired: &DesiredState) -> (Plan, mesh_core::ObservedState) {
    let before = dataplane.observe().await.expect("observe");
    let plan = Plan::between(&before, desired);
    dataplane.apply(&plan).await.expect("apply");
    (plan, before)
}

/// After `apply(plan)`, the kernel holds exactly `plan.apply_to(before)`, including
/// addresses, MTU, listen port, peers, routes (main and 1107, IPv4 and IPv6), rules and the
/// firewall, and a second pass is empty.
#[tokio::test]
async fn netns_apply_then_observe_equals_the_plan_semantics() {
    require_netns_prerequisites();
    let netns = Netns::new("kt-nl-sem");
    netns.veth_pair("ktsem-p", "ktsem-q");
    netns.address("ktsem-p", "192.168.50.1/24");
    netns.address("ktsem-p", "fd00:50::1/64");
    let _daemon = WireGuardGo::start(&netns, "ktsem0");

    let (private_a, key_a) = keypair(1);
    let (_, key_b) = keypair(2);
    let (_, key_c) = keypair(3);
    let (_, peer_key) = keypair(4);
    let snapshot = snapshot(key_a, key_b, key_c, peer_key);
    let mut desired = desired_state(&snapshot, &options("ktsem0", Encapsulation::Never));
    // What the topology does not produce here: IPv6, table 1107, rules, the IPIP firewall.
    desired.interface.addresses.insert(net("fd4::1/64"));
    desired.routes.extend(
        [
            main_route("fd00:3::/64", Some("fd4::3"), Dev::Kilo, None),
            kilo_route("192.168.70.5/32", "192.168.50.7", Dev::Private),
            kilo_route("fd00:70::5/128", "fd00:50::7", Dev::Private),
        ]
        .map(|route| (route.key(), route)),
    );
    desired.rules.extend([
        rule(Some("10.2.1.0/24"), "192.168.70.5/32", None),
        rule(None, "192.168.70.5/32", Some(Dev::Kilo)),
        rule(Some("fd00:1::/64"), "fd00:70::5/128", None),
    ]);
    desired.firewall = ipip_firewall(&snapshot, "ktsem0");

    let mut dataplane = dataplane(&netns, "ktsem0", Some("ktsem-p"), private_a).await;
    let (plan, before) = reconcile(&mut dataplane, &desired).await;
    assert!(plan.operations.iter().any(|op| matches!(op, Operation::SetMtu(1400))));
    assert!(
        plan.operations.iter().any(|op| matches!(op, Operation::EditFirewall(edit) if edit.family == Family::Ipv6))
    );
    let after = dataplane.observe().await.unwrap();
    assert_eq!(after.state, plan.apply_to(&before.state));
    assert_eq!(after.state, desired);
    assert!(Plan::between(&after, &desired).is_empty());
    assert!(after.observed_at > 1_700_000_000, "observed_at is the system clock");
    let routes = netns.ip(&["route", "show", "proto", &ROUTE_PROTOCOL.to_string()]);
    assert!(routes.contains("10.2.3.0/24 via 10.4.0.2 dev ktsem0 src 192.168.50.1 onlink"), "{routes}");
    let table = netns.ip(&["route", "show", "table", "1107"]);
    assert!(table.contains("192.168.70.5 via 192.168.50.7 dev ktsem-p"), "{table}");
    let rules = netns.ip(&["rule"]);
    assert!(rules.contains("32765:\tfrom all to 192.168.70.5 iif ktsem0 lookup 1107 proto 107"), "{rules}");

    // A change: one route moves, one goes, a rule changes, a peer's allowed IPs and keepalive
    // change, another peer goes, an address is swapped and the firewall loses its IPIP part.
    let mut changed = desired.clone();
    let moved = main_route("10.2.3.0/24", Some("10.4.0.9"), Dev::Kilo, Some("192.168.50.1"));
    changed.routes.insert(moved.key(), moved);
    changed.routes.remove(&kilo_route("fd00:70::5/128", "fd00:50::7", Dev::Private).key());
    changed.rules.remove(&rule(Some("fd00:1::/64"), "fd00:70::5/128", None));
    changed.rules.insert(rule(Some("fd00:2::/64"), "fd00:70::6/128", None));
    changed.peers.get_mut(&key_c).unwrap().allowed_ips.insert(net("10.2.33.0/24"));
    changed.peers.get_mut(&key_c).unwrap().persistent_keepalive = 10;
    changed.peers.remove(&peer_key);
    changed.interface.addresses.remove(&net("fd4::1/64"));
    changed.interface.addresses.insert(net("fd4::2/64"));
    changed.routes.remove(&main_route("fd00:3::/64", Some("fd4::3"), Dev::Kilo, None).key());
    changed.firewall = desired_state(&snapshot, &options("ktsem0", Encapsulation::Never)).firewall;
    let (plan, before) = reconcile(&mut dataplane, &changed).await;
    assert!(plan.operations.contains(&Operation::RemovePeer(peer_key)));
    assert!(
        plan.operations
            .iter()
            .any(|op| matches!(op, Operation::UpdatePeer(PeerUpdate { public_key, .. }) if *public_key == key_c))
    );
    assert!(plan.operations.iter().any(|op| matches!(op, Operation::ReplaceRoute(_))));
    let after = dataplane.observe().await.unwrap();
    assert_eq!(after.state, plan.apply_to(&before.state));
    assert_eq!(after.state, changed);

    // Clean-up removes routes, rules, chains and rules of ours; the interface stays
    // (--clean-up-interface=false) and so does the private interface's own routes.
    dataplane.clean_up().await.unwrap();
    let cleaned = dataplane.observe().await.unwrap().state;
    assert!(cleaned.routes.is_empty() && cleaned.rules.is_empty(), "{cleaned:?}");
    assert_eq!(cleaned.firewall, Default::default());
    assert_eq!(cleaned.peers, changed.peers);
    assert!(netns.ip(&["route", "show", "table", "1107"]).is_empty());
    assert!(netns.ip(&["route", "show"]).contains("192.168.50.0/24 dev ktsem-p proto kernel"));
}

/// A steady state, computed by mesh-core from a cluster as the agent does, costs no kernel
/// write: the second pass plans nothing and the write counter does not move.
#[tokio::test]
async fn netns_applying_the_same_desired_state_twice_writes_nothing_the_second_time() {
    require_netns_prerequisites();
    let netns = Netns::new("kt-nl-steady");
    netns.veth_pair("ktst-p", "ktst-q");
    netns.address("ktst-p", "192.168.50.1/24");
    let _daemon = WireGuardGo::start(&netns, "ktst0");
    let (private_a, key_a) = keypair(11);
    let snapshot = snapshot(key_a, keypair(12).1, keypair(13).1, keypair(14).1);
    let mut desired = desired_state(&snapshot, &options("ktst0", Encapsulation::Never));
    desired.firewall = ipip_firewall(&snapshot, "ktst0");

    let mut dataplane = dataplane(&netns, "ktst0", Some("ktst-p"), private_a).await;
    let (first, _) = reconcile(&mut dataplane, &desired).await;
    assert!(first.operations.len() > 10, "{first:?}");
    let writes = dataplane.writes();
    assert!(writes > 10);

    let (second, _) = reconcile(&mut dataplane, &desired).await;
    assert_eq!(second, Plan::default());
    assert_eq!(dataplane.writes(), writes, "the second pass wrote to the kernel");

    // A new agent process (no memory of what it applied) reads the same state back: it plans
    // nothing and writes nothing.
    let mut restarted = common::dataplane(&netns, "ktst0", Some("ktst-p"), private_a).await;
    let (plan, _) = reconcile(&mut restarted, &desired).await;
    assert!(plan.is_empty(), "{plan:?}");
    assert_eq!(restarted.writes(), 0);
}

fn wireguard_node(address: &str, peers: Vec<mesh_core::state::WireGuardPeer>) -> DesiredState {
    DesiredState {
        interface: InterfaceState { up: true, addresses: nets(&[address]), mtu: Some(1420), listen_port: Some(51820) },
        peers: peers.into_iter().map(|peer| (peer.public_key, peer)).collect(),
        ..DesiredState::default()
    }
}

/// Ping for up to `attempts` seconds (the first packet waits for the handshake).
fn eventually_pings(netns: &Netns, address: &str, attempts: usize) -> bool {
    (0..attempts).any(|_| netns.pings(address))
}

/// Three nodes with userspace WireGuard (wireguard-go) configured by this crate: traffic
/// crosses the tunnels, and changing one peer's allowed IPs leaves the other peer's session
/// alone (same handshake time, counters not reset).
#[tokio::test]
async fn netns_wireguard_tunnels_carry_traffic_and_a_peer_update_keeps_other_sessions() {
    require_netns_prerequisites();
    let hub = Netns::new("kt-nl-wg-a");
    let b = Netns::new("kt-nl-wg-b");
    let c = Netns::new("kt-nl-wg-c");
    hub.veth("ktwga-b", &b, "ktwgb-a");
    hub.veth("ktwga-c", &c, "ktwgc-a");
    hub.address("ktwga-b", "172.30.1.1/24");
    b.address("ktwgb-a", "172.30.1.2/24");
    hub.address("ktwga-c", "172.30.2.1/24");
    c.address("ktwgc-a", "172.30.2.2/24");
    let _daemons =
        [WireGuardGo::start(&hub, "ktwg-a0"), WireGuardGo::start(&b, "ktwg-b0"), WireGuardGo::start(&c, "ktwg-c0")];
    let ((private_a, key_a), (private_b, key_b), (private_c, key_c)) = (keypair(21), keypair(22), keypair(23));

    let mut desired_a = wireguard_node(
        "10.4.0.1/16",
        vec![
            peer(key_b, Some("172.30.1.2:51820"), &["10.4.0.2/32"], 0),
            peer(key_c, Some("172.30.2.2:51820"), &["10.4.0.3/32"], 0),
        ],
    );
    let desired_b = wireguard_node("10.4.0.2/16", vec![peer(key_a, Some("172.30.1.1:51820"), &["10.4.0.1/32"], 0)]);
    let desired_c = wireguard_node("10.4.0.3/16", vec![peer(key_a, Some("172.30.2.1:51820"), &["10.4.0.1/32"], 0)]);
    let mut a_plane = dataplane(&hub, "ktwg-a0", None, private_a).await;
    let mut b_plane = dataplane(&b, "ktwg-b0", None, private_b).await;
    let mut c_plane = dataplane(&c, "ktwg-c0", None, private_c).await;
    reconcile(&mut a_plane, &desired_a).await;
    reconcile(&mut b_plane, &desired_b).await;
    reconcile(&mut c_plane, &desired_c).await;
    let wg = hub.check(&["wg", "show", "ktwg-a0", "private-key"]);
    assert_eq!(wg.trim(), private_a.to_base64(), "the data plane set the private key");

    assert!(eventually_pings(&hub, "10.4.0.2", 5), "no ping through the tunnel to b");
    assert!(eventually_pings(&hub, "10.4.0.3", 5), "no ping through the tunnel to c");
    let before = a_plane.observe().await.unwrap();
    let b_stats = before.peer_stats[&key_b];
    assert!(b_stats.last_handshake.is_some() && b_stats.rx_bytes > 0 && b_stats.tx_bytes > 0, "{b_stats:?}");
    assert_eq!(before.state.peers[&key_b].endpoint, Some(common::endpoint("172.30.1.2:51820")));

    // A new handshake would be visible as a different second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    desired_a.peers.get_mut(&key_c).unwrap().allowed_ips.insert(net("10.2.3.0/24"));
    let plan = Plan::between(&a_plane.observe().await.unwrap(), &desired_a);
    let mut update = PeerUpdate::new(key_c);
    update.allowed_ips = Some(nets(&["10.4.0.3/32", "10.2.3.0/24"]));
    assert_eq!(plan.operations, [Operation::UpdatePeer(update)]);
    let writes = a_plane.writes();
    a_plane.apply(&plan).await.unwrap();
    assert_eq!(a_plane.writes(), writes + 1, "one WireGuard write for one peer");

    let after = a_plane.observe().await.unwrap();
    assert_eq!(after.state.peers[&key_c].allowed_ips, nets(&["10.4.0.3/32", "10.2.3.0/24"]));
    let b_after = after.peer_stats[&key_b];
    assert_eq!(b_after.last_handshake, b_stats.last_handshake, "b's session was reset");
    assert!(b_after.rx_bytes >= b_stats.rx_bytes && b_after.tx_bytes >= b_stats.tx_bytes, "{b_after:?} {b_stats:?}");
    assert!(hub.pings("10.4.0.2"), "b no longer answers over its existing session");
    assert_eq!(a_plane.observe().await.unwrap().peer_stats[&key_b].last_handshake, b_stats.last_handshake);
    assert!(eventually_pings(&hub, "10.4.0.3", 3));
}

/// Whether `plane`'s WireGuard has had a handshake with `peer`.
async fn handshook(plane: &mut LinuxDataplane, peer: mesh_core::Key) -> bool {
    plane.observe().await.unwrap().peer_stats.get(&peer).is_some_and(|stats| stats.last_handshake.is_some())
}

/// Two nodes that add each other a moment apart, as after a leader swap. The first one's
/// initiation reaches a node that does not know it yet and is dropped, and WireGuard retries
/// only after 5 s; the node configured last starts the handshake when its plan is applied, so
/// the session is up at once, without any packet of the test's own. The peers' allowed IPs
/// have no route in the namespaces: the datagram leaves through the interface it is bound to.
#[tokio::test]
async fn netns_the_node_configured_last_starts_the_handshake_at_once() {
    require_netns_prerequisites();
    let a = Netns::new("kt-nl-hs-a");
    let b = Netns::new("kt-nl-hs-b");
    a.veth("kths-a", &b, "kths-b");
    a.address("kths-a", "172.30.5.1/24");
    b.address("kths-b", "172.30.5.2/24");
    let _daemons = [WireGuardGo::start(&a, "kths-a0"), WireGuardGo::start(&b, "kths-b0")];
    let ((private_a, key_a), (private_b, key_b)) = (keypair(31), keypair(32));
    let desired_a = wireguard_node("10.4.0.1/16", vec![peer(key_b, Some("172.30.5.2:51820"), &["10.9.2.0/24"], 0)]);
    let desired_b = wireguard_node("10.4.0.2/16", vec![peer(key_a, Some("172.30.5.1:51820"), &["10.9.1.0/24"], 0)]);
    let alone_a = wireguard_node("10.4.0.1/16", Vec::new());
    let alone_b = wireguard_node("10.4.0.2/16", Vec::new());
    let mut a_plane = dataplane(&a, "kths-a0", None, private_a).await;
    let mut b_plane = dataplane(&b, "kths-b0", None, private_b).await;

    // Control: the same plans without their handshakes leave both sides silent.
    for (plane, desired) in [(&mut a_plane, &desired_a), (&mut b_plane, &desired_b)] {
        let mut plan = Plan::between(&plane.observe().await.unwrap(), desired);
        assert_eq!(plan.handshakes.len(), 1, "{plan:?}");
        plan.handshakes.clear();
        plane.apply(&plan).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!handshook(&mut a_plane, key_b).await, "WireGuard handshook without any packet to send");

    // b forgets a; a re-adds b: a's initiation reaches b, which drops it.
    reconcile(&mut b_plane, &alone_b).await;
    reconcile(&mut a_plane, &alone_a).await;
    let (plan, _) = reconcile(&mut a_plane, &desired_a).await;
    let expected = HandshakeStart { public_key: key_b, address: "10.9.2.1".parse().unwrap() };
    assert_eq!(plan.handshakes, [expected]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!handshook(&mut a_plane, key_b).await, "b answered a before it knew a");

    // b adds a last: the handshake completes at once, not after a's retry 5 s after its first try.
    let configured = Instant::now();
    reconcile(&mut b_plane, &desired_b).await;
    while !handshook(&mut b_plane, key_a).await {
        assert!(configured.elapsed() < Duration::from_secs(2), "no handshake 2 s after b added a");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(handshook(&mut a_plane, key_b).await);

    // Steady state: no operation, no handshake to start.
    let (plan, _) = reconcile(&mut b_plane, &desired_b).await;
    assert!(plan.is_empty() && plan.handshakes.is_empty(), "{plan:?}");
}

/// A rule plus a table-1107 route really steer traffic, for IPv4 and IPv6: without them the
/// destination is unreachable, with them `ip route get` names table 1107 and pings pass, and
/// deleting the rule (through a plan) makes it unreachable again.
#[tokio::test]
async fn netns_rule_and_table_1107_route_steer_traffic() {
    require_netns_prerequisites();
    let a = Netns::new("kt-nl-rt-a");
    let b = Netns::new("kt-nl-rt-b");
    a.veth("ktrt-a", &b, "ktrt-b");
    a.address("ktrt-a", "172.31.0.1/24");
    b.address("ktrt-b", "172.31.0.2/24");
    a.address("ktrt-a", "fd00:31::1/64");
    b.address("ktrt-b", "fd00:31::2/64");
    b.address("lo", "10.5.1.1/32");
    b.address("lo", "fd00:51::1/128");
    assert!(!a.pings("10.5.1.1"));

    let mut desired = DesiredState::default();
    for route in
        [kilo_route("10.5.1.0/24", "172.31.0.2", Dev::Private), kilo_route("fd00:51::/64", "fd00:31::2", Dev::Private)]
    {
        desired.routes.insert(route.key(), route);
    }
    desired.rules.insert(rule(None, "10.5.1.0/24", None));
    desired.rules.insert(rule(None, "fd00:51::/64", None));
    let mut dataplane = dataplane(&a, "ktrt0", Some("ktrt-a"), keypair(31).0).await;
    let (plan, before) = reconcile(&mut dataplane, &desired).await;
    assert_eq!(dataplane.observe().await.unwrap().state, plan.apply_to(&before.state));

    let get = a.ip(&["route", "get", "10.5.1.1"]);
    assert!(get.contains("via 172.31.0.2 dev ktrt-a table 1107"), "{get}");
    let get6 = a.ip(&["-6", "route", "get", "fd00:51::1"]);
    assert!(get6.contains("via fd00:31::2 dev ktrt-a") && get6.contains("table 1107"), "{get6}");
    assert!(a.pings("10.5.1.1"), "the rule and the table-1107 route do not carry IPv4 traffic");
    assert!(a.pings("fd00:51::1"), "the rule and the table-1107 route do not carry IPv6 traffic");

    desired.rules.clear();
    let (plan, _) = reconcile(&mut dataplane, &desired).await;
    assert_eq!(plan.operations.len(), 2);
    assert!(!a.pings("10.5.1.1"));
    let get = a.exec(&["ip", "route", "get", "10.5.1.1"]);
    assert!(!get.status.success(), "still routed without the rule");
}

/// With `--clean-up-interface`, clean-up removes the interface: for userspace WireGuard by
/// removing its UAPI socket, on which wireguard-go exits and its TUN device goes (what
/// `wg-quick down` does).
#[tokio::test]
async fn netns_clean_up_interface_removes_the_userspace_interface() {
    require_netns_prerequisites();
    let netns = Netns::new("kt-nl-cui");
    let _daemon = WireGuardGo::start(&netns, "ktcui0");
    let (private, _) = keypair(61);
    let mut config = mesh_netlink::DataplaneConfig::new(private);
    config.interface = "ktcui0".to_owned();
    config.backend = mesh_netlink::WireGuardBackend::Userspace;
    config.create_interface = false;
    config.clean_up_interface = true;
    config.namespace = netns.namespace();
    let mut dataplane = LinuxDataplane::new(config).await.unwrap();
    let desired = wireguard_node("10.4.0.1/16", vec![peer(keypair(62).1, None, &["10.4.0.2/32"], 0)]);
    reconcile(&mut dataplane, &desired).await;
    assert_eq!(dataplane.observe().await.unwrap().state, desired);

    dataplane.clean_up().await.unwrap();
    assert!(!mesh_netlink::uapi_socket_path("ktcui0").exists());
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        !netns.exec(&["ip", "link", "show", "ktcui0"]).status.success()
    });
    assert!(gone, "ktcui0 still exists after clean-up");
    assert_eq!(dataplane.observe().await.unwrap().state, DesiredState::default());
}
