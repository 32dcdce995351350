//! The reconciler with time as a value: no runtime, no sleeps; every answer is written here.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mesh_core::backend::{BackendError, LocalAnnouncement, SnapshotDiagnostics};
use mesh_core::time::Backoff;
use mesh_core::{ClusterSnapshot, Endpoint, ObservedState, Options, Plan};

use super::*;

const START_UNIX: i64 = 1_767_225_600;

fn snapshot() -> ClusterSnapshot {
    mesh_tests::two_locations(START_UNIX)
}

fn config() -> Config {
    let mut config = Config::new(Options::for_host("a"));
    config.retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
    config
}

fn failure(operation: &str) -> BackendError {
    BackendError::new(operation, "EIO")
}

/// The world around the reconciler, in memory: a data plane with the plan's semantics, and the
/// answers the test chose for the next writes.
#[derive(Default)]
struct World {
    dataplane: ObservedState,
    /// Results of the next applies (`Ok` once they run out).
    applies: VecDeque<Result<(), BackendError>>,
    /// Results of the next announcements (`Ok` once they run out).
    announces: VecDeque<Result<(), BackendError>>,
    /// Results of the next CNI updates (`Ok(false)` once they run out).
    cni: VecDeque<Result<bool, String>>,
    /// The MTU the host detects.
    mtu: Option<u32>,
    /// Routes whose place a route that is not the mesh's holds: refused by every apply.
    foreign_routes: Vec<mesh_core::Route>,
    /// Every action asked for, in order.
    actions: Vec<Action>,
    /// Every report, in order.
    reports: Vec<Report>,
}

impl World {
    /// Answers every action the reconciler asks for at `now`, as a driver does.
    fn serve(&mut self, reconciler: &mut Reconciler, now: Now) {
        while let Some(action) = reconciler.poll_action() {
            self.actions.push(action.clone());
            let answer = match action {
                Action::Resolve(snapshot) => {
                    Event::Resolved(Resolution { snapshot, warnings: Vec::new(), mtu: self.mtu })
                }
                Action::Observe => Event::Observed(Ok(self.dataplane.clone())),
                Action::UpdateCni { .. } => Event::CniUpdated(self.cni.pop_front().unwrap_or(Ok(false))),
                Action::Apply(mut plan) => {
                    let result = self.applies.pop_front().unwrap_or(Ok(()));
                    let refused = self.refuse_foreign_routes(&mut plan);
                    if result.is_ok() {
                        self.dataplane.state = plan.apply_to(&self.dataplane.state);
                    }
                    reconciler.handle_event(Event::RouteConflicts(refused), now);
                    Event::Applied(result)
                }
                Action::Announce(_) => Event::Announced(self.announces.pop_front().unwrap_or(Ok(()))),
                Action::CleanUpDataplane | Action::CleanUpCluster { .. } => Event::CleanedUp(Ok(())),
                // Answered later, by the test (see `failover`): a probe never holds up a pass.
                Action::Probe { .. } => continue,
            };
            reconciler.handle_event(answer, now);
        }
        self.reports.extend(std::iter::from_fn(|| reconciler.poll_report()));
    }

    /// Takes the routes whose place is held out of `plan`, as conflicts.
    fn refuse_foreign_routes(&self, plan: &mut Plan) -> Vec<mesh_core::backend::RouteConflict> {
        let mut refused = Vec::new();
        plan.operations.retain(|operation| match operation {
            mesh_core::Operation::AddRoute(route) if self.foreign_routes.contains(route) => {
                refused.push(mesh_core::backend::RouteConflict {
                    route: *route,
                    wanted: format!("{} (the mesh's)", route.dst),
                    existing: format!("{} dev eth0 proto dhcp", route.dst),
                });
                false
            }
            _ => true,
        });
        refused
    }

    /// Takes the actions asked for since the last call.
    fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    fn take_reports(&mut self) -> Vec<Report> {
        std::mem::take(&mut self.reports)
    }

    fn announcements(actions: &[Action]) -> Vec<&LocalAnnouncement> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::Announce(announcement) => Some(announcement),
                _ => None,
            })
            .collect()
    }

    fn applies(actions: &[Action]) -> Vec<&Plan> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::Apply(plan) => Some(plan),
                _ => None,
            })
            .collect()
    }
}

/// Runs time forward to `until`, firing every timeout on the way as a driver does.
fn advance(reconciler: &mut Reconciler, world: &mut World, from: Now, until: Instant) -> Now {
    while let Some(timeout) = reconciler.poll_timeout().filter(|timeout| *timeout <= until) {
        let now = from.after(timeout.duration_since(from.instant));
        reconciler.handle_timeout(now);
        world.serve(reconciler, now);
    }
    from.after(until.duration_since(from.instant))
}

