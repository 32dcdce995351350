//! [`RuleList`]: firewall rules collected without repeats, straight into canonical order.

use ipnet::{IpNet, Ipv4Net};
use rustc_hash::FxHashSet;

use crate::firewall::{ChainName, Comment, Family, FirewallRule, Match, Target};

/// Collects rules, dropping exact repeats, in the firewall's canonical order: the caller
/// hands them over chain after chain in `ChainName` order, and IPv6 rules are kept aside to
/// follow all IPv4 ones. So the result needs neither sorting nor per-chain buckets.
pub(crate) struct RuleList {
    ipv4: Vec<FirewallRule>,
    ipv6: Vec<FirewallRule>,
    /// The rules seen, by [`RuleList::identity`]: rules without an IPv6 network as one integer,
    /// which hashes in one step, the others as two.
    seen: FxHashSet<u64>,
    seen_ipv6: FxHashSet<(u128, u64)>,
}

impl RuleList {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let mut seen = FxHashSet::default();
        seen.reserve(capacity);
        RuleList { ipv4: Vec::with_capacity(capacity), ipv6: Vec::new(), seen, seen_ipv6: FxHashSet::default() }
    }

    /// What makes a rule a repeat (family, chain, match and target, not the comment), packed
    /// into integers: the bits of an IPv6 network, and the rest.
    #[inline(always)]
    fn identity(rule: &FirewallRule) -> (Option<u128>, u64) {
        let (kind, net) = match rule.matches {
            Match::Any => (0, None),
            Match::Source(net) => (1, Some(net)),
            Match::Destination(net) => (2, Some(net)),
            Match::DestinationFromOutside(net) => (3, Some(net)),
            Match::Ipip => (4, None),
        };
        let (ipv6, ipv4, prefix) = match net {
            None => (None, 0, 0),
            Some(IpNet::V4(v4)) => (None, u64::from(u32::from(v4.addr())), u64::from(v4.prefix_len())),
            Some(IpNet::V6(v6)) => (Some(u128::from(v6.addr())), 0, u64::from(v6.prefix_len())),
        };
        let tags = (rule.family as u64) << 12 | (rule.chain as u64) << 8 | kind << 4 | rule.target as u64;
        (ipv6, ipv4 << 32 | prefix << 16 | tags)
    }

    #[inline(always)]
    pub(crate) fn push(&mut self, rule: FirewallRule) {
        let new = match RuleList::identity(&rule) {
            (None, rest) => self.seen.insert(rest),
            (Some(ipv6), rest) => self.seen_ipv6.insert((ipv6, rest)),
        };
        if new {
            match rule.family {
                Family::Ipv4 => self.ipv4.push(rule),
                Family::Ipv6 => self.ipv6.push(rule),
            }
        }
    }

    #[inline(always)]
    pub(crate) fn rule(&mut self, chain: ChainName, matches: Match, target: Target, comment: Comment) {
        // Nearly every rule matches an IPv4 network: its identity and host-bit clearing are
        // done on the address as an integer, and the rule is built once, where it is stored.
        let (kind, network) = match &matches {
            Match::Source(IpNet::V4(net)) => (1, net),
            Match::Destination(IpNet::V4(net)) => (2, net),
            Match::DestinationFromOutside(IpNet::V4(net)) => (3, net),
            _ => return self.push(FirewallRule::new(chain, matches, target, comment)),
        };
        let (bits, prefix) = (u32::from(network.addr()) & u32::from(network.netmask()), network.prefix_len());
        let tags = (Family::Ipv4 as u64) << 12 | (chain as u64) << 8 | kind << 4 | target as u64;
        if self.seen.insert(u64::from(bits) << 32 | u64::from(prefix) << 16 | tags) {
            let network = IpNet::V4(Ipv4Net::new(bits.into(), prefix).unwrap_or_else(|_| network.trunc()));
            let matches = match kind {
                1 => Match::Source(network),
                2 => Match::Destination(network),
                _ => Match::DestinationFromOutside(network),
            };
            self.ipv4.push(FirewallRule { family: Family::Ipv4, chain, matches, target, comment });
        }
    }

    pub(crate) fn both_families(&mut self, chain: ChainName, matches: Match, target: Target, comment: Comment) {
        for family in [Family::Ipv4, Family::Ipv6] {
            self.push(FirewallRule { family, ..FirewallRule::new(chain, matches, target, comment) });
        }
    }

    pub(crate) fn into_rules(mut self) -> Vec<FirewallRule> {
        self.ipv4.append(&mut self.ipv6);
        self.ipv4
    }
}
