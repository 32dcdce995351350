//! `mesh-agent graph`: the mesh as Graphviz DOT, as `kgctl graph` prints it.

use super::{CliError, KgctlArgs, KgctlView, write};

/// Arguments of `graph`.
#[derive(clap::Args, Debug)]
pub struct GraphArgs {
    #[command(flatten)]
    cluster: KgctlArgs,
}

pub(super) async fn run(args: GraphArgs, out: &mut dyn std::io::Write) -> Result<(), CliError> {
    let view = KgctlView::load(&args.cluster).await?;
    // kgctl draws from the last ready node's point of view; the graph is the same from any node.
    let Some(host) = view.cluster.ready_nodes().last().map(|name| (*name).to_owned()) else {
        return Err(CliError::input("did not find any valid Kilo nodes in the cluster"));
    };
    let topology = view.topology(&args.cluster.mesh, &host)?;
    // kgctl prints the graph with Println: one more newline than the graph text.
    write(out, &format!("{}\n", topology.to_dot()))
}
