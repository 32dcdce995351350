//! The reconciler's vocabulary: the time it is given, its configuration, the actions it asks
//! for, the events it takes and the reports it emits.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::iptables_operations::IptablesOperation;
use ipnet::IpNet;
use mesh_core::backend::{BackendError, LinkChange, LocalAnnouncement, RouteConflict, SnapshotDiagnostics};
use mesh_core::time::Backoff;
use mesh_core::{ClusterSnapshot, ObservedState, Options, Plan, Topology, Warning};

use super::failover::FailoverTiming;
use super::links::LinkSettling;

#[cfg(doc)]
use super::Reconciler;

/// The time at which an event happened, as two values: a monotonic instant for timers, and Unix
/// seconds for what the cluster sees (`last-seen`, readiness).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// For timers and durations.
    pub instant: Instant,
    /// Unix seconds, for heartbeats and readiness.
    pub unix: i64,
}

impl Now {
    /// The time `instant`, which is `unix` seconds after the epoch.
    pub fn new(instant: Instant, unix: i64) -> Self {
        Now { instant, unix }
    }

    /// This time plus `duration` (the Unix seconds move by the whole seconds of the duration).
    #[must_use]
    pub fn after(self, duration: Duration) -> Self {
        let seconds = i64::try_from(duration.as_secs()).unwrap_or(i64::MAX);
        Now { instant: self.instant + duration, unix: self.unix.saturating_add(seconds) }
    }
}

/// Timing and behaviour of the reconciler.
#[derive(Clone, Debug)]
pub struct Config {
    /// The topology options (hostname, granularity, subnet, MTU, …).
    pub options: Options,
    /// `--resync-period`: a full reconcile at least this often.
    pub resync_period: Duration,
    /// How often the node re-publishes its heartbeat (Kilo: 30 s).
    pub check_in_period: Duration,
    /// Delays before retrying a failed pass.
    pub retry: Backoff,
    /// Pauses between cluster reads after read errors: short, so the agent sees the cluster
    /// again within seconds of its return (the backends pace their own requests).
    pub read_retry: Backoff,
    /// Pauses between announcements while the node cannot be published. Each announcement is
    /// itself a few requests (the backend retries within it), so the cap keeps a node under one
    /// request a second against a failing API server while still trying several times within
    /// Kilo's 60 s readiness window. Reading the cluster again ends the pause at once.
    pub announce_retry: Backoff,
    /// Keep the CNI configuration's pod range equal to the node's pod CIDR (`--cni`): ask for
    /// [`Action::UpdateCni`] at every pass.
    pub update_cni: bool,
    /// `--clean-up`: remove what the agent created when it stops.
    pub clean_up: bool,
    /// How long each clean-up step may take (enforced by the driver).
    pub clean_up_timeout: Duration,
    /// Probe timing of fast leader failover (with [`Options::fast_failover`]).
    pub failover: FailoverTiming,
    /// How long publishing the node may take, retries included (enforced by the driver): a
    /// hanging API server must not hold up the next reconcile.
    pub announce_timeout: Duration,
    /// How long observing or applying the data plane may take (enforced by the driver).
    pub dataplane_timeout: Duration,
    /// How changes of the data plane's devices ([`Event::LinkChanged`]) are gathered into one
    /// pass.
    pub link_settling: LinkSettling,
}

impl Config {
    /// Kilo's timing: resync every 30 s, check-in every 30 s, retries from 1 s doubling to 30 s
    /// (announcements to 15 s, cluster reads to 4 s),
    /// clean-up on, no CNI file; an announcement may take 10 s, a data-plane step 60 s.
    pub fn new(options: Options) -> Self {
        Config {
            options,
            resync_period: Duration::from_secs(30),
            check_in_period: Duration::from_secs(30),
            retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            read_retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(4)),
            announce_retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(15)),
            update_cni: false,
            clean_up: true,
            clean_up_timeout: Duration::from_secs(8),
            failover: FailoverTiming::default(),
            announce_timeout: Duration::from_secs(10),
            dataplane_timeout: Duration::from_secs(60),
            link_settling: LinkSettling::default(),
        }
    }
}

