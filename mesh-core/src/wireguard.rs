//! WireGuard configurations as Kilo builds them (`Conf`, `PeerConf`, `AsPeer`), and their
//! wg-quick rendering (what `kgctl showconf` prints).

use std::fmt;

use ipnet::IpNet;

use crate::topology::{Peer, Segment};
use crate::{Endpoint, Key, PresharedKey, Topology};

/// One `[Peer]` section, with Kilo's values (allowed IPs keep their host bits; a DNS endpoint is
/// kept by name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's public key.
    pub public_key: Key,
    /// Allowed IPs in Kilo's order.
    pub allowed_ips: Vec<IpNet>,
    /// The endpoint, if any.
    pub endpoint: Option<Endpoint>,
    /// Persistent keepalive in seconds; 0 is off.
    pub persistent_keepalive: u16,
    /// Preshared key, if any.
    pub preshared_key: Option<PresharedKey>,
}

/// The `[Interface]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// The private key; omitted from the output when `None`.
    pub private_key: Option<Key>,
    /// The listen port.
    pub listen_port: u16,
}

/// A wg-quick style configuration; `Display` renders it exactly as Kilo's `Conf.Bytes`.
///
/// ```
/// use mesh_core::wireguard::{Conf, PeerConfig};
/// use mesh_core::Key;
/// let conf = Conf {
///     interface: None,
///     peers: vec![PeerConfig {
///         public_key: Key::from_bytes([1; 32]),
///         allowed_ips: vec!["10.2.1.0/24".parse().unwrap()],
///         endpoint: Some("192.0.2.1:51820".parse().unwrap()),
///         persistent_keepalive: 25,
///         preshared_key: None,
///     }],
/// };
/// assert_eq!(
///     conf.to_string(),
///     "[Peer]\nAllowedIPs = 10.2.1.0/24\nEndpoint = 192.0.2.1:51820\nPersistentKeepalive = 25\n\
///      PublicKey = AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conf {
    /// The interface section, if the configuration is for an interface.
    pub interface: Option<InterfaceConfig>,
    /// The peers, in order.
    pub peers: Vec<PeerConfig>,
}

impl fmt::Display for Conf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(interface) = &self.interface {
            writeln!(f, "[Interface]")?;
            if let Some(key) = interface.private_key.filter(|key| !key.is_zero()) {
                writeln!(f, "PrivateKey = {key}")?;
            }
            writeln!(f, "ListenPort = {}", interface.listen_port)?;
        }
        for (index, peer) in self.peers.iter().enumerate() {
            if index > 0 || self.interface.is_some() {
                writeln!(f)?;
            }
            writeln!(f, "[Peer]")?;
            if !peer.allowed_ips.is_empty() {
                let ips: Vec<String> = peer.allowed_ips.iter().map(ToString::to_string).collect();
                writeln!(f, "AllowedIPs = {}", ips.join(", "))?;
            }
            if let Some(endpoint) = &peer.endpoint {
                writeln!(f, "Endpoint = {endpoint}")?;
            }
            writeln!(f, "PersistentKeepalive = {}", peer.persistent_keepalive)?;
            if let Some(psk) = peer.preshared_key.filter(|psk| !psk.expose().is_zero()) {
                writeln!(f, "PresharedKey = {}", psk.expose())?;
            }
            if !peer.public_key.is_zero() {
                writeln!(f, "PublicKey = {}", peer.public_key)?;
            }
        }
        Ok(())
    }
}

impl Topology {
    /// The WireGuard peers of this node (Kilo's `Conf()`): one per segment outside the local
    /// location, then one per `Peer`; every one with the local persistent keepalive.
    /// Empty for a node that is not a leader.
    pub fn wireguard_peers(&self) -> Vec<PeerConfig> {
        if !self.leader {
            return Vec::new();
        }
        let segments = self.segments.iter().filter(|s| !self.is_local_location(s));
        let segments = segments.map(|segment| self.segment_peer(segment, self.persistent_keepalive, None));
        let peers = self.peers.iter().map(|peer| self.crd_peer(peer, self.persistent_keepalive, peer.preshared_key));
        segments.chain(peers).collect()
    }

    /// A segment as a WireGuard peer: its allowed IPs and allowed-location IPs, its leader's key
    /// and (NAT-aware) endpoint.
    fn segment_peer(&self, segment: &Segment, keepalive: u16, preshared_key: Option<PresharedKey>) -> PeerConfig {
        PeerConfig {
            public_key: segment.key,
            allowed_ips: segment.allowed_ips.iter().chain(&segment.allowed_location_ips).copied().collect(),
            endpoint: self.effective_endpoint(segment.endpoint.as_ref(), &segment.key, segment.persistent_keepalive),
            persistent_keepalive: keepalive,
            preshared_key,
        }
    }

    /// A `Peer` as a WireGuard peer.
    fn crd_peer(&self, peer: &Peer, keepalive: u16, preshared_key: Option<PresharedKey>) -> PeerConfig {
        PeerConfig {
            public_key: peer.public_key,
            allowed_ips: peer.allowed_ips.clone(),
            endpoint: self.effective_endpoint(peer.endpoint.as_ref(), &peer.public_key, peer.persistent_keepalive),
            persistent_keepalive: keepalive,
            preshared_key,
        }
    }

    /// The node configuration `kgctl showconf node` prints: an interface section with the given
    /// key (omitted when `None`) and port, and [`Topology::wireguard_peers`].
    pub fn node_conf(&self, private_key: Option<Key>, listen_port: u16) -> Conf {
        Conf { interface: Some(InterfaceConfig { private_key, listen_port }), peers: self.wireguard_peers() }
    }

    /// The configuration for the `Peer` named `name` (Kilo's `PeerConf`, `kgctl showconf peer`):
    /// every segment, then every other peer, with that peer's keepalive and preshared key.
    pub fn peer_conf(&self, name: &str) -> Conf {
        let own = self.peers.iter().find(|peer| peer.name == name);
        let keepalive = own.map_or(0, |peer| peer.persistent_keepalive);
        let preshared_key = own.and_then(|peer| peer.preshared_key);
        let segments = self.segments.iter().map(|segment| self.segment_peer(segment, keepalive, preshared_key));
        let others =
            self.peers.iter().filter(|peer| peer.name != name).map(|peer| self.crd_peer(peer, keepalive, None));
        let peers = segments.chain(others).collect();
        Conf { interface: None, peers }
    }

    /// The local segment as a peer of some other WireGuard interface (Kilo's `AsPeer`, `kgctl
    /// showconf node --as-peer`): its allowed IPs without allowed-location IPs, the leader's key and
    /// configured endpoint, no keepalive.
    pub fn as_peer(&self) -> PeerConfig {
        let local = self.local();
        PeerConfig {
            public_key: local.key,
            allowed_ips: local.allowed_ips.clone(),
            endpoint: local.endpoint.clone(),
            persistent_keepalive: 0,
            preshared_key: None,
        }
    }
}
