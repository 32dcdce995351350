//! The doctor's judgments: values in, findings out. Reading the cluster and the host is
//! elsewhere ([`super::host`]), so every check is tested on values.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Node;
use mesh_core::state::PeerStats;
use mesh_core::{ClusterSnapshot, NodeSpec, ObjectKind, Plan, Skipped, Topology, Warning};
use mesh_kube::annotations::{ALLOWED_LOCATION_IPS, LOCATION, PERSISTENT_KEEPALIVE};
use serde::Serialize;

use crate::reconciler::status::leaders;

/// What a check concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Nothing to do.
    Ok,
    /// Something an operator must fix.
    Problem,
    /// The check could not run here (e.g. no agent answers `/status`).
    Skipped,
}

/// One conclusion: the check, what it looked at, what it saw, and what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check's name (`location`, `nat-keepalive`, `ip-forward`, …).
    pub check: &'static str,
    /// Ok, problem or skipped.
    pub verdict: Verdict,
    /// The object or kernel state it is about (`node c1`, `kilo0`, `net.ipv4.ip_forward`).
    pub subject: String,
    /// What was seen: objects, annotations, values, counters.
    pub evidence: String,
    /// What to do about a problem.
    pub fix: Option<String>,
}

impl Finding {
    /// A passed check.
    pub fn ok(check: &'static str, subject: impl Into<String>, evidence: impl Into<String>) -> Self {
        Finding { check, verdict: Verdict::Ok, subject: subject.into(), evidence: evidence.into(), fix: None }
    }

    /// A problem and its fix.
    pub fn problem(
        check: &'static str,
        subject: impl Into<String>,
        evidence: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding {
            check,
            verdict: Verdict::Problem,
            subject: subject.into(),
            evidence: evidence.into(),
            fix: Some(fix.into()),
        }
    }

    /// A check that could not run, and why.
    pub fn skipped(check: &'static str, subject: impl Into<String>, evidence: impl Into<String>) -> Self {
        Finding { check, verdict: Verdict::Skipped, subject: subject.into(), evidence: evidence.into(), fix: None }
    }
}

/// The label Cozystack's guide warns about: a zone without a region leaves the location empty.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// `kilo.squat.ai/location` must be an annotation: Kilo reads no such label, and falls back to
/// `topology_label` (a region), not to the zone.
pub fn location(nodes: &[Node], topology_label: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let annotations = node.metadata.annotations.clone().unwrap_or_default();
        let labels = node.metadata.labels.clone().unwrap_or_default();
        if annotations.contains_key(LOCATION) {
            continue;
        }
        let subject = format!("node {name}");
        if let Some(value) = labels.get(LOCATION) {
            let location = labels.get(topology_label).cloned().unwrap_or_default();
            findings.push(Finding::problem(
                "location",
                subject,
                format!(
                    "{LOCATION}={value:?} is a label, not an annotation; the label is not read, so the node is in \
                     location {location:?}"
                ),
                format!("kubectl annotate node {name} {LOCATION}={value}"),
            ));
        } else if let (None, Some(zone)) = (labels.get(topology_label), labels.get(ZONE_LABEL)) {
            findings.push(Finding::problem(
                "location",
                subject,
                format!(
                    "no {LOCATION} annotation and no {topology_label} label; {ZONE_LABEL}={zone:?} is not read, so \
                     the node is in the empty location \"\" with every other node that has none"
                ),
                format!("kubectl annotate node {name} {LOCATION}={zone}"),
            ));
        }
    }
    if findings.is_empty() {
        findings.push(Finding::ok(
            "location",
            "nodes",
            format!("every node's location comes from the {LOCATION} annotation or the {topology_label} label"),
        ));
    }
    findings
}

/// A node that others reach at another address than it announces (they discovered it through
/// NAT) needs `persistent-keepalive`, or the mesh keeps sending to the announced address.
pub fn nat_keepalive(snapshot: &ClusterSnapshot) -> Vec<Finding> {
    let mut findings = Vec::new();
    for node in &snapshot.nodes {
        let Some(key) = node.key else { continue };
        let announced = node.endpoint.as_ref().and_then(mesh_core::Endpoint::socket_addr);
        let seen: BTreeSet<(SocketAddr, &str)> = snapshot
            .nodes
            .iter()
            .filter(|other| other.name != node.name)
            .filter_map(|other| other.discovered_endpoints.get(&key).map(|addr| (*addr, other.name.as_str())))
            .filter(|(addr, _)| Some(*addr) != announced)
            .collect();
        let Some((discovered, by)) = seen.first() else { continue };
        if node.persistent_keepalive != 0 {
            continue;
        }
        let announced = announced.map_or_else(|| "no endpoint".to_owned(), |addr| addr.to_string());
        findings.push(Finding::problem(
            "nat-keepalive",
            format!("node {}", node.name),
            format!(
                "{by} sees it at {discovered} (kilo.squat.ai/discovered-endpoints) while it announces {announced}, \
                 and it has no {PERSISTENT_KEEPALIVE}: it is behind NAT, and the mesh keeps sending to {announced} \
                 (Kilo logs \"WireGuard configurations are different\" every 30 s)"
            ),
            format!("kubectl annotate node {} {PERSISTENT_KEEPALIVE}=25", node.name),
        ));
    }
    if findings.is_empty() {
        findings.push(Finding::ok(
            "nat-keepalive",
            "nodes",
            "every node discovered behind NAT has a persistent keepalive",
        ));
    }
    findings
}

