//! The mesh agent: the reconcile loop that composes a cluster backend and a data plane, its
//! flags, HTTP endpoints and the offline CLI.
//!
//! Not implemented yet: this crate is filled by the mesh-agent and CLI issues. Until then the
//! runnable entry point is `cargo run -p mesh-core --example three-locations`.
#![warn(missing_docs)]
