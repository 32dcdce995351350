//! The tokio driver and the reconciler against mockall mocks of both backends.

use std::sync::Arc;
use std::time::Duration;

use mesh_agent::driver::{Driver, Host};
use mesh_agent::metrics::{ErrorEvent, Metrics, Telemetry};
use mesh_agent::reconciler::Config;
use mesh_core::backend::{
    BackendError, LinkChange, MockClusterBackend, MockDataplane, RouteConflict, SnapshotDiagnostics,
};
use mesh_core::time::{Backoff, unix_seconds};
use mesh_core::{ClusterSnapshot, DesiredState, ObjectKind, ObservedState, Options, Skipped, Topology};
use mockall::Sequence;
use mockall::predicate::always;

/// A host whose node already has everything it needs, and no DNS names.
struct StaticHost;

impl Host for StaticHost {}

fn unix_now() -> i64 {
    unix_seconds(std::time::SystemTime::now())
}

/// A driver over the mocks whose reports go to fresh metrics and status.
fn driver(
    mut cluster: MockClusterBackend,
    mut dataplane: MockDataplane,
    config: Config,
) -> (Driver<MockClusterBackend, MockDataplane, StaticHost, Telemetry>, Arc<Metrics>) {
    // Translation found nothing wrong, and the data plane refuses no route (tests that need
    // either set their own).
    cluster.expect_diagnostics().returning(Default::default);
    dataplane.expect_route_conflicts().returning(Vec::new);
    let telemetry = Telemetry::new();
    let metrics = telemetry.metrics();
    (Driver::new(cluster, dataplane, StaticHost, config).with_sink(telemetry), metrics)
}

fn snapshot() -> ClusterSnapshot {
    mesh_tests::two_locations(unix_now())
}

fn config() -> Config {
    let mut config = Config::new(Options::for_host("a"));
    config.retry = Backoff::new(Duration::from_millis(10), Duration::from_secs(30));
    config
}

fn desired() -> DesiredState {
    let snapshot = snapshot();
    let options = Options::for_host("a");
    DesiredState::from_topology(&Topology::compute(&snapshot, &options).unwrap(), &options).0
}

#[tokio::test]
async fn a_snapshot_leads_to_exactly_one_apply_and_one_announcement() {
    let mut cluster = MockClusterBackend::new();
    let mut next = Sequence::new();
    cluster.expect_next_snapshot().times(1).in_sequence(&mut next).returning(|| Ok(Some(snapshot())));
    cluster.expect_next_snapshot().times(1).in_sequence(&mut next).returning(|| Ok(None));
    cluster
        .expect_announce()
        .times(1)
        .withf(|a| a.hostname == "a" && a.wireguard_ip == Some("10.4.0.1/16".parse().unwrap()) && a.key.is_some())
        .returning(|_| Ok(()));
    let mut dataplane = MockDataplane::new();
    dataplane.expect_observe().times(1).returning(|| Ok(ObservedState::default()));
    dataplane.expect_apply().times(1).withf(|plan| !plan.is_empty()).returning(|_| Ok(()));
    let mut config = config();
    config.clean_up = false;
    let (mut agent, metrics) = driver(cluster, dataplane, config);
    agent.run(std::future::pending()).await;
    assert_eq!(metrics.reconciles(), 1);
    assert!(metrics.operations("add_peer") == 1 && metrics.operations("add_route") > 0);
    let topology = agent.sink().status().lock().unwrap().topology.clone();
    assert!(topology.is_some_and(|topology| topology.to_dot().starts_with("digraph kilo")));
}

#[tokio::test]
async fn an_empty_plan_is_not_applied() {
    let mut cluster = MockClusterBackend::new();
    cluster.expect_announce().times(1).returning(|_| Ok(()));
    let mut dataplane = MockDataplane::new();
    dataplane.expect_observe().times(2).returning(|| Ok(ObservedState::of(desired())));
    dataplane.expect_apply().never();
    let (mut agent, metrics) = driver(cluster, dataplane, config());
    agent.update_snapshot(snapshot());
    agent.reconcile().await;
    // A resync with nothing new: no write, and the announcement is not repeated before check-in.
    agent.reconcile().await;
    assert_eq!(metrics.reconciles(), 2);
    assert_eq!(metrics.errors(ErrorEvent::Apply), 0);
}

