//! The iptables calls Kilo's agent would have made for a firewall edit, for Kilo's
//! `kilo_iptables_operations_total{operation,table,chain,protocol}`.
//!
//! The data plane applies an edit per IP version as one `iptables-restore`, so the calls are not
//! made one by one; each change is counted as the call Kilo's client makes for it, so dashboards
//! and alerts on Kilo's counter keep their meaning: a rewritten chain is `ClearChain` and one
//! `AppendUnique` per rule, a removed chain `ClearChain` and `DeleteChain`, a deleted rule
//! `Delete`, an inserted rule `Insert` (at a position) or `AppendUnique` (at the end). Kilo's
//! read calls (`Exists`, `List`, `ListChains`) have no counterpart: the state is read once per
//! pass with `iptables-save`.

use mesh_core::{Family, FirewallChange, FirewallEdit, Operation, Plan};

/// One counted iptables call.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IptablesOperation {
    /// Kilo's constant label: `IPv4` or `IPv6`.
    pub protocol: &'static str,
    /// Kilo's client method: `ClearChain`, `AppendUnique`, `DeleteChain`, `Delete`, `Insert`.
    pub operation: &'static str,
    /// `filter` or `nat`.
    pub table: String,
    /// The chain's name (`KILO-NAT`, `POSTROUTING`, …).
    pub chain: String,
}

