//! Kilo's `TestRoutes` (kilo-reference.md §10.8, all 16 cases) and the overlay-mode routes of
//! Appendix E, with the same expected values and order; plus `cross` granularity.
//!
//! Routes are written in Kilo's test notation, `DST [via GW] dev N [src S] [onlink] [table T]`,
//! where Kilo's test interface indices become our symbols: 0 = WireGuard, 1 = private, 2 = tunnel.

mod common;

use common::{options, snapshot};
use mesh_core::{Compatibility, Dev, Encapsulation, Granularity, Options, Route, Rule, Topology};

fn route(text: &str) -> Route {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut route =
        Route { dst: words[0].parse().unwrap(), gateway: None, dev: Dev::Kilo, src: None, table: 254, onlink: false };
    let mut i = 1;
    while i < words.len() {
        match words[i] {
            "via" => route.gateway = Some(words[i + 1].parse().unwrap()),
            "src" => route.src = Some(words[i + 1].parse().unwrap()),
            "table" => route.table = words[i + 1].parse().unwrap(),
            "dev" => {
                route.dev = match words[i + 1] {
                    "0" => Dev::Kilo,
                    "1" => Dev::Private,
                    "2" => Dev::Tunnel,
                    other => panic!("unknown device {other}"),
                }
            }
            "onlink" => {
                route.onlink = true;
                i += 1;
                continue;
            }
            other => panic!("unknown word {other} in {text}"),
        }
        i += 2;
    }
    route
}

/// `[from SRC] [iif kilo0] to DST` → a rule to table 1107.
fn rule(text: &str) -> Rule {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut rule = Rule { src: None, dst: None, iif: None, table: 1107, priority: 32765 };
    for pair in words.chunks(2) {
        match pair[0] {
            "from" => rule.src = Some(pair[1].parse().unwrap()),
            "to" => rule.dst = Some(pair[1].parse().unwrap()),
            "iif" => rule.iif = Some(Dev::Kilo),
            other => panic!("unknown word {other} in {text}"),
        }
    }
    rule
}

fn check(options: &Options, expected_routes: &[&str], expected_rules: &[&str]) {
    check_snapshot(&snapshot(), options, expected_routes, expected_rules);
}

fn check_snapshot(
    snapshot: &mesh_core::ClusterSnapshot,
    options: &Options,
    expected_routes: &[&str],
    expected_rules: &[&str],
) {
    let topology = Topology::compute(snapshot, options).unwrap();
    let (routes, rules) = topology.routes(options);
    let expected: Vec<Route> = expected_routes.iter().map(|r| route(r)).collect();
    assert_eq!(routes, expected, "routes from {} ({options:?})", options.hostname);
    let expected: Vec<Rule> = expected_rules.iter().map(|r| rule(r)).collect();
    assert_eq!(rules, expected, "rules from {}", options.hostname);
}

const PEERS_A: [&str; 3] =
    ["10.5.0.1/24 dev 0 src 192.168.0.1", "10.5.0.2/24 dev 0 src 192.168.0.1", "10.5.0.3/24 dev 0 src 192.168.0.1"];

const LOGICAL_FROM_A: [&str; 9] = [
    "10.2.2.0/24 via 10.4.0.2 dev 0 src 192.168.0.1 onlink",
    "192.168.0.1/32 via 10.4.0.2 dev 0 src 192.168.0.1 onlink",
    "10.2.3.0/24 via 10.4.0.2 dev 0 src 192.168.0.1 onlink",
    "192.168.0.2/32 via 10.4.0.2 dev 0 src 192.168.0.1 onlink",
    "192.168.178.3/32 via 10.4.0.2 dev 0 src 192.168.0.1 onlink",
    "10.2.4.0/24 via 10.4.0.3 dev 0 src 192.168.0.1 onlink",
    PEERS_A[0],
    PEERS_A[1],
    PEERS_A[2],
];

