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
    /// The WireGuard port.
    #[arg(long, env = "KILO_PORT", default_value_t = 51820, value_parser = clap::value_parser!(u16).range(1..))]
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
        }
    }
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
