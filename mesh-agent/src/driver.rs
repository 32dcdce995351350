//! The thin tokio driver: runs a [`Reconciler`] against a [`ClusterBackend`], a [`Dataplane`]
//! and a [`Host`], and turns its [`Report`]s into `tracing` events and a [`ReportSink`].
//!
//! The driver decides nothing: it reads the cluster while the reconciler wants snapshots, sleeps
//! until the reconciler's next timeout, performs each [`Action`] and answers with its result. Time
//! comes from tokio's clock ([`tokio::time::Instant`]), so a test with tokio's paused clock
//! drives it without waiting.
//!
//! # Example: an agent over in-memory backends
//!
//! ```
//! # use mesh_agent::driver::{Driver, Host};
//! # use mesh_agent::reconciler::Config;
//! # use mesh_core::backend::{BackendError, ClusterBackend, Dataplane, LocalAnnouncement};
//! # use mesh_core::{ClusterSnapshot, Endpoint, Key, NodeSpec, ObservedState, Options, Plan};
//! struct Cluster(Option<ClusterSnapshot>); // one snapshot, then the cluster ends
//! #[async_trait::async_trait]
//! impl ClusterBackend for Cluster {
//!     async fn next_snapshot(&mut self) -> Result<Option<ClusterSnapshot>, BackendError> { Ok(self.0.take()) }
//!     async fn announce(&mut self, _: &LocalAnnouncement) -> Result<(), BackendError> { Ok(()) }
//!     async fn clean_up(&mut self, _node: &str) -> Result<(), BackendError> { Ok(()) }
//! }
//! #[derive(Default)]
//! struct Memory(ObservedState); // a data plane whose semantics are the plan's
//! #[async_trait::async_trait]
//! impl Dataplane for Memory {
//!     async fn observe(&mut self) -> Result<ObservedState, BackendError> { Ok(self.0.clone()) }
//!     async fn apply(&mut self, plan: &Plan) -> Result<(), BackendError> { self.0.state = plan.apply_to(&self.0.state); Ok(()) }
//!     async fn clean_up(&mut self) -> Result<(), BackendError> { self.0 = ObservedState::default(); Ok(()) }
//! }
//! struct AsIs; // a host whose node already says everything (no DNS names, MTU or Cilium to read)
//! impl Host for AsIs {}
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let node = NodeSpec {
//!     name: "a".into(), location: "a".into(), key: Some(Key::from_bytes([1; 32])),
//!     endpoint: Some(Endpoint::parse("192.0.2.1:51820").unwrap()),
//!     internal_ip: Some("192.0.2.1/24".parse().unwrap()), pod_subnet: Some("10.2.1.0/24".parse().unwrap()),
//!     ..NodeSpec::default()
//! };
//! let cluster = Cluster(Some(ClusterSnapshot { nodes: vec![node], peers: vec![], now: 0 }));
//! let mut driver = Driver::new(cluster, Memory::default(), AsIs, Config::new(Options::for_host("a")));
//! driver.run(std::future::pending()).await; // until the cluster ends
//! assert!(driver.reconciler().is_healthy());
//! assert_eq!(driver.reconciler().announced().unwrap().wireguard_ip, Some("10.4.0.1/16".parse().unwrap()));
//! # }
//! ```

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use mesh_core::backend::{BackendError, ClusterBackend, Dataplane, LinkChange};
use mesh_core::{ClusterSnapshot, NodeSpec};
use tracing::{debug, error, info, warn};

use crate::reconciler::{Action, Config, Event, Now, Reconciler, Report, Resolution};

/// What the agent knows about its own host. The binary implements it with IP discovery, DNS and
/// the CNI file; the defaults leave the cluster's view as it is.
#[async_trait::async_trait]
pub trait Host: Send {
    /// Resolves the snapshot's DNS endpoints and reads what can change on a running host (the
    /// MTU with `--mtu auto`, Cilium's address). Called first in every pass.
    async fn resolve(&mut self, snapshot: ClusterSnapshot) -> Resolution {
        Resolution::unchanged(snapshot)
    }

    /// Makes the local node the one this agent runs (Kilo's `handleLocal`): its endpoint,
    /// internal IP, public key and CNI-compatibility IP, as of the last [`Host::resolve`] (the
    /// driver calls it right after). Heartbeat and discovered endpoints are the reconciler's.
    fn localize(&self, node: &mut NodeSpec) {
        let _ = node;
    }

    /// Sends one ICMP echo to `ip` and tells whether the reply came within `timeout` (fast
    /// leader failover). The future runs beside the reconcile pass, so it owns what it needs.
    /// The default says every node answers: a host that cannot probe never fails over early.
    fn probe(&self, ip: IpAddr, timeout: Duration) -> Pin<Box<dyn Future<Output = bool> + Send + 'static>> {
        let _ = (ip, timeout);
        Box::pin(std::future::ready(true))
    }

    /// Sets the CNI configuration's pod range to `pod_cidr`; whether the file changed.
    async fn update_cni(&mut self, pod_cidr: IpNet) -> Result<bool, String> {
        let _ = pod_cidr;
        Ok(false)
    }
}