/// `kilo.squat.ai/allowed-location-ips` on some nodes of a location but not all, as Cozystack's
/// page suggests (on the leader). A suggestion, never a problem: that is Kilo's documented
/// setup. Under Kilo's rule the ranges vanish with that node's heartbeat, so the finding says to
/// annotate the other nodes too; with fast failover (`fast_failover`: every ready node runs our
/// agent with it on) the location keeps them, and the finding says what would lose them.
pub fn allowed_location_ips_on_every_candidate(snapshot: &ClusterSnapshot, fast_failover: bool) -> Vec<Finding> {
    const CHECK: &str = "allowed-location-ips-candidates";
    let mut locations: BTreeMap<&str, Vec<&NodeSpec>> = BTreeMap::new();
    for node in snapshot.nodes.iter().filter(|node| !node.location.is_empty()) {
        locations.entry(node.location.as_str()).or_default().push(node);
    }
    let mut findings = Vec::new();
    for (location, members) in locations {
        let (annotated, bare): (Vec<&&NodeSpec>, Vec<_>) =
            members.iter().partition(|node| !node.allowed_location_ips.is_empty());
        if annotated.is_empty() || bare.is_empty() {
            continue;
        }
        let ranges: BTreeSet<String> =
            annotated.iter().flat_map(|node| node.allowed_location_ips.iter().map(ToString::to_string)).collect();
        let ranges = ranges.into_iter().collect::<Vec<_>>().join(",");
        let names = |nodes: &[&&NodeSpec], separator: &str| {
            nodes.iter().map(|node| node.name.as_str()).collect::<Vec<_>>().join(separator)
        };
        let (annotated, bare) = (names(&annotated, ", "), names(&bare, " "));
        let annotate = format!("kubectl annotate node {bare} {ALLOWED_LOCATION_IPS}={ranges}");
        let evidence = if fast_failover {
            format!(
                "only {annotated} carry {ALLOWED_LOCATION_IPS} ({ranges}): fast failover keeps them routed to the \
                 location when the leader dies; should a node run Kilo or the fast path be turned off, they would \
                 vanish with {annotated}'s heartbeat, unless every node that can lead carries them ({annotate})"
            )
        } else {
            format!(
                "only {annotated} carry {ALLOWED_LOCATION_IPS} ({ranges}) and leaders follow Kilo's rule (a ready \
                 node lacks the failover capability, or the fast path is off): when {annotated} fail, the ranges are \
                 not routed to the location until they are back; suggested: {annotate}"
            )
        };
        findings.push(Finding::ok(CHECK, format!("location {location}"), evidence));
    }
    if findings.is_empty() {
        findings.push(Finding::ok(
            CHECK,
            "locations",
            format!("each location has {ALLOWED_LOCATION_IPS} on every node that can lead it, or on none"),
        ));
    }
    findings
}

