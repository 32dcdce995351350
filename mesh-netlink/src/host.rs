//! The local host's network: which private and public IP the node uses (Kilo's `getIP`), which
//! interface holds the private IP, and the WireGuard MTU for `--mtu auto`.
//!
//! Split in two so the rules can be tested without a kernel:
//!
//! * [`HostNetwork::read`] (Linux, rtnetlink) reads the links with their addresses and MTUs, the
//!   interface of the default route and the addresses the hostname resolves to, optionally inside
//!   another network namespace (with the data plane's [`Namespace`] and rtnetlink helpers);
//! * everything else is pure: [`HostNetwork::candidates`] builds Kilo's three candidate groups,
//!   [`select_ips`] picks the private and public IP from them, [`HostNetwork::discover`] does
//!   both and finds the private interface, [`auto_mtu`] derives the WireGuard MTU.
//!
//! Call [`HostNetwork::read`] then [`HostNetwork::discover`] once at start (Kilo does IP
//! discovery only then), and [`HostNetwork::read`] again at each reconcile when `--mtu auto`
//! (Kilo re-detects the MTU at every reconcile).
//!
//! Differences from Kilo, all in cases where Kilo refuses to start: a host without a default
//! route simply has no default-route group (Kilo fails with `failed to find default route`); a
//! default route without an output interface (blackhole, unreachable) is passed over for the
//! next one, and a multipath default route counts with its first next hop.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs as _};

use futures::TryStreamExt as _;
use ipnet::IpNet;
use mesh_core::Compatibility;
use mesh_core::ip::{is_public, one_address_cidr, sort_ips};
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::error::{Error, Result, netlink_io};
use crate::link::address_of;
use crate::netns::Namespace;

/// The CNI bridge Kilo's own CNI configuration creates; its addresses are never the node's IP.
pub const KUBE_BRIDGE: &str = "kube-bridge";

/// Cilium's host interface; its first IPv4 address is the CNI-compatibility IP in Cilium mode.
pub const CILIUM_HOST: &str = "cilium_host";

/// The WireGuard MTU when the underlay MTU is unknown (Kilo's `DefaultMTU`).
pub const DEFAULT_MTU: u32 = 1420;

/// WireGuard's overhead over IPv4: 20 (IPv4) + 8 (UDP) + 32 (WireGuard header) + 16
/// (authentication tag) + 4 (padding) bytes (Kilo's `WireGuardOverhead`).
pub const WIREGUARD_OVERHEAD: u32 = 80;

/// The overhead on the path a non-leader's traffic takes to its leader in Cilium mode: IPIP (20)
/// inside Cilium's VXLAN (50).
pub const CILIUM_PATH_OVERHEAD: u32 = 70;

/// The main routing table, where the default route is looked for.
const MAIN_TABLE: u32 = 254;

/// The WireGuard MTU for `--mtu auto`.
///
/// `underlay − 80` (WireGuard over IPv4: 20 IPv4 + 8 UDP + 32 WireGuard header + 16
/// authentication tag + 4 padding), where `underlay` is the MTU of the default route's
/// interface; with `--compatibility=cilium` also at most `underlay − 70` (IPIP 20 inside
/// Cilium's VXLAN 50, the path non-leaders' traffic takes to the leader), a bound the first one
/// already implies. 1420 (Kilo's default) when the underlay MTU is unknown.
///
/// ```
/// use mesh_netlink::host::auto_mtu;
/// assert_eq!(auto_mtu(Some(1500), false), 1420);
/// assert_eq!(auto_mtu(Some(9001), true), 8921);
/// assert_eq!(auto_mtu(None, false), 1420);
/// ```
pub fn auto_mtu(underlay: Option<u32>, cilium: bool) -> u32 {
    let Some(underlay) = underlay else { return DEFAULT_MTU };
    let mtu = underlay.saturating_sub(WIREGUARD_OVERHEAD);
    if cilium { mtu.min(underlay.saturating_sub(CILIUM_PATH_OVERHEAD)) } else { mtu }
}

/// The interfaces whose addresses are never the node's IP: the WireGuard interface
/// (`--interface`), the encapsulation tunnel of `compatibility` (`tunl0`, `flannel.1`,
/// `cilium_tunl`) and [`KUBE_BRIDGE`].
pub fn ignored_interfaces(wireguard_interface: &str, compatibility: Compatibility) -> Vec<String> {
    vec![wireguard_interface.to_owned(), compatibility.tunnel_device().to_owned(), KUBE_BRIDGE.to_owned()]
}

/// A network interface of the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU, when the kernel reports one.
    pub mtu: Option<u32>,
    /// Its addresses with their prefix lengths, host bits kept (as `ip addr` shows them).
    pub addresses: Vec<IpNet>,
}

/// What IP discovery reads from the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostNetwork {
    /// Every interface, in any order.
    pub interfaces: Vec<Interface>,
    /// The index of the interface of the default route: the first main-table unicast route to
    /// `0.0.0.0/0` (then `::/0`) that has an output interface.
    pub default_route_interface: Option<u32>,
    /// What the hostname resolves to (the hostname itself when it is an IP address).
    pub hostname_ips: Vec<IpAddr>,
}

