//! Shared fixtures for the cross-crate tests in `tests/tests/` and the agent's tests.
#![warn(missing_docs)]

pub mod fake_api;

use mesh_core::backend::{BackendError, Dataplane};
use mesh_core::{ClusterSnapshot, DataplaneState, Endpoint, Key, NodeSpec, ObservedState, Plan};

/// Two locations of one node each, `a` (192.0.2.1, pods 10.2.1.0/24) and `b` (198.51.100.1,
/// pods 10.2.2.0/24), both last seen at `now`: the smallest mesh with a peer and a route.
pub fn two_locations(now: i64) -> ClusterSnapshot {
    let node = |name: &str, ip: &str, pods: &str, key: u8| NodeSpec {
        name: name.into(),
        endpoint: Some(Endpoint::parse(&format!("{ip}:51820")).expect("a valid endpoint")),
        key: Some(Key::from_bytes([key; 32])),
        internal_ip: Some(format!("{ip}/24").parse().expect("a valid CIDR")),
        location: name.into(),
        pod_subnet: Some(pods.parse().expect("a valid CIDR")),
        last_seen: Some(now),
        ..NodeSpec::default()
    };
    ClusterSnapshot {
        nodes: vec![node("a", "192.0.2.1", "10.2.1.0/24", 1), node("b", "198.51.100.1", "10.2.2.0/24", 2)],
        peers: vec![],
        now,
    }
}

/// An in-memory data plane whose semantics are exactly [`Plan::apply_to`]: the reference every
/// real data plane is tested against. It counts the operations it applied.
#[derive(Debug, Default)]
pub struct MemoryDataplane {
    /// What the data plane holds.
    pub state: DataplaneState,
    /// How many operations `apply` has performed in total.
    pub operations_applied: usize,
    /// How many times `clean_up` ran.
    pub clean_ups: usize,
}

#[async_trait::async_trait]
impl Dataplane for MemoryDataplane {
    async fn observe(&mut self) -> Result<ObservedState, BackendError> {
        Ok(ObservedState::of(self.state.clone()))
    }

    async fn apply(&mut self, plan: &Plan) -> Result<(), BackendError> {
        self.state = plan.apply_to(&self.state);
        self.operations_applied += plan.operations.len();
        Ok(())
    }

    async fn clean_up(&mut self) -> Result<(), BackendError> {
        self.state = DataplaneState::default();
        self.clean_ups += 1;
        Ok(())
    }
}
