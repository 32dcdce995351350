//! iptables: our chains (`KILO-*`) and our rules in built-in chains, read with `iptables-save`
//! and changed atomically with `iptables-restore --noflush`, never touching anyone else's.
//!
//! What is ours: every chain whose name starts with `KILO-` and every rule in it; in any other
//! chain, a rule whose comment starts with `Kilo:` or that jumps to a `KILO-` chain.
//!
//! Rules are read back in mesh-core's representation: arguments without the comment match, in
//! mesh-core's order (`-p`, `-d`, `-s`, `-i`, `-o`, other matches, target), so that
//! `iptables-save`'s `! -s A -d B` reads as mesh-core's `-d B ! -s A`, and protocol 4 reads as
//! `ipencap` whatever `/etc/protocols` calls it.
//!
//! Order: rules in our chains and our rules in `INPUT` (appended after everyone else's, where
//! the IPIP jump must precede the IPIP drop) keep their order; our rules in other built-in chains
//! (`POSTROUTING`, `FORWARD`) are inserted at the top and their order among themselves is
//! irrelevant, as in Kilo.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use mesh_core::firewall::{Chain, Family, Firewall, FirewallRule};

use crate::error::{Error, Result};
use crate::netns::Namespace;

/// Chains with this prefix are ours.
pub const CHAIN_PREFIX: &str = "KILO-";
/// Rules in built-in chains whose comment starts with this are ours.
pub const COMMENT_PREFIX: &str = "Kilo:";

/// The built-in chain where our rules are appended (after everyone else's) rather than inserted.
const APPEND_CHAIN: &str = "INPUT";

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

fn is_owned_chain(chain: &str) -> bool {
    chain.starts_with(CHAIN_PREFIX)
}

/// One of our rules as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SavedRule {
    /// The rule in mesh-core's representation.
    pub rule: FirewallRule,
    /// The arguments exactly as `iptables-save` printed them (after `-A CHAIN`), to delete it.
    pub spec: Vec<String>,
}

/// Our part of one family's firewall, as read from the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SavedFirewall {
    /// Our chains, in `iptables-save` order (tables sorted).
    pub chains: Vec<Chain>,
    /// Our rules, by table in `iptables-save` order.
    pub rules: Vec<SavedRule>,
}

impl SavedFirewall {
    /// The mesh-core value of what was read.
    pub(crate) fn firewall(&self) -> Firewall {
        Firewall { chains: self.chains.clone(), rules: self.rules.iter().map(|saved| saved.rule.clone()).collect() }
    }
}

/// Splits an `iptables-save` line into words: `"…"` quotes words with spaces, and `\` escapes
/// the next character (iptables-save prints `node\'s` inside quotes).
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Quotes a word for `iptables-restore` when it needs it.
fn quote(word: &str) -> String {
    if !word.is_empty() && !word.chars().any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '\'') {
        return word.to_owned();
    }
    let mut quoted = String::from('"');
    for c in word.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// Protocol 4 (IP in IP) under every name `/etc/protocols` files give it.
fn is_ipencap(protocol: &str) -> bool {
    matches!(protocol.to_ascii_lowercase().as_str(), "4" | "ipencap" | "ip-encap" | "ipv4" | "ipip")
}

/// The basic matches, in mesh-core's argument order.
const BASIC_ORDER: [&str; 6] = ["-p", "-d", "-s", "-i", "-o", "-f"];

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

