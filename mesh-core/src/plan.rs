//! The minimal, ordered list of operations that turns the observed data plane into the desired one.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

use crate::firewall::{Family, FirewallEdit};
use crate::routes::{Route, Rule};
use crate::state::{DataplaneState, DesiredState, ObservedState, Routes, WireGuardPeer};
use crate::{Key, PresharedKey};

/// How long after a handshake an endpoint WireGuard learned from the peer is trusted over the
/// configured one: WireGuard's own session lifetime (`REJECT_AFTER_TIME`).
pub const ROAMING_GRACE_SECONDS: i64 = 180;

/// Changes to one existing WireGuard peer; `None` fields stay as they are. Applying it never
/// removes the peer, so its session survives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerUpdate {
    /// The peer.
    pub public_key: Key,
    /// A new endpoint.
    pub endpoint: Option<SocketAddr>,
    /// The complete new set of allowed IPs.
    pub allowed_ips: Option<BTreeSet<IpNet>>,
    /// A new keepalive interval (0 turns it off).
    pub persistent_keepalive: Option<u16>,
    /// A new preshared key (`Some(None)` removes it).
    #[serde(skip)]
    pub preshared_key: Option<Option<PresharedKey>>,
}

impl PeerUpdate {
    /// An update of `public_key` that changes nothing yet.
    pub fn new(public_key: Key) -> Self {
        PeerUpdate { public_key, endpoint: None, allowed_ips: None, persistent_keepalive: None, preshared_key: None }
    }

    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        self.endpoint.is_none()
            && self.allowed_ips.is_none()
            && self.persistent_keepalive.is_none()
            && self.preshared_key.is_none()
    }
}

/// One change to the data plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", content = "value", rename_all = "snake_case")]
pub enum Operation {
    /// Delete a policy rule.
    DeleteRule(Rule),
    /// Delete a route.
    DeleteRoute(Route),
    /// Set the WireGuard interface MTU.
    SetMtu(u32),
    /// Remove an address from the WireGuard interface.
    RemoveAddress(IpNet),
    /// Add an address to the WireGuard interface.
    AddAddress(IpNet),
    /// Bring the WireGuard interface up (`true`) or down.
    SetLinkUp(bool),
    /// Set the WireGuard listen port.
    SetListenPort(u16),
    /// Remove a WireGuard peer.
    RemovePeer(Key),
    /// Change an existing WireGuard peer in place.
    UpdatePeer(PeerUpdate),
    /// Add a WireGuard peer.
    AddPeer(WireGuardPeer),
    /// Set (or, with `None`, remove) the tunnel device's address.
    SetTunnelAddress(Option<IpNet>),
    /// Add a route.
    AddRoute(Route),
    /// Replace the route with the same table and destination.
    ReplaceRoute(Route),
    /// Add a policy rule.
    AddRule(Rule),
    /// Edit our chains and rules of one IP version, atomically.
    EditFirewall(FirewallEdit),
}

impl Operation {
    /// A short name of the kind of operation, for metrics and logs (`add_route`, `update_peer`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Operation::DeleteRule(_) => "delete_rule",
            Operation::DeleteRoute(_) => "delete_route",
            Operation::SetMtu(_) => "set_mtu",
            Operation::RemoveAddress(_) => "remove_address",
            Operation::AddAddress(_) => "add_address",
            Operation::SetLinkUp(_) => "set_link_up",
            Operation::SetListenPort(_) => "set_listen_port",
            Operation::RemovePeer(_) => "remove_peer",
            Operation::UpdatePeer(_) => "update_peer",
            Operation::AddPeer(_) => "add_peer",
            Operation::SetTunnelAddress(_) => "set_tunnel_address",
            Operation::AddRoute(_) => "add_route",
            Operation::ReplaceRoute(_) => "replace_route",
            Operation::AddRule(_) => "add_rule",
            Operation::EditFirewall(_) => "edit_firewall",
        }
    }
}

/// Why the plan left a peer's current endpoint in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepReason {
    /// The peer handshook from this endpoint recently: it roamed (it is probably behind NAT), and
    /// overwriting the endpoint would cut it off. The node most likely needs
    /// `kilo.squat.ai/persistent-keepalive` so its discovered endpoint is used.
    Roamed,
    /// No endpoint is configured; WireGuard learned this one and cannot be told to forget it
    /// without dropping the session.
    NoneConfigured,
}

/// A WireGuard endpoint the plan deliberately does not overwrite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KeptEndpoint {
    /// The peer.
    pub public_key: Key,
    /// The endpoint WireGuard uses now.
    pub current: SocketAddr,
    /// The endpoint the configuration asks for.
    pub configured: Option<SocketAddr>,
    /// Why it was kept.
    pub reason: KeepReason,
}

