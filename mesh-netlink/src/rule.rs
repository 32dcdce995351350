//! Policy rules over rtnetlink: every rule that looks up table 1107 is the mesh's.

use std::io;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use mesh_core::{Dev, KILO_TABLE, Rule};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{RouteHeader, RouteProtocol};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion};

use crate::error::netlink_io;
use crate::route::ROUTE_PROTOCOL;

/// The kernel message for `rule`, with `iif` the name of its input interface. The action is
/// always `ToTable`: without it the kernel accepts the rule and every lookup through it fails
/// with EINVAL.
pub(crate) fn message(rule: &Rule, iif: Option<&str>) -> RuleMessage {
    let mut message = RuleMessage::default();
    let ipv6 = rule.src.or(rule.dst).is_some_and(|net| matches!(net, IpNet::V6(_)));
    message.header.family = if ipv6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    message.header.action = RuleAction::ToTable;
    if rule.table > 255 {
        message.header.table = RouteHeader::RT_TABLE_UNSPEC;
    } else {
        message.header.table = rule.table as u8;
    }
    message.attributes.push(RuleAttribute::Table(rule.table));
    message.attributes.push(RuleAttribute::Priority(rule.priority));
    if let Some(src) = rule.src {
        message.header.src_len = src.prefix_len();
        message.attributes.push(RuleAttribute::Source(src.addr()));
    }
    if let Some(dst) = rule.dst {
        message.header.dst_len = dst.prefix_len();
        message.attributes.push(RuleAttribute::Destination(dst.addr()));
    }
    if let Some(iif) = iif {
        message.attributes.push(RuleAttribute::Iifname(iif.to_owned()));
    }
    message.attributes.push(RuleAttribute::Protocol(RouteProtocol::from(ROUTE_PROTOCOL)));
    message
}

/// The message that deletes the kernel rule matching `rule`, whoever added it (a rule Kilo
/// left behind has no protocol; naming ours would make the kernel skip it).
pub(crate) fn delete_message(rule: &Rule, iif: Option<&str>) -> RuleMessage {
    let mut message = message(rule, iif);
    message.attributes.retain(|attribute| !matches!(attribute, RuleAttribute::Protocol(_)));
    message
}

/// The table a rule looks up (tables above 255 only appear in the attribute).
fn table(message: &RuleMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RuleAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
}

/// The mesh's view of a kernel rule; `None` for an input interface that is none of ours.
pub(crate) fn to_rule(message: &RuleMessage, dev_named: impl Fn(&str) -> Option<Dev>) -> Option<Rule> {
    let mut rule = Rule { src: None, dst: None, iif: None, table: table(message), priority: 0 };
    for attribute in &message.attributes {
        match attribute {
            RuleAttribute::Source(ip) => rule.src = Some(net(*ip, message.header.src_len)?),
            RuleAttribute::Destination(ip) => rule.dst = Some(net(*ip, message.header.dst_len)?),
            RuleAttribute::Iifname(name) => rule.iif = Some(dev_named(name)?),
            RuleAttribute::Priority(priority) => rule.priority = *priority,
            _ => {}
        }
    }
    Some(rule)
}

fn net(ip: IpAddr, prefix_len: u8) -> Option<IpNet> {
    IpNet::new(ip, prefix_len).ok()
}

/// Every IPv4 and IPv6 rule that looks up table 1107.
pub(crate) async fn ours(handle: &Handle) -> io::Result<Vec<RuleMessage>> {
    let mut rules = Vec::new();
    for version in [IpVersion::V4, IpVersion::V6] {
        let mut stream = handle.rule().get(version).execute();
        while let Some(message) = stream.try_next().await.map_err(netlink_io)? {
            if table(&message) == KILO_TABLE {
                rules.push(message);
            }
        }
    }
    Ok(rules)
}

/// Adds a rule. The kernel refuses an identical second rule with EEXIST, which counts as done.
pub(crate) async fn add(handle: &Handle, message: RuleMessage) -> io::Result<()> {
    let mut request = handle.rule().add();
    *request.message_mut() = message;
    match request.execute().await.map_err(netlink_io) {
        Err(error) if error.raw_os_error() == Some(nix::libc::EEXIST) => Ok(()),
        result => result,
    }
}

/// Deletes the rule that matches the message.
pub(crate) async fn delete(handle: &Handle, message: RuleMessage) -> io::Result<()> {
    handle.rule().del(message).execute().await.map_err(netlink_io)
}

#[cfg(test)]
mod tests {
    use mesh_core::RULE_PRIORITY;

    use super::*;

    fn rule(src: Option<&str>, dst: &str, iif: Option<Dev>) -> Rule {
        Rule {
            src: src.map(|net| net.parse().unwrap()),
            dst: Some(dst.parse().unwrap()),
            iif,
            table: KILO_TABLE,
            priority: RULE_PRIORITY,
        }
    }

    #[test]
    fn rules_look_up_table_1107_with_an_explicit_priority_and_our_protocol() {
        let message = message(&rule(Some("10.2.1.0/24"), "192.168.0.2/32", None), None);
        assert_eq!(message.header.action, RuleAction::ToTable);
        assert_eq!(message.header.family, AddressFamily::Inet);
        assert_eq!((message.header.src_len, message.header.dst_len), (24, 32));
        assert_eq!(message.header.table, RouteHeader::RT_TABLE_UNSPEC);
        for attribute in [
            RuleAttribute::Table(KILO_TABLE),
            RuleAttribute::Priority(RULE_PRIORITY),
            RuleAttribute::Protocol(RouteProtocol::from(ROUTE_PROTOCOL)),
        ] {
            assert!(message.attributes.contains(&attribute), "{attribute:?} missing from {message:?}");
        }
        let delete = delete_message(&rule(None, "fd00::/64", Some(Dev::Kilo)), Some("kilo0"));
        assert_eq!(delete.header.family, AddressFamily::Inet6);
        assert!(delete.attributes.contains(&RuleAttribute::Iifname("kilo0".to_owned())));
        assert!(!delete.attributes.iter().any(|attribute| matches!(attribute, RuleAttribute::Protocol(_))));
    }

    #[test]
    fn kernel_rules_read_back_as_the_rules_that_made_them() {
        let names = |name: &str| (name == "kilo0").then_some(Dev::Kilo);
        for original in [rule(Some("10.2.1.0/24"), "192.168.0.2/32", None), rule(None, "fd00::/64", Some(Dev::Kilo))] {
            let iif = original.iif.map(|_| "kilo0");
            assert_eq!(to_rule(&message(&original, iif), names), Some(original));
        }
        assert_eq!(to_rule(&message(&rule(None, "10.0.0.0/8", Some(Dev::Kilo)), Some("eth9")), names), None);
    }
}
