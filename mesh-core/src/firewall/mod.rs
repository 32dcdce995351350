//! iptables rules: Kilo's `Topology.Rules` and the encapsulators' IPIP rules (§6.2 and §6.3 of
//! the reference), and [`FirewallEdit`], the minimal change from one firewall to another (what
//! §6.4's controller converges to, without its rewrites). The rules are collected by
//! `crate::tuned::rule_list::RuleList`.
//!
//! Rules are small `Copy` values (a chain, a match, a target, a comment) rather than argument
//! strings: a leader of a 5,000-node mesh has about 10,000 of them, and building, comparing and
//! de-duplicating them must cost nanoseconds each. [`FirewallRule::args`] writes the iptables
//! arguments; [`FirewallRule::parse`] reads them back.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use serde::ser::SerializeStruct as _;

use crate::ip::{one_address_cidr, trunc};
use crate::tuned::rule_list::RuleList;
use crate::{Encapsulation, Granularity, Options, Topology};

mod edit;

pub use edit::{
    CHAIN_PREFIX, COMMENT_PREFIX, FirewallChange, FirewallEdit, FirewallLayout, SharedChainLayout, is_owned_chain,
};

/// The NAT chain: masquerades traffic leaving the mesh, returns early for mesh destinations.
pub const NAT_CHAIN: &str = "KILO-NAT";
/// The IPIP chain: accepts IPIP only from the nodes of the location.
pub const IPIP_CHAIN: &str = "KILO-IPIP";

/// IP version of a rule: which of `iptables` and `ip6tables` holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// `iptables`.
    Ipv4,
    /// `ip6tables`.
    Ipv6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip.to_canonical() {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

/// The chains the mesh puts rules in, ordered by table then name (the order of their texts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainName {
    /// `filter FORWARD`: our ACCEPT rules go at the top.
    Forward,
    /// `filter INPUT`: our IPIP jump and drop go at the end, in that order.
    Input,
    /// `filter KILO-IPIP` (ours).
    KiloIpip,
    /// `nat KILO-NAT` (ours).
    KiloNat,
    /// `nat POSTROUTING`: our jumps go at the top.
    Postrouting,
}

impl ChainName {
    pub(crate) const ALL: [ChainName; 5] =
        [ChainName::Forward, ChainName::Input, ChainName::KiloIpip, ChainName::KiloNat, ChainName::Postrouting];
    /// The built-in chains the mesh shares with others.
    pub const SHARED: [ChainName; 3] = [ChainName::Forward, ChainName::Input, ChainName::Postrouting];
    /// The chains the mesh owns.
    pub const OWNED: [ChainName; 2] = [ChainName::KiloIpip, ChainName::KiloNat];

    /// The table: `filter` or `nat`.
    pub const fn table(self) -> &'static str {
        match self {
            ChainName::Forward | ChainName::Input | ChainName::KiloIpip => "filter",
            ChainName::KiloNat | ChainName::Postrouting => "nat",
        }
    }

    /// The chain's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ChainName::Forward => "FORWARD",
            ChainName::Input => "INPUT",
            ChainName::KiloIpip => IPIP_CHAIN,
            ChainName::KiloNat => NAT_CHAIN,
            ChainName::Postrouting => "POSTROUTING",
        }
    }

    /// Whether the mesh owns the whole chain (creates, fills and deletes it).
    pub const fn is_owned(self) -> bool {
        matches!(self, ChainName::KiloIpip | ChainName::KiloNat)
    }

    /// The chain with this table and name, if the mesh uses it.
    pub fn parse(table: &str, name: &str) -> Option<ChainName> {
        ChainName::ALL.into_iter().find(|chain| chain.table() == table && chain.as_str() == name)
    }
}

/// A chain by its name (each name belongs to one table).
impl Serialize for ChainName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What a rule matches, besides its chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Match {
    /// Everything.
    Any,
    /// `-s CIDR`.
    Source(IpNet),
    /// `-d CIDR`.
    Destination(IpNet),
    /// `-d CIDR ! -s CIDR`: into a range, from outside it (Cozystack's VIP fix).
    DestinationFromOutside(IpNet),
    /// `-p ipencap` (IP protocol 4, IPIP).
    Ipip,
}

