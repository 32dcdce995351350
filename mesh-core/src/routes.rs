//! Routes and policy rules: Kilo's `Topology.Routes`, with devices as symbols (§5 of the reference:
//! non-leaders §5.2, leaders §5.3, encapsulation §5.5).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::ip::one_address_cidr;
use crate::options::{KILO_TABLE, MAIN_TABLE, RULE_PRIORITY};
use crate::topology::{Member, Segment};
use crate::{Compatibility, Encapsulation, Options, Topology};

/// A network device named by its role; the data plane resolves it to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dev {
    /// The WireGuard interface (`--interface`, `kilo0`).
    Kilo,
    /// The interface that holds the node's private IP.
    Private,
    /// The encapsulation device: `tunl0`, `cilium_tunl` or `flannel.1`.
    Tunnel,
}

/// Interface names for the device symbols, to print routes as `ip route` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceNames {
    /// The WireGuard interface, e.g. `kilo0`.
    pub kilo: String,
    /// The interface that holds the private IP, e.g. `eth0`.
    pub private: String,
    /// The tunnel device, e.g. `tunl0` or `cilium_tunl`.
    pub tunnel: String,
}

impl DeviceNames {
    /// The names the agent with `options` uses, given the private interface's name.
    pub fn new(options: &Options, private: impl Into<String>) -> Self {
        DeviceNames {
            kilo: options.interface.clone(),
            private: private.into(),
            tunnel: options.compatibility.tunnel_device().to_owned(),
        }
    }

    /// The interface name of a device symbol.
    pub fn name(&self, dev: Dev) -> &str {
        match dev {
            Dev::Kilo => &self.kilo,
            Dev::Private => &self.private,
            Dev::Tunnel => &self.tunnel,
        }
    }
}

/// A route, as Kilo installs it (protocol `static`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Route {
    /// Destination network.
    pub dst: IpNet,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output device.
    pub dev: Dev,
    /// Preferred source address, if any.
    pub src: Option<IpAddr>,
    /// Routing table: 254 (main) or 1107.
    pub table: u32,
    /// Whether the gateway is used without a covering route (`onlink`).
    pub onlink: bool,
}

/// A policy rule that sends matching traffic to table 1107.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Rule {
    /// Source selector.
    pub src: Option<IpNet>,
    /// Destination selector.
    pub dst: Option<IpNet>,
    /// Input-interface selector.
    pub iif: Option<Dev>,
    /// Table to look up.
    pub table: u32,
    /// Explicit priority (Kilo lets the kernel choose one).
    pub priority: u32,
}

impl Route {
    /// The route in `ip route` syntax, e.g. `10.2.1.0/24 via 10.4.0.1 dev kilo0 src 192.168.0.1 onlink`.
    pub fn to_ip_route(&self, names: &DeviceNames) -> String {
        let mut text = self.dst.to_string();
        if let Some(gateway) = self.gateway {
            text += &format!(" via {gateway}");
        }
        text += &format!(" dev {}", names.name(self.dev));
        if let Some(src) = self.src {
            text += &format!(" src {src}");
        }
        if self.onlink {
            text += " onlink";
        }
        if self.table != MAIN_TABLE {
            text += &format!(" table {}", self.table);
        }
        text
    }
}

impl Rule {
    /// The rule in `ip rule` syntax, e.g. `32765: from 10.2.2.0/24 to 192.168.0.2/32 lookup 1107`.
    pub fn to_ip_rule(&self, names: &DeviceNames) -> String {
        let mut text = format!("{}:", self.priority);
        match self.src {
            Some(src) => text += &format!(" from {src}"),
            None => text += " from all",
        }
        if let Some(dst) = self.dst {
            text += &format!(" to {dst}");
        }
        if let Some(iif) = self.iif {
            text += &format!(" iif {}", names.name(iif));
        }
        text + &format!(" lookup {}", self.table)
    }

    fn to_kilo_table(src: Option<IpNet>, dst: IpNet, iif: Option<Dev>) -> Rule {
        Rule { src, dst: Some(dst), iif, table: KILO_TABLE, priority: RULE_PRIORITY }
    }
}