/// A rule's words (after `-A CHAIN`) in mesh-core's representation: `(args, comment)`.
pub(crate) fn canonical(words: &[String]) -> (Vec<String>, String) {
    let mut basics: Vec<(usize, Vec<String>)> = Vec::new();
    let mut matches: Vec<String> = Vec::new();
    let mut target: Vec<String> = Vec::new();
    let mut comment = String::new();
    let mut negated = false;
    let mut i = 0;
    while i < words.len() {
        let word = long_to_short(&words[i]);
        match word {
            "!" => {
                negated = true;
                i += 1;
                continue;
            }
            "-j" | "-g" => {
                target.push(word.to_owned());
                target.extend(words[i + 1..].iter().cloned());
                break;
            }
            "-m" => {
                let module = words.get(i + 1).cloned().unwrap_or_default();
                let mut options = Vec::new();
                i += 2;
                // The module's options run until the next basic match, module or target.
                while i < words.len() {
                    let next = long_to_short(&words[i]);
                    let next_after_bang =
                        if next == "!" { words.get(i + 1).map(|w| long_to_short(w)).unwrap_or("") } else { next };
                    if BASIC_ORDER.contains(&next_after_bang) || matches!(next_after_bang, "-m" | "-j" | "-g") {
                        break;
                    }
                    options.push(words[i].clone());
                    i += 1;
                }
                if module == "comment" {
                    if let Some(position) = options.iter().position(|option| option == "--comment") {
                        comment = options.get(position + 1).cloned().unwrap_or_default();
                    }
                } else {
                    matches.push("-m".to_owned());
                    matches.push(module);
                    matches.extend(options);
                }
                negated = false;
                continue;
            }
            flag if BASIC_ORDER.contains(&flag) => {
                let rank = BASIC_ORDER.iter().position(|basic| *basic == flag).unwrap_or(BASIC_ORDER.len());
                let mut item = Vec::new();
                if negated {
                    item.push("!".to_owned());
                }
                item.push(flag.to_owned());
                if flag != "-f" {
                    let mut value = words.get(i + 1).cloned().unwrap_or_default();
                    if flag == "-p" {
                        value = if is_ipencap(&value) { "ipencap".to_owned() } else { value.to_ascii_lowercase() };
                    }
                    item.push(value);
                    i += 1;
                }
                basics.push((rank, item));
            }
            other => basics.push((BASIC_ORDER.len(), vec![other.to_owned()])),
        }
        negated = false;
        i += 1;
    }
    basics.sort_by_key(|(rank, _)| *rank);
    let mut args: Vec<String> = basics.into_iter().flat_map(|(_, item)| item).collect();
    args.extend(matches);
    args.extend(target);
    (args, comment)
}

/// The words to give `iptables-restore` for a mesh-core rule: its arguments with the comment
/// match before the target, and protocol 4 by number (a container may lack `/etc/protocols`).
fn restore_words(rule: &FirewallRule) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut args = rule.args.iter().peekable();
    let mut commented = rule.comment.is_empty();
    while let Some(arg) = args.next() {
        if !commented && (arg == "-j" || arg == "-g") {
            words.extend(["-m".to_owned(), "comment".to_owned(), "--comment".to_owned(), rule.comment.clone()]);
            commented = true;
        }
        words.push(arg.clone());
        if arg == "-p"
            && let Some(protocol) = args.next()
        {
            words.push(if is_ipencap(protocol) { "4".to_owned() } else { protocol.clone() });
        }
    }
    if !commented {
        words.extend(["-m".to_owned(), "comment".to_owned(), "--comment".to_owned(), rule.comment.clone()]);
    }
    words
}

fn line(command: &str, chain: &str, words: &[String]) -> String {
    let mut text = format!("{command} {chain}");
    for word in words {
        text.push(' ');
        text.push_str(&quote(word));
    }
    text
}

