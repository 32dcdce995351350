//! Shared fixtures for the cross-crate tests in `tests/tests/`.
#![warn(missing_docs)]

use mesh_core::backend::{BackendError, Dataplane};
use mesh_core::{DataplaneState, ObservedState, Plan};

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