/// Where the driver sends every report besides the log: metrics, a status page, a test.
pub trait ReportSink: Send {
    /// Takes one report.
    fn record(&mut self, report: &Report);
}

/// Nowhere: reports are only logged.
impl ReportSink for () {
    fn record(&mut self, _report: &Report) {}
}

impl<F: FnMut(&Report) + Send> ReportSink for F {
    fn record(&mut self, report: &Report) {
        self(report);
    }
}

/// The time now, from tokio's clock (paused in tests) and the system's wall clock.
pub fn now() -> Now {
    Now::new(tokio::time::Instant::now().into_std(), mesh_core::time::unix_seconds(SystemTime::now()))
}

/// A [`Reconciler`] and its backends; see the [module documentation](self).
pub struct Driver<C, D, H, S = ()> {
    cluster: C,
    dataplane: D,
    host: H,
    sink: S,
    reconciler: Reconciler,
    /// Probes under way, each answering with its IP and whether it replied.
    probes: tokio::task::JoinSet<(IpAddr, bool)>,
    /// Changes of the data plane's devices, while someone sends them.
    links: Option<tokio::sync::mpsc::Receiver<LinkChange>>,
}

impl<C, D, H, S> std::fmt::Debug for Driver<C, D, H, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("reconciler", &self.reconciler).finish_non_exhaustive()
    }
}

impl<C: ClusterBackend, D: Dataplane, H: Host> Driver<C, D, H> {
    /// A driver over these backends; reports are logged only (see [`Driver::with_sink`]).
    pub fn new(cluster: C, dataplane: D, host: H, config: Config) -> Self {
        let reconciler = Reconciler::new(config, now().instant);
        Driver { cluster, dataplane, host, sink: (), reconciler, probes: tokio::task::JoinSet::new(), links: None }
    }
}

impl<C: ClusterBackend, D: Dataplane, H: Host, S: ReportSink> Driver<C, D, H, S> {
    /// Sends every report to `sink` as well.
    pub fn with_sink<T: ReportSink>(self, sink: T) -> Driver<C, D, H, T> {
        let Driver { cluster, dataplane, host, reconciler, probes, links, .. } = self;
        Driver { cluster, dataplane, host, sink, reconciler, probes, links }
    }

    /// Feeds the changes of the data plane's devices (e.g. from `mesh_netlink::LinkWatch`) to
    /// the reconciler, which reconciles at once when its WireGuard interface comes back instead
    /// of waiting for its next timer. Without them, device changes are noticed at that timer.
    pub fn with_link_changes(mut self, changes: tokio::sync::mpsc::Receiver<LinkChange>) -> Self {
        self.links = Some(changes);
        self
    }

    /// The reconciler, to read its state.
    pub fn reconciler(&self) -> &Reconciler {
        &self.reconciler
    }