/// Where a matching packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// `RETURN`.
    Return,
    /// `MASQUERADE`.
    Masquerade,
    /// `ACCEPT`.
    Accept,
    /// `DROP`.
    Drop,
    /// Jump to `KILO-NAT`.
    NatChain,
    /// Jump to `KILO-IPIP`.
    IpipChain,
}

impl Target {
    /// The `-j` argument.
    pub const fn as_str(self) -> &'static str {
        match self {
            Target::Return => "RETURN",
            Target::Masquerade => "MASQUERADE",
            Target::Accept => "ACCEPT",
            Target::Drop => "DROP",
            Target::NatChain => NAT_CHAIN,
            Target::IpipChain => IPIP_CHAIN,
        }
    }

    const ALL: [Target; 6] =
        [Target::Return, Target::Masquerade, Target::Accept, Target::Drop, Target::NatChain, Target::IpipChain];
}

/// Kilo's rule comments, which mark our rules in chains we do not own. The texts are Kilo's,
/// including the upstream typo "WireGuared".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)] // Each variant is documented by its text, see `as_str`.
pub enum Comment {
    WireGuardIps,
    KnownIps,
    Peers,
    ServiceCidrs,
    NatRemaining,
    JumpToKiloNat,
    JumpToNat,
    ForwardFromPodSubnet,
    ForwardToPodSubnet,
    ForwardFromAllowedLocationIps,
    ForwardToAllowedLocationIps,
    ForwardFromPrivateIps,
    ForwardToPrivateIps,
    ForwardFromNodePodSubnet,
    ForwardToNodePodSubnet,
    AllowIpip,
    JumpToIpip,
    RejectIpip,
}

impl Comment {
    const ALL: [Comment; 18] = [
        Comment::WireGuardIps,
        Comment::KnownIps,
        Comment::Peers,
        Comment::ServiceCidrs,
        Comment::NatRemaining,
        Comment::JumpToKiloNat,
        Comment::JumpToNat,
        Comment::ForwardFromPodSubnet,
        Comment::ForwardToPodSubnet,
        Comment::ForwardFromAllowedLocationIps,
        Comment::ForwardToAllowedLocationIps,
        Comment::ForwardFromPrivateIps,
        Comment::ForwardToPrivateIps,
        Comment::ForwardFromNodePodSubnet,
        Comment::ForwardToNodePodSubnet,
        Comment::AllowIpip,
        Comment::JumpToIpip,
        Comment::RejectIpip,
    ];

    /// Kilo's text.
    pub const fn as_str(self) -> &'static str {
        match self {
            Comment::WireGuardIps => "Kilo: do not NAT packets destined for WireGuared IPs",
            Comment::KnownIps => "Kilo: do not NAT packets destined for known IPs",
            Comment::Peers => "Kilo: do not NAT packets destined for peers",
            Comment::ServiceCidrs => "Kilo: do not NAT packets destined for service CIDRs",
            Comment::NatRemaining => "Kilo: NAT remaining packets",
            Comment::JumpToKiloNat => "Kilo: jump to KILO-NAT chain",
            Comment::JumpToNat => "Kilo: jump to NAT chain",
            Comment::ForwardFromPodSubnet => "Kilo: forward packets from the pod subnet",
            Comment::ForwardToPodSubnet => "Kilo: forward packets to the pod subnet",
            Comment::ForwardFromAllowedLocationIps => "Kilo: forward packets from allowed location IPs",
            Comment::ForwardToAllowedLocationIps => "Kilo: forward packets to allowed location IPs",
            Comment::ForwardFromPrivateIps => "Kilo: forward packets from private IPs",
            Comment::ForwardToPrivateIps => "Kilo: forward packets to private IPs",
            Comment::ForwardFromNodePodSubnet => "Kilo: forward packets from the node's pod subnet",
            Comment::ForwardToNodePodSubnet => "Kilo: forward packets to the node's pod subnet",
            Comment::AllowIpip => "Kilo: allow IPIP traffic",
            Comment::JumpToIpip => "Kilo: jump to IPIP chain",
            Comment::RejectIpip => "Kilo: reject other IPIP traffic",
        }
    }

    /// The comment with Kilo's text `text`.
    pub fn parse(text: &str) -> Option<Comment> {
        Comment::ALL.into_iter().find(|comment| comment.as_str() == text)
    }
}

impl fmt::Display for Comment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A chain we own (create, fill and delete).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Chain {
    /// IP version.
    pub family: Family,
    /// `KILO-NAT` or `KILO-IPIP`.
    pub name: ChainName,
}

