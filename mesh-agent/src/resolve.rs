//! The resolution of DNS endpoints before each reconcile (§4.8 of the reference): the one
//! part of the local node's inputs that needs the network.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::IpAddr;

use mesh_core::{ClusterSnapshot, Endpoint, Host, ObjectKind, Warning};

/// Looks up DNS names. Injectable so tests (and embedders) need no network.
#[async_trait::async_trait]
pub trait Resolver: Send + Sync {
    /// Every address `name` resolves to, in the resolver's order of preference. `port` is the
    /// endpoint's port (resolvers may ignore it).
    async fn lookup(&self, name: &str, port: u16) -> io::Result<Vec<IpAddr>>;
}

/// The system resolver (`getaddrinfo` through [`tokio::net::lookup_host`]: `/etc/hosts`, then
/// DNS, as `/etc/nsswitch.conf` says).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

#[async_trait::async_trait]
impl Resolver for SystemResolver {
    async fn lookup(&self, name: &str, port: u16) -> io::Result<Vec<IpAddr>> {
        Ok(tokio::net::lookup_host((name, port)).await?.map(|address| address.ip()).collect())
    }
}

/// The resolver and the last successful resolution of each name, kept across reconciles.
pub struct ResolverCache {
    resolver: Box<dyn Resolver>,
    last: BTreeMap<String, IpAddr>,
}

impl ResolverCache {
    /// A cache over the [`SystemResolver`].
    pub fn new() -> Self {
        ResolverCache::with_resolver(SystemResolver)
    }

    /// A cache over `resolver`.
    pub fn with_resolver(resolver: impl Resolver + 'static) -> Self {
        ResolverCache { resolver: Box::new(resolver), last: BTreeMap::new() }
    }

    /// The address `name` last resolved to.
    pub fn last_resolution(&self, name: &str) -> Option<IpAddr> {
        self.last.get(name).copied()
    }
}

impl Default for ResolverCache {
    fn default() -> Self {
        ResolverCache::new()
    }
}

impl fmt::Debug for ResolverCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolverCache").field("last", &self.last).finish_non_exhaustive()
    }
}

/// The address Go's `net.ResolveUDPAddr("udp", "name:port")` picks: the first IPv4 address,
/// else the first address.
pub fn preferred_address(addresses: &[IpAddr]) -> Option<IpAddr> {
    addresses.iter().find(|ip| ip.is_ipv4()).or(addresses.first()).copied()
}

