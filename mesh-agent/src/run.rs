//! `mesh-agent [run]`: the agent, with Kilo's `kg` flags (each also read from `KILO_<FLAG>`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use mesh_core::backend::{ClusterBackend, Dataplane, LinkChange};
use mesh_core::{ClusterSnapshot, Compatibility, Key, NodeSpec, Options};
use mesh_netlink::{DataplaneConfig, LinkWatch, LinuxDataplane, Namespace, WireGuardBackend};
use tracing::{info, warn};

use crate::driver::{Driver, Host};
use crate::flags::{MeshFlags, parse_cidr};
use crate::local::{LocalInputs, local_node};
use crate::metrics::Telemetry;
use crate::reconciler::{Config, Resolution};
use crate::resolve::{ResolverCache, resolve_endpoints};
use mesh_netlink::host::{HostNetwork, SelectedIps, auto_mtu, discover_local_host};

/// How `--mtu auto` is computed; quoted in `--help`.
const MTU_HELP: &str = "The MTU of the WireGuard interface: a number, or auto = the MTU of the default-route \
    interface minus 80 (WireGuard over IPv4: 20 IP + 8 UDP + 32 WireGuard header + 16 authentication tag + 4 \
    padding); with --compatibility=cilium at most that MTU minus 70 as well (IPIP 20 inside Cilium's VXLAN 50, \
    the path the non-leaders' traffic takes to the leader); 1420 without a default route";

/// The agent's flags: Kilo's `kg` flags with their names, defaults and meanings, plus ours.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentFlags {
    #[command(flatten)]
    mesh: MeshFlags,
    /// Where nodes and peers come from: kubernetes, or file (a directory of Node and Peer YAML).
    #[arg(long, env = "KILO_BACKEND", default_value = "kubernetes", value_parser = ["kubernetes", "file"])]
    backend: String,
    /// The directory of the file backend: DIR/nodes/NAME.yaml and DIR/peers/NAME.yaml.
    #[arg(long = "cluster-dir", env = "KILO_CLUSTER_DIR")]
    cluster_dir: Option<PathBuf>,
    /// Remove routes, rules, chains and the node's annotations on shutdown.
    #[arg(long = "clean-up", env = "KILO_CLEAN_UP", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    clean_up: bool,
    /// Also delete the WireGuard interface on shutdown.
    #[arg(long = "clean-up-interface", env = "KILO_CLEAN_UP_INTERFACE", default_value_t = false, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    clean_up_interface: bool,
    /// The CNI conflist whose IPAM range the agent keeps equal to the pod CIDR (with --cni).
    #[arg(long = "cni-path", env = "KILO_CNI_PATH", default_value = "/etc/cni/net.d/10-kilo.conflist")]
    cni_path: PathBuf,
    /// Create the WireGuard interface if it does not exist (false: it must exist, e.g. made by
    /// wireguard-go).
    #[arg(long = "create-interface", env = "KILO_CREATE_INTERFACE", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    create_interface: bool,
    /// This node's name in the cluster [default: the host name].
    #[arg(long, env = "KILO_HOSTNAME")]
    hostname: Option<String>,
    /// Only private IPs inside these CIDRs may be the node's internal IP (repeatable, comma-separated).
    #[arg(long = "internal-cidr", env = "KILO_INTERNAL_CIDR", value_delimiter = ',', value_parser = parse_cidr)]
    internal_cidrs: Vec<IpNet>,
    /// Path to a kubeconfig [default: in-cluster configuration].
    #[arg(long, env = "KILO_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The address of the Kubernetes API server (overrides the kubeconfig).
    #[arg(long, env = "KILO_MASTER")]
    master: Option<String>,
    /// The address of the HTTP server (/health, /metrics, /graph).
    #[arg(long, env = "KILO_LISTEN", default_value = ":1107")]
    listen: String,
    /// Log level: all, debug, info, warn, error or none.
    #[arg(long = "log-level", env = "KILO_LOG_LEVEL", default_value = "info", value_parser = ["all", "debug", "info", "warn", "error", "none"])]
    log_level: String,
    /// Log format: text or json.
    #[arg(long = "log-format", env = "KILO_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[arg(long, env = "KILO_MTU", default_value = "auto", value_parser = parse_mtu, help = MTU_HELP)]
    mtu: Mtu,
    /// Use the private IP (if any) rather than the public one as the node's endpoint.
    #[arg(long = "prioritise-private-addresses", env = "KILO_PRIORITISE_PRIVATE_ADDRESSES", default_value_t = false, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    prioritise_private_addresses: bool,
    /// How often to reconcile fully (Go duration: 30s, 1m, 1m30s, 500ms).
    #[arg(long = "resync-period", env = "KILO_RESYNC_PERIOD", default_value = "30s", value_parser = parse_duration)]
    resync_period: Duration,
    /// WireGuard implementation: auto (kernel if available), kernel, or userspace (an existing
    /// UAPI socket, e.g. wireguard-go's).
    #[arg(long = "wireguard-backend", env = "KILO_WIREGUARD_BACKEND", default_value = "auto", value_parser = parse_wireguard_backend)]
    wireguard_backend: WireGuardBackend,
    /// Where the WireGuard private key is kept (generated on first start).
    #[arg(long = "private-key-file", env = "KILO_PRIVATE_KEY_FILE", default_value = crate::key::DEFAULT_PRIVATE_KEY_FILE)]
    private_key_file: PathBuf,
    /// Replace a private key file that holds no usable key with a new key (a new identity for
    /// the node); without it the agent refuses to start, naming the file.
    #[arg(long = "regenerate-private-key", env = "KILO_REGENERATE_PRIVATE_KEY", default_value_t = false, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    regenerate_private_key: bool,
}