/// Objects left out and values ignored, with the reason: `allowed-location-ips` dropped or
/// overlapping, other annotations ignored, nodes left out, Peers skipped.
pub fn diagnostics(skipped: &[Skipped], warnings: &[Warning]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for warning in warnings {
        let allowed = warning.annotation.as_deref() == Some(ALLOWED_LOCATION_IPS);
        let subject = format!("{} {}", kind(warning.kind), warning.name);
        let value = warning.value.as_deref().map_or_else(String::new, |value| format!("={value:?}"));
        let annotation = warning.annotation.as_deref().unwrap_or("value");
        let evidence = format!("{annotation}{value}: {}", warning.reason);
        let fix = if allowed {
            format!(
                "correct or remove the CIDR in {ALLOWED_LOCATION_IPS} of {subject}: a CIDR may not overlap the pod, \
                 WireGuard or private networks of the mesh, nor another location's"
            )
        } else {
            format!("correct {annotation} of {subject}; until then the value is ignored")
        };
        findings.push(Finding::problem(
            if allowed { "allowed-location-ips" } else { "annotations" },
            subject,
            evidence,
            fix,
        ));
    }
    for skip in skipped {
        let (check, fix) = match skip.kind {
            ObjectKind::Node if skip.reason.starts_with("not ready") => (
                "nodes",
                format!(
                    "the agent on {} does not publish its heartbeat (kilo.squat.ai/last-seen): check that its pod \
                     runs and its log (kubectl logs) for the error",
                    skip.name
                ),
            ),
            ObjectKind::Node => ("nodes", format!("correct node {} as the reason says", skip.name)),
            ObjectKind::Peer => {
                ("peers", format!("correct Peer {} as the reason says (kubectl edit peer {})", skip.name, skip.name))
            }
        };
        findings.push(Finding::problem(check, format!("{} {}", kind(skip.kind), skip.name), skip.reason.clone(), fix));
    }
    for (check, what) in [
        ("allowed-location-ips", "no allowed-location-ips dropped or overlapping"),
        ("nodes", "no node left out"),
        ("peers", "no Peer skipped"),
    ] {
        if !findings.iter().any(|finding| finding.check == check) {
            findings.push(Finding::ok(check, "cluster", what));
        }
    }
    findings
}

fn kind(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Node => "node",
        ObjectKind::Peer => "Peer",
    }
}

/// The leader of each location and why (Kilo's election order).
pub fn leader_findings(snapshot: &ClusterSnapshot, topology: &Topology) -> Vec<Finding> {
    leaders(snapshot, topology)
        .into_iter()
        .map(|leader| {
            Finding::ok(
                "leaders",
                leader.segment,
                match leader.deposed.as_slice() {
                    [] => format!("{} leads: {}", leader.node, leader.reason.describe()),
                    deposed => format!(
                        "{} leads: {}; {} deposed by a failover claim (unreachable over the private network)",
                        leader.node,
                        leader.reason.describe(),
                        deposed.join(", ")
                    ),
                },
            )
        })
        .collect()
}

/// `net.ipv4.ip_forward` on a leader: it forwards the location's traffic into WireGuard.
pub fn ip_forward(leader: bool, value: Option<&str>) -> Finding {
    const SUBJECT: &str = "net.ipv4.ip_forward";
    match (leader, value.map(str::trim)) {
        (_, Some("1")) => Finding::ok("ip-forward", SUBJECT, "1"),
        (false, value) => Finding::ok(
            "ip-forward",
            SUBJECT,
            format!("{} (this node does not lead its location)", value.unwrap_or("unreadable")),
        ),
        (true, value) => Finding::problem(
            "ip-forward",
            SUBJECT,
            format!(
                "{} on a leader: the location's traffic to other locations is dropped here",
                value.unwrap_or("unreadable")
            ),
            "sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d); on a cloud VM also enable IP \
             forwarding on its network interface (GCP canIpForward, AWS source/destination check off, Azure IP \
             forwarding)",
        ),
    }
}

/// Strict reverse-path filtering (`rp_filter=1`) drops the replies that reach a leader on
/// another interface than the route back (the kernel uses the larger of `all` and the interface's).
pub fn rp_filter(leader: bool, interface: &str, all: Option<u8>, on_interface: Option<u8>) -> Finding {
    let effective = all.max(on_interface);
    let subject = format!("net.ipv4.conf.{{all,{interface}}}.rp_filter");
    let evidence = format!(
        "all={}, {interface}={}",
        all.map_or("unreadable".into(), |v| v.to_string()),
        on_interface.map_or("absent".into(), |v| v.to_string())
    );
    if leader && effective == Some(1) {
        Finding::problem(
            "rp-filter",
            subject,
            format!("{evidence}: strict reverse-path filtering on a leader drops traffic that returns asymmetrically"),
            format!("sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{interface}.rp_filter=2 (loose)"),
        )
    } else {
        Finding::ok("rp-filter", subject, evidence)
    }
}

/// The WireGuard interface exists and its MTU leaves room for WireGuard's overhead.
pub fn interface(name: &str, mtu: Option<u32>, largest: Option<u32>) -> Finding {
    match (mtu, largest) {
        (None, _) => Finding::problem(
            "interface",
            name,
            format!("{name} does not exist"),
            format!(
                "start the agent on this node; with --create-interface=false create {name} first (e.g. wireguard-go {name})"
            ),
        ),
        (Some(mtu), Some(largest)) if mtu > largest => Finding::problem(
            "mtu",
            name,
            format!(
                "MTU {mtu}, above {largest} (the underlay's MTU minus WireGuard's overhead): large packets are dropped"
            ),
            format!("run the agent with --mtu=auto or --mtu={largest}"),
        ),
        (Some(mtu), largest) => Finding::ok(
            "interface",
            name,
            format!(
                "present, MTU {mtu}{}",
                largest.map_or_else(String::new, |largest| format!(" (at most {largest})"))
            ),
        ),
    }
}

