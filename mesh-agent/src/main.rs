//! `mesh-agent`: the Kilo-compatible mesh agent and its offline tools.

use std::process::ExitCode;

use clap::Parser as _;
use mesh_agent::cli::{Cli, EXIT_USAGE, hoist_kubeconfig};
use mesh_agent::logging::fatal;

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(hoist_kubeconfig(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // Help and version are not errors; everything else is a usage error (exit 1).
            return if error.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    raise_open_files_limit();
    // Fatal errors go out in the format the logs have, so a JSON log pipeline sees them.
    let log_format = cli.log_format().to_owned();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            fatal(&log_format, &format!("failed to start the async runtime: {error}"), std::io::stderr);
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(cli.run(&mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            fatal(&log_format, &error.to_string(), std::io::stderr);
            ExitCode::from(error.code)
        }
    }
}

/// Raises the soft limit of open files to the hard limit, as every Go program (Kilo's agent
/// among them) does at start: the default soft limit of 1,024 is too low for an agent that holds
/// netlink, WireGuard, API and HTTP connections on a large node.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        // Failing leaves the soft limit, which still works for small nodes.
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
