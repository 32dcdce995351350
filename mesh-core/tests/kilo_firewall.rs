//! Kilo's iptables rule sets (kilo-reference.md §6, Appendix A) on the shared fixture of §10.1.
//!
//! The expected rule sets are Kilo's listings, copied verbatim from the appendix (`prepend[v4] nat -A
//! KILO-NAT -d … -m comment --comment "…" -j RETURN`) and normalised to our model by [`listing`]:
//!
//! * the comment match is taken out of the arguments and compared separately, with Kilo's text
//!   (including the upstream typo "WireGuared");
//! * CIDRs are masked, as iptables stores them: Kilo prints the peer's `10.5.0.1/24` (host bits kept),
//!   the kernel holds and `iptables -S` prints `10.5.0.0/24`, which is what we write;
//! * identical (family, table, chain, args) rules appear once. Kilo's identity includes the comment,
//!   so it installs `-d 10.4.0.1/32 -j RETURN` twice ("WireGuared IPs" and "known IPs"); we install
//!   it once with the first comment. [`Listing::collapsed`] records every such pair so the tests say
//!   exactly which ones collapse.
//!
//! Cozystack's Kilo (our reference) adds `! -s <alip>` to the allowed-location-IP jump; the
//! appendix shows upstream's rule, so [`with_cozystack_fix`] applies the patch to the listings.
//!
//! Sets are compared; the order properties that matter in the kernel are checked separately
//! ([`assert_chain_order`]).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::snapshot;
use ipnet::IpNet;
use mesh_core::{ClusterSnapshot, Compatibility, Encapsulation, Family, Firewall, Granularity, Options, Topology};

/// Appendix A.1: node b (leader of `location:2`), `--cni=true --iptables-forward-rules=true`.
const A1: &str = r#"
  prepend[v4] nat -A POSTROUTING -s 10.2.2.0/24 -m comment --comment "Kilo: jump to KILO-NAT chain" -j KILO-NAT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets from the pod subnet" -s 10.2.2.0/24 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets to the pod subnet" -d 10.2.2.0/24 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets from the pod subnet" -s 10.2.3.0/24 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets to the pod subnet" -d 10.2.3.0/24 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets from allowed location IPs" -s 192.168.178.3/32 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets to allowed location IPs" -d 192.168.178.3/32 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets from private IPs" -s 192.168.0.1/32 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets to private IPs" -d 192.168.0.1/32 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets from private IPs" -s 192.168.0.2/32 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets to private IPs" -d 192.168.0.2/32 -j ACCEPT
  prepend[v4] nat -A KILO-NAT -d 10.4.0.1/32 -m comment --comment "Kilo: do not NAT packets destined for WireGuared IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.2.1.0/24 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 192.168.0.1/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.4.0.1/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.4.0.2/32 -m comment --comment "Kilo: do not NAT packets destined for WireGuared IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.2.2.0/24 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 192.168.0.1/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.2.3.0/24 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 192.168.0.2/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.4.0.2/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A POSTROUTING -d 192.168.178.3/32 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT
  prepend[v4] nat -A KILO-NAT -d 10.4.0.3/32 -m comment --comment "Kilo: do not NAT packets destined for WireGuared IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.2.4.0/24 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.4.0.3/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A POSTROUTING -s 10.5.0.1/24 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT
  prepend[v4] nat -A KILO-NAT -d 10.5.0.1/24 -m comment --comment "Kilo: do not NAT packets destined for peers" -j RETURN
  prepend[v4] nat -A POSTROUTING -s 10.5.0.2/24 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT
  prepend[v4] nat -A KILO-NAT -d 10.5.0.2/24 -m comment --comment "Kilo: do not NAT packets destined for peers" -j RETURN
  prepend[v4] nat -A POSTROUTING -s 10.5.0.3/24 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT
  prepend[v4] nat -A KILO-NAT -d 10.5.0.3/24 -m comment --comment "Kilo: do not NAT packets destined for peers" -j RETURN
  append[v4]  nat -N KILO-NAT
  append[v6]  nat -N KILO-NAT
  append[v4]  nat -A KILO-NAT -m comment --comment "Kilo: NAT remaining packets" -j MASQUERADE
  append[v6]  nat -A KILO-NAT -m comment --comment "Kilo: NAT remaining packets" -j MASQUERADE
"#;