#[test]
fn logical_from_a() {
    check(&options("a", Granularity::Location, false, Encapsulation::Never), &LOGICAL_FROM_A, &[]);
}

#[test]
fn logical_from_b() {
    let mut expected = vec![
        "10.2.1.0/24 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "192.168.0.1/32 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "10.2.4.0/24 via 10.4.0.3 dev 0 src 192.168.0.1 onlink",
    ];
    expected.extend(PEERS_A);
    check(&options("b", Granularity::Location, false, Encapsulation::Never), &expected, &[]);
}

#[test]
fn logical_from_c() {
    let expected: Vec<String> =
        ["10.4.0.1/32", "10.2.1.0/24", "192.168.0.1/32", "10.4.0.2/32", "10.4.0.3/32", "10.2.4.0/24"]
            .iter()
            .chain(&["10.5.0.1/24", "10.5.0.2/24", "10.5.0.3/24"])
            .map(|dst| format!("{dst} via 192.168.0.1 dev 1 onlink"))
            .collect();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    check(&options("c", Granularity::Location, false, Encapsulation::Never), &expected, &[]);
}

#[test]
fn logical_from_d() {
    check(
        &options("d", Granularity::Location, false, Encapsulation::Never),
        &[
            "10.2.1.0/24 via 10.4.0.1 dev 0 onlink",
            "192.168.0.1/32 via 10.4.0.1 dev 0 onlink",
            "10.2.2.0/24 via 10.4.0.2 dev 0 onlink",
            "192.168.0.1/32 via 10.4.0.2 dev 0 onlink",
            "10.2.3.0/24 via 10.4.0.2 dev 0 onlink",
            "192.168.0.2/32 via 10.4.0.2 dev 0 onlink",
            "192.168.178.3/32 via 10.4.0.2 dev 0 onlink",
            "10.5.0.1/24 dev 0",
            "10.5.0.2/24 dev 0",
            "10.5.0.3/24 dev 0",
        ],
        &[],
    );
}

#[test]
fn full_from_a() {
    let mut expected = vec![
        "10.2.2.0/24 via 10.4.0.2 dev 0 src 192.168.0.1 onlink",
        "192.168.0.1/32 via 10.4.0.2 dev 0 src 192.168.0.1 onlink",
        "192.168.178.3/32 via 10.4.0.2 dev 0 src 192.168.0.1 onlink",
        "10.2.3.0/24 via 10.4.0.3 dev 0 src 192.168.0.1 onlink",
        "192.168.0.2/32 via 10.4.0.3 dev 0 src 192.168.0.1 onlink",
        "10.2.4.0/24 via 10.4.0.4 dev 0 src 192.168.0.1 onlink",
    ];
    expected.extend(PEERS_A);
    for local in [false, true] {
        check(&options("a", Granularity::Full, local, Encapsulation::Never), &expected, &[]);
    }
}

#[test]
fn full_from_b() {
    let mut expected = vec![
        "10.2.1.0/24 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "192.168.0.1/32 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "10.2.3.0/24 via 10.4.0.3 dev 0 src 192.168.0.1 onlink",
        "192.168.0.2/32 via 10.4.0.3 dev 0 src 192.168.0.1 onlink",
        "10.2.4.0/24 via 10.4.0.4 dev 0 src 192.168.0.1 onlink",
    ];
    expected.extend(PEERS_A);
    for local in [false, true] {
        check(&options("b", Granularity::Full, local, Encapsulation::Never), &expected, &[]);
    }
}

