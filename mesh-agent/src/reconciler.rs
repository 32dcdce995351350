//! The agent's decisions as a state machine, without I/O: what to do on a cluster snapshot, a
//! timer, a read error or the result of a data-plane write.
//!
//! [`Reconciler`] follows quinn-proto's shape: values in, values out, time passed in.
//!
//! - Feed it what happened with [`Reconciler::handle_event`] (a snapshot, the result of the last
//!   [`Action`]) and, once [`Reconciler::poll_timeout`] has passed, [`Reconciler::handle_timeout`].
//! - Drain [`Reconciler::poll_action`]: each [`Action`] is one piece of I/O (resolve names,
//!   observe the data plane, apply a plan, announce the node, …). Perform it and answer with the
//!   matching [`Event`] before polling the next one.
//! - Drain [`Reconciler::poll_report`]: each [`Report`] is something to log or count. The
//!   reconciler does not log; [`crate::driver`] turns reports into `tracing` events and metrics.
//! - Read the cluster while [`Reconciler::wants_snapshots`] says so (it pauses after read errors).
//!
//! One reconcile pass: `Resolve` (DNS, the host's MTU, the local node as this agent runs it) →
//! `Observe` → `UpdateCni` (with [`Config::update_cni`]) → compute the topology and the plan →
//! `Apply` (only a non-empty plan) → `Announce` (when what the node says changed, or at
//! check-in; also after a failed apply, which the data plane makes partial: the parts that
//! could be applied are, and the node must stay in the mesh while the rest is retried). A pass runs on every snapshot, on the resync period, at check-in, when a failed
//! pass is retried (bounded exponential [`Backoff`](mesh_core::time::Backoff)) and when a device
//! of the data plane changed or a route it wants was deleted ([`Event::LinkChanged`]: a
//! WireGuard device that came back, or a route deleted by hand, is repaired at once, whatever
//! the backoff). Routes the data plane refuses ([`Event::RouteConflicts`])
//! are reported once and fail nothing. At check-in, if the pass could not publish
//! (a failed apply), the last announcement goes out again with a fresh `last-seen`: the node is
//! alive and must not be dropped by the others while it retries.
//!
//! # Example: one pass by hand
//!
//! ```
//! use std::time::{Duration, Instant};
//! use mesh_agent::reconciler::{Action, Config, Event, Now, Reconciler, Resolution};
//! use mesh_core::{ClusterSnapshot, Endpoint, Key, NodeSpec, ObservedState, Options};
//!
//! let start = Now::new(Instant::now(), 1_767_225_600);
//! let mut reconciler = Reconciler::new(Config::new(Options::for_host("a")), start.instant);
//! let node = NodeSpec {
//!     name: "a".into(),
//!     endpoint: Some(Endpoint::parse("192.0.2.1:51820").unwrap()),
//!     key: Some(Key::from_bytes([1; 32])),
//!     internal_ip: Some("192.0.2.1/24".parse().unwrap()),
//!     location: "a".into(),
//!     pod_subnet: Some("10.2.1.0/24".parse().unwrap()),
//!     ..NodeSpec::default()
//! };
//! let snapshot = ClusterSnapshot { nodes: vec![node], peers: vec![], now: start.unix };
//! reconciler.handle_event(Event::Snapshot(snapshot), start);
//! // An in-memory data plane: what was applied is what is observed next.
//! let mut dataplane = ObservedState::default();
//! let mut announced = Vec::new();
//! while let Some(action) = reconciler.poll_action() {
//!     let answer = match action {
//!         Action::Resolve(snapshot) => Event::Resolved(Resolution::unchanged(snapshot)),
//!         Action::Observe => Event::Observed(Ok(dataplane.clone())),
//!         Action::Apply(plan) => {
//!             dataplane.state = plan.apply_to(&dataplane.state);
//!             Event::Applied(Ok(()))
//!         }
//!         Action::Announce(announcement) => {
//!             announced.push(announcement);
//!             Event::Announced(Ok(()))
//!         }
//!         other => unreachable!("{other:?}"),
//!     };
//!     reconciler.handle_event(answer, start);
//! }
//! assert!(reconciler.is_healthy());
//! assert_eq!(announced[0].wireguard_ip, Some("10.4.0.1/16".parse().unwrap()));
//! // Nothing to do until the resync period (30 s) is over.
//! assert_eq!(reconciler.poll_timeout(), Some(start.instant + Duration::from_secs(30)));
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::iptables_operations::IptablesOperation;
use mesh_core::backend::{BackendError, LinkChange, LocalAnnouncement, SnapshotDiagnostics};
use mesh_core::plan::KeepReason;
use mesh_core::{
    ClusterSnapshot, DesiredState, Key, NodeSpec, ObjectKind, ObservedState, Plan, Routes, Skipped, Topology, Warning,
};