/// Our part of an `iptables-save` dump.
pub(crate) fn parse_save(family: Family, dump: &str) -> SavedFirewall {
    let mut tables: BTreeMap<String, (Vec<Chain>, Vec<SavedRule>)> = BTreeMap::new();
    let mut table = String::new();
    for text in dump.lines() {
        if let Some(name) = text.strip_prefix('*') {
            table = name.trim().to_owned();
            tables.entry(table.clone()).or_default();
        } else if let Some(declaration) = text.strip_prefix(':') {
            let name = declaration.split_whitespace().next().unwrap_or_default();
            if is_owned_chain(name) {
                let chain = Chain { family, table: table.clone(), name: name.to_owned() };
                tables.entry(table.clone()).or_default().0.push(chain);
            }
        } else if text.starts_with("-A ") {
            let words = split_words(text);
            let (Some(chain), Some(spec)) = (words.get(1), words.get(2..)) else { continue };
            let (args, comment) = canonical(spec);
            let jumps_to_ours =
                args.windows(2).any(|pair| (pair[0] == "-j" || pair[0] == "-g") && is_owned_chain(&pair[1]));
            if is_owned_chain(chain) || comment.starts_with(COMMENT_PREFIX) || jumps_to_ours {
                let rule = FirewallRule { family, table: table.clone(), chain: chain.clone(), args, comment };
                tables.entry(table.clone()).or_default().1.push(SavedRule { rule, spec: spec.to_vec() });
            }
        }
    }
    let mut saved = SavedFirewall::default();
    for (_, (chains, rules)) in tables {
        saved.chains.extend(chains);
        saved.rules.extend(rules);
    }
    saved
}

type ChainKey = (String, String);

fn rules_by_chain<'a>(rules: impl Iterator<Item = &'a FirewallRule>) -> BTreeMap<ChainKey, Vec<&'a FirewallRule>> {
    let mut chains: BTreeMap<ChainKey, Vec<&FirewallRule>> = BTreeMap::new();
    for rule in rules {
        chains.entry((rule.table.clone(), rule.chain.clone())).or_default().push(rule);
    }
    chains
}

fn order_matters(chain: &str) -> bool {
    is_owned_chain(chain) || chain == APPEND_CHAIN
}

fn same_rules(chain: &str, mut a: Vec<&FirewallRule>, mut b: Vec<&FirewallRule>) -> bool {
    if !order_matters(chain) {
        a.sort();
        b.sort();
    }
    a == b
}

/// Whether two firewalls of one family have the same effect: the same chains, and per chain the
/// same rules (in the same order where order matters). mesh-core lists rules of all chains in
/// one sequence, which the kernel cannot give back; this is the comparison that can.
pub(crate) fn equivalent(a: &Firewall, b: &Firewall) -> bool {
    let mut a_chains = a.chains.clone();
    let mut b_chains = b.chains.clone();
    a_chains.sort();
    a_chains.dedup();
    b_chains.sort();
    b_chains.dedup();
    if a_chains != b_chains {
        return false;
    }
    let mut a_rules = rules_by_chain(a.rules.iter());
    let mut b_rules = rules_by_chain(b.rules.iter());
    let keys: Vec<ChainKey> = a_rules.keys().chain(b_rules.keys()).cloned().collect();
    keys.into_iter().all(|key| {
        let chain = key.1.clone();
        same_rules(&chain, a_rules.remove(&key).unwrap_or_default(), b_rules.remove(&key).unwrap_or_default())
    })
}

#[derive(Default)]
struct TableScript {
    declare: Vec<String>,
    delete: Vec<String>,
    add: Vec<String>,
    remove_chains: Vec<String>,
}

fn render(tables: BTreeMap<String, TableScript>) -> Option<String> {
    let mut script = String::new();
    for (table, part) in tables {
        if part.declare.is_empty() && part.delete.is_empty() && part.add.is_empty() && part.remove_chains.is_empty() {
            continue;
        }
        script += &format!("*{table}\n");
        for chain in &part.declare {
            script += &format!(":{chain} - [0:0]\n");
        }
        for text in part.delete.iter().chain(&part.add) {
            script += text;
            script.push('\n');
        }
        for chain in &part.remove_chains {
            script += &format!("-X {chain}\n");
        }
        script += "COMMIT\n";
    }
    (!script.is_empty()).then_some(script)
}

