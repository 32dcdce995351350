//! Route conflicts with time as a value: a route whose place a route that is not the mesh's
//! holds is refused by the data plane; the refusal is reported once, fails nothing, starts no
//! backoff, and the place is looked at again at each resync, not in a loop.

use mesh_core::{DesiredState, Operation, Topology};

use super::*;

/// The first route node a wants (its route to b's pods).
fn wanted_route() -> mesh_core::Route {
    let options = Options::for_host("a");
    let topology = Topology::compute(&snapshot(), &options).unwrap();
    *DesiredState::from_topology(&topology, &options).0.routes.iter().next().expect("a wants routes")
}

/// A reconciler that resyncs every 10 s (b's heartbeat stays fresh for the minute these tests
/// last), with a foreign route in the place of [`wanted_route`].
fn start_with_conflict() -> (Reconciler, World, Now, mesh_core::Route) {
    let now = Now::new(Instant::now(), START_UNIX);
    let mut config = config();
    config.resync_period = RESYNC;
    let mut world = World::default();
    let route = wanted_route();
    world.foreign_routes = vec![route];
    (Reconciler::new(config, now.instant), world, now, route)
}

const RESYNC: Duration = Duration::from_secs(10);

fn conflicts(reports: &[Report]) -> (Vec<mesh_core::Route>, Vec<mesh_core::Route>) {
    let new = reports
        .iter()
        .filter_map(|report| match report {
            Report::RouteConflict(conflict) => Some(conflict.route),
            _ => None,
        })
        .collect();
    let resolved = reports
        .iter()
        .filter_map(|report| match report {
            Report::RouteConflictResolved(conflict) => Some(conflict.route),
            _ => None,
        })
        .collect();
    (new, resolved)
}

#[test]
fn a_route_conflict_is_reported_once_and_fails_nothing() {
    let (mut reconciler, mut world, start, route) = start_with_conflict();
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    assert!(reconciler.is_healthy(), "a refusal is not a failure");
    assert_eq!(reconciler.retry_delay(), None, "no backoff");
    let reports = world.take_reports();
    assert_eq!(conflicts(&reports), (vec![route], vec![]));
    assert!(!reports.iter().any(|report| matches!(report, Report::PassFailed { .. })));
    let applied: Vec<&str> = reports
        .iter()
        .find_map(|report| match report {
            Report::Applied { operations } => Some(operations.clone()),
            _ => None,
        })
        .expect("the rest of the plan is applied");
    let wanted = World::applies(&world.take_actions())[0].operations.iter().filter(|o| o.kind() == "add_route").count();
    assert_eq!(
        applied.iter().filter(|kind| **kind == "add_route").count(),
        wanted - 1,
        "the refused route is not counted"
    );
    assert_eq!(reconciler.poll_timeout(), Some(start.instant + RESYNC), "no early retry");

    // 50 s: the place is looked at again at each resync (5 applies of that one route),
    // reported no more, and never counted as a failure.
    advance(&mut reconciler, &mut world, start, start.instant + 5 * RESYNC);
    let actions = world.take_actions();
    let applies = World::applies(&actions);
    assert_eq!(applies.len(), 5, "once per resync");
    assert!(applies.iter().all(|plan| plan.operations == [Operation::AddRoute(route)]));
    let reports = world.take_reports();
    assert_eq!(conflicts(&reports), (vec![], vec![]));
    assert!(!reports.iter().any(|report| matches!(report, Report::Applying { .. })), "asking again is no news");
    assert!(reports.iter().all(|report| report.error_event().is_none()), "{reports:?}");
    assert!(reconciler.is_healthy());
}

#[test]
fn a_freed_place_gets_its_route_at_the_next_resync_and_the_conflict_ends() {
    let (mut reconciler, mut world, start, route) = start_with_conflict();
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    world.take_reports();
    world.foreign_routes.clear();
    let now = advance(&mut reconciler, &mut world, start, start.instant + RESYNC);
    assert!(world.dataplane.state.routes.iter().any(|installed| *installed == route));
    assert_eq!(conflicts(&world.take_reports()), (vec![], vec![route]));
    world.take_actions();
    advance(&mut reconciler, &mut world, now, start.instant + 2 * RESYNC);
    assert!(World::applies(&world.take_actions()).is_empty(), "steady again");
    assert_eq!(conflicts(&world.take_reports()), (vec![], vec![]));
}

#[test]
fn a_conflict_beside_a_real_failure_backs_off_for_the_failure_only() {
    let (mut reconciler, mut world, start, route) = start_with_conflict();
    world.applies = [Err(failure("failed to apply the plan: failed to apply IPv4 firewall rules"))].into();
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    assert!(!reconciler.is_healthy());
    assert_eq!(reconciler.retry_delay(), Some(Duration::from_secs(1)), "the firewall is retried");
    assert_eq!(conflicts(&world.take_reports()), (vec![route], vec![]));
    // The retry applies the firewall; the conflict stays, reported once.
    advance(&mut reconciler, &mut world, start, start.instant + Duration::from_secs(1));
    assert!(reconciler.is_healthy());
    assert_eq!(reconciler.retry_delay(), None);
    assert_eq!(conflicts(&world.take_reports()), (vec![], vec![]));
}
