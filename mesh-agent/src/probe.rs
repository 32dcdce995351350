//! One ICMP echo over a raw socket: how fast leader failover checks a leader over the data path.
//!
//! The kernel of the probed node answers, not its agent: a leader whose agent crashed while its
//! kernel (and WireGuard) still forward keeps answering, and is not failed over.
//!
//! Needs `CAP_NET_RAW` (the agent runs privileged, as Kilo's does).

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

/// Sequence numbers of this process's echoes, so a late reply to an earlier probe is not taken
/// for the answer to this one.
static SEQUENCE: AtomicU16 = AtomicU16::new(0);

/// Sends one echo request to `ip` and waits at most `timeout` for its reply (blocking).
///
/// `Ok(false)` when no reply came in time or the address is unreachable (no route is no
/// reply); `Err` when the socket cannot be used (no `CAP_NET_RAW`).
pub fn echo(ip: IpAddr, timeout: Duration) -> io::Result<bool> {
    let (domain, protocol, request, reply) = match ip {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, ECHO_REQUEST_V4, ECHO_REPLY_V4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, ECHO_REQUEST_V6, ECHO_REPLY_V6),
    };
    let mut socket = Socket::new(domain, Type::RAW, Some(protocol))
        .map_err(|error| io::Error::new(error.kind(), format!("failed to open a raw ICMP socket: {error}")))?;
    // Connected, the kernel hands this socket only packets from `ip`.
    if let Err(error) = socket.connect(&SocketAddr::new(ip, 0).into()) {
        return unreachable_or(error);
    }
    let identifier = u16::try_from(std::process::id() & 0xffff).unwrap_or_default();
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let mut packet = [request, 0, 0, 0, 0, 0, 0, 0, b'm', b'e', b's', b'h'];
    packet[4..6].copy_from_slice(&identifier.to_be_bytes());
    packet[6..8].copy_from_slice(&sequence.to_be_bytes());
    if ip.is_ipv4() {
        // The kernel computes ICMPv6 checksums itself, not ICMPv4 ones.
        let checksum = checksum(&packet);
        packet[2..4].copy_from_slice(&checksum.to_be_bytes());
    }
    if let Err(error) = socket.send(&packet) {
        return unreachable_or(error);
    }
    let deadline = Instant::now() + timeout;
    let mut buffer = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        socket.set_read_timeout(Some(left))?;
        let length = match socket.read(&mut buffer) {
            Ok(length) => length,
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Ok(false);
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return unreachable_or(error),
        };
        // IPv4 raw sockets deliver the IP header too; IPv6 ones do not.
        let icmp = match ip {
            IpAddr::V4(_) => buffer.get(usize::from(buffer[0] & 0x0f) * 4..length),
            IpAddr::V6(_) => buffer.get(..length),
        };
        if let Some(icmp) = icmp
            && icmp.len() >= 8
            && icmp[0] == reply
            && icmp[4..6] == identifier.to_be_bytes()
            && icmp[6..8] == sequence.to_be_bytes()
        {
            return Ok(true);
        }
    }
}

/// Errors that mean "the node does not answer" (no route, host or network unreachable, network
/// down) are no reply; others are the socket's fault.
fn unreachable_or(error: io::Error) -> io::Result<bool> {
    use io::ErrorKind::{HostUnreachable, NetworkDown, NetworkUnreachable};
    match error.kind() {
        HostUnreachable | NetworkUnreachable | NetworkDown => Ok(false),
        _ => Err(error),
    }
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|pair| u32::from(u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_rfc_1071s() {
        // RFC 1071's example: 0001 f203 f4f5 f6f7 sums to ddf2; the checksum is its complement.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn loopback_answers_root() {
        let answered = echo(IpAddr::from([127, 0, 0, 1]), Duration::from_secs(1)).expect("a raw socket (needs root)");
        assert!(answered, "127.0.0.1 answers an echo");
    }
}
