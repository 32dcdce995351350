//! The encapsulation device: Kilo's IPIP `tunl0` (created here), Cilium's `cilium_tunl` or
//! Flannel's `flannel.1` (both reused, never created or deleted).
//!
//! On a real kernel `tunl0` is usually not ours: loading the ipip module creates a fallback
//! `tunl0` (any to any) in every namespace, and the kernel refuses a second any-to-any device,
//! also when the fallback was renamed (Cilium's `cilium_tunl`). So an existing `tunl0` is
//! reused, and only a device this module really created is deleted on clean-up.

use futures::TryStreamExt;
use mesh_core::Compatibility;
use rtnetlink::packet_route::link::{InfoData, InfoIpTunnel, InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkIpIp};

use crate::error::{Error, Result, netlink_io};
use crate::link::{self, Link};

/// Cilium's IPIP device, which Cilium creates (by renaming the kernel's `tunl0`) when it runs
/// with `enable-ipip-termination=true`.
pub const CILIUM_TUNNEL: &str = "cilium_tunl";

/// Bytes an IPIP header adds: the tunnel's MTU is the private interface's minus this.
pub const IPIP_OVERHEAD: u32 = 20;

/// The message that creates the IPIP tunnel `name` with `mtu`, up (`ip link add NAME mtu MTU
/// up type ipip`, the same device as Kilo's `ip tunnel add tunl0 mode ipip`).
pub fn ipip_link_message(name: &str, mtu: u32) -> LinkMessage {
    LinkIpIp::new(name).mtu(mtu).up().build()
}

/// Whether the mesh owns the tunnel device of this compatibility mode (and so may create it,
/// change its MTU and own all of its IPv4 addresses).
pub(crate) fn owns_device(compatibility: Compatibility) -> bool {
    compatibility == Compatibility::None
}

/// The tunnel device, ready for routes and an address. `created` is set when it had to be
/// created. `writes` counts the kernel writes.
pub(crate) async fn ensure(
    handle: &Handle,
    compatibility: Compatibility,
    private_interface: Option<&str>,
    writes: &mut u64,
    created: &mut bool,
) -> Result<Link> {
    let name = compatibility.tunnel_device();
    let find = |operation: &'static str| async move {
        link::get(handle, name).await.map_err(|source| Error::netlink(format!("{operation} {name}"), source))
    };
    match compatibility {
        Compatibility::Flannel => {
            let Some(link) = find("look up tunnel device").await? else {
                return Err(Error::InterfaceNotFound {
                    operation: "use the Flannel tunnel".to_owned(),
                    interface: name.to_owned(),
                    hint: ": Flannel (VXLAN backend) creates it; the mesh never does".to_owned(),
                });
            };
            Ok(link)
        }
        Compatibility::Cilium => {
            let Some(link) = find("look up tunnel device").await? else {
                return Err(Error::CiliumTunnelNotFound);
            };
            if !link.up {
                *writes += 1;
                link::set_up(handle, link.index, true)
                    .await
                    .map_err(|source| Error::netlink(format!("set {name} up"), source))?;
            }
            Ok(Link { up: true, ..link })
        }
        Compatibility::None => {
            let private = private_interface.ok_or_else(|| Error::InterfaceNotFound {
                operation: format!("size IPIP tunnel {name}"),
                interface: "(private)".to_owned(),
                hint: ": the node has no private interface, so it cannot encapsulate".to_owned(),
            })?;
            let base = link::get(handle, private)
                .await
                .map_err(|source| Error::netlink(format!("look up private interface {private}"), source))?
                .ok_or_else(|| Error::not_found(format!("size IPIP tunnel {name}"), private))?;
            let mtu = base.mtu.unwrap_or(1500).saturating_sub(IPIP_OVERHEAD);
            let link = match find("look up tunnel device").await? {
                Some(link) => link,
                None => {
                    *writes += 1;
                    let operation = || format!("create IPIP tunnel {name} with mtu {mtu}");
                    match link::add(handle, ipip_link_message(name, mtu)).await {
                        Ok(()) => *created = true,
                        // The request loaded the ipip module, whose fallback `tunl0` (any to any)
                        // appeared in every namespace before our link could: the kernel's device,
                        // not ours (deleting it is a silent no-op), so it is not marked created.
                        // Or that fallback exists under another name, which also refuses ours.
                        Err(error) if error.raw_os_error() == Some(nix::libc::EEXIST) => {}
                        Err(source) => return Err(Error::netlink(operation(), source)),
                    }
                    match find("look up new tunnel device").await? {
                        Some(link) => link,
                        None => {
                            return Err(match any_to_any_ipip(handle).await? {
                                Some(existing) => Error::IpipDeviceRenamed { tunnel: name.to_owned(), existing },
                                None => Error::not_found(operation(), name),
                            });
                        }
                    }
                }
            };
            if link.mtu != Some(mtu) {
                *writes += 1;
                link::set_mtu(handle, link.index, mtu)
                    .await
                    .map_err(|source| Error::netlink(format!("set mtu {mtu} on {name}"), source))?;
            }
            if !link.up {
                *writes += 1;
                link::set_up(handle, link.index, true)
                    .await
                    .map_err(|source| Error::netlink(format!("set {name} up"), source))?;
            }
            Ok(Link { mtu: Some(mtu), up: true, ..link })
        }
    }
}

