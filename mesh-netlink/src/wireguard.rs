//! WireGuard through wireguard-control: the kernel module over generic netlink, or a userspace
//! daemon (wireguard-go, boringtun) over its UAPI socket. Changes are per peer, never
//! `replace_peers`, so sessions with unchanged peers survive every update.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::UNIX_EPOCH;

use ipnet::IpNet;
use mesh_core::plan::PeerUpdate;
use mesh_core::state::{PeerStats, WireGuardPeer};
use mesh_core::{Key, PresharedKey};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use rtnetlink::sys::protocols::NETLINK_GENERIC;
use rtnetlink::sys::{Socket, SocketAddr};
use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, PeerConfigBuilder};

use crate::error::Error;

/// Which WireGuard implementation to drive (`--wireguard-backend auto|kernel|userspace`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WireGuardBackend {
    /// The kernel module when its generic-netlink family `wireguard` exists, otherwise a
    /// userspace daemon.
    #[default]
    Auto,
    /// The kernel module (generic netlink).
    Kernel,
    /// A userspace daemon (wireguard-go, boringtun) that already serves the interface's UAPI
    /// socket, `/var/run/wireguard/<interface>.sock`, as with Kilo's `--create-interface=false`.
    Userspace,
}

impl WireGuardBackend {
    /// The flag values, in the order the help text lists them.
    pub const VALUES: [&'static str; 3] = ["auto", "kernel", "userspace"];

    /// `Kernel` or `Userspace`: `Auto` asks the kernel whether it knows the `wireguard`
    /// generic-netlink family (which also loads the module when it is available).
    pub fn resolve(self) -> WireGuardBackend {
        match self {
            WireGuardBackend::Auto if kernel_module_available() => WireGuardBackend::Kernel,
            WireGuardBackend::Auto => WireGuardBackend::Userspace,
            backend => backend,
        }
    }

    fn library_backend(self) -> Backend {
        match self.resolve() {
            WireGuardBackend::Kernel => Backend::Kernel,
            _ => Backend::Userspace,
        }
    }
}

impl FromStr for WireGuardBackend {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "auto" => Ok(WireGuardBackend::Auto),
            "kernel" => Ok(WireGuardBackend::Kernel),
            "userspace" => Ok(WireGuardBackend::Userspace),
            other => Err(Error::InvalidBackend(other.to_owned())),
        }
    }
}

impl fmt::Display for WireGuardBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireGuardBackend::Auto => "auto",
            WireGuardBackend::Kernel => "kernel",
            WireGuardBackend::Userspace => "userspace",
        })
    }
}

/// Whether the kernel has the `wireguard` generic-netlink family (in the calling thread's
/// network namespace).
pub fn kernel_module_available() -> bool {
    family_id("wireguard").is_ok_and(|id| id.is_some())
}

fn family_id(name: &str) -> io::Result<Option<u16>> {
    let mut socket = Socket::new(NETLINK_GENERIC)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut request = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.to_owned())],
    });
    request.finalize();
    let mut request = NetlinkMessage::from(request);
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    request.finalize();
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);
    socket.send(&buffer, 0)?;
    let (reply, _) = socket.recv_from_full()?;
    let reply = NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(&reply)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
    Ok(match reply.payload {
        NetlinkPayload::InnerMessage(message) => message.payload.nlas.iter().find_map(|nla| match nla {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        }),
        _ => None,
    })
}

/// Where a userspace implementation serves the UAPI of `interface` (the directory
/// wireguard-control and `wg` use).
pub fn uapi_socket_path(interface: &str) -> PathBuf {
    let directory = if Path::new("/var/run/wireguard").exists() { "/var/run/wireguard" } else { "/run/wireguard" };
    Path::new(directory).join(format!("{interface}.sock"))
}

/// What the data plane reads from the device.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeviceState {
    pub private_key: Option<Key>,
    pub listen_port: Option<u16>,
    pub peers: BTreeMap<Key, WireGuardPeer>,
    pub stats: BTreeMap<Key, PeerStats>,
}

/// One WireGuard interface and the implementation that serves it.
#[derive(Clone, Debug)]
pub(crate) struct WireGuard {
    name: String,
    interface: InterfaceName,
    backend: WireGuardBackend,
}

