//! The agent flags that shape the mesh, with Kilo's names and defaults.

use ipnet::IpNet;
use mesh_core::{Compatibility, Encapsulation, Granularity, Options};

/// Flags shared by every command that computes a topology.
#[derive(clap::Args, Debug, Clone)]
pub struct MeshFlags {
    /// The granularity of the mesh: location, full or cross (the offline tools also accept auto:
    /// the `kilo.squat.ai/granularity` annotation the agents publish).
    #[arg(long = "mesh-granularity", env = "KILO_MESH_GRANULARITY")]
    pub granularity: Option<String>,
    /// The subnet WireGuard IPs are allocated from [default: 10.4.0.0/16; for showconf and graph,
    /// the subnet of the nodes' `kilo.squat.ai/wireguard-ip` annotations].
    #[arg(long, env = "KILO_SUBNET", value_parser = parse_cidr)]
    pub subnet: Option<IpNet>,
    /// The WireGuard port. A `KILO_PORT` in the format of a Kubernetes service link
    /// (`tcp://10.96.0.10:1107`, set in every pod of a namespace with a Service named `kilo`) is
    /// ignored with a warning.
    #[arg(long, env = PORT_ENV, default_value_t = DEFAULT_PORT, value_parser = parse_port)]
    pub port: u16,
    /// When to encapsulate traffic inside a location: never, crosssubnet or always.
    #[arg(long, env = "KILO_ENCAPSULATE", default_value = "always", value_parser = parse_encapsulation)]
    pub encapsulate: Encapsulation,
    /// Run beside another CNI: flannel or cilium (empty: Kilo's own IPIP).
    #[arg(long, env = "KILO_COMPATIBILITY", default_value = "", value_parser = parse_compatibility)]
    pub compatibility: Compatibility,
    /// Whether the mesh routes traffic inside a location.
    #[arg(long, env = "KILO_LOCAL", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub local: bool,
    /// Service CIDRs that are never masqueraded (repeatable, comma-separated).
    #[arg(long = "service-cidr", env = "KILO_SERVICE_CIDR", value_delimiter = ',', value_parser = parse_cidr)]
    pub service_cidrs: Vec<IpNet>,
    /// Add ACCEPT rules to the FORWARD chain (with --cni).
    #[arg(long = "iptables-forward-rules", env = "KILO_IPTABLES_FORWARD_RULES", default_value_t = false, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub iptables_forward_rules: bool,
    /// Whether the mesh NATs its pod subnet like Kilo's CNI mode.
    #[arg(long, env = "KILO_CNI", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cni: bool,
    /// The WireGuard interface name.
    #[arg(long, env = "KILO_INTERFACE", default_value = "kilo0")]
    pub interface: String,
    /// Ranges an allowed-location IP or a Peer may route although they take over a default
    /// route, the node's own networks, another node's addresses, the WireGuard subnet or a
    /// service CIDR; such ranges are refused with a warning otherwise (repeatable,
    /// comma-separated; 0.0.0.0/0,::/0 turns the check off).
    #[arg(long = "allowed-hijack-cidr", env = "KILO_ALLOWED_HIJACK_CIDR", value_delimiter = ',', value_parser = parse_cidr)]
    pub allowed_hijack_cidrs: Vec<IpNet>,
    /// Fast leader failover: elect a location's leader with the claims of its nodes, which probe
    /// the leader over the private network (used only while every ready node can). Off, this
    /// agent neither announces the capability nor probes, so every agent uses Kilo's election.
    #[arg(long = "fast-failover", env = "MESH_FAST_FAILOVER", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub fast_failover: bool,
    /// The node label used as location when `kilo.squat.ai/location` is absent.
    #[arg(long = "topology-label", env = "KILO_TOPOLOGY_LABEL", default_value = mesh_kube::annotations::DEFAULT_TOPOLOGY_LABEL)]
    pub topology_label: String,
}

/// The granularity a command asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GranularityChoice {
    /// A fixed granularity.
    Fixed(Granularity),
    /// The granularity the agents announced.
    Auto,
}