mod conflicts;
mod failover;
mod links;
mod messages;
pub mod status;
mod view;

pub use failover::FailoverTiming;
pub use links::LinkSettling;
pub use messages::{Action, Config, ErrorEvent, Event, Now, Report, Resolution};

/// A repeating timer that skips the ticks it missed.
#[derive(Clone, Copy, Debug)]
struct Periodic {
    period: Duration,
    next: Instant,
}

impl Periodic {
    fn new(period: Duration, now: Instant) -> Self {
        Periodic { period, next: now + period }
    }

    /// Whether the timer fired by `now`; if so, it is re-armed for the next tick after `now`.
    fn fire(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        while self.next <= now && !self.period.is_zero() {
            self.next += self.period;
        }
        true
    }
}

/// Failed passes in a row, and when the next retry is due (`None` once it is under way).
#[derive(Clone, Copy, Debug)]
struct Retry {
    failures: u32,
    at: Option<Instant>,
}

/// Failed announcements in a row, when the next one is due (`None` once it may go), and whether
/// the last one that failed was a changed announcement: then the next one is the heartbeat of
/// the state already published, so that a change the API server refuses cannot also stop the
/// heartbeat.
#[derive(Clone, Copy, Debug)]
struct AnnounceRetry {
    failures: u32,
    at: Option<Instant>,
    after_change: bool,
}

/// Where a pass is, and what it carries to its next step.
#[derive(Debug)]
enum Stage {
    Resolving,
    Observing {
        snapshot: ClusterSnapshot,
        warnings: Vec<Warning>,
    },
    UpdatingCni {
        snapshot: ClusterSnapshot,
        warnings: Vec<Warning>,
        observed: ObservedState,
        local: NodeSpec,
    },
    Applying {
        local: NodeSpec,
        topology: Topology,
        operations: Vec<&'static str>,
        iptables: Vec<IptablesOperation>,
    },
    Announcing {
        announcement: LocalAnnouncement,
        topology: Topology,
    },
    /// The check-in fallback: the last announcement with a fresh `last-seen`.
    Heartbeat {
        announcement: LocalAnnouncement,
    },
}

#[derive(Debug)]
struct Pass {
    started: Instant,
    /// The pass runs because of a check-in.
    check_in: bool,
    /// The apply of this pass failed (in part): the pass goes on to announce the node, then
    /// fails and is retried.
    apply_error: Option<String>,
    stage: Stage,
}

/// Where shutdown is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shutdown {
    Running,
    /// Asked for; waits for the pass in flight.
    Requested,
    CleaningDataplane,
    CleaningCluster,
    Stopped,
}