/// Kilo's candidate groups, before selection. Each group is in Kilo's order: IPv4 first, then
/// by CIDR text (see [`mesh_core::ip::sort_ips`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Candidates {
    /// Addresses the hostname resolves to that are on a local interface, with that interface's
    /// prefix length.
    pub hostname: Vec<IpNet>,
    /// Addresses on the default route's interface.
    pub default_route: Vec<IpNet>,
    /// Addresses on all interfaces.
    pub all: Vec<IpNet>,
    /// Never selected: every address of an ignored interface, both as `ip/prefix` and as
    /// `ip/32` (`ip/128`).
    pub ignored: BTreeSet<IpNet>,
}

/// The node's IPs as Kilo selects them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectedIps {
    /// The private IP with its prefix length; `None` when the host has none.
    pub private: Option<IpNet>,
    /// The public IP with its prefix length; the private IP when the host has no public one.
    pub public: IpNet,
}

impl SelectedIps {
    /// The IP of the node's automatic endpoint: the private IP with
    /// `--prioritise-private-addresses` (when there is one), otherwise the public IP.
    pub fn external(&self, prioritise_private_addresses: bool) -> IpNet {
        match self.private {
            Some(private) if prioritise_private_addresses => private,
            _ => self.public,
        }
    }
}

/// The result of IP discovery on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalHost {
    /// The selected IPs.
    pub ips: SelectedIps,
    /// The interface holding the private IP (the data plane's `Dev::Private`); `None` without a
    /// private IP.
    pub private_interface: Option<Interface>,
    /// The interface of the default route.
    pub default_interface: Option<Interface>,
}

impl HostNetwork {
    /// The interface with index `index`.
    pub fn interface(&self, index: u32) -> Option<&Interface> {
        self.interfaces.iter().find(|interface| interface.index == index)
    }

    /// The interface called `name`.
    pub fn interface_named(&self, name: &str) -> Option<&Interface> {
        self.interfaces.iter().find(|interface| interface.name == name)
    }

    /// The interface of the default route.
    pub fn default_interface(&self) -> Option<&Interface> {
        self.interface(self.default_route_interface?)
    }

    /// The default interface's MTU, the `underlay` of [`auto_mtu`].
    pub fn underlay_mtu(&self) -> Option<u32> {
        self.default_interface()?.mtu
    }

    /// The CNI-compatibility IP in Cilium mode (`kilo.squat.ai/cni-compatibility-ip`), as Kilo's
    /// Cilium encapsulator finds it: the first IPv4 address of [`CILIUM_HOST`], with its prefix
    /// length, in the kernel's order; `None` while Cilium has not created the interface.
    pub fn cilium_host_ip(&self) -> Option<IpNet> {
        self.interface_named(CILIUM_HOST)?.addresses.iter().find(|address| address.addr().is_ipv4()).copied()
    }

    /// The interface that holds `ip` (compared without prefix length), as Kilo's
    /// `interfacesForIP(...)[0]`: the one with the lowest index, passing over the interfaces in
    /// `ignored_interfaces` unless only they hold it.
    pub fn interface_with(&self, ip: IpAddr, ignored_interfaces: &[String]) -> Option<&Interface> {
        let mut holders: Vec<&Interface> = self
            .interfaces
            .iter()
            .filter(|interface| interface.addresses.iter().any(|address| address.addr() == ip))
            .collect();
        holders.sort_by_key(|interface| interface.index);
        holders.iter().find(|interface| !ignored_interfaces.contains(&interface.name)).or(holders.first()).copied()
    }

    /// Kilo's candidate groups (§4.2): hostname IPs found on a local interface (links scanned by
    /// name, addresses by text; the first match gives the prefix length), the default route's
    /// interface's addresses, and all addresses; loopback and link-local addresses are left out.
    pub fn candidates(&self, ignored_interfaces: &[String]) -> Candidates {
        let mut by_name: Vec<&Interface> = self.interfaces.iter().collect();
        by_name.sort_by(|a, b| a.name.cmp(&b.name));
        let mask_of = |ip: IpAddr| {
            by_name.iter().find_map(|interface| {
                let mut addresses = interface.addresses.clone();
                addresses.sort_by_cached_key(ToString::to_string);
                addresses.into_iter().find(|address| address.addr() == ip)
            })
        };
        let mut hostname: Vec<IpNet> =
            self.hostname_ips.iter().filter_map(|ip| mask_of(*ip)).filter(|net| !is_local(net.addr())).collect();

        let mut default_route: Vec<IpNet> = self
            .default_interface()
            .map(|interface| interface.addresses.iter().copied().filter(|net| !is_local(net.addr())).collect())
            .unwrap_or_default();

        let mut all: Vec<IpNet> = self
            .interfaces
            .iter()
            .flat_map(|interface| interface.addresses.iter().copied())
            .filter(|net| !is_local(net.addr()))
            .collect();

        let ignored = self
            .interfaces
            .iter()
            .filter(|interface| ignored_interfaces.contains(&interface.name))
            .flat_map(|interface| interface.addresses.iter().flat_map(|net| [*net, one_address_cidr(net.addr())]))
            .collect();

        sort_ips(&mut hostname);
        sort_ips(&mut default_route);
        sort_ips(&mut all);
        Candidates { hostname, default_route, all, ignored }
    }

    /// IP discovery: the node's private and public IP ([`select_ips`] over
    /// [`HostNetwork::candidates`]), the interface of the private IP and the default interface.
    pub fn discover(&self, ignored_interfaces: &[String], internal_cidrs: &[IpNet]) -> Result<LocalHost> {
        let ips = select_ips(&self.candidates(ignored_interfaces), internal_cidrs)?;
        let private_interface =
            ips.private.and_then(|private| self.interface_with(private.addr(), ignored_interfaces)).cloned();
        Ok(LocalHost { ips, private_interface, default_interface: self.default_interface().cloned() })
    }

