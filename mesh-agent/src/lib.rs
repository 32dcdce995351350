//! The mesh agent: the reconcile loop that composes a cluster backend and a data plane, its
//! flags, HTTP endpoints, and the offline tools.
//!
//! The offline tools are in [`cli`]: `plan` (what the agent on a node would configure, as JSON
//! or text), `showconf` and `graph` (as `kgctl` prints them) and `crd` (the Peer CRD). The agent
//! itself is filled in by the agent issue.
#![warn(missing_docs)]

pub mod cli;