    /// The report sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Takes a snapshot as if the backend had sent it; its pass runs at the next
    /// [`Driver::reconcile`] or in [`Driver::run`].
    pub fn update_snapshot(&mut self, snapshot: ClusterSnapshot) {
        self.reconciler.handle_event(Event::Snapshot(snapshot), now());
    }

    /// Runs one pass to its end (the one already due, or a new one), as the resync timer does.
    pub async fn reconcile(&mut self) {
        if !self.reconciler.is_busy() {
            self.reconciler.request_pass(now());
        }
        self.perform_actions().await;
    }

    /// Removes what the agent created (the data plane, then the node's annotations), each step
    /// bounded by [`Config::clean_up_timeout`], after the pass in flight. Afterwards the driver
    /// is stopped.
    pub async fn clean_up(&mut self) {
        self.reconciler.handle_event(Event::ShutdownRequested, now());
        self.perform_actions().await;
    }

    /// Runs until `shutdown` completes or the cluster backend ends, then cleans up if
    /// configured. Never returns early because of a runtime fault: faults are reported and
    /// retried. Shutdown interrupts an announcement in flight (an API server that does not
    /// answer must not hold the agent), then cleans up within [`Config::clean_up_timeout`]
    /// per step.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut stopping = false;
        loop {
            if !stopping {
                stopping = self.perform_actions_unless(shutdown.as_mut()).await;
                if stopping {
                    self.reconciler.handle_event(Event::ShutdownRequested, now());
                }
            }
            self.perform_actions().await;
            if self.reconciler.is_stopped() {
                return;
            }
            let timeout = self.reconciler.poll_timeout();
            let wants_snapshots = self.reconciler.wants_snapshots();
            tokio::select! {
                () = &mut shutdown, if !stopping => {
                    stopping = true;
                    self.reconciler.handle_event(Event::ShutdownRequested, now());
                }
                next = self.cluster.next_snapshot(), if wants_snapshots => {
                    let event = match next {
                        Ok(Some(snapshot)) => {
                            self.reconciler.handle_event(Event::BackendDiagnostics(self.cluster.diagnostics()), now());
                            Event::Snapshot(snapshot)
                        }
                        Ok(None) => Event::ClusterEnded,
                        Err(error) => Event::ClusterReadFailed(error),
                    };
                    self.reconciler.handle_event(event, now());
                }
                () = sleep_until(timeout) => self.reconciler.handle_timeout(now()),
                change = next_link_change(&mut self.links), if self.links.is_some() => match change {
                    Some(change) => self.reconciler.handle_event(Event::LinkChanged(change), now()),
                    None => {
                        warn!("link notifications ended; changes of the devices are noticed at the next resync");
                        self.links = None;
                    }
                },
                Some(probed) = self.probes.join_next(), if !self.probes.is_empty() => {
                    // Each task answers for its probe (see `next_action`): only a cancelled task
                    // gives no answer, and tasks are cancelled only when the driver is dropped.
                    if let Ok((ip, reachable)) = probed {
                        self.reconciler.handle_event(Event::Probed { ip, reachable }, now());
                    }
                }
            }
        }
    }

    /// Performs the reconciler's actions like [`Driver::perform_actions`], but an announcement
    /// in flight is abandoned (answered as failed) when `shutdown` completes; `true` then.
    async fn perform_actions_unless(&mut self, mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
        loop {
            let Some(action) = self.next_action() else { return false };
            if !matches!(action, Action::Announce(_)) {
                let event = self.perform(action).await;
                self.reconciler.handle_event(event, now());
                continue;
            }
            let interrupted = tokio::select! {
                event = self.perform(action) => {
                    self.reconciler.handle_event(event, now());
                    false
                }
                () = shutdown.as_mut() => true,
            };
            if interrupted {
                // Shutdown first: an announcement abandoned on the way out is no failure.
                self.reconciler.handle_event(Event::ShutdownRequested, now());
                let error = BackendError::new("failed to announce the node", "interrupted by shutdown");
                self.reconciler.handle_event(Event::Announced(Err(error)), now());
                return true;
            }
        }
    }

    /// Performs the reconciler's actions, one at a time, until it asks for none.
    async fn perform_actions(&mut self) {
        while let Some(action) = self.next_action() {
            let event = self.perform(action).await;
            self.reconciler.handle_event(event, now());
        }
    }

    /// The reconciler's next action to perform in turn, its reports flushed first. Probes are
    /// not performed in turn but started in the background, their answers taken by
    /// [`Driver::run`]: a probe of a dead leader waits for its whole timeout, and must hold up
    /// neither a pass nor shutdown.
    fn next_action(&mut self) -> Option<Action> {
        loop {
            self.flush_reports();
            match self.reconciler.poll_action()? {
                Action::Probe { ip, timeout } => {
                    let probe = tokio::spawn(self.host.probe(ip, timeout));
                    // A probe that panicked counts as no reply, so the address is probed again.
                    self.probes.spawn(async move { (ip, probe.await.unwrap_or(false)) });
                }
                action => return Some(action),
            }
        }
    }

    async fn perform(&mut self, action: Action) -> Event {
        match action {
            Action::Resolve(snapshot) => {
                let mut resolution = self.host.resolve(snapshot).await;
                let hostname = &self.reconciler.config().options.hostname;
                if let Some(local) = resolution.snapshot.nodes.iter_mut().find(|node| &node.name == hostname) {
                    self.host.localize(local);
                }
                Event::Resolved(resolution)
            }
            Action::Observe => {
                let timeout = self.reconciler.config().dataplane_timeout;
                Event::Observed(bounded(timeout, "observe the data plane", self.dataplane.observe()).await)
            }
            Action::UpdateCni { pod_cidr } => Event::CniUpdated(self.host.update_cni(pod_cidr).await),
            Action::Apply(plan) => {
                debug!(?plan, "plan");
                let timeout = self.reconciler.config().dataplane_timeout;
                let applied = bounded(timeout, "apply the plan", self.dataplane.apply(&plan)).await;
                self.reconciler.handle_event(Event::RouteConflicts(self.dataplane.route_conflicts()), now());
                Event::Applied(applied)
            }
            Action::Announce(announcement) => {
                let timeout = self.reconciler.config().announce_timeout;
                let operation = format!("announce node {:?}", announcement.hostname);
                Event::Announced(bounded(timeout, &operation, self.cluster.announce(&announcement)).await)
            }
            Action::Probe { .. } => unreachable!("probes run in the background (Driver::next_action)"),
            Action::CleanUpDataplane => {
                let timeout = self.reconciler.config().clean_up_timeout;
                Event::CleanedUp(bounded(timeout, "clean up the data plane", self.dataplane.clean_up()).await)
            }
            Action::CleanUpCluster { node } => {
                let timeout = self.reconciler.config().clean_up_timeout;
                let operation = format!("remove the annotations of node {node:?}");
                Event::CleanedUp(bounded(timeout, &operation, self.cluster.clean_up(&node)).await)
            }
        }
    }

    fn flush_reports(&mut self) {
        while let Some(report) = self.reconciler.poll_report() {
            log(&report);
            self.sink.record(&report);
        }
    }
}