/// The calls of every firewall edit of `plan`, in order.
///
/// ```
/// use mesh_agent::iptables_operations::of_plan;
/// use mesh_core::{Chain, ChainName, Family, Firewall, FirewallEdit, FirewallLayout, Operation, Plan};
///
/// let nat = Firewall { chains: vec![Chain { family: Family::Ipv4, name: ChainName::KiloNat }], ..Firewall::default() };
/// let edit = FirewallEdit::between(&Firewall::default(), &FirewallLayout::default(), &nat, Family::Ipv4).unwrap();
/// let plan = Plan { operations: vec![Operation::EditFirewall(edit)], ..Plan::default() };
/// let calls = of_plan(&plan);
/// assert_eq!((calls[0].operation, calls[0].table.as_str(), calls[0].chain.as_str()), ("ClearChain", "nat", "KILO-NAT"));
/// ```
pub fn of_plan(plan: &Plan) -> Vec<IptablesOperation> {
    plan.operations
        .iter()
        .filter_map(|operation| match operation {
            Operation::EditFirewall(edit) => Some(of_edit(edit)),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The calls of one edit, in order.
pub fn of_edit(edit: &FirewallEdit) -> Vec<IptablesOperation> {
    let protocol = match edit.family {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    };
    let call = |operation: &'static str, table: &str, chain: &str| IptablesOperation {
        protocol,
        operation,
        table: table.to_owned(),
        chain: chain.to_owned(),
    };
    let mut calls = Vec::new();
    for change in &edit.changes {
        match change {
            FirewallChange::WriteChain { chain, rules } => {
                let (table, name) = (chain.name.table(), chain.name.as_str());
                calls.push(call("ClearChain", table, name));
                calls.extend(rules.iter().map(|_| call("AppendUnique", table, name)));
            }
            FirewallChange::RemoveChain(chain) => {
                let (table, name) = (chain.name.table(), chain.name.as_str());
                calls.extend([call("ClearChain", table, name), call("DeleteChain", table, name)]);
            }
            FirewallChange::RemoveForeignChain(chain) => {
                calls.extend([
                    call("ClearChain", &chain.table, &chain.name),
                    call("DeleteChain", &chain.table, &chain.name),
                ]);
            }
            FirewallChange::DeleteRule(rule) => calls.push(call("Delete", rule.chain.table(), rule.chain.as_str())),
            FirewallChange::DeleteForeignRule(rule) => calls.push(call("Delete", &rule.table, &rule.chain)),
            FirewallChange::InsertRule { rule, position, .. } => {
                let operation = if position.is_some() { "Insert" } else { "AppendUnique" };
                calls.push(call(operation, rule.chain.table(), rule.chain.as_str()));
            }
        }
    }
    calls
}

#[cfg(test)]
mod tests {
    use mesh_core::{Chain, ChainName, Comment, ForeignChain, ForeignRule, Match, Target};

    use super::*;

    fn rule(
        family: Family,
        chain: ChainName,
        matches: Match,
        target: Target,
        comment: Comment,
    ) -> mesh_core::FirewallRule {
        mesh_core::FirewallRule { family, chain, matches, target, comment }
    }

    fn calls(edit: &FirewallEdit) -> Vec<String> {
        of_edit(edit)
            .into_iter()
            .map(|call| format!("{} {} {} {}", call.protocol, call.operation, call.table, call.chain))
            .collect()
    }

    #[test]
    fn each_change_counts_as_the_calls_kilos_client_makes() {
        let known = rule(
            Family::Ipv4,
            ChainName::KiloNat,
            Match::Destination("10.4.0.1/32".parse().unwrap()),
            Target::Return,
            Comment::KnownIps,
        );
        let jump = rule(
            Family::Ipv4,
            ChainName::Postrouting,
            Match::Source("10.2.1.0/24".parse().unwrap()),
            Target::NatChain,
            Comment::JumpToKiloNat,
        );
        let forward = rule(
            Family::Ipv4,
            ChainName::Forward,
            Match::Source("10.2.1.0/24".parse().unwrap()),
            Target::Accept,
            Comment::ForwardFromPodSubnet,
        );
        let edit = FirewallEdit {
            family: Family::Ipv4,
            changes: vec![
                FirewallChange::WriteChain {
                    chain: Chain { family: Family::Ipv4, name: ChainName::KiloNat },
                    rules: vec![known, known],
                },
                FirewallChange::InsertRule { rule: jump, index: 0, position: Some(1) },
                FirewallChange::InsertRule { rule: forward, index: 0, position: None },
                FirewallChange::DeleteRule(forward),
                FirewallChange::DeleteForeignRule(ForeignRule {
                    family: Family::Ipv4,
                    table: "nat".into(),
                    chain: "POSTROUTING".into(),
                    spec: "-j KILO-OLD".into(),
                }),
                FirewallChange::RemoveForeignChain(ForeignChain {
                    family: Family::Ipv4,
                    table: "nat".into(),
                    name: "KILO-OLD".into(),
                }),
                FirewallChange::RemoveChain(Chain { family: Family::Ipv4, name: ChainName::KiloIpip }),
            ],
        };
        assert_eq!(
            calls(&edit),
            [
                "IPv4 ClearChain nat KILO-NAT",
                "IPv4 AppendUnique nat KILO-NAT",
                "IPv4 AppendUnique nat KILO-NAT",
                "IPv4 Insert nat POSTROUTING",
                "IPv4 AppendUnique filter FORWARD",
                "IPv4 Delete filter FORWARD",
                "IPv4 Delete nat POSTROUTING",
                "IPv4 ClearChain nat KILO-OLD",
                "IPv4 DeleteChain nat KILO-OLD",
                "IPv4 ClearChain filter KILO-IPIP",
                "IPv4 DeleteChain filter KILO-IPIP",
            ]
        );
        let v6 = FirewallEdit {
            family: Family::Ipv6,
            changes: vec![FirewallChange::RemoveChain(Chain { family: Family::Ipv6, name: ChainName::KiloNat })],
        };
        assert_eq!(calls(&v6), ["IPv6 ClearChain nat KILO-NAT", "IPv6 DeleteChain nat KILO-NAT"]);
    }

    #[test]
    fn only_firewall_edits_count() {
        let plan = Plan { operations: vec![Operation::SetMtu(1420)], ..Plan::default() };
        assert!(of_plan(&plan).is_empty());
    }
}