/// `--mtu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mtu {
    /// Detect from the default-route interface.
    Auto,
    /// A fixed MTU.
    Fixed(u32),
}

fn parse_mtu(text: &str) -> Result<Mtu, String> {
    if text == "auto" {
        return Ok(Mtu::Auto);
    }
    match text.parse::<u32>() {
        Ok(mtu) if (576..=65535).contains(&mtu) => Ok(Mtu::Fixed(mtu)),
        _ => Err(format!("failed to parse MTU {text:?}: expected auto or a number from 576 to 65535")),
    }
}

fn parse_wireguard_backend(text: &str) -> Result<WireGuardBackend, String> {
    text.parse()
        .map_err(|_| format!("WireGuard backend {text:?} unknown; possible values are: auto, kernel, userspace"))
}

/// Parses a Go duration (`300ms`, `30s`, `1m30s`, `1.5h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?}: expected e.g. 30s, 1m, 1m30s, 500ms");
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(invalid)?;
        let value: f64 = rest[..number_end].parse().map_err(|_| invalid())?;
        rest = &rest[number_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        total += value * seconds;
        rest = &rest[unit_end..];
    }
    if total <= 0.0 {
        return Err(format!("invalid duration {text:?}: must be positive"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// A start-up failure: the process exits non-zero with this message (exit code 3, or 1 when
/// a flag's value is what is wrong).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StartupError {
    message: String,
    usage: bool,
}

impl StartupError {
    /// Whether the command line is at fault (a usage error) rather than the host or the cluster.
    pub fn is_usage(&self) -> bool {
        self.usage
    }
}

fn usage_error(message: impl std::fmt::Display) -> StartupError {
    StartupError { message: message.to_string(), usage: true }
}

fn startup(message: impl std::fmt::Display) -> StartupError {
    StartupError { message: message.to_string(), usage: false }
}

/// The agent's view of its host: discovered IPs, its key, DNS, and the CNI file.
struct LinuxHost {
    public_key: Key,
    ips: SelectedIps,
    port: u16,
    prioritise_private_addresses: bool,
    granularity: mesh_core::Granularity,
    compatibility: Compatibility,
    cni_compatibility_ip: Option<IpNet>,
    resolver: ResolverCache,
    cni_path: PathBuf,
    /// `--mtu auto`: the MTU detected at the last pass; `None` with a fixed `--mtu`.
    auto_mtu: Option<u32>,
    /// A probe failed for want of a raw socket, and it was said once.
    probe_failed: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Host for LinuxHost {
    fn probe(
        &self,
        ip: std::net::IpAddr,
        timeout: std::time::Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'static>> {
        let failed = Arc::clone(&self.probe_failed);
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || crate::probe::echo(ip, timeout)).await {
                Ok(Ok(answered)) => answered,
                Ok(Err(error)) => {
                    // A host that cannot probe must not depose anyone: count it as an answer.
                    if !failed.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            %ip, %error,
                            "failed to probe the leader (needs CAP_NET_RAW); fast failover cannot work on this node"
                        );
                    }
                    true
                }
                Err(_) => true,
            }
        })
    }

    async fn resolve(&mut self, mut snapshot: ClusterSnapshot) -> Resolution {
        // Cilium's cilium_host address can appear after the agent started, and the underlay's
        // MTU can change: look again every pass, as Kilo does.
        let cilium = self.compatibility == Compatibility::Cilium;
        if (cilium || self.auto_mtu.is_some())
            && let Ok(network) = HostNetwork::read_links_async(&Namespace::Current).await
        {
            if cilium {
                self.cni_compatibility_ip = network.cilium_host_ip();
            }
            if self.auto_mtu.is_some() {
                self.auto_mtu = Some(auto_mtu(network.underlay_mtu(), cilium));
            }
        }
        let warnings = resolve_endpoints(&mut snapshot, &mut self.resolver).await;
        Resolution { snapshot, warnings, mtu: self.auto_mtu }
    }

    fn localize(&self, node: &mut NodeSpec) {
        let local = local_node(&LocalInputs {
            node,
            private_ip: self.ips.private,
            public_ip: Some(self.ips.public),
            port: self.port,
            prioritise_private_addresses: self.prioritise_private_addresses,
            public_key: self.public_key,
            cni_compatibility_ip: self.cni_compatibility_ip,
            wireguard_ip: None,
            discovered_endpoints: BTreeMap::new(),
            granularity: self.granularity,
            now: 0,
        });
        *node = local.spec;
    }

    async fn update_cni(&mut self, pod_cidr: IpNet) -> Result<bool, String> {
        crate::cni::update(&self.cni_path, pod_cidr).map_err(|error| error.to_string())
    }
}