/// The agent's decisions for one node; see the [module documentation](self).
#[derive(Debug)]
pub struct Reconciler {
    config: Config,
    snapshot: Option<ClusterSnapshot>,
    resync: Periodic,
    check_in: Periodic,
    retry: Option<Retry>,
    /// Whether the cluster can be seen (fail static while not).
    view: view::ClusterView,
    /// While announcements fail: failures in a row, and when the next one may go.
    failed_announcements: Option<AnnounceRetry>,
    /// Failed cluster reads in a row, and until when reading pauses.
    cluster_failures: u32,
    cluster_paused_until: Option<Instant>,
    pass: Option<Pass>,
    /// A pass is due (a snapshot or a timer came while none could start).
    pass_due: bool,
    /// The next announcement goes out even if nothing changed (check-in came; not yet published).
    check_in_due: bool,
    /// The pass that is due is a check-in.
    check_in_pass_due: bool,
    announced: Option<LocalAnnouncement>,
    /// Roamed endpoints already reported, so each change is reported once.
    roamed: BTreeMap<Key, SocketAddr>,
    /// What the cluster backend left out of or ignored in the snapshot.
    backend_diagnostics: SnapshotDiagnostics,
    /// Diagnostic lines already reported, so each is reported once per change.
    reported: Vec<String>,
    cni_error: Option<String>,
    /// The local node's absence was reported, so a wrong `--hostname` warns once, not every pass.
    local_missing_reported: bool,
    healthy: bool,
    shutdown: Shutdown,
    actions: VecDeque<Action>,
    reports: VecDeque<Report>,
    failover: failover::Failover,
    /// Changes of the data plane's devices that have not started their pass yet.
    links: links::LinkBurst,
    /// The routes the last computed plan wants: a deleted one of these is put back at once;
    /// the deletion of any other is the agent's own (or of a route it no longer wants).
    wanted_routes: Routes,
    /// Routes the data plane refuses because a route that is not the mesh's holds their place.
    conflicts: conflicts::RouteConflicts,
}

impl Reconciler {
    /// A reconciler started at `now`: the first resync and check-in are one period later; the
    /// first pass comes with the first snapshot.
    pub fn new(config: Config, now: Instant) -> Self {
        Reconciler {
            failover: failover::Failover::new(config.failover),
            links: links::LinkBurst::new(config.link_settling),
            wanted_routes: Routes::default(),
            conflicts: conflicts::RouteConflicts::default(),
            resync: Periodic::new(config.resync_period, now),
            check_in: Periodic::new(config.check_in_period, now),
            config,
            snapshot: None,
            retry: None,
            view: view::ClusterView::default(),
            failed_announcements: None,
            cluster_failures: 0,
            cluster_paused_until: None,
            pass: None,
            pass_due: false,
            check_in_due: false,
            check_in_pass_due: false,
            announced: None,
            roamed: BTreeMap::new(),
            backend_diagnostics: SnapshotDiagnostics::default(),
            reported: Vec::new(),
            cni_error: None,
            local_missing_reported: false,
            healthy: false,
            shutdown: Shutdown::Running,
            actions: VecDeque::new(),
            reports: VecDeque::new(),
        }
    }

