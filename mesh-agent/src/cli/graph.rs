//! `mesh-agent graph`: the mesh as Graphviz DOT, as `kgctl graph` prints it.

use mesh_core::Topology;

use super::flags::MeshFlags;
use super::{CliError, Cluster, Source, unix_now, write};

/// Arguments of `graph`.
#[derive(clap::Args, Debug)]
pub struct GraphArgs {
    /// Judge readiness at this Unix time [default: now].
    #[arg(long)]
    now: Option<i64>,
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    mesh: MeshFlags,
}

pub(super) async fn run(args: GraphArgs, out: &mut dyn std::io::Write) -> Result<(), CliError> {
    let choice = args.mesh.granularity("auto", true).map_err(CliError::usage)?;
    let objects = args.source.load().await?;
    let cluster = Cluster::translate(&objects, &args.mesh.topology_label, args.now.unwrap_or_else(unix_now));
    let granularity = cluster.granularity(choice)?;
    let subnet = args.mesh.subnet.unwrap_or_else(|| cluster.announced_subnet());
    // kgctl draws from the last ready node's point of view; the graph is the same from any node.
    let Some(host) = cluster.ready_nodes().last().map(|name| (*name).to_owned()) else {
        return Err(CliError::input("did not find any valid Kilo nodes in the cluster"));
    };
    let options = args.mesh.options(&host, granularity, subnet);
    let topology = Topology::compute(&cluster.snapshot, &options).map_err(|e| CliError::input(e.to_string()))?;
    // kgctl prints the graph with Println: one more newline than the graph text.
    write(out, &format!("{}\n", topology.to_dot()))
}
