//! The encapsulation device: Kilo's IPIP `tunl0` (created here), Cilium's `cilium_tunl` or
//! Flannel's `flannel.1` (both reused, never created or deleted).

use mesh_core::Compatibility;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::{Handle, LinkIpIp};

use crate::error::{Error, Result};
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
                    match link::add(handle, ipip_link_message(name, mtu)).await {
                        // Loading the ipip module creates the fallback `tunl0` itself.
                        Err(error) if error.raw_os_error() == Some(nix::libc::EEXIST) => {}
                        Err(source) => {
                            return Err(Error::netlink(format!("create IPIP tunnel {name} with mtu {mtu}"), source));
                        }
                        Ok(()) => {}
                    }
                    *created = true;
                    find("look up new tunnel device")
                        .await?
                        .ok_or_else(|| Error::not_found("create IPIP tunnel", name))?
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

    #[test]
    fn only_kilo_s_own_tunnel_is_owned() {
        assert!(owns_device(Compatibility::None));
        assert!(!owns_device(Compatibility::Cilium));
        assert!(!owns_device(Compatibility::Flannel));
        assert_eq!(Compatibility::Cilium.tunnel_device(), CILIUM_TUNNEL);
    }
}