/// One piece of I/O the reconciler needs. Answer each with the [`Event`] its variant names.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Resolve the snapshot's DNS endpoints and make its local node the node this agent runs
    /// (key, endpoint, internal IP, CNI-compatibility IP); read what can change on the host
    /// (the MTU). Answer: [`Event::Resolved`].
    Resolve(ClusterSnapshot),
    /// Read what the mesh owns in the data plane. Answer: [`Event::Observed`].
    Observe,
    /// Set the CNI configuration's pod range to `pod_cidr`. Answer: [`Event::CniUpdated`].
    UpdateCni {
        /// The local node's pod CIDR.
        pod_cidr: IpNet,
    },
    /// Apply the plan to the data plane. Answer: [`Event::Applied`].
    Apply(Plan),
    /// Publish the local node. Answer: [`Event::Announced`].
    Announce(LocalAnnouncement),
    /// Send one ICMP echo to `ip` and wait at most `timeout` for the reply. Unlike the other
    /// actions, the answer ([`Event::Probed`]) may come later, after other actions: a probe
    /// runs beside the pass and never holds it up.
    Probe {
        /// The node's private IP.
        ip: IpAddr,
        /// How long to wait for the reply.
        timeout: Duration,
    },
    /// Remove what the mesh created in the data plane. Answer: [`Event::CleanedUp`].
    CleanUpDataplane,
    /// Remove what the node published. Answer: [`Event::CleanedUp`].
    CleanUpCluster {
        /// The node's name.
        node: String,
    },
}

/// What the host said at [`Action::Resolve`].
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    /// The snapshot with DNS endpoints resolved and the local node localized.
    pub snapshot: ClusterSnapshot,
    /// Endpoints that could not be resolved.
    pub warnings: Vec<Warning>,
    /// The WireGuard MTU detected now (`--mtu auto`); `None` keeps the configured one.
    pub mtu: Option<u32>,
}

impl Resolution {
    /// The snapshot as it is: no names to resolve, nothing detected.
    pub fn unchanged(snapshot: ClusterSnapshot) -> Self {
        Resolution { snapshot, warnings: Vec::new(), mtu: None }
    }
}

/// Something that happened: news from the cluster, the answer to an [`Action`], or shutdown.
#[derive(Debug)]
pub enum Event {
    /// The cluster backend has a new snapshot.
    Snapshot(ClusterSnapshot),
    /// What the cluster backend left out of or ignored in its last snapshot (send it with
    /// each snapshot): reported with the mesh's own diagnostics, once per change.
    BackendDiagnostics(SnapshotDiagnostics),
    /// Reading the cluster failed; the reconciler pauses reading ([`Reconciler::wants_snapshots`]).
    ClusterReadFailed(BackendError),
    /// The cluster backend ended: the reconciler stops.
    ClusterEnded,
    /// Answer to [`Action::Resolve`].
    Resolved(Resolution),
    /// Answer to [`Action::Observe`].
    Observed(Result<ObservedState, BackendError>),
    /// Answer to [`Action::UpdateCni`]: whether the file changed, or why it could not be.
    CniUpdated(Result<bool, String>),
    /// What the data plane refused in the apply in flight: routes whose place a route that is
    /// not the mesh's holds. Send it just before [`Event::Applied`] (nothing sent: none). Not a
    /// failure: each is reported once, and the pass goes on.
    RouteConflicts(Vec<RouteConflict>),
    /// Answer to [`Action::Apply`].
    Applied(Result<(), BackendError>),
    /// Answer to [`Action::Announce`].
    Announced(Result<(), BackendError>),
    /// Answer to [`Action::CleanUpDataplane`] and [`Action::CleanUpCluster`].
    CleanedUp(Result<(), BackendError>),
    /// Answer to [`Action::Probe`]: whether `ip` replied in time.
    Probed {
        /// The probed IP.
        ip: IpAddr,
        /// A reply came in time.
        reachable: bool,
    },
    /// A device the data plane uses appeared, disappeared or changed state, or a route of the
    /// mesh was deleted (the kernel's link and route notifications). A pass starts once the
    /// burst of changes settled ([`Config::link_settling`]), and the backoff of failed passes
    /// starts over: a device that came back, or a route deleted by hand, is repaired at once.
    /// The deletion of a route the last plan does not want (the agent's own) changes nothing.
    LinkChanged(LinkChange),
    /// Stop: finish the pass in flight, clean up if configured, then [`Reconciler::is_stopped`].
    ShutdownRequested,
}