#[tokio::test]
async fn an_apply_error_is_counted_retried_with_backoff_and_not_announced() {
    let mut cluster = MockClusterBackend::new();
    cluster.expect_announce().times(1).returning(|_| Ok(()));
    let mut dataplane = MockDataplane::new();
    dataplane.expect_observe().times(3).returning(|| Ok(ObservedState::default()));
    let mut attempts = Sequence::new();
    dataplane
        .expect_apply()
        .times(2)
        .in_sequence(&mut attempts)
        .returning(|_| Err(BackendError::new("failed to add route 10.2.2.0/24 via 10.4.0.2 dev kilo0", "EPERM")));
    dataplane.expect_apply().times(1).in_sequence(&mut attempts).returning(|_| Ok(()));
    let (mut agent, metrics) = driver(cluster, dataplane, config());
    agent.update_snapshot(snapshot());
    agent.reconcile().await;
    assert_eq!(metrics.errors(ErrorEvent::Apply), 1);
    assert_eq!(agent.reconciler().retry_delay(), Some(Duration::from_millis(10)));
    assert!(!agent.sink().status().lock().unwrap().healthy);
    agent.reconcile().await;
    assert_eq!(agent.reconciler().retry_delay(), Some(Duration::from_millis(20)), "the delay doubles");
    agent.reconcile().await;
    assert_eq!(agent.reconciler().retry_delay(), None);
    assert_eq!(metrics.errors(ErrorEvent::Apply), 2);
    assert!(agent.sink().status().lock().unwrap().healthy);
}

/// With tokio's clock paused: the driver's timers are tokio's, so time jumps instead of passing.
#[tokio::test(start_paused = true)]
async fn the_loop_retries_a_failed_apply_by_itself() {
    let mut cluster = MockClusterBackend::new();
    let mut next = Sequence::new();
    cluster.expect_next_snapshot().times(1).in_sequence(&mut next).returning(|| Ok(Some(snapshot())));
    cluster.expect_announce().times(1).returning(|_| Ok(()));
    let mut dataplane = MockDataplane::new();
    dataplane.expect_observe().returning(|| Ok(ObservedState::default()));
    let mut attempts = Sequence::new();
    dataplane
        .expect_apply()
        .times(1)
        .in_sequence(&mut attempts)
        .returning(|_| Err(BackendError::new("failed to set up kilo0", "EBUSY")));
    dataplane.expect_apply().times(1).in_sequence(&mut attempts).returning(|_| Ok(()));
    let mut config = config();
    config.clean_up = false;
    // The backend has nothing more to say after the first snapshot: the retry timer must act.
    cluster.expect_next_snapshot().returning(|| Err(BackendError::new("watch", "connection refused")));
    let (mut agent, metrics) = driver(cluster, dataplane, config);
    let status = agent.sink().status();
    let healthy = async move {
        while !status.lock().unwrap().healthy {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), agent.run(healthy)).await.expect("recovered within 5 s");
    assert_eq!(metrics.errors(ErrorEvent::Apply), 1);
}

#[tokio::test]
async fn shutdown_cleans_up_the_data_plane_then_the_annotations() {
    let mut order = Sequence::new();
    let mut cluster = MockClusterBackend::new();
    let mut dataplane = MockDataplane::new();
    cluster.expect_next_snapshot().returning(|| Ok(None));
    dataplane.expect_clean_up().times(1).in_sequence(&mut order).returning(|| Ok(()));
    cluster
        .expect_clean_up()
        .with(always())
        .times(1)
        .in_sequence(&mut order)
        .withf(|node| node == "a")
        .returning(|_| Ok(()));
    let (mut agent, metrics) = driver(cluster, dataplane, config());
    agent.run(std::future::pending()).await;
    assert_eq!(metrics.errors(ErrorEvent::CleanUp), 0);
}

#[tokio::test]
async fn clean_up_failures_are_counted_and_do_not_stop_the_rest() {
    let mut cluster = MockClusterBackend::new();
    let mut dataplane = MockDataplane::new();
    dataplane
        .expect_clean_up()
        .times(1)
        .returning(|| Err(BackendError::new("failed to delete chain KILO-NAT", "busy")));
    cluster.expect_clean_up().times(1).returning(|_| Ok(()));
    let (mut agent, metrics) = driver(cluster, dataplane, config());
    agent.clean_up().await;
    assert_eq!(metrics.errors(ErrorEvent::CleanUp), 1);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_continue_while_applies_fail() {
    let mut cluster = MockClusterBackend::new();
    let mut next = Sequence::new();
    cluster.expect_next_snapshot().times(1).in_sequence(&mut next).returning(|| Ok(Some(snapshot())));
    cluster.expect_next_snapshot().returning(|| Err(BackendError::new("watch", "connection refused")));
    let announcements = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&announcements);
    cluster.expect_announce().returning(move |announcement| {
        seen.lock().unwrap().push(announcement.clone());
        Ok(())
    });
    let mut dataplane = MockDataplane::new();
    dataplane.expect_observe().returning(|| Ok(ObservedState::default()));
    let mut attempts = Sequence::new();
    dataplane.expect_apply().times(1).in_sequence(&mut attempts).returning(|_| Ok(()));
    dataplane
        .expect_apply()
        .in_sequence(&mut attempts)
        .returning(|_| Err(BackendError::new("failed to add route", "EIO")));
    let mut config = config();
    config.clean_up = false;
    config.check_in_period = Duration::from_millis(100);
    config.retry = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
    let (mut agent, metrics) = driver(cluster, dataplane, config);
    agent.run(tokio::time::sleep(Duration::from_millis(450))).await;
    let announcements = announcements.lock().unwrap();
    assert!(announcements.len() >= 3, "the first announcement and heartbeats: {}", announcements.len());
    assert!(metrics.errors(ErrorEvent::Apply) >= 2, "the applies after the first failed");
    // Every heartbeat repeats the state that was published, only fresher.
    let first = &announcements[0];
    for heartbeat in &announcements[1..] {
        assert_eq!(heartbeat.wireguard_ip, first.wireguard_ip);
        assert!(heartbeat.last_seen >= first.last_seen);
    }
}

