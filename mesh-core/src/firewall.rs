//! iptables rules: Kilo's `Topology.Rules` and the encapsulators' IPIP rules.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::ip::one_address_cidr;
use crate::{Encapsulation, Granularity, Options, Topology};

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

/// A chain we own (create, fill and delete).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Chain {
    /// IP version.
    pub family: Family,
    /// `nat` or `filter`.
    pub table: String,
    /// `KILO-NAT` or `KILO-IPIP`.
    pub name: String,
}

/// One iptables rule. Rules in chains we own are all ours; in other chains (`POSTROUTING`,
/// `FORWARD`, `INPUT`) the comment marks ours.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FirewallRule {
    /// IP version.
    pub family: Family,
    /// `nat` or `filter`.
    pub table: String,
    /// The chain.
    pub chain: String,
    /// Matches and target, without the comment match (`-d 10.4.0.1/32 -j RETURN`).
    pub args: Vec<String>,
    /// Kilo's comment, e.g. `Kilo: do not NAT packets destined for known IPs`.
    #[serde(skip)]
    pub comment: String,
}

impl FirewallRule {
    fn new(family: Family, table: &str, chain: &str, args: &[&str], comment: &str) -> Self {
        FirewallRule {
            family,
            table: table.to_owned(),
            chain: chain.to_owned(),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            comment: comment.to_owned(),
        }
    }

    /// Whether this rule sits in a chain we own rather than in a built-in chain.
    pub fn in_owned_chain(&self) -> bool {
        self.chain == NAT_CHAIN || self.chain == IPIP_CHAIN
    }
}

/// The firewall this node wants: chains we own, and our rules in the order they take in their
/// chains, grouped by family, table and chain ([`Firewall::canonicalize`]). Identical rules (same
/// family, table, chain and arguments) appear once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Firewall {
    /// Chains to create.
    pub chains: Vec<Chain>,
    /// Rules, in chain order.
    pub rules: Vec<FirewallRule>,
}

impl Firewall {
    fn chain(&mut self, family: Family, table: &str, name: &str) {
        let chain = Chain { family, table: table.to_owned(), name: name.to_owned() };
        if !self.chains.contains(&chain) {
            self.chains.push(chain);
        }
    }

    /// Puts chains and rules in one canonical order: by family, table and chain, keeping the
    /// order of rules inside a chain (the only order the kernel keeps, and the only one that
    /// matters). States built in different ways then compare equal.
    pub fn canonicalize(&mut self) {
        self.chains.sort_by(|a, b| (a.family, &a.table, &a.name).cmp(&(b.family, &b.table, &b.name)));
        self.rules.sort_by(|a, b| (a.family, &a.table, &a.chain).cmp(&(b.family, &b.table, &b.chain)));
    }

    /// The part of the firewall of one IP version.
    pub fn family(&self, family: Family) -> Firewall {
        Firewall {
            chains: self.chains.iter().filter(|c| c.family == family).cloned().collect(),
            rules: self.rules.iter().filter(|r| r.family == family).cloned().collect(),
        }
    }
}

/// Collects rules, dropping exact repeats.
#[derive(Default)]
struct RuleList {
    rules: Vec<FirewallRule>,
    seen: HashSet<(Family, String, String, Vec<String>)>,
}

impl RuleList {
    fn push(&mut self, rule: FirewallRule) {
        if self.seen.insert((rule.family, rule.table.clone(), rule.chain.clone(), rule.args.clone())) {
            self.rules.push(rule);
        }
    }

    fn nat_return(&mut self, dst: IpNet, comment: &str) {
        let family = Family::of(dst.addr());
        let dst = dst.trunc().to_string();
        self.push(FirewallRule::new(family, "nat", NAT_CHAIN, &["-d", &dst, "-j", "RETURN"], comment));
    }

    fn accept(&mut self, selector: &str, net: IpNet, comment: &str) {
        let family = Family::of(net.addr());
        let net = net.trunc().to_string();
        self.push(FirewallRule::new(family, "filter", "FORWARD", &[selector, &net, "-j", "ACCEPT"], comment));
    }
}

