//! iptables: reading our chains and rules (`KILO-*` chains, rules with a `Kilo:` comment or a
//! jump to a `KILO-*` chain) with `iptables-save` into mesh-core's values, and running the plan's
//! [`FirewallEdit`]s with `iptables-restore --noflush`, never touching anyone else's rules. What
//! to change is mesh-core's decision ([`FirewallEdit::between`]); this module only reads and writes.
//!
//! Reading: each rule of ours is read back with [`FirewallRule::parse`] (which takes
//! `iptables-save`'s argument order, `! -s A -d B`, and protocol 4 as `4` or `ipencap`; the other
//! names `/etc/protocols` files give protocol 4 are read as `4` first). A rule of ours that the
//! mesh does not generate (another Kilo version's, a hand-edited one) becomes a [`ForeignRule`]
//! holding its saved spec, an unknown `KILO-*` chain a [`ForeignChain`]. The positions of our
//! rules among everyone's in the chains we share become the [`FirewallLayout`]. Observe returns
//! exactly what the kernel holds, in mesh-core's canonical order (by family and chain, the
//! kernel's order inside each chain), so a restarted agent plans nothing.
//!
//! Writing: rules are `rule.args()` plus `-m comment --comment "<Kilo's text>"` before the
//! target, with protocol 4 written as `-p 4` (a container may lack `/etc/protocols`); a rule is
//! deleted by that same text (iptables finds the rule by what it means, not how it was saved),
//! a foreign rule by its saved spec. One edit is
//! one `iptables-restore` input per family: per table, the chains to declare (declaring flushes),
//! the deletions, the additions and insertions, then the chains to remove.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::process::{Command, Stdio};

use mesh_core::firewall::{
    COMMENT_PREFIX, Chain, ChainName, Family, Firewall, FirewallChange, FirewallEdit, FirewallLayout, FirewallRule,
    ForeignChain, ForeignRule, SharedChainLayout, is_owned_chain,
};

use crate::error::{Error, Result};
use crate::netns::Namespace;

fn family_name(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

fn save_command(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "iptables-save",
        Family::Ipv6 => "ip6tables-save",
    }
}

fn restore_command(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "iptables-restore",
        Family::Ipv6 => "ip6tables-restore",
    }
}

/// mesh-core's value of the mesh's part of one family's `iptables-save` dump (chains `KILO-*`,
/// rules with a `Kilo:` comment or a jump to a `KILO-*` chain), as the data plane observes it.
///
/// ```
/// use mesh_core::Family;
/// let dump = "*nat\n:POSTROUTING ACCEPT [0:0]\n:KILO-NAT - [0:0]\n-A KILO-NAT -j MASQUERADE\nCOMMIT\n";
/// let firewall = mesh_netlink::parse_iptables_save(Family::Ipv4, dump);
/// assert_eq!(firewall.chains.len(), 1);
/// assert_eq!(firewall.rules.len() + firewall.foreign.len(), 1);
/// ```
pub fn parse_iptables_save(family: Family, dump: &str) -> Firewall {
    let (mut firewall, _layout) = Saved::parse(family, dump).observed();
    firewall.canonicalize();
    firewall
}

/// One rule of ours as `iptables-save` printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SavedRule<'a> {
    /// The table.
    pub table: &'a str,
    /// The chain.
    pub chain: &'a str,
    /// Its 1-based position in the chain, counting everyone's rules.
    pub position: usize,
    /// The text after `-A CHAIN `: valid `iptables-restore` input, to delete it.
    pub spec: &'a str,
    /// mesh-core's value; `None` for a rule of ours the mesh does not generate.
    pub rule: Option<FirewallRule>,
}

/// Our part of one family's `iptables-save` dump, borrowing from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Saved<'a> {
    /// The IP version.
    pub family: Family,
    /// Every `KILO-*` chain as `(table, name)`, known to mesh-core or not.
    pub chains: Vec<(&'a str, &'a str)>,
    /// Our rules, in dump order.
    pub rules: Vec<SavedRule<'a>>,
    /// How many rules (everyone's) each chain has.
    lengths: HashMap<(&'a str, &'a str), usize>,
}

