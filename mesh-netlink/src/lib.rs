//! The Linux data plane of the mesh: WireGuard (kernel or userspace), links, addresses, routes,
//! rules, the IPIP tunnel and iptables, implementing [`mesh_core::backend::Dataplane`] with
//! minimal diffs.
//!
//! [`LinuxDataplane`] writes exactly the operations of a [`mesh_core::Plan`]: a steady-state
//! resync writes nothing, a change touches only what changed, and WireGuard peers are added,
//! updated and removed one by one (never `replace_peers`), so established sessions survive.
//!
//! What the mesh owns, and so what [`observe`](mesh_core::backend::Dataplane::observe) reports
//! and [`clean_up`](mesh_core::backend::Dataplane::clean_up) removes:
//!
//! * the WireGuard interface (`kilo0`): its state, MTU, addresses (except IPv6 link-local ones),
//!   listen port and every peer;
//! * routes with protocol [`ROUTE_PROTOCOL`] (107) in any table, and everything in table 1107;
//! * policy rules that look up table 1107 (installed with priority 32765 and the `ToTable` action);
//! * the tunnel's address, and the `tunl0` device when this data plane created it
//!   (`cilium_tunl` and `flannel.1` are never created or deleted);
//! * iptables chains named `KILO-*` with their rules, and rules in built-in chains that carry a
//!   `Kilo:` comment or jump to a `KILO-*` chain (see the `firewall` module docs).
//!
//! Nothing else is ever replaced or deleted. A route the plan wants where the kernel holds a
//! route that is not the mesh's (same table, destination and metric: the host's default route,
//! a connected network) is left out, the rest of the plan applied, and the conflict reported
//! naming both routes ([`Error::RouteConflicts`]). A route through the WireGuard interface
//! counts as the mesh's whatever its protocol, so a route Kilo left there is replaced.
//!
//! [`LinkWatch`] turns the kernel's link and route notifications into
//! [`mesh_core::backend::LinkChange`]s for the devices the data plane uses and the mesh's routes,
//! so that the agent repairs at once a device that came back (a restarted wireguard-go) or a
//! route deleted by hand.
//!
//! Several network namespaces can be driven from one process ([`Namespace`]): the rtnetlink
//! socket is opened inside the namespace, and `iptables-restore` and WireGuard calls run on a
//! thread that entered it. Userspace WireGuard UAPI sockets live in one global directory
//! (`/var/run/wireguard`), so such namespaces need distinct interface names.
#![warn(missing_docs)]

mod dataplane;
mod error;
mod firewall;
mod handshake;
pub mod host;
mod link;
mod link_watch;
mod netns;
mod route;
mod rule;
mod tunnel;
mod wireguard;

pub use dataplane::{DataplaneConfig, LinuxDataplane};
pub use error::{Error, Result, RouteConflict};
pub use firewall::parse_iptables_save;
pub use link_watch::LinkWatch;
pub use mesh_core::firewall::{CHAIN_PREFIX, COMMENT_PREFIX};
pub use netns::Namespace;
pub use route::ROUTE_PROTOCOL;
pub use tunnel::{CILIUM_TUNNEL, IPIP_OVERHEAD, ipip_link_message};
pub use wireguard::{WireGuardBackend, kernel_module_available, uapi_socket_path};