impl Topology {
    /// The iptables rules this node installs (Kilo's rule set, with the encapsulation rules first).
    ///
    /// CIDRs are written with host bits cleared, as iptables stores them.
    pub fn firewall(&self, options: &Options) -> Firewall {
        let mut firewall = Firewall::default();
        let mut rules = RuleList::default();
        if self.installs_ipip_rules(options) {
            self.ipip_rules(&mut firewall, &mut rules);
        }
        firewall.chain(Family::Ipv4, "nat", NAT_CHAIN);
        firewall.chain(Family::Ipv6, "nat", NAT_CHAIN);
        if options.cni {
            self.cni_rules(options, &mut rules);
        }
        for (index, segment) in self.segments.iter().enumerate() {
            rules.nat_return(
                one_address_cidr(segment.wireguard_ip),
                "Kilo: do not NAT packets destined for WireGuared IPs",
            );
            for ip in &segment.allowed_ips {
                rules.nat_return(*ip, "Kilo: do not NAT packets destined for known IPs");
            }
            // Traffic into the location's non-cluster hosts is masqueraded so replies find their
            // way back, except traffic that starts inside the same range (Cozystack's fix: VIPs
            // and floating IPs must keep their source).
            if index == self.local_segment {
                for ip in &segment.allowed_location_ips {
                    let family = Family::of(ip.addr());
                    let ip = ip.trunc().to_string();
                    rules.push(FirewallRule::new(
                        family,
                        "nat",
                        "POSTROUTING",
                        &["-d", &ip, "!", "-s", &ip, "-j", NAT_CHAIN],
                        "Kilo: jump to NAT chain",
                    ));
                }
            }
        }
        for peer in &self.peers {
            for ip in &peer.allowed_ips {
                let text = ip.trunc().to_string();
                rules.push(FirewallRule::new(
                    Family::of(ip.addr()),
                    "nat",
                    "POSTROUTING",
                    &["-s", &text, "-j", NAT_CHAIN],
                    "Kilo: jump to NAT chain",
                ));
                rules.nat_return(*ip, "Kilo: do not NAT packets destined for peers");
            }
        }
        for cidr in &options.service_cidrs {
            rules.nat_return(*cidr, "Kilo: do not NAT packets destined for service CIDRs");
        }
        for family in [Family::Ipv4, Family::Ipv6] {
            rules.push(FirewallRule::new(
                family,
                "nat",
                NAT_CHAIN,
                &["-j", "MASQUERADE"],
                "Kilo: NAT remaining packets",
            ));
        }
        firewall.rules = rules.rules;
        firewall.canonicalize();
        firewall
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
    fn ipip_rules(&self, firewall: &mut Firewall, rules: &mut RuleList) {
        firewall.chain(Family::Ipv4, "filter", IPIP_CHAIN);
        firewall.chain(Family::Ipv6, "filter", IPIP_CHAIN);
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
            let family = Family::of(source);
            let source = one_address_cidr(source).to_string();
            rules.push(FirewallRule::new(
                family,
                "filter",
                IPIP_CHAIN,
                &["-s", &source, "-j", "ACCEPT"],
                "Kilo: allow IPIP traffic",
            ));
        }
        for (target, comment) in [(IPIP_CHAIN, "Kilo: jump to IPIP chain"), ("DROP", "Kilo: reject other IPIP traffic")]
        {
            for family in [Family::Ipv4, Family::Ipv6] {
                rules.push(FirewallRule::new(family, "filter", "INPUT", &["-p", "ipencap", "-j", target], comment));
            }
        }
    }

    fn cni_rules(&self, options: &Options, rules: &mut RuleList) {
        let pods = self.pod_subnet.trunc().to_string();
        rules.push(FirewallRule::new(
            Family::of(self.pod_subnet.addr()),
            "nat",
            "POSTROUTING",
            &["-s", &pods, "-j", NAT_CHAIN],
            "Kilo: jump to KILO-NAT chain",
        ));
        if !options.iptables_forward_rules {
            return;
        }
        if !self.leader {
            rules.accept("-s", self.pod_subnet, "Kilo: forward packets from the node's pod subnet");
            rules.accept("-d", self.pod_subnet, "Kilo: forward packets to the node's pod subnet");
            return;
        }
        // A leader forwards for its whole location (its own segment, as in Kilo).
        let local = self.local();
        for member in &local.members {
            rules.accept("-s", member.pod_subnet, "Kilo: forward packets from the pod subnet");
            rules.accept("-d", member.pod_subnet, "Kilo: forward packets to the pod subnet");
        }
        for ip in &local.allowed_location_ips {
            rules.accept("-s", *ip, "Kilo: forward packets from allowed location IPs");
            rules.accept("-d", *ip, "Kilo: forward packets to allowed location IPs");
        }
        for ip in local.members.iter().filter_map(|m| m.private_ip) {
            rules.accept("-s", one_address_cidr(ip), "Kilo: forward packets from private IPs");
            rules.accept("-d", one_address_cidr(ip), "Kilo: forward packets to private IPs");
        }
    }
}