impl<'a> Saved<'a> {
    /// Our part of an `iptables-save` dump of `family`.
    pub(crate) fn parse(family: Family, dump: &'a str) -> Saved<'a> {
        let mut saved = Saved { family, chains: Vec::new(), rules: Vec::new(), lengths: HashMap::new() };
        let mut table = "";
        // The chain of the last rule and its count so far: iptables-save prints a chain's rules
        // together, so most lines need no look-up.
        let mut last: ((&str, &str), usize) = (("", ""), 0);
        for text in dump.lines() {
            if let Some(name) = text.strip_prefix('*') {
                table = name.trim();
            } else if let Some(declaration) = text.strip_prefix(':') {
                let name = declaration.split_whitespace().next().unwrap_or_default();
                if is_owned_chain(name) {
                    saved.chains.push((table, name));
                }
            } else if let Some(rest) = text.strip_prefix("-A ") {
                let rest = rest.trim_start();
                let (chain, spec) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let spec = spec.trim();
                if last.0 != (table, chain) {
                    saved.lengths.insert(last.0, last.1);
                    last = ((table, chain), saved.lengths.get(&(table, chain)).copied().unwrap_or(0));
                }
                last.1 += 1;
                // Only lines that mention us can be ours: the others are not split.
                if !(is_owned_chain(chain)
                    || spec.contains(mesh_core::firewall::CHAIN_PREFIX)
                    || spec.contains(COMMENT_PREFIX))
                {
                    continue;
                }
                let words = split_words(spec);
                let (args, comment, jumps_to_ours) = rule_words(&words);
                if is_owned_chain(chain) || comment.starts_with(COMMENT_PREFIX) || jumps_to_ours {
                    let rule = FirewallRule::parse(family, table, chain, &args, comment);
                    saved.rules.push(SavedRule { table, chain, position: last.1, spec, rule });
                }
            }
        }
        saved.lengths.insert(last.0, last.1);
        saved
    }

    /// Adds what was read to `firewall` (not canonicalized) and `layout` in mesh-core's
    /// representation.
    pub(crate) fn add_to(&self, firewall: &mut Firewall, layout: &mut FirewallLayout) {
        let family = self.family;
        for &(table, name) in &self.chains {
            match ChainName::parse(table, name).filter(|name| name.is_owned()) {
                Some(name) => firewall.chains.push(Chain { family, name }),
                None => firewall.foreign_chains.push(ForeignChain {
                    family,
                    table: table.to_owned(),
                    name: name.to_owned(),
                }),
            }
        }
        for saved in &self.rules {
            match saved.rule {
                Some(rule) => firewall.rules.push(rule),
                None => firewall.foreign.push(ForeignRule {
                    family,
                    table: saved.table.to_owned(),
                    chain: saved.chain.to_owned(),
                    spec: saved.spec.to_owned(),
                }),
            }
        }
        for chain in ChainName::SHARED {
            let length = self.length(chain.table(), chain.as_str());
            if length == 0 {
                continue;
            }
            let (mut rules, mut foreign) = (Vec::new(), Vec::new());
            for saved in self.rules.iter().filter(|saved| (saved.table, saved.chain) == (chain.table(), chain.as_str()))
            {
                match saved.rule {
                    Some(_) => rules.push(saved.position),
                    None => foreign.push(saved.position),
                }
            }
            layout.chains.push(SharedChainLayout { family, chain, length, rules, foreign });
        }
    }

    /// mesh-core's values of what was read.
    pub(crate) fn observed(&self) -> (Firewall, FirewallLayout) {
        let (mut firewall, mut layout) = (Firewall::default(), FirewallLayout::default());
        self.add_to(&mut firewall, &mut layout);
        firewall.canonicalize();
        (firewall, layout)
    }

    fn length(&self, table: &str, chain: &str) -> usize {
        self.lengths.get(&(table, chain)).copied().unwrap_or(0)
    }
}

/// Splits an `iptables-save` rule into words: `"…"` quotes words with spaces, and `\` escapes
/// the next character (iptables-save prints `node\'s` inside quotes). Plain words are borrowed.
fn split_words(text: &str) -> Vec<Cow<'_, str>> {
    let mut words = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return words;
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        if !rest[..end].contains(['"', '\\']) {
            words.push(Cow::Borrowed(&rest[..end]));
            rest = &rest[end..];
            continue;
        }
        let mut word = String::new();
        let mut quoted = false;
        let mut consumed = rest.len();
        let mut chars = rest.char_indices();
        while let Some((index, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, next)) = chars.next() {
                        word.push(next);
                    }
                }
                '"' => quoted = !quoted,
                c if c.is_whitespace() && !quoted => {
                    consumed = index;
                    break;
                }
                c => word.push(c),
            }
        }
        words.push(Cow::Owned(word));
        rest = &rest[consumed..];
    }
}

/// Quotes a word for `iptables-restore` when it needs it.
fn quote(word: &str) -> Cow<'_, str> {
    if !word.is_empty() && !word.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\' || c == '\'') {
        return Cow::Borrowed(word);
    }
    let mut quoted = String::from('"');
    for c in word.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    Cow::Owned(quoted)
}

/// Protocol 4 (IP in IP) under every name `/etc/protocols` files give it.
fn is_ipencap(protocol: &str) -> bool {
    ["4", "ipencap", "ip-encap", "ipv4", "ipip"].iter().any(|name| protocol.eq_ignore_ascii_case(name))
}

