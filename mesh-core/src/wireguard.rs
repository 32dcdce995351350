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

/// A WireGuard peer with Kilo's values, still borrowed from the topology: what [`PeerConfig`]s
/// and the desired state's peers are both made from. Small, because a leader in `full`
/// granularity has thousands: the endpoint is found only when asked for.
pub(crate) struct PeerSource<'a> {
    topology: &'a Topology,
    pub(crate) public_key: &'a Key,
    /// The target's configured endpoint and its own keepalive, which decide the endpoint.
    configured_endpoint: Option<&'a Endpoint>,
    target_keepalive: u16,
    pub(crate) persistent_keepalive: u16,
    pub(crate) preshared_key: Option<&'a PresharedKey>,
    /// The allowed IPs, in Kilo's order: those of the first slice, then those of the second.
    allowed_ips: [&'a [IpNet]; 2],
}

impl<'a> PeerSource<'a> {
    /// The allowed IPs in Kilo's order, host bits kept.
    pub(crate) fn allowed_ips(&self) -> impl Iterator<Item = &'a IpNet> + use<'a> {
        let [first, second] = self.allowed_ips;
        first.iter().chain(second)
    }

    /// How many allowed IPs there are.
    pub(crate) fn allowed_ip_count(&self) -> usize {
        self.allowed_ips[0].len() + self.allowed_ips[1].len()
    }

    /// The endpoint to configure (NAT-aware, see [`Topology::effective_endpoint`]).
    pub(crate) fn endpoint(&self) -> Option<Endpoint> {
        self.topology.effective_endpoint(self.configured_endpoint, self.public_key, self.target_keepalive)
    }

    fn into_config(self) -> PeerConfig {
        let mut allowed_ips = Vec::with_capacity(self.allowed_ip_count());
        allowed_ips.extend(self.allowed_ips().copied());
        PeerConfig {
            public_key: *self.public_key,
            allowed_ips,
            endpoint: self.endpoint(),
            persistent_keepalive: self.persistent_keepalive,
            preshared_key: self.preshared_key.copied(),
        }
    }
}

impl Topology {
    /// The WireGuard peers of this node (Kilo's `Conf()`): one per segment outside the local
    /// location, then one per `Peer`; every one with the local persistent keepalive.
    /// Empty for a node that is not a leader.
    ///
    /// As Kilo, this lists an object that reuses an earlier one's key; the desired state does not
    /// (see [`DesiredState::from_topology`](crate::DesiredState::from_topology)).
    pub fn wireguard_peers(&self) -> Vec<PeerConfig> {
        self.kilo_peer_sources().map(PeerSource::into_config).collect()
    }

    /// The peers the local WireGuard device can hold: [`Topology::wireguard_peers`] with one
    /// entry per public key, none with the local node's own (see `key_owners`), allowed IPs not
    /// yet copied.
    pub(crate) fn wireguard_peer_sources(&self) -> impl Iterator<Item = PeerSource<'_>> {
        // `shadowed_keys` are positions in `kilo_peer_sources`, in increasing order.
        let shadowed = |at: &usize| self.shadowed_keys.binary_search(at).is_ok();
        self.kilo_peer_sources().enumerate().filter(move |(at, _)| !shadowed(at)).map(|(_, source)| source)
    }

    /// [`Topology::wireguard_peers`], with the allowed IPs not yet copied.
    fn kilo_peer_sources(&self) -> impl Iterator<Item = PeerSource<'_>> {
        let (segments, peers) = if self.leader { (&self.segments[..], &self.peers[..]) } else { (&[][..], &[][..]) };
        let segments = segments.iter().enumerate().filter(|(index, _)| !self.is_local_location_at(*index));
        let segments = segments.map(|(_, segment)| self.segment_peer(segment, self.persistent_keepalive, None));
        let peers =
            peers.iter().map(|peer| self.crd_peer(peer, self.persistent_keepalive, peer.preshared_key.as_ref()));
        segments.chain(peers)
    }

    /// A segment as a WireGuard peer: its allowed IPs and allowed-location IPs, its leader's key
    /// and (NAT-aware) endpoint.
    fn segment_peer<'a>(
        &'a self,
        segment: &'a Segment,
        keepalive: u16,
        preshared_key: Option<&'a PresharedKey>,
    ) -> PeerSource<'a> {
        PeerSource {
            topology: self,
            public_key: &segment.key,
            configured_endpoint: segment.endpoint.as_ref(),
            target_keepalive: segment.persistent_keepalive,
            allowed_ips: [&segment.allowed_ips, &segment.allowed_location_ips],
            persistent_keepalive: keepalive,
            preshared_key,
        }
    }

    /// A `Peer` as a WireGuard peer.
    fn crd_peer<'a>(
        &'a self,
        peer: &'a Peer,
        keepalive: u16,
        preshared_key: Option<&'a PresharedKey>,
    ) -> PeerSource<'a> {
        PeerSource {
            topology: self,
            public_key: &peer.public_key,
            configured_endpoint: peer.endpoint.as_ref(),
            target_keepalive: peer.persistent_keepalive,
            allowed_ips: [&peer.allowed_ips, &[]],
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
        let preshared_key = own.and_then(|peer| peer.preshared_key.as_ref());
        let segments = self.segments.iter().map(|segment| self.segment_peer(segment, keepalive, preshared_key));
        let others =
            self.peers.iter().filter(|peer| peer.name != name).map(|peer| self.crd_peer(peer, keepalive, None));
        let peers = segments.chain(others).map(PeerSource::into_config).collect();
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
