//! One failing part of the data plane must not take the node out of the mesh: the other parts
//! of the plan are applied and every failure is reported. Real kernel, in namespaces the tests
//! create; every test needs root (`netns_` prefix) and fails, never skips, without it.
//!

mod common;
mod fixtures;

use common::{Netns, WireGuardGo, dataplane, keypair, require_netns_prerequisites};
use fixtures::*;
use mesh_core::backend::Dataplane;
use mesh_core::{Dev, Encapsulation, Firewall, Plan};

/// Deletes, behind the agent's back, the first of our rules that sits in a built-in chain (the
/// jump into our chains), so that the edit that removes it fails in `iptables-restore`.
fn delete_one_of_our_jumps(netns: &Netns) -> String {
    let mut table = String::new();
    for line in netns.check(&["iptables-save"]).lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name.to_owned();
        } else if let Some(rule) = line.strip_prefix("-A ")
            && !rule.starts_with("KILO")
            && rule.contains("-j KILO")
        {
            let mut command = vec!["iptables", "-t", table.as_str(), "-D"];
            let words = shell_words(rule);
            command.extend(words.iter().map(String::as_str));
            netns.check(&command);
            return line.to_owned();
        }
    }
    panic!("no jump into our chains in the namespace");
}

/// `iptables-save`'s quoting: words, with double quotes around words that hold spaces.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => words.push(std::mem::take(&mut word)),
            c => word.push(c),
        }
    }
    words.push(word);
    words.retain(|word| !word.is_empty());
    words
}

/// When `iptables-restore` fails, WireGuard peers and routes of the same plan are still
/// applied, and the error names the firewall.
#[tokio::test]
async fn netns_a_failing_iptables_restore_costs_neither_peers_nor_routes() {
    require_netns_prerequisites();
    let netns = Netns::new("kt-nl-nofw");
    netns.veth_pair("ktnf-p", "ktnf-q");
    netns.address("ktnf-p", "192.168.50.1/24");
    let _daemon = WireGuardGo::start(&netns, "ktnf0");
    let (private_a, key_a) = keypair(61);
    let snapshot = snapshot(key_a, keypair(62).1, keypair(63).1, keypair(64).1);
    let mut desired = desired_state(&snapshot, &options("ktnf0", Encapsulation::Never));
    desired.firewall = ipip_firewall(&snapshot, "ktnf0");
    let mut dataplane = dataplane(&netns, "ktnf0", Some("ktnf-p"), private_a).await;
    let first = dataplane.observe().await.expect("observe");
    dataplane.apply(&Plan::between(&first, &desired)).await.expect("the first apply");

    // The next plan removes our firewall (one rule of which is already gone, so
    // iptables-restore fails) and adds a peer and a route.
    let before = dataplane.observe().await.expect("observe");
    let deleted = delete_one_of_our_jumps(&netns);
    let mut next = desired.clone();
    next.firewall = Firewall::default();
    let (_, new_key) = keypair(65);
    next.peers.insert(new_key, peer(new_key, Some("192.168.50.9:51820"), &["10.2.9.0/24"], 0));
    let new_route = main_route("10.2.9.0/24", None, Dev::Kilo, None);
    next.routes.insert(new_route.key(), new_route);
    let plan = Plan::between(&before, &next);
    assert_eq!(plan.operations.last().map(|operation| operation.kind()), Some("edit_firewall"), "{plan:?}");

    let error = dataplane.apply(&plan).await.expect_err("the firewall edit fails").to_string();
    assert!(error.contains("iptables-restore"), "{error} (after deleting {deleted})");

    let after = dataplane.observe().await.expect("observe");
    assert_eq!(after.state.peers, next.peers, "every WireGuard peer is applied");
    assert_eq!(after.state.routes, next.routes, "every route is applied");
    // What is left to retry is the firewall alone, and it applies now.
    let rest = Plan::between(&after, &next);
    assert!(!rest.is_empty());
    assert!(rest.operations.iter().all(|operation| operation.kind() == "edit_firewall"), "{rest:?}");
    dataplane.apply(&rest).await.expect("the retry");
    assert!(Plan::between(&dataplane.observe().await.expect("observe"), &next).is_empty());
}

/// A route the kernel refuses (its gateway is unreachable) does not stop the firewall, which
/// comes after the routes in the plan; the error names the route.
#[tokio::test]
async fn netns_a_refused_route_does_not_stop_the_firewall() {
    require_netns_prerequisites();
    let netns = Netns::new("kt-nl-badrt");
    netns.veth_pair("ktbr-p", "ktbr-q");
    netns.address("ktbr-p", "192.168.50.1/24");
    let _daemon = WireGuardGo::start(&netns, "ktbr0");
    let (private_a, key_a) = keypair(71);
    let snapshot = snapshot(key_a, keypair(72).1, keypair(73).1, keypair(74).1);
    let mut desired = desired_state(&snapshot, &options("ktbr0", Encapsulation::Never));
    desired.firewall = ipip_firewall(&snapshot, "ktbr0");
    // Not on-link and not reachable through any route of the namespace.
    let unreachable = route("192.168.90.0/24", Some("203.0.113.9"), Dev::Private, None, mesh_core::MAIN_TABLE, false);
    desired.routes.insert(unreachable.key(), unreachable);
    let mut dataplane = dataplane(&netns, "ktbr0", Some("ktbr-p"), private_a).await;

    let before = dataplane.observe().await.expect("observe");
    let error = dataplane.apply(&Plan::between(&before, &desired)).await.expect_err("the route is refused");
    assert!(error.to_string().contains("192.168.90.0/24"), "{error}");

    let after = dataplane.observe().await.expect("observe");
    assert_eq!(after.state.firewall, desired.firewall, "the firewall is applied after the failed route");
    assert_eq!(after.state.peers, desired.peers);
}