    /// Reads the host's network in `namespace`: links, addresses, the default route (rtnetlink)
    /// and what `hostname` resolves to (the system resolver, as `getent ahosts` does; a literal
    /// IP is used as is; a name that does not resolve gives no addresses).
    ///
    /// Blocks: the work runs on a dedicated thread that enters the namespace (so rtnetlink and
    /// any DNS query happen inside it) with its own single-threaded runtime. From async code use
    /// [`HostNetwork::read_async`].
    pub fn read(namespace: &Namespace, hostname: &str) -> Result<HostNetwork> {
        Self::read_blocking(namespace, Some(hostname))
    }

    /// [`HostNetwork::read`] without blocking the async runtime.
    pub async fn read_async(namespace: &Namespace, hostname: &str) -> Result<HostNetwork> {
        Self::read_off_runtime(namespace, Some(hostname)).await
    }

    /// Links, addresses and the default route only, with no hostname lookup
    /// ([`HostNetwork::hostname_ips`] is empty). For the agent's passes, which look again at
    /// `cilium_host` and the underlay's MTU: a DNS query there would stall every pass for as
    /// long as the resolver takes to fail (seconds, behind a firewall that drops it).
    pub async fn read_links_async(namespace: &Namespace) -> Result<HostNetwork> {
        Self::read_off_runtime(namespace, None).await
    }

    fn read_blocking(namespace: &Namespace, hostname: Option<&str>) -> Result<HostNetwork> {
        // A thread of its own even for the current namespace: the read runs its own runtime,
        // which cannot start on a thread that already drives one.
        std::thread::scope(|scope| {
            let worker = scope.spawn(|| namespace.run(|| read_here(namespace, hostname)));
            match worker.join() {
                Ok(result) => result?,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    async fn read_off_runtime(namespace: &Namespace, hostname: Option<&str>) -> Result<HostNetwork> {
        let label = namespace.clone();
        let hostname = hostname.map(str::to_owned);
        namespace.run_blocking(move || read_here(&label, hostname.as_deref())).await?
    }
}

/// IP discovery as the agent runs it at start, for the agent and for `doctor` alike: reads the
/// host's network in `namespace` (resolving `hostname`, the node's name) and discovers the node's
/// IPs and the interface of its private IP, passing over the WireGuard interface, the tunnel of
/// `compatibility` and [`KUBE_BRIDGE`] ([`ignored_interfaces`]); with `internal_cidrs`, only a
/// private IP inside them counts. Returns what was read (for the MTU and `cilium_host`) and what
/// was discovered.
///
/// ```no_run
/// # async fn example() -> mesh_netlink::Result<()> {
/// use mesh_core::Compatibility;
/// use mesh_netlink::Namespace;
/// use mesh_netlink::host::discover_local_host;
///
/// let (_, local) = discover_local_host(&Namespace::Current, "node-1", "kilo0", Compatibility::None, &[]).await?;
/// let private = local.private_interface.map(|interface| interface.name);
/// # Ok(()) }
/// ```
pub async fn discover_local_host(
    namespace: &Namespace,
    hostname: &str,
    wireguard_interface: &str,
    compatibility: Compatibility,
    internal_cidrs: &[IpNet],
) -> Result<(HostNetwork, LocalHost)> {
    let network = HostNetwork::read_async(namespace, hostname).await?;
    let local = network.discover(&ignored_interfaces(wireguard_interface, compatibility), internal_cidrs)?;
    Ok((network, local))
}

/// Kilo's `getIP` selection (§4.2): each group split into private and public
/// ([`mesh_core::ip::is_public`]), concatenated in group order (hostname, default route, all);
/// ignored addresses dropped; with `internal_cidrs`, private candidates outside all of them
/// dropped (public ones are not filtered). The private IP is the first private candidate, the
/// public IP the first public candidate or else the first private one.
pub fn select_ips(candidates: &Candidates, internal_cidrs: &[IpNet]) -> Result<SelectedIps> {
    let groups = [&candidates.hostname, &candidates.default_route, &candidates.all];
    let usable = |net: &&IpNet| !candidates.ignored.contains(*net);
    let mut private = groups
        .iter()
        .flat_map(|group| group.iter().filter(|net| !is_public(net.addr())))
        .filter(usable)
        .filter(|net| internal_cidrs.is_empty() || internal_cidrs.iter().any(|cidr| cidr.contains(&net.addr())));
    let mut public = groups.iter().flat_map(|group| group.iter().filter(|net| is_public(net.addr()))).filter(usable);
    let private = private.next().copied();
    match (private, public.next().copied()) {
        (_, Some(public)) => Ok(SelectedIps { private, public }),
        (Some(private), None) => Ok(SelectedIps { private: Some(private), public: private }),
        (None, None) => Err(Error::NoValidIp),
    }
}

/// Go's `IsLoopback || IsLinkLocalMulticast || IsLinkLocalUnicast`.
fn is_local(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || matches!(v4.octets(), [224, 0, 0, _]),
        IpAddr::V6(v6) => {
            let [a, b, ..] = v6.octets();
            v6.is_loopback() || (a == 0xfe && b & 0xc0 == 0x80) || (a == 0xff && b & 0x0f == 0x02)
        }
    }
}

/// Reads the host's network from the calling thread, which is already in `namespace`.
fn read_here(namespace: &Namespace, hostname: Option<&str>) -> Result<HostNetwork> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().map_err(|source| {
        Error::Namespace { operation: format!("start the host network reader for {namespace}"), source }
    })?;
    let (interfaces, default_route_interface) = runtime.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|source| Error::netlink(format!("open an rtnetlink socket in {namespace}"), source))?;
        let connection = tokio::spawn(connection);
        let result = read_links(&handle, namespace).await;
        connection.abort();
        result
    })?;
    Ok(HostNetwork {
        interfaces,
        default_route_interface,
        hostname_ips: hostname.map(resolve_hostname).unwrap_or_default(),
    })
}