impl AgentFlags {
    /// `--log-format`: `text` or `json`.
    pub fn log_format(&self) -> &str {
        &self.log_format
    }

    /// Starts the agent and runs it until SIGTERM or SIGINT.
    pub async fn run(self) -> Result<(), StartupError> {
        crate::logging::init(&self.log_level, &self.log_format);
        let hostname = match &self.hostname {
            Some(hostname) if !hostname.is_empty() => hostname.clone(),
            _ => hostname().ok_or_else(|| startup("failed to determine hostname; give --hostname"))?,
        };
        let granularity = self.mesh.fixed_granularity("location").map_err(usage_error)?;
        let subnet = self.mesh.subnet.unwrap_or_else(|| Options::default().subnet);
        info!(version = env!("CARGO_PKG_VERSION"), %hostname, "starting the mesh agent");

        use crate::key::UnusableKeyFile::{Refuse, Regenerate};
        let unusable = if self.regenerate_private_key { Regenerate } else { Refuse };
        let key = crate::key::load_or_generate(&self.private_key_file, unusable).map_err(startup)?;
        let (network, local) = discover_local_host(
            &Namespace::Current,
            &hostname,
            &self.mesh.interface,
            self.mesh.compatibility,
            &self.internal_cidrs,
        )
        .await
        .map_err(startup)?;
        let private_interface = local.private_interface.as_ref().map(|interface| interface.name.clone());
        match (&local.ips.private, &private_interface) {
            (Some(ip), Some(name)) => info!(%ip, interface = %name, "using the private IP"),
            _ => info!("running without a private IP address"),
        }
        info!(ip = %local.ips.public, "using the public IP");
        let cilium = self.mesh.compatibility == Compatibility::Cilium;
        let mtu = match self.mtu {
            Mtu::Fixed(mtu) => mtu,
            Mtu::Auto => {
                let underlay = network.underlay_mtu();
                let mtu = auto_mtu(underlay, cilium);
                info!(mtu, ?underlay, "auto-detected the WireGuard MTU");
                mtu
            }
        };

        let mut dataplane_config = DataplaneConfig::new(*key.private.expose());
        dataplane_config.interface = self.mesh.interface.clone();
        dataplane_config.private_interface = private_interface;
        dataplane_config.compatibility = self.mesh.compatibility;
        dataplane_config.backend = self.wireguard_backend;
        dataplane_config.create_interface = self.create_interface;
        dataplane_config.clean_up_interface = self.clean_up_interface;
        let mut dataplane = LinuxDataplane::new(dataplane_config).await.map_err(startup)?;
        dataplane.ensure_interface().await.map_err(startup)?;
        let links = watch_links(dataplane.config()).await;

        let mut options = self.mesh.options(&hostname, granularity, subnet);
        options.mtu = Some(mtu);
        let host = LinuxHost {
            public_key: key.public,
            ips: local.ips,
            port: self.mesh.port,
            prioritise_private_addresses: self.prioritise_private_addresses,
            granularity,
            compatibility: self.mesh.compatibility,
            cni_compatibility_ip: if cilium { network.cilium_host_ip() } else { None },
            resolver: ResolverCache::new(),
            cni_path: self.cni_path.clone(),
            auto_mtu: (self.mtu == Mtu::Auto).then_some(mtu),
            probe_failed: Arc::new(AtomicBool::new(false)),
        };
        let mut config = Config::new(options);
        config.update_cni = self.mesh.cni;
        config.resync_period = self.resync_period;
        config.clean_up = self.clean_up;
        config.clean_up_timeout = Duration::from_secs(4);
        let listen = crate::http::listen_address(&self.listen).map_err(usage_error)?;

        match self.backend.as_str() {
            "file" => {
                let dir =
                    self.cluster_dir.clone().ok_or_else(|| usage_error("--backend=file needs --cluster-dir DIR"))?;
                let cluster =
                    mesh_kube::file::FileBackend::new(dir, hostname.clone(), self.mesh.topology_label.clone())
                        .map_err(startup)?;
                serve(cluster, dataplane, host, config, listen, links).await
            }
            _ => {
                let client = mesh_kube::api::client(self.kubeconfig.as_deref(), self.master.as_deref())
                    .await
                    .map_err(startup)?;
                let cluster =
                    mesh_kube::api::KubeBackend::new(client, hostname.clone(), self.mesh.topology_label.clone());
                cluster.check_crd().await.map_err(startup)?;
                serve(cluster, dataplane, host, config, listen, links).await
            }
        }
    }
}

