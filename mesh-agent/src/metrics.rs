//! Prometheus metrics (Kilo's names, plus what a diff-based agent can tell) and the status the
//! HTTP server reads, both derived from the reconciler's [`Report`]s by [`Telemetry`].

use std::sync::{Arc, Mutex, PoisonError};

use mesh_core::Topology;
use mesh_core::backend::RouteConflict;

use crate::driver::ReportSink;
use crate::iptables_operations::IptablesOperation;
use crate::reconciler::Report;
use crate::reconciler::status::PassStatus;

use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use crate::reconciler::ErrorEvent;

/// Kilo's label of an error counter.
fn label(event: ErrorEvent) -> &'static str {
    match event {
        ErrorEvent::Apply => "apply",
        ErrorEvent::Checkin => "checkin",
        ErrorEvent::Run => "run",
        ErrorEvent::CleanUp => "cleanUp",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

/// Kilo's labels of `kilo_iptables_operations_total` (its `protocol` is a constant label per
/// client; here it is one label of the family, which reads the same).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IptablesLabels {
    operation: &'static str,
    table: String,
    chain: String,
    protocol: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The agent's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    errors: Family<EventLabel, Counter>,
    leader: Gauge,
    nodes: Gauge,
    peers: Gauge,
    reconciles: Counter,
    reconcile_seconds: Histogram,
    operations: Family<KindLabel, Counter>,
    iptables: Family<IptablesLabels, Counter>,
    skipped: Family<KindLabel, Gauge>,
    warnings: Gauge,
    cluster_visible: Gauge,
    leader_changes: Counter,
    failovers: Counter,
    probes: Family<ResultLabel, Counter>,
    route_conflicts: Gauge,
    link_changes: Counter,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let errors = Family::<EventLabel, Counter>::default();
        let leader = Gauge::default();
        let nodes = Gauge::default();
        let peers = Gauge::default();
        let reconciles = Counter::default();
        let reconcile_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let operations = Family::<KindLabel, Counter>::default();
        let skipped = Family::<KindLabel, Gauge>::default();
        let iptables = Family::<IptablesLabels, Counter>::default();
        let warnings = Gauge::default();
        let cluster_visible = Gauge::default();
        cluster_visible.set(1);
        // prometheus-client adds `_total` to counters, giving Kilo's names.
        registry.register(
            "kilo_errors",
            "Number of errors that occurred while administering the mesh.",
            errors.clone(),
        );
        registry.register("kilo_leader", "Leadership status of the node.", leader.clone());
        registry.register("kilo_nodes", "Number of nodes in the mesh.", nodes.clone());
        registry.register("kilo_peers", "Number of peers in the mesh.", peers.clone());
        registry.register("kilo_reconciles", "Number of reconciliation attempts.", reconciles.clone());
        registry.register(
            "mesh_reconcile_duration_seconds",
            "Time one reconciliation took: compute, observe, plan and apply.",
            reconcile_seconds.clone(),
        );
        registry.register(
            "mesh_plan_operations",
            "Data-plane operations applied, by kind (add_route, update_peer, ...).",
            operations.clone(),
        );
        registry.register("kilo_iptables_operations", "Number of iptables operations.", iptables.clone());
        let leader_changes = Counter::default();
        let failovers = Counter::default();
        let probes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "mesh_failover_probes",
            "Probes of the location's leader (or of a deposed one) over the private network, by result.",
            probes.clone(),
        );
        registry.register(
            "mesh_leader_changes",
            "Changes of a location's leader seen by this node.",
            leader_changes.clone(),
        );
        registry.register(
            "mesh_failovers",
            "Failover claims this node made: its location's leader did not answer over the private network.",
            failovers.clone(),
        );
        registry.register(
            "mesh_skipped_objects",
            "Nodes and peers left out of the mesh (invalid, unreadable or not ready), by kind.",
            skipped.clone(),
        );
        registry.register(
            "mesh_ignored_values",
            "Values ignored while their node or peer stayed in the mesh (invalid annotations, unresolvable endpoints).",
            warnings.clone(),
        );
        registry.register(
            "mesh_cluster_visible",
            "1 while the agent sees the cluster; 0 while it fails static (reads fail or its heartbeat cannot be written).",
            cluster_visible.clone(),
        );
        let route_conflicts = Gauge::default();
        registry.register(
            "mesh_route_conflicts",
            "Routes the mesh wants but leaves out because a route that is not the mesh's holds their place (see /status).",
            route_conflicts.clone(),
        );
        let link_changes = Counter::default();
        registry.register(
            "mesh_link_changes",
            "Changes of the data plane's devices (WireGuard interface, private interface, tunnel) and deletions of the mesh's routes by others, as the kernel announced them; each burst starts a reconcile.",
            link_changes.clone(),
        );
        registry.register_collector(Box::new(crate::process_metrics::ProcessCollector));
        Metrics {
            registry,
            errors,
            leader,
            nodes,
            peers,
            reconciles,
            reconcile_seconds,
            operations,
            iptables,
            skipped,
            leader_changes,
            failovers,
            probes,
            warnings,
            cluster_visible,
            route_conflicts,
            link_changes,
        }
    }

    /// Counts an error.
    pub fn error(&self, event: ErrorEvent) {
        self.errors.get_or_create(&EventLabel { event: label(event) }).inc();
    }

    /// Counts a reconciliation attempt and how long it took.
    pub fn reconciled(&self, seconds: f64) {
        self.reconciles.inc();
        self.reconcile_seconds.observe(seconds);
    }

    /// Records the shape of the mesh after a successful computation.
    pub fn mesh(&self, leader: bool, nodes: usize, peers: usize, skipped_nodes: usize, skipped_peers: usize) {
        self.leader.set(i64::from(leader));
        self.nodes.set(i64::try_from(nodes).unwrap_or(i64::MAX));
        self.peers.set(i64::try_from(peers).unwrap_or(i64::MAX));
        self.skipped.get_or_create(&KindLabel { kind: "node" }).set(i64::try_from(skipped_nodes).unwrap_or(i64::MAX));
        self.skipped.get_or_create(&KindLabel { kind: "peer" }).set(i64::try_from(skipped_peers).unwrap_or(i64::MAX));
    }

    /// Counts an applied operation of `kind`.
    pub fn operation(&self, kind: &'static str) {
        self.operations.get_or_create(&KindLabel { kind }).inc();
    }

    /// Counts an applied iptables call.
    pub fn iptables_operation(&self, call: &IptablesOperation) {
        let labels = IptablesLabels {
            operation: call.operation,
            table: call.table.clone(),
            chain: call.chain.clone(),
            protocol: call.protocol,
        };
        self.iptables.get_or_create(&labels).inc();
    }

    /// The number of errors recorded for `event`.
    pub fn errors(&self, event: ErrorEvent) -> u64 {
        self.errors.get_or_create(&EventLabel { event: label(event) }).get()
    }

    /// The number of reconciliation attempts.
    pub fn reconciles(&self) -> u64 {
        self.reconciles.get()
    }

    /// The number of routes left out for a route that is not the mesh's.
    pub fn route_conflicts(&self) -> i64 {
        self.route_conflicts.get()
    }

    /// The number of applied operations of `kind`.
    pub fn operations(&self, kind: &'static str) -> u64 {
        self.operations.get_or_create(&KindLabel { kind }).get()
    }

    /// Counts what `report` says.
    pub fn record(&self, report: &Report) {
        if let Some(event) = report.error_event() {
            self.error(event);
        }
        match report {
            Report::Reconciled { duration, .. } => self.reconciled(duration.as_secs_f64()),
            Report::Mesh { leader, nodes, peers, skipped_nodes, skipped_peers, warnings } => {
                self.mesh(*leader, *nodes, *peers, *skipped_nodes, *skipped_peers);
                self.warnings.set(i64::try_from(*warnings).unwrap_or(i64::MAX));
            }
            Report::Applied { operations } => operations.iter().for_each(|kind| self.operation(kind)),
            Report::IptablesApplied { operations } => operations.iter().for_each(|call| self.iptables_operation(call)),
            Report::LeaderChanged { .. } => {
                self.leader_changes.inc();
            }
            Report::FailoverClaimed { .. } => {
                self.failovers.inc();
            }
            Report::Probed { reachable, .. } => {
                let result = if *reachable { "answered" } else { "missed" };
                self.probes.get_or_create(&ResultLabel { result }).inc();
            }
            Report::ClusterLost { .. } => {
                self.cluster_visible.set(0);
            }
            Report::ClusterRegained { .. } => {
                self.cluster_visible.set(1);
            }
            Report::RouteConflict(_) => {
                self.route_conflicts.inc();
            }
            Report::RouteConflictResolved(_) => {
                self.route_conflicts.dec();
            }
            Report::LinkChanged(_) => {
                self.link_changes.inc();
            }
            _ => {}
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// What the HTTP server reads from the loop.
#[derive(Debug, Default)]
pub struct Status {
    /// The mesh from the last successful computation; `/graph` draws it on request.
    pub topology: Option<Arc<Topology>>,
    /// Whether the last reconcile succeeded.
    pub healthy: bool,
    /// The last pass that computed the mesh: leaders, handshakes, its plan.
    pub pass: Option<Arc<PassStatus>>,
    /// Whether that pass's plan reached the data plane (an empty plan counts as applied).
    pub plan_applied: bool,
    /// The errors of the last finished pass (a failed announcement included).
    pub errors: Vec<String>,
    /// The errors of the pass in flight.
    errors_in_flight: Vec<String>,
    /// Routes the data plane refuses because a route that is not the mesh's holds their place.
    pub route_conflicts: Vec<RouteConflict>,
    /// While the agent cannot see the cluster (it fails static): since when, in Unix seconds.
    pub cluster_lost_since: Option<i64>,
}

impl Status {
    /// Takes what `report` says about the agent's state.
    pub fn record(&mut self, report: &Report) {
        match report {
            Report::Topology(topology) => self.topology = Some(Arc::clone(topology)),
            Report::Planned(pass) => {
                self.plan_applied = pass.plan.operations.is_empty();
                self.pass = Some(Arc::clone(pass));
            }
            Report::Applied { .. } => self.plan_applied = true,
            Report::RouteConflict(conflict) => self.route_conflicts.push(conflict.clone()),
            Report::RouteConflictResolved(conflict) => self.route_conflicts.retain(|known| known != conflict),
            Report::Reconciled { healthy, .. } => {
                self.healthy = *healthy;
                self.errors = std::mem::take(&mut self.errors_in_flight);
            }
            Report::ClusterReadFailed { error, .. } => {
                self.errors = vec![format!("failed to read the cluster: {error}")]
            }
            Report::ComputeFailed { error } => self.errors_in_flight.push(format!("cannot compute the mesh: {error}")),
            Report::PassFailed { error, .. } => self.errors_in_flight.push(error.clone()),
            Report::AnnounceFailed { error, .. } => {
                self.errors_in_flight.push(format!("failed to publish the local node: {error}"));
            }
            Report::ClusterLost { since, .. } => self.cluster_lost_since = Some(*since),
            Report::ClusterRegained { .. } => self.cluster_lost_since = None,
            _ => {}
        }
    }
}

/// The [`ReportSink`] of the agent binary: metrics, and the status `/graph` reads.
#[derive(Clone, Debug, Default)]
pub struct Telemetry {
    metrics: Arc<Metrics>,
    status: Arc<Mutex<Status>>,
}

impl Telemetry {
    /// Fresh metrics and an empty status.
    pub fn new() -> Self {
        Telemetry::default()
    }

    /// The metrics, shared.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The status, shared.
    pub fn status(&self) -> Arc<Mutex<Status>> {
        Arc::clone(&self.status)
    }
}

impl ReportSink for Telemetry {
    fn record(&mut self, report: &Report) {
        self.metrics.record(report);
        self.status.lock().unwrap_or_else(PoisonError::into_inner).record(report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_kilo_metric_names() {
        let metrics = Metrics::new();
        metrics.error(ErrorEvent::Apply);
        metrics.reconciled(0.01);
        metrics.mesh(true, 3, 1, 2, 0);
        metrics.operation("add_route");
        metrics.record(&Report::LeaderChanged {
            segment: "location:a".into(),
            from: Some("a1".into()),
            to: "a2".into(),
            reason: "failover claim".into(),
        });
        metrics.record(&Report::FailoverClaimed { leader: "a1".into(), misses: 3 });
        metrics.record(&Report::Probed { ip: [192, 0, 2, 1].into(), reachable: false });
        let text = metrics.render();
        for line in [
            "kilo_errors_total{event=\"apply\"} 1",
            "kilo_leader 1",
            "kilo_nodes 3",
            "kilo_peers 1",
            "kilo_reconciles_total 1",
            "mesh_plan_operations_total{kind=\"add_route\"} 1",
            "mesh_skipped_objects{kind=\"node\"} 2",
            "mesh_reconcile_duration_seconds_count 1",
            "mesh_leader_changes_total 1",
            "mesh_failovers_total 1",
            "mesh_failover_probes_total{result=\"missed\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn counts_iptables_operations_with_kilos_labels() {
        let metrics = Metrics::new();
        let call = |operation, chain: &str, protocol| IptablesOperation {
            protocol,
            operation,
            table: "nat".into(),
            chain: chain.into(),
        };
        metrics.record(&Report::IptablesApplied {
            operations: vec![
                call("ClearChain", "KILO-NAT", "IPv4"),
                call("AppendUnique", "KILO-NAT", "IPv4"),
                call("AppendUnique", "KILO-NAT", "IPv4"),
                call("Insert", "POSTROUTING", "IPv6"),
            ],
        });
        let text = metrics.render();
        for line in [
            "# TYPE kilo_iptables_operations counter",
            "kilo_iptables_operations_total{operation=\"AppendUnique\",table=\"nat\",chain=\"KILO-NAT\",protocol=\"IPv4\"} 2",
            "kilo_iptables_operations_total{operation=\"ClearChain\",table=\"nat\",chain=\"KILO-NAT\",protocol=\"IPv4\"} 1",
            "kilo_iptables_operations_total{operation=\"Insert\",table=\"nat\",chain=\"POSTROUTING\",protocol=\"IPv6\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    /// Kilo's Grafana dashboard graphs CPU and memory from client_golang's process metrics.
    #[test]
    fn exposes_the_process_metrics_of_kilos_dashboard() {
        let text = Metrics::new().render();
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|line| line.split(' ').next() == Some(name))
                .unwrap_or_else(|| panic!("{name} missing in\n{text}"));
            line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad line {line}"))
        };
        assert!(text.contains("# TYPE process_cpu_seconds counter"), "{text}");
        assert!(value("process_cpu_seconds_total") >= 0.0);
        // A running test process has memory, open descriptors (stdin…), threads and started after 2020.
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_threads") >= 1.0);
        assert!(value("process_start_time_seconds") > 1_577_836_800.0);
    }
}
