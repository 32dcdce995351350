//! Kubernetes objects for the mesh: Node and Peer translation, the Peer CRD, and the two
//! [`ClusterBackend`](mesh_core::backend::ClusterBackend)s side by side: [`api::KubeBackend`]
//! (the Kubernetes API, feature `api`, on by default) and [`file::FileBackend`] (a directory of
//! Node and Peer files, no Kubernetes client needed).
//!
//! - [`annotations`]: every `kilo.squat.ai/...` key and the exact text a node publishes.
//! - [`translate`]: pure functions from a `Node` or a `Peer` to the core's model, with Kilo's
//!   formats and fallbacks; every ignored value comes back as a [`mesh_core::Warning`].
//! - [`crd`]: the `Peer` custom resource (`kilo.squat.ai/v1alpha1`) and its CRD with Kilo's
//!   validation built in ([`crd::crd_yaml`] is `deploy/base/crds.yaml`).
//! - [`Translated`]: the one step from translated objects to a [`mesh_core::ClusterSnapshot`]
//!   and its [`Diagnostics`], shared by both backends and the offline tools.
//! - [`api`]: `KubeBackend` watches Nodes and Peers, hands out coalesced snapshots, publishes
//!   the local node's annotations and removes them on clean-up; [`api::client`] builds the
//!   Kubernetes client.
//! - [`file`](mod@file): `FileBackend`, the same over a directory of files, and [`file::write_atomically`].
//!
//! # Example: the backend in an agent
//!
//! ```no_run
//! # #[cfg(feature = "api")] mod example {
//! use mesh_core::backend::{ClusterBackend, LocalAnnouncement};
//! use mesh_kube::{api::KubeBackend, annotations::DEFAULT_TOPOLOGY_LABEL};
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
//! # }
//! ```
#![warn(missing_docs)]

pub mod annotations;
#[cfg(feature = "api")]
pub mod api;
mod cluster;
pub mod crd;
pub mod file;
#[cfg(feature = "api")]
mod pacing;
pub mod translate;

#[cfg(feature = "api")]
pub use api::{FIELD_MANAGER, KubeBackend, RetryPolicy};
pub use cluster::{Diagnostics, Translated};

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in this crate. Each variant names the operation and the object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Patching the agent's annotations on its Node failed (after retries, if retryable).
    #[cfg(feature = "api")]
    #[error("failed to patch the annotations of node {node:?}: {source}")]
    PatchNode {
        /// The Node name.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The Peer CRD is not installed or cannot be read.
    #[cfg(feature = "api")]
    #[error("failed to get CustomResourceDefinition {name:?} (is deploy/base/crds.yaml applied?): {source}")]
    GetCrd {
        /// The CRD name, `peers.kilo.squat.ai`.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Listing Nodes or Peers failed.
    #[cfg(feature = "api")]
    #[error("failed to list {resource}: {source}")]
    List {
        /// `nodes` or `peers`.
        resource: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A kubeconfig cannot be read or used.
    #[error("failed to read kubeconfig {}: {message}", path.display())]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No kubeconfig was given and none was found (in-cluster, `$KUBECONFIG`, `~/.kube/config`).
    #[error("failed to find a Kubernetes configuration: {0}")]
    NoConfiguration(String),
    /// `--master` is not a URL.
    #[error("invalid value {master:?} for --master: {message}")]
    Master {
        /// The value given.
        master: String,
        /// Why it is invalid.
        message: String,
    },
    /// The Kubernetes client cannot be built from its configuration.
    #[cfg(feature = "api")]
    #[error("failed to create a Kubernetes client: {source}")]
    Client {
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The file backend's directory or its `nodes/` subdirectory is missing or not a directory.
    #[error("failed to open the file backend directory {}: {source}", path.display())]
    OpenDirectory {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A node name that cannot be a file name in `nodes/`.
    #[error("invalid node name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// The node the file backend announces has no file: the file backend does not invent Nodes.
    #[error(
        "node file {} does not exist: the file backend publishes only nodes that have a file \
         (e.g. `kubectl get node NAME -o yaml`)",
        path.display()
    )]
    MissingNodeFile {
        /// The path looked for (the `.yaml` one when none of the extensions exists).
        path: PathBuf,
    },
    /// Reading a node file failed.
    #[error("failed to read node file {}: {source}", path.display())]
    ReadNodeFile {
        /// The node file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A node file to rewrite is not a valid Node; it is left as it is.
    #[error("failed to parse node file {}: {message}", path.display())]
    ParseNodeFile {
        /// The node file.
        path: PathBuf,
        /// What is wrong, with the line where the parser knows it.
        message: String,
    },
    /// Writing a node file failed; the file is unchanged.
    #[error("failed to write node file {}: {source}", path.display())]
    WriteNodeFile {
        /// The node file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