impl WireGuard {
    /// `backend` must be resolved (not `Auto`).
    pub(crate) fn new(name: &str, backend: WireGuardBackend) -> io::Result<Self> {
        let interface = name
            .parse()
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, format!("invalid interface name: {error}")))?;
        Ok(WireGuard { name: name.to_owned(), interface, backend })
    }

    /// Reads the device. Blocking: call it through the namespace's blocking runner.
    pub(crate) fn read(&self) -> io::Result<DeviceState> {
        self.check_socket()?;
        let device = Device::get(&self.interface, self.backend.library_backend())?;
        let mut state = DeviceState {
            private_key: device.private_key.map(|key| Key::from_bytes(key.0)),
            listen_port: device.listen_port.filter(|port| *port != 0),
            ..DeviceState::default()
        };
        for info in device.peers {
            let public_key = Key::from_bytes(info.config.public_key.0);
            let preshared_key = info
                .config
                .preshared_key
                .map(|key| Key::from_bytes(key.0))
                .filter(|key| !key.is_zero())
                .map(PresharedKey::new);
            let allowed_ips: BTreeSet<IpNet> = info
                .config
                .allowed_ips
                .iter()
                .filter_map(|ip| IpNet::new(ip.address, ip.cidr).ok())
                .map(|net| net.trunc())
                .collect();
            state.peers.insert(
                public_key,
                WireGuardPeer {
                    public_key,
                    endpoint: info.config.endpoint,
                    allowed_ips,
                    persistent_keepalive: info.config.persistent_keepalive_interval.unwrap_or(0),
                    preshared_key,
                },
            );
            let last_handshake = info
                .stats
                .last_handshake_time
                .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
                .map(|since| i64::try_from(since.as_secs()).unwrap_or(i64::MAX))
                .filter(|seconds| *seconds > 0);
            state.stats.insert(
                public_key,
                PeerStats { last_handshake, rx_bytes: info.stats.rx_bytes, tx_bytes: info.stats.tx_bytes },
            );
        }
        Ok(state)
    }

    /// Applies one update. Blocking: call it through the namespace's blocking runner.
    pub(crate) fn apply(&self, update: DeviceUpdate) -> io::Result<()> {
        self.check_socket()?;
        update.apply(&self.interface, self.backend.library_backend())
    }

    /// Makes a userspace daemon stop by removing its UAPI socket (what `wg-quick down` does).
    pub(crate) fn remove_userspace_socket(&self) -> io::Result<()> {
        match std::fs::remove_file(uapi_socket_path(&self.name)) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            result => result,
        }
    }

    /// wireguard-control starts `wireguard-go` on its own when it cannot reach the socket; the
    /// data plane never does (the daemon is deployed beside the agent), so it checks first.
    fn check_socket(&self) -> io::Result<()> {
        if self.backend.resolve() != WireGuardBackend::Userspace {
            return Ok(());
        }
        let path = uapi_socket_path(&self.name);
        UnixStream::connect(&path).map(drop).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!(
                    "cannot reach the UAPI socket {} ({error}): start wireguard-go or boringtun for {} first",
                    path.display(),
                    self.name
                ),
            )
        })
    }
}

fn library_key(key: &Key) -> wireguard_control::Key {
    wireguard_control::Key(*key.as_bytes())
}

fn with_allowed_ips(mut builder: PeerConfigBuilder, allowed_ips: &BTreeSet<IpNet>) -> PeerConfigBuilder {
    builder = builder.replace_allowed_ips();
    for net in allowed_ips {
        builder = builder.add_allowed_ip(net.addr(), net.prefix_len());
    }
    builder
}

/// Sets the device's private key.
pub(crate) fn set_private_key(key: &Key) -> DeviceUpdate {
    DeviceUpdate::new().set_private_key(library_key(key))
}

/// Sets the listen port.
pub(crate) fn set_listen_port(port: u16) -> DeviceUpdate {
    DeviceUpdate::new().set_listen_port(port)
}

/// Adds a peer with its whole configuration.
pub(crate) fn add_peer(peer: &WireGuardPeer) -> DeviceUpdate {
    let mut builder = with_allowed_ips(PeerConfigBuilder::new(&library_key(&peer.public_key)), &peer.allowed_ips)
        .set_persistent_keepalive_interval(peer.persistent_keepalive);
    if let Some(endpoint) = peer.endpoint {
        builder = builder.set_endpoint(endpoint);
    }
    if let Some(psk) = &peer.preshared_key {
        builder = builder.set_preshared_key(library_key(psk.expose()));
    }
    DeviceUpdate::new().add_peer(builder)
}

/// Changes only the given fields of an existing peer; its session is kept.
pub(crate) fn update_peer(update: &PeerUpdate) -> DeviceUpdate {
    let mut builder = PeerConfigBuilder::new(&library_key(&update.public_key));
    if let Some(endpoint) = update.endpoint {
        builder = builder.set_endpoint(endpoint);
    }
    if let Some(allowed_ips) = &update.allowed_ips {
        builder = with_allowed_ips(builder, allowed_ips);
    }
    if let Some(keepalive) = update.persistent_keepalive {
        builder = builder.set_persistent_keepalive_interval(keepalive);
    }
    match &update.preshared_key {
        Some(Some(psk)) => builder = builder.set_preshared_key(library_key(psk.expose())),
        Some(None) => builder = builder.unset_preshared_key(),
        None => {}
    }
    DeviceUpdate::new().add_peer(builder)
}

/// Removes a peer.
pub(crate) fn remove_peer(key: &Key) -> DeviceUpdate {
    DeviceUpdate::new().remove_peer_by_key(&library_key(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_backends() {
        for text in WireGuardBackend::VALUES {
            assert_eq!(text.parse::<WireGuardBackend>().unwrap().to_string(), text);
        }
        let error = "wg-go".parse::<WireGuardBackend>().unwrap_err();
        assert_eq!(error.to_string(), "invalid WireGuard backend \"wg-go\": expected auto, kernel or userspace");
        assert_eq!(WireGuardBackend::default(), WireGuardBackend::Auto);
    }

    #[test]
    fn explicit_backends_resolve_to_themselves() {
        assert_eq!(WireGuardBackend::Kernel.resolve(), WireGuardBackend::Kernel);
        assert_eq!(WireGuardBackend::Userspace.resolve(), WireGuardBackend::Userspace);
        assert_ne!(WireGuardBackend::Auto.resolve(), WireGuardBackend::Auto);
    }

    #[test]
    fn generic_netlink_probe_finds_the_controller_family() {
        // nlctrl always exists with id 0x10; a made-up family does not.
        assert_eq!(family_id("nlctrl").unwrap(), Some(0x10));
        assert_eq!(family_id("kt-no-such-family").unwrap(), None);
    }
}
