//! Whether the agent sees the cluster, and the time at which the readiness of the other nodes
//! is judged: fail static.
//!
//! While the agent cannot see the cluster (reading fails, or its own heartbeat cannot be
//! written), the heartbeats it holds grow old only because it is blind: judging them against
//! the clock would remove every peer after 60 s and turn a control-plane outage into a
//! data-plane outage. So readiness is judged at the moment the cluster was last seen, which
//! keeps the data plane as it is. Once the cluster is seen again, the outage is forgiven for a
//! grace period, long enough for every node to publish a fresh heartbeat; then the clock is the
//! clock again.

use std::time::Duration;

use mesh_core::{ClusterSnapshot, MAX_CLOCK_SKEW_SECONDS};

/// Why the cluster cannot be seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Blindness {
    /// Reading the cluster failed.
    ReadFailed,
    /// The local node's announcement could not be written.
    HeartbeatFailed,
}

/// A change of [`ClusterView::is_visible`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// The cluster was lost; readiness is frozen at `since` (Unix seconds).
    Lost { since: i64 },
    /// The cluster is seen again after `outage` seconds.
    Regained { outage: i64 },
}

/// See the [module documentation](self).
#[derive(Clone, Debug, Default)]
pub(super) struct ClusterView {
    read_failed: bool,
    heartbeat_failed: bool,
    /// When the cluster was last seen (a snapshot arrived, a heartbeat was written).
    last_seen: Option<i64>,
    /// While blind: the time readiness is judged at.
    lost_since: Option<i64>,
    /// After recovery: the outage in seconds, forgiven until the given Unix second.
    forgiven: Option<(i64, i64)>,
}

impl ClusterView {
    /// Whether the agent sees the cluster.
    pub(super) fn is_visible(&self) -> bool {
        !(self.read_failed || self.heartbeat_failed)
    }

    /// Since when (Unix seconds) the agent has not seen the cluster.
    pub(super) fn lost_since(&self) -> Option<i64> {
        self.lost_since
    }

    /// The agent cannot see the cluster as of `now`.
    pub(super) fn blind(&mut self, why: Blindness, now: i64) -> Option<Change> {
        let was_visible = self.is_visible();
        match why {
            Blindness::ReadFailed => self.read_failed = true,
            Blindness::HeartbeatFailed => self.heartbeat_failed = true,
        }
        if !was_visible {
            return None;
        }
        let since = self.last_seen.unwrap_or(now);
        self.lost_since = Some(since);
        Some(Change::Lost { since })
    }

    /// The agent saw the cluster at `now` (`what` did not fail); `grace` is how long the
    /// outage stays forgiven.
    pub(super) fn seen(&mut self, what: Blindness, now: i64, grace: Duration) -> Option<Change> {
        match what {
            Blindness::ReadFailed => self.read_failed = false,
            Blindness::HeartbeatFailed => self.heartbeat_failed = false,
        }
        if !self.is_visible() {
            return None;
        }
        self.last_seen = Some(now);
        let since = self.lost_since.take()?;
        let outage = now.saturating_sub(since).max(0);
        let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        self.forgiven = Some((outage, now.saturating_add(grace)));
        Some(Change::Regained { outage })
    }

    /// `snapshot` as readiness is judged at `now`: its clock set to the readiness time, and
    /// every heartbeat published after that time (but not beyond the clock-skew limit of the
    /// real clock) counted as fresh at it. Judged against the earlier time, a node that
    /// heartbeats while this agent is blind, or right after (every node does once the cluster is
    /// back), would look as if its heartbeat came from the future and be dropped just as it
    /// shows it is alive. A heartbeat far in the future of the real clock is still refused.
    pub(super) fn judged(&self, snapshot: &ClusterSnapshot, now: i64) -> ClusterSnapshot {
        let at = self.readiness_time(now);
        let mut judged = ClusterSnapshot { now: at, ..snapshot.clone() };
        let plausible = now.saturating_add(MAX_CLOCK_SKEW_SECONDS);
        for last_seen in judged.nodes.iter_mut().filter_map(|node| node.last_seen.as_mut()) {
            if *last_seen > at && *last_seen <= plausible {
                *last_seen = at;
            }
        }
        judged
    }

    /// The time (Unix seconds) at which readiness is judged now.
    fn readiness_time(&self, now: i64) -> i64 {
        match (self.lost_since, self.forgiven) {
            (Some(since), _) => since,
            (None, Some((outage, until))) if now < until => now.saturating_sub(outage),
            _ => now,
        }
    }
}