fn long_to_short(flag: &str) -> &str {
    match flag {
        "--protocol" => "-p",
        "--destination" | "--dst" => "-d",
        "--source" | "--src" => "-s",
        "--in-interface" => "-i",
        "--out-interface" => "-o",
        "--fragment" => "-f",
        "--jump" => "-j",
        "--goto" => "-g",
        "--match" => "-m",
        other => other,
    }
}

/// A saved rule's words as [`FirewallRule::parse`] takes them: the arguments without the
/// comment match (short flags, protocol 4 as `4`), the comment, and whether it jumps to one of
/// our chains.
fn rule_words<'w>(words: &'w [Cow<'_, str>]) -> (Vec<&'w str>, &'w str, bool) {
    let mut args = Vec::with_capacity(words.len());
    let mut comment: Option<&str> = None;
    let mut jumps_to_ours = false;
    let mut i = 0;
    while i < words.len() {
        let word = long_to_short(&words[i]);
        let next = words.get(i + 1).map(|word| &**word);
        match (word, next) {
            ("-m", Some("comment")) if comment.is_none() && words.get(i + 2).is_some_and(|w| w == "--comment") => {
                comment = Some(words.get(i + 3).map(|word| &**word).unwrap_or_default());
                i += 4;
                continue;
            }
            ("-p", Some(protocol)) => {
                args.extend(["-p", if is_ipencap(protocol) { "4" } else { protocol }]);
                i += 2;
                continue;
            }
            ("-j" | "-g", Some(target)) => jumps_to_ours |= is_owned_chain(target),
            _ => {}
        }
        args.push(word);
        i += 1;
    }
    (args, comment.unwrap_or_default(), jumps_to_ours)
}

/// A rule as `iptables-restore` takes it after `-A CHAIN`: its arguments with the comment match
/// before the target, and protocol 4 by number.
fn restore_spec(rule: &FirewallRule) -> String {
    let mut spec = String::new();
    let mut push = |word: &str| {
        if !spec.is_empty() {
            spec.push(' ');
        }
        spec.push_str(&quote(word));
    };
    let args = rule.args();
    let mut words = args.iter().map(String::as_str);
    while let Some(word) = words.next() {
        if word == "-j" {
            for comment in ["-m", "comment", "--comment", rule.comment.as_str()] {
                push(comment);
            }
        }
        push(word);
        if word == "-p"
            && let Some(protocol) = words.next()
        {
            push(if is_ipencap(protocol) { "4" } else { protocol });
        }
    }
    spec
}

/// The commands for one table, in the order they must run.
#[derive(Debug, Default)]
struct TableScript<'a> {
    /// Chains to create or flush.
    declare: BTreeSet<&'a str>,
    /// `-D` lines, then `-A`/`-I` lines.
    delete: Vec<String>,
    add: Vec<String>,
    /// Chains to delete, after the rules that jump to them.
    remove: BTreeSet<&'a str>,
}

/// The `iptables-restore --noflush` input that runs `edit`; `None` when it changes nothing.
pub(crate) fn script(edit: &FirewallEdit) -> Option<String> {
    let mut tables: BTreeMap<&str, TableScript<'_>> = BTreeMap::new();
    for change in &edit.changes {
        match change {
            FirewallChange::WriteChain { chain, rules } => {
                let (table, name) = (chain.name.table(), chain.name.as_str());
                let part = tables.entry(table).or_default();
                part.declare.insert(name);
                part.add.extend(rules.iter().map(|rule| format!("-A {name} {}", restore_spec(rule))));
            }
            FirewallChange::RemoveChain(chain) => {
                let part = tables.entry(chain.name.table()).or_default();
                part.declare.insert(chain.name.as_str());
                part.remove.insert(chain.name.as_str());
            }
            FirewallChange::RemoveForeignChain(chain) => {
                let part = tables.entry(&chain.table).or_default();
                part.declare.insert(&chain.name);
                part.remove.insert(&chain.name);
            }
            FirewallChange::DeleteRule(rule) => {
                let line = format!("-D {} {}", rule.chain.as_str(), restore_spec(rule));
                tables.entry(rule.table()).or_default().delete.push(line);
            }
            FirewallChange::DeleteForeignRule(rule) => {
                tables.entry(&rule.table).or_default().delete.push(format!("-D {} {}", rule.chain, rule.spec));
            }
            FirewallChange::InsertRule { rule, position, .. } => {
                let (chain, spec) = (rule.chain.as_str(), restore_spec(rule));
                let line = match position {
                    Some(position) => format!("-I {chain} {position} {spec}"),
                    None => format!("-A {chain} {spec}"),
                };
                tables.entry(rule.table()).or_default().add.push(line);
            }
        }
    }
    let mut script = String::new();
    for (table, part) in tables {
        script.push_str(&format!("*{table}\n"));
        for chain in &part.declare {
            script.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for text in part.delete.iter().chain(&part.add) {
            script.push_str(text);
            script.push('\n');
        }
        for chain in &part.remove {
            script.push_str(&format!("-X {chain}\n"));
        }
        script.push_str("COMMIT\n");
    }
    (!script.is_empty()).then_some(script)
}

/// The family's `iptables-save` dump.
pub(crate) async fn save(namespace: &Namespace, family: Family) -> Result<String> {
    let command = save_command(family);
    let operation = format!("read {} firewall rules with {command}", family_name(family));
    let output = namespace.run_blocking(move || Command::new(command).stdin(Stdio::null()).output()).await?.map_err(
        |error| Error::Firewall { operation: operation.clone(), reason: format!("cannot run {command}: {error}") },
    )?;
    if !output.status.success() {
        return Err(Error::Firewall {
            operation,
            reason: format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()),
        });
    }
    Ok(String::from_utf8(output.stdout).unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned()))
}

