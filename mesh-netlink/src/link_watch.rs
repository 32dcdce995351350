//! The kernel's link notifications (`RTNLGRP_LINK`, what `ip monitor link` prints), narrowed to
//! the devices the data plane uses: when the WireGuard interface, the private interface or the
//! tunnel appears, disappears or changes state, the agent reconciles at once instead of waiting
//! for its next timer (a restarted wireguard-go brings back an empty device).

use std::collections::HashMap;

use futures::StreamExt as _;
use futures::TryStreamExt as _;
use futures::channel::mpsc::UnboundedReceiver;
use mesh_core::backend::LinkChange;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::sys::SocketAddr;
use rtnetlink::{MulticastGroup, new_multicast_connection};

use crate::dataplane::DataplaneConfig;
use crate::error::{Error, Result, netlink_io};
use crate::netns::Namespace;

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
    /// The change `message` makes to a watched device, if any. Notifications that change
    /// nothing the data plane depends on (statistics, other devices) give none.
    fn change(&mut self, message: &NetlinkMessage<RouteNetlinkMessage>) -> Option<LinkChange> {
        match &message.payload {
            NetlinkPayload::Overrun(_) => Some(LinkChange::Missed),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => self.new_link(link),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                let gone = self.known.remove(&link.header.index)?;
                Some(LinkChange::Disappeared { interface: gone.name })
            }
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

/// The kernel's notifications about the devices the data plane uses, as [`LinkChange`]s.
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
    /// Watches `interfaces` in `namespace`. Must be called inside a Tokio runtime: the netlink
    /// socket runs as a task.
    pub async fn new(namespace: &Namespace, interfaces: Vec<String>) -> Result<Self> {
        let (connection, handle, messages) = namespace
            .enter(|| new_multicast_connection(&[MulticastGroup::Link]))?
            .map_err(|source| Error::netlink(format!("subscribe to link notifications in {namespace}"), source))?;
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

    /// Watches the devices of a data plane configured by `config`: its WireGuard interface,
    /// its private interface and, when its compatibility mode encapsulates, its tunnel.
    pub async fn of(config: &DataplaneConfig) -> Result<Self> {
        let names = config.device_names();
        let mut interfaces = vec![names.kilo];
        interfaces.extend(config.private_interface.clone());
        if config.compatibility.uses_ipip() {
            interfaces.push(names.tunnel);
        }
        LinkWatch::new(&config.namespace, interfaces).await
    }

    /// The next change to a watched device; `None` once the kernel's socket is closed.
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

    #[test]
    fn lost_notifications_are_a_change_of_anything() {
        let mut watched = watched();
        let overrun = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::Overrun(Vec::new()));
        assert_eq!(watched.change(&overrun), Some(LinkChange::Missed));
    }
}