async fn read_links(handle: &Handle, namespace: &Namespace) -> Result<(Vec<Interface>, Option<u32>)> {
    let error = |operation| {
        move |error: rtnetlink::Error| Error::netlink(format!("{operation} in {namespace}"), netlink_io(error))
    };
    let links: Vec<LinkMessage> = handle.link().get().execute().try_collect().await.map_err(error("list links"))?;
    let addresses: Vec<AddressMessage> =
        handle.address().get().execute().try_collect().await.map_err(error("list addresses"))?;
    let mut interfaces: Vec<Interface> = links.iter().map(interface).collect();
    for message in &addresses {
        if let (Some(interface), Some(net)) =
            (interfaces.iter_mut().find(|interface| interface.index == message.header.index), address_of(message))
        {
            interface.addresses.push(net);
        }
    }
    let mut default_route_interface = None;
    let dumps = [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()];
    for request in dumps {
        let routes: Vec<RouteMessage> =
            handle.route().get(request).execute().try_collect().await.map_err(error("list routes"))?;
        if let Some(index) = routes.iter().find_map(default_route_oif) {
            default_route_interface = Some(index);
            break;
        }
    }
    Ok((interfaces, default_route_interface))
}

fn interface(message: &LinkMessage) -> Interface {
    let mut interface =
        Interface { index: message.header.index, name: String::new(), mtu: None, addresses: Vec::new() };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => interface.name.clone_from(name),
            LinkAttribute::Mtu(mtu) => interface.mtu = Some(*mtu),
            _ => {}
        }
    }
    interface
}

/// The output interface of a main-table default route, if `message` is one.
fn default_route_oif(message: &RouteMessage) -> Option<u32> {
    let table = message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table));
    if table != MAIN_TABLE || message.header.destination_prefix_length != 0 || message.header.kind != RouteType::Unicast
    {
        return None;
    }
    message.attributes.iter().find_map(|attribute| match attribute {
        RouteAttribute::Oif(index) => Some(*index),
        RouteAttribute::MultiPath(hops) => hops.first().map(|hop| hop.interface_index),
        _ => None,
    })
}

