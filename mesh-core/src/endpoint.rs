//! WireGuard endpoints as Kilo writes them: `host:port`, where the host is an IP address or a DNS name.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// The host part of an [`Endpoint`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Host {
    /// A literal IP address.
    Ip(IpAddr),
    /// A DNS name (a DNS-1123 subdomain), with the address it resolved to in this reconcile, if any.
    ///
    /// The core never resolves names; the agent fills in `resolved` before each reconcile.
    Dns {
        /// The name as written in the annotation or the Peer.
        name: String,
        /// The address the name resolved to, or `None` while unresolved.
        resolved: Option<IpAddr>,
    },
}

/// A WireGuard endpoint: a host and a UDP port.
///
/// ```
/// use mesh_core::Endpoint;
/// let endpoint: Endpoint = "[ff50::10]:1000".parse().unwrap();
/// assert_eq!(endpoint.to_string(), "[ff50::10]:1000");
/// assert!("10.0.0.1".parse::<Endpoint>().is_err()); // no port
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Endpoint {
    /// The IP address or DNS name.
    pub host: Host,
    /// The UDP port, 1..=65535.
    pub port: u16,
}

/// Why a string is not an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The text is not `host:port` (an IPv6 host must be in brackets).
    #[error("expected host:port (IPv6 hosts in brackets)")]
    NotHostPort,
    /// The port is not a number in 1..=65535.
    #[error("port {0:?} out of range 1..65535")]
    InvalidPort(String),
    /// The host is neither an IP address nor a DNS-1123 subdomain.
    #[error("host {0:?} is neither an IP address nor a DNS name")]
    InvalidHost(String),
}

impl Endpoint {
    /// An endpoint with a literal IP address (IPv4-mapped IPv6 addresses become IPv4, as in Kilo).
    pub fn from_ip(ip: IpAddr, port: u16) -> Self {
        Endpoint { host: Host::Ip(ip.to_canonical()), port }
    }

    /// An endpoint from a socket address.
    pub fn from_socket_addr(addr: SocketAddr) -> Self {
        Endpoint::from_ip(addr.ip(), addr.port())
    }

    /// Parses `host:port` exactly as Kilo's `ParseEndpoint` does: an IPv4 address, a bracketed IPv6
    /// address or a DNS-1123 subdomain, and a port in 1..=65535.
    pub fn parse(text: &str) -> Result<Self, EndpointError> {
        let (host, port) = split_host_port(text).ok_or(EndpointError::NotHostPort)?;
        let port = parse_port(port).ok_or_else(|| EndpointError::InvalidPort(port.to_owned()))?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Endpoint::from_ip(ip, port));
        }
        if is_dns1123_subdomain(host) {
            return Ok(Endpoint { host: Host::Dns { name: host.to_owned(), resolved: None }, port });
        }
        Err(EndpointError::InvalidHost(host.to_owned()))
    }

    /// The IP address WireGuard would use: the literal address, or the resolved one for a DNS name.
    pub fn ip(&self) -> Option<IpAddr> {
        match &self.host {
            Host::Ip(ip) => Some(*ip),
            Host::Dns { resolved, .. } => *resolved,
        }
    }

    /// The socket address WireGuard would use; `None` for an unresolved DNS name.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip().map(|ip| SocketAddr::new(ip, self.port))
    }

    /// The DNS name, if the endpoint has one.
    pub fn dns_name(&self) -> Option<&str> {
        match &self.host {
            Host::Dns { name, .. } => Some(name),
            Host::Ip(_) => None,
        }
    }
}

/// Prints the DNS form when there is a name (as Kilo publishes it), else `ip:port` or `[ip]:port`.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Dns { name, .. } => write!(f, "{name}:{}", self.port),
            Host::Ip(ip) => write!(f, "{}", SocketAddr::new(*ip, self.port)),
        }
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(s)
    }
}

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Splits like Go's `net.SplitHostPort`: `[v6]:port`, or `host:port` where host has no colon.
fn split_host_port(text: &str) -> Option<(&str, &str)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return Some((host, port));
    }
    let (host, port) = text.rsplit_once(':')?;
    if host.contains(':') || host.contains('[') || host.contains(']') || port.contains(']') {
        return None;
    }
    Some((host, port))
}

fn parse_port(port: &str) -> Option<u16> {
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match port.parse::<u32>() {
        Ok(port @ 1..=65535) => u16::try_from(port).ok(),
        _ => None,
    }
}

/// Kubernetes' `validation.IsDNS1123Subdomain`, with its messages: at most 253 characters of
/// dot-separated labels, each made of lower-case alphanumerics and `-`, starting and ending with
/// an alphanumeric. Empty when `name` is valid.
///
/// ```
/// assert!(mesh_core::dns1123_subdomain_errors("wg.example.com").is_empty());
/// assert_eq!(mesh_core::dns1123_subdomain_errors("Example.com").len(), 1);
/// ```
pub fn dns1123_subdomain_errors(name: &str) -> Vec<&'static str> {
    let mut errors = Vec::new();
    if name.len() > 253 {
        errors.push("must be no more than 253 characters");
    }
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    };
    if !name.split('.').all(label_ok) {
        errors.push(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must \
             start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        );
    }
    errors
}

/// Whether `name` is a DNS-1123 subdomain ([`dns1123_subdomain_errors`] finds nothing).
fn is_dns1123_subdomain(name: &str) -> bool {
    dns1123_subdomain_errors(name).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Kilo's TestParseEndpoint.
    #[test]
    fn parses_like_kilo() {
        for bad in ["", ":1000", "10.0.0.0", "ff50::10", "10.0.0.1:0", "10.0.0.1:65536", "Foo:1"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?} must not parse");
        }
        let v4 = Endpoint::parse("10.0.0.0:1000").unwrap();
        assert_eq!(v4.socket_addr(), Some("10.0.0.0:1000".parse().unwrap()));
        let v6 = Endpoint::parse("[ff50::10]:1000").unwrap();
        assert_eq!(v6.ip(), Some("ff50::10".parse().unwrap()));
        assert_eq!(v6.to_string(), "[ff50::10]:1000");
        let mapped = Endpoint::parse("[::ffff:10.0.0.1]:51820").unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.1:51820");
    }

    #[test]
    fn dns_names_stay_unresolved_and_print_by_name() {
        let endpoint = Endpoint::parse("example.com:51820").unwrap();
        assert_eq!(endpoint.dns_name(), Some("example.com"));
        assert_eq!(endpoint.socket_addr(), None);
        assert_eq!(endpoint.to_string(), "example.com:51820");
        let resolved = Endpoint {
            host: Host::Dns { name: "example.com".into(), resolved: Some("192.0.2.1".parse().unwrap()) },
            port: 51820,
        };
        assert_eq!(resolved.socket_addr(), Some("192.0.2.1:51820".parse().unwrap()));
        assert_eq!(resolved.to_string(), "example.com:51820");
    }

    #[test]
    fn dns1123() {
        assert!(is_dns1123_subdomain("a.b-c.d1"));
        assert!(!is_dns1123_subdomain("-a"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1123_subdomain("A.com"));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
        assert!(!is_dns1123_subdomain(""));
        assert_eq!(dns1123_subdomain_errors(&format!("-{}", "a".repeat(253))).len(), 2);
    }
}
