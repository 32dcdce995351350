//! Kubernetes for the mesh: Node and Peer translation, the Peer CRD, and the live
//! [`mesh_core::backend::ClusterBackend`].
//!
//! Not implemented yet: this crate is filled by the mesh-kube issue. It deliberately exports
//! nothing, so that nothing can depend on a backend that does not exist.
#![warn(missing_docs)]