fn start() -> (Reconciler, World, Now) {
    let now = Now::new(Instant::now(), START_UNIX);
    (Reconciler::new(config(), now.instant), World::default(), now)
}

#[test]
fn a_snapshot_is_resolved_observed_applied_and_announced_in_this_order() {
    let (mut reconciler, mut world, now) = start();
    reconciler.handle_event(Event::Snapshot(snapshot()), now);
    world.serve(&mut reconciler, now);
    let actions = world.take_actions();
    let kinds: Vec<&str> = actions
        .iter()
        .map(|action| match action {
            Action::Resolve(_) => "resolve",
            Action::Observe => "observe",
            Action::Apply(_) => "apply",
            Action::Announce(_) => "announce",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["resolve", "observe", "apply", "announce"]);
    let Action::Resolve(resolved) = &actions[0] else { unreachable!() };
    assert_eq!(resolved.now, START_UNIX, "the pass judges readiness at its own time");
    let announced = World::announcements(&actions)[0];
    assert_eq!(announced.wireguard_ip, Some("10.4.0.1/16".parse().unwrap()), "a leader publishes its WireGuard IP");
    assert_eq!(announced.last_seen, START_UNIX);
    assert!(reconciler.is_healthy());
    let reports = world.take_reports();
    assert!(reports.iter().any(|r| matches!(r, Report::Applied { operations } if operations.contains(&"add_peer"))));
    assert!(reports.iter().any(|r| matches!(r, Report::Topology(_))));
    assert!(reports.contains(&Report::Reconciled { duration: Duration::ZERO, healthy: true }));
}

#[test]
fn a_resync_with_nothing_new_writes_nothing_and_does_not_repeat_the_announcement() {
    let (mut reconciler, mut world, now) = start();
    reconciler.handle_event(Event::Snapshot(snapshot()), now);
    world.serve(&mut reconciler, now);
    world.take_actions();
    // The resync period is 30 s; check-in too: stop just before both.
    let resync = now.instant + Duration::from_secs(30);
    assert_eq!(reconciler.poll_timeout(), Some(resync));
    let now = advance(&mut reconciler, &mut world, now, resync - Duration::from_millis(1));
    assert!(world.take_actions().is_empty(), "no timer before 30 s");
    let mut config = config();
    config.check_in_period = Duration::from_secs(3600);
    let (mut reconciler, mut world, start) = (Reconciler::new(config, now.instant), World::default(), now);
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    world.take_actions();
    advance(&mut reconciler, &mut world, start, start.instant + Duration::from_secs(30));
    let actions = world.take_actions();
    assert_eq!(actions.len(), 2, "resolve and observe only: {actions:?}");
    assert!(matches!(actions[1], Action::Observe));
}

#[test]
fn check_in_publishes_a_fresh_heartbeat_every_period() {
    let mut config = config();
    config.check_in_period = Duration::from_secs(10);
    config.resync_period = Duration::from_secs(3600);
    let start = Now::new(Instant::now(), START_UNIX);
    let (mut reconciler, mut world) = (Reconciler::new(config, start.instant), World::default());
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    world.take_actions();
    // Before b's last-seen is 60 s old (it would leave the mesh).
    advance(&mut reconciler, &mut world, start, start.instant + Duration::from_secs(55));
    let actions = world.take_actions();
    let heartbeats: Vec<i64> = World::announcements(&actions).iter().map(|a| a.last_seen).collect();
    assert_eq!(heartbeats, [10, 20, 30, 40, 50].map(|at| START_UNIX + at));
    assert!(World::applies(&actions).is_empty(), "the data plane was already right");
}

#[test]
fn a_failed_apply_is_retried_with_doubling_bounded_delays_until_it_succeeds() {
    let (mut reconciler, mut world, start) = start();
    world.applies = (0..4).map(|_| Err(failure("failed to add route"))).collect();
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    assert!(!reconciler.is_healthy());
    assert_eq!(
        World::announcements(&world.take_actions()).len(),
        1,
        "a failed (partial) apply does not keep the node out of the mesh"
    );
    let mut delays = vec![reconciler.retry_delay()];
    let mut now = start;
    for _ in 0..4 {
        let retry = reconciler.poll_timeout().unwrap();
        now = advance(&mut reconciler, &mut world, now, retry);
        delays.push(reconciler.retry_delay());
    }
    let seconds = |s| Some(Duration::from_secs(s));
    assert_eq!(delays, [seconds(1), seconds(2), seconds(4), seconds(4), None], "1, 2, 4 s, capped at 4 s");
    assert_eq!(now.instant - start.instant, Duration::from_secs(1 + 2 + 4 + 4));
    assert!(reconciler.is_healthy());
    let reports = world.take_reports();
    let failed: Vec<Duration> = reports
        .iter()
        .filter_map(|r| match r {
            Report::PassFailed { retry_in, .. } => Some(*retry_in),
            _ => None,
        })
        .collect();
    assert_eq!(failed, [1, 2, 4, 4].map(Duration::from_secs));
    assert!(World::announcements(&world.take_actions()).is_empty(), "nothing new to announce");
}

/// With the firewall unwritable, the node is announced and the pass retried until the part
/// that failed is applied; each failure is reported.
#[test]
fn a_partly_failed_apply_announces_the_node_and_retries_the_rest() {
    let (mut reconciler, mut world, start) = start();
    world.applies = [Err(failure("failed to apply the plan: failed to apply IPv4 firewall rules"))].into();
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    let actions = world.take_actions();
    assert_eq!(World::announcements(&actions).len(), 1, "announced although the apply failed");
    assert_eq!(reconciler.announced().map(|a| a.hostname.as_str()), Some("a"));
    assert!(!reconciler.is_healthy());
    let failed = World::applies(&actions)[0].clone();
    let reports = world.take_reports();
    assert!(reports.iter().any(|r| matches!(r, Report::PassFailed { error, retry_in }
        if error.contains("firewall") && *retry_in == Duration::from_secs(1))));

    let retry = reconciler.poll_timeout().unwrap();
    assert_eq!(retry, start.instant + Duration::from_secs(1));
    advance(&mut reconciler, &mut world, start, retry);
    let actions = world.take_actions();
    assert_eq!(World::applies(&actions), [&failed], "the retry applies what failed");
    assert!(reconciler.is_healthy());
    assert!(World::announcements(&actions).is_empty(), "the announcement is not repeated");
}

#[test]
fn heartbeats_repeat_the_published_state_while_applies_fail() {
    let (mut reconciler, mut world, start) = start();
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    let published = World::announcements(&world.take_actions())[0].clone();
    // Node b moves; from now on every apply fails.
    world.applies = (0..100).map(|_| Err(failure("failed to update peer"))).collect();
    let mut moved = snapshot();
    moved.nodes[1].endpoint = Some(Endpoint::parse("198.51.100.9:51820").unwrap());
    let later = start.after(Duration::from_secs(5));
    reconciler.handle_event(Event::Snapshot(moved), later);
    world.serve(&mut reconciler, later);
    advance(&mut reconciler, &mut world, later, start.instant + Duration::from_secs(61));
    let actions = world.take_actions();
    let heartbeats = World::announcements(&actions);
    assert_eq!(heartbeats.len(), 2, "one heartbeat per check-in: {heartbeats:?}");
    for (heartbeat, at) in heartbeats.iter().zip([30, 60]) {
        assert_eq!(**heartbeat, LocalAnnouncement { last_seen: START_UNIX + at, ..published.clone() });
    }
    assert!(World::applies(&actions).len() >= 3, "the applies go on being retried");
}

#[test]
fn a_failed_announcement_is_retried_as_a_heartbeat_at_check_in() {
    let (mut reconciler, mut world, start) = start();
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    world.take_actions();
    world.announces = [Err(failure("failed to patch node a"))].into();
    let now = advance(&mut reconciler, &mut world, start, start.instant + Duration::from_secs(31));
    let actions = world.take_actions();
    let announced = World::announcements(&actions);
    assert_eq!(announced.len(), 2, "the check-in's announcement, then the heartbeat a pause later");
    assert_eq!(announced.iter().map(|a| a.last_seen).collect::<Vec<_>>(), [now.unix - 1, now.unix]);
    assert_eq!(reconciler.announced().map(|a| a.last_seen), Some(now.unix));
    let reports = world.take_reports();
    assert!(
        reports.contains(&Report::AnnounceFailed { error: "failed to patch node a: EIO".into(), heartbeat: false })
    );
    assert!(reconciler.is_healthy(), "a failed announcement does not fail the pass");
}

/// At start-up nothing is published yet: a failed first announcement has no heartbeat to fall
/// back to, so the announcement itself is retried after its pause until it goes through.
#[test]
fn a_first_announcement_that_fails_is_retried_until_the_node_is_published() {
    let (mut reconciler, mut world, start) = start();
    world.announces = (0..2).map(|_| Err(failure("failed to patch node a"))).collect();
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    assert_eq!(reconciler.announced(), None);
    assert!(!reconciler.sees_cluster(), "blind while the node cannot publish itself");
    // Pauses of 1 and 2 s after the two failures: published 3 s after the start.
    let now = advance(&mut reconciler, &mut world, start, start.instant + Duration::from_secs(5));
    let tries: Vec<i64> =
        World::announcements(&world.take_actions()).iter().map(|a| a.last_seen - START_UNIX).collect();
    assert_eq!(tries, [0, 1, 3], "the first announcement, then its retries");
    assert_eq!(reconciler.announced().map(|a| a.last_seen), Some(START_UNIX + 3));
    assert!(reconciler.sees_cluster());
    assert!(reconciler.failed_announcements.is_none());
    advance(&mut reconciler, &mut world, now, start.instant + Duration::from_secs(29));
    assert!(World::announcements(&world.take_actions()).is_empty(), "then nothing until the check-in");
}

#[test]
fn cluster_read_errors_pause_reading_with_backoff_and_a_snapshot_resets_it() {
    let (mut reconciler, mut world, start) = start();
    let mut now = start;
    let mut pauses = Vec::new();
    for _ in 0..4 {
        assert!(reconciler.wants_snapshots());
        reconciler.handle_event(Event::ClusterReadFailed(failure("watch nodes")), now);
        world.serve(&mut reconciler, now);
        assert!(!reconciler.wants_snapshots(), "no read while paused");
        let resume = reconciler.poll_timeout().unwrap();
        pauses.push(resume - now.instant);
        now = advance(&mut reconciler, &mut world, now, resume);
    }
    assert_eq!(pauses, [1, 2, 4, 4].map(Duration::from_secs));
    assert_eq!(world.take_reports().iter().filter(|r| r.error_event() == Some(ErrorEvent::Run)).count(), 4);
    reconciler.handle_event(Event::Snapshot(snapshot()), now);
    reconciler.handle_event(Event::ClusterReadFailed(failure("watch nodes")), now);
    assert_eq!(reconciler.poll_timeout(), Some(now.instant + Duration::from_secs(1)), "back to the first delay");
    assert!(world.take_actions().is_empty(), "read errors alone never touch the data plane");
}

#[test]
fn diagnostics_are_reported_once_per_change() {
    let (mut reconciler, mut world, start) = start();
    let mut cluster = snapshot();
    cluster.nodes[1].key = None; // b is not ready: left out of the mesh
    reconciler.handle_event(Event::Snapshot(cluster.clone()), start);
    world.serve(&mut reconciler, start);
    let diagnostics = |reports: Vec<Report>| -> Vec<String> {
        reports
            .into_iter()
            .filter_map(|r| match r {
                Report::Diagnostic(line) => Some(line),
                _ => None,
            })
            .collect()
    };
    let first = diagnostics(world.take_reports());
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].starts_with("Node b is left out of the mesh"), "{first:?}");
    let now = advance(&mut reconciler, &mut world, start, start.instant + Duration::from_secs(90));
    assert!(diagnostics(world.take_reports()).is_empty(), "not repeated at resync");
    let mut fresh = snapshot();
    fresh.nodes[1].last_seen = Some(now.unix);
    reconciler.handle_event(Event::Snapshot(fresh), now);
    world.serve(&mut reconciler, now);
    assert!(diagnostics(world.take_reports()).is_empty(), "b is back: nothing to say");
    reconciler.handle_event(Event::Snapshot(cluster), now);
    world.serve(&mut reconciler, now);
    assert_eq!(diagnostics(world.take_reports()), first, "said again when it comes back");
}

