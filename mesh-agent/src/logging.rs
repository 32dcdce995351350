//! Logs: `--log-level` (Kilo's levels) and `--log-format text|json`, to standard error.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `none` logs nothing; `all` is the same as `debug` plus trace.
pub fn init(level: &str, format: &str) {
    let directive = match level {
        "none" => return,
        "all" => "trace",
        "warn" => "warn",
        "error" => "error",
        "debug" => "debug",
        _ => "info",
    };
    // Our crates at the requested level; the libraries under us only from warnings up, unless
    // the user asks for everything.
    let filter = if level == "all" {
        EnvFilter::new("trace")
    } else {
        EnvFilter::new(format!(
            "warn,mesh_agent={directive},mesh_core={directive},mesh_kube={directive},mesh_netlink={directive}"
        ))
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if format == "json" { builder.json().try_init() } else { builder.try_init() };
    // A second initialisation (tests) keeps the first subscriber.
    drop(result);
}
