//! The firewall's part of a plan: the fewest iptables edits that make our rules the desired
//! ones, leaving everyone else's rules where they are.
//!
//! What is ours: every chain whose name starts with `KILO-` and every rule in it; in any other
//! chain, a rule whose comment starts with `Kilo:` or that jumps to a `KILO-` chain. Rules of ours
//! the mesh does not generate ([`ForeignRule`]) and unknown `KILO-*` chains ([`ForeignChain`])
//! always go.
//!
//! The edit, per IP version (one atomic `iptables-restore` in the data plane):
//!
//! - **Our chains** whose content differs are rewritten whole ([`FirewallChange::WriteChain`]:
//!   declaring a chain flushes it); unwanted ones are removed, after the rules that jump to them.
//! - **Chains we share** (`FORWARD`, `INPUT`, `POSTROUTING`): our rules take the desired order
//!   with minimal edits. The longest run of ours already in that order stays, the others are
//!   deleted, and the missing ones are inserted next to their neighbours — at the top of
//!   `POSTROUTING` and `FORWARD` (as Kilo inserts them), after everyone else's in `INPUT` (as Kilo
//!   appends them: the IPIP jump, then the drop). An insertion names the kernel's position,
//!   counting everyone's rules, from the observed [`FirewallLayout`].

use std::collections::BTreeSet;
use std::ops::Range;

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::{Chain, ChainName, Family, Firewall, FirewallRule, ForeignChain, ForeignRule};

/// Names of chains with this prefix are ours.
pub const CHAIN_PREFIX: &str = "KILO-";
/// Rules in other chains whose comment starts with this are ours.
pub const COMMENT_PREFIX: &str = "Kilo:";

/// Whether a chain of this name is ours.
pub fn is_owned_chain(name: &str) -> bool {
    name.starts_with(CHAIN_PREFIX)
}

/// Where the rules of ours sit among everyone's in one chain the mesh shares with others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SharedChainLayout {
    /// IP version.
    pub family: Family,
    /// `FORWARD`, `INPUT` or `POSTROUTING`.
    pub chain: ChainName,
    /// How many rules the chain holds, everyone's.
    pub length: usize,
    /// The 1-based positions of the chain's rules of [`Firewall::rules`], in their order.
    pub rules: Vec<usize>,
    /// The 1-based positions of the chain's [`ForeignRule`]s.
    pub foreign: Vec<usize>,
}

/// Where our rules sit in the chains shared with others, as observed: an insertion must name
/// its position in the kernel's chain. A chain not listed holds only ours, in the order of
/// [`Firewall::rules`] and then the foreign ones (so [`ObservedState::of`](crate::ObservedState::of)
/// needs none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FirewallLayout {
    /// The shared chains that hold someone else's rules.
    pub chains: Vec<SharedChainLayout>,
}

impl FirewallLayout {
    fn chain(&self, family: Family, chain: ChainName) -> Option<&SharedChainLayout> {
        self.chains.iter().find(|layout| layout.family == family && layout.chain == chain)
    }
}

/// One change to our iptables rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum FirewallChange {
    /// Create one of our chains, or empty it, and fill it with `rules` in order.
    WriteChain {
        /// The chain.
        chain: Chain,
        /// Its rules.
        rules: Vec<FirewallRule>,
    },
    /// Delete one of our chains and its rules.
    RemoveChain(Chain),
    /// Delete a `KILO-*` chain the mesh does not generate, and its rules.
    RemoveForeignChain(ForeignChain),
    /// Delete a rule of ours from a chain we share (the first copy, as `iptables -D` does).
    DeleteRule(FirewallRule),
    /// Delete a rule of ours the mesh does not generate, by its saved spec.
    DeleteForeignRule(ForeignRule),
    /// Insert a rule into a chain we share.
    InsertRule {
        /// The rule.
        rule: FirewallRule,
        /// Its 0-based place among our rules of the chain, after the changes before it.
        index: usize,
        /// Its 1-based position in the kernel's chain, counting everyone's rules; `None`: at the end.
        position: Option<usize>,
    },
}

