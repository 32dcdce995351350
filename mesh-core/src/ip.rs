//! Address helpers with Kilo's exact semantics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Kilo's `isPublic`: IPv4 outside 10/8, 172.16/12 and 192.168/16; IPv6 outside `fd00::/16`.
///
/// Kilo's heuristic is kept on purpose (leader election must agree across agents): `100.64/10`
/// counts as public and only `fd00::/16`, not all of `fc00::/7`, as private.
///
/// ```
/// use mesh_core::ip::is_public;
/// assert!(!is_public("172.24.135.46".parse().unwrap()));
/// assert!(is_public("172.15.255.255".parse().unwrap()));
/// ```
pub fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(a == 10 || (a == 172 && b & 0xf0 == 0x10) || (a == 192 && b == 168))
        }
        IpAddr::V6(v6) => {
            let [a, b, ..] = v6.octets();
            !(a == 0xfd && b == 0x00)
        }
    }
}

/// The single-address network of `ip`: `/32` or `/128`.
pub fn one_address_cidr(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// `net.trunc()` (host bits cleared), with the common case of a network that has none set
/// answered by one mask instead of rebuilding it (thousands of routes and rules go through here).
/// By reference: a copy of the byte-aligned `IpNet` made just before would be stored byte by
/// byte and read back whole, which stalls.
#[inline]
pub(crate) fn trunc(net: &IpNet) -> IpNet {
    let host_bits_clear = match net {
        IpNet::V4(v4) => u32::from(v4.addr()) & u32::from(v4.hostmask()) == 0,
        IpNet::V6(v6) => u128::from(v6.addr()) & u128::from(v6.hostmask()) == 0,
    };
    if host_bits_clear { *net } else { net.trunc() }
}

/// Whether either network contains the other's address (Kilo's `intersect`, host bits as given).
pub fn intersect(a: &IpNet, b: &IpNet) -> bool {
    // `IpNet::contains`, by masks: the filter of allowed-location IPs asks this per peer IP.
    let contains = |net: &IpNet, addr: IpAddr| match (net, addr) {
        (IpNet::V4(net), IpAddr::V4(addr)) => (u32::from(net.addr()) ^ u32::from(addr)) & u32::from(net.netmask()) == 0,
        (IpNet::V6(net), IpAddr::V6(addr)) => {
            (u128::from(net.addr()) ^ u128::from(addr)) & u128::from(net.netmask()) == 0
        }
        _ => false,
    };
    contains(a, b.addr()) || contains(b, a.addr())
}

/// Hands out `network + 1`, `network + 2`, … of a subnet, as Kilo's allocator does, with the
/// subnet's prefix length. Unlike Kilo it reports exhaustion at once instead of first returning an
/// empty address.
///
/// ```
/// use mesh_core::ip::Allocator;
/// let mut allocator = Allocator::new("10.1.0.0/16".parse().unwrap());
/// assert_eq!(allocator.next(), Some("10.1.0.1/16".parse().unwrap()));
/// assert_eq!(allocator.next(), Some("10.1.0.2/16".parse().unwrap()));
/// ```
#[derive(Clone, Debug)]
pub struct Allocator {
    subnet: IpNet,
    offset: u128,
}

impl Allocator {
    /// An allocator over the network of `subnet` (host bits are ignored).
    pub fn new(subnet: IpNet) -> Self {
        Allocator { subnet: subnet.trunc(), offset: 0 }
    }

    /// The next address with the subnet's prefix length, or `None` when the subnet is used up.
    #[allow(clippy::should_implement_trait)] // An exhausted allocator stays exhausted; not an iterator.
    pub fn next(&mut self) -> Option<IpNet> {
        self.offset = self.offset.checked_add(1)?;
        let host_bits = u32::from(self.subnet.max_prefix_len() - self.subnet.prefix_len());
        if host_bits < 128 && self.offset >> host_bits != 0 {
            return None;
        }
        let prefix = self.subnet.prefix_len();
        match self.subnet {
            IpNet::V4(net) => {
                let base = u32::from(net.network());
                let ip = Ipv4Addr::from(base.checked_add(u32::try_from(self.offset).ok()?)?);
                IpNet::new(IpAddr::V4(ip), prefix).ok()
            }
            IpNet::V6(net) => {
                let base = u128::from(net.network());
                let ip = Ipv6Addr::from(base.checked_add(self.offset)?);
                IpNet::new(IpAddr::V6(ip), prefix).ok()
            }
        }
    }
}

/// Kilo's `sortIPs` order: IPv4 before IPv6, then by CIDR text.
pub fn sort_ips(ips: &mut [IpNet]) {
    ips.sort_by_cached_key(|ip| (ip.addr().is_ipv6(), ip.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    // Kilo's TestIsPublic.
    #[test]
    fn is_public_matches_kilo() {
        for (ip, public) in [
            ("10.0.0.1", false),
            ("172.16.0.0", false),
            ("172.24.135.46", false),
            ("172.15.255.255", true),
            ("172.160.255.255", true),
            ("192.168.0.0", false),
            ("100.64.0.1", true),
            ("fd00::1", false),
            ("fd01::1", true),
            ("2001:db8::1", true),
        ] {
            assert_eq!(is_public(ip.parse().unwrap()), public, "{ip}");
        }
    }

    // Kilo's TestNewAllocator, with exhaustion reported at once (docs/compatibility.md).
    #[test]
    fn allocator_matches_kilo() {
        let mut a = Allocator::new(net("10.1.0.0/16"));
        assert_eq!(a.next(), Some(net("10.1.0.1/16")));
        assert_eq!(a.next(), Some(net("10.1.0.2/16")));
        assert_eq!(Allocator::new(net("10.1.0.0/32")).next(), None);
        let mut a = Allocator::new(net("10.1.0.0/31"));
        assert_eq!(a.next(), Some(net("10.1.0.1/31")));
        assert_eq!(a.next(), None);
        assert_eq!(a.next(), None);
        let mut a = Allocator::new(net("fd00::/127"));
        assert_eq!(a.next(), Some(net("fd00::1/127")));
        assert_eq!(a.next(), None);
        let mut a = Allocator::new(net("::/0"));
        assert_eq!(a.next(), Some(net("::1/0")));
    }

    #[test]
    fn intersect_is_containment_of_either_address() {
        let nets: Vec<IpNet> = [
            "10.0.0.1/32",
            "10.0.0.7/24",
            "10.0.1.0/24",
            "10.0.0.0/8",
            "0.0.0.0/0",
            "11.0.0.0/8",
            "::/0",
            "fd00::1/64",
            "fd00::/8",
            "fd00:0:0:1::/64",
            "::ffff:10.0.0.1/128",
            "10.0.0.128/25",
        ]
        .iter()
        .map(|s| net(s))
        .collect();
        for a in &nets {
            for b in &nets {
                assert_eq!(intersect(a, b), a.contains(&b.addr()) || b.contains(&a.addr()), "{a} {b}");
            }
            assert_eq!(trunc(a), a.trunc());
        }
    }

    // Kilo's TestSortIPs.
    #[test]
    fn sort_ips_matches_kilo() {
        let mut ips: Vec<IpNet> =
            ["fd68:da49:9da:b27f::/128", "10.0.0.2/32", "2001::7/128", "192.168.0.1/32", "10.0.0.1/32"]
                .iter()
                .map(|s| net(s))
                .collect();
        sort_ips(&mut ips);
        let text: Vec<String> = ips.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["10.0.0.1/32", "10.0.0.2/32", "192.168.0.1/32", "2001::7/128", "fd68:da49:9da:b27f::/128"]);
    }
}