/// What the backend left out or ignored (an invalid Peer, a bad annotation value) is
/// reported once per change with the mesh's own diagnostics, counted, and readable.
#[test]
fn backend_diagnostics_are_reported_once_counted_and_readable() {
    let (mut reconciler, mut world, start) = start();
    let backend = SnapshotDiagnostics {
        skipped: vec![Skipped { kind: ObjectKind::Peer, name: "laptop".into(), reason: "no valid public key".into() }],
        warnings: vec![Warning {
            kind: ObjectKind::Node,
            name: "b".into(),
            annotation: Some("kilo.squat.ai/persistent-keepalive".into()),
            value: Some("soon".into()),
            reason: "not a number of seconds; ignored".into(),
        }],
    };
    reconciler.handle_event(Event::BackendDiagnostics(backend.clone()), start);
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    let reports = world.take_reports();
    let lines: Vec<&String> = reports
        .iter()
        .filter_map(|r| match r {
            Report::Diagnostic(line) => Some(line),
            _ => None,
        })
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("Peer laptop is left out of the mesh: no valid public key")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("persistent-keepalive=\"soon\"")), "{lines:?}");
    assert!(reports.iter().any(|r| matches!(r, Report::Mesh { skipped_peers: 1, warnings: 1, .. })), "{reports:?}");
    assert_eq!(reconciler.diagnostics().len(), 2, "readable for /status");

    // The same diagnostics with the next snapshot and at resync: not reported again.
    let later = start.after(Duration::from_secs(10));
    reconciler.handle_event(Event::BackendDiagnostics(backend), later);
    reconciler.handle_event(Event::Snapshot(snapshot()), later);
    world.serve(&mut reconciler, later);
    advance(&mut reconciler, &mut world, later, later.instant + Duration::from_secs(30));
    assert!(!world.take_reports().iter().any(|r| matches!(r, Report::Diagnostic(_))));

    // Fixed in the cluster: nothing left to show.
    reconciler.handle_event(Event::BackendDiagnostics(SnapshotDiagnostics::default()), later);
    reconciler.handle_event(Event::Snapshot(snapshot()), later);
    world.serve(&mut reconciler, later);
    assert!(reconciler.diagnostics().is_empty());
}

