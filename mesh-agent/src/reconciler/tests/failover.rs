//! Fast leader failover with time as a value: the successor probes the leader, claims it after
//! three misses in a row, withdraws the claim after the hold-down, and never claims while the
//! leader's kernel answers.

use std::net::IpAddr;

use mesh_core::{Endpoint, Key, NodeSpec};

use super::*;

/// Location x: x1 (Kilo's leader: first by name), x2, and optionally x3; location y: y1.
fn cluster(x_members: usize) -> ClusterSnapshot {
    let node = |name: &str, location: &str, octet: u8| NodeSpec {
        name: name.into(),
        endpoint: Some(Endpoint::parse(&format!("192.168.{octet}.1:51820")).expect("valid")),
        key: Some(Key::from_bytes([octet; 32])),
        internal_ip: Some(format!("192.168.{octet}.1/24").parse().expect("valid")),
        location: location.into(),
        pod_subnet: Some(format!("10.2.{octet}.0/24").parse().expect("valid")),
        last_seen: Some(START_UNIX),
        failover_capable: true,
        ..NodeSpec::default()
    };
    let mut nodes = vec![node("x1", "x", 1), node("x2", "x", 2), node("y1", "y", 9)];
    if x_members == 3 {
        nodes.push(node("x3", "x", 3));
    }
    ClusterSnapshot { nodes, peers: vec![], now: START_UNIX }
}

fn ip(octet: u8) -> IpAddr {
    IpAddr::from([192, 168, octet, 1])
}

fn started(host: &str, snapshot: ClusterSnapshot) -> (Reconciler, World, Now) {
    let now = Now::new(Instant::now(), START_UNIX);
    let mut reconciler = Reconciler::new(Config::new(Options::for_host(host)), now.instant);
    let mut world = World::default();
    reconciler.handle_event(Event::Snapshot(snapshot), now);
    world.serve(&mut reconciler, now);
    (reconciler, world, now)
}

fn probes(actions: &[Action]) -> Vec<IpAddr> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Probe { ip, .. } => Some(*ip),
            _ => None,
        })
        .collect()
}

/// Runs for `duration` in steps of the probe interval; every probe is answered at once with
/// `answers(ip)`. Returns the time reached and the probes sent.
fn run_for(
    reconciler: &mut Reconciler,
    world: &mut World,
    mut now: Now,
    duration: Duration,
    answers: impl Fn(IpAddr) -> bool,
) -> (Now, Vec<IpAddr>) {
    let end = now.instant + duration;
    let mut sent = Vec::new();
    while now.instant < end {
        now = advance(reconciler, world, now, now.instant + Duration::from_millis(500));
        // Answers can ask for more probes (the witness): answer until none is pending.
        loop {
            let pending = probes(&world.take_actions());
            if pending.is_empty() {
                break;
            }
            for ip in pending {
                sent.push(ip);
                reconciler.handle_event(Event::Probed { ip, reachable: answers(ip) }, now);
                world.serve(reconciler, now);
            }
        }
    }
    (now, sent)
}