/// The name of the namespace's any-to-any IPIP device (no local or remote address, no lower
/// device): the kernel's fallback `tunl0`, possibly renamed (Cilium renames it `cilium_tunl`).
/// A namespace holds at most one, so while it exists no `tunl0` can be created beside it.
async fn any_to_any_ipip(handle: &Handle) -> Result<Option<String>> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|error| Error::netlink("list links", netlink_io(error)))?;
    Ok(links.iter().find(|message| is_any_to_any_ipip(message)).and_then(|message| {
        message.attributes.iter().find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
    }))
}

/// Whether the link is an IPIP device whose parameters match any packet: the kind of device the
/// kernel refuses a second of (`File exists`).
fn is_any_to_any_ipip(message: &LinkMessage) -> bool {
    let infos = message.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::LinkInfo(infos) => Some(infos.as_slice()),
        _ => None,
    });
    let Some(infos) = infos else { return false };
    if !infos.contains(&LinkInfo::Kind(InfoKind::IpIp)) {
        return false;
    }
    let parameters = infos.iter().find_map(|info| match info {
        LinkInfo::Data(InfoData::IpTunnel(parameters)) => Some(parameters.as_slice()),
        _ => None,
    });
    parameters.unwrap_or_default().iter().all(|parameter| match parameter {
        InfoIpTunnel::Local(ip) | InfoIpTunnel::Remote(ip) => ip.is_unspecified(),
        InfoIpTunnel::Link(index) => *index == 0,
        InfoIpTunnel::CollectMetadata => false,
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo};

    use super::*;

    #[test]
    fn tunl0_message_is_an_ipip_link_with_the_reduced_mtu() {
        let message = ipip_link_message("tunl0", 1500 - IPIP_OVERHEAD);
        assert!(message.attributes.contains(&LinkAttribute::IfName("tunl0".to_owned())));
        assert!(message.attributes.contains(&LinkAttribute::Mtu(1480)));
        let kinds: Vec<&InfoKind> = message
            .attributes
            .iter()
            .filter_map(|attribute| match attribute {
                LinkAttribute::LinkInfo(infos) => Some(infos),
                _ => None,
            })
            .flatten()
            .filter_map(|info| match info {
                LinkInfo::Kind(kind) => Some(kind),
                _ => None,
            })
            .collect();
        assert_eq!(kinds, [&InfoKind::IpIp]);
        assert!(message.header.flags.contains(LinkFlags::Up));
    }

    fn ipip_link(name: &str, parameters: Vec<InfoIpTunnel>) -> LinkMessage {
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::IfName(name.to_owned()));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::IpIp),
            LinkInfo::Data(InfoData::IpTunnel(parameters)),
        ]));
        message
    }

    /// The kernel reports the fallback device as `ipip any remote any local any`: zero
    /// addresses and no lower device. Only such a device blocks the creation of `tunl0`.
    #[test]
    fn the_renamed_fallback_is_recognised_by_its_parameters_not_its_name() {
        let any = std::net::IpAddr::from([0, 0, 0, 0]);
        let fallback =
            ipip_link("cilium_tunl", vec![InfoIpTunnel::Link(0), InfoIpTunnel::Local(any), InfoIpTunnel::Remote(any)]);
        assert!(is_any_to_any_ipip(&fallback));
        assert!(is_any_to_any_ipip(&ipip_link("tunl0", Vec::new())));
        let remote = std::net::IpAddr::from([192, 168, 1, 2]);
        assert!(!is_any_to_any_ipip(&ipip_link("ipip1", vec![InfoIpTunnel::Local(any), InfoIpTunnel::Remote(remote)])));
        assert!(!is_any_to_any_ipip(&ipip_link("ipip2", vec![InfoIpTunnel::Link(3)])));
        assert!(!is_any_to_any_ipip(&ipip_link("ipip3", vec![InfoIpTunnel::CollectMetadata])));
        let mut veth = LinkMessage::default();
        veth.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]));
        assert!(!is_any_to_any_ipip(&veth));
    }

    #[test]
    fn only_kilo_s_own_tunnel_is_owned() {
        assert!(owns_device(Compatibility::None));
        assert!(!owns_device(Compatibility::Cilium));
        assert!(!owns_device(Compatibility::Flannel));
        assert_eq!(Compatibility::Cilium.tunnel_device(), CILIUM_TUNNEL);
    }
}