/// A WireGuard peer to send one packet to once the plan is applied, so that WireGuard initiates
/// a handshake with it at once.
///
/// When two nodes add each other as peers (a new leader and the other locations' leaders after
/// a failover), the first initiation of the side that is configured first reaches a side that
/// does not know it yet and is dropped; WireGuard waits `REKEY_TIMEOUT` (5 s) before it tries
/// again, and the other side only initiates when a packet for the peer happens to come along.
/// The side configured last starting the handshake at once closes that gap: by then both sides
/// know each other. Sending a packet never resets a session: with one established, it is sent
/// in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HandshakeStart {
    /// The peer.
    pub public_key: Key,
    /// Where to send the packet: an address of the peer's most specific allowed IP, so that
    /// WireGuard's cryptokey routing sends it to this peer and no other.
    pub address: IpAddr,
}

/// An ordered list of operations: deletions first, then the interface, WireGuard, the tunnel,
/// additions, and the firewall's minimal edit (see [`FirewallEdit`]). Empty when the data plane already is as desired.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The operations, in the order to apply them.
    pub operations: Vec<Operation>,
    /// Endpoints that differ from the configuration but were kept on purpose.
    pub kept_endpoints: Vec<KeptEndpoint>,
    /// Peers to start a handshake with once the operations are applied: those the plan adds or
    /// gives a new endpoint, when they have an endpoint (see [`HandshakeStart`]). Not an
    /// operation: it changes no state, so [`Plan::apply_to`] ignores it and a plan with only
    /// handshakes does not exist.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub handshakes: Vec<HandshakeStart>,
}

impl Plan {
    /// The operations that turn `observed` into `desired`, touching only what differs.
    ///
    /// A steady state yields an empty plan. WireGuard peers are added, removed or updated one by
    /// one, never replaced wholesale, so unrelated sessions survive. An endpoint WireGuard learned
    /// from a handshake in the last [`ROAMING_GRACE_SECONDS`] is not overwritten; it is listed in
    /// [`Plan::kept_endpoints`] instead.
    pub fn between(observed: &ObservedState, desired: &DesiredState) -> Plan {
        let current = &observed.state;
        let mut plan = Plan::default();
        let ops = &mut plan.operations;

        for rule in current.rules.difference(&desired.rules) {
            ops.push(Operation::DeleteRule(*rule));
        }
        // Both route sets are sorted by key: one walk finds deletions, additions and replacements.
        let mut additions = Vec::new();
        for change in merge(&current.routes, &desired.routes) {
            match change {
                (Some(existing), None) => ops.push(Operation::DeleteRoute(*existing)),
                (None, Some(wanted)) => additions.push(Operation::AddRoute(*wanted)),
                (Some(existing), Some(wanted)) if existing != wanted => {
                    additions.push(Operation::ReplaceRoute(*wanted));
                }
                _ => {}
            }
        }

        let (have, want) = (&current.interface, &desired.interface);
        if let Some(mtu) = want.mtu.filter(|mtu| have.mtu != Some(*mtu)) {
            ops.push(Operation::SetMtu(mtu));
        }
        for address in have.addresses.difference(&want.addresses) {
            ops.push(Operation::RemoveAddress(*address));
        }
        for address in want.addresses.difference(&have.addresses) {
            ops.push(Operation::AddAddress(*address));
        }
        if have.up != want.up {
            ops.push(Operation::SetLinkUp(want.up));
        }
        if let Some(port) = want.listen_port.filter(|port| have.listen_port != Some(*port)) {
            ops.push(Operation::SetListenPort(port));
        }

        for key in current.peers.keys() {
            if !desired.peers.contains_key(key) {
                ops.push(Operation::RemovePeer(*key));
            }
        }
        for (key, wanted) in &desired.peers {
            let new_endpoint = match current.peers.get(key) {
                None => {
                    ops.push(Operation::AddPeer(wanted.clone()));
                    wanted.endpoint.is_some()
                }
                Some(existing) => {
                    let update = peer_update(observed, existing, wanted, &mut plan.kept_endpoints);
                    let new_endpoint = update.endpoint.is_some();
                    if !update.is_empty() {
                        ops.push(Operation::UpdatePeer(update));
                    }
                    new_endpoint
                }
            };
            if new_endpoint && let Some(address) = handshake_address(&wanted.allowed_ips) {
                plan.handshakes.push(HandshakeStart { public_key: *key, address });
            }
        }

        if current.tunnel_address != desired.tunnel_address {
            ops.push(Operation::SetTunnelAddress(desired.tunnel_address));
        }
        ops.extend(additions);
        for rule in desired.rules.difference(&current.rules) {
            ops.push(Operation::AddRule(*rule));
        }
        for family in [Family::Ipv4, Family::Ipv6] {
            let edit = FirewallEdit::between(&current.firewall, &observed.firewall_layout, &desired.firewall, family);
            ops.extend(edit.map(Operation::EditFirewall));
        }
        plan
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// The state that results from applying this plan to `state`: the semantics every
    /// [`Dataplane`](crate::backend::Dataplane) implements, and what the in-memory fake does.
    pub fn apply_to(&self, state: &DataplaneState) -> DataplaneState {
        let mut next = state.clone();
        // Route changes are applied together, in order, so a plan of thousands stays linear.
        let mut route_changes = Vec::new();
        for operation in &self.operations {
            match operation {
                Operation::DeleteRule(rule) => {
                    next.rules.remove(rule);
                }
                Operation::DeleteRoute(route) => route_changes.push((route.key(), None)),
                Operation::SetMtu(mtu) => next.interface.mtu = Some(*mtu),
                Operation::RemoveAddress(address) => {
                    next.interface.addresses.remove(address);
                }
                Operation::AddAddress(address) => {
                    next.interface.addresses.insert(*address);
                }
                Operation::SetLinkUp(up) => next.interface.up = *up,
                Operation::SetListenPort(port) => next.interface.listen_port = Some(*port),
                Operation::RemovePeer(key) => {
                    next.peers.remove(key);
                }
                Operation::UpdatePeer(update) => {
                    if let Some(peer) = next.peers.get_mut(&update.public_key) {
                        if let Some(endpoint) = update.endpoint {
                            peer.endpoint = Some(endpoint);
                        }
                        if let Some(allowed_ips) = &update.allowed_ips {
                            peer.allowed_ips.clone_from(allowed_ips);
                        }
                        if let Some(keepalive) = update.persistent_keepalive {
                            peer.persistent_keepalive = keepalive;
                        }
                        if let Some(psk) = update.preshared_key {
                            peer.preshared_key = psk;
                        }
                    }
                }
                Operation::AddPeer(peer) => {
                    next.peers.insert(peer.public_key, peer.clone());
                }
                Operation::SetTunnelAddress(address) => next.tunnel_address = *address,
                Operation::AddRoute(route) | Operation::ReplaceRoute(route) => {
                    route_changes.push((route.key(), Some(*route)));
                }
                Operation::AddRule(rule) => {
                    next.rules.insert(*rule);
                }
                Operation::EditFirewall(edit) => next.firewall.apply(edit),
            }
        }
        next.routes.apply(route_changes);
        next
    }
}

/// Walks two route sets together, both sorted by key: `(Some, None)` only on the left,
/// `(None, Some)` only on the right, `(Some, Some)` in both.
fn merge<'a>(left: &'a Routes, right: &'a Routes) -> impl Iterator<Item = (Option<&'a Route>, Option<&'a Route>)> {
    let mut left = left.iter().peekable();
    let mut right = right.iter().peekable();
    std::iter::from_fn(move || match (left.peek(), right.peek()) {
        (None, None) => None,
        (Some(_), None) => left.next().map(|l| (Some(l), None)),
        (None, Some(_)) => right.next().map(|r| (None, Some(r))),
        (Some(l), Some(r)) => match l.key().order().cmp(&r.key().order()) {
            std::cmp::Ordering::Less => left.next().map(|l| (Some(l), None)),
            std::cmp::Ordering::Greater => right.next().map(|r| (None, Some(r))),
            std::cmp::Ordering::Equal => Some((left.next(), right.next())),
        },
    })
}

