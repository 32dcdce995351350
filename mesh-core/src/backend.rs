//! The pluggable edges of the system: where the cluster comes from and where the data plane goes.
//!
//! Both traits are object safe (`async-trait`), so an agent can pick its backends at run time.
//! With the `mock` feature, `mockall` generates `MockClusterBackend` and `MockDataplane`.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::net::SocketAddr;

use ipnet::IpNet;

use crate::{
    ClusterSnapshot, Endpoint, Granularity, Key, NodeSpec, ObservedState, Plan, Route, RouteKey, Skipped, Warning,
};

/// An error from a backend, naming the operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {source}")]
pub struct BackendError {
    /// What was being done, e.g. `failed to patch node "a"`.
    pub operation: String,
    /// The underlying error.
    #[source]
    pub source: Box<dyn StdError + Send + Sync>,
}

impl BackendError {
    /// An error for `operation` caused by `source`.
    pub fn new(operation: impl Into<String>, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        BackendError { operation: operation.into(), source: source.into() }
    }
}

/// What a node publishes about itself (Kilo's annotations, §2.2 of the reference).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalAnnouncement {
    /// The node name.
    pub hostname: String,
    /// The node's WireGuard public key.
    pub key: Option<Key>,
    /// The endpoint in use.
    pub endpoint: Option<Endpoint>,
    /// The private IP in use, with its mask.
    pub internal_ip: Option<IpNet>,
    /// The WireGuard CIDR while the node is a leader.
    pub wireguard_ip: Option<IpNet>,
    /// Heartbeat, Unix seconds.
    pub last_seen: i64,
    /// NAT endpoints this node observed, by public key.
    pub discovered_endpoints: BTreeMap<Key, SocketAddr>,
    /// The agent's granularity.
    pub granularity: Granularity,
    /// The CNI-compatibility IP (Cilium's `cilium_host` address).
    pub cni_compatibility_ip: Option<IpNet>,
    /// The agent takes part in fast leader failover (the `failover-v1` capability).
    pub failover_capable: bool,
    /// The leader this node found unreachable over the data path (its failover claim).
    pub leader_unreachable: Option<String>,
}

impl LocalAnnouncement {
    /// What `node` (the local node as this agent runs it) publishes: its key, endpoint,
    /// internal, WireGuard and CNI-compatibility IPs, discovered endpoints, failover capability
    /// and claim, with a heartbeat
    /// at `last_seen` and the agent's granularity.
    pub fn of(node: &NodeSpec, granularity: Granularity, last_seen: i64) -> Self {
        LocalAnnouncement {
            hostname: node.name.clone(),
            key: node.key,
            endpoint: node.endpoint.clone(),
            internal_ip: node.internal_ip,
            wireguard_ip: node.wireguard_ip,
            last_seen,
            discovered_endpoints: node.discovered_endpoints.clone(),
            granularity,
            cni_compatibility_ip: node.cni_compatibility_ip,
            failover_capable: node.failover_capable,
            leader_unreachable: node.leader_unreachable.clone(),
        }
    }
}

/// What a backend left out of, or ignored in, the last snapshot it returned: objects it could
/// not translate (an invalid Peer, a malformed file) and values it ignored (an invalid
/// annotation). The agent logs each once, counts them and shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotDiagnostics {
    /// Objects left out of the snapshot, with the reason.
    pub skipped: Vec<Skipped>,
    /// Values ignored while their object stayed in the snapshot.
    pub warnings: Vec<Warning>,
}

/// A route the mesh wants whose place (table, destination, metric) a route that is not the
/// mesh's holds: the host's default route, a connected network, another CNI's route. The data
/// plane never replaces or deletes such a route; it leaves the wanted one out and says so.
///
/// ```
/// use mesh_core::backend::RouteConflict;
/// use mesh_core::{Dev, Route};
///
/// let route = Route { dst: "0.0.0.0/0".parse().unwrap(), gateway: None, dev: Dev::Kilo, src: None, table: 254, onlink: false };
/// let conflict = RouteConflict {
///     route,
///     wanted: "default dev kilo0 proto 107".into(),
///     existing: "default via 192.168.1.1 dev eth0 proto dhcp".into(),
/// };
/// assert_eq!(
///     conflict.to_string(),
///     "refused to replace route default via 192.168.1.1 dev eth0 proto dhcp (not the mesh's) with default dev kilo0 proto 107"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteConflict {
    /// The mesh's route.
    pub route: Route,
    /// The mesh's route, as `ip route` prints it.
    pub wanted: String,
    /// The route in its place, as `ip route` prints it.
    pub existing: String,
}