#[test]
fn a_detected_mtu_change_rewrites_the_interface_mtu() {
    let (mut reconciler, mut world, start) = start();
    world.mtu = Some(1420);
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    world.take_actions();
    assert!(world.take_reports().contains(&Report::MtuChanged { mtu: 1420, previous: None }));
    world.mtu = Some(1370);
    let now = start.after(Duration::from_secs(1));
    reconciler.request_pass(now);
    world.serve(&mut reconciler, now);
    assert_eq!(reconciler.config().options.mtu, Some(1370));
    assert!(world.take_reports().contains(&Report::MtuChanged { mtu: 1370, previous: Some(1420) }));
    let actions = world.take_actions();
    let plans = World::applies(&actions);
    assert_eq!(plans.len(), 1);
    assert!(format!("{:?}", plans[0]).contains("1370"), "the plan sets the new MTU: {:?}", plans[0]);
    // The same MTU again: nothing to report, nothing to apply.
    reconciler.request_pass(now);
    world.serve(&mut reconciler, now);
    assert!(!world.take_reports().iter().any(|r| matches!(r, Report::MtuChanged { .. })));
    assert!(World::applies(&world.take_actions()).is_empty());
}

#[test]
fn the_cni_file_is_an_explicit_step_and_its_errors_are_reported_once() {
    let mut config = config();
    config.update_cni = true;
    let now = Now::new(Instant::now(), START_UNIX);
    let mut reconciler = Reconciler::new(config, now.instant);
    let mut world = World {
        cni: [Err("permission denied".to_owned()), Err("permission denied".to_owned()), Ok(true)].into(),
        ..World::default()
    };
    reconciler.handle_event(Event::Snapshot(snapshot()), now);
    world.serve(&mut reconciler, now);
    assert!(world.take_actions().contains(&Action::UpdateCni { pod_cidr: "10.2.1.0/24".parse().unwrap() }));
    for _ in 0..2 {
        reconciler.request_pass(now);
        world.serve(&mut reconciler, now);
    }
    let reports = world.take_reports();
    let cni: Vec<&Report> =
        reports.iter().filter(|r| matches!(r, Report::CniFailed { .. } | Report::CniUpdated { .. })).collect();
    assert_eq!(
        cni,
        [
            &Report::CniFailed { error: "permission denied".into() },
            &Report::CniUpdated { pod_cidr: "10.2.1.0/24".parse().unwrap() }
        ]
    );
    assert!(reconciler.is_healthy(), "a CNI error does not fail the pass");
}

