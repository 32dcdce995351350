//! The mesh agent: the reconcile loop that composes a cluster backend and a data plane, its
//! flags, HTTP endpoints, and the offline tools.
//!
//! [`agent::Agent`] is the reconcile loop, generic over its cluster backend and data plane so
//! other controllers can embed it; [`run`] composes it with the Kubernetes or file backend
//! ([`file_backend`]) and the Linux data plane, with Kilo's flags. The offline tools are in
//! [`cli`]: `plan` (what the agent on a node would configure, as JSON or text), `showconf` and
//! `graph` (as `kgctl` prints them) and `crd` (the Peer CRD).
#![warn(missing_docs)]

pub mod agent;
pub mod cli;
pub mod cni;
pub mod file_backend;
pub mod graph_render;
pub mod host;
pub mod http;
pub mod http_listener;
pub mod key;
pub mod local;
pub mod logging;
pub mod metrics;
pub mod process_metrics;
pub mod run;