/// `--compatibility=cilium` needs Cilium's IPIP device: without it, Cilium runs without
/// `enable-ipip-termination=true` and the agent fails with "cilium_tunl interface not found".
pub fn cilium_tunl(present: bool) -> Finding {
    if present {
        Finding::ok("cilium-tunl", mesh_netlink::CILIUM_TUNNEL, "present")
    } else {
        Finding::problem(
            "cilium-tunl",
            mesh_netlink::CILIUM_TUNNEL,
            format!("{} does not exist, and --compatibility=cilium routes through it", mesh_netlink::CILIUM_TUNNEL),
            "enable IPIP termination in Cilium (Helm value enable-ipip-termination=true, Cozystack's \
             cilium values) and restart the Cilium agent",
        )
    }
}

/// Handshakes older than this mean WireGuard cannot rekey: it rekeys every 2 minutes while
/// traffic flows, and gives up on a session after 3.
pub const STALE_HANDSHAKE_SECONDS: u64 = 180;

/// The size of a WireGuard handshake initiation. Before the first handshake a peer sends
/// nothing else, and it repeats the initiation every 5 s (`REKEY_TIMEOUT`) until an answer
/// comes: more than one initiation's worth of bytes sent and nothing received means at least
/// one initiation went unanswered for 5 s, which a working path never does.
pub const HANDSHAKE_INITIATION_BYTES: u64 = 148;

/// How long to wait before reading `/status` again when a handshake is stale: longer than
/// WireGuard's 5 s between handshake initiations, so a peer with traffic to send shows one.
pub const RESAMPLE_AFTER: std::time::Duration = std::time::Duration::from_secs(6);

/// `status` with each peer's handshake age and byte counters taken from `stats`, read from the
/// WireGuard device at `now` (Unix seconds). A peer the device does not hold has had no
/// handshake and no bytes.
pub fn with_live_counters(
    status: &serde_json::Value,
    stats: &BTreeMap<mesh_core::Key, PeerStats>,
    now: i64,
) -> serde_json::Value {
    let by_key: BTreeMap<String, &PeerStats> = stats.iter().map(|(key, stats)| (key.to_base64(), stats)).collect();
    let mut status = status.clone();
    for peer in status["peers"].as_array_mut().into_iter().flatten() {
        let stats = peer["public_key"].as_str().and_then(|key| by_key.get(key)).copied().copied().unwrap_or_default();
        crate::status::set_peer_counters(peer, stats, now);
    }
    status
}

/// Whether [`handshakes`] needs a second sample, [`RESAMPLE_AFTER`] later: a peer's handshake
/// is stale, which an idle peer without keepalive and a blocked path both show.
pub fn needs_second_sample(status: &serde_json::Value) -> bool {
    let peers = status["peers"].as_array().map(Vec::as_slice).unwrap_or_default();
    peers.iter().any(|peer| {
        peer["endpoint"].is_string()
            && peer["latest_handshake_age_seconds"].as_u64().is_some_and(|age| age > STALE_HANDSHAKE_SECONDS)
    })
}

