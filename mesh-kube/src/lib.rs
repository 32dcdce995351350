//! Kubernetes for the mesh: Node and Peer translation, the Peer CRD, and the live
//! [`ClusterBackend`](mesh_core::backend::ClusterBackend).
//!
//! - [`annotations`]: every `kilo.squat.ai/...` key and the exact text a node publishes.
//! - [`translate`]: pure functions from a `Node` or a `Peer` to the core's model, with Kilo's
//!   formats and fallbacks; every ignored value comes back as a [`mesh_core::Warning`].
//! - [`crd`]: the `Peer` custom resource (`kilo.squat.ai/v1alpha1`) and its CRD with Kilo's
//!   validation built in ([`crd::crd_yaml`] is `deploy/base/crds.yaml`).
//! - [`KubeBackend`]: watches Nodes and Peers, hands out coalesced [`mesh_core::ClusterSnapshot`]s,
//!   publishes the local node's annotations and removes them on clean-up.
//!
//! # Example: the backend in an agent
//!
//! ```no_run
//! use mesh_core::backend::{ClusterBackend, LocalAnnouncement};
//! use mesh_kube::{KubeBackend, annotations::DEFAULT_TOPOLOGY_LABEL};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = kube::Client::try_default().await?;
//! let mut backend = KubeBackend::new(client, "node-a", DEFAULT_TOPOLOGY_LABEL);
//! backend.check_crd().await?; // as Kilo does at start: is the Peer CRD installed?
//! while let Some(snapshot) = backend.next_snapshot().await? {
//!     for skipped in &backend.diagnostics().skipped {
//!         eprintln!("skipped {:?} {}: {}", skipped.kind, skipped.name, skipped.reason);
//!     }
//!     // ... compute the topology from `snapshot`, apply it, then publish ourselves:
//!     backend.announce(&LocalAnnouncement { hostname: "node-a".into(), ..Default::default() }).await?;
//! }
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod annotations;
mod backend;
pub mod crd;
pub mod translate;

pub use backend::{Diagnostics, FIELD_MANAGER, KubeBackend, RetryPolicy};

/// Everything that can go wrong in this crate. Each variant names the operation and the object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Patching the agent's annotations on its Node failed (after retries, if retryable).
    #[error("failed to patch the annotations of node {node:?}: {source}")]
    PatchNode {
        /// The Node name.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The Peer CRD is not installed or cannot be read.
    #[error("failed to get CustomResourceDefinition {name:?} (is deploy/base/crds.yaml applied?): {source}")]
    GetCrd {
        /// The CRD name, `peers.kilo.squat.ai`.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