#[test]
fn full_from_c() {
    let expected = [
        "10.2.1.0/24 via 10.4.0.1 dev 0 src 192.168.0.2 onlink",
        "192.168.0.1/32 via 10.4.0.1 dev 0 src 192.168.0.2 onlink",
        "10.2.2.0/24 via 10.4.0.2 dev 0 src 192.168.0.2 onlink",
        "192.168.0.1/32 via 10.4.0.2 dev 0 src 192.168.0.2 onlink",
        "192.168.178.3/32 via 10.4.0.2 dev 0 src 192.168.0.2 onlink",
        "10.2.4.0/24 via 10.4.0.4 dev 0 src 192.168.0.2 onlink",
        "10.5.0.1/24 dev 0 src 192.168.0.2",
        "10.5.0.2/24 dev 0 src 192.168.0.2",
        "10.5.0.3/24 dev 0 src 192.168.0.2",
    ];
    for local in [false, true] {
        check(&options("c", Granularity::Full, local, Encapsulation::Never), &expected, &[]);
    }
}

#[test]
fn logical_from_a_local_and_local_always() {
    check(&options("a", Granularity::Location, true, Encapsulation::Never), &LOGICAL_FROM_A, &[]);
    check(&options("a", Granularity::Location, true, Encapsulation::Always), &LOGICAL_FROM_A, &[]);
}

#[test]
fn logical_from_b_local() {
    let mut expected = vec![
        "10.2.1.0/24 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "192.168.0.1/32 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "10.2.3.0/24 via 192.168.0.2 dev 1 onlink",
        "10.2.4.0/24 via 10.4.0.3 dev 0 src 192.168.0.1 onlink",
    ];
    expected.extend(PEERS_A);
    check(&options("b", Granularity::Location, true, Encapsulation::Never), &expected, &[]);
}

#[test]
fn logical_from_b_local_always() {
    let mut expected = vec![
        "10.2.1.0/24 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "192.168.0.1/32 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "10.2.3.0/24 via 192.168.0.2 dev 2 src 192.168.0.1 onlink",
        "192.168.0.2/32 via 192.168.0.2 dev 2 src 192.168.0.1 onlink table 1107",
        "10.2.4.0/24 via 10.4.0.3 dev 0 src 192.168.0.1 onlink",
    ];
    expected.extend(PEERS_A);
    check(
        &options("b", Granularity::Location, true, Encapsulation::Always),
        &expected,
        &["from 10.2.2.0/24 to 192.168.0.2/32", "iif kilo0 to 192.168.0.2/32"],
    );
}

#[test]
fn logical_from_c_local() {
    let expected: Vec<String> = [
        "10.4.0.1/32",
        "10.2.1.0/24",
        "192.168.0.1/32",
        "10.4.0.2/32",
        "10.2.2.0/24",
        "10.4.0.3/32",
        "10.2.4.0/24",
        "10.5.0.1/24",
        "10.5.0.2/24",
        "10.5.0.3/24",
    ]
    .iter()
    .map(|dst| format!("{dst} via 192.168.0.1 dev 1 onlink"))
    .collect();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    check(&options("c", Granularity::Location, true, Encapsulation::Never), &expected, &[]);
}

#[test]
fn logical_from_c_local_always() {
    let mut expected: Vec<String> = ["10.4.0.1/32", "10.2.1.0/24", "192.168.0.1/32", "10.4.0.2/32", "10.2.2.0/24"]
        .iter()
        .map(|dst| format!("{dst} via 192.168.0.1 dev 2 src 192.168.0.2 onlink"))
        .collect();
    expected.push("192.168.0.1/32 via 192.168.0.1 dev 2 src 192.168.0.2 onlink table 1107".into());
    expected.extend(
        ["10.4.0.3/32", "10.2.4.0/24", "10.5.0.1/24", "10.5.0.2/24", "10.5.0.3/24"]
            .iter()
            .map(|dst| format!("{dst} via 192.168.0.1 dev 2 src 192.168.0.2 onlink")),
    );
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    check(
        &options("c", Granularity::Location, true, Encapsulation::Always),
        &expected,
        &["from 10.2.3.0/24 to 192.168.0.1/32"],
    );
}

