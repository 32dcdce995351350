//! The kernel's link and route notifications (`RTNLGRP_LINK`, `RTNLGRP_IPV4_ROUTE`,
//! `RTNLGRP_IPV6_ROUTE`: what `ip monitor link route` prints), narrowed to what the data plane
//! owns: when the WireGuard interface, the private interface or the tunnel appears, disappears
//! or changes state, or a route of the mesh is deleted, the agent reconciles at once instead of
//! waiting for its next timer (a restarted wireguard-go brings back an empty device; a route
//! deleted by hand is put back, as Kilo does).

use std::collections::HashMap;

use futures::StreamExt as _;
use futures::TryStreamExt as _;
use futures::channel::mpsc::UnboundedReceiver;
use mesh_core::backend::LinkChange;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::sys::SocketAddr;
use rtnetlink::{MulticastGroup, new_multicast_connection};

use crate::dataplane::DataplaneConfig;
use crate::error::{Error, Result, netlink_io};
use crate::netns::Namespace;
use crate::route;

/// What a notification can change about a watched device.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LinkView {
    name: String,
    up: bool,
    /// Carrier: a TUN device has one while its daemon holds it open.
    running: bool,
    mtu: Option<u32>,
}

impl LinkView {
    fn of(message: &LinkMessage) -> Option<LinkView> {
        let mut name = None;
        let mut mtu = None;
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(found) => name = Some(found.clone()),
                LinkAttribute::Mtu(found) => mtu = Some(*found),
                _ => {}
            }
        }
        let flags = message.header.flags;
        Some(LinkView {
            name: name?,
            up: flags.contains(LinkFlags::Up),
            running: flags.contains(LinkFlags::Running),
            mtu,
        })
    }
}

/// The devices to watch and what the kernel last said about them, by interface index. Pure:
/// it turns notifications into [`LinkChange`]s.
#[derive(Debug, Default)]
struct Watched {
    names: Vec<String>,
    known: HashMap<u32, LinkView>,
}

impl Watched {
    /// The change `message` makes to a watched device or to the mesh's routes, if any.
    /// Notifications that change nothing the data plane depends on (statistics, other devices,
    /// routes added, routes of others) give none.
    fn change(&mut self, message: &NetlinkMessage<RouteNetlinkMessage>) -> Option<LinkChange> {
        match &message.payload {
            NetlinkPayload::Overrun(_) => Some(LinkChange::Missed),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => self.new_link(link),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                let gone = self.known.remove(&link.header.index)?;
                Some(LinkChange::Disappeared { interface: gone.name })
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(deleted)) => route_deleted(deleted),
            _ => None,
        }
    }

    fn new_link(&mut self, link: &LinkMessage) -> Option<LinkChange> {
        let index = link.header.index;
        let view = LinkView::of(link)?;
        if !self.names.contains(&view.name) {
            // Renamed away from a watched name: gone as far as the data plane is concerned.
            let gone = self.known.remove(&index)?;
            return Some(LinkChange::Disappeared { interface: gone.name });
        }
        let change = match self.known.get(&index) {
            Some(known) if known.name == view.name => (known != &view).then(|| LinkChange::Changed {
                interface: view.name.clone(),
                up: view.up,
                mtu: view.mtu,
            }),
            _ => Some(LinkChange::Appeared { interface: view.name.clone() }),
        };
        self.known.insert(index, view);
        change
    }
}

/// A deleted route of the mesh. The agent's own deletions are reported too: the agent tells
/// them apart by what its last plan wants.
fn route_deleted(deleted: &RouteMessage) -> Option<LinkChange> {
    if !route::is_ours(deleted) {
        return None;
    }
    route::key(deleted).map(LinkChange::RouteDeleted)
}

/// The kernel's notifications about the devices the data plane uses and the mesh's routes, as
/// [`LinkChange`]s.
///
/// ```no_run
/// # async fn example(config: mesh_netlink::DataplaneConfig) -> mesh_netlink::Result<()> {
/// use mesh_netlink::LinkWatch;
///
/// let mut watch = LinkWatch::of(&config).await?;
/// while let Some(change) = watch.next().await {
///     println!("{change}"); // e.g. "interface kilo0 appeared"
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LinkWatch {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    watched: Watched,
}

impl LinkWatch {
    /// Watches `interfaces` and the mesh's routes in `namespace`. Must be called inside a Tokio
    /// runtime: the netlink socket runs as a task.
    pub async fn new(namespace: &Namespace, interfaces: Vec<String>) -> Result<Self> {
        let groups = [MulticastGroup::Link, MulticastGroup::Ipv4Route, MulticastGroup::Ipv6Route];
        let (connection, handle, messages) =
            namespace.enter(|| new_multicast_connection(&groups))?.map_err(|source| {
                Error::netlink(format!("subscribe to link and route notifications in {namespace}"), source)
            })?;
        tokio::spawn(connection);
        let mut watched = Watched { names: interfaces, known: HashMap::new() };
        // Subscribed first, listed second: a device that comes or goes in between is in the
        // list or in a notification, never in neither.
        let mut links = handle.link().get().execute();
        while let Some(link) = links
            .try_next()
            .await
            .map_err(|error| Error::netlink(format!("list interfaces in {namespace}"), netlink_io(error)))?
        {
            watched.new_link(&link);
        }
        Ok(LinkWatch { messages, watched })
    }

    /// Watches the devices of a data plane configured by `config` (its WireGuard interface,
    /// its private interface and, when its compatibility mode encapsulates, its tunnel) and
    /// the mesh's routes.
    pub async fn of(config: &DataplaneConfig) -> Result<Self> {
        let names = config.device_names();
        let mut interfaces = vec![names.kilo];
        interfaces.extend(config.private_interface.clone());
        if config.compatibility.uses_ipip() {
            interfaces.push(names.tunnel);
        }
        LinkWatch::new(&config.namespace, interfaces).await
    }