/// An address of the most specific of `allowed_ips` (IPv4 first: the WireGuard IP, or the node's
/// internal IP, is a host route), or `None` when the peer has no allowed IP but a default route
/// (`0.0.0.0/0`, `::/0`): no address of it is both sendable and only this peer's, and WireGuard
/// handshakes with such a peer on its first packet.
fn handshake_address(allowed_ips: &BTreeSet<IpNet>) -> Option<IpAddr> {
    let most_specific = allowed_ips
        .iter()
        .filter(|net| net.prefix_len() > 0)
        .min_by_key(|net| (net.addr().is_ipv6(), u8::MAX - net.prefix_len()))?;
    most_specific.hosts().next().or(Some(most_specific.network()))
}

fn peer_update(
    observed: &ObservedState,
    existing: &WireGuardPeer,
    wanted: &WireGuardPeer,
    kept: &mut Vec<KeptEndpoint>,
) -> PeerUpdate {
    let mut update = PeerUpdate::new(wanted.public_key);
    match (existing.endpoint, wanted.endpoint) {
        (Some(current), configured) if Some(current) != configured => {
            let reason = if configured.is_none() {
                Some(KeepReason::NoneConfigured)
            } else {
                let last_handshake = observed.peer_stats.get(&wanted.public_key).and_then(|stats| stats.last_handshake);
                last_handshake
                    .filter(|at| observed.observed_at.saturating_sub(*at) < ROAMING_GRACE_SECONDS)
                    .map(|_| KeepReason::Roamed)
            };
            match reason {
                Some(reason) => kept.push(KeptEndpoint { public_key: wanted.public_key, current, configured, reason }),
                None => update.endpoint = configured,
            }
        }
        (None, Some(configured)) => update.endpoint = Some(configured),
        _ => {}
    }
    if existing.allowed_ips != wanted.allowed_ips {
        update.allowed_ips = Some(wanted.allowed_ips.clone());
    }
    if existing.persistent_keepalive != wanted.persistent_keepalive {
        update.persistent_keepalive = Some(wanted.persistent_keepalive);
    }
    if existing.preshared_key != wanted.preshared_key {
        update.preshared_key = Some(wanted.preshared_key);
    }
    update
}
