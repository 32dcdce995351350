//! Routes over rtnetlink: only ours, recognised by [`ROUTE_PROTOCOL`] in any table and by
//! table 1107, which belongs to the mesh entirely.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use mesh_core::{Dev, KILO_TABLE, Route, RouteKey};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::error::netlink_io;

/// The route protocol (`rtm_protocol`) every route and rule we install carries, so that we
/// recognise ours in the main table without touching anyone else's: `ip route show proto 107`.
///
/// Kilo used `proto static` (4), which every administrator and many tools use too. 107 is
/// unassigned in iproute2's `rt_protos` and among the numbers other CNIs use; name it with
/// `echo "107 kilo" > /etc/iproute2/rt_protos.d/kilo.conf`.
pub const ROUTE_PROTOCOL: u8 = 107;

/// The kernel message that installs `route` through the interface with index `oif`.
pub(crate) fn message(route: &Route, oif: u32) -> io::Result<RouteMessage> {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.dst.addr(), route.dst.prefix_len())
        .map_err(invalid)?
        .output_interface(oif)
        .table_id(route.table)
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL));
    if let Some(gateway) = route.gateway {
        builder = builder.gateway(gateway).map_err(invalid)?;
    }
    if let Some(src) = route.src {
        builder = builder.pref_source(src).map_err(invalid)?;
    }
    if route.onlink {
        builder = builder.onlink();
    }
    Ok(builder.build())
}

/// The message that deletes our route to `route.dst` in its table, whatever its next hop: in the
/// main table only a route with our protocol, in table 1107 any.
pub(crate) fn delete_message(route: &Route) -> io::Result<RouteMessage> {
    let protocol = if route.table == KILO_TABLE { RouteProtocol::Unspec } else { RouteProtocol::from(ROUTE_PROTOCOL) };
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.dst.addr(), route.dst.prefix_len())
        .map_err(invalid)?
        .table_id(route.table)
        .protocol(protocol)
        .scope(RouteScope::NoWhere)
        .build())
}

/// The table a route message belongs to (tables above 255 only appear in the attribute).
pub(crate) fn table(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
}

/// Whether the route is the mesh's: ours by protocol, or anything in table 1107.
pub(crate) fn is_ours(message: &RouteMessage) -> bool {
    u8::from(message.header.protocol) == ROUTE_PROTOCOL || table(message) == KILO_TABLE
}

fn address(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// The mesh's view of a kernel route; `None` when its device is none of ours (it cannot be
/// expressed as a [`Route`]) or it is not a plain unicast route.
pub(crate) fn to_route(message: &RouteMessage, dev_of: impl Fn(u32) -> Option<Dev>) -> Option<Route> {
    if message.header.kind != RouteType::Unicast {
        return None;
    }
    let mut gateway = None;
    let mut src = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Gateway(value) => gateway = address(value),
            RouteAttribute::PrefSource(value) => src = address(value),
            _ => {}
        }
    }
    Some(Route {
        dst: destination(message)?,
        gateway,
        dev: dev_of(output_interface(message)?)?,
        src,
        table: table(message),
        onlink: message.header.flags.contains(RouteFlags::Onlink),
    })
}

/// Every IPv4 and IPv6 route of the mesh.
pub(crate) async fn ours(handle: &Handle) -> io::Result<Vec<RouteMessage>> {
    let mut routes = Vec::new();
    let requests = [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()];
    for request in requests {
        let mut stream = handle.route().get(request).execute();
        while let Some(message) = stream.try_next().await.map_err(netlink_io)? {
            if is_ours(&message) {
                routes.push(message);
            }
        }
    }
    Ok(routes)
}

/// Installs the route unless one with the same table, destination and metric exists
/// (`EEXIST`): whose that one is decides what happens next ([`Holder`]).
pub(crate) async fn add(handle: &Handle, message: RouteMessage) -> io::Result<()> {
    handle.route().add(message).execute().await.map_err(netlink_io)
}

/// Installs the route in place of the one with the same table, destination and metric. Only
/// for a route that is ours to replace: the kernel replaces whatever it finds there.
pub(crate) async fn replace(handle: &Handle, message: RouteMessage) -> io::Result<()> {
    handle.route().add(message).replace().execute().await.map_err(netlink_io)
}

/// Who holds a table and destination the mesh wants a route at.
#[derive(Debug)]
pub(crate) enum Holder {
    /// Nobody (any more).
    Nobody,
    /// The mesh: a route of ours (protocol 107 or table 1107), or one through our WireGuard
    /// interface, which is the mesh's whatever its protocol (Kilo left such routes with
    /// protocol `static`).
    Mesh,
    /// Someone else (the host's default route, a connected network, another CNI): the route,
    /// as `ip route` prints it, which the mesh must neither replace nor delete.
    Foreign(String),
}

/// Finds who holds the place of `route` at the metric the mesh installs routes with.
/// `name_of` names interfaces by index, `wireguard` is the index of our WireGuard interface.
pub(crate) async fn holder(
    handle: &Handle,
    route: &Route,
    wireguard: Option<u32>,
    name_of: impl Fn(u32) -> Option<String>,
) -> io::Result<Holder> {
    let request = match route.dst {
        IpNet::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().table_id(route.table).build(),
        IpNet::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().table_id(route.table).build(),
    };
    let mut stream = handle.route().get(request).execute();
    let mut holder = Holder::Nobody;
    while let Some(message) = stream.try_next().await.map_err(netlink_io)? {
        if table(&message) != route.table
            || destination(&message) != Some(route.dst)
            || metric(&message) != default_metric(&route.dst)
        {
            continue;
        }
        if is_ours(&message) || (wireguard.is_some() && output_interface(&message) == wireguard) {
            holder = Holder::Mesh;
        } else {
            return Ok(Holder::Foreign(describe(&message, &name_of)));
        }
    }
    Ok(holder)
}