/// The changes to the firewall of one IP version, to be applied together and atomically:
/// removals of chains come after the rules that jump to them are gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FirewallEdit {
    /// The IP version.
    pub family: Family,
    /// The changes, in order.
    pub changes: Vec<FirewallChange>,
}

impl FirewallEdit {
    /// The edit that turns the `family` part of `current` (laid out as `layout` says) into that of
    /// `desired`; `None` when they already agree. Foreign rules and chains of `desired` are
    /// ignored: they can only be observed.
    ///
    /// ```
    /// use mesh_core::firewall::{Chain, ChainName, Family, Firewall, FirewallEdit, FirewallLayout};
    ///
    /// let nat = Firewall {
    ///     chains: vec![Chain { family: Family::Ipv4, name: ChainName::KiloNat }],
    ///     ..Firewall::default()
    /// };
    /// let edit = FirewallEdit::between(&Firewall::default(), &FirewallLayout::default(), &nat, Family::Ipv4);
    /// let mut firewall = Firewall::default();
    /// firewall.apply(&edit.unwrap());
    /// assert_eq!(firewall, nat);
    /// assert_eq!(FirewallEdit::between(&nat, &FirewallLayout::default(), &nat, Family::Ipv4), None);
    /// ```
    pub fn between(current: &Firewall, layout: &FirewallLayout, desired: &Firewall, family: Family) -> Option<Self> {
        // The steady state: one comparison of slices.
        if current.family_eq(desired, family) {
            return None;
        }
        let (current, desired) = (current.canonical(), desired.canonical());
        let mut changes = Vec::new();

        // Our chains: rewrite the ones whose content differs, remove the unwanted ones.
        let mut owned: BTreeSet<ChainName> =
            desired.chains.iter().filter(|chain| chain.family == family).map(|chain| chain.name).collect();
        owned.extend(desired.family_rules(family).iter().map(|rule| rule.chain).filter(|chain| chain.is_owned()));
        for &name in &owned {
            let want = desired.chain_rules(family, name);
            let unchanged = current.chains.contains(&Chain { family, name })
                && current.chain_rules(family, name) == want
                && !current.foreign.iter().any(|rule| rule.family == family && rule.is_in(name.table(), name.as_str()));
            if !unchanged {
                changes.push(FirewallChange::WriteChain { chain: Chain { family, name }, rules: want.to_vec() });
            }
        }
        for chain in current.chains.iter().filter(|chain| chain.family == family && !owned.contains(&chain.name)) {
            changes.push(FirewallChange::RemoveChain(*chain));
        }
        for chain in current.foreign_chains.iter().filter(|chain| chain.family == family) {
            changes.push(FirewallChange::RemoveForeignChain(chain.clone()));
        }

        // Our rules in chains we share, chain by chain.
        let mut shared: BTreeSet<(&str, &str)> = current
            .foreign
            .iter()
            .filter(|rule| rule.family == family && !is_owned_chain(&rule.chain))
            .map(|rule| (rule.table.as_str(), rule.chain.as_str()))
            .collect();
        for rule in current.family_rules(family).iter().chain(desired.family_rules(family)) {
            if !rule.chain.is_owned() {
                shared.insert((rule.table(), rule.chain.as_str()));
            }
        }
        for (table, name) in shared {
            let chain = ChainName::parse(table, name);
            let (have, want) = match chain {
                Some(chain) => (current.chain_rules(family, chain), desired.chain_rules(family, chain)),
                None => (&[][..], &[][..]),
            };
            let foreign: Vec<&ForeignRule> =
                current.foreign.iter().filter(|rule| rule.family == family && rule.is_in(table, name)).collect();
            if foreign.is_empty() && have == want {
                continue;
            }
            let layout = chain.and_then(|chain| layout.chain(family, chain));
            let at_top = chain != Some(ChainName::Input);
            edit_shared_chain(&entries(have, &foreign, layout), want, at_top, &mut changes);
        }
        (!changes.is_empty()).then_some(FirewallEdit { family, changes })
    }
}

/// A rule of ours in a chain we share, as observed.
#[derive(Clone, Copy, Debug)]
enum Entry<'a> {
    Generated(FirewallRule),
    Foreign(&'a ForeignRule),
}

