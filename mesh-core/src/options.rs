//! The agent flags that change what the topology computes.

use ipnet::IpNet;

use crate::Granularity;

/// Kilo's policy-routing table for encapsulated and return traffic.
pub const KILO_TABLE: u32 = 1107;
/// The main routing table.
pub const MAIN_TABLE: u32 = 254;
/// The priority of every ip rule we install: just before the main table (32766), where the kernel
/// would have put Kilo's priority-less rules, and after the rules Cilium installs.
pub const RULE_PRIORITY: u32 = 32765;

/// When traffic inside a location is encapsulated (`--encapsulate`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Encapsulation {
    /// Never encapsulate.
    Never,
    /// Encapsulate only towards gateways outside the local private subnet.
    CrossSubnet,
    /// Always encapsulate (Kilo's default).
    #[default]
    Always,
}

impl Encapsulation {
    /// Parses `never`, `crosssubnet` or `always`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "never" => Some(Encapsulation::Never),
            "crosssubnet" => Some(Encapsulation::CrossSubnet),
            "always" => Some(Encapsulation::Always),
            _ => None,
        }
    }
}

/// Which CNI the mesh runs beside (`--compatibility`), which decides the tunnel and its gateways.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compatibility {
    /// Kilo's own IPIP tunnel `tunl0`; the gateway of a node is its private IP.
    #[default]
    None,
    /// Flannel: `flannel.1`; the gateway of a node is its pod subnet's network address.
    Flannel,
    /// Cilium: IPIP over `cilium_tunl`; the gateway of a node is its `cilium_host` address, so the
    /// outer packets travel through Cilium's overlay.
    Cilium,
}

impl Compatibility {
    /// Parses `""`, `flannel` or `cilium`. Unlike Kilo, anything else is an error, not IPIP.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "" => Some(Compatibility::None),
            "flannel" => Some(Compatibility::Flannel),
            "cilium" => Some(Compatibility::Cilium),
            _ => None,
        }
    }

    /// The name of the tunnel device routes are moved to when encapsulated.
    pub const fn tunnel_device(self) -> &'static str {
        match self {
            Compatibility::None => "tunl0",
            Compatibility::Flannel => "flannel.1",
            Compatibility::Cilium => "cilium_tunl",
        }
    }

    /// Whether this mode tunnels with IPIP (and so installs the KILO-IPIP firewall rules).
    pub const fn uses_ipip(self) -> bool {
        !matches!(self, Compatibility::Flannel)
    }
}

/// The agent flags the topology depends on, with Kilo's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The node this agent runs on (`--hostname`).
    pub hostname: String,
    /// `--mesh-granularity`.
    pub granularity: Granularity,
    /// `--subnet`: where WireGuard IPs of segment leaders come from.
    pub subnet: IpNet,
    /// `--port`: the WireGuard port when the node's endpoint does not say otherwise.
    pub port: u16,
    /// `--local`: whether the mesh routes traffic inside a location.
    pub local: bool,
    /// `--encapsulate`.
    pub encapsulation: Encapsulation,
    /// `--compatibility`.
    pub compatibility: Compatibility,
    /// `--cni`: whether the mesh NATs its pod subnet (and may add FORWARD rules).
    pub cni: bool,
    /// `--iptables-forward-rules`.
    pub iptables_forward_rules: bool,
    /// `--service-cidr`: destinations never masqueraded.
    pub service_cidrs: Vec<IpNet>,
    /// `--interface`: the WireGuard interface name (also named by `iif` rules).
    pub interface: String,
    /// `--mtu` when numeric; `None` leaves the MTU to the agent's detection.
    pub mtu: Option<u32>,
    /// `--allowed-hijack-cidr`: ranges an allowed-location IP or a `Peer` may route even when
    /// they take over a guarded network (a default route, the node's own networks, another
    /// node's addresses, the WireGuard subnet, a service CIDR). Empty: every such range is
    /// refused with a warning (see [`Topology::compute`](crate::Topology::compute)).
    pub allowed_hijack_cidrs: Vec<IpNet>,
    /// `--fast-failover`: elect leaders with failover claims when every ready node can (see
    /// [`crate::failover`]). Off, the agent neither announces the capability nor probes, so
    /// every agent of the cluster falls back to Kilo's election.
    pub fast_failover: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hostname: String::new(),
            granularity: Granularity::Location,
            subnet: "10.4.0.0/16".parse().expect("valid default subnet"),
            port: 51820,
            local: true,
            encapsulation: Encapsulation::Always,
            compatibility: Compatibility::None,
            cni: true,
            iptables_forward_rules: false,
            service_cidrs: Vec::new(),
            interface: "kilo0".to_owned(),
            mtu: None,
            allowed_hijack_cidrs: Vec::new(),
            fast_failover: true,
        }
    }
}

impl Options {
    /// Default options for the agent on `hostname`.
    pub fn for_host(hostname: impl Into<String>) -> Self {
        Options { hostname: hostname.into(), ..Options::default() }
    }
}