/// `/status` as the agent builds it from the reports: leaders, role, peers with their
/// handshakes, a failed plan pending with its error, then applied.
#[tokio::test]
async fn status_shows_leaders_peers_and_a_pending_plan_until_it_is_applied() {
    let mut cluster = MockClusterBackend::new();
    cluster.expect_announce().times(1).returning(|_| Ok(()));
    let mut dataplane = MockDataplane::new();
    let handshake = unix_now() - 7;
    dataplane.expect_observe().times(2).returning(move || {
        let mut observed = ObservedState::default();
        let b = mesh_core::Key::from_bytes([2; 32]);
        observed
            .peer_stats
            .insert(b, mesh_core::state::PeerStats { last_handshake: Some(handshake), rx_bytes: 10, tx_bytes: 20 });
        Ok(observed)
    });
    let mut attempts = Sequence::new();
    dataplane
        .expect_apply()
        .times(1)
        .in_sequence(&mut attempts)
        .returning(|_| Err(BackendError::new("failed to add route 10.2.2.0/24 dev kilo0", "EPERM")));
    dataplane.expect_apply().times(1).in_sequence(&mut attempts).returning(|_| Ok(()));
    let (mut agent, _) = driver(cluster, dataplane, config());
    agent.update_snapshot(snapshot());
    agent.reconcile().await;
    let shared = agent.sink().status();
    let status = || mesh_agent::status::render(&shared.lock().unwrap(), unix_now());
    let failed = status();
    assert_eq!(failed["healthy"], false);
    let errors = failed["last_reconcile"]["errors"].as_array().unwrap();
    assert!(errors.iter().any(|e| e.as_str().unwrap().contains("failed to add route 10.2.2.0/24")), "{failed:#}");
    let pending = failed["pending_plan"]["operations"].as_array().unwrap();
    assert!(pending.iter().any(|op| op["op"] == "add_peer"), "{failed:#}");
    assert_eq!(failed["role"]["leader"], true);
    assert_eq!(failed["leaders"].as_array().unwrap().len(), 2, "{failed:#}");
    assert_eq!(failed["leaders"][0]["node"], "a");
    let reason = failed["leaders"][1]["reason"].as_str().unwrap();
    assert!(reason.contains("public endpoint"), "b has a public endpoint: {reason}");

    agent.reconcile().await;
    let applied = status();
    assert_eq!(applied["healthy"], true);
    assert_eq!(applied["pending_plan"], serde_json::Value::Null, "{applied:#}");
    assert_eq!(applied["last_reconcile"]["errors"], serde_json::json!([]));
    let peers = applied["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{applied:#}");
    assert_eq!(peers[0]["name"], "location:b");
    assert_eq!(peers[0]["endpoint"], "198.51.100.1:51820");
    let age = peers[0]["latest_handshake_age_seconds"].as_i64().unwrap();
    assert!((7..60).contains(&age), "{age}");
    assert_eq!((peers[0]["rx_bytes"].as_u64(), peers[0]["tx_bytes"].as_u64()), (Some(10), Some(20)));
}

/// The backend's diagnostics reach the running agent: logged, counted, readable for /status.
#[tokio::test]
async fn what_the_backend_left_out_is_counted_and_readable() {
    let mut cluster = MockClusterBackend::new();
    let mut next = Sequence::new();
    cluster.expect_next_snapshot().times(1).in_sequence(&mut next).returning(|| Ok(Some(snapshot())));
    cluster.expect_next_snapshot().times(1).in_sequence(&mut next).returning(|| Ok(None));
    cluster.expect_diagnostics().returning(|| SnapshotDiagnostics {
        skipped: vec![Skipped { kind: ObjectKind::Peer, name: "broken.yaml".into(), reason: "not YAML".into() }],
        warnings: Vec::new(),
    });
    cluster.expect_announce().returning(|_| Ok(()));
    let mut dataplane = MockDataplane::new();
    dataplane.expect_observe().returning(|| Ok(ObservedState::default()));
    dataplane.expect_apply().returning(|_| Ok(()));
    dataplane.expect_route_conflicts().returning(Vec::new);
    let mut config = config();
    config.clean_up = false;
    let telemetry = Telemetry::new();
    let metrics = telemetry.metrics();
    let mut agent = Driver::new(cluster, dataplane, StaticHost, config).with_sink(telemetry);
    agent.run(std::future::pending()).await;
    let text = metrics.render();
    assert!(text.contains("mesh_skipped_objects{kind=\"peer\"} 1"), "{text}");
    assert_eq!(agent.reconciler().diagnostics(), ["Peer broken.yaml is left out of the mesh: not YAML"]);
}

