//! One WireGuard peer per public key: which entry of the local configuration owns a key that
//! several objects announce, and the warning that names both.
//!
//! A node can announce another node's key, and a `Peer` can reuse one (Kilo's own test fixture
//! does). WireGuard holds one peer per key and ignores a peer with the device's own key, so a
//! desired state that wants such a peer is never reached: the agent would add it on every pass.
//! The owner is decided in a fixed order: the local node first (its key is its own), then the
//! other segments in segment order, then the `Peer`s by name. Later entries get no WireGuard
//! peer here; their routes and firewall rules stay as Kilo computes them.

use std::collections::hash_map::Entry::{Occupied, Vacant};

use rustc_hash::FxHashMap;

use crate::diagnostics::{ObjectKind, Warning};
use crate::{Key, Topology};

/// An entry of the local node's WireGuard configuration, or the local node itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// The local node: its key is the device's own.
    Local,
    /// A segment outside the local location, by index in `Topology::segments`.
    Segment(usize),
    /// A `Peer`, by index in `Topology::peers`.
    Peer(usize),
}

impl Topology {
    /// The entries (segments and Peers) of the local WireGuard configuration, each with its
    /// key, in the order of `Topology::kilo_peer_sources`: empty for a node that is not a leader.
    fn key_entries(&self) -> impl Iterator<Item = (Entry, &Key)> {
        let leader = self.leader;
        let segments = self
            .segments
            .iter()
            .enumerate()
            .filter(move |(index, _)| leader && !self.is_local_location_at(*index))
            .map(|(index, segment)| (Entry::Segment(index), &segment.key));
        let peers = self
            .peers
            .iter()
            .enumerate()
            .filter(move |_| leader)
            .map(|(index, peer)| (Entry::Peer(index), &peer.public_key));
        segments.chain(peers)
    }

    /// Per entry of [`Topology::key_entries`], in that order: `None` when it owns its key,
    /// else the entry that owns it.
    pub(crate) fn key_owners(&self) -> Vec<Option<Entry>> {
        // Sized once: a leader of a 5,000-node mesh in `full` granularity has 5,000 entries.
        let entries = if self.leader { 1 + self.segments.len() + self.peers.len() } else { 0 };
        let mut owners: FxHashMap<&Key, Entry> = FxHashMap::with_capacity_and_hasher(entries, Default::default());
        if self.leader {
            owners.insert(&self.local().key, Entry::Local);
        }
        self.key_entries()
            .map(|(entry, key)| match owners.entry(key) {
                Occupied(owner) => Some(*owner.get()),
                Vacant(vacant) => {
                    vacant.insert(entry);
                    None
                }
            })
            .collect()
    }

    /// One warning per entry that gets no WireGuard peer because an earlier one owns its key,
    /// from the [`Topology::key_owners`] of this topology.
    pub(crate) fn duplicate_key_warnings(&self, owners: &[Option<Entry>]) -> Vec<Warning> {
        self.key_entries()
            .zip(owners.iter().copied())
            .filter_map(|((entry, key), owner)| {
                let owner = owner?;
                let (kind, name, annotation) = match entry {
                    Entry::Segment(index) => (ObjectKind::Node, self.leader_name(index), "kilo.squat.ai/key"),
                    Entry::Peer(index) => (ObjectKind::Peer, self.peers[index].name.clone(), "spec.publicKey"),
                    Entry::Local => return None,
                };
                let reason = match owner {
                    Entry::Local => format!(
                        "is the public key of the local node {}, which WireGuard cannot have as a peer; {} gets no WireGuard peer here",
                        self.hostname,
                        self.describe(entry)
                    ),
                    owner => format!(
                        "is already the public key of {}; {} gets no WireGuard peer here",
                        self.describe(owner),
                        self.describe(entry)
                    ),
                };
                Some(Warning { kind, name, annotation: Some(annotation.to_owned()), value: Some(key.to_string()), reason })
            })
            .collect()
    }

    fn leader_name(&self, segment: usize) -> String {
        let segment = &self.segments[segment];
        segment.members[segment.leader].name.clone()
    }

    fn describe(&self, entry: Entry) -> String {
        match entry {
            Entry::Local => format!("the local node {}", self.hostname),
            Entry::Segment(index) => {
                format!("node {} (segment {})", self.leader_name(index), self.segments[index].name)
            }
            Entry::Peer(index) => format!("peer {}", self.peers[index].name),
        }
    }
}