/// Resolves the DNS endpoint of every ready node and every ready peer of the snapshot into
/// [`Host::Dns`]`{ resolved }`, each distinct name once, concurrently, and returns a warning per
/// object whose name did not resolve.
///
/// Kilo aborts the whole reconcile when one name does not resolve. Here a failure only affects
/// the objects with that name: they keep the name's last successful resolution (from `cache`),
/// or, if it never resolved, stay unresolved (WireGuard gets no endpoint for them; leader
/// election counts them as not public). Objects that are not ready are left alone, as in Kilo.
/// The cache forgets names no object of the snapshot uses any more.
pub async fn resolve_endpoints(snapshot: &mut ClusterSnapshot, cache: &mut ResolverCache) -> Vec<Warning> {
    let now = snapshot.now;
    let node_endpoints = snapshot
        .nodes
        .iter_mut()
        .filter(|node| node.readiness(now).is_ok())
        .filter_map(|node| Some((ObjectKind::Node, node.name.as_str(), node.endpoint.as_mut()?)));
    let peer_endpoints = snapshot
        .peers
        .iter_mut()
        .filter(|peer| peer.readiness().is_ok())
        .filter_map(|peer| Some((ObjectKind::Peer, peer.name.as_str(), peer.endpoint.as_mut()?)));
    let mut targets: Vec<(ObjectKind, &str, &mut Endpoint)> = node_endpoints
        .chain(peer_endpoints)
        .filter(|(_, _, endpoint)| matches!(endpoint.host, Host::Dns { .. }))
        .collect();

    let mut names: BTreeMap<String, u16> = BTreeMap::new();
    for (_, _, endpoint) in &targets {
        if let Host::Dns { name, .. } = &endpoint.host {
            names.entry(name.clone()).or_insert(endpoint.port);
        }
    }
    let resolver = &*cache.resolver;
    let lookups = names.iter().map(|(name, port)| async move {
        let outcome = match resolver.lookup(name, *port).await {
            Ok(addresses) => preferred_address(&addresses).ok_or_else(|| "no addresses".to_owned()),
            Err(error) => Err(error.to_string()),
        };
        (name.clone(), outcome)
    });
    let outcomes: BTreeMap<String, Result<IpAddr, String>> =
        futures::future::join_all(lookups).await.into_iter().collect();
    for (name, outcome) in &outcomes {
        if let Ok(ip) = outcome {
            cache.last.insert(name.clone(), *ip);
        }
    }

    let mut warnings = Vec::new();
    for (kind, object, endpoint) in &mut targets {
        let value = endpoint.to_string();
        let Host::Dns { name, resolved } = &mut endpoint.host else { continue };
        match &outcomes[name.as_str()] {
            Ok(ip) => *resolved = Some(*ip),
            Err(error) => {
                *resolved = cache.last.get(name.as_str()).copied();
                let consequence = match resolved {
                    Some(ip) => format!("using its last address {ip}"),
                    None => "the endpoint stays unresolved (no WireGuard endpoint) until a lookup succeeds".to_owned(),
                };
                warnings.push(Warning {
                    kind: *kind,
                    name: (*object).to_owned(),
                    annotation: None,
                    value: Some(value),
                    reason: format!("failed to resolve {name}: {error}; {consequence}"),
                });
            }
        }
    }

    let used: BTreeSet<&str> = snapshot
        .nodes
        .iter()
        .filter_map(|node| node.endpoint.as_ref()?.dns_name())
        .chain(snapshot.peers.iter().filter_map(|peer| peer.endpoint.as_ref()?.dns_name()))
        .collect();
    cache.last.retain(|name, _| used.contains(name.as_str()));
    warnings
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use mesh_core::{Key, NodeSpec, PeerSpec};

    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn net(text: &str) -> ipnet::IpNet {
        text.parse().unwrap()
    }

    fn endpoint(text: &str) -> Endpoint {
        text.parse().unwrap()
    }

    fn key(byte: u8) -> Key {
        Key::from_bytes([byte; 32])
    }

    type Answers = BTreeMap<String, Result<Vec<IpAddr>, String>>;

    /// A resolver answering from a table; records the names it was asked for.
    #[derive(Clone, Default)]
    struct FakeResolver {
        answers: Arc<Mutex<Answers>>,
        lookups: Arc<Mutex<Vec<String>>>,
    }

    impl FakeResolver {
        fn answer(&self, name: &str, answer: Result<&[&str], &str>) {
            let answer =
                answer.map(|ips| ips.iter().map(|ip| ip.parse().unwrap()).collect()).map_err(ToOwned::to_owned);
            self.answers.lock().unwrap().insert(name.to_owned(), answer);
        }
    }

    #[async_trait::async_trait]
    impl Resolver for FakeResolver {
        async fn lookup(&self, name: &str, _port: u16) -> io::Result<Vec<IpAddr>> {
            self.lookups.lock().unwrap().push(name.to_owned());
            match self.answers.lock().unwrap().get(name) {
                Some(Ok(ips)) => Ok(ips.clone()),
                Some(Err(error)) => Err(io::Error::other(error.clone())),
                None => Err(io::Error::other("failed to lookup address information: Name or service not known")),
            }
        }
    }

    fn ready_node(name: &str, endpoint_text: &str) -> NodeSpec {
        NodeSpec {
            name: name.to_owned(),
            endpoint: Some(endpoint(endpoint_text)),
            key: Some(key(name.len() as u8)),
            pod_subnet: Some(net("10.2.0.0/24")),
            last_seen: Some(NOW),
            ..NodeSpec::default()
        }
    }

    fn ready_peer(name: &str, endpoint_text: Option<&str>) -> PeerSpec {
        PeerSpec {
            name: name.to_owned(),
            allowed_ips: vec![net("10.5.0.1/32")],
            public_key: Some(key(42)),
            endpoint: endpoint_text.map(endpoint),
            ..PeerSpec::default()
        }
    }

    fn resolved_ip(endpoint: &Option<Endpoint>) -> Option<IpAddr> {
        match &endpoint.as_ref()?.host {
            Host::Dns { resolved, .. } => *resolved,
            Host::Ip(_) => panic!("not a DNS endpoint"),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn resolves_nodes_and_peers_preferring_ipv4() {
        let resolver = FakeResolver::default();
        resolver.answer("a.example.com", Ok(&["2001:db8::1", "192.0.2.1", "192.0.2.2"]));
        resolver.answer("v6.example.com", Ok(&["2001:db8::6"]));
        let mut snapshot = ClusterSnapshot {
            nodes: vec![
                ready_node("node-a", "a.example.com:51820"),
                ready_node("node-b", "a.example.com:51821"),
                ready_node("node-c", "198.51.100.3:51820"),
            ],
            peers: vec![ready_peer("peer-a", Some("v6.example.com:51820")), ready_peer("peer-b", None)],
            now: NOW,
        };
        let mut cache = ResolverCache::with_resolver(resolver.clone());
        let warnings = resolve_endpoints(&mut snapshot, &mut cache).await;
        assert_eq!(warnings, vec![]);
        assert_eq!(resolved_ip(&snapshot.nodes[0].endpoint), Some(ip("192.0.2.1")));
        assert_eq!(resolved_ip(&snapshot.nodes[1].endpoint), Some(ip("192.0.2.1")));
        assert_eq!(
            snapshot.nodes[1].endpoint.as_ref().unwrap().socket_addr(),
            Some("192.0.2.1:51821".parse().unwrap())
        );
        assert_eq!(snapshot.nodes[2].endpoint, Some(endpoint("198.51.100.3:51820")));
        assert_eq!(resolved_ip(&snapshot.peers[0].endpoint), Some(ip("2001:db8::6")));
        assert_eq!(snapshot.peers[1].endpoint, None);
        // Each name once.
        assert_eq!(*resolver.lookups.lock().unwrap(), ["a.example.com", "v6.example.com"]);
        assert_eq!(cache.last_resolution("a.example.com"), Some(ip("192.0.2.1")));
    }

    #[tokio::test]
    async fn a_failure_keeps_the_last_resolution_and_warns() {
        let resolver = FakeResolver::default();
        resolver.answer("gw.example.com", Ok(&["192.0.2.10"]));
        let mut cache = ResolverCache::with_resolver(resolver.clone());
        let snapshot = ClusterSnapshot {
            nodes: vec![ready_node("node-a", "gw.example.com:51820"), ready_node("node-b", "ok.example.com:51820")],
            peers: vec![],
            now: NOW,
        };
        resolver.answer("ok.example.com", Ok(&["192.0.2.20"]));
        let mut first = snapshot.clone();
        assert_eq!(resolve_endpoints(&mut first, &mut cache).await, vec![]);

        // The name's address changes: the next pass picks it up.
        resolver.answer("gw.example.com", Ok(&["192.0.2.11"]));
        let mut second = snapshot.clone();
        assert_eq!(resolve_endpoints(&mut second, &mut cache).await, vec![]);
        assert_eq!(resolved_ip(&second.nodes[0].endpoint), Some(ip("192.0.2.11")));

        // Now the lookup fails: the last address stays, with a warning; the other node is unaffected.
        resolver.answer("gw.example.com", Err("temporary failure in name resolution"));
        let mut third = snapshot.clone();
        let warnings = resolve_endpoints(&mut third, &mut cache).await;
        assert_eq!(resolved_ip(&third.nodes[0].endpoint), Some(ip("192.0.2.11")));
        assert_eq!(resolved_ip(&third.nodes[1].endpoint), Some(ip("192.0.2.20")));
        assert_eq!(
            warnings,
            vec![Warning {
                kind: ObjectKind::Node,
                name: "node-a".to_owned(),
                annotation: None,
                value: Some("gw.example.com:51820".to_owned()),
                reason: "failed to resolve gw.example.com: temporary failure in name resolution; \
                         using its last address 192.0.2.11"
                    .to_owned(),
            }]
        );
    }

    #[tokio::test]
    async fn a_name_that_never_resolved_stays_unresolved_and_warns() {
        let resolver = FakeResolver::default();
        resolver.answer("empty.example.com", Ok(&[]));
        let mut cache = ResolverCache::with_resolver(resolver);
        let mut snapshot = ClusterSnapshot {
            nodes: vec![ready_node("node-a", "nx.example.com:51820")],
            peers: vec![ready_peer("peer-a", Some("empty.example.com:4000"))],
            now: NOW,
        };
        let warnings = resolve_endpoints(&mut snapshot, &mut cache).await;
        assert_eq!(resolved_ip(&snapshot.nodes[0].endpoint), None);
        assert_eq!(snapshot.nodes[0].endpoint.as_ref().unwrap().socket_addr(), None);
        assert_eq!(resolved_ip(&snapshot.peers[0].endpoint), None);
        let reasons: Vec<(ObjectKind, &str, &str)> =
            warnings.iter().map(|w| (w.kind, w.name.as_str(), w.reason.as_str())).collect();
        assert_eq!(
            reasons,
            [
                (
                    ObjectKind::Node,
                    "node-a",
                    "failed to resolve nx.example.com: failed to lookup address information: Name or service not \
                     known; the endpoint stays unresolved (no WireGuard endpoint) until a lookup succeeds"
                ),
                (
                    ObjectKind::Peer,
                    "peer-a",
                    "failed to resolve empty.example.com: no addresses; the endpoint stays unresolved (no \
                     WireGuard endpoint) until a lookup succeeds"
                ),
            ]
        );
        assert_eq!(cache.last_resolution("nx.example.com"), None);
    }

    #[tokio::test]
    async fn objects_that_are_not_ready_are_not_resolved() {
        let resolver = FakeResolver::default();
        resolver.answer("gw.example.com", Ok(&["192.0.2.1"]));
        let stale = NodeSpec { last_seen: Some(NOW - 600), ..ready_node("node-a", "gw.example.com:51820") };
        let keyless = PeerSpec { public_key: None, ..ready_peer("peer-a", Some("gw.example.com:1")) };
        let mut snapshot = ClusterSnapshot { nodes: vec![stale], peers: vec![keyless], now: NOW };
        let mut cache = ResolverCache::with_resolver(resolver.clone());
        assert_eq!(resolve_endpoints(&mut snapshot, &mut cache).await, vec![]);
        assert_eq!(resolved_ip(&snapshot.nodes[0].endpoint), None);
        assert_eq!(resolved_ip(&snapshot.peers[0].endpoint), None);
        assert!(resolver.lookups.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_cache_forgets_names_nobody_uses() {
        let resolver = FakeResolver::default();
        resolver.answer("old.example.com", Ok(&["192.0.2.1"]));
        resolver.answer("new.example.com", Ok(&["192.0.2.2"]));
        let mut cache = ResolverCache::with_resolver(resolver);
        let mut snapshot =
            ClusterSnapshot { nodes: vec![ready_node("node-a", "old.example.com:51820")], peers: vec![], now: NOW };
        resolve_endpoints(&mut snapshot, &mut cache).await;
        assert_eq!(cache.last_resolution("old.example.com"), Some(ip("192.0.2.1")));

        // A node that is not ready keeps its name in the cache...
        snapshot.nodes[0].last_seen = None;
        resolve_endpoints(&mut snapshot, &mut cache).await;
        assert_eq!(cache.last_resolution("old.example.com"), Some(ip("192.0.2.1")));
        // ...a name no object uses is forgotten.
        let mut snapshot =
            ClusterSnapshot { nodes: vec![ready_node("node-a", "new.example.com:51820")], peers: vec![], now: NOW };
        resolve_endpoints(&mut snapshot, &mut cache).await;
        assert_eq!(cache.last_resolution("old.example.com"), None);
        assert_eq!(cache.last_resolution("new.example.com"), Some(ip("192.0.2.2")));
        assert!(format!("{cache:?}").contains("new.example.com"));
    }

    #[tokio::test]
    async fn the_system_resolver_resolves_localhost_without_the_network() {
        // `localhost` is in /etc/hosts; `files` comes before `dns` in nsswitch.conf.
        let addresses = SystemResolver.lookup("localhost", 51820).await.unwrap();
        assert!(!addresses.is_empty());
        assert!(addresses.iter().all(IpAddr::is_loopback), "{addresses:?}");
        let mut snapshot =
            ClusterSnapshot { nodes: vec![ready_node("node-a", "localhost:51820")], peers: vec![], now: NOW };
        let mut cache = ResolverCache::new();
        assert_eq!(resolve_endpoints(&mut snapshot, &mut cache).await, vec![]);
        assert_eq!(resolved_ip(&snapshot.nodes[0].endpoint), Some(ip("127.0.0.1")));
    }

    #[test]
    fn preferred_address_is_gos_choice() {
        assert_eq!(preferred_address(&[]), None);
        assert_eq!(preferred_address(&[ip("2001:db8::1")]), Some(ip("2001:db8::1")));
        assert_eq!(preferred_address(&[ip("2001:db8::1"), ip("192.0.2.9"), ip("192.0.2.1")]), Some(ip("192.0.2.9")));
    }
}
