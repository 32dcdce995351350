//! Links and their addresses over rtnetlink: look up, create, set up/down, MTU, addresses.

use std::io;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressProtocol, AddressScope};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, LinkWireguard};

use crate::error::netlink_io;

/// What the data plane needs to know about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: Option<u32>,
    /// Whether the link is administratively up.
    pub up: bool,
    /// The link's kind (`wireguard`, `ipip`, `tun`, `veth` …), when it has one.
    pub kind: Option<InfoKind>,
}

impl Link {
    fn from_message(message: &LinkMessage) -> Link {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            mtu: None,
            up: message.header.flags.contains(LinkFlags::Up),
            kind: None,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind.clone()),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        link
    }
}

/// The link called `name`, or `None` when there is none.
pub(crate) async fn get(handle: &Handle, name: &str) -> io::Result<Option<Link>> {
    let mut links = handle.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(message) => Ok(message.as_ref().map(Link::from_message)),
        Err(error) => {
            let error = netlink_io(error);
            if error.raw_os_error() == Some(nix::libc::ENODEV) { Ok(None) } else { Err(error) }
        }
    }
}

/// Every link's name by index (to name the devices of routes that are not ours).
pub(crate) async fn names(handle: &Handle) -> io::Result<std::collections::HashMap<u32, String>> {
    let mut names = std::collections::HashMap::new();
    let mut links = handle.link().get().execute();
    while let Some(message) = links.try_next().await.map_err(netlink_io)? {
        let link = Link::from_message(&message);
        names.insert(link.index, link.name);
    }
    Ok(names)
}

/// Sets the link administratively up or down.
pub(crate) async fn set_up(handle: &Handle, index: u32, up: bool) -> io::Result<()> {
    let builder = LinkUnspec::new_with_index(index);
    let message = if up { builder.up() } else { builder.down() }.build();
    handle.link().set(message).execute().await.map_err(netlink_io)
}

/// Sets the link's MTU.
pub(crate) async fn set_mtu(handle: &Handle, index: u32, mtu: u32) -> io::Result<()> {
    handle.link().set(LinkUnspec::new_with_index(index).mtu(mtu).build()).execute().await.map_err(netlink_io)
}

/// Creates a kernel WireGuard link (`ip link add NAME type wireguard`).
pub(crate) async fn add_wireguard(handle: &Handle, name: &str) -> io::Result<()> {
    handle.link().add(LinkWireguard::new(name).build()).execute().await.map_err(netlink_io)
}

/// Creates a link from a prepared message.
pub(crate) async fn add(handle: &Handle, message: LinkMessage) -> io::Result<()> {
    handle.link().add(message).execute().await.map_err(netlink_io)
}

/// Deletes a link.
pub(crate) async fn delete(handle: &Handle, index: u32) -> io::Result<()> {
    handle.link().del(index).execute().await.map_err(netlink_io)
}

/// An address on a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Address {
    /// The address with its prefix length (host bits kept, as `ip addr` shows it).
    pub net: IpNet,
    /// The `IFA_PROTO` marker of whoever added it, if any.
    pub protocol: Option<u8>,
}

/// The addresses on a link, except IPv6 link-local ones: the kernel adds those itself and the
/// mesh never manages them.
pub(crate) async fn addresses(handle: &Handle, index: u32) -> io::Result<Vec<Address>> {
    let messages: Vec<AddressMessage> =
        handle.address().get().set_link_index_filter(index).execute().try_collect().await.map_err(netlink_io)?;
    Ok(messages
        .iter()
        .filter(|message| message.header.scope != AddressScope::Link)
        .filter_map(|message| {
            let net = address_of(message)?;
            let protocol = message.attributes.iter().find_map(|attribute| match attribute {
                AddressAttribute::Protocol(proto) => Some(u8::from(*proto)),
                _ => None,
            });
            Some(Address { net, protocol })
        })
        .collect())
}

/// The address an address message gives this host, with its prefix: `IFA_LOCAL`, else
/// `IFA_ADDRESS` (on point-to-point links `IFA_ADDRESS` is the peer's; `IFA_LOCAL` is ours).
pub(crate) fn address_of(message: &AddressMessage) -> Option<IpNet> {
    let mut local = None;
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    IpNet::new(local.or(address)?, message.header.prefix_len).ok()
}

/// Adds `net` to the link, marked with `protocol` (`IFA_PROTO`). Adding an address that is
/// already there succeeds.
pub(crate) async fn add_address(handle: &Handle, index: u32, net: IpNet, protocol: Option<u8>) -> io::Result<()> {
    let mut request = handle.address().add(index, net.addr(), net.prefix_len()).replace();
    if let Some(protocol) = protocol {
        request.message_mut().attributes.push(AddressAttribute::Protocol(AddressProtocol::from(protocol)));
    }
    request.execute().await.map_err(netlink_io)
}

/// Removes `net` from the link.
pub(crate) async fn delete_address(handle: &Handle, index: u32, net: IpNet) -> io::Result<()> {
    // The add request builds exactly the message `ip addr del` sends.
    let mut request = handle.address().add(index, net.addr(), net.prefix_len());
    let message = std::mem::take(request.message_mut());
    handle.address().del(message).execute().await.map_err(netlink_io)
}