#[test]
fn without_the_local_node_nothing_is_applied_or_announced() {
    let (mut reconciler, mut world, now) = start();
    let mut cluster = snapshot();
    cluster.nodes.remove(0);
    reconciler.handle_event(Event::Snapshot(cluster), now);
    world.serve(&mut reconciler, now);
    let actions = world.take_actions();
    assert_eq!(actions.len(), 2, "resolve and observe: {actions:?}");
    assert!(world.take_reports().contains(&Report::LocalNodeMissing { hostname: "a".into() }));
}

#[test]
fn a_missing_local_node_is_reported_once_until_it_appears() {
    let (mut reconciler, mut world, now) = start();
    let mut cluster = snapshot();
    cluster.nodes.remove(0);
    let missing = |world: &mut World| {
        world.take_reports().iter().filter(|report| matches!(report, Report::LocalNodeMissing { .. })).count()
    };
    reconciler.handle_event(Event::Snapshot(cluster.clone()), now);
    world.serve(&mut reconciler, now);
    assert_eq!(missing(&mut world), 1);
    reconciler.handle_event(Event::Snapshot(cluster.clone()), now);
    world.serve(&mut reconciler, now);
    assert_eq!(missing(&mut world), 0, "a wrong --hostname warns once, not every pass");
    reconciler.handle_event(Event::Snapshot(snapshot()), now);
    world.serve(&mut reconciler, now);
    assert_eq!(missing(&mut world), 0);
    reconciler.handle_event(Event::Snapshot(cluster), now);
    world.serve(&mut reconciler, now);
    assert_eq!(missing(&mut world), 1, "reported again after the node left");
}

