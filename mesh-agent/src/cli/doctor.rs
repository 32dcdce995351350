//! `mesh-agent doctor`: checks the cluster (and, with `--hostname`, this node) for what breaks a
//! Kilo mesh, and says for each check: ok or problem, the evidence, and the fix.
//!
//! Cluster checks read the Nodes and Peers (`--kubeconfig`, `$KUBECONFIG` or `--nodes/--peers`):
//! location annotation vs label, NAT without keepalive, `allowed-location-ips` dropped or
//! overlapping, nodes and Peers left out, each location's leader and why. Node checks run on the
//! node or in the agent's pod: the WireGuard interface and its MTU, the live diff (what the agent
//! would change now), `ip_forward` and `rp_filter` on a leader, `cilium_tunl` with
//! `--compatibility=cilium`, and the handshakes the agent's `/status` reports.
//!
//! Exit status: 0 without problems, 4 with at least one.

mod checks;
mod host;

use std::fmt::Write as _;
use std::time::SystemTime;

use mesh_core::{Compatibility, DesiredState, Plan};

use super::{CliError, KgctlArgs, KgctlView, write};
pub use checks::{Finding, Verdict};

/// Exit code of a doctor that found a problem.
pub const EXIT_PROBLEM: u8 = 4;

/// Arguments of `doctor`.
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    cluster: KgctlArgs,
    /// Also check this node, from the node itself or the agent's pod (host network).
    #[arg(long)]
    hostname: Option<String>,
    /// The agent's `/status`, read for the handshake checks (with --hostname).
    #[arg(long = "status-url", default_value = "http://127.0.0.1:1107/status")]
    status_url: String,
    /// The interface that holds the node's private IP, for the live diff [default: found as the
    /// agent finds it, from the node's private IP].
    #[arg(long = "private-iface")]
    private_iface: Option<String>,
    /// Only private IPs inside these CIDRs may be the node's internal IP, as the agent's flag
    /// (repeatable, comma-separated).
    #[arg(long = "internal-cidr", env = "KILO_INTERNAL_CIDR", value_delimiter = ',', value_parser = crate::flags::parse_cidr)]
    internal_cidrs: Vec<ipnet::IpNet>,
    /// Output format: text or json.
    #[arg(short = 'o', long = "output", default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

pub(super) async fn run(args: DoctorArgs, out: &mut dyn std::io::Write) -> Result<(), CliError> {
    let mut view = KgctlView::load(&args.cluster).await?;
    let mut findings = checks::location(&view.objects.nodes, &args.cluster.mesh.topology_label);
    findings.extend(checks::nat_keepalive(&view.cluster.snapshot));
    let viewpoint = match &args.hostname {
        Some(hostname) => {
            // The agent on this node is alive by definition, as `plan` assumes.
            let now = view.cluster.snapshot.now;
            let local = view.cluster.snapshot.nodes.iter_mut().find(|node| &node.name == hostname);
            let Some(local) = local else {
                return Err(CliError::input(format!(
                    "node {hostname:?} is not in the cluster; known nodes: {}",
                    view.cluster.node_names()
                )));
            };
            local.last_seen = Some(now);
            Some(hostname.clone())
        }
        None => view.cluster.ready_nodes().last().map(|name| (*name).to_owned()),
    };
    let topology = match &viewpoint {
        Some(host) => Some(view.topology(&args.cluster.mesh, host)?),
        None => None,
    };
    let mut skipped = view.cluster.diagnostics.skipped.clone();
    let mut warnings = view.cluster.diagnostics.warnings.clone();
    if let Some(topology) = &topology {
        skipped.extend(topology.skipped.iter().cloned());
        warnings.extend(topology.warnings.iter().cloned());
        findings.extend(checks::leader_findings(&view.cluster.snapshot, topology));
        findings
            .extend(checks::allowed_location_ips_on_every_candidate(&view.cluster.snapshot, topology.fast_failover));
    } else {
        findings.push(Finding::problem(
            "nodes",
            "cluster",
            "no ready node: the mesh is empty",
            "start the agents; each publishes kilo.squat.ai/last-seen every 30 s",
        ));
    }
    findings.extend(checks::diagnostics(&skipped, &warnings));
    if let (Some(hostname), Some(topology)) = (&args.hostname, &topology) {
        findings.extend(node_checks(&args, hostname, &view, topology).await);
    }

    let problems = findings.iter().filter(|finding| finding.verdict == Verdict::Problem).count();
    let text = if args.output == "json" {
        let document = serde_json::json!({"problems": problems, "findings": findings});
        format!("{document:#}\n")
    } else {
        render_text(&findings, problems)
    };
    write(out, &text)?;
    if problems > 0 {
        return Err(CliError { message: format!("doctor found {problems} problem(s)"), code: EXIT_PROBLEM });
    }
    Ok(())
}

