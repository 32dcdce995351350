//! The mesh agent: the reconcile loop that composes a cluster backend and a data plane, its
//! flags, HTTP endpoints, and the offline tools.
//!
//! [`reconciler::Reconciler`] makes the agent's decisions as a state machine without I/O;
//! [`driver::Driver`] runs it with tokio against any cluster backend, data plane and host, so
//! other controllers can embed it; [`run`] composes it with the Kubernetes or file backend
//! (`mesh_kube::api`, `mesh_kube::file`) and the Linux data plane, with Kilo's flags. The
//! offline tools are in [`cli`]: `plan` (what the agent on a node would configure, as JSON or text), `showconf` and
//! `graph` (as `kgctl` prints them) and `crd` (the Peer CRD).
//!
//! # Features
//!
//! Everything but the reconciler is optional, so an embedder compiles only what it uses:
//! `driver` (tokio), `http` (axum, Prometheus), `netlink` (the Linux data plane and host reading, from mesh-netlink),
//! `kube` (the Kubernetes and file backends), `cli` (the binary and the offline tools). All are
//! on by default; `--no-default-features` builds [`reconciler`] on mesh-core alone.
#![warn(missing_docs)]

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod cni;
#[cfg(feature = "driver")]
pub mod driver;
#[cfg(feature = "cli")]
pub mod flags;
#[cfg(feature = "http")]
pub mod graph_render;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "http")]
pub mod http_listener;
pub mod iptables_operations;
#[cfg(feature = "cli")]
pub mod key;
pub mod local;
#[cfg(feature = "cli")]
pub mod logging;
#[cfg(feature = "http")]
pub mod metrics;
#[cfg(feature = "cli")]
pub mod probe;
#[cfg(feature = "http")]
pub mod process_metrics;
pub mod reconciler;
#[cfg(feature = "cli")]
pub mod resolve;
#[cfg(feature = "cli")]
pub mod run;
#[cfg(feature = "http")]
pub mod status;