#[test]
fn a_snapshot_during_a_pass_runs_another_pass_after_it() {
    let (mut reconciler, mut world, now) = start();
    reconciler.handle_event(Event::Snapshot(snapshot()), now);
    assert!(matches!(reconciler.poll_action(), Some(Action::Resolve(_))));
    let mut moved = snapshot();
    moved.nodes[1].endpoint = Some(Endpoint::parse("198.51.100.9:51820").unwrap());
    reconciler.handle_event(Event::Snapshot(moved), now);
    assert!(reconciler.poll_action().is_none(), "one pass at a time");
    reconciler.handle_event(Event::Resolved(Resolution::unchanged(snapshot())), now);
    world.serve(&mut reconciler, now);
    let actions = world.take_actions();
    let resolves = actions.iter().filter(|action| matches!(action, Action::Resolve(_))).count();
    assert_eq!(resolves, 1, "the second pass followed the first: {actions:?}");
    let endpoint = world.dataplane.state.peers.values().find_map(|peer| peer.endpoint);
    assert_eq!(endpoint, Some("198.51.100.9:51820".parse().unwrap()));
}

#[test]
fn shutdown_cleans_up_the_data_plane_then_the_annotations_then_stops() {
    let (mut reconciler, mut world, now) = start();
    reconciler.handle_event(Event::ShutdownRequested, now);
    assert_eq!(reconciler.poll_action(), Some(Action::CleanUpDataplane));
    assert!(reconciler.poll_action().is_none());
    reconciler.handle_event(Event::CleanedUp(Err(failure("failed to delete chain KILO-NAT"))), now);
    assert_eq!(reconciler.poll_action(), Some(Action::CleanUpCluster { node: "a".into() }));
    reconciler.handle_event(Event::CleanedUp(Ok(())), now);
    assert!(reconciler.is_stopped());
    assert_eq!(reconciler.poll_timeout(), None);
    world.serve(&mut reconciler, now);
    let reports = world.take_reports();
    assert_eq!(
        reports,
        [
            Report::CleaningUp,
            Report::CleanUpFailed { what: "data plane", error: "failed to delete chain KILO-NAT: EIO".into() },
            Report::Stopped
        ]
    );
}

