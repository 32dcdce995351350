//! [`LinuxDataplane`]: mesh-core's [`Dataplane`] on Linux.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::SystemTime;

use ipnet::IpNet;
use mesh_core::backend::{BackendError, Dataplane};
use mesh_core::firewall::{Family, Firewall, FirewallEdit, FirewallLayout};
use mesh_core::state::{DataplaneState, InterfaceState};
use mesh_core::{Compatibility, Dev, DeviceNames, Key, ObservedState, Operation, Plan, Route, RouteKey, Routes, Rule};
use nix::libc;
use rtnetlink::Handle;
use wireguard_control::DeviceUpdate;

use crate::error::{Error, Result, RouteConflict};
use crate::firewall;
use crate::handshake;
use crate::link::{self, Link};
use crate::netns::Namespace;
use crate::route::{self, ROUTE_PROTOCOL};
use crate::rule;
use crate::tunnel;
use crate::wireguard::{self, WireGuard, WireGuardBackend};

/// How the data plane is set up: Kilo's flags that concern the node's devices.
#[derive(Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// The WireGuard interface (`--interface`, default `kilo0`).
    pub interface: String,
    /// The interface that holds the node's private IP (`Dev::Private`); `None` for a node
    /// without one.
    pub private_interface: Option<String>,
    /// `--compatibility`: which tunnel device `Dev::Tunnel` is, and whether it is ours.
    pub compatibility: Compatibility,
    /// The node's WireGuard private key, set on the device when the interface is ensured.
    /// Never logged: this type's `Debug` redacts it.
    pub private_key: Key,
    /// `--wireguard-backend`.
    pub backend: WireGuardBackend,
    /// `--create-interface`: create the WireGuard link (kernel backend) when it is missing.
    pub create_interface: bool,
    /// `--clean-up-interface`: delete the WireGuard interface in [`Dataplane::clean_up`].
    pub clean_up_interface: bool,
    /// The network namespace to operate in.
    pub namespace: Namespace,
}

impl DataplaneConfig {
    /// Kilo's defaults (`kilo0`, no compatibility mode, `--create-interface=true`,
    /// `--clean-up-interface=false`), the automatic backend and the current namespace.
    pub fn new(private_key: Key) -> Self {
        DataplaneConfig {
            interface: "kilo0".to_owned(),
            private_interface: None,
            compatibility: Compatibility::None,
            private_key,
            backend: WireGuardBackend::Auto,
            create_interface: true,
            clean_up_interface: false,
            namespace: Namespace::Current,
        }
    }

    /// The interface names for the device symbols (`(none)` for a missing private interface).
    pub fn device_names(&self) -> DeviceNames {
        DeviceNames {
            kilo: self.interface.clone(),
            private: self.private_interface.clone().unwrap_or_else(|| "(none)".to_owned()),
            tunnel: self.compatibility.tunnel_device().to_owned(),
        }
    }
}

impl fmt::Debug for DataplaneConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataplaneConfig")
            .field("interface", &self.interface)
            .field("private_interface", &self.private_interface)
            .field("compatibility", &self.compatibility)
            .field("private_key", &"<redacted>")
            .field("backend", &self.backend)
            .field("create_interface", &self.create_interface)
            .field("clean_up_interface", &self.clean_up_interface)
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// The Linux data plane: rtnetlink for links, addresses, routes and rules, wireguard-control for
/// WireGuard, `iptables-restore` for the firewall.
///
/// It writes only what a [`Plan`] asks for, so a steady state costs reads only: [`writes`]
/// counts every kernel write (netlink change request, WireGuard set, `iptables-restore` run).
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use mesh_core::backend::Dataplane;
/// use mesh_netlink::{DataplaneConfig, LinuxDataplane, WireGuardBackend};
/// # let (key, desired) = (mesh_core::Key::from_bytes([1; 32]), mesh_core::DesiredState::default());
/// let mut config = DataplaneConfig::new(key);
/// config.private_interface = Some("eth0".into());
/// config.backend = "userspace".parse::<WireGuardBackend>()?;
/// let mut dataplane = LinuxDataplane::new(config).await?;
/// let observed = dataplane.observe().await?;
/// dataplane.apply(&mesh_core::Plan::between(&observed, &desired)).await?;
/// # Ok(()) }
/// ```
///
/// [`writes`]: LinuxDataplane::writes
pub struct LinuxDataplane {
    config: DataplaneConfig,
    names: DeviceNames,
    backend: WireGuardBackend,
    handle: Handle,
    wireguard: WireGuard,
    writes: u64,
    /// The interface exists and holds our private key (so no need to check before a change).
    interface_ready: bool,
    /// We created the tunnel device (so clean-up deletes it).
    tunnel_created: bool,
    /// Places (table and destination) of wanted routes last found held by a route that is not
    /// the mesh's.
    foreign_routes: HashSet<RouteKey>,
    /// The routes the last apply through [`Dataplane::apply`] left out for a route that is not
    /// the mesh's.
    conflicts: Vec<RouteConflict>,
}