impl Serialize for Chain {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut state = serializer.serialize_struct("Chain", 3)?;
        state.serialize_field("family", &self.family)?;
        state.serialize_field("table", self.name.table())?;
        state.serialize_field("name", self.name.as_str())?;
        state.end()
    }
}

/// One iptables rule of the mesh. CIDRs are stored with host bits cleared, as iptables stores
/// them.
#[derive(Clone, Copy, Debug, Eq, PartialOrd, Ord, Hash)]
#[expect(clippy::derived_hash_with_manual_eq, reason = "`eq` is the derived comparison, always inlined")]
pub struct FirewallRule {
    /// IP version.
    pub family: Family,
    /// The chain (and so the table).
    pub chain: ChainName,
    /// What it matches.
    pub matches: Match,
    /// Where matching packets go.
    pub target: Target,
    /// Kilo's comment.
    pub comment: Comment,
}

impl FirewallRule {
    // Inlined, with `RuleList::rule` and `push` (crate::tuned::rule_list), into the loops over thousands of addresses:
    // out of line, `Match` and its byte-aligned `IpNet` went through memory byte by byte and
    // were read back whole, stalling on every rule (a tenth of the pipeline's time).
    #[inline(always)]
    pub(crate) fn new(chain: ChainName, matches: Match, target: Target, comment: Comment) -> Self {
        let (matches, family) = match matches {
            Match::Source(net) => (Match::Source(trunc(&net)), Family::of(net.addr())),
            Match::Destination(net) => (Match::Destination(trunc(&net)), Family::of(net.addr())),
            Match::DestinationFromOutside(net) => (Match::DestinationFromOutside(trunc(&net)), Family::of(net.addr())),
            Match::Any | Match::Ipip => (matches, Family::Ipv4),
        };
        FirewallRule { family, chain, matches, target, comment }
    }

    /// The table: `nat` or `filter`.
    pub const fn table(&self) -> &'static str {
        self.chain.table()
    }

    /// The iptables arguments without the comment, e.g. `-d 10.4.0.1/32 -j RETURN`
    /// (`-d 192.168.10.0/24 ! -s 192.168.10.0/24 -j KILO-NAT` for the VIP rule).
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = match self.matches {
            Match::Any => Vec::new(),
            Match::Source(net) => vec!["-s".into(), net.to_string()],
            Match::Destination(net) => vec!["-d".into(), net.to_string()],
            Match::DestinationFromOutside(net) => {
                vec!["-d".into(), net.to_string(), "!".into(), "-s".into(), net.to_string()]
            }
            Match::Ipip => vec!["-p".into(), "ipencap".into()],
        };
        args.extend(["-j".to_owned(), self.target.as_str().to_owned()]);
        args
    }

    /// Reads a rule back from its chain, arguments (in any order, as `iptables-save` prints
    /// them: `! -s A -d B`, `-p 4` or `-p ipencap`) and comment. `None` when it is not a rule
    /// the mesh generates.
    pub fn parse(family: Family, table: &str, chain: &str, args: &[&str], comment: &str) -> Option<FirewallRule> {
        let chain = ChainName::parse(table, chain)?;
        let comment = Comment::parse(comment)?;
        let (mut source, mut not_source, mut destination, mut ipip, mut target) = (None, None, None, false, None);
        let mut words = args.iter().copied();
        let cidr = |text: Option<&str>| -> Option<IpNet> {
            let text = text?;
            // iptables-save writes a single address without /32.
            text.parse::<IpNet>().ok().or_else(|| text.parse::<IpAddr>().ok().map(one_address_cidr))
        };
        while let Some(word) = words.next() {
            match word {
                "!" => match words.next()? {
                    "-s" => not_source = Some(cidr(words.next())?),
                    _ => return None,
                },
                "-s" => source = Some(cidr(words.next())?),
                "-d" => destination = Some(cidr(words.next())?),
                "-p" => match words.next()? {
                    "ipencap" | "4" => ipip = true,
                    _ => return None,
                },
                "-j" => {
                    let name = words.next()?;
                    target = Some(Target::ALL.into_iter().find(|t| t.as_str() == name)?);
                }
                _ => return None,
            }
        }
        let matches = match (source, not_source, destination, ipip) {
            (None, None, None, false) => Match::Any,
            (Some(source), None, None, false) => Match::Source(source),
            (None, None, Some(destination), false) => Match::Destination(destination),
            (None, Some(outside), Some(destination), false) if outside == destination => {
                Match::DestinationFromOutside(destination)
            }
            (None, None, None, true) => Match::Ipip,
            _ => return None,
        };
        let rule = FirewallRule { family, chain, matches, target: target?, comment };
        // A CIDR of the other IP version cannot come from this family's table.
        let consistent = match matches {
            Match::Source(net) | Match::Destination(net) | Match::DestinationFromOutside(net) => {
                Family::of(net.addr()) == family
            }
            Match::Any | Match::Ipip => true,
        };
        consistent.then_some(rule)
    }
}