/// The encapsulation settings routes are computed with.
struct Encapsulator {
    compatibility: Compatibility,
    strategy: Encapsulation,
    /// Kilo falls back to a no-op encapsulator (no gateways) when the node has no private IP.
    active: bool,
    /// The local private IP with its mask.
    local: Option<IpNet>,
}

impl Encapsulator {
    /// Kilo's `Encapsulator.Gw`: where IPIP (or the overlay) sends traffic for a node.
    fn gateway(&self, member: &Member) -> Option<IpAddr> {
        if !self.active {
            return None;
        }
        match self.compatibility {
            Compatibility::None => member.private_ip,
            Compatibility::Flannel => Some(member.pod_subnet.network()),
            Compatibility::Cilium => {
                Some(member.cni_compatibility_ip.map_or_else(|| member.pod_subnet.network(), |ip| ip.addr()))
            }
        }
    }

    /// Whether traffic towards `target` must be encapsulated.
    fn encapsulates(&self, target: Option<IpAddr>) -> bool {
        match self.strategy {
            Encapsulation::Always => true,
            Encapsulation::CrossSubnet => self.local.is_some_and(|local| !target.is_some_and(|ip| local.contains(&ip))),
            Encapsulation::Never => false,
        }
    }

    /// Kilo's `encapsulateRoute`: move the route to the tunnel, sourced from the private IP.
    fn encapsulate(&self, mut route: Route) -> Route {
        if self.encapsulates(route.gateway) {
            route.dev = Dev::Tunnel;
            if route.src.is_none() {
                route.src = self.local.map(|ip| ip.addr());
            }
        }
        route
    }
}

fn via(dst: IpNet, gateway: Option<IpAddr>, dev: Dev, src: Option<IpAddr>) -> Route {
    Route { dst, gateway, dev, src, table: MAIN_TABLE, onlink: true }
}

impl Topology {
    /// The routes and rules this node installs, in Kilo's order, with Kilo's values (host bits of
    /// peer allowed IPs kept). [`DesiredState`](crate::DesiredState) normalises them.
    pub fn routes(&self, options: &Options) -> (Vec<Route>, Vec<Rule>) {
        let encapsulator = Encapsulator {
            compatibility: options.compatibility,
            strategy: options.encapsulation,
            active: self.private_ip.is_some(),
            local: self.private_ip,
        };
        // At most two routes per node (pod subnet and private IP), one per other allowed IP,
        // and a non-leader's one per segment: sized once, the vector is not copied as it grows.
        let capacity =
            self.segments.iter().map(|s| 2 * s.members.len() + s.allowed_location_ips.len() + 1).sum::<usize>()
                + self.peers.iter().map(|p| p.allowed_ips.len()).sum::<usize>();
        let mut routes = Vec::with_capacity(capacity);
        let mut rules = Vec::new();
        if self.leader {
            self.leader_routes(options, &encapsulator, &mut routes, &mut rules);
        } else {
            self.non_leader_routes(options, &encapsulator, &mut routes, &mut rules);
        }
        (routes, rules)
    }

    /// Routes to the other nodes of the local location over the private network (`--local`).
    /// Returns the table-1107 host routes' destinations that need rules.
    fn local_location_routes(&self, segment: &Segment, enc: &Encapsulator, routes: &mut Vec<Route>) -> Vec<IpNet> {
        let mut encapsulated = Vec::new();
        let local_addr = self.local_private_addr();
        for member in &segment.members {
            if member.private_ip == local_addr {
                continue;
            }
            // Without a gateway (a same-location node without private IP under IPIP, which Kilo
            // cannot handle either) there is no way to reach the node but WireGuard.
            let Some(gateway) = enc.gateway(member) else { continue };
            let gateway = Some(gateway);
            routes.push(enc.encapsulate(via(member.pod_subnet, gateway, Dev::Private, None)));
            let Some(private_ip) = member.private_ip else { continue };
            if enc.strategy == Encapsulation::Always
                || (enc.strategy == Encapsulation::CrossSubnet
                    && !self.private_ip.is_some_and(|local| local.contains(&private_ip)))
            {
                let dst = one_address_cidr(private_ip);
                routes.push(Route { table: KILO_TABLE, ..via(dst, gateway, Dev::Tunnel, local_addr) });
                encapsulated.push(dst);
            }
        }
        encapsulated
    }