impl fmt::Debug for LinuxDataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinuxDataplane")
            .field("config", &self.config)
            .field("backend", &self.backend())
            .field("writes", &self.writes)
            .finish_non_exhaustive()
    }
}

/// Per-apply cache of links by name: a plan of 10,000 routes looks its devices up once.
#[derive(Default)]
struct Links(HashMap<String, Option<Link>>);

impl LinuxDataplane {
    /// Connects to the kernel (in the configured namespace) and resolves the WireGuard backend.
    /// Must be called inside a Tokio runtime: the rtnetlink connection runs as a task.
    pub async fn new(config: DataplaneConfig) -> Result<Self> {
        let namespace = config.namespace.clone();
        let (connection, handle, _) = namespace
            .enter(rtnetlink::new_connection)?
            .map_err(|source| Error::netlink(format!("open an rtnetlink socket in {namespace}"), source))?;
        tokio::spawn(connection);
        let requested = config.backend;
        let backend = namespace.run_blocking(move || requested.resolve()).await?;
        let wireguard = WireGuard::new(&config.interface, backend)
            .map_err(|source| Error::wireguard(format!("use WireGuard interface {}", config.interface), source))?;
        Ok(LinuxDataplane {
            names: config.device_names(),
            backend,
            config,
            handle,
            wireguard,
            writes: 0,
            interface_ready: false,
            tunnel_created: false,
            foreign_routes: HashSet::new(),
            conflicts: Vec::new(),
        })
    }

    /// How many kernel writes this data plane has made: netlink change requests, WireGuard
    /// updates and `iptables-restore` runs. A steady-state pass adds none.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// The WireGuard backend in use (`Kernel` or `Userspace`, never `Auto`).
    pub fn backend(&self) -> WireGuardBackend {
        self.backend
    }

    /// The configuration.
    pub fn config(&self) -> &DataplaneConfig {
        &self.config
    }

    /// Reads what the mesh owns (see [`Dataplane::observe`]).
    pub async fn observe_state(&mut self) -> Result<ObservedState> {
        let mut state = DataplaneState::default();
        let mut peer_stats = BTreeMap::new();

        let kilo = self.link(&self.names.kilo.clone()).await?;
        self.interface_ready = false;
        if let Some(kilo) = &kilo {
            let addresses = link::addresses(&self.handle, kilo.index)
                .await
                .map_err(|source| Error::netlink(format!("list addresses of {}", kilo.name), source))?;
            let device = self.read_device().await?;
            self.interface_ready = device.private_key == Some(self.config.private_key);
            state.interface = InterfaceState {
                up: kilo.up,
                addresses: addresses.into_iter().map(|address| address.net).collect(),
                mtu: kilo.mtu,
                listen_port: device.listen_port,
            };
            state.peers = device.peers;
            peer_stats = device.stats;
        }

        let private = match &self.config.private_interface {
            Some(name) => self.link(name).await?,
            None => None,
        };
        let tunnel = self.link(&self.names.tunnel.clone()).await?;
        if let Some(tunnel) = &tunnel
            && self.config.compatibility.uses_ipip()
        {
            state.tunnel_address = self.tunnel_addresses(tunnel).await?.into_iter().next();
        }

        let index_of = |link: &Option<Link>| link.as_ref().map(|link| link.index);
        let (kilo_index, private_index, tunnel_index) = (index_of(&kilo), index_of(&private), index_of(&tunnel));
        let dev_of = |index: u32| {
            if Some(index) == kilo_index {
                Some(Dev::Kilo)
            } else if Some(index) == private_index {
                Some(Dev::Private)
            } else if Some(index) == tunnel_index {
                Some(Dev::Tunnel)
            } else {
                None
            }
        };
        let routes = route::ours(&self.handle).await.map_err(|source| Error::netlink("list routes", source))?;
        state.routes = routes.iter().filter_map(|message| route::to_route(message, dev_of)).collect::<Routes>();

        let names = &self.names;
        let has_private = self.config.private_interface.is_some();
        let dev_named = |name: &str| {
            if name == names.kilo {
                Some(Dev::Kilo)
            } else if has_private && name == names.private {
                Some(Dev::Private)
            } else if name == names.tunnel {
                Some(Dev::Tunnel)
            } else {
                None
            }
        };
        let rules = rule::ours(&self.handle).await.map_err(|source| Error::netlink("list rules", source))?;
        state.rules = rules.iter().filter_map(|message| rule::to_rule(message, dev_named)).collect();

        let mut firewall_layout = FirewallLayout::default();
        for family in [Family::Ipv4, Family::Ipv6] {
            let dump = firewall::save(&self.config.namespace, family).await?;
            firewall::Saved::parse(family, &dump).add_to(&mut state.firewall, &mut firewall_layout);
        }
        state.firewall.canonicalize();

        let observed_at = mesh_core::time::unix_seconds(SystemTime::now());
        Ok(ObservedState { state, peer_stats, observed_at, firewall_layout })
    }