impl PartialEq for FirewallRule {
    /// Field by field, as derived, but always inlined: a steady plan compares 10,000 of them.
    #[inline(always)]
    fn eq(&self, other: &Self) -> bool {
        self.family == other.family
            && self.chain == other.chain
            && self.matches == other.matches
            && self.target == other.target
            && self.comment == other.comment
    }
}

impl Serialize for FirewallRule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut state = serializer.serialize_struct("FirewallRule", 5)?;
        state.serialize_field("family", &self.family)?;
        state.serialize_field("table", self.table())?;
        state.serialize_field("chain", self.chain.as_str())?;
        state.serialize_field("args", &self.args())?;
        state.serialize_field("comment", self.comment.as_str())?;
        state.end()
    }
}

/// A rule found in the data plane that the mesh owns (it is in a `KILO-*` chain, carries a
/// `Kilo:` comment or jumps to a `KILO-*` chain) but does not generate, e.g. one left by another
/// Kilo version. Its presence makes the firewall differ, so the next plan removes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ForeignRule {
    /// IP version.
    pub family: Family,
    /// The table.
    pub table: String,
    /// The chain.
    pub chain: String,
    /// The rule as `iptables-save` prints it after `-A CHAIN`.
    pub spec: String,
}

/// A `KILO-*` chain found in the data plane that the mesh does not generate (another Kilo
/// version's, or one of ours in the wrong table). The next plan removes it with its rules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ForeignChain {
    /// IP version.
    pub family: Family,
    /// The table.
    pub table: String,
    /// The chain's name.
    pub name: String,
}

/// The firewall this node wants (or has): chains we own, our rules grouped by family and chain
/// ([`Firewall::canonicalize`]) in the order they take inside each chain, and — in observed
/// states only — rules and chains of ours the mesh does not generate. Identical rules (same
/// family, chain, match and target) appear once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Firewall {
    /// Chains to create.
    pub chains: Vec<Chain>,
    /// Rules, grouped by family and chain.
    pub rules: Vec<FirewallRule>,
    /// Rules that must go (observed states only).
    pub foreign: Vec<ForeignRule>,
    /// Chains that must go (observed states only).
    pub foreign_chains: Vec<ForeignChain>,
}

/// The parts of a canonical firewall of one IP version, as slices.
type FamilyParts<'a> = (&'a [Chain], &'a [FirewallRule], &'a [ForeignRule], &'a [ForeignChain]);

impl Firewall {
    /// Puts chains and rules in one canonical order: by family, table and chain, keeping the
    /// order of rules inside a chain (the only order the kernel keeps, and the only one that
    /// matters). States built in different ways then compare equal.
    pub fn canonicalize(&mut self) {
        self.chains.sort();
        self.chains.dedup();
        self.rules.sort_by_key(|rule| (rule.family, rule.chain));
        self.foreign.sort();
        self.foreign_chains.sort();
        self.foreign_chains.dedup();
    }

    /// Whether the firewall is in canonical order ([`Firewall::canonicalize`]).
    pub fn is_canonical(&self) -> bool {
        self.chains.is_sorted()
            && self.rules.is_sorted_by_key(|rule| (rule.family, rule.chain))
            && self.foreign.is_sorted()
            && self.foreign_chains.is_sorted()
    }

    /// The part of the firewall of one IP version.
    pub fn family(&self, family: Family) -> Firewall {
        let (chains, rules, foreign, foreign_chains) = self.family_parts(family);
        Firewall {
            chains: chains.to_vec(),
            rules: rules.to_vec(),
            foreign: foreign.to_vec(),
            foreign_chains: foreign_chains.to_vec(),
        }
    }