/// Go's `ipsForHostname`: a literal IP as is, else the resolver's addresses (none on failure).
fn resolve_hostname(hostname: &str) -> Vec<IpAddr> {
    if let Ok(ip) = hostname.parse::<IpAddr>() {
        return vec![ip];
    }
    match (hostname, 0).to_socket_addrs() {
        Ok(addresses) => {
            let mut ips: Vec<IpAddr> = Vec::new();
            for address in addresses {
                if !ips.contains(&address.ip()) {
                    ips.push(address.ip());
                }
            }
            ips
        }
        Err(error) => {
            tracing::debug!(hostname, %error, "the hostname does not resolve; IP discovery goes on without it");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn nets(texts: &[&str]) -> Vec<IpNet> {
        texts.iter().map(|text| net(text)).collect()
    }

    fn iface(index: u32, name: &str, mtu: u32, addresses: &[&str]) -> Interface {
        Interface { index, name: name.to_owned(), mtu: Some(mtu), addresses: nets(addresses) }
    }

    fn ignored() -> Vec<String> {
        ignored_interfaces("kilo0", Compatibility::None)
    }

    fn select(hostname: &[&str], default_route: &[&str], all: &[&str]) -> Result<SelectedIps> {
        select_ips(
            &Candidates {
                hostname: nets(hostname),
                default_route: nets(default_route),
                all: nets(all),
                ignored: BTreeSet::new(),
            },
            &[],
        )
    }

    fn selected(private: Option<&str>, public: &str) -> SelectedIps {
        SelectedIps { private: private.map(net), public: net(public) }
    }

    #[test]
    fn auto_mtu_formula() {
        assert_eq!(auto_mtu(Some(1500), false), 1420);
        assert_eq!(auto_mtu(Some(1500), true), 1420);
        assert_eq!(auto_mtu(Some(1450), false), 1370); // e.g. a cloud VM behind VXLAN
        assert_eq!(auto_mtu(Some(9000), true), 8920);
        assert_eq!(auto_mtu(Some(65536), false), 65456); // loopback as default route
        assert_eq!(auto_mtu(None, false), DEFAULT_MTU);
        assert_eq!(auto_mtu(None, true), 1420);
        assert_eq!(auto_mtu(Some(60), false), 0, "no underflow");
        // The Cilium bound holds for every underlay.
        for underlay in [576, 1280, 1400, 1500, 9000] {
            assert!(auto_mtu(Some(underlay), true) + CILIUM_PATH_OVERHEAD <= underlay);
            assert!(auto_mtu(Some(underlay), false) + WIREGUARD_OVERHEAD <= underlay);
        }
    }

    #[test]
    fn cilium_host_ip_is_its_first_ipv4_address() {
        let host = |addresses: &[&str]| HostNetwork {
            interfaces: vec![iface(1, "eth0", 1500, &["10.0.0.2/24"]), iface(9, "cilium_host", 1500, addresses)],
            ..HostNetwork::default()
        };
        assert_eq!(host(&["fd00::1/128", "10.0.1.7/32", "10.0.1.1/32"]).cilium_host_ip(), Some(net("10.0.1.7/32")));
        assert_eq!(host(&["fd00::1/128"]).cilium_host_ip(), None);
        assert_eq!(cloud_host().cilium_host_ip(), None);
    }

    #[test]
    fn ignored_interface_names() {
        assert_eq!(ignored_interfaces("kilo0", Compatibility::None), ["kilo0", "tunl0", "kube-bridge"]);
        assert_eq!(ignored_interfaces("wg9", Compatibility::Cilium), ["wg9", "cilium_tunl", "kube-bridge"]);
        assert_eq!(ignored_interfaces("kilo0", Compatibility::Flannel), ["kilo0", "flannel.1", "kube-bridge"]);
    }

    #[test]
    fn selection_prefers_hostname_then_default_route_then_all() {
        let hostname = ["192.168.0.5/24", "203.0.113.5/24"];
        let default_route = ["10.0.0.5/8", "198.51.100.5/24"];
        let all =
            ["10.0.0.5/8", "172.16.0.1/16", "192.0.2.1/24", "198.51.100.5/24", "192.168.0.5/24", "203.0.113.5/24"];
        assert_eq!(
            select(&hostname, &default_route, &all).unwrap(),
            selected(Some("192.168.0.5/24"), "203.0.113.5/24")
        );
        assert_eq!(select(&[], &default_route, &all).unwrap(), selected(Some("10.0.0.5/8"), "198.51.100.5/24"));
        // Groups arrive sorted; selection keeps their order.
        assert_eq!(
            select(&[], &[], &["10.0.0.5/8", "172.16.0.1/16", "192.0.2.1/24", "198.51.100.5/24"]).unwrap(),
            selected(Some("10.0.0.5/8"), "192.0.2.1/24")
        );
    }

    #[test]
    fn private_and_public_come_from_different_groups() {
        // Only a public address resolves from the hostname; the private one comes from later groups.
        assert_eq!(
            select(&["203.0.113.5/24"], &["10.1.0.5/16"], &["10.1.0.5/16", "203.0.113.5/24"]).unwrap(),
            selected(Some("10.1.0.5/16"), "203.0.113.5/24")
        );
        // Only a private address from the hostname; the public one from the default route.
        assert_eq!(
            select(&["10.1.0.5/16"], &["198.51.100.1/24"], &[]).unwrap(),
            selected(Some("10.1.0.5/16"), "198.51.100.1/24")
        );
    }

    #[test]
    fn public_falls_back_to_the_first_private() {
        assert_eq!(
            select(&[], &["192.168.1.10/24"], &["10.0.0.1/8", "192.168.1.10/24"]).unwrap(),
            selected(Some("192.168.1.10/24"), "192.168.1.10/24")
        );
    }

    #[test]
    fn private_is_none_without_private_candidates() {
        assert_eq!(select(&[], &["203.0.113.9/24"], &["203.0.113.9/24"]).unwrap(), selected(None, "203.0.113.9/24"));
    }

    #[test]
    fn nothing_at_all_is_kilos_error() {
        let error = select(&[], &[], &[]).unwrap_err();
        assert!(matches!(error, Error::NoValidIp));
        assert_eq!(error.to_string(), "no valid IP was found");
    }

    #[test]
    fn kilos_private_heuristic_is_used() {
        // 100.64/10 (CGNAT) and fd01::/16 are "public" for Kilo; 172.31/16 private; fd00::/16 private.
        assert_eq!(select(&[], &[], &["100.64.0.1/10"]).unwrap(), selected(None, "100.64.0.1/10"));
        assert_eq!(select(&[], &[], &["172.31.0.1/16"]).unwrap(), selected(Some("172.31.0.1/16"), "172.31.0.1/16"));
        assert_eq!(
            select(&[], &[], &["fd00::1/64", "fd01::1/64"]).unwrap(),
            selected(Some("fd00::1/64"), "fd01::1/64")
        );
    }

    #[test]
    fn ignored_addresses_are_matched_exactly_as_ip_mask() {
        let candidates = |ignored: &[&str]| Candidates {
            hostname: vec![],
            default_route: nets(&["10.4.0.1/16", "192.168.0.2/24"]),
            all: vec![],
            ignored: nets(ignored).into_iter().collect(),
        };
        // Same ip/mask: ignored.
        assert_eq!(
            select_ips(&candidates(&["10.4.0.1/16"]), &[]).unwrap(),
            selected(Some("192.168.0.2/24"), "192.168.0.2/24")
        );
        // Same IP, other mask: not ignored (Kilo compares ip/mask text).
        assert_eq!(
            select_ips(&candidates(&["10.4.0.1/24"]), &[]).unwrap(),
            selected(Some("10.4.0.1/16"), "10.4.0.1/16")
        );
        // Everything ignored.
        assert!(matches!(select_ips(&candidates(&["10.4.0.1/16", "192.168.0.2/24"]), &[]), Err(Error::NoValidIp)));
    }

    #[test]
    fn internal_cidrs_filter_private_candidates_only() {
        let candidates = Candidates {
            hostname: nets(&["10.0.0.5/24"]),
            default_route: nets(&["192.168.7.7/24"]),
            all: nets(&["10.0.0.5/24", "192.168.7.7/24", "198.51.100.7/24"]),
            ignored: BTreeSet::new(),
        };
        assert_eq!(
            select_ips(&candidates, &nets(&["192.168.7.0/24"])).unwrap(),
            selected(Some("192.168.7.7/24"), "198.51.100.7/24")
        );
        // As the manifests use it: --internal-cidr=$(NODE_IP)/32.
        assert_eq!(
            select_ips(&candidates, &nets(&["192.168.7.7/32", "172.16.0.0/12"])).unwrap(),
            selected(Some("192.168.7.7/24"), "198.51.100.7/24")
        );
        // Public addresses are never filtered.
        assert_eq!(select_ips(&candidates, &nets(&["172.16.0.0/12"])).unwrap(), selected(None, "198.51.100.7/24"));
        // Without a public address, the public IP falls back to the *filtered* private list.
        let private_only = Candidates { all: nets(&["10.0.0.5/24", "192.168.7.7/24"]), ..candidates.clone() };
        assert_eq!(
            select_ips(&private_only, &nets(&["192.168.0.0/16"])).unwrap(),
            selected(Some("192.168.7.7/24"), "192.168.7.7/24")
        );
        assert!(matches!(select_ips(&private_only, &nets(&["172.16.0.0/12"])), Err(Error::NoValidIp)));
        // Host bits of the CIDR flag do not matter.
        assert_eq!(
            select_ips(&private_only, &nets(&["192.168.7.200/24"])).unwrap().private,
            Some(net("192.168.7.7/24"))
        );
    }

    #[test]
    fn external_ip_honours_prioritise_private_addresses() {
        let both = selected(Some("10.0.0.1/24"), "203.0.113.1/24");
        assert_eq!(both.external(false), net("203.0.113.1/24"));
        assert_eq!(both.external(true), net("10.0.0.1/24"));
        let public_only = selected(None, "203.0.113.1/24");
        assert_eq!(public_only.external(true), net("203.0.113.1/24"));
    }

    #[test]
    fn local_addresses_are_never_candidates() {
        for local in ["127.0.0.1", "127.1.2.3", "169.254.1.1", "224.0.0.251", "::1", "fe80::1", "febf::1", "ff02::1"] {
            assert!(is_local(local.parse().unwrap()), "{local}");
        }
        for other in ["10.0.0.1", "224.0.1.1", "fec0::1", "ff05::1", "2001:db8::1", "0.0.0.0"] {
            assert!(!is_local(other.parse().unwrap()), "{other}");
        }
        assert!(is_local("::ffff:127.0.0.1".parse().unwrap()));
        let host = HostNetwork {
            interfaces: vec![
                iface(1, "lo", 65536, &["127.0.0.1/8", "::1/128"]),
                iface(2, "eth0", 1500, &["169.254.10.1/16", "fe80::1/64"]),
            ],
            default_route_interface: Some(2),
            hostname_ips: vec!["127.0.0.1".parse().unwrap()],
        };
        let candidates = host.candidates(&ignored());
        assert_eq!(candidates, Candidates::default());
        assert!(matches!(host.discover(&ignored(), &[]), Err(Error::NoValidIp)));
    }

    /// A typical cloud node: eth0 with a private and a public address (default route), a second
    /// private NIC, Kilo's own interfaces and a CNI bridge.
    fn cloud_host() -> HostNetwork {
        HostNetwork {
            interfaces: vec![
                iface(1, "lo", 65536, &["127.0.0.1/8", "::1/128"]),
                iface(2, "eth0", 9001, &["172.31.5.10/20", "fe80::1/64", "2001:db8::10/64"]),
                iface(3, "eth1", 1500, &["10.10.0.4/24", "203.0.113.4/24"]),
                iface(4, "kilo0", 8921, &["10.4.0.1/16"]),
                iface(5, "tunl0", 8981, &["10.2.0.1/32"]),
                iface(6, "kube-bridge", 1420, &["10.2.0.1/24"]),
                iface(7, "docker0", 1500, &["172.17.0.1/16"]),
            ],
            default_route_interface: Some(2),
            hostname_ips: vec![],
        }
    }

    #[test]
    fn candidates_of_a_cloud_host() {
        let candidates = cloud_host().candidates(&ignored());
        assert_eq!(candidates.hostname, vec![]);
        assert_eq!(candidates.default_route, nets(&["172.31.5.10/20", "2001:db8::10/64"]));
        assert_eq!(
            candidates.all,
            nets(&[
                "10.10.0.4/24",
                "10.2.0.1/24",
                "10.2.0.1/32",
                "10.4.0.1/16",
                "172.17.0.1/16",
                "172.31.5.10/20",
                "203.0.113.4/24",
                "2001:db8::10/64",
            ])
        );
        assert_eq!(
            candidates.ignored,
            nets(&["10.2.0.1/24", "10.2.0.1/32", "10.4.0.1/16", "10.4.0.1/32"]).into_iter().collect()
        );
    }

    #[test]
    fn discover_on_a_cloud_host() {
        let host = cloud_host();
        let local = host.discover(&ignored(), &[]).unwrap();
        // Private from the default route's interface; public: eth0's IPv6 is public and comes
        // from the default-route group, before eth1's public IPv4 from the all-interfaces group.
        assert_eq!(local.ips, selected(Some("172.31.5.10/20"), "2001:db8::10/64"));
        assert_eq!(local.private_interface.as_ref().map(|i| i.name.as_str()), Some("eth0"));
        assert_eq!(local.default_interface.as_ref().and_then(|i| i.mtu), Some(9001));
        assert_eq!(auto_mtu(host.underlay_mtu(), false), 8921);

        // The hostname resolving to eth1's addresses wins over the default route.
        let host = HostNetwork {
            hostname_ips: vec!["203.0.113.4".parse().unwrap(), "10.10.0.4".parse().unwrap()],
            ..cloud_host()
        };
        let local = host.discover(&ignored(), &[]).unwrap();
        assert_eq!(local.ips, selected(Some("10.10.0.4/24"), "203.0.113.4/24"));
        assert_eq!(local.private_interface.map(|i| i.name), Some("eth1".to_owned()));

        // --internal-cidr excludes eth0 and eth1: docker0 is the next private candidate.
        let host = cloud_host();
        let local = host.discover(&ignored(), &nets(&["172.16.0.0/14"])).unwrap();
        assert_eq!(local.ips, selected(Some("172.17.0.1/16"), "2001:db8::10/64"));
        assert_eq!(local.private_interface.map(|i| i.name), Some("docker0".to_owned()));
    }

    #[test]
    fn hostname_ips_must_be_on_a_local_interface() {
        let host = HostNetwork {
            hostname_ips: vec!["192.0.2.99".parse().unwrap(), "172.31.5.10".parse().unwrap()],
            ..cloud_host()
        };
        assert_eq!(host.candidates(&ignored()).hostname, nets(&["172.31.5.10/20"]));
    }

    #[test]
    fn hostname_mask_comes_from_the_first_link_by_name_then_address_text() {
        let host = HostNetwork {
            interfaces: vec![
                iface(1, "zeth", 1500, &["10.0.0.1/8"]),
                iface(2, "beth", 1500, &["10.0.0.1/32", "10.0.0.1/24"]),
            ],
            default_route_interface: None,
            hostname_ips: vec!["10.0.0.1".parse().unwrap()],
        };
        // "beth" sorts first; of its addresses "10.0.0.1/24" < "10.0.0.1/32" as text.
        assert_eq!(host.candidates(&[]).hostname, nets(&["10.0.0.1/24"]));
    }

    #[test]
    fn hostname_ips_on_ignored_interfaces_are_dropped_by_mask_match() {
        let host = HostNetwork {
            interfaces: vec![iface(1, "eth0", 1500, &["192.168.0.2/24"]), iface(2, "kilo0", 1420, &["10.4.0.1/16"])],
            default_route_interface: Some(1),
            hostname_ips: vec!["10.4.0.1".parse().unwrap()],
        };
        let candidates = host.candidates(&ignored());
        assert_eq!(candidates.hostname, nets(&["10.4.0.1/16"]));
        assert_eq!(select_ips(&candidates, &[]).unwrap(), selected(Some("192.168.0.2/24"), "192.168.0.2/24"));
    }

    #[test]
    fn an_address_also_on_an_ignored_interface_as_single_address_is_ignored() {
        // eth0 has 10.9.9.9/32; kilo0 has 10.9.9.9/24: the /32 form of kilo0's address matches.
        let host = HostNetwork {
            interfaces: vec![
                iface(1, "eth0", 1500, &["10.9.9.9/32", "192.168.5.5/24"]),
                iface(2, "kilo0", 1420, &["10.9.9.9/24"]),
            ],
            default_route_interface: Some(1),
            hostname_ips: vec![],
        };
        let local = host.discover(&ignored(), &[]).unwrap();
        assert_eq!(local.ips.private, Some(net("192.168.5.5/24")));
    }

    #[test]
    fn without_default_route_the_group_is_empty_and_mtu_falls_back() {
        let host = HostNetwork { default_route_interface: None, ..cloud_host() };
        let local = host.discover(&ignored(), &[]).unwrap();
        assert_eq!(local.ips, selected(Some("10.10.0.4/24"), "203.0.113.4/24"));
        assert_eq!(local.default_interface, None);
        assert_eq!(host.underlay_mtu(), None);
        assert_eq!(auto_mtu(host.underlay_mtu(), true), DEFAULT_MTU);
        // A default route naming an interface that is gone counts as none.
        let host = HostNetwork { default_route_interface: Some(99), ..cloud_host() };
        assert_eq!(host.underlay_mtu(), None);
        assert_eq!(host.candidates(&ignored()).default_route, vec![]);
    }

    #[test]
    fn private_interface_is_the_lowest_index_holding_the_ip_skipping_ignored() {
        let host = HostNetwork {
            interfaces: vec![
                iface(5, "eth1", 1500, &["10.0.0.1/24"]),
                iface(3, "eth0", 1400, &["10.0.0.1/16"]),
                iface(1, "kilo0", 1420, &["10.0.0.1/8"]),
            ],
            default_route_interface: None,
            hostname_ips: vec![],
        };
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(host.interface_with(ip, &ignored()).map(|i| i.name.as_str()), Some("eth0"));
        assert_eq!(host.interface_with(ip, &[]).map(|i| i.name.as_str()), Some("kilo0"));
        let only_ignored = HostNetwork { interfaces: vec![iface(1, "kilo0", 1420, &["10.0.0.1/8"])], ..host.clone() };
        assert_eq!(only_ignored.interface_with(ip, &ignored()).map(|i| i.name.as_str()), Some("kilo0"));
        assert_eq!(host.interface_with("10.0.0.2".parse().unwrap(), &ignored()), None);
        let local = host.discover(&ignored(), &[]).unwrap();
        assert_eq!(local.private_interface.map(|i| (i.name, i.mtu)), Some(("eth0".to_owned(), Some(1400))));
    }

    #[test]
    fn ipv4_candidates_sort_before_ipv6_within_a_group() {
        let host = HostNetwork {
            interfaces: vec![iface(
                2,
                "eth0",
                1500,
                &["fd00::5/64", "2001:db8::5/64", "192.168.3.3/24", "198.51.100.3/24"],
            )],
            default_route_interface: Some(2),
            hostname_ips: vec![],
        };
        let local = host.discover(&[], &[]).unwrap();
        assert_eq!(local.ips, selected(Some("192.168.3.3/24"), "198.51.100.3/24"));
        let v6_only =
            HostNetwork { interfaces: vec![iface(2, "eth0", 1500, &["fd00::5/64", "2001:db8::5/64"])], ..host.clone() };
        assert_eq!(v6_only.discover(&[], &[]).unwrap().ips, selected(Some("fd00::5/64"), "2001:db8::5/64"));
    }

    #[test]
    fn text_order_is_kilos_string_order_not_numeric() {
        // "10.0.0.10/24" < "10.0.0.9/24" as text, as in Go's sortIPs.
        let host = HostNetwork {
            interfaces: vec![iface(2, "eth0", 1500, &["10.0.0.9/24", "10.0.0.10/24"])],
            default_route_interface: Some(2),
            hostname_ips: vec![],
        };
        assert_eq!(host.discover(&[], &[]).unwrap().ips.private, Some(net("10.0.0.10/24")));
    }

    #[test]
    fn hostname_literal_and_localhost_resolution() {
        assert_eq!(resolve_hostname("192.0.2.7"), vec!["192.0.2.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(resolve_hostname("fd00::7"), vec!["fd00::7".parse::<IpAddr>().unwrap()]);
        // Resolved from /etc/hosts, no network involved.
        assert!(resolve_hostname("localhost").iter().all(|ip| ip.is_loopback()));
        assert!(!resolve_hostname("localhost").is_empty());
    }

    #[test]
    fn default_route_detection_from_messages() {
        use rtnetlink::packet_route::route::{RouteHeader, RouteNextHop};
        let route = |table: u8, prefix: u8, kind: RouteType, attributes: Vec<RouteAttribute>| {
            let mut message = RouteMessage::default();
            message.header = RouteHeader { table, destination_prefix_length: prefix, kind, ..RouteHeader::default() };
            message.attributes = attributes;
            message
        };
        assert_eq!(default_route_oif(&route(254, 0, RouteType::Unicast, vec![RouteAttribute::Oif(3)])), Some(3));
        // Other tables, other destinations, other types, no interface: not the default route.
        assert_eq!(default_route_oif(&route(255, 0, RouteType::Unicast, vec![RouteAttribute::Oif(3)])), None);
        assert_eq!(default_route_oif(&route(254, 8, RouteType::Unicast, vec![RouteAttribute::Oif(3)])), None);
        assert_eq!(default_route_oif(&route(254, 0, RouteType::Unreachable, vec![RouteAttribute::Oif(1)])), None);
        assert_eq!(default_route_oif(&route(254, 0, RouteType::Unicast, vec![])), None);
        // A table above 255 lives in the attribute; the header says 252 (RT_TABLE_COMPAT).
        assert_eq!(
            default_route_oif(&route(
                252,
                0,
                RouteType::Unicast,
                vec![RouteAttribute::Table(1107), RouteAttribute::Oif(3)]
            )),
            None
        );
        assert_eq!(
            default_route_oif(&route(
                254,
                0,
                RouteType::Unicast,
                vec![RouteAttribute::Table(254), RouteAttribute::Oif(3)]
            )),
            Some(3)
        );
        // Multipath: the first next hop.
        let hop = |index| {
            let mut hop = RouteNextHop::default();
            hop.interface_index = index;
            hop
        };
        assert_eq!(
            default_route_oif(&route(
                254,
                0,
                RouteType::Unicast,
                vec![RouteAttribute::MultiPath(vec![hop(7), hop(8)])]
            )),
            Some(7)
        );
    }

    #[test]
    fn reads_the_current_namespace() {
        // Read-only and unprivileged: every namespace has a loopback interface.
        let host = HostNetwork::read(&Namespace::Current, "127.0.0.1").unwrap();
        let lo = host.interface_named("lo").expect("lo exists");
        assert!(lo.addresses.contains(&net("127.0.0.1/8")), "{host:?}");
        assert_eq!(host.hostname_ips, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn a_missing_namespace_is_an_error_naming_it() {
        let namespace = Namespace::named("kt-host-does-not-exist");
        let error = HostNetwork::read(&namespace, "localhost").unwrap_err();
        assert!(matches!(error, Error::Namespace { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "failed to open network namespace /run/netns/kt-host-does-not-exist: No such file or directory (os error 2)"
        );
    }
}
