//! Route conflicts: routes the mesh wants whose place a route that is not the mesh's holds. The
//! data plane refuses them (it never replaces a route it does not own) and applies the rest. A
//! conflict lasts until someone frees the place or the cluster stops asking for it, so it is a
//! refusal to report once, not a failure to retry: it neither fails the pass nor starts a
//! backoff, and the place is looked at again at each pass (resync, cluster change) only.

use std::collections::{BTreeSet, VecDeque};

use mesh_core::backend::RouteConflict;
use mesh_core::{Operation, Plan, Route};

use super::Report;

/// The conflicts reported as of the last apply, and those the data plane just sent.
#[derive(Debug, Default)]
pub(super) struct RouteConflicts {
    current: BTreeSet<RouteConflict>,
    /// From the data plane, for the apply in flight.
    pending: Vec<RouteConflict>,
}

impl RouteConflicts {
    /// The data plane refused these routes in the apply in flight.
    pub(super) fn refused(&mut self, conflicts: Vec<RouteConflict>) {
        self.pending = conflicts;
    }

    /// The apply in flight ended. After a successful apply the refusals it sent are the
    /// conflicts; a failed one may have stopped before some routes, so it only adds.
    /// Each new conflict and each resolved one is reported once.
    pub(super) fn applied(&mut self, succeeded: bool, reports: &mut VecDeque<Report>) {
        let refused: BTreeSet<RouteConflict> = std::mem::take(&mut self.pending).into_iter().collect();
        if succeeded {
            self.resolve(|conflict| !refused.contains(conflict), reports);
        }
        for conflict in refused {
            if !self.current.contains(&conflict) {
                reports.push_back(Report::RouteConflict(conflict.clone()));
                self.current.insert(conflict);
            }
        }
    }

    /// The plan was empty: every wanted route is in place, so no conflict remains.
    pub(super) fn none_left(&mut self, reports: &mut VecDeque<Report>) {
        self.pending.clear();
        self.resolve(|_| true, reports);
    }

    /// How many operations of `plan` ask again for routes refused before.
    pub(super) fn asked_again(&self, plan: &Plan) -> usize {
        let refused: BTreeSet<&Route> = self.current.iter().map(|conflict| &conflict.route).collect();
        plan.operations
            .iter()
            .filter(|operation| matches!(operation, Operation::AddRoute(route) if refused.contains(route)))
            .count()
    }

    /// The kinds of the operations a successful apply made: `kinds` (of its plan) without the
    /// `add_route` of each route it refused.
    pub(super) fn without_refused(&self, mut kinds: Vec<&'static str>) -> Vec<&'static str> {
        for _ in &self.current {
            if let Some(refused) = kinds.iter().position(|kind| *kind == "add_route") {
                kinds.remove(refused);
            }
        }
        kinds
    }

    fn resolve(&mut self, gone: impl Fn(&RouteConflict) -> bool, reports: &mut VecDeque<Report>) {
        let (resolved, kept): (BTreeSet<_>, BTreeSet<_>) =
            std::mem::take(&mut self.current).into_iter().partition(|conflict| gone(conflict));
        self.current = kept;
        reports.extend(resolved.into_iter().map(Report::RouteConflictResolved));
    }
}
