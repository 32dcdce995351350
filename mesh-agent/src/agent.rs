//! The reconcile loop: cluster snapshot → topology → desired state → observe → plan → apply →
//! announce, on every change, on the resync timer and at every check-in.
//!
//! [`Agent`] is generic over its backends so an embedding controller can reuse it with its own
//! cluster source and data plane; the binary composes the Kubernetes (or file) backend with the
//! Linux data plane.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_core::backend::{ClusterBackend, Dataplane, LocalAnnouncement};
use mesh_core::plan::KeepReason;
use mesh_core::{ClusterSnapshot, DesiredState, Key, NodeSpec, ObjectKind, Options, Plan, Topology, Warning};
use tracing::{debug, error, info, warn};

use crate::metrics::{ErrorEvent, Metrics};

/// What the agent knows about its own host: how its Node must look to the mesh, and how names
/// resolve. The binary implements it with IP discovery and DNS; tests use fakes.
#[async_trait::async_trait]
pub trait Host: Send {
    /// Makes the local node the one this agent runs (Kilo's `handleLocal`): its endpoint,
    /// internal IP, public key and CNI-compatibility IP. Heartbeat and discovered endpoints are
    /// filled in by the agent.
    fn localize(&mut self, node: &mut NodeSpec);

    /// Resolves the DNS endpoints of the snapshot's nodes and peers; returns what could not be.
    async fn resolve(&mut self, snapshot: &mut ClusterSnapshot) -> Vec<Warning>;

    /// The WireGuard MTU as of the last [`Host::resolve`], when the host detects it (`--mtu
    /// auto`, re-detected every pass as Kilo does); `None` keeps the configured one.
    fn mtu(&self) -> Option<u32> {
        None
    }
}

/// Timing and behaviour of the loop.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The topology options (hostname, granularity, subnet, …).
    pub options: Options,
    /// `--resync-period`: a full reconcile at least this often.
    pub resync_period: Duration,
    /// How often the node re-publishes its heartbeat (Kilo: 30 s).
    pub check_in_period: Duration,
    /// First delay before retrying a failed apply; doubled up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest delay between retries.
    pub retry_max: Duration,
    /// `--clean-up`: remove what the agent created when it stops.
    pub clean_up: bool,
    /// How long the clean-up at shutdown may take.
    pub clean_up_timeout: Duration,
}

impl AgentConfig {
    /// Kilo's timing: resync every 30 s, check-in every 30 s, clean-up on.
    pub fn new(options: Options) -> Self {
        AgentConfig {
            options,
            resync_period: Duration::from_secs(30),
            check_in_period: Duration::from_secs(30),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            clean_up: true,
            clean_up_timeout: Duration::from_secs(8),
        }
    }
}

/// What other parts of the process (the HTTP server) read from the loop.
#[derive(Debug, Default)]
pub struct Status {
    /// The mesh from the last successful computation; `/graph` draws it on request.
    pub topology: Option<Arc<Topology>>,
    /// Whether the last reconcile succeeded.
    pub healthy: bool,
}

/// Why a reconcile pass stopped before the end.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error("{0}")]
    Observe(mesh_core::backend::BackendError),
    #[error("{0}")]
    Compute(mesh_core::ComputeError),
    #[error("{0}")]
    Apply(mesh_core::backend::BackendError),
}

/// The reconcile loop of one node.
pub struct Agent<C, D, H> {
    cluster: C,
    dataplane: D,
    host: H,
    config: AgentConfig,
    metrics: Arc<Metrics>,
    status: Arc<Mutex<Status>>,
    snapshot: Option<ClusterSnapshot>,
    announced: Option<(LocalAnnouncement, Instant)>,
    /// The check-in timer fired: the next announcement goes out even if nothing changed.
    check_in_due: bool,
    retry: Option<(Instant, Duration)>,
    /// After cluster read errors: the current back-off, and until when the backend is not asked.
    cluster_backoff: Option<Duration>,
    cluster_paused_until: Option<Instant>,
    /// Roamed endpoints already warned about, so each change is logged once.
    roamed: BTreeMap<Key, SocketAddr>,
    /// Diagnostics already logged, so each is logged once per change.
    reported: Vec<String>,
}