/// The `iptables-restore --noflush` input that makes our part of the family exactly `desired`,
/// touching only chains whose content differs; `None` when nothing differs.
pub(crate) fn set_script(current: &SavedFirewall, desired: &Firewall) -> Option<String> {
    let mut tables: BTreeMap<String, TableScript> = BTreeMap::new();
    let current_by_chain = {
        let mut map: BTreeMap<ChainKey, Vec<&SavedRule>> = BTreeMap::new();
        for saved in &current.rules {
            map.entry((saved.rule.table.clone(), saved.rule.chain.clone())).or_default().push(saved);
        }
        map
    };
    let desired_by_chain = rules_by_chain(desired.rules.iter());

    let mut wanted_chains: Vec<ChainKey> = desired.chains.iter().map(|c| (c.table.clone(), c.name.clone())).collect();
    wanted_chains.extend(desired_by_chain.keys().filter(|(_, chain)| is_owned_chain(chain)).cloned());
    wanted_chains.sort();
    wanted_chains.dedup();
    let existing_chains: Vec<ChainKey> = current.chains.iter().map(|c| (c.table.clone(), c.name.clone())).collect();

    // Our chains: rewrite one whose content differs (declaring it flushes it), drop unwanted ones.
    for key in &wanted_chains {
        let have: Vec<&FirewallRule> =
            current_by_chain.get(key).map(|rules| rules.iter().map(|saved| &saved.rule).collect()).unwrap_or_default();
        let want = desired_by_chain.get(key).cloned().unwrap_or_default();
        if existing_chains.contains(key) && have == want {
            continue;
        }
        let part = tables.entry(key.0.clone()).or_default();
        part.declare.push(key.1.clone());
        part.add.extend(want.iter().map(|rule| line("-A", &key.1, &restore_words(rule))));
    }
    for key in existing_chains.iter().filter(|key| !wanted_chains.contains(key)) {
        let part = tables.entry(key.0.clone()).or_default();
        part.declare.push(key.1.clone());
        part.remove_chains.push(key.1.clone());
    }

    // Our rules in built-in chains.
    let mut builtin: Vec<ChainKey> = current_by_chain
        .keys()
        .chain(desired_by_chain.keys())
        .filter(|(_, chain)| !is_owned_chain(chain))
        .cloned()
        .collect();
    builtin.sort();
    builtin.dedup();
    for key in builtin {
        let have: Vec<&SavedRule> = current_by_chain.get(&key).cloned().unwrap_or_default();
        let want: Vec<&FirewallRule> = desired_by_chain.get(&key).cloned().unwrap_or_default();
        let part = tables.entry(key.0.clone()).or_default();
        let chain = &key.1;
        if chain == APPEND_CHAIN {
            if have.iter().map(|saved| &saved.rule).eq(want.iter().copied()) {
                continue;
            }
            part.delete.extend(have.iter().map(|saved| line("-D", chain, &saved.spec)));
            part.add.extend(want.iter().map(|rule| line("-A", chain, &restore_words(rule))));
        } else {
            let mut missing: Vec<&FirewallRule> = want.clone();
            for saved in &have {
                match missing.iter().position(|rule| **rule == saved.rule) {
                    Some(index) => {
                        missing.remove(index);
                    }
                    None => part.delete.push(line("-D", chain, &saved.spec)),
                }
            }
            // Inserting at the top in reverse keeps the wanted order among the new rules.
            part.add.extend(missing.iter().rev().map(|rule| line("-I", chain, &insert_words(rule))));
        }
    }
    render(tables)
}

fn insert_words(rule: &FirewallRule) -> Vec<String> {
    let mut words = vec!["1".to_owned()];
    words.extend(restore_words(rule));
    words
}

/// The `iptables-restore --noflush` input that removes all of ours; `None` when there is nothing.
pub(crate) fn clean_up_script(current: &SavedFirewall) -> Option<String> {
    let mut tables: BTreeMap<String, TableScript> = BTreeMap::new();
    for saved in current.rules.iter().filter(|saved| !is_owned_chain(&saved.rule.chain)) {
        tables.entry(saved.rule.table.clone()).or_default().delete.push(line("-D", &saved.rule.chain, &saved.spec));
    }
    for chain in &current.chains {
        let part = tables.entry(chain.table.clone()).or_default();
        part.declare.push(chain.name.clone());
        part.remove_chains.push(chain.name.clone());
    }
    render(tables)
}