    /// The configuration, with the MTU as last detected.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the last pass succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// The delay before the retry of the last failed pass, while passes fail.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry.map(|retry| self.config.retry.delay(retry.failures.saturating_sub(1)))
    }

    /// What is wrong with the cluster's objects as of the last pass, one line each, sorted:
    /// objects left out (by the backend or the mesh) and values ignored. Each was reported once
    /// as [`Report::Diagnostic`].
    pub fn diagnostics(&self) -> &[String] {
        &self.reported
    }

    /// The last announcement the cluster accepted.
    pub fn announced(&self) -> Option<&LocalAnnouncement> {
        self.announced.as_ref()
    }

    /// Each location's leader as this node computed it at the last successful pass, by segment
    /// name (`/status` has the reasons: [`status::leaders`]).
    pub fn leaders(&self) -> &BTreeMap<String, String> {
        self.failover.leaders()
    }

    /// The leader this node claims unreachable (fast failover), if any.
    pub fn failover_claim(&self) -> Option<&str> {
        self.failover.claim()
    }

    /// Whether the agent sees the cluster. While it does not (reads fail, or its heartbeat
    /// cannot be written), it fails static: the data plane stays as it is, and readiness is
    /// judged as of [`Reconciler::cluster_lost_since`].
    pub fn sees_cluster(&self) -> bool {
        self.view.is_visible()
    }

    /// Since when (Unix seconds) the agent has not seen the cluster, while it does not.
    pub fn cluster_lost_since(&self) -> Option<i64> {
        self.view.lost_since()
    }

    /// Whether the cluster should be read now (not while reading pauses after an error, nor
    /// once stopping).
    pub fn wants_snapshots(&self) -> bool {
        self.cluster_paused_until.is_none() && self.shutdown == Shutdown::Running
    }

    /// Whether a pass is under way (an action of it is unanswered or queued).
    pub fn is_busy(&self) -> bool {
        self.pass.is_some() || matches!(self.shutdown, Shutdown::CleaningDataplane | Shutdown::CleaningCluster)
    }

    /// Whether the reconciler stopped: it asks for nothing more.
    pub fn is_stopped(&self) -> bool {
        self.shutdown == Shutdown::Stopped
    }

    /// The next action to perform, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next report to log or count, if any.
    pub fn poll_report(&mut self) -> Option<Report> {
        self.reports.pop_front()
    }

    /// When [`Reconciler::handle_timeout`] must be called next (`None` once stopped).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.shutdown != Shutdown::Running {
            return None;
        }
        [
            Some(self.resync.next),
            Some(self.check_in.next),
            self.retry.and_then(|retry| retry.at),
            self.failed_announcements.and_then(|retry| retry.at),
            self.cluster_paused_until,
            self.failover.poll_timeout(),
            self.links.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Asks for a pass now, as the resync timer does (for embedders that drive passes
    /// themselves).
    pub fn request_pass(&mut self, now: Now) {
        self.pass_due = true;
        self.start_due_pass(now);
    }

    /// Fires the timers that are due at `now`: resync, check-in, the retry of a failed pass,
    /// the end of a pause in cluster reads.
    pub fn handle_timeout(&mut self, now: Now) {
        if self.shutdown != Shutdown::Running {
            return;
        }
        if self.cluster_paused_until.is_some_and(|until| until <= now.instant) {
            self.cluster_paused_until = None;
        }
        if self.resync.fire(now.instant) {
            self.pass_due = true;
        }
        if self.check_in.fire(now.instant) {
            self.pass_due = true;
            self.check_in_pass_due = true;
        }
        if let Some(retry) = &mut self.retry
            && retry.at.is_some_and(|at| at <= now.instant)
        {
            retry.at = None;
            self.pass_due = true;
        }
        if self.links.settled(now.instant) {
            // What failed may have failed for want of the device: try at once, and back off
            // from the start if it still fails.
            self.retry = None;
            self.pass_due = true;
        }
        self.failover.handle_timeout(now.instant, &mut self.actions);
        if let Some(retry) = &mut self.failed_announcements
            && retry.at.is_some_and(|at| at <= now.instant)
        {
            retry.at = None;
            self.pass_due = true;
            self.check_in_pass_due = true;
        }
        self.start_due_pass(now);
    }

    /// Takes one event.
    pub fn handle_event(&mut self, event: Event, now: Now) {
        match event {
            Event::Snapshot(snapshot) => {
                let reads_were_failing = std::mem::take(&mut self.cluster_failures) > 0;
                if reads_were_failing && let Some(retry) = &mut self.failed_announcements {
                    // The API server answers again: publish the heartbeat now, not when its
                    // pause ends.
                    retry.at = None;
                    self.check_in_pass_due = true;
                }
                self.snapshot = Some(snapshot);
                self.pass_due = true;
                let change = self.view.seen(view::Blindness::ReadFailed, now.unix, self.forgiveness());
                self.view_changed(change, view::Blindness::ReadFailed);
            }
            Event::BackendDiagnostics(diagnostics) => self.backend_diagnostics = diagnostics,
            Event::LinkChanged(change) => self.link_changed(change, now.instant),
            Event::RouteConflicts(conflicts) => self.conflicts.refused(conflicts),
            Event::ClusterReadFailed(error) => {
                // Back off, so a backend that fails at once cannot make the loop spin.
                let retry_in = self.config.read_retry.delay(self.cluster_failures);
                self.cluster_failures = self.cluster_failures.saturating_add(1);
                self.cluster_paused_until = Some(now.instant + retry_in);
                self.reports.push_back(Report::ClusterReadFailed { error: error.to_string(), retry_in });
                let change = self.view.blind(view::Blindness::ReadFailed, now.unix);
                self.view_changed(change, view::Blindness::ReadFailed);
            }
            Event::ClusterEnded => {
                self.reports.push_back(Report::ClusterEnded);
                self.stop();
            }
            Event::ShutdownRequested => self.stop(),
            Event::Resolved(resolution) => self.resolved(resolution),
            Event::Observed(observed) => self.observed(observed, now),
            Event::CniUpdated(result) => self.cni_updated(result, now),
            Event::Applied(result) => self.applied(result, now),
            Event::Announced(result) => self.announced_result(result, now),
            Event::CleanedUp(result) => self.cleaned_up(result),
            Event::Probed { ip, reachable } => {
                if self.failover.on_probed(ip, reachable, now.instant, &mut self.actions, &mut self.reports) {
                    // The claim changed: elect anew and announce it.
                    self.pass_due = true;
                }
            }
        }
        self.start_due_pass(now);
    }

    fn stop(&mut self) {
        if self.shutdown == Shutdown::Running {
            self.shutdown = Shutdown::Requested;
            // The clean-up deletes them: nothing to put back from now on.
            self.wanted_routes = Routes::default();
        }
    }

    fn link_changed(&mut self, change: LinkChange, now: Instant) {
        if let LinkChange::RouteDeleted(route) = &change
            && !self.wanted_routes.contains_key(route)
        {
            // Deleted by the agent's own plan, or not wanted any more: nothing to put back.
            return;
        }
        self.reports.push_back(Report::LinkChanged(change));
        self.links.changed(now);
    }

    /// Starts the pass that is due, or the clean-up, when nothing is in flight.
    fn start_due_pass(&mut self, now: Now) {
        if self.pass.is_some() {
            return;
        }
        if self.shutdown == Shutdown::Requested {
            if self.config.clean_up {
                self.shutdown = Shutdown::CleaningDataplane;
                self.reports.push_back(Report::CleaningUp);
                self.actions.push_back(Action::CleanUpDataplane);
            } else {
                self.shutdown = Shutdown::Stopped;
                self.reports.push_back(Report::Stopped);
            }
            return;
        }
        if self.shutdown != Shutdown::Running || !self.pass_due {
            return;
        }
        let check_in = std::mem::take(&mut self.check_in_pass_due);
        self.pass_due = false;
        if check_in {
            self.check_in_due = true;
        }
        let Some(snapshot) = &self.snapshot else {
            self.reports.push_back(Report::NoSnapshotYet);
            return;
        };
        // Readiness is judged when the cluster was last seen while it cannot be seen.
        let snapshot = self.view.judged(snapshot, now.unix);
        self.actions.push_back(Action::Resolve(snapshot));
        self.pass = Some(Pass { started: now.instant, check_in, apply_error: None, stage: Stage::Resolving });
    }

    fn resolved(&mut self, resolution: Resolution) {
        let Some(pass) = &mut self.pass else { return };
        if !matches!(pass.stage, Stage::Resolving) {
            return;
        }
        if let Some(mtu) = resolution.mtu
            && self.config.options.mtu != Some(mtu)
        {
            self.reports.push_back(Report::MtuChanged { mtu, previous: self.config.options.mtu });
            self.config.options.mtu = Some(mtu);
        }
        pass.stage = Stage::Observing { snapshot: resolution.snapshot, warnings: resolution.warnings };
        self.actions.push_back(Action::Observe);
    }

    fn observed(&mut self, observed: Result<ObservedState, BackendError>, now: Now) {
        let Some(pass) = &mut self.pass else { return };
        let Stage::Observing { .. } = pass.stage else { return };
        let Stage::Observing { mut snapshot, warnings } = std::mem::replace(&mut pass.stage, Stage::Resolving) else {
            unreachable!("matched above")
        };
        let observed = match observed {
            Ok(observed) => observed,
            Err(error) => return self.pass_failed(error.to_string(), now),
        };
        let discovered = mesh_core::nat::discovered_endpoints(&snapshot, &observed);
        let hostname = &self.config.options.hostname;
        let Some(local) = snapshot.nodes.iter_mut().find(|node| &node.name == hostname) else {
            if !std::mem::replace(&mut self.local_missing_reported, true) {
                self.reports.push_back(Report::LocalNodeMissing { hostname: hostname.clone() });
            }
            return self.pass_succeeded(None, now);
        };
        self.local_missing_reported = false;
        local.last_seen = Some(snapshot.now);
        local.discovered_endpoints = discovered;
        // The node elects with its own claim at once, before the cluster echoes it back.
        local.failover_capable = self.config.options.fast_failover;
        local.leader_unreachable = self.failover.claim().map(str::to_owned);
        let local = local.clone();
        match local.pod_subnet {
            Some(pod_cidr) if self.config.update_cni => {
                let pass = self.pass.as_mut().expect("a pass is in flight");
                pass.stage = Stage::UpdatingCni { snapshot, warnings, observed, local };
                self.actions.push_back(Action::UpdateCni { pod_cidr });
            }
            _ => self.compute(&snapshot, warnings, &observed, local, now),
        }
    }

    fn cni_updated(&mut self, result: Result<bool, String>, now: Now) {
        let Some(pass) = &mut self.pass else { return };
        let Stage::UpdatingCni { .. } = pass.stage else { return };
        let Stage::UpdatingCni { snapshot, warnings, observed, local } =
            std::mem::replace(&mut pass.stage, Stage::Resolving)
        else {
            unreachable!("matched above")
        };
        match result {
            Ok(changed) => {
                if changed && let Some(pod_cidr) = local.pod_subnet {
                    self.reports.push_back(Report::CniUpdated { pod_cidr });
                }
                self.cni_error = None;
            }
            Err(error) => {
                if self.cni_error.as_ref() != Some(&error) {
                    self.reports.push_back(Report::CniFailed { error: error.clone() });
                    self.cni_error = Some(error);
                }
            }
        }
        self.compute(&snapshot, warnings, &observed, local, now);
    }

    /// From the localized snapshot and the observed data plane to the plan.
    fn compute(
        &mut self,
        snapshot: &ClusterSnapshot,
        mut warnings: Vec<Warning>,
        observed: &ObservedState,
        local: NodeSpec,
        now: Now,
    ) {
        let options = &self.config.options;
        let topology = match Topology::compute(snapshot, options) {
            Ok(topology) => topology,
            Err(error) => {
                self.reports.push_back(Report::ComputeFailed { error: error.to_string() });
                return self.pass_ended(false, now);
            }
        };
        let (desired, state_warnings) = DesiredState::from_topology(&topology, options);
        warnings.extend(self.backend_diagnostics.warnings.iter().cloned());
        warnings.extend(topology.warnings.iter().cloned());
        warnings.extend(state_warnings);
        let skipped: Vec<Skipped> = self.backend_diagnostics.skipped.iter().chain(&topology.skipped).cloned().collect();
        self.report_diagnostics(&skipped, &warnings);
        let skipped_of = |kind| skipped.iter().filter(|s| s.kind == kind).count();
        self.reports.push_back(Report::Mesh {
            leader: topology.leader,
            nodes: topology.segments.iter().map(|s| s.members.len()).sum(),
            peers: topology.peers.len(),
            skipped_nodes: skipped_of(ObjectKind::Node),
            skipped_peers: skipped_of(ObjectKind::Peer),
            warnings: warnings.len(),
        });
        let plan = Plan::between(observed, &desired);
        self.wanted_routes = desired.routes;
        self.reports.push_back(Report::Planned(Arc::new(status::PassStatus::of(snapshot, &topology, observed, &plan))));
        self.report_roamed(&plan, snapshot);
        if plan.is_empty() {
            self.conflicts.none_left(&mut self.reports);
            return self.announce(local, topology, now);
        }
        let operations = plan.operations.iter().map(mesh_core::Operation::kind).collect();
        let iptables = crate::iptables_operations::of_plan(&plan);
        // Routes refused before are asked for again (their place may be free now), but they
        // are no news.
        let news = plan.operations.len() - self.conflicts.asked_again(&plan);
        if news > 0 {
            self.reports.push_back(Report::Applying { operations: news });
        }
        self.actions.push_back(Action::Apply(plan));
        let pass = self.pass.as_mut().expect("a pass is in flight");
        pass.stage = Stage::Applying { local, topology, operations, iptables };
    }

    fn applied(&mut self, result: Result<(), BackendError>, now: Now) {
        let Some(pass) = &mut self.pass else { return };
        let Stage::Applying { .. } = pass.stage else { return };
        let Stage::Applying { local, topology, operations, iptables } =
            std::mem::replace(&mut pass.stage, Stage::Resolving)
        else {
            unreachable!("matched above")
        };
        // Refused routes are reported, and do not fail the pass: retrying could not free
        // their place.
        self.conflicts.applied(result.is_ok(), &mut self.reports);
        match result {
            // What could be applied is applied (the data plane goes on past a failed part): the
            // node still announces itself, so that one failing part (the firewall) does not
            // take it out of the mesh; the pass then fails and the rest is retried.
            Err(error) => pass.apply_error = Some(error.to_string()),
            Ok(()) => {
                let operations = self.conflicts.without_refused(operations);
                self.reports.push_back(Report::Applied { operations });
                if !iptables.is_empty() {
                    self.reports.push_back(Report::IptablesApplied { operations: iptables });
                }
            }
        }
        self.announce(local, topology, now);
    }

    /// Publishes the local node when what it says changed, and at check-in.
    fn announce(&mut self, local: NodeSpec, topology: Topology, now: Now) {
        let published = NodeSpec { wireguard_ip: topology.leader.then_some(topology.wireguard_cidr), ..local };
        let announcement =
            // The heartbeat carries the time now, also while readiness is judged at another time.
            LocalAnnouncement::of(&published, self.config.options.granularity, now.unix);
        let changed = self.announced.as_ref().is_none_or(|previous| {
            LocalAnnouncement { last_seen: 0, ..previous.clone() }
                != LocalAnnouncement { last_seen: 0, ..announcement.clone() }
        });
        // After a failed change, the heartbeat of what was published goes first; before the
        // first success nothing was published, and the change itself is retried.
        let heartbeat_first =
            changed && self.announced.is_some() && self.failed_announcements.is_some_and(|retry| retry.after_change);
        if !(changed || self.check_in_due) || self.announcing_paused(now) || heartbeat_first {
            // A check-in pass then falls back to the heartbeat when it ends.
            return self.pass_succeeded(Some(topology), now);
        }
        self.actions.push_back(Action::Announce(announcement.clone()));
        let pass = self.pass.as_mut().expect("a pass is in flight");
        pass.stage = Stage::Announcing { announcement, topology };
    }

    /// Whether announcements wait for the retry timer: the last one failed and its pause has
    /// not ended. Passes in between keep the data plane without writing to the API.
    fn announcing_paused(&self, now: Now) -> bool {
        self.failed_announcements.is_some_and(|retry| retry.at.is_some_and(|at| at > now.instant))
    }

    fn announced_result(&mut self, result: Result<(), BackendError>, now: Now) {
        let Some(pass) = &mut self.pass else { return };
        match std::mem::replace(&mut pass.stage, Stage::Resolving) {
            Stage::Announcing { announcement, topology } => {
                self.publication(announcement, result, false, now);
                self.pass_succeeded(Some(topology), now);
            }
            Stage::Heartbeat { announcement } => {
                self.publication(announcement, result, true, now);
                self.pass = None;
            }
            other => pass.stage = other,
        }
    }

    fn publication(
        &mut self,
        announcement: LocalAnnouncement,
        result: Result<(), BackendError>,
        heartbeat: bool,
        now: Now,
    ) {
        match result {
            Ok(()) => {
                self.announced = Some(announcement);
                self.check_in_due = false;
                self.failed_announcements = None;
                let change = self.view.seen(view::Blindness::HeartbeatFailed, now.unix, self.forgiveness());
                self.view_changed(change, view::Blindness::HeartbeatFailed);
            }
            // Abandoned on the way out (the driver interrupts an announcement when asked to
            // stop): not a failure to count or to fail static over.
            Err(_) if self.shutdown != Shutdown::Running => {}
            Err(error) => {
                self.reports.push_back(Report::AnnounceFailed { error: error.to_string(), heartbeat });
                // Others will soon judge this node not ready: try again soon, not at the next
                // check-in, and keep the data plane meanwhile.
                let failures = self.failed_announcements.map_or(0, |retry| retry.failures);
                let retry_in = self.config.announce_retry.delay(failures);
                self.failed_announcements = Some(AnnounceRetry {
                    failures: failures.saturating_add(1),
                    at: Some(now.instant + retry_in),
                    after_change: !heartbeat,
                });
                let change = self.view.blind(view::Blindness::HeartbeatFailed, now.unix);
                self.view_changed(change, view::Blindness::HeartbeatFailed);
            }
        }
    }

    /// How long the outage stays forgiven once the cluster is seen again: two check-ins, so
    /// every node had time to publish a fresh heartbeat.
    fn forgiveness(&self) -> Duration {
        self.config.check_in_period * 2
    }

    fn view_changed(&mut self, change: Option<view::Change>, why: view::Blindness) {
        match change {
            Some(view::Change::Lost { since }) => {
                let reason = match why {
                    view::Blindness::ReadFailed => "reading the cluster failed",
                    view::Blindness::HeartbeatFailed => "the heartbeat could not be written",
                };
                self.reports.push_back(Report::ClusterLost { reason, since });
            }
            Some(view::Change::Regained { outage }) => {
                let outage = Duration::from_secs(u64::try_from(outage).unwrap_or(0));
                self.reports.push_back(Report::ClusterRegained { outage });
                if why == view::Blindness::ReadFailed {
                    // Tell the others at once that this node is alive.
                    self.pass_due = true;
                    self.check_in_pass_due = true;
                }
            }
            None => {}
        }
    }

    fn pass_succeeded(&mut self, topology: Option<Topology>, now: Now) {
        if let Some(error) = self.pass.as_mut().and_then(|pass| pass.apply_error.take()) {
            return self.pass_failed(error, now);
        }
        self.retry = None;
        if let Some(topology) = topology {
            self.failover.on_topology(&topology, now.instant, &mut self.reports);
            self.reports.push_back(Report::Topology(Arc::new(topology)));
        }
        self.pass_ended(true, now);
    }

    fn pass_failed(&mut self, error: String, now: Now) {
        let failures = self.retry.map_or(0, |retry| retry.failures);
        let retry_in = self.config.retry.delay(failures);
        self.retry = Some(Retry { failures: failures.saturating_add(1), at: Some(now.instant + retry_in) });
        self.reports.push_back(Report::PassFailed { error, retry_in });
        self.pass_ended(false, now);
    }

    /// Ends the pass; at check-in, falls back to a heartbeat if the pass published nothing.
    fn pass_ended(&mut self, healthy: bool, now: Now) {
        let Some(pass) = self.pass.take() else { return };
        self.healthy = healthy;
        self.reports.push_back(Report::Reconciled { duration: now.instant.duration_since(pass.started), healthy });
        if pass.check_in
            && self.check_in_due
            && !self.announcing_paused(now)
            && let Some(previous) = &self.announced
        {
            let announcement = LocalAnnouncement { last_seen: now.unix, ..previous.clone() };
            self.actions.push_back(Action::Announce(announcement.clone()));
            self.pass = Some(Pass { stage: Stage::Heartbeat { announcement }, ..pass });
        }
    }

    fn cleaned_up(&mut self, result: Result<(), BackendError>) {
        let what = match self.shutdown {
            Shutdown::CleaningDataplane => "data plane",
            Shutdown::CleaningCluster => "annotations",
            _ => return,
        };
        if let Err(error) = result {
            self.reports.push_back(Report::CleanUpFailed { what, error: error.to_string() });
        }
        if self.shutdown == Shutdown::CleaningDataplane {
            self.shutdown = Shutdown::CleaningCluster;
            self.actions.push_back(Action::CleanUpCluster { node: self.config.options.hostname.clone() });
        } else {
            self.shutdown = Shutdown::Stopped;
            self.reports.push_back(Report::Stopped);
        }
    }

    /// Reports skipped objects and warnings once per change, not at every resync.
    fn report_diagnostics(&mut self, skipped: &[Skipped], warnings: &[Warning]) {
        let mut lines: Vec<String> = skipped
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
        for line in lines.iter().filter(|line| !self.reported.contains(line)) {
            self.reports.push_back(Report::Diagnostic(line.clone()));
        }
        self.reported = lines;
    }

    /// A peer that roamed while the configuration names another endpoint is probably behind NAT
    /// without `kilo.squat.ai/persistent-keepalive`: report it once per change.
    fn report_roamed(&mut self, plan: &Plan, snapshot: &ClusterSnapshot) {
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
            self.reports.push_back(Report::Roamed { owner, current: kept.current, configured: kept.configured });
        }
        self.roamed = roamed;
    }
}

#[cfg(test)]
mod tests;
