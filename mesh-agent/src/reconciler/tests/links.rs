//! The data plane's devices with time as a value: a WireGuard device that vanished and came
//! back (a restarted wireguard-go) is repaired as soon as its notifications settle, not when a
//! backoff that grew while it was gone ends; a burst of notifications is one pass; a route
//! deleted by hand is put back, and the agent's own deletions start nothing.

use mesh_core::RouteKey;
use mesh_core::backend::LinkChange;

use super::*;

fn device_gone() -> BackendError {
    failure("failed to apply the plan: failed to configure WireGuard interface kilo0: interface kilo0 not found")
}

fn appeared() -> Event {
    Event::LinkChanged(LinkChange::Appeared { interface: "kilo0".into() })
}

fn changed(up: bool) -> Event {
    Event::LinkChanged(LinkChange::Changed { interface: "kilo0".into(), up, mtu: Some(1420) })
}

fn passes(actions: &[Action]) -> usize {
    actions.iter().filter(|action| matches!(action, Action::Resolve(_))).count()
}

/// Kilo's retry timing: 1 s doubling to 30 s, so the backoff outgrows a short outage.
fn with_kilo_backoff() -> (Reconciler, World, Now) {
    let now = Now::new(Instant::now(), START_UNIX);
    let mut config = config();
    config.retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    (Reconciler::new(config, now.instant), World::default(), now)
}

#[test]
fn a_device_that_comes_back_is_repaired_once_its_notifications_settle() {
    let (mut reconciler, mut world, start) = with_kilo_backoff();
    // The device is gone: every apply fails, and the retries back off (1, 2, 4, 8, 16 s).
    world.applies = (0..100).map(|_| Err(device_gone())).collect();
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    let now = advance(&mut reconciler, &mut world, start, start.instant + Duration::from_secs(20));
    assert_eq!(reconciler.retry_delay(), Some(Duration::from_secs(16)), "backed off while the device was gone");
    let next_retry = reconciler.poll_timeout().unwrap();
    assert!(
        next_retry - now.instant >= Duration::from_secs(9),
        "the next retry is {:?} away",
        next_retry - now.instant
    );
    world.take_actions();
    world.take_reports();

    // wireguard-go restarts: its device appears, gets its carrier, its MTU, within milliseconds.
    world.applies.clear();
    let ms = |n| now.after(Duration::from_millis(n));
    reconciler.handle_event(appeared(), ms(0));
    reconciler.handle_event(changed(false), ms(3));
    reconciler.handle_event(changed(false), ms(40));
    assert_eq!(reconciler.poll_timeout(), Some(ms(140).instant), "100 ms after the last change of the burst");
    assert!(world.take_actions().is_empty() && reconciler.poll_action().is_none(), "nothing before the burst settles");
    advance(&mut reconciler, &mut world, now, ms(140).instant);
    let actions = world.take_actions();
    assert_eq!(passes(&actions), 1, "one pass for the burst");
    assert_eq!(World::applies(&actions).len(), 1);
    assert!(reconciler.is_healthy(), "repaired 140 ms after the device appeared");
    assert_eq!(reconciler.retry_delay(), None);
    let reports = world.take_reports();
    let changes = reports.iter().filter(|report| matches!(report, Report::LinkChanged(_))).count();
    assert_eq!(changes, 3, "each change is reported (and counted)");
    assert_eq!(reconciler.poll_timeout(), Some(start.instant + Duration::from_secs(30)), "the resync is next");
}

#[test]
fn a_pass_that_still_fails_after_a_change_backs_off_from_the_start() {
    let (mut reconciler, mut world, start) = with_kilo_backoff();
    world.applies = (0..100).map(|_| Err(device_gone())).collect();
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    let now = advance(&mut reconciler, &mut world, start, start.instant + Duration::from_secs(20));
    assert_eq!(reconciler.retry_delay(), Some(Duration::from_secs(16)));

    // The device appeared, but its daemon is not answering yet: the pass fails again, and the
    // next try comes 1 s later, not 30 s.
    reconciler.handle_event(appeared(), now);
    let settled = now.after(Duration::from_millis(100));
    advance(&mut reconciler, &mut world, now, settled.instant);
    assert!(!reconciler.is_healthy());
    assert_eq!(reconciler.retry_delay(), Some(Duration::from_secs(1)));
    assert_eq!(reconciler.poll_timeout(), Some(settled.instant + Duration::from_secs(1)));
    world.applies.clear();
    advance(&mut reconciler, &mut world, settled, settled.instant + Duration::from_secs(1));
    assert!(reconciler.is_healthy());
}

