//! `/status`: what a running agent sees, as JSON, for an operator and for `mesh-agent doctor`.
//!
//! ```json
//! {
//!   "hostname": "a1",
//!   "healthy": true,
//!   "cluster": {"visible": true, "lost_since": null},
//!   "role": {"leader": true, "segment": "location:a", "reason": "annotated kilo.squat.ai/leader …"},
//!   "leaders": [{"segment": "location:a", "node": "a1", "reason": "…"}],
//!   "peers": [{"name": "location:b", "kind": "segment", "public_key": "…", "endpoint": "192.0.2.2:51820",
//!              "latest_handshake_age_seconds": 12, "rx_bytes": 1024, "tx_bytes": 2048}],
//!   "last_reconcile": {"healthy": true, "errors": []},
//!   "skipped": [{"kind": "node", "name": "c1", "reason": "not ready: …"}],
//!   "warnings": [],
//!   "route_conflicts": [{"wanted": "0.0.0.0/0 via 10.4.0.2 dev kilo0 proto 107",
//!                        "existing": "default via 192.168.1.1 dev eth0 proto dhcp metric 100"}],
//!   "pending_plan": null
//! }
//! ```
//!
//! `cluster.visible` is false while the agent cannot see the cluster and fails static (the data
//! plane is kept as it is); `lost_since` is then when it last saw it (Unix seconds).
//! `pending_plan` lists the operations of the last computed plan while they have not reached
//! the data plane (after a failed apply, or during one). `route_conflicts` lists the routes the
//! data plane leaves out because a route that is not the mesh's holds their place.

use mesh_core::Topology;
use mesh_core::state::PeerStats;
use serde_json::{Value, json};

use crate::metrics::Status;
use crate::reconciler::status::PassStatus;

/// The `/status` document of `status` at `now` (Unix seconds, for handshake ages).
pub fn render(status: &Status, now: i64) -> Value {
    let pass = status.pass.as_deref();
    let topology = status.topology.as_deref();
    json!({
        "hostname": pass.map(|pass| pass.hostname.as_str()).or(topology.map(|t| t.hostname.as_str())),
        "healthy": status.healthy,
        "cluster": {"visible": status.cluster_lost_since.is_none(), "lost_since": status.cluster_lost_since},
        "role": pass.map(role),
        "leaders": pass.map_or_else(Vec::new, |pass| pass
            .leaders
            .iter()
            .map(|leader| json!({"segment": leader.segment, "node": leader.node, "reason": leader.reason.describe(), "deposed": leader.deposed}))
            .collect()),
        "peers": peers(topology, pass, now),
        "last_reconcile": {"healthy": status.healthy, "errors": status.errors},
        "skipped": topology.map_or(Value::Array(Vec::new()), |t| json!(t.skipped)),
        "warnings": topology.map_or(Value::Array(Vec::new()), |t| json!(t.warnings)),
        "route_conflicts": status
            .route_conflicts
            .iter()
            .map(|conflict| json!({"wanted": conflict.wanted, "existing": conflict.existing}))
            .collect::<Vec<_>>(),
        "pending_plan": pass
            .filter(|_| !status.plan_applied)
            .map(|pass| json!({"operations": pass.plan.operations})),
    })
}

/// This node's role and why.
fn role(pass: &PassStatus) -> Value {
    let own = pass.leaders.iter().find(|leader| leader.segment == pass.segment);
    let reason = match own {
        Some(leader) if pass.leader => leader.reason.describe().to_owned(),
        Some(leader) => format!(
            "{} leads {} ({}); this node sends its traffic to the other locations through it",
            leader.node,
            leader.segment,
            leader.reason.describe()
        ),
        None => "not in the mesh".to_owned(),
    };
    json!({"leader": pass.leader, "segment": pass.segment, "reason": reason})
}

/// Sets a `/status` peer's handshake age and byte counters from `stats` as of `now` (Unix
/// seconds). `doctor` uses it too, to put counters read from the device in their place.
pub(crate) fn set_peer_counters(peer: &mut Value, stats: PeerStats, now: i64) {
    let PeerStats { last_handshake, rx_bytes, tx_bytes } = stats;
    peer["latest_handshake_age_seconds"] = json!(last_handshake.map(|at| now.saturating_sub(at).max(0)));
    peer["rx_bytes"] = json!(rx_bytes);
    peer["tx_bytes"] = json!(tx_bytes);
}

/// The WireGuard peers this node has: the other segments' leaders and the Peers (a follower
/// has none), with what the data plane last said about each.
fn peers(topology: Option<&Topology>, pass: Option<&PassStatus>, now: i64) -> Vec<Value> {
    let Some(topology) = topology.filter(|topology| topology.leader) else { return Vec::new() };
    let stats = |key| pass.and_then(|pass| pass.peer_stats.get(key)).copied().unwrap_or_default();
    let entry = |name: &str, kind: &str, key, endpoint: Option<String>| {
        let mut peer = json!({"name": name, "kind": kind, "public_key": key, "endpoint": endpoint});
        set_peer_counters(&mut peer, stats(key), now);
        peer
    };
    let endpoint = |configured, key, keepalive| {
        topology.effective_endpoint(configured, key, keepalive).map(|endpoint| endpoint.to_string())
    };
    let mut peers: Vec<Value> = topology
        .segments
        .iter()
        .filter(|segment| !topology.is_local_location(segment))
        .map(|segment| {
            let endpoint = endpoint(segment.endpoint.as_ref(), &segment.key, segment.persistent_keepalive);
            entry(&segment.name, "segment", &segment.key, endpoint)
        })
        .collect();
    peers.extend(topology.peers.iter().map(|peer| {
        let endpoint = endpoint(peer.endpoint.as_ref(), &peer.public_key, peer.persistent_keepalive);
        entry(&peer.name, "peer", &peer.public_key, endpoint)
    }));
    peers
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::reconciler::Report;

    #[test]
    fn says_whether_the_cluster_is_seen_and_since_when_not() {
        let mut status = Status::default();
        assert_eq!(render(&status, 100)["cluster"], json!({"visible": true, "lost_since": null}));
        status.record(&Report::ClusterLost { reason: "reading the cluster failed", since: 90 });
        assert_eq!(render(&status, 100)["cluster"], json!({"visible": false, "lost_since": 90}));
        status.record(&Report::ClusterRegained { outage: Duration::from_secs(200) });
        assert_eq!(render(&status, 300)["cluster"], json!({"visible": true, "lost_since": null}));
    }
}