/// Appendix A.2: node c (non-leader), `--cni=true`, no forward rules.
const A2: &str = r#"
  prepend[v4] nat -A POSTROUTING -s 10.2.3.0/24 -m comment --comment "Kilo: jump to KILO-NAT chain" -j KILO-NAT
  prepend[v4] nat -A KILO-NAT -d 10.4.0.1/32 -m comment --comment "Kilo: do not NAT packets destined for WireGuared IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.2.1.0/24 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 192.168.0.1/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.4.0.1/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.4.0.2/32 -m comment --comment "Kilo: do not NAT packets destined for WireGuared IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.2.2.0/24 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 192.168.0.1/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.2.3.0/24 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 192.168.0.2/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.4.0.2/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A POSTROUTING -d 192.168.178.3/32 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT
  prepend[v4] nat -A KILO-NAT -d 10.4.0.3/32 -m comment --comment "Kilo: do not NAT packets destined for WireGuared IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.2.4.0/24 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.4.0.3/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A POSTROUTING -s 10.5.0.1/24 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT
  prepend[v4] nat -A KILO-NAT -d 10.5.0.1/24 -m comment --comment "Kilo: do not NAT packets destined for peers" -j RETURN
  prepend[v4] nat -A POSTROUTING -s 10.5.0.2/24 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT
  prepend[v4] nat -A KILO-NAT -d 10.5.0.2/24 -m comment --comment "Kilo: do not NAT packets destined for peers" -j RETURN
  prepend[v4] nat -A POSTROUTING -s 10.5.0.3/24 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT
  prepend[v4] nat -A KILO-NAT -d 10.5.0.3/24 -m comment --comment "Kilo: do not NAT packets destined for peers" -j RETURN
  append[v4]  nat -N KILO-NAT
  append[v6]  nat -N KILO-NAT
  append[v4]  nat -A KILO-NAT -m comment --comment "Kilo: NAT remaining packets" -j MASQUERADE
  append[v6]  nat -A KILO-NAT -m comment --comment "Kilo: NAT remaining packets" -j MASQUERADE
"#;

/// Appendix A.3: the IPIP (and Cilium) encapsulator's rules for private IPs 192.168.0.1 and
/// 192.168.0.2, i.e. for a node of `location:2` with `--local` and `--encapsulate≠never`.
const A3: &str = r#"
  prepend[v4] filter -A KILO-IPIP -s 192.168.0.1/32 -m comment --comment "Kilo: allow IPIP traffic" -j ACCEPT
  prepend[v4] filter -A KILO-IPIP -s 192.168.0.2/32 -m comment --comment "Kilo: allow IPIP traffic" -j ACCEPT
  append[v4]  filter -N KILO-IPIP
  append[v6]  filter -N KILO-IPIP
  append[v4]  filter -A INPUT -p ipencap -m comment --comment "Kilo: jump to IPIP chain" -j KILO-IPIP
  append[v6]  filter -A INPUT -p ipencap -m comment --comment "Kilo: jump to IPIP chain" -j KILO-IPIP
  append[v4]  filter -A INPUT -p ipencap -m comment --comment "Kilo: reject other IPIP traffic" -j DROP
  append[v6]  filter -A INPUT -p ipencap -m comment --comment "Kilo: reject other IPIP traffic" -j DROP
"#;