/// Applies a script atomically with `iptables-restore --noflush` (or `ip6tables-restore`).
pub(crate) async fn restore(namespace: &Namespace, family: Family, script: String, purpose: &str) -> Result<()> {
    let command = restore_command(family);
    let operation = format!("{purpose} {} firewall rules with {command}", family_name(family));
    let input = script.clone();
    let output = namespace
        .run_blocking(move || {
            let mut child = Command::new(command)
                .args(["--noflush", "--wait"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(input.as_bytes())?;
            }
            child.wait_with_output()
        })
        .await?
        .map_err(|error| Error::Firewall {
            operation: operation.clone(),
            reason: format!("cannot run {command}: {error}"),
        })?;
    if !output.status.success() {
        return Err(Error::Firewall {
            operation,
            reason: format!(
                "{}: {}; input was:\n{script}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use mesh_core::firewall::{Comment, Match, Target};

    use super::*;

    /// The script of mesh-core's edit from what `current` holds to `desired`.
    fn set_script(current: &Saved<'_>, desired: &Firewall) -> Option<String> {
        let (firewall, layout) = current.observed();
        FirewallEdit::between(&firewall, &layout, desired, current.family).and_then(|edit| script(&edit))
    }

    /// The script that removes all of ours.
    fn clean_up_script(current: &Saved<'_>) -> Option<String> {
        set_script(current, &Firewall::default())
    }

    fn net(text: &str) -> ipnet::IpNet {
        text.parse().unwrap()
    }

    fn rule(chain: ChainName, matches: Match, target: Target, comment: Comment) -> FirewallRule {
        FirewallRule { family: Family::Ipv4, chain, matches, target, comment }
    }

    fn jump_to_nat(cidr: &str) -> FirewallRule {
        rule(ChainName::Postrouting, Match::Source(net(cidr)), Target::NatChain, Comment::JumpToNat)
    }

    #[test]
    fn splits_quoted_and_escaped_words() {
        assert_eq!(
            split_words(
                r#"-A FORWARD -s 10.2.0.0/24 -m comment --comment "Kilo: forward the node\'s pod subnet" -j ACCEPT"#
            ),
            [
                "-A",
                "FORWARD",
                "-s",
                "10.2.0.0/24",
                "-m",
                "comment",
                "--comment",
                "Kilo: forward the node's pod subnet",
                "-j",
                "ACCEPT"
            ]
        );
        assert_eq!(split_words(r#"--comment "a \"b\" c"  x"#), ["--comment", r#"a "b" c"#, "x"]);
        assert!(matches!(split_words("-j ACCEPT")[1], Cow::Borrowed("ACCEPT")));
    }

    #[test]
    fn reads_the_comment_apart_and_protocol_4_under_any_name() {
        for protocol in ["4", "ipencap", "IPENCAP", "ipv4"] {
            let words = split_words(&format!(r#"-p {protocol} -m comment --comment "Kilo: x" -j KILO-IPIP"#))
                .into_iter()
                .map(Cow::into_owned)
                .map(Cow::Owned)
                .collect::<Vec<_>>();
            assert_eq!(rule_words(&words), (vec!["-p", "4", "-j", "KILO-IPIP"], "Kilo: x", true));
        }
        let dump = "*filter\n-A FORWARD -s 10.2.1.0/24 -m comment --comment \"Kilo: forward packets from the node\\'s pod subnet\" -j ACCEPT\nCOMMIT\n";
        let saved = Saved::parse(Family::Ipv4, dump);
        assert_eq!(saved.rules[0].rule.map(|rule| rule.comment), Some(Comment::ForwardFromNodePodSubnet));
        let words = split_words("--source 10.0.0.0/8 --jump ACCEPT");
        assert_eq!(rule_words(&words), (vec!["-s", "10.0.0.0/8", "-j", "ACCEPT"], "", false));
    }

    #[test]
    fn writes_the_comment_before_the_target_and_protocol_4_by_number() {
        let jump = rule(ChainName::Input, Match::Ipip, Target::IpipChain, Comment::JumpToIpip);
        assert_eq!(restore_spec(&jump), r#"-p 4 -m comment --comment "Kilo: jump to IPIP chain" -j KILO-IPIP"#);
        let forward = rule(
            ChainName::Forward,
            Match::Source(net("10.2.0.0/24")),
            Target::Accept,
            Comment::ForwardFromNodePodSubnet,
        );
        assert_eq!(
            restore_spec(&forward),
            r#"-s 10.2.0.0/24 -m comment --comment "Kilo: forward packets from the node's pod subnet" -j ACCEPT"#
        );
        let vip = rule(
            ChainName::Postrouting,
            Match::DestinationFromOutside(net("192.168.178.0/24")),
            Target::NatChain,
            Comment::JumpToNat,
        );
        assert_eq!(
            restore_spec(&vip),
            r#"-d 192.168.178.0/24 ! -s 192.168.178.0/24 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT"#
        );
    }

    const DUMP: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KILO-IPIP - [0:0]
:FOREIGN - [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p ipencap -m comment --comment "Kilo: jump to IPIP chain" -j KILO-IPIP
-A INPUT -p ipv4 -m comment --comment "Kilo: reject other IPIP traffic" -j DROP
-A FORWARD -s 10.2.1.0/24 -m comment --comment "Kilo: forward packets from the pod subnet" -j ACCEPT
-A FORWARD -j FOREIGN
-A FORWARD -d 10.2.1.0/24 -m comment --comment "Kilo: forward packets to the pod subnet" -j ACCEPT
-A FORWARD -s 10.2.9.0/24 -m conntrack --ctstate NEW -m comment --comment "Kilo: an old rule" -j ACCEPT
-A FOREIGN -s 10.9.0.0/16 -m comment --comment "not Kilo: ours" -j ACCEPT
-A KILO-IPIP -s 10.0.0.1/32 -m comment --comment "Kilo: allow IPIP traffic" -j ACCEPT
COMMIT
# Completed
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KILO-NAT - [0:0]
:KILO-OLD - [0:0]
-A POSTROUTING -s 10.9.0.0/16 -j MASQUERADE
-A POSTROUTING ! -s 192.168.178.0/24 -d 192.168.178.0/24 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT
-A POSTROUTING -j KILO-OLD
-A KILO-NAT -d 10.4.0.1 -m comment --comment "Kilo: do not NAT packets destined for WireGuared IPs" -j RETURN
-A KILO-NAT -m comment --comment "Kilo: NAT remaining packets" -j MASQUERADE
-A KILO-OLD -j RETURN
COMMIT
"#;

    fn foreign(table: &str, chain: &str, spec: &str) -> ForeignRule {
        ForeignRule { family: Family::Ipv4, table: table.to_owned(), chain: chain.to_owned(), spec: spec.to_owned() }
    }

    /// What DUMP holds that the mesh generates, in mesh-core's canonical order.
    fn generated() -> Firewall {
        use {ChainName::*, Comment::*, Match::*, Target::*};
        Firewall {
            chains: vec![Chain { family: Family::Ipv4, name: KiloIpip }, Chain { family: Family::Ipv4, name: KiloNat }],
            rules: vec![
                rule(Forward, Source(net("10.2.1.0/24")), Accept, ForwardFromPodSubnet),
                rule(Forward, Destination(net("10.2.1.0/24")), Accept, ForwardToPodSubnet),
                rule(Input, Ipip, IpipChain, JumpToIpip),
                rule(Input, Ipip, Drop, RejectIpip),
                rule(KiloIpip, Source(net("10.0.0.1/32")), Accept, AllowIpip),
                rule(KiloNat, Destination(net("10.4.0.1/32")), Return, WireGuardIps),
                rule(KiloNat, Any, Masquerade, NatRemaining),
                rule(Postrouting, DestinationFromOutside(net("192.168.178.0/24")), NatChain, JumpToNat),
            ],
            ..Firewall::default()
        }
    }

    #[test]
    fn reads_our_rules_as_mesh_core_values_and_the_rest_of_ours_as_foreign() {
        let saved = Saved::parse(Family::Ipv4, DUMP);
        assert_eq!(saved.chains, [("filter", "KILO-IPIP"), ("nat", "KILO-NAT"), ("nat", "KILO-OLD")]);
        let firewall = saved.observed().0;
        assert_eq!(firewall.chains, generated().chains);
        assert_eq!(firewall.rules, generated().rules);
        assert_eq!(
            firewall.foreign,
            [
                foreign(
                    "filter",
                    "FORWARD",
                    r#"-s 10.2.9.0/24 -m conntrack --ctstate NEW -m comment --comment "Kilo: an old rule" -j ACCEPT"#
                ),
                foreign("nat", "KILO-OLD", "-j RETURN"),
                foreign("nat", "POSTROUTING", "-j KILO-OLD"),
            ]
        );
        let positions: Vec<(&str, usize)> = saved.rules.iter().map(|saved| (saved.chain, saved.position)).collect();
        assert_eq!(
            positions,
            [
                ("INPUT", 2),
                ("INPUT", 3),
                ("FORWARD", 1),
                ("FORWARD", 3),
                ("FORWARD", 4),
                ("KILO-IPIP", 1),
                ("POSTROUTING", 2),
                ("POSTROUTING", 3),
                ("KILO-NAT", 1),
                ("KILO-NAT", 2),
                ("KILO-OLD", 1)
            ]
        );
        assert_eq!((saved.length("filter", "FORWARD"), saved.length("nat", "POSTROUTING")), (4, 3));
        assert_eq!(
            Saved::parse(Family::Ipv6, "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n").observed().0,
            Firewall::default()
        );
    }

    #[test]
    fn foreign_rules_of_ours_go_by_their_spec_and_unknown_chains_go_whole() {
        let saved = Saved::parse(Family::Ipv4, DUMP);
        assert_eq!(
            set_script(&saved, &generated()).unwrap(),
            "*filter\n\
             -D FORWARD -s 10.2.9.0/24 -m conntrack --ctstate NEW -m comment --comment \"Kilo: an old rule\" -j ACCEPT\n\
             COMMIT\n\
             *nat\n\
             :KILO-OLD - [0:0]\n\
             -D POSTROUTING -j KILO-OLD\n\
             -X KILO-OLD\n\
             COMMIT\n"
        );
        // The same without the foreign rules: nothing to do.
        let clean: String = DUMP
            .lines()
            .filter(|line| !line.contains("OLD") && !line.contains("an old rule"))
            .flat_map(|line| [line, "\n"])
            .collect();
        assert_eq!(set_script(&Saved::parse(Family::Ipv4, &clean), &generated()), None);

        // A foreign rule in our chain: the chain is rewritten.
        let stale = clean.replace(
            "-A KILO-NAT -m comment",
            "-A KILO-NAT -d 10.99.0.0/16 -m comment --comment \"Kilo: old\" -j RETURN\n-A KILO-NAT -m comment",
        );
        assert_eq!(
            set_script(&Saved::parse(Family::Ipv4, &stale), &generated()).unwrap(),
            "*nat\n:KILO-NAT - [0:0]\n\
             -A KILO-NAT -d 10.4.0.1/32 -m comment --comment \"Kilo: do not NAT packets destined for WireGuared IPs\" -j RETURN\n\
             -A KILO-NAT -m comment --comment \"Kilo: NAT remaining packets\" -j MASQUERADE\n\
             COMMIT\n"
        );
    }

    #[test]
    fn removes_unwanted_chains_after_their_jumps_and_cleans_up_everything_of_ours() {
        let saved = Saved::parse(Family::Ipv4, DUMP);
        let mut without_ipip = generated();
        without_ipip.chains.retain(|chain| chain.name != ChainName::KiloIpip);
        without_ipip.rules.retain(|rule| rule.table() != "filter");
        let script = set_script(&saved, &without_ipip).unwrap();
        assert!(
            script.starts_with(
                "*filter\n:KILO-IPIP - [0:0]\n\
                 -D FORWARD -s 10.2.1.0/24 -m comment --comment \"Kilo: forward packets from the pod subnet\" -j ACCEPT\n"
            ),
            "{script}"
        );
        assert!(
            script.contains(
                "-D INPUT -p 4 -m comment --comment \"Kilo: reject other IPIP traffic\" -j DROP\n-X KILO-IPIP\nCOMMIT\n"
            ),
            "{script}"
        );
        assert_eq!(script.matches("-D ").count(), 6, "{script}");

        let clean = clean_up_script(&saved).unwrap();
        for chain in ["KILO-IPIP", "KILO-NAT", "KILO-OLD"] {
            assert!(clean.contains(&format!(":{chain} - [0:0]\n")) && clean.contains(&format!("-X {chain}\n")));
        }
        assert_eq!(clean.matches("-D ").count(), 7, "{clean}");
        assert!(!clean.contains("FOREIGN") && !clean.contains("10.9.0.0") && !clean.contains("dport"), "{clean}");
        assert_eq!(clean_up_script(&Saved::parse(Family::Ipv4, "")), None);
    }

    fn postrouting(rules: &[&str]) -> String {
        let mut dump = String::from("*nat\n:POSTROUTING ACCEPT [0:0]\n:KILO-NAT - [0:0]\n");
        for rule in rules {
            dump += &format!("-A POSTROUTING {rule}\n");
        }
        dump + "COMMIT\n"
    }

    fn ours(cidr: &str) -> String {
        format!(r#"-s {cidr} -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT"#)
    }

    fn with_postrouting(cidrs: &[&str]) -> Firewall {
        Firewall {
            chains: vec![Chain { family: Family::Ipv4, name: ChainName::KiloNat }],
            rules: cidrs.iter().map(|cidr| jump_to_nat(cidr)).collect(),
            ..Firewall::default()
        }
    }

    #[test]
    fn built_in_chains_get_mesh_core_order_with_minimal_edits() {
        let masquerade = "-s 10.9.0.0/16 -j MASQUERADE";
        let (a, b, c, d) = ("10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16", "10.4.0.0/16");
        let dump = postrouting(&[masquerade, &ours(a), &ours(c)]);
        let saved = Saved::parse(Family::Ipv4, &dump);
        assert_eq!(set_script(&saved, &with_postrouting(&[a, c])), None);
        // New rules go between their neighbours; the others stay where they are.
        assert_eq!(
            set_script(&saved, &with_postrouting(&[a, b, c, d])).unwrap(),
            format!("*nat\n-I POSTROUTING 3 {}\n-A POSTROUTING {}\nCOMMIT\n", ours(b), ours(d))
        );
        assert_eq!(
            set_script(&saved, &with_postrouting(&[b, a, c])).unwrap(),
            format!("*nat\n-I POSTROUTING 1 {}\nCOMMIT\n", ours(b))
        );
        // A swap moves one rule; a replacement deletes before it inserts.
        assert_eq!(
            set_script(&saved, &with_postrouting(&[c, a])).unwrap(),
            format!("*nat\n-D POSTROUTING {}\n-A POSTROUTING {}\nCOMMIT\n", ours(a), ours(a))
        );
        assert_eq!(
            set_script(&saved, &with_postrouting(&[a, d, b])).unwrap(),
            format!(
                "*nat\n-D POSTROUTING {}\n-A POSTROUTING {}\n-A POSTROUTING {}\nCOMMIT\n",
                ours(c),
                ours(d),
                ours(b)
            )
        );
        // Positions count everyone's rules and what was deleted and inserted before.
        let mixed = postrouting(&[&ours(a), masquerade, &ours(c), &ours(d)]);
        assert_eq!(
            set_script(&Saved::parse(Family::Ipv4, &mixed), &with_postrouting(&[a, b, d])).unwrap(),
            format!("*nat\n-D POSTROUTING {}\n-I POSTROUTING 2 {}\nCOMMIT\n", ours(c), ours(b))
        );
        // Copies of one rule all go (`-D` removes the first), then it is inserted once.
        let doubled = postrouting(&[&ours(a), masquerade, &ours(a)]);
        assert_eq!(
            set_script(&Saved::parse(Family::Ipv4, &doubled), &with_postrouting(&[a])).unwrap(),
            format!(
                "*nat\n-D POSTROUTING {}\n-D POSTROUTING {}\n-I POSTROUTING 1 {}\nCOMMIT\n",
                ours(a),
                ours(a),
                ours(a)
            )
        );
        // Into an empty chain, at the top in order.
        let empty = Saved::parse(Family::Ipv4, "*nat\n:POSTROUTING ACCEPT [0:0]\n:KILO-NAT - [0:0]\nCOMMIT\n");
        assert_eq!(
            set_script(&empty, &with_postrouting(&[a, b])).unwrap(),
            format!("*nat\n-A POSTROUTING {}\n-A POSTROUTING {}\nCOMMIT\n", ours(a), ours(b))
        );
        let above = postrouting(&[masquerade]);
        assert_eq!(
            set_script(&Saved::parse(Family::Ipv4, &above), &with_postrouting(&[a, b])).unwrap(),
            format!("*nat\n-I POSTROUTING 1 {}\n-I POSTROUTING 2 {}\nCOMMIT\n", ours(a), ours(b))
        );
    }

    #[test]
    fn input_rules_go_after_everyone_elses_jump_before_drop() {
        let input = |rules: &[&str]| {
            let mut dump = String::from("*filter\n:INPUT ACCEPT [0:0]\n:KILO-IPIP - [0:0]\n");
            for rule in rules {
                dump += &format!("-A INPUT {rule}\n");
            }
            dump + "COMMIT\n"
        };
        let ssh = "-p tcp -m tcp --dport 22 -j ACCEPT";
        let jump = r#"-p 4 -m comment --comment "Kilo: jump to IPIP chain" -j KILO-IPIP"#;
        let drop = r#"-p 4 -m comment --comment "Kilo: reject other IPIP traffic" -j DROP"#;
        let desired = Firewall {
            chains: vec![Chain { family: Family::Ipv4, name: ChainName::KiloIpip }],
            rules: vec![
                rule(ChainName::Input, Match::Ipip, Target::IpipChain, Comment::JumpToIpip),
                rule(ChainName::Input, Match::Ipip, Target::Drop, Comment::RejectIpip),
            ],
            ..Firewall::default()
        };
        let script = |rules: &[&str]| set_script(&Saved::parse(Family::Ipv4, &input(rules)), &desired);
        assert_eq!(script(&[ssh, jump, drop]), None);
        assert_eq!(script(&[ssh]).unwrap(), format!("*filter\n-A INPUT {jump}\n-A INPUT {drop}\nCOMMIT\n"));
        assert_eq!(script(&[ssh, drop]).unwrap(), format!("*filter\n-I INPUT 2 {jump}\nCOMMIT\n"));
        assert_eq!(script(&[ssh, jump]).unwrap(), format!("*filter\n-A INPUT {drop}\nCOMMIT\n"));
        // Only the order among ours counts.
        assert_eq!(script(&[jump, ssh, drop]), None);
        assert_eq!(script(&[drop, ssh, jump]).unwrap(), format!("*filter\n-D INPUT {drop}\n-A INPUT {drop}\nCOMMIT\n"));
        assert_eq!(script(&[ssh, drop, jump]).unwrap(), format!("*filter\n-D INPUT {drop}\n-A INPUT {drop}\nCOMMIT\n"));
    }

    /// Runs a script's lines for `chain` on a model of it (`-D` removes the first equal rule).
    fn run(chain: &str, rules: &mut Vec<String>, script: &str) {
        for line in script.lines() {
            let words: Vec<&str> = line.splitn(3, ' ').collect();
            match words[..] {
                ["-D", name, spec] if name == chain => {
                    let at = rules.iter().position(|rule| rule == spec).expect("-D of a missing rule");
                    rules.remove(at);
                }
                ["-I", name, rest] if name == chain => {
                    let (position, spec) = rest.split_once(' ').unwrap();
                    let position: usize = position.parse().unwrap();
                    assert!(position >= 1 && position <= rules.len(), "-I {position} into {} rules", rules.len());
                    rules.insert(position - 1, spec.to_owned());
                }
                ["-A", name, spec] if name == chain => rules.push(spec.to_owned()),
                _ => assert!(line.starts_with('*') || line == "COMMIT", "{line}"),
            }
        }
    }

    #[test]
    fn any_chain_converges_in_one_script_and_keeps_everyone_elses_rules() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut random = |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        let cidrs: Vec<String> = (0..8).map(|i| format!("10.{i}.0.0/16")).collect();
        for (table, name) in [("nat", ChainName::Postrouting), ("filter", ChainName::Input)] {
            let chain = name.as_str();
            let dump = |rules: &[String]| {
                let mut dump = format!("*{table}\n:{chain} ACCEPT [0:0]\n");
                for rule in rules {
                    dump += &format!("-A {chain} {rule}\n");
                }
                dump + "COMMIT\n"
            };
            for _ in 0..2000 {
                let mut rules: Vec<String> = Vec::new();
                for _ in 0..random(10) {
                    rules.push(match random(4) {
                        0 => format!("-s 10.9.{}.0/24 -j ACCEPT", random(3)),
                        1 => "-j KILO-OLD".to_owned(),
                        _ => ours(&cidrs[random(cidrs.len())]),
                    });
                }
                let mut want: Vec<FirewallRule> = Vec::new();
                for _ in 0..random(8) {
                    let rule = FirewallRule { chain: name, ..jump_to_nat(&cidrs[random(cidrs.len())]) };
                    if !want.contains(&rule) {
                        want.push(rule);
                    }
                }
                let desired = Firewall { rules: want, ..Firewall::default() };
                let foreign = |rules: &[String]| -> Vec<String> {
                    rules.iter().filter(|rule| rule.contains("10.9.")).cloned().collect()
                };
                let (before, others) = (dump(&rules), foreign(&rules));
                if let Some(script) = set_script(&Saved::parse(Family::Ipv4, &before), &desired) {
                    run(chain, &mut rules, &script);
                }
                let after = dump(&rules);
                assert_eq!(Saved::parse(Family::Ipv4, &after).observed().0, desired, "{before}");
                assert_eq!(foreign(&rules), others);
            }
        }
    }
}
