//! The pluggable edges of the system: where the cluster comes from and where the data plane goes.
//!
//! Both traits are object safe (`async-trait`), so an agent can pick its backends at run time.
//! With the `mock` feature, `mockall` generates `MockClusterBackend` and `MockDataplane`.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::net::SocketAddr;

use ipnet::IpNet;

use crate::{ClusterSnapshot, Endpoint, Granularity, Key, NodeSpec, ObservedState, Plan, Skipped, Warning};

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

    /// Applies the plan's operations in order. Its semantics are [`Plan::apply_to`].
    async fn apply(&mut self, plan: &Plan) -> Result<(), BackendError>;

    /// Removes everything the mesh created on this node.
    async fn clean_up(&mut self) -> Result<(), BackendError>;
}