impl std::fmt::Display for RouteConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused to replace route {} (not the mesh's) with {}", self.existing, self.wanted)
    }
}

/// A network device the data plane uses (the WireGuard interface, the private interface, the
/// tunnel) appeared, disappeared or changed state, or a route of the mesh was deleted, as the
/// kernel announced it. The agent reconciles at once instead of waiting for its next timer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// The device appeared (created, renamed to its name, moved into the namespace).
    Appeared {
        /// Its name.
        interface: String,
    },
    /// The device disappeared.
    Disappeared {
        /// Its name.
        interface: String,
    },
    /// The device went up or down, its carrier came or went, or its MTU changed.
    Changed {
        /// Its name.
        interface: String,
        /// Administratively up.
        up: bool,
        /// Its MTU.
        mtu: Option<u32>,
    },
    /// A route of the mesh (protocol 107, or in table 1107) was deleted: by the agent itself,
    /// or by someone else (`ip route del`, a network manager), and then it is put back.
    RouteDeleted(RouteKey),
    /// Notifications were lost (the socket's buffer overflowed): anything may have changed.
    Missed,
}

impl std::fmt::Display for LinkChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkChange::Appeared { interface } => write!(f, "interface {interface} appeared"),
            LinkChange::Disappeared { interface } => write!(f, "interface {interface} disappeared"),
            LinkChange::Changed { interface, up, mtu } => {
                write!(f, "interface {interface} changed: {}", if *up { "up" } else { "down" })?;
                match mtu {
                    Some(mtu) => write!(f, ", mtu {mtu}"),
                    None => Ok(()),
                }
            }
            LinkChange::RouteDeleted(route) => write!(f, "route {} in table {} deleted", route.dst, route.table),
            LinkChange::Missed => f.write_str("notifications of links and routes were lost"),
        }
    }
}

/// Where nodes and peers come from, and where the local node publishes itself.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait::async_trait]
pub trait ClusterBackend: Send {
    /// Waits for the next snapshot of the cluster. Bursts of changes may be coalesced into one
    /// snapshot. `Ok(None)` means the backend has ended.
    async fn next_snapshot(&mut self) -> Result<Option<ClusterSnapshot>, BackendError>;

    /// What translation left out of or ignored in the last snapshot returned (nothing by
    /// default: a backend whose objects need no translation).
    fn diagnostics(&self) -> SnapshotDiagnostics {
        SnapshotDiagnostics::default()
    }

    /// Publishes the local node's announcement, changing only the fields this agent owns.
    async fn announce(&mut self, announcement: &LocalAnnouncement) -> Result<(), BackendError>;

    /// Removes everything `announce` published for `node`.
    async fn clean_up(&mut self, node: &str) -> Result<(), BackendError>;
}

/// The node's data plane: only what the mesh owns (its interface, routes, rules and chains).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait::async_trait]
pub trait Dataplane: Send {
    /// Reads what the mesh owns on this node now.
    async fn observe(&mut self) -> Result<ObservedState, BackendError>;

    /// Applies the plan's operations in order. Its semantics are [`Plan::apply_to`], but for
    /// the routes listed by [`Dataplane::route_conflicts`] afterwards: left out, and not a failure.
    async fn apply(&mut self, plan: &Plan) -> Result<(), BackendError>;

    /// The routes the last [`Dataplane::apply`] left out because a route that is not the mesh's
    /// holds their place (none by default: a data plane that owns everything it touches).
    fn route_conflicts(&self) -> Vec<RouteConflict> {
        Vec::new()
    }

    /// Removes everything the mesh created on this node.
    async fn clean_up(&mut self) -> Result<(), BackendError>;
}
