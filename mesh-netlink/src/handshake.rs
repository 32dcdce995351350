//! Starting WireGuard handshakes at once ([`mesh_core::HandshakeStart`]).
//!
//! WireGuard (kernel module and wireguard-go alike) initiates a handshake with a peer when a
//! packet for it is queued and no session exists. So one empty UDP datagram, sent through the
//! WireGuard interface to an address in the peer's allowed IPs, starts it. The socket is bound
//! to the interface: an IPv4 datagram leaves through it whatever the routes say (Linux treats
//! the destination as on-link when no route through the bound device matches), so this works
//! before the routes of the plan exist and with any compatibility mode. IPv6 has no such
//! fallback: without a route the send fails, which is logged, and WireGuard then handshakes on
//! the peer's first packet as it always does. With a session, the datagram travels in it and
//! changes nothing. The receiving node drops it (port 9, discard).

use std::io;
use std::net::{IpAddr, SocketAddr};

use mesh_core::HandshakeStart;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::error::Result;
use crate::netns::Namespace;

/// The destination port: the discard service, which nothing answers.
const DISCARD_PORT: u16 = 9;

/// Sends one datagram per start through `interface` in `namespace`. Every start is tried; the
/// failures are returned with their peer (a down interface gives `ENETDOWN`). Only failing to
/// enter the namespace is an error.
pub(crate) fn start(
    namespace: &Namespace,
    interface: &str,
    starts: &[HandshakeStart],
) -> Result<Vec<(HandshakeStart, io::Error)>> {
    let (mut v4, mut v6) = (None, None);
    let mut failures = Vec::new();
    for start in starts {
        let socket = if start.address.is_ipv4() { &mut v4 } else { &mut v6 };
        let socket = match socket {
            Some(socket) => socket,
            None => socket.insert(namespace.enter(|| bound_socket(interface, start.address))?),
        };
        let sent = match socket {
            Ok(socket) => socket.send_to(&[], &SockAddr::from(SocketAddr::new(start.address, DISCARD_PORT))).map(drop),
            Err(error) => Err(io::Error::new(error.kind(), format!("open a UDP socket bound to {interface}: {error}"))),
        };
        if let Err(error) = sent {
            failures.push((*start, error));
        }
    }
    Ok(failures)
}

fn bound_socket(interface: &str, family: IpAddr) -> io::Result<Socket> {
    let domain = if family.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let socket = Socket::new(domain, Type::DGRAM.nonblocking().cloexec(), Some(Protocol::UDP))?;
    socket.bind_device(Some(interface.as_bytes()))?;
    Ok(socket)
}