/// A route the data plane refuses (a foreign route holds its place) is a warning, a gauge and a
/// `/status` entry: the pass succeeds and nothing counts as an apply error.
#[tokio::test]
async fn a_refused_route_is_reported_counted_and_shown_but_is_no_error() {
    let mut cluster = MockClusterBackend::new();
    cluster.expect_announce().returning(|_| Ok(()));
    cluster.expect_diagnostics().returning(Default::default);
    let mut dataplane = MockDataplane::new();
    dataplane.expect_observe().returning(|| Ok(ObservedState::default()));
    dataplane.expect_apply().returning(|_| Ok(()));
    let route = *desired().routes.iter().next().unwrap();
    dataplane.expect_route_conflicts().returning(move || {
        vec![RouteConflict {
            route,
            wanted: "10.2.2.0/24 via 10.4.0.2 dev kilo0 proto 107 onlink".into(),
            existing: "10.2.2.0/24 via 192.0.2.254 dev eth0 proto bird".into(),
        }]
    });
    let telemetry = Telemetry::new();
    let metrics = telemetry.metrics();
    let mut agent = Driver::new(cluster, dataplane, StaticHost, config()).with_sink(telemetry);
    agent.update_snapshot(snapshot());
    agent.reconcile().await;
    agent.reconcile().await;
    assert!(agent.reconciler().is_healthy());
    assert_eq!(metrics.errors(ErrorEvent::Apply), 0, "a refusal is not an apply error");
    assert_eq!(metrics.route_conflicts(), 1, "reported once, counted once");
    assert!(metrics.render().contains("mesh_route_conflicts 1"));
    let status = mesh_agent::status::render(&agent.sink().status().lock().unwrap(), unix_now());
    assert_eq!(status["healthy"], true);
    assert_eq!(
        status["route_conflicts"][0]["existing"], "10.2.2.0/24 via 192.0.2.254 dev eth0 proto bird",
        "{status:#}"
    );
    assert_eq!(status["route_conflicts"].as_array().unwrap().len(), 1);
}

/// With tokio's clock paused: after applies failed long enough for the backoff to reach 8 s,
/// a link change (the WireGuard device came back) starts a pass within the settling time.
#[tokio::test(start_paused = true)]
async fn a_link_change_starts_a_pass_at_once_instead_of_waiting_out_the_backoff() {
    let mut cluster = MockClusterBackend::new();
    cluster.expect_next_snapshot().times(1).returning(|| Ok(Some(snapshot())));
    cluster.expect_next_snapshot().returning(|| Err(BackendError::new("watch", "connection refused")));
    cluster.expect_announce().returning(|_| Ok(()));
    let mut dataplane = MockDataplane::new();
    dataplane.expect_observe().returning(|| Ok(ObservedState::default()));
    let device_back = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let back = Arc::clone(&device_back);
    dataplane.expect_apply().returning(move |_| {
        if back.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err(BackendError::new("failed to configure WireGuard interface kilo0", "interface kilo0 not found"))
        }
    });
    let mut config = config();
    config.clean_up = false;
    config.retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let (changes, links) = tokio::sync::mpsc::channel(8);
    let (agent, metrics) = driver(cluster, dataplane, config);
    let mut agent = agent.with_link_changes(links);
    let status = agent.sink().status();
    let failures = Arc::clone(&metrics);
    let scenario = async move {
        // Failed at 0, 1, 3 and 7 s: the next retry is at 15 s.
        while failures.errors(ErrorEvent::Apply) < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        device_back.store(true, std::sync::atomic::Ordering::SeqCst);
        let sent = tokio::time::Instant::now();
        changes.send(LinkChange::Appeared { interface: "kilo0".into() }).await.unwrap();
        while !status.lock().unwrap().healthy {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = sent.elapsed();
        assert!(took < Duration::from_millis(500), "repaired {took:?} after the device came back");
    };
    tokio::time::timeout(Duration::from_secs(60), agent.run(scenario)).await.expect("recovered");
    assert_eq!(metrics.errors(ErrorEvent::Apply), 4, "no retry came between the change and the repair");
}