#[test]
fn a_flapping_device_gets_a_pass_a_second_not_one_per_notification() {
    let (mut reconciler, mut world, start) = start();
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    world.take_actions();
    // A change every 20 ms for 3 s.
    let mut now = start;
    for n in 0..150 {
        let at = start.after(Duration::from_millis(20 * n));
        now = advance(&mut reconciler, &mut world, now, at.instant);
        reconciler.handle_event(changed(n % 2 == 0), now);
    }
    advance(&mut reconciler, &mut world, now, start.instant + Duration::from_secs(4));
    assert_eq!(passes(&world.take_actions()), 3, "one pass per second of flapping, plus the last burst's");
}

#[test]
fn a_change_during_a_pass_runs_another_pass_after_it() {
    let (mut reconciler, mut world, start) = start();
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    // The pass is in flight (resolving) when the device changes and the burst settles.
    reconciler.handle_event(changed(true), start);
    let settled = start.after(Duration::from_millis(100));
    reconciler.handle_timeout(settled);
    world.serve(&mut reconciler, settled);
    assert_eq!(passes(&world.take_actions()), 2, "the pass in flight, then the device's");
}

#[test]
fn a_route_deleted_by_hand_is_put_back_and_the_agents_own_deletions_start_nothing() {
    let (mut reconciler, mut world, start) = start();
    reconciler.handle_event(Event::Snapshot(snapshot()), start);
    world.serve(&mut reconciler, start);
    let to_b: RouteKey = RouteKey { table: mesh_core::MAIN_TABLE, dst: "10.2.2.0/24".parse().unwrap() };
    assert!(world.dataplane.state.routes.contains_key(&to_b), "a routes b's pods through the mesh");
    world.take_actions();
    world.take_reports();

    // `ip route del 10.2.2.0/24`: put back as soon as the notification settles.
    world.dataplane.state.routes.remove(&to_b);
    reconciler.handle_event(Event::LinkChanged(LinkChange::RouteDeleted(to_b)), start);
    let settled = start.after(Duration::from_millis(100));
    assert_eq!(reconciler.poll_timeout(), Some(settled.instant));
    let now = advance(&mut reconciler, &mut world, start, settled.instant);
    let actions = world.take_actions();
    assert_eq!(passes(&actions), 1);
    let added = World::applies(&actions)
        .iter()
        .flat_map(|plan| &plan.operations)
        .any(|operation| matches!(operation, mesh_core::Operation::AddRoute(route) if route.key() == to_b));
    assert!(added, "the deleted route is added again: {actions:?}");
    assert!(world.dataplane.state.routes.contains_key(&to_b));
    let reports = world.take_reports();
    assert!(reports.iter().any(|report| matches!(report, Report::LinkChanged(LinkChange::RouteDeleted(_)))));

    // b leaves: the agent deletes its routes, and the kernel announces those deletions too.
    let before = world.dataplane.state.routes.clone();
    let mut without_b = snapshot();
    without_b.nodes.retain(|node| node.name != "b");
    reconciler.handle_event(Event::Snapshot(without_b), now);
    world.serve(&mut reconciler, now);
    let deleted: Vec<RouteKey> = before.keys().filter(|key| !world.dataplane.state.routes.contains_key(key)).collect();
    assert!(deleted.contains(&to_b), "the plan deleted the route to b's pods");
    world.take_actions();
    world.take_reports();
    let next_timer = reconciler.poll_timeout();
    for route in deleted {
        reconciler.handle_event(Event::LinkChanged(LinkChange::RouteDeleted(route)), now);
    }
    assert_eq!(reconciler.poll_timeout(), next_timer, "no pass for the agent's own deletions");
    assert!(reconciler.poll_action().is_none());
    assert!(reconciler.poll_report().is_none(), "nothing to log or count either");
}
