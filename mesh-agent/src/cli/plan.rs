//! `mesh-agent plan`: what the agent on one node would configure, computed offline.
//!
//! The JSON shape is a contract other tools depend on (design.md, "The plan contract").

use std::fmt::Write as _;

use mesh_core::{DesiredState, DeviceNames, Skipped, Topology, Warning};
use serde::Serialize;

use super::{CliError, Cluster, Source, unix_now, write};
use crate::flags::MeshFlags;

/// Arguments of `plan`.
#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    source: Source,
    /// The node to compute for (as the agent's --hostname).
    #[arg(long)]
    hostname: String,
    #[command(flatten)]
    mesh: MeshFlags,
    /// The interface that holds the node's private IP.
    #[arg(long = "private-iface", default_value = "eth0")]
    private_iface: String,
    /// Judge readiness at this Unix time [default: now].
    #[arg(long)]
    now: Option<i64>,
    /// Output format: json or text.
    #[arg(short = 'o', long = "output", default_value = "json", value_parser = ["json", "text"])]
    output: String,
}

#[derive(Serialize)]
struct PlanOutput {
    hostname: String,
    leader: bool,
    wireguard: WireGuardOutput,
    routes: Vec<RouteOutput>,
    rules: Vec<RuleOutput>,
    firewall: Vec<FirewallOutput>,
    skipped: Vec<Skipped>,
    warnings: Vec<Warning>,
}

#[derive(Serialize)]
struct WireGuardOutput {
    interface: String,
    address: Option<String>,
    listen_port: u16,
    peers: Vec<PeerOutput>,
}

#[derive(Serialize)]
struct PeerOutput {
    public_key: String,
    endpoint: Option<String>,
    allowed_ips: Vec<String>,
    persistent_keepalive: u16,
    preshared_key: bool,
}

#[derive(Serialize)]
struct RouteOutput {
    dst: String,
    gateway: Option<String>,
    dev: String,
    src: Option<String>,
    table: u32,
    onlink: bool,
}

#[derive(Serialize)]
struct RuleOutput {
    src: Option<String>,
    dst: Option<String>,
    iif: Option<String>,
    table: u32,
    priority: u32,
}

#[derive(Serialize)]
struct FirewallOutput {
    family: mesh_core::Family,
    table: String,
    chain: String,
    args: Vec<String>,
}

pub(super) async fn run(args: PlanArgs, out: &mut dyn std::io::Write) -> Result<(), CliError> {
    let granularity = args.mesh.fixed_granularity("location").map_err(CliError::usage)?;
    let objects = args.source.load().await?;
    let now = args.now.unwrap_or_else(unix_now);
    let mut cluster = Cluster::translate(&objects, &args.mesh.topology_label, now);
    // The agent on this node is alive by definition: its heartbeat is as fresh as it gets.
    let Some(local) = cluster.snapshot.nodes.iter_mut().find(|n| n.name == args.hostname) else {
        return Err(CliError::input(format!(
            "node {:?} is not in the input; known nodes: {}",
            args.hostname,
            cluster.node_names()
        )));
    };
    local.last_seen = Some(now);

    let options =
        args.mesh.options(&args.hostname, granularity, args.mesh.subnet.unwrap_or_else(super::default_subnet));
    let topology = Topology::compute(&cluster.snapshot, &options)
        .map_err(|e| CliError::input(format!("cannot compute the mesh for {:?}: {e}", args.hostname)))?;
    let (desired, state_warnings) = DesiredState::from_topology(&topology, &options);
    let names = DeviceNames::new(&options, &args.private_iface);

    let mut skipped = cluster.diagnostics.skipped;
    skipped.extend(topology.skipped.iter().cloned());
    let mut warnings = cluster.diagnostics.warnings;
    warnings.extend(topology.warnings.iter().cloned());
    warnings.extend(state_warnings);
    let output = PlanOutput {
        hostname: args.hostname.clone(),
        leader: topology.leader,
        wireguard: WireGuardOutput {
            interface: options.interface.clone(),
            address: topology.leader.then(|| topology.wireguard_cidr.to_string()),
            listen_port: topology.listen_port,
            peers: desired
                .peers
                .values()
                .map(|peer| PeerOutput {
                    public_key: peer.public_key.to_base64(),
                    endpoint: peer.endpoint.map(|e| e.to_string()),
                    allowed_ips: peer.allowed_ips.iter().map(ToString::to_string).collect(),
                    persistent_keepalive: peer.persistent_keepalive,
                    preshared_key: peer.preshared_key.is_some(),
                })
                .collect(),
        },
        routes: desired
            .routes
            .values()
            .map(|route| RouteOutput {
                dst: route.dst.to_string(),
                gateway: route.gateway.map(|ip| ip.to_string()),
                dev: names.name(route.dev).to_owned(),
                src: route.src.map(|ip| ip.to_string()),
                table: route.table,
                onlink: route.onlink,
            })
            .collect(),
        rules: desired
            .rules
            .iter()
            .map(|rule| RuleOutput {
                src: rule.src.map(|net| net.to_string()),
                dst: rule.dst.map(|net| net.to_string()),
                iif: rule.iif.map(|dev| names.name(dev).to_owned()),
                table: rule.table,
                priority: rule.priority,
            })
            .collect(),
        firewall: desired
            .firewall
            .rules
            .iter()
            .map(|rule| FirewallOutput {
                family: rule.family,
                table: rule.table().to_owned(),
                chain: rule.chain.as_str().to_owned(),
                args: rule.args(),
            })
            .collect(),
        skipped,
        warnings,
    };
    let text = if args.output == "json" {
        serde_json::to_string_pretty(&output).expect("plan output serializes") + "\n"
    } else {
        render_text(&output, &desired, &names)
    };
    write(out, &text)
}

