//! The backend traits as an embedding controller uses them: one reconcile pass against a
//! data plane, with the in-memory reference and with mockall mocks.

use mesh_core::backend::{BackendError, ClusterBackend, Dataplane, MockClusterBackend, MockDataplane};
use mesh_core::{DesiredState, ObservedState, Options, Plan, Topology};
use mesh_tests::{MemoryDataplane, two_locations as snapshot};

/// One pass: compute, observe, plan, apply. Returns the number of operations applied.
async fn reconcile(cluster: &mut dyn ClusterBackend, dataplane: &mut dyn Dataplane) -> Result<usize, BackendError> {
    let snapshot = cluster.next_snapshot().await?.expect("a snapshot");
    let options = Options::for_host("a");
    let topology = Topology::compute(&snapshot, &options).expect("a topology");
    let (desired, _) = DesiredState::from_topology(&topology, &options);
    let plan = Plan::between(&dataplane.observe().await?, &desired);
    if !plan.is_empty() {
        dataplane.apply(&plan).await?;
    }
    Ok(plan.operations.len())
}

#[tokio::test]
async fn a_second_pass_over_the_same_cluster_writes_nothing() {
    let mut cluster = MockClusterBackend::new();
    cluster.expect_next_snapshot().times(2).returning(|| Ok(Some(snapshot(1_000))));
    let mut dataplane = MemoryDataplane::default();
    let first = reconcile(&mut cluster, &mut dataplane).await.unwrap();
    assert!(first > 0);
    assert_eq!(reconcile(&mut cluster, &mut dataplane).await.unwrap(), 0);
    assert_eq!(dataplane.operations_applied, first);
    dataplane.clean_up().await.unwrap();
    assert_eq!(dataplane.state, Default::default());
}

#[tokio::test]
async fn an_empty_plan_is_never_applied_and_errors_name_the_operation() {
    let mut cluster = MockClusterBackend::new();
    cluster.expect_next_snapshot().returning(|| Ok(Some(snapshot(1_000))));
    let options = Options::for_host("a");
    let topology = Topology::compute(&snapshot(1_000), &options).unwrap();
    let (desired, _) = DesiredState::from_topology(&topology, &options);

    let mut steady = MockDataplane::new();
    let observed = ObservedState::of(desired);
    steady.expect_observe().times(1).returning(move || Ok(observed.clone()));
    steady.expect_apply().never();
    assert_eq!(reconcile(&mut cluster, &mut steady).await.unwrap(), 0);

    let mut failing = MockDataplane::new();
    failing.expect_observe().returning(|| Ok(ObservedState::default()));
    failing
        .expect_apply()
        .times(1)
        .returning(|_| Err(BackendError::new("failed to add route 10.2.2.0/24 via 10.4.0.2 dev kilo0", "EPERM")));
    let error = reconcile(&mut cluster, &mut failing).await.unwrap_err();
    assert_eq!(error.to_string(), "failed to add route 10.2.2.0/24 via 10.4.0.2 dev kilo0: EPERM");
}