/// The agent's `/status` peers: a leader's peer with an endpoint is unreachable over UDP when
/// initiations go out unanswered: it never completed a handshake although it sent more than
/// one initiation and received nothing, or its handshake is stale and in the `later` sample
/// it sent initiations and received nothing. A peer that sent nothing has had no traffic and
/// no keepalive (idle): nothing says the path is blocked. Without a later sample, a stale
/// handshake is reported as blocked.
pub fn handshakes(status: &serde_json::Value, later: Option<&serde_json::Value>, port: u16) -> Vec<Finding> {
    let peers = status["peers"].as_array().cloned().unwrap_or_default();
    if status["role"]["leader"] == false {
        return vec![Finding::ok(
            "handshakes",
            "WireGuard",
            "this node does not lead its location: it has no WireGuard peers",
        )];
    }
    let mut findings = Vec::new();
    for peer in &peers {
        let name = peer["name"].as_str().unwrap_or_default();
        let subject = format!("peer {name}");
        let age = peer["latest_handshake_age_seconds"].as_u64();
        let (rx, tx) = (peer["rx_bytes"].as_u64().unwrap_or(0), peer["tx_bytes"].as_u64().unwrap_or(0));
        let Some(endpoint) = peer["endpoint"].as_str() else {
            findings.push(Finding::ok(
                "handshakes",
                subject,
                "no endpoint: it connects to this node (a roaming Peer); nothing to reach",
            ));
            continue;
        };
        let blocked = |seen: String| {
            Finding::problem(
                "handshakes",
                subject.clone(),
                format!("{seen}: UDP {port} to {endpoint} looks blocked"),
                format!(
                    "allow UDP {port} in both directions between this node and {endpoint} (cloud firewall, security \
                     group, the router's iptables); if {name} is behind NAT, annotate it with {PERSISTENT_KEEPALIVE}"
                ),
            )
        };
        findings.push(match age {
            Some(age) if age <= STALE_HANDSHAKE_SECONDS => {
                Finding::ok("handshakes", subject, format!("latest handshake {age} s ago"))
            }
            Some(age) => {
                let stale = format!(
                    "latest handshake with {endpoint} {age} s ago, past the {STALE_HANDSHAKE_SECONDS} s after which \
                     WireGuard drops a session it could not rekey"
                );
                let later = later
                    .and_then(|later| later["peers"].as_array()?.iter().find(|other| other["name"] == peer["name"]));
                match later {
                    None => blocked(stale),
                    Some(later)
                        if later["latest_handshake_age_seconds"]
                            .as_u64()
                            .is_some_and(|age| age <= STALE_HANDSHAKE_SECONDS) =>
                    {
                        Finding::ok("handshakes", subject, format!("{stale}; then a new handshake"))
                    }
                    Some(later) => {
                        let sent = later["tx_bytes"].as_u64().unwrap_or(tx).saturating_sub(tx);
                        let received = later["rx_bytes"].as_u64().unwrap_or(rx).saturating_sub(rx);
                        let seconds = RESAMPLE_AFTER.as_secs();
                        if received == 0 && sent >= HANDSHAKE_INITIATION_BYTES {
                            blocked(format!("{stale}; in the next {seconds} s it sent {sent} bytes and received none"))
                        } else {
                            Finding::ok(
                                "handshakes",
                                subject,
                                format!(
                                    "idle: {stale}; in the next {seconds} s it sent {sent} bytes and received \
                                     {received}: WireGuard handshakes again when traffic or a keepalive needs it"
                                ),
                            )
                        }
                    }
                }
            }
            None if rx == 0 && tx > HANDSHAKE_INITIATION_BYTES => blocked(format!(
                "no handshake with {endpoint}: sent {tx} bytes (~{} handshake initiations, one every 5 s) and \
                 received none",
                tx / HANDSHAKE_INITIATION_BYTES
            )),
            None => Finding::ok(
                "handshakes",
                subject,
                format!(
                    "no handshake yet with {endpoint} ({tx} bytes sent, {rx} received): WireGuard starts one when \
                     traffic or a keepalive needs it"
                ),
            ),
        });
    }
    if findings.is_empty() {
        findings.push(Finding::ok("handshakes", "WireGuard", "no WireGuard peers"));
    }
    findings
}