/// The kernel's notifications about the data plane's devices, forwarded to the driver; `None`
/// (with a warning) when the kernel refuses the subscription: the agent then notices a device
/// that came back at its next resync.
async fn watch_links(config: &DataplaneConfig) -> Option<tokio::sync::mpsc::Receiver<LinkChange>> {
    let mut watch = match LinkWatch::of(config).await {
        Ok(watch) => watch,
        Err(error) => {
            warn!(%error, "cannot watch the data plane's devices; a device that comes back is repaired at the next resync");
            return None;
        }
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(LINK_CHANGES_QUEUED);
    tokio::spawn(async move {
        while let Some(change) = watch.next().await {
            // Waits for room rather than dropping: the queue may hold only deletions the
            // reconciler ignores (its own), so a dropped change could be the one that matters.
            // Meanwhile the notifications wait in the watch's own buffer.
            if sender.send(change).await.is_err() {
                return;
            }
        }
    });
    Some(receiver)
}

/// Link changes waiting for the driver.
const LINK_CHANGES_QUEUED: usize = 64;

async fn serve<C: ClusterBackend, D: Dataplane>(
    cluster: C,
    dataplane: D,
    host: LinuxHost,
    config: Config,
    listen: std::net::SocketAddr,
    links: Option<tokio::sync::mpsc::Receiver<LinkChange>>,
) -> Result<(), StartupError> {
    let telemetry = Telemetry::new();
    let state = crate::http::HttpState { metrics: telemetry.metrics(), status: telemetry.status() };
    let mut agent = Driver::new(cluster, dataplane, host, config).with_sink(telemetry);
    if let Some(links) = links {
        agent = agent.with_link_changes(links);
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| startup(format!("failed to listen on {listen}: {e}")))?;
    info!(%listen, "serving /health, /metrics and /graph");
    let listener =
        crate::http_listener::BoundedListener::new(listener, crate::http_listener::ConnectionLimits::default());
    let server = tokio::spawn(async move { axum::serve(listener, crate::http::router(state)).await });
    agent.run(shutdown_signal()).await;
    server.abort();
    info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        warn!("cannot listen for SIGTERM/SIGINT; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {},
        _ = interrupt.recv() => {},
    }
    info!("caught interrupt; gracefully cleaning up; see you next time!");
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        for bad in ["", "30", "s", "1x", "-1s", "0s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mtu_is_auto_or_a_number() {
        assert_eq!(parse_mtu("auto"), Ok(Mtu::Auto));
        assert_eq!(parse_mtu("1420"), Ok(Mtu::Fixed(1420)));
        assert!(parse_mtu("big").unwrap_err().contains("failed to parse MTU \"big\""));
    }
}