impl<C, D, H> std::fmt::Debug for Agent<C, D, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<C: ClusterBackend, D: Dataplane, H: Host> Agent<C, D, H> {
    /// An agent over these backends, counting into `metrics`.
    pub fn new(cluster: C, dataplane: D, host: H, config: AgentConfig, metrics: Arc<Metrics>) -> Self {
        Agent {
            cluster,
            dataplane,
            host,
            config,
            metrics,
            status: Arc::default(),
            snapshot: None,
            announced: None,
            check_in_due: false,
            retry: None,
            cluster_backoff: None,
            cluster_paused_until: None,
            roamed: BTreeMap::new(),
            reported: Vec::new(),
        }
    }

    /// Takes a new cluster snapshot; the next [`Agent::reconcile`] uses it. [`Agent::run`] does
    /// this for every snapshot the backend yields.
    pub fn update_snapshot(&mut self, snapshot: ClusterSnapshot) {
        self.snapshot = Some(snapshot);
    }

    /// When the loop retries a failed pass, if it does.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry.map(|(_, delay)| delay)
    }

    /// Shared status for the HTTP server.
    pub fn status(&self) -> Arc<Mutex<Status>> {
        Arc::clone(&self.status)
    }

    /// Runs until `shutdown` completes (or the cluster backend ends), then cleans up if
    /// configured. Never returns early because of a runtime fault: faults are logged, counted and
    /// retried.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut resync = tokio::time::interval(self.config.resync_period);
        let mut check_in = tokio::time::interval(self.config.check_in_period);
        // Both fire at once; the first snapshot triggers the first pass anyway.
        resync.tick().await;
        check_in.tick().await;
        loop {
            let retry_at = self.retry.map(|(at, _)| tokio::time::Instant::from_std(at));
            let paused_until = self.cluster_paused_until.map(tokio::time::Instant::from_std);
            tokio::select! {
                () = &mut shutdown => break,
                next = self.cluster.next_snapshot(), if paused_until.is_none() => match next {
                    Ok(Some(snapshot)) => {
                        self.cluster_backoff = None;
                        self.snapshot = Some(snapshot);
                        self.reconcile().await;
                    }
                    Ok(None) => {
                        info!("the cluster backend ended");
                        break;
                    }
                    Err(error) => {
                        // Back off, so a backend that fails at once cannot make the loop spin.
                        self.metrics.error(ErrorEvent::Run);
                        let delay = self
                            .cluster_backoff
                            .map_or(self.config.retry_initial, |delay| (delay * 2).min(self.config.retry_max));
                        self.cluster_backoff = Some(delay);
                        self.cluster_paused_until = Some(Instant::now() + delay);
                        warn!(%error, retry_in = ?delay, "failed to read the cluster; the data plane stays as it is");
                    }
                },
                () = sleep_until(paused_until), if paused_until.is_some() => self.cluster_paused_until = None,
                _ = resync.tick() => self.reconcile().await,
                _ = check_in.tick() => self.check_in().await,
                () = sleep_until(retry_at), if retry_at.is_some() => self.reconcile().await,
            }
        }
        if self.config.clean_up {
            self.clean_up().await;
        }
    }

    /// One pass. Public so embedding controllers and tests can drive the loop step by step.
    pub async fn reconcile(&mut self) {
        let Some(mut snapshot) = self.snapshot.clone() else {
            debug!("no cluster snapshot yet");
            return;
        };
        let started = Instant::now();
        snapshot.now = unix_now();
        let result = self.pass(&mut snapshot).await;
        self.metrics.reconciled(started.elapsed().as_secs_f64());
        let healthy = match result {
            Ok(()) => {
                self.retry = None;
                true
            }
            Err(PassError::Compute(error)) => {
                // Not retried early: it changes with the cluster, which triggers a new pass.
                self.metrics.error(ErrorEvent::Apply);
                warn!(%error, "cannot compute the mesh; the data plane stays as it is");
                false
            }
            Err(error) => {
                self.metrics.error(ErrorEvent::Apply);
                let delay =
                    self.retry.map_or(self.config.retry_initial, |(_, delay)| (delay * 2).min(self.config.retry_max));
                self.retry = Some((Instant::now() + delay, delay));
                error!(%error, retry_in = ?delay, "reconcile failed");
                false
            }
        };
        self.status.lock().expect("status lock").healthy = healthy;
    }

    async fn pass(&mut self, snapshot: &mut ClusterSnapshot) -> Result<(), PassError> {
        let hostname = self.config.options.hostname.clone();
        let mut warnings = self.host.resolve(snapshot).await;
        let observed = self.dataplane.observe().await.map_err(PassError::Observe)?;
        let discovered = mesh_core::nat::discovered_endpoints(snapshot, &observed);
        let Some(local) = snapshot.nodes.iter_mut().find(|node| node.name == hostname) else {
            debug!(%hostname, "the local node is not in the cluster yet");
            return Ok(());
        };
        self.host.localize(local);
        local.last_seen = Some(snapshot.now);
        local.discovered_endpoints = discovered;
        let local = local.clone();

        if let Some(mtu) = self.host.mtu() {
            self.config.options.mtu = Some(mtu);
        }
        let options = &self.config.options;
        let topology = Topology::compute(snapshot, options).map_err(PassError::Compute)?;
        let (desired, state_warnings) = DesiredState::from_topology(&topology, options);
        warnings.extend(topology.warnings.iter().cloned());
        warnings.extend(state_warnings);
        self.report(&topology, &warnings);

        let skipped = |kind| topology.skipped.iter().filter(|s| s.kind == kind).count();
        let ready_nodes = topology.segments.iter().map(|s| s.members.len()).sum();
        self.metrics.mesh(
            topology.leader,
            ready_nodes,
            topology.peers.len(),
            skipped(ObjectKind::Node),
            skipped(ObjectKind::Peer),
        );

        let plan = Plan::between(&observed, &desired);
        self.warn_roamed(&plan, snapshot);
        if !plan.is_empty() {
            info!(operations = plan.operations.len(), "applying changes to the data plane");
            debug!(?plan, "plan");
            self.dataplane.apply(&plan).await.map_err(PassError::Apply)?;
            for operation in &plan.operations {
                self.metrics.operation(operation.kind());
            }
        }

        self.announce(&local, &topology).await;
        self.status.lock().expect("status lock").topology = Some(Arc::new(topology));
        Ok(())
    }

    /// Publishes the local node when what it says changed, and at every check-in period.
    async fn announce(&mut self, local: &NodeSpec, topology: &Topology) {
        let published = NodeSpec { wireguard_ip: topology.leader.then_some(topology.wireguard_cidr), ..local.clone() };
        let announcement =
            LocalAnnouncement::of(&published, self.config.options.granularity, local.last_seen.unwrap_or_default());
        let changed = self.announced.as_ref().is_none_or(|(previous, _)| {
            LocalAnnouncement { last_seen: 0, ..previous.clone() }
                != LocalAnnouncement { last_seen: 0, ..announcement.clone() }
        });
        if !(changed || self.check_in_due) {
            return;
        }
        match self.cluster.announce(&announcement).await {
            Ok(()) => {
                self.announced = Some((announcement, Instant::now()));
                self.check_in_due = false;
            }
            Err(error) => {
                self.metrics.error(ErrorEvent::Checkin);
                warn!(%error, "failed to publish the local node");
            }
        }
    }

    /// The heartbeat: a full pass that publishes the node even if nothing changed. If the pass
    /// fails before publishing (a failed apply), the last published state goes out again with a
    /// fresh `last-seen`: the node is alive, and other nodes must not drop it after 60 s while
    /// it retries.
    async fn check_in(&mut self) {
        self.check_in_due = true;
        self.reconcile().await;
        if !self.check_in_due {
            return;
        }
        let Some((previous, _)) = self.announced.clone() else { return };
        let heartbeat = LocalAnnouncement { last_seen: unix_now(), ..previous };
        match self.cluster.announce(&heartbeat).await {
            Ok(()) => {
                self.announced = Some((heartbeat, Instant::now()));
                self.check_in_due = false;
            }
            Err(error) => {
                self.metrics.error(ErrorEvent::Checkin);
                warn!(%error, "failed to publish the heartbeat");
            }
        }
    }

    /// Logs skipped objects and warnings once per change, not at every resync.
    fn report(&mut self, topology: &Topology, warnings: &[Warning]) {
        let mut lines: Vec<String> = topology
            .skipped
            .iter()
            .map(|s| format!("{:?} {} is left out of the mesh: {}", s.kind, s.name, s.reason))
            .chain(warnings.iter().map(|w| {
                let what = match (&w.annotation, &w.value) {
                    (Some(annotation), Some(value)) => format!(" {annotation}={value:?}"),
                    (Some(annotation), None) => format!(" {annotation}"),
                    _ => String::new(),
                };
                format!("{:?} {}{what}: {}", w.kind, w.name, w.reason)
            }))
            .collect();
        lines.sort();
        lines.dedup();
        if lines != self.reported {
            for line in lines.iter().filter(|line| !self.reported.contains(line)) {
                warn!("{line}");
            }
            self.reported = lines;
        }
    }

    /// A peer that roamed while the configuration names another endpoint is probably behind NAT
    /// without `kilo.squat.ai/persistent-keepalive`: say so once per change.
    fn warn_roamed(&mut self, plan: &Plan, snapshot: &ClusterSnapshot) {
        let mut roamed = BTreeMap::new();
        for kept in plan.kept_endpoints.iter().filter(|kept| kept.reason == KeepReason::Roamed) {
            roamed.insert(kept.public_key, kept.current);
            if self.roamed.get(&kept.public_key) == Some(&kept.current) {
                continue;
            }
            let owner = snapshot
                .nodes
                .iter()
                .find(|node| node.key == Some(kept.public_key))
                .map(|node| format!("node {}", node.name))
                .or_else(|| {
                    snapshot
                        .peers
                        .iter()
                        .find(|peer| peer.public_key == Some(kept.public_key))
                        .map(|peer| format!("peer {}", peer.name))
                })
                .unwrap_or_else(|| format!("peer {}", kept.public_key));
            warn!(
                "{owner} roamed to {} while its configured endpoint is {}: it is probably behind NAT; \
                 set the annotation kilo.squat.ai/persistent-keepalive (e.g. \"20\") on it so the mesh \
                 uses the endpoint it discovers. Keeping the roamed endpoint meanwhile.",
                kept.current,
                kept.configured.map_or_else(|| "none".to_owned(), |e| e.to_string())
            );
        }
        self.roamed = roamed;
    }

    /// Removes what the agent created: data plane first (routes, rules, chains, the interface if
    /// configured), then the node's own annotations. Bounded by the clean-up timeout.
    pub async fn clean_up(&mut self) {
        info!("caught shutdown; cleaning up");
        let hostname = self.config.options.hostname.clone();
        let timeout = self.config.clean_up_timeout;
        match tokio::time::timeout(timeout, self.dataplane.clean_up()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                self.metrics.error(ErrorEvent::CleanUp);
                error!(%error, "failed to clean up the data plane");
            }
            Err(_) => {
                self.metrics.error(ErrorEvent::CleanUp);
                error!(?timeout, "cleaning up the data plane timed out");
            }
        }
        match tokio::time::timeout(timeout, self.cluster.clean_up(&hostname)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                self.metrics.error(ErrorEvent::CleanUp);
                error!(%error, "failed to remove the node's annotations");
            }
            Err(_) => {
                self.metrics.error(ErrorEvent::CleanUp);
                error!(?timeout, "removing the node's annotations timed out");
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The current Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
