//! What the doctor reads on the node: sysctls, links, the agent's `/status`, and the data plane.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::path::Path;
use std::time::Duration;

/// A sysctl's value (`net/ipv4/ip_forward`), trimmed; `None` when unreadable.
pub fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(path)).ok().map(|value| value.trim().to_owned())
}

/// The MTU of a link, `None` when it does not exist.
pub fn link_mtu(name: &str) -> Option<u32> {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("mtu")).ok()?.trim().parse().ok()
}

/// How long the doctor waits for the agent's `/status`.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// GETs an `http://HOST:PORT/PATH` URL and parses the JSON body.
pub fn fetch_status(url: &str) -> Result<serde_json::Value, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let address = authority
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, STATUS_TIMEOUT).map_err(|e| format!("{url}: {e}"))?;
    stream.set_read_timeout(Some(STATUS_TIMEOUT)).map_err(|e| format!("{url}: {e}"))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").map_err(|e| format!("{url}: {e}"))?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| format!("{url}: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| format!("{url}: malformed response"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(format!("{url}: {status}"));
    }
    serde_json::from_str(body).map_err(|e| format!("{url}: {e}"))
}

/// The interface of the node's private IP, which the data plane's rules name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrivateInterface {
    /// `--private-iface`.
    Given(String),
    /// Found by IP discovery, as the agent finds it: the interface and the private IP it holds.
    Found(String, ipnet::IpNet),
    /// IP discovery found no private IP: the agent runs without a private interface.
    None,
}

impl PrivateInterface {
    /// The interface's name, if there is one.
    pub fn name(&self) -> Option<&str> {
        match self {
            PrivateInterface::Given(name) | PrivateInterface::Found(name, _) => Some(name),
            PrivateInterface::None => None,
        }
    }
}

impl std::fmt::Display for PrivateInterface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrivateInterface::Given(name) => write!(f, "private interface {name} (--private-iface)"),
            PrivateInterface::Found(name, ip) => write!(f, "private interface {name}, which holds the private IP {ip}"),
            PrivateInterface::None => f.write_str("no private interface: IP discovery found no private IP"),
        }
    }
}

/// The private interface as the agent finds it at start ([`discover_local_host`]).
///
/// [`discover_local_host`]: mesh_netlink::host::discover_local_host
pub async fn private_interface(
    hostname: &str,
    interface: &str,
    compatibility: mesh_core::Compatibility,
    internal_cidrs: &[ipnet::IpNet],
) -> Result<PrivateInterface, String> {
    let namespace = mesh_netlink::Namespace::Current;
    let (_, local) =
        mesh_netlink::host::discover_local_host(&namespace, hostname, interface, compatibility, internal_cidrs)
            .await
            .map_err(|error| format!("IP discovery for {hostname}: {error}"))?;
    Ok(match (local.private_interface, local.ips.private) {
        (Some(found), Some(ip)) => PrivateInterface::Found(found.name, ip),
        _ => PrivateInterface::None,
    })
}

/// Reads what the mesh owns in this host's data plane, as the agent observes it.
pub async fn observe(
    interface: &str,
    private_interface: Option<&str>,
    compatibility: mesh_core::Compatibility,
) -> Result<mesh_core::ObservedState, String> {
    // The key only decides whether the agent may skip re-keying the interface; observing does
    // not depend on it.
    let mut config = mesh_netlink::DataplaneConfig::new(mesh_core::Key::from_bytes([0; 32]));
    config.interface = interface.to_owned();
    config.private_interface = private_interface.map(str::to_owned);
    config.compatibility = compatibility;
    config.create_interface = false;
    let mut dataplane = mesh_netlink::LinuxDataplane::new(config).await.map_err(|e| e.to_string())?;
    dataplane.observe_state().await.map_err(|e| e.to_string())
}