/// What the agent would change now: empty when the node is configured as planned.
/// `private` says which private interface the rules were judged with.
pub fn live_diff(interface: &str, private: &str, plan: &Plan) -> Finding {
    if plan.is_empty() {
        return Finding::ok(
            "live-diff",
            interface,
            format!("the data plane is configured as planned ({private}): nothing to change"),
        );
    }
    let mut kinds: Vec<&str> = plan.operations.iter().map(mesh_core::Operation::kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    Finding::problem(
        "live-diff",
        interface,
        format!(
            "{} operations would change the data plane ({}): the agent is not running, is failing to apply \
             (its log and /status say why), or someone else changes what it owns ({private})",
            plan.operations.len(),
            kinds.join(", ")
        ),
        "see `mesh-agent plan` for the desired state, and the agent's log and /status (pending_plan, \
         last_reconcile) for apply errors",
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mesh_core::{Key, Operation};
    use serde_json::json;

    use super::*;

    fn node(name: &str, annotations: &[(&str, &str)], labels: &[(&str, &str)]) -> Node {
        let map = |pairs: &[(&str, &str)]| {
            Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>())
        };
        let mut node = Node::default();
        node.metadata.name = Some(name.to_owned());
        node.metadata.annotations = map(annotations);
        node.metadata.labels = map(labels);
        node
    }

    fn problems(findings: &[Finding]) -> Vec<&Finding> {
        findings.iter().filter(|finding| finding.verdict == Verdict::Problem).collect()
    }

    #[test]
    fn location_only_as_a_label_or_a_zone_without_region_is_a_problem() {
        let nodes = [
            node("a", &[(LOCATION, "a")], &[]),
            node("b", &[], &[(LOCATION, "fsn1")]),
            node("c", &[], &[(ZONE_LABEL, "ams3-1")]),
            node("d", &[], &[(ZONE_LABEL, "x"), ("topology.kubernetes.io/region", "eu")]),
        ];
        let findings = location(&nodes, "topology.kubernetes.io/region");
        let found = problems(&findings);
        assert_eq!(found.len(), 2, "{findings:#?}");
        assert_eq!(found[0].subject, "node b");
        assert!(found[0].evidence.contains("is a label, not an annotation"), "{}", found[0].evidence);
        assert_eq!(found[0].fix.as_deref(), Some("kubectl annotate node b kilo.squat.ai/location=fsn1"));
        assert_eq!(found[1].fix.as_deref(), Some("kubectl annotate node c kilo.squat.ai/location=ams3-1"));
        assert_eq!(location(&nodes[..1], "topology.kubernetes.io/region")[0].verdict, Verdict::Ok);
    }

    #[test]
    fn a_node_discovered_behind_nat_without_keepalive_is_a_problem() {
        let mut snapshot = mesh_tests::two_locations(1_000);
        let b_key = snapshot.nodes[1].key.unwrap();
        snapshot.nodes[0].discovered_endpoints.insert(b_key, "203.0.113.5:4000".parse().unwrap());
        let findings = nat_keepalive(&snapshot);
        let found = problems(&findings);
        assert_eq!(found.len(), 1, "{findings:#?}");
        assert_eq!(found[0].subject, "node b");
        assert!(found[0].evidence.contains("a sees it at 203.0.113.5:4000"), "{}", found[0].evidence);
        assert!(found[0].evidence.contains("announces 198.51.100.1:51820"), "{}", found[0].evidence);
        assert_eq!(found[0].fix.as_deref(), Some("kubectl annotate node b kilo.squat.ai/persistent-keepalive=25"));
        snapshot.nodes[1].persistent_keepalive = 25;
        assert!(problems(&nat_keepalive(&snapshot)).is_empty());
        snapshot.nodes[1].persistent_keepalive = 0;
        snapshot.nodes[0].discovered_endpoints.insert(b_key, "198.51.100.1:51820".parse().unwrap());
        assert!(problems(&nat_keepalive(&snapshot)).is_empty(), "seen where it announces itself: no NAT");
    }

    #[test]
    fn dropped_values_and_left_out_objects_are_problems_with_the_reason() {
        let warning = Warning {
            kind: ObjectKind::Node,
            name: "b1".into(),
            annotation: Some(ALLOWED_LOCATION_IPS.into()),
            value: Some("10.42.0.0/16".into()),
            reason: "overlaps the pod subnet of a1; dropped".into(),
        };
        let skipped = [
            Skipped::node("c1", "not ready: last-seen 75 s ago (limit 60 s)"),
            Skipped::peer("laptop", "no public key"),
        ];
        let findings = diagnostics(&skipped, &[warning]);
        let checks: Vec<(&str, Verdict)> = findings.iter().map(|f| (f.check, f.verdict)).collect();
        assert_eq!(
            checks,
            [("allowed-location-ips", Verdict::Problem), ("nodes", Verdict::Problem), ("peers", Verdict::Problem)]
        );
        assert!(findings[0].evidence.contains("\"10.42.0.0/16\": overlaps the pod subnet"), "{}", findings[0].evidence);
        assert!(findings[1].fix.as_deref().unwrap().contains("kilo.squat.ai/last-seen"));
        assert!(diagnostics(&[], &[]).iter().all(|finding| finding.verdict == Verdict::Ok));
    }

    #[test]
    fn forwarding_and_reverse_path_filtering_matter_on_a_leader() {
        assert_eq!(ip_forward(true, Some("0\n")).verdict, Verdict::Problem);
        assert!(ip_forward(true, Some("0")).fix.unwrap().contains("sysctl -w net.ipv4.ip_forward=1"));
        assert_eq!(ip_forward(false, Some("0")).verdict, Verdict::Ok);
        assert_eq!(ip_forward(true, Some("1")).verdict, Verdict::Ok);
        assert_eq!(rp_filter(true, "kilo0", Some(1), Some(0)).verdict, Verdict::Problem, "the larger value applies");
        assert_eq!(rp_filter(true, "kilo0", Some(0), Some(2)).verdict, Verdict::Ok);
        assert_eq!(rp_filter(false, "kilo0", Some(1), None).verdict, Verdict::Ok);
    }

    #[test]
    fn the_interface_must_exist_with_room_for_wireguard() {
        assert_eq!(interface("kilo0", None, Some(1420)).verdict, Verdict::Problem);
        let too_big = interface("kilo0", Some(1500), Some(1420));
        assert_eq!((too_big.check, too_big.verdict), ("mtu", Verdict::Problem));
        assert_eq!(interface("kilo0", Some(1420), Some(1420)).verdict, Verdict::Ok);
        let missing = cilium_tunl(false);
        assert!(missing.fix.unwrap().contains("enable-ipip-termination=true"));
        assert_eq!(cilium_tunl(true).verdict, Verdict::Ok);
    }

    #[test]
    fn a_peer_with_a_stale_handshake_or_unanswered_initiations_looks_blocked() {
        let status = json!({
            "role": {"leader": true},
            "peers": [
                {"name": "location:b", "endpoint": "198.51.100.21:51820", "latest_handshake_age_seconds": 5,
                 "rx_bytes": 92, "tx_bytes": 148},
                {"name": "location:c", "endpoint": "203.0.113.1:51820", "latest_handshake_age_seconds": null,
                 "rx_bytes": 0, "tx_bytes": 444},
                {"name": "location:d", "endpoint": "192.0.2.4:51820", "latest_handshake_age_seconds": 600,
                 "rx_bytes": 4096, "tx_bytes": 8192},
                {"name": "laptop", "endpoint": null, "latest_handshake_age_seconds": null,
                 "rx_bytes": 0, "tx_bytes": 0},
                {"name": "location:e", "endpoint": "192.0.2.5:51820", "latest_handshake_age_seconds": null,
                 "rx_bytes": 0, "tx_bytes": 148},
                {"name": "location:f", "endpoint": "192.0.2.6:51820", "latest_handshake_age_seconds": null,
                 "rx_bytes": 0, "tx_bytes": 0},
            ],
        });
        let findings = handshakes(&status, None, 51820);
        let verdicts: Vec<Verdict> = findings.iter().map(|finding| finding.verdict).collect();
        assert_eq!(
            verdicts,
            [Verdict::Ok, Verdict::Problem, Verdict::Problem, Verdict::Ok, Verdict::Ok, Verdict::Ok],
            "{findings:#?}"
        );
        assert_eq!(
            findings[1].evidence,
            "no handshake with 203.0.113.1:51820: sent 444 bytes (~3 handshake initiations, one every 5 s) and \
             received none: UDP 51820 to 203.0.113.1:51820 looks blocked"
        );
        assert!(findings[1].fix.as_deref().unwrap().starts_with("allow UDP 51820 in both directions"));
        assert!(findings[2].evidence.contains("latest handshake with 192.0.2.4:51820 600 s ago"));
        assert!(findings[4].evidence.starts_with("no handshake yet"), "one initiation may still be answered");
        let follower = handshakes(&json!({"role": {"leader": false}, "peers": []}), None, 51820);
        assert_eq!(follower[0].verdict, Verdict::Ok);
    }

    #[test]
    fn a_stale_handshake_is_blocked_only_when_the_next_sample_shows_unanswered_initiations() {
        let peer = |name: &str, age: u64, rx: u64, tx: u64| {
            json!({"name": name, "endpoint": "192.0.2.4:51820", "latest_handshake_age_seconds": age,
                   "rx_bytes": rx, "tx_bytes": tx})
        };
        let first = json!({"role": {"leader": true}, "peers": [
            peer("idle", 600, 4096, 8192), peer("blocked", 600, 4096, 8192), peer("rekeyed", 600, 4096, 8192),
        ]});
        assert!(needs_second_sample(&first));
        let later = json!({"role": {"leader": true}, "peers": [
            peer("idle", 606, 4096, 8192), peer("blocked", 606, 4096, 8192 + 148), peer("rekeyed", 1, 4188, 8340),
        ]});
        let findings = handshakes(&first, Some(&later), 51820);
        let verdicts: Vec<Verdict> = findings.iter().map(|finding| finding.verdict).collect();
        assert_eq!(verdicts, [Verdict::Ok, Verdict::Problem, Verdict::Ok], "{findings:#?}");
        assert!(findings[0].evidence.starts_with("idle: "), "{}", findings[0].evidence);
        assert!(findings[1].evidence.contains("in the next 6 s it sent 148 bytes and received none"));
        assert!(findings[1].evidence.ends_with("UDP 51820 to 192.0.2.4:51820 looks blocked"));
        let fresh = json!({"role": {"leader": true}, "peers": [peer("fresh", 5, 1, 1)]});
        assert!(!needs_second_sample(&fresh));
    }

    /// Two samples of `/status` taken a few seconds apart often show the same counters (those
    /// of the agent's last pass): the device's own counters tell the blocked path.
    #[test]
    fn live_counters_from_the_device_replace_those_of_the_agents_last_pass() {
        let (stale, blocked, gone) = (Key::from_bytes([1; 32]), Key::from_bytes([2; 32]), Key::from_bytes([3; 32]));
        let peer = |key: &Key| {
            json!({"name": key.to_base64(), "public_key": key.to_base64(), "endpoint": "192.0.2.4:51820",
                   "latest_handshake_age_seconds": 600, "rx_bytes": 4096, "tx_bytes": 8192})
        };
        let status = json!({"role": {"leader": true}, "peers": [peer(&stale), peer(&blocked), peer(&gone)]});
        let now = 1_767_225_600;
        let device = |blocked_tx: u64| {
            BTreeMap::from([
                (stale, PeerStats { last_handshake: Some(now - 610), rx_bytes: 4096, tx_bytes: 8192 }),
                (blocked, PeerStats { last_handshake: Some(now - 610), rx_bytes: 4096, tx_bytes: blocked_tx }),
            ])
        };
        let first = with_live_counters(&status, &device(8192), now);
        assert_eq!(first["peers"][0]["latest_handshake_age_seconds"], 610);
        assert_eq!(first["peers"][2]["latest_handshake_age_seconds"], serde_json::Value::Null, "not on the device");
        assert_eq!(
            (first["peers"][2]["rx_bytes"].as_u64(), first["peers"][2]["tx_bytes"].as_u64()),
            (Some(0), Some(0))
        );
        // Six seconds later the agent's /status would still say 8192 for both.
        let later = with_live_counters(&status, &device(8192 + 148), now + 6);
        let findings = handshakes(&first, Some(&later), 51820);
        let verdicts: Vec<Verdict> = findings.iter().map(|finding| finding.verdict).collect();
        assert_eq!(verdicts[..2], [Verdict::Ok, Verdict::Problem], "{findings:#?}");
        assert!(findings[1].evidence.contains("sent 148 bytes and received none"), "{}", findings[1].evidence);
    }

    #[test]
    fn the_live_diff_is_a_problem_when_the_agent_would_change_something() {
        let ok = live_diff("kilo0", "private interface eth1 (--private-iface)", &Plan::default());
        assert_eq!(ok.verdict, Verdict::Ok);
        assert!(ok.evidence.contains("(private interface eth1 (--private-iface))"), "{}", ok.evidence);
        let plan = Plan {
            operations: vec![Operation::SetMtu(1420), Operation::RemovePeer(Key::from_bytes([1; 32]))],
            ..Plan::default()
        };
        let finding = live_diff("kilo0", "no private interface", &plan);
        assert_eq!(finding.verdict, Verdict::Problem);
        assert!(finding.evidence.starts_with("2 operations would change the data plane (remove_peer, set_mtu)"));
    }

    #[test]
    fn allowed_location_ips_on_the_leader_only_suggest_annotating_the_others() {
        let node = |name: &str, location: &str, ranges: &[&str]| NodeSpec {
            name: name.to_owned(),
            location: location.to_owned(),
            allowed_location_ips: ranges.iter().map(|range| range.parse().unwrap()).collect(),
            ..NodeSpec::default()
        };
        let snapshot = ClusterSnapshot {
            nodes: vec![
                node("a1", "a", &["10.99.0.0/24"]),
                node("a2", "a", &[]),
                node("a3", "a", &[]),
                node("b1", "b", &["10.98.0.0/24"]),
                node("b2", "b", &["10.98.0.0/24"]),
                node("c1", "c", &[]),
                node("c2", "c", &[]),
            ],
            ..ClusterSnapshot::default()
        };
        let annotate = "kubectl annotate node a2 a3 kilo.squat.ai/allowed-location-ips=10.99.0.0/24";
        let kilo = allowed_location_ips_on_every_candidate(&snapshot, false);
        assert_eq!(kilo.len(), 1, "{kilo:?}");
        assert_eq!((kilo[0].verdict, kilo[0].subject.as_str()), (Verdict::Ok, "location a"));
        assert!(kilo[0].evidence.starts_with("only a1 carry kilo.squat.ai/allowed-location-ips (10.99.0.0/24)"));
        assert!(kilo[0].evidence.ends_with(&format!("suggested: {annotate}")), "{kilo:?}");

        let fast = allowed_location_ips_on_every_candidate(&snapshot, true);
        assert_eq!((fast.len(), fast[0].verdict, fast[0].subject.as_str()), (1, Verdict::Ok, "location a"));
        assert!(fast[0].evidence.contains("fast failover keeps them") && fast[0].evidence.contains(annotate));

        let everywhere = ClusterSnapshot { nodes: snapshot.nodes[3..].to_vec(), ..ClusterSnapshot::default() };
        let fine = allowed_location_ips_on_every_candidate(&everywhere, false);
        assert_eq!((fine.len(), fine[0].subject.as_str()), (1, "locations"));
    }
}
