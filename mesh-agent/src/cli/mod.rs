//! The offline command-line tools: `plan`, `showconf`, `graph` and `crd`.
//!
//! Exit codes: 0 success, 1 usage error, 2 input error (unreadable or malformed files, unknown
//! node or peer, a cluster the topology cannot be computed for), 3 the agent failed to start
//! (key file, network discovery, cluster connection), 4 `doctor` found a problem.

mod doctor;
mod graph;
pub mod input;
mod plan;
mod showconf;

use std::path::PathBuf;

use ipnet::IpNet;
use mesh_core::{ClusterSnapshot, Granularity};
use mesh_kube::{Diagnostics, Translated, translate};

use crate::flags::{GranularityChoice, MeshFlags};
use input::Objects;

/// Exit code of a usage error.
pub const EXIT_USAGE: u8 = 1;
/// Exit code of an input error.
pub const EXIT_INPUT: u8 = 2;
/// Exit code of an agent that failed to start.
pub const EXIT_STARTUP: u8 = 3;

/// A command failure, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// What went wrong, naming the value, file or object.
    pub message: String,
    /// [`EXIT_USAGE`], [`EXIT_INPUT`] or [`EXIT_STARTUP`].
    pub code: u8,
}

impl CliError {
    /// An error in the command line.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError { message: message.into(), code: EXIT_USAGE }
    }

    /// An error in the input data.
    pub fn input(message: impl Into<String>) -> Self {
        CliError { message: message.into(), code: EXIT_INPUT }
    }
}

/// Where the Nodes and Peers come from.
#[derive(clap::Args, Debug, Clone)]
pub struct Source {
    /// A file of Node objects (YAML or JSON; a List or a multi-document stream; `-` for stdin).
    /// It may also hold Peers.
    #[arg(long)]
    pub nodes: Option<PathBuf>,
    /// A file of Peer objects (same formats).
    #[arg(long)]
    pub peers: Option<PathBuf>,
    /// Read Nodes and Peers from the cluster of this kubeconfig instead of files. Without
    /// `--nodes`, `--peers` or `--kubeconfig`, the cluster of `$KUBECONFIG` is read, as kgctl does.
    #[arg(long, conflicts_with_all = ["nodes", "peers"])]
    pub kubeconfig: Option<PathBuf>,
}

impl Source {
    async fn load(&self) -> Result<Objects, CliError> {
        match self.origin(std::env::var_os("KUBECONFIG").is_some_and(|value| !value.is_empty()))? {
            Origin::Kubeconfig(path) => Objects::from_cluster(Some(path)).await,
            // kube's inference reads `$KUBECONFIG`, with its list of files merged as kubectl does.
            Origin::Environment => Objects::from_cluster(None).await,
            Origin::Files(paths) => Objects::from_files(&paths),
        }
    }

    /// Where the objects come from: files given win over `$KUBECONFIG`, so `plan --nodes F`
    /// works the same in a shell that has a cluster configured.
    fn origin(&self, kubeconfig_in_environment: bool) -> Result<Origin<'_>, CliError> {
        if let Some(kubeconfig) = &self.kubeconfig {
            return Ok(Origin::Kubeconfig(kubeconfig));
        }
        let paths: Vec<&std::path::Path> = self.nodes.iter().chain(&self.peers).map(PathBuf::as_path).collect();
        match (paths.is_empty(), kubeconfig_in_environment) {
            (false, _) => Ok(Origin::Files(paths)),
            (true, true) => Ok(Origin::Environment),
            (true, false) => Err(CliError::usage(
                "give --nodes FILE (and optionally --peers FILE), or --kubeconfig FILE, or set KUBECONFIG",
            )),
        }
    }
}