    fn non_leader_routes(&self, options: &Options, enc: &Encapsulator, routes: &mut Vec<Route>, rules: &mut Vec<Rule>) {
        let local = self.local();
        let gateway = enc.gateway(&local.members[local.leader]);
        for segment in &self.segments {
            routes.push(enc.encapsulate(via(one_address_cidr(segment.wireguard_ip), gateway, Dev::Private, None)));
            if self.is_local_location(segment) {
                if options.local {
                    for dst in self.local_location_routes(segment, enc, routes) {
                        rules.push(Rule::to_kilo_table(Some(self.pod_subnet), dst, None));
                    }
                }
                continue;
            }
            let destinations = segment
                .members
                .iter()
                .map(|m| m.pod_subnet)
                .chain(segment.members.iter().filter_map(|m| m.private_ip).map(one_address_cidr))
                .chain(segment.allowed_location_ips.iter().copied());
            for dst in destinations {
                routes.push(enc.encapsulate(via(dst, gateway, Dev::Private, None)));
            }
        }
        for peer in &self.peers {
            for dst in &peer.allowed_ips {
                routes.push(enc.encapsulate(via(*dst, gateway, Dev::Private, None)));
            }
        }
    }

    fn leader_routes(&self, options: &Options, enc: &Encapsulator, routes: &mut Vec<Route>, rules: &mut Vec<Rule>) {
        // Prefer the private IP as source over WireGuard, so replies do not come from the overlay IP.
        let src = self.local_private_addr();
        for segment in &self.segments {
            if self.is_local_location(segment) {
                if options.local && self.private_ip.is_some() {
                    for dst in self.local_location_routes(segment, enc, routes) {
                        rules.push(Rule::to_kilo_table(Some(self.pod_subnet), dst, None));
                        // Traffic WireGuard decapsulated for local nodes is encapsulated too.
                        rules.push(Rule::to_kilo_table(None, dst, Some(Dev::Kilo)));
                    }
                }
                // Without --local, non-leaders reach the leader through an overlay (Cilium,
                // Flannel); return traffic must take the same path.
                if !options.local && self.private_ip.is_some() && options.encapsulation != Encapsulation::Never {
                    self.overlay_return_routes(segment, enc, routes, rules);
                }
                continue;
            }
            let endpoint_ip = self
                .effective_endpoint(segment.endpoint.as_ref(), &segment.key, segment.persistent_keepalive)
                .and_then(|e| e.ip());
            for member in &segment.members {
                routes.push(via(member.pod_subnet, Some(segment.wireguard_ip), Dev::Kilo, src));
                // A node reachable only at its endpoint cannot be reached through that endpoint.
                if let Some(private_ip) = member.private_ip.filter(|ip| Some(*ip) != endpoint_ip) {
                    routes.push(via(one_address_cidr(private_ip), Some(segment.wireguard_ip), Dev::Kilo, src));
                }
            }
            for dst in &segment.allowed_location_ips {
                routes.push(via(*dst, Some(segment.wireguard_ip), Dev::Kilo, src));
            }
        }
        for peer in &self.peers {
            for dst in &peer.allowed_ips {
                routes.push(Route { onlink: false, ..via(*dst, None, Dev::Kilo, src) });
            }
        }
    }

    fn overlay_return_routes(
        &self,
        segment: &Segment,
        enc: &Encapsulator,
        routes: &mut Vec<Route>,
        rules: &mut Vec<Rule>,
    ) {
        let local_addr = self.local_private_addr();
        for member in &segment.members {
            let Some(private_ip) = member.private_ip.filter(|ip| Some(*ip) != local_addr) else {
                continue;
            };
            let Some(gateway) = enc.gateway(member).filter(|gw| *gw != private_ip) else {
                continue;
            };
            let dst = one_address_cidr(private_ip);
            routes.push(Route { table: KILO_TABLE, ..via(dst, Some(gateway), Dev::Tunnel, None) });
            rules.push(Rule::to_kilo_table(None, dst, Some(Dev::Kilo)));
        }
    }
}
