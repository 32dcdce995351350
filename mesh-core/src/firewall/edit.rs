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

use std::cmp::Ordering;
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
    /// `desired`; `None` when they already agree. Both must be canonical
    /// ([`Firewall::canonicalize`]), as `DesiredState::from_topology` and observations make them.
    /// Foreign rules and chains of `desired` are ignored: they can only be observed.
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
        debug_assert!(current.is_canonical() && desired.is_canonical(), "firewalls must be canonical");
        let (have_chains, have_rules, have_foreign, have_foreign_chains) = current.family_parts(family);
        let (want_chains, want_rules, want_foreign, want_foreign_chains) = desired.family_parts(family);
        // One walk finds the first rule that differs; in the steady state, none does.
        let differs_from = first_difference(have_rules, want_rules);
        if differs_from.is_none()
            && (have_chains, have_foreign, have_foreign_chains) == (want_chains, want_foreign, want_foreign_chains)
        {
            return None;
        }
        let (have, want) = (ChainSlices::of(have_rules), ChainSlices::of(want_rules));
        // Chains before that rule's chain are the same in both lists, and that chain differs (a
        // rule of it differs, or one list has more of its rules): only later ones are compared.
        let first_changed = differs_from.map_or(ChainName::ALL.len(), |at| {
            let chain_at =
                |rules: &[FirewallRule]| rules.get(at).map_or(ChainName::ALL.len(), |rule| rule.chain as usize);
            chain_at(have_rules).min(chain_at(want_rules))
        });
        let same_rules = ChainName::ALL.map(|chain| match (chain as usize).cmp(&first_changed) {
            Ordering::Less => true,
            Ordering::Equal => false,
            Ordering::Greater => have[chain] == want[chain],
        });
        let mut changes = Vec::new();

        // Our chains: rewrite the ones whose content differs, remove the unwanted ones.
        let wanted = |name: ChainName| want_chains.contains(&Chain { family, name }) || !want[name].is_empty();
        for name in ChainName::OWNED.into_iter().filter(|name| wanted(*name)) {
            let unchanged = have_chains.contains(&Chain { family, name })
                && same_rules[name as usize]
                && !have_foreign.iter().any(|rule| rule.is_in_chain(name));
            if !unchanged {
                changes.push(FirewallChange::WriteChain { chain: Chain { family, name }, rules: want[name].to_vec() });
            }
        }
        for chain in have_chains.iter().filter(|chain| !wanted(chain.name)) {
            changes.push(FirewallChange::RemoveChain(*chain));
        }
        for chain in have_foreign_chains {
            changes.push(FirewallChange::RemoveForeignChain(chain.clone()));
        }

        // Our rules in the chains we share, chain by chain.
        for chain in ChainName::SHARED {
            let foreign: Vec<&ForeignRule> = have_foreign.iter().filter(|rule| rule.is_in_chain(chain)).collect();
            if foreign.is_empty() && same_rules[chain as usize] {
                continue;
            }
            let at_top = chain != ChainName::Input;
            let layout = layout.chain(family, chain);
            edit_shared_chain(&entries(&have[chain], &foreign, layout), &want[chain], at_top, &mut changes);
        }
        // Rules of ours in chains the mesh does not use (another version's): they go.
        for rule in have_foreign {
            if !is_owned_chain(&rule.chain) && ChainName::parse(&rule.table, &rule.chain).is_none() {
                changes.push(FirewallChange::DeleteForeignRule(rule.clone()));
            }
        }
        (!changes.is_empty()).then_some(FirewallEdit { family, changes })
    }
}

/// The rules of each chain of one family of a canonical firewall, found once.
struct ChainSlices<'a> {
    rules: &'a [FirewallRule],
    /// Where each chain's rules start in `rules`, in `ChainName` order, and where the last ends.
    bounds: [usize; ChainName::ALL.len() + 1],
}

impl<'a> ChainSlices<'a> {
    /// `rules`: one family's, in canonical order.
    fn of(rules: &'a [FirewallRule]) -> Self {
        // The first chain starts at 0 and the last ends at the end: four searches.
        let mut bounds = [0; ChainName::ALL.len() + 1];
        for (bound, chain) in bounds[1..ChainName::ALL.len()].iter_mut().zip(&ChainName::ALL[1..]) {
            *bound = rules.partition_point(|rule| rule.chain < *chain);
        }
        bounds[ChainName::ALL.len()] = rules.len();
        ChainSlices { rules, bounds }
    }
}

impl<'a> std::ops::Index<ChainName> for ChainSlices<'a> {
    type Output = [FirewallRule];

    fn index(&self, chain: ChainName) -> &[FirewallRule] {
        &self.rules[self.bounds[chain as usize]..self.bounds[chain as usize + 1]]
    }
}

/// The index of the first rule that differs between the lists (where the shorter one ends, if it
/// is the start of the other); `None` when they are equal.
fn first_difference(have: &[FirewallRule], want: &[FirewallRule]) -> Option<usize> {
    let same_start = have.iter().zip(want).position(|(have, want)| have != want);
    same_start.or((have.len() != want.len()).then(|| have.len().min(want.len())))
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
