//! The Linux data plane of the mesh: WireGuard (kernel or userspace), links, addresses, routes,
//! rules, the IPIP tunnel and iptables, implementing [`mesh_core::backend::Dataplane`].
//!
//! Not implemented yet: this crate is filled by the mesh-netlink issue. It deliberately exports
//! nothing, so that nothing can depend on a data plane that does not exist.
#![warn(missing_docs)]