    /// Applies the plan's operations in order (see [`Dataplane::apply`]).
    ///
    /// A route whose place is held by a route that is not the mesh's is left out, and the other
    /// routes applied; such routes are reported together as [`Error::RouteConflicts`].
    ///
    /// One failing part of the data plane must not take the node out of the mesh: when an
    /// operation fails, the rest of its part (interface, peers, tunnel, routes and rules,
    /// firewall) is skipped, as order matters within a part, and the other parts are still
    /// applied. A firewall that cannot be written costs neither
    /// WireGuard peers nor routes. Every failure is returned, in order; the caller retries
    /// what is left with the next plan.
    pub async fn apply_plan(&mut self, plan: &Plan) -> Result<()> {
        let mut links = Links::default();
        let mut failed: Vec<(Part, Error)> = Vec::new();
        let mut conflicts = Vec::new();
        for operation in &plan.operations {
            let part = Part::of(operation);
            if failed.iter().any(|(failed, _)| *failed == part) {
                continue;
            }
            match self.apply_operation(operation, &mut links).await {
                Ok(()) => {}
                Err(Error::RouteConflicts(found)) => conflicts.extend(found),
                Err(error) => failed.push((part, error)),
            }
        }
        if !conflicts.is_empty() {
            failed.push((Part::RoutesAndRules, Error::RouteConflicts(conflicts)));
        }
        if !plan.handshakes.is_empty() && !failed.iter().any(|(part, _)| *part == Part::Peers) {
            self.start_handshakes(plan);
        }
        match failed.len() {
            0 => Ok(()),
            1 => Err(failed.remove(0).1),
            _ => Err(Error::PartlyApplied { failures: failed.into_iter().map(|(_, error)| error).collect() }),
        }
    }

    /// Starts the plan's handshakes ([`Plan::handshakes`]). A handshake that cannot be started
    /// is not an error of the plan: WireGuard still starts it with the first packet for the
    /// peer, so it is only logged.
    fn start_handshakes(&self, plan: &Plan) {
        let kilo = &self.names.kilo;
        match handshake::start(&self.config.namespace, kilo, &plan.handshakes) {
            Ok(failures) => {
                for (start, error) in failures {
                    tracing::warn!(peer = %start.public_key, address = %start.address, %error,
                        "could not start a WireGuard handshake through {kilo}; it starts with the peer's first packet");
                }
            }
            Err(error) => tracing::warn!(%error, "could not start WireGuard handshakes through {kilo}"),
        }
    }

    /// Makes sure the WireGuard interface exists (creating it when allowed) and holds the
    /// node's private key. Kilo does this at start-up; [`apply_plan`](Self::apply_plan) does it
    /// before the first change to the interface.
    pub async fn ensure_interface(&mut self) -> Result<()> {
        self.ensured_interface(&mut Links::default()).await.map(drop)
    }