/// The driver interrupts an announcement in flight when asked to stop: shutdown comes first,
/// and the abandoned announcement is neither counted nor a reason to fail static.
#[test]
fn an_announcement_abandoned_for_shutdown_is_no_failure() {
    let (mut reconciler, mut world, now) = start();
    reconciler.handle_event(Event::Snapshot(snapshot()), now);
    let announcing = loop {
        match reconciler.poll_action().expect("the pass reaches its announcement") {
            action @ Action::Announce(_) => break action,
            Action::Resolve(snapshot) => reconciler.handle_event(Event::Resolved(Resolution::unchanged(snapshot)), now),
            Action::Observe => reconciler.handle_event(Event::Observed(Ok(world.dataplane.clone())), now),
            Action::Apply(_) => reconciler.handle_event(Event::Applied(Ok(())), now),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(matches!(announcing, Action::Announce(_)));
    reconciler.handle_event(Event::ShutdownRequested, now);
    let abandoned = BackendError::new("failed to announce the node", "interrupted by shutdown");
    reconciler.handle_event(Event::Announced(Err(abandoned)), now);
    world.serve(&mut reconciler, now);
    let reports = world.take_reports();
    assert!(!reports.iter().any(|report| report.error_event().is_some()), "{reports:?}");
    assert!(!reports.iter().any(|report| matches!(report, Report::ClusterLost { .. })), "{reports:?}");
    assert!(reconciler.is_stopped(), "the clean-up followed: {reports:?}");
}

#[test]
fn without_clean_up_the_end_of_the_cluster_stops_at_once() {
    let mut config = config();
    config.clean_up = false;
    let now = Now::new(Instant::now(), START_UNIX);
    let mut reconciler = Reconciler::new(config, now.instant);
    reconciler.handle_event(Event::ClusterEnded, now);
    assert!(reconciler.is_stopped());
    assert!(reconciler.poll_action().is_none());
    assert!(!reconciler.wants_snapshots());
}

#[test]
fn the_iptables_calls_of_an_applied_firewall_edit_are_reported_and_a_failed_apply_reports_none() {
    let iptables = |reports: &[Report]| -> Vec<crate::iptables_operations::IptablesOperation> {
        reports
            .iter()
            .filter_map(|report| match report {
                Report::IptablesApplied { operations } => Some(operations.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    };
    let (mut reconciler, mut world, now) = start();
    world.applies.push_back(Err(failure("apply the plan")));
    reconciler.handle_event(Event::Snapshot(snapshot()), now);
    world.serve(&mut reconciler, now);
    assert_eq!(iptables(&world.take_reports()), [], "nothing was applied");
    assert_eq!(World::applies(&world.take_actions()).len(), 1, "the failed apply");
    let now = advance(&mut reconciler, &mut world, now, now.instant + Duration::from_secs(5));
    let applied = World::applies(&world.take_actions()).into_iter().cloned().collect::<Vec<_>>();
    let expected: Vec<_> = applied.iter().flat_map(crate::iptables_operations::of_plan).collect();
    assert!(expected.iter().any(|call| call.chain == "KILO-NAT"), "the leader writes its NAT chain: {expected:?}");
    assert_eq!(iptables(&world.take_reports()), expected);
    reconciler.request_pass(now);
    world.serve(&mut reconciler, now);
    assert_eq!(iptables(&world.take_reports()), [], "a steady state edits nothing");
}

/// Every operation that removes a peer or a route.
fn removals(actions: &[Action]) -> Vec<String> {
    World::applies(actions)
        .iter()
        .flat_map(|plan| &plan.operations)
        .filter(|operation| matches!(operation.kind(), "remove_peer" | "delete_route" | "delete_rule"))
        .map(|operation| format!("{operation:?}"))
        .collect()
}

/// Fail static: through 3 minutes of failed reads, every peer and route stays; the agent says
/// so; once the cluster is seen again it recovers at once, and a node that really is gone is
/// removed after the grace period.
#[test]
fn an_outage_of_the_cluster_keeps_every_peer_and_route_and_recovers_at_once() {
    let (mut reconciler, mut world, start) = start();
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    let peers = world.dataplane.state.peers.clone();
    let routes = world.dataplane.state.routes.clone();
    assert!(!peers.is_empty() && !routes.is_empty());
    world.take_actions();
    world.take_reports();

    // The API server answers 500 (or refuses connections) from 5 s on, for 3 minutes: every
    // read the agent tries fails.
    let mut now = start.after(Duration::from_secs(5));
    let outage_end = start.instant + Duration::from_secs(5 + 180);
    reconciler.handle_event(Event::ClusterReadFailed(failure("failed to list nodes")), now);
    world.serve(&mut reconciler, now);
    assert!(!reconciler.sees_cluster());
    assert_eq!(reconciler.cluster_lost_since(), Some(START_UNIX));
    while now.instant < outage_end {
        let next = reconciler.poll_timeout().unwrap().min(outage_end);
        now = advance(&mut reconciler, &mut world, now, next);
        if reconciler.wants_snapshots() && now.instant < outage_end {
            reconciler.handle_event(Event::ClusterReadFailed(failure("failed to list nodes")), now);
            world.serve(&mut reconciler, now);
        }
    }
    let actions = world.take_actions();
    assert!(World::applies(&actions).is_empty() && removals(&actions).is_empty(), "{:?}", removals(&actions));
    assert_eq!((&world.dataplane.state.peers, &world.dataplane.state.routes), (&peers, &routes));
    assert!(World::announcements(&actions).len() >= 5, "heartbeats go on");
    assert!(reconciler.is_healthy(), "/health stays 200");
    let reports = world.take_reports();
    let lost: Vec<&Report> = reports.iter().filter(|r| matches!(r, Report::ClusterLost { .. })).collect();
    assert_eq!(lost, [&Report::ClusterLost { reason: "reading the cluster failed", since: START_UNIX }]);
    let pauses: Vec<Duration> = reports
        .iter()
        .filter_map(|r| match r {
            Report::ClusterReadFailed { retry_in, .. } => Some(*retry_in),
            _ => None,
        })
        .collect();
    assert!(pauses.iter().all(|pause| *pause <= Duration::from_secs(4)), "reads retried within seconds");

    // The cluster is back; b's heartbeat is as old as the outage (b died during it, or has not
    // published yet).
    let mut back = snapshot();
    back.now = now.unix;
    reconciler.handle_event(Event::Snapshot(back.clone()), now);
    world.serve(&mut reconciler, now);
    assert!(reconciler.sees_cluster());
    let reports = world.take_reports();
    assert!(reports.contains(&Report::ClusterRegained { outage: Duration::from_secs(185) }), "{reports:?}");
    let actions = world.take_actions();
    assert!(removals(&actions).is_empty(), "the outage is forgiven: {:?}", removals(&actions));
    assert_eq!(World::announcements(&actions).last().map(|a| a.last_seen), Some(now.unix), "a heartbeat at once");

    // b gets the grace period to publish a heartbeat; it never does, so it is removed then.
    let grace_end = now.instant + Duration::from_secs(60);
    advance(&mut reconciler, &mut world, now, grace_end - Duration::from_secs(1));
    assert!(removals(&world.take_actions()).is_empty(), "b keeps its grace period");
    advance(&mut reconciler, &mut world, now, grace_end + Duration::from_secs(30));
    assert!(!removals(&world.take_actions()).is_empty(), "a node that is really gone is removed");
}

/// Once the cluster is back every node heartbeats again: those fresh heartbeats are not taken
/// for heartbeats from the future of the forgiven clock (that would drop each node just as it
/// shows it is alive), while one an hour ahead is still refused.
#[test]
fn fresh_heartbeats_after_an_outage_keep_their_nodes() {
    let (mut reconciler, mut world, start) = start();
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    world.take_actions();
    let now = start.after(Duration::from_secs(5));
    reconciler.handle_event(Event::ClusterReadFailed(failure("failed to list nodes")), now);
    world.serve(&mut reconciler, now);
    let now = advance(&mut reconciler, &mut world, now, start.instant + Duration::from_secs(185));
    assert!(!reconciler.sees_cluster());
    assert!(removals(&world.take_actions()).is_empty());

    let mut back = snapshot();
    back.now = now.unix;
    back.nodes.iter_mut().for_each(|node| node.last_seen = Some(now.unix));
    reconciler.handle_event(Event::Snapshot(back.clone()), now);
    world.serve(&mut reconciler, now);
    assert!(reconciler.sees_cluster());
    assert!(removals(&world.take_actions()).is_empty(), "fresh heartbeats keep their nodes");

    back.nodes.iter_mut().filter(|node| node.name == "b").for_each(|node| node.last_seen = Some(now.unix + 3600));
    reconciler.handle_event(Event::Snapshot(back), now);
    world.serve(&mut reconciler, now);
    assert!(!removals(&world.take_actions()).is_empty(), "a heartbeat an hour ahead is refused");
}

/// Fail static too when the node's own heartbeat cannot be written; the heartbeat is retried
/// within seconds, and a success ends it.
#[test]
fn a_heartbeat_that_cannot_be_written_fails_static_and_is_retried_with_bounded_backoff() {
    // Passes every second, as the end-to-end suites run: they must not each write to the API.
    let mut config = config();
    config.resync_period = Duration::from_secs(1);
    let start = Now::new(Instant::now(), START_UNIX);
    let (mut reconciler, mut world) = (Reconciler::new(config, start.instant), World::default());
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    let peers = world.dataplane.state.peers.clone();
    world.take_actions();
    world.announces = (0..100).map(|_| Err(failure("failed to patch node a"))).collect();
    let now = advance(&mut reconciler, &mut world, start, start.instant + Duration::from_secs(30));
    assert!(!reconciler.sees_cluster());
    let now = advance(&mut reconciler, &mut world, now, start.instant + Duration::from_secs(200));
    let actions = world.take_actions();
    assert!(removals(&actions).is_empty());
    assert_eq!(world.dataplane.state.peers, peers);
    let observes = actions.iter().filter(|action| matches!(action, Action::Observe)).count();
    assert!(observes >= 150, "the data plane is still reconciled every second: {observes} passes");
    let tries: Vec<i64> = World::announcements(&actions).iter().map(|a| a.last_seen).collect();
    let gaps: Vec<i64> = tries.windows(2).map(|pair| pair[1] - pair[0]).collect();
    assert!(gaps.iter().all(|gap| (1..=16).contains(gap)), "pauses of 1 s doubling to 15 s: {gaps:?}");
    assert!((11..=16).contains(&tries.len()), "about one try every 15 s, not one per pass: {tries:?}");
    let in_any_minute = tries.iter().map(|t| tries.iter().filter(|u| (*t..*t + 60).contains(*u)).count());
    assert!(in_any_minute.take(tries.len() - 4).all(|n| n >= 4), "several tries within Kilo's readiness window");
    world.announces.clear();
    let retry = reconciler.failed_announcements.and_then(|retry| retry.at).expect("a heartbeat retry is due");
    assert!(retry - now.instant <= Duration::from_secs(15));
    advance(&mut reconciler, &mut world, now, retry);
    assert!(reconciler.sees_cluster());
}

#[test]
fn the_heartbeat_goes_out_as_soon_as_the_cluster_can_be_read_again() {
    let (mut reconciler, mut world, start) = start();
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    world.take_actions();
    // The API server is gone: the check-in's heartbeat and the reads fail.
    world.announces = (0..100).map(|_| Err(failure("failed to patch node a"))).collect();
    let now = advance(&mut reconciler, &mut world, start, start.instant + Duration::from_secs(100));
    for _ in 0..3 {
        reconciler.handle_event(Event::ClusterReadFailed(failure("failed to list nodes")), now);
    }
    world.serve(&mut reconciler, now);
    let paused_until = reconciler.failed_announcements.and_then(|retry| retry.at);
    assert!(paused_until.is_some_and(|at| at > now.instant), "the heartbeat is paused");
    // It is back: the first snapshot brings the heartbeat with it, not the end of the pause.
    world.announces.clear();
    world.take_actions();
    reconciler.handle_event(Event::Snapshot(snapshot()), now);
    world.serve(&mut reconciler, now);
    let actions = world.take_actions();
    assert_eq!(World::announcements(&actions).iter().map(|a| a.last_seen).collect::<Vec<_>>(), [now.unix]);
    assert!(reconciler.sees_cluster());
}

mod failover;
mod links;
mod route_conflicts;