/// The origin [`Source::load`] reads from.
#[derive(Debug, PartialEq)]
enum Origin<'a> {
    Kubeconfig(&'a std::path::Path),
    Environment,
    Files(Vec<&'a std::path::Path>),
}

/// Moves a `--kubeconfig F` given before an offline subcommand behind it, so that
/// `mesh-agent --kubeconfig F graph` works as `kgctl --kubeconfig F graph` does. Arguments
/// without such a subcommand (the agent's own `--kubeconfig`) are left as they are.
///
/// ```
/// use mesh_agent::cli::hoist_kubeconfig;
/// let args = |list: &[&str]| list.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
/// assert_eq!(hoist_kubeconfig(args(&["mesh-agent", "--kubeconfig", "k", "graph"])),
///            args(&["mesh-agent", "graph", "--kubeconfig", "k"]));
/// assert_eq!(hoist_kubeconfig(args(&["mesh-agent", "--kubeconfig=k", "--hostname", "a"])),
///            args(&["mesh-agent", "--kubeconfig=k", "--hostname", "a"]));
/// ```
pub fn hoist_kubeconfig(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const OFFLINE: [&str; 4] = ["plan", "showconf", "graph", "doctor"];
    let text: Vec<Option<&str>> = args.iter().map(|arg| arg.to_str()).collect();
    let (flag_len, subcommand) = match text.get(1..) {
        Some([Some("--kubeconfig"), Some(_), Some(subcommand), ..]) => (2, *subcommand),
        Some([Some(flag), Some(subcommand), ..]) if flag.starts_with("--kubeconfig=") => (1, *subcommand),
        _ => return args,
    };
    if !OFFLINE.contains(&subcommand) {
        return args;
    }
    let mut args = args;
    let flag: Vec<_> = args.drain(1..=flag_len).collect();
    // The subcommand is now at index 1; the flag goes right after it.
    args.splice(2..2, flag);
    args
}

/// The cluster as the core sees it, with what translation had to say about it.
#[derive(Debug)]
pub struct Cluster {
    /// Nodes and peers as values.
    pub snapshot: ClusterSnapshot,
    /// Objects left out at translation (invalid Peers) and values ignored.
    pub diagnostics: Diagnostics,
}

impl Cluster {
    fn translate(objects: &Objects, topology_label: &str, now: i64) -> Cluster {
        let nodes: Vec<_> = objects.nodes.iter().map(|node| translate::node(node, topology_label)).collect();
        let peers: Vec<_> = objects.peers.iter().map(translate::peer).collect();
        let translated = Translated::collect(&nodes, &peers, Diagnostics::default());
        Cluster { snapshot: translated.snapshot(now), diagnostics: translated.diagnostics }
    }

    /// Names of the nodes, for "unknown node" messages.
    fn node_names(&self) -> String {
        /// An error message names this many at most (a cluster may have 100,000 nodes).
        const SHOWN: usize = 20;
        let mut names: Vec<&str> = self.snapshot.nodes.iter().map(|n| n.name.as_str()).collect();
        names.sort_unstable();
        let more = names.len().saturating_sub(SHOWN);
        names.truncate(SHOWN);
        match (names.is_empty(), more) {
            (true, _) => "none".to_owned(),
            (false, 0) => names.join(", "),
            (false, more) => format!("{}, and {more} more", names.join(", ")),
        }
    }

    /// Names of the ready nodes, sorted.
    fn ready_nodes(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .snapshot
            .nodes
            .iter()
            .filter(|n| n.readiness(self.snapshot.now).is_ok())
            .map(|n| n.name.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// Resolves `auto` as kgctl does, from the agents' `granularity` annotations (the first node
    /// by name that has one; Kilo takes the first in informer order, which is not stable).
    fn granularity(&self, choice: GranularityChoice) -> Result<Granularity, CliError> {
        match choice {
            GranularityChoice::Fixed(granularity) => Ok(granularity),
            GranularityChoice::Auto => {
                let mut nodes: Vec<_> = self.snapshot.nodes.iter().collect();
                nodes.sort_by(|a, b| a.name.cmp(&b.name));
                nodes.iter().find_map(|n| n.granularity).ok_or_else(|| {
                    CliError::input(
                        "--mesh-granularity=auto: no node has a valid kilo.squat.ai/granularity annotation; \
                         give --mesh-granularity",
                    )
                })
            }
        }
    }

    /// The WireGuard subnet as kgctl finds it: the network of the nodes' `wireguard-ip`
    /// annotations (the last by name wins), else Kilo's default.
    fn announced_subnet(&self) -> IpNet {
        let mut nodes: Vec<_> = self.snapshot.nodes.iter().filter(|n| n.wireguard_ip.is_some()).collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.last().and_then(|n| n.wireguard_ip).map_or_else(default_subnet, |ip| ip.trunc())
    }
}

/// The arguments `showconf` and `graph` share: where the cluster comes from, the mesh flags and
/// the readiness clock.
#[derive(clap::Args, Debug)]
struct KgctlArgs {
    /// Judge readiness at this Unix time [default: now].
    #[arg(long)]
    now: Option<i64>,
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    mesh: MeshFlags,
}

/// A cluster as `kgctl` sees it: its objects, the granularity (`auto` resolved from the
/// agents' annotations) and the WireGuard subnet (from their `wireguard-ip` annotations unless
/// `--subnet` is given).
#[derive(Debug)]
struct KgctlView {
    objects: Objects,
    cluster: Cluster,
    granularity: Granularity,
    subnet: IpNet,
}

impl KgctlView {
    async fn load(args: &KgctlArgs) -> Result<KgctlView, CliError> {
        let choice = args.mesh.granularity("auto", true).map_err(CliError::usage)?;
        let objects = args.source.load().await?;
        let cluster = Cluster::translate(&objects, &args.mesh.topology_label, args.now.unwrap_or_else(unix_now));
        let granularity = cluster.granularity(choice)?;
        let subnet = args.mesh.subnet.unwrap_or_else(|| cluster.announced_subnet());
        Ok(KgctlView { objects, cluster, granularity, subnet })
    }

    /// The mesh from `host`'s point of view.
    fn topology(&self, mesh: &MeshFlags, host: &str) -> Result<mesh_core::Topology, CliError> {
        let options = mesh.options(host, self.granularity, self.subnet);
        mesh_core::Topology::compute(&self.cluster.snapshot, &options).map_err(|e| CliError::input(e.to_string()))
    }
}

fn default_subnet() -> IpNet {
    mesh_core::Options::default().subnet
}

/// The agent and its tools.
#[derive(clap::Parser, Debug)]
#[command(
    name = "mesh-agent",
    version,
    about = "A Kilo-compatible WireGuard mesh for Kubernetes. Without a subcommand (or with `run`) it \
             runs the agent with Kilo's flags; the subcommands are offline tools.",
    args_conflicts_with_subcommands = true,
    after_help = "Exit codes: 0 success, 1 usage error, 2 input error (unreadable or malformed files, \
                  unknown node or peer, a cluster the mesh cannot be computed for), 3 the agent failed to \
                  start (key file, network discovery, cluster connection), 4 doctor found a problem."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    agent: crate::run::AgentFlags,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Run the agent (the default).
    Run(crate::run::AgentFlags),
    /// Compute what the agent on --hostname would configure (WireGuard, routes, rules, firewall).
    Plan(plan::PlanArgs),
    /// Show the WireGuard configuration of a node or a peer, as `kgctl showconf`.
    Showconf(showconf::ShowconfArgs),
    /// Print the mesh as a Graphviz DOT graph, as `kgctl graph`.
    Graph(graph::GraphArgs),
    /// Check the cluster (and with --hostname this node) for what breaks the mesh: each check
    /// says ok or problem, the evidence and the fix; exit status 4 on a problem.
    Doctor(doctor::DoctorArgs),
    /// Print the Peer CustomResourceDefinition (deploy/base/crds.yaml).
    Crd,
    /// Print the version.
    Version,
}

impl Cli {
    /// `--log-format` of the agent; the offline tools write plain text.
    pub fn log_format(&self) -> &str {
        match &self.command {
            None => self.agent.log_format(),
            Some(Command::Run(agent)) => agent.log_format(),
            Some(_) => "text",
        }
    }

    /// Runs the command, writing its output to `out`.
    pub async fn run(self, out: &mut dyn std::io::Write) -> Result<(), CliError> {
        let command = self.command.unwrap_or(Command::Run(self.agent));
        match command {
            Command::Run(agent) => agent.run().await.map_err(|error| CliError {
                code: if error.is_usage() { EXIT_USAGE } else { EXIT_STARTUP },
                message: error.to_string(),
            }),
            Command::Plan(args) => plan::run(args, out).await,
            Command::Showconf(args) => showconf::run(args, out).await,
            Command::Graph(args) => graph::run(args, out).await,
            Command::Doctor(args) => doctor::run(args, out).await,
            Command::Crd => write(out, &mesh_kube::crd::crd_yaml()),
            Command::Version => write(out, concat!(env!("CARGO_PKG_VERSION"), "\n")),
        }
    }
}

fn write(out: &mut dyn std::io::Write, text: &str) -> Result<(), CliError> {
    out.write_all(text.as_bytes()).map_err(|e| CliError::input(format!("failed to write output: {e}")))
}

/// The current Unix time, for commands that judge readiness against now.
fn unix_now() -> i64 {
    mesh_core::time::unix_seconds(std::time::SystemTime::now())
}
