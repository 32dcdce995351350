//! A hanging API server must not stop the agent: every API call has a timeout, announcements
//! do not hold up reconciling the data plane, and shutdown ends within its bound while a PATCH
//! hangs. Time is tokio's paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_agent::driver::{Driver, Host};
use mesh_agent::reconciler::{Config, Report};
use mesh_core::backend::{BackendError, ClusterBackend, Dataplane, LocalAnnouncement};
use mesh_core::{ClusterSnapshot, ObservedState, Options, Plan};
use tokio::time::Instant;

/// The cluster answers reads (one snapshot, then nothing new) but never answers a write.
struct HangingWrites {
    snapshot: Option<ClusterSnapshot>,
}

#[async_trait::async_trait]
impl ClusterBackend for HangingWrites {
    async fn next_snapshot(&mut self) -> Result<Option<ClusterSnapshot>, BackendError> {
        match self.snapshot.take() {
            Some(snapshot) => Ok(Some(snapshot)),
            None => std::future::pending().await,
        }
    }

    async fn announce(&mut self, _announcement: &LocalAnnouncement) -> Result<(), BackendError> {
        std::future::pending().await
    }

    async fn clean_up(&mut self, _node: &str) -> Result<(), BackendError> {
        std::future::pending().await
    }
}

/// A data plane in memory whose state a test can wipe, as a crash of the interface would.
#[derive(Clone, Default)]
struct Memory {
    state: Arc<Mutex<ObservedState>>,
    applies: Arc<Mutex<Vec<Instant>>>,
}

#[async_trait::async_trait]
impl Dataplane for Memory {
    async fn observe(&mut self) -> Result<ObservedState, BackendError> {
        Ok(self.state.lock().unwrap().clone())
    }

    async fn apply(&mut self, plan: &Plan) -> Result<(), BackendError> {
        let mut state = self.state.lock().unwrap();
        state.state = plan.apply_to(&state.state);
        self.applies.lock().unwrap().push(Instant::now());
        Ok(())
    }

    async fn clean_up(&mut self) -> Result<(), BackendError> {
        *self.state.lock().unwrap() = ObservedState::default();
        Ok(())
    }
}

struct AsIs;
impl Host for AsIs {}

fn snapshot() -> ClusterSnapshot {
    mesh_tests::two_locations(mesh_core::time::unix_seconds(std::time::SystemTime::now()))
}

#[tokio::test(start_paused = true)]
async fn a_hanging_announcement_does_not_hold_up_repairs_of_the_data_plane() {
    let dataplane = Memory::default();
    let (state, applies) = (Arc::clone(&dataplane.state), Arc::clone(&dataplane.applies));
    let mut config = Config::new(Options::for_host("a"));
    config.clean_up = false;
    let failed = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&failed);
    let mut agent = Driver::new(HangingWrites { snapshot: Some(snapshot()) }, dataplane, AsIs, config).with_sink(
        move |report: &Report| {
            if matches!(report, Report::AnnounceFailed { .. }) {
                *counted.lock().unwrap() += 1;
            }
        },
    );
    let start = Instant::now();
    let wipe = async move {
        tokio::time::sleep(Duration::from_secs(15)).await;
        *state.lock().unwrap() = ObservedState::default();
        tokio::time::sleep(Duration::from_secs(25)).await;
    };
    tokio::time::timeout(Duration::from_secs(600), agent.run(wipe)).await.expect("the agent hung on the announcement");
    let applies = applies.lock().unwrap().clone();
    assert_eq!(applies.len(), 2, "the first apply, then the repair: {applies:?}");
    let repaired = applies[1] - start;
    assert!(repaired > Duration::from_secs(15) && repaired <= Duration::from_secs(30), "repaired at {repaired:?}");
    assert!(*failed.lock().unwrap() >= 1, "the timed-out announcement is reported");
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_within_its_bound_while_a_patch_hangs() {
    let config = Config::new(Options::for_host("a"));
    let bound = config.clean_up_timeout * 2;
    let mut agent = Driver::new(HangingWrites { snapshot: Some(snapshot()) }, Memory::default(), AsIs, config);
    let sigterm_at = Duration::from_secs(3);
    let start = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(600), agent.run(tokio::time::sleep(sigterm_at))).await;
    assert!(stopped.is_ok(), "the agent did not stop while the PATCH hung");
    assert!(agent.reconciler().is_stopped());
    let took = Instant::now() - start - sigterm_at;
    assert!(took <= bound, "shutdown took {took:?}, more than the clean-up bound {bound:?}");
}