/// The fixture with Cilium's `cilium_host` addresses on b and c (Appendix E).
fn cilium_snapshot() -> mesh_core::ClusterSnapshot {
    let mut snapshot = snapshot();
    snapshot.nodes[1].cni_compatibility_ip = Some("10.0.1.1/32".parse().unwrap());
    snapshot.nodes[2].cni_compatibility_ip = Some("10.0.2.1/32".parse().unwrap());
    snapshot
}

fn with(compatibility: Compatibility, options: Options) -> Options {
    Options { compatibility, ..options }
}

// Appendix E.1: Cilium, --local=false --encapsulate=crosssubnet, leader b.
#[test]
fn cilium_leader_returns_through_the_overlay() {
    let mut expected = vec![
        "10.2.1.0/24 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "192.168.0.1/32 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "192.168.0.2/32 via 10.0.2.1 dev 2 onlink table 1107",
        "10.2.4.0/24 via 10.4.0.3 dev 0 src 192.168.0.1 onlink",
    ];
    expected.extend(PEERS_A);
    let opts = with(Compatibility::Cilium, options("b", Granularity::Location, false, Encapsulation::CrossSubnet));
    check_snapshot(&cilium_snapshot(), &opts, &expected, &["iif kilo0 to 192.168.0.2/32"]);
}

// Appendix E.2: Cilium, --local=false --encapsulate=crosssubnet, non-leader c.
#[test]
fn cilium_non_leader_sends_everything_through_the_leader_overlay_ip() {
    let expected: Vec<String> = [
        "10.4.0.1/32",
        "10.2.1.0/24",
        "192.168.0.1/32",
        "10.4.0.2/32",
        "10.4.0.3/32",
        "10.2.4.0/24",
        "10.5.0.1/24",
        "10.5.0.2/24",
        "10.5.0.3/24",
    ]
    .iter()
    .map(|dst| format!("{dst} via 10.0.1.1 dev 2 src 192.168.0.2 onlink"))
    .collect();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    let opts = with(Compatibility::Cilium, options("c", Granularity::Location, false, Encapsulation::CrossSubnet));
    check_snapshot(&cilium_snapshot(), &opts, &expected, &[]);
    // The same with --encapsulate=always, as Cozystack's cilium-kilo deployment runs it.
    let opts = with(Compatibility::Cilium, options("c", Granularity::Location, false, Encapsulation::Always));
    check_snapshot(&cilium_snapshot(), &opts, &expected, &[]);
}

// Appendix E.3: Cilium, --local=true --encapsulate=always, leader b.
#[test]
fn cilium_leader_with_local_routes() {
    let mut expected = vec![
        "10.2.1.0/24 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "192.168.0.1/32 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "10.2.3.0/24 via 10.0.2.1 dev 2 src 192.168.0.1 onlink",
        "192.168.0.2/32 via 10.0.2.1 dev 2 src 192.168.0.1 onlink table 1107",
        "10.2.4.0/24 via 10.4.0.3 dev 0 src 192.168.0.1 onlink",
    ];
    expected.extend(PEERS_A);
    let opts = with(Compatibility::Cilium, options("b", Granularity::Location, true, Encapsulation::Always));
    check_snapshot(
        &cilium_snapshot(),
        &opts,
        &expected,
        &["from 10.2.2.0/24 to 192.168.0.2/32", "iif kilo0 to 192.168.0.2/32"],
    );
}