/// Reads our part of the family's firewall.
pub(crate) async fn read(namespace: &Namespace, family: Family) -> Result<SavedFirewall> {
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
    Ok(parse_save(family, &String::from_utf8_lossy(&output.stdout)))
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
    use super::*;

    fn words(text: &str) -> Vec<String> {
        split_words(text)
    }

    fn rule(family: Family, table: &str, chain: &str, args: &str, comment: &str) -> FirewallRule {
        FirewallRule {
            family,
            table: table.to_owned(),
            chain: chain.to_owned(),
            args: args.split(' ').map(str::to_owned).collect(),
            comment: comment.to_owned(),
        }
    }

    #[test]
    fn splits_quoted_and_escaped_words() {
        assert_eq!(
            words(r#"-A FORWARD -s 10.2.0.0/24 -m comment --comment "Kilo: forward the node\'s pod subnet" -j ACCEPT"#),
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
        assert_eq!(words(r#"--comment "a \"b\" c""#), ["--comment", r#"a "b" c"#]);
    }

    #[test]
    fn reads_rules_in_mesh_core_order() {
        let (args, comment) = canonical(&words(
            r#"! -s 192.168.178.0/24 -d 192.168.178.0/24 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT"#,
        ));
        assert_eq!(args, ["-d", "192.168.178.0/24", "!", "-s", "192.168.178.0/24", "-j", "KILO-NAT"]);
        assert_eq!(comment, "Kilo: jump to NAT chain");

        for protocol in ["4", "ipencap", "IPENCAP"] {
            let (args, _) = canonical(&words(&format!(r#"-p {protocol} -m comment --comment "x" -j DROP"#)));
            assert_eq!(args, ["-p", "ipencap", "-j", "DROP"]);
        }
        let (args, comment) = canonical(&words("-j MASQUERADE --random"));
        assert_eq!(args, ["-j", "MASQUERADE", "--random"]);
        assert_eq!(comment, "");
        let (args, _) = canonical(&words(
            "-s 10.0.0.0/8 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment c -j ACCEPT",
        ));
        assert_eq!(args, ["-s", "10.0.0.0/8", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]);
    }

    #[test]
    fn writes_the_comment_before_the_target_and_protocol_4_by_number() {
        let input = rule(Family::Ipv4, "filter", "INPUT", "-p ipencap -j KILO-IPIP", "Kilo: jump to IPIP chain");
        assert_eq!(
            line("-A", "INPUT", &restore_words(&input)),
            r#"-A INPUT -p 4 -m comment --comment "Kilo: jump to IPIP chain" -j KILO-IPIP"#
        );
        let forward = rule(Family::Ipv4, "filter", "FORWARD", "-s 10.2.0.0/24 -j ACCEPT", "Kilo: the node's pods");
        assert_eq!(
            line("-I", "FORWARD", &insert_words(&forward)),
            r#"-I FORWARD 1 -s 10.2.0.0/24 -m comment --comment "Kilo: the node's pods" -j ACCEPT"#
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
-A INPUT -p ipencap -m comment --comment "Kilo: reject other IPIP traffic" -j DROP
-A FORWARD -j FOREIGN
-A KILO-IPIP -s 10.0.0.1/32 -m comment --comment "Kilo: allow IPIP traffic" -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KILO-NAT - [0:0]
-A POSTROUTING ! -s 192.168.178.0/24 -d 192.168.178.0/24 -m comment --comment "Kilo: jump to NAT chain" -j KILO-NAT
-A POSTROUTING -s 10.9.0.0/16 -j MASQUERADE
-A KILO-NAT -m comment --comment "Kilo: NAT remaining packets" -j MASQUERADE
COMMIT
"#;

    #[test]
    fn picks_only_our_chains_and_rules() {
        let saved = parse_save(Family::Ipv4, DUMP);
        let chains: Vec<&str> = saved.chains.iter().map(|chain| chain.name.as_str()).collect();
        assert_eq!(chains, ["KILO-IPIP", "KILO-NAT"]);
        let rules: Vec<(&str, String)> =
            saved.rules.iter().map(|saved| (saved.rule.chain.as_str(), saved.rule.args.join(" "))).collect();
        assert_eq!(
            rules,
            [
                ("INPUT", "-p ipencap -j KILO-IPIP".to_owned()),
                ("INPUT", "-p ipencap -j DROP".to_owned()),
                ("KILO-IPIP", "-s 10.0.0.1/32 -j ACCEPT".to_owned()),
                ("POSTROUTING", "-d 192.168.178.0/24 ! -s 192.168.178.0/24 -j KILO-NAT".to_owned()),
                ("KILO-NAT", "-j MASQUERADE".to_owned()),
            ]
        );
    }

    #[test]
    fn a_matching_firewall_needs_no_script_and_a_changed_one_touches_only_what_changed() {
        let saved = parse_save(Family::Ipv4, DUMP);
        // mesh-core interleaves the chains differently; only per-chain content counts.
        let mut same = saved.firewall();
        same.rules.rotate_left(2);
        assert!(equivalent(&same, &saved.firewall()));
        assert_eq!(set_script(&saved, &same), None);

        let mut changed = saved.firewall();
        changed.rules.retain(|rule| rule.chain != "POSTROUTING");
        changed.rules.push(rule(Family::Ipv4, "nat", "POSTROUTING", "-s 10.2.0.0/24 -j KILO-NAT", "Kilo: jump"));
        let script = set_script(&saved, &changed).unwrap();
        assert_eq!(
            script,
            "*nat\n\
             -D POSTROUTING ! -s 192.168.178.0/24 -d 192.168.178.0/24 -m comment --comment \"Kilo: jump to NAT chain\" -j KILO-NAT\n\
             -I POSTROUTING 1 -s 10.2.0.0/24 -m comment --comment \"Kilo: jump\" -j KILO-NAT\n\
             COMMIT\n"
        );
    }

    #[test]
    fn input_rules_keep_their_order_and_chains_are_rewritten_whole() {
        let saved = parse_save(Family::Ipv4, DUMP);
        let mut swapped = saved.firewall();
        swapped.rules.swap(0, 1);
        assert!(!equivalent(&swapped, &saved.firewall()));
        let script = set_script(&saved, &swapped).unwrap();
        assert!(script.starts_with("*filter\n-D INPUT -p ipencap"), "{script}");
        assert!(
            script.contains(
                "-A INPUT -p 4 -m comment --comment \"Kilo: reject other IPIP traffic\" -j DROP\n-A INPUT -p 4"
            )
        );

        let mut refilled = saved.firewall();
        refilled.rules.retain(|rule| rule.chain != "KILO-IPIP");
        let script = set_script(&saved, &refilled).unwrap();
        assert_eq!(script, "*filter\n:KILO-IPIP - [0:0]\nCOMMIT\n");
    }

    #[test]
    fn removes_unwanted_chains_after_their_jumps_and_cleans_up_everything_of_ours() {
        let saved = parse_save(Family::Ipv4, DUMP);
        let mut without_ipip = saved.firewall();
        without_ipip.chains.retain(|chain| chain.name != "KILO-IPIP");
        without_ipip.rules.retain(|rule| rule.table != "filter");
        let script = set_script(&saved, &without_ipip).unwrap();
        assert_eq!(
            script,
            "*filter\n:KILO-IPIP - [0:0]\n\
             -D INPUT -p ipencap -m comment --comment \"Kilo: jump to IPIP chain\" -j KILO-IPIP\n\
             -D INPUT -p ipencap -m comment --comment \"Kilo: reject other IPIP traffic\" -j DROP\n\
             -X KILO-IPIP\nCOMMIT\n"
        );
        let clean = clean_up_script(&saved).unwrap();
        assert!(clean.contains("-X KILO-IPIP") && clean.contains("-X KILO-NAT"), "{clean}");
        assert!(!clean.contains("FOREIGN") && !clean.contains("MASQUERADE\n-") && !clean.contains("dport"), "{clean}");
        assert_eq!(clean_up_script(&SavedFirewall::default()), None);
    }
}