/// Node b in `full` granularity, `--cni=true --iptables-forward-rules=true` [derived from Kilo's
/// `Topology.Rules` by hand, as the appendix was]: segments `node:a` … `node:d` get 10.4.0.1 …
/// 10.4.0.4; b leads only its own segment, so the FORWARD rules cover b alone.
const FULL_B: &str = r#"
  prepend[v4] nat -A POSTROUTING -s 10.2.2.0/24 -m comment --comment "Kilo: jump to KILO-NAT chain" -j KILO-NAT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets from the pod subnet" -s 10.2.2.0/24 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets to the pod subnet" -d 10.2.2.0/24 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets from allowed location IPs" -s 192.168.178.3/32 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets to allowed location IPs" -d 192.168.178.3/32 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets from private IPs" -s 192.168.0.1/32 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets to private IPs" -d 192.168.0.1/32 -j ACCEPT
  prepend[v4] nat -A KILO-NAT -d 10.4.0.1/32 -m comment --comment "Kilo: do not NAT packets destined for WireGuared IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.2.1.0/24 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 192.168.0.1/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.4.0.1/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.4.0.2/32 -m comment --comment "Kilo: do not NAT packets destined for WireGuared IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.2.2.0/24 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 192.168.0.1/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.4.0.2/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A POSTROUTING -d 192.168.178.3/32 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT
  prepend[v4] nat -A KILO-NAT -d 10.4.0.3/32 -m comment --comment "Kilo: do not NAT packets destined for WireGuared IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.2.3.0/24 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 192.168.0.2/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.4.0.3/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.4.0.4/32 -m comment --comment "Kilo: do not NAT packets destined for WireGuared IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.2.4.0/24 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A KILO-NAT -d 10.4.0.4/32 -m comment --comment "Kilo: do not NAT packets destined for known IPs" -j RETURN
  prepend[v4] nat -A POSTROUTING -s 10.5.0.1/24 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT
  prepend[v4] nat -A KILO-NAT -d 10.5.0.1/24 -m comment --comment "Kilo: do not NAT packets destined for peers" -j RETURN
  prepend[v4] nat -A POSTROUTING -s 10.5.0.2/24 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT
  prepend[v4] nat -A KILO-NAT -d 10.5.0.2/24 -m comment --comment "Kilo: do not NAT packets destined for peers" -j RETURN
  prepend[v4] nat -A POSTROUTING -s 10.5.0.3/24 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT
  prepend[v4] nat -A KILO-NAT -d 10.5.0.3/24 -m comment --comment "Kilo: do not NAT packets destined for peers" -j RETURN
  append[v4]  nat -N KILO-NAT
  append[v6]  nat -N KILO-NAT
  append[v4]  nat -A KILO-NAT -m comment --comment "Kilo: NAT remaining packets" -j MASQUERADE
  append[v6]  nat -A KILO-NAT -m comment --comment "Kilo: NAT remaining packets" -j MASQUERADE
"#;

/// The IPIP chain, its INPUT jump and the final DROP, without any ACCEPT: what Kilo installs when
/// the local node is not in a `location:` segment (`full` granularity, and `cross`).
const IPIP_SKELETON: &str = r#"
  append[v4]  filter -N KILO-IPIP
  append[v6]  filter -N KILO-IPIP
  append[v4]  filter -A INPUT -p ipencap -m comment --comment "Kilo: jump to IPIP chain" -j KILO-IPIP
  append[v6]  filter -A INPUT -p ipencap -m comment --comment "Kilo: jump to IPIP chain" -j KILO-IPIP
  append[v4]  filter -A INPUT -p ipencap -m comment --comment "Kilo: reject other IPIP traffic" -j DROP
  append[v6]  filter -A INPUT -p ipencap -m comment --comment "Kilo: reject other IPIP traffic" -j DROP
"#;

/// (family, table, chain, args without the comment): the identity of a rule in our model.
type RuleKey = (Family, String, String, Vec<String>);

/// A Kilo listing in our model's terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Listing {
    chains: BTreeSet<(Family, String, String)>,
    /// Rule → Kilo's comment (the first one, in Kilo's generation order).
    rules: BTreeMap<RuleKey, String>,
    /// Rules Kilo installs a second time under another comment: (rule, the later comment).
    collapsed: Vec<(RuleKey, String)>,
}

/// Splits a Kilo rule identity into words; a double-quoted comment is one word, without quotes.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').expect("closing quote");
            words.push(quoted[..end].to_owned());
            rest = quoted[end + 1..].trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            words.push(rest[..end].to_owned());
            rest = rest[end..].trim_start();
        }
    }
    words
}

/// Parses `prepend|append[v4|v6] <table> -A|-N <chain> <args…>` lines into our model: the comment
/// match leaves the arguments, CIDRs are masked.
fn listing(text: &str) -> Listing {
    let mut listing = Listing::default();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let words = words(line);
        let family = match &words[0] {
            w if w.ends_with("[v4]") => Family::Ipv4,
            w if w.ends_with("[v6]") => Family::Ipv6,
            w => panic!("unknown list/family {w:?} in {line:?}"),
        };
        let (table, op, chain) = (words[1].clone(), words[2].as_str(), words[3].clone());
        match op {
            "-N" => {
                listing.chains.insert((family, table, chain));
            }
            "-A" => {
                let mut args = Vec::new();
                let mut comment = None;
                let mut rest = words[4..].iter();
                while let Some(word) = rest.next() {
                    if word == "-m" {
                        assert_eq!(rest.next().map(String::as_str), Some("comment"), "{line}");
                        assert_eq!(rest.next().map(String::as_str), Some("--comment"), "{line}");
                        comment = rest.next().cloned();
                        continue;
                    }
                    // iptables stores networks, not the addresses Kilo writes (10.5.0.1/24 → 10.5.0.0/24).
                    args.push(word.parse::<IpNet>().map_or_else(|_| word.clone(), |net| net.trunc().to_string()));
                }
                let comment = comment.unwrap_or_else(|| panic!("no comment in {line:?}"));
                let key = (family, table, chain, args);
                match listing.rules.get(&key) {
                    Some(first) if *first != comment => listing.collapsed.push((key, comment)),
                    Some(_) => {}
                    None => {
                        listing.rules.insert(key, comment);
                    }
                }
            }
            _ => panic!("unknown operation {op:?} in {line:?}"),
        }
    }
    listing
}