/// Where something failed, as Kilo's `kilo_errors_total{event}` labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorEvent {
    /// Computing or applying the mesh.
    Apply,
    /// Publishing the local node (heartbeat).
    Checkin,
    /// Reading the cluster.
    Run,
    /// Clean-up at shutdown.
    CleanUp,
}

/// Something to log or count. Each report is emitted once, when it happens; repeated
/// diagnostics are reported once per change.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// Reading the cluster failed; the next read is in `retry_in`.
    ClusterReadFailed {
        /// The error.
        error: String,
        /// The pause before the next read.
        retry_in: Duration,
    },
    /// The cluster backend ended.
    ClusterEnded,
    /// The agent cannot see the cluster: the data plane stays as it is (fail static) and the
    /// readiness of the other nodes is judged as of `since` until the cluster is seen again.
    ClusterLost {
        /// Why: `reading the cluster failed` or `the heartbeat could not be written`.
        reason: &'static str,
        /// Unix seconds when the cluster was last seen.
        since: i64,
    },
    /// The agent sees the cluster again; readiness is judged again (the outage is forgiven
    /// until every node had time to publish a fresh heartbeat).
    ClusterRegained {
        /// How long the cluster could not be seen.
        outage: Duration,
    },
    /// A pass was due but no snapshot has arrived yet.
    NoSnapshotYet,
    /// The local node is not in the snapshot: nothing to do yet (reported once until it
    /// appears, as it usually means a wrong `--hostname`).
    LocalNodeMissing {
        /// The agent's hostname.
        hostname: String,
    },
    /// `--mtu auto` detected another MTU.
    MtuChanged {
        /// The new MTU.
        mtu: u32,
        /// The MTU used until now.
        previous: Option<u32>,
    },
    /// The CNI configuration now holds the pod CIDR.
    CniUpdated {
        /// The pod CIDR.
        pod_cidr: IpNet,
    },
    /// Updating the CNI configuration failed (reported once while the error stays the same).
    CniFailed {
        /// The error.
        error: String,
    },
    /// A skipped object or a warning that was not reported before: one line each.
    Diagnostic(String),
    /// A peer roamed while its configuration names another endpoint (once per change).
    Roamed {
        /// `node NAME` or `peer NAME`.
        owner: String,
        /// Where it roamed to.
        current: SocketAddr,
        /// The endpoint its configuration names, if any.
        configured: Option<SocketAddr>,
    },
    /// What the mesh looks like from this node.
    Mesh {
        /// Whether this node leads its segment.
        leader: bool,
        /// Ready nodes in the mesh.
        nodes: usize,
        /// Peers in the mesh.
        peers: usize,
        /// Nodes left out.
        skipped_nodes: usize,
        /// Peers left out.
        skipped_peers: usize,
        /// Values ignored while their object stayed in the mesh.
        warnings: usize,
    },
    /// A pass computed the mesh and its plan (empty in steady state): leaders, handshakes and
    /// the plan, for `/status`. A plan not followed by [`Report::Applied`] is still pending.
    Planned(Arc<super::status::PassStatus>),
    /// A non-empty plan goes to the data plane (the plan itself is in the [`Action::Apply`]).
    /// Not reported when all it asks for are routes the data plane refused before.
    Applying {
        /// How many operations it has, not counting routes refused before.
        operations: usize,
    },
    /// The data plane refused a route the mesh wants, because a route that is not the mesh's
    /// holds its place (reported once, until [`Report::RouteConflictResolved`]). The rest of the
    /// plan is applied; the pass does not fail, and the place is looked at again at each pass.
    RouteConflict(RouteConflict),
    /// A route conflict ended: the route is in place, or no longer wanted.
    RouteConflictResolved(RouteConflict),
    /// A device the data plane uses changed; a pass follows once the changes settle.
    LinkChanged(LinkChange),
    /// The plan was applied (but for refused routes); the kinds of its operations, in order.
    Applied {
        /// [`mesh_core::Operation::kind`] of each operation.
        operations: Vec<&'static str>,
    },
    /// The applied plan edited the firewall: the iptables calls Kilo's agent would have made
    /// for it (for `kilo_iptables_operations_total`).
    IptablesApplied {
        /// The calls, in order.
        operations: Vec<IptablesOperation>,
    },
    /// The mesh computed by a successful pass (for `/graph`).
    Topology(Arc<Topology>),
    /// The mesh cannot be computed; the data plane stays as it is. Not retried early: it
    /// changes with the cluster, which triggers a new pass.
    ComputeFailed {
        /// The error.
        error: String,
    },
    /// Observing or applying failed; the pass is retried in `retry_in`.
    PassFailed {
        /// The error.
        error: String,
        /// When the retry comes.
        retry_in: Duration,
    },
    /// Publishing the local node failed (`heartbeat`: the check-in fallback).
    AnnounceFailed {
        /// The error.
        error: String,
        /// The announcement was the heartbeat that repeats the last published state.
        heartbeat: bool,
    },
    /// A pass ended.
    Reconciled {
        /// From the pass's start to its end.
        duration: Duration,
        /// Whether it succeeded (a failed announcement does not count as a failure).
        healthy: bool,
    },
    /// Clean-up began.
    CleaningUp,
    /// A clean-up step failed.
    CleanUpFailed {
        /// `data plane` or `annotations`.
        what: &'static str,
        /// The error.
        error: String,
    },
    /// The reconciler stopped; nothing more will be asked.
    Stopped,
    /// A location's leader changed in this node's view.
    LeaderChanged {
        /// The segment (`location:NAME` or `node:NAME`).
        segment: String,
        /// The previous leader.
        from: Option<String>,
        /// The new leader.
        to: String,
        /// Why it leads.
        reason: String,
    },
    /// A probe of fast failover was answered or missed.
    Probed {
        /// The probed node's private IP.
        ip: IpAddr,
        /// Whether it answered in time.
        reachable: bool,
    },
    /// This node claimed its location's leader unreachable (a failover).
    FailoverClaimed {
        /// The deposed leader.
        leader: String,
        /// Probes missed in a row.
        misses: u32,
    },
    /// This node withdrew its claim.
    FailoverClaimWithdrawn {
        /// The leader that was deposed.
        leader: String,
        /// Why.
        reason: &'static str,
    },
    /// The leader missed its probes but no other member answered either: this node may be the
    /// one cut off, so it does not claim.
    FailoverHeldBack {
        /// The leader that missed its probes.
        leader: String,
    },
}

impl Report {
    /// The error counter this report increments, if any.
    pub fn error_event(&self) -> Option<ErrorEvent> {
        match self {
            Report::ClusterReadFailed { .. } => Some(ErrorEvent::Run),
            Report::ComputeFailed { .. } | Report::PassFailed { .. } => Some(ErrorEvent::Apply),
            Report::AnnounceFailed { .. } => Some(ErrorEvent::Checkin),
            Report::CleanUpFailed { .. } => Some(ErrorEvent::CleanUp),
            _ => None,
        }
    }
}