    /// Whether the parts of one IP version are equal, without copying them.
    pub fn family_eq(&self, other: &Firewall, family: Family) -> bool {
        self.family_parts(family) == other.family_parts(family)
    }

    /// Chains, rules, foreign rules and foreign chains of one family, as slices of a canonical
    /// firewall.
    fn family_parts(&self, family: Family) -> FamilyParts<'_> {
        fn part<T>(items: &[T], family: Family, of: impl Fn(&T) -> Family) -> &[T] {
            // One search: there are two families, IPv4's items first.
            let ipv6_start = items.partition_point(|item| of(item) == Family::Ipv4);
            match family {
                Family::Ipv4 => &items[..ipv6_start],
                Family::Ipv6 => &items[ipv6_start..],
            }
        }
        (
            part(&self.chains, family, |chain| chain.family),
            part(&self.rules, family, |rule| rule.family),
            part(&self.foreign, family, |rule| rule.family),
            part(&self.foreign_chains, family, |chain| chain.family),
        )
    }
}

impl Topology {
    /// The iptables rules this node installs (Kilo's rule set, with the encapsulation rules first).
    pub fn firewall(&self, options: &Options) -> Firewall {
        let ipip = self.installs_ipip_rules(options);
        let mut chains = Vec::with_capacity(4);
        if ipip {
            chains.extend([Family::Ipv4, Family::Ipv6].map(|family| Chain { family, name: ChainName::KiloIpip }));
        }
        chains.extend([Family::Ipv4, Family::Ipv6].map(|family| Chain { family, name: ChainName::KiloNat }));
        chains.sort();

        let known: usize = self.segments.iter().map(|s| s.allowed_ips.len() + 1).sum();
        let peer_ips: usize = self.peers.iter().map(|p| p.allowed_ips.len()).sum();
        let mut rules = RuleList::with_capacity(known + 2 * peer_ips + options.service_cidrs.len() + 16);
        // Chain after chain, in `ChainName` order; inside a chain, in Kilo's order.
        if options.cni && options.iptables_forward_rules {
            self.forward_rules(&mut rules);
        }
        if ipip {
            self.ipip_rules(&mut rules);
        }
        use {ChainName::*, Comment::*, Match::*, Target::*};
        for segment in &self.segments {
            rules.rule(KiloNat, Destination(one_address_cidr(segment.wireguard_ip)), Return, WireGuardIps);
            for ip in &segment.allowed_ips {
                rules.rule(KiloNat, Destination(*ip), Return, KnownIps);
            }
        }
        for ip in self.peers.iter().flat_map(|peer| &peer.allowed_ips) {
            rules.rule(KiloNat, Destination(*ip), Return, Peers);
        }
        for cidr in &options.service_cidrs {
            rules.rule(KiloNat, Destination(*cidr), Return, ServiceCidrs);
        }
        rules.both_families(KiloNat, Any, Masquerade, NatRemaining);
        if options.cni {
            rules.rule(Postrouting, Source(self.pod_subnet), NatChain, JumpToKiloNat);
        }
        // Traffic into the location's non-cluster hosts is masqueraded so replies find their
        // way back, except traffic that starts inside the same range (Cozystack's fix: VIPs
        // and floating IPs must keep their source).
        for ip in &self.local().allowed_location_ips {
            rules.rule(Postrouting, DestinationFromOutside(*ip), NatChain, JumpToNat);
        }
        for ip in self.peers.iter().flat_map(|peer| &peer.allowed_ips) {
            rules.rule(Postrouting, Source(*ip), NatChain, JumpToNat);
        }
        Firewall { chains, rules: rules.into_rules(), ..Firewall::default() }
    }

    /// Kilo adds the IPIP rules when it routes inside the location with an IPIP tunnel and the
    /// node has a private IP (otherwise its encapsulator is a no-op).
    fn installs_ipip_rules(&self, options: &Options) -> bool {
        options.encapsulation != Encapsulation::Never
            && options.local
            && options.compatibility.uses_ipip()
            && self.private_ip.is_some()
    }