fn claims(reports: &[Report]) -> Vec<&str> {
    reports
        .iter()
        .filter_map(|report| match report {
            Report::FailoverClaimed { leader, .. } => Some(leader.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn three_misses_in_a_row_make_the_successor_claim_and_lead() {
    let (mut reconciler, mut world, now) = started("x2", cluster(2));
    assert_eq!(reconciler.leaders()["location:x"], "x1");
    let (now, sent) = run_for(&mut reconciler, &mut world, now, Duration::from_millis(1000), |_| false);
    assert_eq!(sent, vec![ip(1); 2], "one probe of the leader every 500 ms");
    assert!(claims(&world.reports).is_empty(), "two misses are not enough");
    let (_, _) = run_for(&mut reconciler, &mut world, now, Duration::from_millis(500), |_| false);
    assert_eq!(claims(&world.reports), vec!["x1"]);
    assert_eq!(reconciler.failover_claim(), Some("x1"));
    let announced = reconciler.announced().expect("the claim is announced");
    assert_eq!(announced.leader_unreachable.as_deref(), Some("x1"));
    assert!(announced.failover_capable);
    assert_eq!(reconciler.leaders()["location:x"], "x2", "the claimant leads at once");
    assert!(world.reports.iter().any(|report| matches!(report,
        Report::LeaderChanged { segment, from: Some(from), to, .. } if segment == "location:x" && from == "x1" && to == "x2")));
    assert!(world.reports.iter().any(|report| matches!(report, Report::Mesh { leader: true, .. })));
}

#[test]
fn misses_that_are_not_in_a_row_do_not_claim() {
    let (mut reconciler, mut world, now) = started("x2", cluster(2));
    let mut count = 0;
    let answers = move |_: IpAddr| {
        count += 1;
        count % 3 == 0
    };
    let answers = std::cell::RefCell::new(answers);
    let (_, sent) = run_for(&mut reconciler, &mut world, now, Duration::from_secs(10), |ip| (answers.borrow_mut())(ip));
    assert_eq!(sent.len(), 20);
    assert!(claims(&world.reports).is_empty());
    assert_eq!(reconciler.failover_claim(), None);
}

#[test]
fn a_leader_whose_kernel_answers_is_never_claimed_and_only_the_successor_probes() {
    // x1's agent crashed: its heartbeat ages, but its kernel answers every probe.
    let (mut reconciler, mut world, now) = started("x2", cluster(2));
    let (_, sent) = run_for(&mut reconciler, &mut world, now, Duration::from_secs(50), |_| true);
    assert_eq!(sent.len(), 100);
    assert!(claims(&world.reports).is_empty());
    assert_eq!(reconciler.leaders()["location:x"], "x1");

    for host in ["x1", "y1"] {
        let (mut reconciler, mut world, now) = started(host, cluster(2));
        let (_, sent) = run_for(&mut reconciler, &mut world, now, Duration::from_secs(5), |_| false);
        assert!(sent.is_empty(), "{host} is not the successor and does not probe");
    }
}

#[test]
fn the_claim_is_withdrawn_after_the_leader_answered_for_the_whole_hold_down() {
    let (mut reconciler, mut world, now) = started("x2", cluster(2));
    let (now, _) = run_for(&mut reconciler, &mut world, now, Duration::from_millis(1500), |_| false);
    assert_eq!(reconciler.failover_claim(), Some("x1"));
    // x1 comes back for 40 s, misses once, then answers: the hold-down starts again.
    let (now, sent) = run_for(&mut reconciler, &mut world, now, Duration::from_secs(40), |_| true);
    assert!(sent.iter().all(|probed| *probed == ip(1)), "the claimant keeps probing the deposed leader");
    let (now, _) = run_for(&mut reconciler, &mut world, now, Duration::from_millis(500), |_| false);
    let (now, _) = run_for(&mut reconciler, &mut world, now, Duration::from_secs(59), |_| true);
    assert_eq!(reconciler.failover_claim(), Some("x1"), "not before 60 s without a miss");
    world.take_reports();
    let (_, _) = run_for(&mut reconciler, &mut world, now, Duration::from_secs(2), |_| true);
    assert_eq!(reconciler.failover_claim(), None);
    assert_eq!(reconciler.announced().and_then(|a| a.leader_unreachable.clone()), None);
    assert_eq!(reconciler.leaders()["location:x"], "x1", "Kilo's rule again");
    let reports = world.take_reports();
    assert!(reports.iter().any(|r| matches!(r, Report::FailoverClaimWithdrawn { leader, .. } if leader == "x1")));
    assert!(claims(&reports).is_empty(), "no new claim: no flapping");
}

#[test]
fn with_three_members_the_successor_claims_only_if_another_member_answers() {
    // Cut off from everyone: no claim, a warning instead.
    let (mut reconciler, mut world, now) = started("x2", cluster(3));
    let (_, sent) = run_for(&mut reconciler, &mut world, now, Duration::from_millis(1500), |_| false);
    assert_eq!(sent, vec![ip(1), ip(1), ip(1), ip(3)], "the witness x3 is asked after the third miss");
    assert!(claims(&world.reports).is_empty());
    assert!(world.reports.iter().any(|r| matches!(r, Report::FailoverHeldBack { leader } if leader == "x1")));

    // Only the leader is gone: x3 answers, x2 claims.
    let (mut reconciler, mut world, now) = started("x2", cluster(3));
    let (_, _) = run_for(&mut reconciler, &mut world, now, Duration::from_millis(1500), |ip| ip != self::ip(1));
    assert_eq!(claims(&world.reports), vec!["x1"]);
    assert_eq!(reconciler.leaders()["location:x"], "x2");
}

#[test]
fn without_the_capability_everywhere_nobody_probes() {
    let mut snapshot = cluster(2);
    snapshot.nodes[2].failover_capable = false; // y1 runs Kilo
    let (mut reconciler, mut world, now) = started("x2", snapshot);
    let (_, sent) = run_for(&mut reconciler, &mut world, now, Duration::from_secs(5), |_| false);
    assert!(sent.is_empty());
    assert!(claims(&world.reports).is_empty());

    // The flag off: no probe either, and the node does not announce the capability.
    let now = Now::new(Instant::now(), START_UNIX);
    let options = Options { fast_failover: false, ..Options::for_host("x2") };
    let mut reconciler = Reconciler::new(Config::new(options), now.instant);
    let mut world = World::default();
    reconciler.handle_event(Event::Snapshot(cluster(2)), now);
    world.serve(&mut reconciler, now);
    let (_, sent) = run_for(&mut reconciler, &mut world, now, Duration::from_secs(5), |_| false);
    assert!(sent.is_empty());
    assert!(reconciler.announced().is_some_and(|a| !a.failover_capable));
}