impl Listing {
    /// This listing plus the rules and chains of `other` (which must not already be here).
    fn plus(mut self, other: &str) -> Listing {
        let other = listing(other);
        for chain in other.chains {
            assert!(self.chains.insert(chain.clone()), "chain {chain:?} already listed");
        }
        for (key, comment) in other.rules {
            assert!(!self.rules.contains_key(&key), "rule {key:?} already listed");
            self.rules.insert(key, comment);
        }
        self.collapsed.extend(other.collapsed);
        self
    }

    /// This listing without the rules of `other` (which must all be here).
    fn minus(mut self, other: &str) -> Listing {
        let other = listing(other);
        assert!(other.chains.is_empty(), "only rules can be removed");
        for (key, comment) in other.rules {
            assert_eq!(self.rules.remove(&key), Some(comment), "rule {key:?} not listed");
        }
        self
    }
}

/// Cozystack's patch of `Topology.Rules`: the allowed-location-IP jump skips sources inside the
/// same range (`-d A ! -s A`), so VIPs and floating IPs keep their source address.
fn with_cozystack_fix(text: &str) -> String {
    text.lines()
        .map(|line| match line.split_once("-A POSTROUTING -d ") {
            Some((head, rest)) if line.contains("\"Kilo: jump to NAT chain\"") => {
                let (cidr, tail) = rest.split_once(' ').expect("more after the CIDR");
                format!("{head}-A POSTROUTING -d {cidr} ! -s {cidr} {tail}")
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The firewall as a listing; fails if a rule appears twice.
fn actual(firewall: &Firewall) -> Listing {
    let mut listing = Listing::default();
    for chain in &firewall.chains {
        assert!(
            listing.chains.insert((chain.family, chain.name.table().to_owned(), chain.name.as_str().to_owned())),
            "chain {chain:?} listed twice"
        );
    }
    for rule in &firewall.rules {
        let key = (rule.family, rule.table().to_owned(), rule.chain.as_str().to_owned(), rule.args());
        if let Some(first) = listing.rules.insert(key.clone(), rule.comment.as_str().to_owned()) {
            panic!("rule {key:?} appears twice (comments {first:?} and {:?})", rule.comment);
        }
    }
    listing
}

fn show(key: &RuleKey, comment: &str) -> String {
    let family = match key.0 {
        Family::Ipv4 => "v4",
        Family::Ipv6 => "v6",
    };
    format!("[{family}] {} -A {} {} /* {comment} */", key.1, key.2, key.3.join(" "))
}

/// Compares the firewall with the expected listing as sets (chains, rules, comments) and checks
/// the order properties of [`assert_chain_order`].
#[track_caller]
fn assert_firewall(firewall: &Firewall, expected: &Listing, context: &str) {
    let actual = actual(firewall);
    let mut problems = Vec::new();
    for chain in expected.chains.difference(&actual.chains) {
        problems.push(format!("missing chain {chain:?}"));
    }
    for chain in actual.chains.difference(&expected.chains) {
        problems.push(format!("unexpected chain {chain:?}"));
    }
    for (key, comment) in &expected.rules {
        match actual.rules.get(key) {
            None => problems.push(format!("missing    {}", show(key, comment))),
            Some(got) if got != comment => {
                problems.push(format!("comment    {} (got {got:?})", show(key, comment)));
            }
            Some(_) => {}
        }
    }
    for (key, comment) in &actual.rules {
        if !expected.rules.contains_key(key) {
            problems.push(format!("unexpected {}", show(key, comment)));
        }
    }
    assert!(problems.is_empty(), "{context}: firewall differs from Kilo's:\n{}", problems.join("\n"));
    assert_chain_order(firewall, context);
}

/// What the kernel order must guarantee: rules sorted by family; in KILO-NAT every RETURN before
/// the one MASQUERADE; in INPUT the jump to KILO-IPIP before the DROP.
#[track_caller]
fn assert_chain_order(firewall: &Firewall, context: &str) {
    assert!(
        firewall.rules.windows(2).all(|pair| pair[0].family <= pair[1].family),
        "{context}: rules are not ordered by family"
    );
    assert!(
        firewall.chains.windows(2).all(|pair| pair[0].family <= pair[1].family),
        "{context}: chains are not ordered by family"
    );
    for family in [Family::Ipv4, Family::Ipv6] {
        let chain = |name: &str| -> Vec<Vec<String>> {
            firewall
                .rules
                .iter()
                .filter(|rule| rule.family == family && rule.chain.as_str() == name)
                .map(|rule| rule.args())
                .collect()
        };
        let target = |args: &Vec<String>| args.last().cloned().unwrap_or_default();

        let nat = chain("KILO-NAT");
        let masquerade: Vec<usize> = (0..nat.len()).filter(|&i| target(&nat[i]) == "MASQUERADE").collect();
        assert_eq!(masquerade.len(), 1, "{context}: {family:?} KILO-NAT needs exactly one MASQUERADE: {nat:?}");
        assert_eq!(masquerade[0], nat.len() - 1, "{context}: {family:?} KILO-NAT: a rule follows MASQUERADE: {nat:?}");
        assert!(
            nat.iter().all(|args| matches!(target(args).as_str(), "RETURN" | "MASQUERADE")),
            "{context}: {family:?} KILO-NAT holds something else than RETURN and MASQUERADE: {nat:?}"
        );

        let input = chain("INPUT");
        let jump = input.iter().position(|args| target(args) == "KILO-IPIP");
        let drop = input.iter().position(|args| target(args) == "DROP");
        match (jump, drop) {
            (Some(jump), Some(drop)) => {
                assert!(jump < drop, "{context}: {family:?} INPUT drops IPIP before jumping to KILO-IPIP")
            }
            (None, None) => {}
            _ => panic!("{context}: {family:?} INPUT has only one of the jump and the DROP: {input:?}"),
        }
    }
}

/// The WireGuard IPs that Kilo lists twice, as "WireGuared IPs" and as "known IPs".
fn collapsed_wireguard_ips(listing: &Listing) -> Vec<String> {
    listing
        .collapsed
        .iter()
        .map(|(key, comment)| {
            assert_eq!(comment, "Kilo: do not NAT packets destined for known IPs");
            assert_eq!(listing.rules[key], "Kilo: do not NAT packets destined for WireGuared IPs");
            key.3[1].clone()
        })
        .collect()
}

fn opts(host: &str, granularity: Granularity) -> Options {
    Options {
        granularity,
        encapsulation: Encapsulation::Never,
        cni: true,
        iptables_forward_rules: false,
        ..Options::for_host(host)
    }
}

fn firewall_of(snapshot: &ClusterSnapshot, options: &Options) -> Firewall {
    Topology::compute(snapshot, options).expect("topology").firewall(options)
}

fn a1() -> Listing {
    listing(&with_cozystack_fix(A1))
}

fn a2() -> Listing {
    listing(&with_cozystack_fix(A2))
}

#[test]
fn listings_parse_as_kilo_writes_them() {
    let a1 = a1();
    // Kilo's rule identity includes the comment, so these are two rules in Kilo and one here.
    assert_eq!(collapsed_wireguard_ips(&a1), ["10.4.0.1/32", "10.4.0.2/32", "10.4.0.3/32"]);
    // Host bits are cleared: the three peer CIDRs of the fixture are one network in the kernel.
    let postrouting_from_peers: Vec<_> = a1
        .rules
        .keys()
        .filter(|(_, _, chain, args)| chain == "POSTROUTING" && args[0] == "-s" && args[1].starts_with("10.5."))
        .collect();
    assert_eq!(postrouting_from_peers.len(), 1);
    assert_eq!(postrouting_from_peers[0].3, ["-s", "10.5.0.0/24", "-j", "KILO-NAT"]);
    assert!(a1.rules.contains_key(&(
        Family::Ipv4,
        "nat".to_owned(),
        "POSTROUTING".to_owned(),
        ["-d", "192.168.178.3/32", "!", "-s", "192.168.178.3/32", "-j", "KILO-NAT"].map(String::from).to_vec(),
    )));
}

#[test]
fn a1_leader_b_location_cni_and_forward_rules() {
    // Encapsulation off: Appendix A.1 lists the topology's rules only (A.3 has the IPIP ones).
    let options = Options { iptables_forward_rules: true, ..opts("b", Granularity::Location) };
    assert_firewall(&firewall_of(&snapshot(), &options), &a1(), "A.1");
}

#[test]
fn a1_without_local_routes_has_no_encapsulation_rules() {
    // --local=false: Kilo does not touch the encapsulator, whatever --encapsulate says.
    for encapsulation in [Encapsulation::Always, Encapsulation::CrossSubnet] {
        let options =
            Options { iptables_forward_rules: true, local: false, encapsulation, ..opts("b", Granularity::Location) };
        assert_firewall(&firewall_of(&snapshot(), &options), &a1(), &format!("A.1 --local=false {encapsulation:?}"));
    }
}

#[test]
fn allowed_location_ip_jump_has_cozystack_fix() {
    for host in ["b", "c"] {
        let firewall = firewall_of(&snapshot(), &opts(host, Granularity::Location));
        let jumps: Vec<_> = firewall
            .rules
            .iter()
            .filter(|rule| {
                rule.chain.as_str() == "POSTROUTING" && rule.args().first().map(String::as_str) == Some("-d")
            })
            .collect();
        assert_eq!(jumps.len(), 1, "{host}: {jumps:?}");
        assert_eq!(jumps[0].table(), "nat");
        assert_eq!(jumps[0].args().join(" "), "-d 192.168.178.3/32 ! -s 192.168.178.3/32 -j KILO-NAT");
        assert_eq!(jumps[0].comment.as_str(), "Kilo: jump to NAT chain");
    }
    // Node a's location has no allowed-location IPs; remote ones are not jumped to.
    let firewall = firewall_of(&snapshot(), &opts("a", Granularity::Location));
    assert!(!firewall.rules.iter().any(|rule| rule.args().iter().any(|arg| arg == "192.168.178.3/32")));
}

#[test]
fn a2_non_leader_c() {
    assert_firewall(&firewall_of(&snapshot(), &opts("c", Granularity::Location)), &a2(), "A.2");
}

#[test]
fn a2_forward_rules_are_ignored_without_cni() {
    // --iptables-forward-rules only acts with --cni, as in Kilo.
    let options = Options { iptables_forward_rules: true, ..opts("c", Granularity::Location) };
    let with_forward = firewall_of(&snapshot(), &Options { cni: false, ..options.clone() });
    let without = firewall_of(&snapshot(), &Options { cni: false, ..opts("c", Granularity::Location) });
    assert_eq!(with_forward, without);
}

#[test]
fn a2_without_cni() {
    let expected = a2().minus(
        r#"prepend[v4] nat -A POSTROUTING -s 10.2.3.0/24 -m comment --comment "Kilo: jump to KILO-NAT chain" -j KILO-NAT"#,
    );
    let options = Options { cni: false, ..opts("c", Granularity::Location) };
    assert_firewall(&firewall_of(&snapshot(), &options), &expected, "A.2 --cni=false");

    // On the leader, --cni=false also drops every FORWARD rule.
    let expected = a1().minus(
        r#"
  prepend[v4] nat -A POSTROUTING -s 10.2.2.0/24 -m comment --comment "Kilo: jump to KILO-NAT chain" -j KILO-NAT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets from the pod subnet" -s 10.2.2.0/24 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets to the pod subnet" -d 10.2.2.0/24 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets from the pod subnet" -s 10.2.3.0/24 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets to the pod subnet" -d 10.2.3.0/24 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets from allowed location IPs" -s 192.168.178.3/32 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets to allowed location IPs" -d 192.168.178.3/32 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets from private IPs" -s 192.168.0.1/32 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets to private IPs" -d 192.168.0.1/32 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets from private IPs" -s 192.168.0.2/32 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets to private IPs" -d 192.168.0.2/32 -j ACCEPT
"#,
    );
    let options = Options { cni: false, iptables_forward_rules: true, ..opts("b", Granularity::Location) };
    assert_firewall(&firewall_of(&snapshot(), &options), &expected, "A.1 --cni=false");
}

#[test]
fn a2_forward_rules_on_non_leader() {
    let expected = a2().plus(
        r#"
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets from the node's pod subnet" -s 10.2.3.0/24 -j ACCEPT
  prepend[v4] filter -A FORWARD -m comment --comment "Kilo: forward packets to the node's pod subnet" -d 10.2.3.0/24 -j ACCEPT
"#,
    );
    let options = Options { iptables_forward_rules: true, ..opts("c", Granularity::Location) };
    assert_firewall(&firewall_of(&snapshot(), &options), &expected, "A.2 --iptables-forward-rules");
}

#[test]
fn a2_service_cidrs() {
    let expected = a2().plus(
        r#"
  append[v4]  nat -A KILO-NAT -d 10.96.0.0/12 -m comment --comment "Kilo: do not NAT packets destined for service CIDRs" -j RETURN
  append[v6]  nat -A KILO-NAT -d fd00:10:96::/112 -m comment --comment "Kilo: do not NAT packets destined for service CIDRs" -j RETURN
"#,
    );
    let options = Options {
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap(), "fd00:10:96::/112".parse().unwrap()],
        ..opts("c", Granularity::Location)
    };
    let firewall = firewall_of(&snapshot(), &options);
    // assert_firewall also checks that each service RETURN precedes its family's MASQUERADE.
    assert_firewall(&firewall, &expected, "A.2 --service-cidr");
    let v6: Vec<String> = firewall
        .family(Family::Ipv6)
        .rules
        .iter()
        .map(|rule| format!("{} {}", rule.chain.as_str(), rule.args().join(" ")))
        .collect();
    assert_eq!(v6, ["KILO-NAT -d fd00:10:96::/112 -j RETURN", "KILO-NAT -j MASQUERADE"]);
}

#[test]
fn a3_encapsulation_rules_ipip_and_cilium() {
    for compatibility in [Compatibility::None, Compatibility::Cilium] {
        for encapsulation in [Encapsulation::Always, Encapsulation::CrossSubnet] {
            let context = format!("A.1 + A.3, {compatibility:?} {encapsulation:?}");
            let options = Options {
                encapsulation,
                compatibility,
                local: true,
                iptables_forward_rules: true,
                ..opts("b", Granularity::Location)
            };
            let firewall = firewall_of(&snapshot(), &options);
            assert_firewall(&firewall, &a1().plus(A3), &context);
            // Same location, same encapsulation rules on the non-leader.
            let options = Options { hostname: "c".to_owned(), iptables_forward_rules: false, ..options };
            let firewall = firewall_of(&snapshot(), &options);
            assert_firewall(&firewall, &a2().plus(A3), &context.replace("A.1", "A.2"));
        }
    }
}

#[test]
fn a3_encapsulation_rules_follow_the_local_location() {
    // Node a is alone in `location:1` (d has no private IP and is `node:d`).
    let options = Options { encapsulation: Encapsulation::Always, ..opts("a", Granularity::Location) };
    let firewall = firewall_of(&snapshot(), &options);
    let ipip: Vec<String> = firewall
        .rules
        .iter()
        .filter(|rule| rule.chain.as_str() == "KILO-IPIP")
        .map(|rule| rule.args().join(" "))
        .collect();
    assert_eq!(ipip, ["-s 192.168.0.1/32 -j ACCEPT"]);
    assert_chain_order(&firewall, "A.3 from a");
}

#[test]
fn a3_no_encapsulation_rules_for_flannel_never_or_without_private_ip() {
    let cases = [
        ("b", Compatibility::Flannel, Encapsulation::Always, true),
        ("b", Compatibility::Flannel, Encapsulation::CrossSubnet, true),
        ("b", Compatibility::None, Encapsulation::Never, true),
        ("b", Compatibility::Cilium, Encapsulation::Never, true),
        ("b", Compatibility::None, Encapsulation::Always, false),
        ("b", Compatibility::Cilium, Encapsulation::Always, false),
        // Kilo swaps in its no-op encapsulator when the host has no private IP.
        ("d", Compatibility::None, Encapsulation::Always, true),
        ("d", Compatibility::Cilium, Encapsulation::Always, true),
    ];
    for (host, compatibility, encapsulation, local) in cases {
        let context = format!("{host} {compatibility:?} {encapsulation:?} local={local}");
        let options = Options { compatibility, encapsulation, local, ..opts(host, Granularity::Location) };
        let firewall = firewall_of(&snapshot(), &options);
        assert!(
            !firewall.rules.iter().any(|rule| rule.table() == "filter" || rule.chain.as_str() == "KILO-IPIP"),
            "{context}: {:?}",
            firewall.rules
        );
        assert!(!firewall.chains.iter().any(|chain| chain.name.as_str() == "KILO-IPIP"), "{context}");
        let without = firewall_of(&snapshot(), &Options { encapsulation: Encapsulation::Never, ..options });
        assert_eq!(firewall, without, "{context}");
    }
}

#[test]
fn full_granularity_from_b() {
    let options = Options { iptables_forward_rules: true, ..opts("b", Granularity::Full) };
    let expected = listing(&with_cozystack_fix(FULL_B));
    assert_eq!(collapsed_wireguard_ips(&expected), ["10.4.0.1/32", "10.4.0.2/32", "10.4.0.3/32", "10.4.0.4/32"]);
    assert_firewall(&firewall_of(&snapshot(), &options), &expected, "full from b");

    // Every node is its own `node:` segment: Kilo's IPIP chain accepts no one.
    for compatibility in [Compatibility::None, Compatibility::Cilium] {
        let options = Options { encapsulation: Encapsulation::Always, compatibility, ..options.clone() };
        assert_firewall(
            &firewall_of(&snapshot(), &options),
            &expected.clone().plus(IPIP_SKELETON),
            &format!("full from b, {compatibility:?}"),
        );
    }
}

#[test]
fn cross_granularity_rules_equal_full_granularity_rules() {
    // Cozystack's patch leaves `Topology.Rules` as in `full`: every node is a `node:` segment and
    // a leader. Only the encapsulation rules differ (next test).
    for host in ["a", "b", "c", "d"] {
        for forward in [false, true] {
            let cross = Options { iptables_forward_rules: forward, ..opts(host, Granularity::Cross) };
            let full = Options { granularity: Granularity::Full, ..cross.clone() };
            assert_eq!(firewall_of(&snapshot(), &cross), firewall_of(&snapshot(), &full), "{host} forward={forward}");
        }
    }
    let options = Options { iptables_forward_rules: true, ..opts("b", Granularity::Cross) };
    assert_firewall(&firewall_of(&snapshot(), &options), &listing(&with_cozystack_fix(FULL_B)), "cross from b");
}

#[test]
fn cross_granularity_accepts_ipip_from_the_location() {
    // Deliberate difference (docs/compatibility.md): Cozystack's Kilo finds no `location:` segment
    // in `cross` and installs IPIP_SKELETON alone, although with --local it routes same-location
    // traffic through the tunnel; we accept IPIP from the private IPs of the location's nodes.
    for host in ["b", "c"] {
        let options = Options {
            encapsulation: Encapsulation::Always,
            iptables_forward_rules: true,
            ..opts(host, Granularity::Cross)
        };
        let firewall = firewall_of(&snapshot(), &options);
        let base = firewall_of(&snapshot(), &Options { encapsulation: Encapsulation::Never, ..options.clone() });
        let mut expected = actual(&base).plus(A3);
        expected.collapsed.clear();
        assert_firewall(&firewall, &expected, &format!("cross from {host}"));
    }
    // Node a's location "1" also holds d, which has no private IP: only a's own address.
    let options = Options { encapsulation: Encapsulation::Always, ..opts("a", Granularity::Cross) };
    let firewall = firewall_of(&snapshot(), &options);
    let ipip: Vec<String> = firewall
        .rules
        .iter()
        .filter(|rule| rule.chain.as_str() == "KILO-IPIP")
        .map(|rule| rule.args().join(" "))
        .collect();
    assert_eq!(ipip, ["-s 192.168.0.1/32 -j ACCEPT"]);
}

#[test]
fn every_rule_in_our_chains_is_masked_and_commented() {
    for granularity in [Granularity::Location, Granularity::Full, Granularity::Cross] {
        for host in ["a", "b", "c", "d"] {
            let options = Options {
                encapsulation: Encapsulation::Always,
                iptables_forward_rules: true,
                service_cidrs: vec!["10.96.0.1/12".parse().unwrap()],
                ..opts(host, granularity)
            };
            let firewall = firewall_of(&snapshot(), &options);
            for rule in &firewall.rules {
                assert!(rule.comment.as_str().starts_with("Kilo: "), "{rule:?}");
                assert!(!rule.args().iter().any(|arg| arg == "--comment" || arg == "comment"), "{rule:?}");
                for arg in &rule.args() {
                    if let Ok(net) = arg.parse::<IpNet>() {
                        assert_eq!(net, net.trunc(), "{granularity:?} {host}: host bits in {rule:?}");
                    }
                }
            }
            assert_chain_order(&firewall, &format!("{granularity:?} from {host}"));
        }
    }
}