/// The checks of the node the doctor runs on.
async fn node_checks(
    args: &DoctorArgs,
    hostname: &str,
    view: &KgctlView,
    topology: &mesh_core::Topology,
) -> Vec<Finding> {
    let mesh = &args.cluster.mesh;
    let interface = mesh.interface.as_str();
    let cilium = mesh.compatibility == Compatibility::Cilium;
    let mut findings = Vec::new();
    let underlay = mesh_netlink::host::HostNetwork::read_links_async(&mesh_netlink::Namespace::Current)
        .await
        .ok()
        .and_then(|network| network.underlay_mtu());
    let largest = underlay.map(|underlay| mesh_netlink::host::auto_mtu(Some(underlay), cilium));
    findings.push(checks::interface(interface, host::link_mtu(interface), largest));
    findings.push(checks::ip_forward(topology.leader, host::sysctl("net/ipv4/ip_forward").as_deref()));
    let rp = |name: &str| host::sysctl(&format!("net/ipv4/conf/{name}/rp_filter")).and_then(|v| v.parse().ok());
    findings.push(checks::rp_filter(topology.leader, interface, rp("all"), rp(interface)));
    if cilium {
        findings.push(checks::cilium_tunl(host::link_mtu(mesh_netlink::CILIUM_TUNNEL).is_some()));
    }
    // Without an MTU the diff leaves the MTU alone: the interface check judges it.
    let options = mesh.options(&topology.hostname, view.granularity, view.subnet);
    let (desired, _) = DesiredState::from_topology(topology, &options);
    let private = match &args.private_iface {
        Some(name) => Ok(host::PrivateInterface::Given(name.clone())),
        None => host::private_interface(hostname, interface, mesh.compatibility, &args.internal_cidrs).await,
    };
    let observe = || async {
        match &private {
            Ok(private) => host::observe(interface, private.name(), mesh.compatibility).await,
            Err(error) => Err(error.clone()),
        }
    };
    let observed = observe().await;
    match (&observed, &private) {
        (Ok(observed), Ok(private)) => {
            findings.push(checks::live_diff(interface, &private.to_string(), &Plan::between(observed, &desired)));
        }
        (Err(error), _) | (_, Err(error)) => {
            findings.push(Finding::skipped("live-diff", interface, format!("cannot observe the data plane: {error}")))
        }
    }
    match host::fetch_status(&args.status_url) {
        Ok(status) => {
            // /status has the counters of the agent's last pass, up to a resync old: when the
            // device can be read here, both samples are read from it now.
            let live = |status: &serde_json::Value, observed: &mesh_core::ObservedState| {
                checks::with_live_counters(
                    status,
                    &observed.peer_stats,
                    mesh_core::time::unix_seconds(SystemTime::now()),
                )
            };
            let status = match &observed {
                Ok(observed) => live(&status, observed),
                Err(_) => status,
            };
            // A stale handshake is an idle peer or a blocked path: a second look tells which.
            let mut later = None;
            if checks::needs_second_sample(&status) {
                tokio::time::sleep(checks::RESAMPLE_AFTER).await;
                later = match observed {
                    Ok(_) => observe().await.ok().map(|observed| live(&status, &observed)),
                    Err(_) => host::fetch_status(&args.status_url).ok(),
                };
            }
            findings.extend(checks::handshakes(&status, later.as_ref(), mesh.port));
        }
        Err(error) => findings.push(Finding::skipped(
            "handshakes",
            "agent",
            format!("the agent's /status does not answer ({error}); handshakes not checked"),
        )),
    }
    findings
}

fn render_text(findings: &[Finding], problems: usize) -> String {
    let mut text = String::new();
    for finding in findings {
        let verdict = match finding.verdict {
            Verdict::Ok => "ok",
            Verdict::Problem => "PROBLEM",
            Verdict::Skipped => "skipped",
        };
        let _ = writeln!(text, "{verdict:<8} {:<21} {}: {}", finding.check, finding.subject, finding.evidence);
        if let Some(fix) = &finding.fix {
            let _ = writeln!(text, "{:<30} fix: {fix}", "");
        }
    }
    let _ = writeln!(text, "\n{problems} problem(s)");
    text
}
