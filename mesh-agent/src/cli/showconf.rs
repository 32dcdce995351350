//! `mesh-agent showconf node|peer NAME`: WireGuard configurations as `kgctl showconf` prints them.

use ipnet::IpNet;
use mesh_core::wireguard::{Conf, PeerConfig};
use mesh_core::{Endpoint, Host};
use serde_json::{Map, Value, json};

use super::{CliError, KgctlArgs, KgctlView, write};
use crate::flags::parse_cidr;

/// Arguments of `showconf`.
#[derive(clap::Args, Debug)]
pub struct ShowconfArgs {
    /// `node` or `peer`.
    #[arg(value_parser = ["node", "peer"])]
    kind: String,
    /// The node or peer name.
    name: String,
    /// Print the node's location (or the peer) as a peer of another WireGuard interface.
    #[arg(long = "as-peer")]
    as_peer: bool,
    /// Output format: wireguard, json or yaml (json and yaml only with --as-peer, as kgctl).
    #[arg(short = 'o', long = "output", default_value = "wireguard", value_parser = ["wireguard", "json", "yaml"])]
    output: String,
    /// Extra allowed IPs for --as-peer output, e.g. the cluster's service CIDR.
    #[arg(long = "allowed-ips", value_delimiter = ',', value_parser = parse_cidr)]
    allowed_ips: Vec<IpNet>,
    #[command(flatten)]
    cluster: KgctlArgs,
}

pub(super) async fn run(args: ShowconfArgs, out: &mut dyn std::io::Write) -> Result<(), CliError> {
    let view = KgctlView::load(&args.cluster).await?;
    let ready = view.cluster.ready_nodes();

    if args.kind == "node" {
        if !ready.contains(&args.name.as_str()) {
            return Err(CliError::input(format!("did not find any node named {:?} in the cluster", args.name)));
        }
        let topology = view.topology(&args.cluster.mesh, &args.name)?;
        if !topology.leader {
            eprintln!("Node {:?} is not a leader node", args.name);
            return Ok(());
        }
        if !args.as_peer {
            return write(out, &topology.node_conf(None, args.cluster.mesh.port).to_string());
        }
        let mut peer = topology.as_peer();
        add_allowed_ips(&mut peer, &args.allowed_ips);
        return render_peer(&args, peer, out);
    }

    let Some(last) = ready.last() else {
        return Err(CliError::input("did not find any valid Kilo nodes in the cluster"));
    };
    let topology = view.topology(&args.cluster.mesh, last)?;
    let Some(peer) = topology.peers.iter().find(|peer| peer.name == args.name) else {
        return Err(CliError::input(format!("did not find any peer named {:?} in the cluster", args.name)));
    };
    if !args.as_peer {
        return write(out, &topology.peer_conf(&args.name).to_string());
    }
    let mut config = PeerConfig {
        public_key: peer.public_key,
        allowed_ips: peer.allowed_ips.clone(),
        endpoint: peer.endpoint.clone(),
        persistent_keepalive: peer.persistent_keepalive,
        preshared_key: peer.preshared_key,
    };
    add_allowed_ips(&mut config, &args.allowed_ips);
    render_peer(&args, config, out)
}

fn add_allowed_ips(peer: &mut PeerConfig, extra: &[IpNet]) {
    for ip in extra.iter().map(IpNet::trunc) {
        if !peer.allowed_ips.contains(&ip) {
            peer.allowed_ips.push(ip);
        }
    }
}

fn render_peer(args: &ShowconfArgs, peer: PeerConfig, out: &mut dyn std::io::Write) -> Result<(), CliError> {
    match args.output.as_str() {
        "wireguard" => write(out, &Conf { interface: None, peers: vec![peer] }.to_string()),
        format => {
            let manifest = peer_manifest(&args.name, &peer);
            let text = if format == "json" {
                serde_json::to_string_pretty(&manifest).expect("manifest serializes") + "\n"
            } else {
                serde_norway::to_string(&manifest)
                    .map_err(|e| CliError::input(format!("failed to render YAML: {e}")))?
            };
            write(out, &text)
        }
    }
}

/// A `kilo.squat.ai/v1alpha1` Peer for `peer`, to apply in another cluster. Unlike kgctl, the
/// keepalive is in seconds (the CRD's unit) and a DNS endpoint keeps its name
/// (docs/compatibility.md).
fn peer_manifest(name: &str, peer: &PeerConfig) -> Value {
    let mut spec = Map::new();
    spec.insert("allowedIPs".into(), json!(peer.allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>()));
    if let Some(endpoint) = &peer.endpoint {
        spec.insert("endpoint".into(), endpoint_manifest(endpoint));
    }
    if peer.persistent_keepalive != 0 {
        spec.insert("persistentKeepalive".into(), json!(peer.persistent_keepalive));
    }
    if let Some(psk) = &peer.preshared_key {
        spec.insert("presharedKey".into(), json!(psk.expose().to_base64()));
    }
    spec.insert("publicKey".into(), json!(peer.public_key.to_base64()));
    json!({
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": { "name": name },
        "spec": spec,
    })
}

fn endpoint_manifest(endpoint: &Endpoint) -> Value {
    let dns_or_ip = match &endpoint.host {
        Host::Ip(ip) => json!({ "ip": ip.to_string() }),
        Host::Dns { name, .. } => json!({ "dns": name }),
    };
    json!({ "dnsOrIP": dns_or_ip, "port": endpoint.port })
}