/// `work`, or a timeout error naming `operation` after `timeout`.
async fn bounded<T>(
    timeout: std::time::Duration,
    operation: &str,
    work: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| {
        Err(BackendError::new(format!("failed to {operation}"), format!("timed out after {timeout:?}")))
    })
}

async fn next_link_change(links: &mut Option<tokio::sync::mpsc::Receiver<LinkChange>>) -> Option<LinkChange> {
    match links {
        Some(links) => links.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// The log line of a report.
fn log(report: &Report) {
    match report {
        Report::ClusterReadFailed { error, retry_in } => {
            warn!(%error, ?retry_in, "failed to read the cluster; the data plane stays as it is");
        }
        Report::ClusterEnded => info!("the cluster backend ended"),
        Report::ClusterLost { reason, since } => warn!(
            reason,
            last_seen_unix = since,
            "cannot see the cluster: failing static, the data plane stays as it is and no peer is removed \
             for being not ready until the cluster is seen again"
        ),
        Report::ClusterRegained { outage } => {
            info!(?outage, "sees the cluster again; judging readiness again");
        }
        Report::NoSnapshotYet => debug!("no cluster snapshot yet"),
        Report::LocalNodeMissing { hostname } => warn!(
            %hostname,
            "no node named {hostname:?} in the cluster: the agent configures nothing until it appears; \
             --hostname (KILO_HOSTNAME) must be the Kubernetes node name"
        ),
        Report::MtuChanged { mtu, previous } => {
            info!(mtu, ?previous, "the underlay MTU changed; adjusting the WireGuard MTU");
        }
        Report::CniUpdated { pod_cidr } => info!(%pod_cidr, "set the pod CIDR in the CNI configuration"),
        Report::CniFailed { error } => {
            warn!(%error, "failed to update the CNI configuration (use --cni=false beside another CNI)");
        }
        Report::Diagnostic(line) => warn!("{line}"),
        Report::Roamed { owner, current, configured } => warn!(
            "{owner} roamed to {current} while its configured endpoint is {}: it is probably behind NAT; \
             set the annotation kilo.squat.ai/persistent-keepalive (e.g. \"20\") on it so the mesh \
             uses the endpoint it discovers. Keeping the roamed endpoint meanwhile.",
            configured.map_or_else(|| "none".to_owned(), |endpoint| endpoint.to_string())
        ),
        Report::Mesh { leader, nodes, peers, .. } => debug!(leader, nodes, peers, "computed the mesh"),
        Report::Applying { operations } => info!(operations, "applying changes to the data plane"),
        Report::RouteConflict(conflict) => warn!(
            wanted = %conflict.wanted,
            existing = %conflict.existing,
            "{conflict}: a route that is not the mesh's holds the place; the rest of the mesh is applied, and \
             the place is looked at again at each resync (remove the other route, or the range that asks for it)"
        ),
        Report::RouteConflictResolved(conflict) => {
            info!(wanted = %conflict.wanted, "route conflict resolved: the route is in place or no longer wanted");
        }
        Report::LinkChanged(change) => info!(%change, "the data plane changed under the agent; reconciling"),
        Report::Applied { .. }
        | Report::IptablesApplied { .. }
        | Report::Planned(_)
        | Report::Topology(_)
        | Report::Stopped => {}
        Report::ComputeFailed { error } => warn!(%error, "cannot compute the mesh; the data plane stays as it is"),
        Report::PassFailed { error, retry_in } => error!(%error, ?retry_in, "reconcile failed"),
        Report::AnnounceFailed { error, heartbeat: false } => warn!(%error, "failed to publish the local node"),
        Report::AnnounceFailed { error, heartbeat: true } => warn!(%error, "failed to publish the heartbeat"),
        Report::Reconciled { duration, healthy } => debug!(?duration, healthy, "reconciled"),
        Report::CleaningUp => info!("caught shutdown; cleaning up"),
        Report::CleanUpFailed { what, error } => error!(%error, "failed to clean up the {what}"),
        Report::LeaderChanged { segment, from, to, reason } => {
            info!(%segment, from = from.as_deref().unwrap_or("none"), %to, %reason, "the leader changed");
        }
        Report::Probed { ip, reachable } => debug!(%ip, reachable, "failover probe"),
        Report::FailoverClaimed { leader, misses } => warn!(
            %leader, misses,
            "the leader does not answer over the private network; claiming it unreachable (failover)"
        ),
        Report::FailoverClaimWithdrawn { leader, reason } => info!(%leader, %reason, "withdrawing the failover claim"),
        Report::FailoverHeldBack { leader } => warn!(
            %leader,
            "the leader does not answer, but no other member of the location does either: not claiming"
        ),
    }
}