/// The chain's rules of ours with their positions, in the chain's order, and the chain's length.
fn entries<'a>(
    have: &[FirewallRule],
    foreign: &[&'a ForeignRule],
    layout: Option<&SharedChainLayout>,
) -> (Vec<(usize, Entry<'a>)>, usize) {
    let laid_out = layout.filter(|layout| layout.rules.len() == have.len() && layout.foreign.len() == foreign.len());
    let (positions, foreign_positions, length): (Vec<usize>, Vec<usize>, usize) = match laid_out {
        Some(layout) => (layout.rules.clone(), layout.foreign.clone(), layout.length),
        None => {
            let ours = have.len() + foreign.len();
            ((1..=have.len()).collect(), (have.len() + 1..=ours).collect(), ours)
        }
    };
    let mut entries: Vec<(usize, Entry<'a>)> = positions
        .into_iter()
        .zip(have.iter().map(|rule| Entry::Generated(*rule)))
        .chain(foreign_positions.into_iter().zip(foreign.iter().map(|rule| Entry::Foreign(rule))))
        .collect();
    entries.sort_by_key(|(position, _)| *position);
    (entries, length)
}

/// Makes our rules in a chain we share exactly `want`, in order, with few edits: the longest
/// sequence of ours already in `want`'s order stays, the rest goes, and each missing rule is
/// inserted right after the previous one of `want` — or, for the first, at the top (`at_top`) or
/// before our first kept rule, else at the end.
fn edit_shared_chain(
    (have, length): &(Vec<(usize, Entry<'_>)>, usize),
    want: &[FirewallRule],
    at_top: bool,
    changes: &mut Vec<FirewallChange>,
) {
    let mut index_in_want: FxHashMap<FirewallRule, usize> = FxHashMap::default();
    for (index, rule) in want.iter().enumerate() {
        index_in_want.entry(*rule).or_insert(index);
    }
    let mut copies: FxHashMap<FirewallRule, usize> = FxHashMap::default();
    for (_, entry) in have {
        if let Entry::Generated(rule) = entry {
            *copies.entry(*rule).or_default() += 1;
        }
    }
    // Rules that may stay (wanted, and not repeated: `-D` removes the first copy), as
    // (index in have, index in want).
    let candidates: Vec<(usize, usize)> = have
        .iter()
        .enumerate()
        .filter_map(|(at, (_, entry))| match entry {
            Entry::Generated(rule) if copies[rule] == 1 => index_in_want.get(rule).map(|index| (at, *index)),
            _ => None,
        })
        .collect();
    let kept_candidates = longest_increasing(&candidates.iter().map(|(_, index)| *index).collect::<Vec<_>>());
    let mut stays = vec![false; have.len()];
    // (index in want, position in the chain as observed) of the rules that stay, in chain order.
    let mut kept: Vec<(usize, usize)> = Vec::with_capacity(kept_candidates.len());
    for candidate in kept_candidates {
        let (at, index) = candidates[candidate];
        stays[at] = true;
        kept.push((index, have[at].0));
    }
    let mut deleted: Vec<usize> = Vec::new();
    for ((position, entry), _) in have.iter().zip(&stays).filter(|(_, stays)| !**stays) {
        changes.push(match entry {
            Entry::Generated(rule) => FirewallChange::DeleteRule(*rule),
            Entry::Foreign(rule) => FirewallChange::DeleteForeignRule((*rule).clone()),
        });
        deleted.push(*position);
    }

    let mut length = length.saturating_sub(deleted.len());
    let mut inserted = 0;
    let now = |position: usize, inserted: usize| position - deleted.partition_point(|at| *at < position) + inserted;
    // Where the next missing rule goes (1-based); `None`: at the end.
    let mut next = match kept.first() {
        _ if at_top => Some(1),
        Some((_, position)) => Some(now(*position, 0)),
        None => None,
    };
    let mut kept = kept.into_iter().peekable();
    for (index, rule) in want.iter().enumerate() {
        if let Some((_, position)) = kept.next_if(|(kept_index, _)| *kept_index == index) {
            next = Some(now(position, inserted) + 1);
            continue;
        }
        let position = next.filter(|position| *position <= length);
        changes.push(FirewallChange::InsertRule { rule: *rule, index, position });
        next = next.map(|position| position + 1);
        length += 1;
        inserted += 1;
    }
}

/// The indices of one longest strictly increasing subsequence of `values`, in order.
fn longest_increasing(values: &[usize]) -> Vec<usize> {
    // tails[k]: the index of the smallest last value of an increasing run of length k + 1.
    let mut tails: Vec<usize> = Vec::new();
    let mut previous: Vec<Option<usize>> = vec![None; values.len()];
    for (index, value) in values.iter().enumerate() {
        let length = tails.partition_point(|tail| values[*tail] < *value);
        previous[index] = length.checked_sub(1).map(|before| tails[before]);
        if length == tails.len() {
            tails.push(index);
        } else {
            tails[length] = index;
        }
    }
    let mut run = Vec::with_capacity(tails.len());
    let mut at = tails.last().copied();
    while let Some(index) = at {
        run.push(index);
        at = previous[index];
    }
    run.reverse();
    run
}

impl Firewall {
    /// Applies an edit, as the data plane does (positions aside: only the order among ours is
    /// kept here).
    pub fn apply(&mut self, edit: &FirewallEdit) {
        self.canonicalize();
        for change in &edit.changes {
            match change {
                FirewallChange::WriteChain { chain, rules } => {
                    self.foreign.retain(|rule| !(rule.family == chain.family && rule.is_in_chain(chain.name)));
                    let range = self.chain_range(chain.family, chain.name);
                    self.rules.splice(range, rules.iter().copied());
                    if let Err(at) = self.chains.binary_search(chain) {
                        self.chains.insert(at, *chain);
                    }
                }
                FirewallChange::RemoveChain(chain) => {
                    self.foreign.retain(|rule| !(rule.family == chain.family && rule.is_in_chain(chain.name)));
                    let range = self.chain_range(chain.family, chain.name);
                    self.rules.drain(range);
                    self.chains.retain(|kept| kept != chain);
                }
                FirewallChange::RemoveForeignChain(chain) => {
                    self.foreign.retain(|rule| !(rule.family == chain.family && rule.is_in(&chain.table, &chain.name)));
                    self.foreign_chains.retain(|kept| kept != chain);
                }
                FirewallChange::DeleteRule(rule) => {
                    let range = self.chain_range(rule.family, rule.chain);
                    if let Some(at) = self.rules[range.clone()].iter().position(|kept| kept == rule) {
                        self.rules.remove(range.start + at);
                    }
                }
                FirewallChange::DeleteForeignRule(rule) => {
                    if let Some(at) = self.foreign.iter().position(|kept| kept == rule) {
                        self.foreign.remove(at);
                    }
                }
                FirewallChange::InsertRule { rule, index, .. } => {
                    let range = self.chain_range(rule.family, rule.chain);
                    self.rules.insert(range.start + (*index).min(range.len()), *rule);
                }
            }
        }
    }

    /// The rules of one family and chain, a slice of a canonical firewall.
    fn chain_rules(&self, family: Family, chain: ChainName) -> &[FirewallRule] {
        &self.rules[self.chain_range(family, chain)]
    }

    fn chain_range(&self, family: Family, chain: ChainName) -> Range<usize> {
        let start = self.rules.partition_point(|rule| (rule.family, rule.chain) < (family, chain));
        let end = self.rules.partition_point(|rule| (rule.family, rule.chain) <= (family, chain));
        start..end
    }
}

impl ForeignRule {
    fn is_in(&self, table: &str, chain: &str) -> bool {
        self.table == table && self.chain == chain
    }

    fn is_in_chain(&self, chain: ChainName) -> bool {
        self.is_in(chain.table(), chain.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_increasing_runs() {
        assert_eq!(longest_increasing(&[]), Vec::<usize>::new());
        assert_eq!(longest_increasing(&[0, 1, 2]), [0, 1, 2]);
        assert_eq!(longest_increasing(&[2, 0, 3, 1, 4]), [1, 3, 4]);
        assert_eq!(longest_increasing(&[3, 2, 1]).len(), 1);
    }
}