    /// IPIP is accepted from the private IPs of the local location's nodes and dropped otherwise.
    fn ipip_rules(&self, rules: &mut RuleList) {
        rules.both_families(ChainName::Input, Match::Ipip, Target::IpipChain, Comment::JumpToIpip);
        rules.both_families(ChainName::Input, Match::Ipip, Target::Drop, Comment::RejectIpip);
        let sources: Vec<IpAddr> = match self.granularity {
            Granularity::Location => self.local().members.iter().filter_map(|m| m.private_ip).collect(),
            // Each node is its own segment; no IPIP flows inside a location.
            Granularity::Full => Vec::new(),
            // Kilo's cross patch accepts no one here although it routes same-location traffic
            // through the tunnel (with --local); we accept the location's nodes (docs/compatibility.md).
            Granularity::Cross => self
                .segments
                .iter()
                .filter(|s| self.is_local_location(s))
                .flat_map(|s| s.members.iter().filter_map(|m| m.private_ip))
                .collect(),
        };
        for source in sources {
            rules.rule(
                ChainName::KiloIpip,
                Match::Source(one_address_cidr(source)),
                Target::Accept,
                Comment::AllowIpip,
            );
        }
    }

    /// `--iptables-forward-rules`: a leader forwards for its whole location (its own segment,
    /// as in Kilo), another node for its pod subnet.
    fn forward_rules(&self, rules: &mut RuleList) {
        use {ChainName::*, Comment::*, Match::*, Target::*};
        if !self.leader {
            rules.rule(Forward, Source(self.pod_subnet), Accept, ForwardFromNodePodSubnet);
            rules.rule(Forward, Destination(self.pod_subnet), Accept, ForwardToNodePodSubnet);
            return;
        }
        let local = self.local();
        for member in &local.members {
            rules.rule(Forward, Source(member.pod_subnet), Accept, ForwardFromPodSubnet);
            rules.rule(Forward, Destination(member.pod_subnet), Accept, ForwardToPodSubnet);
        }
        for ip in &local.allowed_location_ips {
            rules.rule(Forward, Source(*ip), Accept, ForwardFromAllowedLocationIps);
            rules.rule(Forward, Destination(*ip), Accept, ForwardToAllowedLocationIps);
        }
        for ip in local.members.iter().filter_map(|m| m.private_ip) {
            rules.rule(Forward, Source(one_address_cidr(ip)), Accept, ForwardFromPrivateIps);
            rules.rule(Forward, Destination(one_address_cidr(ip)), Accept, ForwardToPrivateIps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_back_from_iptables_save_order() {
        let rule = FirewallRule::new(
            ChainName::Postrouting,
            Match::DestinationFromOutside("192.168.10.7/24".parse().unwrap()),
            Target::NatChain,
            Comment::JumpToNat,
        );
        assert_eq!(rule.args().join(" "), "-d 192.168.10.0/24 ! -s 192.168.10.0/24 -j KILO-NAT");
        let saved = ["!", "-s", "192.168.10.0/24", "-d", "192.168.10.0/24", "-j", "KILO-NAT"];
        assert_eq!(
            FirewallRule::parse(Family::Ipv4, "nat", "POSTROUTING", &saved, "Kilo: jump to NAT chain"),
            Some(rule)
        );
        let ipip = FirewallRule::parse(
            Family::Ipv6,
            "filter",
            "INPUT",
            &["-p", "4", "-j", "DROP"],
            Comment::RejectIpip.as_str(),
        );
        assert_eq!(ipip.map(|rule| rule.args().join(" ")), Some("-p ipencap -j DROP".to_owned()));
        let single = FirewallRule::parse(
            Family::Ipv4,
            "nat",
            "KILO-NAT",
            &["-d", "10.4.0.1", "-j", "RETURN"],
            Comment::KnownIps.as_str(),
        );
        assert_eq!(single.map(|rule| rule.matches), Some(Match::Destination("10.4.0.1/32".parse().unwrap())));
        for (chain, args, comment) in [
            ("KILO-NAT", &["-d", "10.4.0.1/32", "-j", "RETURN"][..], "Kilo: something else"),
            ("KILO-NAT", &["-d", "10.4.0.1/32", "-j", "LOG"], Comment::KnownIps.as_str()),
            ("KILO-NAT", &["-d", "10.4.0.1/32", "-s", "10.0.0.0/8", "-j", "RETURN"], Comment::KnownIps.as_str()),
            ("OUTPUT", &["-j", "RETURN"], Comment::KnownIps.as_str()),
            ("KILO-NAT", &["-d", "fd00::/64", "-j", "RETURN"], Comment::KnownIps.as_str()),
        ] {
            assert_eq!(FirewallRule::parse(Family::Ipv4, "nat", chain, args, comment), None, "{args:?}");
        }
    }
}
