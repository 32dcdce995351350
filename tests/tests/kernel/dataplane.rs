//! `mesh-netlink` on the real kernel: kernel WireGuard, `tunl0`, `cilium_tunl`.

use crate::Scenario;
use crate::world::Outcome;

/// The scenarios of this module, in the order they run.
pub const SCENARIOS: &[Scenario] = &[("kernel: placeholder", placeholder)];

fn placeholder() -> Outcome<String> {
    let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    crate::world::run(std::process::Command::new("ip").args(["link", "add", "ktwg0", "type", "wireguard"]))?;
    crate::world::run(std::process::Command::new("ip").args(["link", "del", "ktwg0"]))?;
    Ok(format!("wireguard loaded: {}", modules.contains("wireguard")))
}
