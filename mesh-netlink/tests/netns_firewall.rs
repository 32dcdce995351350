//! The firewall on the real kernel (iptables-nft or -legacy, whichever `iptables` is), in a
//! network namespace with someone else's chains and rules already there.

mod common;
mod fixtures;

use common::{Netns, dataplane, keypair, require_netns_prerequisites};
use fixtures::*;
use mesh_core::backend::Dataplane;
use mesh_core::{DesiredState, Encapsulation, Family, Operation, Plan};

const FOREIGN_V4: &str = "*filter
:FOREIGN - [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A FORWARD -j FOREIGN
-A FOREIGN -s 10.9.0.0/16 -j ACCEPT
COMMIT
*nat
-A POSTROUTING -s 10.9.0.0/16 -j MASQUERADE
COMMIT
";

const FOREIGN_V6: &str = "*filter
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
";

/// `iptables-save` without comments and counters: what the kernel holds, comparable.
fn dump(netns: &Netns, family: Family) -> Vec<String> {
    let command = if family == Family::Ipv4 { "iptables-save" } else { "ip6tables-save" };
    netns.check(&[command]).lines().filter(|line| !line.starts_with('#')).map(str::to_owned).collect()
}

fn restore(netns: &Netns, family: Family, input: &str) {
    let command = if family == Family::Ipv4 { "iptables-restore" } else { "ip6tables-restore" };
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &netns.name, command, "--noflush"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

/// The lines of `after` that are not in `before` (rules and chain declarations we added).
fn added(before: &[String], after: &[String]) -> Vec<String> {
    after.iter().filter(|line| !before.contains(line)).cloned().collect()
}

/// Table headers, commits and built-in chain policies: the frame of a dump, not its rules.
fn scaffolding(line: &str) -> bool {
    line.starts_with('*') || line == "COMMIT" || (line.starts_with(':') && line.contains(" ACCEPT ["))
}

fn position(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in {lines:#?}"))
}

/// `iptables-save` shows exactly our rules next to the foreign ones (ours on top of
/// POSTROUTING and FORWARD, after the foreign rule in INPUT, jump before drop); observe reads
/// them back as mesh-core wrote them; re-applying writes nothing; a change touches only its
/// chains; clean-up restores the namespace's firewall byte for byte.
#[tokio::test]
async fn netns_firewall_holds_exactly_our_rules_and_clean_up_leaves_foreign_ones() {
    require_netns_prerequisites();
    let netns = Netns::new("kt-nl-fw");
    restore(&netns, Family::Ipv4, FOREIGN_V4);
    restore(&netns, Family::Ipv6, FOREIGN_V6);
    let baseline = [dump(&netns, Family::Ipv4), dump(&netns, Family::Ipv6)];

    let snapshot = snapshot(keypair(41).1, keypair(42).1, keypair(43).1, keypair(44).1);
    let firewall = ipip_firewall(&snapshot, "ktfw0");
    let desired = DesiredState { firewall: firewall.clone(), ..DesiredState::default() };
    let mut dataplane = dataplane(&netns, "ktfw0", None, keypair(40).0).await;
    let empty = dataplane.observe().await.unwrap();
    assert_eq!(empty.state, DesiredState::default(), "foreign rules were taken for ours");

    let plan = Plan::between(&empty, &desired);
    assert_eq!(plan.operations.len(), 2);
    assert!(plan.operations.iter().all(|op| matches!(op, Operation::EditFirewall(_))), "{plan:?}");
    dataplane.apply(&plan).await.unwrap();
    assert_eq!(dataplane.writes(), 2, "one iptables-restore per family");
    assert_eq!(dataplane.observe().await.unwrap().state.firewall, firewall);

    for (index, family) in [Family::Ipv4, Family::Ipv6].into_iter().enumerate() {
        let after = dump(&netns, family);
        for line in &baseline[index] {
            assert!(after.contains(line), "foreign line {line:?} is gone: {after:#?}");
        }
        let ours = added(&baseline[index], &after);
        let rules: Vec<&String> = ours.iter().filter(|line| line.starts_with("-A ")).collect();
        assert_eq!(rules.len(), firewall.family(family).rules.len(), "{ours:#?}");
        for line in &rules {
            assert!(line.contains("--comment \"Kilo: ") || line.starts_with("-A KILO-"), "not ours: {line}");
        }
        let declared: Vec<&String> = ours.iter().filter(|line| line.starts_with(":KILO-")).collect();
        assert!(
            ours.iter().all(|line| line.starts_with("-A ") || line.starts_with(":KILO-") || scaffolding(line)),
            "{ours:#?}"
        );
        assert_eq!(declared.len(), firewall.family(family).chains.len(), "{ours:#?}");
        // INPUT: the foreign rule first, then our jump, then our drop.
        let ssh = position(&after, "-A INPUT -p tcp");
        let jump = position(&after, "Kilo: jump to IPIP chain");
        let drop = position(&after, "Kilo: reject other IPIP traffic");
        assert!(ssh < jump && jump < drop, "{after:#?}");
        if family == Family::Ipv4 {
            // POSTROUTING and FORWARD: ours above the foreign rules.
            assert!(
                position(&after, "Kilo: jump to KILO-NAT chain") < position(&after, "-A POSTROUTING -s 10.9.0.0/16")
            );
            assert!(position(&after, "Kilo: forward packets") < position(&after, "-A FORWARD -j FOREIGN"));
            assert!(after.iter().any(|line| line.contains("! -s 192.168.178.0/24 -d 192.168.178.0/24")), "{after:#?}");
        }
    }

    // Idempotent: the same desired state again plans nothing, for this process and a new one.
    let observed = dataplane.observe().await.unwrap();
    assert!(Plan::between(&observed, &desired).is_empty());
    let mut restarted = common::dataplane(&netns, "ktfw0", None, keypair(40).0).await;
    assert!(Plan::between(&restarted.observe().await.unwrap(), &desired).is_empty());
    assert_eq!(dataplane.writes() + restarted.writes(), 2);

    // A change rewrites only our chains that differ: without IPIP, KILO-IPIP and its INPUT
    // rules go; the foreign rules stay.
    let without_ipip = DesiredState {
        firewall: desired_state(&snapshot, &options("ktfw0", Encapsulation::Never)).firewall,
        ..DesiredState::default()
    };
    let before = dataplane.observe().await.unwrap();
    let plan = Plan::between(&before, &without_ipip);
    dataplane.apply(&plan).await.unwrap();
    assert_eq!(dataplane.observe().await.unwrap().state, plan.apply_to(&before.state));
    let after = dump(&netns, Family::Ipv4);
    assert!(!after.iter().any(|line| line.contains("KILO-IPIP") || line.contains("ipencap")), "{after:#?}");
    assert!(after.contains(&"-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT".to_owned()));

    dataplane.clean_up().await.unwrap();
    // iptables cannot delete a table it created (ip6tables' nat here); its empty built-in
    // chains may stay, nothing else.
    for (index, family) in [Family::Ipv4, Family::Ipv6].into_iter().enumerate() {
        let after = dump(&netns, family);
        assert_eq!(
            after.iter().filter(|line| !scaffolding(line)).collect::<Vec<_>>(),
            baseline[index].iter().filter(|line| !scaffolding(line)).collect::<Vec<_>>()
        );
        assert!(baseline[index].iter().all(|line| after.contains(line)));
    }
    assert_eq!(dataplane.observe().await.unwrap().state, DesiredState::default());
    let writes = dataplane.writes();
    dataplane.clean_up().await.unwrap();
    assert_eq!(dataplane.writes(), writes, "cleaning up nothing wrote something");
}

/// Rules of ours the mesh does not generate: another version's rule in FORWARD, a rule in
/// KILO-NAT, and an unknown chain KILO-OLD with its jump.
const STALE_V4: &str = "*filter
-A FORWARD -s 10.2.9.0/24 -m conntrack --ctstate NEW -m comment --comment \"Kilo: an old rule\" -j ACCEPT
COMMIT
*nat
:KILO-NAT - [0:0]
:KILO-OLD - [0:0]
-A POSTROUTING -j KILO-OLD
-A KILO-OLD -j RETURN
-A KILO-NAT -d 10.99.0.0/16 -m comment --comment \"Kilo: an old rule\" -j RETURN
-A KILO-NAT -m comment --comment \"Kilo: NAT remaining packets\" -j MASQUERADE
COMMIT
";

/// nftables' handles of the rules in a chain whose listing contains `needle` (iptables-nft
/// only; nft does not print iptables' comments): a rule that keeps its handle was not touched.
fn handles(netns: &Netns, table: &str, chain: &str, needle: &str) -> Vec<String> {
    netns
        .check(&["nft", "-a", "list", "chain", "ip", table, chain])
        .lines()
        .filter(|line| line.contains(needle))
        .filter_map(|line| line.rsplit_once("# handle ").map(|(_, handle)| handle.trim().to_owned()))
        .collect()
}

/// Rules of ours that the mesh does not generate are observed as foreign and removed by the next
/// plan; rules in POSTROUTING and FORWARD take mesh-core's order with edits in the middle of the
/// chain, leaving unchanged rules alone; a restarted agent plans nothing.
#[tokio::test]
async fn netns_foreign_rules_of_ours_go_and_built_in_chains_follow_mesh_core_order() {
    require_netns_prerequisites();
    let netns = Netns::new("kt-nl-fwo");
    restore(&netns, Family::Ipv4, FOREIGN_V4);
    restore(&netns, Family::Ipv6, FOREIGN_V6);
    let baseline = [dump(&netns, Family::Ipv4), dump(&netns, Family::Ipv6)];
    restore(&netns, Family::Ipv4, STALE_V4);

    let mut dataplane = dataplane(&netns, "ktfo0", None, keypair(50).0).await;
    let stale = dataplane.observe().await.unwrap();
    let chains: Vec<(&str, &str)> =
        stale.state.firewall.foreign.iter().map(|rule| (rule.table.as_str(), rule.chain.as_str())).collect();
    assert_eq!(chains, [("filter", "FORWARD"), ("nat", "KILO-NAT"), ("nat", "KILO-OLD"), ("nat", "POSTROUTING")]);
    assert_eq!(
        stale.state.firewall.foreign[1].spec,
        "-d 10.99.0.0/16 -m comment --comment \"Kilo: an old rule\" -j RETURN"
    );
    assert_eq!(stale.state.firewall.rules.len(), 1, "{:?}", stale.state.firewall);

    let mut snapshot = snapshot(keypair(51).1, keypair(52).1, keypair(53).1, keypair(54).1);
    let firewall_of = |snapshot: &mesh_core::ClusterSnapshot| DesiredState {
        firewall: desired_state(snapshot, &options("ktfo0", Encapsulation::Never)).firewall,
        ..DesiredState::default()
    };
    let desired = firewall_of(&snapshot);
    let plan = Plan::between(&stale, &desired);
    dataplane.apply(&plan).await.unwrap();
    let after = dataplane.observe().await.unwrap();
    assert_eq!(after.state, plan.apply_to(&stale.state));
    assert_eq!(after.state, desired);
    let v4 = dump(&netns, Family::Ipv4);
    assert!(!v4.iter().any(|line| line.contains("KILO-OLD") || line.contains("an old rule")), "{v4:#?}");
    assert!(baseline[0].iter().all(|line| v4.contains(line)), "{v4:#?}");

    // The location's IPs change: in POSTROUTING and FORWARD, a rule in the middle is replaced
    // and one is added after it; the rules around them stay as they are.
    let nft = netns.check(&["iptables", "--version"]).contains("nf_tables");
    let untouched = |netns: &Netns| {
        [
            handles(netns, "nat", "POSTROUTING", "ip saddr 10.2.1.0/24 "),
            handles(netns, "nat", "POSTROUTING", "ip saddr 10.5.0.1 "),
            handles(netns, "filter", "FORWARD", " 10.2."),
            handles(netns, "filter", "FORWARD", " 192.168.50."),
        ]
    };
    let handles_before = nft.then(|| untouched(&netns));
    snapshot.nodes[0].allowed_location_ips = vec![net("192.168.177.0/24"), net("192.168.179.0/24")];
    let moved = firewall_of(&snapshot);
    let before = dataplane.observe().await.unwrap();
    let writes = dataplane.writes();
    let plan = Plan::between(&before, &moved);
    assert_eq!(plan.operations.len(), 1, "only IPv4 changes: {plan:?}");
    dataplane.apply(&plan).await.unwrap();
    assert_eq!(dataplane.writes(), writes + 1);
    let after = dataplane.observe().await.unwrap();
    assert_eq!(after.state, plan.apply_to(&before.state));
    assert_eq!(after.state, moved);
    if let Some(handles_before) = handles_before {
        let counts: Vec<usize> = handles_before.iter().map(Vec::len).collect();
        assert_eq!(counts, [1, 1, 4, 4], "{handles_before:?}");
        assert_eq!(untouched(&netns), handles_before, "unchanged rules were rewritten");
    }

    // A restarted agent reads the same back and plans nothing.
    let mut restarted = common::dataplane(&netns, "ktfo0", None, keypair(50).0).await;
    assert!(Plan::between(&restarted.observe().await.unwrap(), &moved).is_empty());

    // And back: the rules in the middle go again.
    let before = dataplane.observe().await.unwrap();
    let plan = Plan::between(&before, &desired);
    dataplane.apply(&plan).await.unwrap();
    assert_eq!(dataplane.observe().await.unwrap().state, plan.apply_to(&before.state));

    dataplane.clean_up().await.unwrap();
    for (index, family) in [Family::Ipv4, Family::Ipv6].into_iter().enumerate() {
        let after = dump(&netns, family);
        assert_eq!(
            after.iter().filter(|line| !scaffolding(line)).collect::<Vec<_>>(),
            baseline[index].iter().filter(|line| !scaffolding(line)).collect::<Vec<_>>()
        );
    }
}