fn render_text(plan: &PlanOutput, desired: &DesiredState, names: &DeviceNames) -> String {
    let mut text = String::new();
    let role = if plan.leader { "leader" } else { "not a leader (WireGuard interface down)" };
    let _ = writeln!(text, "{}: {role}", plan.hostname);
    if let Some(address) = &plan.wireguard.address {
        let _ = writeln!(
            text,
            "\nWireGuard {} {address}, listening on {}, {} peers:",
            plan.wireguard.interface,
            plan.wireguard.listen_port,
            plan.wireguard.peers.len()
        );
        for peer in &plan.wireguard.peers {
            let endpoint = peer.endpoint.as_deref().unwrap_or("no endpoint");
            let keepalive = match peer.persistent_keepalive {
                0 => String::new(),
                seconds => format!(", keepalive {seconds} s"),
            };
            let _ = writeln!(text, "  {} at {endpoint}{keepalive}: {}", peer.public_key, peer.allowed_ips.join(", "));
        }
    }
    let _ = writeln!(text, "\nRoutes ({}):", desired.routes.len());
    for route in desired.routes.values() {
        let _ = writeln!(text, "  {}", route.to_ip_route(names));
    }
    let _ = writeln!(text, "\nRules ({}):", desired.rules.len());
    for rule in &desired.rules {
        let _ = writeln!(text, "  {}", rule.to_ip_rule(names));
    }
    let _ = writeln!(text, "\nFirewall ({} rules):", desired.firewall.rules.len());
    for rule in &desired.firewall.rules {
        let command = if rule.family == mesh_core::Family::Ipv4 { "iptables" } else { "ip6tables" };
        let _ = writeln!(text, "  {command} -t {} -A {} {}", rule.table(), rule.chain.as_str(), rule.args().join(" "));
    }
    if !plan.skipped.is_empty() {
        let _ = writeln!(text, "\nSkipped:");
        for skipped in &plan.skipped {
            let _ = writeln!(text, "  {:?} {}: {}", skipped.kind, skipped.name, skipped.reason);
        }
    }
    if !plan.warnings.is_empty() {
        let _ = writeln!(text, "\nWarnings:");
        for warning in &plan.warnings {
            let what = match (&warning.annotation, &warning.value) {
                (Some(annotation), Some(value)) => format!(" {annotation}={value:?}"),
                (Some(annotation), None) => format!(" {annotation}"),
                _ => String::new(),
            };
            let _ = writeln!(text, "  {:?} {}{what}: {}", warning.kind, warning.name, warning.reason);
        }
    }
    text
}