    /// The next change to a watched device or deletion of a route of the mesh; `None` once the
    /// kernel's socket is closed.
    pub async fn next(&mut self) -> Option<LinkChange> {
        loop {
            let (message, _) = self.messages.next().await?;
            if let Some(change) = self.watched.change(&message) {
                return Some(change);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::RouteKey;
    use rtnetlink::packet_core::NetlinkHeader;

    fn link(index: u32, name: &str, flags: LinkFlags, mtu: u32) -> LinkMessage {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = flags;
        message.attributes = vec![LinkAttribute::IfName(name.to_owned()), LinkAttribute::Mtu(mtu)];
        message
    }

    fn new(link: LinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
        NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)))
    }

    fn del(link: LinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
        NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)))
    }

    fn watched() -> Watched {
        Watched { names: vec!["kilo0".into(), "eth0".into()], known: HashMap::new() }
    }

    #[test]
    fn a_device_that_comes_changes_and_goes_is_reported_each_time() {
        let mut watched = watched();
        let appeared = watched.change(&new(link(7, "kilo0", LinkFlags::empty(), 1420)));
        assert_eq!(appeared, Some(LinkChange::Appeared { interface: "kilo0".into() }));
        // A notification that changes nothing watched (statistics, an address) is no change.
        assert_eq!(watched.change(&new(link(7, "kilo0", LinkFlags::empty(), 1420))), None);
        let up = watched.change(&new(link(7, "kilo0", LinkFlags::Up | LinkFlags::Running, 1420)));
        assert_eq!(up, Some(LinkChange::Changed { interface: "kilo0".into(), up: true, mtu: Some(1420) }));
        let mtu = watched.change(&new(link(7, "kilo0", LinkFlags::Up | LinkFlags::Running, 1380)));
        assert_eq!(mtu, Some(LinkChange::Changed { interface: "kilo0".into(), up: true, mtu: Some(1380) }));
        let gone = watched.change(&del(link(7, "kilo0", LinkFlags::empty(), 1380)));
        assert_eq!(gone, Some(LinkChange::Disappeared { interface: "kilo0".into() }));
        // Recreated under a new index (a restarted wireguard-go).
        let back = watched.change(&new(link(9, "kilo0", LinkFlags::empty(), 1420)));
        assert_eq!(back, Some(LinkChange::Appeared { interface: "kilo0".into() }));
    }

    #[test]
    fn other_devices_are_ignored_and_renames_count_as_coming_and_going() {
        let mut watched = watched();
        assert_eq!(watched.change(&new(link(3, "veth9", LinkFlags::Up, 1500))), None);
        assert_eq!(watched.change(&del(link(3, "veth9", LinkFlags::Up, 1500))), None);
        // eth1 renamed to eth0 (udev), then away again.
        assert_eq!(watched.change(&new(link(4, "eth1", LinkFlags::Up, 1500))), None);
        let renamed = watched.change(&new(link(4, "eth0", LinkFlags::Up, 1500)));
        assert_eq!(renamed, Some(LinkChange::Appeared { interface: "eth0".into() }));
        let away = watched.change(&new(link(4, "lan0", LinkFlags::Up, 1500)));
        assert_eq!(away, Some(LinkChange::Disappeared { interface: "eth0".into() }));
    }

    fn deleted_route(dst: &str, table: u32, protocol: u8) -> NetlinkMessage<RouteNetlinkMessage> {
        let dst: ipnet::Ipv4Net = dst.parse().unwrap();
        let mut route = RouteMessage::default();
        route.header.address_family = rtnetlink::packet_route::AddressFamily::Inet;
        route.header.destination_prefix_length = dst.prefix_len();
        route.header.protocol = protocol.into();
        route.header.table = u8::try_from(table).unwrap_or(252);
        route.attributes = vec![
            rtnetlink::packet_route::route::RouteAttribute::Destination(
                rtnetlink::packet_route::route::RouteAddress::Inet(dst.addr()),
            ),
            rtnetlink::packet_route::route::RouteAttribute::Table(table),
        ];
        NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(route)),
        )
    }

    #[test]
    fn deleted_routes_of_the_mesh_are_reported_and_others_are_not() {
        let mut watched = watched();
        let ours = watched.change(&deleted_route("10.42.2.0/24", mesh_core::MAIN_TABLE, route::ROUTE_PROTOCOL));
        let key = |dst: &str, table| RouteKey { table, dst: dst.parse().unwrap() };
        assert_eq!(ours, Some(LinkChange::RouteDeleted(key("10.42.2.0/24", mesh_core::MAIN_TABLE))));
        // Anything in table 1107 is the mesh's, whatever its protocol.
        let in_table = watched.change(&deleted_route("10.4.0.0/16", mesh_core::KILO_TABLE, 4));
        assert_eq!(in_table, Some(LinkChange::RouteDeleted(key("10.4.0.0/16", mesh_core::KILO_TABLE))));
        // The host's own routes (boot, static, DHCP) are none of the agent's business.
        assert_eq!(watched.change(&deleted_route("0.0.0.0/0", mesh_core::MAIN_TABLE, 16)), None);
        assert_eq!(watched.change(&deleted_route("192.168.0.0/24", mesh_core::MAIN_TABLE, 4)), None);
    }

    #[test]
    fn lost_notifications_are_a_change_of_anything() {
        let mut watched = watched();
        let overrun = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::Overrun(Vec::new()));
        assert_eq!(watched.change(&overrun), Some(LinkChange::Missed));
    }
}
