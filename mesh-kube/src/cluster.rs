//! From translated Nodes and Peers to a [`ClusterSnapshot`]: the one step the Kubernetes
//! backend, the file backend and the offline tools share, with one [`Diagnostics`] type for what
//! translation left out or ignored.

use mesh_core::backend::SnapshotDiagnostics;
use mesh_core::{ClusterSnapshot, NodeSpec, PeerSpec, Skipped, Warning};

use crate::file::FileProblem;
use crate::translate::{TranslatedNode, TranslatedPeer};

/// What a snapshot left out or ignored.
///
/// Every [`FileProblem`] also appears in `skipped` (the object is left out) or in `warnings`
/// (its last valid version is used), under the name of its file, so a consumer that handles
/// both backends alike sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// Objects left out of the snapshot, with the reason: Peers Kilo's validation rejects, and
    /// (file backend) files that never held a valid object.
    pub skipped: Vec<Skipped>,
    /// Values that were ignored while their object stayed in the snapshot, and (file backend)
    /// files whose last valid version is used.
    pub warnings: Vec<Warning>,
    /// (File backend) files that could not be used, by path.
    pub files: Vec<FileProblem>,
}

impl Diagnostics {
    /// What the agent reports: the skipped objects and the warnings (every file problem is
    /// one of them already).
    pub fn for_agent(&self) -> SnapshotDiagnostics {
        SnapshotDiagnostics { skipped: self.skipped.clone(), warnings: self.warnings.clone() }
    }
}

/// Translated Nodes and Peers with their diagnostics: what a snapshot is made of. Equal values
/// mean there is nothing new to report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Translated {
    /// The nodes, in the order given.
    pub nodes: Vec<NodeSpec>,
    /// The peers that passed Kilo's validation, in the order given.
    pub peers: Vec<PeerSpec>,
    /// What was left out or ignored: `diagnostics` as given to [`Translated::collect`], then the
    /// translation warnings of every Node, then the Peers' skips and warnings.
    pub diagnostics: Diagnostics,
}

impl Translated {
    /// Collects translations into snapshot parts, after `diagnostics` (what was found before
    /// translation, e.g. unreadable files).
    ///
    /// ```
    /// use k8s_openapi::api::core::v1::Node;
    /// use mesh_kube::{Diagnostics, Translated, translate};
    ///
    /// let mut node = Node::default();
    /// node.metadata.name = Some("a".into());
    /// let node = translate::node(&node, mesh_kube::annotations::DEFAULT_TOPOLOGY_LABEL);
    /// let translated = Translated::collect([&node], [], Diagnostics::default());
    /// assert_eq!(translated.snapshot(1_767_225_600).nodes[0].name, "a");
    /// ```
    pub fn collect<'a>(
        nodes: impl IntoIterator<Item = &'a TranslatedNode>,
        peers: impl IntoIterator<Item = &'a Result<TranslatedPeer, Skipped>>,
        mut diagnostics: Diagnostics,
    ) -> Translated {
        let nodes = nodes
            .into_iter()
            .map(|node| {
                diagnostics.warnings.extend(node.warnings.iter().cloned());
                node.spec.clone()
            })
            .collect();
        let mut specs = Vec::new();
        for peer in peers {
            match peer {
                Ok(peer) => {
                    diagnostics.warnings.extend(peer.warnings.iter().cloned());
                    specs.push(peer.spec.clone());
                }
                Err(skipped) => diagnostics.skipped.push(skipped.clone()),
            }
        }
        Translated { nodes, peers: specs, diagnostics }
    }

    /// The snapshot, judged at `now` (Unix seconds).
    pub fn snapshot(&self, now: i64) -> ClusterSnapshot {
        ClusterSnapshot { nodes: self.nodes.clone(), peers: self.peers.clone(), now }
    }
}