// Appendix E.4: Flannel, --local=false --encapsulate=always, leader b then non-leader c.
#[test]
fn flannel_uses_pod_subnet_gateways() {
    let mut expected = vec![
        "10.2.1.0/24 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "192.168.0.1/32 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "192.168.0.2/32 via 10.2.3.0 dev 2 onlink table 1107",
        "10.2.4.0/24 via 10.4.0.3 dev 0 src 192.168.0.1 onlink",
    ];
    expected.extend(PEERS_A);
    let opts = with(Compatibility::Flannel, options("b", Granularity::Location, false, Encapsulation::Always));
    check(&opts, &expected, &["iif kilo0 to 192.168.0.2/32"]);

    let expected: Vec<String> = [
        "10.4.0.1/32",
        "10.2.1.0/24",
        "192.168.0.1/32",
        "10.4.0.2/32",
        "10.4.0.3/32",
        "10.2.4.0/24",
        "10.5.0.1/24",
        "10.5.0.2/24",
        "10.5.0.3/24",
    ]
    .iter()
    .map(|dst| format!("{dst} via 10.2.2.0 dev 2 src 192.168.0.2 onlink"))
    .collect();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    let opts = with(Compatibility::Flannel, options("c", Granularity::Location, false, Encapsulation::Always));
    check(&opts, &expected, &[]);
}

// Appendix E.5: default IPIP with --local=false, leader b: no intra-location routes at all.
#[test]
fn ipip_without_local_has_no_intra_location_routes() {
    let mut expected = vec![
        "10.2.1.0/24 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "192.168.0.1/32 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "10.2.4.0/24 via 10.4.0.3 dev 0 src 192.168.0.1 onlink",
    ];
    expected.extend(PEERS_A);
    for strategy in [Encapsulation::Never, Encapsulation::CrossSubnet, Encapsulation::Always] {
        check(&options("b", Granularity::Location, false, strategy), &expected, &[]);
    }
}

// Cross granularity (Cozystack's patch): same-location nodes are treated like the local segment:
// no WireGuard routes to them; with --local they are reached over the private network.
#[test]
fn cross_from_b() {
    // b and c share location 2: c is reached over the private network, a and d over WireGuard.
    let mut expected = vec![
        "10.2.1.0/24 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "192.168.0.1/32 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "10.2.4.0/24 via 10.4.0.4 dev 0 src 192.168.0.1 onlink",
    ];
    expected.extend(PEERS_A);
    check(&options("b", Granularity::Cross, false, Encapsulation::Never), &expected, &[]);

    let mut expected = vec![
        "10.2.1.0/24 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "192.168.0.1/32 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "10.2.3.0/24 via 192.168.0.2 dev 1 onlink",
        "10.2.4.0/24 via 10.4.0.4 dev 0 src 192.168.0.1 onlink",
    ];
    expected.extend(PEERS_A);
    check(&options("b", Granularity::Cross, true, Encapsulation::Never), &expected, &[]);

    // Cilium with --local=false (Cozystack): return traffic for c goes through the overlay.
    let mut expected = vec![
        "10.2.1.0/24 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "192.168.0.1/32 via 10.4.0.1 dev 0 src 192.168.0.1 onlink",
        "192.168.0.2/32 via 10.0.2.1 dev 2 onlink table 1107",
        "10.2.4.0/24 via 10.4.0.4 dev 0 src 192.168.0.1 onlink",
    ];
    expected.extend(PEERS_A);
    let opts = with(Compatibility::Cilium, options("b", Granularity::Cross, false, Encapsulation::Always));
    check_snapshot(&cilium_snapshot(), &opts, &expected, &["iif kilo0 to 192.168.0.2/32"]);
}

#[test]
fn cross_from_d_without_private_ip_routes_everything_over_wireguard_except_its_location() {
    // d (location 1, no private IP) and a share a location: a is left to the CNI.
    let expected = [
        "10.2.2.0/24 via 10.4.0.2 dev 0 onlink",
        "192.168.0.1/32 via 10.4.0.2 dev 0 onlink",
        "192.168.178.3/32 via 10.4.0.2 dev 0 onlink",
        "10.2.3.0/24 via 10.4.0.3 dev 0 onlink",
        "192.168.0.2/32 via 10.4.0.3 dev 0 onlink",
        "10.5.0.1/24 dev 0",
        "10.5.0.2/24 dev 0",
        "10.5.0.3/24 dev 0",
    ];
    check(&options("d", Granularity::Cross, true, Encapsulation::Always), &expected, &[]);
}