/// The metric the kernel gives a route added without one: 0 for IPv4, 1024 for IPv6.
fn default_metric(dst: &IpNet) -> u32 {
    match dst {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1024,
    }
}

fn metric(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Priority(metric) => Some(*metric),
            _ => None,
        })
        .unwrap_or(0)
}

fn output_interface(message: &RouteMessage) -> Option<u32> {
    message.attributes.iter().find_map(|attribute| match attribute {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    })
}

/// The route's destination network (the default route has no destination attribute).
fn destination(message: &RouteMessage) -> Option<IpNet> {
    let dst = message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Destination(value) => address(value),
            _ => None,
        })
        .unwrap_or(match message.header.address_family {
            rtnetlink::packet_route::AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        });
    IpNet::new(dst, message.header.destination_prefix_length).ok()
}

/// The kernel's identity of a route: its table and destination.
pub(crate) fn key(message: &RouteMessage) -> Option<RouteKey> {
    Some(RouteKey { table: table(message), dst: destination(message)?.trunc() })
}

/// A kernel route as `ip route` prints it, e.g. `default via 192.168.1.1 dev eth0 proto dhcp metric 100`.
pub(crate) fn describe(message: &RouteMessage, name_of: impl Fn(u32) -> Option<String>) -> String {
    let mut text = match destination(message) {
        Some(dst) if dst.prefix_len() == 0 => "default".to_owned(),
        Some(dst) => dst.to_string(),
        None => "?".to_owned(),
    };
    for attribute in &message.attributes {
        if let RouteAttribute::Gateway(gateway) = attribute
            && let Some(gateway) = address(gateway)
        {
            text += &format!(" via {gateway}");
        }
    }
    if let Some(index) = output_interface(message) {
        text += &format!(" dev {}", name_of(index).unwrap_or_else(|| format!("#{index}")));
    }
    let protocol = match u8::from(message.header.protocol) {
        1 => "redirect".to_owned(),
        2 => "kernel".to_owned(),
        3 => "boot".to_owned(),
        4 => "static".to_owned(),
        16 => "dhcp".to_owned(),
        9 => "ra".to_owned(),
        other => other.to_string(),
    };
    text += &format!(" proto {protocol}");
    if message.header.scope == RouteScope::Link {
        text += " scope link";
    }
    let metric = metric(message);
    if metric != 0 {
        text += &format!(" metric {metric}");
    }
    let table = table(message);
    if table != mesh_core::MAIN_TABLE {
        text += &format!(" table {table}");
    }
    text
}

/// Deletes a route.
pub(crate) async fn delete(handle: &Handle, message: RouteMessage) -> io::Result<()> {
    handle.route().del(message).execute().await.map_err(netlink_io)
}

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, error.to_string())
}

#[cfg(test)]
mod tests {
    use mesh_core::MAIN_TABLE;

    use super::*;

    fn route(dst: &str, gateway: Option<&str>, src: Option<&str>, table: u32, onlink: bool) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            gateway: gateway.map(|ip| ip.parse().unwrap()),
            dev: Dev::Kilo,
            src: src.map(|ip| ip.parse().unwrap()),
            table,
            onlink,
        }
    }

    #[test]
    fn our_routes_carry_our_protocol_and_table_1107_in_the_attribute() {
        let message =
            message(&route("10.2.1.0/24", Some("10.4.0.2"), Some("192.168.0.1"), KILO_TABLE, true), 7).unwrap();
        assert_eq!(u8::from(message.header.protocol), ROUTE_PROTOCOL);
        assert!(message.attributes.contains(&RouteAttribute::Table(KILO_TABLE)));
        assert!(message.attributes.contains(&RouteAttribute::Oif(7)));
        assert!(message.header.flags.contains(RouteFlags::Onlink));
        assert!(is_ours(&message));
        assert_eq!(table(&message), KILO_TABLE);

        let main = message_for_main();
        assert_eq!(table(&main), MAIN_TABLE);
        assert!(is_ours(&main));
        let mut foreign = main.clone();
        foreign.header.protocol = RouteProtocol::Static;
        assert!(!is_ours(&foreign), "Kilo's or an administrator's proto static route is not ours");
    }

    fn message_for_main() -> RouteMessage {
        message(&route("10.5.0.1/32", None, Some("192.168.0.1"), MAIN_TABLE, false), 7).unwrap()
    }

    #[test]
    fn kernel_routes_read_back_as_the_routes_that_made_them() {
        let dev_of = |index: u32| (index == 7).then_some(Dev::Kilo);
        for original in [
            route("10.2.1.0/24", Some("10.4.0.2"), Some("192.168.0.1"), KILO_TABLE, true),
            route("10.5.0.1/32", None, None, MAIN_TABLE, false),
            route("fd00:2::/64", Some("fd4::2"), None, MAIN_TABLE, true),
        ] {
            assert_eq!(to_route(&message(&original, 7).unwrap(), dev_of), Some(original));
        }
        let elsewhere = message(&route("10.2.1.0/24", None, None, MAIN_TABLE, false), 9).unwrap();
        assert_eq!(to_route(&elsewhere, dev_of), None, "a route through a device that is none of ours");
        let delete = delete_message(&route("10.2.1.0/24", Some("10.4.0.2"), None, KILO_TABLE, true)).unwrap();
        assert_eq!(delete.header.protocol, RouteProtocol::Unspec, "anything in table 1107 is ours to delete");
    }

    #[test]
    fn mismatched_families_are_refused_before_the_kernel_sees_them() {
        let error = message(&route("fd00::/64", None, Some("192.168.0.1"), MAIN_TABLE, false), 7).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