impl MeshFlags {
    /// The granularity flag, with the command's default; `auto` only where allowed.
    pub fn granularity(&self, default: &str, allow_auto: bool) -> Result<GranularityChoice, String> {
        let text = self.granularity.as_deref().unwrap_or(default);
        match (text, Granularity::parse(text)) {
            (_, Some(granularity)) => Ok(GranularityChoice::Fixed(granularity)),
            ("auto", None) if allow_auto => Ok(GranularityChoice::Auto),
            _ => Err(format!(
                "invalid value {text:?} for --mesh-granularity: possible values are: location, full, cross{}",
                if allow_auto { ", auto" } else { "" }
            )),
        }
    }

    /// The granularity flag for commands that need a fixed one (`auto` is a usage error).
    pub fn fixed_granularity(&self, default: &str) -> Result<Granularity, String> {
        match self.granularity(default, false)? {
            GranularityChoice::Fixed(granularity) => Ok(granularity),
            GranularityChoice::Auto => Err("--mesh-granularity=auto needs the annotations of a cluster".to_owned()),
        }
    }

    /// The core options for `hostname` with a resolved granularity and subnet.
    pub fn options(&self, hostname: &str, granularity: Granularity, subnet: IpNet) -> Options {
        Options {
            hostname: hostname.to_owned(),
            granularity,
            subnet: subnet.trunc(),
            port: self.port,
            local: self.local,
            encapsulation: self.encapsulate,
            compatibility: self.compatibility,
            cni: self.cni,
            iptables_forward_rules: self.iptables_forward_rules,
            service_cidrs: self.service_cidrs.iter().map(IpNet::trunc).collect(),
            interface: self.interface.clone(),
            mtu: None,
            allowed_hijack_cidrs: self.allowed_hijack_cidrs.iter().map(IpNet::trunc).collect(),
            fast_failover: self.fast_failover,
        }
    }
}

/// The environment variable of `--port`; Kubernetes sets a variable of this name too.
const PORT_ENV: &str = "KILO_PORT";

/// Kilo's WireGuard port.
const DEFAULT_PORT: u16 = 51820;

/// Parses `--port`: a number from 1 to 65535.
///
/// Kubernetes gives every pod, for each Service of its namespace, variables named after the
/// Service (unless the pod sets `enableServiceLinks: false`); for a Service named `kilo` one of
/// them is `KILO_PORT=tcp://10.96.0.10:1107`, which is also this flag's variable. Refusing it
/// would stop every agent of the cluster, and reading its port would move the mesh to the
/// Service's port, so a value of `KILO_PORT` in that format counts as unset. The same text on the
/// command line is a mistake of the user's and is refused.
fn parse_port(text: &str) -> Result<u16, String> {
    if let Ok(port) = text.parse::<u16>()
        && port != 0
    {
        return Ok(port);
    }
    if is_service_link(text) && std::env::var(PORT_ENV).is_ok_and(|value| value == text) {
        // Logging is not set up while flags are parsed; standard error reaches the pod's log.
        eprintln!(
            "mesh-agent: warning: ignoring {PORT_ENV}={text}: it is a Kubernetes service link (a Service \
             named kilo in this namespace), not a WireGuard port; using port {DEFAULT_PORT}"
        );
        return Ok(DEFAULT_PORT);
    }
    Err(format!("invalid port {text:?}: expected a number from 1 to 65535"))
}

/// Whether `text` is a Docker-link style service address, `PROTOCOL://HOST:PORT`, as Kubernetes
/// writes `<SERVICE>_PORT`.
fn is_service_link(text: &str) -> bool {
    let Some((protocol, address)) = text.split_once("://") else { return false };
    let Some((host, port)) = address.rsplit_once(':') else { return false };
    matches!(protocol, "tcp" | "udp" | "sctp") && !host.is_empty() && port.parse::<u16>().is_ok()
}

/// Parses a CIDR, naming the value on error.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse().map_err(|_| format!("failed to parse {text:?} as CIDR"))
}

fn parse_encapsulation(text: &str) -> Result<Encapsulation, String> {
    Encapsulation::parse(text)
        .ok_or_else(|| format!("encapsulation {text:?} unknown; possible values are: never, crosssubnet, always"))
}

fn parse_compatibility(text: &str) -> Result<Compatibility, String> {
    Compatibility::parse(text)
        .ok_or_else(|| format!("compatibility {text:?} unknown; possible values are: flannel, cilium (or empty)"))
}