    /// Removes everything the mesh created (see [`Dataplane::clean_up`]). Every step is tried;
    /// the first failure is returned.
    pub async fn clean_up_owned(&mut self) -> Result<()> {
        let mut first_error = None;
        let mut keep = |result: Result<()>| {
            if let Err(error) = result
                && first_error.is_none()
            {
                first_error = Some(error);
            }
        };
        keep(self.clean_up_firewall().await);
        keep(self.clean_up_routes_and_rules().await);
        keep(self.clean_up_tunnel().await);
        if self.config.clean_up_interface {
            keep(self.delete_interface().await);
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn apply_operation(&mut self, operation: &Operation, links: &mut Links) -> Result<()> {
        let kilo = self.names.kilo.clone();
        match operation {
            Operation::DeleteRule(rule) => {
                let message = rule::delete_message(rule, rule.iif.map(|dev| self.names.name(dev)));
                self.writes += 1;
                tolerate(rule::delete(&self.handle, message).await, libc::ENOENT)
                    .map_err(|source| Error::netlink(format!("delete rule {}", self.rule_text(rule)), source))
            }
            Operation::DeleteRoute(route) => {
                let message = route::delete_message(route)
                    .map_err(|source| Error::netlink(format!("delete route {}", self.route_text(route)), source))?;
                self.writes += 1;
                tolerate(route::delete(&self.handle, message).await, libc::ESRCH)
                    .map_err(|source| Error::netlink(format!("delete route {}", self.route_text(route)), source))
            }
            Operation::SetMtu(mtu) => {
                let link = self.ensured_interface(links).await?;
                self.writes += 1;
                link::set_mtu(&self.handle, link.index, *mtu)
                    .await
                    .map_err(|source| Error::netlink(format!("set mtu {mtu} on {kilo}"), source))
            }
            Operation::RemoveAddress(address) => {
                let Some(link) = self.cached_link(links, &kilo).await? else { return Ok(()) };
                self.writes += 1;
                tolerate(link::delete_address(&self.handle, link.index, *address).await, libc::EADDRNOTAVAIL)
                    .map_err(|source| Error::netlink(format!("remove address {address} from {kilo}"), source))
            }
            Operation::AddAddress(address) => {
                let link = self.ensured_interface(links).await?;
                self.writes += 1;
                link::add_address(&self.handle, link.index, *address, None)
                    .await
                    .map_err(|source| Error::netlink(format!("add address {address} to {kilo}"), source))
            }
            Operation::SetLinkUp(up) => {
                let link = self.ensured_interface(links).await?;
                self.writes += 1;
                link::set_up(&self.handle, link.index, *up).await.map_err(|source| {
                    Error::netlink(format!("set {kilo} {}", if *up { "up" } else { "down" }), source)
                })?;
                links.0.remove(&kilo);
                Ok(())
            }
            Operation::SetListenPort(port) => {
                self.ensured_interface(links).await?;
                self.configure(wireguard::set_listen_port(*port), format!("set listen port {port} on {kilo}")).await
            }
            Operation::RemovePeer(key) => {
                self.ensured_interface(links).await?;
                self.configure(wireguard::remove_peer(key), format!("remove WireGuard peer {key} from {kilo}")).await
            }
            Operation::UpdatePeer(update) => {
                self.ensured_interface(links).await?;
                self.configure(
                    wireguard::update_peer(update),
                    format!("update WireGuard peer {} on {kilo}", update.public_key),
                )
                .await
            }
            Operation::AddPeer(peer) => {
                self.ensured_interface(links).await?;
                self.configure(wireguard::add_peer(peer), format!("add WireGuard peer {} to {kilo}", peer.public_key))
                    .await
            }
            Operation::SetTunnelAddress(address) => self.set_tunnel_address(*address, links).await,
            Operation::AddRoute(route) => self.install_route(route, "add", links).await,
            Operation::ReplaceRoute(route) => self.install_route(route, "replace", links).await,
            Operation::AddRule(rule) => {
                let message = rule::message(rule, rule.iif.map(|dev| self.names.name(dev)));
                self.writes += 1;
                rule::add(&self.handle, message)
                    .await
                    .map_err(|source| Error::netlink(format!("add rule {}", self.rule_text(rule)), source))
            }
            Operation::EditFirewall(edit) => self.edit_firewall(edit).await,
        }
    }

    async fn install_route(&mut self, route: &Route, verb: &str, links: &mut Links) -> Result<()> {
        let text = format!("{verb} route {}", self.route_text(route));
        let operation = || text.clone();
        let link = match route.dev {
            Dev::Tunnel => self.ensured_tunnel(links).await.map_err(|error| match error {
                Error::InterfaceNotFound { interface, hint, .. } => {
                    Error::InterfaceNotFound { operation: operation(), interface, hint }
                }
                other => other,
            })?,
            Dev::Private if self.config.private_interface.is_none() => {
                return Err(Error::InterfaceNotFound {
                    operation: operation(),
                    interface: "(private)".to_owned(),
                    hint: ": the node has no private interface configured".to_owned(),
                });
            }
            dev => {
                let name = self.names.name(dev).to_owned();
                self.cached_link(links, &name).await?.ok_or_else(|| Error::not_found(operation(), name))?
            }
        };
        let message = route::message(route, link.index).map_err(|source| Error::netlink(operation(), source))?;
        if verb == "replace" {
            // The plan replaces only a route it observed, and it observes only the mesh's.
            self.writes += 1;
            return route::replace(&self.handle, message).await.map_err(|source| Error::netlink(operation(), source));
        }
        // A place found taken by someone else is looked at (a read) before trying again, so a
        // lasting conflict costs no write per pass.
        if !self.foreign_routes.contains(&route.key()) {
            self.writes += 1;
            match route::add(&self.handle, message.clone()).await {
                Err(error) if error.raw_os_error() == Some(libc::EEXIST) => {}
                result => return result.map_err(|source| Error::netlink(operation(), source)),
            }
        }
        let wireguard = self.cached_link(links, &self.names.kilo.clone()).await?.map(|link| link.index);
        let names = link::names(&self.handle).await.map_err(|source| Error::netlink("list interfaces", source))?;
        let holder = route::holder(&self.handle, route, wireguard, |index| names.get(&index).cloned())
            .await
            .map_err(|source| Error::netlink(format!("list routes in table {}", route.table), source))?;
        let result = match holder {
            route::Holder::Foreign(existing) => {
                self.foreign_routes.insert(route.key());
                return Err(Error::RouteConflicts(vec![RouteConflict {
                    route: *route,
                    wanted: self.route_text(route),
                    existing,
                }]));
            }
            route::Holder::Mesh => {
                self.writes += 1;
                route::replace(&self.handle, message).await
            }
            route::Holder::Nobody => {
                self.writes += 1;
                route::add(&self.handle, message).await
            }
        };
        self.foreign_routes.remove(&route.key());
        result.map_err(|source| Error::netlink(operation(), source))
    }

    async fn set_tunnel_address(&mut self, address: Option<IpNet>, links: &mut Links) -> Result<()> {
        let name = self.names.tunnel.clone();
        let link = match address {
            Some(_) => self.ensured_tunnel(links).await?,
            None => match self.cached_link(links, &name).await? {
                Some(link) => link,
                None => return Ok(()),
            },
        };
        let protocol = (!tunnel::owns_device(self.config.compatibility)).then_some(ROUTE_PROTOCOL);
        let current = self.tunnel_addresses(&link).await?;
        for old in current.iter().filter(|old| Some(**old) != address) {
            self.writes += 1;
            tolerate(link::delete_address(&self.handle, link.index, *old).await, libc::EADDRNOTAVAIL)
                .map_err(|source| Error::netlink(format!("remove address {old} from tunnel {name}"), source))?;
        }
        if let Some(address) = address.filter(|address| !current.contains(address)) {
            self.writes += 1;
            link::add_address(&self.handle, link.index, address, protocol)
                .await
                .map_err(|source| Error::netlink(format!("set tunnel address {address} on {name}"), source))?;
        }
        Ok(())
    }

    /// The tunnel's IPv4 addresses the mesh manages: all of them on our own `tunl0`, only those
    /// marked with our protocol on a device we share (`cilium_tunl`).
    async fn tunnel_addresses(&self, tunnel: &Link) -> Result<Vec<IpNet>> {
        let owned = tunnel::owns_device(self.config.compatibility);
        let mut addresses: Vec<IpNet> = link::addresses(&self.handle, tunnel.index)
            .await
            .map_err(|source| Error::netlink(format!("list addresses of {}", tunnel.name), source))?
            .into_iter()
            .filter(|address| matches!(address.net, IpNet::V4(_)))
            .filter(|address| owned || address.protocol == Some(ROUTE_PROTOCOL))
            .map(|address| address.net)
            .collect();
        addresses.sort();
        Ok(addresses)
    }

    /// Runs one family's firewall edit as one `iptables-restore`.
    async fn edit_firewall(&mut self, edit: &FirewallEdit) -> Result<()> {
        if let Some(script) = firewall::script(edit) {
            self.writes += 1;
            firewall::restore(&self.config.namespace, edit.family, script, "apply").await?;
        }
        Ok(())
    }

    async fn configure(&mut self, update: DeviceUpdate, operation: String) -> Result<()> {
        let wireguard = self.wireguard.clone();
        self.writes += 1;
        self.config
            .namespace
            .run_blocking(move || wireguard.apply(update))
            .await?
            .map_err(|source| Error::wireguard(operation, source))
    }

    async fn read_device(&self) -> Result<wireguard::DeviceState> {
        let wireguard = self.wireguard.clone();
        self.config
            .namespace
            .run_blocking(move || wireguard.read())
            .await?
            .map_err(|source| Error::wireguard(format!("read WireGuard device {}", self.names.kilo), source))
    }

    async fn link(&self, name: &str) -> Result<Option<Link>> {
        link::get(&self.handle, name)
            .await
            .map_err(|source| Error::netlink(format!("look up interface {name}"), source))
    }

    async fn cached_link(&self, links: &mut Links, name: &str) -> Result<Option<Link>> {
        if let Some(link) = links.0.get(name) {
            return Ok(link.clone());
        }
        let link = self.link(name).await?;
        links.0.insert(name.to_owned(), link.clone());
        Ok(link)
    }

    async fn ensured_interface(&mut self, links: &mut Links) -> Result<Link> {
        let name = self.names.kilo.clone();
        let link = match self.cached_link(links, &name).await? {
            Some(link) => link,
            None => {
                let operation = format!("configure WireGuard interface {name}");
                if !self.config.create_interface {
                    return Err(Error::InterfaceNotFound {
                        operation,
                        interface: name,
                        hint: ": --create-interface=false, so it must be created beforehand (e.g. by wireguard-go or boringtun)".to_owned(),
                    });
                }
                if self.backend() != WireGuardBackend::Kernel {
                    return Err(Error::InterfaceNotFound {
                        operation,
                        interface: name,
                        hint: ": the userspace backend cannot create it; start wireguard-go or boringtun for it first"
                            .to_owned(),
                    });
                }
                self.writes += 1;
                link::add_wireguard(&self.handle, &name)
                    .await
                    .map_err(|source| Error::netlink(format!("create WireGuard interface {name}"), source))?;
                self.interface_ready = false;
                links.0.remove(&name);
                self.cached_link(links, &name).await?.ok_or_else(|| Error::not_found(operation, name.clone()))?
            }
        };
        if !self.interface_ready {
            let device = self.read_device().await?;
            if device.private_key != Some(self.config.private_key) {
                self.configure(
                    wireguard::set_private_key(&self.config.private_key),
                    format!("set private key on {name}"),
                )
                .await?;
            }
            self.interface_ready = true;
        }
        Ok(link)
    }

    async fn ensured_tunnel(&mut self, links: &mut Links) -> Result<Link> {
        let name = self.names.tunnel.clone();
        if let Some(Some(link)) = links.0.get(&name)
            && link.up
        {
            return Ok(link.clone());
        }
        let mut created = false;
        let link = tunnel::ensure(
            &self.handle,
            self.config.compatibility,
            self.config.private_interface.as_deref(),
            &mut self.writes,
            &mut created,
        )
        .await?;
        self.tunnel_created |= created;
        links.0.insert(name, Some(link.clone()));
        Ok(link)
    }

    async fn clean_up_firewall(&mut self) -> Result<()> {
        for family in [Family::Ipv4, Family::Ipv6] {
            let dump = firewall::save(&self.config.namespace, family).await?;
            let (current, layout) = firewall::Saved::parse(family, &dump).observed();
            let edit = FirewallEdit::between(&current, &layout, &Firewall::default(), family);
            if let Some(script) = edit.as_ref().and_then(firewall::script) {
                self.writes += 1;
                firewall::restore(&self.config.namespace, family, script, "remove").await?;
            }
        }
        Ok(())
    }

    async fn clean_up_routes_and_rules(&mut self) -> Result<()> {
        for message in rule::ours(&self.handle).await.map_err(|source| Error::netlink("list rules", source))? {
            self.writes += 1;
            tolerate(rule::delete(&self.handle, message).await, libc::ENOENT)
                .map_err(|source| Error::netlink(format!("delete rules to table {}", mesh_core::KILO_TABLE), source))?;
        }
        for message in route::ours(&self.handle).await.map_err(|source| Error::netlink("list routes", source))? {
            self.writes += 1;
            let table = route::table(&message);
            tolerate(route::delete(&self.handle, message).await, libc::ESRCH).map_err(|source| {
                Error::netlink(format!("delete routes with protocol {ROUTE_PROTOCOL} in table {table}"), source)
            })?;
        }
        Ok(())
    }

    async fn clean_up_tunnel(&mut self) -> Result<()> {
        if !self.config.compatibility.uses_ipip() {
            return Ok(());
        }
        let mut links = Links::default();
        self.set_tunnel_address(None, &mut links).await?;
        if self.tunnel_created
            && let Some(link) = self.link(&self.names.tunnel.clone()).await?
        {
            self.writes += 1;
            link::delete(&self.handle, link.index)
                .await
                .map_err(|source| Error::netlink(format!("delete tunnel {}", link.name), source))?;
            self.tunnel_created = false;
        }
        Ok(())
    }

    async fn delete_interface(&mut self) -> Result<()> {
        let name = self.names.kilo.clone();
        self.interface_ready = false;
        if self.backend() == WireGuardBackend::Userspace {
            self.writes += 1;
            return self
                .wireguard
                .remove_userspace_socket()
                .map_err(|source| Error::wireguard(format!("remove the UAPI socket of {name}"), source));
        }
        if let Some(link) = self.link(&name).await? {
            self.writes += 1;
            link::delete(&self.handle, link.index)
                .await
                .map_err(|source| Error::netlink(format!("delete WireGuard interface {name}"), source))?;
        }
        Ok(())
    }

    fn route_text(&self, route: &Route) -> String {
        route.to_ip_route(&self.names)
    }

    fn rule_text(&self, rule: &Rule) -> String {
        rule.to_ip_rule(&self.names)
    }
}

/// The parts of the data plane that fail independently: a failure skips the rest of its part
/// only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Interface,
    Peers,
    Tunnel,
    RoutesAndRules,
    Firewall,
}

impl Part {
    fn of(operation: &Operation) -> Part {
        match operation {
            Operation::SetMtu(_)
            | Operation::RemoveAddress(_)
            | Operation::AddAddress(_)
            | Operation::SetLinkUp(_)
            | Operation::SetListenPort(_) => Part::Interface,
            Operation::RemovePeer(_) | Operation::UpdatePeer(_) | Operation::AddPeer(_) => Part::Peers,
            Operation::SetTunnelAddress(_) => Part::Tunnel,
            Operation::DeleteRule(_)
            | Operation::DeleteRoute(_)
            | Operation::AddRoute(_)
            | Operation::ReplaceRoute(_)
            | Operation::AddRule(_) => Part::RoutesAndRules,
            Operation::EditFirewall(_) => Part::Firewall,
        }
    }
}

/// Treats one errno (the object is already gone) as success.
fn tolerate(result: std::io::Result<()>, errno: i32) -> std::io::Result<()> {
    match result {
        Err(error) if error.raw_os_error() == Some(errno) => Ok(()),
        result => result,
    }
}

#[async_trait::async_trait]
impl Dataplane for LinuxDataplane {
    /// Our interface (state, addresses except IPv6 link-local, MTU, listen port), every
    /// WireGuard peer with its statistics, the tunnel address, our routes (protocol
    /// [`ROUTE_PROTOCOL`] and table 1107), rules to table 1107 and our firewall.
    async fn observe(&mut self) -> Result<ObservedState, BackendError> {
        self.observe_state().await.map_err(|error| error.into_backend("failed to observe the data plane"))
    }

    /// [`LinuxDataplane::apply_plan`], where route conflicts are no failure: they are
    /// refusals, listed by [`Dataplane::route_conflicts`] until the next apply.
    async fn apply(&mut self, plan: &Plan) -> Result<(), BackendError> {
        self.conflicts.clear();
        let Err(error) = self.apply_plan(plan).await else { return Ok(()) };
        let (failure, conflicts) = error.split_route_conflicts();
        self.conflicts = conflicts;
        failure.map_or(Ok(()), |error| Err(error.into_backend("failed to apply the plan")))
    }

    fn route_conflicts(&self) -> Vec<RouteConflict> {
        self.conflicts.clone()
    }

    async fn clean_up(&mut self) -> Result<(), BackendError> {
        self.clean_up_owned().await.map_err(|error| error.into_backend("failed to clean up the data plane"))
    }
}
