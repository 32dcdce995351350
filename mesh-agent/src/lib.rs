//! The mesh agent: the reconcile loop that composes a cluster backend and a data plane, its
//! flags, HTTP endpoints, and the offline tools.
//!
//! [`reconciler::Reconciler`] makes the agent's decisions as a state machine without I/O;
//! [`driver::Driver`] runs it with tokio against any cluster backend, data plane and host, so
//! other controllers can embed it; [`run`] composes it with the Kubernetes or file backend
//! (`mesh_kube::api`, `mesh_kube::file`) and the Linux data plane, with Kilo's flags. The
//! offline tools are in [`cli`]: `plan` (what the agent on a node would configure, as JSON or text), `showconf` and
//! `graph` (as `kgctl` prints them) and `crd` (the Peer CRD).
#![warn(missing_docs)]

pub mod cli;
pub mod cni;
pub mod driver;
pub mod flags;
pub mod host;
pub mod http;
pub mod key;
pub mod local;
pub mod logging;
pub mod metrics;
pub mod reconciler;
pub mod resolve;
pub mod run;
